//! DICOM through the command line, the routing plot and the evaluation runner, end to end on
//! the demo checkpoint.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{example, fixtures, model_dir, temp_dir};

/// Runs `cmd` and asserts that it succeeded, showing its stderr when it did not.
fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_of(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_slice(&succeeded(cmd).stdout).unwrap()
}

fn dicom(name: &str) -> String {
    fixtures()
        .join("dicom")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn dicom_images_just_work_in_the_cli() {
    // a single-frame object is a still image
    let v = json_of(example("echovlm").args([
        "--image",
        &dicom("us_mono8.dcm"),
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(v["image_grid_thw"].as_array().unwrap().len(), 1);
    assert!(v["video_grid_thw"].as_array().unwrap().is_empty());
    // a multi-frame object is a cine loop: 5 frames -> 3 temporal pairs
    let v = json_of(example("echovlm").args([
        "--image",
        &dicom("us_rgb_cine.dcm"),
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(v["video_grid_thw"][0][0], 3);
    // frame selection: every second frame -> 3 frames -> 2 pairs
    let v = json_of(example("echovlm").args([
        "--image",
        &dicom("us_rgb_cine.dcm"),
        "--dicom-frames",
        "stride:2",
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(v["video_grid_thw"][0][0], 2);
    // an unsupported transfer syntax is a one-line error that names it
    let out = example("echovlm")
        .args(["--image", &dicom("us_rle.dcm")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1.2.840.10008.1.2.5"), "{err}");
    assert!(err.contains("RLE Lossless"), "{err}");
}

#[test]
fn routing_plot_is_a_png_with_content() {
    let dir = temp_dir("plot");
    let png = dir.path().join("routing.png");
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-echovlm");
    succeeded(
        example("echovlm")
            .arg("--model")
            .arg(&tiny)
            .args(["--max-new-tokens", "16", "--routing-plot"])
            .arg(&png),
    );
    let img = image::open(&png).unwrap().to_rgb8();
    // 3 MoE layers: 150 px of margins + 26 px per layer
    assert_eq!((img.width(), img.height()), (980, 150 + 26 * 3));
    let coloured = img.pixels().filter(|p| p[2] > p[0] + 40).count();
    assert!(
        coloured > 5000,
        "the heatmap and bars are drawn ({coloured} blue pixels)"
    );
    // the stock Qwen2-VL checkpoint has nothing to plot: a one-line error
    let out = example("echovlm")
        .args(["--model"])
        .arg(model_dir("tiny-qwen2vl"))
        .args(["--max-new-tokens", "2", "--routing-plot"])
        .arg(dir.path().join("none.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no MoE layers"));
}

#[test]
fn eval_runner_scores_generations_and_existing_outputs() {
    let dir = temp_dir("eval");
    let prefix: PathBuf = dir.path().join("demo");
    let v = json_of(
        example("eval")
            .args(["--max-new-tokens", "8", "--out"])
            .arg(&prefix),
    );
    let corpus = &v["corpus"];
    for key in [
        "bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL",
    ] {
        let x = corpus[key].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{key} = {x}");
    }
    assert_eq!(corpus["samples"], 4);
    assert!(
        v["accuracy"].is_number(),
        "the diagnosis sample is scored for accuracy"
    );
    assert!(
        v.get("attributes").is_none(),
        "no phantom samples, no attributes"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(written["samples"].as_array().unwrap().len(), 4);
    let csv = std::fs::read_to_string(prefix.with_extension("csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "header + 4 samples");

    // --score-only on the committed metric fixtures equals the Python tools
    let pairs = fixtures().join("metrics/pairs.jsonl");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("metrics/expected.json")).unwrap(),
    )
    .unwrap();
    let v = json_of(example("eval").arg("--score-only").arg(&pairs));
    // expected.json holds sacrebleu's BLEU (0-100) and rouge-score's F1 (0-1)
    let overall = &expected["corpus"]["overall"]["report"];
    for key in [
        "bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL",
    ] {
        let got = v[key].as_f64().unwrap();
        let scale = if key.starts_with("rouge") { 100.0 } else { 1.0 };
        let want = overall[key].as_f64().unwrap() * scale;
        assert!((got - want).abs() < 1e-6, "{key}: {got} vs {want}");
    }
    assert_eq!(v["samples"], 40);
    // a bad line is a one-line error with its number
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"reference\": \"a\", \"hypothesis\": \"b\", \"lang\": \"en\"}\nnot json\n",
    )
    .unwrap();
    let out = example("eval")
        .arg("--score-only")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn phantom_datasets_are_written_and_scored_per_attribute() {
    let dir = temp_dir("phantoms");
    let out = succeeded(example("phantoms").arg("--out").arg(dir.path()).args([
        "--name",
        "tiny",
        "--seeds",
        "1000..1003",
        "--lang",
        "en,zh",
    ]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("3 images") && said.contains("6 samples"),
        "{said}"
    );
    let data = dir.path().join("tiny.jsonl");
    assert_eq!(std::fs::read_to_string(&data).unwrap().lines().count(), 6);
    assert!(dir.path().join("tiny/1002.png").is_file());

    // the random-weight demo checkpoint answers nonsense, but every sample is counted
    let prefix = dir.path().join("scores");
    let v = json_of(
        example("eval")
            .arg("--data")
            .arg(&data)
            .args(["--max-new-tokens", "4", "--out"])
            .arg(&prefix),
    );
    let a = &v["attributes"];
    assert_eq!(a["samples"], 6, "{v}");
    assert_eq!(a["lesion_present"]["total"], 6, "{v}");
    for key in ["echogenicity", "position", "size", "margin"] {
        assert!(a[key]["total"].as_u64().unwrap() <= 6, "{v}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(written["attributes"], *a);
    assert!(written["samples"][0]["attributes"]["lesion_present"].is_boolean());

    // bad arguments are one-line errors
    let out = example("phantoms")
        .arg("--out")
        .arg(dir.path())
        .args(["--name", "x", "--seeds", "5..5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = example("phantoms")
        .arg("--out")
        .arg(dir.path())
        .args(["--name", "../x", "--seeds", "0..1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid dataset name"));

    // a selection writes only the seeds whose lesion matches
    let out = succeeded(
        example("phantoms")
            .arg("--out")
            .arg(dir.path())
            .args(["--name", "hard", "--seeds", "0..40", "--lang", "en"])
            .args([
                "--margin",
                "irregular",
                "--echogenicity",
                "anechoic,hypoechoic",
            ]),
    );
    let options = echovlm_phantom::DatasetOptions::default()
        .with_margin(&[echovlm_phantom::Margin::Irregular])
        .with_echogenicity(&[
            echovlm_phantom::Echogenicity::Anechoic,
            echovlm_phantom::Echogenicity::Hypoechoic,
        ]);
    let kept: Vec<u64> = (0..40)
        .filter(|&s| options.keeps(&echovlm_phantom::Attributes::from_seed(s)))
        .collect();
    assert!(!kept.is_empty() && kept.len() < 40);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("wrote {n} images", n = kept.len()))
            && said.contains(&format!("{n} samples", n = kept.len())),
        "{said}"
    );
    let seeds: Vec<u64> = std::fs::read_to_string(dir.path().join("hard.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seed"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seeds, kept);
    let out = example("phantoms")
        .arg("--out")
        .arg(dir.path())
        .args(["--name", "x", "--seeds", "0..1", "--margin", "wavy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wavy") && err.lines().count() == 1, "{err}");
}
