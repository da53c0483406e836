//! Writes a dataset of synthetic ultrasound phantoms: `OUT/NAME/<seed>.png` and `OUT/NAME.jsonl`
//! with one sample per seed and language (prompt, canonical report, attributes), ready for the
//! `eval` example's `--data`.
//!
//! Run with:
//! `cargo run --release --example phantoms -- --out data --name train --seeds 0..10000 --lang en,zh`
//!
//! `--echogenicity`, `--margin` and `--size-class` keep only the seeds whose lesion has the
//! given values, and `--ask echogenicity` asks a short question on the lesion instead of the
//! report: both add signal on the hard cases to a training mix
//! (`fixtures/models/echovlm-demo/README.md`).
//! `--images-of NAME` points the lines to the images of a set written before with the same
//! seeds (a question set beside its report set) instead of rendering them again.
//!
//! Seeds 0..1000000 are for training; held-out sets use seeds from 1000000 on
//! (`fixtures/phantoms/heldout.jsonl` is `--seeds 1000000..1000200 --lang en,zh --alternate`).

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use echovlm_phantom::{
    DEFAULT_SIZE, DatasetOptions, Echogenicity, Lang, Margin, Question, SizeClass,
    write_dataset_with,
};

/// Writes synthetic ultrasound phantoms and their reports.
#[derive(Parser, Debug)]
#[command(name = "phantoms", about)]
struct Cli {
    /// Folder to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Dataset name: images go to OUT/NAME/, samples to OUT/NAME.jsonl.
    #[arg(long)]
    name: String,
    /// Seeds, START..END (END excluded).
    #[arg(long, value_parser = parse_seeds)]
    seeds: Range<u64>,
    /// Languages of the prompt and report, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "en,zh")]
    lang: Vec<Lang>,
    /// Image side in pixels.
    #[arg(long, default_value_t = DEFAULT_SIZE)]
    size: u32,
    /// One sample per seed, the languages taken in turn by seed (seed % number of languages)
    /// instead of one sample per seed and language.
    #[arg(long)]
    alternate: bool,
    /// Keep only the phantoms with a lesion of these echogenicities (comma separated:
    /// anechoic, hypoechoic, hyperechoic); the other seeds are skipped.
    #[arg(long, value_delimiter = ',')]
    echogenicity: Vec<Echogenicity>,
    /// Keep only the phantoms with a lesion of these margins (comma separated: smooth,
    /// irregular); the other seeds are skipped.
    #[arg(long, value_delimiter = ',')]
    margin: Vec<Margin>,
    /// Keep only the phantoms with a lesion of these size classes (comma separated: small,
    /// medium, large); the other seeds are skipped.
    #[arg(long, value_delimiter = ',')]
    size_class: Vec<SizeClass>,
    /// Ask this short question on the lesion instead of the report (echogenicity); the phantoms
    /// without a lesion are skipped.
    #[arg(long)]
    ask: Option<Question>,
    /// Point to the images of the set NAME written earlier in OUT (same seeds, same size)
    /// instead of rendering them again: a phantom's image depends only on its seed and size.
    #[arg(long, value_name = "NAME")]
    images_of: Option<String>,
}

fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected START..END, got {s:?}"))?;
    let num = |t: &str| {
        t.trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|e| format!("{t:?}: {e}"))
    };
    let (start, end) = (num(a)?, num(b)?);
    if start >= end {
        return Err(format!("empty range {start}..{end}"));
    }
    Ok(start..end)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!(
                "{} (see --help)",
                msg.lines().next().unwrap_or("invalid arguments").trim()
            );
            return ExitCode::from(2);
        }
    };
    let mut options = DatasetOptions::default()
        .with_echogenicity(&cli.echogenicity)
        .with_margin(&cli.margin)
        .with_size(&cli.size_class);
    if cli.alternate {
        options = options.alternating();
    }
    if let Some(q) = cli.ask {
        options = options.asking(q);
    }
    if let Some(other) = &cli.images_of {
        options = options.reusing_images_of(other);
    }
    match write_dataset_with(
        &cli.out,
        &cli.name,
        cli.seeds.clone(),
        &cli.lang,
        cli.size,
        &options,
    ) {
        Ok(written) => {
            let langs: Vec<String> = cli.lang.iter().map(Lang::to_string).collect();
            let images = match &cli.images_of {
                Some(other) => format!("reused the images of {}", cli.out.join(other).display()),
                None => format!(
                    "wrote {} images ({size}x{size}) to {}",
                    written.images,
                    cli.out.join(&cli.name).display(),
                    size = cli.size
                ),
            };
            println!(
                "{images} and {} samples ({}) to {}",
                written.lines,
                langs.join(","),
                written.jsonl.display(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
