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
}

/// The result of one request.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Output {
    /// The generated text (special tokens removed).
    pub text: String,
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
