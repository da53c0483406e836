//! Attention for many queries at once (prompts, images) over host f32 buffers: tiled
//! ("flash") attention that never holds a full score matrix.
//!
//! The queries of one head are cut into blocks of [`BLOCK_Q`] rows, one task each on the thread
//! pool. A task walks the keys in tiles of [`BLOCK_KV`]: the scores of its block against one tile
//! (`gemm`), an online softmax over them (running maximum and sum per row, exponentials in
//! vector registers), and their product with the tile's values added to the block's output,
//! which stays in cache for the whole walk. Under a causal mask the tiles past a block's last
//! visible key are never computed. Grouped key/value heads are read in place, never repeated.
//!
//! With at least [`PACK_MIN_QUERIES`] queries (prompts) and a head width that is a multiple of
//! 32 (the decoder's 128), the keys and values of every key/value head are first copied once
//! into the panel layout of the weight products (32 keys, or 32 value columns, side by side), and
//! both products of a tile run on the same register-tiled f32 kernels as the layers' weights.
//! Otherwise the products run on the `gemm` crate: with fewer queries (a decode step) the copy
//! would cost as much as the attention itself, and the vision tower's heads of 80 would fill
//! their last value panel half with padding (measured slower). Either way a task runs on
//! one thread. The softmax is one portable source compiled for AVX-512, for AVX2 and for the
//! target's baseline, chosen by [`active_kernel`](super::active_kernel) like every CPU kernel,
//! and computes the same values on all three: the exponential is a fixed sequence of `+` and `×`
//! (no fused multiply-add, which only some targets have) that the compiler vectorises without
//! reordering. The packed products differ between kernels in the last bits, as the weight
//! products do (fused multiply-adds or not).

use rayon::prelude::*;

use super::CpuError;
use super::elementwise::exp_neg;
use super::error::{check_len, checked_elements};
use super::kernels::{self, PanelF32};
use super::packed::PANEL;
use super::select::{Kernel, active_kernel};

/// Query rows per task.
pub const BLOCK_Q: usize = 64;
/// Keys per tile.
pub const BLOCK_KV: usize = 128;
/// Queries per head from which the keys and values are packed for the register-tiled kernels
/// (for head widths that are a multiple of 32).
pub const PACK_MIN_QUERIES: usize = 16;

/// One attention call: `softmax(q·kᵀ/√dim + mask)·v` per head, with `heads / kv_heads` query
/// heads sharing each key/value head.
#[derive(Debug, Clone, Copy)]
pub struct HostAttention<'a> {
    /// Queries, `[batch, heads, queries, dim]`.
    pub q: &'a [f32],
    /// Keys, `[batch, kv_heads, capacity, dim]`, of which the first `keys` rows of each head are
    /// attended.
    pub k: &'a [f32],
    /// Values, laid out like `k`.
    pub v: &'a [f32],
    /// Batch rows.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads: a divisor of `heads`.
    pub kv_heads: usize,
    /// Queries per head.
    pub queries: usize,
    /// Keys attended per head.
    pub keys: usize,
    /// Rows each key/value head has room for in `k` and `v` (at least `keys`).
    pub capacity: usize,
    /// Width of a head.
    pub dim: usize,
    /// `[batch, queries, keys]`, `true` where a query must not see a key (shared by all heads).
    pub mask: Option<&'a [bool]>,
    /// Additionally hide key `j` from query `i` when `j > i + (keys − queries)`.
    pub causal: bool,
}

impl HostAttention<'_> {
    /// The attention output, `[batch, heads, queries, dim]`. A query that sees no key gets zeros.
    ///
    /// Fails when the buffers do not match the shape, `kv_heads` does not divide `heads`, or
    /// `capacity < keys`.
    pub fn run(&self) -> Result<Vec<f32>, CpuError> {
        self.run_with(active_kernel())
    }

    /// [`run`](Self::run) with the softmax of `kernel` (or the fastest supported one below it).
    pub fn run_with(&self, kernel: Kernel) -> Result<Vec<f32>, CpuError> {
        let kernel = super::select::resolve_kernel(kernel, Kernel::is_supported);
        self.check()?;
        let (d, s_q) = (self.dim, self.queries);
        let mut out = vec![0f32; self.batch * self.heads * s_q * d];
        if out.is_empty() || self.keys == 0 {
            return Ok(out);
        }
        let packed =
            (s_q >= PACK_MIN_QUERIES && d.is_multiple_of(PANEL)).then(|| Packed::new(self, kernel));
        let blocks = s_q.div_ceil(BLOCK_Q);
        out.par_chunks_mut(s_q * d)
            .enumerate()
            .flat_map(|(bh, head)| {
                head.par_chunks_mut(BLOCK_Q * d)
                    .enumerate()
                    .map(move |(qb, o)| (bh * blocks + qb, o))
            })
            .for_each_init(
                || Scratch::new(d),
                |scratch, (task, o)| {
                    let (bh, qb) = (task / blocks, task % blocks);
                    self.block(kernel, packed.as_ref(), bh, qb, o, scratch)
                },
            );
        Ok(out)
    }

    fn check(&self) -> Result<(), CpuError> {
        let shape = || {
            vec![
                self.batch,
                self.heads,
                self.kv_heads,
                self.queries,
                self.keys,
                self.capacity,
                self.dim,
            ]
        };
        if self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.capacity < self.keys
        {
            return Err(CpuError::Shape {
                what: "attention (batch, heads, kv_heads, queries, keys, capacity, dim)",
                dims: shape(),
            });
        }
        let q = checked_elements(
            "queries",
            &[self.batch, self.heads, self.queries, self.dim],
            4,
        )?;
        check_len("queries", q, self.q.len())?;
        let kv = checked_elements(
            "keys",
            &[self.batch, self.kv_heads, self.capacity, self.dim],
            4,
        )?;
        check_len("keys", kv, self.k.len())?;
        check_len("values", kv, self.v.len())?;
        if let Some(mask) = self.mask {
            let n = checked_elements("mask", &[self.batch, self.queries, self.keys], 1)?;
            check_len("mask", n, mask.len())?;
        }
        Ok(())
    }

    /// Query block `qb` of head `bh` (`batch · heads + head`) into `o` (its rows of the output),
    /// with the packed keys and values when given.
    fn block(
        &self,
        kernel: Kernel,
        packed: Option<&Packed>,
        bh: usize,
        qb: usize,
        o: &mut [f32],
        s: &mut Scratch,
    ) {
        let d = self.dim;
        let rows = o.len() / d;
        let (b, h) = (bh / self.heads, bh % self.heads);
        let g = h / (self.heads / self.kv_heads);
        let q0 = qb * BLOCK_Q;
        let kv_base = (b * self.kv_heads + g) * self.capacity * d;
        let keys = &self.k[kv_base..kv_base + self.keys * d];
        let values = &self.v[kv_base..kv_base + self.keys * d];
        // the scale folded into the queries
        let scale = 1.0 / (d as f32).sqrt();
        let q = &self.q[(bh * self.queries + q0) * d..][..rows * d];
        for (dst, &x) in s.q.iter_mut().zip(q) {
            *dst = x * scale;
        }
        // keys visible to query i (global index): j ≤ i + offset
        let offset = self.keys as isize - self.queries as isize;
        let visible = |i: usize| -> usize {
            if self.causal {
                (i as isize + offset + 1).clamp(0, self.keys as isize) as usize
            } else {
                self.keys
            }
        };
        let end = visible(q0 + rows - 1);
        s.max[..rows].fill(f32::NEG_INFINITY);
        s.sum[..rows].fill(0.0);
        let mut k0 = 0;
        while k0 < end {
            let n = BLOCK_KV.min(end - k0);
            let scores = &mut s.scores[..rows * n];
            if let Some(p) = packed {
                p.scores(b * self.kv_heads + g, &s.q[..rows * d], rows, k0, n, scores);
            } else {
                // SAFETY: q is `rows × d` row-major, the key tile `n × d` row-major read as its
                // transpose `d × n`, scores `rows × n` row-major: all within their slices.
                unsafe {
                    gemm::gemm(
                        rows,
                        n,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        s.q.as_ptr(),
                        1,
                        d as isize,
                        keys[k0 * d..].as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            let tile = Tile {
                k0,
                n,
                rows,
                dim: d,
                visible: &|i| visible(q0 + i).saturating_sub(k0).min(n),
                mask: self
                    .mask
                    .map(|m| (&m[(b * self.queries + q0) * self.keys..], self.keys)),
            };
            softmax_tile(kernel, &tile, scores, &mut s.max, &mut s.sum, o);
            if let Some(p) = packed {
                p.add_values(b * self.kv_heads + g, scores, rows, k0, n, o);
                k0 += n;
                continue;
            }
            // SAFETY: probabilities `rows × n`, the value tile `n × d` and the output `rows × d`,
            // all row-major within their slices.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    n,
                    o.as_mut_ptr(),
                    1,
                    d as isize,
                    true,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    values[k0 * d..].as_ptr(),
                    1,
                    d as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            k0 += n;
        }
        for (row, &sum) in o.chunks_exact_mut(d).zip(&s.sum[..rows]) {
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// The keys and values of every (batch row, key/value head) in the f32 panel layout, and the
/// kernel that reads them.
struct Packed {
    panel: PanelF32,
    keys: usize,
    dim: usize,
    /// Per head, `keys.div_ceil(32)` panels of 32 keys: `k[kk · 32 + j]` is dimension `kk` of
    /// the panel's key `j` (zeros past the last key).
    k: Vec<f32>,
    /// Per head, `dim.div_ceil(32)` panels of 32 value columns: `v[key · 32 + j]` is column `j`
    /// of the panel for `key` (zeros past the last column).
    v: Vec<f32>,
}

impl Packed {
    fn new(a: &HostAttention, kernel: Kernel) -> Self {
        let (keys, d) = (a.keys, a.dim);
        let (k_len, v_len) = (
            keys.div_ceil(PANEL) * PANEL * d,
            d.div_ceil(PANEL) * PANEL * keys,
        );
        let heads = a.batch * a.kv_heads;
        let mut k = vec![0f32; heads * k_len];
        let mut v = vec![0f32; heads * v_len];
        k.par_chunks_mut(k_len)
            .zip(v.par_chunks_mut(v_len))
            .enumerate()
            .for_each(|(head, (kp, vp))| {
                let base = head * a.capacity * d;
                let (src_k, src_v) = (&a.k[base..][..keys * d], &a.v[base..][..keys * d]);
                for (t, row) in src_k.chunks_exact(d).enumerate() {
                    let panel = &mut kp[t / PANEL * PANEL * d..][..PANEL * d];
                    for (kk, &x) in row.iter().enumerate() {
                        panel[kk * PANEL + t % PANEL] = x;
                    }
                }
                for (t, row) in src_v.chunks_exact(d).enumerate() {
                    for (c0, part) in row.chunks(PANEL).enumerate() {
                        vp[(c0 * keys + t) * PANEL..][..part.len()].copy_from_slice(part);
                    }
                }
            });
        Self {
            panel: kernels::panel_f32(kernel),
            keys,
            dim: d,
            k,
            v,
        }
    }

    /// `scores[rows, n] = q[rows, dim] · keys[k0..k0 + n]ᵀ` of head `head` (`k0` a multiple of
    /// 32).
    fn scores(&self, head: usize, q: &[f32], rows: usize, k0: usize, n: usize, scores: &mut [f32]) {
        let d = self.dim;
        let k_len = self.keys.div_ceil(PANEL) * PANEL * d;
        let panels = &self.k[head * k_len..][..k_len];
        assert!(k0.is_multiple_of(PANEL) && scores.len() >= rows * n && k0 + n <= self.keys);
        for c in (0..n).step_by(PANEL) {
            let p = (k0 + c) / PANEL;
            // SAFETY: the kernel suits the CPU (resolved by the caller); it writes rows < `rows`
            // at columns c..c + min(32, n − c) of the `rows × n` scores, inside the slice
            // (asserted), and checks its reads.
            unsafe {
                (self.panel)(
                    q,
                    d,
                    rows,
                    &panels[p * PANEL * d..],
                    d,
                    scores.as_mut_ptr().add(c),
                    n,
                    PANEL.min(n - c),
                    false,
                )
            }
        }
    }

    /// `o[rows, dim] += p[rows, n] · values[k0..k0 + n]` of head `head`.
    fn add_values(&self, head: usize, p: &[f32], rows: usize, k0: usize, n: usize, o: &mut [f32]) {
        let (d, keys) = (self.dim, self.keys);
        let v_len = d.div_ceil(PANEL) * PANEL * keys;
        let panels = &self.v[head * v_len..][..v_len];
        assert!(o.len() >= rows * d && k0 + n <= keys);
        for c in (0..d).step_by(PANEL) {
            let panel = &panels[(c / PANEL * keys + k0) * PANEL..];
            // SAFETY: as in `scores`: the kernel adds into rows < `rows` at columns
            // c..c + min(32, d − c) of the `rows × d` output, inside the slice (asserted).
            unsafe {
                (self.panel)(
                    p,
                    n,
                    rows,
                    panel,
                    n,
                    o.as_mut_ptr().add(c),
                    d,
                    PANEL.min(d - c),
                    true,
                )
            }
        }
    }
}

/// A task's buffers, reused across its blocks.
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Self {
            q: vec![0.0; BLOCK_Q * d],
            scores: vec![0.0; BLOCK_Q * BLOCK_KV],
            max: vec![0.0; BLOCK_Q],
            sum: vec![0.0; BLOCK_Q],
        }
    }
}

/// One tile of scores, `rows × n`, for keys `k0..k0 + n`.
struct Tile<'a> {
    k0: usize,
    n: usize,
    rows: usize,
    dim: usize,
    /// How many of the tile's keys row `i` may see (a prefix: causality).
    visible: &'a dyn Fn(usize) -> usize,
    /// The mask rows of the block (row `i` at `i · stride`), `true` = hidden.
    mask: Option<(&'a [bool], usize)>,
}

/// Turns a tile of scores into probabilities under the running maximum, rescaling the rows of
/// `o` and the running sums to the new maximum.
fn softmax_tile(
    kernel: Kernel,
    tile: &Tile,
    scores: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    o: &mut [f32],
) {
    match kernel {
        // SAFETY: the kernel was resolved against the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe { softmax_avx512(tile, scores, max, sum, o) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { softmax_avx2(tile, scores, max, sum, o) },
        _ => softmax_generic(tile, scores, max, sum, o),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(t: &Tile, s: &mut [f32], m: &mut [f32], l: &mut [f32], o: &mut [f32]) {
    softmax_generic(t, s, m, l, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_avx2(t: &Tile, s: &mut [f32], m: &mut [f32], l: &mut [f32], o: &mut [f32]) {
    softmax_generic(t, s, m, l, o)
}

#[inline(always)]
fn softmax_generic(
    tile: &Tile,
    scores: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    o: &mut [f32],
) {
    let (n, d) = (tile.n, tile.dim);
    for i in 0..tile.rows {
        let row = &mut scores[i * n..(i + 1) * n];
        let vis = (tile.visible)(i);
        let (seen, hidden) = row.split_at_mut(vis);
        hidden.fill(0.0);
        if let Some((mask, stride)) = tile.mask {
            let m = &mask[i * stride + tile.k0..][..vis];
            for (x, &h) in seen.iter_mut().zip(m) {
                if h {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let tile_max = max_of(seen);
        if tile_max == f32::NEG_INFINITY {
            seen.fill(0.0);
            continue;
        }
        let new_max = max[i].max(tile_max);
        let tile_sum = exp_sub_sum(seen, new_max);
        if new_max != max[i] {
            let c = exp_neg(max[i] - new_max);
            o[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= c);
            sum[i] *= c;
            max[i] = new_max;
        }
        sum[i] += tile_sum;
    }
}

/// Lanes the reductions keep apart so that the compiler vectorises them.
const LANES: usize = 16;

/// The largest value (`−∞` for none).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for &v in chunks.remainder() {
        acc[0] = if v > acc[0] { v } else { acc[0] };
    }
    acc.into_iter()
        .fold(f32::NEG_INFINITY, |a, v| if v > a { v } else { a })
}

/// `x ← exp(x − m)` for every element (`x ≤ m`), and the sum of the results.
#[inline(always)]
fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp_neg(*v - m);
            *a += *v;
        }
    }
    for v in chunks.into_remainder() {
        *v = exp_neg(*v - m);
        acc[0] += *v;
    }
    let mut total = 0.0;
    for a in acc {
        total += a;
    }
    total
}
