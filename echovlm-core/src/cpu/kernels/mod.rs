//! The product kernels, one file per instruction set: panel kernels for f32, bf16 and int8
//! weights (a panel of 32 weight rows times a few activation rows, accumulated in registers),
//! and the dot products of one int4 weight row with `m` activation rows ([`Dots`], the set of
//! them one product runs with).
//!
//! The x86-64 int4 row kernel is monomorphised over the
//! number `M` of activation rows handled per pass (1 to 4) so that every accumulator stays in
//! a register; 4 independent accumulators per row hide the FMA latency. Everything is inlined
//! into `#[target_feature]` functions (closures defined inside them inherit their features).
//! Their only `unsafe` contract is that the CPU supports their instruction set: they assert the
//! lengths they read within.

use super::Kernel;
use super::format::{INT4_GROUP, INT4_GROUP_BYTES, Int8Block, QuantizedRows};
use super::packed::INT8_RECORD;

/// Bytes ahead of the current position that are prefetched.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// The lengths the int4 kernels read within, asserted: `q` and `scales` hold the row's
/// `x.blocks` groups, `x` at least `m` quantised rows, `out` at least `m` values.
#[cfg(target_arch = "x86_64")]
fn check_int4(q: &[u8], scales: &[u16], x: &QuantizedRows, m: usize, out: &[f32]) {
    let g = x.blocks;
    assert!(
        INT4_GROUP == 32
            && g.checked_mul(INT4_GROUP_BYTES)
                .is_some_and(|n| q.len() >= n)
            && scales.len() >= g
            && m.checked_mul(g).is_some_and(|n| {
                x.d.len() >= n
                    && x.o.len() >= n
                    && n.checked_mul(INT4_GROUP).is_some_and(|n| x.q.len() >= n)
            })
            && out.len() >= m,
        "int4 kernel lengths"
    );
}

/// Runs `kernel::<M>` over the activation rows in passes of at most 4.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_rows {
    ($kernel:ident, $m:expr, $($arg:expr),*) => {{
        let mut m0 = 0;
        while m0 < $m {
            let mm = ($m - m0).min(4);
            match mm {
                1 => $kernel::<1>(m0, $($arg),*),
                2 => $kernel::<2>(m0, $($arg),*),
                3 => $kernel::<3>(m0, $($arg),*),
                _ => $kernel::<4>(m0, $($arg),*),
            }
            m0 += mm;
        }
    }};
}

/// The body every x86-64 panel kernel shares: `rows::<R>` over the activation rows in blocks of
/// at most `max` (one monomorphised block function per size listed, `max` for the rest), each
/// on its rows of `x` and `y`: `rows::<R>(x, ldx, w, kc, y, ldy, store, accumulate)` with
/// `store` the kernel's description of the panel's real rows (store masks, or their count).
///
/// Expanded inside each kernel, so that the blocks inherit its target features. The caller
/// has checked the slices (rows `i0..i0 + R` of `x` and `kc` columns of the panel lie within
/// them) and guarantees `y` as its kernel type describes.
#[cfg(target_arch = "x86_64")]
macro_rules! panel_row_blocks {
    ($rows:ident, [$($r:literal),*], $max:literal,
     $x:ident, $ldx:ident, $m:ident, $w:ident, $kc:ident, $y:ident, $ldy:ident,
     $store:expr, $accumulate:ident) => {{
        let mut i0 = 0;
        while i0 < $m {
            let r = ($m - i0).min($max);
            // SAFETY: rows i0..i0 + r of x (kc columns each) and the panel's kc columns lie
            // within the slices (checked by the kernel); y is as the kernel's caller guarantees.
            unsafe {
                let (xp, yp) = ($x.as_ptr().add(i0 * $ldx), $y.add(i0 * $ldy));
                let wp = $w.as_ptr();
                match r {
                    $($r => $rows::<$r>(xp, $ldx, wp, $kc, yp, $ldy, $store, $accumulate),)*
                    _ => $rows::<$max>(xp, $ldx, wp, $kc, yp, $ldy, $store, $accumulate),
                }
            }
            i0 += r;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod portable;

/// One panel of f32 weights (`PANEL` = 32 rows, stored column by column: `w[kk · 32 + j]` is
/// row `j`, column `kk`) times `m` activation rows, over `kc` columns:
/// `y[i · ldy + j] (+)= Σ_{kk < kc} x[i · ldx + kk] · w[kk · 32 + j]` for `i < m`, `j < n`
/// (`n ≤ 32`: the panel's real rows), added to `y` when `accumulate`, else stored.
///
/// Arguments: `(x, ldx, m, w, kc, y, ldy, n, accumulate)`. Unsafe to call: the CPU must
/// support the kernel's instruction set, and `y` must be writable (and readable) at every
/// `i · ldy + j` above, with no other thread touching those values. The slices are checked.
pub(super) type PanelF32 =
    unsafe fn(&[f32], usize, usize, &[f32], usize, *mut f32, usize, usize, bool);

/// bf16 values of one column pair of a bf16 panel: 32 rows times 2 columns.
pub(super) const PAIR: usize = 64;

/// The index of row `j` (`< 32`), column `e` (0 or 1) of a column pair within its [`PAIR`]
/// values: rows 0-15 fill the first 32 values and rows 16-31 the next, each row's two columns
/// side by side (the even column in the low half of a 32-bit lane). One 512-bit load then
/// holds 16 rows of a column pair: a shift gives the even column as f32, a mask the odd one,
/// and `vdpbf16ps` multiplies both with a broadcast pair of activations.
pub(super) const fn pair_index(j: usize, e: usize) -> usize {
    (j / 16) * 32 + 2 * (j % 16) + e
}

/// One panel of bf16 weights in column pairs (32 rows; pair `q` holds columns `2q` and
/// `2q + 1` at `w[q · PAIR + pair_index(j, e)]`) times `m` rows of f32 activations, over `kq`
/// column pairs: `y[i · ldy + j] (+)= Σ_{k < 2 kq} x[i · ldx + k] · w(j, k)`, as for
/// [`PanelF32`] (the activation rows hold `2 kq` values).
pub(super) type PanelBf16 =
    unsafe fn(&[f32], usize, usize, &[u16], usize, *mut f32, usize, usize, bool);

/// [`PanelBf16`] with activations rounded to bf16 (raw bits, `2 kq` per row), multiplied on
/// `vdpbf16ps`.
pub(super) type PanelBf16Dot =
    unsafe fn(&[u16], usize, usize, &[u16], usize, *mut f32, usize, usize, bool);

/// The lengths a panel kernel reads within, asserted: `x` holds `m` rows `ldx` apart with
/// `kc · xcol` values each, `w` `kc` columns of `wcol` values, and `n ≤ 32`.
#[allow(clippy::too_many_arguments)] // the two layouts' parameters
fn check_panel_layout<X, W>(
    x: &[X],
    ldx: usize,
    m: usize,
    w: &[W],
    kc: usize,
    n: usize,
    xcol: usize,
    wcol: usize,
) {
    let xk = kc.checked_mul(xcol);
    assert!(
        n <= 32
            && xk.is_some_and(|xk| xk <= ldx)
            && kc.checked_mul(wcol).is_some_and(|l| w.len() >= l)
            && (m == 0
                || (m - 1)
                    .checked_mul(ldx)
                    .zip(xk)
                    .and_then(|(l, xk)| l.checked_add(xk))
                    .is_some_and(|l| x.len() >= l)),
        "panel kernel lengths"
    );
}

/// The lengths a [`PanelF32`] reads within, asserted.
fn check_panel(x: &[f32], ldx: usize, m: usize, w: &[f32], kc: usize, n: usize) {
    check_panel_layout(x, ldx, m, w, kc, n, 1, 32);
}

/// The lengths a [`PanelBf16`] or [`PanelBf16Dot`] reads within, asserted.
fn check_pairs<X>(x: &[X], ldx: usize, m: usize, w: &[u16], kq: usize, n: usize) {
    check_panel_layout(x, ldx, m, w, kq, n, 2, PAIR);
}

/// One panel of int8 records (see `packed::Data::Int8`: per block of 64 columns, the 32 rows'
/// f32 scales, then 64 columns of 32 int8 weights in quads; [`INT8_RECORD`] bytes) times `m`
/// rows of activations quantised per block ([`Int8Block`], one per record), over `kb` blocks:
/// `y[i · ldy + j] (+)= Σ_{b < kb} (s(j, b) · d(i, b)) · S(i, j, b)` summed in that order, with
/// `S(i, j, b) = Σ_{k < 64} q(j, 64 b + k) · x(i, b).q[k]` exact (an integer below 2²⁴), as for
/// [`PanelF32`]. Every kernel computes the same values, bit for bit.
pub(super) type PanelInt8 =
    unsafe fn(&[Int8Block], usize, usize, &[u8], usize, *mut f32, usize, usize, bool);

/// The lengths a [`PanelInt8`] reads within, asserted.
fn check_int8_panel(x: &[Int8Block], ldx: usize, m: usize, w: &[u8], kb: usize, n: usize) {
    check_panel_layout(x, ldx, m, w, kb, n, 1, INT8_RECORD);
}

/// One block's contribution to a row's sum: `(s · d) · S`, the order every int8 kernel
/// follows (a product, then an addition: no fused multiply-add, so that all kernels round
/// alike).
#[inline(always)]
fn int8_term(acc: f32, s: f32, d: f32, sum: f32) -> f32 {
    acc + (s * d) * sum
}

/// Whether `kernel` multiplies int8 weights in integers on `vpdpbusd` (AVX512_BF16, whose CPUs
/// have AVX-512 VNNI): then prompt-sized int8 products run its [`PanelInt8`] too, rather than
/// widening the weights to f32 panels.
pub(super) fn int8_in_integers(kernel: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernel == Kernel::Avx512Bf16
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        false
    }
}

/// The [`PanelInt8`] of `kernel`, which the CPU must support (`vpdpbusd` under AVX512_BF16,
/// whose CPUs all have AVX-512 VNNI).
pub(super) fn panel_int8(kernel: Kernel) -> PanelInt8 {
    debug_assert!(kernel.is_supported());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => avx512bf16::panel_int8_vnni,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => avx512::panel_int8,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::panel_int8,
        _ => portable::panel_int8,
    }
}

/// The [`PanelBf16`] of `kernel`, which the CPU must support (AVX512_BF16 runs the AVX-512
/// one: with f32 activations it multiplies in f32).
pub(super) fn panel_bf16(kernel: Kernel) -> PanelBf16 {
    debug_assert!(kernel.is_supported());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Bf16 => avx512::panel_bf16,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::panel_bf16,
        _ => portable::panel_bf16,
    }
}

/// The [`PanelBf16Dot`] of `kernel`, where it has one (AVX512_BF16).
pub(super) fn panel_bf16_dot(kernel: Kernel) -> Option<PanelBf16Dot> {
    debug_assert!(kernel.is_supported());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => Some(avx512bf16::panel_bf16_dot),
        _ => None,
    }
}

/// The [`PanelF32`] of `kernel`, which the CPU must support (AVX512_BF16 runs the AVX-512
/// one).
pub(super) fn panel_f32(kernel: Kernel) -> PanelF32 {
    debug_assert!(kernel.is_supported());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Bf16 => avx512::panel_f32,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::panel_f32,
        _ => portable::panel_f32,
    }
}

/// A dot product of one int4 row (its groups' bytes and f16 scales) with `m` activation rows
/// quantised to int8 into `out` (`m` values).
pub(super) type DotInt4 = unsafe fn(&[u8], &[u16], &QuantizedRows, usize, &mut [f32]);

/// The row kernels of one [`Kernel`], chosen once per product.
///
/// Every function is `unsafe` to call: the slices must be as long as described on [`DotInt4`]
/// (the vector kernels read them through raw pointers), and the CPU must support the kernel
/// the functions were taken from, which [`Dots::new`] ensures for a kernel it is given after
/// `select::resolve_kernel`.
#[derive(Clone, Copy)]
pub(super) struct Dots {
    pub(super) int4: DotInt4,
}

impl Dots {
    /// The row kernels of `kernel`, which the CPU must support (int4 takes the AVX2 kernel
    /// under AVX-512 too: its products are bound by memory, not by the vector width).
    pub(super) fn new(kernel: Kernel) -> Self {
        debug_assert!(kernel.is_supported());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 | Kernel::Avx2 if Kernel::Avx2.is_supported() => {
                Dots {
                    int4: avx2::dot_int4,
                }
            }
            _ => Dots {
                int4: portable::dot_int4,
            },
        }
    }
}
