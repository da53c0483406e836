//! Errors shared by every EchoVLM crate that reads a checkpoint.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while opening a checkpoint or turning its tensors into modules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file is truncated, corrupt or has an invalid header.
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `model.safetensors.index.json` is malformed or names a shard that cannot be used.
    #[error("invalid shard index {path}: {reason}")]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory holds no safetensors weights at all.
    #[error("no model.safetensors or model.safetensors.index.json in {0}")]
    NoWeights(PathBuf),
    /// A tensor name appears in more than one shard.
    #[error("tensor {key} is stored twice ({first} and {second})")]
    DuplicateTensor {
        /// The tensor name (in the canonical `visual.*` / `model.*` layout).
        key: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it.
        second: PathBuf,
    },
    /// `config.json` is missing a field, has a value of the wrong type, or values that cannot
    /// describe a model.
    #[error("invalid config {path}: {reason}")]
    Config {
        /// The configuration file (or a description of where the values came from).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's tensors do not match the model described by the configuration.
    #[error("{0}")]
    Tensors(TensorProblems),
}

impl LoadError {
    /// Builds a [`LoadError::Config`].
    pub fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LoadError::Config {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// One problem found with one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TensorProblem {
    /// The model needs this tensor and the checkpoint does not have it.
    Missing {
        /// Tensor name.
        key: String,
    },
    /// The checkpoint has this tensor and the model has no place for it.
    Unexpected {
        /// Tensor name.
        key: String,
    },
    /// The tensor exists with another shape.
    Shape {
        /// Tensor name.
        key: String,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// Shape in the checkpoint.
        found: Vec<usize>,
    },
    /// The tensor is stored in a type the module cannot take (an integer where a float belongs,
    /// say).
    Dtype {
        /// Tensor name.
        key: String,
        /// What the module accepts.
        expected: String,
        /// Storage type found.
        found: String,
    },
    /// The tensor could not be packed for the CPU kernels.
    Packing {
        /// Tensor name.
        key: String,
        /// Why.
        error: crate::cpu::CpuError,
    },
}

impl TensorProblem {
    /// The tensor this problem is about.
    pub fn key(&self) -> &str {
        match self {
            TensorProblem::Missing { key }
            | TensorProblem::Unexpected { key }
            | TensorProblem::Shape { key, .. }
            | TensorProblem::Dtype { key, .. }
            | TensorProblem::Packing { key, .. } => key,
        }
    }
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorProblem::Missing { key } => write!(f, "missing tensor {key}"),
            TensorProblem::Unexpected { key } => write!(f, "unexpected tensor {key}"),
            TensorProblem::Shape {
                key,
                expected,
                found,
            } => write!(f, "tensor {key} has shape {found:?}, expected {expected:?}"),
            TensorProblem::Dtype {
                key,
                expected,
                found,
            } => write!(f, "tensor {key} is stored as {found}, expected {expected}"),
            TensorProblem::Packing { key, error } => {
                write!(f, "tensor {key} cannot be packed for the CPU: {error}")
            }
        }
    }
}

/// All tensor problems found while loading a checkpoint, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorProblems(pub Vec<TensorProblem>);

impl TensorProblems {
    /// The problems, in the order they were found.
    pub fn problems(&self) -> &[TensorProblem] {
        &self.0
    }
}

impl fmt::Display for TensorProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint does not match the model ({} problem{}): ",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
