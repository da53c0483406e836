//! The CPU kernels against a plain f64 reference, and the packed linear layer against Burn's
//! portable matmul.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use echovlm_core::cpu::{INT8_BLOCK, PackedWeight, SMALL_M, WeightFormat};
use echovlm_core::host::to_f32_vec;
use echovlm_core::{Linear, StorageDtype};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * rows];
    for mi in 0..m {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[mi * cols + c] as f64)
                .sum();
            y[mi * rows + r] = s as f32;
        }
    }
    y
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn every_format_matches_the_reference_on_its_own_weights() {
    // odd sizes exercise the tails; 64-multiples the vector int8 path
    for &(rows, cols) in &[(37, 100), (130, 128), (64, 3584 / 4), (9, 70)] {
        let w = values(rows * cols, (rows * cols) as u64);
        for m in [1, 2, 3, 4, 5, SMALL_M, SMALL_M + 1, 23] {
            let x = values(m * cols, m as u64 + 7);
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let p = PackedWeight::from_f32(rows, cols, &w, format);
                // the reference uses exactly the weights the format stores
                let stored = p.to_f32();
                let want = reference(&stored, &x, rows, cols, m);
                let mut got = vec![0f32; m * rows];
                p.matmul(&x, m, &mut got);
                let e = max_rel(&got, &want);
                assert!(
                    e < 2e-6,
                    "{format:?} {rows}x{cols} m={m}: relative error {e}"
                );
            }
        }
    }
}

#[test]
fn quantisation_error_is_bounded_by_half_a_step() {
    let (rows, cols) = (16, 3 * INT8_BLOCK + 5);
    let w: Vec<f32> = values(rows * cols, 3).iter().map(|v| v * 3.0).collect();
    let q = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int8).to_f32();
    for r in 0..rows {
        for (b, chunk) in w[r * cols..(r + 1) * cols].chunks(INT8_BLOCK).enumerate() {
            let step = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (i, &v) in chunk.iter().enumerate() {
                let d = (q[r * cols + b * INT8_BLOCK + i] - v).abs();
                assert!(d <= step * 0.5 + 1e-6, "{d} > half step {step}");
            }
        }
    }
    let b = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Bf16).to_f32();
    for (x, y) in b.iter().zip(&w) {
        assert!((x - y).abs() <= y.abs() / 256.0, "bf16 rounding {x} vs {y}");
    }
}

#[test]
fn storage_bytes_pack_like_f32_values() {
    let (rows, cols) = (12, 128);
    let w = values(rows * cols, 11);
    let bf16_bytes: Vec<u8> = w
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let from_bytes = PackedWeight::from_storage(
        rows,
        cols,
        &bf16_bytes,
        StorageDtype::BF16,
        WeightFormat::Bf16,
    );
    let from_values = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Bf16);
    assert_eq!(from_bytes.to_f32(), from_values.to_f32());
    let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = PackedWeight::from_storage(
        rows,
        cols,
        &f32_bytes,
        StorageDtype::F32,
        WeightFormat::Int8,
    );
    let b = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int8);
    assert_eq!(a.to_f32(), b.to_f32());
    assert_eq!(a.nbytes(), rows * cols + rows * 2 * 4);
}

#[test]
fn packed_linear_equals_portable_linear() {
    let device = Device::default();
    let (d_in, d_out) = (192, 75);
    let w = values(d_out * d_in, 5);
    let bias = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &device);
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
        let packed = PackedWeight::from_f32(d_out, d_in, &w, format);
        let stored = packed.to_f32();
        let fast = Linear::packed(packed, Some(bias.clone()));
        let portable = Linear::new(
            Tensor::from_data(TensorData::new(stored, [d_out, d_in]), &device),
            Some(bias.clone()),
        );
        for tokens in [1, 3, 40] {
            let x = Tensor::<3>::random([2, tokens, d_in], Distribution::Normal(0.0, 1.0), &device);
            let a = to_f32_vec(fast.forward(x.clone()));
            let b = to_f32_vec(portable.forward(x));
            let e = max_rel(&a, &b);
            assert!(e < 1e-5, "{format:?}, {tokens} tokens: {e}");
        }
    }
}
