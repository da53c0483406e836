//! The CPU kernels against a plain f64 reference, and the packed linear layer against Burn's
//! portable matmul; shapes that overflow or do not match their buffers are refused.
//!
//! Every test runs with the kernel `ECHOVLM_CPU_KERNEL` selects (CI runs this file once per
//! kernel); `every_kernel_matches_the_reference` also compares all kernels the CPU has within
//! one run.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use echovlm_core::cpu::{
    CpuError, INT4_GROUP, INT8_BLOCK, KERNEL_ENV, Kernel, PackedWeight, SMALL_M, WeightFormat,
    active_kernel, silu_mul_with,
};
use echovlm_core::host::flex_f32_vec;
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

/// Every format.
const FORMATS: [WeightFormat; 4] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::Int8,
    WeightFormat::Int4,
];

/// The activations an int4 or int8 product with few rows multiplies with, written
/// independently of the library: per block of `block` values (32 for int4, 64 for int8),
/// `d = max|x| / 127`, `q = round(x / d)` (ties to even), `x̂ = d · q`.
fn int8_activations(x: &[f32], m: usize, cols: usize, block: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols).take(m) {
        for block in row.chunks(block) {
            let d = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            out.extend(block.iter().map(|&v| {
                if d > 0.0 {
                    (v * (1.0 / d)).round_ties_even() * d
                } else {
                    0.0
                }
            }));
        }
    }
    out
}

/// The activations the product of `format` weights with `m` rows sees: int8 quantises them
/// (per block of 64), int4 for matrix-vector products (per block of 32), bf16 rounds them to
/// bf16, every other case multiplies them as they are.
fn seen_activations(format: WeightFormat, x: &[f32], m: usize, cols: usize) -> Vec<f32> {
    if format == WeightFormat::Int4 && m <= SMALL_M {
        int8_activations(x, m, cols, INT4_GROUP)
    } else if format == WeightFormat::Int8 {
        int8_activations(x, m, cols, INT8_BLOCK)
    } else if format == WeightFormat::Bf16 {
        x.iter().map(|&v| bf16_round(v)).collect()
    } else {
        x.to_vec()
    }
}

/// `v` rounded to bf16 (to nearest, ties to even; finite values), as an f32.
fn bf16_round(v: f32) -> f32 {
    let b = v.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// Largest relative error a kernel may make against the f64 reference: f32 accumulation, and
/// for int4 the subtraction of the weights' offset at the end.
fn tolerance(format: WeightFormat) -> f32 {
    if format == WeightFormat::Int4 {
        1e-5
    } else {
        2e-6
    }
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
    // odd sizes exercise the tails; 64-multiples the vector int8 path; 896 = 28 int4 groups
    // (three passes of eight and a tail of four), 100 and 70 a partial last group; 101 an odd
    // last column (bf16 panels store columns in pairs); 520 x 512 is large enough for the
    // products to run on the thread pool
    for &(rows, cols) in &[
        (37, 100),
        (11, 101),
        (520, 512),
        (130, 128),
        (64, 3584 / 4),
        (9, 70),
        (3, 8 * INT4_GROUP),
    ] {
        let w = values(rows * cols, (rows * cols) as u64);
        for m in [1, 2, 3, 4, 5, SMALL_M, SMALL_M + 1, 23] {
            let x = values(m * cols, m as u64 + 7);
            for format in FORMATS {
                let p = PackedWeight::from_f32(rows, cols, &w, format).unwrap();
                // the reference uses exactly the weights the format stores
                let stored = p.to_f32();
                let want = reference(
                    &stored,
                    &seen_activations(format, &x, m, cols),
                    rows,
                    cols,
                    m,
                );
                let mut got = vec![0f32; m * rows];
                p.matmul(&x, m, &mut got).unwrap();
                let e = max_rel(&got, &want);
                assert!(
                    e < tolerance(format),
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
    let q = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int8)
        .unwrap()
        .to_f32();
    for r in 0..rows {
        for (b, chunk) in w[r * cols..(r + 1) * cols].chunks(INT8_BLOCK).enumerate() {
            let step = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (i, &v) in chunk.iter().enumerate() {
                let d = (q[r * cols + b * INT8_BLOCK + i] - v).abs();
                assert!(d <= step * 0.5 + 1e-6, "{d} > half step {step}");
            }
        }
    }
    let b = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Bf16)
        .unwrap()
        .to_f32();
    for (x, y) in b.iter().zip(&w) {
        assert!((x - y).abs() <= y.abs() / 256.0, "bf16 rounding {x} vs {y}");
    }
    // int4: step = |m| / 8 for the group's value m of largest magnitude (scale rounded to f16);
    // m itself lands on level −8 exactly, values of the other sign beyond 7 steps clamp to 7
    let q = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int4)
        .unwrap()
        .to_f32();
    for r in 0..rows {
        for (g, chunk) in w[r * cols..(r + 1) * cols].chunks(INT4_GROUP).enumerate() {
            let m = chunk
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let step = half::f16::from_f32(m / -8.0).to_f32().abs();
            for (i, &v) in chunk.iter().enumerate() {
                let got = q[r * cols + g * INT4_GROUP + i];
                let clamped = v.signum() != m.signum() && v.abs() > 7.5 * step;
                let bound = if clamped {
                    v.abs() - 7.0 * step
                } else {
                    step * 0.5
                };
                assert!(
                    (got - v).abs() <= bound + 1e-5,
                    "int4 row {r} group {g}: {v} stored as {got} (step {step})"
                );
            }
            let at = chunk.iter().position(|&v| v == m).unwrap();
            assert!((q[r * cols + g * INT4_GROUP + at] - m).abs() <= m.abs() * 1e-3);
        }
    }
}

#[test]
fn int4_levels_round_trip_exactly_and_short_groups_are_padded() {
    // −4.0, −3.5, …, 3.5: the largest magnitude is −4 → scale 0.5, and every value is a level
    let cols = INT4_GROUP + 8;
    let row: Vec<f32> = (0..cols).map(|i| (i % 16) as f32 * 0.5 - 4.0).collect();
    let w: Vec<f32> = row
        .iter()
        .chain(row.iter().map(|v| v * -0.25).collect::<Vec<_>>().iter())
        .copied()
        .collect();
    let p = PackedWeight::from_f32(2, cols, &w, WeightFormat::Int4).unwrap();
    // the second row's largest magnitude is +1 (from −4 · −0.25): levels of scale −0.125
    assert_eq!(p.to_f32(), w);
    // 2 groups per row (the second padded), 16 bytes and an f16 scale each
    assert_eq!(p.nbytes(), 2 * 2 * (16 + 2));
    assert_eq!(p.format(), WeightFormat::Int4);
    let mut r = vec![0f32; cols];
    p.row(1, &mut r).unwrap();
    assert_eq!(r, w[cols..]);
    // one-hot rows read single activations back as quantised: a block whose largest value is
    // 127 has scale 1, and halves round to even (2.5 → 2, 3.5 → 4, −2.5 → −2)
    let mut x = vec![0f32; INT4_GROUP];
    x[..4].copy_from_slice(&[127.0, 2.5, 3.5, -2.5]);
    let mut one_hot = vec![0f32; 3 * INT4_GROUP];
    for r in 0..3 {
        one_hot[r * INT4_GROUP + r + 1] = 1.0;
    }
    let p = PackedWeight::from_f32(3, INT4_GROUP, &one_hot, WeightFormat::Int4).unwrap();
    assert_eq!(p.to_f32(), one_hot);
    for kernel in Kernel::ALL {
        let mut y = [0f32; 3];
        p.matmul_with(kernel, &x, 1, &mut y).unwrap();
        assert_eq!(y, [2.0, 4.0, -2.0], "{kernel}");
    }
    // a zero group has scale 0 and stays zero
    let z = PackedWeight::from_f32(1, 40, &[0.0; 40], WeightFormat::Int4).unwrap();
    assert_eq!(z.to_f32(), vec![0.0; 40]);
    let mut y = [1f32; 2];
    z.matmul(&values(80, 2), 2, &mut y).unwrap();
    assert_eq!(y, [0.0; 2]);
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
    )
    .unwrap();
    let from_values = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Bf16).unwrap();
    assert_eq!(from_bytes.to_f32(), from_values.to_f32());
    let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = PackedWeight::from_storage(
        rows,
        cols,
        &f32_bytes,
        StorageDtype::F32,
        WeightFormat::Int8,
    )
    .unwrap();
    let b = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int8).unwrap();
    assert_eq!(a.to_f32(), b.to_f32());
    // one panel of 32 rows (12 real, the rest zero padding) in two records of 64 columns:
    // 32 f32 scales and 64 · 32 weights each
    assert_eq!(a.nbytes(), 2 * (32 * 4 + 64 * 32));
    let a = PackedWeight::from_storage(
        rows,
        cols,
        &bf16_bytes,
        StorageDtype::BF16,
        WeightFormat::Int4,
    )
    .unwrap();
    let rounded: Vec<f32> = w
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    let b = PackedWeight::from_f32(rows, cols, &rounded, WeightFormat::Int4).unwrap();
    assert_eq!(a.to_f32(), b.to_f32());
    // 4 groups of 16 bytes and an f16 scale per row: 0.5625 bytes per weight
    assert_eq!(a.nbytes(), rows * cols / 2 + rows * 4 * 2);
    assert_eq!(
        a.nbytes() as f64,
        (rows * cols) as f64 * WeightFormat::Int4.bytes_per_weight()
    );
}

#[test]
fn packed_linear_equals_portable_linear() {
    let device = Device::default();
    let (d_in, d_out) = (192, 75);
    let w = values(d_out * d_in, 5);
    let bias = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &device);
    for format in FORMATS {
        let packed = PackedWeight::from_f32(d_out, d_in, &w, format).unwrap();
        let stored = packed.to_f32();
        let fast = Linear::packed(packed, Some(bias.clone()));
        let portable = Linear::new(
            Tensor::from_data(TensorData::new(stored, [d_out, d_in]), &device),
            Some(bias.clone()),
        );
        for tokens in [1, 3, 40] {
            let x = Tensor::<3>::random([2, tokens, d_in], Distribution::Normal(0.0, 1.0), &device);
            let xs = flex_f32_vec(x.clone());
            // the portable layer gets the activations the packed product sees
            let seen = seen_activations(format, &xs, 2 * tokens, d_in);
            let a = flex_f32_vec(fast.forward(x));
            let b = flex_f32_vec(portable.forward(Tensor::<3>::from_data(
                TensorData::new(seen, [2, tokens, d_in]),
                &device,
            )));
            let e = max_rel(&a, &b);
            assert!(e < 1e-5, "{format:?}, {tokens} tokens: {e}");
        }
    }
}

#[test]
fn every_kernel_matches_the_reference() {
    // the kernels this CPU has, each called by name in this one process
    // 9 int4 groups per row: one pass of eight groups and a tail; 100 columns: a partial last
    // vector of 32 bf16; 70 and 37 weight rows and 23 activation rows: partial micro-tiles
    for (rows, cols) in [(70, 3 * INT8_BLOCK + INT4_GROUP), (37, 100)] {
        let w = values(rows * cols, 21);
        for format in FORMATS {
            let p = PackedWeight::from_f32(rows, cols, &w, format).unwrap();
            let stored = p.to_f32();
            for m in [1, 4, 5, SMALL_M, SMALL_M + 1, 23] {
                let x = values(m * cols, 31 + m as u64);
                let want = reference(
                    &stored,
                    &seen_activations(format, &x, m, cols),
                    rows,
                    cols,
                    m,
                );
                let mut portable = vec![0f32; m * rows];
                p.matmul_with(Kernel::Portable, &x, m, &mut portable)
                    .unwrap();
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                    let mut got = vec![0f32; m * rows];
                    p.matmul_with(kernel, &x, m, &mut got).unwrap();
                    let e = max_rel(&got, &want);
                    assert!(
                        e < tolerance(format),
                        "{kernel} {format:?} {rows}x{cols} m={m}: relative error {e}"
                    );
                    // the vector kernels compute what the portable loop computes
                    let e = max_rel(&got, &portable);
                    assert!(
                        e < 2e-6,
                        "{kernel} {format:?} {rows}x{cols} m={m}: {e} from the portable kernel"
                    );
                }
            }
        }
    }
}

#[test]
fn panel_products_cover_partial_panels_column_passes_and_row_blocks() {
    // f32 weights live in panels of 32 rows, and prompt-sized products of the other formats
    // widen tiles of 128 rows into that layout; products run 512 columns per pass (1100: two
    // whole passes and a partial one, which add to the first) and 256 activation rows per task
    // (300: a second, partial block); 45, 52 and 48 rows end in partial panels of 13, 20 and 16
    // rows (the last two split across the two 16-lane halves); 150 rows: a second, partial
    // tile. bf16 panels hold column pairs, 256 pairs per pass: 1101 columns end in a lone
    // column (and three passes, the last partial)
    for (rows, cols) in [(45, 1100), (20, 1101), (52, 70), (48, 40), (150, 64)] {
        let w = values(rows * cols, 5);
        for format in FORMATS {
            let p = PackedWeight::from_f32(rows, cols, &w, format).unwrap();
            let stored = p.to_f32();
            if format == WeightFormat::F32 || format == WeightFormat::Bf16 {
                // the panel layouts read back row by row exactly (bf16: its rounded values)
                let w: Vec<f32> = if format == WeightFormat::Bf16 {
                    w.iter().map(|&v| bf16_round(v)).collect()
                } else {
                    w.clone()
                };
                assert_eq!(stored, w, "{rows}x{cols}: rows read back");
                let mut row = vec![0f32; cols];
                p.row(rows - 1, &mut row).unwrap();
                assert_eq!(row, w[(rows - 1) * cols..], "{rows}x{cols}: last row");
            }
            for m in [1, 3, SMALL_M + 1, 300] {
                let x = values(m * cols, 77 + m as u64);
                let seen = seen_activations(format, &x, m, cols);
                let want = reference(&stored, &seen, rows, cols, m);
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                    // stale values in the output must not leak into the sums
                    let mut got = vec![f32::NAN; m * rows];
                    p.matmul_with(kernel, &x, m, &mut got).unwrap();
                    let e = max_rel(&got, &want);
                    assert!(
                        e < tolerance(format),
                        "{kernel} {format:?} {rows}x{cols} m={m}: relative error {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_parts_is_each_parts_product_bit_for_bit() {
    // parts of different heights (partial panels, a second group, several tasks each) in one
    // pass must give each part's own product, in every format and on every kernel the CPU has
    for cols in [70, 1101] {
        let heights = [45, 20, 150];
        let ws: Vec<Vec<f32>> = heights
            .iter()
            .enumerate()
            .map(|(i, &r)| values(r * cols, 30 + i as u64))
            .collect();
        for format in FORMATS {
            let parts: Vec<PackedWeight> = heights
                .iter()
                .zip(&ws)
                .map(|(&r, w)| PackedWeight::from_f32(r, cols, w, format).unwrap())
                .collect();
            let refs: Vec<&PackedWeight> = parts.iter().collect();
            for m in [1, 3, SMALL_M, SMALL_M + 1, 300] {
                let x = values(m * cols, 60 + m as u64);
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                    let mut got: Vec<Vec<f32>> =
                        heights.iter().map(|&r| vec![f32::NAN; m * r]).collect();
                    let mut ys: Vec<&mut [f32]> = got.iter_mut().map(|g| &mut g[..]).collect();
                    PackedWeight::matmul_parts_with(kernel, &refs, &x, m, &mut ys).unwrap();
                    for (p, g) in parts.iter().zip(&got) {
                        let mut want = vec![0f32; m * p.rows()];
                        p.matmul_with(kernel, &x, m, &mut want).unwrap();
                        assert!(
                            g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{kernel} {format:?} {}x{cols} m={m}: part differs",
                            p.rows()
                        );
                    }
                }
            }
        }
    }
    // parts of other widths or formats, and outputs that do not match, are refused
    let a = PackedWeight::from_f32(4, 8, &values(32, 1), WeightFormat::F32).unwrap();
    let wider = PackedWeight::from_f32(4, 9, &values(36, 2), WeightFormat::F32).unwrap();
    let bf16 = PackedWeight::from_f32(4, 8, &values(32, 3), WeightFormat::Bf16).unwrap();
    let x = values(16, 4);
    let (mut y0, mut y1) = (vec![0f32; 8], vec![0f32; 8]);
    for other in [&wider, &bf16] {
        let r = PackedWeight::matmul_parts(&[&a, other], &x, 2, &mut [&mut y0, &mut y1]);
        assert!(matches!(r, Err(CpuError::Shape { .. })), "{r:?}");
    }
    let r = PackedWeight::matmul_parts(&[&a, &a], &x, 2, &mut [&mut y0]);
    assert!(matches!(r, Err(CpuError::Shape { .. })), "{r:?}");
    let r = PackedWeight::matmul_parts(&[&a, &a], &x, 2, &mut [&mut y0, &mut y1[..7]]);
    assert!(matches!(r, Err(CpuError::Length { .. })), "{r:?}");
}

#[test]
fn linear_parts_and_swiglu_equal_the_separate_layers() {
    // the layer-level entry points: one pass of packed parts with their biases added after, and
    // the one-pass SwiGLU, against each layer's own forward and silu_mul (Burn tensor layers
    // take the separate path and give the same values)
    let device = Device::default();
    let d_in = 96;
    let x = Tensor::<3>::random([2, 11, d_in], Distribution::Normal(0.0, 1.0), &device);
    for format in FORMATS {
        let layer = |rows: usize, seed: u64, bias: bool| {
            let w = values(rows * d_in, seed);
            let b =
                bias.then(|| Tensor::<1>::random([rows], Distribution::Normal(0.0, 1.0), &device));
            Linear::packed(PackedWeight::from_f32(rows, d_in, &w, format).unwrap(), b)
        };
        let (q, k, v) = (layer(64, 1, true), layer(40, 2, true), layer(40, 3, false));
        let outs = Linear::forward_parts(&[&q, &k, &v], x.clone());
        for (out, l) in outs.into_iter().zip([&q, &k, &v]) {
            assert_eq!(out.dims(), [2, 11, l.d_out()]);
            assert_eq!(
                flex_f32_vec(out),
                flex_f32_vec(l.forward(x.clone())),
                "{format:?}"
            );
        }
        let (gate, up) = (layer(70, 4, false), layer(70, 5, false));
        let act = Linear::swiglu(&gate, &up, &x).expect("packed, no bias");
        let want = echovlm_core::backend::silu_mul(gate.forward(x.clone()), up.forward(x.clone()));
        assert_eq!(act.dims(), [2, 11, 70]);
        assert_eq!(flex_f32_vec(act), flex_f32_vec(want), "{format:?}");
        // a bias, or a partner of another shape, is not fused
        assert!(Linear::swiglu(&q, &up, &x).is_none());
        assert!(Linear::swiglu(&gate, &layer(64, 6, false), &x).is_none());
    }
    let tensor = Linear::new(
        Tensor::random([8, d_in], Distribution::Normal(0.0, 1.0), &device),
        None,
    );
    assert!(Linear::swiglu(&tensor, &tensor, &x).is_none());
    let both = Linear::forward_parts(&[&tensor, &tensor], x.clone());
    assert_eq!(
        flex_f32_vec(both[1].clone()),
        flex_f32_vec(tensor.forward(x))
    );
}

#[test]
fn swiglu_is_the_two_products_and_silu_mul_bit_for_bit() {
    // the one-pass SwiGLU multiplies each group of panels of both matrices into scratch and
    // writes only the activation: it must give exactly the two products' silu_mul, in every
    // format, for decode-sized and prompt-sized activations (partial panels and groups, a
    // second block of 256 rows, a partial column pass), on every kernel the CPU has
    for (rows, cols) in [(45, 1100), (20, 1101), (300, 64), (150, 70)] {
        let (wg, wu) = (values(rows * cols, 11), values(rows * cols, 12));
        for format in FORMATS {
            let gate = PackedWeight::from_f32(rows, cols, &wg, format).unwrap();
            let up = PackedWeight::from_f32(rows, cols, &wu, format).unwrap();
            for m in [1, 3, SMALL_M, SMALL_M + 1, 300] {
                let x = values(m * cols, 90 + m as u64);
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                    let mut want = vec![0f32; m * rows];
                    let mut u = vec![0f32; m * rows];
                    gate.matmul_with(kernel, &x, m, &mut want).unwrap();
                    up.matmul_with(kernel, &x, m, &mut u).unwrap();
                    silu_mul_with(kernel, &mut want, &u);
                    // stale values in the output must not leak into it
                    let mut got = vec![f32::NAN; m * rows];
                    gate.swiglu_with(kernel, &up, &x, m, &mut got).unwrap();
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernel} {format:?} {rows}x{cols} m={m}: swiglu differs"
                    );
                }
            }
        }
    }
    // gate and up of different shapes or formats are refused, and wrong lengths too
    let g = PackedWeight::from_f32(4, 8, &values(32, 1), WeightFormat::F32).unwrap();
    let wider = PackedWeight::from_f32(4, 9, &values(36, 2), WeightFormat::F32).unwrap();
    let bf16 = PackedWeight::from_f32(4, 8, &values(32, 3), WeightFormat::Bf16).unwrap();
    let x = values(16, 4);
    let mut act = vec![0f32; 8];
    for other in [&wider, &bf16] {
        assert!(matches!(
            g.swiglu(other, &x, 2, &mut act),
            Err(CpuError::Shape { .. })
        ));
    }
    assert!(matches!(
        g.swiglu(&g, &x[..15], 2, &mut act),
        Err(CpuError::Length { .. })
    ));
    assert!(matches!(
        g.swiglu(&g, &x, 2, &mut act[..7]),
        Err(CpuError::Length { .. })
    ));
}

#[test]
fn bf16_products_round_the_activations() {
    // bf16 weights compute with bf16 activations on every kernel, for decode (up to SMALL_M
    // rows) as for prompts. Values with low bits set tell rounded from exact apart.
    let (rows, cols) = (12, 96);
    let w = values(rows * cols, 5);
    let p = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Bf16).unwrap();
    let stored = p.to_f32();
    for m in [1, SMALL_M, SMALL_M + 1] {
        let x: Vec<f32> = values(m * cols, 9)
            .iter()
            .map(|v| v * (1.0 + 1.0 / 300.0))
            .collect();
        let exact = reference(&stored, &x, rows, cols, m);
        let rounded_x: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
        assert_ne!(rounded_x, x, "the activations must lose bits in bf16");
        let rounded = reference(&stored, &rounded_x, rows, cols, m);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let mut got = vec![0f32; m * rows];
            p.matmul_with(kernel, &x, m, &mut got).unwrap();
            assert!(max_rel(&got, &rounded) < 2e-6, "{kernel} m={m}");
            assert!(
                max_rel(&got, &exact) > 1e-4,
                "{kernel} m={m}: rounding not told apart"
            );
        }
    }
}

#[test]
fn int8_decode_products_are_the_same_bits_on_every_kernel() {
    // A few activation rows quantised per block of 64 meet the int8 weights in exact integer
    // sums, each block's sum scaled by both scales in one order: every kernel (VNNI, the
    // shifts-and-FMA AVX-512 and AVX2 loops, the portable loop) gives the same bits. Column
    // counts: whole blocks, a partial last block, a partial last quad (4k + 1, 4k + 3), and a
    // long row whose scaled block sums accumulate over many blocks.
    for &(rows, cols) in &[
        (70, 3 * INT8_BLOCK),
        (37, 100),
        (33, 67),
        (5, 131),
        (40, 3584),
    ] {
        let w: Vec<f32> = values(rows * cols, 41).iter().map(|v| v * 0.2).collect();
        let p = PackedWeight::from_f32(rows, cols, &w, WeightFormat::Int8).unwrap();
        for m in [1, 2, 3, 4, 5, SMALL_M] {
            // large values next to small ones: the quantised activations differ from the
            // f32 ones by far more than f32 rounding
            let x: Vec<f32> = values(m * cols, 77 + m as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 13 == 0 { v * 40.0 } else { *v })
                .collect();
            let mut portable = vec![0f32; m * rows];
            p.matmul_with(Kernel::Portable, &x, m, &mut portable)
                .unwrap();
            let quantised = reference(
                &p.to_f32(),
                &int8_activations(&x, m, cols, INT8_BLOCK),
                rows,
                cols,
                m,
            );
            let exact = reference(&p.to_f32(), &x, rows, cols, m);
            assert!(max_rel(&portable, &quantised) < 2e-6, "{rows}x{cols} m={m}");
            assert!(
                max_rel(&portable, &exact) > 1e-4,
                "{rows}x{cols} m={m}: quantisation not told apart"
            );
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut got = vec![0f32; m * rows];
                p.matmul_with(kernel, &x, m, &mut got).unwrap();
                assert_eq!(got, portable, "{kernel} {rows}x{cols} m={m}");
            }
        }
    }
    // one-hot weight rows (127 at one column: scale 1) read single activations back as
    // quantised, times 127: a block whose largest value is 127 has scale 1, and halves round
    // to even (2.5 → 2, 3.5 → 4, −2.5 → −2); rows 4 and 5 read columns 65 and 127 of the
    // second block (scale 0.5: 1.25 → 2.5 → 2 · 0.5, 0.75 → 1.5 → 2 · 0.5)
    let cols = 2 * INT8_BLOCK;
    let mut x = vec![0f32; cols];
    x[..4].copy_from_slice(&[127.0, 2.5, 3.5, -2.5]);
    x[64] = -63.5;
    x[65] = 1.25;
    x[127] = 0.75;
    let mut one_hot = vec![0f32; 6 * cols];
    for (r, c) in [0, 1, 2, 3, 65, 127].into_iter().enumerate() {
        one_hot[r * cols + c] = 127.0;
    }
    let p = PackedWeight::from_f32(6, cols, &one_hot, WeightFormat::Int8).unwrap();
    assert_eq!(p.to_f32(), one_hot);
    let want = [127.0, 2.0, 4.0, -2.0, 1.0, 1.0].map(|v| v * 127.0);
    for kernel in Kernel::ALL {
        let mut y = [0f32; 6];
        p.matmul_with(kernel, &x, 1, &mut y).unwrap();
        assert_eq!(y, want, "{kernel}");
    }
}

/// Set by `the_kernel_switch_selects_the_kernel` in the copies of this test binary it starts.
const CHILD_ENV: &str = "ECHOVLM_KERNEL_SWITCH_CHILD";

#[test]
fn active_kernel_reports_the_forced_path() {
    // under `ECHOVLM_CPU_KERNEL=<kernel>` (CI runs this file once per kernel) the forced path
    // must be the one that runs; unset or `auto`, the fastest one the CPU has
    let active = active_kernel();
    match std::env::var(KERNEL_ENV).ok().as_deref() {
        None | Some("") | Some("auto") => assert_eq!(active, Kernel::best_supported()),
        Some(name) => {
            // a kernel this CPU lacks falls back to the fastest one below it
            let wanted: Kernel = name.parse().expect("ECHOVLM_CPU_KERNEL names a kernel");
            assert_eq!(active, fastest_at_most(wanted), "{KERNEL_ENV}={name}");
        }
    }
    if let Ok(expected) = std::env::var(CHILD_ENV) {
        assert_eq!(active.name(), expected);
    }
}

/// The fastest kernel this CPU runs that is no faster than `wanted`.
fn fastest_at_most(wanted: Kernel) -> Kernel {
    Kernel::ALL
        .into_iter()
        .rfind(|&k| k <= wanted && k.is_supported())
        .unwrap_or(Kernel::Portable)
}

#[test]
fn the_kernel_switch_selects_the_kernel() {
    // runs `active_kernel_reports_the_forced_path` in a fresh process per kernel and value
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let best = Kernel::best_supported();
    // every kernel by name: the ones this CPU has run as asked, the others fall back
    let mut cases: Vec<(&str, Kernel)> = Kernel::ALL
        .into_iter()
        .map(|k| (k.name(), fastest_at_most(k)))
        .collect();
    cases.push(("auto", best));
    for (value, expected) in cases {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "active_kernel_reports_the_forced_path",
                "--test-threads=1",
            ])
            .env(KERNEL_ENV, value)
            .env(CHILD_ENV, expected.name())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{KERNEL_ENV}={value}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kernel_names_parse_and_unknown_ones_are_refused() {
    for k in Kernel::ALL {
        assert_eq!(k.name().parse::<Kernel>(), Ok(k));
        assert_eq!(k.to_string(), k.name());
    }
    assert!(Kernel::Portable.is_supported());
    assert!(matches!(
        "sse9".parse::<Kernel>(),
        Err(CpuError::UnknownName { .. })
    ));
    for format in FORMATS {
        assert_eq!(format.to_string().parse::<WeightFormat>(), Ok(format));
    }
    assert_eq!("q4".parse::<WeightFormat>(), Ok(WeightFormat::Int4));
    assert!(matches!(
        "int3".parse::<WeightFormat>(),
        Err(CpuError::UnknownName { .. })
    ));
}

/// Every constructor and entry point, fed sizes whose products overflow: an error each time.
#[test]
fn overflowing_shapes_are_refused() {
    let overflow = |r: Result<PackedWeight, CpuError>| {
        assert!(
            matches!(r, Err(CpuError::Overflow { .. })),
            "expected an overflow error, got {r:?}"
        );
    };
    let shapes = [
        (usize::MAX / 2, 3),
        (3, usize::MAX / 2),
        (usize::MAX, usize::MAX),
        // fits as elements, but not as f32 bytes
        (1 << 31, 1 << 31),
        (usize::MAX / 4 + 1, 1),
    ];
    for (rows, cols) in shapes {
        for format in FORMATS {
            overflow(PackedWeight::from_f32(rows, cols, &[1.0; 6], format));
            for storage in [StorageDtype::F32, StorageDtype::BF16, StorageDtype::F16] {
                overflow(PackedWeight::from_storage(
                    rows, cols, &[0; 12], storage, format,
                ));
            }
        }
        overflow(PackedWeight::from_bf16_bits(rows, cols, &[0; 6]));
    }

    // activations and outputs: m · cols and m · rows overflow
    let p = PackedWeight::from_f32(2, 3, &[1.0; 6], WeightFormat::F32).unwrap();
    for m in [usize::MAX / 2, usize::MAX / 3 + 1, usize::MAX] {
        let (x, mut y) = (vec![1f32; 6], vec![0f32; 4]);
        let r = p.matmul(&x, m, &mut y);
        assert!(
            matches!(r, Err(CpuError::Overflow { .. })),
            "m = {m}: {r:?}"
        );
        for kernel in Kernel::ALL {
            let r = p.matmul_with(kernel, &x, m, &mut y);
            assert!(
                matches!(r, Err(CpuError::Overflow { .. })),
                "{kernel}: {r:?}"
            );
        }
    }
}

#[test]
fn lengths_that_do_not_match_the_shape_are_refused() {
    let length = |r: Result<(), CpuError>| {
        assert!(
            matches!(r, Err(CpuError::Length { .. })),
            "expected a length error, got {r:?}"
        );
    };
    let unit = |r: Result<PackedWeight, CpuError>| r.map(|_| ());
    length(unit(PackedWeight::from_f32(
        4,
        3,
        &[0.0; 11],
        WeightFormat::Int8,
    )));
    length(unit(PackedWeight::from_bf16_bits(4, 3, &[0; 13])));
    length(unit(PackedWeight::from_storage(
        4,
        3,
        &[0; 23],
        StorageDtype::BF16,
        WeightFormat::F32,
    )));
    assert_eq!(
        PackedWeight::from_storage(4, 3, &[0; 12], StorageDtype::Other("I8"), WeightFormat::F32)
            .unwrap_err(),
        CpuError::Storage("I8")
    );

    let w = values(12, 1);
    for format in FORMATS {
        let p = PackedWeight::from_f32(4, 3, &w, format).unwrap();
        // x must be m · 3, y must be m · 4
        for (m, xl, yl) in [(2, 5, 8), (2, 6, 7), (9, 27, 35), (9, 28, 36), (1, 0, 4)] {
            let (x, mut y) = (vec![1f32; xl], vec![0f32; yl]);
            length(p.matmul(&x, m, &mut y));
            for kernel in Kernel::ALL {
                length(p.matmul_with(kernel, &x, m, &mut y));
            }
        }
        let mut row = vec![0f32; 3];
        assert_eq!(p.row(4, &mut row), Err(CpuError::Row { row: 4, rows: 4 }));
        length(p.row(0, &mut [0f32; 4]));
        p.row(3, &mut row).unwrap();
        assert_eq!(row, p.to_f32()[9..12]);
    }
}

#[test]
fn empty_matrices_multiply_to_zeros() {
    for format in FORMATS {
        // no inputs: every output is an empty sum
        let p = PackedWeight::from_f32(5, 0, &[], format).unwrap();
        assert!(p.to_f32().is_empty());
        for m in [1, SMALL_M + 3] {
            let mut y = vec![7f32; m * 5];
            p.matmul(&[], m, &mut y).unwrap();
            assert_eq!(y, vec![0f32; m * 5]);
        }
        // no outputs
        let p = PackedWeight::from_f32(0, 4, &[], format).unwrap();
        p.matmul(&[1.0; 8], 2, &mut []).unwrap();
        let p = PackedWeight::from_storage(0, 4, &[], StorageDtype::F32, format).unwrap();
        assert_eq!(p.rows(), 0);
    }
}
