//! The CPU decode attention against Burn's attention (with key/value heads repeated), with and
//! without a padding mask and causality, for the shapes a decode step and a small batch of
//! steps produce.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};
use echovlm_core::backend::{decode_attention, repeat_kv};
use echovlm_core::host::flex_f32_vec;

mod common;
use common::values;

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
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff < 1e-5,
                "b{b} h{h}/{h_kv} s_q {s_q} s_kv {s_kv} masked {masked} causal {causal}: {diff}"
            );
        }
    }
}

/// `softmax(q·kᵀ/√d + mask)·v` in f64, one query at a time; zeros for a query that sees no key.
#[allow(clippy::too_many_arguments)]
/// Largest absolute difference between two equally long slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, h, h_kv, s_q, s_kv, cap, d): (usize, usize, usize, usize, usize, usize, usize),
    mask: Option<&[bool]>,
    causal: bool,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * s_q * d];
    for bi in 0..b {
        for hi in 0..h {
            let g = hi / (h / h_kv);
            let kv = |t: usize, c: usize, x: &[f32]| x[((bi * h_kv + g) * cap + t) * d + c] as f64;
            for i in 0..s_q {
                let qrow = &q[((bi * h + hi) * s_q + i) * d..][..d];
                let seen: Vec<usize> = (0..s_kv)
                    .filter(|&t| !(causal && t + s_q > i + s_kv))
                    .filter(|&t| mask.is_none_or(|m| !m[(bi * s_q + i) * s_kv + t]))
                    .collect();
                if seen.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = seen
                    .iter()
                    .map(|&t| {
                        (0..d).map(|c| qrow[c] as f64 * kv(t, c, k)).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 = seen.iter().zip(&e).map(|(&t, p)| p * kv(t, c, v)).sum();
                    out[((bi * h + hi) * s_q + i) * d + c] = (o / sum) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn tiled_attention_matches_a_plain_reference_on_every_kernel() {
    use echovlm_core::cpu::{BLOCK_KV, BLOCK_Q, HostAttention, Kernel, PACK_MIN_QUERIES};
    // several query blocks and key tiles with short last ones, grouped heads, a cache with
    // room to spare, prefill after cached keys (keys > queries); packed keys and values (from
    // PACK_MIN_QUERIES queries on, head widths of 32 and 64) with partial key panels, and the
    // unpacked products for fewer queries or other widths (16, 80)
    for (b, h, h_kv, s_q, s_kv, cap, d) in [
        (
            1,
            4,
            2,
            BLOCK_Q * 2 + 7,
            BLOCK_Q * 2 + 7,
            BLOCK_Q * 2 + 7,
            32,
        ),
        (2, 6, 3, 70, BLOCK_KV * 2 + 45, BLOCK_KV * 3, 16),
        (1, 2, 1, 9, 9, 9, 128),
        (1, 3, 3, 200, 1, 4, 8),
        (1, 4, 2, PACK_MIN_QUERIES, 45, 50, 64),
        (1, 4, 2, PACK_MIN_QUERIES - 1, 45, 50, 64),
        (1, 2, 2, PACK_MIN_QUERIES, 45, 50, 80),
    ] {
        let q = values(b * h * s_q * d, 1);
        let k = values(b * h_kv * cap * d, 2);
        // large values: the running maximum moves between tiles
        let v = values(b * h_kv * cap * d, 3);
        let k: Vec<f32> = k
            .iter()
            .enumerate()
            .map(|(i, x)| x * (1.0 + (i % 97) as f32 / 10.0))
            .collect();
        // every other batch row hides its first 3 keys; row 5 of each batch row sees nothing
        let hidden: Vec<bool> = (0..b * s_q * s_kv)
            .map(|i| {
                let (bi, row, t) = (i / (s_q * s_kv), (i / s_kv) % s_q, i % s_kv);
                (bi % 2 == 0 && t < 3) || row == 5
            })
            .collect();
        for (masked, causal) in [(false, false), (false, true), (true, true), (true, false)] {
            let mask = masked.then_some(hidden.as_slice());
            let want = reference(&q, &k, &v, (b, h, h_kv, s_q, s_kv, cap, d), mask, causal);
            let run = |kernel| {
                HostAttention {
                    q: &q,
                    k: &k,
                    v: &v,
                    batch: b,
                    heads: h,
                    kv_heads: h_kv,
                    queries: s_q,
                    keys: s_kv,
                    capacity: cap,
                    dim: d,
                    mask,
                    causal,
                }
                .run_with(kernel)
                .unwrap()
            };
            let portable = run(Kernel::Portable);
            let diff = max_abs_diff(&portable, &want);
            let what = format!(
                "b{b} h{h}/{h_kv} s_q {s_q} s_kv {s_kv} cap {cap} d {d} masked {masked} causal {causal}"
            );
            assert!(diff < 2e-5, "{what}: {diff}");
            if masked && s_q > 5 {
                let row5 = &portable[5 * d..6 * d];
                assert!(
                    row5.iter().all(|&x| x == 0.0),
                    "{what}: a query that sees nothing"
                );
            }
            for kernel in [Kernel::Avx2, Kernel::Avx512] {
                let got = run(kernel);
                if s_q < PACK_MIN_QUERIES || d % 32 != 0 {
                    // the products run on `gemm`, the softmax is the same code on every kernel
                    assert_eq!(got, portable, "{what}: {kernel} against portable");
                } else {
                    // the packed products use each kernel's own multiply-adds
                    let diff = max_abs_diff(&got, &want);
                    assert!(diff < 2e-5, "{what}: {kernel}: {diff}");
                }
            }
        }
    }
}

#[test]
fn tiled_attention_refuses_buffers_that_do_not_fit_its_shape() {
    use echovlm_core::cpu::{CpuError, HostAttention};
    let x = vec![0f32; 2 * 4 * 8];
    let base = HostAttention {
        q: &x,
        k: &x,
        v: &x,
        batch: 1,
        heads: 2,
        kv_heads: 2,
        queries: 4,
        keys: 4,
        capacity: 4,
        dim: 8,
        mask: None,
        causal: true,
    };
    assert_eq!(base.run().unwrap().len(), 64);
    let short = &x[..63];
    let cases = [
        HostAttention { q: short, ..base },
        HostAttention { v: short, ..base },
        HostAttention {
            kv_heads: 0,
            ..base
        },
        HostAttention { heads: 3, ..base },
        HostAttention { keys: 5, ..base },
        HostAttention {
            mask: Some(&[false; 15]),
            ..base
        },
        HostAttention {
            batch: usize::MAX / 2,
            ..base
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let err = case.run().unwrap_err();
        assert!(
            matches!(
                err,
                CpuError::Length { .. } | CpuError::Shape { .. } | CpuError::Overflow { .. }
            ),
            "case {i}: {err}"
        );
    }
}

#[test]
fn prompt_attention_on_the_cpu_matches_burn() {
    use echovlm_core::backend::attention;
    let device = Device::default();
    let normal = Distribution::Normal(0.0, 1.0);
    for (b, h, h_kv, s_q, s_kv, d) in [(1, 28, 4, 150, 150, 128), (2, 4, 2, 33, 300, 16)] {
        let q = Tensor::<4>::random([b, h, s_q, d], normal, &device);
        let k = Tensor::<4>::random([b, h_kv, s_kv, d], normal, &device);
        let v = Tensor::<4>::random([b, h_kv, s_kv, d], normal, &device);
        let hidden: Vec<bool> = (0..b * s_q * s_kv)
            .map(|i| (i / (s_q * s_kv)) == 1 && i % s_kv < 4)
            .collect();
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(hidden, [b, 1, s_q, s_kv]), &device);
        for (m, causal) in [
            (None, true),
            (Some(mask.clone()), true),
            (Some(mask), false),
        ] {
            let want = burn_attention(q.clone(), k.clone(), v.clone(), m.clone(), causal);
            let got = flex_f32_vec(attention(q.clone(), k.clone(), v.clone(), m, causal));
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff < 1e-5,
                "b{b} h{h}/{h_kv} s_q {s_q} s_kv {s_kv}: {diff}"
            );
        }
    }
}
