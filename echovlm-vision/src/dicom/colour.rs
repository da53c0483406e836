//! From stored samples to 8-bit RGB: sample unpacking, RGB / YBR colour conversion, and the VOI
//! stage (rescale, window or min-max, MONOCHROME1 inversion) for monochrome samples.

use dicom_object::{DefaultDicomObject, Tag};
use image::RgbImage;

use super::decode::{first_f64, text};

const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
const WINDOW_CENTER: Tag = Tag(0x0028, 0x1050);
const WINDOW_WIDTH: Tag = Tag(0x0028, 0x1051);
const VOI_LUT_FUNCTION: Tag = Tag(0x0028, 0x1056);

/// The sample layout of the pixel data, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// One sample per pixel; `invert` for MONOCHROME1.
    Mono { invert: bool },
    /// RGB, interleaved (`planar == false`) or colour-by-plane.
    Rgb { planar: bool },
    /// YBR_FULL, interleaved or colour-by-plane.
    YbrFull { planar: bool },
    /// Native YBR_FULL_422: `Y1 Y2 Cb Cr` per horizontal pixel pair.
    Ybr422,
    /// A JPEG-decoded colour frame: interleaved RGB from the decoder.
    DecodedRgb,
}

/// Monochrome sample handling for more than 8 bits or signed data.
#[derive(Debug, Clone, Copy)]
pub(super) struct Voi {
    slope: f64,
    intercept: f64,
    pub(super) window: Option<(f64, f64)>,
    function: VoiLutFunction,
}

/// VOI LUT Function (0028,1056): how a window maps modality values to display values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiLutFunction {
    /// `LINEAR` (the default when the attribute is absent or unknown).
    #[default]
    Linear,
    /// `LINEAR_EXACT`.
    LinearExact,
    /// `SIGMOID`.
    Sigmoid,
}

pub(super) fn read_voi(obj: &DefaultDicomObject) -> Result<Voi, String> {
    let slope = first_f64(obj, RESCALE_SLOPE, "Rescale Slope")?.unwrap_or(1.0);
    let intercept = first_f64(obj, RESCALE_INTERCEPT, "Rescale Intercept")?.unwrap_or(0.0);
    let center = first_f64(obj, WINDOW_CENTER, "Window Center")?;
    let width = first_f64(obj, WINDOW_WIDTH, "Window Width")?;
    let function = match text(obj, VOI_LUT_FUNCTION).as_deref() {
        Some("LINEAR_EXACT") => VoiLutFunction::LinearExact,
        Some("SIGMOID") => VoiLutFunction::Sigmoid,
        _ => VoiLutFunction::Linear,
    };
    let window = match (center, width) {
        // LINEAR needs w >= 1, LINEAR_EXACT and SIGMOID w > 0 (PS3.3 C.11.2.1.2).
        (Some(c), Some(w))
            if match function {
                VoiLutFunction::Linear => w >= 1.0,
                _ => w > 0.0,
            } =>
        {
            Some((c, w))
        }
        _ => None,
    };
    Ok(Voi {
        slope,
        intercept,
        window,
        function,
    })
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SampleFormat {
    /// 1 or 2 bytes per sample.
    pub(super) bytes: usize,
    pub(super) bits_stored: u16,
    pub(super) signed: bool,
}

impl SampleFormat {
    /// Sample `k` (little endian), masked to Bits Stored and sign-extended when signed.
    fn get(&self, data: &[u8], k: usize) -> i32 {
        let raw = if self.bytes == 1 {
            u32::from(data[k])
        } else {
            u32::from(u16::from_le_bytes([data[2 * k], data[2 * k + 1]]))
        };
        let bits = u32::from(self.bits_stored);
        let v = raw & ((1u32 << bits) - 1);
        if self.signed && v & (1 << (bits - 1)) != 0 {
            v as i32 - (1i32 << bits)
        } else {
            v as i32
        }
    }
}

/// One frame (rows × columns) of pixel data to 8-bit RGB.
pub(super) fn to_rgb(
    data: &[u8],
    layout: Layout,
    sample: SampleFormat,
    voi: Option<Voi>,
    h: u32,
    w: u32,
) -> RgbImage {
    let n = (h as usize) * (w as usize);
    let mut out = vec![0u8; n * 3];
    match layout {
        Layout::Mono { invert } => {
            let grey: Vec<u8> = match voi {
                None => (0..n).map(|k| sample.get(data, k) as u8).collect(),
                Some(voi) => voi_to_u8(data, sample, voi, n),
            };
            for (px, g) in out.chunks_exact_mut(3).zip(grey) {
                let g = if invert { 255 - g } else { g };
                px.fill(g);
            }
        }
        Layout::Rgb { planar: false } | Layout::DecodedRgb => out.copy_from_slice(&data[..n * 3]),
        Layout::Rgb { planar: true } => {
            for (k, px) in out.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[data[k], data[n + k], data[2 * n + k]]);
            }
        }
        Layout::YbrFull { planar } => {
            for (k, px) in out.chunks_exact_mut(3).enumerate() {
                let (y, cb, cr) = if planar {
                    (data[k], data[n + k], data[2 * n + k])
                } else {
                    (data[3 * k], data[3 * k + 1], data[3 * k + 2])
                };
                px.copy_from_slice(&ybr_full_to_rgb(y, cb, cr));
            }
        }
        Layout::Ybr422 => {
            for (pair, px) in data[..n * 2].chunks_exact(4).zip(out.chunks_exact_mut(6)) {
                let [y1, y2, cb, cr] = [pair[0], pair[1], pair[2], pair[3]];
                px[..3].copy_from_slice(&ybr_full_to_rgb(y1, cb, cr));
                px[3..].copy_from_slice(&ybr_full_to_rgb(y2, cb, cr));
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("buffer length is rows * columns * 3")
}

/// pydicom's `convert_color_space(..., "YBR_FULL", "RGB")` for one pixel: `f32`,
/// `[Y, Cb − 128, Cr − 128] · M` as a fused multiply-add chain over the rows of `M` (what
/// OpenBLAS' `sgemm` computes for numpy's `matmul`), `floor(x + 0.5)`, clamped.
pub fn ybr_full_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    // The float32 matrix of pydicom.pixels.processing._convert_YBR_FULL_to_RGB.
    const M: [[f32; 3]; 3] = [
        [1.0, 1.0, 1.0],
        [0.0, (-0.114 * 1.772 / 0.587) as f32, 1.772],
        [1.402, (-0.299 * 1.402 / 0.587) as f32, 0.0],
    ];
    let a = [f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0];
    let mut rgb = [0u8; 3];
    for (j, c) in rgb.iter_mut().enumerate() {
        let s = a[0] * M[0][j];
        let s = a[1].mul_add(M[1][j], s);
        let s = a[2].mul_add(M[2][j], s);
        *c = (s + 0.5).floor().clamp(0.0, 255.0) as u8;
    }
    rgb
}

/// Rescale, then window (or per-frame min-max), then `floor(y + 0.5)` onto 0..=255.
fn voi_to_u8(data: &[u8], sample: SampleFormat, voi: Voi, n: usize) -> Vec<u8> {
    let x: Vec<f64> = (0..n)
        .map(|k| f64::from(sample.get(data, k)) * voi.slope + voi.intercept)
        .collect();
    let round = |y: f64| (y + 0.5).floor().clamp(0.0, 255.0) as u8;
    match voi.window {
        Some((c, w)) => x
            .iter()
            .map(|&x| round(apply_window(x, c, w, voi.function)))
            .collect(),
        None => {
            let (lo, hi) = x
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if hi > lo {
                x.iter()
                    .map(|&v| round((v - lo) / (hi - lo) * 255.0))
                    .collect()
            } else {
                vec![0; n]
            }
        }
    }
}

/// A VOI window with center `c` and width `w` (PS3.3 C.11.2.1.2 and C.11.2.1.3) applied to the
/// modality value `x`, onto `0.0..=255.0` before rounding. `LINEAR` needs `w ≥ 1` (at `w = 1` it
/// is a threshold at `c − 0.5`), the others `w > 0`.
pub fn apply_window(x: f64, c: f64, w: f64, function: VoiLutFunction) -> f64 {
    match function {
        VoiLutFunction::Linear => {
            if x <= c - 0.5 - (w - 1.0) / 2.0 {
                0.0
            } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                255.0
            } else {
                ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
            }
        }
        VoiLutFunction::LinearExact => {
            if x <= c - w / 2.0 {
                0.0
            } else if x > c + w / 2.0 {
                255.0
            } else {
                ((x - c) / w + 0.5) * 255.0
            }
        }
        VoiLutFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
    }
}
