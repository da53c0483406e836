//! The CPU decode attention against Burn's attention (with key/value heads repeated), with and
//! without a padding mask and causality, for the shapes a decode step and a small batch of
//! steps produce.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};
use echovlm_core::backend::{decode_attention, repeat_kv};
use echovlm_core::host::flex_f32_vec;

fn burn_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Vec<f32> {
    let n_rep = q.dims()[1] / k.dims()[1];
    flex_f32_vec(burn::tensor::module::attention(
        q,
        repeat_kv(k, n_rep),
        repeat_kv(v, n_rep),
        mask,
        None,
        AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        },
    ))
}

#[test]
fn decode_attention_matches_burn() {
    let device = Device::default();
    let normal = Distribution::Normal(0.0, 1.0);
    for (b, h, h_kv, s_q, s_kv, d) in [
        (1, 28, 4, 1, 1, 128),
        (1, 28, 4, 1, 300, 128),
        (2, 8, 2, 3, 37, 16),
        (3, 4, 4, 8, 64, 24),
    ] {
        let q = Tensor::<4>::random([b, h, s_q, d], normal, &device);
        let k = Tensor::<4>::random([b, h_kv, s_kv, d], normal, &device);
        let v = Tensor::<4>::random([b, h_kv, s_kv, d], normal, &device);
        // left padding: row r hides its first r keys
        let hidden: Vec<bool> = (0..b * s_q * s_kv)
            .map(|i| {
                let (row, t) = (i / (s_q * s_kv), i % s_kv);
                t < row.min(s_kv - s_q)
            })
            .collect();
        let mask = || {
            Tensor::<4, Bool>::from_data(
                TensorData::new(hidden.clone(), [b, 1, s_q, s_kv]),
                &device,
            )
        };
        for (masked, causal) in [(false, false), (false, true), (true, true), (true, false)] {
            let m = masked.then(mask);
            let want = burn_attention(q.clone(), k.clone(), v.clone(), m.clone(), causal);
            let got = flex_f32_vec(decode_attention(q.clone(), k.clone(), v.clone(), m, causal));
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 1e-5,
                "b{b} h{h}/{h_kv} s_q {s_q} s_kv {s_kv} masked {masked} causal {causal}: {diff}"
            );
        }
    }
}
