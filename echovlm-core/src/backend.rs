//! Everything that depends on which Burn backend a tensor lives on, in one place.
//!
//! Model code calls the portable functions here; each one picks a backend's native path where
//! one exists and otherwise falls back to plain tensor operations that every backend supports.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor};
use rayon::prelude::*;

use crate::host::{flex_f32_vec, from_f32_vec};

/// Queries per row up to which attention on the CPU runs in [`decode_attention`] (decode steps
/// and small batches of them) instead of Burn's attention.
pub const HOST_ATTENTION_MAX_QUERIES: usize = 8;

/// Whether `device` is Burn's flex CPU backend.
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Runs a forward pass `f` over weights on `device`: on the flex CPU backend on a thread of
/// the CPU path's pool ([`crate::cpu::on_pool`]), elsewhere on the calling thread.
pub fn forward_on<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) {
        crate::cpu::on_pool(f)
    } else {
        f()
    }
}

/// `x · σ(α·x)` element-wise: SiLU for `α = 1`, Qwen2-VL's quick GELU for `α = 1.702`. On the
/// flex device in f32, one pass of the CPU kernel ([`crate::cpu::scaled_silu`]); elsewhere tensor
/// operations.
pub fn scaled_silu<const D: usize>(x: Tensor<D>, alpha: f64) -> Tensor<D> {
    if is_flex(&x.device()) && x.dtype() == DType::F32 {
        let (shape, device) = (x.dims(), x.device());
        let mut v = flex_f32_vec(x);
        crate::cpu::scaled_silu(&mut v, alpha as f32);
        return from_f32_vec(v, shape, &device, DType::F32);
    }
    if alpha == 1.0 {
        burn::tensor::activation::silu(x)
    } else {
        x.clone() * burn::tensor::activation::sigmoid(x.mul_scalar(alpha))
    }
}

/// `x` in `dtype`: cast where its type differs, as it is otherwise (on a fusing GPU backend a
/// cast to the type a tensor already has is still an operation to register and run).
pub fn cast_to<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// Qwen2's RMSNorm over the last dimension of `x`, `weight` (`[d]`) its scale: statistics in
/// f32, cast back to `x`'s type before the scale. On the flex device with f32 input and scale,
/// one pass of the CPU kernel ([`crate::cpu::rms_norm`]) that reads `x` in place; elsewhere
/// tensor operations.
///
/// # Panics
/// If the last dimension of `x` is not `d`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    assert_eq!(dims[D - 1], weight.dims()[0], "rms_norm width");
    if let Some(out) = host_rms_norm(&x, weight, eps) {
        return out;
    }
    // the weight's reshape first: registered between the reduction and the products, it would
    // split the normalisation into three kernels on a fusing GPU backend instead of one
    let weight = weight.clone().unsqueeze::<D>();
    rms_norm_shaped(x, weight, eps)
}

/// `x + delta` and its [`rms_norm`]: a residual connection and the normalisation after it.
/// The same values as the two steps; on a fusing GPU backend the sum and the normalisation
/// are one kernel (the weight's reshape, registered between them, would split them).
///
/// # Panics
/// If the shapes differ or the last dimension is not the weight's.
pub fn rms_norm_residual<const D: usize>(
    x: Tensor<D>,
    delta: Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    let dims = x.dims();
    assert_eq!(dims, delta.dims(), "rms_norm_residual shapes");
    assert_eq!(dims[D - 1], weight.dims()[0], "rms_norm width");
    if is_flex(&x.device()) {
        let sum = x + delta;
        return (sum.clone(), rms_norm(sum, weight, eps));
    }
    let weight = weight.clone().unsqueeze::<D>();
    let sum = x + delta;
    (sum.clone(), rms_norm_shaped(sum, weight, eps))
}

/// [`rms_norm`] in one pass of the CPU kernel, on the flex device in f32; `None` elsewhere.
fn host_rms_norm<const D: usize>(x: &Tensor<D>, weight: &Tensor<1>, eps: f64) -> Option<Tensor<D>> {
    if !(is_flex(&x.device()) && x.dtype() == DType::F32 && weight.dtype() == DType::F32) {
        return None;
    }
    let (dims, device) = (x.dims(), x.device());
    let mut out = vec![0f32; dims.iter().product()];
    crate::host::with_flex_f32(weight.clone(), |w| {
        crate::host::with_flex_f32(x.clone(), |x| {
            crate::cpu::rms_norm(x, w, eps as f32, &mut out)
        })
    });
    Some(from_f32_vec(out, dims, &device, DType::F32))
}

/// The normalisation as tensor operations, the weight already shaped to `x`'s rank.
fn rms_norm_shaped<const D: usize>(x: Tensor<D>, weight: Tensor<D>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x32 = cast_to(x, DType::F32);
    let var = x32.clone().square().mean_dim(D - 1);
    let normed = x32 * var.add_scalar(eps).sqrt().recip();
    cast_to(normed, dtype) * weight
}

/// `c[:, 0] · a + c[:, 1] · b`: two branches (`[rows, width]`) mixed by per-row weights
/// (`c`, `[rows, 2]`). On the flex device in f32, one pass of the CPU kernel
/// ([`crate::cpu::mix_rows`]) into `a`'s memory where `a` is not shared; elsewhere tensor
/// operations.
///
/// # Panics
/// If the shapes do not match.
pub fn mix_rows(c: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let [rows, width] = a.dims();
    assert!(
        b.dims() == [rows, width] && c.dims() == [rows, 2],
        "mix_rows shapes: {:?}, {:?}, {:?}",
        c.dims(),
        a.dims(),
        b.dims()
    );
    let f32s = [&a, &b, &c].iter().all(|t| t.dtype() == DType::F32);
    if is_flex(&a.device()) && f32s {
        let device = a.device();
        let mut out = flex_f32_vec(a);
        crate::host::with_flex_f32(c, |c| {
            crate::host::with_flex_f32(b, |b| crate::cpu::mix_rows(&mut out, b, c))
        });
        return from_f32_vec(out, [rows, width], &device, DType::F32);
    }
    let c0 = c.clone().narrow(1, 0, 1);
    let c1 = c.narrow(1, 1, 1);
    c0 * a + c1 * b
}

/// `silu(gate) · up` element-wise (the SwiGLU product); on the flex device in f32 one pass of
/// the CPU kernel ([`crate::cpu::silu_mul`]), elsewhere tensor operations.
///
/// # Panics
/// If the shapes differ.
pub fn silu_mul<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(gate.dims(), up.dims(), "silu_mul shapes");
    if is_flex(&gate.device()) && gate.dtype() == DType::F32 && up.dtype() == DType::F32 {
        let (shape, device) = (gate.dims(), gate.device());
        let mut g = flex_f32_vec(gate);
        crate::host::with_flex_f32(up, |u| crate::cpu::silu_mul(&mut g, u));
        return from_f32_vec(g, shape, &device, DType::F32);
    }
    burn::tensor::activation::silu(gate) * up
}

/// Splits `x` (`[batch, seq, heads · head_dim]`, a projection's output) into heads and rotates
/// each by the rotary tables `cos` and `sin` (`[batch, 1, seq, head_dim]`, or any shape that
/// broadcasts to the heads), returning `[batch, heads, seq, head_dim]`:
/// [`rope::apply`](crate::rope::apply) on the split heads. On the flex device in f32 with tables
/// of exactly that shape, one pass over the projection's output in place (no copy where the
/// tensor is not shared) with the same values bit for bit; elsewhere tensor operations.
///
/// # Panics
/// If the last dimension of `x` is not a multiple of `heads`, or the tables do not broadcast.
pub fn rope_heads(x: Tensor<3>, heads: usize, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, s, width] = x.dims();
    assert!(
        heads > 0 && width.is_multiple_of(heads),
        "{width} values in {heads} heads"
    );
    let d = width / heads;
    let host = is_flex(&x.device())
        && x.dtype() == DType::F32
        && [cos, sin]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.dims() == [b, 1, s, d])
        && d.is_multiple_of(2);
    if !host {
        let x = x.reshape([b, s, heads, d]).swap_dims(1, 2);
        return crate::rope::apply(x, cos, sin);
    }
    let device = x.device();
    let mut v = flex_f32_vec(x);
    let half = d / 2;
    crate::host::with_flex_f32(cos.clone(), |cos| {
        crate::host::with_flex_f32(sin.clone(), |sin| {
            // one token's heads per item: x·cos + rotate_half(x)·sin, as rope::apply rounds it
            let token = |(t, row): (usize, &mut [f32])| {
                let (c, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
                for head in row.chunks_exact_mut(d) {
                    let (x1, x2) = head.split_at_mut(half);
                    for j in 0..half {
                        let (a, b) = (x1[j], x2[j]);
                        x1[j] = a * c[j] + -b * sn[j];
                        x2[j] = b * c[half + j] + a * sn[half + j];
                    }
                }
            };
            if b * s > crate::cpu::SMALL_M {
                v.par_chunks_mut(width).enumerate().for_each(token);
            } else {
                v.chunks_mut(width).enumerate().for_each(token);
            }
        })
    });
    from_f32_vec(v, [b, s, heads, d], &device, DType::F32).swap_dims(1, 2)
}

/// How a key/value cache keeps its keys and values on a device ([`kv_storage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KvStorage {
    /// f32 buffers in host memory, `[batch, heads, capacity, dim]`, that [`host_attention`]
    /// reads in place.
    Host,
    /// Tensors on the device, attended with [`attention`].
    Tensors,
}

/// The key/value cache representation for keys and values of float type `dtype` on `device`:
/// host buffers on the flex CPU device in f32 (decode attention then reads the cache in place
/// instead of reading tensors back every step), device tensors everywhere else.
pub fn kv_storage(device: &Device, dtype: DType) -> KvStorage {
    if is_flex(device) && dtype == DType::F32 {
        KvStorage::Host
    } else {
        KvStorage::Tensors
    }
}

/// Whether the backend's fused attention accepts fewer key/value heads than query heads.
fn native_grouped_attention(device: &Device) -> bool {
    is_flex(device)
}

/// Repeats each key/value head `n_rep` times: `[b, h_kv, s, d]` → `[b, h_kv·n_rep, s, d]`, head
/// `i` of the output being head `i / n_rep` of the input (HF `repeat_kv`).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, s, d])
        .reshape([b, h * n_rep, s, d])
}

/// Scaled dot-product attention, `softmax(q·kᵀ/√d + mask)·v`, with grouped key/value heads.
///
/// * `q`: `[b, h, s_q, d]`; `k`, `v`: `[b, h_kv, s_kv, d]` with `h` a multiple of `h_kv`.
/// * `mask`: `[b, 1, s_q, s_kv]`, `true` where a query must not see a key. Every query row must
///   leave at least one key visible.
/// * `causal`: additionally hide key `j` from query `i` when `j > i + (s_kv − s_q)`.
///
/// The softmax runs in f32 for f32 inputs; backends with a fused kernel (flex, CubeCL) never
/// build the full score matrix for long sequences. On the flex device, up to
/// [`HOST_ATTENTION_MAX_QUERIES`] queries take [`decode_attention`] and more queries in f32 the
/// CPU path's tiled attention ([`crate::cpu::HostAttention`]); other float types take Burn's.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let heads = q.dims()[1];
    let kv_heads = k.dims()[1];
    // on the host: a few queries over the keys in place, longer f32 runs tiled (both behind
    // `decode_attention`)
    if is_flex(&q.device())
        && (q.dims()[2] <= HOST_ATTENTION_MAX_QUERIES
            || [q.dtype(), k.dtype(), v.dtype()] == [DType::F32; 3])
    {
        return decode_attention(q, k, v, mask, causal);
    }
    let s = q.dims()[2];
    if s == 1
        && !causal
        && mask.as_ref().is_none_or(|m| m.dims()[1] == 1)
        && !native_grouped_attention(&q.device())
    {
        return grouped_decode_attention(q, k, v, mask);
    }
    let (k, v) = if heads != kv_heads && !native_grouped_attention(&q.device()) {
        let n_rep = heads / kv_heads;
        (repeat_kv(k, n_rep), repeat_kv(v, n_rep))
    } else {
        (k, v)
    };
    burn::tensor::module::attention(
        q,
        k,
        v,
        mask,
        None,
        AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        },
    )
}

/// Attention of one query per head (a decode step), `q` `[b, h, 1, d]`, over keys and values
/// `[b, h_kv, s_kv, d]` with `h` a multiple of `h_kv`, `mask` `[b, 1, 1, s_kv]` (`true`: hidden;
/// at least one key visible), as plain tensor operations: what [`attention`] runs for a decode
/// step off the CPU backend.
///
/// The query heads that share a key/value head become that head's queries (`[b, h_kv, h/h_kv,
/// d]`), so keys and values are read as they are instead of repeated per head, and the scores
/// are a small matrix product. Written as tensor operations rather than Burn's attention, a
/// fusing GPU backend folds the mask into the maximum's reduction and the scale and the
/// exponential into the sum's: about five kernels where Burn's separate-kernel attention
/// (which it runs outside the fuser) launches a dozen. The softmax runs in f32 whatever the
/// input type, as PyTorch's eager attention does, and so does its normalisation (after the
/// product with the values).
///
/// # Panics
/// If `q` has more than one query per head, or its heads are not a multiple of `k`'s.
pub fn grouped_decode_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let [b, heads, s, d] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    assert_eq!(s, 1, "grouped_decode_attention takes one query per head");
    assert_eq!(
        heads % kv_heads,
        0,
        "query heads a multiple of key/value heads"
    );
    let n_rep = heads / kv_heads;
    let dtype = q.dtype();
    let q = q.reshape([b, kv_heads, n_rep, d]);
    let scores = cast_to(q.matmul(k.swap_dims(2, 3)), DType::F32);
    let scores = match mask {
        Some(m) => scores.mask_fill(m.expand([b, kv_heads, n_rep, keys]), f32::NEG_INFINITY),
        None => scores,
    };
    // the scale inside the exponential (the maximum of the unscaled scores is that of the
    // scaled ones, unscaled) and the normalisation after the product with the values: both
    // join kernels that run anyway instead of taking one each
    let max = scores.clone().max_dim(3);
    let e = (scores - max).mul_scalar(1.0 / (d as f64).sqrt()).exp();
    let sum = e.clone().sum_dim(3);
    let o = cast_to(cast_to(e, dtype).matmul(v), DType::F32) / sum;
    cast_to(o, dtype).reshape([b, heads, 1, d])
}

/// Keys or values held in host memory as `[batch, heads, capacity, dim]` f32, of which the first
/// `len` positions of every head are filled (a CPU key/value cache).
#[derive(Debug, Clone, Copy)]
pub struct HostKv<'a> {
    /// The buffer, `batch · heads · capacity · dim` values.
    pub data: &'a [f32],
    /// Batch rows.
    pub batch: usize,
    /// Key/value heads.
    pub heads: usize,
    /// Positions each head has room for.
    pub capacity: usize,
    /// Filled positions.
    pub len: usize,
    /// Head width.
    pub dim: usize,
}

impl HostKv<'_> {
    /// The filled `[len, dim]` rows of head `head` in batch row `row`.
    fn head(&self, row: usize, head: usize) -> &[f32] {
        let start = (row * self.heads + head) * self.capacity * self.dim;
        &self.data[start..start + self.len * self.dim]
    }

    /// The filled positions as an f32 tensor `[batch, heads, len, dim]` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        let mut out = Vec::with_capacity(self.batch * self.heads * self.len * self.dim);
        for bh in 0..self.batch * self.heads {
            out.extend_from_slice(self.head(bh / self.heads, bh % self.heads));
        }
        from_f32_vec(
            out,
            [self.batch, self.heads, self.len, self.dim],
            device,
            DType::F32,
        )
    }
}

/// [`attention`] against keys and values already on the host (a [`KvStorage::Host`] cache,
/// flex CPU device only).
///
/// Up to [`HOST_ATTENTION_MAX_QUERIES`] queries per row (decode steps), each key and value row
/// is read in place, once per group of query heads that share it, in f32, on all cores, with
/// no copy of the cache and one small allocation per task. More queries (a prompt) take the
/// CPU path's tiled attention ([`crate::cpu::HostAttention`]), which also reads the cache in
/// place.
pub fn host_attention(
    q: Tensor<4>,
    k: HostKv<'_>,
    v: HostKv<'_>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    if q.dims()[2] > HOST_ATTENTION_MAX_QUERIES {
        return tiled_attention(q, k, v, mask, causal);
    }
    let [b, h, s_q, d] = q.dims();
    let (h_kv, s_kv) = (k.heads, k.len);
    assert!(
        k.batch == b && v.batch == b && v.heads == h_kv && v.len == s_kv && k.dim == d,
        "keys/values [{}, {}, {}, {}] do not fit queries [{b}, {h}, {s_q}, {d}]",
        k.batch,
        k.heads,
        k.len,
        k.dim
    );
    let (dtype, device) = (q.dtype(), q.device());
    let n_rep = h / h_kv;
    let qv = flex_f32_vec(q);
    let hidden: Option<Vec<bool>> = mask.map(|m| m.into_data().iter::<bool>().collect());
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; b * h * s_q * d];
    // one task per (row, key/value head): its n_rep query heads × s_q queries
    out.par_chunks_mut(n_rep * s_q * d)
        .enumerate()
        .for_each(|(task, dst)| {
            let (bi, g) = (task / h_kv, task % h_kv);
            let keys = k.head(bi, g);
            let values = v.head(bi, g);
            let queries = &qv[(bi * h + g * n_rep) * s_q * d..][..n_rep * s_q * d];
            let mut scores = vec![0f32; n_rep * s_q * s_kv];
            for (t, key) in keys.chunks_exact(d).enumerate() {
                for (qi, query) in queries.chunks_exact(d).enumerate() {
                    scores[qi * s_kv + t] = dot(query, key) * scale;
                }
            }
            for (qi, row) in scores.chunks_exact_mut(s_kv).enumerate() {
                let pos = qi % s_q;
                let visible = |t: usize| {
                    !(causal && t > pos + (s_kv - s_q))
                        && hidden
                            .as_ref()
                            .is_none_or(|m| !m[(bi * s_q + pos) * s_kv + t])
                };
                let mut max = f32::NEG_INFINITY;
                for (t, x) in row.iter_mut().enumerate() {
                    if visible(t) {
                        max = max.max(*x);
                    } else {
                        *x = f32::NEG_INFINITY;
                    }
                }
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
            for (t, value) in values.chunks_exact(d).enumerate() {
                for (qi, o) in dst.chunks_exact_mut(d).enumerate() {
                    let p = scores[qi * s_kv + t];
                    if p != 0.0 {
                        o.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
                    }
                }
            }
        });
    from_f32_vec(out, [b, h, s_q, d], &device, dtype)
}

/// Attention of many queries (a prompt, an image) against keys and values on the host, with
/// the CPU path's tiled kernel ([`crate::cpu::HostAttention`]): the keys and values are read
/// in place and no full score matrix is built. Same contract as [`attention`]; `q` is read back
/// as f32 and the output has its float type.
fn tiled_attention(
    q: Tensor<4>,
    k: HostKv<'_>,
    v: HostKv<'_>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let [b, h, s_q, d] = q.dims();
    assert!(
        k.batch == b
            && v.batch == b
            && v.heads == k.heads
            && v.len == k.len
            && v.capacity == k.capacity
            && k.dim == d
            && v.dim == d,
        "keys/values [{}, {}, {}, {}] do not fit queries [{b}, {h}, {s_q}, {d}]",
        k.batch,
        k.heads,
        k.len,
        k.dim
    );
    let (dtype, device) = (q.dtype(), q.device());
    let qv = flex_f32_vec(q);
    let hidden: Option<Vec<bool>> = mask.map(|m| {
        m.expand([b, 1, s_q, k.len])
            .into_data()
            .iter::<bool>()
            .collect()
    });
    let out = crate::cpu::HostAttention {
        q: &qv,
        k: k.data,
        v: v.data,
        batch: b,
        heads: h,
        kv_heads: k.heads,
        queries: s_q,
        keys: k.len,
        capacity: k.capacity,
        dim: d,
        mask: hidden.as_deref(),
        causal,
    }
    .run()
    .unwrap_or_else(|e| panic!("attention: {e}"));
    from_f32_vec(out, [b, h, s_q, d], &device, dtype)
}

/// [`host_attention`] on key and value tensors (read back to the host first): what
/// [`attention`] runs for up to [`HOST_ATTENTION_MAX_QUERIES`] queries on the flex device.
/// Burn's attention builds the score matrix with general strided kernels, which for one query
/// over thousands of cached keys costs more than the step's weights. Same contract as
/// [`attention`]; a test pins it to Burn's.
pub fn decode_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let [batch, heads, len, dim] = k.dims();
    let (kd, vd) = (flex_f32_vec(k), flex_f32_vec(v));
    let view = |data| HostKv {
        data,
        batch,
        heads,
        capacity: len,
        len,
        dim,
    };
    host_attention(q, view(&kd), view(&vd), mask, causal)
}

/// `a · b` with sixteen independent partial sums (vectorises without reassociation flags).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
