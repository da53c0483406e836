//! The CPU path's row-wise kernels (RMSNorm, the per-row mix of two branches) against their
//! definitions and against the tensor operations other devices run.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use echovlm_core::backend;
use echovlm_core::cpu::{Kernel, mix_rows_with, rms_norm_with};
use echovlm_core::host::flex_f32_vec;

mod common;
use common::values;

/// The shapes: one row (a decode step, on the calling thread) and enough rows to be split over
/// the thread pool, with a width that is not a multiple of the vector lanes.
const SHAPES: [(usize, usize); 3] = [(1, 37), (300, 520), (2, 16)];

#[test]
fn rms_norm_is_the_definition_on_every_kernel() {
    for (rows, d) in SHAPES {
        let x = values(rows * d, 1);
        let w = values(d, 2);
        let eps = 1e-6f32;
        let mut first: Option<Vec<f32>> = None;
        for kernel in Kernel::ALL {
            let mut out = vec![f32::NAN; rows * d];
            rms_norm_with(kernel, &x, &w, eps, &mut out);
            for (r, (xr, or)) in x.chunks_exact(d).zip(out.chunks_exact(d)).enumerate() {
                let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for (j, (&v, &o)) in xr.iter().zip(or).enumerate() {
                    let want = v as f64 * inv * w[j] as f64;
                    assert!(
                        (o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-7,
                        "{kernel} {rows}x{d} row {r} col {j}: {o} vs {want}"
                    );
                }
            }
            // one portable source: every kernel gives the same bits
            match &first {
                None => first = Some(out),
                Some(f) => assert_eq!(&out, f, "{kernel} {rows}x{d} against the first kernel"),
            }
        }
    }
}

#[test]
fn mix_rows_is_each_rows_weighted_sum_bit_for_bit() {
    for (rows, d) in SHAPES {
        let (a, b, c) = (
            values(rows * d, 3),
            values(rows * d, 4),
            values(rows * 2, 5),
        );
        for kernel in Kernel::ALL {
            let mut got = a.clone();
            mix_rows_with(kernel, &mut got, &b, &c);
            for (i, &g) in got.iter().enumerate() {
                let r = i / d;
                let want = c[2 * r] * a[i] + c[2 * r + 1] * b[i];
                assert_eq!(g.to_bits(), want.to_bits(), "{kernel} {rows}x{d} at {i}");
            }
        }
    }
}

#[test]
fn the_cpu_paths_equal_the_tensor_operations() {
    // backend::rms_norm and backend::mix_rows take the kernels on the flex device in f32 and
    // tensor operations elsewhere (here: the autodiff device, which training uses)
    let flex = Device::default();
    let tape = Device::flex().autodiff();
    for (rows, d) in SHAPES {
        let x = Tensor::<3>::random([2, rows, d], Distribution::Normal(0.0, 1.5), &flex);
        let w = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.2), &flex);
        let on = |t: &Tensor<3>, device: &Device| Tensor::<3>::from_data(t.to_data(), device);
        let w_tape = Tensor::<1>::from_data(w.to_data(), &tape);
        // `x` stays shared: the kernel reads it in place and must leave it unchanged
        let before = flex_f32_vec(x.clone());
        let got = flex_f32_vec(backend::rms_norm(x.clone(), &w, 1e-6));
        let want: Vec<f32> = backend::rms_norm(on(&x, &tape), &w_tape, 1e-6)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(flex_f32_vec(x), before);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-6 * w.abs() + 1e-7,
                "rms_norm {rows}x{d} at {i}: {g} vs {w}"
            );
        }

        let n = 2 * rows;
        let m = |seed| Tensor::<2>::from_data(TensorData::new(values(n * d, seed), [n, d]), &flex);
        let c = Tensor::<2>::from_data(TensorData::new(values(n * 2, 8), [n, 2]), &flex);
        let (a, b) = (m(6), m(7));
        let to_tape = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &tape);
        let want: Vec<f32> = backend::mix_rows(to_tape(&c), to_tape(&a), to_tape(&b))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // `a` shared too: its values must survive the mix
        let a_before = flex_f32_vec(a.clone());
        let got = flex_f32_vec(backend::mix_rows(c, a.clone(), b));
        assert_eq!(flex_f32_vec(a), a_before);
        assert_eq!(got, want, "mix_rows {n}x{d}");
    }
}

#[test]
#[should_panic(expected = "rms_norm lengths")]
fn rms_norm_refuses_partial_rows() {
    let mut out = vec![0f32; 10];
    rms_norm_with(Kernel::Portable, &[1.0; 10], &[1.0; 4], 1e-6, &mut out);
}

#[test]
#[should_panic(expected = "mix_rows lengths")]
fn mix_rows_refuses_a_missing_weight() {
    mix_rows_with(Kernel::Portable, &mut [1.0; 6], &[1.0; 6], &[0.5; 3]);
}
