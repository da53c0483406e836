//! Pieces every EchoVLM crate shares: typed loading errors, memory-mapped safetensors
//! checkpoints with strict two-pass loading, and the linear and normalisation layers.
//!
//! It exists so that the vision, MoE and text crates load weights and run their projections in
//! exactly one way.

#![warn(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod error;
pub mod host;
pub mod linear;
pub mod loader;
pub mod norm;

pub use checkpoint::{Checkpoint, StorageDtype, TensorEntry};
pub use cpu::{PackedWeight, WeightFormat};
pub use error::{LoadError, TensorProblem, TensorProblems};
pub use linear::{Linear, LinearOptions, LinearWeight};
pub use loader::{WeightLoader, load, load_counted};
pub use norm::RmsNorm;

/// Re-export of the Burn version every EchoVLM crate is built on.
pub use burn;
