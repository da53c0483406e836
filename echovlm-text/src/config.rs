//! The text half of a Qwen2-VL / EchoVLM `config.json`.
//!
//! Three layouts are accepted: the flat one of Qwen2-VL-7B-Instruct (text fields at the top,
//! `rope_scaling.mrope_section`), and the newer nested ones (`text_config` holding the text
//! fields, with either `rope_scaling` or `rope_parameters`, the latter possibly carrying
//! `rope_theta`). A field is read from `text_config` when present there, else from the top.

use std::path::{Path, PathBuf};

use echovlm_core::LoadError;
use echovlm_moe::MoeConfig;
use serde_json::Value;

/// Upper bounds that no real checkpoint comes near; larger values are refused as corrupt
/// before anything is allocated.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_INTERMEDIATE: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITIONS: usize = 1 << 24;

/// Token ids the multimodal prompt machinery needs, as written in `config.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisionTokenIds {
    /// `<|vision_start|>`.
    pub vision_start: Option<u32>,
    /// `<|vision_end|>`.
    pub vision_end: Option<u32>,
    /// `<|image_pad|>`.
    pub image: Option<u32>,
    /// `<|video_pad|>`.
    pub video: Option<u32>,
}

/// Decoder hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Rows of the embedding and of the LM head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the dense MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Rotary frequencies taken from the temporal, height and width positions; sums to
    /// `head_dim / 2`.
    pub mrope_section: [usize; 3],
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// MoE routing settings (used by layers that have MoE weights).
    pub moe: MoeConfig,
    /// `bos_token_id`, if given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (one or several), if given.
    pub eos_token_ids: Vec<u32>,
    /// Vision placeholder ids.
    pub vision_tokens: VisionTokenIds,
}

struct View<'a> {
    root: &'a Value,
    text: Option<&'a Value>,
    path: &'a Path,
}

impl<'a> View<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.text
            .and_then(|t| t.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| self.root.get(key).filter(|v| !v.is_null()))
    }

    fn err(&self, reason: String) -> LoadError {
        LoadError::config(self.path, reason)
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }

    fn required(&self, key: &str) -> Result<usize, LoadError> {
        self.usize(key)?
            .ok_or_else(|| self.err(format!("missing {key}")))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be a number, got {v}"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be true or false, got {v}"))),
        }
    }

    fn token_id(&self, key: &str) -> Result<Option<u32>, LoadError> {
        match self.usize(key)? {
            Some(n) if n <= u32::MAX as usize => Ok(Some(n as u32)),
            Some(n) => Err(self.err(format!("{key} = {n} is not a token id"))),
            None => Ok(None),
        }
    }
}

fn check_range(
    path: &Path,
    key: &str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), LoadError> {
    if value < min || value > max {
        Err(LoadError::config(
            path,
            format!("{key} = {value} is outside the supported range {min}..={max}"),
        ))
    } else {
        Ok(())
    }
}

impl TextConfig {
    /// Reads and validates the text configuration from a parsed `config.json`.
    pub fn from_json(json: &Value, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        if !json.is_object() {
            return Err(LoadError::config(path, "not a JSON object"));
        }
        let view = View {
            root: json,
            text: json.get("text_config").filter(|v| v.is_object()),
            path,
        };
        let hidden_size = view.required("hidden_size")?;
        let num_hidden_layers = view.required("num_hidden_layers")?;
        let num_attention_heads = view.required("num_attention_heads")?;
        let vocab_size = view.required("vocab_size")?;
        let intermediate_size = view.required("intermediate_size")?;
        check_range(path, "hidden_size", hidden_size, 1, MAX_HIDDEN)?;
        check_range(path, "num_hidden_layers", num_hidden_layers, 1, MAX_LAYERS)?;
        check_range(
            path,
            "num_attention_heads",
            num_attention_heads,
            1,
            MAX_HEADS,
        )?;
        check_range(path, "vocab_size", vocab_size, 1, MAX_VOCAB)?;
        check_range(
            path,
            "intermediate_size",
            intermediate_size,
            1,
            MAX_INTERMEDIATE,
        )?;
        let num_key_value_heads = view
            .usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        check_range(
            path,
            "num_key_value_heads",
            num_key_value_heads,
            1,
            MAX_HEADS,
        )?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(view.err(format!(
                "num_attention_heads = {num_attention_heads} is not a multiple of num_key_value_heads = {num_key_value_heads}"
            )));
        }
        let head_dim = match view.usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(view.err(format!(
                        "hidden_size = {hidden_size} is not divisible by num_attention_heads = {num_attention_heads}"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        check_range(path, "head_dim", head_dim, 2, 4096)?;
        if head_dim % 2 != 0 {
            return Err(view.err(format!("head_dim = {head_dim} must be even for RoPE")));
        }
        let max_position_embeddings = view.usize("max_position_embeddings")?.unwrap_or(32768);
        check_range(
            path,
            "max_position_embeddings",
            max_position_embeddings,
            1,
            MAX_POSITIONS,
        )?;

        let rope = view
            .get("rope_scaling")
            .or_else(|| view.get("rope_parameters"));
        let rope_theta = match view.f64("rope_theta")? {
            Some(t) => t,
            None => rope
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(1_000_000.0),
        };
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(view.err(format!(
                "rope_theta = {rope_theta} must be a number above 1"
            )));
        }
        let section = rope.and_then(|r| r.get("mrope_section")).ok_or_else(|| {
            view.err("missing rope_scaling.mrope_section (or rope_parameters.mrope_section)".into())
        })?;
        let mrope_section = parse_section(section).ok_or_else(|| {
            view.err(format!(
                "mrope_section must be three non-negative integers, got {section}"
            ))
        })?;
        let sum: usize = mrope_section.iter().sum();
        if sum != head_dim / 2 {
            return Err(view.err(format!(
                "mrope_section {mrope_section:?} sums to {sum}, but head_dim / 2 = {}",
                head_dim / 2
            )));
        }

        let rms_norm_eps = view.f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(view.err(format!("rms_norm_eps = {rms_norm_eps} must be positive")));
        }
        let top_k = view.usize("num_experts_per_tok")?.unwrap_or(2);
        check_range(path, "num_experts_per_tok", top_k, 1, 256)?;
        let eos_token_ids = match view.get("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&n| n <= u32::MAX as u64)
                        .map(|n| n as u32)
                        .ok_or_else(|| view.err(format!("eos_token_id holds {v}, not a token id")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => view.token_id("eos_token_id")?.into_iter().collect(),
        };
        let cfg = TextConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            mrope_section,
            max_position_embeddings,
            tie_word_embeddings: view.bool("tie_word_embeddings")?.unwrap_or(false),
            moe: MoeConfig {
                num_experts_per_tok: top_k,
                norm_topk_prob: view.bool("norm_topk_prob")?.unwrap_or(false),
            },
            bos_token_id: view.token_id("bos_token_id")?,
            eos_token_ids,
            vision_tokens: VisionTokenIds {
                vision_start: view.token_id("vision_start_token_id")?,
                vision_end: view.token_id("vision_end_token_id")?,
                image: view.token_id("image_token_id")?,
                video: view.token_id("video_token_id")?,
            },
        };
        for (name, id) in [
            ("vision_start_token_id", cfg.vision_tokens.vision_start),
            ("vision_end_token_id", cfg.vision_tokens.vision_end),
            ("image_token_id", cfg.vision_tokens.image),
            ("video_token_id", cfg.vision_tokens.video),
        ] {
            if let Some(id) = id
                && id as usize >= vocab_size
            {
                return Err(view.err(format!(
                    "{name} = {id} is not below vocab_size = {vocab_size}"
                )));
            }
        }
        Ok(cfg)
    }

    /// Reads and validates `config.json` from a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let json = read_json(path)?;
        Self::from_json(&json, path)
    }
}

/// Reads a JSON file, mapping failures to [`LoadError`].
pub fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: PathBuf::from(path),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::config(path, format!("not valid JSON: {e}")))
}

fn parse_section(v: &Value) -> Option<[usize; 3]> {
    let a = v.as_array()?;
    if a.len() != 3 {
        return None;
    }
    let mut out = [0usize; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_u64()? as usize;
    }
    Some(out)
}
