//! The `echovlm` command: an ultrasound report (or diagnosis, or answer) from images.
//!
//! Run with: `cargo run --release --example echovlm -- --model DIR --image frame.png --task report`
//! (`--model org/name[@revision]` loads a checkpoint from the Hugging Face Hub instead).
//!
//! Without `--model` it runs the demo model shipped in `fixtures/models/echovlm-demo` (a small
//! EchoVLM trained on synthetic ultrasound phantoms by the `finetune` example) on a held-out
//! phantom, exercising the whole path.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, error::ErrorKind};
use echovlm_pipeline::{
    EchoError, EchoVlm, GenerationOptions, HubId, Lang, LoadOptions, Output, Request, Task,
    Timings, Weights, device_from_name, dtype_for, probe_device, routing_png,
};
use echovlm_vision::dicom::FrameSelection;
use indicatif::{ProgressBar, ProgressStyle};

/// Writes an ultrasound report, diagnosis or answer from images with an EchoVLM checkpoint.
#[derive(Parser, Debug)]
#[command(name = "echovlm", version, about)]
struct Cli {
    /// Model directory (config.json, *.safetensors, tokenizer.json, ...) or a Hugging Face
    /// Hub id, org/name[@revision], downloaded into the Hugging Face cache (HF_HOME,
    /// HF_ENDPOINT, HF_HUB_OFFLINE=1 and HF_TOKEN apply). Default: the random-weight demo
    /// checkpoint in fixtures/.
    #[arg(long)]
    model: Option<String>,
    /// An ultrasound image (PNG, JPEG, BMP, TIFF); repeat for several key frames.
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Frames of a cine loop, in time order (repeat the flag, or give a directory of frames).
    #[arg(long = "frames", value_name = "PATH", num_args = 1..)]
    frames: Vec<PathBuf>,
    /// The question or instruction (overrides --task).
    #[arg(long)]
    prompt: Option<String>,
    /// A task preset: report, findings, impression, diagnosis, caption.
    #[arg(long, default_value = "report")]
    task: String,
    /// Options for --task diagnosis, separated by ';' (a multiple-choice diagnosis).
    #[arg(long)]
    options: Option<String>,
    /// Language of the task preset: zh or en.
    #[arg(long, default_value = "zh")]
    lang: String,
    /// System prompt (default: the chat template's).
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature; 0 means greedy. Giving it (or --top-k/--top-p) turns sampling on.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens when sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Repetition penalty (transformers' semantics).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens to generate [default: 1024, or what the context leaves].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Do not stop at end-of-turn tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Smallest image area in pixels after resizing.
    #[arg(long)]
    min_pixels: Option<usize>,
    /// Largest image area in pixels after resizing.
    #[arg(long)]
    max_pixels: Option<usize>,
    /// cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Float type of activations (and of the weights off the CPU): f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// On the CPU, how linear weights are kept: auto (the checkpoint's storage type, bf16 for
    /// the released EchoVLM, or int8, then int4, when that would not fit in the available
    /// memory), f32, bf16, int8 (the full EchoVLM in 12.4 GB) or int4 (6.6 GB), or "portable"
    /// for Burn's own matmul. Off the CPU the weights are Burn tensors of --dtype.
    #[arg(long, default_value = "auto")]
    weights: String,
    /// Threads of the CPU path (default: RAYON_NUM_THREADS when set, else the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// A LoRA adapter directory (PEFT layout, or written by the finetune example) applied over
    /// the checkpoint.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// On a GPU, decode every step one by one instead of replaying a recorded decode step
    /// (decoding one request replays by default).
    #[arg(long)]
    no_decode_graphs: bool,
    /// On a GPU, where compiled kernels and autotune results are kept for the next run: a
    /// directory, or "off" (also 0 or false; builds with the `kernel-cache` feature; default:
    /// ECHOVLM_KERNEL_CACHE, else CubeCL's place, `target/environment` inside a Cargo
    /// workspace or ~/.cache/cubecl).
    #[arg(long, value_name = "DIR|off")]
    kernel_cache: Option<String>,
    /// Run the request this many times and report the last run (the first run on a GPU also
    /// compiles and tunes its kernels); with --json, every run's timings are listed under
    /// `runs`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print one JSON object instead of streaming the text.
    #[arg(long)]
    json: bool,
    /// Frames per second of the cine loop (--frames, or a multi-frame DICOM image). Qwen2.5-VL
    /// checkpoints (EchoVLM V2) place frames on an absolute time axis; Qwen2-VL ones (V1)
    /// ignore it. Default: a DICOM object's own rate (Cine Rate, else Frame Time; divided by N
    /// for --dicom-frames stride:N) when it records one, else 2.0.
    #[arg(long, value_name = "F")]
    fps: Option<f64>,
    /// Frames of multi-frame DICOM images: all, stride:N or list:0,4,8.
    #[arg(long, default_value = "all")]
    dicom_frames: String,
    /// A follow-up question, answered after the first answer from the keys and values kept
    /// from it (only the question's own tokens run through the model; the images are not
    /// encoded again); repeat for more. With --json, the answers are listed under
    /// `follow_ups`.
    #[arg(long, value_name = "QUESTION")]
    follow_up: Vec<String>,
    /// An image that comes with the --follow-up before it (another view, a later frame; repeat
    /// for several): only it and that follow-up's own tokens run through the model.
    #[arg(long = "follow-up-image", value_name = "PATH")]
    follow_up_images: Vec<PathBuf>,
    /// Per --follow-up-image, the index of the --follow-up it comes with (from the order of
    /// the arguments).
    #[arg(skip)]
    follow_up_image_of: Vec<usize>,
    /// Write a PNG of the MoE routing (expert usage and mix per layer).
    #[arg(long, value_name = "PNG")]
    routing_plot: Option<PathBuf>,
}

/// `--kernel-cache`: a directory or `off` (`KernelCache::from_setting`), for the GPU backends.
fn set_kernel_cache(spec: &str) {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use echovlm_pipeline::KernelCache;
        let cache = KernelCache::from_setting(spec);
        if !echovlm_pipeline::KERNEL_CACHE_AVAILABLE {
            eprintln!("note: this build keeps no kernels between runs (the kernel-cache feature)");
        }
        echovlm_pipeline::set_kernel_cache(&cache);
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    eprintln!("note: --kernel-cache {spec:?} applies to GPU builds only");
}

fn frame_selection(spec: &str) -> Result<FrameSelection, String> {
    let bad = || format!("bad --dicom-frames {spec:?} (use all, stride:N or list:0,4,8)");
    match spec.split_once(':') {
        None if spec == "all" => Ok(FrameSelection::All),
        Some(("stride", n)) => n.parse().map(FrameSelection::Stride).map_err(|_| bad()),
        Some(("list", l)) => l
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map(FrameSelection::List)
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("{e} (see --help)");
            return ExitCode::from(2);
        }
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim());
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

/// The command line, each `--follow-up-image` given to the `--follow-up` before it; the inner
/// error is an argument out of place.
fn parse() -> Result<Result<Cli, String>, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let at = |id: &str| -> Vec<usize> {
        matches
            .indices_of(id)
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let (questions, images) = (at("follow_up"), at("follow_up_images"));
    for (image, path) in images.iter().zip(&cli.follow_up_images) {
        match questions.iter().rposition(|q| q < image) {
            Some(i) => cli.follow_up_image_of.push(i),
            None => {
                return Ok(Err(format!(
                    "--follow-up-image {} comes before any --follow-up: give it after the \
                     follow-up question it belongs to",
                    path.display()
                )));
            }
        }
    }
    Ok(Ok(cli))
}

/// The held-out phantom the demo describes (seed 1000000, never trained on; its true report is
/// its line of `fixtures/phantoms/heldout.jsonl`).
const DEMO_PHANTOM: &str = "phantoms/heldout/1000000.png";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn spinner(enabled: bool, msg: &str) -> Option<ProgressBar> {
    enabled.then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    })
}

fn frames_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    if let [dir] = paths
        && dir.is_dir()
    {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(format!("{} holds no frames", dir.display()));
        }
        return Ok(v);
    }
    Ok(paths.to_vec())
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let interactive = std::io::stderr().is_terminal() && !cli.json;
    let demo = cli.model.is_none();
    let (model_dir, label) = match cli.model.as_deref() {
        None => (
            fixtures().join("models/echovlm-demo"),
            "echovlm-demo".to_string(),
        ),
        Some(m) => match HubId::from_model_arg(m) {
            Some(id) => {
                eprintln!("fetching {id} from the Hugging Face Hub (or its cache)");
                (echovlm_pipeline::hub::download(&id)?, id.repo.clone())
            }
            None => {
                let dir = PathBuf::from(m);
                let label = dir
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned());
                (dir, label)
            }
        },
    };
    let mut images = cli.images.clone();
    if demo {
        eprintln!(
            "note: no --model given; running the demo model ({}), a small EchoVLM trained on \
             synthetic ultrasound phantoms. It describes phantoms only; pass --model DIR with a \
             downloaded EchoVLM checkpoint for real studies.",
            model_dir.display()
        );
        if images.is_empty() && cli.frames.is_empty() {
            images.push(fixtures().join(DEMO_PHANTOM));
        }
    }

    if let Some(spec) = &cli.kernel_cache {
        set_kernel_cache(spec);
    }
    let device = device_from_name(&cli.device)?;
    probe_device(&device)?;
    let (dtype, note) = dtype_for(&device, &cli.dtype)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let pb = spinner(interactive, &format!("loading {}", model_dir.display()));
    let started = std::time::Instant::now();
    let weights: Weights = cli.weights.parse()?;
    let mut load = LoadOptions::default()
        .device(device)
        .dtype(dtype)
        .weights(weights)
        .threads(cli.threads)
        .decode_graphs(!cli.no_decode_graphs);
    if let Some(adapter) = &cli.adapter {
        load = load.adapter(adapter);
    }
    let model = EchoVlm::load(&model_dir, &load)?;
    // what auto chose, or that a CPU format was asked for elsewhere
    if (cli.weights == "auto" || !model.weight_choice().ends_with("(as asked)")) && !cli.json {
        eprintln!("note: weights: {}", model.weight_choice());
    }
    let load_s = started.elapsed().as_secs_f64();
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }

    let lang: Lang = cli.lang.parse()?;
    let mut request = match &cli.prompt {
        Some(p) => Request::new(p.clone()),
        // the demo model was trained on the phantom data set's question
        None if demo && cli.task == "report" => {
            Request::new(echovlm_phantom::prompt(if lang == Lang::Zh {
                echovlm_phantom::Lang::Zh
            } else {
                echovlm_phantom::Lang::En
            }))
        }
        None => {
            let task = match (cli.task.as_str(), &cli.options) {
                ("diagnosis", Some(opts)) => Task::Diagnosis {
                    options: opts.split(';').map(|s| s.trim().to_string()).collect(),
                },
                (name, _) => Task::from_name(name).ok_or_else(|| {
                    format!(
                        "unknown task {name:?} (use one of: {})",
                        echovlm_pipeline::TASK_NAMES.join(", ")
                    )
                })?,
            };
            Request::task(task, lang)
        }
    };
    if let Some(s) = &cli.system {
        request = request.system(s.clone());
    }
    for img in &images {
        request = request.image(img.clone());
    }
    if !cli.frames.is_empty() {
        request = request.cine(frames_of(&cli.frames)?);
    }
    request = request
        .pixels(cli.min_pixels, cli.max_pixels)
        .dicom_frames(frame_selection(&cli.dicom_frames)?);
    if let Some(fps) = cli.fps {
        request = request.fps(fps);
    }

    let pb = spinner(interactive, "preprocessing");
    let prepared = model.prepare(&request)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let room = model
        .text_model()
        .config
        .max_position_embeddings
        .saturating_sub(prepared.ids.len());
    let mut opts = model.default_generation();
    opts.max_new_tokens = cli.max_new_tokens.unwrap_or(1024.min(room.max(1)));
    opts.ignore_eos = cli.ignore_eos;
    opts.seed = cli.seed;
    if let Some(p) = cli.repetition_penalty {
        opts.repetition_penalty = p;
    }
    if cli.temperature.is_some() || cli.top_k.is_some() || cli.top_p.is_some() {
        let t = cli.temperature.unwrap_or(1.0);
        opts.do_sample = t > 0.0;
        opts.temperature = if t > 0.0 { t } else { 1.0 };
        opts.top_k = cli.top_k.unwrap_or(0);
        opts.top_p = cli.top_p.unwrap_or(1.0);
    }

    let mut runs = Vec::new();
    for _ in 1..cli.runs {
        runs.push(
            model
                .run(vec![prepared.clone()], &opts, None)?
                .remove(0)
                .timings,
        );
    }
    let mut conversation = None;
    let output = match (cli.json, cli.follow_up.is_empty()) {
        (true, true) => model.run(vec![prepared], &opts, None)?.remove(0),
        (false, true) => streaming(&opts, interactive, |cb| {
            Ok(model.run(vec![prepared], &opts, Some(cb))?.remove(0))
        })?,
        (true, false) => {
            let (c, out) = model.converse(&request, &opts)?;
            conversation = Some(c);
            out
        }
        (false, false) => streaming(&opts, interactive, |cb| {
            let (c, out) = model.converse_stream(&request, &opts, cb)?;
            conversation = Some(c);
            Ok(out)
        })?,
    };
    if !cli.json && !cli.follow_up.is_empty() {
        eprintln!("{}", stats(&output, &model, load_s));
    }
    let mut follow_ups = Vec::new();
    if let Some(conv) = conversation.as_mut() {
        let limit = model.text_model().config.max_position_embeddings;
        for (i, q) in cli.follow_up.iter().enumerate() {
            let mut follow_up = Request::new(q.clone()).pixels(cli.min_pixels, cli.max_pixels);
            let images: Vec<PathBuf> = cli
                .follow_up_images
                .iter()
                .zip(&cli.follow_up_image_of)
                .filter(|(_, of)| **of == i)
                .map(|(path, _)| path.clone())
                .collect();
            for path in &images {
                follow_up = follow_up.image(path.clone());
            }
            let mut o = opts.clone();
            if cli.max_new_tokens.is_none() {
                // what the context leaves after the conversation and the question's turn
                let question = model.tokenizer().encode(q)?.len() + 16;
                let room = limit.saturating_sub(conv.ids().len() + question);
                o.max_new_tokens = 1024.min(room.max(1));
            }
            let answer = if cli.json {
                conv.follow_up(&follow_up, &o, None)?
            } else {
                println!("\n> {q}");
                let answer = streaming(&o, interactive, |cb| {
                    conv.follow_up(&follow_up, &o, Some(cb))
                })?;
                eprintln!("{}", stats(&answer, &model, load_s));
                answer
            };
            follow_ups.push((q.clone(), images, answer));
        }
    }
    if let Some(path) = &cli.routing_plot {
        let summary = output
            .routing
            .as_ref()
            .ok_or("this model has no MoE layers to plot")?;
        routing_png(summary, path, &format!("EchoVLM routing ({label})"))?;
        eprintln!("routing plot written to {}", path.display());
    }
    if cli.json {
        runs.push(output.timings.clone());
        print_json(&output, &model, load_s, &runs, &follow_ups)?;
    } else if cli.follow_up.is_empty() {
        eprintln!("{}", stats(&output, &model, load_s));
    }
    Ok(())
}

/// The line of sizes and times printed after an answer.
fn stats(output: &Output, model: &EchoVlm, load_s: f64) -> String {
    let t = &output.timings;
    format!(
        "\n[{} tokens, {:?}; load {:.1} s, preprocess {:.0} ms, vision {:.0} ms, prefill {:.0} ms ({} tokens), decode {:.1} tokens/s{}; {} weights {:.2} GB, {} threads, peak RSS {}]",
        t.generated_tokens,
        output.finish_reason,
        load_s,
        t.preprocess_ms,
        t.vision_ms,
        t.prefill_ms,
        t.prefill_tokens,
        t.decode_tokens_per_s,
        match t.replayed_steps {
            0 => String::new(),
            n => format!(" ({n} steps replayed)"),
        },
        model
            .weight_format()
            .map_or("Burn-tensor".to_string(), |f| f.to_string()),
        model.weight_bytes() as f64 / 1e9,
        rayon::current_num_threads(),
        peak_rss().map_or("unknown".to_string(), |b| format!(
            "{:.2} GB",
            b as f64 / 1e9
        )),
    )
}

/// Runs `generate` with a callback that prints each new piece of text (under a progress bar
/// when `interactive`), then ends the line.
fn streaming(
    opts: &GenerationOptions,
    interactive: bool,
    generate: impl FnOnce(&mut dyn FnMut(&str) -> ControlFlow<()>) -> Result<Output, EchoError>,
) -> Result<Output, Box<dyn std::error::Error>> {
    let pb = interactive.then(|| {
        let pb = ProgressBar::new(opts.max_new_tokens as u64);
        pb.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} tokens {per_sec}")
                .expect("valid template"),
        );
        pb
    });
    let mut stdout = std::io::stdout();
    let mut on_text = |delta: &str| {
        if let Some(pb) = &pb {
            pb.suspend(|| {
                let _ = write!(stdout, "{delta}");
                let _ = stdout.flush();
            });
            pb.inc(1);
        } else {
            let _ = write!(stdout, "{delta}");
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    };
    let out = generate(&mut on_text)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    println!();
    Ok(out)
}

/// Peak resident set size of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn print_json(
    out: &Output,
    model: &EchoVlm,
    load_s: f64,
    runs: &[Timings],
    follow_ups: &[(String, Vec<PathBuf>, Output)],
) -> Result<(), Box<dyn std::error::Error>> {
    let follow_ups: Vec<serde_json::Value> = follow_ups
        .iter()
        .map(|(q, images, a)| {
            serde_json::json!({
                "question": q,
                "images": images,
                "text": a.text,
                "generated_token_ids": a.generated_token_ids,
                "finish_reason": a.finish_reason,
                "timings": a.timings,
                "routing": a.routing,
            })
        })
        .collect();
    let top: Vec<serde_json::Value> = out
        .first_step_top_logits
        .iter()
        .map(|(t, l)| serde_json::json!([t, l]))
        .collect();
    let v = serde_json::json!({
        "model": model.dir(),
        "architecture": out.architecture,
        "prompt_token_ids": out.prompt_token_ids,
        "generated_token_ids": out.generated_token_ids,
        "text": out.text,
        "finish_reason": out.finish_reason,
        "image_grid_thw": out.image_grid_thw,
        "video_grid_thw": out.video_grid_thw,
        "first_step_top_logits": top,
        "timings": out.timings,
        "runs": runs,
        "load_s": load_s,
        "weight_bytes": model.weight_bytes(),
        "weights": model.weight_choice(),
        "threads": rayon::current_num_threads(),
        "peak_rss_bytes": peak_rss(),
        "routing": out.routing,
        "follow_ups": follow_ups,
    });
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}
