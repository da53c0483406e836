//! Fine-tunes an EchoVLM checkpoint (or trains one from scratch) on samples in the evaluation
//! JSONL format, with a validation split scored by the report metrics every epoch.
//!
//! ```text
//! cargo run --release --example finetune -- --model DIR --data train.jsonl --val val.jsonl \
//!     --out runs/tuned --train moe --epochs 1 --batch 4 --lr 1e-4
//! ```
//!
//! Sample lines: `{"images": ["a.png"], "prompt": "..." | "task": "report", "reference":
//! "...", "lang": "en" | "zh"}` (image paths relative to the JSONL). `--train` picks what
//! trains: `moe` (MoE blocks, coefficients and merger: EchoVLM's first stage), `lora` (LoRA
//! adapters on attention and the dense MLP, plus the MoE blocks and coefficients) or `all`
//! (every linear layer, for a model started with `--init`). The run writes:
//! `OUT/model` (the trained checkpoint, adapters merged: load it like any other),
//! `OUT/adapter` (with `--train lora`: a PEFT adapter directory), `OUT/state` (optimizer state
//! for `--resume`), `OUT/log.jsonl` (one line per step) and `OUT/val-epoch-N.json`.
//! Ctrl-C saves `OUT/state` and `OUT/model` before exiting.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use echovlm_eval::runner::{Sample, evaluate, read_samples};
use echovlm_pipeline::{DType, Device, EchoVlm, LoadOptions};
use echovlm_train::{
    LoraConfig, LossMean, ModelSize, OptimConfig, TrainConfig, TrainSample, Trainable, Trainer,
    encode_sample, epoch_order, init_checkpoint, save_adapter, save_merged, set_chat_template,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    /// MoE blocks, mixing coefficients and the merger.
    Moe,
    /// LoRA on attention and the dense MLP, plus the MoE blocks and coefficients.
    Lora,
    /// Every linear layer.
    All,
}

/// What a step's cross-entropy is a mean over (see `LossMean`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mean {
    /// Each micro-batch's own answer tokens; the step takes the mean over micro-batches.
    MicroBatch,
    /// All the step's answer tokens.
    Step,
}

/// Fine-tunes EchoVLM on a JSONL of samples.
#[derive(Parser, Debug)]
#[command(name = "finetune", about)]
struct Cli {
    /// The checkpoint to start from.
    #[arg(long, required_unless_present = "init")]
    model: Option<PathBuf>,
    /// Start from a new randomly initialised demo-size model whose tokenizer, chat template
    /// and configuration come from this checkpoint (written to OUT/init).
    #[arg(long, conflicts_with = "model")]
    init: Option<PathBuf>,
    /// Seed of the initial weights with --init.
    #[arg(long, default_value_t = 0)]
    init_seed: u64,
    /// With --init: the new model's chat template (a Jinja file), replacing the one of the
    /// --init checkpoint.
    #[arg(long, requires = "init")]
    chat_template: Option<PathBuf>,
    /// Training samples (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Validation samples (JSONL), generated for and scored after every epoch.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Score at most this many validation samples.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// What trains.
    #[arg(long, value_enum, default_value = "moe")]
    train: What,
    /// LoRA rank (with --train lora).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA alpha (with --train lora).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Samples per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Micro-batches of a step run at once, each on its own copy of the model (default: the
    /// threads, at most --accum). The trained weights do not depend on it.
    #[arg(long)]
    workers: Option<usize>,
    /// What a step's cross-entropy is a mean over when it has several micro-batches: each
    /// micro-batch's own answer tokens (micro-batch) or all the step's (step, which makes the
    /// step independent of how its samples are cut into micro-batches).
    #[arg(long, value_enum, default_value = "micro-batch")]
    loss_mean: Mean,
    /// Sort each step's samples by length before cutting them into micro-batches, so that
    /// short samples are not padded to long ones (with --loss-mean step the step's loss and
    /// gradient are unchanged, up to rounding).
    #[arg(long)]
    group_by_length: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Fraction of the steps spent warming up.
    #[arg(long, default_value_t = 0.05)]
    warmup_ratio: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Gradient-norm limit (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Weight of the router load-balancing loss (default: the checkpoint's
    /// router_aux_loss_coef).
    #[arg(long)]
    aux_loss_coef: Option<f64>,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue the run saved in OUT/state.
    #[arg(long)]
    resume: bool,
    /// Save OUT/state every this many steps (0: at epoch ends only).
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Most tokens per validation answer.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// CPU threads (default: the physical cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(cli: &Cli) -> Result<(), BoxError> {
    std::fs::create_dir_all(&cli.out)?;
    let model_dir = match (&cli.model, &cli.init) {
        (Some(dir), _) => dir.clone(),
        (None, Some(template)) => {
            let dir = cli.out.join("init");
            if !cli.resume || !dir.join("model.safetensors").is_file() {
                init_checkpoint(template, &dir, &ModelSize::demo(), cli.init_seed)?;
                if let Some(path) = &cli.chat_template {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    set_chat_template(&dir, &text)?;
                }
            }
            dir
        }
        (None, None) => return Err("--model or --init is required".into()),
    };
    let opts = LoadOptions::default()
        .device(Device::flex().autodiff())
        .dtype(DType::F32)
        .threads(cli.threads);
    let model = EchoVlm::load(&model_dir, &opts)?;

    let samples = read_samples(&cli.data)?;
    check_all(&model, &samples)?;
    let val: Vec<Sample> = match &cli.val {
        Some(p) => {
            let mut v = read_samples(p)?;
            v.truncate(cli.val_limit.unwrap_or(usize::MAX));
            v
        }
        None => Vec::new(),
    };

    let per_step = cli.batch.max(1) * cli.accum.max(1);
    let steps_per_epoch = samples.len().div_ceil(per_step);
    let total_steps = steps_per_epoch * cli.epochs;
    let config = TrainConfig {
        trainable: match cli.train {
            What::Moe => Trainable::default(),
            What::Lora => Trainable {
                moe: true,
                merger: false,
                lora: Some(LoraConfig {
                    rank: cli.lora_rank,
                    alpha: cli.lora_alpha,
                    seed: cli.seed,
                    ..LoraConfig::new(cli.lora_rank)
                }),
                full: Vec::new(),
            },
            What::All => Trainable::all(),
        },
        optim: OptimConfig {
            lr: cli.lr,
            weight_decay: cli.weight_decay,
            warmup_steps: (cli.warmup_ratio * total_steps as f64).round() as usize,
            total_steps,
            max_grad_norm: (cli.max_grad_norm > 0.0).then_some(cli.max_grad_norm),
            ..OptimConfig::default()
        },
        aux_loss_coef: cli.aux_loss_coef,
        loss_mean: match cli.loss_mean {
            Mean::MicroBatch => LossMean::MicroBatch,
            Mean::Step => LossMean::Step,
        },
    };
    let state_dir = cli.out.join("state");
    let (mut trainer, progress) = if cli.resume {
        Trainer::resume(model, config, &state_dir)?
    } else {
        (
            Trainer::new(model, config)?,
            serde_json::json!({"epoch": 0, "next": 0}),
        )
    };
    let workers = cli
        .workers
        .unwrap_or_else(rayon::current_num_threads)
        .clamp(1, cli.accum.max(1));
    trainer.set_workers(workers);
    let mut epoch = progress["epoch"].as_u64().unwrap_or(0) as usize;
    let mut next = progress["next"].as_u64().unwrap_or(0) as usize;
    eprintln!(
        "{} samples, {} steps per epoch of {} samples ({} at once), {} trainable values, aux loss weight {}",
        samples.len(),
        steps_per_epoch,
        per_step,
        cli.batch.max(1) * workers,
        trainer.num_trainable(),
        trainer.aux_loss_coef()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cli.out.join("log.jsonl"))?;
    let bar = ProgressBar::new(total_steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
    )?);
    bar.set_position(trainer.step_count() as u64);
    let started = Instant::now();
    let mut tokens_done = 0usize;
    while epoch < cli.epochs {
        let order = epoch_order(samples.len(), cli.seed, epoch);
        while next < order.len() {
            if stop.load(Ordering::SeqCst) {
                bar.abandon_with_message("interrupted");
                let progress = serde_json::json!({"epoch": epoch, "next": next});
                trainer.save_state(&state_dir, &progress)?;
                save_outputs(&trainer, &cli.out)?;
                eprintln!(
                    "saved {} and {} at step {}; continue with --resume",
                    state_dir.display(),
                    cli.out.join("model").display(),
                    trainer.step_count()
                );
                return Ok(());
            }
            let end = (next + per_step).min(order.len());
            // prepared per step, so that only one step's pixels are held at a time
            let mut picked: Vec<TrainSample> = order[next..end]
                .iter()
                .map(|&i| encode(trainer.model(), &samples[i], i))
                .collect::<Result<_, _>>()?;
            if cli.group_by_length {
                // stable: samples of one length keep the epoch's order
                picked.sort_by_key(TrainSample::len);
            }
            let micro: Vec<&[TrainSample]> = picked.chunks(cli.batch.max(1)).collect();
            let stats = trainer.step(&micro)?;
            next = end;
            tokens_done += stats.sequence_tokens;
            let rate = tokens_done as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "epoch {} loss {:.3} (ce {:.3}) lr {:.2e} {:.0} tok/s",
                epoch + 1,
                stats.loss,
                stats.ce,
                stats.lr,
                rate
            ));
            bar.inc(1);
            writeln!(
                log,
                "{}",
                serde_json::json!({"epoch": epoch + 1, "stats": stats})
            )?;
            if cli.save_every > 0 && stats.step.is_multiple_of(cli.save_every) {
                trainer.save_state(
                    &state_dir,
                    &serde_json::json!({"epoch": epoch, "next": next}),
                )?;
            }
        }
        epoch += 1;
        next = 0;
        trainer.save_state(&state_dir, &serde_json::json!({"epoch": epoch, "next": 0}))?;
        let model_out = save_outputs(&trainer, &cli.out)?;
        if !val.is_empty() {
            bar.suspend(|| validate(&model_out, &val, epoch, cli))?;
        }
    }
    bar.finish();
    eprintln!(
        "done: {} steps in {:.1} s; model in {}",
        trainer.step_count(),
        started.elapsed().as_secs_f64(),
        cli.out.join("model").display()
    );
    Ok(())
}

/// Prepares sample `index` (tokens, labels and pixels).
fn encode(model: &EchoVlm, sample: &Sample, index: usize) -> Result<TrainSample, BoxError> {
    Ok(encode_sample(
        model,
        &sample.request()?,
        &sample.reference,
        index,
    )?)
}

/// Prepares every sample once and drops it, so that a broken image, an empty answer or an
/// over-long sample is reported before training starts; the steps prepare their samples again,
/// so memory holds one step's pixels rather than the whole dataset's.
fn check_all(model: &EchoVlm, samples: &[Sample]) -> Result<(), BoxError> {
    let bar = ProgressBar::new(samples.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} samples checked",
    )?);
    for (i, s) in samples.iter().enumerate() {
        encode(model, s, i)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Saves OUT/model (adapters merged) and, for LoRA runs, OUT/adapter.
fn save_outputs(trainer: &Trainer, out: &Path) -> Result<PathBuf, BoxError> {
    let model_out = out.join("model");
    save_merged(trainer, &model_out, false)?;
    if trainer.config().trainable.lora.is_some() {
        save_adapter(trainer, &out.join("adapter"))?;
    }
    Ok(model_out)
}

fn validate(model_dir: &Path, val: &[Sample], epoch: usize, cli: &Cli) -> Result<(), BoxError> {
    let model = EchoVlm::load(model_dir, &LoadOptions::default())?;
    let mut opts = model.default_generation();
    opts.max_new_tokens = cli.max_new_tokens;
    let report = evaluate(&model, val, &opts, |_| {})?;
    let path = cli.out.join(format!("val-epoch-{epoch}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    eprintln!(
        "epoch {epoch}: BLEU-4 {:.2}  ROUGE-L {:.2}{}  ({})",
        report.corpus.bleu4,
        report.corpus.rouge_l,
        report
            .attributes
            .as_ref()
            .map(|a| format!(
                "  attributes {}",
                serde_json::to_string(a).unwrap_or_default()
            ))
            .unwrap_or_default(),
        path.display()
    );
    Ok(())
}
