//! Qwen2-VL's vision half: image preprocessing identical to transformers'
//! `Qwen2VLImageProcessor`, the vision transformer and the 2×2 patch merger.
//!
//! Every public item has one path: the vision tower and its configuration at the crate root,
//! preprocessing under [`preprocess`], DICOM input under `dicom`, image errors under
//! [`error`].

#![warn(missing_docs)]

mod config;
pub mod error;
pub mod preprocess;
mod vit;

pub use config::VisionConfig;
pub use vit::{
    LayerNorm, PatchMerger, VisionAttention, VisionBlock, VisionError, VisionMlp, VisionModel,
};
#[cfg(feature = "dicom")]
pub mod dicom;
