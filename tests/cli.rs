//! The `echovlm` example binary: reference tokens through the command line, JSON output and
//! one-line errors.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Golden, image, model_dir};

/// The `echovlm` example binary.
fn cli() -> Command {
    support::example("echovlm")
}

/// Runs the CLI with `args`, which must succeed (its standard error otherwise shown).
fn run_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    let out = cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&run_ok(args).stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn path(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn cli_greedy_tokens_match_reference() {
    let g = Golden::load("tiny-echovlm");
    let model = path(model_dir("tiny-echovlm"));
    let greedy = [
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--ignore-eos",
    ];
    // text only
    let case = &g.meta["text_en"];
    let steps = ids(&case["greedy"]).len().to_string();
    let mut args = vec!["--model", &model, "--json", "--max-new-tokens", &steps];
    args.extend(greedy);
    args.extend(["--prompt", case["prompt"].as_str().unwrap()]);
    let v = run_json(&args);
    assert_eq!(ids(&v["prompt_token_ids"]), ids(&case["input_ids"]));
    assert_eq!(ids(&v["generated_token_ids"]), ids(&case["greedy"]));
    // one and two images
    for name in ["one_image", "two_images"] {
        let case = &g.meta["e2e"][name];
        let imgs: Vec<String> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| path(image(n.as_str().unwrap())))
            .collect();
        let mut args = vec!["--model", &model, "--json", "--max-new-tokens", &steps];
        args.extend(greedy);
        for i in &imgs {
            args.extend(["--image", i]);
        }
        args.extend(["--prompt", case["prompt"].as_str().unwrap()]);
        let v = run_json(&args);
        assert_eq!(
            ids(&v["generated_token_ids"]),
            ids(&case["greedy"]),
            "{name}"
        );
        assert_eq!(v["image_grid_thw"], case["image_grid_thw"], "{name}");
        let top = v["first_step_top_logits"].as_array().unwrap();
        assert_eq!(top.len(), 20);
        for (got, want) in top
            .iter()
            .zip(case["first_step_top_logits"].as_array().unwrap())
        {
            assert_eq!(got[0], want[0]);
            assert!((got[1].as_f64().unwrap() - want[1].as_f64().unwrap()).abs() < 1e-4);
        }
        for key in ["text", "timings", "routing"] {
            assert!(!v[key].is_null(), "{key} missing");
        }
        assert_eq!(v["routing"]["expert_counts"].as_array().unwrap().len(), 3);
    }
}

/// `--runs 3` repeats the request in one process: the reported run gives the reference's
/// tokens, and `runs` lists three runs' timings, the last being the reported one.
#[test]
fn cli_repeats_a_request_with_runs() {
    let g = Golden::load("tiny-echovlm");
    let model = path(model_dir("tiny-echovlm"));
    let case = &g.meta["text_en"];
    let steps = ids(&case["greedy"]).len().to_string();
    let v = run_json(&[
        "--model",
        &model,
        "--json",
        "--max-new-tokens",
        &steps,
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--ignore-eos",
        "--runs",
        "3",
        "--prompt",
        case["prompt"].as_str().unwrap(),
    ]);
    assert_eq!(ids(&v["generated_token_ids"]), ids(&case["greedy"]));
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[2], v["timings"]);
    for r in runs {
        assert_eq!(r["generated_tokens"].as_u64(), Some(steps.parse().unwrap()));
    }
    // zero runs is refused
    let out = cli()
        .args(["--model", &model, "--runs", "0", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runs"));
}

#[test]
fn cli_runs_qwen25_cine_loops_at_the_given_frame_rate() {
    let g = Golden::load("tiny-qwen25vl");
    let model = path(model_dir("tiny-qwen25vl"));
    for (name, fps) in [("cine_fps2", None), ("cine_fps1", Some("1"))] {
        let case = &g.meta["e2e"][name];
        let steps = ids(&case["greedy"]).len().to_string();
        let frames: Vec<String> = case["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| path(image(n.as_str().unwrap())))
            .collect();
        let mut args = vec!["--model", &model, "--json", "--max-new-tokens", &steps];
        args.extend([
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
            "--ignore-eos",
        ]);
        args.push("--frames");
        args.extend(frames.iter().map(String::as_str));
        if let Some(f) = fps {
            args.extend(["--fps", f]);
        }
        args.extend(["--prompt", case["prompt"].as_str().unwrap()]);
        let v = run_json(&args);
        assert_eq!(v["architecture"], "qwen2_5_vl", "{name}");
        assert_eq!(v["video_grid_thw"], case["video_grid_thw"], "{name}");
        assert_eq!(
            ids(&v["prompt_token_ids"]),
            ids(&case["input_ids"]),
            "{name}"
        );
        assert_eq!(
            ids(&v["generated_token_ids"]),
            ids(&case["greedy"]),
            "{name}"
        );
        assert!(v["routing"].is_null(), "{name}: no MoE in Qwen2.5-VL");
    }
    let v1 = run_json(&[
        "--model",
        &path(model_dir("tiny-echovlm")),
        "--json",
        "--max-new-tokens",
        "1",
        "--prompt",
        "hi",
    ]);
    assert_eq!(v1["architecture"], "qwen2_vl");
}

#[test]
fn demo_runs_without_arguments() {
    let out = run_ok(&["--max-new-tokens", "8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("synthetic ultrasound phantoms") && err.contains("--model"),
        "the demo must say what its model knows and how to run a real one: {err}"
    );
    assert!(err.contains("8 tokens"), "{err}");
}

#[test]
fn errors_are_one_line_without_panics() {
    for (args, needle) in [
        (vec!["--bogus"], "--bogus"),
        (vec!["--model", "/nonexistent/model"], "/nonexistent/model"),
        (
            vec!["--image", "/nonexistent/frame.png"],
            "/nonexistent/frame.png",
        ),
        (vec!["--task", "poetry"], "unknown task"),
        (vec!["--lang", "fr"], "unknown language"),
        (vec!["--device", "tpu"], "unknown device"),
        (vec!["--max-new-tokens", "0"], "max_new_tokens"),
    ] {
        let out = cli().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

/// Built with the `cuda` feature, the CLI links and runs; on a machine without an NVIDIA GPU
/// (CI) `--device cuda` is a one-line error naming the device, not a crash, and on one with a
/// GPU it generates.
#[cfg(feature = "cuda")]
#[test]
fn cli_with_cuda_runs_or_says_there_is_no_device() {
    let out = cli()
        .args([
            "--device",
            "cuda",
            "--max-new-tokens",
            "2",
            "--ignore-eos",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["generated_token_ids"].as_array().map(Vec::len),
            Some(2),
            "{v}"
        );
    } else {
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error:") && last.contains("Cuda") && last.contains("not available"),
            "{stderr}"
        );
    }
}

/// `--threads` sizes the CPU thread pool and gives the same tokens as the default; zero is a
/// one-line error; `--weights auto` (the default) keeps the f32 fixture in f32 and says why;
/// `--weights int4` runs and says so, an unknown format is refused by name.
#[test]
fn cli_threads_and_automatic_weights() {
    let model = path(model_dir("tiny-echovlm"));
    let args = |threads: Option<&str>| {
        let mut a = vec![
            "--model",
            &model,
            "--json",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--prompt",
            "Describe the liver.",
        ];
        if let Some(t) = threads {
            a.extend(["--threads", t]);
        }
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |threads: Option<&str>| {
        let a = args(threads);
        run_json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let one = run(Some("1"));
    assert_eq!(one["threads"], 1);
    let default = run(None);
    assert_eq!(
        default["threads"].as_u64(),
        Some(num_cpus_physical()),
        "{default}"
    );
    assert_eq!(one["generated_token_ids"], default["generated_token_ids"]);
    let weights = default["weights"].as_str().unwrap();
    assert!(
        weights.starts_with("f32 (the checkpoint is stored in f32"),
        "{weights}"
    );
    let a = args(Some("0"));
    let out = cli().args(&a).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot run on 0 threads"), "{stderr}");
    // int4 by name; an unknown format is a one-line error that lists the formats
    let mut a = args(None);
    a.extend(["--weights".into(), "int4".into()]);
    let int4 = run_json(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(int4["weights"], "int4 (as asked)", "{int4}");
    assert_eq!(int4["generated_token_ids"].as_array().unwrap().len(), 6);
    let mut a = args(None);
    a.extend(["--weights".into(), "int3".into()]);
    let out = cli().args(&a).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown weight format \"int3\" (use f32, bf16, int8 or int4)"),
        "{stderr}"
    );
}

/// The default thread count the CLI should pick: RAYON_NUM_THREADS when set, else the
/// physical cores.
fn num_cpus_physical() -> u64 {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(echovlm_core::cpu::physical_cores() as u64)
}

/// The README's first command: without arguments the CLI runs the demo model on held-out
/// phantom 1000000 and prints a report (in Chinese by default, in English with `--lang en`)
/// whose every attribute matches the phantom's.
#[test]
fn the_demo_command_reports_what_its_phantom_shows() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let all = std::fs::read_to_string(root.join("fixtures/phantoms/heldout.jsonl")).unwrap();
    let line: serde_json::Value = all
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["seed"] == 1_000_000)
        .unwrap();
    let truth: echovlm_phantom::Attributes =
        serde_json::from_value(line["attributes"].clone()).unwrap();
    for (args, lang) in [
        (vec!["--json"], echovlm_phantom::Lang::Zh),
        (vec!["--json", "--lang", "en"], echovlm_phantom::Lang::En),
    ] {
        let v = run_json(&args);
        let text = v["text"].as_str().unwrap();
        let scores = echovlm_phantom::score(&truth, &echovlm_phantom::parse_report(text, lang));
        assert!(
            scores.all_correct(),
            "the demo report {text:?} does not match phantom 1000000 ({truth:?}): {scores:?}"
        );
    }
}

/// `--follow-up` asks further questions after the first answer from the keys and values kept
/// from it: with `--json` the answers are listed under `follow_ups`, each having run only its
/// own turn's tokens before answering; the first answer is the one given without follow-ups;
/// streamed, each question is printed before its answer.
#[test]
fn cli_answers_follow_up_questions() {
    let q1 = "What is the echogenicity of the lesion?";
    let q2 = "Thank you.";
    let alone = run_json(&["--json", "--lang", "en", "--max-new-tokens", "48"]);
    let v = run_json(&[
        "--json",
        "--lang",
        "en",
        "--max-new-tokens",
        "48",
        "--follow-up",
        q1,
        "--follow-up",
        q2,
    ]);
    assert_eq!(v["generated_token_ids"], alone["generated_token_ids"]);
    let follow_ups = v["follow_ups"].as_array().unwrap();
    assert_eq!(follow_ups.len(), 2);
    let first_prefill = v["timings"]["prefill_tokens"].as_u64().unwrap();
    for (f, q) in follow_ups.iter().zip([q1, q2]) {
        assert_eq!(f["question"], q);
        assert!(!ids(&f["generated_token_ids"]).is_empty(), "{f}");
        let prefill = f["timings"]["prefill_tokens"].as_u64().unwrap();
        assert!(
            prefill > 5 && prefill < first_prefill,
            "{prefill} of {first_prefill}"
        );
    }
    assert!(alone["follow_ups"].as_array().unwrap().is_empty());

    let out = run_ok(&["--lang", "en", "--max-new-tokens", "48", "--follow-up", q1]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = follow_ups[0]["text"].as_str().unwrap();
    assert!(
        stdout.contains(&format!("\n> {q1}\n{text}")),
        "{stdout:?} should hold the question, then {text:?}"
    );
}

/// `--follow-up-image` gives an image to the `--follow-up` before it: that follow-up's prefill
/// holds the image's tokens (its merged patches between the vision start and end tokens)
/// beside the same question's tokens without it, and the JSON names it; an image before any
/// follow-up is refused as an argument out of place, and an unreadable one by its path.
#[test]
fn cli_follow_up_questions_take_images() {
    let q = "What is the echogenicity of the lesion?";
    // another phantom of the demo image's size
    let view = path(support::fixtures().join("phantoms/heldout/1000001.png"));
    let base = ["--json", "--lang", "en", "--max-new-tokens", "24"];
    let mut args = base.to_vec();
    args.extend(["--follow-up", q]);
    let text = run_json(&args);
    args.extend(["--follow-up-image", &view, "--follow-up", q]);
    let v = run_json(&args);
    let follow_ups = v["follow_ups"].as_array().unwrap();
    assert_eq!(follow_ups.len(), 2);
    assert_eq!(follow_ups[0]["images"], serde_json::json!([view]));
    assert_eq!(follow_ups[1]["images"], serde_json::json!([]));
    let prefill = |f: &serde_json::Value| f["timings"]["prefill_tokens"].as_u64().unwrap();
    let grid = ids(&v["image_grid_thw"][0]);
    let image_tokens = grid.iter().product::<u64>() / 4 + 2;
    assert_eq!(
        prefill(&follow_ups[0]),
        prefill(&text["follow_ups"][0]) + image_tokens,
        "{follow_ups:?}"
    );

    let mut args = base.to_vec();
    args.extend(["--follow-up-image", &view, "--follow-up", q]);
    let out = cli().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--follow-up-image") && err.contains("before any --follow-up"),
        "{err}"
    );

    let missing = path(support::fixtures().join("phantoms/no-such-view.png"));
    let mut args = base.to_vec();
    args.extend(["--follow-up", q, "--follow-up-image", &missing]);
    let out = cli().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-view.png"), "{err}");
}
