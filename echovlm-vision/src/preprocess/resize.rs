//! Target sizes (`smart_resize`) and the bit-exact port of Pillow's bicubic resize.

use image::RgbImage;

use super::PreprocessConfig;
#[cfg(doc)]
use super::{MAX_IMAGE_PIXELS, preprocess_image};
use crate::error::ImageError;

/// Largest accepted ratio between the longer and the shorter side (`MAX_RATIO` of
/// `qwen_vl_utils` and transformers' `smart_resize`).
pub const MAX_ASPECT_RATIO: usize = 200;

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
