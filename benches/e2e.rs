//! End to end on the ~400 M-parameter benchmark checkpoint written by
//! `tools/make_bench_checkpoint.py` (`target/bench-ckpt/e2e`, or `$ECHOVLM_BENCH_DIR/e2e`): one
//! ultrasound frame and a report prompt through the whole pipeline, per CPU weight format.
//!
//! Each iteration is one `EchoVlm::generate` of [`NEW_TOKENS`] tokens; the three benchmarks of a
//! format report the phases the pipeline itself times: the image through the vision tower, the
//! prompt through the decoder (criterion's throughput line is prompt tokens/s), and one decode
//! step (throughput: generated tokens/s).
//!
//! Run with `cargo bench --bench e2e`; `ECHOVLM_BENCH_FORMATS=int8` picks formats.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use echovlm_pipeline::{
    EchoVlm, GenerationOptions, Lang, LinearOptions, LoadOptions, Request, Task, Timings,
    WeightFormat,
};

/// Tokens generated per iteration (the first comes from the prefill).
const NEW_TOKENS: usize = 33;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ECHOVLM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-ckpt"))
        .join("e2e");
    if dir.join("config.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "no benchmark checkpoint in {}: run `tools/.venv/bin/python tools/make_bench_checkpoint.py` first",
            dir.display()
        );
        None
    }
}

/// The resident set of this process (Linux), in bytes.
fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

fn e2e(c: &mut Criterion) {
    let Some(dir) = model_dir() else { return };
    let only = std::env::var("ECHOVLM_BENCH_FORMATS").unwrap_or_default();
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/demo_ultrasound.png");
    let request = Request::task(Task::Report, Lang::En).image(image);
    let opts = GenerationOptions::greedy(NEW_TOKENS)
        .ignore_eos(true)
        .trace_routing(false);
    let mut g = c.benchmark_group("e2e");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for (name, format) in [
        ("f32", WeightFormat::F32),
        ("bf16", WeightFormat::Bf16),
        ("int8", WeightFormat::Int8),
        ("int4", WeightFormat::Int4),
    ] {
        if !(only.is_empty() || only.split(',').any(|o| o == name)) {
            continue;
        }
        let options = LoadOptions::default().linear(LinearOptions::cpu(format));
        let model = EchoVlm::load(&dir, &options).expect("benchmark checkpoint loads");
        let first = model.generate(&request, &opts).expect("generates");
        let prompt_tokens = first.timings.prefill_tokens as u64;
        let weights = model.weight_bytes() as f64;
        let rss = resident_bytes().map_or("unknown".into(), |r| {
            format!("{:.2} GB = {:.2}x the weights", r / 1e9, r / weights)
        });
        eprintln!(
            "e2e {name}: {} parameters, {:.2} GB of weights held, {prompt_tokens} prompt tokens; \
             resident after loading and one generation: {rss}",
            model.num_parameters(),
            weights / 1e9
        );
        type Phase = fn(&Timings) -> f64;
        let phases: [(&str, u64, Phase); 3] = [
            ("vision_encode", 1, |t| t.vision_ms),
            ("prefill", prompt_tokens, |t| t.prefill_ms),
            ("decode_step", 1, |t| {
                t.decode_ms / t.generated_tokens.saturating_sub(1).max(1) as f64
            }),
        ];
        for (phase, elements, pick) in phases {
            g.throughput(Throughput::Elements(elements));
            g.bench_function(format!("{phase}/{name}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = 0.0;
                    for _ in 0..iters {
                        let out = model.generate(&request, &opts).expect("generates");
                        total += pick(&out.timings);
                    }
                    Duration::from_secs_f64(total / 1e3)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
