//! Saved fine-tuned weights: a merged checkpoint loads with `EchoVlm::load` and gives the
//! trained model's logits; the adapter directory holds exactly the trained tensors.

mod common;

use burn::tensor::{DType, Device};
use common::{Golden, load_model, rel_err, trainable};
use echovlm_core::host::to_f32_vec;
use echovlm_pipeline::{EchoVlm, LoadOptions, Weights};
use echovlm_train::{OptimConfig, TrainConfig, Trainer, save_adapter, save_merged};
use safetensors::SafeTensors;

fn tuned() -> (Trainer, Golden) {
    let golden = Golden::load();
    let batch = golden.samples("image");
    let mut trainer = Trainer::new(
        load_model(),
        TrainConfig {
            trainable: trainable("lora"),
            optim: OptimConfig {
                lr: 1e-2,
                total_steps: 3,
                ..OptimConfig::default()
            },
            aux_loss_coef: None,
        },
    )
    .unwrap();
    for _ in 0..3 {
        trainer.step(&[&batch]).unwrap();
    }
    (trainer, golden)
}

fn logits(model: &EchoVlm, golden: &Golden) -> Vec<f32> {
    let seqs: Vec<_> = golden
        .samples("image")
        .into_iter()
        .map(|s| s.sequence)
        .collect();
    to_f32_vec(model.forward_sequences(&seqs).unwrap().logits.inner()).unwrap()
}

#[test]
fn a_merged_checkpoint_loads_with_the_trained_logits() {
    let (trainer, golden) = tuned();
    let trained = logits(trainer.model(), &golden);
    let dir = tempfile::tempdir().unwrap();
    save_merged(&trainer, dir.path(), false).unwrap();
    for weights in [
        Weights::Exact(echovlm_core::LinearOptions::portable()),
        Weights::Auto,
    ] {
        let opts = LoadOptions::default()
            .device(Device::flex())
            .dtype(DType::F32)
            .weights(weights);
        let loaded = EchoVlm::load(dir.path(), &opts).unwrap();
        let got = logits(&loaded, &golden);
        let want: Vec<f64> = trained.iter().map(|&x| x as f64).collect();
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "merged checkpoint logits differ: {e}");
    }
    // and the base checkpoint's logits are not those: the training changed something
    let base = EchoVlm::load(common::model_dir(), &LoadOptions::default()).unwrap();
    let before = logits(&base, &golden);
    let want: Vec<f64> = trained.iter().map(|&x| x as f64).collect();
    assert!(rel_err(&before, &want) > 1e-3);
    // saving over the source is refused
    assert!(save_merged(&trainer, &common::model_dir(), false).is_err());
}

#[test]
fn the_adapter_directory_holds_the_trained_tensors() {
    let (trainer, _) = tuned();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&trainer, dir.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), trainer.params().len());
    for (p, v) in trainer.params().iter().zip(trainer.values()) {
        let view = st
            .tensor(&format!("base_model.model.{}", p.name()))
            .unwrap();
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, to_f32_vec(v).unwrap(), "{}", p.name());
    }
}
