//! The training loop's step: forward over the same model code as inference, the losses,
//! backward on Burn's autodiff, global-norm clipping and AdamW.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Tensor};
use echovlm_core::host::to_f32_vec;
use echovlm_pipeline::EchoVlm;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::TrainSample;
use crate::error::TrainError;
use crate::loss::{aux_loss, causal_lm_loss, scored_positions, selected_lm_loss};
use crate::optim::{Moments, OptimConfig, adamw_update};
use crate::params::{self, Param, Trainable, named_linears};

/// What trains and how (by default: the MoE blocks, coefficients and merger, the default
/// optimizer, the checkpoint's aux-loss weight).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The trainable tensors.
    pub trainable: Trainable,
    /// Optimizer and schedule.
    pub optim: OptimConfig,
    /// Weight of the router load-balancing loss; `None` takes `router_aux_loss_coef` from the
    /// checkpoint's `config.json` (0.001 in EchoVLM's configuration class when absent). Zero
    /// switches it off.
    pub aux_loss_coef: Option<f64>,
    /// What the cross-entropy of a step with several micro-batches is a mean over.
    #[serde(default)]
    pub loss_mean: LossMean,
}

/// What the cross-entropy of an optimizer step with gradient accumulation is a mean over. With
/// one micro-batch a step, both give the same loss and gradient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossMean {
    /// Each micro-batch's cross-entropy is the mean over its own answer tokens, and the step's
    /// gradient is the mean over its micro-batches (transformers' gradient accumulation before
    /// 4.46, and the PyTorch reference's): a micro-batch of short answers weighs as much as one
    /// of long reports.
    #[default]
    MicroBatch,
    /// The cross-entropy is the mean over all the step's answer tokens, whichever micro-batch
    /// holds them (transformers' `num_items_in_batch`), so the step does not depend on how its
    /// samples are cut into micro-batches: one step of 16 samples equals two micro-batches of 8,
    /// grouped by length or not. The load-balancing loss stays a mean over micro-batches.
    Step,
}

/// The losses of one forward pass.
#[derive(Debug, Clone)]
pub struct Losses {
    /// `ce + aux_coef · aux`, a one-element tensor with its graph.
    pub total: Tensor<1>,
    /// The cross-entropy on the answer tokens.
    pub ce: f32,
    /// The load-balancing loss (0 without MoE layers).
    pub aux: f32,
    /// The scored tokens.
    pub tokens: usize,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The optimizer step just taken (1-based).
    pub step: usize,
    /// Mean total loss over the micro-batches, before the update.
    pub loss: f32,
    /// Mean cross-entropy.
    pub ce: f32,
    /// Mean load-balancing loss.
    pub aux: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// The learning rate of this step.
    pub lr: f64,
    /// Answer tokens the loss was computed on.
    pub tokens: usize,
    /// All tokens the step ran (prompts and images included).
    pub sequence_tokens: usize,
    /// Positions the step computed: each micro-batch's samples times its longest sequence
    /// (`padded_tokens - sequence_tokens` is the padding).
    #[serde(default)]
    pub padded_tokens: usize,
    /// Wall time of the step, in seconds.
    pub seconds: f64,
}

/// A trainable tensor as installed in the model: a leaf of its own rank (a reshaped leaf would
/// be an intermediate, consumed by the first backward pass).
#[derive(Debug, Clone)]
enum Leaf {
    /// A bias.
    D1(Tensor<1>),
    /// A weight or adapter matrix.
    D2(Tensor<2>),
}

impl Leaf {
    /// The value as `[rows, cols]` (a bias as `[1, d]`), without autodiff.
    fn value(&self) -> Tensor<2> {
        match self {
            Leaf::D1(t) => t.clone().inner().unsqueeze_dim(0),
            Leaf::D2(t) => t.clone().inner(),
        }
    }

    /// The gradient as `[rows, cols]`, zeros when the loss does not reach the tensor.
    fn grad(&self, grads: &burn::tensor::Gradients) -> Tensor<2> {
        match self {
            Leaf::D1(t) => t.grad(grads).map(|g| g.unsqueeze_dim(0)),
            Leaf::D2(t) => t.grad(grads),
        }
        .unwrap_or_else(|| self.value().zeros_like())
    }
}

/// A copy of the model whose trainable tensors are autodiff leaves of its own: its forward
/// and backward passes build a graph no other copy touches, so copies run micro-batches at
/// the same time. The frozen tensors are shared, not copied.
struct Replica {
    model: EchoVlm,
    /// The tensors installed in the model for the trainer's `params`, in that order.
    leaves: Vec<Leaf>,
}

impl Replica {
    /// Installs `values` as fresh leaves for `params`.
    fn install(&mut self, params: &[Param], values: &[Tensor<2>]) {
        let mut linears = named_linears(&mut self.model);
        self.leaves.clear();
        for (p, v) in params.iter().zip(values) {
            let Some((_, l)) = linears.iter_mut().find(|(n, _)| *n == p.module) else {
                continue;
            };
            let leaf = if p.slot == params::Slot::Bias {
                let [_, d] = v.dims();
                let leaf = v.clone().inner().reshape([d]).autodiff().require_grad();
                l.bias = Some(leaf.clone());
                Leaf::D1(leaf)
            } else {
                let leaf = v.clone().inner().autodiff().require_grad();
                params::set(l, p.slot, leaf.clone());
                Leaf::D2(leaf)
            };
            self.leaves.push(leaf);
        }
    }

    /// The losses of `batch` (one forward pass, graph kept for backward), with the
    /// cross-entropy and load-balancing terms as tensors of the graph.
    fn losses(
        &self,
        batch: &[TrainSample],
        top_k: usize,
        aux_coef: f64,
    ) -> Result<(Losses, Tensor<1>, Option<Tensor<1>>), TrainError> {
        let sequences: Vec<_> = batch.iter().map(|s| s.sequence.clone()).collect();
        let labels: Vec<Vec<i64>> = batch.iter().map(|s| s.labels.clone()).collect();
        let vocab = self.model.text_model().config.vocab_size;
        let (positions, targets) = scored_positions(&labels, vocab);
        // the LM head runs on the scored positions only (the answers); with none scored, on
        // every position, so that the loss stays part of the graph
        let (out, (ce, tokens)) = if targets.is_empty() {
            let out = self.model.forward_sequences(&sequences)?;
            let ce = causal_lm_loss(out.logits.clone(), &labels);
            (out, ce)
        } else {
            let out = self.model.forward_sequences_at(&sequences, &positions)?;
            let ce = selected_lm_loss(out.logits.clone(), &targets);
            (out, ce)
        };
        let (total, aux, aux_t) = if out.router_logits.is_empty() {
            (ce.clone(), 0.0, None)
        } else {
            let aux = aux_loss(&out.router_logits, top_k, &out.valid);
            let aux_v = scalar(aux.clone())?;
            (
                ce.clone() + aux.clone().mul_scalar(aux_coef as f32),
                aux_v,
                Some(aux),
            )
        };
        let losses = Losses {
            total,
            ce: scalar(ce.clone())?,
            aux,
            tokens,
        };
        Ok((losses, ce, aux_t))
    }

    /// The gradient of `total` for every leaf (zeros where it does not reach).
    fn backward(&self, total: &Tensor<1>) -> Vec<Tensor<2>> {
        let grads = total.backward();
        self.leaves.iter().map(|l| l.grad(&grads)).collect()
    }

    /// One micro-batch of a step: its losses, and the gradient of its share of the step's
    /// loss.
    fn micro_step(
        &self,
        batch: &[TrainSample],
        share: Share,
        top_k: usize,
        aux_coef: f64,
    ) -> Result<MicroStep, TrainError> {
        let (losses, ce, aux) = self.losses(batch, top_k, aux_coef)?;
        let total = scalar(losses.total.clone())?;
        if !total.is_finite() {
            return Ok((losses, total, Vec::new()));
        }
        let objective = match share {
            Share::Mean { n } => losses.total.clone().div_scalar(n as f32),
            Share::Tokens { ce: w, aux: w_aux } => {
                let ce = ce.mul_scalar(w);
                match aux {
                    Some(aux) => ce + aux.mul_scalar(aux_coef as f32 * w_aux),
                    None => ce,
                }
            }
        };
        let grads = self.backward(&objective);
        Ok((losses, total, grads))
    }
}

/// A micro-batch's share of its step's loss.
#[derive(Debug, Clone, Copy)]
enum Share {
    /// `total / n` ([`LossMean::MicroBatch`]).
    Mean {
        /// Micro-batches in the step.
        n: usize,
    },
    /// `w_ce · ce + aux_coef · w_aux · aux` ([`LossMean::Step`]), `w_ce` being the
    /// micro-batch's answer tokens over the step's and `w_aux` one over the number of
    /// micro-batches.
    Tokens {
        /// Weight of the cross-entropy.
        ce: f32,
        /// Weight of the load-balancing loss.
        aux: f32,
    },
}

/// One micro-batch's losses, its total loss as a number, and the gradient of its share of the
/// step's loss (empty when the total is not finite).
type MicroStep = (Losses, f32, Vec<Tensor<2>>);

/// Fine-tunes a model: owns it, its trainable tensors and the optimizer state.
pub struct Trainer {
    /// The model (first) and its copies for concurrent micro-batches; each holds the same
    /// values of `params`.
    replicas: Vec<Replica>,
    params: Vec<Param>,
    moments: Vec<Moments>,
    step: usize,
    config: TrainConfig,
    aux_coef: f64,
    top_k: usize,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("params", &self.params.len())
            .field("step", &self.step)
            .field("config", &self.config)
            .finish()
    }
}

/// Reads `router_aux_loss_coef` from a checkpoint's `config.json` (top level or
/// `text_config`); 0.001 when absent.
pub fn router_aux_loss_coef(dir: &Path) -> Result<f64, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Json {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let coef = v
        .get("router_aux_loss_coef")
        .or_else(|| {
            v.get("text_config")
                .and_then(|t| t.get("router_aux_loss_coef"))
        })
        .and_then(|c| c.as_f64())
        .unwrap_or(0.001);
    Ok(coef)
}

impl Trainer {
    /// Prepares `model` for training: attaches the LoRA adapters the configuration asks for
    /// and marks every trainable tensor. The model must have been loaded on an autodiff device
    /// (`Device::flex().autodiff()`, or a GPU device's `.autodiff()`) in f32.
    pub fn new(mut model: EchoVlm, config: TrainConfig) -> Result<Self, TrainError> {
        if !model.device().is_autodiff() {
            return Err(TrainError::Setup(
                "the model is not on an autodiff device: load it with LoadOptions::device(device.autodiff())"
                    .into(),
            ));
        }
        let params = params::select(&mut model, &config.trainable)?;
        let aux_coef = match config.aux_loss_coef {
            Some(c) => c,
            None => router_aux_loss_coef(model.dir())?,
        };
        if !aux_coef.is_finite() || aux_coef < 0.0 {
            return Err(TrainError::Setup(format!(
                "aux loss coefficient {aux_coef} is not a non-negative number"
            )));
        }
        let top_k = model.text_model().config.moe.num_experts_per_tok;
        let values: Vec<Tensor<2>> = {
            let linears = named_linears(&mut model);
            params
                .iter()
                .map(|p| {
                    linears
                        .iter()
                        .find(|(n, _)| *n == p.module)
                        .and_then(|(_, l)| params::get(l, p.slot))
                        .map(Tensor::inner)
                        .ok_or_else(|| TrainError::Setup(format!("{} is missing", p.name())))
                })
                .collect::<Result<_, _>>()?
        };
        let mut trainer = Self {
            replicas: vec![Replica {
                model,
                leaves: Vec::new(),
            }],
            params,
            moments: Vec::new(),
            step: 0,
            config,
            aux_coef,
            top_k,
        };
        trainer.moments = values
            .iter()
            .map(|t| Moments {
                m: t.zeros_like(),
                v: t.zeros_like(),
            })
            .collect();
        trainer.set_values(values);
        Ok(trainer)
    }

    /// The model being trained.
    pub fn model(&self) -> &EchoVlm {
        &self.replicas[0].model
    }

    /// Gives the model back (adapters attached, weights trained).
    pub fn into_model(mut self) -> EchoVlm {
        self.replicas.swap_remove(0).model
    }

    /// Runs up to `workers` micro-batches of a [`step`](Self::step) at once (at least 1; 1 by
    /// default), each on its own copy of the model, on the CPU thread pool. The frozen weights
    /// are shared; each copy adds its own autodiff graph. The step's result does not depend on
    /// it, bit for bit: the gradients are summed in micro-batch order either way.
    pub fn set_workers(&mut self, workers: usize) {
        let workers = workers.max(1);
        let values = self.values();
        self.replicas.truncate(workers);
        while self.replicas.len() < workers {
            let mut replica = Replica {
                model: self.replicas[0].model.clone(),
                leaves: Vec::new(),
            };
            replica.install(&self.params, &values);
            self.replicas.push(replica);
        }
    }

    /// How many micro-batches run at once ([`set_workers`](Self::set_workers)).
    pub fn workers(&self) -> usize {
        self.replicas.len()
    }

    /// The trainable tensors, in a fixed order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The weight of the load-balancing loss in use.
    pub fn aux_loss_coef(&self) -> f64 {
        self.aux_coef
    }

    /// Number of trainable values.
    pub fn num_trainable(&self) -> usize {
        self.values().iter().map(|t| t.shape().num_elements()).sum()
    }

    /// The current values of the trainable tensors (without autodiff; biases as `[1, d]`).
    pub fn values(&self) -> Vec<Tensor<2>> {
        self.replicas[0].leaves.iter().map(Leaf::value).collect()
    }

    /// Replaces the trainable tensors (biases as `[1, d]`), marking them for gradients.
    pub fn set_values(&mut self, values: Vec<Tensor<2>>) {
        for replica in &mut self.replicas {
            replica.install(&self.params, &values);
        }
    }

    /// The losses of `batch` (one forward pass, graph kept for backward).
    pub fn losses(&self, batch: &[TrainSample]) -> Result<Losses, TrainError> {
        Ok(self.replicas[0].losses(batch, self.top_k, self.aux_coef)?.0)
    }

    /// The losses of `batch` and the gradient of the total loss for every trainable tensor
    /// (zeros for tensors the batch does not reach), in [`params`](Self::params) order.
    pub fn gradients(&self, batch: &[TrainSample]) -> Result<(Losses, Vec<Tensor<2>>), TrainError> {
        let losses = self.losses(batch)?;
        let grads = self.replicas[0].backward(&losses.total);
        Ok((losses, grads))
    }

    /// One optimizer step over `micro_batches` (gradient accumulation; the configuration's
    /// [`LossMean`] says how the micro-batches' losses combine): clip to the global norm, AdamW
    /// at the scheduled learning rate.
    pub fn step(&mut self, micro_batches: &[&[TrainSample]]) -> Result<StepStats, TrainError> {
        let start = Instant::now();
        let n = micro_batches.len();
        if n == 0 || micro_batches.iter().any(|b| b.is_empty()) {
            return Err(TrainError::Setup("an optimizer step needs samples".into()));
        }
        let shares: Vec<Share> = match self.config.loss_mean {
            LossMean::MicroBatch => vec![Share::Mean { n }; n],
            LossMean::Step => {
                let counts: Vec<usize> = micro_batches
                    .iter()
                    .map(|b| b.iter().map(TrainSample::scored_tokens).sum())
                    .collect();
                let all = counts.iter().sum::<usize>().max(1) as f32;
                counts
                    .iter()
                    .map(|&c| Share::Tokens {
                        ce: c as f32 / all,
                        aux: 1.0 / n as f32,
                    })
                    .collect()
            }
        };
        let mut sum: Option<Vec<Tensor<2>>> = None;
        let (mut loss, mut ce, mut aux) = (0f32, 0f32, 0f32);
        let (mut tokens, mut sequence_tokens, mut padded_tokens) = (0, 0, 0);
        // `workers` micro-batches at a time, so memory holds that many gradients, not n
        let workers = self.replicas.len().clamp(1, n);
        let parts = micro_batches
            .chunks(workers)
            .zip(shares.chunks(workers))
            .flat_map(|(round, shares)| {
                round
                    .iter()
                    .zip(shares)
                    .zip(self.micro_steps(round, shares))
            });
        for ((batch, share), part) in parts {
            let (losses, total, grads) = part?;
            if !total.is_finite() {
                return Err(TrainError::NotFinite {
                    step: self.step + 1,
                    loss: total,
                });
            }
            match *share {
                Share::Mean { n } => {
                    loss += total / n as f32;
                    ce += losses.ce / n as f32;
                }
                Share::Tokens { ce: w, .. } => {
                    loss += losses.ce * w + (self.aux_coef as f32) * losses.aux / n as f32;
                    ce += losses.ce * w;
                }
            }
            aux += losses.aux / n as f32;
            tokens += losses.tokens;
            sequence_tokens += batch.iter().map(TrainSample::len).sum::<usize>();
            padded_tokens += batch.len() * batch.iter().map(TrainSample::len).max().unwrap_or(0);
            sum = Some(match sum {
                None => grads,
                Some(acc) => acc.into_iter().zip(grads).map(|(a, g)| a + g).collect(),
            });
        }
        let grads = sum.unwrap_or_default();
        let grad_norm = global_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NotFinite {
                step: self.step + 1,
                loss: grad_norm as f32,
            });
        }
        let scale = match self.config.optim.max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        let lr = self.config.optim.lr_at(self.step);
        self.step += 1;
        let values = self.values();
        let mut updated = Vec::with_capacity(values.len());
        for ((p, g), state) in values.into_iter().zip(grads).zip(self.moments.iter_mut()) {
            let g = if scale < 1.0 {
                g.mul_scalar(scale as f32)
            } else {
                g
            };
            updated.push(adamw_update(&self.config.optim, p, g, state, self.step, lr));
        }
        self.set_values(updated);
        Ok(StepStats {
            step: self.step,
            loss,
            ce,
            aux,
            grad_norm: grad_norm as f32,
            lr,
            tokens,
            sequence_tokens,
            padded_tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The losses, total and gradient (of its `share` of the step's loss) of each micro-batch
    /// of `round`, in order, each on its own copy of the model (the round has at most as many
    /// micro-batches as there are copies), at once.
    fn micro_steps(
        &self,
        round: &[&[TrainSample]],
        shares: &[Share],
    ) -> Vec<Result<MicroStep, TrainError>> {
        let (top_k, aux_coef) = (self.top_k, self.aux_coef);
        if let ([batch], [share]) = (round, shares) {
            return vec![self.replicas[0].micro_step(batch, *share, top_k, aux_coef)];
        }
        self.replicas
            .par_iter()
            .zip(round.par_iter().zip(shares.par_iter()))
            .map(|(replica, (batch, share))| replica.micro_step(batch, *share, top_k, aux_coef))
            .collect()
    }

    /// Saves the training state (trainable tensors, Adam moments, step, configuration and the
    /// caller's `progress`, e.g. epoch and position) to `dir`, so that [`resume`](Self::resume)
    /// continues exactly where this run stopped.
    pub fn save_state(&self, dir: &Path, progress: &serde_json::Value) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let mut tensors: Vec<(String, Tensor<2>)> = Vec::new();
        for (p, v) in self.params.iter().zip(self.values()) {
            tensors.push((format!("param.{}", p.name()), v));
        }
        for (p, m) in self.params.iter().zip(&self.moments) {
            tensors.push((format!("adam_m.{}", p.name()), m.m.clone()));
            tensors.push((format!("adam_v.{}", p.name()), m.v.clone()));
        }
        let tmp = dir.join("state.safetensors.tmp");
        crate::save::write_f32_safetensors(&tmp, &tensors)?;
        let state = serde_json::json!({
            "step": self.step,
            "config": self.config,
            "params": self.params.iter().map(Param::name).collect::<Vec<_>>(),
            "progress": progress,
        });
        let json_tmp = dir.join("state.json.tmp");
        std::fs::write(
            &json_tmp,
            serde_json::to_vec_pretty(&state).unwrap_or_default(),
        )
        .map_err(|e| TrainError::io(&json_tmp, e))?;
        // the tensors first, then the JSON that names them: a crash leaves the old pair
        rename(&tmp, &dir.join("state.safetensors"))?;
        rename(&json_tmp, &dir.join("state.json"))?;
        Ok(())
    }

    /// Continues a run saved by [`save_state`](Self::save_state): `model` must be the same
    /// checkpoint and `config` the same training configuration. Returns the trainer and the
    /// saved progress.
    pub fn resume(
        model: EchoVlm,
        config: TrainConfig,
        dir: &Path,
    ) -> Result<(Self, serde_json::Value), TrainError> {
        let json_path = dir.join("state.json");
        let text =
            std::fs::read_to_string(&json_path).map_err(|e| TrainError::io(&json_path, e))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::Json {
                path: json_path.clone(),
                reason: e.to_string(),
            })?;
        let mismatch = |reason: String| TrainError::Resume {
            path: dir.to_path_buf(),
            reason,
        };
        let saved_config: TrainConfig = serde_json::from_value(state["config"].clone())
            .map_err(|e| mismatch(format!("state.json: {e}")))?;
        if saved_config.trainable != config.trainable {
            return Err(mismatch(
                "the trainable tensors differ from the saved run's".into(),
            ));
        }
        let mut trainer = Self::new(model, config)?;
        let names: Vec<String> = trainer.params.iter().map(Param::name).collect();
        let saved_names: Vec<String> = serde_json::from_value(state["params"].clone())
            .map_err(|e| mismatch(format!("state.json: {e}")))?;
        if names != saved_names {
            return Err(mismatch("the saved tensors are not this model's".into()));
        }
        let step = state["step"]
            .as_u64()
            .ok_or_else(|| mismatch("state.json has no step".into()))? as usize;
        let tensors = crate::save::read_f32_safetensors(&dir.join("state.safetensors"))?;
        let device = trainer.values()[0].device();
        let take = |key: String, like: &Tensor<2>| -> Result<Tensor<2>, TrainError> {
            let (shape, data) = tensors
                .get(&key)
                .ok_or_else(|| mismatch(format!("state.safetensors has no {key}")))?;
            if shape.as_slice() != like.dims().as_slice() {
                return Err(mismatch(format!(
                    "{key} is {shape:?}, the model's is {:?}",
                    like.dims()
                )));
            }
            Ok(Tensor::from_data(
                burn::tensor::TensorData::new(data.clone(), [shape[0], shape[1]]),
                (&device.clone().inner(), DType::F32),
            ))
        };
        let current = trainer.values();
        let mut values = Vec::with_capacity(current.len());
        let mut moments = Vec::with_capacity(current.len());
        for (p, like) in names.iter().zip(&current) {
            values.push(take(format!("param.{p}"), like)?);
            moments.push(Moments {
                m: take(format!("adam_m.{p}"), like)?,
                v: take(format!("adam_v.{p}"), like)?,
            });
        }
        trainer.set_values(values);
        trainer.moments = moments;
        trainer.step = step;
        Ok((trainer, state["progress"].clone()))
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), TrainError> {
    std::fs::rename(from, to).map_err(|e| TrainError::io(PathBuf::from(to), e))
}

fn scalar(t: Tensor<1>) -> Result<f32, TrainError> {
    Ok(to_f32_vec(t.inner())?.first().copied().unwrap_or(0.0))
}

/// √(Σ‖g‖²) over all gradients, in f64.
fn global_norm(grads: &[Tensor<2>]) -> Result<f64, TrainError> {
    let mut sum = 0f64;
    for g in grads {
        let v = to_f32_vec(g.clone())?;
        sum += v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
    }
    Ok(sum.sqrt())
}
