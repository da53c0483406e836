//! The AVX-512F kernels (x86-64).
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use std::arch::x86_64::*;

use super::{PAIR, PREFETCH};
use crate::cpu::INT8_BLOCK;
use crate::cpu::format::Int8Block;
use crate::cpu::packed::{INT8_QUAD, INT8_RECORD, INT8_SCALES};

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
    unsafe { store_rows(&acc, y, ldy, masks, accumulate) };
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
    let masks = lane_masks(n);
    panel_row_blocks!(
        panel_rows,
        [1, 2, 3, 4, 5, 6, 7],
        8,
        x,
        ldx,
        m,
        w,
        kc,
        y,
        ldy,
        masks,
        accumulate
    );
}
/// `R` rows of f32 activations times one bf16 panel in column pairs (see
/// [`PanelBf16`](super::PanelBf16)): per column pair, two 512-bit loads hold the panel's 32 rows;
/// a shift and a mask make the even and the odd column f32, which meet one broadcast activation
/// each. Four accumulators per row (even and odd columns, two halves of the panel) keep four
/// independent chains even for one row.
///
/// # Safety
/// The CPU supports AVX-512F; `x` is readable at `i · ldx + k` for `i < R`, `k < 2 kq`, `w` at
/// `q · PAIR + l` for `q < kq`, `l < PAIR`; `y` is writable (and, with `accumulate`, readable)
/// at `i · ldy + j` for `i < R` and the lanes set in `masks`.
#[allow(clippy::too_many_arguments)] // the PanelBf16 signature and its parts
#[target_feature(enable = "avx512f")]
unsafe fn pair_rows<const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const u16,
    kq: usize,
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut even = [[_mm512_setzero_ps(); 2]; R];
    let mut odd = [[_mm512_setzero_ps(); 2]; R];
    for q in 0..kq {
        let wq = w.wrapping_add(q * PAIR);
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH));
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH + 64));
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_si512(wq as *const __m512i),
                _mm512_loadu_si512(wq.add(32) as *const __m512i),
            )
        };
        let e = [
            _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)),
            _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)),
        ];
        let o = [
            _mm512_castsi512_ps(_mm512_and_si512(v0, high)),
            _mm512_castsi512_ps(_mm512_and_si512(v1, high)),
        ];
        for i in 0..R {
            let xi = unsafe { x.add(i * ldx + 2 * q) };
            let (xe, xo) = unsafe { (_mm512_set1_ps(*xi), _mm512_set1_ps(*xi.add(1))) };
            for h in 0..2 {
                even[i][h] = _mm512_fmadd_ps(xe, e[h], even[i][h]);
                odd[i][h] = _mm512_fmadd_ps(xo, o[h], odd[i][h]);
            }
        }
    }
    let acc: [[__m512; 2]; R] =
        std::array::from_fn(|i| std::array::from_fn(|h| _mm512_add_ps(even[i][h], odd[i][h])));
    unsafe { store_rows(&acc, y, ldy, masks, accumulate) };
}

/// The AVX-512 [`PanelBf16`](super::PanelBf16): blocks of 4 activation rows (16
/// accumulators).
///
/// # Safety
/// The CPU must support AVX-512F, and `y` must be as [`PanelBf16`](super::PanelBf16)
/// describes. (The slices are checked by `super::check_pairs`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelBf16 signature
#[target_feature(enable = "avx512f")]
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
    let masks = lane_masks(n);
    panel_row_blocks!(
        pair_rows,
        [1, 2, 3],
        4,
        x,
        ldx,
        m,
        w,
        kq,
        y,
        ldy,
        masks,
        accumulate
    );
}

/// Stores (or, with `accumulate`, adds) `R` rows of a panel's 32 accumulated values at `y`
/// (rows `ldy` apart), the lanes set in `masks` of each 16-lane half.
///
/// # Safety
/// The CPU supports AVX-512F; `y` is writable (and, with `accumulate`, readable) at
/// `i · ldy + j` for `i < R` and the lanes set in `masks`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_rows<const R: usize>(
    acc: &[[__m512; 2]; R],
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    for (i, row) in acc.iter().enumerate() {
        for (h, (&mask, &v)) in masks.iter().zip(row).enumerate() {
            let p = unsafe { y.add(i * ldy + 16 * h) };
            let v = if accumulate {
                _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, p) })
            } else {
                v
            };
            unsafe { _mm512_mask_storeu_ps(p, mask, v) };
        }
    }
}

/// The store masks of a panel's two 16-lane halves for its first `n` rows.
pub(super) fn lane_masks(n: usize) -> [__mmask16; 2] {
    let lanes = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    [lanes(n), lanes(n.saturating_sub(16))]
}

/// The block's 64 quantised activations of row `xb` as f32 values (small integers).
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn int8_block_f32(xb: &Int8Block) -> [f32; INT8_BLOCK] {
    let mut out = [0f32; INT8_BLOCK];
    for u in 0..INT8_BLOCK / 16 {
        // SAFETY: 16 of the block's 64 values, and 16 of out's
        unsafe {
            let v = _mm_loadu_si128(xb.q.as_ptr().add(16 * u) as *const __m128i);
            _mm512_storeu_ps(
                out.as_mut_ptr().add(16 * u),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)),
            );
        }
    }
    out
}

/// `R` rows of quantised activations times one panel of int8 records (see
/// [`PanelInt8`](super::PanelInt8)): per quad of columns, 16 rows' four weights are loaded as
/// one vector and each column's byte is sign-extended by two shifts and converted to f32, to
/// meet one broadcast activation per row. The products are integers and so are their sums
/// within a block (below 2²⁴, exact in f32); each row's block sum is scaled once, at the
/// block's end. Even and odd columns accumulate apart, so that one row keeps four independent
/// chains.
///
/// # Safety
/// The CPU supports AVX-512F; `x` is readable at `i · ldx + b` for `i < R`, `b < kb`, `w`
/// holds `kb` records; `y` is writable (and, with `accumulate`, readable) at `i · ldy + j` for
/// `i < R` and the lanes set in `masks`.
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature and its parts
#[target_feature(enable = "avx512f")]
unsafe fn int8_rows<const R: usize>(
    x: *const Int8Block,
    ldx: usize,
    w: *const u8,
    kb: usize,
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..kb {
        let rec = w.wrapping_add(b * INT8_RECORD);
        let q = rec.wrapping_add(INT8_SCALES);
        // SAFETY: block b of rows i < R lies within x (as the caller guarantees)
        let blocks: [&Int8Block; R] = std::array::from_fn(|i| unsafe { &*x.add(i * ldx + b) });
        let xf: [[f32; INT8_BLOCK]; R] =
            std::array::from_fn(|i| unsafe { int8_block_f32(blocks[i]) });
        let mut part = [[[_mm512_setzero_ps(); 2]; 2]; R];
        for t in 0..INT8_BLOCK / 4 {
            let qt = q.wrapping_add(t * INT8_QUAD);
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH));
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH + 64));
            // SAFETY: the quad's 128 bytes lie within the record (t < 16)
            let v = unsafe {
                [
                    _mm512_loadu_si512(qt as *const __m512i),
                    _mm512_loadu_si512(qt.add(64) as *const __m512i),
                ]
            };
            macro_rules! column {
                ($e:literal) => {{
                    let wc = [
                        _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(_mm512_slli_epi32::<
                            { 24 - 8 * $e },
                        >(v[0]))),
                        _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(_mm512_slli_epi32::<
                            { 24 - 8 * $e },
                        >(v[1]))),
                    ];
                    for i in 0..R {
                        let a = _mm512_set1_ps(xf[i][4 * t + $e]);
                        part[i][$e % 2][0] = _mm512_fmadd_ps(a, wc[0], part[i][$e % 2][0]);
                        part[i][$e % 2][1] = _mm512_fmadd_ps(a, wc[1], part[i][$e % 2][1]);
                    }
                }};
            }
            column!(0);
            column!(1);
            column!(2);
            column!(3);
        }
        // SAFETY: the record starts with the panel's 32 f32 scales
        let s = unsafe {
            [
                _mm512_loadu_ps(rec as *const f32),
                _mm512_loadu_ps(rec.add(64) as *const f32),
            ]
        };
        for i in 0..R {
            let d = _mm512_set1_ps(blocks[i].d);
            for h in 0..2 {
                let sum = _mm512_add_ps(part[i][0][h], part[i][1][h]);
                let term = _mm512_mul_ps(_mm512_mul_ps(s[h], d), sum);
                acc[i][h] = _mm512_add_ps(acc[i][h], term);
            }
        }
    }
    unsafe { store_rows(&acc, y, ldy, masks, accumulate) };
}

/// The AVX-512 [`PanelInt8`](super::PanelInt8): blocks of 4 activation rows (8 accumulators
/// and 16 sums of the current block).
///
/// # Safety
/// The CPU must support AVX-512F, and `y` must be as [`PanelInt8`](super::PanelInt8)
/// describes. (The slices are checked by `super::check_int8_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature
#[target_feature(enable = "avx512f")]
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
    let masks = lane_masks(n);
    panel_row_blocks!(
        int8_rows,
        [1, 2, 3],
        4,
        x,
        ldx,
        m,
        w,
        kb,
        y,
        ldy,
        masks,
        accumulate
    );
}
