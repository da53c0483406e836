//! The `vision_config` part of a Qwen2-VL or Qwen2.5-VL `config.json`.

use std::path::Path;

use echovlm_core::LoadError;
use serde_json::Value;

/// Which vision transformer a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VisionArch {
    /// Qwen2-VL: LayerNorm, `fc1`/`fc2` MLP, full attention per image or frame in every block.
    Qwen2Vl,
    /// Qwen2.5-VL: RMSNorm, gated `gate_proj`/`up_proj`/`down_proj` MLP with biases, window
    /// attention except in `fullatt_block_indexes`.
    Qwen25Vl,
}

/// Activation of the vision MLP (`vision_config.hidden_act`, the names of transformers'
/// `ACT2FN` that are implemented here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VisionAct {
    /// `quick_gelu`: `x · sigmoid(1.702 x)` (Qwen2-VL).
    QuickGelu,
    /// `silu` / `swish`: `x · sigmoid(x)` (Qwen2.5-VL).
    Silu,
    /// `gelu` / `gelu_python`: exact erf GELU.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast`: tanh-approximated GELU.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl VisionAct {
    /// Parses a transformers activation name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Self::QuickGelu,
            "silu" | "swish" => Self::Silu,
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            _ => return None,
        })
    }
}

/// Vision tower hyper-parameters: Qwen2-VL's `Qwen2VLVisionConfig` or Qwen2.5-VL's
/// `Qwen2_5_VLVisionConfig`, normalised to one set of names.
///
/// The two configurations name the ViT width differently: Qwen2-VL calls it `embed_dim` and
/// uses `hidden_size` for the merger's output, Qwen2.5-VL calls it `hidden_size` and uses
/// `out_hidden_size` for the merger's output. Here the width is always [`Self::embed_dim`] and
/// the merger's output always [`Self::out_hidden_size`].
///
/// Built by [`VisionConfig::from_json`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VisionConfig {
    /// The architecture.
    pub arch: VisionArch,
    /// Number of transformer blocks (`depth`).
    pub depth: usize,
    /// Width of the ViT (Qwen2-VL `embed_dim`, Qwen2.5-VL `hidden_size`).
    pub embed_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Hidden width of the MLP (Qwen2-VL: `mlp_ratio · embed_dim`; Qwen2.5-VL:
    /// `intermediate_size`).
    pub intermediate_size: usize,
    /// Activation of the MLP (`hidden_act`).
    pub hidden_act: VisionAct,
    /// Output width of the patch merger, the decoder's hidden size (Qwen2-VL `hidden_size`,
    /// Qwen2.5-VL `out_hidden_size`).
    pub out_hidden_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Spatial patch size in pixels.
    pub patch_size: usize,
    /// Side of the square of patches merged into one token.
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    pub temporal_patch_size: usize,
    /// Side of an attention window in pixels (`window_size`), a multiple of
    /// `patch_size · spatial_merge_size`; `None` for Qwen2-VL, whose blocks all attend to the
    /// whole image or frame.
    pub window_size: Option<usize>,
    /// Blocks that attend to the whole image or frame instead of a window (Qwen2.5-VL
    /// `fullatt_block_indexes`, each below `depth`; repeated entries are accepted and mean the
    /// same as one). Empty for Qwen2-VL, where every block attends to the whole image.
    pub fullatt_block_indexes: Vec<usize>,
    /// Temporal rotary positions per second of video (Qwen2.5-VL `tokens_per_second`: a frame
    /// group `i` sits at `floor(i · second_per_grid_t · tokens_per_second)`); `None` for
    /// Qwen2-VL, whose temporal position steps by one per frame group.
    pub tokens_per_second: Option<f64>,
}

/// Qwen2-VL's `Qwen2VLVisionConfig` defaults (the released checkpoints store only a few).
const QWEN2_DEFAULTS: Defaults = Defaults {
    depth: 32,
    width: 1280,
    heads: 16,
    act: "quick_gelu",
};

/// Qwen2.5-VL's `Qwen2_5_VLVisionConfig` defaults in transformers 4.51.
const QWEN25_DEFAULTS: Defaults = Defaults {
    depth: 32,
    width: 3584,
    heads: 16,
    act: "silu",
};
const QWEN25_INTERMEDIATE: usize = 3420;
const QWEN25_WINDOW: usize = 112;
const QWEN25_FULLATT: [usize; 4] = [7, 15, 23, 31];
const QWEN25_TOKENS_PER_SECOND: f64 = 4.0;

struct Defaults {
    depth: usize,
    width: usize,
    heads: usize,
    act: &'static str,
}

impl VisionConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Values per patch row of `pixel_values`: `in_channels · temporal · patch²`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Whether block `block` attends to the whole image or frame (every Qwen2-VL block; the
    /// Qwen2.5-VL blocks in `fullatt_block_indexes`) rather than to a window.
    pub fn full_attention(&self, block: usize) -> bool {
        self.window_size.is_none() || self.fullatt_block_indexes.contains(&block)
    }

    /// Reads `vision_config` from a parsed `config.json`.
    ///
    /// The architecture is Qwen2.5-VL when `model_type` (at the top level or inside
    /// `vision_config`) is `"qwen2_5_vl"` or when `vision_config` has `window_size` or
    /// `fullatt_block_indexes`; Qwen2-VL otherwise. Missing fields take transformers' defaults
    /// for that architecture, except the merger's output width, which defaults to the decoder's
    /// `text_hidden_size`. As in transformers, Qwen2.5-VL ignores `in_chans` (only
    /// `in_channels` counts).
    ///
    /// Every inconsistency is a [`LoadError::Config`] naming `path` and the field: a value
    /// outside its range, a width not divisible by the heads, an activation that is not
    /// implemented, a `window_size` that is not a positive multiple of
    /// `patch_size · spatial_merge_size`, a `fullatt_block_indexes` entry not below `depth`, a
    /// merger output that differs from `text_hidden_size`.
    pub fn from_json(
        json: &Value,
        text_hidden_size: usize,
        path: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let err = |reason: String| LoadError::config(path, reason);
        let v = json
            .get("vision_config")
            .filter(|v| v.is_object())
            .ok_or_else(|| err("missing vision_config".into()))?;
        let is_25 = |x: &Value| x.get("model_type").and_then(Value::as_str) == Some("qwen2_5_vl");
        let arch = if is_25(json)
            || is_25(v)
            || v.get("window_size").is_some()
            || v.get("fullatt_block_indexes").is_some()
        {
            VisionArch::Qwen25Vl
        } else {
            VisionArch::Qwen2Vl
        };
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let get = |keys: &[&str], default: usize| -> Result<usize, LoadError> {
            for k in keys {
                if let Some(x) = field(k) {
                    return x.as_u64().map(|n| n as usize).ok_or_else(|| {
                        err(format!(
                            "vision_config.{k} must be a non-negative integer, got {x}"
                        ))
                    });
                }
            }
            Ok(default)
        };
        let defaults = match arch {
            VisionArch::Qwen2Vl => &QWEN2_DEFAULTS,
            VisionArch::Qwen25Vl => &QWEN25_DEFAULTS,
        };
        let act_name = match field("hidden_act") {
            None => defaults.act,
            Some(x) => x.as_str().ok_or_else(|| {
                err(format!(
                    "vision_config.hidden_act must be a string, got {x}"
                ))
            })?,
        };
        let hidden_act = VisionAct::from_name(act_name).ok_or_else(|| {
            err(format!(
                "vision_config.hidden_act = {act_name:?} is not supported (supported: \
                 quick_gelu, silu, swish, gelu, gelu_python, gelu_pytorch_tanh, gelu_new, \
                 gelu_fast, relu)"
            ))
        })?;

        let depth = get(&["depth"], defaults.depth)?;
        let num_heads = get(&["num_heads"], defaults.heads)?;
        let patch_size = get(&["patch_size", "spatial_patch_size"], 14)?;
        let spatial_merge_size = get(&["spatial_merge_size"], 2)?;
        let temporal_patch_size = get(&["temporal_patch_size"], 2)?;
        // (field name, value, min, max) range checks, in the config's own names
        let mut checks: Vec<(&str, usize, usize, usize)> = vec![("depth", depth, 1, 1024)];
        let mut fullatt_defaulted = false;
        let cfg = match arch {
            VisionArch::Qwen2Vl => {
                let embed_dim = get(&["embed_dim"], defaults.width)?;
                let mlp_ratio = get(&["mlp_ratio"], 4)?;
                let out_hidden_size = get(&["hidden_size"], text_hidden_size)?;
                let in_channels = get(&["in_channels", "in_chans"], 3)?;
                checks.extend([
                    ("embed_dim", embed_dim, 1, 1 << 16),
                    ("num_heads", num_heads, 1, 1024),
                    ("mlp_ratio", mlp_ratio, 1, 64),
                    ("hidden_size", out_hidden_size, 1, 1 << 16),
                    ("in_channels", in_channels, 3, 3),
                ]);
                VisionConfig {
                    arch,
                    depth,
                    embed_dim,
                    num_heads,
                    intermediate_size: mlp_ratio.saturating_mul(embed_dim),
                    hidden_act,
                    out_hidden_size,
                    in_channels,
                    patch_size,
                    spatial_merge_size,
                    temporal_patch_size,
                    window_size: None,
                    fullatt_block_indexes: Vec::new(),
                    tokens_per_second: None,
                }
            }
            VisionArch::Qwen25Vl => {
                let embed_dim = get(&["hidden_size"], defaults.width)?;
                let intermediate_size = get(&["intermediate_size"], QWEN25_INTERMEDIATE)?;
                let out_hidden_size = get(&["out_hidden_size"], text_hidden_size)?;
                let in_channels = get(&["in_channels"], 3)?;
                let window_size = get(&["window_size"], QWEN25_WINDOW)?;
                checks.extend([
                    ("hidden_size", embed_dim, 1, 1 << 16),
                    ("num_heads", num_heads, 1, 1024),
                    ("intermediate_size", intermediate_size, 1, 1 << 20),
                    ("out_hidden_size", out_hidden_size, 1, 1 << 16),
                    ("in_channels", in_channels, 3, 3),
                    ("window_size", window_size, 1, 1 << 16),
                ]);
                let (fullatt_block_indexes, defaulted) = match field("fullatt_block_indexes") {
                    None => (QWEN25_FULLATT.to_vec(), true),
                    Some(x) => (
                        x.as_array()
                            .and_then(|a| {
                                a.iter()
                                    .map(|i| i.as_u64().map(|i| i as usize))
                                    .collect::<Option<Vec<_>>>()
                            })
                            .ok_or_else(|| {
                                err(format!(
                                    "vision_config.fullatt_block_indexes must be a list of \
                                     non-negative integers, got {x}"
                                ))
                            })?,
                        false,
                    ),
                };
                fullatt_defaulted = defaulted;
                let tokens_per_second = match field("tokens_per_second") {
                    None => QWEN25_TOKENS_PER_SECOND,
                    Some(x) => x
                        .as_f64()
                        .filter(|t| t.is_finite() && *t > 0.0 && *t <= 1e6)
                        .ok_or_else(|| {
                            err(format!(
                                "vision_config.tokens_per_second must be a positive number \
                                 up to 1e6, got {x}"
                            ))
                        })?,
                };
                VisionConfig {
                    arch,
                    depth,
                    embed_dim,
                    num_heads,
                    intermediate_size,
                    hidden_act,
                    out_hidden_size,
                    in_channels,
                    patch_size,
                    spatial_merge_size,
                    temporal_patch_size,
                    window_size: Some(window_size),
                    fullatt_block_indexes,
                    tokens_per_second: Some(tokens_per_second),
                }
            }
        };
        checks.extend([
            ("patch_size", cfg.patch_size, 1, 1024),
            ("spatial_merge_size", cfg.spatial_merge_size, 1, 16),
            ("temporal_patch_size", cfg.temporal_patch_size, 1, 16),
        ]);
        for (name, value, min, max) in checks {
            if value < min || value > max {
                return Err(err(format!(
                    "vision_config.{name} = {value} is outside the supported range {min}..={max}"
                )));
            }
        }
        let (width_name, out_name) = match arch {
            VisionArch::Qwen2Vl => ("embed_dim", "hidden_size"),
            VisionArch::Qwen25Vl => ("hidden_size", "out_hidden_size"),
        };
        if !cfg.embed_dim.is_multiple_of(cfg.num_heads) {
            return Err(err(format!(
                "vision_config.{width_name} = {} is not divisible by num_heads = {}",
                cfg.embed_dim, cfg.num_heads
            )));
        }
        if !cfg.head_dim().is_multiple_of(4) {
            return Err(err(format!(
                "vision head_dim = {} must be a multiple of 4 for the 2-D rotary embedding",
                cfg.head_dim()
            )));
        }
        if let Some(&bad) = cfg.fullatt_block_indexes.iter().find(|&&i| i >= depth) {
            return Err(err(format!(
                "vision_config.fullatt_block_indexes = {:?}{} names block {bad}, but this \
                 Qwen2.5-VL vision tower has depth = {depth} (blocks 0..{depth})",
                cfg.fullatt_block_indexes,
                if fullatt_defaulted {
                    " (transformers' default)"
                } else {
                    ""
                }
            )));
        }
        if let Some(window) = cfg.window_size {
            let unit = cfg.patch_size * cfg.spatial_merge_size;
            if !window.is_multiple_of(unit) {
                return Err(err(format!(
                    "vision_config.window_size = {window} is not a multiple of patch_size · \
                     spatial_merge_size = {} · {} = {unit}",
                    cfg.patch_size, cfg.spatial_merge_size
                )));
            }
        }
        if cfg.out_hidden_size != text_hidden_size {
            return Err(err(format!(
                "vision_config.{out_name} = {} but the decoder's hidden_size is \
                 {text_hidden_size}",
                cfg.out_hidden_size
            )));
        }
        Ok(cfg)
    }
}
