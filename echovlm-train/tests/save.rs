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
            loss_mean: Default::default(),
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

/// Saved weights are readable like any new file (`rw-r--r--`), not owner-only like the
/// temporary file they are written through, and saving again keeps the mode the file was given.
#[cfg(unix)]
#[test]
fn saved_weights_get_a_new_files_mode_or_keep_the_replaced_ones() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (trainer, _) = tuned();
    let dir = tempfile::tempdir().unwrap();
    let weights = save_merged(&trainer, dir.path(), false).unwrap();
    assert_eq!(mode(&weights), 0o644, "{}", weights.display());
    let adapter = dir.path().join("adapter");
    save_adapter(&trainer, &adapter).unwrap();
    let file = adapter.join("adapter_model.safetensors");
    assert_eq!(mode(&file), 0o644);
    std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o640)).unwrap();
    save_merged(&trainer, dir.path(), false).unwrap();
    assert_eq!(mode(&weights), 0o640);
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

/// Where the fine-tuned tiny checkpoint and its transformers logits are kept.
fn tuned_fixture() -> std::path::PathBuf {
    common::root().join("fixtures/goldens/tuned-tiny-echovlm")
}

/// Regenerates `fixtures/goldens/tuned-tiny-echovlm/{model,adapter}` (then run
/// `tools/.venv/bin/python tools/check_saved_model.py fixtures/goldens/tuned-tiny-echovlm/model
/// --out fixtures/goldens/tuned-tiny-echovlm/reference.json` for the transformers logits).
#[test]
#[ignore]
fn write_tuned_fixture() {
    let (trainer, _) = tuned();
    let dir = tuned_fixture();
    let _ = std::fs::remove_dir_all(&dir);
    save_merged(&trainer, &dir.join("model"), false).unwrap();
    save_adapter(&trainer, &dir.join("adapter")).unwrap();
}

/// The committed fine-tuned checkpoint, as transformers reads it (logits written by
/// `tools/check_saved_model.py`), equals what `EchoVlm::load` makes of it; and fine-tuning
/// again gives the same weights.
#[test]
fn transformers_reads_a_saved_checkpoint_like_echovlm_does() {
    let golden = Golden::load();
    let dir = tuned_fixture();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("image.logits").unwrap();
    let [b, s, v] = [view.shape()[0], view.shape()[1], view.shape()[2]];
    let want: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let model =
        EchoVlm::load(dir.join("model"), &LoadOptions::default().dtype(DType::F32)).unwrap();
    let got = logits(&model, &golden);
    // compare the real (unpadded) positions of each row
    let lens: Vec<usize> = golden
        .samples("image")
        .iter()
        .map(|x| x.sequence.ids.len())
        .collect();
    let s_rust = got.len() / (b * v);
    let mut worst = 0f64;
    for (r, &len) in lens.iter().enumerate() {
        for t in 0..len {
            let a = &got[(r * s_rust + t) * v..(r * s_rust + t + 1) * v];
            let w: Vec<f64> = want[(r * s + t) * v..(r * s + t + 1) * v]
                .iter()
                .map(|&x| x as f64)
                .collect();
            worst = worst.max(rel_err(a, &w));
        }
    }
    assert!(
        worst < 1e-4,
        "EchoVlm vs transformers on the saved checkpoint: {worst}"
    );

    // the same fine-tuning run gives the committed weights
    let (trainer, _) = tuned();
    let again = tempfile::tempdir().unwrap();
    save_merged(&trainer, again.path(), false).unwrap();
    let a = std::fs::read(again.path().join("model.safetensors")).unwrap();
    let c = std::fs::read(dir.join("model/model.safetensors")).unwrap();
    let (a, c) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&c).unwrap(),
    );
    for (name, view) in c.tensors() {
        let x: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect();
        let y: Vec<f64> = a
            .tensor(&name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]) as f64)
            .collect();
        let e = rel_err(&x, &y);
        assert!(e < 1e-3, "{name}: retrained weights differ by {e}");
    }
}

fn image_logits_of(model: &EchoVlm, golden: &Golden) -> Vec<f32> {
    logits(model, golden)
}

/// The adapter directory, applied over the base checkpoint by `EchoVlm::load`, gives the
/// merged checkpoint's logits, with the weights as tensors and packed for the CPU kernels.
#[test]
fn an_adapter_over_the_base_gives_the_merged_logits() {
    let golden = Golden::load();
    let dir = tuned_fixture();
    let merged = EchoVlm::load(dir.join("model"), &LoadOptions::default()).unwrap();
    let want: Vec<f64> = image_logits_of(&merged, &golden)
        .iter()
        .map(|&x| x as f64)
        .collect();
    for weights in [
        Weights::Exact(echovlm_core::LinearOptions::portable()),
        Weights::Exact(echovlm_core::LinearOptions::cpu(
            echovlm_core::cpu::WeightFormat::F32,
        )),
    ] {
        let opts = LoadOptions::default()
            .weights(weights.clone())
            .adapter(dir.join("adapter"));
        let model = EchoVlm::load(common::model_dir(), &opts).unwrap();
        let e = rel_err(&image_logits_of(&model, &golden), &want);
        assert!(
            e < 1e-5,
            "{weights:?}: adapter over the base vs merged: {e}"
        );
    }
}

/// Keeps (and maybe renames) an adapter tensor, or drops it.
type Rename = Box<dyn Fn(&str) -> Option<String>>;

/// Adapter directories that do not fit the model are load errors naming the problem.
#[test]
fn broken_adapters_are_typed_errors() {
    let src = tuned_fixture().join("adapter");
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg = std::fs::read(src.join("adapter_config.json")).unwrap();
    let cases: Vec<(&str, Rename)> = vec![
        (
            "only one of lora_A and lora_B",
            Box::new(|k: &str| {
                (!k.ends_with("layers.0.self_attn.q_proj.lora_B.weight")).then(|| k.to_string())
            }),
        ),
        (
            "has no linear layer",
            Box::new(|k: &str| Some(k.replace("layers.0.", "layers.9."))),
        ),
    ];
    for (want, rename) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), &cfg).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter_map(|(k, v)| rename(&k).map(|k| (k, v)))
            .collect();
        safetensors::serialize_to_file(kept, None, &dir.path().join("adapter_model.safetensors"))
            .unwrap();
        let err = EchoVlm::load(
            common::model_dir(),
            &LoadOptions::default().adapter(dir.path()),
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    // a missing directory
    let err = EchoVlm::load(
        common::model_dir(),
        &LoadOptions::default().adapter("/nonexistent/adapter"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
    // an adapter for another model size
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), &cfg).unwrap();
    let a = vec![0u8; 4 * 4 * 7];
    let b = vec![0u8; 4 * 5 * 4];
    let views = vec![
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 7], &a).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![5, 4], &b).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &dir.path().join("adapter_model.safetensors"))
        .unwrap();
    let err = EchoVlm::load(
        common::model_dir(),
        &LoadOptions::default().adapter(dir.path()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

/// transformers, reading the base checkpoint with the adapter directory (PEFT's LoRA
/// formula, `tools/check_saved_model.py --adapter`), gives the last-position logits that
/// `EchoVlm::load` with `LoadOptions::adapter` gives.
#[test]
fn transformers_reads_the_adapter_like_echovlm_does() {
    let golden = Golden::load();
    let dir = tuned_fixture();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference-adapter.json")).unwrap())
            .unwrap();
    let case = &reference["cases"]["image"];
    let model = EchoVlm::load(
        common::model_dir(),
        &LoadOptions::default().adapter(dir.join("adapter")),
    )
    .unwrap();
    let got = image_logits_of(&model, &golden);
    let v = case["shape"][2].as_u64().unwrap() as usize;
    let seq = got.len() / (2 * v);
    for row in 0..2 {
        let last = case["last_index"][row].as_u64().unwrap() as usize;
        let want: Vec<f64> = case["last_logits"][row]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let a = &got[(row * seq + last) * v..(row * seq + last + 1) * v];
        let e = rel_err(a, &want);
        assert!(e < 1e-4, "row {row}: {e}");
    }
}
