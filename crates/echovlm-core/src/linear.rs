//! The linear layer every EchoVLM module uses.

use burn::tensor::Tensor;

use crate::loader::WeightLoader;

/// How linear layers keep their weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinearOptions {}

/// `y = x · Wᵀ + b`, with `W` stored `[out, in]` exactly as in the checkpoint.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, `[d_out, d_in]` (the HF layout).
    pub weight: Tensor<2>,
    /// Optional bias, `[d_out]`.
    pub bias: Option<Tensor<1>>,
    d_in: usize,
    d_out: usize,
}

impl Linear {
    /// Wraps existing tensors (`weight` is `[d_out, d_in]`).
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [d_out, d_in] = weight.dims();
        Self {
            weight,
            bias,
            d_in,
            d_out,
        }
    }

    /// Loads `prefix.weight` and, if `bias`, `prefix.bias`.
    pub fn load(
        loader: &mut WeightLoader<'_>,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Self {
        let weight = loader.tensor(&format!("{prefix}.weight"), [d_out, d_in]);
        let bias = bias.then(|| loader.tensor(&format!("{prefix}.bias"), [d_out]));
        Self {
            weight,
            bias,
            d_in,
            d_out,
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(x, self.weight.clone().transpose(), self.bias.clone())
    }
}
