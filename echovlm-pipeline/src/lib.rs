//! EchoVLM for Rust: load a checkpoint, build ultrasound requests, generate reports,
//! diagnoses and answers.
//!
//! ```no_run
//! use echovlm_pipeline::{EchoVlm, Lang, LoadOptions, Request, Task};
//!
//! let model = EchoVlm::load("path/to/EchoVLM", &LoadOptions::default())?;
//! let request = Request::task(Task::Report, Lang::Zh)
//!     .image("study/frame1.png")
//!     .image("study/frame2.png");
//! let output = model.generate(&request, &model.default_generation())?;
//! println!("{}", output.text);
//! # Ok::<(), echovlm_pipeline::EchoError>(())
//! ```

#![warn(missing_docs)]

mod chat;
mod device;
mod device_sample;
mod error;
mod generate;
pub mod hub;
mod model;
mod output;
#[cfg(feature = "plot")]
mod plot;
mod request;
mod tasks;

pub use burn::tensor::{DType, Device};
pub use chat::{ChatTemplate, Content, Message, Role};
pub use device::{available_devices, device_from_name, dtype_for, probe_device};
pub use device_sample::choose_tokens;
pub use echovlm_core::LinearOptions;
pub use echovlm_core::cpu::WeightFormat;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use echovlm_core::kernel_cache::{
    AVAILABLE as KERNEL_CACHE_AVAILABLE, KernelCache, configure as set_kernel_cache,
};
pub use echovlm_moe::RoutingSummary;
pub use error::EchoError;
pub use generate::{CancelToken, FinishReason, GenerationOptions, Sampler, TextStream};
pub use hub::HubId;
pub use model::{
    BatchEvent, ContinuousBatch, Conversation, EchoVlm, LoadOptions, PreparedPrompt, SeqId,
    SequenceOutput, TextCallback, Weights,
};
pub use output::{Architecture, Output, Timings};
#[cfg(feature = "plot")]
pub use plot::routing_png;
pub use request::{DEFAULT_FPS, ImageSource, Request};
pub use tasks::{Lang, TASK_NAMES, Task};
