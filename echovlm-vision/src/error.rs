//! Errors of image loading and preprocessing.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading an image or turning it into pixel values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An image or configuration file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The image file (or byte buffer) holds no bytes at all.
    #[error("image{} is empty (0 bytes)", at(.path))]
    Empty {
        /// The file, when the image came from one.
        path: Option<PathBuf>,
    },
    /// The bytes are not an image in a supported format (PNG, JPEG, BMP, TIFF), or the image
    /// data is truncated or corrupt.
    #[error("cannot decode image{}: {reason}", at(.path))]
    Decode {
        /// The file, when the image came from one.
        path: Option<PathBuf>,
        /// What the decoder reported.
        reason: String,
    },
    /// The image declares (or would be resized to) more pixels than the decompression-bomb
    /// limit allows; refused before any pixel buffer is allocated.
    #[error(
        "image{} is {width}x{height} pixels ({} pixels), more than the limit of {limit} pixels",
        at(.path),
        u128::from(*.width) * u128::from(*.height)
    )]
    TooLarge {
        /// The file, when the image came from one.
        path: Option<PathBuf>,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// The largest accepted `width * height`.
        limit: u64,
    },
    /// The longer side is more than 200 times the shorter one, which the Qwen2-VL processor
    /// refuses (`MAX_RATIO = 200` in `smart_resize`).
    #[error(
        "image of {height}x{width} pixels (height x width) has an aspect ratio above 200, \
         which Qwen2-VL's smart_resize does not accept"
    )]
    AspectRatio {
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// The image (or a requested size) has a zero height or width.
    #[error("image has a zero dimension ({height}x{width} pixels, height x width)")]
    ZeroSize {
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// The frames of a video do not all have the same size.
    #[error(
        "video frame {index} is {}x{} pixels but frame 0 is {}x{} (height x width); \
         all frames of a video must have the same size",
        .found.0, .found.1, .expected.0, .expected.1
    )]
    FrameSizeMismatch {
        /// Index of the first frame whose size differs from frame 0.
        index: usize,
        /// `(height, width)` of frame 0.
        expected: (usize, usize),
        /// `(height, width)` of frame `index`.
        found: (usize, usize),
    },
    /// A video was given without any frame.
    #[error("a video needs at least one frame, got none")]
    NoFrames,
    /// Pixel values whose parts disagree (see `PixelValues::validate`): the data is not
    /// `rows × row_len` values, `rows` is not `grid_t · grid_h · grid_w`, a grid side is zero,
    /// or `grid_h` / `grid_w` is not a multiple of the merge size.
    #[error(
        "pixel values are inconsistent: {data_len} values in {rows} rows, grid (t, h, w) =          {grid_thw:?}, but rows of {row_len} values and a merge size of {merge_size} are expected"
    )]
    PixelShape {
        /// Length of the data.
        data_len: usize,
        /// The declared number of patch rows.
        rows: usize,
        /// The declared `(grid_t, grid_h, grid_w)`.
        grid_thw: [usize; 3],
        /// Values per row the consumer expects (`3 · temporal_patch_size · patch_size²`).
        row_len: usize,
        /// The consumer's merge size (`grid_h` and `grid_w` must be multiples of it).
        merge_size: usize,
    },
    /// A preprocessing configuration (e.g. `preprocessor_config.json`) is malformed or holds
    /// values that cannot be used.
    #[error("invalid preprocessor config{}: {reason}", at(.path))]
    Config {
        /// The configuration file, when the values came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A DICOM file (or byte buffer) is not DICOM at all, is truncated or corrupt, holds
    /// inconsistent image attributes, or a requested frame selection does not fit it.
    #[error("invalid DICOM{}: {reason}", at(.path))]
    Dicom {
        /// The file, when the object came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed DICOM object that cannot be turned into RGB frames: no pixel data (e.g. a
    /// structured report), an unsupported transfer syntax, photometric interpretation or sample
    /// layout.
    #[error("unsupported DICOM{}: {reason}", at(.path))]
    UnsupportedDicom {
        /// The file, when the object came from one.
        path: Option<PathBuf>,
        /// What is not supported (names the transfer syntax, SOP class or attribute).
        reason: String,
    },
}

impl ImageError {
    /// Builds an [`ImageError::Config`] without a file.
    pub fn config(reason: impl Into<String>) -> Self {
        ImageError::Config {
            path: None,
            reason: reason.into(),
        }
    }

    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageError::Io { path, .. } => Some(path),
            ImageError::Empty { path }
            | ImageError::Decode { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::Config { path, .. }
            | ImageError::Dicom { path, .. }
            | ImageError::UnsupportedDicom { path, .. } => path.as_deref(),
            _ => None,
        }
    }
}

/// `" <path>"` for messages, or nothing.
fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}
