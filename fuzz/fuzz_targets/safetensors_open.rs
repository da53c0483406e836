//! Bytes written to a file → `Checkpoint::open_files`.
//!
//! A file must be refused with a typed error naming it, or every tensor it indexes must lie
//! inside the mapped data with exactly the bytes its shape and dtype need.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use echovlm_core::{Checkpoint, LoadError};
use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.safetensors");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).expect("write the input");
    match Checkpoint::open_files(std::slice::from_ref(path)) {
        Ok(ckpt) => {
            let keys: Vec<String> = ckpt.keys().map(str::to_owned).collect();
            assert_eq!(keys.len(), ckpt.len());
            for key in &keys {
                let entry = ckpt.entry(key).expect("listed key has an entry");
                let bytes = ckpt.bytes(entry);
                if entry.dtype.is_float() {
                    assert_eq!(bytes.len(), entry.numel() * entry.dtype.size(), "{key}");
                    if entry.numel() <= 1 << 16 {
                        assert_eq!(ckpt.to_f32(entry).expect("float").len(), entry.numel());
                        assert_eq!(ckpt.to_bf16(entry).expect("float").len(), entry.numel());
                    }
                } else {
                    assert!(ckpt.to_f32(entry).is_none());
                }
            }
            let _ = ckpt.num_elements();
        }
        Err(e @ (LoadError::Safetensors { .. } | LoadError::DuplicateTensor { .. })) => {
            assert!(e.to_string().contains("model.safetensors"), "{e}");
        }
        Err(LoadError::Io { .. }) => {}
        Err(other) => panic!("unexpected error kind: {other}"),
    }
});
