//! [`PixelValues`]: resized frames rescaled, normalised and cut into the vision tower's patch
//! rows, and the entry points that run the whole preprocessing.

use std::path::Path;

use image::RgbImage;

use super::config::RESCALE_FACTOR;
#[cfg(doc)]
use super::smart_resize;
use super::{MAX_IMAGE_PIXELS, PreprocessConfig, load_image, resize, resized_size};
use crate::error::ImageError;

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

    /// Checks that the parts agree with each other and with a consumer that expects rows of
    /// `row_len` values (`3 · temporal_patch_size · patch_size²`, 1176 for Qwen2-VL) and merges
    /// `merge_size × merge_size` patches: `grid_t`, `grid_h`, `grid_w` positive, `grid_h` and
    /// `grid_w` multiples of `merge_size`, `rows = grid_t · grid_h · grid_w` and
    /// `data.len() = rows · row_len`. What [`preprocess_image`] and [`preprocess_video`] return
    /// always passes with their configuration's values; a hand-built or modified value may
    /// not.
    ///
    /// # Errors
    /// [`ImageError::PixelShape`] naming the sizes, when any of these fails (or overflows).
    pub fn validate(&self, row_len: usize, merge_size: usize) -> Result<(), ImageError> {
        let [t, h, w] = self.grid_thw;
        let grid_ok = t > 0
            && h > 0
            && w > 0
            && merge_size > 0
            && h % merge_size == 0
            && w % merge_size == 0
            && t.checked_mul(h).and_then(|n| n.checked_mul(w)) == Some(self.rows);
        if grid_ok && self.rows.checked_mul(row_len) == Some(self.data.len()) {
            return Ok(());
        }
        Err(ImageError::PixelShape {
            data_len: self.data.len(),
            rows: self.rows,
            grid_thw: self.grid_thw,
            row_len,
            merge_size,
        })
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
