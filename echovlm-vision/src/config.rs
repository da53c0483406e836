//! The `vision_config` part of a Qwen2-VL `config.json`.

use std::path::Path;

use echovlm_core::LoadError;
use serde_json::Value;

/// Vision tower hyper-parameters (Qwen2-VL's `Qwen2VLVisionConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionConfig {
    /// Number of transformer blocks (`depth`).
    pub depth: usize,
    /// Width of the ViT (`embed_dim`).
    pub embed_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width as a multiple of `embed_dim`.
    pub mlp_ratio: usize,
    /// Output width of the patch merger (the decoder's hidden size).
    pub out_hidden_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Spatial patch size in pixels.
    pub patch_size: usize,
    /// Side of the square of patches merged into one token.
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    pub temporal_patch_size: usize,
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

    /// Reads `vision_config` from a parsed `config.json`. Missing fields take Qwen2-VL's
    /// defaults (the released checkpoints store only a few of them); the merger's output width
    /// defaults to the decoder's `text_hidden_size`.
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
        if v.get("window_size").is_some() || v.get("fullatt_block_indexes").is_some() {
            return Err(err(
                "this is a Qwen2.5-VL vision tower (window attention), which is not supported"
                    .into(),
            ));
        }
        let get = |keys: &[&str], default: usize| -> Result<usize, LoadError> {
            for k in keys {
                if let Some(x) = v.get(*k).filter(|x| !x.is_null()) {
                    return x.as_u64().map(|n| n as usize).ok_or_else(|| {
                        err(format!(
                            "vision_config.{k} must be a non-negative integer, got {x}"
                        ))
                    });
                }
            }
            Ok(default)
        };
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("quick_gelu");
        if act != "quick_gelu" {
            return Err(err(format!(
                "vision_config.hidden_act = {act:?}; only Qwen2-VL's quick_gelu is supported"
            )));
        }
        let cfg = VisionConfig {
            depth: get(&["depth"], 32)?,
            embed_dim: get(&["embed_dim"], 1280)?,
            num_heads: get(&["num_heads"], 16)?,
            mlp_ratio: get(&["mlp_ratio"], 4)?,
            out_hidden_size: get(&["hidden_size"], text_hidden_size)?,
            in_channels: get(&["in_channels", "in_chans"], 3)?,
            patch_size: get(&["patch_size", "spatial_patch_size"], 14)?,
            spatial_merge_size: get(&["spatial_merge_size"], 2)?,
            temporal_patch_size: get(&["temporal_patch_size"], 2)?,
        };
        let checks = [
            ("depth", cfg.depth, 1, 1024),
            ("embed_dim", cfg.embed_dim, 1, 1 << 16),
            ("num_heads", cfg.num_heads, 1, 1024),
            ("mlp_ratio", cfg.mlp_ratio, 1, 64),
            ("hidden_size", cfg.out_hidden_size, 1, 1 << 16),
            ("in_channels", cfg.in_channels, 3, 3),
            ("patch_size", cfg.patch_size, 1, 1024),
            ("spatial_merge_size", cfg.spatial_merge_size, 1, 16),
            ("temporal_patch_size", cfg.temporal_patch_size, 1, 16),
        ];
        for (name, value, min, max) in checks {
            if value < min || value > max {
                return Err(err(format!(
                    "vision_config.{name} = {value} is outside the supported range {min}..={max}"
                )));
            }
        }
        if !cfg.embed_dim.is_multiple_of(cfg.num_heads) {
            return Err(err(format!(
                "vision_config.embed_dim = {} is not divisible by num_heads = {}",
                cfg.embed_dim, cfg.num_heads
            )));
        }
        if !cfg.head_dim().is_multiple_of(4) {
            return Err(err(format!(
                "vision head_dim = {} must be a multiple of 4 for the 2-D rotary embedding",
                cfg.head_dim()
            )));
        }
        if cfg.out_hidden_size != text_hidden_size {
            return Err(err(format!(
                "vision_config.hidden_size = {} but the decoder's hidden_size is {text_hidden_size}",
                cfg.out_hidden_size
            )));
        }
        Ok(cfg)
    }
}
