//! Writing phantoms as PNGs plus a JSONL of evaluation samples.

use std::io::Write;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::PhantomError;
use crate::attributes::{Attributes, Echogenicity, Lang, Margin, Question, SizeClass};
use crate::render::{MAX_SIZE, MIN_SIZE, render};
use crate::report::{prompt, report};

/// One JSONL line of a phantom dataset: a sample of `echovlm-eval`'s runner
/// (`images`, `prompt`, `reference`, `lang`) plus the phantom's `seed` and `attributes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetLine {
    /// The image, relative to the JSONL file: `<name>/<seed>.png`.
    pub images: Vec<String>,
    /// The question: [`prompt`], or a [`Question`]'s ([`DatasetOptions::question`]).
    pub prompt: String,
    /// The canonical report ([`report`]), or the question's answer.
    pub reference: String,
    /// The language of prompt and reference.
    pub lang: Lang,
    /// The phantom's seed.
    pub seed: u64,
    /// The phantom's attributes.
    pub attributes: Attributes,
}

/// Encodes an image as an 8-bit greyscale PNG (the phantoms are grey, so the red channel is the
/// image), with the best compression.
///
/// # Errors
/// The encoder's error.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let gray: Vec<u8> = image.pixels().map(|p| p.0[0]).collect();
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive)
        .write_image(&gray, image.width(), image.height(), ExtendedColorType::L8)?;
    Ok(out)
}

/// Writes phantoms `seeds` (attributes from [`Attributes::from_seed`]) as
/// `dir/<name>/<seed>.png` (`size` x `size`, 8-bit grey) and `dir/<name>.jsonl` with one
/// [`DatasetLine`] per seed and language, in that order. Returns the JSONL's path.
///
/// # Errors
/// [`PhantomError::InvalidName`] for a `name` that is not one plain path component,
/// [`PhantomError::Size`] for `size` outside [`MIN_SIZE`]..=[`MAX_SIZE`],
/// [`PhantomError::NoLanguage`] for empty `langs`, [`PhantomError::Io`] when a file cannot be
/// written.
pub fn write_dataset(
    dir: &Path,
    name: &str,
    seeds: Range<u64>,
    langs: &[Lang],
    size: u32,
) -> Result<PathBuf, PhantomError> {
    write_dataset_with(dir, name, seeds, langs, size, &DatasetOptions::default()).map(|w| w.jsonl)
}

/// Like [`write_dataset`], but one line per seed: seed `s` is asked in `langs[s % langs.len()]`
/// (with `[En, Zh]`, English for even seeds and Chinese for odd ones).
///
/// # Errors
/// As [`write_dataset`].
pub fn write_dataset_alternating(
    dir: &Path,
    name: &str,
    seeds: Range<u64>,
    langs: &[Lang],
    size: u32,
) -> Result<PathBuf, PhantomError> {
    write_dataset_with(
        dir,
        name,
        seeds,
        langs,
        size,
        &DatasetOptions::default().alternating(),
    )
    .map(|w| w.jsonl)
}

/// How [`write_dataset_with`] writes a dataset. The default is [`write_dataset`]'s: every
/// phantom of the seed range, one report sample per language.
///
/// A non-empty `echogenicity`, `margin` or `size` list keeps only the phantoms with a lesion
/// whose attribute is in it; a `question` asks it instead of the report, so phantoms without a
/// lesion are skipped. Together they add more of the cases a model reads worst to a training mix; the
/// seeds, and so the images, stay those of [`Attributes::from_seed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetOptions {
    /// One sample per seed, in `langs[seed % langs.len()]`, as [`write_dataset_alternating`].
    pub alternate: bool,
    /// Lesion echogenicities to keep (empty: any).
    pub echogenicity: Vec<Echogenicity>,
    /// Lesion margins to keep (empty: any).
    pub margin: Vec<Margin>,
    /// Lesion size classes to keep (empty: any).
    pub size: Vec<SizeClass>,
    /// The question each sample asks instead of the report ([`prompt`]).
    pub question: Option<Question>,
    /// The set whose images the lines point to (`<images_of>/<seed>.png`, written earlier in the
    /// same folder with the same size) instead of rendering their own: a phantom's image
    /// depends only on its seed and the size, so a question set can share a report set's.
    pub images_of: Option<String>,
}

impl DatasetOptions {
    /// One sample per seed, the languages taken in turn by seed.
    pub fn alternating(mut self) -> Self {
        self.alternate = true;
        self
    }

    /// Only lesions of these echogenicities (an empty list: any).
    pub fn with_echogenicity(mut self, values: &[Echogenicity]) -> Self {
        self.echogenicity = values.to_vec();
        self
    }

    /// Only lesions with these margins (an empty list: any).
    pub fn with_margin(mut self, values: &[Margin]) -> Self {
        self.margin = values.to_vec();
        self
    }

    /// Only lesions of these size classes (an empty list: any).
    pub fn with_size(mut self, values: &[SizeClass]) -> Self {
        self.size = values.to_vec();
        self
    }

    /// Ask `question` instead of the report (only phantoms with a lesion are written).
    pub fn asking(mut self, question: Question) -> Self {
        self.question = Some(question);
        self
    }

    /// Point to the images of the set `name` instead of rendering them again (see
    /// [`images_of`](Self::images_of)).
    pub fn reusing_images_of(mut self, name: &str) -> Self {
        self.images_of = Some(name.to_string());
        self
    }

    /// Whether the phantom with `attributes` is written.
    pub fn keeps(&self, attributes: &Attributes) -> bool {
        if self.echogenicity.is_empty()
            && self.margin.is_empty()
            && self.size.is_empty()
            && self.question.is_none()
        {
            return true;
        }
        attributes.lesion.is_some_and(|l| {
            (self.echogenicity.is_empty() || self.echogenicity.contains(&l.echogenicity))
                && (self.margin.is_empty() || self.margin.contains(&l.margin))
                && (self.size.is_empty() || self.size.contains(&l.size))
        })
    }
}

/// What [`write_dataset_with`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrittenDataset {
    /// The JSONL file.
    pub jsonl: PathBuf,
    /// Images written (none when another set's are reused).
    pub images: u64,
    /// JSONL lines written.
    pub lines: u64,
}

fn valid_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(Component::Normal(_)))
        && parts.next().is_none()
        && !name.contains(['/', '\\', '\0'])
}

/// Checks that a reused image exists and is `size` pixels square (its header only).
fn check_reused(path: &Path, size: u32) -> Result<(), PhantomError> {
    let reused = |reason: String| PhantomError::ReusedImage {
        path: path.to_path_buf(),
        reason,
    };
    match image::image_dimensions(path) {
        Ok((w, h)) if w == size && h == size => Ok(()),
        Ok((w, h)) => Err(reused(format!("{w}x{h} pixels, not {size}x{size}"))),
        Err(e) => Err(reused(e.to_string())),
    }
}

/// Most phantoms rendered at once (in parallel) before their files and lines are written.
const RENDER_CHUNK: usize = 256;

/// Bytes of RGB pixels that one batch of renders may stand for (its PNGs are held until
/// written), so that large images come in smaller batches.
const RENDER_BYTES: usize = 256 << 20;

/// Writes the phantoms of `seeds` as `options` says: [`write_dataset`] with the default
/// options; the phantoms the options do not keep are skipped (no image, no line).
///
/// # Errors
/// As [`write_dataset`]; [`PhantomError::ReusedImage`] when a set whose images are reused
/// lacks one of the kept seeds or holds it at another size.
pub fn write_dataset_with(
    dir: &Path,
    name: &str,
    seeds: Range<u64>,
    langs: &[Lang],
    size: u32,
    options: &DatasetOptions,
) -> Result<WrittenDataset, PhantomError> {
    if !valid_name(name) {
        return Err(PhantomError::InvalidName {
            name: name.to_string(),
        });
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(PhantomError::Size { size });
    }
    if langs.is_empty() {
        return Err(PhantomError::NoLanguage);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PhantomError::Io { path, source }
    };
    let image_set = match &options.images_of {
        Some(other) if !valid_name(other) => {
            return Err(PhantomError::InvalidName {
                name: other.clone(),
            });
        }
        Some(other) => other.as_str(),
        None => name,
    };
    let image_dir = dir.join(image_set);
    if options.images_of.is_none() {
        std::fs::create_dir_all(&image_dir).map_err(io(&image_dir))?;
    }
    let jsonl = dir.join(format!("{name}.jsonl"));
    let file = std::fs::File::create(&jsonl).map_err(io(&jsonl))?;
    let mut out = std::io::BufWriter::new(file);
    let (mut images, mut lines) = (0, 0);
    let kept = seeds.filter_map(|seed| {
        let attributes = Attributes::from_seed(seed);
        options.keeps(&attributes).then_some((seed, attributes))
    });
    let pixel_bytes = 3 * size as usize * size as usize;
    // at least one image per thread, at most RENDER_CHUNK (max/min: no clamp panic)
    let per_batch = (RENDER_BYTES / pixel_bytes)
        .max(rayon::current_num_threads())
        .min(RENDER_CHUNK);
    let mut chunk = Vec::with_capacity(per_batch);
    let mut kept = kept.peekable();
    while kept.peek().is_some() {
        chunk.clear();
        chunk.extend(kept.by_ref().take(per_batch));
        // the images render on every core; files and lines are written in seed order
        let pngs: Vec<_> = if options.images_of.is_some() {
            chunk.iter().map(|_| None).collect()
        } else {
            chunk
                .par_iter()
                .map(|(seed, attributes)| Some(encode_png(&render(*seed, attributes, size))))
                .collect()
        };
        for ((seed, attributes), png) in chunk.iter().zip(pngs) {
            let seed = *seed;
            let png_path = image_dir.join(format!("{seed}.png"));
            match png {
                Some(png) => {
                    let png = png.map_err(|source| PhantomError::Image {
                        path: png_path.clone(),
                        source,
                    })?;
                    std::fs::write(&png_path, png).map_err(io(&png_path))?;
                    images += 1;
                }
                None => check_reused(&png_path, size)?,
            }
            let chosen: Vec<Lang> = if options.alternate {
                // the length fits in u64 on every platform Rust supports
                let i = (seed % langs.len() as u64) as usize;
                vec![langs[i]]
            } else {
                langs.to_vec()
            };
            for lang in chosen {
                let (prompt, reference) = match (options.question, &attributes.lesion) {
                    (Some(q), Some(lesion)) => (q.prompt(lang), q.answer(lesion, lang)),
                    _ => (prompt(lang), report(attributes, lang)),
                };
                let line = DatasetLine {
                    images: vec![format!("{image_set}/{seed}.png")],
                    prompt: prompt.to_string(),
                    reference,
                    lang,
                    seed,
                    attributes: *attributes,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n").map_err(io(&jsonl))?;
                lines += 1;
            }
        }
    }
    out.flush().map_err(io(&jsonl))?;
    Ok(WrittenDataset {
        jsonl,
        images,
        lines,
    })
}
