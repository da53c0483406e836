//! Losses and gradients against transformers (the reference model with `requires_grad` on the
//! same tensors, `tools/make_train_goldens.py`), for a text-only and an image batch with right
//! padding, for the MoE set (MoE blocks, coefficients, merger) and the LoRA set (adapters on
//! attention and the dense MLP plus the MoE blocks and coefficients).

mod common;

use common::{Golden, install_lora_init, load_model, rel_err, trainable};
use echovlm_core::host::to_f32_vec;
use echovlm_train::{TrainConfig, Trainer};

const TOL: f64 = 1e-4;

fn check(case: &str, set: &str) {
    let golden = Golden::load();
    let mut trainer = Trainer::new(
        load_model(),
        TrainConfig {
            trainable: trainable(set),
            ..TrainConfig::default()
        },
    )
    .unwrap();
    assert!((trainer.aux_loss_coef() - 0.001).abs() < 1e-12);
    if set == "lora" {
        install_lora_init(&mut trainer, &golden);
    }
    let mut names: Vec<String> = trainer.params().iter().map(|p| p.name()).collect();
    let mut want = golden.set_params(set);
    names.sort();
    want.sort();
    assert_eq!(names, want, "the trainable tensors of set {set}");

    let batch = golden.samples(case);
    let (losses, grads) = trainer.gradients(&batch).unwrap();
    let prefix = format!("{case}.{set}");
    for (what, got) in [("ce", losses.ce), ("aux", losses.aux)] {
        let want = golden.scalar(&format!("{prefix}.{what}"));
        assert!(
            ((got as f64 - want) / want).abs() < TOL,
            "{prefix}.{what}: {got} vs {want}"
        );
    }
    let total = to_f32_vec(losses.total.inner()).unwrap()[0] as f64;
    let want_total = golden.scalar(&format!("{prefix}.total"));
    assert!(
        ((total - want_total) / want_total).abs() < TOL,
        "{total} vs {want_total}"
    );

    let mut worst = (0f64, String::new());
    for (p, g) in trainer.params().iter().zip(grads) {
        let (shape, want) = golden.get(&format!("{prefix}.grad.{}", p.name()));
        let got = to_f32_vec(g).unwrap();
        assert_eq!(got.len(), shape.iter().product::<usize>(), "{}", p.name());
        let e = rel_err(&got, want);
        if e > worst.0 {
            worst = (e, p.name());
        }
        assert!(
            e < TOL,
            "{prefix} gradient of {}: relative error {e}",
            p.name()
        );
    }
    eprintln!("{prefix}: worst gradient {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn text_batch_moe_set() {
    check("text", "moe");
}

#[test]
fn image_batch_moe_set() {
    check("image", "moe");
}

#[test]
fn text_batch_lora_set() {
    check("text", "lora");
}

#[test]
fn image_batch_lora_set() {
    check("image", "lora");
}
