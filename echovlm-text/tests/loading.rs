//! Strict loading: every bad checkpoint gives one typed error that names the problem.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;

use burn::tensor::{DType, Device};
use echovlm_core::{Checkpoint, LinearOptions, LoadError, TensorProblem, load};
use echovlm_text::{TextConfig, TextModel};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use support::copy_model;

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `model.safetensors` in `dir` after `edit` changed its tensor list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut entries);
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn try_load(dir: &Path) -> Result<TextModel, LoadError> {
    let cfg = TextConfig::from_file(dir.join("config.json"))?;
    let ckpt = Checkpoint::open_dir(dir)?;
    load(
        &ckpt,
        &Device::default(),
        DType::F32,
        LinearOptions::default(),
        |l| {
            l.ignore_prefix("visual.");
            TextModel::load(l, &cfg)
        },
    )
}

fn problems(err: LoadError) -> Vec<TensorProblem> {
    match err {
        LoadError::Tensors(p) => p.problems().to_vec(),
        other => panic!("expected a tensor error, got {other}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model("tiny-echovlm-tied", "missing");
    let key = "model.layers.1.moe.experts.2.up_proj.weight";
    rewrite(dir.path(), |e| e.retain(|t| t.0 != key));
    let err = try_load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(key), "{msg}");
    assert_eq!(
        problems(err),
        vec![TensorProblem::Missing { key: key.into() }]
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = copy_model("tiny-echovlm-tied", "shape");
    let key = "model.layers.0.self_attn.k_proj.weight";
    rewrite(dir.path(), |e| {
        let t = e.iter_mut().find(|t| t.0 == key).unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    let err = try_load(dir.path()).unwrap_err();
    assert!(err.to_string().contains(key));
    assert_eq!(
        problems(err),
        vec![TensorProblem::Shape {
            key: key.into(),
            expected: vec![16, 32],
            found: vec![32, 16],
        }]
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = copy_model("tiny-echovlm-tied", "dtype");
    let key = "model.norm.weight";
    rewrite(dir.path(), |e| {
        let t = e.iter_mut().find(|t| t.0 == key).unwrap();
        t.1 = Dtype::I16; // same byte size as the stored bf16
    });
    let err = try_load(dir.path()).unwrap_err();
    assert_eq!(
        problems(err),
        vec![TensorProblem::Dtype {
            key: key.into(),
            expected: "F32, BF16 or F16".into(),
            found: "I16".into(),
        }]
    );
}

#[test]
fn all_problems_are_reported_together() {
    let dir = copy_model("tiny-echovlm-tied", "many");
    rewrite(dir.path(), |e| {
        e.retain(|t| t.0 != "model.layers.0.coefficient.bias");
        let t = e
            .iter_mut()
            .find(|t| t.0 == "model.layers.1.mlp.down_proj.weight")
            .unwrap();
        t.2 = vec![t.2[0] * 2, t.2[1] / 2];
        e.push((
            "model.layers.7.extra.weight".into(),
            Dtype::F32,
            vec![1],
            vec![0; 4],
        ));
    });
    let err = try_load(dir.path()).unwrap_err();
    let msg = err.to_string();
    for needle in [
        "model.layers.0.coefficient.bias",
        "model.layers.1.mlp.down_proj.weight",
        "unexpected tensor model.layers.7.extra.weight",
    ] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    assert_eq!(problems(err).len(), 3);
}

#[test]
fn truncated_file_names_the_file() {
    let dir = copy_model("tiny-echovlm-tied", "truncated");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    match try_load(dir.path()).unwrap_err() {
        LoadError::Safetensors { path: p, reason } => {
            assert_eq!(p, path);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn header_claiming_100_gb_is_refused_without_allocating() {
    let dir = copy_model("tiny-echovlm-tied", "header");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&100_000_000_000u64.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = try_load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("header length"), "{err}");
}

#[test]
fn shard_index_cannot_leave_the_model_directory() {
    let dir = copy_model("tiny-echovlm-sharded", "escape");
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replacen("model-00001-of-00003.safetensors", "../../etc/passwd", 1),
    )
    .unwrap();
    let err = try_load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::ShardIndex { .. }), "{err}");
    assert!(err.to_string().contains("../../etc/passwd"), "{err}");
}

#[test]
fn missing_shard_is_named() {
    let dir = copy_model("tiny-echovlm-sharded", "noshard");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = try_load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::ShardIndex { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );
}

#[test]
fn sharded_checkpoint_reads_every_shard() {
    let ckpt = Checkpoint::open_dir(support::model_dir("tiny-echovlm-sharded")).unwrap();
    assert_eq!(ckpt.files().len(), 3);
    assert!(ckpt.entry("model.layers.0.moe.gate.weight").is_some());
}

#[test]
fn new_layout_is_renamed_to_canonical_names() {
    let ckpt = Checkpoint::open_dir(support::model_dir("tiny-echovlm-newlayout")).unwrap();
    let e = ckpt.entry("model.layers.0.moe.gate.weight").unwrap();
    assert_eq!(
        e.original_name,
        "model.language_model.layers.0.moe.gate.weight"
    );
    assert!(ckpt.entry("visual.patch_embed.proj.weight").is_some());
}
