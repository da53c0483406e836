//! The portable kernels: safe, bounds-checked loops the compiler vectorises for the target's
//! baseline.
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use crate::cpu::INT8_BLOCK;
use crate::cpu::format::{INT4_GROUP, INT4_GROUP_BYTES, Int8Block, QuantizedRows};
use crate::cpu::packed::{INT8_RECORD, INT8_SCALES, int8_index, record_scales};

/// The body the portable panel kernels share: `rows::<R>(x, ldx, w, kc)` over blocks of at
/// most 4 activation rows, each block's sums stored at its rows of `y` (the caller guarantees
/// `y` as its kernel type describes).
macro_rules! row_blocks {
    ($rows:ident, $x:ident, $ldx:ident, $m:ident, $w:ident, $kc:ident,
     $y:ident, $ldy:ident, $n:ident, $accumulate:ident) => {{
        let mut i0 = 0;
        while i0 < $m {
            let r = ($m - i0).min(4);
            let xb = &$x[i0 * $ldx..];
            let out = match r {
                1 => $rows::<1>(xb, $ldx, $w, $kc),
                2 => $rows::<2>(xb, $ldx, $w, $kc),
                3 => $rows::<3>(xb, $ldx, $w, $kc),
                _ => $rows::<4>(xb, $ldx, $w, $kc),
            };
            // SAFETY: rows i0..i0 + r, columns 0..n of y are the caller's to write.
            unsafe { store(&out, r, $y.add(i0 * $ldy), $ldy, $n, $accumulate) };
            i0 += r;
        }
    }};
}

/// The portable [`PanelF32`](super::PanelF32): blocks of 4 activation rows, 32 accumulators
/// each, in loops the compiler vectorises.
///
/// # Safety
/// `y` must be as [`PanelF32`](super::PanelF32) describes. (The slices are checked by
/// `super::check_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelF32 signature
pub unsafe fn panel_f32(
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
    row_blocks!(panel_rows, x, ldx, m, w, kc, y, ldy, n, accumulate);
}

/// `R` (at most 4) rows of `x` times one panel; the rows past `R` stay zero.
fn panel_rows<const R: usize>(x: &[f32], ldx: usize, w: &[f32], kc: usize) -> [[f32; 32]; 4] {
    let mut acc = [[0f32; 32]; 4];
    for (kk, b) in w.chunks_exact(32).take(kc).enumerate() {
        for i in 0..R {
            let a = x[i * ldx + kk];
            for (o, &bj) in acc[i].iter_mut().zip(b) {
                *o += a * bj;
            }
        }
    }
    acc
}

/// The portable [`PanelBf16`](super::PanelBf16): blocks of 4 activation rows, 32
/// accumulators each, in loops the compiler vectorises.
///
/// # Safety
/// `y` must be as [`PanelBf16`](super::PanelBf16) describes. (The slices are checked by
/// `super::check_pairs`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelBf16 signature
pub unsafe fn panel_bf16(
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
    row_blocks!(pair_rows, x, ldx, m, w, kq, y, ldy, n, accumulate);
}

/// `R` (at most 4) rows of `x` times one bf16 panel in column pairs; the rows past `R` stay
/// zero.
fn pair_rows<const R: usize>(x: &[f32], ldx: usize, w: &[u16], kq: usize) -> [[f32; 32]; 4] {
    let mut acc = [[0f32; 32]; 4];
    let widen = |b: u16| f32::from_bits((b as u32) << 16);
    for (q, pair) in w.chunks_exact(super::PAIR).take(kq).enumerate() {
        for i in 0..R {
            let (xe, xo) = (x[i * ldx + 2 * q], x[i * ldx + 2 * q + 1]);
            for (j, a) in acc[i].iter_mut().enumerate() {
                let l = super::pair_index(j, 0);
                *a += xe * widen(pair[l]) + xo * widen(pair[l + 1]);
            }
        }
    }
    acc
}

/// Stores (or, with `accumulate`, adds) the first `n` values of the first `r` rows of `out`
/// at `y` (rows `ldy` apart).
///
/// # Safety
/// `y` is writable (and readable) at `i · ldy + j` for `i < r`, `j < n`, and no other thread
/// touches those values.
unsafe fn store(
    out: &[[f32; 32]; 4],
    r: usize,
    y: *mut f32,
    ldy: usize,
    n: usize,
    accumulate: bool,
) {
    for (i, vals) in out.iter().enumerate().take(r) {
        for (j, &v) in vals.iter().enumerate().take(n) {
            // SAFETY: as the caller guarantees.
            unsafe {
                let p = y.add(i * ldy + j);
                *p = if accumulate { *p + v } else { v };
            }
        }
    }
}

/// The portable [`PanelInt8`](super::PanelInt8): blocks of 4 activation rows, 32
/// accumulators each; each block's products are summed in integers.
///
/// # Safety
/// `y` must be as [`PanelInt8`](super::PanelInt8) describes. (The slices are checked by
/// `super::check_int8_panel`, or this panics.)
#[allow(clippy::too_many_arguments)] // the PanelInt8 signature
pub unsafe fn panel_int8(
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
    row_blocks!(int8_rows, x, ldx, m, w, kb, y, ldy, n, accumulate);
}

/// `R` (at most 4) rows of `x` times one panel of int8 records; the rows past `R` stay zero.
fn int8_rows<const R: usize>(x: &[Int8Block], ldx: usize, w: &[u8], kb: usize) -> [[f32; 32]; 4] {
    let mut acc = [[0f32; 32]; 4];
    for (b, rec) in w.chunks_exact(INT8_RECORD).take(kb).enumerate() {
        let s = record_scales(rec);
        let q = &rec[INT8_SCALES..];
        for i in 0..R {
            let xb = &x[i * ldx + b];
            for j in 0..32 {
                let sum: i32 = (0..INT8_BLOCK)
                    .map(|k| q[int8_index(j, k)] as i8 as i32 * xb.q[k] as i32)
                    .sum();
                acc[i][j] = super::int8_term(acc[i][j], s[j], xb.d, sum as f32);
            }
        }
    }
    acc
}

/// Portable int4 row kernel; safe, bounds-checked. Per group: the exact integer dot of the
/// nibbles with the quantised activations, scaled by both scales; the weights' `−8` offset is
/// subtracted once at the end (`Σ d_w · o`), the order the vector kernel uses.
pub fn dot_int4(q: &[u8], scales: &[u16], x: &QuantizedRows, m: usize, out: &mut [f32]) {
    let g = x.blocks;
    for (mi, o) in out.iter_mut().enumerate().take(m) {
        let xq = &x.q[mi * g * INT4_GROUP..(mi + 1) * g * INT4_GROUP];
        let (mut acc, mut off) = (0f32, 0f32);
        for b in 0..g {
            let bytes = &q[b * INT4_GROUP_BYTES..(b + 1) * INT4_GROUP_BYTES];
            let xb = &xq[b * INT4_GROUP..(b + 1) * INT4_GROUP];
            let mut dot = 0i32;
            for j in 0..INT4_GROUP_BYTES {
                dot += (bytes[j] & 0x0f) as i32 * xb[j] as i32
                    + (bytes[j] >> 4) as i32 * xb[j + INT4_GROUP_BYTES] as i32;
            }
            let dw = half::f16::from_bits(scales[b]).to_f32();
            acc += dw * x.d[mi * g + b] * dot as f32;
            off += dw * x.o[mi * g + b];
        }
        *o = acc - off;
    }
}
