//! Five AdamW steps (warm-up + cosine schedule, global-norm clipping) against
//! `torch.optim.AdamW`, with one batch per step and with the batch split into two accumulated
//! micro-batches; and a resumed run that continues exactly where a saved one stopped.

mod common;

use common::{Golden, load_model, rel_err, trainable};
use echovlm_core::host::to_f32_vec;
use echovlm_train::{LossMean, OptimConfig, TrainConfig, Trainer};

fn config() -> TrainConfig {
    TrainConfig {
        trainable: trainable("moe"),
        optim: OptimConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 2,
            total_steps: 5,
            max_grad_norm: Some(1.0),
        },
        aux_loss_coef: None,
        loss_mean: Default::default(),
    }
}

/// Parameters after five steps: within 2e-4 of the largest value of each tensor (the steps
/// move parameters by up to 2.5e-3; float differences in the gradients reach Adam's update
/// through `m / √v`).
const PARAM_TOL: f64 = 2e-4;

/// Five steps over the image batch, one micro-batch a step or its two rows accumulated,
/// against the golden run `key`.
fn run(key: &str, accumulate: bool, loss_mean: LossMean) {
    let golden = Golden::load();
    let batch = golden.samples("image");
    let config = TrainConfig {
        loss_mean,
        ..config()
    };
    let mut trainer = Trainer::new(load_model(), config).unwrap();
    let (_, want_loss) = golden.get(&format!("{key}.loss"));
    let (_, want_lr) = golden.get(&format!("{key}.lr"));
    let (_, want_norm) = golden.get(&format!("{key}.grad_norm"));
    for step in 0..5 {
        let stats = if accumulate {
            trainer.step(&[&batch[..1], &batch[1..]]).unwrap()
        } else {
            trainer.step(&[&batch]).unwrap()
        };
        assert_eq!(stats.step, step + 1);
        assert!((stats.lr - want_lr[step]).abs() < 1e-9, "lr {step}");
        let rel = |a: f32, b: f64| ((a as f64 - b) / b).abs();
        assert!(
            rel(stats.loss, want_loss[step]) < 1e-4,
            "{key} loss {step}: {} vs {}",
            stats.loss,
            want_loss[step]
        );
        assert!(
            rel(stats.grad_norm, want_norm[step]) < 1e-4,
            "{key} grad norm {step}: {} vs {}",
            stats.grad_norm,
            want_norm[step]
        );
    }
    let mut worst = 0f64;
    for (p, v) in trainer.params().iter().zip(trainer.values()) {
        let (_, want) = golden.get(&format!("{key}.step5.{}", p.name()));
        let e = rel_err(&to_f32_vec(v).unwrap(), want);
        worst = worst.max(e);
        assert!(e < PARAM_TOL, "{key} {} after 5 steps: {e}", p.name());
    }
    eprintln!("{key}: worst parameter error {worst:.2e}");
}

#[test]
fn five_adamw_steps_track_torch() {
    run("adamw", false, LossMean::MicroBatch);
}

#[test]
fn accumulated_micro_batches_track_torch() {
    run("adamw_accum", true, LossMean::MicroBatch);
}

/// Five steps over the image batch without the load-balancing loss, as one micro-batch or
/// with its two rows accumulated: each step's loss and the final values.
fn five_steps(accumulate: bool, loss_mean: LossMean) -> (Vec<f32>, Vec<Vec<f32>>) {
    let batch = Golden::load().samples("image");
    let config = TrainConfig {
        loss_mean,
        aux_loss_coef: Some(0.0),
        ..config()
    };
    let mut trainer = Trainer::new(load_model(), config).unwrap();
    let losses = (0..5)
        .map(|_| {
            let cut: &[&[_]] = if accumulate {
                &[&batch[..1], &batch[1..]]
            } else {
                &[&batch]
            };
            trainer.step(cut).unwrap().loss
        })
        .collect();
    let values = trainer
        .values()
        .into_iter()
        .map(|v| to_f32_vec(v).unwrap())
        .collect();
    (losses, values)
}

/// The largest difference between two runs' tensors, relative to each tensor's largest value
/// in `reference`.
fn worst_difference(reference: &[Vec<f32>], other: &[Vec<f32>]) -> f64 {
    reference
        .iter()
        .zip(other)
        .map(|(r, o)| rel_err(o, &r.iter().map(|&v| v as f64).collect::<Vec<_>>()))
        .fold(0.0, f64::max)
}

/// With the cross-entropy averaged over the step's tokens, the two rows accumulated as two
/// micro-batches train like the one batch of both rows (up to rounding); averaged per
/// micro-batch they do not, since the rows have different numbers of answer tokens.
#[test]
fn a_step_mean_over_tokens_trains_accumulated_rows_like_one_batch() {
    let batch = Golden::load().samples("image");
    let (a, b) = (batch[0].scored_tokens(), batch[1].scored_tokens());
    assert!(
        a != b && a > 0 && b > 0,
        "rows of {a} and {b} answer tokens"
    );
    let (one_loss, one) = five_steps(false, LossMean::Step);
    let (step_loss, step) = five_steps(true, LossMean::Step);
    let (micro_loss, micro) = five_steps(true, LossMean::MicroBatch);
    let (same, apart) = (
        worst_difference(&one, &step),
        worst_difference(&one, &micro),
    );
    eprintln!(
        "after five steps: {same:.1e} with the step mean, {apart:.1e} with micro-batch means"
    );
    // rounding moves Adam's first steps on near-zero gradients by up to the learning rate
    // (measured 8.5e-6); the micro-batch means move the weights two thousand times as much
    assert!(same < 1e-4, "the step mean drifts from one batch: {same}");
    assert!(apart > 1e-3, "micro-batch means: {apart}");
    for (s, (x, y)) in one_loss.iter().zip(&step_loss).enumerate() {
        assert!((x - y).abs() <= 1e-6 * x, "step {s}: loss {y} against {x}");
    }
    let first = one_loss[0];
    assert!(
        (first - micro_loss[0]).abs() > 1e-4 * first,
        "first loss {} against {first}",
        micro_loss[0]
    );
}

/// The step's padding is counted per micro-batch: one batch pads both rows to the longer one.
#[test]
fn a_step_counts_its_padded_positions() {
    let golden = Golden::load();
    let batch = golden.samples("image");
    let (a, b) = (batch[0].len(), batch[1].len());
    assert_ne!(a, b);
    let mut trainer = Trainer::new(load_model(), config()).unwrap();
    let one = trainer.step(&[&batch]).unwrap();
    assert_eq!(one.sequence_tokens, a + b);
    assert_eq!(one.padded_tokens, 2 * a.max(b));
    let two = trainer.step(&[&batch[..1], &batch[1..]]).unwrap();
    assert_eq!(two.padded_tokens, a + b);
}

#[test]
fn a_resumed_run_continues_where_the_saved_one_stopped() {
    let golden = Golden::load();
    let batch = golden.samples("image");
    let dir = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(load_model(), config()).unwrap();
    for _ in 0..4 {
        straight.step(&[&batch]).unwrap();
    }
    let mut first = Trainer::new(load_model(), config()).unwrap();
    for _ in 0..2 {
        first.step(&[&batch]).unwrap();
    }
    first
        .save_state(dir.path(), &serde_json::json!({"epoch": 0, "next": 7}))
        .unwrap();
    drop(first);
    let (mut resumed, progress) = Trainer::resume(load_model(), config(), dir.path()).unwrap();
    assert_eq!(progress["next"], 7);
    assert_eq!(resumed.step_count(), 2);
    for _ in 0..2 {
        resumed.step(&[&batch]).unwrap();
    }
    for ((p, a), b) in straight
        .params()
        .iter()
        .zip(straight.values())
        .zip(resumed.values())
    {
        let a = to_f32_vec(a).unwrap();
        let b = to_f32_vec(b).unwrap();
        assert_eq!(a, b, "{} differs after resuming", p.name());
    }
    // a state saved for another selection is refused
    let mut other = config();
    other.trainable.merger = false;
    let err = Trainer::resume(load_model(), other, dir.path()).unwrap_err();
    assert!(err.to_string().contains("cannot resume"), "{err}");
}

/// What a run did: the parameter names, each step's loss and gradient norm, the final values.
type Run = (Vec<String>, Vec<(f32, f32)>, Vec<Vec<f32>>);

/// Runs three steps of three micro-batches each (an uneven share for two workers) with
/// `workers` copies of the model; a copy is added after the first step.
fn steps_with_workers(set: &str, loss_mean: LossMean, workers: usize) -> Run {
    let golden = Golden::load();
    let batch = golden.samples("image");
    let mut config = config();
    config.trainable = trainable(set);
    config.loss_mean = loss_mean;
    let mut trainer = Trainer::new(load_model(), config).unwrap();
    let mut stats = Vec::new();
    for step in 0..3 {
        if step == 1 {
            trainer.set_workers(workers);
            assert_eq!(trainer.workers(), workers);
        }
        let s = trainer
            .step(&[&batch[..1], &batch[1..], &batch[..]])
            .unwrap();
        stats.push((s.loss, s.grad_norm));
    }
    let names = trainer.params().iter().map(|p| p.name()).collect();
    let values = trainer
        .values()
        .into_iter()
        .map(|v| to_f32_vec(v).unwrap())
        .collect();
    (names, stats, values)
}

#[test]
fn concurrent_micro_batches_give_the_same_steps_bit_for_bit() {
    for (set, mean) in [
        ("moe", LossMean::MicroBatch),
        ("lora", LossMean::MicroBatch),
        ("moe", LossMean::Step),
    ] {
        let (names, one_stats, one) = steps_with_workers(set, mean, 1);
        let (_, two_stats, two) = steps_with_workers(set, mean, 2);
        assert_eq!(one_stats, two_stats, "{set}: losses and gradient norms");
        for ((name, a), b) in names.iter().zip(&one).zip(&two) {
            assert_eq!(a, b, "{set}: {name} differs with two workers");
        }
        // the steps moved the weights
        let mut fresh = config();
        fresh.trainable = trainable(set);
        let start = Trainer::new(load_model(), fresh).unwrap().values();
        let moved = start
            .into_iter()
            .zip(&one)
            .any(|(s, v)| to_f32_vec(s).unwrap() != *v);
        assert!(moved, "{set}: the steps changed nothing");
    }
}
