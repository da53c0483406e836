//! Errors of prompt assembly and tokenisation.

use crate::positions::VisionKind;

/// A prompt that cannot be run as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// The prompt's image placeholders and the images supplied differ in number.
    #[error("the prompt has {placeholders} image placeholder(s) but {images} image(s) were given")]
    ImageCountMismatch {
        /// Placeholder runs found in the prompt.
        placeholders: usize,
        /// Images supplied.
        images: usize,
    },
    /// The prompt's video placeholders and the videos supplied differ in number.
    #[error("the prompt has {placeholders} video placeholder(s) but {videos} video(s) were given")]
    VideoCountMismatch {
        /// Placeholder runs found in the prompt.
        placeholders: usize,
        /// Videos supplied.
        videos: usize,
    },
    /// A placeholder run is not as long as its image or video needs.
    #[error("a {kind:?} placeholder run has {found} tokens but its grid needs {expected}")]
    PlaceholderLength {
        /// Image or video.
        kind: VisionKind,
        /// Tokens the grid needs (`t·h·w / merge²`).
        expected: usize,
        /// Tokens found.
        found: usize,
    },
    /// The number of visual features does not match the number of placeholder tokens.
    #[error("{features} visual feature rows for {placeholders} placeholder tokens")]
    FeatureCountMismatch {
        /// Placeholder tokens in the prompt.
        placeholders: usize,
        /// Rows produced by the vision tower.
        features: usize,
    },
    /// Rows of a batch (or of its attention mask) have different lengths.
    #[error("batch rows have different lengths")]
    RaggedBatch,
    /// A token id the prompt needs is not in the configuration.
    #[error("config.json does not define {0}")]
    MissingTokenId(&'static str),
    /// The prompt plus the tokens to generate exceed what the model supports.
    #[error("{tokens} tokens exceed the model's context of {max} positions")]
    ContextTooLong {
        /// Tokens (or positions) needed.
        tokens: usize,
        /// `max_position_embeddings`.
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The time axis of a video cannot be computed (a frame rate that is not a positive
    /// number, or one missing).
    #[error("video time positions: {0}")]
    InvalidVideoTime(String),
}

/// A decoder forward pass that could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The input does not fit the model (ragged batch, context too long, …).
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// A tensor the forward pass needs on the host (the MoE routing) could not be read back.
    #[error(transparent)]
    Device(#[from] echovlm_core::host::ReadBackError),
    /// Rows of two caches cannot be joined, or a row operation does not fit the cache
    /// (different layer shapes or storage, a row index out of range, …).
    #[error("key/value cache: {0}")]
    Cache(String),
}
