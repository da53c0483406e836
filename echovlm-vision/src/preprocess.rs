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

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::ImageError;

/// Largest `width × height` an image may declare; larger images are refused from their header,
/// before any pixel buffer is allocated (decompression-bomb guard). 16384² pixels is 768 MiB as
/// 8-bit RGB, far above any ultrasound frame.
pub const MAX_IMAGE_PIXELS: u64 = 16384 * 16384;

/// Memory the decoder may allocate at once ([`image::Limits::max_alloc`]): enough for the
/// largest accepted image in the widest pixel format the decoders produce (16-bit RGBA, 8 bytes
/// per pixel).
pub const MAX_DECODER_ALLOC: u64 = MAX_IMAGE_PIXELS * 8;

/// Largest accepted ratio between the longer and the shorter side (`MAX_RATIO` of
/// `qwen_vl_utils` and transformers' `smart_resize`).
pub const MAX_ASPECT_RATIO: usize = 200;

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
const RESCALE_FACTOR: f64 = 1.0 / 255.0;

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

    /// Values in one row of [`PixelValues`]: `3 · temporal_patch_size · patch_size²` (1176).
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

// ---------------------------------------------------------------------------------------------
// smart_resize
// ---------------------------------------------------------------------------------------------

/// The target `(height, width)` of Qwen2-VL's `smart_resize`, computed exactly as
/// `qwen_vl_utils` does (which agrees with transformers' copy on every input transformers
/// accepts):
///
/// 1. `max(h, w) / min(h, w) > 200` → [`ImageError::AspectRatio`];
/// 2. `h̄ = max(factor, round(h / factor) · factor)` (same for `w̄`), with Python's
///    round-half-to-even (`70 / 28 = 2.5 → 2`);
/// 3. if `h̄ · w̄ > max_pixels`: `β = √(h·w / max_pixels)`, `h̄ = ⌊h / β / factor⌋ · factor`;
/// 4. else if `h̄ · w̄ < min_pixels`: `β = √(min_pixels / (h·w))`, `h̄ = ⌈h · β / factor⌉ · factor`.
///
/// All arithmetic is in `f64`, like Python's. In step 3 the result is additionally kept at
/// least `factor` (as newer `qwen_vl_utils` versions do), which only matters when
/// `max_pixels` is too small for the aspect ratio and would otherwise give a zero side.
///
/// # Errors
/// [`ImageError::ZeroSize`] for a zero side, [`ImageError::AspectRatio`] above 200,
/// [`ImageError::Config`] for `factor == 0`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::ZeroSize { height, width });
    }
    if factor == 0 {
        return Err(ImageError::config("smart_resize factor must be positive"));
    }
    let (long, short) = (height.max(width), height.min(width));
    // `long / short > 200` in exact arithmetic (Python's true division of these integers is
    // correctly rounded, so it cannot disagree with the exact comparison here).
    if long as u128 > short as u128 * MAX_ASPECT_RATIO as u128 {
        return Err(ImageError::AspectRatio { height, width });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let round_by_factor = |x: f64| ((x / f).round_ties_even() * f) as usize;
    let floor_by_factor = |x: f64| ((x / f).floor() * f) as usize;
    let ceil_by_factor = |x: f64| ((x / f).ceil() * f) as usize;
    let mut h_bar = factor.max(round_by_factor(h));
    let mut w_bar = factor.max(round_by_factor(w));
    let area = (h_bar as u128) * (w_bar as u128);
    // `height * width` as Python computes it: an exact integer, then true division.
    let hw = (height as u128 * width as u128) as f64;
    if area > max_pixels as u128 {
        let beta = (hw / max_pixels as f64).sqrt();
        h_bar = factor.max(floor_by_factor(h / beta));
        w_bar = factor.max(floor_by_factor(w / beta));
    } else if area < min_pixels as u128 {
        let beta = (min_pixels as f64 / hw).sqrt();
        h_bar = ceil_by_factor(h * beta);
        w_bar = ceil_by_factor(w * beta);
    }
    Ok((h_bar, w_bar))
}

/// [`smart_resize`] with the factor and pixel bounds of `cfg`.
///
/// # Errors
/// As [`smart_resize`], plus [`ImageError::Config`] if `cfg` is invalid.
pub fn resized_size(
    height: usize,
    width: usize,
    cfg: &PreprocessConfig,
) -> Result<(usize, usize), ImageError> {
    cfg.validate()?;
    smart_resize(height, width, cfg.factor(), cfg.min_pixels, cfg.max_pixels)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// The [`image::Limits`] every decode runs under (see [`MAX_DECODER_ALLOC`]).
pub fn decoder_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    limits
}

/// Reads an image file (PNG, JPEG, BMP or TIFF, recognised from its content) as 8-bit RGB.
///
/// Conversion to RGB follows `qwen_vl_utils` on Pillow, bit for bit (see [`to_rgb`]): only
/// images Pillow opens as RGBA (RGBA PNG/TIFF, 16-bit gray+alpha PNG, BMP with an alpha mask)
/// are composited onto white; the transparency of gray+alpha (8-bit), palette or colour-key
/// (`tRNS`) images is dropped, as `convert("RGB")` drops it; 16-bit colour samples keep their
/// high byte and 16-bit grayscale is rounded to `(v + 128) / 257`. The EXIF orientation and
/// ICC profiles are ignored, as they are by `Image.open(...).convert("RGB")`.
///
/// PNG, BMP and TIFF decode bit-identically to Pillow. JPEG is decoded by `zune-jpeg`, not
/// libjpeg-turbo: grayscale JPEGs come within one level of Pillow (≈1 % of pixels differ),
/// colour JPEGs differ by up to a few levels (YCbCr conversion, and chroma upsampling when
/// subsampled).
///
/// # Errors
/// [`ImageError::Io`] if the file cannot be opened, [`ImageError::Empty`] for a 0-byte file,
/// [`ImageError::TooLarge`] if the header declares more than [`MAX_IMAGE_PIXELS`] pixels
/// (checked before pixels are decoded), [`ImageError::ZeroSize`] for a 0-pixel image and
/// [`ImageError::Decode`] for an unknown format or truncated / corrupt data (a JPEG without
/// its end-of-image marker counts as truncated, as in Pillow). Every error names the file.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, Some(path))
}

/// Decodes an in-memory image file (PNG, JPEG, BMP or TIFF) as 8-bit RGB, with the same
/// conversions and guards as [`load_image`].
///
/// # Errors
/// As [`load_image`], without a path in the error.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_bytes(bytes, None)
}

fn decode_bytes(bytes: &[u8], path: Option<&Path>) -> Result<RgbImage, ImageError> {
    let owned = || path.map(Path::to_path_buf);
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: owned() });
    }
    let decode_err = |reason: String| ImageError::Decode {
        path: owned(),
        reason,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(format!("cannot read the header: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Bmp | image::ImageFormat::Tiff) => {}
        Some(image::ImageFormat::Jpeg) => {
            // The JPEG decoder fills a truncated scan with grey and succeeds; Pillow refuses
            // such files ("image file is truncated"), so refuse them too.
            if !jpeg_is_complete(bytes) {
                return Err(decode_err(
                    "JPEG data is truncated (the end-of-image marker is missing)".into(),
                ));
            }
        }
        Some(other) => {
            return Err(decode_err(format!(
                "{other:?} images are not supported (PNG, JPEG, BMP and TIFF are)"
            )));
        }
        None => {
            return Err(decode_err(
                "not a recognised image format (PNG, JPEG, BMP and TIFF are supported)".into(),
            ));
        }
    }
    reader.limits(decoder_limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| decode_err(describe(&e)))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageError::TooLarge {
            path: owned(),
            width: width.into(),
            height: height.into(),
            limit: MAX_IMAGE_PIXELS,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            height: height as usize,
            width: width as usize,
        });
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(describe(&e)))?;
    let img = if png_without_alpha_channel(bytes) {
        drop_alpha(img)
    } else {
        img
    };
    Ok(to_rgb(img))
}

/// Whether a JPEG stream's marker structure reaches the end-of-image marker: segments
/// (including an EXIF thumbnail inside APP1) are skipped by their length, entropy-coded data
/// up to the next marker that is not a stuffed byte or a restart marker.
fn jpeg_is_complete(data: &[u8]) -> bool {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Next 0xFF (libjpeg also skips stray bytes before a marker, with a warning).
        let Some(off) = data
            .get(i..)
            .and_then(|d| d.iter().position(|&b| b == 0xFF))
        else {
            return false;
        };
        let mut j = i + off + 1;
        while data.get(j) == Some(&0xFF) {
            j += 1;
        }
        let Some(&marker) = data.get(j) else {
            return false;
        };
        i = j + 1;
        match marker {
            0xD9 => return true,
            // stuffed 0xFF in scan data, TEM, restart markers, SOI: no payload
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(len) = data.get(i..i + 2) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 || i + len > data.len() {
                    return false;
                }
                i += len;
            }
        }
    }
}

fn describe(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => {
            format!("the decoder would exceed its memory limit of {MAX_DECODER_ALLOC} bytes ({l})")
        }
        other => other.to_string(),
    }
}

/// 16-bit sample to 8 bits with rounding, `round(v · 255 / 65535)`.
fn to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

/// 16-bit sample to 8 bits as Pillow unpacks 16-bit RGB, RGBA and gray+alpha: the most
/// significant byte.
fn msb(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Pillow's `DIV255`: `v / 255` rounded, for `v ≤ 255 · 255`.
fn div255(v: u32) -> u32 {
    let t = v + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's `paste(img, mask=alpha)` of one channel onto white (`paste_mask_L`'s
/// `BLEND(mask, out, in) = DIV255(out · (255 − mask) + in · mask)` with `out = 255`).
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    div255(255 * (255 - a) + c * a) as u8
}

/// Builds an RGB image from one `[r, g, b]` per source pixel, in row-major order.
fn rgb_from<I: Iterator<Item = [u8; 3]>>(width: u32, height: u32, pixels: I) -> RgbImage {
    let mut raw = Vec::with_capacity(width as usize * height as usize * 3);
    for p in pixels {
        raw.extend_from_slice(&p);
    }
    RgbImage::from_raw(width, height, raw).expect("one RGB triple per pixel")
}

/// Converts a decoded image to 8-bit RGB exactly as the reference loading does
/// (`qwen_vl_utils.to_rgb` on Pillow 13, plus the 16-bit grayscale rule of
/// `tools/make_fixtures.py`), taking each [`DynamicImage`] variant for the Pillow mode it
/// corresponds to:
///
/// * **RGBA** (`Rgba8`, `Rgba16`) is composited onto white like
///   `Image.new("RGB", size, (255, 255, 255)).paste(img, mask=alpha)`: per channel
///   `DIV255(255 · (255 − a) + c · a)` with Pillow's integer `DIV255` (bit-identical for all
///   256 × 256 `(c, a)` pairs);
/// * **gray + alpha** `La8` is Pillow's `LA`, which `qwen_vl_utils` passes to
///   `convert("RGB")`: the alpha channel is **dropped** (not composited) and the gray value
///   replicated;
/// * `La16` is composited like RGBA, because Pillow opens a 16-bit gray+alpha PNG as `RGBA`;
/// * 16-bit RGB, RGBA and gray+alpha samples keep their most significant byte (`v >> 8`), as
///   Pillow unpacks them; 16-bit grayscale (`L16`, Pillow's `I;16`) is rounded to
///   `(v + 128) / 257` instead (Pillow's own `convert("RGB")` would clip every value above 255
///   to white; the reference tools round);
/// * grayscale is replicated to three channels, RGB is returned as is;
/// * floating-point images (which Pillow cannot open as colour) go through
///   [`DynamicImage::to_rgba8`] and are then composited like RGBA when they have alpha, or
///   through [`DynamicImage::to_rgb8`] otherwise.
///
/// **Transparency without an alpha channel.** Pillow opens a palette PNG with a `tRNS` chunk
/// as mode `P`, and gray or RGB PNGs with a `tRNS` colour key as `L` / `I;16` / `RGB`; the
/// reference converts all of them with `convert("RGB")`, which ignores the transparency. The
/// `image` crate instead expands `tRNS` into an alpha channel while decoding (a palette PNG
/// with `tRNS` arrives here as `Rgba8`), so this function alone cannot tell such an image
/// from a true RGBA one. [`load_image`] and [`decode_image`] read the PNG colour type and
/// drop the expanded alpha before calling `to_rgb`, so files match the reference; callers
/// decoding images themselves must do the same to match it.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => rgb_from(w, h, i.pixels().map(|p| [p.0[0]; 3])),
        DynamicImage::ImageLuma16(i) => rgb_from(w, h, i.pixels().map(|p| [to_u8(p.0[0]); 3])),
        DynamicImage::ImageRgb16(i) => rgb_from(w, h, i.pixels().map(|p| p.0.map(msb))),
        DynamicImage::ImageLumaA8(i) => rgb_from(w, h, i.pixels().map(|p| [p.0[0]; 3])),
        DynamicImage::ImageLumaA16(i) => rgb_from(
            w,
            h,
            i.pixels()
                .map(|p| [over_white(msb(p.0[0]), msb(p.0[1])); 3]),
        ),
        DynamicImage::ImageRgba8(i) => rgb_from(
            w,
            h,
            i.pixels().map(|p| {
                let [r, g, b, a] = p.0;
                [over_white(r, a), over_white(g, a), over_white(b, a)]
            }),
        ),
        DynamicImage::ImageRgba16(i) => rgb_from(
            w,
            h,
            i.pixels().map(|p| {
                let [r, g, b, a] = p.0.map(msb);
                [over_white(r, a), over_white(g, a), over_white(b, a)]
            }),
        ),
        other if other.color().has_alpha() => {
            let i = other.to_rgba8();
            rgb_from(
                w,
                h,
                i.pixels().map(|p| {
                    let [r, g, b, a] = p.0;
                    [over_white(r, a), over_white(g, a), over_white(b, a)]
                }),
            )
        }
        other => other.to_rgb8(),
    }
}

/// Whether `bytes` is a PNG whose colour type has no alpha channel (gray, RGB or palette):
/// any alpha the decoder produced for it was expanded from a `tRNS` chunk, which Pillow
/// keeps out of the pixels (see [`to_rgb`]).
fn png_without_alpha_channel(bytes: &[u8]) -> bool {
    // signature (8), IHDR length (4) and type (4), width, height, bit depth, colour type
    bytes.get(12..16) == Some(b"IHDR".as_slice()) && matches!(bytes.get(25), Some(0 | 2 | 3))
}

/// Drops the alpha channel of an image (the samples are kept as they are).
fn drop_alpha(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLumaA8(i) => DynamicImage::ImageLuma8(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| image::Luma([i.get_pixel(x, y).0[0]]),
        )),
        DynamicImage::ImageLumaA16(i) => DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| image::Luma([i.get_pixel(x, y).0[0]]),
        )),
        DynamicImage::ImageRgba8(i) => DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| {
                let [r, g, b, _] = i.get_pixel(x, y).0;
                image::Rgb([r, g, b])
            },
        )),
        DynamicImage::ImageRgba16(i) => DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| {
                let [r, g, b, _] = i.get_pixel(x, y).0;
                image::Rgb([r, g, b])
            },
        )),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Pillow bicubic resize
// ---------------------------------------------------------------------------------------------

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel, `a = -0.5`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter taps of one axis: for output index `i`, input `start[i]..start[i] + len[i]` weighted
/// by `weights[i * ksize..]`, as Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`.
struct Taps {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's `(int)` truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..xx * ksize + n];
            for (dst, &kx) in row.iter_mut().zip(&k[..n]) {
                let w = if ww != 0.0 { kx / ww } else { kx };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *dst = if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            start.push(xmin);
            len.push(n);
        }
        Self {
            ksize,
            start,
            len,
            weights,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.ksize..i * self.ksize + self.len[i]];
        (self.start[i], w)
    }
}

/// Pillow's `clip8`: the fixed-point sum to a byte.
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Resizes to `height × width` exactly like Pillow 13's `Image.resize((width, height),
/// Image.BICUBIC)` on an 8-bit RGB image, which is what transformers' processor calls.
///
/// This is a port of Pillow's `Resample.c`: Catmull-Rom kernel (`a = -0.5`) whose support is
/// widened by the scale factor when downsampling (antialiasing), weights normalised per output
/// pixel and rounded to 22-bit fixed point, and two separable passes through an 8-bit
/// intermediate. A pass whose size is unchanged is skipped, and a same-size resize is a copy.
/// The order of the passes is Pillow 13's (`ImagingResampleInner`): horizontal then
/// vertical, except when the height shrinks by more than twice as many pixels as the width
/// does (`in_h − out_h > 0` and `in_h − out_h > 2 · (in_w − out_w)`, e.g. 1000×120 →
/// 1008×112 or 23×300 → 6×75), where the vertical pass runs first. The rounding of the 8-bit
/// intermediate makes the order visible: the other order differs from Pillow by up to 16
/// levels there. (Pillow 12 and older always run the horizontal pass first; the reference is
/// Pillow 13.) In the horizontal-first order only the source rows the vertical pass reads are
/// resampled, as in Pillow. The output is
/// bit-identical to Pillow 13's.
///
/// (`fast_image_resize` 6.1's `Convolution(CatmullRom)` is not bit-identical: on the test
/// fixtures 13–22 % of its output values differ from Pillow's, by up to 8 levels, with or
/// without SIMD; it follows Pillow-SIMD's 16-bit coefficients and differs in rounding and
/// clipping of the intermediate.)
///
/// A zero `height` or `width` gives an empty image.
///
/// # Panics
/// If `height` or `width` exceeds `u32::MAX`, or the output would not fit in memory; sizes
/// from [`smart_resize`] within [`MAX_IMAGE_PIXELS`] never do ([`preprocess_image`] checks).
pub fn resize(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let out_w = u32::try_from(width).expect("resize: width exceeds u32::MAX");
    let out_h = u32::try_from(height).expect("resize: height exceeds u32::MAX");
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(out_w, out_h);
    }
    let src = img.as_raw();
    let vert = Taps::new(in_h, height);
    // Pillow 13: "if height is being scaled down more than twice the amount the width is, run
    // the vertical pass first" (amounts in pixels).
    let shrink_h = in_h as i64 - height as i64;
    let vertical_first = shrink_h > 0 && shrink_h > (in_w as i64 - width as i64) * 2;
    let out = if !vertical_first {
        // Horizontal first, over the source rows first..last the vertical pass reads.
        let first = vert.start[0];
        let last = vert.start[height - 1] + vert.len[height - 1];
        if width == in_w {
            vertical_pass(src, in_w, &vert, 0)
        } else {
            let rows = &src[first * in_w * 3..last * in_w * 3];
            let mid = horizontal_pass(rows, in_w, &Taps::new(in_w, width));
            if height == in_h {
                // `first..last` covers every row
                mid
            } else {
                vertical_pass(&mid, width, &vert, first)
            }
        }
    } else {
        // Vertical first.
        let mid = vertical_pass(src, in_w, &vert, 0);
        if width == in_w {
            mid
        } else {
            horizontal_pass(&mid, in_w, &Taps::new(in_w, width))
        }
    };
    RgbImage::from_raw(out_w, out_h, out).expect("buffer of the requested size")
}

/// Pillow's `ImagingResampleHorizontal_8bpc` on RGB rows of `in_w` pixels.
fn horizontal_pass(src: &[u8], in_w: usize, taps: &Taps) -> Vec<u8> {
    let width = taps.start.len();
    let rows = src.len() / (in_w * 3);
    let mut out = vec![0u8; rows * width * 3];
    for (in_row, out_row) in src
        .chunks_exact(in_w * 3)
        .zip(out.chunks_exact_mut(width * 3))
    {
        for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = taps.of(xx);
            let mut ss = [HALF; 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &in_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for c in 0..3 {
                    ss[c] += i64::from(p[c]) * i64::from(kx);
                }
            }
            for c in 0..3 {
                out_px[c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc` on RGB rows of `width` pixels; `src` starts at
/// source row `row0`.
fn vertical_pass(src: &[u8], width: usize, taps: &Taps, row0: usize) -> Vec<u8> {
    let stride = width * 3;
    let height = taps.start.len();
    let mut out = vec![0u8; height * stride];
    let mut ss = vec![0i64; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = taps.of(yy);
        ss.fill(HALF);
        for (y, &ky) in k.iter().enumerate() {
            let r = ymin + y - row0;
            let in_row = &src[r * stride..(r + 1) * stride];
            for (s, &v) in ss.iter_mut().zip(in_row) {
                *s += i64::from(v) * i64::from(ky);
            }
        }
        for (o, &s) in out_row.iter_mut().zip(&ss) {
            *o = clip8(s);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pixel values
// ---------------------------------------------------------------------------------------------

/// The processor's output for one image or video: what transformers returns as
/// `pixel_values` (`pixel_values_videos`) and `image_grid_thw` (`video_grid_thw`).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `[rows, 3 · temporal_patch_size · patch_size²]` row-major (`[rows, 1176]` for
    /// Qwen2-VL). Inside a row values are in `(c, t, py, px)` order; rows are in
    /// `(t, hb, wb, hm, wm)` order, so every `merge_size²` consecutive rows form one merged
    /// token's square block of patches.
    pub data: Vec<f32>,
    /// Number of patch rows, `grid_t · grid_h · grid_w`.
    pub rows: usize,
    /// `(grid_t, grid_h, grid_w)`: temporal patches and patches per column / row.
    pub grid_thw: [usize; 3],
}

impl PixelValues {
    /// Values per row (1176 for Qwen2-VL).
    pub fn cols(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }

    /// Visual tokens after the `merge_size × merge_size` patch merger:
    /// `rows / merge_size²`.
    pub fn merged_tokens(&self, merge_size: usize) -> usize {
        self.rows
            .checked_div(merge_size.saturating_mul(merge_size))
            .unwrap_or(0)
    }
}

/// Per channel, the normalised value of each 8-bit level, computed like transformers:
/// `rescale` in `f64` then cast to `f32`, `normalize` in `f32`.
fn level_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = (v as f64 * RESCALE_FACTOR) as f32;
            *out = (x - cfg.image_mean[c]) / cfg.image_std[c];
        }
    }
    lut
}

/// Resized frames (all `height × width`) → patch rows; `frames.len()` is a multiple of
/// `temporal_patch_size`.
fn patchify(frames: &[&RgbImage], cfg: &PreprocessConfig) -> PixelValues {
    let (p, m, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let height = frames[0].height() as usize;
    let width = frames[0].width() as usize;
    let (grid_t, grid_h, grid_w) = (frames.len() / tp, height / p, width / p);
    let rows = grid_t * grid_h * grid_w;
    let cols = 3 * tp * p * p;
    let lut = level_table(cfg);
    let mut data = Vec::with_capacity(rows * cols);
    for t in 0..grid_t {
        let group = &frames[t * tp..(t + 1) * tp];
        for hb in 0..grid_h / m {
            for wb in 0..grid_w / m {
                for hm in 0..m {
                    for wm in 0..m {
                        let y0 = (hb * m + hm) * p;
                        let x0 = (wb * m + wm) * p;
                        for (c, table) in lut.iter().enumerate() {
                            for frame in group {
                                let raw = frame.as_raw();
                                for py in 0..p {
                                    let base = ((y0 + py) * width + x0) * 3 + c;
                                    data.extend(
                                        (0..p).map(|px| table[usize::from(raw[base + px * 3])]),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    debug_assert_eq!(data.len(), rows * cols);
    PixelValues {
        data,
        rows,
        grid_thw: [grid_t, grid_h, grid_w],
    }
}

/// The target size of `img` under `cfg`, refusing sizes above [`MAX_IMAGE_PIXELS`].
fn target_size(
    height: usize,
    width: usize,
    cfg: &PreprocessConfig,
) -> Result<(usize, usize), ImageError> {
    let (h, w) = resized_size(height, width, cfg)?;
    if (h as u128) * (w as u128) > u128::from(MAX_IMAGE_PIXELS) {
        return Err(ImageError::TooLarge {
            path: None,
            width: w as u64,
            height: h as u64,
            limit: MAX_IMAGE_PIXELS,
        });
    }
    Ok((h, w))
}

/// Turns one still image into the processor's patch rows: [`smart_resize`] with `cfg`,
/// Pillow-exact bicubic [`resize`], rescale and normalise, repeat the still to
/// `temporal_patch_size` frames, cut into patches. `grid_thw = (1, H / 14, W / 14)`.
///
/// # Errors
/// [`ImageError::Config`] for an invalid `cfg`, [`ImageError::ZeroSize`] for an empty image,
/// [`ImageError::AspectRatio`] for a ratio above 200, [`ImageError::TooLarge`] if the
/// configured bounds would resize beyond [`MAX_IMAGE_PIXELS`].
pub fn preprocess_image(img: &RgbImage, cfg: &PreprocessConfig) -> Result<PixelValues, ImageError> {
    let (h, w) = target_size(img.height() as usize, img.width() as usize, cfg)?;
    let resized = resize(img, h, w);
    let frames = vec![&resized; cfg.temporal_patch_size];
    Ok(patchify(&frames, cfg))
}

/// Turns the frames of a video (e.g. an ultrasound cine loop) into the processor's patch
/// rows, as transformers' video path does: every frame is resized to the [`smart_resize`] of
/// the first frame's size, frames are grouped in `temporal_patch_size` consecutive frames and
/// a count that is not a multiple of it is padded by repeating the last frame.
/// `grid_t = ⌈n / temporal_patch_size⌉`.
///
/// # Errors
/// [`ImageError::NoFrames`] for an empty list, [`ImageError::FrameSizeMismatch`] if the frames
/// differ in size, and the errors of [`preprocess_image`].
pub fn preprocess_video(
    frames: &[RgbImage],
    cfg: &PreprocessConfig,
) -> Result<PixelValues, ImageError> {
    let first = frames.first().ok_or(ImageError::NoFrames)?;
    let expected = (first.height() as usize, first.width() as usize);
    for (index, f) in frames.iter().enumerate().skip(1) {
        let found = (f.height() as usize, f.width() as usize);
        if found != expected {
            return Err(ImageError::FrameSizeMismatch {
                index,
                expected,
                found,
            });
        }
    }
    let (h, w) = target_size(expected.0, expected.1, cfg)?;
    let resized: Vec<RgbImage> = frames.iter().map(|f| resize(f, h, w)).collect();
    let tp = cfg.temporal_patch_size;
    let padded = resized.len().div_ceil(tp) * tp;
    let mut refs: Vec<&RgbImage> = resized.iter().collect();
    let last = refs[refs.len() - 1];
    refs.resize(padded, last);
    Ok(patchify(&refs, cfg))
}

/// [`load_image`] followed by [`preprocess_image`].
///
/// # Errors
/// Those of both; errors about the image name the file.
pub fn preprocess_path(path: &Path, cfg: &PreprocessConfig) -> Result<PixelValues, ImageError> {
    let img = load_image(path)?;
    preprocess_image(&img, cfg)
}

/// [`load_image`] of every frame followed by [`preprocess_video`].
///
/// # Errors
/// Those of both.
pub fn preprocess_video_paths<P: AsRef<Path>>(
    paths: &[P],
    cfg: &PreprocessConfig,
) -> Result<PixelValues, ImageError> {
    let frames = paths
        .iter()
        .map(|p| load_image(p.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    preprocess_video(&frames, cfg)
}
