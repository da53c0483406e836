//! Everything that depends on which Burn backend a tensor lives on, in one place.
//!
//! Model code calls the portable functions here; each one picks a backend's native path where
//! one exists and otherwise falls back to plain tensor operations that every backend supports.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};

/// Whether `device` is Burn's flex CPU backend.
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether the backend's fused attention accepts fewer key/value heads than query heads.
fn native_grouped_attention(device: &Device) -> bool {
    is_flex(device)
}

/// Repeats each key/value head `n_rep` times: `[b, h_kv, s, d]` → `[b, h_kv·n_rep, s, d]`, head
/// `i` of the output being head `i / n_rep` of the input (HF `repeat_kv`).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, s, d])
        .reshape([b, h * n_rep, s, d])
}

/// Scaled dot-product attention, `softmax(q·kᵀ/√d + mask)·v`, with grouped key/value heads.
///
/// * `q`: `[b, h, s_q, d]`; `k`, `v`: `[b, h_kv, s_kv, d]` with `h` a multiple of `h_kv`.
/// * `mask`: `[b, 1, s_q, s_kv]`, `true` where a query must not see a key. Every query row must
///   leave at least one key visible.
/// * `causal`: additionally hide key `j` from query `i` when `j > i + (s_kv − s_q)`.
///
/// The softmax runs in f32 for f32 inputs; backends with a fused kernel (flex, CubeCL) never
/// build the full score matrix for long sequences.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let heads = q.dims()[1];
    let kv_heads = k.dims()[1];
    let (k, v) = if heads != kv_heads && !native_grouped_attention(&q.device()) {
        let n_rep = heads / kv_heads;
        (repeat_kv(k, n_rep), repeat_kv(v, n_rep))
    } else {
        (k, v)
    };
    burn::tensor::module::attention(
        q,
        k,
        v,
        mask,
        None,
        AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        },
    )
}
