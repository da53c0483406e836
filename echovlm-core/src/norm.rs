//! Normalisation layers.

use burn::tensor::{DType, Tensor};

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

    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        let var = x32.clone().square().mean_dim(D - 1);
        let normed = x32 * var.add_scalar(self.eps).sqrt().recip();
        let normed = if dtype == DType::F32 {
            normed
        } else {
            normed.cast(dtype)
        };
        normed * self.weight.clone().unsqueeze()
    }
}
