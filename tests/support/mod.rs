//! Shared by the test suites of every crate: locating the fixtures written by
//! `tools/make_fixtures.py` and reading its golden outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use echovlm_core::{Checkpoint, StorageDtype};

/// `fixtures/` at the repository root (or `$ECHOVLM_FIXTURES`, for a test binary run on
/// another machine than the one that built it).
pub fn fixtures() -> PathBuf {
    if let Some(dir) = std::env::var_os("ECHOVLM_FIXTURES") {
        return PathBuf::from(dir);
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("fixtures");
        if candidate.join("goldens").is_dir() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "fixtures/ not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// A model directory under `fixtures/models/`.
pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// An image under `fixtures/images/`.
pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// Golden outputs of one fixture: tensors (`.safetensors`) and everything else (`.json`).
pub struct Golden {
    pub meta: serde_json::Value,
    tensors: Checkpoint,
}

impl Golden {
    pub fn load(name: &str) -> Self {
        let dir = fixtures().join("goldens");
        let meta_path = dir.join(format!("{name}.json"));
        let meta = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
        let tensors = Checkpoint::open_files(&[dir.join(format!("{name}.safetensors"))]).unwrap();
        Self { meta, tensors }
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.entry(key).shape.clone()
    }

    fn entry(&self, key: &str) -> &echovlm_core::TensorEntry {
        self.tensors
            .entry(key)
            .unwrap_or_else(|| panic!("golden tensor {key} missing"))
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        self.tensors.to_f32(self.entry(key)).expect("float golden")
    }

    pub fn i64(&self, key: &str) -> Vec<i64> {
        let e = self.entry(key);
        assert_eq!(e.dtype, StorageDtype::Other("I64"), "{key}");
        self.tensors
            .bytes(e)
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn u8(&self, key: &str) -> Vec<u8> {
        let e = self.entry(key);
        assert_eq!(e.dtype, StorageDtype::Other("U8"), "{key}");
        self.tensors.bytes(e).to_vec()
    }

    /// `meta[a][b]...` as u32 token ids.
    pub fn ids(&self, path: &[&str]) -> Vec<u32> {
        let mut v = &self.meta;
        for p in path {
            v = &v[*p];
        }
        v.as_array()
            .unwrap_or_else(|| panic!("{path:?} is not an array"))
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("echovlm-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Copies a model directory so a test can damage it.
pub fn copy_model(name: &str, tag: &str) -> tempfile::TempDir {
    let dst = temp_dir(tag);
    copy_dir(&model_dir(name), dst.path());
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// `target/<profile>/examples/<name>`, which `cargo test` builds before running tests.
pub fn example(name: &str) -> std::process::Command {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    let exe = p
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "{} not built", exe.display());
    std::process::Command::new(exe)
}
