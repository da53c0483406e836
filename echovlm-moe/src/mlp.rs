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
    /// `gate_proj` and `up_proj` stacked, `[2·intermediate, hidden]` (not a checkpoint tensor:
    /// [`fuse`](Self::fuse) builds it, leaving the two holding views of it). When set, the
    /// forward pass multiplies by it once instead of by each; set it to `None` after replacing
    /// either weight.
    pub gate_up_proj: Option<Linear>,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj`, `{prefix}.up_proj` and `{prefix}.down_proj`.
    pub fn load(loader: &mut WeightLoader<'_>, prefix: &str, hidden: usize, inter: usize) -> Self {
        Self {
            gate_proj: loader.linear(&format!("{prefix}.gate_proj"), hidden, inter, false),
            up_proj: loader.linear(&format!("{prefix}.up_proj"), hidden, inter, false),
            down_proj: loader.linear(&format!("{prefix}.down_proj"), inter, hidden, false),
            gate_up_proj: None,
        }
    }

    /// Stacks `gate_proj` and `up_proj` into [`gate_up_proj`](Self::gate_up_proj) where both
    /// hold Burn tensors without adapters ([`Linear::fuse_outputs`]); returns whether it did.
    pub fn fuse(&mut self) -> bool {
        self.gate_up_proj = Linear::fuse_outputs(&mut [&mut self.gate_proj, &mut self.up_proj]);
        self.gate_up_proj.is_some()
    }

    /// Width of the hidden layer.
    pub fn intermediate_size(&self) -> usize {
        self.gate_proj.d_out()
    }

    /// Applies the MLP to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.gate_up_proj.is_none()
            && let Some(act) = Linear::swiglu(&self.gate_proj, &self.up_proj, &x)
        {
            // packed CPU weights: both projections and the activation in one pass
            return self.down_proj.forward(act);
        }
        let (gate, up) = match &self.gate_up_proj {
            Some(fused) => {
                let inter = self.intermediate_size();
                let both = fused.forward(x);
                (
                    both.clone().narrow(D - 1, 0, inter),
                    both.narrow(D - 1, inter, inter),
                )
            }
            None => (self.gate_proj.forward(x.clone()), self.up_proj.forward(x)),
        };
        self.down_proj.forward(backend::silu_mul(gate, up))
    }
}
