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
//!   [`ImageError::UnsupportedDicom`](crate::error::ImageError::UnsupportedDicom).
//! * **Transfer syntaxes**: Implicit VR Little Endian, Explicit VR Little Endian and JPEG
//!   Baseline (Process 1). Everything else (JPEG 2000, JPEG-LS, RLE, deflate, big endian, video,
//!   …) is refused with [`ImageError::UnsupportedDicom`](crate::error::ImageError::UnsupportedDicom) naming the UID and its name.
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
//! Before dicom-rs parses a file, the element headers are walked (the file meta group as
//! dicom-object reads it, the data set by dicom-rs' own token reader) and any value that declares
//! more bytes than the file holds is refused as truncated, so a corrupt length never turns into
//! a huge allocation. Frame geometry is checked against
//! [`MAX_IMAGE_PIXELS`](crate::preprocess::MAX_IMAGE_PIXELS) per frame and
//! [`MAX_DICOM_TOTAL_PIXELS`] over the selected frames, and Number of Frames against what the
//! pixel data holds (bytes, or one fragment at least per JPEG frame), before any frame buffer or
//! frame list is allocated.
//!
//! # Layout of the module
//!
//! One concept per file, all private and re-exported here: `api` (the types and entry points),
//! `uid` (transfer syntax and SOP class UIDs and their names), `prescan` (the walk over the file
//! meta group and element headers before dicom-rs parses), `decode` (image attributes, their
//! validation and the frame loop), `jpeg` (encapsulated frames and the JPEG start-of-frame
//! header) and `colour` (sample unpacking, colour conversion and the VOI stage).

mod api;
mod colour;
mod decode;
mod jpeg;
mod prescan;
mod uid;

pub use api::{
    DicomImage, FrameSelection, MAX_DICOM_TOTAL_PIXELS, decode_dicom_bytes, has_dicom_magic,
    is_dicom, load_dicom,
};
pub use colour::{VoiLutFunction, apply_window, ybr_full_to_rgb};
pub use uid::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE, US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE, transfer_syntax_name,
};
