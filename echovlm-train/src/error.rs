//! Errors of fine-tuning.

use std::path::PathBuf;

use echovlm_pipeline::EchoError;

/// What can go wrong while fine-tuning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The model refused an input (a prompt, an image, a context too long, ...).
    #[error(transparent)]
    Model(#[from] EchoError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A safetensors file could not be read or written.
    #[error("{path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON file (training state, adapter configuration, data) is not what it should be.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The training settings do not fit the model (no trainable tensor, an unknown LoRA
    /// target, a weight that is not a tensor, ...).
    #[error("invalid training setup: {0}")]
    Setup(String),
    /// A sample cannot be trained on (no answer tokens, a bad record, ...).
    #[error("sample {index}: {reason}")]
    Sample {
        /// Position of the sample in its data set.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved training state does not match the run it is resumed into.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The checkpoint directory.
        path: PathBuf,
        /// The mismatch.
        reason: String,
    },
    /// The loss or the gradients are not finite.
    #[error("the loss is not finite at step {step} ({loss})")]
    NotFinite {
        /// The optimizer step.
        step: usize,
        /// The loss.
        loss: f32,
    },
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    ReadBack(#[from] echovlm_core::host::ReadBackError),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
