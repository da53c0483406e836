//! Image loading and preprocessing, identical to what the reference Python stack produces:
//! `qwen_vl_utils` (loading, RGB conversion) followed by transformers'
//! `Qwen2VLImageProcessor` (`smart_resize`, Pillow bicubic resize, rescale, CLIP
//! normalisation, temporal duplication and patch flattening).
//!
//! The pipeline for one still image is
//!
//! 1. [`load_image`] / [`decode_image`]: PNG, JPEG, BMP or TIFF → 8-bit RGB;
//! 2. [`smart_resize`] with the configured `(min_pixels, max_pixels)` → target size, multiple of
//!    `patch_size · merge_size` (28) on both sides;
//! 3. [`resize`]: a bit-exact port of Pillow 13's `Image.resize(size, BICUBIC)` for 8-bit RGB;
//! 4. `x = (u8 · (1/255) − mean[c]) / std[c]` in `f32`, exactly as transformers computes it;
//! 5. the still is repeated to `temporal_patch_size` frames and cut into `[rows, 1176]` patch
//!    rows in the `(t, hb, wb, hm, wm)` × `(c, tp, py, px)` order the vision tower expects.
//!
//! [`preprocess_image`] runs steps 2–5, [`preprocess_video`] the same for a list of frames.
//!
//! The items live in one file per concept (settings, decoding, resizing, patch rows) and are
//! all public here, at `echovlm_vision::preprocess::*`.

mod config;
mod decode;
mod patchify;
mod resize;

pub use config::{CLIP_MEAN, CLIP_STD, PreprocessConfig};
pub use decode::{
    MAX_DECODER_ALLOC, MAX_IMAGE_PIXELS, decode_image, decoder_limits, load_image, to_rgb,
};
pub use patchify::{
    PixelValues, preprocess_image, preprocess_path, preprocess_video, preprocess_video_paths,
};
pub use resize::{MAX_ASPECT_RATIO, resize, resized_size, smart_resize};
