//! The one error type of the pipeline.

use echovlm_core::LoadError;
use echovlm_text::{ForwardError, PromptError, TokenizerError};
use echovlm_vision::VisionError;
use echovlm_vision::error::ImageError;

/// Everything that can go wrong between a model directory and a generated report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EchoError {
    /// The checkpoint, its configuration or another model file could not be used.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The tokenizer could not be loaded or run.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// An image could not be read or preprocessed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The prompt does not fit the images or the model.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The vision tower was given inconsistent inputs.
    #[error(transparent)]
    Vision(#[from] VisionError),
    /// The chat template is missing, does not compile or failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// The model files disagree with each other (a special token id in config.json that the
    /// tokenizer gives another id, say).
    #[error("inconsistent model files: {0}")]
    Inconsistent(String),
    /// A request or generation setting is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The device failed to run the model or to return a result to the host.
    #[error("device failure: {0}")]
    Device(String),
    /// A prompt prepared by hand (a [`PreparedPrompt`](crate::PreparedPrompt) not made by
    /// `EchoVlm::prepare`) whose token ids and pixel values do not fit together or the model.
    #[error("inconsistent prepared prompt: {0}")]
    InvalidPrompt(String),
    /// The model has no vision tower but the request has images.
    #[error("this checkpoint has no vision tower; it cannot take images")]
    NoVision,
    /// `HF_HUB_OFFLINE` is set and the hub checkpoint is not (completely) in the cache.
    #[error(
        "{id}: HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache {}; \
         download it once without HF_HUB_OFFLINE",
        cache.display()
    )]
    HubOffline {
        /// The hub id, `org/name[@revision]`.
        id: String,
        /// The cache directory that was searched.
        cache: std::path::PathBuf,
    },
    /// The hub does not know the repository or revision (or will not show it without a token).
    #[error(
        "{id}: no such model repository or revision on the hub (HTTP {status}); private or \
         gated repositories need HF_TOKEN"
    )]
    HubNotFound {
        /// The hub id, `org/name[@revision]`.
        id: String,
        /// The HTTP status the hub answered (401, 403 or 404).
        status: u16,
    },
    /// Downloading a hub checkpoint failed.
    #[error("{id}: {message}")]
    Hub {
        /// The hub id, `org/name[@revision]`.
        id: String,
        /// What failed.
        message: String,
    },
}

impl From<ForwardError> for EchoError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Prompt(p) => EchoError::Prompt(p),
            other => EchoError::Device(other.to_string()),
        }
    }
}
