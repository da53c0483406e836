//! The key/value cache that decode steps append to.

use burn::tensor::{Bool, Tensor};
use echovlm_core::backend::{self, HostKv, KvStorage};
use echovlm_core::host::flex_f32_vec;

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

    /// `[batch][len]`: whether each cached position is a real token.
    pub fn valid(&self) -> &[Vec<bool>] {
        &self.valid
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.valid.clear();
        self.len = 0;
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
