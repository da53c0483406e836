//! Qwen2-VL's vision half: image preprocessing identical to transformers'
//! `Qwen2VLImageProcessor`, the vision transformer and the 2×2 patch merger.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod preprocess;
pub mod vit;

pub use config::VisionConfig;
pub use vit::{PatchMerger, VisionBlock, VisionError, VisionModel};
#[cfg(feature = "dicom")]
pub mod dicom;
