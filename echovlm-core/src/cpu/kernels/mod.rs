//! Dot products of one weight row with `m` activation rows: one file per instruction set,
//! and [`Dots`], the set of them one product runs with.
//!
//! The x86-64 kernels are one per (instruction set, weight type), monomorphised over the
//! number `M` of activation rows handled per pass (1 to 4) so that every accumulator stays in
//! a register; 4 independent accumulators per row hide the FMA latency. Everything is inlined
//! into `#[target_feature]` functions (closures defined inside them inherit their features).
//! Their only `unsafe` contract is that the CPU supports their instruction set: they assert the
//! lengths they read within.

use super::format::{INT4_GROUP, INT4_GROUP_BYTES, QuantizedRows};
use super::{INT8_BLOCK, Kernel};

/// Bytes ahead of the current position that are prefetched.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// The lengths the int8 vector kernels read within, asserted.
#[cfg(target_arch = "x86_64")]
fn check_int8(q: &[i8], scales: &[f32], x: &[f32], m: usize, c: usize, out: &[f32]) {
    assert!(
        INT8_BLOCK == 64
            && c.is_multiple_of(INT8_BLOCK)
            && q.len() >= c
            && scales.len() == c / INT8_BLOCK
            && m.checked_mul(c).is_some_and(|n| x.len() >= n)
            && out.len() >= m,
        "int8 kernel lengths"
    );
}

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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod portable;

#[cfg(target_arch = "x86_64")]
pub(super) use avx512::pair_split;
#[cfg(target_arch = "x86_64")]
pub(super) use avx512bf16::gemm_bf16;

/// Without x86-64 no kernel reads the split layout.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn pair_split(_x: &mut [f32], _c: usize) {}

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

/// The lengths a [`PanelF32`] reads within, asserted: `x` holds `m` rows `ldx` apart with
/// `kc` values each, `w` `kc` columns of 32, and `n ≤ 32`.
fn check_panel(x: &[f32], ldx: usize, m: usize, w: &[f32], kc: usize, n: usize) {
    assert!(
        n <= 32
            && kc <= ldx
            && kc.checked_mul(32).is_some_and(|l| w.len() >= l)
            && (m == 0
                || (m - 1)
                    .checked_mul(ldx)
                    .and_then(|l| l.checked_add(kc))
                    .is_some_and(|l| x.len() >= l)),
        "panel kernel lengths"
    );
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

/// A dot product of one bf16 weight row (`w`, `c` values, raw bits) with `m` activation rows
/// (`x`, `m · c` values) into `out` (`m` values).
pub(super) type DotBf16 = unsafe fn(&[u16], &[f32], usize, usize, &mut [f32]);
/// [`DotBf16`] for an int8 row with its `c / INT8_BLOCK` (rounded up) scales.
pub(super) type DotInt8 = unsafe fn(&[i8], &[f32], &[f32], usize, usize, &mut [f32]);
/// A dot product of one int4 row (its groups' bytes and f16 scales) with `m` activation rows
/// quantised to int8 into `out` (`m` values).
pub(super) type DotInt4 = unsafe fn(&[u8], &[u16], &QuantizedRows, usize, &mut [f32]);

/// The row kernels of one [`Kernel`], chosen once per product.
///
/// Every function is `unsafe` to call: the slices must be as long as described on [`DotBf16`]
/// (the vector kernels read them through raw pointers), and the CPU must support the kernel
/// the functions were taken from, which [`Dots::new`] ensures for a kernel it is given after
/// `select::resolve_kernel`.
#[derive(Clone, Copy)]
pub(super) struct Dots {
    pub(super) bf16: DotBf16,
    pub(super) int8: DotInt8,
    pub(super) int4: DotInt4,
    /// Whether `bf16` reads its activations laid out by [`pair_split`] (AVX-512) rather than
    /// as they are.
    pub(super) bf16_pairs: bool,
}

impl Dots {
    /// The row kernels of `kernel`, which the CPU must support, for rows of `cols` weights
    /// (AVX512_BF16 runs the AVX-512 row kernels: a few activation rows keep them bound by
    /// memory; int8 rows whose length is not a multiple of [`INT8_BLOCK`] take the portable loop; int4
    /// takes the AVX2 kernel under AVX-512 too: its products are bound by memory, not by the
    /// vector width).
    pub(super) fn new(kernel: Kernel, cols: usize) -> Self {
        let portable = Dots {
            bf16: portable::dot_bf16,
            int8: portable::dot_int8,
            int4: portable::dot_int4,
            bf16_pairs: false,
        };
        let int8_vector = cols.is_multiple_of(INT8_BLOCK);
        debug_assert!(kernel.is_supported());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 => Dots {
                bf16: avx512::dot_bf16,
                int8: if int8_vector {
                    avx512::dot_int8
                } else {
                    portable.int8
                },
                int4: if Kernel::Avx2.is_supported() {
                    avx2::dot_int4
                } else {
                    portable.int4
                },
                bf16_pairs: true,
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Dots {
                bf16: avx2::dot_bf16,
                int8: if int8_vector {
                    avx2::dot_int8
                } else {
                    portable.int8
                },
                int4: avx2::dot_int4,
                bf16_pairs: false,
            },
            _ => {
                let _ = int8_vector;
                portable
            }
        }
    }
}
