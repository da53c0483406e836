//! [`EchoVlm`]: a loaded checkpoint. Loading, prompt preparation and the generation loop
//! each have their own file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use echovlm_text::{Qwen2Tokenizer, TextModel, VisionTokenIds};
use echovlm_vision::VisionModel;
use echovlm_vision::preprocess::PreprocessConfig;

use crate::chat::ChatTemplate;
use crate::generate::GenerationOptions;

mod load;
mod prepare;
mod run;

pub use load::LoadOptions;
pub use prepare::PreparedPrompt;
pub use run::TextCallback;

/// A loaded EchoVLM (or stock Qwen2-VL) checkpoint: decoder, vision tower, tokenizer, chat
/// template, preprocessing settings and generation defaults.
pub struct EchoVlm {
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
}

impl std::fmt::Debug for EchoVlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoVlm")
            .field("dir", &self.dir)
            .field("parameters", &self.parameters)
            .field("layers", &self.text.layers.len())
            .field("vision", &self.vision.is_some())
            .finish()
    }
}

impl EchoVlm {
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

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.text.device()
    }
}
