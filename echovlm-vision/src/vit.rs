//! The Qwen2-VL and Qwen2.5-VL vision transformers and patch mergers.
//!
//! ```text
//! pixel_values [N, 1176] ─ patch_embed (one matmul) ─ depth × pre-norm block ─ merger ─ [N/4, out]
//! block:  x += proj(attn(rope2d(qkv(norm1(x)))))   attention confined to an image / frame / window
//!         x += mlp(norm2(x))
//! merger: mlp.2(gelu(mlp.0(concat₄(ln_q(x)))))      4 consecutive rows = one 2×2 block
//! ```
//!
//! Qwen2-VL: LayerNorm, `fc2(quick_gelu(fc1(x)))`, every block attends to its whole image or
//! frame. Qwen2.5-VL: RMSNorm, `down_proj(silu(gate_proj(x)) · up_proj(x))` with biases, and
//! window attention: before block 0 the patches (with their rotary angles) are reordered, in
//! groups of one merged token, into [`window_index`] order; blocks in `fullatt_block_indexes`
//! attend to the whole image or frame, all others only inside their window; after the merger
//! the merged tokens are put back into processor order.

use burn::tensor::{DType, Device, Tensor, TensorData, activation};
use echovlm_core::cpu::HostAttention;
use echovlm_core::host::{flex_f32_vec, from_f32_vec, int_tensor};
use echovlm_core::{Linear, LoadError, RmsNorm, WeightLoader, backend, rope};

use crate::config::{VisionAct, VisionArch, VisionConfig};
use crate::window::{
    Run, boundaries_to_segments, expand, frame_segments, inverse, runs, window_index,
};

/// Errors of the vision forward pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    /// `pixel_values` rows do not add up to the grids.
    #[error(
        "pixel_values has {rows} rows of {cols} values but the grids need {expected} rows of {patch_dim}"
    )]
    PixelShape {
        /// Rows given.
        rows: usize,
        /// Values per row given.
        cols: usize,
        /// Rows the grids need.
        expected: usize,
        /// Values per row the model needs.
        patch_dim: usize,
    },
    /// A grid is empty, not a multiple of the merge size, or too large to count.
    #[error("grid {grid:?} is not a positive multiple of the merge size {merge}")]
    BadGrid {
        /// `(t, h, w)`.
        grid: [usize; 3],
        /// Spatial merge size.
        merge: usize,
    },
    /// The attention window is not a positive multiple of `patch_size · merge` pixels.
    #[error(
        "window_size {window_size} is not a positive multiple of patch_size · merge = {patch_size} · {merge}"
    )]
    Window {
        /// Window side in pixels.
        window_size: usize,
        /// Patch side in pixels.
        patch_size: usize,
        /// Spatial merge size.
        merge: usize,
    },
}

/// LayerNorm with weight and bias (eps 1e-6).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor<1>,
    /// Shift.
    pub bias: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    fn load(loader: &mut WeightLoader<'_>, prefix: &str, d: usize) -> Self {
        Self {
            weight: loader.tensor(&format!("{prefix}.weight"), [d]),
            bias: loader.tensor(&format!("{prefix}.bias"), [d]),
            eps: 1e-6,
        }
    }

    /// Normalises the last dimension (statistics in f32).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let (var, mean) = x32.clone().var_mean_bias(1);
        let y = (x32 - mean) * var.add_scalar(self.eps).sqrt().recip();
        y.cast(dtype) * self.weight.clone().unsqueeze() + self.bias.clone().unsqueeze()
    }
}

/// The normalisation of a vision block or of the merger (eps 1e-6).
#[derive(Debug, Clone)]
#[non_exhaustive]
// two per block: boxing the larger variant would save nothing worth an indirection
#[allow(clippy::large_enum_variant)]
pub enum VisionNorm {
    /// Qwen2-VL: LayerNorm with weight and bias.
    LayerNorm(LayerNorm),
    /// Qwen2.5-VL: RMSNorm, weight only.
    RmsNorm(RmsNorm),
}

impl VisionNorm {
    fn load(loader: &mut WeightLoader<'_>, arch: VisionArch, prefix: &str, d: usize) -> Self {
        match arch {
            VisionArch::Qwen2Vl => Self::LayerNorm(LayerNorm::load(loader, prefix, d)),
            VisionArch::Qwen25Vl => Self::RmsNorm(RmsNorm::load(loader, prefix, d, 1e-6)),
        }
    }

    /// Normalises the last dimension (statistics in f32).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::LayerNorm(n) => n.forward(x),
            Self::RmsNorm(n) => n.forward(x),
        }
    }
}

/// Fused-qkv multi-head self-attention with 2-D rotary positions.
#[derive(Debug, Clone)]
pub struct VisionAttention {
    /// `[3·embed, embed]` + bias: q, then k, then v, each head-major.
    pub qkv: Linear,
    /// `[embed, embed]` + bias.
    pub proj: Linear,
    heads: usize,
}

/// The MLP of a vision block.
#[derive(Debug, Clone)]
#[non_exhaustive]
// one per block: boxing the larger variant would save nothing worth an indirection
#[allow(clippy::large_enum_variant)]
pub enum VisionMlp {
    /// Qwen2-VL: `fc2(act(fc1(x)))`.
    Plain {
        /// `[intermediate, embed]` + bias.
        fc1: Linear,
        /// `[embed, intermediate]` + bias.
        fc2: Linear,
        /// Activation (`quick_gelu` in the released checkpoints).
        act: VisionAct,
    },
    /// Qwen2.5-VL: `down_proj(act(gate_proj(x)) · up_proj(x))`.
    Gated {
        /// `[intermediate, embed]` + bias.
        gate_proj: Linear,
        /// `[intermediate, embed]` + bias.
        up_proj: Linear,
        /// `[embed, intermediate]` + bias.
        down_proj: Linear,
        /// Activation (`silu` in the released checkpoints).
        act: VisionAct,
    },
}

/// One pre-norm vision block.
#[derive(Debug, Clone)]
pub struct VisionBlock {
    /// Normalisation before attention.
    pub norm1: VisionNorm,
    /// Attention.
    pub attn: VisionAttention,
    /// Normalisation before the MLP.
    pub norm2: VisionNorm,
    /// MLP.
    pub mlp: VisionMlp,
}

/// Normalisation, 2×2 concatenation and a two-layer GELU MLP projecting into the decoder.
#[derive(Debug, Clone)]
pub struct PatchMerger {
    /// Normalisation of each patch.
    pub ln_q: VisionNorm,
    /// `mlp.0`: `[4·embed, 4·embed]` + bias.
    pub mlp_0: Linear,
    /// `mlp.2`: `[out, 4·embed]` + bias.
    pub mlp_2: Linear,
}

/// The vision tower: patch embedding, blocks and merger, for Qwen2-VL or Qwen2.5-VL
/// (`config.arch`).
#[derive(Debug, Clone)]
pub struct VisionModel {
    /// The Conv3d patch embedding as a `[embed, 1176]` matrix (no bias).
    pub patch_embed: Linear,
    /// Transformer blocks.
    pub blocks: Vec<VisionBlock>,
    /// Patch merger.
    pub merger: PatchMerger,
    /// Configuration.
    pub config: VisionConfig,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

/// Everything a forward pass derives from the grids alone.
struct Plan {
    /// Rotary tables `[N, head_dim]`, in the order the blocks see the patches.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// Whole images / frames.
    full: Vec<Run>,
    /// Windows (Qwen2.5-VL), in permuted order.
    window: Option<Vec<Run>>,
    /// Window order of the merged tokens (Qwen2.5-VL): position `j` holds merged token
    /// `order[j]` of processor order.
    order: Option<Vec<usize>>,
}

impl VisionModel {
    /// Loads `visual.*` (the loader maps `model.visual.*` there).
    pub fn load(loader: &mut WeightLoader<'_>, cfg: &VisionConfig) -> Result<Self, LoadError> {
        let e = cfg.embed_dim;
        let hidden = cfg.intermediate_size;
        let patch_key = "visual.patch_embed.proj.weight";
        let conv_shape = [
            e,
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.patch_size,
        ];
        // the Conv3d kernel is a [embed, 1176] matrix in the same memory order
        let patch_embed = match loader.packed_format() {
            Some(format) if loader.shape_of(patch_key) == Some(&conv_shape[..]) => {
                match loader.packed_as(patch_key, &conv_shape, e, cfg.patch_dim(), format) {
                    Some(p) => Linear::packed(p, None),
                    None => Linear::new(Tensor::zeros([1, 1], loader.device()), None),
                }
            }
            _ => Linear::new(
                loader.tensor_as(patch_key, conv_shape, [e, cfg.patch_dim()]),
                None,
            ),
        };
        let arch = cfg.arch;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let p = format!("visual.blocks.{i}");
                let mlp = match arch {
                    VisionArch::Qwen2Vl => VisionMlp::Plain {
                        fc1: loader.linear(&format!("{p}.mlp.fc1"), e, hidden, true),
                        fc2: loader.linear(&format!("{p}.mlp.fc2"), hidden, e, true),
                        act: cfg.hidden_act,
                    },
                    VisionArch::Qwen25Vl => VisionMlp::Gated {
                        gate_proj: loader.linear(&format!("{p}.mlp.gate_proj"), e, hidden, true),
                        up_proj: loader.linear(&format!("{p}.mlp.up_proj"), e, hidden, true),
                        down_proj: loader.linear(&format!("{p}.mlp.down_proj"), hidden, e, true),
                        act: cfg.hidden_act,
                    },
                };
                VisionBlock {
                    norm1: VisionNorm::load(loader, arch, &format!("{p}.norm1"), e),
                    attn: VisionAttention {
                        qkv: loader.linear(&format!("{p}.attn.qkv"), e, 3 * e, true),
                        proj: loader.linear(&format!("{p}.attn.proj"), e, e, true),
                        heads: cfg.num_heads,
                    },
                    norm2: VisionNorm::load(loader, arch, &format!("{p}.norm2"), e),
                    mlp,
                }
            })
            .collect();
        let m = e * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger = PatchMerger {
            ln_q: VisionNorm::load(loader, arch, "visual.merger.ln_q", e),
            mlp_0: loader.linear("visual.merger.mlp.0", m, m, true),
            mlp_2: loader.linear("visual.merger.mlp.2", m, cfg.out_hidden_size, true),
        };
        // 2-D rotary table: head_dim/2 rotary dims, half of them for rows, half for columns
        let dim = cfg.head_dim() / 2;
        let inv_freq = rope::inv_freq(dim, 10000.0);
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            config: cfg.clone(),
            inv_freq,
            device: loader.device().clone(),
            dtype: loader.dtype(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// Checks grids against `rows` patch rows of `cols` values; returns the merged-token count.
    pub fn check_grids(
        &self,
        rows: usize,
        cols: usize,
        grids: &[[usize; 3]],
    ) -> Result<usize, VisionError> {
        let merge = self.config.spatial_merge_size;
        let mut expected = 0usize;
        for g in grids {
            if g[0] == 0
                || g[1] == 0
                || g[2] == 0
                || merge == 0
                || !g[1].is_multiple_of(merge)
                || !g[2].is_multiple_of(merge)
            {
                return Err(VisionError::BadGrid { grid: *g, merge });
            }
            expected = g[0]
                .checked_mul(g[1])
                .and_then(|n| n.checked_mul(g[2]))
                .and_then(|n| n.checked_add(expected))
                .ok_or(VisionError::BadGrid { grid: *g, merge })?;
        }
        if rows != expected || cols != self.config.patch_dim() {
            return Err(VisionError::PixelShape {
                rows,
                cols,
                expected,
                patch_dim: self.config.patch_dim(),
            });
        }
        Ok(expected / (merge * merge))
    }

    /// Encodes the patches of one or more images/videos (`pixel_values`, `[N, 1176]`, rows in
    /// processor order) into merged embeddings `[N/4, out_hidden_size]`, in the same order as
    /// the prompt's placeholder tokens.
    ///
    /// On the CPU it runs on a thread of the CPU path's pool ([`echovlm_core::cpu::on_pool`]).
    pub fn forward(
        &self,
        pixel_values: Tensor<2>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<2>, VisionError> {
        echovlm_core::backend::forward_on(&self.device, || self.forward_here(pixel_values, grids))
    }

    /// [`forward`](Self::forward) on the calling thread.
    fn forward_here(
        &self,
        pixel_values: Tensor<2>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<2>, VisionError> {
        let [rows, cols] = pixel_values.dims();
        self.check_grids(rows, cols, grids)?;
        let plan = self.plan(grids)?;
        let x = self.patch_embed.forward(pixel_values.cast(self.dtype));
        let x = self.permute_patches(x, plan.order.as_deref(), false);
        let x = self.run_blocks(x, &plan);
        let y = self.merger.forward(x, self.config.spatial_merge_size);
        Ok(match &plan.order {
            Some(order) => y.select(0, self.index(inverse(order))),
            None => y,
        })
    }

    /// Runs only the transformer blocks on already embedded patches (`[N, embed_dim]`, rows in
    /// processor order, returned in processor order): the part whose cost grows with the image,
    /// for benchmarks and feature extraction.
    ///
    /// # Panics
    /// If the grids do not describe the `N` rows of `x` (see [`Self::check_grids`]).
    pub fn blocks_forward(&self, x: Tensor<2>, grids: &[[usize; 3]]) -> Tensor<2> {
        let plan = self.plan(grids).expect("grids that fit the vision tower");
        let x = self.permute_patches(x, plan.order.as_deref(), false);
        let x = self.run_blocks(x, &plan);
        self.permute_patches(x, plan.order.as_deref(), true)
    }

    /// Row and column of every patch in processor order `(t, hb, wb, hm, wm)`.
    pub fn patch_positions(&self, grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
        let m = self.config.spatial_merge_size;
        let mut out = Vec::new();
        for &[t, h, w] in grids {
            for _ in 0..t {
                for hb in 0..h / m {
                    for wb in 0..w / m {
                        for hm in 0..m {
                            for wm in 0..m {
                                out.push((hb * m + hm, wb * m + wm));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn tokens_per_merge(&self) -> usize {
        self.config.spatial_merge_size * self.config.spatial_merge_size
    }

    fn index(&self, values: Vec<usize>) -> Tensor<1, burn::tensor::Int> {
        let n = values.len();
        int_tensor(
            values.into_iter().map(|i| i as i64).collect(),
            [n],
            &self.device,
        )
    }

    /// Puts patches into window order (or, with `back`, window order back into processor
    /// order), moving each merged token's patches together.
    fn permute_patches(&self, x: Tensor<2>, order: Option<&[usize]>, back: bool) -> Tensor<2> {
        let Some(order) = order else { return x };
        let order = if back { inverse(order) } else { order.to_vec() };
        x.select(0, self.index(expand(&order, self.tokens_per_merge())))
    }

    fn plan(&self, grids: &[[usize; 3]]) -> Result<Plan, VisionError> {
        let c = &self.config;
        let mut pos = self.patch_positions(grids);
        let full = runs(&frame_segments(grids));
        let (window, order) = match c.window_size {
            Some(window_size) => {
                let (order, cu) =
                    window_index(grids, window_size, c.patch_size, c.spatial_merge_size)?;
                let perm = expand(&order, self.tokens_per_merge());
                pos = perm.iter().map(|&p| pos[p]).collect();
                (Some(runs(&boundaries_to_segments(&cu))), Some(order))
            }
            None => (None, None),
        };
        let (cos, sin) = self.rotary(&pos);
        Ok(Plan {
            cos,
            sin,
            full,
            window,
            order,
        })
    }

    fn run_blocks(&self, mut x: Tensor<2>, plan: &Plan) -> Tensor<2> {
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = match &plan.window {
                Some(window) if !self.config.full_attention(i) => window,
                _ => &plan.full,
            };
            let h = block.norm1.forward(x.clone());
            x = x.clone() + block.attn.forward(h, &plan.cos, &plan.sin, segments);
            let h = block.norm2.forward(x.clone());
            x = x + block.mlp.forward(h);
        }
        x
    }

    /// cos/sin tables `[N, head_dim]` of the 2-D rotary embedding for patches at `pos`
    /// (row, column), computed in f32.
    fn rotary(&self, pos: &[(usize, usize)]) -> (Tensor<2>, Tensor<2>) {
        let quarter = self.inv_freq.len();
        let head_dim = self.config.head_dim();
        let mut cos = vec![0f32; pos.len() * head_dim];
        let mut sin = vec![0f32; pos.len() * head_dim];
        // rotary pairs [0, quarter) take the row, [quarter, 2·quarter) the column
        let mut angles = vec![0f32; 2 * quarter];
        let rows = cos
            .chunks_exact_mut(head_dim)
            .zip(sin.chunks_exact_mut(head_dim));
        for (&(r, c), (cos, sin)) in pos.iter().zip(rows) {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                angles[j] = r as f32 * f;
                angles[quarter + j] = c as f32 * f;
            }
            rope::write_row(&angles, cos, sin);
        }
        let shape = [pos.len(), head_dim];
        let make = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, shape), (&self.device, DType::F32))
                .cast(self.dtype)
        };
        (make(cos), make(sin))
    }
}

impl VisionAttention {
    fn forward(&self, x: Tensor<2>, cos: &Tensor<2>, sin: &Tensor<2>, runs: &[Run]) -> Tensor<2> {
        let [n, e] = x.dims();
        let heads = self.heads;
        let hd = e / heads;
        let dtype = x.dtype();
        if backend::is_flex(&x.device()) && dtype == DType::F32 {
            let device = x.device();
            let qkv = flex_f32_vec(self.qkv.forward(x));
            let (cos, sin) = (flex_f32_vec(cos.clone()), flex_f32_vec(sin.clone()));
            let o = self.host_attention(&qkv, n, &cos, &sin, runs);
            return self
                .proj
                .forward(from_f32_vec(o, [n, e], &device, DType::F32));
        }
        // [n, 3, heads, hd] -> three [1, heads, n, hd]
        let qkv = self.qkv.forward(x).reshape([n, 3, heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(1, i, 1)
                .reshape([n, heads, hd])
                .swap_dims(0, 1)
                .unsqueeze_dim::<4>(0)
        };
        // rotary in f32
        let cos4: Tensor<4> = cos
            .clone()
            .cast(DType::F32)
            .unsqueeze_dim::<3>(0)
            .unsqueeze_dim(0);
        let sin4: Tensor<4> = sin
            .clone()
            .cast(DType::F32)
            .unsqueeze_dim::<3>(0)
            .unsqueeze_dim(0);
        let q = rope::apply(part(0).cast(DType::F32), &cos4, &sin4).cast(dtype);
        let k = rope::apply(part(1).cast(DType::F32), &cos4, &sin4).cast(dtype);
        let v = part(2);
        // each run of equal segments is one batch of independent sequences
        let outs: Vec<Tensor<4>> = runs
            .iter()
            .map(|r| {
                let rows = r.len * r.count;
                let take = |t: &Tensor<4>| {
                    let t = t.clone().narrow(2, r.start, rows);
                    if r.count == 1 {
                        t
                    } else {
                        t.reshape([heads, r.count, r.len, hd]).swap_dims(0, 1)
                    }
                };
                let o = backend::attention(take(&q), take(&k), take(&v), None, false);
                if r.count == 1 {
                    o
                } else {
                    o.swap_dims(0, 1).reshape([1, heads, rows, hd])
                }
            })
            .collect();
        let o = if outs.len() == 1 {
            outs.into_iter().next().expect("one run")
        } else {
            Tensor::cat(outs, 2)
        };
        let o = o.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([n, e]);
        self.proj.forward(o)
    }
}

impl VisionAttention {
    /// The attention of [`forward`](Self::forward) on the host (flex device, f32): `qkv` is the
    /// fused product `[n, 3, heads, hd]`, `cos`/`sin` the rotary tables `[n, hd]`. Each run's
    /// queries, keys and values are rotated and laid out per segment in one pass, attended with
    /// the CPU path's tiled attention, and written back as `[n, heads · hd]`. The rotation is
    /// the tensor path's `x·cos + rotate_half(x)·sin`, in the same order of operations.
    fn host_attention(
        &self,
        qkv: &[f32],
        n: usize,
        cos: &[f32],
        sin: &[f32],
        runs: &[Run],
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let heads = self.heads;
        let e = qkv.len() / (3 * n);
        let hd = e / heads;
        let half = hd / 2;
        let rotate = |x: &[f32], c: &[f32], s: &[f32], dst: &mut [f32]| {
            for j in 0..half {
                dst[j] = x[j] * c[j] + -x[j + half] * s[j];
                dst[j + half] = x[j + half] * c[j + half] + x[j] * s[j + half];
            }
        };
        let mut out = vec![0f32; n * e];
        for r in runs {
            let seg = heads * r.len * hd;
            let mut q = vec![0f32; r.count * seg];
            let mut k = vec![0f32; r.count * seg];
            let mut v = vec![0f32; r.count * seg];
            // segment c of the run: [heads, len, hd] for each of q, k, v
            q.par_chunks_mut(seg)
                .zip(k.par_chunks_mut(seg))
                .zip(v.par_chunks_mut(seg))
                .enumerate()
                .for_each(|(c, ((q, k), v))| {
                    for t in 0..r.len {
                        let row = r.start + c * r.len + t;
                        let src = &qkv[row * 3 * e..(row + 1) * 3 * e];
                        let (cr, sr) = (
                            &cos[row * hd..(row + 1) * hd],
                            &sin[row * hd..(row + 1) * hd],
                        );
                        for h in 0..heads {
                            let d = (h * r.len + t) * hd;
                            rotate(&src[h * hd..(h + 1) * hd], cr, sr, &mut q[d..d + hd]);
                            rotate(
                                &src[e + h * hd..e + (h + 1) * hd],
                                cr,
                                sr,
                                &mut k[d..d + hd],
                            );
                            v[d..d + hd]
                                .copy_from_slice(&src[2 * e + h * hd..2 * e + (h + 1) * hd]);
                        }
                    }
                });
            let o = HostAttention {
                q: &q,
                k: &k,
                v: &v,
                batch: r.count,
                heads,
                kv_heads: heads,
                queries: r.len,
                keys: r.len,
                capacity: r.len,
                dim: hd,
                mask: None,
                causal: false,
            }
            .run()
            .expect("buffers laid out for the run's shape");
            out[r.start * e..(r.start + r.count * r.len) * e]
                .par_chunks_mut(r.len * e)
                .zip(o.par_chunks(seg))
                .for_each(|(dst, o)| {
                    for h in 0..heads {
                        for t in 0..r.len {
                            dst[t * e + h * hd..t * e + (h + 1) * hd].copy_from_slice(
                                &o[(h * r.len + t) * hd..(h * r.len + t + 1) * hd],
                            );
                        }
                    }
                });
        }
        out
    }
}

impl VisionAct {
    /// Applies the activation element-wise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => backend::scaled_silu(x, 1.702),
            Self::Silu => backend::scaled_silu(x, 1.0),
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
        }
    }
}

impl VisionMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Plain { fc1, fc2, act } => fc2.forward(act.forward(fc1.forward(x))),
            Self::Gated {
                gate_proj,
                up_proj,
                down_proj,
                act,
            } => {
                // packed CPU weights: both products in one pass
                let [g, u]: [Tensor<2>; 2] = Linear::forward_parts(&[gate_proj, up_proj], x)
                    .try_into()
                    .expect("one output per part");
                let h = match act {
                    VisionAct::Silu => backend::silu_mul(g, u),
                    act => act.forward(g) * u,
                };
                down_proj.forward(h)
            }
        }
    }
}

impl PatchMerger {
    fn forward(&self, x: Tensor<2>, merge: usize) -> Tensor<2> {
        let [n, e] = x.dims();
        let g = merge * merge;
        let y = self.ln_q.forward(x).reshape([n / g, g * e]);
        self.mlp_2.forward(activation::gelu(self.mlp_0.forward(y)))
    }
}
