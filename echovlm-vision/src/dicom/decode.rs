//! One decode: the pre-scan, dicom-rs' parse, the image attributes and their validation, then
//! the selected frames through the JPEG decoder or straight from the native pixel data.

use std::path::{Path, PathBuf};

use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;

use super::api::{DicomImage, FrameSelection, MAX_DICOM_TOTAL_PIXELS, has_dicom_magic};
use super::colour::{Layout, SampleFormat, read_voi, to_rgb};
use super::jpeg::{check_jpeg_header, frame_fragment_data};
use super::prescan::{PIXEL_DATA, check_lengths, scan_meta};
use super::uid::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE, sop_class_name,
    transfer_syntax_name, trim_uid,
};
use crate::error::ImageError;
use crate::preprocess::MAX_IMAGE_PIXELS;

const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
const MODALITY: Tag = Tag(0x0008, 0x0060);
const CINE_RATE: Tag = Tag(0x0018, 0x0040);
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

/// Builds the errors of one decode, all naming the same file.
pub(super) struct Ctx<'a> {
    path: Option<&'a Path>,
}

impl Ctx<'_> {
    pub(super) fn owned(&self) -> Option<PathBuf> {
        self.path.map(Path::to_path_buf)
    }
    pub(super) fn invalid(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Dicom {
            path: self.owned(),
            reason: reason.into(),
        }
    }
    pub(super) fn unsupported(&self, reason: impl Into<String>) -> ImageError {
        ImageError::UnsupportedDicom {
            path: self.owned(),
            reason: reason.into(),
        }
    }
}

pub(super) fn decode(
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

    let selected = selection
        .count(number_of_frames)
        .map_err(|r| cx.invalid(r))?;
    let total = frame_pixels.saturating_mul(selected as u64);
    if total > MAX_DICOM_TOTAL_PIXELS {
        return Err(cx.invalid(format!(
            "{selected} frames of {rows}x{columns} pixels (rows x columns) are {total} pixels, \
             more than the limit of {MAX_DICOM_TOTAL_PIXELS} pixels per call; select fewer frames",
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

    // The pixel data must hold the declared frames (one fragment at least per JPEG frame)
    // before a list of frame indices is built, so that a huge Number of Frames allocates nothing.
    let (fragments, native) = if jpeg {
        let fragments = pixel_data.fragments().ok_or_else(|| {
            cx.invalid("JPEG Baseline transfer syntax but the Pixel Data is not encapsulated")
        })?;
        if fragments.len() < number_of_frames {
            return Err(cx.invalid(format!(
                "Number of Frames (0028,0008) is {number_of_frames}, but the Pixel Data holds \
                 {} fragment{} (each frame needs at least one)",
                fragments.len(),
                if fragments.len() == 1 { "" } else { "s" },
            )));
        }
        (fragments, None)
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
        (&[][..], Some((data, frame_bytes)))
    };

    let indices = selection.indices(number_of_frames);
    let mut frames = Vec::with_capacity(indices.len());
    if let Some((data, frame_bytes)) = native {
        for &i in &indices {
            let frame = &data[i * frame_bytes..(i + 1) * frame_bytes];
            frames.push(to_rgb(frame, layout, sample, voi, h, w));
        }
    } else {
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
        cine_rate: obj
            .element_opt(CINE_RATE)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok())
            .filter(|t| t.is_finite()),
        window: voi.and_then(|v| v.window),
    })
}

/// A string attribute, trimmed of padding; `None` when absent, empty or not text.
pub(super) fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let s = e.to_str().ok()?;
    let s = trim_uid(&s);
    (!s.is_empty()).then(|| s.to_string())
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
pub(super) fn first_f64(
    obj: &DefaultDicomObject,
    tag: Tag,
    name: &str,
) -> Result<Option<f64>, String> {
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
