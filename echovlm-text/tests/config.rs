//! config.json in its flat and nested forms, and configurations that cannot describe a model.

#[path = "../../tests/support/mod.rs"]
mod support;

use echovlm_core::LoadError;
use echovlm_text::TextConfig;
use serde_json::{Value, json};

fn flat() -> Value {
    let p = support::model_dir("tiny-echovlm").join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const TEXT_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rope_theta",
    "rope_scaling",
    "num_experts_per_tok",
    "norm_topk_prob",
];

fn nested(rope_parameters: bool) -> Value {
    let f = flat();
    let mut top = f.clone();
    let mut text = serde_json::Map::new();
    for k in TEXT_KEYS {
        if let Some(v) = top.as_object_mut().unwrap().remove(*k) {
            text.insert(k.to_string(), v);
        }
    }
    if rope_parameters {
        let rs = text.remove("rope_scaling").unwrap();
        let theta = text.remove("rope_theta").unwrap();
        text.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "mrope_section": rs["mrope_section"], "rope_theta": theta}),
        );
    }
    top["text_config"] = Value::Object(text);
    top
}

fn parse(v: &Value) -> Result<TextConfig, LoadError> {
    TextConfig::from_json(v, "config.json")
}

#[test]
fn flat_and_nested_forms_agree() {
    let a = parse(&flat()).unwrap();
    assert_eq!(a.mrope_section, [2, 3, 3]);
    assert_eq!(a.head_dim, 16);
    assert_eq!(a.rope_theta, 1_000_000.0);
    assert_eq!(a.num_key_value_heads, 2);
    assert_eq!(a.vision_tokens.image, Some(652));
    assert_eq!(parse(&nested(false)).unwrap(), a);
    assert_eq!(parse(&nested(true)).unwrap(), a);
}

#[test]
fn fixture_configs_in_every_form_parse() {
    for name in [
        "tiny-echovlm-bf16",
        "tiny-echovlm-newlayout",
        "tiny-echovlm-sharded",
        "tiny-qwen2vl",
    ] {
        let c = TextConfig::from_file(support::model_dir(name).join("config.json")).unwrap();
        assert_eq!(c.mrope_section, [2, 3, 3], "{name}");
        assert_eq!(c.hidden_size, 32, "{name}");
    }
}

fn reason(v: Value) -> String {
    match parse(&v).unwrap_err() {
        LoadError::Config { reason, .. } => reason,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn mrope_section_must_cover_half_the_head() {
    let mut v = flat();
    v["rope_scaling"]["mrope_section"] = json!([2, 3, 4]);
    assert!(reason(v).contains("sums to 9, but head_dim / 2 = 8"));
}

#[test]
fn heads_must_divide_the_hidden_size() {
    let mut v = flat();
    v["num_attention_heads"] = json!(3);
    v["num_key_value_heads"] = json!(1);
    assert!(reason(v).contains("not divisible by num_attention_heads"));
    let mut v = flat();
    v["num_key_value_heads"] = json!(3);
    assert!(reason(v).contains("not a multiple of num_key_value_heads"));
}

#[test]
fn zero_negative_and_absurd_sizes_are_refused() {
    for (key, value, needle) in [
        ("hidden_size", json!(0), "outside the supported range"),
        ("num_hidden_layers", json!(-3), "non-negative integer"),
        (
            "vocab_size",
            json!(1u64 << 40),
            "outside the supported range",
        ),
        ("intermediate_size", json!("big"), "non-negative integer"),
        ("rms_norm_eps", json!(-1.0), "must be positive"),
    ] {
        let mut v = flat();
        v[key] = value;
        let r = reason(v);
        assert!(r.contains(key) && r.contains(needle), "{key}: {r}");
    }
    let mut v = flat();
    v.as_object_mut().unwrap().remove("hidden_size");
    assert_eq!(reason(v), "missing hidden_size");
    assert!(reason(json!([1, 2])).contains("not a JSON object"));
}

#[test]
fn special_ids_must_be_inside_the_vocabulary() {
    let mut v = flat();
    v["image_token_id"] = json!(151655);
    assert!(reason(v).contains("image_token_id = 151655 is not below vocab_size = 704"));
}
