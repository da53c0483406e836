use burn::tensor::{DType, Tensor, activation};

use crate::trace::LayerRouting;

/// The Switch-Transformer / Mixtral load-balancing loss over the router logits of all layers,
/// as transformers' `load_balancing_loss_func`:
///
/// `aux = E · Σ_{k,e} f[k,e] · p̄[e]`, where over all tokens of all layers `f[k,e]` is the
/// fraction whose k-th choice is expert `e` and `p̄[e]` the mean router probability of `e`.
///
/// * `router_logits`: one `[batch·seq, E]` tensor per layer.
/// * `attention_mask`: optional `[batch, seq]` with 1 for real tokens and 0 for padding; both
///   means then run over real tokens only.
pub fn load_balancing_loss(
    router_logits: &[Tensor<2>],
    top_k: usize,
    attention_mask: Option<Tensor<2>>,
) -> Tensor<1> {
    let layers = router_logits.len();
    let logits = Tensor::cat(router_logits.to_vec(), 0).cast(DType::F32);
    let [tokens, experts] = logits.dims();
    let probs = activation::softmax(logits, 1);
    let (_, idx) = probs.clone().topk_with_indices(top_k, 1);
    let chosen: Tensor<3> = idx.one_hot::<3>(experts).float().cast(DType::F32);
    let (f, p) = match attention_mask {
        None => (
            chosen.mean_dim(0).reshape([top_k, experts]),
            probs.mean_dim(0).reshape([1, experts]),
        ),
        Some(mask) => {
            let m = mask
                .cast(DType::F32)
                .reshape([1, tokens / layers])
                .repeat_dim(0, layers)
                .reshape([tokens, 1]);
            let total = m.clone().sum();
            let f = (chosen * m.clone().unsqueeze_dim::<3>(2))
                .sum_dim(0)
                .reshape([top_k, experts])
                / total.clone().reshape([1, 1]);
            let p = (probs * m).sum_dim(0) / total.reshape([1, 1]);
            (f, p)
        }
    };
    (f * p).sum().mul_scalar(experts as f32)
}

/// [`load_balancing_loss`] computed on the host from recorded routing. Records keep only real
/// tokens, so this equals the masked loss of the batch they came from.
pub fn load_balancing_loss_host(layers: &[LayerRouting]) -> f64 {
    let Some(first) = layers.first() else {
        return 0.0;
    };
    let (e_count, k) = (first.num_experts, first.top_k);
    let mut f = vec![0f64; k * e_count];
    let mut p = vec![0f64; e_count];
    let mut n = 0usize;
    for layer in layers {
        for (t, row) in layer.router_logits.chunks_exact(e_count).enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            for (pe, &x) in p.iter_mut().zip(&exps) {
                *pe += (x / sum) as f64;
            }
            for s in 0..k {
                let e = layer.experts[t * k + s] as usize;
                f[s * e_count + e] += 1.0;
            }
            n += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let mut loss = 0.0;
    for s in 0..k {
        for e in 0..e_count {
            loss += (f[s * e_count + e] / n as f64) * (p[e] / n as f64);
        }
    }
    loss * e_count as f64
}
