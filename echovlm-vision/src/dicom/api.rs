//! The public face of the reader: what a decode returns, which frames it decodes, and the
//! entry points over files and bytes.

use std::path::Path;

use image::RgbImage;

use super::decode::decode;
use crate::error::ImageError;

/// Largest total number of pixels (rows × columns × selected frames) one call decodes:
/// 2³⁰ pixels, 3 GiB as 8-bit RGB, e.g. about 1 300 frames of 1024 × 768.
pub const MAX_DICOM_TOTAL_PIXELS: u64 = 1 << 30;

/// Which frames of a (multi-frame) object to decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FrameSelection {
    /// Every frame, in order.
    #[default]
    All,
    /// Frames `0, n, 2n, …` (`n ≥ 1`).
    Stride(usize),
    /// These frame indices (0-based), in the given order; repeats are allowed.
    List(Vec<usize>),
}

impl FrameSelection {
    /// How many frames this selection takes from an object of `number_of_frames` frames,
    /// without listing them (a corrupt Number of Frames may be huge).
    ///
    /// # Errors
    /// A message for a stride of 0, an empty list or an index `≥ number_of_frames`.
    pub(super) fn count(&self, number_of_frames: usize) -> Result<usize, String> {
        match self {
            FrameSelection::All => Ok(number_of_frames),
            FrameSelection::Stride(0) => Err("frame stride must be at least 1, got 0".into()),
            FrameSelection::Stride(n) => Ok(number_of_frames.div_ceil(*n)),
            FrameSelection::List(list) if list.is_empty() => {
                Err("the frame list is empty; select at least one frame".into())
            }
            FrameSelection::List(list) => match list.iter().find(|&&i| i >= number_of_frames) {
                Some(bad) => Err(format!(
                    "frame index {bad} is out of range: the object has {number_of_frames} \
                     frame{} (indices 0..={})",
                    if number_of_frames == 1 { "" } else { "s" },
                    number_of_frames - 1
                )),
                None => Ok(list.len()),
            },
        }
    }

    /// The frame indices this selection takes from an object of `number_of_frames` frames, once
    /// [`count`](Self::count) has accepted it.
    pub(super) fn indices(&self, number_of_frames: usize) -> Vec<usize> {
        match self {
            FrameSelection::All => (0..number_of_frames).collect(),
            FrameSelection::Stride(n) => (0..number_of_frames).step_by((*n).max(1)).collect(),
            FrameSelection::List(list) => list.clone(),
        }
    }
}

/// A decoded DICOM image object: the selected frames as 8-bit RGB plus the attributes that say
/// what they are.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DicomImage {
    /// The selected frames, in selection order, each `columns × rows` pixels.
    pub frames: Vec<RgbImage>,
    /// The index (0-based, in the object) of each entry of `frames`.
    pub frame_indices: Vec<usize>,
    /// Number of Frames (0028,0008) of the object (1 when absent), not the number selected.
    pub number_of_frames: usize,
    /// SOP Class UID (0008,0016), e.g. [`US_MULTIFRAME_IMAGE_STORAGE`](crate::dicom::US_MULTIFRAME_IMAGE_STORAGE).
    pub sop_class_uid: String,
    /// Modality (0008,0060), e.g. `"US"`, when present.
    pub modality: Option<String>,
    /// Photometric Interpretation (0028,0004) as stored, e.g. `"YBR_FULL_422"`.
    pub photometric_interpretation: String,
    /// Transfer Syntax UID (0002,0010) of the file, e.g. [`JPEG_BASELINE`](crate::dicom::JPEG_BASELINE).
    pub transfer_syntax_uid: String,
    /// Rows (0028,0010): frame height in pixels.
    pub rows: u32,
    /// Columns (0028,0011): frame width in pixels.
    pub columns: u32,
    /// Samples per Pixel (0028,0002): 1 (monochrome) or 3 (colour).
    pub samples_per_pixel: u16,
    /// Bits Allocated (0028,0100): 8 or 16.
    pub bits_allocated: u16,
    /// Bits Stored (0028,0101).
    pub bits_stored: u16,
    /// Frame Time (0018,1063) in milliseconds, the cine frame interval, when present.
    pub frame_time_ms: Option<f64>,
    /// Cine Rate (0018,0040): the recorded frames per second, when present.
    pub cine_rate: Option<f64>,
    /// The `(center, width)` window applied to map monochrome samples of more than 8 bits to
    /// 8 bits, or `None` when none was (8-bit or colour data, or min-max scaling).
    pub window: Option<(f64, f64)>,
}

impl DicomImage {
    /// Whether the object holds more than one frame (Number of Frames > 1), whatever the
    /// selection decoded.
    pub fn is_multiframe(&self) -> bool {
        self.number_of_frames > 1
    }

    /// Frames per second of the decoded frames as a cine loop: the object's rate (Cine Rate,
    /// else 1000 / Frame Time), divided by the step between the selected frames when they are
    /// evenly spaced and ascending (`FrameSelection::Stride(n)` plays at a rate `n` times
    /// lower). `None` when the object records no positive finite rate, or the selection is
    /// not evenly spaced.
    pub fn frames_per_second(&self) -> Option<f64> {
        let base = self
            .cine_rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .or_else(|| {
                self.frame_time_ms
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .map(|t| 1000.0 / t)
            })?;
        let step = match self.frame_indices.as_slice() {
            [] | [_] => 1,
            [a, b, rest @ ..] => {
                let step = b.checked_sub(*a).filter(|&s| s > 0)?;
                let mut prev = *b;
                for &i in rest {
                    if i.checked_sub(prev) != Some(step) {
                        return None;
                    }
                    prev = i;
                }
                step
            }
        };
        Some(base / step as f64).filter(|r| r.is_finite() && *r > 0.0)
    }
}

/// Whether `bytes` start like a DICOM file: a 128-byte preamble followed by the `DICM` magic.
pub fn has_dicom_magic(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM")
}

/// Whether the file at `path` is a DICOM file, judged by its content (the 128-byte preamble
/// and the `DICM` magic), not by its extension; `false` when it cannot be read.
pub fn is_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && has_dicom_magic(&head)
}

/// Reads a DICOM file and decodes the selected frames to 8-bit RGB (see the
/// [module documentation](crate::dicom) for the supported objects and the exact conversions).
///
/// # Errors
/// [`ImageError::Io`] if the file cannot be read, [`ImageError::Empty`] for a 0-byte file,
/// [`ImageError::Dicom`] for a file that is not DICOM, is truncated or corrupt, has missing or
/// inconsistent image attributes or does not fit `frames` (stride 0, empty list, index out of
/// range), [`ImageError::UnsupportedDicom`] for an object without pixel data or with an
/// unsupported transfer syntax / pixel layout, [`ImageError::ZeroSize`] for 0 rows or columns
/// and [`ImageError::TooLarge`] when a frame has more than [`MAX_IMAGE_PIXELS`](crate::preprocess::MAX_IMAGE_PIXELS) pixels. Every
/// error names the file.
pub fn load_dicom(path: &Path, frames: &FrameSelection) -> Result<DicomImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, frames, Some(path))
}

/// Decodes an in-memory DICOM file (128-byte preamble, `DICM`, file meta group, data set), as
/// [`load_dicom`] does.
///
/// # Errors
/// As [`load_dicom`], without a path in the error.
pub fn decode_dicom_bytes(bytes: &[u8], frames: &FrameSelection) -> Result<DicomImage, ImageError> {
    decode(bytes, frames, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cine(cine_rate: Option<f64>, frame_time_ms: Option<f64>, indices: Vec<usize>) -> DicomImage {
        DicomImage {
            frames: Vec::new(),
            frame_indices: indices,
            number_of_frames: 8,
            sop_class_uid: String::new(),
            modality: None,
            photometric_interpretation: String::new(),
            transfer_syntax_uid: String::new(),
            rows: 1,
            columns: 1,
            samples_per_pixel: 1,
            bits_allocated: 8,
            bits_stored: 8,
            frame_time_ms,
            cine_rate,
            window: None,
        }
    }

    #[test]
    fn cine_rate_takes_precedence_over_frame_time() {
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(
            cine(Some(25.0), Some(100.0), all.clone()).frames_per_second(),
            Some(25.0)
        );
        assert_eq!(
            cine(None, Some(100.0), all.clone()).frames_per_second(),
            Some(10.0)
        );
        assert_eq!(
            cine(Some(0.0), Some(50.0), all.clone()).frames_per_second(),
            Some(20.0)
        );
        assert_eq!(
            cine(Some(f64::NAN), None, all.clone()).frames_per_second(),
            None
        );
        assert_eq!(cine(None, None, all).frames_per_second(), None);
        assert_eq!(
            cine(Some(30.0), None, vec![1, 4, 7]).frames_per_second(),
            Some(10.0)
        );
        assert_eq!(
            cine(Some(30.0), None, vec![1, 4, 6]).frames_per_second(),
            None
        );
        assert_eq!(cine(Some(30.0), None, vec![2, 2]).frames_per_second(), None);
        assert_eq!(
            cine(Some(30.0), None, vec![5]).frames_per_second(),
            Some(30.0)
        );
    }
}
