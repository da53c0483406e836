//! The Qwen2-VL vision transformer and patch merger.
//!
//! ```text
//! pixel_values [N, 1176] ─ patch_embed (one matmul) ─ 32 × pre-norm block ─ merger ─ [N/4, out]
//! block:  x += proj(attn(rope2d(qkv(LN1(x)))))   attention confined to each image / frame
//!         x += fc2(quick_gelu(fc1(LN2(x))))
//! merger: mlp.2(gelu(mlp.0(concat₄(LN_q(x)))))    4 consecutive rows = one 2×2 block
//! ```

use burn::tensor::{DType, Device, Tensor, TensorData, activation};
use echovlm_core::{Linear, LoadError, WeightLoader, backend, rope};

use crate::config::VisionConfig;

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
    /// A grid is empty or not a multiple of the merge size.
    #[error("grid {grid:?} is not a positive multiple of the merge size {merge}")]
    BadGrid {
        /// `(t, h, w)`.
        grid: [usize; 3],
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

/// Fused-qkv multi-head self-attention with 2-D rotary positions.
#[derive(Debug, Clone)]
pub struct VisionAttention {
    /// `[3·embed, embed]` + bias: q, then k, then v, each head-major.
    pub qkv: Linear,
    /// `[embed, embed]` + bias.
    pub proj: Linear,
    heads: usize,
}

/// `fc2(quick_gelu(fc1(x)))`.
#[derive(Debug, Clone)]
pub struct VisionMlp {
    /// `[ratio·embed, embed]` + bias.
    pub fc1: Linear,
    /// `[embed, ratio·embed]` + bias.
    pub fc2: Linear,
}

/// One pre-norm vision block.
#[derive(Debug, Clone)]
pub struct VisionBlock {
    /// LayerNorm before attention.
    pub norm1: LayerNorm,
    /// Attention.
    pub attn: VisionAttention,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// MLP.
    pub mlp: VisionMlp,
}

/// LayerNorm, 2×2 concatenation and a two-layer GELU MLP projecting into the decoder.
#[derive(Debug, Clone)]
pub struct PatchMerger {
    /// LayerNorm over each patch.
    pub ln_q: LayerNorm,
    /// `mlp.0`: `[4·embed, 4·embed]` + bias.
    pub mlp_0: Linear,
    /// `mlp.2`: `[out, 4·embed]` + bias.
    pub mlp_2: Linear,
}

/// The vision tower: patch embedding, blocks and merger.
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

impl VisionModel {
    /// Loads `visual.*`.
    pub fn load(loader: &mut WeightLoader<'_>, cfg: &VisionConfig) -> Result<Self, LoadError> {
        let e = cfg.embed_dim;
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
        let blocks = (0..cfg.depth)
            .map(|i| {
                let p = format!("visual.blocks.{i}");
                VisionBlock {
                    norm1: LayerNorm::load(loader, &format!("{p}.norm1"), e),
                    attn: VisionAttention {
                        qkv: loader.linear(&format!("{p}.attn.qkv"), e, 3 * e, true),
                        proj: loader.linear(&format!("{p}.attn.proj"), e, e, true),
                        heads: cfg.num_heads,
                    },
                    norm2: LayerNorm::load(loader, &format!("{p}.norm2"), e),
                    mlp: VisionMlp {
                        fc1: loader.linear(&format!("{p}.mlp.fc1"), e, cfg.mlp_ratio * e, true),
                        fc2: loader.linear(&format!("{p}.mlp.fc2"), cfg.mlp_ratio * e, e, true),
                    },
                }
            })
            .collect();
        let m = e * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger = PatchMerger {
            ln_q: LayerNorm::load(loader, "visual.merger.ln_q", e),
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

    /// Checks grids against `rows` patch rows; returns the merged-token count.
    pub fn check_grids(
        &self,
        rows: usize,
        cols: usize,
        grids: &[[usize; 3]],
    ) -> Result<usize, VisionError> {
        let merge = self.config.spatial_merge_size;
        let mut expected = 0;
        for g in grids {
            if g[0] == 0 || g[1] == 0 || g[2] == 0 || g[1] % merge != 0 || g[2] % merge != 0 {
                return Err(VisionError::BadGrid { grid: *g, merge });
            }
            expected += g[0] * g[1] * g[2];
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
    pub fn forward(
        &self,
        pixel_values: Tensor<2>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<2>, VisionError> {
        let [rows, cols] = pixel_values.dims();
        self.check_grids(rows, cols, grids)?;
        let dtype = self.dtype;
        let x = self.patch_embed.forward(pixel_values.cast(dtype));
        let x = self.blocks_forward(x, grids);
        Ok(self.merger.forward(x, self.config.spatial_merge_size))
    }

    /// Runs only the transformer blocks on already embedded patches (`[N, embed_dim]`): the
    /// part whose cost grows with the image, for benchmarks and feature extraction.
    pub fn blocks_forward(&self, x: Tensor<2>, grids: &[[usize; 3]]) -> Tensor<2> {
        let (cos, sin) = self.rotary(grids, &self.device, self.dtype);
        let segments = segments(grids);
        let mut x = x;
        for block in &self.blocks {
            let h = block.norm1.forward(x.clone());
            x = x.clone() + block.attn.forward(h, &cos, &sin, &segments);
            let h = block.norm2.forward(x.clone());
            x = x + block.mlp.forward(h);
        }
        x
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

    /// cos/sin tables `[N, head_dim]` of the 2-D rotary embedding, computed in f32.
    fn rotary(
        &self,
        grids: &[[usize; 3]],
        device: &Device,
        dtype: DType,
    ) -> (Tensor<2>, Tensor<2>) {
        let pos = self.patch_positions(grids);
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
            Tensor::<2>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype)
        };
        (make(cos), make(sin))
    }
}

/// `[start, end)` row ranges that attend to each other: one per image, one per video frame.
fn segments(grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &[t, h, w] in grids {
        for _ in 0..t {
            out.push((start, start + h * w));
            start += h * w;
        }
    }
    out
}

impl VisionAttention {
    fn forward(
        &self,
        x: Tensor<2>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        segments: &[(usize, usize)],
    ) -> Tensor<2> {
        let [n, e] = x.dims();
        let hd = e / self.heads;
        let dtype = x.dtype();
        // [n, 3, heads, hd] -> three [1, heads, n, hd]
        let qkv = self.qkv.forward(x).reshape([n, 3, self.heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(1, i, 1)
                .reshape([n, self.heads, hd])
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
        let outs: Vec<Tensor<4>> = segments
            .iter()
            .map(|&(s, e)| {
                let len = e - s;
                backend::attention(
                    q.clone().narrow(2, s, len),
                    k.clone().narrow(2, s, len),
                    v.clone().narrow(2, s, len),
                    None,
                    false,
                )
            })
            .collect();
        let o = if outs.len() == 1 {
            outs.into_iter().next().expect("one segment")
        } else {
            Tensor::cat(outs, 2)
        };
        let o = o.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([n, e]);
        self.proj.forward(o)
    }
}

impl VisionMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.fc1.forward(x);
        let h = h.clone() * activation::sigmoid(h.mul_scalar(1.702));
        self.fc2.forward(h)
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
