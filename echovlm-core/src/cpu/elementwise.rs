//! Element-wise kernels over host f32 buffers: the exponential the softmax and the gated
//! activations share, the activations themselves, the RMSNorm and the per-row mix of two
//! branches, each one portable source compiled for AVX-512, for AVX2 and for the target's
//! baseline (the same values bit for bit on all three: only `+`, `×`, `÷` and `√`, which the
//! compiler vectorises without reordering).

use rayon::prelude::*;

use super::select::{Kernel, active_kernel, resolve_kernel};

/// Values from which the row-wise kernels split their rows over the thread pool.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Runs `f(first_row, rows)` on groups of whole rows (`width` values each) of `out`: on the
/// thread pool when there are enough values, else on the calling thread with every row.
fn by_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / width.max(1);
    let threads = rayon::current_num_threads();
    if out.len() < PARALLEL_MIN_VALUES || threads <= 1 || rows < 2 {
        return f(0, out);
    }
    // a few tasks per thread, whole rows each
    let per = rows.div_ceil(threads * 4).max(1);
    out.par_chunks_mut(per * width)
        .enumerate()
        .for_each(|(i, o)| f(i * per, o));
}

/// `eˣ` for `x ≤ 0` (`−∞` included), within 2 ulp: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`,
/// `eʳ` by Cephes' degree-6 polynomial, `2ⁿ` from the exponent bits. Below `−87` (where `eˣ`
/// leaves the normal range) it returns 0. Branch-free, so that loops over it vectorise.
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2²³: adding it rounds to an integer, held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts, the first exact in few bits
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOW: f32 = -87.0;
    let xc = if x > LOW { x } else { LOW };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    // n + 127 in the exponent field: n = bits(t) − bits(ROUND) since t's ulp is 1
    let e = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    let y = p * f32::from_bits(e as u32);
    if x > LOW { y } else { 0.0 }
}

/// `σ(x) = 1 / (1 + e⁻ˣ)` through [`exp_neg`] of `−|x|` (never overflows).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let z = exp_neg(if x > 0.0 { -x } else { x });
    let r = 1.0 / (1.0 + z);
    if x > 0.0 { r } else { z * r }
}

/// `x ← x · σ(α·x)` for every element: SiLU for `α = 1`, the quick GELU of Qwen2-VL's vision
/// tower for `α = 1.702`.
pub fn scaled_silu(x: &mut [f32], alpha: f32) {
    scaled_silu_with(active_kernel(), x, alpha)
}

/// [`scaled_silu`] with `kernel` (or the fastest supported one below it).
pub fn scaled_silu_with(kernel: Kernel, x: &mut [f32], alpha: f32) {
    #[inline(always)]
    fn body(x: &mut [f32], alpha: f32) {
        for v in x.iter_mut() {
            *v *= sigmoid(alpha * *v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(x: &mut [f32], alpha: f32) {
        body(x, alpha)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(x: &mut [f32], alpha: f32) {
        body(x, alpha)
    }
    match resolve_kernel(kernel, Kernel::is_supported) {
        // SAFETY: the kernel was resolved against the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe { avx512(x, alpha) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2(x, alpha) },
        _ => body(x, alpha),
    }
}

/// `gate ← silu(gate) · up` element-wise (the SwiGLU product); `up` is as long as `gate`.
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_with(active_kernel(), gate, up)
}

/// [`silu_mul`] with `kernel` (or the fastest supported one below it).
pub fn silu_mul_with(kernel: Kernel, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul lengths");
    #[inline(always)]
    fn body(g: &mut [f32], u: &[f32]) {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = *g * sigmoid(*g) * u;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(g: &mut [f32], u: &[f32]) {
        body(g, u)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(g: &mut [f32], u: &[f32]) {
        body(g, u)
    }
    match resolve_kernel(kernel, Kernel::is_supported) {
        // SAFETY: the kernel was resolved against the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe { avx512(gate, up) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2(gate, up) },
        _ => body(gate, up),
    }
}

/// Qwen2's RMSNorm of each row of `x` (`weight.len()` values per row) into `out`:
/// `out = x · (mean(x²) + eps)^(−½) · weight`, the mean over the row. Rows run in parallel on
/// the thread pool when there are many.
///
/// # Panics
/// If `out` is not as long as `x`, or `x` is not whole rows.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_with(active_kernel(), x, weight, eps, out)
}

/// [`rms_norm`] with `kernel` (or the fastest supported one below it).
pub fn rms_norm_with(kernel: Kernel, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert!(
        out.len() == x.len() && (d == 0 || x.len().is_multiple_of(d)),
        "rms_norm lengths: {} values, {} outputs, rows of {d}",
        x.len(),
        out.len()
    );
    if d == 0 {
        return;
    }
    #[inline(always)]
    fn body(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mut acc = [0f32; LANES];
            let mut chunks = xr.chunks_exact(LANES);
            for c in &mut chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += v * v;
                }
            }
            for &v in chunks.remainder() {
                acc[0] += v * v;
            }
            let mut sum = 0f32;
            for a in acc {
                sum += a;
            }
            let inv = 1.0 / (sum / d as f32 + eps).sqrt();
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * inv * g;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        body(x, w, eps, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        body(x, w, eps, out)
    }
    let kernel = resolve_kernel(kernel, Kernel::is_supported);
    by_rows(out, d, |r0, out| {
        let x = &x[r0 * d..][..out.len()];
        match kernel {
            // SAFETY: the kernel was resolved against the CPU's features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe { avx512(x, weight, eps, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2(x, weight, eps, out) },
            _ => body(x, weight, eps, out),
        }
    });
}

/// `a ← c₀ · a + c₁ · b` row by row, `(c₀, c₁)` the row's pair in `c` (`[rows, 2]`): two
/// branches mixed by per-row weights, rows in parallel when there are many.
///
/// # Panics
/// If `b` is not as long as `a`, or `a` does not hold `c.len() / 2` whole rows.
pub fn mix_rows(a: &mut [f32], b: &[f32], c: &[f32]) {
    mix_rows_with(active_kernel(), a, b, c)
}

/// [`mix_rows`] with `kernel` (or the fastest supported one below it).
pub fn mix_rows_with(kernel: Kernel, a: &mut [f32], b: &[f32], c: &[f32]) {
    let rows = c.len() / 2;
    assert!(
        b.len() == a.len()
            && c.len().is_multiple_of(2)
            && (rows == 0 && a.is_empty() || rows > 0 && a.len().is_multiple_of(rows)),
        "mix_rows lengths: {}, {} values, {} weights",
        a.len(),
        b.len(),
        c.len()
    );
    if rows == 0 {
        return;
    }
    let d = a.len() / rows;
    if d == 0 {
        return;
    }
    /// Rows of `a` and `b` (`c.len() / 2` of them), each row's pair of weights in `c`.
    #[inline(always)]
    fn body(a: &mut [f32], b: &[f32], c: &[f32]) {
        let d = a.len() / (c.len() / 2);
        for ((ar, br), w) in a
            .chunks_exact_mut(d)
            .zip(b.chunks_exact(d))
            .zip(c.chunks_exact(2))
        {
            let (c0, c1) = (w[0], w[1]);
            for (x, &y) in ar.iter_mut().zip(br) {
                *x = c0 * *x + c1 * y;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(a: &mut [f32], b: &[f32], c: &[f32]) {
        body(a, b, c)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(a: &mut [f32], b: &[f32], c: &[f32]) {
        body(a, b, c)
    }
    let kernel = resolve_kernel(kernel, Kernel::is_supported);
    by_rows(a, d, |r0, a| {
        let (b, c) = (&b[r0 * d..][..a.len()], &c[2 * r0..][..2 * (a.len() / d)]);
        match kernel {
            // SAFETY: the kernel was resolved against the CPU's features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe { avx512(a, b, c) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2(a, b, c) },
            _ => body(a, b, c),
        }
    });
}

/// Lanes the row sums keep apart so that the compiler vectorises them.
const LANES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponential_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -86.99f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-100.0), 0.0);
    }

    #[test]
    fn the_activations_match_their_definitions_on_every_kernel() {
        let x: Vec<f32> = (0..1000)
            .map(|i| (i as f32 - 500.0) * 0.047)
            .chain([f32::MAX, -f32::MAX, 90.0, -90.0])
            .collect();
        for kernel in Kernel::ALL {
            for alpha in [1.0f32, 1.702] {
                let mut got = x.clone();
                scaled_silu_with(kernel, &mut got, alpha);
                for (&v, &g) in x.iter().zip(&got) {
                    let want = v as f64 / (1.0 + (-((alpha * v) as f64)).exp());
                    assert!(
                        (g as f64 - want).abs() <= 4e-7 * want.abs() + 1e-35,
                        "{kernel} α {alpha} x {v}: {g} vs {want}"
                    );
                }
            }
            // finite products only
            let x: Vec<f32> = x.iter().copied().filter(|v| v.abs() < 1e4).collect();
            let up: Vec<f32> = x.iter().map(|v| 0.5 - v).collect();
            let up = up.as_slice();
            let mut got = x.clone();
            silu_mul_with(kernel, &mut got, up);
            for ((&v, &u), &g) in x.iter().zip(up).zip(&got) {
                let want = v as f64 / (1.0 + (-(v as f64)).exp()) * u as f64;
                let tol = 4e-7 * want.abs() + 1e-35;
                assert!(
                    (g as f64 - want).abs() <= tol,
                    "{kernel} x {v} up {u}: {g} vs {want}"
                );
            }
        }
    }
}
