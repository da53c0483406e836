//! The `finetune` example end to end on the tiny checkpoint: a LoRA run writes the merged
//! model, the adapter, the resumable state, the step log and the validation scores; `--resume`
//! continues from the saved step; bad input is a one-line error.

mod support;

use std::process::Command;

use support::{fixtures, model_dir, temp_dir};

fn finetune() -> Command {
    support::example("finetune")
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn a_lora_run_writes_everything_and_resumes() {
    let out = temp_dir("finetune");
    let data = fixtures().join("eval/demo.jsonl");
    let run = |epochs: &str, resume: bool| {
        let mut cmd = finetune();
        cmd.arg("--model")
            .arg(model_dir("tiny-echovlm"))
            .arg("--data")
            .arg(&data)
            .arg("--val")
            .arg(&data)
            .args(["--val-limit", "1", "--max-new-tokens", "4"])
            .arg("--out")
            .arg(out.path())
            .args(["--train", "lora", "--lora-rank", "2", "--batch", "2"])
            .args(["--lr", "1e-3", "--epochs", epochs, "--threads", "2"]);
        if resume {
            cmd.arg("--resume");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run("1", false);
    let dir = out.path();
    for f in [
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "state/state.json",
        "state/state.safetensors",
        "val-epoch-1.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // 4 samples in batches of 2: two steps
    assert_eq!(lines(&dir.join("log.jsonl")), 2);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2);
    // the saved model and the adapter over the base load
    use echovlm_pipeline::{EchoVlm, LoadOptions};
    EchoVlm::load(dir.join("model"), &LoadOptions::default()).unwrap();
    EchoVlm::load(
        model_dir("tiny-echovlm"),
        &LoadOptions::default().adapter(dir.join("adapter")),
    )
    .unwrap();

    // a second epoch, resumed from the saved state
    run("2", true);
    assert_eq!(lines(&dir.join("log.jsonl")), 4);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 4);
    assert!(dir.join("val-epoch-2.json").is_file());
}

#[test]
fn bad_input_is_a_one_line_error() {
    let out = temp_dir("finetune-bad");
    let o = finetune()
        .arg("--model")
        .arg(model_dir("tiny-echovlm"))
        .args(["--data", "/nonexistent/train.jsonl", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/train.jsonl"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
