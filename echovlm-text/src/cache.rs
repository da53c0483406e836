//! The key/value cache that decode steps append to.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use echovlm_core::backend::{self, HostKv, KvStorage};
use echovlm_core::host::flex_f32_vec;

use crate::error::ForwardError;

/// Post-RoPE keys and raw values of every layer for a batch, plus which cached positions are
/// real tokens (left padding is not).
///
/// Each layer keeps one buffer `[batch, kv_heads, capacity, head_dim]` for keys and one for
/// values; a step writes its positions in place and attention reads a view of the first `len`.
/// The device decides whether the buffers are host memory that attention reads in place
/// ([`KvStorage::Host`], [`backend::host_attention`]) or Burn tensors ([`backend::kv_storage`]).
/// The capacity is set up front ([`with_capacity`](Self::with_capacity): prompt plus tokens to
/// generate) or grows by half when exceeded, so decoding does not reallocate the cache.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<Layer>>,
    valid: Vec<Vec<bool>>,
    len: usize,
    capacity: usize,
    force_tensors: bool,
}

/// One layer's keys and values.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per layer; boxing the tensor handles buys nothing
enum Layer {
    /// Burn tensors `[batch, kv_heads, capacity, head_dim]`.
    Tensors(Tensor<4>, Tensor<4>),
    /// Host buffers of the same layout ([`KvStorage::Host`]).
    Host(HostBuffers),
}

#[derive(Debug, Clone)]
struct HostBuffers {
    k: Vec<f32>,
    v: Vec<f32>,
    batch: usize,
    heads: usize,
    capacity: usize,
    dim: usize,
}

impl HostBuffers {
    fn new(batch: usize, heads: usize, capacity: usize, dim: usize) -> Self {
        let n = batch * heads * capacity * dim;
        Self {
            k: vec![0.0; n],
            v: vec![0.0; n],
            batch,
            heads,
            capacity,
            dim,
        }
    }

    /// A copy with room for `capacity` positions holding the first `len`.
    fn regrown(&self, capacity: usize, len: usize) -> Self {
        let mut out = Self::new(self.batch, self.heads, capacity, self.dim);
        let d = self.dim;
        for bh in 0..self.batch * self.heads {
            let (src, dst) = (bh * self.capacity * d, bh * capacity * d);
            out.k[dst..dst + len * d].copy_from_slice(&self.k[src..src + len * d]);
            out.v[dst..dst + len * d].copy_from_slice(&self.v[src..src + len * d]);
        }
        out
    }

    /// Writes `[batch, heads, s, dim]` keys and values at positions `start..start + s`.
    fn write(&mut self, start: usize, s: usize, k: &[f32], v: &[f32]) {
        let d = self.dim;
        for bh in 0..self.batch * self.heads {
            let dst = (bh * self.capacity + start) * d;
            let src = bh * s * d;
            self.k[dst..dst + s * d].copy_from_slice(&k[src..src + s * d]);
            self.v[dst..dst + s * d].copy_from_slice(&v[src..src + s * d]);
        }
    }

    /// Rows `rows` of `self` (positions `0..len`) copied into rows `at..` of `out`, starting at
    /// position `shift`.
    fn copy_rows_into(&self, out: &mut Self, rows: &[usize], at: usize, len: usize, shift: usize) {
        let d = self.dim;
        for (i, &r) in rows.iter().enumerate() {
            for h in 0..self.heads {
                let src = ((r * self.heads + h) * self.capacity) * d;
                let dst = (((at + i) * out.heads + h) * out.capacity + shift) * d;
                out.k[dst..dst + len * d].copy_from_slice(&self.k[src..src + len * d]);
                out.v[dst..dst + len * d].copy_from_slice(&self.v[src..src + len * d]);
            }
        }
    }

    /// Moves positions `n..len` of every row to the front.
    fn shift_front(&mut self, n: usize, len: usize) {
        let d = self.dim;
        for bh in 0..self.batch * self.heads {
            let base = bh * self.capacity * d;
            self.k.copy_within(base + n * d..base + len * d, base);
            self.v.copy_within(base + n * d..base + len * d, base);
        }
    }

    fn view<'a>(&self, data: &'a [f32], len: usize) -> HostKv<'a> {
        HostKv {
            data,
            batch: self.batch,
            heads: self.heads,
            capacity: self.capacity,
            len,
            dim: self.dim,
        }
    }
}

/// Copies of key and value buffers `[b, h, _, d]` with room for `capacity` positions, holding
/// their first `len`.
fn regrown_tensors(
    k: &Tensor<4>,
    v: &Tensor<4>,
    capacity: usize,
    len: usize,
) -> (Tensor<4>, Tensor<4>) {
    let [b, h, _, d] = k.dims();
    let grow = |t: &Tensor<4>| {
        Tensor::<4>::zeros([b, h, capacity, d], (&t.device(), t.dtype()))
            .slice_assign([0..b, 0..h, 0..len, 0..d], t.clone().narrow(2, 0, len))
    };
    (grow(k), grow(v))
}

/// Smallest capacity a layer buffer is created with.
const MIN_CAPACITY: usize = 64;

impl KvCache {
    /// An empty cache for a decoder of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache whose buffers are created for `capacity` positions.
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            valid: Vec::new(),
            len: 0,
            capacity,
            force_tensors: false,
        }
    }

    /// Keeps keys and values as Burn tensors even where the device would hold them on the host
    /// ([`KvStorage::Tensors`], the storage most backends use). For tests and comparisons; a new
    /// cache takes the device's storage by itself.
    pub fn tensor_storage(mut self) -> Self {
        self.force_tensors = true;
        self
    }

    /// A cache already holding keys and values (`[batch, kv_heads, len, head_dim]` per layer,
    /// every position a real token): to resume from saved state, or to benchmark a decode step
    /// at a given context length without running the prompt.
    pub fn from_tensors(layers: Vec<(Tensor<4>, Tensor<4>)>) -> Self {
        let [b, _, len, _] = layers.first().map_or([0; 4], |(k, _)| k.dims());
        Self {
            layers: layers
                .into_iter()
                .map(|(k, v)| {
                    Some(match backend::kv_storage(&k.device(), k.dtype()) {
                        KvStorage::Host => {
                            let [b, h, len, d] = k.dims();
                            let mut buf = HostBuffers::new(b, h, len, d);
                            buf.write(0, len, &flex_f32_vec(k), &flex_f32_vec(v));
                            Layer::Host(buf)
                        }
                        _ => Layer::Tensors(k, v),
                    })
                })
                .collect(),
            valid: vec![vec![true; len]; b],
            len,
            capacity: len,
            force_tensors: false,
        }
    }

    /// A cache of one row over device buffers `[1, kv_heads, capacity, head_dim]` per layer
    /// whose first `len` positions are real tokens (what a [`DeviceDecode`](crate::DeviceDecode)
    /// hands back); the buffers keep their capacity, so the next steps write in place.
    pub(crate) fn from_device_buffers(layers: Vec<(Tensor<4>, Tensor<4>)>, len: usize) -> Self {
        let capacity = layers.first().map_or(len, |(k, _)| k.dims()[2]);
        Self {
            layers: layers
                .into_iter()
                .map(|(k, v)| Some(Layer::Tensors(k, v)))
                .collect(),
            valid: if len > 0 {
                vec![vec![true; len]]
            } else {
                Vec::new()
            },
            len,
            capacity,
            force_tensors: false,
        }
    }

    /// Makes room for `positions` more positions per row now, so the next appends write in
    /// place without growing the buffers.
    pub fn reserve(&mut self, positions: usize) {
        let want = self.len + positions;
        self.capacity = self.capacity.max(want);
        let len = self.len;
        for slot in &mut self.layers {
            match slot.take() {
                Some(Layer::Tensors(k, v)) => {
                    *slot = Some(if k.dims()[2] >= want {
                        Layer::Tensors(k, v)
                    } else {
                        let (k, v) = regrown_tensors(&k, &v, want, len);
                        Layer::Tensors(k, v)
                    });
                }
                Some(Layer::Host(buf)) => {
                    *slot = Some(Layer::Host(if buf.capacity >= want {
                        buf
                    } else {
                        buf.regrown(want, len)
                    }));
                }
                None => {}
            }
        }
    }

    /// Cached positions per row (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the cached batch, once something is cached.
    pub fn batch(&self) -> Option<usize> {
        (self.len > 0).then_some(self.valid.len())
    }

    /// Whether the cache holds one row and every position of it is a real token: what a
    /// [`DeviceDecode`](crate::DeviceDecode) takes over.
    pub fn is_one_unpadded_row(&self) -> bool {
        self.batch() == Some(1) && self.valid.iter().flatten().all(|&v| v)
    }

    /// `[batch][len]`: whether each cached position is a real token.
    pub fn valid(&self) -> &[Vec<bool>] {
        &self.valid
    }

    /// Keeps the first `len` positions of every row and forgets the rest (nothing when `len` is
    /// not below [`len`](Self::len)): rewinds the cache to a shared prefix, e.g. an image and
    /// instructions, to ask another question after it without running the prefix again. The
    /// buffers keep their capacity, so the next steps write in place.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for row in &mut self.valid {
            row.truncate(len);
        }
        self.len = len;
        if len == 0 {
            self.valid.clear();
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.valid.clear();
        self.len = 0;
    }

    /// Appends the rows of `other` (a cache of the same decoder on the same device) after this
    /// cache's rows, for a batch that sequences join while it runs.
    ///
    /// The two are aligned at their ends: the shorter is left-padded with positions marked as
    /// padding, so both hold `max(len)` positions. Returns the padding put in front of this
    /// cache's rows and in front of `other`'s, in that order: a row's decoding positions
    /// ([`Positions::decode`](crate::Positions::decode)) shift by as much.
    pub fn append_rows(&mut self, other: KvCache) -> Result<(usize, usize), ForwardError> {
        let mismatch = |what: &str| Err(ForwardError::Cache(format!("cannot join rows: {what}")));
        if other.batch().is_none() {
            return Ok((0, 0));
        }
        if self.batch().is_none() {
            let capacity = self.capacity.max(other.capacity);
            *self = KvCache {
                capacity,
                force_tensors: self.force_tensors || other.force_tensors,
                ..other
            };
            return Ok((0, 0));
        }
        if self.layers.len() != other.layers.len() {
            return mismatch("the caches have different numbers of layers");
        }
        let (l1, l2) = (self.len, other.len);
        let len = l1.max(l2);
        let (pad1, pad2) = (len - l1, len - l2);
        let (b1, b2) = (self.valid.len(), other.valid.len());
        let mut layers = Vec::with_capacity(self.layers.len());
        for (a, b) in self.layers.iter().zip(&other.layers) {
            layers.push(match (a, b) {
                (None, None) => None,
                (Some(Layer::Host(a)), Some(Layer::Host(b))) => {
                    if (a.heads, a.dim) != (b.heads, b.dim) {
                        return mismatch("the layers' key/value shapes differ");
                    }
                    let cap = (a.capacity + pad1).max(b.capacity + pad2).max(len);
                    let mut out = HostBuffers::new(b1 + b2, a.heads, cap, a.dim);
                    a.copy_rows_into(&mut out, &(0..b1).collect::<Vec<_>>(), 0, l1, pad1);
                    b.copy_rows_into(&mut out, &(0..b2).collect::<Vec<_>>(), b1, l2, pad2);
                    Some(Layer::Host(out))
                }
                (Some(Layer::Tensors(ak, av)), Some(Layer::Tensors(bk, bv))) => {
                    let ([_, h, ca, d], [_, hb, cb, db]) = (ak.dims(), bk.dims());
                    if (h, d) != (hb, db) || ak.dtype() != bk.dtype() {
                        return mismatch("the layers' key/value shapes or types differ");
                    }
                    let cap = (ca + pad1).max(cb + pad2).max(len);
                    let join = |a: &Tensor<4>, b: &Tensor<4>| {
                        Tensor::<4>::zeros([b1 + b2, h, cap, d], (&a.device(), a.dtype()))
                            .slice_assign(
                                [0..b1, 0..h, pad1..len, 0..d],
                                a.clone().narrow(2, 0, l1),
                            )
                            .slice_assign(
                                [b1..b1 + b2, 0..h, pad2..len, 0..d],
                                b.clone().narrow(2, 0, l2),
                            )
                    };
                    Some(Layer::Tensors(join(ak, bk), join(av, bv)))
                }
                _ => return mismatch("the caches keep their keys and values differently"),
            });
        }
        self.layers = layers;
        let padded = |rows: Vec<Vec<bool>>, pad: usize| {
            rows.into_iter().map(move |r| {
                let mut row = vec![false; pad];
                row.extend(r);
                row
            })
        };
        let mut valid: Vec<Vec<bool>> = padded(std::mem::take(&mut self.valid), pad1).collect();
        valid.extend(padded(other.valid, pad2));
        self.valid = valid;
        self.len = len;
        self.capacity = self.capacity.max(other.capacity).max(len);
        Ok((pad1, pad2))
    }

    /// Keeps only the rows `keep` (indices of the current rows, in the order given): for
    /// sequences that leave a running batch. Keeping none empties the cache.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<(), ForwardError> {
        let Some(b) = self.batch() else {
            return if keep.is_empty() {
                Ok(())
            } else {
                Err(ForwardError::Cache("the cache holds no rows".into()))
            };
        };
        if let Some(&r) = keep.iter().find(|&&r| r >= b) {
            return Err(ForwardError::Cache(format!(
                "row {r} is out of range for a cache of {b} rows"
            )));
        }
        if keep.is_empty() {
            self.clear();
            return Ok(());
        }
        if keep.iter().copied().eq(0..b) {
            return Ok(());
        }
        let len = self.len;
        for slot in &mut self.layers {
            *slot = match slot.take() {
                Some(Layer::Host(buf)) => {
                    let mut out = HostBuffers::new(keep.len(), buf.heads, buf.capacity, buf.dim);
                    buf.copy_rows_into(&mut out, keep, 0, len, 0);
                    Some(Layer::Host(out))
                }
                Some(Layer::Tensors(k, v)) => {
                    let idx: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
                    let idx = Tensor::<1, Int>::from_data(
                        TensorData::new(idx, [keep.len()]),
                        &k.device(),
                    );
                    Some(Layer::Tensors(k.select(0, idx.clone()), v.select(0, idx)))
                }
                None => None,
            };
        }
        self.valid = keep.iter().map(|&r| self.valid[r].clone()).collect();
        Ok(())
    }

    /// Positions at the front that are padding in every row (after rows left the batch).
    pub fn leading_padding(&self) -> usize {
        if self.valid.is_empty() {
            return 0;
        }
        (0..self.len)
            .take_while(|&j| self.valid.iter().all(|row| !row[j]))
            .count()
    }

    /// Drops the first `n` positions of every row, which must be padding in every row
    /// ([`leading_padding`](Self::leading_padding)): keeps a long-running batch as short as its
    /// longest sequence. Decoding positions shift by `n` (the opposite way to
    /// [`append_rows`](Self::append_rows)'s padding).
    pub fn trim_front(&mut self, n: usize) -> Result<(), ForwardError> {
        if n == 0 {
            return Ok(());
        }
        let pad = self.leading_padding();
        if n > pad {
            return Err(ForwardError::Cache(format!(
                "cannot drop {n} leading positions: only {pad} are padding in every row"
            )));
        }
        let len = self.len;
        for slot in &mut self.layers {
            *slot = match slot.take() {
                Some(Layer::Host(mut buf)) => {
                    buf.shift_front(n, len);
                    Some(Layer::Host(buf))
                }
                Some(Layer::Tensors(k, v)) => {
                    let cap = k.dims()[2];
                    Some(Layer::Tensors(
                        k.narrow(2, n, cap - n),
                        v.narrow(2, n, cap - n),
                    ))
                }
                None => None,
            };
        }
        for row in &mut self.valid {
            row.drain(..n);
        }
        self.len -= n;
        Ok(())
    }

    /// The per-layer key and value tensors, all with room for the same number of positions, at
    /// least `capacity` (regrown where a layer holds fewer), for a decode whose positions live
    /// on the device; `None` unless every layer holds Burn tensors of one row without padding.
    pub(crate) fn into_device_buffers(
        self,
        capacity: usize,
    ) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
        if !self.is_one_unpadded_row() {
            return None;
        }
        let held = self.layers.iter().map(|layer| match layer {
            Some(Layer::Tensors(k, _)) => Some(k.dims()[2]),
            _ => None,
        });
        let capacity = held
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .fold(capacity, usize::max);
        let len = self.len;
        self.layers
            .into_iter()
            .map(|layer| match layer {
                Some(Layer::Tensors(k, v)) if k.dims()[2] == capacity => Some((k, v)),
                Some(Layer::Tensors(k, v)) => Some(regrown_tensors(&k, &v, capacity, len)),
                _ => None,
            })
            .collect()
    }

    /// Appends this step's keys and values (`[b, h_kv, s, d]`) to layer `layer` and runs
    /// attention of `q` over everything cached (see [`backend::attention`] for `mask` and
    /// `causal`).
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Option<Tensor<4, Bool>>,
        causal: bool,
    ) -> Tensor<4> {
        let [b, h, s, d] = k.dims();
        let start = self.len;
        let end = start + s;
        let device = k.device();
        let host = match &self.layers[layer] {
            Some(Layer::Host(_)) => true,
            Some(Layer::Tensors(..)) => false,
            None => {
                !self.force_tensors && backend::kv_storage(&device, k.dtype()) == KvStorage::Host
            }
        };
        let mut cap = end.max(self.capacity).max(MIN_CAPACITY);
        if host {
            let mut buf = match self.layers[layer].take() {
                Some(Layer::Host(buf)) if buf.capacity >= end => buf,
                Some(Layer::Host(buf)) => {
                    // grow by half at least, so appends stay amortised
                    cap = cap.max(buf.capacity + buf.capacity / 2);
                    buf.regrown(cap, start)
                }
                _ => HostBuffers::new(b, h, cap, d),
            };
            self.capacity = self.capacity.max(buf.capacity);
            buf.write(start, s, &flex_f32_vec(k), &flex_f32_vec(v));
            let out = backend::host_attention(
                q,
                buf.view(&buf.k, end),
                buf.view(&buf.v, end),
                mask,
                causal,
            );
            self.layers[layer] = Some(Layer::Host(buf));
            return out;
        }
        let (ck, cv) = match self.layers[layer].take() {
            Some(Layer::Tensors(ck, cv)) if ck.dims()[2] >= end => (ck, cv),
            Some(Layer::Tensors(ok, ov)) => {
                // grow by half at least, so appends stay amortised
                let held = ok.dims()[2];
                cap = cap.max(held + held / 2);
                self.capacity = self.capacity.max(cap);
                regrown_tensors(&ok, &ov, cap, start)
            }
            _ => {
                self.capacity = self.capacity.max(cap);
                let fresh = || Tensor::<4>::zeros([b, h, cap, d], (&device, k.dtype()));
                (fresh(), fresh())
            }
        };
        let ck = ck.slice_assign([0..b, 0..h, start..end, 0..d], k);
        let cv = cv.slice_assign([0..b, 0..h, start..end, 0..d], v);
        let (k_all, v_all) = (ck.clone().narrow(2, 0, end), cv.clone().narrow(2, 0, end));
        self.layers[layer] = Some(Layer::Tensors(ck, cv));
        backend::attention(q, k_all, v_all, mask, causal)
    }

    /// Records that a step of `valid[b].len()` tokens was appended.
    pub(crate) fn commit(&mut self, valid: Vec<Vec<bool>>) {
        if self.valid.is_empty() {
            self.valid = valid;
        } else {
            for (row, new) in self.valid.iter_mut().zip(valid) {
                row.extend(new);
            }
        }
        self.len = self.valid.first().map_or(0, Vec::len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    const HEADS: usize = 2;
    const DIM: usize = 3;

    /// Keys `[b, HEADS, s, DIM]` whose values encode (seed, row, head, position, lane).
    fn keys(b: usize, s: usize, seed: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(b * HEADS * s * DIM);
        for r in 0..b {
            for h in 0..HEADS {
                for p in 0..s {
                    for i in 0..DIM {
                        v.push((seed * 10_000 + r * 1000 + h * 100 + p * 10 + i) as f32);
                    }
                }
            }
        }
        v
    }

    fn tensor(v: Vec<f32>, b: usize, s: usize) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, [b, HEADS, s, DIM]), &Device::flex())
    }

    /// Appends `s` positions of keys (values = keys + 0.5) to every row of layer 0.
    fn append(cache: &mut KvCache, b: usize, s: usize, seed: usize) {
        let k = keys(b, s, seed);
        let v: Vec<f32> = k.iter().map(|x| x + 0.5).collect();
        let q = Tensor::<4>::zeros([b, HEADS, s, DIM], &Device::flex());
        let _ = cache.attend(0, q, tensor(k, b, s), tensor(v, b, s), None, false);
        cache.commit(vec![vec![true; s]; b]);
    }

    /// Row `row`'s keys and values at its real positions, head by head.
    fn real(cache: &KvCache, row: usize) -> (Vec<f32>, Vec<f32>) {
        let (k, v, cap) = match &cache.layers[0] {
            Some(Layer::Host(buf)) => (buf.k.clone(), buf.v.clone(), buf.capacity),
            Some(Layer::Tensors(k, v)) => (
                flex_f32_vec(k.clone()),
                flex_f32_vec(v.clone()),
                k.dims()[2],
            ),
            None => panic!("empty layer"),
        };
        let (mut ok, mut ov) = (Vec::new(), Vec::new());
        for h in 0..HEADS {
            for p in (0..cache.len()).filter(|&p| cache.valid()[row][p]) {
                let at = ((row * HEADS + h) * cap + p) * DIM;
                ok.extend_from_slice(&k[at..at + DIM]);
                ov.extend_from_slice(&v[at..at + DIM]);
            }
        }
        (ok, ov)
    }

    /// Row `r` of `keys(b, s, seed)`, head by head.
    fn want(b: usize, s: usize, seed: usize, r: usize) -> Vec<f32> {
        keys(b, s, seed)[r * HEADS * s * DIM..(r + 1) * HEADS * s * DIM].to_vec()
    }

    fn row_ops(tensors: bool) {
        let new = || {
            let c = KvCache::new(1);
            if tensors { c.tensor_storage() } else { c }
        };
        let (mut a, mut b) = (new(), new());
        append(&mut a, 1, 3, 1);
        append(&mut b, 2, 5, 2);
        let storage_is_host = matches!(a.layers[0], Some(Layer::Host(_)));
        assert_eq!(storage_is_host, !tensors);

        // joining: the shorter cache is left-padded
        assert_eq!(a.append_rows(b).unwrap(), (2, 0));
        assert_eq!((a.batch(), a.len(), a.leading_padding()), (Some(3), 5, 0));
        assert_eq!(a.valid()[0], [false, false, true, true, true]);
        let check = |c: &KvCache, row: usize, k: Vec<f32>| {
            let (got_k, got_v) = real(c, row);
            let v: Vec<f32> = k.iter().map(|x| x + 0.5).collect();
            assert_eq!((got_k, got_v), (k, v), "row {row}");
        };
        check(&a, 0, want(1, 3, 1, 0));
        check(&a, 1, want(2, 5, 2, 0));
        check(&a, 2, want(2, 5, 2, 1));

        // leaving: reorders and drops rows; padding every row shares is trimmed
        a.retain_rows(&[2, 0]).unwrap();
        check(&a, 0, want(2, 5, 2, 1));
        check(&a, 1, want(1, 3, 1, 0));
        assert_eq!(a.leading_padding(), 0);
        assert!(matches!(a.trim_front(1), Err(ForwardError::Cache(_))));
        assert!(matches!(a.retain_rows(&[2]), Err(ForwardError::Cache(_))));
        a.retain_rows(&[1]).unwrap();
        assert_eq!(a.leading_padding(), 2);
        a.trim_front(2).unwrap();
        assert_eq!((a.batch(), a.len(), a.leading_padding()), (Some(1), 3, 0));
        check(&a, 0, want(1, 3, 1, 0));

        // appending after the row operations writes after the kept positions
        append(&mut a, 1, 1, 3);
        let mut k = want(1, 3, 1, 0);
        let next = want(1, 1, 3, 0);
        // head by head: the three old positions, then the new one
        let mut merged = Vec::new();
        for h in 0..HEADS {
            merged.extend_from_slice(&k[h * 3 * DIM..(h + 1) * 3 * DIM]);
            merged.extend_from_slice(&next[h * DIM..(h + 1) * DIM]);
        }
        k = merged;
        check(&a, 0, k);

        // rewinding forgets the last position; the next append writes in its place
        let before_k = real(&a, 0);
        append(&mut a, 1, 2, 7);
        assert_eq!(a.len(), 6);
        a.truncate(9);
        assert_eq!(a.len(), 6);
        a.truncate(4);
        assert_eq!((a.batch(), a.len()), (Some(1), 4));
        assert_eq!(real(&a, 0), before_k);
        append(&mut a, 1, 1, 3);
        let mut again = before_k.0.clone();
        for h in (0..HEADS).rev() {
            again.splice(
                (h + 1) * 4 * DIM..(h + 1) * 4 * DIM,
                next[h * DIM..(h + 1) * DIM].iter().copied(),
            );
        }
        assert_eq!(real(&a, 0).0, again);
        a.truncate(4);

        // a longer cache joining pads the rows already there
        let mut c = new();
        append(&mut c, 1, 6, 4);
        assert_eq!(a.append_rows(c).unwrap(), (2, 0));
        assert_eq!((a.batch(), a.len()), (Some(2), 6));
        check(&a, 1, want(1, 6, 4, 0));

        // caches of other shapes cannot join; keeping no row empties the cache
        let mut wide = KvCache::new(2);
        append(&mut wide, 1, 2, 5);
        assert!(matches!(a.append_rows(wide), Err(ForwardError::Cache(_))));
        a.retain_rows(&[]).unwrap();
        assert_eq!((a.batch(), a.len()), (None, 0));
        let mut d = new();
        append(&mut d, 1, 2, 6);
        assert_eq!(a.append_rows(d).unwrap(), (0, 0));
        check(&a, 0, want(1, 2, 6, 0));
    }

    #[test]
    fn rows_join_leave_and_trim_in_host_storage() {
        row_ops(false);
    }

    #[test]
    fn rows_join_leave_and_trim_in_tensor_storage() {
        row_ops(true);
    }
}
