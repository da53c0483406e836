//! The AVX512_BF16 products (x86-64): bf16 weights with activations rounded to bf16, on
//! `vdpbf16ps`, which multiplies and adds two bf16 pairs per f32 lane: 32 multiply-adds per
//! instruction where an f32 FMA does 16; and int8 weights with quantised activations on
//! `vpdpbusd` (AVX-512 VNNI, which every CPU with AVX512_BF16 has), which multiplies and adds
//! four byte pairs per 32-bit lane: 64 multiply-adds per instruction, in integers.
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
use crate::cpu::INT8_BLOCK;
use crate::cpu::format::Int8Block;
use crate::cpu::packed::{INT8_QUAD, INT8_RECORD, INT8_SCALES};

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

/// `R` rows of quantised activations times one panel of int8 records (see
/// [`PanelInt8`](super::PanelInt8)) on `vpdpbusd`: one 512-bit load holds 16 rows of a quad of
/// columns (four weights per 32-bit lane), which meets four activations of a row broadcast to
/// every lane. `vpdpbusd` multiplies unsigned bytes with signed ones, so the weights are
/// offset to unsigned (`q + 128`, one XOR per load, shared by the rows) and the block's
/// `128 · Σx` (`Int8Block::bias`) is subtracted from each row's integer sum at the block's end;
/// no sum can overflow (64 products of at most 255 · 127). Each row's exact block sum is then
/// converted and scaled once. For one or two rows, even and odd quads accumulate apart, to
/// keep four chains in flight.
///
/// # Safety
/// The CPU supports AVX-512F, AVX-512BW and AVX-512 VNNI; `x` is readable at `i · ldx + b` for
/// `i < R`, `b < kb`, `w` holds `kb` records; `y` is writable (and, with `accumulate`,
/// readable) at `i · ldy + j` for `i < R` and the lanes set in `masks`.
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature and its parts
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_vnni_rows<const R: usize>(
    x: *const Int8Block,
    ldx: usize,
    w: *const u8,
    kb: usize,
    y: *mut f32,
    ldy: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..kb {
        let rec = w.wrapping_add(b * INT8_RECORD);
        let q = rec.wrapping_add(INT8_SCALES);
        // SAFETY: block b of rows i < R lies within x (as the caller guarantees)
        let blocks: [&Int8Block; R] = std::array::from_fn(|i| unsafe { &*x.add(i * ldx + b) });
        let mut part = [[[_mm512_setzero_si512(); 2]; 2]; R];
        for t in 0..INT8_BLOCK / 4 {
            let qt = q.wrapping_add(t * INT8_QUAD);
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH));
            _mm_prefetch::<_MM_HINT_T0>((qt as *const i8).wrapping_add(PREFETCH + 64));
            // SAFETY: the quad's 128 bytes lie within the record (t < 16)
            let v = unsafe {
                [
                    _mm512_xor_si512(_mm512_loadu_si512(qt as *const __m512i), flip),
                    _mm512_xor_si512(_mm512_loadu_si512(qt.add(64) as *const __m512i), flip),
                ]
            };
            let par = if R <= 2 { t % 2 } else { 0 };
            for i in 0..R {
                // the row's four activations of this quad as one 32-bit value
                let four =
                    unsafe { (blocks[i].q.as_ptr().add(4 * t) as *const i32).read_unaligned() };
                let a = _mm512_set1_epi32(four);
                part[i][par][0] = _mm512_dpbusd_epi32(part[i][par][0], v[0], a);
                part[i][par][1] = _mm512_dpbusd_epi32(part[i][par][1], v[1], a);
            }
        }
        // SAFETY: the record starts with the panel's 32 f32 scales
        let s = unsafe {
            [
                _mm512_loadu_ps(rec as *const f32),
                _mm512_loadu_ps(rec.add(64) as *const f32),
            ]
        };
        for i in 0..R {
            let bias = _mm512_set1_epi32(blocks[i].bias);
            let d = _mm512_set1_ps(blocks[i].d);
            for h in 0..2 {
                let sum = _mm512_sub_epi32(_mm512_add_epi32(part[i][0][h], part[i][1][h]), bias);
                let term = _mm512_mul_ps(_mm512_mul_ps(s[h], d), _mm512_cvtepi32_ps(sum));
                acc[i][h] = _mm512_add_ps(acc[i][h], term);
            }
        }
    }
    unsafe { store_rows(&acc, y, ldy, masks, accumulate) };
}

/// The AVX-512 VNNI [`PanelInt8`](super::PanelInt8): blocks of 4 activation rows.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI, and `y` must be as
/// [`PanelInt8`](super::PanelInt8) describes. (The slices are checked by
/// `super::check_int8_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_int8_vnni(
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
        int8_vnni_rows,
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
