//! The evaluation runner: reading samples, scoring, and a run on the demo checkpoint.
#![cfg(feature = "runner")]

use std::path::PathBuf;

use echovlm_eval::runner::{EvalError, Sample, evaluate, read_samples, score_sample, summarize};
use echovlm_eval::{BleuOptions, Language, rouge_all, score_corpus, sentence_bleu};
use echovlm_pipeline::{EchoVlm, Lang, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

#[test]
fn samples_resolve_images_against_their_file_and_keep_line_numbers() {
    let samples = read_samples(&fixtures().join("eval/demo.jsonl")).unwrap();
    assert_eq!(samples.len(), 4);
    assert_eq!(
        samples.iter().map(|s| s.line).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for s in &samples {
        assert_eq!(s.images.len(), 1);
        assert!(s.images[0].is_file(), "{}", s.images[0].display());
    }
    assert_eq!(samples[3].options.len(), 3);
}

#[test]
fn a_bad_line_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"reference\": \"a\"}\n\n{\"prompt\": 3}\n").unwrap();
    match read_samples(&path) {
        Err(EvalError::Sample { line, path: p, .. }) => {
            assert_eq!(line, 3);
            assert_eq!(p, path);
        }
        other => panic!("expected a sample error, got {other:?}"),
    }
    assert!(matches!(
        read_samples(&dir.path().join("missing.jsonl")),
        Err(EvalError::Io { .. })
    ));
    let mut s = Sample::new(vec![], "q", "r", Lang::En);
    s.prompt = None;
    s.task = Some("haiku".into());
    let err = s.request().unwrap_err().to_string();
    assert!(err.contains("haiku"), "{err}");
}

#[test]
fn per_sample_scores_are_the_metric_functions_on_a_0_100_scale() {
    let s = Sample::new(
        vec![],
        "Describe the liver.",
        "The liver is normal in size with a smooth capsule.",
        Lang::En,
    );
    let hyp = "The liver is normal in size.";
    let got = score_sample(&s, &format!("  {hyp}\n"), 7);
    let rouge = rouge_all(hyp, &s.reference, Language::English);
    assert_eq!(got.hypothesis, hyp);
    assert_eq!(got.rouge1, rouge.rouge1.f1);
    assert_eq!(got.rouge2, rouge.rouge2.f1);
    assert_eq!(got.rouge_l, rouge.rouge_l.f1);
    assert!(got.rouge1 > 1.0 && got.rouge1 <= 100.0, "{}", got.rouge1);
    let b4 = sentence_bleu(
        hyp,
        &s.reference,
        &BleuOptions::sentence(Language::English, 4),
    );
    assert_eq!(got.bleu4, b4.score);
    assert_eq!(got.correct, None);
    assert_eq!(got.generated_tokens, 7);
}

#[test]
fn choice_samples_are_scored_for_accuracy_and_the_corpus_matches_score_corpus() {
    let mut a = Sample::new(vec![], "q", "B. suspicious lesion", Lang::En);
    a.options = vec!["benign".into(), "suspicious lesion".into()];
    let mut b = a.clone();
    b.reference = "A. benign".into();
    let c = Sample::new(vec![], "q", "甲状腺结节，TI-RADS 4a类。", Lang::Zh);
    let scored = vec![
        score_sample(&a, "B", 1),
        score_sample(&b, "B. suspicious lesion", 1),
        score_sample(&c, "甲状腺未见异常。", 1),
    ];
    assert_eq!(scored[0].correct, Some(true));
    assert_eq!(scored[1].correct, Some(false));
    assert_eq!(scored[2].correct, None);
    let report = summarize(scored.clone());
    assert_eq!(report.choice_samples, 2);
    assert_eq!(report.accuracy, Some(50.0));
    let en: Vec<(&str, &str)> = scored[..2]
        .iter()
        .map(|s| (s.reference.as_str(), s.hypothesis.as_str()))
        .collect();
    let en_only = summarize(scored[..2].to_vec());
    let direct = score_corpus(&en, Language::English);
    assert!((en_only.corpus.bleu4 - direct.bleu4).abs() < 1e-9);
    assert!((en_only.corpus.rouge_l - direct.rouge_l).abs() < 1e-9);
}

#[test]
fn evaluate_runs_the_demo_checkpoint_over_the_demo_samples() {
    let model = EchoVlm::load(
        fixtures().join("models/tiny-echovlm"),
        &LoadOptions::default(),
    )
    .unwrap();
    let samples = read_samples(&fixtures().join("eval/demo.jsonl")).unwrap();
    let mut opts = model.default_generation();
    opts.max_new_tokens = 4;
    let mut seen = Vec::new();
    let report = evaluate(&model, &samples, &opts, |n| seen.push(n)).unwrap();
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(report.samples.len(), 4);
    assert_eq!(report.corpus.samples, 4);
    assert_eq!(report.choice_samples, 1);
    for s in &report.samples {
        assert!(s.generated_tokens >= 1 && s.generated_tokens <= 4);
        for x in [s.bleu1, s.bleu4, s.rouge1, s.rouge2, s.rouge_l] {
            assert!((0.0..=100.0).contains(&x), "{x}");
        }
    }
    let mut csv = Vec::new();
    report.write_csv(&mut csv).unwrap();
    assert_eq!(String::from_utf8(csv).unwrap().lines().count(), 5);

    // a missing image is an error naming the sample's line
    let mut broken = samples.clone();
    broken[1].images = vec![fixtures().join("images/no_such.png")];
    match evaluate(&model, &broken, &opts, |_| {}) {
        Err(EvalError::Generation { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a generation error, got {other:?}"),
    }
}
