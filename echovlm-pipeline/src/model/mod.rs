//! [`EchoVlm`]: a loaded checkpoint. Loading, prompt preparation and the generation loop
//! each have their own file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use echovlm_core::cpu::WeightFormat;
use echovlm_text::{Qwen2Tokenizer, TextModel, VideoTime, VisionTokenIds};
use echovlm_vision::VisionModel;
use echovlm_vision::preprocess::PreprocessConfig;

use crate::chat::ChatTemplate;
use crate::generate::GenerationOptions;
use crate::output::Architecture;

mod adapter;
mod batch;
mod conversation;
mod forward;
mod graph;
mod load;
mod prepare;
mod run;
mod weights;

pub use batch::{BatchEvent, ContinuousBatch, SeqId};
pub use conversation::Conversation;
pub use forward::SequenceOutput;
pub use load::LoadOptions;
pub use prepare::PreparedPrompt;
pub use run::TextCallback;
pub use weights::Weights;

/// A loaded EchoVLM V1 or V2 (or stock Qwen2-VL / Qwen2.5-VL) checkpoint: decoder, vision
/// tower, tokenizer, chat template, preprocessing settings and generation defaults.
#[derive(Clone)]
pub struct EchoVlm {
    architecture: Architecture,
    text: TextModel,
    vision: Option<VisionModel>,
    tokenizer: Qwen2Tokenizer,
    template: ChatTemplate,
    preprocess: PreprocessConfig,
    generation: GenerationOptions,
    vision_tokens: VisionTokenIds,
    /// The image placeholder token (`vision_tokens.image`).
    image_id: u32,
    /// The video placeholder token (`vision_tokens.video`).
    video_id: u32,
    pad_id: u32,
    dir: PathBuf,
    parameters: usize,
    weight_bytes: usize,
    weight_format: Option<WeightFormat>,
    weight_choice: String,
    decode_graphs: bool,
}

impl std::fmt::Debug for EchoVlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoVlm")
            .field("architecture", &self.architecture)
            .field("dir", &self.dir)
            .field("parameters", &self.parameters)
            .field("layers", &self.text.layers.len())
            .field("vision", &self.vision.is_some())
            .finish()
    }
}

impl EchoVlm {
    /// The model family of the checkpoint (Qwen2-VL or Qwen2.5-VL).
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The decoder.
    pub fn text_model(&self) -> &TextModel {
        &self.text
    }

    /// The vision tower, if the checkpoint has one.
    pub fn vision_model(&self) -> Option<&VisionModel> {
        self.vision.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Qwen2Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The checkpoint's preprocessing settings.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Generation settings from `generation_config.json` (stop tokens included), with
    /// `max_new_tokens` 1024 unless the file sets it.
    pub fn default_generation(&self) -> GenerationOptions {
        self.generation.clone()
    }

    /// Number of stored parameters.
    pub fn num_parameters(&self) -> usize {
        self.parameters
    }

    /// Bytes the loaded weights occupy in memory (after any packing or quantisation).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The packed format the CPU holds the linear weights in (`None`: Burn tensors, on other
    /// devices or with [`LinearOptions::portable`](crate::LinearOptions::portable)).
    pub fn weight_format(&self) -> Option<WeightFormat> {
        self.weight_format
    }

    /// How the weights are held and why, e.g. `bf16 (the checkpoint's storage type; 23.4 GB of
    /// weights, 40.1 GB available)` when [`Weights::Auto`](crate::Weights::Auto) chose.
    pub fn weight_choice(&self) -> &str {
        &self.weight_choice
    }

    /// Whether decode steps are recorded as a graph and replayed ([`LoadOptions::decode_graphs`](crate::LoadOptions::decode_graphs)).
    pub fn decode_graphs(&self) -> bool {
        self.decode_graphs
    }

    /// Sets whether decode steps are recorded as a graph and replayed where they can be: off
    /// the CPU backend, for one sequence (a request alone, or the one sequence left running
    /// in a [`ContinuousBatch`](crate::ContinuousBatch)), greedy or sampled, traced or not.
    /// Batches of several decode step by step; so does a backend that cannot record graphs.
    pub fn set_decode_graphs(&mut self, yes: bool) {
        self.decode_graphs = yes;
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.text.device()
    }

    /// Seconds one temporal grid step of each video spans: `temporal_patch_size / fps`,
    /// computed in f64 and stored as f32, as transformers' processor does.
    pub(crate) fn seconds_per_grid(&self, fps: &[f64]) -> Vec<f32> {
        let temporal = self.preprocess.temporal_patch_size as f64;
        fps.iter().map(|&f| (temporal / f) as f32).collect()
    }

    /// How video frames map to M-RoPE time positions for this architecture.
    pub(crate) fn video_time<'a>(&self, seconds_per_grid: &'a [f32]) -> VideoTime<'a> {
        let tokens_per_second = self
            .vision
            .as_ref()
            .and_then(|v| v.config.tokens_per_second);
        match (self.architecture, tokens_per_second) {
            (Architecture::Qwen25Vl, Some(tps)) => VideoTime::Seconds {
                seconds_per_grid,
                tokens_per_second: tps as f32,
            },
            _ => VideoTime::Steps,
        }
    }
}
