//! Qwen2-VL's and Qwen2.5-VL's vision half: image preprocessing identical to transformers'
//! `Qwen2VLImageProcessor`, the vision transformer (with Qwen2.5-VL's window attention) and the
//! 2×2 patch merger.
//!
//! Every public item has one path: the vision tower, its configuration and
//! [`window_index`] at the crate root, preprocessing under [`preprocess`], DICOM input under
//! `dicom`, image errors under [`error`].

#![warn(missing_docs)]

mod config;
pub mod error;
pub mod preprocess;
mod vit;
mod window;

pub use config::{VisionAct, VisionArch, VisionConfig};
pub use vit::{
    LayerNorm, PatchMerger, VisionAttention, VisionBlock, VisionError, VisionMlp, VisionModel,
    VisionNorm,
};
pub use window::window_index;
#[cfg(feature = "dicom")]
pub mod dicom;
