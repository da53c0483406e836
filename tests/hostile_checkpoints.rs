//! Hostile model directories through the whole user path, `EchoVlm::load`: broken safetensors
//! files and shard indexes, impossible `config.json` values, unusable tokenizer, template and
//! preprocessor files. Every case must give one typed [`EchoError`] that names the problem and
//! the file, without panicking, aborting or allocating from the hostile numbers.
//!
//! The inputs live in `tests/corpus/` (written by `tools/make_hostile_corpus.py`); cases that
//! need a full-size checkpoint are derived from the fixtures at test time.

mod support;

use std::path::{Path, PathBuf};

use echovlm_core::{LoadError, TensorProblem};
use echovlm_pipeline::{EchoError, EchoVlm, LoadOptions};
use echovlm_text::TokenizerError;
use echovlm_vision::error::ImageError;
use support::copy_model;

/// A file of the hostile corpus.
fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(rel)
}

/// Loads a model directory that must be refused.
fn refuse(dir: &Path) -> EchoError {
    EchoVlm::load(dir, &LoadOptions::default()).expect_err("a hostile model directory loaded")
}

/// A copy of fixture `model` with `file` replaced by the corpus file `rel`.
fn with_corpus_file(model: &str, file: &str, rel: &str) -> tempfile::TempDir {
    let dir = copy_model(model, "hostile");
    std::fs::copy(corpus(rel), dir.path().join(file)).unwrap();
    dir
}

/// Rewrites the header of `dir/model.safetensors` in place (same length, padded with spaces),
/// leaving the data untouched.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= n, "edited header is longer than the original");
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    std::fs::write(&path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// safetensors files
// ---------------------------------------------------------------------------------------------

/// Every broken single-file checkpoint of the corpus: `LoadError::Safetensors` naming the file,
/// with the reason.
#[test]
fn corrupt_safetensors_files_are_refused_with_the_file_named() {
    let cases = [
        ("empty", "shorter than the 8-byte header length"),
        ("short_header", "shorter than the 8-byte header length"),
        ("header_100gb", "larger than the 100 MB limit"),
        (
            "header_past_eof",
            "header length runs past the end of the file",
        ),
        ("header_not_json", "invalid JSON in header"),
        ("header_not_utf8", "invalid UTF-8 in header"),
        ("unknown_dtype", "invalid JSON in header"),
        ("negative_offset", "invalid JSON in header"),
        ("truncated", "truncated"),
        ("padded", "padded"),
        (
            "overlapping_offsets",
            "tensor model.b.weight has invalid or overlapping offsets",
        ),
        (
            "out_of_bounds_offsets",
            "tensor model.a.weight has invalid or overlapping offsets",
        ),
        (
            "shape_offsets_mismatch",
            "byte range does not match its shape and dtype",
        ),
        ("shape_overflow", "overflow computing buffer size"),
    ];
    for (name, needle) in cases {
        let dir = with_corpus_file(
            "tiny-echovlm-tied",
            "model.safetensors",
            &format!("checkpoints/{name}.safetensors"),
        );
        let file = dir.path().join("model.safetensors");
        let err = refuse(dir.path());
        let msg = err.to_string();
        match err {
            EchoError::Load(LoadError::Safetensors { path, reason }) => {
                assert_eq!(path, file, "{name}");
                assert!(
                    reason.contains(needle),
                    "{name}: {reason:?} lacks {needle:?}"
                );
                assert!(msg.contains("model.safetensors"), "{name}: {msg}");
            }
            other => panic!("{name}: expected LoadError::Safetensors, got {other:?}"),
        }
    }
}

#[test]
fn dtype_that_does_not_fit_the_module_is_named() {
    let dir = copy_model("tiny-echovlm-tied", "dtype");
    let key = "model.norm.weight";
    // I16 has the size of the stored BF16, so the file itself stays valid
    edit_header(dir.path(), |h| h[key]["dtype"] = "I16".into());
    let err = refuse(dir.path());
    assert!(err.to_string().contains(key), "{err}");
    match err {
        EchoError::Load(LoadError::Tensors(p)) => assert_eq!(
            p.problems(),
            [TensorProblem::Dtype {
                key: key.into(),
                expected: "F32, BF16 or F16".into(),
                found: "I16".into(),
            }]
        ),
        other => panic!("expected LoadError::Tensors, got {other:?}"),
    }
}

#[test]
fn transposed_tensor_is_named_with_both_shapes() {
    let dir = copy_model("tiny-echovlm-tied", "shape");
    let key = "model.layers.0.self_attn.k_proj.weight";
    edit_header(dir.path(), |h| {
        h[key]["shape"] = serde_json::json!([32, 16])
    });
    match refuse(dir.path()) {
        EchoError::Load(LoadError::Tensors(p)) => assert_eq!(
            p.problems(),
            [TensorProblem::Shape {
                key: key.into(),
                expected: vec![16, 32],
                found: vec![32, 16],
            }]
        ),
        other => panic!("expected LoadError::Tensors, got {other:?}"),
    }
}

#[test]
fn directory_without_weights_is_refused() {
    let dir = copy_model("tiny-echovlm-tied", "noweights");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    match refuse(dir.path()) {
        EchoError::Load(LoadError::NoWeights(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected LoadError::NoWeights, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// shard index
// ---------------------------------------------------------------------------------------------

const INDEX: &str = "model.safetensors.index.json";

/// Index files of the corpus that are refused before any shard is opened:
/// `LoadError::ShardIndex` naming the index file and the offending entry.
#[test]
fn bad_shard_indexes_are_refused_with_the_entry_named() {
    let cases = [
        (
            "escape_parent",
            "shard \"../../etc/passwd\" is outside the model directory",
        ),
        (
            "absolute_path",
            "shard \"/etc/passwd\" is outside the model directory",
        ),
        (
            "empty_shard_name",
            "shard \"\" is outside the model directory",
        ),
        (
            "missing_shard",
            "shard \"model-00004-of-00003.safetensors\" named by the index does not exist",
        ),
        ("shard_not_string", "is not a string"),
        ("no_weight_map", "no \"weight_map\" object"),
        ("empty_weight_map", "weight_map is empty"),
        ("not_json", "not valid JSON"),
    ];
    for (name, needle) in cases {
        let dir = with_corpus_file(
            "tiny-echovlm-sharded",
            INDEX,
            &format!("index/{name}.index.json"),
        );
        let index = dir.path().join(INDEX);
        let err = refuse(dir.path());
        assert!(err.to_string().contains(INDEX), "{name}: {err}");
        match err {
            EchoError::Load(LoadError::ShardIndex { path, reason }) => {
                assert_eq!(path, index, "{name}");
                assert!(
                    reason.contains(needle),
                    "{name}: {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{name}: expected LoadError::ShardIndex, got {other:?}"),
        }
    }
}

#[test]
fn deleted_shard_is_named() {
    let dir = copy_model("tiny-echovlm-sharded", "noshard");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = refuse(dir.path());
    assert!(
        matches!(&err, EchoError::Load(LoadError::ShardIndex { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );
}

/// A shard that is a symbolic link to a file outside the model directory is refused even
/// though its name is plain.
#[cfg(unix)]
#[test]
fn shard_symlinked_outside_the_model_directory_is_refused() {
    let outside = support::temp_dir("outside");
    let dir = copy_model("tiny-echovlm-sharded", "symlink");
    let shard = "model-00003-of-00003.safetensors";
    std::fs::rename(dir.path().join(shard), outside.path().join(shard)).unwrap();
    std::os::unix::fs::symlink(outside.path().join(shard), dir.path().join(shard)).unwrap();
    match refuse(dir.path()) {
        EchoError::Load(LoadError::ShardIndex { reason, .. }) => {
            assert!(reason.contains(shard), "{reason}");
            assert!(reason.contains("outside the model directory"), "{reason}");
        }
        other => panic!("expected LoadError::ShardIndex, got {other:?}"),
    }
}

/// A shard name that is a directory inside the model directory: the map fails, naming it.
#[test]
fn shard_that_is_a_directory_is_named() {
    let dir = copy_model("tiny-echovlm-sharded", "shard-dir");
    let index = dir.path().join(INDEX);
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace("model-00002-of-00003.safetensors", "weights.d"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("weights.d")).unwrap();
    let err = refuse(dir.path());
    assert!(err.to_string().contains("weights.d"), "{err}");
    assert!(
        matches!(
            &err,
            EchoError::Load(LoadError::Io { .. } | LoadError::Safetensors { .. })
        ),
        "{err:?}"
    );
}

/// `./model-00001-of-00003.safetensors` and `model-00001-of-00003.safetensors` are one file:
/// its tensors are found twice.
#[test]
fn one_shard_under_two_names_is_a_duplicate() {
    let dir = with_corpus_file(
        "tiny-echovlm-sharded",
        INDEX,
        "index/same_shard_twice.index.json",
    );
    match refuse(dir.path()) {
        EchoError::Load(LoadError::DuplicateTensor { first, second, .. }) => {
            for p in [&first, &second] {
                assert!(
                    p.ends_with("model-00001-of-00003.safetensors"),
                    "{}",
                    p.display()
                );
            }
        }
        other => panic!("expected LoadError::DuplicateTensor, got {other:?}"),
    }
}

/// An index that forgets a shard: every tensor of that shard is reported missing.
#[test]
fn index_forgetting_a_shard_reports_its_tensors_missing() {
    let dir = with_corpus_file("tiny-echovlm-sharded", INDEX, "index/incomplete.index.json");
    let full: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::model_dir("tiny-echovlm-sharded").join(INDEX)).unwrap(),
    )
    .unwrap();
    let mut forgotten: Vec<String> = full["weight_map"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, f)| f.as_str() == Some("model-00003-of-00003.safetensors"))
        .map(|(k, _)| echovlm_core::canonical_name(k))
        .collect();
    forgotten.sort();
    assert!(!forgotten.is_empty());
    match refuse(dir.path()) {
        EchoError::Load(LoadError::Tensors(p)) => {
            let mut missing: Vec<String> = p
                .problems()
                .iter()
                .filter(|x| matches!(x, TensorProblem::Missing { .. }))
                .map(|x| x.key().to_string())
                .collect();
            missing.sort();
            assert_eq!(missing, forgotten);
            // nothing is unexpected: every stored tensor has its place
            assert!(
                !p.problems()
                    .iter()
                    .any(|x| matches!(x, TensorProblem::Unexpected { .. })),
                "{p}"
            );
        }
        other => panic!("expected LoadError::Tensors, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

/// `config.json` files with zero, negative, absurd or inconsistent values:
/// `LoadError::Config` naming `config.json` and the field.
#[test]
fn impossible_configs_are_refused_with_the_field_named() {
    let cases = [
        (
            "zero_hidden_size",
            "hidden_size = 0 is outside the supported range",
        ),
        (
            "negative_layers",
            "num_hidden_layers must be a non-negative integer, got -3",
        ),
        (
            "huge_vocab",
            "vocab_size = 1000000000000 is outside the supported range",
        ),
        (
            "huge_intermediate",
            "intermediate_size = 1099511627776 is outside",
        ),
        (
            "float_heads",
            "num_attention_heads must be a non-negative integer, got 4.5",
        ),
        (
            "string_hidden_size",
            "hidden_size must be a non-negative integer, got \"64\"",
        ),
        (
            "zero_context",
            "max_position_embeddings = 0 is outside the supported range",
        ),
        (
            "mrope_wrong_sum",
            "mrope_section [2, 3, 4] sums to 9, but head_dim / 2 = 8",
        ),
        (
            "mrope_two_entries",
            "mrope_section must be three non-negative integers",
        ),
        ("mrope_missing", "missing rope_scaling.mrope_section"),
        (
            "heads_not_dividing_hidden",
            "hidden_size = 64 is not divisible by num_attention_heads = 3",
        ),
        (
            "kv_heads_not_dividing_heads",
            "num_attention_heads = 4 is not a multiple of num_key_value_heads = 3",
        ),
        ("odd_head_dim", "head_dim = 15 must be even"),
        (
            "rope_theta_negative",
            "rope_theta = -5 must be a number above 1",
        ),
        ("rms_norm_eps_zero", "rms_norm_eps = 0 must be positive"),
        (
            "image_token_outside_vocab",
            "image_token_id = 5000 is not below vocab_size = 704",
        ),
        (
            "negative_eos",
            "eos_token_id must be a non-negative integer, got -1",
        ),
        ("missing_hidden_size", "missing hidden_size"),
        ("not_json", "not valid JSON"),
        ("not_object", "not a JSON object"),
        ("empty", "not valid JSON"),
        (
            "vision_heads_not_dividing",
            "vision_config.embed_dim = 32 is not divisible by num_heads = 3",
        ),
        (
            "vision_zero_depth",
            "vision_config.depth = 0 is outside the supported range",
        ),
        (
            "vision_hidden_mismatch",
            "vision_config.hidden_size = 32 but the decoder's hidden_size is 64",
        ),
        (
            "vision_window_attention",
            "the model is qwen2_vl but vision_config has Qwen2.5-VL's window attention",
        ),
        ("vision_missing", "missing vision_config"),
    ];
    for (name, needle) in cases {
        let dir = with_corpus_file(
            "tiny-echovlm",
            "config.json",
            &format!("configs/{name}.json"),
        );
        let file = dir.path().join("config.json");
        let err = refuse(dir.path());
        assert!(err.to_string().contains("config.json"), "{name}: {err}");
        match err {
            EchoError::Load(LoadError::Config { path, reason }) => {
                assert_eq!(path, file, "{name}");
                assert!(
                    reason.contains(needle),
                    "{name}: {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{name}: expected LoadError::Config, got {other:?}"),
        }
    }
}

/// The largest sizes the parser accepts (hidden 65536, vocabulary 4 M, 1024 layers): a 1 TB
/// embedding on paper. The strict loader compares shapes before allocating anything, so the
/// mismatch with the tiny weights is reported at once.
#[test]
fn huge_in_range_sizes_fail_on_the_weights_without_allocating() {
    let dir = with_corpus_file(
        "tiny-echovlm",
        "config.json",
        "configs/huge_but_in_range.json",
    );
    match refuse(dir.path()) {
        EchoError::Load(LoadError::Tensors(p)) => {
            assert!(p.problems().contains(&TensorProblem::Shape {
                key: "model.embed_tokens.weight".into(),
                expected: vec![4194304, 65536],
                found: vec![704, 64],
            }));
            assert!(p.problems().contains(&TensorProblem::Missing {
                key: "model.layers.1023.input_layernorm.weight".into(),
            }));
        }
        other => panic!("expected LoadError::Tensors, got {other:?}"),
    }
}

#[test]
fn config_token_id_disagreeing_with_the_tokenizer_is_inconsistent() {
    let dir = with_corpus_file(
        "tiny-echovlm",
        "config.json",
        "configs/image_token_mismatch.json",
    );
    match refuse(dir.path()) {
        EchoError::Inconsistent(msg) => assert_eq!(
            msg,
            "config.json says image_token_id = 651 but the tokenizer gives 652"
        ),
        other => panic!("expected EchoError::Inconsistent, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// tokenizer, chat template, preprocessor and generation configs
// ---------------------------------------------------------------------------------------------

#[test]
fn unparsable_tokenizers_are_refused_with_the_file_named() {
    for name in ["not_json", "empty", "wrong_schema"] {
        let dir = with_corpus_file(
            "tiny-echovlm",
            "tokenizer.json",
            &format!("tokenizers/{name}.json"),
        );
        let file = dir.path().join("tokenizer.json");
        let err = refuse(dir.path());
        assert!(err.to_string().contains("tokenizer.json"), "{name}: {err}");
        match err {
            EchoError::Tokenizer(TokenizerError::Load { path, reason }) => {
                assert_eq!(path, file, "{name}");
                assert!(!reason.is_empty(), "{name}");
            }
            other => panic!("{name}: expected TokenizerError::Load, got {other:?}"),
        }
    }
}

#[test]
fn tokenizer_without_the_image_token_is_refused() {
    let dir = copy_model("tiny-echovlm", "nopad");
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("<|image_pad|>"));
    std::fs::write(&path, text.replace("<|image_pad|>", "<|image_pod|>")).unwrap();
    match refuse(dir.path()) {
        EchoError::Tokenizer(TokenizerError::MissingSpecial(name)) => {
            assert_eq!(name, "<|image_pad|>")
        }
        other => panic!("expected TokenizerError::MissingSpecial, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_file_is_named() {
    let dir = copy_model("tiny-echovlm", "notok");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    match refuse(dir.path()) {
        EchoError::Tokenizer(TokenizerError::Load { path, .. }) => {
            assert_eq!(path, dir.path().join("tokenizer.json"))
        }
        other => panic!("expected TokenizerError::Load, got {other:?}"),
    }
}

/// `tokenizer_config.json` and `generation_config.json` that are not JSON are named.
#[test]
fn side_configs_that_are_not_json_are_named() {
    for (file, text) in [
        ("tokenizer_config.json", "{\"chat_template\": "),
        ("generation_config.json", "{\"do_sample\": tru"),
    ] {
        let dir = copy_model("tiny-echovlm", "sidecfg");
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        match refuse(dir.path()) {
            EchoError::Load(LoadError::Config { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("not valid JSON"), "{file}: {reason}");
            }
            other => panic!("{file}: expected LoadError::Config, got {other:?}"),
        }
    }
}

#[test]
fn model_without_a_chat_template_is_refused() {
    let dir = copy_model("tiny-echovlm", "notmpl");
    let path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&path, cfg.to_string()).unwrap();
    match refuse(dir.path()) {
        EchoError::Template(msg) => assert!(msg.contains("no chat template"), "{msg}"),
        other => panic!("expected EchoError::Template, got {other:?}"),
    }
}

#[test]
fn chat_template_with_a_syntax_error_is_refused_at_load() {
    let dir = copy_model("tiny-echovlm", "badtmpl");
    let source = std::fs::read_to_string(corpus("templates/syntax_error.jinja")).unwrap();
    std::fs::write(
        dir.path().join("chat_template.json"),
        serde_json::json!({ "chat_template": source }).to_string(),
    )
    .unwrap();
    match refuse(dir.path()) {
        EchoError::Template(msg) => assert!(msg.contains("syntax error"), "{msg}"),
        other => panic!("expected EchoError::Template, got {other:?}"),
    }
}

#[test]
fn bad_preprocessor_configs_are_refused_with_the_file_named() {
    let cases = [
        ("{\"min_pixels\": ", "not valid JSON"),
        (
            r#"{"min_pixels": 5000, "max_pixels": 4000}"#,
            "min_pixels (5000) is larger than max_pixels (4000)",
        ),
        (r#"{"patch_size": 0}"#, "patch_size must be positive"),
        (
            r#"{"image_std": [0.2, 0.0, 0.2]}"#,
            "image_std[1] must be positive",
        ),
        (
            r#"{"patch_size": -14}"#,
            "patch_size must be a non-negative integer",
        ),
        (
            r#"{"patch_size": 4294967296, "temporal_patch_size": 4294967296}"#,
            "patch_size = 4294967296 is above the supported maximum of 1024",
        ),
        (
            r#"{"do_normalize": false}"#,
            "do_normalize = false is not supported",
        ),
    ];
    for (text, needle) in cases {
        let dir = copy_model("tiny-echovlm", "preproc");
        let file = dir.path().join("preprocessor_config.json");
        std::fs::write(&file, text).unwrap();
        match refuse(dir.path()) {
            EchoError::Image(ImageError::Config { path, reason }) => {
                assert_eq!(path.as_deref(), Some(file.as_path()), "{text}");
                assert!(
                    reason.contains(needle),
                    "{text}: {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{text}: expected ImageError::Config, got {other:?}"),
        }
    }
}

/// A `preprocessor_config.json` asking for a million frames per temporal patch would make one
/// 56x56 image into 38 GB of pixel values; it is refused when the model loads.
#[test]
fn absurd_temporal_patch_size_is_refused_at_load() {
    let dir = copy_model("tiny-echovlm", "temporal");
    let file = dir.path().join("preprocessor_config.json");
    std::fs::write(&file, r#"{"temporal_patch_size": 1000000}"#).unwrap();
    match refuse(dir.path()) {
        EchoError::Image(ImageError::Config { path, reason }) => {
            assert_eq!(path.as_deref(), Some(file.as_path()));
            assert_eq!(
                reason,
                "temporal_patch_size = 1000000 is above the supported maximum of 16"
            );
        }
        other => panic!("expected ImageError::Config, got {other:?}"),
    }
}

/// Preprocessing that disagrees with the vision tower is refused when the model loads: 16-pixel
/// patches for a 14-pixel ViT would fail inside the ViT, and 1024-pixel patches merged 16x16
/// (within what a vision tower may use) would first resize every image to 16384x16384 (about
/// 7 GB of pixel values).
#[test]
fn preprocessor_disagreeing_with_the_vision_tower_is_inconsistent() {
    let cases = [
        (
            r#"{"patch_size": 16}"#,
            "preprocessor_config.json says patch_size = 16 but the vision tower's is 14",
        ),
        (
            r#"{"patch_size": 1024, "merge_size": 16}"#,
            "preprocessor_config.json says patch_size = 1024 but the vision tower's is 14",
        ),
        (
            r#"{"merge_size": 4}"#,
            "preprocessor_config.json says merge_size = 4 but the vision tower's is 2",
        ),
        (
            r#"{"temporal_patch_size": 1}"#,
            "preprocessor_config.json says temporal_patch_size = 1 but the vision tower's is 2",
        ),
    ];
    for (text, want) in cases {
        let dir = copy_model("tiny-echovlm", "preproc-vit");
        std::fs::write(dir.path().join("preprocessor_config.json"), text).unwrap();
        match refuse(dir.path()) {
            EchoError::Inconsistent(msg) => assert_eq!(msg, want),
            other => panic!("{text}: expected EchoError::Inconsistent, got {other:?}"),
        }
    }
}
