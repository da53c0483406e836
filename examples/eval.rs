//! Evaluation runner: generate for a JSONL of samples and score the outputs against references
//! (BLEU-1..4, ROUGE-1/2/L, accuracy for choice and diagnosis tasks), or score existing outputs.
//!
//! Run with:
//! `cargo run --release --example eval -- --model DIR --data samples.jsonl --out results`
//! `cargo run --release --example eval -- --score-only outputs.jsonl`
//!
//! Sample lines: `{"images": ["a.png", ...], "task": "report" | "prompt": "...",
//! "reference": "...", "lang": "zh" | "en", "options": ["...", ...]}`; image paths are relative
//! to the JSONL file. Score-only lines: `{"reference": "...", "hypothesis": "...", "lang": "zh"}`.
//! Without `--model` and `--data` it runs the demo checkpoint on `fixtures/eval/demo.jsonl`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use echovlm_pipeline::metrics::{
    BleuOptions, Language, ReportAccumulator, ReportOptions, Smoothing, extract_option_letter,
    normalize_answer, rouge_all, score_jsonl, sentence_bleu,
};
use echovlm_pipeline::{EchoVlm, GenerationOptions, Lang, LoadOptions, Request, Task};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

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
}

#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    images: Vec<PathBuf>,
    task: Option<String>,
    prompt: Option<String>,
    reference: String,
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    options: Vec<String>,
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
    let base = data.parent().unwrap_or(Path::new(".")).to_path_buf();
    let text = std::fs::read_to_string(&data)
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: Sample = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", data.display(), i + 1))?;
        samples.push((i + 1, s));
    }
    if let Some(n) = cli.limit {
        samples.truncate(n);
    }
    let model = EchoVlm::load(&model_dir, &LoadOptions::default())?;
    let mut opts: GenerationOptions = model.default_generation();
    opts.max_new_tokens = cli.max_new_tokens;

    let pb = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new(samples.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} samples {eta}").expect("template"),
        );
        pb
    });
    let mut acc = ReportAccumulator::new(Smoothing::Exp);
    let (mut choice_total, mut choice_right) = (0usize, 0usize);
    let mut rows = Vec::new();
    for (line, s) in &samples {
        let lang = match s.lang.as_deref().unwrap_or("zh") {
            "en" => (Lang::En, Language::English),
            _ => (Lang::Zh, Language::Chinese),
        };
        let mut request = match (&s.prompt, &s.task) {
            (Some(p), _) => Request::new(p.clone()),
            (None, Some(t)) if t == "diagnosis" || t == "choice" => Request::task(
                Task::Diagnosis {
                    options: s.options.clone(),
                },
                lang.0,
            ),
            (None, Some(t)) => Request::task(
                Task::from_name(t).ok_or_else(|| format!("line {line}: unknown task {t:?}"))?,
                lang.0,
            ),
            (None, None) => Request::task(Task::Report, lang.0),
        };
        for img in &s.images {
            request = request.image(base.join(img));
        }
        let out = model
            .generate(&request, &opts)
            .map_err(|e| format!("line {line}: {e}"))?;
        let hyp = out.text.trim().to_string();
        let ropts = ReportOptions::for_language(lang.1);
        acc.add(&s.reference, &hyp, &ropts);
        let bleu1 = sentence_bleu(&hyp, &s.reference, &BleuOptions::sentence(lang.1, 1)).score;
        let bleu4 = sentence_bleu(&hyp, &s.reference, &BleuOptions::sentence(lang.1, 4)).score;
        let rouge = rouge_all(&hyp, &s.reference, lang.1);
        let is_choice = !s.options.is_empty();
        let correct = is_choice.then(|| {
            let want = extract_option_letter(&s.reference);
            let got = extract_option_letter(&hyp);
            match (want, got) {
                (Some(w), Some(g)) => w == g,
                _ => normalize_answer(&hyp) == normalize_answer(&s.reference),
            }
        });
        if let Some(c) = correct {
            choice_total += 1;
            choice_right += c as usize;
        }
        rows.push(serde_json::json!({
            "line": line,
            "lang": lang.1.code(),
            "reference": s.reference,
            "hypothesis": hyp,
            "bleu1": bleu1,
            "bleu4": bleu4,
            "rouge1": rouge.rouge1.f1 * 100.0,
            "rouge2": rouge.rouge2.f1 * 100.0,
            "rougeL": rouge.rouge_l.f1 * 100.0,
            "correct": correct,
            "generated_tokens": out.generated_token_ids.len(),
        }));
        if let Some(pb) = &pb {
            pb.inc(1);
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let corpus = acc.scores();
    let accuracy = (choice_total > 0).then(|| 100.0 * choice_right as f64 / choice_total as f64);
    let summary = serde_json::json!({
        "model": model_dir,
        "data": data,
        "corpus": corpus,
        "accuracy": accuracy,
        "choice_samples": choice_total,
        "samples": rows,
    });
    let json_path = cli.out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let csv_path = cli.out.with_extension("csv");
    let mut csv = std::fs::File::create(&csv_path)
        .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
    writeln!(
        csv,
        "line,lang,bleu1,bleu4,rouge1,rouge2,rougeL,correct,reference,hypothesis"
    )?;
    for r in &rows {
        let q = |k: &str| format!("\"{}\"", r[k].as_str().unwrap_or("").replace('"', "\"\""));
        writeln!(
            csv,
            "{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{}",
            r["line"],
            r["lang"].as_str().unwrap_or(""),
            r["bleu1"].as_f64().unwrap_or(0.0),
            r["bleu4"].as_f64().unwrap_or(0.0),
            r["rouge1"].as_f64().unwrap_or(0.0),
            r["rouge2"].as_f64().unwrap_or(0.0),
            r["rougeL"].as_f64().unwrap_or(0.0),
            r["correct"]
                .as_bool()
                .map_or(String::new(), |c| c.to_string()),
            q("reference"),
            q("hypothesis"),
        )?;
    }
    println!(
        "{}",
        serde_json::json!({"corpus": corpus, "accuracy": accuracy, "json": json_path, "csv": csv_path})
    );
    Ok(())
}
