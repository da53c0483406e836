//! The AVX2 with FMA kernels (x86-64).
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use std::arch::x86_64::*;

use super::{INT4_GROUP, INT4_GROUP_BYTES, QuantizedRows, check_int4};
use super::{PAIR, PREFETCH};
use crate::cpu::INT8_BLOCK;
use crate::cpu::format::Int8Block;
use crate::cpu::packed::{INT8_QUAD, INT8_RECORD, INT8_SCALES};

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(v, 1);
    let lo = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `R` activation rows times one weight panel (see [`PanelF32`](super::PanelF32)): four
/// accumulators per row (the panel's 32 columns), one broadcast activation per row and step.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `x` is readable at `i · ldx + kk` and `w` at `kk · 32 + j`
/// for `i < R`, `kk < kc`, `j < 32`; `y` is writable (and, with `accumulate`, readable) at
/// `i · ldy + j` for `i < R`, `j < n`.
#[allow(clippy::too_many_arguments)] // the PanelF32 signature and its parts
#[target_feature(enable = "avx2,fma")]
unsafe fn panel_rows<const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for kk in 0..kc {
        let wk = w.wrapping_add(kk * 32);
        _mm_prefetch::<_MM_HINT_T0>((wk as *const i8).wrapping_add(PREFETCH));
        _mm_prefetch::<_MM_HINT_T0>((wk as *const i8).wrapping_add(PREFETCH + 64));
        let mut a = [_mm256_setzero_ps(); R];
        for i in 0..R {
            a[i] = _mm256_set1_ps(unsafe { *x.add(i * ldx + kk) });
        }
        for u in 0..4 {
            let b = unsafe { _mm256_loadu_ps(wk.add(8 * u)) };
            for i in 0..R {
                acc[i][u] = _mm256_fmadd_ps(a[i], b, acc[i][u]);
            }
        }
    }
    unsafe { store_rows(&acc, y, ldy, n, accumulate) };
}

/// The AVX2 [`PanelF32`](super::PanelF32): blocks of 3 activation rows (12 accumulators, 3
/// broadcasts and one weight vector fill the 16 registers).
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `y` must be as [`PanelF32`](super::PanelF32)
/// describes. (The slices are checked by `super::check_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelF32 signature and its parts
#[target_feature(enable = "avx2,fma")]
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
    panel_row_blocks!(
        panel_rows,
        [1, 2],
        3,
        x,
        ldx,
        m,
        w,
        kc,
        y,
        ldy,
        n,
        accumulate
    );
}
/// `R` rows of f32 activations times one bf16 panel in column pairs (see
/// [`PanelBf16`](super::PanelBf16)): per column pair, four 256-bit loads of 8 rows each; a
/// shift and a mask make the even and the odd column f32, which meet one broadcast activation
/// each. Four accumulators per row (8 panel rows each) and, per loaded vector, its two columns
/// and the rows' broadcasts fit the 16 registers for `R ≤ 2`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `x` is readable at `i · ldx + k` for `i < R`, `k < 2 kq`,
/// `w` at `q · PAIR + l` for `q < kq`, `l < PAIR`; `y` is writable (and, with `accumulate`,
/// readable) at `i · ldy + j` for `i < R`, `j < n`.
#[allow(clippy::too_many_arguments)] // the PanelBf16 signature and its parts
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_rows<const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const u16,
    kq: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for q in 0..kq {
        let wq = w.wrapping_add(q * PAIR);
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH));
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH + 64));
        let mut xe = [_mm256_setzero_ps(); R];
        let mut xo = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let xi = unsafe { x.add(i * ldx + 2 * q) };
            unsafe {
                xe[i] = _mm256_set1_ps(*xi);
                xo[i] = _mm256_set1_ps(*xi.add(1));
            }
        }
        for u in 0..4 {
            // rows 8u..8u + 8 of the pair: pair_index(j, e) = 2j + e for j < 16, 32 + 2(j - 16)
            // + e beyond, i.e. 16 values per 8 rows in order
            let v = unsafe { _mm256_loadu_si256(wq.add(16 * u) as *const __m256i) };
            let e = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            let o = _mm256_castsi256_ps(_mm256_and_si256(v, high));
            for i in 0..R {
                acc[i][u] = _mm256_fmadd_ps(xe[i], e, acc[i][u]);
                acc[i][u] = _mm256_fmadd_ps(xo[i], o, acc[i][u]);
            }
        }
    }
    unsafe { store_rows(&acc, y, ldy, n, accumulate) };
}

/// Stores (or, with `accumulate`, adds) `R` rows of 32 accumulated values at `y` (rows `ldy`
/// apart), the first `n` of each row.
///
/// # Safety
/// The CPU supports AVX2; `y` is writable (and, with `accumulate`, readable) at `i · ldy + j`
/// for `i < R`, `j < n`.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows<const R: usize>(
    acc: &[[__m256; 4]; R],
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    for i in 0..R {
        let row = unsafe { y.add(i * ldy) };
        if n == 32 {
            for u in 0..4 {
                let p = unsafe { row.add(8 * u) };
                let mut v = acc[i][u];
                if accumulate {
                    v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(p) });
                }
                unsafe { _mm256_storeu_ps(p, v) };
            }
        } else {
            let mut vals = [0f32; 32];
            for u in 0..4 {
                unsafe { _mm256_storeu_ps(vals.as_mut_ptr().add(8 * u), acc[i][u]) };
            }
            for (j, &v) in vals.iter().enumerate().take(n) {
                let p = unsafe { row.add(j) };
                unsafe { *p = if accumulate { *p + v } else { v } };
            }
        }
    }
}

/// The AVX2 [`PanelBf16`](super::PanelBf16): blocks of 2 activation rows.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `y` must be as [`PanelBf16`](super::PanelBf16)
/// describes. (The slices are checked by `super::check_pairs`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelBf16 signature
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn panel_bf16(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &[u16],
    kq: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    super::check_pairs(x, ldx, m, w, kq, n);
    panel_row_blocks!(pair_rows, [1], 2, x, ldx, m, w, kq, y, ldy, n, accumulate);
}

/// `R` rows of quantised activations times one panel of int8 records (see
/// [`PanelInt8`](super::PanelInt8)): per quad of columns, 8 rows' four weights are loaded as
/// one vector (four vectors for the panel's 32 rows) and each column's byte is sign-extended by
/// two shifts and converted to f32, to meet one broadcast activation per row. The products are
/// integers and so are their sums within a block (below 2²⁴, exact in f32); each row's block
/// sums are scaled once, at the block's end. Four sums and four accumulators per row, one
/// weight vector and the broadcast fit the 16 registers for `R = 1`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `x` is readable at `i · ldx + b` for `i < R`, `b < kb`, `w`
/// holds `kb` records; `y` is writable (and, with `accumulate`, readable) at `i · ldy + j` for
/// `i < R`, `j < n`.
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature and its parts
#[target_feature(enable = "avx2,fma")]
unsafe fn int8_rows<const R: usize>(
    x: *const Int8Block,
    ldx: usize,
    w: *const u8,
    kb: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for b in 0..kb {
        let rec = w.wrapping_add(b * INT8_RECORD);
        let q = rec.wrapping_add(INT8_SCALES);
        // SAFETY: block b of rows i < R lies within x (as the caller guarantees)
        let blocks: [&Int8Block; R] = std::array::from_fn(|i| unsafe { &*x.add(i * ldx + b) });
        let xf: [[f32; INT8_BLOCK]; R] = std::array::from_fn(|i| {
            let mut out = [0f32; INT8_BLOCK];
            for u in 0..INT8_BLOCK / 8 {
                // SAFETY: 8 of the block's 64 values, and 8 of out's
                unsafe {
                    let v = _mm_loadl_epi64(blocks[i].q.as_ptr().add(8 * u) as *const __m128i);
                    _mm256_storeu_ps(
                        out.as_mut_ptr().add(8 * u),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
                    );
                }
            }
            out
        });
        let mut part = [[_mm256_setzero_ps(); 4]; R];
        for t in 0..INT8_BLOCK / 4 {
            let qt = q.wrapping_add(t * INT8_QUAD);
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH));
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH + 64));
            for u in 0..4 {
                // SAFETY: rows 8u..8u + 8 of the quad: 32 of its 128 bytes
                let v = unsafe { _mm256_loadu_si256(qt.add(32 * u) as *const __m256i) };
                macro_rules! column {
                    ($e:literal) => {{
                        let wc = _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<
                            { 24 - 8 * $e },
                        >(v)));
                        for i in 0..R {
                            let a = _mm256_set1_ps(xf[i][4 * t + $e]);
                            part[i][u] = _mm256_fmadd_ps(a, wc, part[i][u]);
                        }
                    }};
                }
                column!(0);
                column!(1);
                column!(2);
                column!(3);
            }
        }
        for u in 0..4 {
            // SAFETY: the record starts with the panel's 32 f32 scales
            let s = unsafe { _mm256_loadu_ps((rec as *const f32).add(8 * u)) };
            for i in 0..R {
                let term = _mm256_mul_ps(_mm256_mul_ps(s, _mm256_set1_ps(blocks[i].d)), part[i][u]);
                acc[i][u] = _mm256_add_ps(acc[i][u], term);
            }
        }
    }
    unsafe { store_rows(&acc, y, ldy, n, accumulate) };
}

/// The AVX2 [`PanelInt8`](super::PanelInt8): one activation row at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `y` must be as [`PanelInt8`](super::PanelInt8)
/// describes. (The slices are checked by `super::check_int8_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn panel_int8(
    x: &[Int8Block],
    ldx: usize,
    m: usize,
    w: &[u8],
    kb: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    super::check_int8_panel(x, ldx, m, w, kb, n);
    panel_row_blocks!(int8_rows, [], 1, x, ldx, m, w, kb, y, ldy, n, accumulate);
}

/// int4 groups against int8 activations, eight groups per pass: the nibbles are unpacked to 32
/// bytes, multiplied with the activations in integers (`maddubs`, pairs summed by `madd`), and
/// each group's eight partial sums accumulated in f32 times the group's two scales. The weights'
/// `−8` offset is accumulated separately (`d_w · o` per group) and subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int4_avx2<const M: usize>(
    m0: usize,
    q: &[u8],
    scales: &[u16],
    x: &QuantizedRows,
    out: &mut [f32],
) {
    let g = x.blocks;
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    let mut off = [_mm256_setzero_ps(); M];
    let mut off_tail = [0f32; M];
    let qp = q.as_ptr();
    let full = g / 8 * 8;
    let xq = |k: usize, b: usize| unsafe {
        _mm256_loadu_si256(x.q.as_ptr().add(((m0 + k) * g + b) * INT4_GROUP) as *const __m256i)
    };
    let unpack = |b: usize| unsafe {
        let v = _mm_loadu_si128(qp.add(b * INT4_GROUP_BYTES) as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), mask)
    };
    let mut b = 0;
    while b < full {
        _mm_prefetch::<_MM_HINT_T0>(qp.wrapping_add(b * INT4_GROUP_BYTES + PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            qp.wrapping_add(b * INT4_GROUP_BYTES + PREFETCH + 64) as *const i8
        );
        let dw =
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(b) as *const __m128i)) };
        let mut s = [_mm256_setzero_ps(); M];
        for k in 0..M {
            let at = (m0 + k) * g + b;
            let (dx, ox) = unsafe {
                (
                    _mm256_loadu_ps(x.d.as_ptr().add(at)),
                    _mm256_loadu_ps(x.o.as_ptr().add(at)),
                )
            };
            s[k] = _mm256_mul_ps(dw, dx);
            off[k] = _mm256_fmadd_ps(dw, ox, off[k]);
        }
        for j in 0..8 {
            let w = unpack(b + j);
            let lane = _mm256_set1_epi32(j as i32);
            for k in 0..M {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq(k, b + j)), ones);
                let sj = _mm256_permutevar8x32_ps(s[k], lane);
                acc[k][j % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sj, acc[k][j % 2]);
            }
        }
        b += 8;
    }
    for b in full..g {
        let dw = half::f16::from_bits(scales[b]).to_f32();
        let w = unpack(b);
        for k in 0..M {
            let at = (m0 + k) * g + b;
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq(k, b)), ones);
            let sj = _mm256_set1_ps(dw * x.d[at]);
            acc[k][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sj, acc[k][0]);
            off_tail[k] += dw * x.o[at];
        }
    }
    for k in 0..M {
        let a = unsafe { hsum256(_mm256_add_ps(acc[k][0], acc[k][1])) };
        let o = unsafe { hsum256(off[k]) } + off_tail[k];
        out[m0 + k] = a - o;
    }
}

/// Dots one int4 weight row (its groups' bytes and f16 scales) with `m` quantised activation
/// rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. (Lengths are checked: `q` at least
/// `16 · x.blocks` bytes, `scales` at least `x.blocks`, `x` at least `m` rows, `out` at least
/// `m`, or this panics.)
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_int4(
    q: &[u8],
    scales: &[u16],
    x: &QuantizedRows,
    m: usize,
    out: &mut [f32],
) {
    check_int4(q, scales, x, m, out);
    unsafe { dispatch_rows!(int4_avx2, m, q, scales, x, out) }
}
