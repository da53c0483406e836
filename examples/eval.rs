//! Evaluation runner: generate for a JSONL of samples and score the outputs against references
//! (BLEU-1..4, ROUGE-1/2/L, accuracy for choice and diagnosis tasks), or score existing outputs.
//!
//! Run with:
//! `cargo run --release --example eval -- --model DIR --data samples.jsonl --out results`
//! `cargo run --release --example eval -- --score-only outputs.jsonl`
//!
//! Sample lines: `{"images": ["a.png", ...], "task": "report" | "prompt": "...",
//! "reference": "...", "lang": "zh" | "en", "options": ["...", ...]}`; image paths are relative
//! to the JSONL file. Phantom samples (`cargo run --example phantoms`) also carry `"attributes"`;
//! their answers are then scored per attribute (lesion present, echogenicity, position, size,
//! margin) in the summary's `attributes`.
//! Score-only lines: `{"reference": "...", "hypothesis": "...", "lang": "zh"}`.
//! Without `--model` and `--data` it runs the demo checkpoint on `fixtures/eval/demo.jsonl`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use echovlm_eval::runner::{evaluate, read_samples};
use echovlm_eval::score_jsonl;
use echovlm_pipeline::{EchoVlm, GenerationOptions, LoadOptions, Weights};
use indicatif::{ProgressBar, ProgressStyle};

/// Scores EchoVLM outputs with the report metrics of the literature.
#[derive(Parser, Debug)]
#[command(name = "eval", about)]
struct Cli {
    /// Model directory (default: the random-weight demo checkpoint).
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL of samples to generate for (default: fixtures/eval/demo.jsonl).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output prefix: writes PREFIX.json (per-sample and corpus scores) and PREFIX.csv.
    #[arg(long, default_value = "eval-results")]
    out: PathBuf,
    /// Score an existing JSONL of {reference, hypothesis, lang} and print one JSON object.
    #[arg(long, value_name = "FILE")]
    score_only: Option<PathBuf>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Stop after this many samples.
    #[arg(long)]
    limit: Option<usize>,
    /// On the CPU, how linear weights are kept: auto, f32, bf16, int8, int4 or portable (as in
    /// the `echovlm` example); to measure what a compact format costs in accuracy.
    #[arg(long, default_value = "auto")]
    weights: String,
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &cli.score_only {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let report = score_jsonl(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let o = &report.overall;
        let v = serde_json::json!({
            "bleu1": o.bleu1, "bleu2": o.bleu2, "bleu3": o.bleu3, "bleu4": o.bleu4,
            "rouge1": o.rouge1, "rouge2": o.rouge2, "rougeL": o.rouge_l, "samples": o.samples,
            "english": report.english, "chinese": report.chinese,
        });
        println!("{v}");
        return Ok(());
    }

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let model_dir = cli
        .model
        .clone()
        .unwrap_or_else(|| fixtures.join("models/tiny-echovlm"));
    if cli.model.is_none() {
        eprintln!(
            "note: no --model given; using the random-weight demo checkpoint (scores are meaningless)"
        );
    }
    let data = cli
        .data
        .clone()
        .unwrap_or_else(|| fixtures.join("eval/demo.jsonl"));
    let mut samples = read_samples(&data)?;
    if let Some(n) = cli.limit {
        samples.truncate(n);
    }
    let weights: Weights = cli.weights.parse()?;
    let model = EchoVlm::load(&model_dir, &LoadOptions::default().weights(weights))?;
    eprintln!("note: weights: {}", model.weight_choice());
    let mut opts: GenerationOptions = model.default_generation();
    opts.max_new_tokens = cli.max_new_tokens;

    let pb = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new(samples.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} samples {eta}").expect("template"),
        );
        pb
    });
    let report = evaluate(&model, &samples, &opts, |done| {
        if let Some(pb) = &pb {
            pb.set_position(done as u64);
        }
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let (corpus, accuracy, attributes) = (report.corpus, report.accuracy, report.attributes);
    let mut summary = serde_json::json!({
        "model": model_dir,
        "data": data,
        "corpus": report.corpus,
        "accuracy": report.accuracy,
        "choice_samples": report.choice_samples,
        "samples": report.samples,
    });
    // per-attribute accuracy, only when the data has phantom samples
    if let Some(a) = &attributes {
        summary["attributes"] = serde_json::to_value(a)?;
    }
    let json_path = cli.out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let csv_path = cli.out.with_extension("csv");
    let csv = std::fs::File::create(&csv_path)
        .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
    report
        .write_csv(std::io::BufWriter::new(csv))
        .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
    let mut printed = serde_json::json!({"corpus": corpus, "accuracy": accuracy, "json": json_path, "csv": csv_path});
    if let Some(a) = &attributes {
        printed["attributes"] = serde_json::to_value(a)?;
    }
    println!("{printed}");
    Ok(())
}
