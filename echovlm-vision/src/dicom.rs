//! DICOM ultrasound input: single- and multi-frame image objects decoded to 8-bit RGB frames,
//! matching what pydicom's `Dataset.pixel_array` delivers (see `tools/make_dicom_fixtures.py`).
//!
//! Parsing is done by [dicom-rs](https://github.com/Enet4/dicom-rs) (`dicom-object`), JPEG
//! baseline decoding by its pure-Rust `jpeg-decoder` adapter (`dicom-pixeldata`); the sample
//! unpacking and the conversion to 8-bit RGB are done here, so that they follow pydicom exactly.
//!
//! # What is supported
//!
//! * **Objects**: any object with Pixel Data (7FE0,0010); ultrasound objects (US Image Storage
//!   [`US_IMAGE_STORAGE`], US Multi-frame Image Storage [`US_MULTIFRAME_IMAGE_STORAGE`]) are the
//!   target, other image SOP classes are accepted as long as their pixel layout is one of the
//!   below. Objects without pixel data (structured reports, …) are refused with
//!   [`ImageError::UnsupportedDicom`].
//! * **Transfer syntaxes**: Implicit VR Little Endian, Explicit VR Little Endian and JPEG
//!   Baseline (Process 1). Everything else (JPEG 2000, JPEG-LS, RLE, deflate, big endian, video,
//!   …) is refused with [`ImageError::UnsupportedDicom`] naming the UID and its name.
//! * **Pixel layouts and their mapping to 8-bit RGB** (`v` is the stored sample):
//!   * `RGB`, 8-bit, planar configuration 0 or 1: as stored;
//!   * `YBR_FULL` and `YBR_FULL_422` (native, Y₁Y₂CbCr pairs with the chroma repeated for both
//!     pixels, as pydicom expands it): converted to RGB exactly as pydicom's
//!     `convert_color_space(arr, "YBR_FULL", "RGB")`: in `f32`,
//!     `[Y, Cb − 128, Cr − 128]` times the matrix of PS3.3 C.7.6.3.1.2 as a chain of fused
//!     multiply-adds (what numpy's OpenBLAS `matmul` computes), then `floor(x + 0.5)` clamped to
//!     0..=255;
//!   * JPEG baseline (`YBR_FULL_422`, `YBR_FULL`, `RGB` or monochrome frames): the frame is
//!     decoded (and colour converted) by `jpeg-decoder`; pydicom gets its YCbCr planes from
//!     libjpeg-turbo through Pillow and converts them as above, so values differ slightly
//!     (measured on the fixtures: at most 2 levels, see `tests/dicom.rs`);
//!   * `MONOCHROME2`, 8-bit unsigned: `v`, replicated to the three channels (a window, if
//!     present, is not applied: this is pydicom's `pixel_array`);
//!   * `MONOCHROME2`, 16-bit (or signed) samples, masked to Bits Stored and sign-extended when
//!     Pixel Representation is 1: in `f64`, `x = v · RescaleSlope + RescaleIntercept` (slope 1
//!     and intercept 0 when absent), then with the first Window Center `c` / Window Width `w`,
//!     the DICOM linear VOI LUT (PS3.3 C.11.2.1.2.1) onto 0..=255:
//!     `y = 0` if `x ≤ c − 0.5 − (w − 1)/2`, `y = 255` if `x > c − 0.5 + (w − 1)/2`, otherwise
//!     `y = ((x − (c − 0.5)) / (w − 1) + 0.5) · 255` (VOI LUT Function `LINEAR_EXACT` and
//!     `SIGMOID` use their PS3.3 C.11.2.1.3 formulas instead); without a (valid, `w ≥ 1`)
//!     window, per-frame min-max scaling `y = (x − min) / (max − min) · 255` (0 for a constant
//!     frame); finally `floor(y + 0.5)`. A VOI LUT Sequence is not used.
//!   * `MONOCHROME1`: as `MONOCHROME2`, then `255 − y`.
//!
//! Colour samples of more than 8 bits, palette colour and the other YBR flavours are refused.
//!
//! # Guards
//!
//! Before dicom-rs parses a file, the element headers are walked and any value that declares
//! more bytes than the file holds is refused as truncated (so a corrupt length never turns into
//! a huge allocation); frame geometry is checked against [`MAX_IMAGE_PIXELS`] per frame and
//! [`MAX_DICOM_TOTAL_PIXELS`] over the selected frames before any frame buffer is allocated.

use std::path::{Path, PathBuf};

use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use image::RgbImage;

use crate::error::ImageError;
use crate::preprocess::MAX_IMAGE_PIXELS;

/// SOP Class UID of US Image Storage (single-frame ultrasound).
pub const US_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.6.1";
/// SOP Class UID of US Multi-frame Image Storage (ultrasound cine loops).
pub const US_MULTIFRAME_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.3.1";
/// Transfer Syntax UID of Implicit VR Little Endian.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Transfer Syntax UID of Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Transfer Syntax UID of JPEG Baseline (Process 1).
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

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
    /// The frame indices this selection takes from an object of `number_of_frames` frames.
    ///
    /// # Errors
    /// A message for a stride of 0, an empty list or an index `≥ number_of_frames`.
    fn indices(&self, number_of_frames: usize) -> Result<Vec<usize>, String> {
        match self {
            FrameSelection::All => Ok((0..number_of_frames).collect()),
            FrameSelection::Stride(0) => Err("frame stride must be at least 1, got 0".into()),
            FrameSelection::Stride(n) => Ok((0..number_of_frames).step_by(*n).collect()),
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
                None => Ok(list.clone()),
            },
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
    /// SOP Class UID (0008,0016), e.g. [`US_MULTIFRAME_IMAGE_STORAGE`].
    pub sop_class_uid: String,
    /// Modality (0008,0060), e.g. `"US"`, when present.
    pub modality: Option<String>,
    /// Photometric Interpretation (0028,0004) as stored, e.g. `"YBR_FULL_422"`.
    pub photometric_interpretation: String,
    /// Transfer Syntax UID (0002,0010) of the file, e.g. [`JPEG_BASELINE`].
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
/// [module documentation](self) for the supported objects and the exact conversions).
///
/// # Errors
/// [`ImageError::Io`] if the file cannot be read, [`ImageError::Empty`] for a 0-byte file,
/// [`ImageError::Dicom`] for a file that is not DICOM, is truncated or corrupt, has missing or
/// inconsistent image attributes or does not fit `frames` (stride 0, empty list, index out of
/// range), [`ImageError::UnsupportedDicom`] for an object without pixel data or with an
/// unsupported transfer syntax / pixel layout, [`ImageError::ZeroSize`] for 0 rows or columns
/// and [`ImageError::TooLarge`] when a frame has more than [`MAX_IMAGE_PIXELS`] pixels. Every
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

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
const MODALITY: Tag = Tag(0x0008, 0x0060);
const FRAME_TIME: Tag = Tag(0x0018, 0x1063);
const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
const PHOTOMETRIC_INTERPRETATION: Tag = Tag(0x0028, 0x0004);
const PLANAR_CONFIGURATION: Tag = Tag(0x0028, 0x0006);
const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
const ROWS: Tag = Tag(0x0028, 0x0010);
const COLUMNS: Tag = Tag(0x0028, 0x0011);
const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
const BITS_STORED: Tag = Tag(0x0028, 0x0101);
const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);
const WINDOW_CENTER: Tag = Tag(0x0028, 0x1050);
const WINDOW_WIDTH: Tag = Tag(0x0028, 0x1051);
const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
const VOI_LUT_FUNCTION: Tag = Tag(0x0028, 0x1056);

/// Builds the errors of one decode, all naming the same file.
struct Ctx<'a> {
    path: Option<&'a Path>,
}

impl Ctx<'_> {
    fn owned(&self) -> Option<PathBuf> {
        self.path.map(Path::to_path_buf)
    }
    fn invalid(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Dicom {
            path: self.owned(),
            reason: reason.into(),
        }
    }
    fn unsupported(&self, reason: impl Into<String>) -> ImageError {
        ImageError::UnsupportedDicom {
            path: self.owned(),
            reason: reason.into(),
        }
    }
}

/// The sample layout of the pixel data, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
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
struct Voi {
    slope: f64,
    intercept: f64,
    window: Option<(f64, f64)>,
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

fn decode(
    bytes: &[u8],
    selection: &FrameSelection,
    path: Option<&Path>,
) -> Result<DicomImage, ImageError> {
    let cx = Ctx { path };
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: cx.owned() });
    }
    if !has_dicom_magic(bytes) {
        return Err(cx.invalid(if bytes.len() < 132 {
            format!(
                "not a DICOM file: {} bytes, too short for the 128-byte preamble and the \
                 'DICM' magic",
                bytes.len()
            )
        } else {
            "not a DICOM file: no 'DICM' magic after the 128-byte preamble".to_string()
        }));
    }
    let (transfer_syntax, dataset_start) = scan_meta(bytes).map_err(|r| cx.invalid(r))?;
    let explicit = match transfer_syntax.as_str() {
        IMPLICIT_VR_LITTLE_ENDIAN => false,
        EXPLICIT_VR_LITTLE_ENDIAN | JPEG_BASELINE => true,
        other => {
            return Err(cx.unsupported(format!(
                "transfer syntax {other} ({}) is not supported; supported are {} (Implicit VR \
                 Little Endian), {} (Explicit VR Little Endian) and {} (JPEG Baseline)",
                transfer_syntax_name(other).unwrap_or("unknown transfer syntax"),
                IMPLICIT_VR_LITTLE_ENDIAN,
                EXPLICIT_VR_LITTLE_ENDIAN,
                JPEG_BASELINE
            )));
        }
    };
    check_lengths(bytes, dataset_start, explicit).map_err(|r| cx.invalid(r))?;

    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| cx.invalid(format!("cannot parse the data set: {}", error_chain(&e))))?;

    let sop_class_uid = text(&obj, SOP_CLASS_UID)
        .unwrap_or_else(|| trim_uid(obj.meta().media_storage_sop_class_uid()).to_string());
    let pixel_data = obj
        .element_opt(PIXEL_DATA)
        .map_err(|e| cx.invalid(format!("cannot access Pixel Data (7FE0,0010): {e}")))?;
    let Some(pixel_data) = pixel_data else {
        return Err(cx.unsupported(format!(
            "the object has no Pixel Data (7FE0,0010): SOP class {sop_class_uid} ({}) is not an \
             image",
            sop_class_name(&sop_class_uid).unwrap_or("not a known image SOP class")
        )));
    };

    // Image Pixel module attributes.
    let req = |tag: Tag, name: &str| -> Result<u16, ImageError> {
        uint(&obj, tag, name)
            .map_err(|r| cx.invalid(r))?
            .ok_or_else(|| {
                cx.invalid(format!(
                    "the image attribute {name} ({:04X},{:04X}) is missing",
                    tag.0, tag.1
                ))
            })
    };
    let rows = req(ROWS, "Rows")?;
    let columns = req(COLUMNS, "Columns")?;
    let samples_per_pixel = req(SAMPLES_PER_PIXEL, "Samples per Pixel")?;
    let bits_allocated = req(BITS_ALLOCATED, "Bits Allocated")?;
    let bits_stored = uint(&obj, BITS_STORED, "Bits Stored")
        .map_err(|r| cx.invalid(r))?
        .unwrap_or(bits_allocated);
    let pixel_representation = uint(&obj, PIXEL_REPRESENTATION, "Pixel Representation")
        .map_err(|r| cx.invalid(r))?
        .unwrap_or(0);
    let planar = uint(&obj, PLANAR_CONFIGURATION, "Planar Configuration")
        .map_err(|r| cx.invalid(r))?
        .unwrap_or(0);
    let photometric = text(&obj, PHOTOMETRIC_INTERPRETATION).ok_or_else(|| {
        cx.invalid("the image attribute Photometric Interpretation (0028,0004) is missing")
    })?;
    let number_of_frames = match text(&obj, NUMBER_OF_FRAMES) {
        None => 1,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| {
                cx.invalid(format!("Number of Frames (0028,0008) {n} is too large"))
            })?,
            _ => {
                return Err(cx.invalid(format!(
                    "Number of Frames (0028,0008) is {s:?}, not a positive integer"
                )));
            }
        },
    };
    let jpeg = transfer_syntax == JPEG_BASELINE;

    // Geometry guards, before anything is allocated.
    if rows == 0 || columns == 0 {
        return Err(ImageError::ZeroSize {
            height: rows.into(),
            width: columns.into(),
        });
    }
    let frame_pixels = u64::from(rows) * u64::from(columns);
    if frame_pixels > MAX_IMAGE_PIXELS {
        return Err(ImageError::TooLarge {
            path: cx.owned(),
            width: columns.into(),
            height: rows.into(),
            limit: MAX_IMAGE_PIXELS,
        });
    }

    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(cx.unsupported(format!(
            "Bits Allocated (0028,0100) is {bits_allocated}; only 8 and 16 are supported"
        )));
    }
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(cx.invalid(format!(
            "Bits Stored (0028,0101) is {bits_stored}, which does not fit Bits Allocated \
             {bits_allocated}"
        )));
    }
    if pixel_representation > 1 {
        return Err(cx.invalid(format!(
            "Pixel Representation (0028,0103) is {pixel_representation}, not 0 or 1"
        )));
    }
    let layout = match (photometric.as_str(), samples_per_pixel) {
        ("MONOCHROME2", 1) => Layout::Mono { invert: false },
        ("MONOCHROME1", 1) => Layout::Mono { invert: true },
        ("RGB" | "YBR_FULL" | "YBR_FULL_422", 3) if jpeg => Layout::DecodedRgb,
        ("RGB", 3) => Layout::Rgb {
            planar: planar == 1,
        },
        ("YBR_FULL", 3) => Layout::YbrFull {
            planar: planar == 1,
        },
        ("YBR_FULL_422", 3) => Layout::Ybr422,
        (pi @ ("MONOCHROME1" | "MONOCHROME2" | "RGB" | "YBR_FULL" | "YBR_FULL_422"), n) => {
            return Err(cx.invalid(format!(
                "Photometric Interpretation {pi} with Samples per Pixel {n}"
            )));
        }
        (pi, _) => {
            return Err(cx.unsupported(format!(
                "Photometric Interpretation {pi} is not supported (MONOCHROME1, MONOCHROME2, \
                 RGB, YBR_FULL and YBR_FULL_422 are)"
            )));
        }
    };
    if samples_per_pixel == 3 && bits_allocated != 8 {
        return Err(cx.unsupported(format!(
            "colour samples of {bits_allocated} bits are not supported (only 8-bit colour is)"
        )));
    }
    if samples_per_pixel == 3 && planar > 1 {
        return Err(cx.invalid(format!(
            "Planar Configuration (0028,0006) is {planar}, not 0 or 1"
        )));
    }
    if jpeg && bits_allocated != 8 {
        return Err(cx.unsupported(format!(
            "JPEG Baseline data with Bits Allocated {bits_allocated} (baseline is 8-bit)"
        )));
    }
    if layout == Layout::Ybr422 && columns % 2 != 0 {
        return Err(cx.invalid(format!(
            "YBR_FULL_422 data needs an even number of columns, got {columns}"
        )));
    }

    let indices = selection
        .indices(number_of_frames)
        .map_err(|r| cx.invalid(r))?;
    let total = frame_pixels.saturating_mul(indices.len() as u64);
    if total > MAX_DICOM_TOTAL_PIXELS {
        return Err(cx.invalid(format!(
            "{} frames of {rows}x{columns} pixels (rows x columns) are {total} pixels, more \
             than the limit of {MAX_DICOM_TOTAL_PIXELS} pixels per call; select fewer frames",
            indices.len()
        )));
    }

    // Monochrome samples other than 8-bit unsigned go through the VOI stage.
    let voi = if samples_per_pixel == 1 && (bits_allocated == 16 || pixel_representation == 1) {
        Some(read_voi(&obj).map_err(|r| cx.invalid(r))?)
    } else {
        None
    };
    let sample = SampleFormat {
        bytes: usize::from(bits_allocated / 8),
        bits_stored,
        signed: pixel_representation == 1,
    };
    let (h, w) = (u32::from(rows), u32::from(columns));
    let n_px = frame_pixels as usize;

    let mut frames = Vec::with_capacity(indices.len());
    if jpeg {
        let fragments = pixel_data.fragments().ok_or_else(|| {
            cx.invalid("JPEG Baseline transfer syntax but the Pixel Data is not encapsulated")
        })?;
        let offsets = pixel_data.offset_table().unwrap_or(&[]);
        for &i in &indices {
            let data = frame_fragment_data(fragments, offsets, number_of_frames, i)
                .map_err(|r| cx.invalid(r))?;
            check_jpeg_header(&data, i, rows, columns, samples_per_pixel, &cx)?;
            let index = u32::try_from(i)
                .map_err(|_| cx.unsupported(format!("frame index {i} is beyond u32")))?;
            let decoded = obj.decode_pixel_data_frame(index).map_err(|e| {
                cx.invalid(format!("cannot decode JPEG frame {i}: {}", error_chain(&e)))
            })?;
            let data = decoded.data();
            let want = n_px * usize::from(samples_per_pixel);
            if data.len() != want {
                return Err(cx.invalid(format!(
                    "JPEG frame {i} decoded to {} bytes, {want} expected",
                    data.len()
                )));
            }
            frames.push(to_rgb(data, layout, sample, voi, h, w));
        }
    } else {
        if pixel_data.fragments().is_some() {
            return Err(cx.invalid(
                "the Pixel Data is encapsulated, but the transfer syntax is uncompressed",
            ));
        }
        let data = native_bytes(pixel_data);
        let frame_bytes = match layout {
            Layout::Ybr422 => n_px * 2,
            _ => n_px * usize::from(samples_per_pixel) * sample.bytes,
        };
        let need = (frame_bytes as u64).saturating_mul(number_of_frames as u64);
        if (data.len() as u64) < need {
            return Err(cx.invalid(format!(
                "the Pixel Data holds {} bytes, but {number_of_frames} frame{} of {rows}x{columns} \
                 pixels ({photometric}, {samples_per_pixel} sample{} of {bits_allocated} bits) \
                 need {need}",
                data.len(),
                if number_of_frames == 1 { "" } else { "s" },
                if samples_per_pixel == 1 { "" } else { "s" },
            )));
        }
        for &i in &indices {
            let frame = &data[i * frame_bytes..(i + 1) * frame_bytes];
            frames.push(to_rgb(frame, layout, sample, voi, h, w));
        }
    }

    Ok(DicomImage {
        frames,
        frame_indices: indices,
        number_of_frames,
        sop_class_uid,
        modality: text(&obj, MODALITY),
        photometric_interpretation: photometric,
        transfer_syntax_uid: transfer_syntax,
        rows: h,
        columns: w,
        samples_per_pixel,
        bits_allocated,
        bits_stored,
        frame_time_ms: obj
            .element_opt(FRAME_TIME)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok())
            .filter(|t| t.is_finite()),
        window: voi.and_then(|v| v.window),
    })
}

/// A string attribute, trimmed of padding; `None` when absent, empty or not text.
fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let s = e.to_str().ok()?;
    let s = trim_uid(&s);
    (!s.is_empty()).then(|| s.to_string())
}

fn trim_uid(s: &str) -> &str {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// An unsigned 16-bit attribute (US), `None` when absent or empty.
fn uint(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<Option<u16>, String> {
    match obj.element_opt(tag) {
        Ok(None) => Ok(None),
        Ok(Some(e)) if e.value().multiplicity() == 0 => Ok(None),
        Ok(Some(e)) => e.to_int::<u16>().map(Some).map_err(|err| {
            format!(
                "the attribute {name} ({:04X},{:04X}) is not a 16-bit unsigned integer: {err}",
                tag.0, tag.1
            )
        }),
        Err(err) => Err(format!("cannot access {name}: {err}")),
    }
}

/// The first finite value of a numeric (DS) attribute.
fn first_f64(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<Option<f64>, String> {
    let Some(e) = obj.element_opt(tag).ok().flatten() else {
        return Ok(None);
    };
    if e.value().multiplicity() == 0 {
        return Ok(None);
    }
    let values = e.to_multi_float64().map_err(|err| {
        format!(
            "the attribute {name} ({:04X},{:04X}) is not numeric: {err}",
            tag.0, tag.1
        )
    })?;
    match values.first() {
        None => Ok(None),
        Some(v) if v.is_finite() => Ok(Some(*v)),
        Some(v) => Err(format!("the attribute {name} is {v}, not a finite number")),
    }
}

fn read_voi(obj: &DefaultDicomObject) -> Result<Voi, String> {
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
struct SampleFormat {
    /// 1 or 2 bytes per sample.
    bytes: usize,
    bits_stored: u16,
    signed: bool,
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

/// The uncompressed Pixel Data as little-endian bytes (dicom-rs keeps OW values as `u16`s in
/// host order).
fn native_bytes(e: &dicom_object::mem::InMemElement) -> std::borrow::Cow<'_, [u8]> {
    match e.uint16_slice() {
        Ok(words) if cfg!(target_endian = "big") => {
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        }
        _ => e.to_bytes().unwrap_or(std::borrow::Cow::Borrowed(&[][..])),
    }
}

/// One frame (rows × columns) of pixel data to 8-bit RGB.
fn to_rgb(
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

/// The bytes of frame `frame`'s JPEG stream, chosen as dicom-rs' JPEG adapter chooses them:
/// one fragment per frame (or a single fragment), else gathered by the Basic Offset Table.
fn frame_fragment_data(
    fragments: &[Vec<u8>],
    offsets: &[u32],
    number_of_frames: usize,
    frame: usize,
) -> Result<Vec<u8>, String> {
    if fragments.len() == 1 || fragments.len() == number_of_frames {
        return fragments.get(frame).cloned().ok_or_else(|| {
            format!(
                "no encapsulated fragment for frame {frame} ({} fragment{})",
                fragments.len(),
                if fragments.len() == 1 { "" } else { "s" }
            )
        });
    }
    let base = match offsets.get(frame) {
        Some(&o) => o as usize,
        None if frame == 0 => 0,
        None => {
            return Err(format!(
                "frame {frame} cannot be located: {} fragments for {number_of_frames} frames \
                 and no Basic Offset Table entry for it",
                fragments.len()
            ));
        }
    };
    let next = offsets.get(frame + 1).map(|&o| o as usize);
    let mut offset = 0usize;
    let mut data = Vec::new();
    for fragment in fragments {
        if offset >= base {
            data.extend_from_slice(fragment);
        }
        offset += fragment.len() + 8;
        if next.is_some_and(|n| offset >= n) {
            break;
        }
    }
    Ok(data)
}

/// Checks a JPEG frame's start-of-frame header against the DICOM attributes, so that the
/// decoder only ever sees frames of the declared size and layout.
fn check_jpeg_header(
    data: &[u8],
    frame: usize,
    rows: u16,
    columns: u16,
    samples: u16,
    cx: &Ctx<'_>,
) -> Result<(), ImageError> {
    let Some(sof) = jpeg_sof(data) else {
        return Err(cx.invalid(format!(
            "JPEG frame {frame} is not a JPEG stream, or is truncated before its frame header"
        )));
    };
    if !matches!(sof.marker, 0xC0 | 0xC1) || sof.precision != 8 {
        return Err(cx.unsupported(format!(
            "JPEG frame {frame} is coded with SOF{} at {} bits, not as 8-bit baseline / \
             extended sequential JPEG",
            sof.marker - 0xC0,
            sof.precision
        )));
    }
    if sof.height != rows || sof.width != columns || u16::from(sof.components) != samples {
        return Err(cx.invalid(format!(
            "JPEG frame {frame} is {}x{} pixels with {} component(s), but the object declares \
             {rows}x{columns} pixels (rows x columns) with {samples} sample(s) per pixel",
            sof.height, sof.width, sof.components
        )));
    }
    Ok(())
}

struct Sof {
    marker: u8,
    precision: u8,
    height: u16,
    width: u16,
    components: u8,
}

/// The first start-of-frame segment of a JPEG stream.
fn jpeg_sof(data: &[u8]) -> Option<Sof> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        // Markers may be preceded by fill bytes 0xFF.
        while *data.get(i)? == 0xFF && *data.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *data.get(i)? != 0xFF {
            return None;
        }
        let marker = *data.get(i + 1)?;
        i += 2;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return None, // end of image / start of scan before any SOF
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        if len < 2 {
            return None;
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let seg = data.get(i + 2..i + len)?;
            if seg.len() < 6 {
                return None;
            }
            return Some(Sof {
                marker,
                precision: seg[0],
                height: u16::from_be_bytes([seg[1], seg[2]]),
                width: u16::from_be_bytes([seg[3], seg[4]]),
                components: seg[5],
            });
        }
        i += len;
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Explicit VRs with a 2-byte reserved field and a 4-byte length.
fn long_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

const TRUNCATED: &str = "the file is truncated or corrupt";

/// Walks the file meta group (explicit VR little endian, from byte 132) and returns the
/// Transfer Syntax UID and where the data set starts.
fn scan_meta(b: &[u8]) -> Result<(String, usize), String> {
    let mut pos = 132;
    let mut ts = None;
    while u16_at(b, pos) == Some(0x0002) {
        let cut = || {
            format!(
                "the file meta group is cut off inside an element header at byte {}: {TRUNCATED}",
                b.len()
            )
        };
        let elem = u16_at(b, pos + 2).ok_or_else(cut)?;
        let vr = [
            *b.get(pos + 4).ok_or_else(cut)?,
            *b.get(pos + 5).ok_or_else(cut)?,
        ];
        let (len, header) = if long_vr(vr) {
            (u32_at(b, pos + 8).ok_or_else(cut)? as usize, 12)
        } else {
            (usize::from(u16_at(b, pos + 6).ok_or_else(cut)?), 8)
        };
        let start = pos + header;
        let value = b.get(start..start.saturating_add(len)).ok_or_else(|| {
            format!(
                "file meta element (0002,{elem:04X}) declares {len} bytes but only {} remain: \
                 {TRUNCATED}",
                b.len().saturating_sub(start)
            )
        })?;
        if elem == 0x0010 {
            let uid = String::from_utf8_lossy(value);
            ts = Some(trim_uid(&uid).to_string());
        }
        pos = start + len;
    }
    match ts {
        Some(ts) if !ts.is_empty() => Ok((ts, pos)),
        _ => Err(format!(
            "the file meta group has no Transfer Syntax UID (0002,0010){}",
            if pos >= b.len() {
                format!(" and the file ends after it: {TRUNCATED}")
            } else {
                String::new()
            }
        )),
    }
}

/// Walks the element headers of the data set and refuses any defined length that runs past the
/// end of the file, before dicom-rs would allocate a buffer of that length. Sequences and items
/// are walked into; encapsulated pixel data items are skipped by their length. Anything the
/// walk does not understand ends it quietly, leaving the verdict to the parser.
fn check_lengths(b: &[u8], start: usize, explicit: bool) -> Result<(), String> {
    const UNDEFINED: u32 = 0xFFFF_FFFF;
    let mut pos = start;
    let mut in_pixel_items = false;
    while b.len() - pos >= 8 {
        let (Some(group), Some(elem), Some(item_len)) =
            (u16_at(b, pos), u16_at(b, pos + 2), u32_at(b, pos + 4))
        else {
            return Ok(());
        };
        let too_long = |len: u32, at: usize| {
            format!(
                "({group:04X},{elem:04X}) declares {len} bytes but only {} remain: {TRUNCATED}",
                b.len() - at
            )
        };
        if group == 0xFFFE {
            pos += 8;
            match elem {
                0xE000 if item_len != UNDEFINED => {
                    if item_len as usize > b.len() - pos {
                        return Err(too_long(item_len, pos));
                    }
                    if in_pixel_items {
                        pos += item_len as usize;
                    }
                }
                0xE000 | 0xE00D => {}
                0xE0DD => in_pixel_items = false,
                _ => return Ok(()),
            }
            continue;
        }
        if in_pixel_items {
            return Ok(());
        }
        let (vr, len, header) = if explicit {
            let vr = [b[pos + 4], b[pos + 5]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Ok(());
            }
            if long_vr(vr) {
                let Some(len) = u32_at(b, pos + 8) else {
                    return Err(format!(
                        "the header of ({group:04X},{elem:04X}) is cut off: {TRUNCATED}"
                    ));
                };
                (Some(vr), len, 12)
            } else {
                (Some(vr), u32::from(u16_at(b, pos + 6).unwrap_or(0)), 8)
            }
        } else {
            (None, item_len, 8)
        };
        pos += header;
        if len == UNDEFINED {
            if Tag(group, elem) == PIXEL_DATA {
                in_pixel_items = true;
                continue;
            }
            match vr {
                // a sequence (implicit VR: undefined length means a sequence)
                Some(vr) if &vr == b"SQ" => continue,
                None => continue,
                // e.g. UN of undefined length (an implicit VR sequence inside): stop here
                Some(_) => return Ok(()),
            }
        }
        if len as usize > b.len() - pos {
            return Err(too_long(len, pos));
        }
        let sequence = match vr {
            Some(vr) => &vr == b"SQ",
            // implicit VR: a defined-length sequence starts with an item that fits in it
            None => {
                len >= 8
                    && u16_at(b, pos) == Some(0xFFFE)
                    && u16_at(b, pos + 2) == Some(0xE000)
                    && u32_at(b, pos + 4).is_some_and(|l| l == UNDEFINED || l <= len - 8)
            }
        };
        if !sequence {
            pos += len as usize;
        }
    }
    Ok(())
}

/// `error: cause: cause` for an error and its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// The name of a transfer syntax (PS3.6 Table A-1), for messages.
pub fn transfer_syntax_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless Image Compression",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Part 2 Multi-component (Lossless Only)",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component Image Compression",
        "1.2.840.10008.1.2.4.94" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.95" => "JPIP Referenced Deflate",
        "1.2.840.10008.1.2.4.100" => "MPEG2 Main Profile / Main Level",
        "1.2.840.10008.1.2.4.101" => "MPEG2 Main Profile / High Level",
        "1.2.840.10008.1.2.4.102" => "MPEG-4 AVC/H.264 High Profile / Level 4.1",
        "1.2.840.10008.1.2.4.103" => "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
        "1.2.840.10008.1.2.4.104" => "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
        "1.2.840.10008.1.2.4.105" => "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
        "1.2.840.10008.1.2.4.106" => "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
        "1.2.840.10008.1.2.4.107" => "HEVC/H.265 Main Profile / Level 5.1",
        "1.2.840.10008.1.2.4.108" => "HEVC/H.265 Main 10 Profile / Level 5.1",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => return None,
    })
}

/// The name of a few SOP classes met next to ultrasound images, for messages.
fn sop_class_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        US_IMAGE_STORAGE => "US Image Storage",
        US_MULTIFRAME_IMAGE_STORAGE => "US Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.2" => "Enhanced US Volume Storage",
        "1.2.840.10008.5.1.4.1.1.7" => "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.11.1" => "Grayscale Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.66" => "Raw Data Storage",
        "1.2.840.10008.5.1.4.1.1.88.11" => "Basic Text SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.22" => "Enhanced SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.33" => "Comprehensive SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.34" => "Comprehensive 3D SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.59" => "Key Object Selection Document Storage",
        "1.2.840.10008.5.1.4.1.1.104.1" => "Encapsulated PDF Storage",
        _ => return None,
    })
}
