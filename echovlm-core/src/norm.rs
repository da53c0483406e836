//! Normalisation layers.

use burn::tensor::Tensor;

use crate::loader::WeightLoader;

/// Qwen2 RMSNorm: statistics in f32, cast back to the activation type before the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Scale, `[d]`.
    pub weight: Tensor<1>,
    /// Added to the mean square before the reciprocal square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `prefix.weight`.
    pub fn load(loader: &mut WeightLoader<'_>, prefix: &str, d: usize, eps: f64) -> Self {
        Self {
            weight: loader.tensor(&format!("{prefix}.weight"), [d]),
            eps,
        }
    }

    /// Normalises the last dimension ([`backend::rms_norm`](crate::backend::rms_norm): one pass
    /// of the CPU kernel on the flex device in f32, tensor operations elsewhere).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::backend::rms_norm(x, &self.weight, self.eps)
    }

    /// A residual connection and this normalisation after it: `x + delta` and its
    /// normalisation ([`backend::rms_norm_residual`](crate::backend::rms_norm_residual)).
    pub fn forward_residual<const D: usize>(
        &self,
        x: Tensor<D>,
        delta: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        crate::backend::rms_norm_residual(x, delta, &self.weight, self.eps)
    }
}
