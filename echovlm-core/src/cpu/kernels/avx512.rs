//! The AVX-512F kernels (x86-64).
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use std::arch::x86_64::*;

use super::{INT8_BLOCK, PREFETCH, check_int8};

/// `R` activation rows times one weight panel (see [`PanelF32`](super::PanelF32)): two
/// accumulators per row (the panel's 32 columns), one broadcast activation per row and step.
///
/// # Safety
/// The CPU supports AVX-512F; `x` is readable at `i · ldx + kk` and `w` at `kk · 32 + j` for
/// `i < R`, `kk < kc`, `j < 32`; `y` is writable (and, with `accumulate`, readable) at
/// `i · ldy + j` for `i < R` and the lanes set in `masks`.
#[allow(clippy::too_many_arguments)] // the PanelF32 signature and its parts
#[target_feature(enable = "avx512f")]
unsafe fn panel_rows<const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..kc {
        let wk = w.wrapping_add(kk * 32);
        _mm_prefetch::<_MM_HINT_T0>((wk as *const i8).wrapping_add(PREFETCH));
        _mm_prefetch::<_MM_HINT_T0>((wk as *const i8).wrapping_add(PREFETCH + 64));
        let (b0, b1) = unsafe { (_mm512_loadu_ps(wk), _mm512_loadu_ps(wk.add(16))) };
        for i in 0..R {
            let a = _mm512_set1_ps(unsafe { *x.add(i * ldx + kk) });
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
    }
    for i in 0..R {
        for (h, &mask) in masks.iter().enumerate() {
            let p = unsafe { y.add(i * ldy + 16 * h) };
            let mut v = acc[i][h];
            if accumulate {
                v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, p) });
            }
            unsafe { _mm512_mask_storeu_ps(p, mask, v) };
        }
    }
}

/// The AVX-512 [`PanelF32`](super::PanelF32): blocks of 8 activation rows.
///
/// # Safety
/// The CPU must support AVX-512F, and `y` must be as [`PanelF32`](super::PanelF32) describes.
/// (The slices are checked by `super::check_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelF32 signature and its parts
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_f32(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &[f32],
    kc: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    super::check_panel(x, ldx, m, w, kc, n);
    let lanes = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    let masks = [lanes(n), lanes(n.saturating_sub(16))];
    let mut i0 = 0;
    while i0 < m {
        let r = (m - i0).min(8);
        // SAFETY: rows i0..i0 + r of x and the kc · 32 panel values lie within the slices
        // (checked above); y is as the caller guarantees.
        unsafe {
            let (xp, yp) = (x.as_ptr().add(i0 * ldx), y.add(i0 * ldy));
            let wp = w.as_ptr();
            match r {
                1 => panel_rows::<1>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                2 => panel_rows::<2>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                3 => panel_rows::<3>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                4 => panel_rows::<4>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                5 => panel_rows::<5>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                6 => panel_rows::<6>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                7 => panel_rows::<7>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
                _ => panel_rows::<8>(xp, ldx, wp, kc, yp, ldy, masks, accumulate),
            }
        }
        i0 += r;
    }
}
/// bf16 values per pass of the bf16 kernel: two 512-bit loads.
const BF16_PASS: usize = 64;

/// Lays out `x` (rows of `c`) as the AVX-512 bf16 kernel reads it: each row's values below
/// `c / 64 · 64` are reordered within every 32 into the 16 at even positions, then the 16 at odd
/// positions; the rest of the row stays in place.
///
/// A 512-bit load of 32 bf16 weights then becomes two f32 vectors with one instruction each
/// (the even weights shifted into the high halves of their lanes, the odd weights masked in
/// place), each meeting a contiguous vector of activations: no widening shuffle.
pub(in crate::cpu) fn pair_split(x: &mut [f32], c: usize) {
    let full = c / BF16_PASS * BF16_PASS;
    if c == 0 {
        return;
    }
    for row in x.chunks_exact_mut(c) {
        for chunk in row[..full].chunks_exact_mut(32) {
            let src: [f32; 32] = chunk.try_into().expect("chunks of 32");
            for i in 0..16 {
                chunk[i] = src[2 * i];
                chunk[16 + i] = src[2 * i + 1];
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn bf16_avx512<const M: usize>(m0: usize, w: &[u16], x: &[f32], c: usize, out: &mut [f32]) {
    let full = c / BF16_PASS * BF16_PASS;
    let mut acc = [[_mm512_setzero_ps(); 4]; M];
    let xp = unsafe { x.as_ptr().add(m0 * c) };
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut i = 0;
    while i < full {
        _mm_prefetch::<_MM_HINT_T0>(
            (w.as_ptr().wrapping_add(i) as *const i8).wrapping_add(PREFETCH),
        );
        _mm_prefetch::<_MM_HINT_T0>(
            (w.as_ptr().wrapping_add(i + 32) as *const i8).wrapping_add(PREFETCH),
        );
        // SAFETY: i + 64 ≤ full ≤ c ≤ w.len() (asserted by the caller)
        let (a, b) = unsafe {
            (
                _mm512_loadu_si512(w.as_ptr().add(i) as *const __m512i),
                _mm512_loadu_si512(w.as_ptr().add(i + 32) as *const __m512i),
            )
        };
        let wv = [
            _mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(a, high)),
            _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(b, high)),
        ];
        for k in 0..M {
            let xr = unsafe { xp.add(k * c + i) };
            for u in 0..4 {
                let xv = unsafe { _mm512_loadu_ps(xr.add(16 * u)) };
                acc[k][u] = _mm512_fmadd_ps(wv[u], xv, acc[k][u]);
            }
        }
        i += BF16_PASS;
    }
    for k in 0..M {
        let a = _mm512_add_ps(
            _mm512_add_ps(acc[k][0], acc[k][1]),
            _mm512_add_ps(acc[k][2], acc[k][3]),
        );
        let mut s = _mm512_reduce_add_ps(a);
        for j in full..c {
            s += f32::from_bits((w[j] as u32) << 16) * x[(m0 + k) * c + j];
        }
        out[m0 + k] = s;
    }
}

/// Dots one bf16 weight row (`c` values) with `m` activation rows laid out by [`pair_split`].
///
/// # Safety
/// The CPU must support AVX-512F. (Lengths are checked: `w` at least `c` long, `x` at least
/// `m · c`, `out` at least `m`, or this panics.)
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_bf16(w: &[u16], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
    assert!(
        w.len() >= c && m.checked_mul(c).is_some_and(|n| x.len() >= n) && out.len() >= m,
        "kernel lengths"
    );
    unsafe { dispatch_rows!(bf16_avx512, m, w, x, c, out) }
}

/// int8 with one scale per 64 weights: each block is widened, scaled and accumulated.
#[target_feature(enable = "avx512f")]
unsafe fn int8_avx512<const M: usize>(
    m0: usize,
    q: &[i8],
    scales: &[f32],
    x: &[f32],
    c: usize,
    out: &mut [f32],
) {
    let xp = unsafe { x.as_ptr().add(m0 * c) };
    let mut acc = [[_mm512_setzero_ps(); 4]; M];
    for (b, &s) in scales.iter().enumerate() {
        let i = b * INT8_BLOCK;
        let sv = _mm512_set1_ps(s);
        _mm_prefetch::<_MM_HINT_T0>(q.as_ptr().wrapping_add(i + PREFETCH));
        let wv: [__m512; 4] = unsafe {
            let p = q.as_ptr().add(i) as *const __m128i;
            [
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))),
                    sv,
                ),
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1)))),
                    sv,
                ),
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2)))),
                    sv,
                ),
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(3)))),
                    sv,
                ),
            ]
        };
        for k in 0..M {
            let xr = unsafe { xp.add(k * c + i) };
            for u in 0..4 {
                let xv = unsafe { _mm512_loadu_ps(xr.add(16 * u)) };
                acc[k][u] = _mm512_fmadd_ps(wv[u], xv, acc[k][u]);
            }
        }
    }
    for k in 0..M {
        let a = _mm512_add_ps(
            _mm512_add_ps(acc[k][0], acc[k][1]),
            _mm512_add_ps(acc[k][2], acc[k][3]),
        );
        out[m0 + k] = _mm512_reduce_add_ps(a);
    }
}

/// Dots one int8 weight row (`c` values, `c / 64` scales) with `m` activation rows.
///
/// # Safety
/// The CPU must support AVX-512F. (Lengths are checked: `c` a multiple of 64, `q` at
/// least `c` long, `scales` exactly `c / 64`, `x` at least `m · c`, `out` at least `m`,
/// or this panics.)
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_int8(
    q: &[i8],
    scales: &[f32],
    x: &[f32],
    m: usize,
    c: usize,
    out: &mut [f32],
) {
    check_int8(q, scales, x, m, c, out);
    unsafe { dispatch_rows!(int8_avx512, m, q, scales, x, c, out) }
}
