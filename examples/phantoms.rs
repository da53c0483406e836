//! Writes a dataset of synthetic ultrasound phantoms: `OUT/NAME/<seed>.png` and `OUT/NAME.jsonl`
//! with one sample per seed and language (prompt, canonical report, attributes), ready for the
//! `eval` example's `--data`.
//!
//! Run with:
//! `cargo run --release --example phantoms -- --out data --name train --seeds 0..10000 --lang en,zh`
//!
//! Seeds 0..1000000 are for training; held-out sets use seeds from 1000000 on
//! (`fixtures/phantoms/heldout.jsonl` is `--seeds 1000000..1000200 --lang en,zh --alternate`).

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use echovlm_phantom::{DEFAULT_SIZE, Lang, write_dataset, write_dataset_alternating};

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
    let write = if cli.alternate {
        write_dataset_alternating
    } else {
        write_dataset
    };
    match write(&cli.out, &cli.name, cli.seeds.clone(), &cli.lang, cli.size) {
        Ok(jsonl) => {
            let images = cli.seeds.end - cli.seeds.start;
            let lines = if cli.alternate {
                images
            } else {
                images * cli.lang.len() as u64
            };
            let langs: Vec<String> = cli.lang.iter().map(Lang::to_string).collect();
            println!(
                "wrote {images} images ({size}x{size}) to {} and {lines} samples ({}) to {}",
                cli.out.join(&cli.name).display(),
                langs.join(","),
                jsonl.display(),
                size = cli.size,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
