//! Times fine-tuning steps (forward, backward, clipping, AdamW) on the training-golden
//! batches of `fixtures/goldens/train-tiny-echovlm.safetensors`, the batches the PyTorch
//! side of `tools/bench_train.py` times. Prints one JSON object.
//!
//! `cargo run --release --example train_step -- --set moe --case image --steps 20`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use echovlm_pipeline::{DType, Device, EchoVlm, LoadOptions, PreparedPrompt};
use echovlm_train::{OptimConfig, TrainConfig, TrainSample, Trainable, Trainer};
use echovlm_vision::preprocess::PixelValues;
use safetensors::SafeTensors;

/// Times fine-tuning steps on the golden batches.
#[derive(Parser, Debug)]
struct Cli {
    /// `moe` (MoE blocks, coefficients, merger) or `all` (every linear layer).
    #[arg(long, default_value = "moe")]
    set: String,
    /// `text` or `image`.
    #[arg(long, default_value = "image")]
    case: String,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// CPU threads.
    #[arg(long)]
    threads: Option<usize>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tensor_i64(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<i64>) {
    let v = st.tensor(name).unwrap();
    let data = v
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v.shape().to_vec(), data)
}

fn batch(case: &str) -> Vec<TrainSample> {
    let bytes = std::fs::read(root().join("fixtures/goldens/train-tiny-echovlm.safetensors"))
        .expect("the training goldens");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = tensor_i64(&st, &format!("{case}.input_ids"));
    let (_, mask) = tensor_i64(&st, &format!("{case}.attention_mask"));
    let (_, labels) = tensor_i64(&st, &format!("{case}.labels"));
    let mut images = Vec::new();
    if let Ok(p) = st.tensor(&format!("{case}.pixel_values")) {
        let cols = p.shape()[1];
        let pixels: Vec<f32> = p
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (_, grids) = tensor_i64(&st, &format!("{case}.image_grid_thw"));
        let mut row = 0;
        for g in grids.chunks_exact(3) {
            let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
            let rows = grid.iter().product::<usize>();
            images.push(PixelValues {
                data: pixels[row * cols..(row + rows) * cols].to_vec(),
                rows,
                grid_thw: grid,
            });
            row += rows;
        }
    }
    let mut images = images.into_iter();
    let (b, s) = (shape[0], shape[1]);
    (0..b)
        .map(|r| {
            let len = mask[r * s..(r + 1) * s].iter().filter(|&&m| m > 0).count();
            let row_ids = ids[r * s..r * s + len].iter().map(|&x| x as u32).collect();
            let imgs = images.next().into_iter().collect();
            TrainSample {
                sequence: PreparedPrompt::new(row_ids, imgs, Vec::new()),
                labels: labels[r * s..r * s + len].to_vec(),
            }
        })
        .collect()
}

fn main() {
    let cli = Cli::parse();
    let opts = LoadOptions::default()
        .device(Device::flex().autodiff())
        .dtype(DType::F32)
        .threads(cli.threads);
    let model = EchoVlm::load(root().join("fixtures/models/tiny-echovlm"), &opts).unwrap();
    let trainable = match cli.set.as_str() {
        "all" => Trainable::all(),
        _ => Trainable::default(),
    };
    let mut trainer = Trainer::new(
        model,
        TrainConfig {
            trainable,
            optim: OptimConfig {
                lr: 1e-4,
                total_steps: cli.steps + 3,
                ..OptimConfig::default()
            },
            aux_loss_coef: None,
            loss_mean: Default::default(),
        },
    )
    .unwrap();
    let data = batch(&cli.case);
    let tokens: usize = data.iter().map(TrainSample::len).sum();
    for _ in 0..3 {
        trainer.step(&[&data]).unwrap();
    }
    let mut times = Vec::with_capacity(cli.steps);
    for _ in 0..cli.steps {
        let t = Instant::now();
        trainer.step(&[&data]).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "echovlm-rs",
            "set": cli.set,
            "case": cli.case,
            "tokens": tokens,
            "trainable": trainer.num_trainable(),
            "median_ms": median,
            "min_ms": times[0],
            "tokens_per_s": tokens as f64 / median * 1e3,
        })
    );
}
