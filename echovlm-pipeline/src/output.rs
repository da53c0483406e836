//! What a generation returns.

use echovlm_moe::RoutingSummary;
use serde::Serialize;

use crate::generate::FinishReason;

/// Wall-clock time spent in each stage, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Timings {
    /// Decoding, resizing and normalising images, rendering and tokenising the prompt.
    pub preprocess_ms: f64,
    /// The vision tower.
    pub vision_ms: f64,
    /// The prompt pass of the decoder.
    pub prefill_ms: f64,
    /// Prompt tokens in the prefill.
    pub prefill_tokens: usize,
    /// Every decode step after the first token.
    pub decode_ms: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Generated tokens per second of decode (the first token comes from the prefill).
    pub decode_tokens_per_s: f64,
    /// Decode steps run by replaying a step recorded as a graph
    /// ([`LoadOptions::decode_graphs`](crate::LoadOptions::decode_graphs)); the others ran
    /// one by one.
    pub replayed_steps: usize,
}

/// The model family a checkpoint belongs to, read from `config.json` (`model_type`,
/// `architectures`) when it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Architecture {
    /// Qwen2-VL: EchoVLM V1 (with the dynamic MoE) and stock Qwen2-VL checkpoints.
    #[serde(rename = "qwen2_vl")]
    Qwen2Vl,
    /// Qwen2.5-VL: EchoVLM V2 (a Lingshu-7B fine-tune) and stock Qwen2.5-VL checkpoints.
    #[serde(rename = "qwen2_5_vl")]
    Qwen25Vl,
}

impl Architecture {
    /// The `model_type` string of `config.json`: `"qwen2_vl"` or `"qwen2_5_vl"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Qwen2Vl => "qwen2_vl",
            Architecture::Qwen25Vl => "qwen2_5_vl",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one request.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Output {
    /// The generated text (special tokens removed).
    pub text: String,
    /// The architecture that ran.
    pub architecture: Architecture,
    /// The prompt as token ids (placeholders expanded).
    pub prompt_token_ids: Vec<u32>,
    /// The generated ids, a final stop token included.
    pub generated_token_ids: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// `(t, h, w)` patch grid of every image.
    pub image_grid_thw: Vec<[usize; 3]>,
    /// `(t, h, w)` patch grid of every cine loop.
    pub video_grid_thw: Vec<[usize; 3]>,
    /// The 20 highest `(token, logit)` pairs of the first generated step (raw logits), highest
    /// first.
    pub first_step_top_logits: Vec<(u32, f32)>,
    /// Time per stage.
    pub timings: Timings,
    /// Expert usage and mix coefficients per MoE layer over prompt and generated tokens
    /// (`None` for models without MoE or when tracing is off).
    pub routing: Option<RoutingSummary>,
}
