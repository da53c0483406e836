//! Pieces every EchoVLM crate shares: typed loading errors, memory-mapped safetensors
//! checkpoints with strict two-pass loading, and the linear and normalisation layers.
//!
//! It exists so that the vision, MoE and text crates load weights and run their projections in
//! exactly one way.
//!
//! Every public item has one path: loading ([`Checkpoint`], [`load`], [`WeightLoader`], the
//! errors) and the layers ([`Linear`], [`RmsNorm`]) at the crate root; the CPU kernels under
//! [`cpu`], backend-specific choices under [`backend`], host transfers under [`host`], the rotary
//! embedding helpers under [`rope`], and (with `wgpu` or `cuda`) GPU kernel-launch counts under
//! `launches` and where compiled kernels persist under `kernel_cache`.
//!
//! # Loading
//!
//! Module constructors take a [`WeightLoader`] and ask it for tensors by canonical name and
//! expected shape. [`load`] runs the constructor twice: first in a validation pass that reads
//! only headers and collects every missing, unexpected, wrong-shape and wrong-dtype tensor, then
//! (only if nothing is wrong) in the loading pass that converts one tensor at a time straight
//! from the memory map into device memory. A bad checkpoint therefore fails before any large
//! allocation, with one error that lists every problem, and a good one never exists twice in
//! memory.

#![warn(missing_docs)]

pub mod backend;
mod checkpoint;
pub mod cpu;
mod error;
pub mod host;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod kernel_cache;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod launches;
mod linear;
mod loader;
mod norm;
pub mod rope;

pub use checkpoint::{
    Checkpoint, INDEX_FILE, SINGLE_FILE, StorageDtype, TensorEntry, canonical_name,
};
pub use error::{LoadError, TensorProblem, TensorProblems};
pub use linear::{Linear, LinearOptions, LinearWeight, LoraAdapter};
pub use loader::{WeightLoader, load, load_counted};
pub use norm::RmsNorm;

/// Re-export of the Burn version every EchoVLM crate is built on.
pub use burn;
