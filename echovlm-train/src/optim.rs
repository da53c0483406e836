//! AdamW with a warm-up + cosine learning-rate schedule and global-norm gradient clipping, as
//! `torch.optim.AdamW`, `transformers.get_cosine_schedule_with_warmup` and
//! `torch.nn.utils.clip_grad_norm_` compute them.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Optimizer and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam's β₁.
    pub beta1: f64,
    /// Adam's β₂.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Total optimizer steps; the cosine decays to 0 at this step.
    pub total_steps: usize,
    /// Global gradient-norm limit (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    /// lr 1e-4, β (0.9, 0.999), ε 1e-8, weight decay 0.01, no warm-up, 1000 steps, clipping
    /// at 1.0 (the EchoVLM training defaults, warm-up aside).
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            total_steps: 1000,
            max_grad_norm: Some(1.0),
        }
    }
}

impl OptimConfig {
    /// The learning rate of optimizer step `step` (0-based): linear warm-up, then a half
    /// cosine to zero at `total_steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        self.lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

/// Adam's moments of one tensor.
#[derive(Debug, Clone)]
pub(crate) struct Moments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
}

/// One AdamW update of `p` with gradient `g` at optimizer step `t` (1-based), learning rate
/// `lr`; returns the new parameter (all tensors without autodiff).
pub(crate) fn adamw_update(
    cfg: &OptimConfig,
    p: Tensor<2>,
    g: Tensor<2>,
    state: &mut Moments,
    t: usize,
    lr: f64,
) -> Tensor<2> {
    let p = p.mul_scalar((1.0 - lr * cfg.weight_decay) as f32);
    state.m = state
        .m
        .clone()
        .mul_scalar(cfg.beta1 as f32)
        .add(g.clone().mul_scalar((1.0 - cfg.beta1) as f32));
    state.v = state
        .v
        .clone()
        .mul_scalar(cfg.beta2 as f32)
        .add(g.square().mul_scalar((1.0 - cfg.beta2) as f32));
    let bc1 = 1.0 - cfg.beta1.powi(t as i32);
    let bc2 = 1.0 - cfg.beta2.powi(t as i32);
    let step_size = lr / bc1;
    let denom = state
        .v
        .clone()
        .sqrt()
        .div_scalar(bc2.sqrt() as f32)
        .add_scalar(cfg.eps as f32);
    p.sub(state.m.clone().div(denom).mul_scalar(step_size as f32))
}
