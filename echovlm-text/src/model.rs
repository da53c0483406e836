//! The Qwen2 decoder with M-RoPE and, where the checkpoint has MoE weights, EchoVLM's dynamic
//! feed-forward.

use std::sync::Arc;

use burn::tensor::{Bool, DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use echovlm_core::host::{ReadBackError, from_f32_vec};
use echovlm_core::{Linear, LinearWeight, LoadError, RmsNorm, WeightLoader, backend};
use echovlm_moe::{DynamicFfn, Mlp, RoutingTrace};

use crate::cache::KvCache;
use crate::config::TextConfig;
use crate::error::{ForwardError, PromptError};
use crate::rope::{MRope, Positions};

mod decode;
pub use decode::DeviceDecode;

/// Grouped-query self-attention with q/k/v biases.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[heads·head_dim, hidden]` + bias.
    pub q_proj: Linear,
    /// `[kv_heads·head_dim, hidden]` + bias.
    pub k_proj: Linear,
    /// `[kv_heads·head_dim, hidden]` + bias.
    pub v_proj: Linear,
    /// `[hidden, heads·head_dim]`, no bias.
    pub o_proj: Linear,
    /// `q_proj`, `k_proj` and `v_proj` stacked, `[(heads + 2·kv_heads)·head_dim, hidden]` + bias
    /// (not a checkpoint tensor: [`fuse`](Self::fuse) builds it, leaving the three holding
    /// views of it). When set, the forward pass multiplies by it once and rotates queries and
    /// keys together; set it to `None` after replacing any of the three.
    pub qkv_proj: Option<Linear>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(loader: &mut WeightLoader<'_>, prefix: &str, cfg: &TextConfig) -> Self {
        let (h, nh, nkv, d) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        Self {
            q_proj: loader.linear(&format!("{prefix}.q_proj"), h, nh * d, true),
            k_proj: loader.linear(&format!("{prefix}.k_proj"), h, nkv * d, true),
            v_proj: loader.linear(&format!("{prefix}.v_proj"), h, nkv * d, true),
            o_proj: loader.linear(&format!("{prefix}.o_proj"), nh * d, h, false),
            qkv_proj: None,
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
        }
    }

    /// Stacks the query, key and value projections into [`qkv_proj`](Self::qkv_proj) where
    /// all three hold Burn tensors without adapters ([`Linear::fuse_outputs`]); returns
    /// whether it did.
    pub fn fuse(&mut self) -> bool {
        self.qkv_proj =
            Linear::fuse_outputs(&mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj]);
        self.qkv_proj.is_some()
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        kv: &mut StepKv<'_>,
        layer: usize,
        mask: &AttentionMask,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        // `[b, s, heads·d]` to `[b, heads, s, d]`; with one position (a decode step) moving the
        // heads before it is a reshape, one operation fewer
        let split = |t: Tensor<3>, heads: usize| match s {
            1 => t.reshape([b, heads, 1, self.head_dim]),
            _ => t.reshape([b, s, heads, self.head_dim]).swap_dims(1, 2),
        };
        let (q, k, v) = match &self.qkv_proj {
            Some(qkv) => {
                // one product, then one rotation of the query and key heads together
                let all = split(qkv.forward(x), self.heads + 2 * self.kv_heads);
                let qk = all.clone().narrow(1, 0, self.heads + self.kv_heads);
                let qk = echovlm_core::rope::apply_signed(qk, &rope.cos, rope.signed_sin());
                (
                    qk.clone().narrow(1, 0, self.heads),
                    qk.narrow(1, self.heads, self.kv_heads),
                    all.narrow(1, self.heads + self.kv_heads, self.kv_heads),
                )
            }
            None => {
                // packed CPU weights: the three products in one pass
                let parts = [&self.q_proj, &self.k_proj, &self.v_proj];
                let [q, k, v]: [Tensor<3>; 3] = Linear::forward_parts(&parts, x)
                    .try_into()
                    .expect("one output per part");
                (
                    backend::rope_heads(q, self.heads, &rope.cos, rope.sin()),
                    backend::rope_heads(k, self.kv_heads, &rope.cos, rope.sin()),
                    split(v, self.kv_heads),
                )
            }
        };
        let o = kv.attend(layer, q, k, v, mask);
        let width = self.heads * self.head_dim;
        let o = match s {
            1 => o.reshape([b, 1, width]),
            _ => o.swap_dims(1, 2).reshape([b, s, width]),
        };
        self.o_proj.forward(o)
    }
}

/// One pass's rotary tables, shared by its layers, each `[batch, 1, seq, head_dim]`: `cos`,
/// `sin`, and `sin` with the sign of `rotate_half` folded in ([`echovlm_core::rope::signed_sin`])
/// for the fused query/key rotation. Tables made on the host are uploaded on first use: a pass
/// whose layers are all fused never uploads `sin`, one whose layers are all separate never the
/// signed table.
struct RopeTables<'a> {
    cos: Tensor<4>,
    source: RopeSource<'a>,
}

/// Where a pass's `sin` tables come from.
#[allow(clippy::large_enum_variant)] // one per pass; boxing the tensor handles buys nothing
enum RopeSource<'a> {
    /// Made on the host from the positions, uploaded on first use.
    Host {
        host: HostRope<'a>,
        sin: std::cell::OnceCell<Tensor<4>>,
        signed: std::cell::OnceCell<Tensor<4>>,
    },
    /// Rows already on the device (a [`DeviceDecode`] step).
    Device { sin: Tensor<4>, signed: Tensor<4> },
}

/// What a pass's host-made tables are uploaded from.
struct HostRope<'a> {
    rope: &'a MRope,
    positions: &'a Positions,
    device: Device,
    dtype: DType,
    sin: Vec<f32>,
}

impl HostRope<'_> {
    fn upload(&self, table: Vec<f32>) -> Tensor<4> {
        self.rope
            .device_table(table, self.positions, &self.device, self.dtype)
    }
}

impl<'a> RopeTables<'a> {
    fn new(rope: &'a MRope, positions: &'a Positions, device: &Device, dtype: DType) -> Self {
        let (cos, sin) = rope.tables(positions);
        let host = HostRope {
            rope,
            positions,
            device: device.clone(),
            dtype,
            sin,
        };
        Self {
            cos: host.upload(cos),
            source: RopeSource::Host {
                host,
                sin: std::cell::OnceCell::new(),
                signed: std::cell::OnceCell::new(),
            },
        }
    }

    fn sin(&self) -> &Tensor<4> {
        match &self.source {
            RopeSource::Host { host, sin, .. } => sin.get_or_init(|| host.upload(host.sin.clone())),
            RopeSource::Device { sin, .. } => sin,
        }
    }

    fn signed_sin(&self) -> &Tensor<4> {
        match &self.source {
            RopeSource::Host { host, signed, .. } => signed.get_or_init(|| {
                host.upload(echovlm_core::rope::signed_sin(
                    &host.sin,
                    host.rope.head_dim(),
                ))
            }),
            RopeSource::Device { signed, .. } => signed,
        }
    }
}

/// The feed-forward of one decoder layer.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum FeedForward {
    /// A plain Qwen2 layer (stock Qwen2-VL).
    Dense(Mlp),
    /// EchoVLM's dynamic mix of the dense MLP and the sparse MoE block.
    Dynamic(DynamicFfn),
}

/// One pre-norm decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// RMSNorm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
    /// Dense MLP or dynamic MoE mix.
    pub ffn: FeedForward,
}

impl DecoderLayer {
    fn load(
        loader: &mut WeightLoader<'_>,
        prefix: &str,
        cfg: &TextConfig,
    ) -> Result<Self, LoadError> {
        let is_moe = loader.contains_prefix(&format!("{prefix}.moe."))
            || loader.contains_prefix(&format!("{prefix}.coefficient."));
        let ffn = if is_moe {
            FeedForward::Dynamic(DynamicFfn::load(
                loader,
                prefix,
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.moe,
            )?)
        } else {
            FeedForward::Dense(Mlp::load(
                loader,
                &format!("{prefix}.mlp"),
                cfg.hidden_size,
                cfg.intermediate_size,
            ))
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(
                loader,
                &format!("{prefix}.input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            self_attn: Attention::load(loader, &format!("{prefix}.self_attn"), cfg),
            post_attention_layernorm: RmsNorm::load(
                loader,
                &format!("{prefix}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            ffn,
        })
    }

    /// The layer on the residual stream `x` plus `pending` (the previous layer's feed-forward
    /// output, added here with the normalisation that follows it); returns the stream after
    /// the attention and this layer's feed-forward output, whose sum is the layer's output.
    #[allow(clippy::too_many_arguments)] // private: the decoder's own per-layer call
    fn forward(
        &self,
        x: Tensor<3>,
        pending: Option<Tensor<3>>,
        rope: &RopeTables,
        kv: &mut StepKv<'_>,
        layer: usize,
        mask: &AttentionMask,
        trace: Option<RoutingSink<'_>>,
        router_logits: Option<&mut Vec<Tensor<2>>>,
    ) -> Result<(Tensor<3>, Tensor<3>), ReadBackError> {
        let [b, s, hidden] = x.dims();
        let (x, normed) = match pending {
            Some(delta) => self.input_layernorm.forward_residual(x, delta),
            None => {
                let normed = self.input_layernorm.forward(x.clone());
                (x, normed)
            }
        };
        let a = self.self_attn.forward(normed, rope, kv, layer, mask);
        let x = x + a;
        let h = self
            .post_attention_layernorm
            .forward(x.clone())
            .reshape([b * s, hidden]);
        let y = match (&self.ffn, router_logits, trace) {
            (FeedForward::Dense(mlp), _, _) => mlp.forward(h),
            (FeedForward::Dynamic(ffn), Some(all), _) => {
                let (y, logits) = ffn.forward_train(h)?;
                all.push(logits);
                y
            }
            (FeedForward::Dynamic(ffn), None, Some(RoutingSink::Device(all))) => {
                let (y, rows) = ffn.forward_recorded(h);
                all.push((layer, rows));
                y
            }
            (FeedForward::Dynamic(ffn), None, Some(RoutingSink::Host(traces))) => {
                let (y, recorded) = ffn.forward(h, true)?;
                if let Some((routing, coef)) = recorded {
                    // one trace per batch row; padding is not recorded
                    for (row, trace) in traces.iter_mut().enumerate() {
                        let record = trace.layer_mut(layer);
                        for t in row * s..(row + 1) * s {
                            if mask.keep.as_ref().is_none_or(|k| k[t]) {
                                record.push_token(&routing, &coef, t);
                            }
                        }
                    }
                }
                y
            }
            (FeedForward::Dynamic(ffn), None, None) => ffn.forward(h, false)?.0,
        };
        Ok((x, y.reshape([b, s, hidden])))
    }

    /// Fuses the layer's products that read the same input ([`Attention::fuse`],
    /// [`Mlp::fuse`]; with `whole_ffn`, the dynamic feed-forward as two products,
    /// [`DynamicFfn::fuse`], else each of its MLPs); returns how many fused layers it built.
    pub fn fuse(&mut self, whole_ffn: bool) -> usize {
        let mut n = usize::from(self.self_attn.fuse());
        match &mut self.ffn {
            FeedForward::Dense(m) => n += usize::from(m.fuse()),
            FeedForward::Dynamic(f) if whole_ffn => n += usize::from(f.fuse()),
            FeedForward::Dynamic(f) => {
                f.fused = None;
                n += f.mlps_mut().map(|m| usize::from(m.fuse())).sum::<usize>();
            }
        }
        n
    }

    /// Drops every fused layer [`fuse`](Self::fuse) built: the forward pass goes back to the
    /// separate layers (which keep their weights).
    pub fn unfuse(&mut self) {
        self.self_attn.qkv_proj = None;
        match &mut self.ffn {
            FeedForward::Dense(m) => m.gate_up_proj = None,
            FeedForward::Dynamic(f) => f.unfuse(),
        }
    }

    /// Whether this layer has the dynamic MoE feed-forward.
    pub fn is_moe(&self) -> bool {
        matches!(self.ffn, FeedForward::Dynamic(_))
    }
}

/// Where a decoder layer records the routing of its tokens.
enum RoutingSink<'a> {
    /// Read back and appended to one trace per batch row (padding left out).
    Host(&'a mut [RoutingTrace]),
    /// Kept on the device: each MoE layer pushes its index and its rows
    /// ([`DynamicFfn::forward_recorded`]).
    Device(&'a mut Vec<(usize, Tensor<2>)>),
}

/// Where a pass's keys and values go and what its queries attend.
#[allow(clippy::large_enum_variant)] // one per pass; boxing the tensor handles buys nothing
enum StepKv<'a> {
    /// Appended to a cache at its length; attention over what it holds.
    Cache(&'a mut KvCache),
    /// Written at a position held on the device into per-layer buffers of a fixed capacity;
    /// attention over the whole capacity, masked past that position (a [`DeviceDecode`] step).
    At {
        layers: &'a mut [(Tensor<4>, Tensor<4>)],
        index: Tensor<1, Int>,
        mask: Tensor<4, Bool>,
    },
}

impl StepKv<'_> {
    fn attend(
        &mut self,
        layer: usize,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &AttentionMask,
    ) -> Tensor<4> {
        match self {
            StepKv::Cache(cache) => cache.attend(layer, q, k, v, mask.mask.clone(), mask.causal),
            StepKv::At {
                layers,
                index,
                mask,
            } => {
                let (ck, cv) = &mut layers[layer];
                let put = |cache: &mut Tensor<4>, new: Tensor<4>| {
                    let held = std::mem::replace(cache, Tensor::empty([0, 0, 0, 0], &new.device()));
                    // written in place: the buffer a captured step reads stays the same one
                    *cache = held.select_assign(2, index.clone(), new, IndexingUpdateOp::Assign);
                };
                put(ck, k);
                put(cv, v);
                backend::attention(q, ck.clone(), cv.clone(), Some(mask.clone()), false)
            }
        }
    }
}

struct AttentionMask {
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
    /// Per token of this step (`[b·s]`), whether it is real; `None` when all are.
    keep: Option<Vec<bool>>,
}

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a prompt whose continuation is not needed).
    None,
    /// The last position of every row.
    Last,
    /// Every position.
    All,
}

/// The inputs of one decoder pass.
#[derive(Debug, Clone)]
pub struct DecoderInput<'a> {
    /// `[batch, seq, hidden]` input embeddings.
    pub embeds: Tensor<3>,
    /// M-RoPE position ids of these tokens.
    pub positions: &'a Positions,
    /// `[batch][seq]`, false for left padding; `None` when every token is real.
    pub valid: Option<&'a [Vec<bool>]>,
    /// Which positions get logits.
    pub logits: Logits,
    /// Also return the hidden state after every layer.
    pub hidden_states: bool,
    /// Training mode: gradients reach the MoE routers, and the router logits of every MoE
    /// layer are returned ([`TextOutput::router_logits`]).
    pub router_logits: bool,
}

impl<'a> DecoderInput<'a> {
    /// Real tokens, logits of the last position, no hidden states.
    pub fn new(embeds: Tensor<3>, positions: &'a Positions) -> Self {
        Self {
            embeds,
            positions,
            valid: None,
            logits: Logits::Last,
            hidden_states: false,
            router_logits: false,
        }
    }

    /// Marks padding (`false`) per row and token.
    pub fn valid(mut self, valid: Option<&'a [Vec<bool>]>) -> Self {
        self.valid = valid;
        self
    }

    /// Chooses the positions that get logits.
    pub fn logits(mut self, logits: Logits) -> Self {
        self.logits = logits;
        self
    }

    /// Returns the hidden state after every layer too.
    pub fn hidden_states(mut self, yes: bool) -> Self {
        self.hidden_states = yes;
        self
    }

    /// Training mode: routes with gradients to the routers and returns the router logits of
    /// every MoE layer.
    pub fn router_logits(mut self, yes: bool) -> Self {
        self.router_logits = yes;
        self
    }
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// `[batch, positions, vocab]` for the positions asked for.
    pub logits: Option<Tensor<3>>,
    /// With `hidden_states`: the embeddings, the output of every layer but the last, and the
    /// final-normed output of the last layer (transformers' `output_hidden_states`).
    pub hidden_states: Vec<Tensor<3>>,
    /// With `router_logits`: `[batch·seq, experts]` per MoE layer (padding included), in layer
    /// order.
    pub router_logits: Vec<Tensor<2>>,
}

/// The decoder: token embeddings, layers, final norm and LM head.
#[derive(Debug, Clone)]
pub struct TextModel {
    /// `[vocab, hidden]`: a Burn tensor, or (with packed CPU weights) packed rows in the
    /// linear layers' format, which a tied LM head shares.
    pub embed_tokens: LinearWeight,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// LM head; shares the embedding matrix when the weights are tied.
    pub lm_head: Linear,
    /// Configuration.
    pub config: TextConfig,
    rope: MRope,
    device: Device,
    dtype: DType,
}

impl TextModel {
    /// Loads `model.embed_tokens`, `model.layers.*`, `model.norm` and `lm_head` (absent and
    /// tied to the embeddings when `tie_word_embeddings`).
    pub fn load(loader: &mut WeightLoader<'_>, cfg: &TextConfig) -> Result<Self, LoadError> {
        let key = "model.embed_tokens.weight";
        let device = loader.device().clone();
        let dtype = loader.dtype();
        let embed_tokens = match loader.packed_format() {
            Some(format) => match loader.packed(key, cfg.vocab_size, cfg.hidden_size, format) {
                Some(p) => LinearWeight::Packed(Arc::new(p)),
                None => LinearWeight::Tensor(Tensor::zeros([1, 1], &device)),
            },
            None => LinearWeight::Tensor(loader.tensor(key, [cfg.vocab_size, cfg.hidden_size])),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(loader, &format!("model.layers.{i}"), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::load(loader, "model.norm", cfg.hidden_size, cfg.rms_norm_eps);
        let lm_head = if cfg.tie_word_embeddings {
            match &embed_tokens {
                LinearWeight::Tensor(t) => Linear::new(t.clone(), None),
                LinearWeight::Packed(p) => Linear::shared(p.clone(), None),
            }
        } else {
            loader.linear("lm_head", cfg.hidden_size, cfg.vocab_size, false)
        };
        // buffers that some exporters save
        loader.ignore_suffix(".rotary_emb.inv_freq");
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            device,
            dtype,
            rope: MRope::new(cfg.head_dim, cfg.rope_theta, cfg.mrope_section),
            config: cfg.clone(),
        })
    }

    /// Fuses the products of every layer that read the same input into one each (query, key
    /// and value; gate and up; on devices other than the CPU backend, the whole dynamic
    /// feed-forward into two), so that a decode step launches fewer kernels; the separate
    /// layers keep views of the fused weights, so nothing is stored twice. Only Burn tensor
    /// weights without adapters are fused (packed CPU weights have their own kernels). Returns
    /// how many fused layers were built. Call [`unfuse`](Self::unfuse) before replacing any
    /// weight.
    pub fn fuse(&mut self) -> usize {
        let whole_ffn = !echovlm_core::backend::is_flex(&self.device);
        self.layers.iter_mut().map(|l| l.fuse(whole_ffn)).sum()
    }

    /// Drops the fused layers [`fuse`](Self::fuse) built.
    pub fn unfuse(&mut self) {
        self.layers.iter_mut().for_each(DecoderLayer::unfuse);
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// An empty KV cache sized for `positions` tokens per row (prompt plus generation).
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), positions)
    }

    /// The rotary tables of this model.
    pub fn rope(&self) -> &MRope {
        &self.rope
    }

    /// Embeds token ids (`[batch][seq]`, rectangular) as `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>, PromptError> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        if s == 0 {
            return Err(PromptError::EmptyPrompt);
        }
        if ids.iter().any(|r| r.len() != s) {
            return Err(PromptError::RaggedBatch);
        }
        let vocab = self.config.vocab_size;
        let mut flat = Vec::with_capacity(b * s);
        for &id in ids.iter().flatten() {
            if id as usize >= vocab {
                return Err(PromptError::TokenOutOfRange { id, vocab });
            }
            flat.push(id as i64);
        }
        match &self.embed_tokens {
            LinearWeight::Tensor(table) => {
                let idx = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &self.device);
                Ok(burn::tensor::module::embedding(table.clone(), idx))
            }
            LinearWeight::Packed(table) => {
                let h = self.config.hidden_size;
                let mut rows = vec![0f32; flat.len() * h];
                for (&id, row) in ids.iter().flatten().zip(rows.chunks_exact_mut(h)) {
                    table
                        .row(id as usize, row)
                        .map_err(|_| PromptError::TokenOutOfRange { id, vocab })?;
                }
                Ok(from_f32_vec(rows, [b, s, h], &self.device, self.dtype))
            }
        }
    }

    /// Runs the decoder on `input`.
    ///
    /// * `cache`: keys and values of earlier steps; this step's are appended.
    /// * `trace`: when given (one trace per batch row), the routing of every real token is
    ///   appended to its row's trace.
    ///
    /// On the CPU it runs on a thread of the CPU path's pool ([`echovlm_core::cpu::on_pool`]).
    pub fn forward(
        &self,
        input: DecoderInput<'_>,
        cache: &mut KvCache,
        trace: Option<&mut [RoutingTrace]>,
    ) -> Result<TextOutput, ForwardError> {
        echovlm_core::backend::forward_on(&self.device, || self.forward_here(input, cache, trace))
    }

    /// [`forward`](Self::forward) on the calling thread.
    fn forward_here(
        &self,
        input: DecoderInput<'_>,
        cache: &mut KvCache,
        mut trace: Option<&mut [RoutingTrace]>,
    ) -> Result<TextOutput, ForwardError> {
        let DecoderInput {
            embeds,
            positions,
            valid,
            logits,
            hidden_states,
            router_logits,
        } = input;
        let [b, s, _] = embeds.dims();
        if trace.as_ref().is_some_and(|t| t.len() != b) {
            return Err(PromptError::RaggedBatch.into());
        }
        if positions.batch != b || positions.seq != s {
            return Err(PromptError::RaggedBatch.into());
        }
        if let Some(cb) = cache.batch()
            && cb != b
        {
            return Err(PromptError::RaggedBatch.into());
        }
        let max_pos = positions.max().unwrap_or(0).max(0) as usize + 1;
        self.check_context(cache.len() + s, max_pos)?;
        let device = self.device();
        let dtype = embeds.dtype();
        let step_valid: Vec<Vec<bool>> = match valid {
            Some(v) => {
                if v.len() != b || v.iter().any(|r| r.len() != s) {
                    return Err(PromptError::RaggedBatch.into());
                }
                v.to_vec()
            }
            None => vec![vec![true; s]; b],
        };
        let mask = build_mask(cache, &step_valid, &device);
        let rope = RopeTables::new(&self.rope, positions, &device, dtype);

        // the residual stream, and the last feed-forward output not yet added to it: each
        // layer adds it with the normalisation after it (one kernel on a fusing GPU backend)
        let mut x = embeds;
        let mut pending: Option<Tensor<3>> = None;
        let mut states = Vec::new();
        let mut routers = Vec::new();
        let mut kv = StepKv::Cache(&mut *cache);
        for (i, layer) in self.layers.iter().enumerate() {
            if hidden_states {
                states.push(with_pending(&x, &pending));
            }
            let (stream, y) = layer.forward(
                x,
                pending.take(),
                &rope,
                &mut kv,
                i,
                &mask,
                trace.as_deref_mut().map(RoutingSink::Host),
                router_logits.then_some(&mut routers),
            )?;
            x = stream;
            pending = Some(y);
        }
        cache.commit(step_valid);
        let last = |t: Tensor<3>| if s == 1 { t } else { t.narrow(1, s - 1, 1) };
        let out_logits = match logits {
            Logits::None => None,
            Logits::Last => Some(self.head(last(x.clone()), pending.clone().map(last))),
            Logits::All => Some(self.head(x.clone(), pending.clone())),
        };
        if hidden_states {
            states.push(self.norm.forward(with_pending(&x, &pending)));
        }
        Ok(TextOutput {
            logits: out_logits,
            hidden_states: states,
            router_logits: routers,
        })
    }

    /// Refuses a pass that would hold `positions` cached positions or reach rotary position
    /// `max_rope - 1`: either past the model's context (`max_position_embeddings`).
    fn check_context(&self, positions: usize, max_rope: usize) -> Result<(), PromptError> {
        let tokens = positions.max(max_rope);
        let max = self.config.max_position_embeddings;
        match tokens > max {
            true => Err(PromptError::ContextTooLong { tokens, max }),
            false => Ok(()),
        }
    }

    /// The final normalisation and the LM head, on `x` plus `pending` where the last layer's
    /// feed-forward output is still to be added.
    fn head(&self, x: Tensor<3>, pending: Option<Tensor<3>>) -> Tensor<3> {
        let normed = match pending {
            Some(delta) => self.norm.forward_residual(x, delta).1,
            None => self.norm.forward(x),
        };
        self.lm_head.forward(normed)
    }
}

/// The residual stream with the pending feed-forward output added, where there is one.
fn with_pending(x: &Tensor<3>, pending: &Option<Tensor<3>>) -> Tensor<3> {
    match pending {
        Some(delta) => x.clone() + delta.clone(),
        None => x.clone(),
    }
}

/// Causal + padding mask for a step of `step_valid[b].len()` tokens after `cache.len()` cached
/// ones. Padding queries see only themselves so that no row is fully masked; real queries never
/// see padding.
fn build_mask(cache: &KvCache, step_valid: &[Vec<bool>], device: &Device) -> AttentionMask {
    let b = step_valid.len();
    let s = step_valid.first().map_or(0, Vec::len);
    let prev = cache.len();
    let all_real =
        step_valid.iter().flatten().all(|&v| v) && cache.valid().iter().flatten().all(|&v| v);
    if all_real {
        return AttentionMask {
            mask: None,
            causal: s > 1,
            keep: None,
        };
    }
    let total = prev + s;
    let mut data = vec![false; b * s * total];
    for (row, valid_row) in step_valid.iter().enumerate() {
        for i in 0..s {
            let q_abs = prev + i;
            for j in 0..total {
                let key_real = if j < prev {
                    cache.valid()[row][j]
                } else {
                    valid_row[j - prev]
                };
                let masked = j > q_abs || (!key_real && j != q_abs);
                data[(row * s + i) * total + j] = masked;
            }
        }
    }
    AttentionMask {
        mask: Some(Tensor::from_data(
            TensorData::new(data, [b, 1, s, total]),
            device,
        )),
        causal: false,
        keep: Some(step_valid.iter().flatten().copied().collect()),
    }
}
