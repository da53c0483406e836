use burn::tensor::Tensor;
use echovlm_core::{Linear, WeightLoader, backend};

/// The Qwen2 SwiGLU feed-forward, `down(silu(gate(x)) · up(x))`, without biases.
///
/// Used for the dense MLP, every routed expert and the shared expert.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `[hidden, intermediate]`.
    pub down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj`, `{prefix}.up_proj` and `{prefix}.down_proj`.
    pub fn load(loader: &mut WeightLoader<'_>, prefix: &str, hidden: usize, inter: usize) -> Self {
        Self {
            gate_proj: loader.linear(&format!("{prefix}.gate_proj"), hidden, inter, false),
            up_proj: loader.linear(&format!("{prefix}.up_proj"), hidden, inter, false),
            down_proj: loader.linear(&format!("{prefix}.down_proj"), inter, hidden, false),
        }
    }

    /// Width of the hidden layer.
    pub fn intermediate_size(&self) -> usize {
        self.gate_proj.d_out()
    }

    /// Applies the MLP to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(backend::silu_mul(gate, up))
    }
}
