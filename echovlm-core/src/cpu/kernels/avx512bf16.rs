//! The AVX512_BF16 product (x86-64): prompt-sized products of bf16 weights with activations
//! rounded to bf16, on `vdpbf16ps`, which multiplies and adds two bf16 pairs per f32 lane: 32
//! multiply-adds per instruction where an f32 FMA does 16.
//!
//! It reads the bf16 panels in column pairs (see [`PanelBf16Dot`](super::PanelBf16Dot)) as
//! stored: one 512-bit load holds 16 rows of a column pair, the layout `vdpbf16ps` multiplies
//! with a broadcast pair of activations, so each instruction adds two columns into the
//! accumulators of 16 rows. As for f32 panels, up to 8 activation rows times the panel's 32
//! rows stay in registers, and nothing is summed across lanes.
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use std::arch::x86_64::*;

use super::avx512::{lane_masks, store_rows};
use super::{PAIR, PREFETCH};

/// Reinterprets 32 raw bf16 values as the operand type of `vdpbf16ps`.
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vectors; every bit pattern is a valid value of either.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `R` rows of bf16 activations (pairs read as one 32-bit value) times one bf16 panel.
///
/// # Safety
/// The CPU supports AVX-512F, AVX-512BW and AVX512_BF16; `x` is readable at `i · ldx + k` for
/// `i < R`, `k < 2 kq`, `w` at `q · PAIR + l` for `q < kq`, `l < PAIR`; `y` is writable (and,
/// with `accumulate`, readable) at `i · ldy + j` for `i < R` and the lanes set in `masks`.
#[allow(clippy::too_many_arguments)] // the PanelBf16Dot signature and its parts
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pair_rows<const R: usize>(
    x: *const u16,
    ldx: usize,
    w: *const u16,
    kq: usize,
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for q in 0..kq {
        let wq = w.wrapping_add(q * PAIR);
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH));
        _mm_prefetch::<_MM_HINT_T0>((wq as *const i8).wrapping_add(PREFETCH + 64));
        let (v0, v1) = unsafe {
            (
                bh(_mm512_loadu_si512(wq as *const __m512i)),
                bh(_mm512_loadu_si512(wq.add(32) as *const __m512i)),
            )
        };
        for i in 0..R {
            // the pair (x[2q], x[2q + 1]) as one 32-bit value, the even column low
            let pair = unsafe { (x.add(i * ldx + 2 * q) as *const i32).read_unaligned() };
            let a = bh(_mm512_set1_epi32(pair));
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, v0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, v1);
        }
    }
    unsafe { store_rows(&acc, y, ldy, masks, accumulate) };
}

/// The AVX512_BF16 [`PanelBf16Dot`](super::PanelBf16Dot): blocks of 8 activation rows (16
/// accumulators).
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX512_BF16, and `y` must be as
/// [`PanelBf16Dot`](super::PanelBf16Dot) describes. (The slices are checked by
/// `super::check_pairs`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelBf16Dot signature
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn panel_bf16_dot(
    x: &[u16],
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
        [1, 2, 3, 4, 5, 6, 7],
        8,
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
