//! Deterministic synthetic ultrasound phantoms for training and evaluating small EchoVLM models.
//!
//! A phantom is a seed. The seed draws its [`Attributes`] (a lesion or none; the lesion's
//! echogenicity, quadrant, size class, margin and exact diameter), and the seed with the
//! attributes draws a B-mode image ([`render`]): a convex-probe fan on a black background,
//! speckle on tissue with depth-dependent gain, one organ with a bright capsule, the lesion in
//! its quadrant of the organ, and a depth scale with a tick every centimetre at the right edge.
//! Each attribute has one canonical report per language ([`report`]); [`parse_report`] reads
//! the attributes back from a generated answer and [`score`] compares them with the truth.
//! [`write_dataset`] writes PNGs and a JSONL of samples in the format of `echovlm-eval`.
//!
//! ```
//! use echovlm_phantom::{Lang, Phantom, parse_report, report, score, DEFAULT_SIZE};
//!
//! let phantom = Phantom::new(7);
//! let image = phantom.image(DEFAULT_SIZE);
//! assert_eq!(image.dimensions(), (DEFAULT_SIZE, DEFAULT_SIZE));
//! // the same seed always gives the same bytes
//! assert_eq!(image, Phantom::new(7).image(DEFAULT_SIZE));
//!
//! let text = report(&phantom.attributes, Lang::En);
//! let scores = score(&phantom.attributes, &parse_report(&text, Lang::En));
//! assert!(scores.lesion_present);
//! ```
//!
//! Seeds 0..1_000_000 are meant for training; the held-out set in the repository's
//! `fixtures/phantoms/` uses 1_000_000..1_000_200.

#![warn(missing_docs)]

mod attributes;
mod dataset;
mod render;
mod report;
mod rng;

use std::path::PathBuf;

pub use attributes::{
    Attributes, Echogenicity, Horizontal, Lang, Lesion, Margin, NO_LESION_PROBABILITY, Question,
    SizeClass, Vertical,
};
pub use dataset::{
    DatasetLine, DatasetOptions, WrittenDataset, encode_png, write_dataset,
    write_dataset_alternating, write_dataset_with,
};
pub use render::{
    DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, PX_PER_CM_AT_DEFAULT_SIZE, Rendering, render,
    render_with_mask,
};
pub use report::{AttributeScores, ParsedAttributes, parse_report, prompt, report, score};

/// The seeds a training set may use; held-out sets use seeds from [`HELDOUT_SEEDS_START`] on.
pub const TRAINING_SEEDS: std::ops::Range<u64> = 0..1_000_000;
/// The first seed of held-out sets.
pub const HELDOUT_SEEDS_START: u64 = 1_000_000;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhantomError {
    /// A string names no value of an attribute (or language).
    #[error("unknown {kind} {value:?}")]
    UnknownValue {
        /// The attribute.
        kind: &'static str,
        /// The string given.
        value: String,
    },
    /// A file or folder could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file it was meant for.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// A JSONL line could not be serialised.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A dataset name that is not a single plain file name.
    #[error("invalid dataset name {name:?}: expected one non-empty path component")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// An image size outside [`MIN_SIZE`]..=[`MAX_SIZE`].
    #[error("image size {size} is outside {MIN_SIZE}..={MAX_SIZE}")]
    Size {
        /// The size given.
        size: u32,
    },
    /// A dataset asked for with no language.
    #[error("no language given")]
    NoLanguage,
    /// A set told to reuse another set's images found one missing or of another size.
    #[error("{}: {reason} (write that set first, with the same seeds and size)", path.display())]
    ReusedImage {
        /// The image looked for.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A phantom: its seed and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phantom {
    /// The seed of the attributes (for [`Phantom::new`]) and of the image.
    pub seed: u64,
    /// What the image shows.
    pub attributes: Attributes,
}

impl Phantom {
    /// Phantom `seed` with the attributes [`Attributes::from_seed`] draws.
    pub fn new(seed: u64) -> Phantom {
        Phantom {
            seed,
            attributes: Attributes::from_seed(seed),
        }
    }

    /// Phantom `seed` showing the given attributes.
    pub fn with_attributes(seed: u64, attributes: Attributes) -> Phantom {
        Phantom { seed, attributes }
    }

    /// The image, `size` x `size` ([`render`]).
    pub fn image(&self, size: u32) -> image::RgbImage {
        render(self.seed, &self.attributes, size)
    }

    /// The image with its masks ([`render_with_mask`]).
    pub fn rendering(&self, size: u32) -> Rendering {
        render_with_mask(self.seed, &self.attributes, size)
    }

    /// The canonical report in `lang` ([`report`]).
    pub fn report(&self, lang: Lang) -> String {
        report(&self.attributes, lang)
    }
}
