//! Report metrics against sacrebleu 2.6.0 and rouge-score 0.1.2.
//!
//! The expected values come from `tools/make_metric_fixtures.py`
//! (`fixtures/metrics/expected.json`, computed on `fixtures/metrics/pairs.jsonl`).
//! BLEU is compared on sacrebleu's 0-100 scale; ROUGE fixtures hold
//! rouge-score's 0-1 values, which are scaled by 100 here. Every number must
//! agree to 1e-6 absolute.

use std::path::PathBuf;
use std::sync::OnceLock;

use echovlm_eval as metrics;
use echovlm_eval::{
    BleuOptions, BleuScore, BleuStats, BleuTokenizer, Language, MetricsError, ReportScores,
    RougeScore, RougeTokenizer, Smoothing,
};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/metrics")
}

fn expected() -> &'static Value {
    static EXPECTED: OnceLock<Value> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let text = std::fs::read_to_string(fixture_dir().join("expected.json"))
            .expect("fixtures/metrics/expected.json (run tools/make_metric_fixtures.py)");
        serde_json::from_str(&text).expect("expected.json parses")
    })
}

fn pairs_text() -> String {
    std::fs::read_to_string(fixture_dir().join("pairs.jsonl"))
        .expect("fixtures/metrics/pairs.jsonl")
}

struct Pair {
    id: String,
    lang: Language,
    reference: String,
    hypothesis: String,
}

fn pairs() -> Vec<Pair> {
    pairs_text()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Pair {
                id: v["id"].as_str().unwrap().to_owned(),
                lang: Language::from_code(v["lang"].as_str().unwrap()).unwrap(),
                reference: v["reference"].as_str().unwrap().to_owned(),
                hypothesis: v["hypothesis"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[track_caller]
fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= TOL,
        "{what}: got {actual}, expected {expected} (diff {})",
        (actual - expected).abs()
    );
}

#[track_caller]
fn check_bleu(actual: &BleuScore, expected: &Value, what: &str) {
    close(
        actual.score,
        f(&expected["score"]),
        &format!("{what} score"),
    );
    close(actual.bp, f(&expected["bp"]), &format!("{what} bp"));
    assert_eq!(
        actual.sys_len as u64,
        expected["sys_len"].as_u64().unwrap(),
        "{what} sys_len"
    );
    assert_eq!(
        actual.ref_len as u64,
        expected["ref_len"].as_u64().unwrap(),
        "{what} ref_len"
    );
    let precisions = expected["precisions"].as_array().unwrap();
    assert_eq!(actual.precisions.len(), precisions.len(), "{what} orders");
    for (i, (a, e)) in actual.precisions.iter().zip(precisions).enumerate() {
        close(*a, f(e), &format!("{what} precision {}", i + 1));
    }
}

#[track_caller]
fn check_rouge(actual: &RougeScore, expected: &Value, what: &str) {
    close(
        actual.precision,
        100.0 * f(&expected["precision"]),
        &format!("{what} P"),
    );
    close(
        actual.recall,
        100.0 * f(&expected["recall"]),
        &format!("{what} R"),
    );
    close(actual.f1, 100.0 * f(&expected["f1"]), &format!("{what} F1"));
}

#[track_caller]
fn check_report(actual: &ReportScores, expected: &Value, what: &str) {
    close(
        actual.bleu1,
        f(&expected["bleu1"]),
        &format!("{what} bleu1"),
    );
    close(
        actual.bleu2,
        f(&expected["bleu2"]),
        &format!("{what} bleu2"),
    );
    close(
        actual.bleu3,
        f(&expected["bleu3"]),
        &format!("{what} bleu3"),
    );
    close(
        actual.bleu4,
        f(&expected["bleu4"]),
        &format!("{what} bleu4"),
    );
    close(
        actual.rouge1,
        100.0 * f(&expected["rouge1"]),
        &format!("{what} rouge1"),
    );
    close(
        actual.rouge2,
        100.0 * f(&expected["rouge2"]),
        &format!("{what} rouge2"),
    );
    close(
        actual.rouge_l,
        100.0 * f(&expected["rougeL"]),
        &format!("{what} rougeL"),
    );
    assert_eq!(
        actual.samples as u64,
        expected["samples"].as_u64().unwrap(),
        "{what} samples"
    );
}

fn smoothing(key: &str) -> Smoothing {
    match key {
        "exp" => Smoothing::Exp,
        "none" => Smoothing::None,
        "floor:0.1" => Smoothing::Floor(0.1),
        "add-k:1" => Smoothing::AddK(1.0),
        other => panic!("unknown smoothing key {other}"),
    }
}

fn expected_pair(id: &str) -> &'static Value {
    expected()["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no expected entry for {id}"))
}

#[test]
fn fixtures_cover_both_languages() {
    let pairs = pairs();
    let en = pairs.iter().filter(|p| p.lang == Language::English).count();
    let zh = pairs.iter().filter(|p| p.lang == Language::Chinese).count();
    assert_eq!((en, zh), (20, 20));
    assert_eq!(expected()["pairs"].as_array().unwrap().len(), 40);
    assert_eq!(expected()["versions"]["sacrebleu"], "2.6.0");
    assert_eq!(expected()["versions"]["rouge-score"], "0.1.2");
}

#[test]
fn zh_chinese_char_table_matches_sacrebleu_quirks() {
    let ranges: Vec<(u32, u32)> = expected()["zh_chinese_char_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32))
        .collect();
    assert_eq!(ranges, metrics::ZH_CHINESE_RANGES);
    for cp in 0..=0x10FFFFu32 {
        if let Some(c) = char::from_u32(cp) {
            let inside = ranges.iter().any(|&(a, b)| a <= cp && cp <= b);
            assert_eq!(metrics::is_zh_chinese_char(c), inside, "U+{cp:04X}");
        }
    }
    // The quirks: general punctuation counts, CJK Extension B does not.
    assert!(metrics::is_zh_chinese_char('—'));
    assert!(metrics::is_zh_chinese_char('℃'));
    assert!(!metrics::is_zh_chinese_char('\u{20000}'));
    assert!(!metrics::is_zh_chinese_char('×'));
}

#[test]
fn tokenizer_probes_match_sacrebleu_and_rouge_score() {
    for probe in expected()["tokenizer_probes"].as_array().unwrap() {
        let input = s(&probe["input"]);
        assert_eq!(
            metrics::tokenize_13a(input),
            s(&probe["13a"]),
            "13a of {input:?}"
        );
        assert_eq!(
            metrics::tokenize_zh(input),
            s(&probe["zh"]),
            "zh of {input:?}"
        );
        assert_eq!(
            BleuTokenizer::Tok13a.tokens(input, true).join(" "),
            s(&probe["13a_lowercase"]),
            "lowercased 13a of {input:?}"
        );
        assert_eq!(
            metrics::tokenize_rouge_default(input).join(" "),
            s(&probe["rouge_default"]),
            "rouge-score tokens of {input:?}"
        );
    }
}

#[test]
fn pair_tokenizations_match() {
    for pair in pairs() {
        let e = expected_pair(&pair.id);
        let bleu = pair.lang.bleu_tokenizer();
        let rouge = pair.lang.rouge_tokenizer();
        for (side, text) in [
            ("reference", &pair.reference),
            ("hypothesis", &pair.hypothesis),
        ] {
            assert_eq!(
                bleu.tokens(text, false).join(" "),
                s(&e["bleu_tokens"][side]),
                "{} BLEU tokens of the {side}",
                pair.id
            );
            assert_eq!(
                rouge.tokenize(text).join(" "),
                s(&e["rouge_tokens"][side]),
                "{} ROUGE tokens of the {side}",
                pair.id
            );
        }
    }
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    for pair in pairs() {
        let e = expected_pair(&pair.id);
        for (key, scores) in e["sentence_bleu"].as_object().unwrap() {
            let scores = scores.as_array().unwrap();
            let orders: Vec<usize> = if scores.len() == 4 {
                vec![1, 2, 3, 4]
            } else {
                vec![4]
            };
            for (n, want) in orders.into_iter().zip(scores) {
                let opts = BleuOptions::sentence(pair.lang, n).with_smoothing(smoothing(key));
                let got = metrics::sentence_bleu(&pair.hypothesis, &pair.reference, &opts);
                close(
                    got.score,
                    f(want),
                    &format!("{} sentence BLEU-{n} {key}", pair.id),
                );
            }
        }
        let got = metrics::sentence_bleu(
            &pair.hypothesis,
            &pair.reference,
            &BleuOptions::sentence(pair.lang, 4),
        );
        check_bleu(
            &got,
            &e["sentence_bleu4_exp"],
            &format!("{} sentence BLEU-4", pair.id),
        );
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu_for_every_smoothing() {
    let pairs = pairs();
    for lang in [Language::English, Language::Chinese] {
        let hyps: Vec<&str> = pairs
            .iter()
            .filter(|p| p.lang == lang)
            .map(|p| p.hypothesis.as_str())
            .collect();
        let refs: Vec<&str> = pairs
            .iter()
            .filter(|p| p.lang == lang)
            .map(|p| p.reference.as_str())
            .collect();
        let by_smoothing = expected()["corpus"][lang.code()]["bleu"]
            .as_object()
            .unwrap();
        assert_eq!(by_smoothing.len(), 4);
        for (key, per_n) in by_smoothing {
            for n in 1..=4 {
                let opts = BleuOptions::corpus(lang, n).with_smoothing(smoothing(key));
                let got = metrics::corpus_bleu(&hyps, &refs, &opts).unwrap();
                check_bleu(
                    &got,
                    &per_n[n.to_string()],
                    &format!("{} corpus BLEU-{n} {key}", lang.code()),
                );
            }
        }
    }
}

#[test]
fn multi_reference_bleu_matches_sacrebleu() {
    let m = &expected()["multi_reference"];
    let hyps: Vec<&str> = m["hypotheses"].as_array().unwrap().iter().map(s).collect();
    let refs: Vec<Vec<&str>> = m["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(s).collect())
        .collect();
    for n in 1..=4 {
        let got =
            metrics::corpus_bleu_multi(&hyps, &refs, &BleuOptions::corpus(Language::English, n))
                .unwrap();
        check_bleu(
            &got,
            &m["corpus_bleu_exp"][n.to_string()],
            &format!("multi-ref BLEU-{n}"),
        );
    }
    for (i, (hyp, r)) in hyps.iter().zip(&refs).enumerate() {
        let got =
            metrics::sentence_bleu_multi(hyp, r, &BleuOptions::sentence(Language::English, 4));
        check_bleu(
            &got,
            &m["sentence_bleu4_exp"][i],
            &format!("multi-ref sentence {i}"),
        );
    }
}

#[test]
fn rouge_matches_rouge_score() {
    for pair in pairs() {
        let e = &expected_pair(&pair.id)["rouge"];
        let what = |t: &str| format!("{} {t}", pair.id);
        check_rouge(
            &metrics::rouge_n(&pair.hypothesis, &pair.reference, 1, pair.lang),
            &e["rouge1"],
            &what("rouge1"),
        );
        check_rouge(
            &metrics::rouge_n(&pair.hypothesis, &pair.reference, 2, pair.lang),
            &e["rouge2"],
            &what("rouge2"),
        );
        check_rouge(
            &metrics::rouge_l(&pair.hypothesis, &pair.reference, pair.lang),
            &e["rougeL"],
            &what("rougeL"),
        );
        let all = metrics::rouge_all(&pair.hypothesis, &pair.reference, pair.lang);
        check_rouge(&all.rouge1, &e["rouge1"], &what("rouge_all rouge1"));
        check_rouge(&all.rouge2, &e["rouge2"], &what("rouge_all rouge2"));
        check_rouge(&all.rouge_l, &e["rougeL"], &what("rouge_all rougeL"));
    }
}

#[test]
fn rouge_means_and_reports_per_language() {
    let pairs = pairs();
    for lang in [Language::English, Language::Chinese] {
        let mine: Vec<&Pair> = pairs.iter().filter(|p| p.lang == lang).collect();
        let corpus = &expected()["corpus"][lang.code()];
        for (key, n) in [("rouge1", Some(1)), ("rouge2", Some(2)), ("rougeL", None)] {
            let scores: Vec<RougeScore> = mine
                .iter()
                .map(|p| match n {
                    Some(n) => metrics::rouge_n(&p.hypothesis, &p.reference, n, lang),
                    None => metrics::rouge_l(&p.hypothesis, &p.reference, lang),
                })
                .collect();
            let count = scores.len() as f64;
            let mean = RougeScore {
                precision: scores.iter().map(|s| s.precision).sum::<f64>() / count,
                recall: scores.iter().map(|s| s.recall).sum::<f64>() / count,
                f1: scores.iter().map(|s| s.f1).sum::<f64>() / count,
            };
            check_rouge(
                &mean,
                &corpus["rouge_mean"][key],
                &format!("{} mean {key}", lang.code()),
            );
        }
        let tuples: Vec<(&str, &str)> = mine
            .iter()
            .map(|p| (p.reference.as_str(), p.hypothesis.as_str()))
            .collect();
        let report = metrics::score_corpus(&tuples, lang);
        check_report(
            &report,
            &corpus["report"],
            &format!("{} report", lang.code()),
        );
    }
}

#[test]
fn score_jsonl_matches_overall_and_per_language() {
    let report = metrics::score_jsonl(&pairs_text()).unwrap();
    let corpus = &expected()["corpus"];
    check_report(&report.overall, &corpus["overall"]["report"], "overall");
    check_report(
        report.english.as_ref().unwrap(),
        &corpus["en"]["report"],
        "jsonl en",
    );
    check_report(
        report.chinese.as_ref().unwrap(),
        &corpus["zh"]["report"],
        "jsonl zh",
    );
    // The overall BLEU is neither language's: the statistics are pooled.
    assert!((report.overall.bleu4 - report.english.unwrap().bleu4).abs() > 1.0);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["overall"]["rougeL"].is_f64());
    assert_eq!(json["chinese"]["samples"], 20);
}

#[test]
fn score_jsonl_skips_blank_lines_and_reports_bad_lines() {
    let only_en = "\n{\"reference\": \"No free fluid.\", \"hypothesis\": \"No free fluid.\", \"lang\": \"EN\"}\n\n";
    let report = metrics::score_jsonl(only_en).unwrap();
    assert_eq!(report.overall.samples, 1);
    close(report.overall.bleu4, 100.0, "identical BLEU-4");
    close(report.overall.rouge_l, 100.0, "identical ROUGE-L");
    assert!(report.chinese.is_none());
    assert_eq!(report.english.unwrap(), report.overall);

    let ok = r#"{"reference": "a", "hypothesis": "a", "lang": "zh"}"#;
    type Check = fn(&MetricsError) -> bool;
    let cases: Vec<(String, Check)> = vec![
        (format!("{ok}\n{{\"reference\": \"a\", "), |e| {
            matches!(e, MetricsError::Json { line: 2, .. })
        }),
        (format!("{ok}\n\n[1, 2]"), |e| {
            matches!(e, MetricsError::NotAnObject { line: 3 })
        }),
        (r#"{"hypothesis": "a", "lang": "en"}"#.to_owned(), |e| {
            matches!(
                e,
                MetricsError::MissingField {
                    line: 1,
                    field: "reference"
                }
            )
        }),
        (r#"{"reference": "a", "lang": "en"}"#.to_owned(), |e| {
            matches!(
                e,
                MetricsError::MissingField {
                    line: 1,
                    field: "hypothesis"
                }
            )
        }),
        (
            format!("{ok}\n{{\"reference\": \"a\", \"hypothesis\": \"b\"}}"),
            |e| {
                matches!(
                    e,
                    MetricsError::MissingField {
                        line: 2,
                        field: "lang"
                    }
                )
            },
        ),
        (
            r#"{"reference": 3, "hypothesis": "a", "lang": "en"}"#.to_owned(),
            |e| {
                matches!(
                    e,
                    MetricsError::FieldNotString {
                        line: 1,
                        field: "reference"
                    }
                )
            },
        ),
        (
            r#"{"reference": "a", "hypothesis": "a", "lang": "fr"}"#.to_owned(),
            |e| matches!(e, MetricsError::UnknownLanguage { line: 1, lang } if lang == "fr"),
        ),
    ];
    for (text, check) in cases {
        let err = metrics::score_jsonl(&text).unwrap_err();
        assert!(check(&err), "{text:?} gave {err:?}");
        assert!(err.to_string().starts_with("line "), "{err}");
    }

    let bom = format!("\u{feff}{ok}\r\n");
    assert_eq!(metrics::score_jsonl(&bom).unwrap().overall.samples, 1);

    let empty = metrics::score_jsonl("").unwrap();
    assert_eq!(empty.overall, ReportScores::default());
    assert!(empty.english.is_none() && empty.chinese.is_none());
}

#[test]
fn rouge_score_default_tokenizer_drops_chinese() {
    for pair in pairs().iter().filter(|p| p.lang == Language::Chinese) {
        let e = &expected_pair(&pair.id)["rouge_default_tokenizer"];
        assert_eq!(
            metrics::tokenize_rouge_default(&pair.reference).join(" "),
            s(&e["reference_tokens"]),
            "{}",
            pair.id
        );
        assert_eq!(
            metrics::tokenize_rouge_default(&pair.hypothesis).join(" "),
            s(&e["hypothesis_tokens"]),
            "{}",
            pair.id
        );
        let all = metrics::rouge_all(&pair.hypothesis, &pair.reference, RougeTokenizer::Default);
        check_rouge(
            &all.rouge1,
            &e["scores"]["rouge1"],
            &format!("{} default rouge1", pair.id),
        );
        check_rouge(
            &all.rouge2,
            &e["scores"]["rouge2"],
            &format!("{} default rouge2", pair.id),
        );
        check_rouge(
            &all.rouge_l,
            &e["scores"]["rougeL"],
            &format!("{} default rougeL", pair.id),
        );
    }
    assert_eq!(
        metrics::tokenize_rouge_default("TI-RADS 4a类，结节"),
        ["ti", "rads", "4a"]
    );
    // Identical Chinese text scores 0 with rouge-score's own tokenizer.
    let text = "甲状腺大小正常，实质回声均匀。";
    assert_eq!(
        metrics::rouge_l(text, text, RougeTokenizer::Default).f1,
        0.0
    );
    assert_eq!(metrics::rouge_l(text, text, Language::Chinese).f1, 100.0);
}

#[test]
fn chinese_defaults_are_character_level() {
    assert_eq!(Language::Chinese.bleu_tokenizer(), BleuTokenizer::Zh);
    assert_eq!(Language::Chinese.rouge_tokenizer(), RougeTokenizer::Chars);
    assert_eq!(Language::from_code("zh-CN"), Some(Language::Chinese));
    assert_eq!(Language::from_code("en_US"), Some(Language::English));
    assert_eq!(Language::from_code("ja"), None);
    assert_eq!(
        BleuTokenizer::Zh.tokens("肝脏大小正常，TI-RADS 4a类。 ", false),
        [
            "肝", "脏", "大", "小", "正", "常", "，", "TI-RADS", "4a", "类", "。"
        ]
    );
    assert_eq!(
        metrics::tokenize_chars("肝 脏\u{3000}A1"),
        ["肝", "脏", "A", "1"]
    );
    // 甲状腺正常 vs 甲状腺结节: 3 of 5 characters and 2 of 4 bigrams shared.
    let r1 = metrics::rouge_n("甲状腺正常", "甲状腺结节", 1, Language::Chinese);
    close(r1.precision, 60.0, "zh rouge1 P");
    close(r1.recall, 60.0, "zh rouge1 R");
    let r2 = metrics::rouge_n("甲状腺正常", "甲状腺结节", 2, Language::Chinese);
    close(r2.f1, 50.0, "zh rouge2 F1");
    // BLEU-1 on characters: 3 of 5 unigrams match, same length.
    let b1 = metrics::sentence_bleu(
        "甲状腺正常",
        "甲状腺结节",
        &BleuOptions::sentence(Language::Chinese, 1),
    );
    close(b1.score, 60.0, "zh BLEU-1");
}

#[test]
fn edge_cases_do_not_panic() {
    let opts = BleuOptions::default();
    // Empty hypothesis.
    let b = metrics::sentence_bleu(
        "",
        "The liver is normal.",
        &BleuOptions::sentence(Language::English, 4),
    );
    assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 0.0, 0, 5));
    assert_eq!(
        metrics::rouge_l("", "The liver is normal.", Language::English),
        RougeScore::default()
    );
    assert_eq!(
        metrics::rouge_n("", "", 1, Language::Chinese),
        RougeScore::default()
    );
    // Empty corpus.
    let empty: [&str; 0] = [];
    let b = metrics::corpus_bleu(&empty, &empty, &opts).unwrap();
    assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 1.0, 0, 0));
    assert_eq!(b.precisions, [0.0; 4]);
    assert_eq!(
        metrics::score_corpus::<&str, &str>(&[], Language::Chinese),
        ReportScores::default()
    );
    // Both sides empty, whitespace only.
    let b = metrics::corpus_bleu(&["  "], &["\n"], &opts).unwrap();
    assert_eq!(b.score, 0.0);
    // Mismatched lengths are an error, not a panic.
    assert!(matches!(
        metrics::corpus_bleu(&["a"], &empty, &opts),
        Err(MetricsError::LengthMismatch {
            hypotheses: 1,
            references: 0
        })
    ));
    // Order 0 scores 0; absurd orders are clamped.
    let zero = BleuOptions {
        max_order: 0,
        ..opts
    };
    assert_eq!(metrics::sentence_bleu("a b", "a b", &zero).score, 0.0);
    let huge = BleuOptions {
        max_order: usize::MAX,
        ..BleuOptions::sentence(Language::English, 4)
    };
    let b = metrics::sentence_bleu("a b c", "a b c", &huge);
    assert_eq!(b.precisions.len(), metrics::MAX_BLEU_ORDER);
    close(b.score, 100.0, "identical with the effective order");
    // ROUGE-0 is 0 rather than an error.
    assert_eq!(
        metrics::rouge_n("a", "a", 0, Language::English),
        RougeScore::default()
    );
    // A reference with no references.
    let none: [&str; 0] = [];
    let b =
        metrics::sentence_bleu_multi("a b", &none, &BleuOptions::sentence(Language::English, 4));
    assert_eq!((b.score, b.ref_len), (0.0, 0));
    // Statistics add up to the corpus.
    let mut stats = BleuStats::new(4);
    stats.add(&metrics::segment_stats("a b c", &["a b d"], &opts));
    stats.add(&metrics::segment_stats("x", &["x y"], &opts));
    assert_eq!((stats.sys_len, stats.ref_len), (4, 5));
    assert_eq!(stats.correct, [3, 1, 0, 0]);
    assert_eq!(stats.total, [4, 2, 1, 0]);
    let corpus = metrics::corpus_bleu(&["a b c", "x"], &["a b d", "x y"], &opts).unwrap();
    assert_eq!(stats.score(Smoothing::Exp, false), corpus);
}

#[test]
fn smoothing_names_round_trip() {
    for (name, value, want) in [
        ("none", None, Smoothing::None),
        ("exp", None, Smoothing::Exp),
        ("floor", None, Smoothing::Floor(0.1)),
        ("floor", Some(0.2), Smoothing::Floor(0.2)),
        ("add-k", None, Smoothing::AddK(1.0)),
    ] {
        let got = Smoothing::from_name(name, value).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.name(), name);
    }
    assert_eq!(Smoothing::from_name("floor2", None), None);
    assert_eq!(Smoothing::default(), Smoothing::Exp);
}

#[test]
fn accuracy_normalises_whitespace_and_case() {
    let preds = ["  Benign  thyroid\tnodule ", "MALIGNANT", "cyst"];
    let refs = ["benign thyroid nodule", "malignant", "solid mass"];
    close(
        metrics::accuracy(&preds, &refs).unwrap(),
        200.0 / 3.0,
        "accuracy",
    );
    assert_eq!(
        metrics::normalize_answer("  Benign\u{3000}Thyroid \n"),
        "benign thyroid"
    );
    let empty: [&str; 0] = [];
    assert_eq!(metrics::accuracy(&empty, &empty).unwrap(), 0.0);
    assert!(matches!(
        metrics::accuracy(&["a"], &empty),
        Err(MetricsError::LengthMismatch { .. })
    ));
}

#[test]
fn option_letters_are_extracted() {
    let cases: &[(&str, Option<char>)] = &[
        ("B", Some('B')),
        ("b", Some('B')),
        (" C. Thyroid adenoma", Some('C')),
        ("(D) cyst", Some('D')),
        ("（A）正常", Some('A')),
        ("**B**", Some('B')),
        ("B benign", Some('B')),
        ("A、甲状腺癌", Some('A')),
        ("答案：B", Some('B')),
        ("答案是 C。", Some('C')),
        ("根据图像，答案为（D）", Some('D')),
        ("The answer is (b).", Some('B')),
        ("Answer: E", Some('E')),
        ("我选B", Some('B')),
        ("Option C is correct", Some('C')),
        ("Ｂ．良性", Some('B')),
        ("A 1.2 cm nodule is seen.", None),
        ("I think it is benign", None),
        ("a lesion", None),
        ("Benign", None),
        ("B超提示结节", None),
        ("The answer is benign", None),
        ("", None),
        ("答案：", None),
    ];
    for (text, want) in cases {
        assert_eq!(metrics::extract_option_letter(text), *want, "{text:?}");
    }
    let preds = ["答案：B", "C", "I am not sure", "(a)"];
    let refs = ["B", "D", "A", "A"];
    close(
        metrics::choice_accuracy(&preds, &refs).unwrap(),
        50.0,
        "choice accuracy",
    );
}

#[cfg(feature = "jieba")]
mod jieba {
    use super::*;
    use echovlm_eval::ReportOptions;

    #[test]
    fn jieba_words_and_scores_match_python_jieba() {
        let j = &expected()["jieba"];
        for probe in j["probes"].as_array().unwrap() {
            let input = s(&probe["input"]);
            assert_eq!(
                metrics::tokenize_jieba(input).join(" "),
                s(&probe["words"]),
                "{input:?}"
            );
        }
        let zh: Vec<Pair> = pairs()
            .into_iter()
            .filter(|p| p.lang == Language::Chinese)
            .collect();
        for (pair, e) in zh.iter().zip(j["pairs"].as_array().unwrap()) {
            assert_eq!(s(&e["id"]), pair.id);
            assert_eq!(
                metrics::tokenize_jieba(&pair.reference).join(" "),
                s(&e["reference_words"]),
                "{}",
                pair.id
            );
            assert_eq!(
                metrics::tokenize_jieba(&pair.hypothesis).join(" "),
                s(&e["hypothesis_words"]),
                "{}",
                pair.id
            );
            let all = metrics::rouge_all(&pair.hypothesis, &pair.reference, RougeTokenizer::Jieba);
            check_rouge(
                &all.rouge1,
                &e["rouge"]["rouge1"],
                &format!("{} jieba rouge1", pair.id),
            );
            check_rouge(
                &all.rouge2,
                &e["rouge"]["rouge2"],
                &format!("{} jieba rouge2", pair.id),
            );
            check_rouge(
                &all.rouge_l,
                &e["rouge"]["rougeL"],
                &format!("{} jieba rougeL", pair.id),
            );
        }
        let hyps: Vec<&str> = zh.iter().map(|p| p.hypothesis.as_str()).collect();
        let refs: Vec<&str> = zh.iter().map(|p| p.reference.as_str()).collect();
        for n in 1..=4 {
            let opts =
                BleuOptions::corpus(Language::Chinese, n).with_tokenizer(BleuTokenizer::Jieba);
            let got = metrics::corpus_bleu(&hyps, &refs, &opts).unwrap();
            check_bleu(
                &got,
                &j["corpus_bleu_exp"][n.to_string()],
                &format!("jieba BLEU-{n}"),
            );
        }
        let tuples: Vec<(&str, &str)> = zh
            .iter()
            .map(|p| (p.reference.as_str(), p.hypothesis.as_str()))
            .collect();
        let report = metrics::score_corpus_with(&tuples, &ReportOptions::chinese_words());
        check_report(&report, &j["report"], "jieba report");
    }
}
