//! Fine-tuning EchoVLM on Burn's autodiff.
//!
//! The forward pass is the inference code itself ([`EchoVlm::forward_sequences`]), run with
//! the weights on an autodiff device; what trains is chosen per tensor ([`Trainable`]): the
//! MoE blocks and mixing coefficients (what EchoVLM's authors train), LoRA adapters on the
//! decoder's attention and dense MLP ([`LoraConfig`]), the vision merger. Everything else stays
//! frozen. The loss is the causal-LM cross-entropy on the answer tokens plus
//! `router_aux_loss_coef` times the Switch/Mixtral load-balancing loss, as transformers
//! computes them; the optimizer is AdamW with warm-up and cosine decay, global-norm clipping
//! and gradient accumulation ([`Trainer::step`]), the micro-batches of a step running at once on
//! copies of the model ([`Trainer::set_workers`]) with the same result bit for bit. Runs are
//! resumable
//! ([`Trainer::save_state`], [`Trainer::resume`]); trained weights save as a whole checkpoint
//! with adapters merged ([`save_merged`]) or as a PEFT adapter directory ([`save_adapter`]).
//!
//! ```no_run
//! use echovlm_pipeline::{DType, Device, EchoVlm, LoadOptions, Request};
//! use echovlm_train::{TrainConfig, Trainer, encode_sample, save_merged};
//!
//! let opts = LoadOptions::default().device(Device::flex().autodiff()).dtype(DType::F32);
//! let model = EchoVlm::load("EchoVLM", &opts)?;
//! let sample = encode_sample(
//!     &model,
//!     &Request::new("Describe the image.").image("scan.png"),
//!     "Findings: ... Impression: ...",
//!     0,
//! )?;
//! let mut trainer = Trainer::new(model, TrainConfig::default())?;
//! let stats = trainer.step(&[std::slice::from_ref(&sample)])?;
//! println!("loss {:.3}", stats.loss);
//! save_merged(&trainer, "EchoVLM-tuned".as_ref(), false)?;
//! # Ok::<(), echovlm_train::TrainError>(())
//! ```
//!
//! [`EchoVlm::forward_sequences`]: echovlm_pipeline::EchoVlm::forward_sequences

#![warn(missing_docs)]

mod data;
mod error;
mod init;
mod loss;
mod optim;
mod params;
mod save;
mod trainer;

pub use data::{TURN_END, TrainSample, encode_sample, epoch_order};
pub use error::TrainError;
pub use init::{ModelSize, init_checkpoint, set_chat_template};
pub use loss::{IGNORE, aux_loss, causal_lm_loss, scored_positions, selected_lm_loss};
pub use optim::OptimConfig;
pub use params::{LoraConfig, Param, Slot, Trainable, named_linears};
pub use save::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, save_adapter, save_merged};
pub use trainer::{LossMean, Losses, StepStats, TrainConfig, Trainer, router_aux_loss_coef};
