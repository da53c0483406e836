//! The `finetune` example end to end on the tiny checkpoint: a LoRA run writes the merged
//! model, the adapter, the resumable state, the step log and the validation scores; `--resume`
//! continues from the saved step; Ctrl-C saves a checkpoint that resumes; bad input is a
//! one-line error.

mod support;

use std::process::Command;

use support::{fixtures, model_dir, temp_dir};

fn finetune() -> Command {
    support::example("finetune")
}

/// `OUT/state/state.json` of a run.
fn saved_state(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("state/state.json")).unwrap()).unwrap()
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
    let state = saved_state(dir);
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
    let state = saved_state(dir);
    assert_eq!(state["step"], 4);
    assert!(dir.join("val-epoch-2.json").is_file());
}

/// The first step of a run of `args` on the four demo samples (one step of all four): its
/// cross-entropy, the positions it computed and the tokens it held.
fn first_step(args: &[&str]) -> (f64, u64, u64) {
    let out = temp_dir("finetune-group");
    let o = finetune()
        .arg("--model")
        .arg(model_dir("tiny-echovlm"))
        .arg("--data")
        .arg(fixtures().join("eval/demo.jsonl"))
        .arg("--out")
        .arg(out.path())
        .args(["--train", "moe", "--epochs", "1", "--threads", "2"])
        // an order that pairs a long sample with a short one
        .args(["--seed", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(out.path().join("log.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let s = &line["stats"];
    (
        s["ce"].as_f64().unwrap(),
        s["padded_tokens"].as_u64().unwrap(),
        s["sequence_tokens"].as_u64().unwrap(),
    )
}

/// `--group-by-length` puts short samples with short ones, so the step computes fewer padded
/// positions; with `--loss-mean step` the step's cross-entropy is that of the four samples
/// as one batch however they are cut.
#[test]
fn grouping_by_length_cuts_padding_and_keeps_the_step() {
    let whole = first_step(&["--batch", "4"]);
    let cut = first_step(&["--batch", "2", "--accum", "2", "--loss-mean", "step"]);
    let grouped = first_step(&[
        "--batch",
        "2",
        "--accum",
        "2",
        "--loss-mean",
        "step",
        "--group-by-length",
    ]);
    let singles = first_step(&["--batch", "1", "--accum", "4", "--loss-mean", "step"]);
    for (name, run) in [("cut", cut), ("grouped", grouped), ("singles", singles)] {
        assert!(
            (run.0 - whole.0).abs() < 1e-5 * whole.0,
            "{name}: ce {} vs one batch {}",
            run.0,
            whole.0
        );
        assert_eq!(run.2, whole.2, "{name}: tokens");
    }
    // one micro-batch of singles pads nothing; grouping pads less than the epoch's order
    assert_eq!(singles.1, singles.2);
    assert!(
        grouped.1 < cut.1 && cut.1 < whole.1,
        "padded positions: grouped {}, cut {}, whole {}",
        grouped.1,
        cut.1,
        whole.1
    );
}

/// Ctrl-C (SIGINT) in the middle of a run saves the model and a resumable state at the step
/// reached, exits cleanly, and `--resume` carries on from exactly that step.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    use std::time::{Duration, Instant};

    let out = temp_dir("finetune-ctrlc");
    let dir = out.path().to_path_buf();
    let data = fixtures().join("eval/demo.jsonl");
    let start = |epochs: &str, resume: bool| {
        let mut cmd = finetune();
        cmd.arg("--model")
            .arg(model_dir("tiny-echovlm"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&dir)
            .args(["--train", "moe", "--batch", "2", "--lr", "1e-3"])
            .args(["--epochs", epochs, "--threads", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    // far more epochs than the test waits for: only the interrupt ends it
    let mut child = start("100000", false).spawn().unwrap();
    let log = dir.join("log.jsonl");
    let waited = Instant::now();
    while !log.is_file() || lines(&log) < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finetune ended before the interrupt"
        );
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "no steps logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("continue with --resume"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // the state holds every step the log shows, and where in the epoch it stopped
    let state = saved_state(&dir);
    let steps = lines(&log);
    assert!(steps >= 3);
    assert_eq!(state["step"], steps as u64, "{state}");
    // two steps per epoch, `next` samples into the interrupted one
    let (epoch_done, next) = (
        state["progress"]["epoch"].as_u64().unwrap(),
        state["progress"]["next"].as_u64().unwrap(),
    );
    assert_eq!(2 * epoch_done + next / 2, steps as u64, "{state}");
    assert!(dir.join("state/state.safetensors").is_file());
    // the model saved at the interrupt loads
    use echovlm_pipeline::{EchoVlm, LoadOptions};
    EchoVlm::load(dir.join("model"), &LoadOptions::default()).unwrap();

    // 4 samples in batches of 2: two steps per epoch; resuming to the end of the next epoch
    // runs exactly the steps left
    let epoch = steps / 2;
    let target = epoch + 1;
    let o = start(&target.to_string(), true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&log), 2 * target);
    let state = saved_state(&dir);
    assert_eq!(state["step"], (2 * target) as u64, "{state}");
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

/// Every sample is prepared once before the first step: a broken image at the end of the data
/// stops the run before it trains or writes anything, naming the file.
#[test]
fn a_broken_image_stops_the_run_before_training() {
    let out = temp_dir("finetune-broken");
    let data = out.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        fixtures().join("phantoms/heldout/1000000.png"),
        data.join("good.png"),
    )
    .unwrap();
    std::fs::write(data.join("broken.png"), b"\x89PNG\r\n\x1a\nnot an image").unwrap();
    let line = |image: &str| {
        serde_json::json!({"images": [image], "prompt": "Describe.", "reference": "A lesion.", "lang": "en"})
            .to_string()
    };
    let jsonl = data.join("train.jsonl");
    let text: String = ["good.png", "good.png", "broken.png"]
        .iter()
        .map(|i| line(i) + "\n")
        .collect();
    std::fs::write(&jsonl, text).unwrap();
    let run = out.path().join("run");
    let o = finetune()
        .arg("--model")
        .arg(model_dir("tiny-echovlm"))
        .arg("--data")
        .arg(&jsonl)
        .arg("--out")
        .arg(&run)
        .args(["--batch", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.png"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!run.join("log.jsonl").exists(), "{err}");
    assert!(!run.join("state").exists(), "{err}");
}

/// `--chat-template` gives a model started with `--init` its own chat template: the training
/// sequences are rendered with it (the demo's template has no default system prompt, so every
/// sample is 20 tokens shorter), and the saved model carries it.
#[test]
fn a_chat_template_given_with_init_trains_and_is_saved() {
    let repo = fixtures().parent().unwrap().to_path_buf();
    let template = repo.join("tools/demo_chat_template.jinja");
    let run = |with_template: bool| {
        let out = temp_dir("finetune-template");
        let mut cmd = finetune();
        cmd.arg("--init")
            .arg(model_dir("tiny-echovlm"))
            .arg("--data")
            .arg(fixtures().join("eval/demo.jsonl"))
            .arg("--out")
            .arg(out.path())
            .args(["--train", "all", "--epochs", "1", "--batch", "4"]);
        if with_template {
            cmd.arg("--chat-template").arg(&template);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let log = std::fs::read_to_string(out.path().join("log.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        (line["stats"]["sequence_tokens"].as_u64().unwrap(), out)
    };
    let (stock, _keep) = run(false);
    let (own, out) = run(true);
    // "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" is 20 tokens
    assert_eq!(stock - own, 4 * 20, "sequence tokens {stock} → {own}");
    let expected = std::fs::read_to_string(&template).unwrap();
    for dir in ["init", "model"] {
        let saved = echovlm_pipeline::ChatTemplate::from_model_dir(&out.path().join(dir)).unwrap();
        assert_eq!(saved.source(), expected, "{dir}");
    }
    // without --init there is no new model to give a template to
    let o = finetune()
        .arg("--model")
        .arg(model_dir("tiny-echovlm"))
        .arg("--chat-template")
        .arg(&template)
        .args(["--data", "x.jsonl", "--out", "/tmp/unused"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}
