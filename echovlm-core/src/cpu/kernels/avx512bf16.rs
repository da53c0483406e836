//! The AVX512_BF16 product (x86-64): prompt-sized products of bf16 weights with activations
//! rounded to bf16, on `vdpbf16ps`, which multiplies and adds two bf16 pairs per f32 lane: 32
//! multiply-adds per instruction where an f32 FMA does 16.
//!
//! Both operands are read row-major along the shared dimension, so the weights stay in the
//! layout every other kernel reads: each micro-tile keeps `MR x NR` accumulators (one per
//! activation row and weight row) in registers across the whole dimension and sums each one's
//! lanes once at the end.

use std::arch::x86_64::*;

/// Activation rows per micro-tile.
const MR: usize = 4;
/// Weight rows per micro-tile.
const NR: usize = 4;
/// bf16 values per 512-bit vector.
const LANES: usize = 32;

/// Reinterprets 32 raw bf16 values as the operand type of `vdpbf16ps`.
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vectors; every bit pattern is a valid value of either.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// One micro-tile: `A` activation rows (from `x`, `xs` apart) times `B` weight rows (from `w`,
/// `c` apart), summed over `c` values into `y[i · ys + j]`.
///
/// # Safety
/// The CPU supports AVX-512F, AVX-512BW and AVX512_BF16; `x` holds `A` rows of at least
/// `c.div_ceil(32) · 32` readable values, `w` `B` rows of `c`, and `y` is writable at every
/// `i · ys + j` for `i < A`, `j < B`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const A: usize, const B: usize>(
    x: *const u16,
    xs: usize,
    w: *const u16,
    c: usize,
    y: *mut f32,
    ys: usize,
) {
    let full = c / LANES * LANES;
    let mut acc = [[_mm512_setzero_ps(); B]; A];
    let mut k = 0;
    while k < full {
        let mut wv = [_mm512_setzero_si512(); B];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = unsafe { _mm512_loadu_si512(w.add(j * c + k) as *const __m512i) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let xv = bh(unsafe { _mm512_loadu_si512(x.add(i * xs + k) as *const __m512i) });
            for (a, &wj) in row.iter_mut().zip(&wv) {
                *a = _mm512_dpbf16_ps(*a, xv, bh(wj));
            }
        }
        k += LANES;
    }
    if full < c {
        // the row's last values: the weights masked, the activations zero-padded
        let mask: __mmask32 = (1u32 << (c - full)) - 1;
        let mut wv = [_mm512_setzero_si512(); B];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = unsafe { _mm512_maskz_loadu_epi16(mask, w.add(j * c + full) as *const i16) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let xv =
                bh(unsafe { _mm512_maskz_loadu_epi16(mask, x.add(i * xs + full) as *const i16) });
            for (a, &wj) in row.iter_mut().zip(&wv) {
                *a = _mm512_dpbf16_ps(*a, xv, bh(wj));
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            unsafe { *y.add(i * ys + j) = _mm512_reduce_add_ps(*a) };
        }
    }
}

/// Runs `tile::<A, B>` for the `a x b` corner (`1 ≤ a ≤ MR`, `1 ≤ b ≤ NR`).
macro_rules! tile_of {
    ($a:expr, $b:expr, $($arg:expr),*) => {
        match ($a, $b) {
            (4, 4) => tile::<4, 4>($($arg),*),
            (4, 3) => tile::<4, 3>($($arg),*),
            (4, 2) => tile::<4, 2>($($arg),*),
            (4, _) => tile::<4, 1>($($arg),*),
            (3, 4) => tile::<3, 4>($($arg),*),
            (3, 3) => tile::<3, 3>($($arg),*),
            (3, 2) => tile::<3, 2>($($arg),*),
            (3, _) => tile::<3, 1>($($arg),*),
            (2, 4) => tile::<2, 4>($($arg),*),
            (2, 3) => tile::<2, 3>($($arg),*),
            (2, 2) => tile::<2, 2>($($arg),*),
            (2, _) => tile::<2, 1>($($arg),*),
            (_, 4) => tile::<1, 4>($($arg),*),
            (_, 3) => tile::<1, 3>($($arg),*),
            (_, 2) => tile::<1, 2>($($arg),*),
            _ => tile::<1, 1>($($arg),*),
        }
    };
}

/// `y[i · ys + j] = Σ_k x[i · xs + k] · w[j · c + k]` for the activation rows of `x` (bf16,
/// each zero-padded from `c` to `xs` values: `m = x.len() / xs` rows) and the weight rows of `w`
/// (bf16, `c` each: `n = w.len() / c` rows).
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX512_BF16, and `y` must be writable at
/// `i · ys + j` for every `i < m`, `j < n`, with no other thread touching those values. (The
/// slice shapes are checked: `c` positive, `xs` a multiple of 32 and at least `c`, or this
/// panics.)
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::cpu) unsafe fn gemm_bf16(
    x: &[u16],
    xs: usize,
    w: &[u16],
    c: usize,
    y: *mut f32,
    ys: usize,
) {
    assert!(
        c > 0 && xs.is_multiple_of(LANES) && xs >= c,
        "bf16 product shapes"
    );
    let (m, n) = (x.len() / xs, w.len() / c);
    // one group of activation rows stays in L1 while it meets every weight row of the tile
    for i0 in (0..m).step_by(MR) {
        let a = MR.min(m - i0);
        for j0 in (0..n).step_by(NR) {
            let b = NR.min(n - j0);
            // SAFETY: rows i0..i0+a of x (xs apart, each xs ≥ c.div_ceil(32)·32 long since xs
            // is a multiple of 32 and ≥ c) and rows j0..j0+b of w (c apart) lie within x and w
            // (m = x.len() / xs, n = w.len() / c whole rows); y is writable there by contract.
            unsafe {
                tile_of!(
                    a,
                    b,
                    x.as_ptr().add(i0 * xs),
                    xs,
                    w.as_ptr().add(j0 * c),
                    c,
                    y.add(i0 * ys + j0),
                    ys
                )
            }
        }
    }
}
