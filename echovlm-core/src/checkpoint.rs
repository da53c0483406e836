//! Memory-mapped safetensors checkpoints: single files and sharded directories.
//!
//! A [`Checkpoint`] maps every shard, validates every header (bounded header size, offsets that
//! tile the data region exactly, data that fits the file) and indexes the tensors under their
//! canonical names. Nothing is copied until a tensor is asked for.
//!
//! Canonical names follow the legacy Qwen2-VL layout: `visual.*`, `model.*`, `lm_head.*`.
//! Checkpoints saved by newer transformers (`model.visual.*`, `model.language_model.*`) are
//! renamed on open, so every module sees one layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::LoadError;

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How a tensor is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// Any other safetensors dtype (integers, bool, f64, 8-bit floats). Named for error messages.
    Other(&'static str),
}

impl StorageDtype {
    fn from_safetensors(d: Dtype) -> Self {
        match d {
            Dtype::F32 => StorageDtype::F32,
            Dtype::F16 => StorageDtype::F16,
            Dtype::BF16 => StorageDtype::BF16,
            Dtype::F64 => StorageDtype::Other("F64"),
            Dtype::I64 => StorageDtype::Other("I64"),
            Dtype::I32 => StorageDtype::Other("I32"),
            Dtype::I16 => StorageDtype::Other("I16"),
            Dtype::I8 => StorageDtype::Other("I8"),
            Dtype::U8 => StorageDtype::Other("U8"),
            Dtype::U16 => StorageDtype::Other("U16"),
            Dtype::U32 => StorageDtype::Other("U32"),
            Dtype::U64 => StorageDtype::Other("U64"),
            Dtype::BOOL => StorageDtype::Other("BOOL"),
            _ => StorageDtype::Other("unsupported"),
        }
    }

    /// Whether this is one of the float formats weights may be stored in.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16
        )
    }

    /// Bytes per element of a float format.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
            StorageDtype::Other(_) => 0,
        }
    }

    /// Display name (`F32`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "F32",
            StorageDtype::F16 => "F16",
            StorageDtype::BF16 => "BF16",
            StorageDtype::Other(n) => n,
        }
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    shard: usize,
    /// Storage type.
    pub dtype: StorageDtype,
    /// Shape.
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
    /// The name as written in the file (before canonical renaming).
    pub original_name: String,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// A memory-mapped safetensors checkpoint (one file or several shards).
pub struct Checkpoint {
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Maps a tensor name to the canonical legacy layout.
pub fn canonical_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        name.to_string()
    }
}

impl Checkpoint {
    /// Opens the weights of a model directory: `model.safetensors.index.json` with its shards
    /// if present, else `model.safetensors`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            let shards = read_index(dir, &index)?;
            Self::open_files(&shards)
        } else if dir.join(SINGLE_FILE).is_file() {
            Self::open_files(&[dir.join(SINGLE_FILE)])
        } else if !dir.is_dir() {
            Err(LoadError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            })
        } else {
            Err(LoadError::NoWeights(dir.to_path_buf()))
        }
    }

    /// Opens one or more safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, LoadError> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut entries: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for path in paths {
            let file = File::open(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; a file truncated by another process while mapped is
            // outside what any mmap-based loader can defend against.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| LoadError::Safetensors {
                    path: path.clone(),
                    reason: describe_safetensors_error(&e),
                })?;
            let data_start = 8 + header_len;
            let shard = shards.len();
            for (name, info) in meta.tensors() {
                let key = canonical_name(&name);
                let entry = TensorEntry {
                    shard,
                    dtype: StorageDtype::from_safetensors(info.dtype),
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                    original_name: name.clone(),
                };
                if let Some(prev) = entries.get(&key) {
                    return Err(LoadError::DuplicateTensor {
                        key,
                        first: shards
                            .get(prev.shard)
                            .map(|s: &Shard| s.path.clone())
                            .unwrap_or_else(|| path.clone()),
                        second: path.clone(),
                    });
                }
                entries.insert(key, entry);
            }
            shards.push(Shard {
                path: path.clone(),
                map,
            });
        }
        Ok(Checkpoint { shards, entries })
    }

    /// The tensor stored under a canonical name.
    pub fn entry(&self, key: &str) -> Option<&TensorEntry> {
        self.entries.get(key)
    }

    /// All canonical tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Canonical names starting with `prefix`, sorted.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The files this checkpoint was read from.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Total number of stored elements.
    pub fn num_elements(&self) -> usize {
        self.entries.values().map(TensorEntry::numel).sum()
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.shards[entry.shard].map[entry.start..entry.end]
    }

    /// Converts a float tensor to f32 values.
    ///
    /// Returns `None` for non-float storage.
    pub fn to_f32(&self, entry: &TensorEntry) -> Option<Vec<f32>> {
        let bytes = self.bytes(entry);
        Some(match entry.dtype {
            StorageDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StorageDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            StorageDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            StorageDtype::Other(_) => return None,
        })
    }

    /// Converts a float tensor to bf16 values (exact for bf16 storage, rounded otherwise).
    pub fn to_bf16(&self, entry: &TensorEntry) -> Option<Vec<bf16>> {
        let bytes = self.bytes(entry);
        Some(match entry.dtype {
            StorageDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            StorageDtype::F32 | StorageDtype::F16 => self
                .to_f32(entry)?
                .into_iter()
                .map(bf16::from_f32)
                .collect(),
            StorageDtype::Other(_) => return None,
        })
    }

    /// Converts a float tensor to f16 values (exact for f16 storage, rounded otherwise).
    pub fn to_f16(&self, entry: &TensorEntry) -> Option<Vec<f16>> {
        let bytes = self.bytes(entry);
        Some(match entry.dtype {
            StorageDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            StorageDtype::F32 | StorageDtype::BF16 => {
                self.to_f32(entry)?.into_iter().map(f16::from_f32).collect()
            }
            StorageDtype::Other(_) => return None,
        })
    }

    /// Tells the operating system that the pages of this tensor will not be read again soon, so
    /// that they stop counting towards the resident set once the tensor has been converted.
    pub fn release(&self, entry: &TensorEntry) {
        #[cfg(unix)]
        {
            let map = &self.shards[entry.shard].map;
            let page = 4096;
            let start = entry.start.div_ceil(page) * page;
            let end = (entry.end / page) * page;
            if end > start {
                // Advisory only: a failure leaves the pages resident, which is harmless.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = entry;
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge => "header length is larger than the 100 MB limit".into(),
        E::HeaderTooSmall => "file is shorter than the 8-byte header length".into(),
        E::InvalidHeaderLength => "header length runs past the end of the file".into(),
        E::MetadataIncompleteBuffer => {
            "tensor data does not match the file length (truncated or padded)".into()
        }
        E::InvalidOffset(name) => format!("tensor {name} has invalid or overlapping offsets"),
        E::TensorInvalidInfo => "a tensor's byte range does not match its shape and dtype".into(),
        other => other.to_string(),
    }
}

/// Reads `model.safetensors.index.json` and returns the shard paths, refusing any shard name
/// that would leave the model directory (a shard of a Hugging Face cache snapshot may link to
/// the repository's `blobs/`, where the cache keeps the files).
fn read_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| LoadError::ShardIndex {
        path: index.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("shard of {tensor} is not a string")))?;
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    let canon_dir = dir.canonicalize().map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // a Hugging Face cache snapshot (`<repo>/snapshots/<commit>/`) links its files to
    // `<repo>/blobs/`: links there stay inside the checkpoint
    let blobs = canon_dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(|p| p.parent())
        .and_then(|repo| repo.join("blobs").canonicalize().ok());
    let mut paths = Vec::with_capacity(names.len());
    for name in names {
        let rel = Path::new(&name);
        let plain = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain || name.is_empty() {
            return Err(bad(format!(
                "shard {name:?} is outside the model directory"
            )));
        }
        let path = dir.join(rel);
        let canon = path.canonicalize().map_err(|_| {
            bad(format!(
                "shard {name:?} named by the index does not exist in {}",
                dir.display()
            ))
        })?;
        if !canon.starts_with(&canon_dir) && !blobs.as_ref().is_some_and(|b| canon.starts_with(b)) {
            return Err(bad(format!(
                "shard {name:?} is outside the model directory"
            )));
        }
        paths.push(path);
    }
    Ok(paths)
}
