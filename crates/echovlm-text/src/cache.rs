//! The key/value cache that decode steps append to.

use burn::tensor::Tensor;

/// Post-RoPE keys and raw values of every layer for a batch, plus which cached positions are
/// real tokens (left padding is not).
///
/// Each layer keeps one buffer `[batch, kv_heads, capacity, head_dim]` for keys and one for
/// values; a step writes its positions in place and attention reads a view of the first `len`.
/// The capacity is set up front ([`with_capacity`](Self::with_capacity): prompt plus tokens to
/// generate) or grows by half when exceeded, so decoding does not reallocate the cache.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    valid: Vec<Vec<bool>>,
    len: usize,
    capacity: usize,
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
        }
    }

    /// A cache already holding keys and values (`[batch, kv_heads, len, head_dim]` per layer,
    /// every position a real token): to resume from saved state, or to benchmark a decode step
    /// at a given context length without running the prompt.
    pub fn from_tensors(layers: Vec<(Tensor<4>, Tensor<4>)>) -> Self {
        let [b, _, len, _] = layers.first().map_or([0; 4], |(k, _)| k.dims());
        Self {
            layers: layers.into_iter().map(Some).collect(),
            valid: vec![vec![true; len]; b],
            len,
            capacity: len,
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

    /// Appends this step's keys and values (`[b, h_kv, s, d]`) to layer `layer` and returns
    /// views of all cached keys and values.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, h, s, d] = k.dims();
        let start = self.len;
        let end = start + s;
        let (ck, cv) = match self.layers[layer].take() {
            Some((ck, cv)) if ck.dims()[2] >= end => (ck, cv),
            old => {
                let mut cap = end.max(self.capacity).max(MIN_CAPACITY);
                if let Some((ck, _)) = &old {
                    // grow by half at least, so appends stay amortised
                    cap = cap.max(ck.dims()[2] + ck.dims()[2] / 2);
                }
                self.capacity = self.capacity.max(cap);
                let fresh = || Tensor::<4>::zeros([b, h, cap, d], (&k.device(), k.dtype()));
                let (mut nk, mut nv) = (fresh(), fresh());
                if let Some((ok, ov)) = old {
                    nk = nk.slice_assign([0..b, 0..h, 0..start, 0..d], ok.narrow(2, 0, start));
                    nv = nv.slice_assign([0..b, 0..h, 0..start, 0..d], ov.narrow(2, 0, start));
                }
                (nk, nv)
            }
        };
        let ck = ck.slice_assign([0..b, 0..h, start..end, 0..d], k);
        let cv = cv.slice_assign([0..b, 0..h, start..end, 0..d], v);
        let views = (ck.clone().narrow(2, 0, end), cv.clone().narrow(2, 0, end));
        self.layers[layer] = Some((ck, cv));
        views
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
