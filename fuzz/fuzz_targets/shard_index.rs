//! Bytes written as `model.safetensors.index.json` → `Checkpoint::open_dir`.
//!
//! The model directory holds two valid shards, a shard duplicating a tensor, a corrupt shard,
//! a shard in a subdirectory and a symbolic link to a file outside the directory. Whatever the
//! index says, every file the opened checkpoint reads must lie inside the model directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use echovlm_core::{Checkpoint, LoadError};
use libfuzzer_sys::fuzz_target;

/// A one-tensor safetensors file holding `name` as two f32 values.
fn shard(name: &str) -> Vec<u8> {
    let mut header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(1f32.to_le_bytes());
    out.extend(2f32.to_le_bytes());
    out
}

struct Fixture {
    _root: tempfile::TempDir,
    model: PathBuf,
    canonical: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let model = root.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        let write = |rel: &str, bytes: &[u8]| std::fs::write(model.join(rel), bytes).unwrap();
        write("model-00001-of-00002.safetensors", &shard("model.a.weight"));
        write("model-00002-of-00002.safetensors", &shard("model.b.weight"));
        write("dup.safetensors", &shard("model.a.weight"));
        write("corrupt.safetensors", b"\x10\0\0\0\0\0\0\0{not json}");
        write("sub/inner.safetensors", &shard("model.c.weight"));
        std::fs::write(root.path().join("outside.safetensors"), shard("secret")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            root.path().join("outside.safetensors"),
            model.join("escape.safetensors"),
        )
        .unwrap();
        let canonical = model.canonicalize().unwrap();
        Fixture {
            _root: root,
            model,
            canonical,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let index = f.model.join("model.safetensors.index.json");
    std::fs::write(&index, data).expect("write the index");
    match Checkpoint::open_dir(&f.model) {
        Ok(ckpt) => {
            assert!(!ckpt.files().is_empty());
            for file in ckpt.files() {
                let canon = file.canonicalize().expect("opened shard exists");
                assert!(
                    canon.starts_with(&f.canonical),
                    "{} escapes the model directory",
                    file.display()
                );
            }
            assert!(ckpt.entry("secret").is_none());
        }
        Err(e) => match &e {
            LoadError::ShardIndex { path, .. } => assert_eq!(path, &index),
            LoadError::Safetensors { path, .. } => assert!(path.starts_with(&f.model), "{e}"),
            LoadError::DuplicateTensor { .. } | LoadError::Io { .. } => {}
            other => panic!("unexpected error kind: {other}"),
        },
    }
});
