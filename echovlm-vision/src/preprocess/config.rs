//! [`PreprocessConfig`]: the settings of `preprocessor_config.json`, their validation and
//! their JSON form.

use std::path::Path;

#[cfg(doc)]
use super::PixelValues;
use crate::error::ImageError;

/// OpenAI-CLIP per-channel mean (RGB), used by Qwen2-VL's processor.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];

/// OpenAI-CLIP per-channel standard deviation (RGB), used by Qwen2-VL's processor.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Largest accepted `patch_size` (the bound `VisionConfig` puts on the vision tower's).
const MAX_PATCH_SIZE: usize = 1024;

/// Largest accepted `merge_size` and `temporal_patch_size` (the bounds `VisionConfig` puts on
/// the vision tower's).
const MAX_MERGE_SIZE: usize = 16;

/// transformers' `rescale_factor`, `1/255` as a Python float.
pub(super) const RESCALE_FACTOR: f64 = 1.0 / 255.0;

/// Settings of the Qwen2-VL image processor (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Lower bound on `height × width` after resizing.
    pub min_pixels: usize,
    /// Upper bound on `height × width` after resizing.
    pub max_pixels: usize,
    /// Side of a square ViT patch in pixels (14).
    pub patch_size: usize,
    /// Side of the square block of patches the merger folds into one token (2).
    pub merge_size: usize,
    /// Frames per temporal patch (2); a still image is repeated this many times.
    pub temporal_patch_size: usize,
    /// Per-channel mean subtracted after rescaling to `[0, 1]`.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub image_std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// The values of Qwen2-VL-7B-Instruct's `preprocessor_config.json` (and of
    /// `qwen_vl_utils`): 4–16384 merged tokens per image (`3136..=12845056` pixels), 14-pixel
    /// patches merged 2×2, 2 frames per temporal patch, CLIP mean and std.
    fn default() -> Self {
        Self {
            min_pixels: 4 * 28 * 28,
            max_pixels: 16384 * 28 * 28,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

impl PreprocessConfig {
    /// The recommended setting for ultrasound: the defaults with `max_pixels = 1280·28·28`
    /// (at most 1280 merged visual tokens per image).
    ///
    /// Ultrasound key frames are small, low-detail grayscale images, and EchoVLM was fine-tuned
    /// on small grids (its training code resizes with `max_pixels = 196·28·28`, see spec §5.9).
    /// Capping at 1280·28·28 ≈ 1.0 MP bounds memory and ViT time on unusually large inputs while
    /// keeping typical 800×600 frames at full detail (they resize to 588×812, below the cap).
    pub fn ultrasound() -> Self {
        Self {
            max_pixels: 1280 * 28 * 28,
            ..Self::default()
        }
    }

    /// `patch_size · merge_size`: both sides of a resized image are multiples of it (28).
    pub fn factor(&self) -> usize {
        self.patch_size.saturating_mul(self.merge_size)
    }

    /// Values in one row of [`PixelValues`]:
    /// `3 · temporal_patch_size · patch_size²` (1176).
    pub fn row_len(&self) -> usize {
        3usize
            .saturating_mul(self.temporal_patch_size)
            .saturating_mul(self.patch_size)
            .saturating_mul(self.patch_size)
    }

    /// Checks that the values describe a usable processor.
    ///
    /// # Errors
    /// [`ImageError::Config`] naming the first problem: a zero size, a patch, merge or temporal
    /// size above what any vision tower accepts (1024, 16, 16: larger values would make one
    /// small image into gigabytes of pixel values), `min_pixels > max_pixels`, a non-finite
    /// mean or a standard deviation that is not positive.
    pub fn validate(&self) -> Result<(), ImageError> {
        for (name, v) in [
            ("patch_size", self.patch_size),
            ("merge_size", self.merge_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("max_pixels", self.max_pixels),
        ] {
            if v == 0 {
                return Err(ImageError::config(format!(
                    "{name} must be positive, got 0"
                )));
            }
        }
        for (name, v, max) in [
            ("patch_size", self.patch_size, MAX_PATCH_SIZE),
            ("merge_size", self.merge_size, MAX_MERGE_SIZE),
            (
                "temporal_patch_size",
                self.temporal_patch_size,
                MAX_MERGE_SIZE,
            ),
        ] {
            if v > max {
                return Err(ImageError::config(format!(
                    "{name} = {v} is above the supported maximum of {max}"
                )));
            }
        }
        let row_len = self
            .patch_size
            .checked_mul(self.patch_size)
            .and_then(|p| p.checked_mul(self.temporal_patch_size))
            .and_then(|p| p.checked_mul(3));
        if self.patch_size.checked_mul(self.merge_size).is_none() || row_len.is_none() {
            return Err(ImageError::config("patch sizes are too large"));
        }
        if self.min_pixels > self.max_pixels {
            return Err(ImageError::config(format!(
                "min_pixels ({}) is larger than max_pixels ({})",
                self.min_pixels, self.max_pixels
            )));
        }
        for c in 0..3 {
            if !self.image_mean[c].is_finite() {
                return Err(ImageError::config(format!(
                    "image_mean[{c}] is not finite ({})",
                    self.image_mean[c]
                )));
            }
            if !(self.image_std[c].is_finite() && self.image_std[c] > 0.0) {
                return Err(ImageError::config(format!(
                    "image_std[{c}] must be positive and finite, got {}",
                    self.image_std[c]
                )));
            }
        }
        Ok(())
    }

    /// Reads the values of a parsed `preprocessor_config.json`.
    ///
    /// Keys `min_pixels`, `max_pixels`, `patch_size`, `merge_size`, `temporal_patch_size`,
    /// `image_mean` and `image_std` are read; missing keys take the [`Default`] values. When
    /// `min_pixels`/`max_pixels` are absent, `size.min_pixels`/`size.max_pixels` or (newer
    /// transformers) `size.shortest_edge`/`size.longest_edge` are used. Settings this port does
    /// not implement are refused rather than ignored: `do_resize`, `do_rescale` or
    /// `do_normalize` set to `false`, a `rescale_factor` other than 1/255, or a `resample`
    /// other than 3 (bicubic).
    ///
    /// # Errors
    /// [`ImageError::Config`] if the value is not an object, a key has the wrong type, or the
    /// result fails [`PreprocessConfig::validate`].
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ImageError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ImageError::config("expected a JSON object"))?;
        let size = obj.get("size").and_then(|s| s.as_object());
        let from_size = |keys: [&str; 2]| -> Result<Option<usize>, ImageError> {
            let Some(size) = size else { return Ok(None) };
            for k in keys {
                if let Some(v) = size.get(k) {
                    return json_usize(v, &format!("size.{k}")).map(Some);
                }
            }
            Ok(None)
        };
        let d = Self::default();
        let min_pixels = match obj.get("min_pixels") {
            Some(v) => json_usize(v, "min_pixels")?,
            None => from_size(["min_pixels", "shortest_edge"])?.unwrap_or(d.min_pixels),
        };
        let max_pixels = match obj.get("max_pixels") {
            Some(v) => json_usize(v, "max_pixels")?,
            None => from_size(["max_pixels", "longest_edge"])?.unwrap_or(d.max_pixels),
        };
        let get = |key: &str, default: usize| -> Result<usize, ImageError> {
            obj.get(key).map_or(Ok(default), |v| json_usize(v, key))
        };
        let cfg = Self {
            min_pixels,
            max_pixels,
            patch_size: get("patch_size", d.patch_size)?,
            merge_size: get("merge_size", d.merge_size)?,
            temporal_patch_size: get("temporal_patch_size", d.temporal_patch_size)?,
            image_mean: match obj.get("image_mean") {
                Some(v) => json_triple(v, "image_mean")?,
                None => d.image_mean,
            },
            image_std: match obj.get("image_std") {
                Some(v) => json_triple(v, "image_std")?,
                None => d.image_std,
            },
        };
        for key in ["do_resize", "do_rescale", "do_normalize"] {
            if let Some(v) = obj.get(key) {
                match v.as_bool() {
                    Some(true) => {}
                    Some(false) => {
                        return Err(ImageError::config(format!(
                            "{key} = false is not supported (Qwen2-VL always uses true)"
                        )));
                    }
                    None => return Err(ImageError::config(format!("{key} must be a boolean"))),
                }
            }
        }
        if let Some(v) = obj.get("rescale_factor") {
            let f = v
                .as_f64()
                .ok_or_else(|| ImageError::config("rescale_factor must be a number"))?;
            if (f - RESCALE_FACTOR).abs() > 1e-12 {
                return Err(ImageError::config(format!(
                    "rescale_factor {f} is not supported (only 1/255)"
                )));
            }
        }
        if let Some(v) = obj.get("resample")
            && v.as_u64() != Some(3)
        {
            return Err(ImageError::config(format!(
                "resample {v} is not supported (only 3 = bicubic)"
            )));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `preprocessor_config.json` (or a model directory holding one).
    ///
    /// # Errors
    /// [`ImageError::Io`] if the file cannot be read, [`ImageError::Config`] (naming the file)
    /// if it is not valid JSON or fails [`PreprocessConfig::from_json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("preprocessor_config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let with_path = |e: ImageError| match e {
            ImageError::Config { reason, .. } => ImageError::Config {
                path: Some(path.clone()),
                reason,
            },
            other => other,
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| with_path(ImageError::config(format!("not valid JSON: {e}"))))?;
        Self::from_json(&value).map_err(with_path)
    }
}

fn json_usize(v: &serde_json::Value, key: &str) -> Result<usize, ImageError> {
    let n = if let Some(n) = v.as_u64() {
        Some(n)
    } else {
        // Accept integral floats such as `12845056.0`.
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 2f64.powi(53))
            .map(|f| f as u64)
    };
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ImageError::config(format!("{key} must be a non-negative integer, got {v}")))
}

fn json_triple(v: &serde_json::Value, key: &str) -> Result<[f32; 3], ImageError> {
    let bad = || ImageError::config(format!("{key} must be an array of 3 numbers, got {v}"));
    let arr = v.as_array().ok_or_else(bad)?;
    if arr.len() != 3 {
        return Err(bad());
    }
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(arr) {
        // numpy builds the mean/std arrays in the image dtype (float32).
        *o = x.as_f64().ok_or_else(bad)? as f32;
    }
    Ok(out)
}
