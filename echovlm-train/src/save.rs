//! Saving fine-tuned weights: a whole checkpoint in the source's Hugging Face layout (adapters
//! merged), or a PEFT-style adapter directory; and the small safetensors helpers the training
//! state uses.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use echovlm_core::host::to_f32_vec;
use echovlm_core::{Checkpoint, INDEX_FILE, SINGLE_FILE, StorageDtype};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::TrainError;
use crate::params::{Slot, Trainable};
use crate::trainer::Trainer;

/// The adapter weights file of a PEFT adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter configuration file of a PEFT adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's prefix for the wrapped model's tensors.
pub const PEFT_PREFIX: &str = "base_model.model.";

fn st_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes a safetensors file with `safetensors::serialize_to_file` (a temporary file renamed
/// over `path`, so that a model still mapping the old file never sees it truncated), then gives
/// it the permissions of the file it replaces, or `rw-r--r--` for a new file: the temporary
/// file is created owner-only (`rw-------`), which would leave a saved model unreadable to the
/// other users of a shared machine.
pub(crate) fn serialize_file<'a>(
    views: Vec<(String, TensorView<'a>)>,
    meta: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<(), TrainError> {
    let before = std::fs::metadata(path).ok().map(|m| m.permissions());
    safetensors::serialize_to_file(views, meta, path).map_err(|e| st_error(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = before.unwrap_or_else(|| std::fs::Permissions::from_mode(0o644));
        std::fs::set_permissions(path, perms).map_err(|e| TrainError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = before;
    Ok(())
}

/// A tensor read back from a file: shape and values.
pub(crate) type F32Tensor = (Vec<usize>, Vec<f32>);

/// Writes named 2-D f32 tensors to a safetensors file.
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Tensor<2>)],
) -> Result<(), TrainError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape = t.dims().to_vec();
        let v = to_f32_vec(t.clone())?;
        owned.push((name.clone(), shape, bytes_of(&v, StorageDtype::F32)));
    }
    write_raw(path, &owned, Dtype::F32)
}

fn write_raw(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
) -> Result<(), TrainError> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            TensorView::new(dtype, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| st_error(path, e))
        })
        .collect::<Result<_, _>>()?;
    serialize_file(views, None, path)
}

/// Reads every f32 tensor of a safetensors file: name → (shape, values).
pub(crate) fn read_f32_safetensors(path: &Path) -> Result<HashMap<String, F32Tensor>, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_error(path, e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(st_error(
                path,
                format!("{name} is {:?}, not F32", view.dtype()),
            ));
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok(out)
}

fn bytes_of(v: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::BF16 => v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        StorageDtype::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

fn st_dtype(d: StorageDtype) -> Dtype {
    match d {
        StorageDtype::BF16 => Dtype::BF16,
        StorageDtype::F16 => Dtype::F16,
        _ => Dtype::F32,
    }
}

/// What a trained model changes relative to its source checkpoint: full tensors by name, and
/// merged LoRA updates (`scaling · B · A`) by weight name.
struct Changes {
    full: BTreeMap<String, Vec<f32>>,
    lora_delta: BTreeMap<String, Vec<f32>>,
}

fn changes(trainer: &Trainer) -> Result<Changes, TrainError> {
    let mut full = BTreeMap::new();
    let mut a_b: BTreeMap<String, (Option<Tensor<2>>, Option<Tensor<2>>)> = BTreeMap::new();
    for (p, v) in trainer.params().iter().zip(trainer.values()) {
        match p.slot {
            Slot::Weight | Slot::Bias => {
                full.insert(p.name(), to_f32_vec(v)?);
            }
            Slot::LoraA => a_b.entry(p.module.clone()).or_default().0 = Some(v),
            Slot::LoraB => a_b.entry(p.module.clone()).or_default().1 = Some(v),
        }
    }
    let scaling = trainer
        .config()
        .trainable
        .lora
        .as_ref()
        .map_or(1.0, |l| l.scaling());
    let mut lora_delta = BTreeMap::new();
    for (module, (a, b)) in a_b {
        if let (Some(a), Some(b)) = (a, b) {
            let delta = b.matmul(a).mul_scalar(scaling as f32);
            lora_delta.insert(format!("{module}.weight"), to_f32_vec(delta)?);
        }
    }
    Ok(Changes { full, lora_delta })
}

/// Copies every file of `src` but the weights (configuration, tokenizer, chat template,
/// preprocessing, README) into `out`.
fn copy_side_files(src: &Path, out: &Path) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(src, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !path.is_file() || name.ends_with(".safetensors") || name == INDEX_FILE {
            continue;
        }
        std::fs::copy(&path, out.join(&*name)).map_err(|e| TrainError::io(&path, e))?;
    }
    Ok(())
}

/// Saves the trained model as a complete checkpoint in `out`: the source checkpoint's files,
/// with every trained tensor replaced and every LoRA adapter merged into its weight
/// (`W + scaling · B · A`), each tensor in its source storage type (`f32_weights` stores all
/// of them in f32 instead), in one `model.safetensors`. `out` then loads like the source, in
/// `EchoVlm::load` and in transformers.
pub fn save_merged(
    trainer: &Trainer,
    out: &Path,
    f32_weights: bool,
) -> Result<PathBuf, TrainError> {
    let src = trainer.model().dir().to_path_buf();
    if same_dir(&src, out) {
        return Err(TrainError::Setup(format!(
            "{}: saving over the source checkpoint is refused",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let ckpt = Checkpoint::open_dir(&src).map_err(|e| TrainError::Model(e.into()))?;
    let Changes {
        mut full,
        lora_delta,
    } = changes(trainer)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
    for key in ckpt.keys().map(str::to_string).collect::<Vec<_>>() {
        let Some(entry) = ckpt.entry(&key) else {
            continue;
        };
        let dtype = if f32_weights && entry.dtype.is_float() {
            StorageDtype::F32
        } else {
            entry.dtype
        };
        let replaced = full.remove(&key);
        let delta = lora_delta.get(&key);
        let bytes = match (replaced, delta) {
            (None, None) if dtype == entry.dtype => ckpt.bytes(entry).to_vec(),
            (replaced, delta) => {
                let mut v = match replaced {
                    Some(v) => v,
                    None => ckpt.to_f32(entry).ok_or_else(|| {
                        TrainError::Setup(format!(
                            "{key}: a {} tensor cannot be rewritten",
                            entry.dtype.name()
                        ))
                    })?,
                };
                if let Some(d) = delta {
                    for (w, d) in v.iter_mut().zip(d) {
                        *w += d;
                    }
                }
                bytes_of(&v, dtype)
            }
        };
        tensors.push((
            entry.original_name.clone(),
            entry.shape.clone(),
            bytes,
            st_dtype(dtype),
        ));
    }
    if let Some(missing) = full.keys().next() {
        return Err(TrainError::Setup(format!(
            "{missing} is trained but not in the source checkpoint"
        )));
    }
    let weights = out.join(SINGLE_FILE);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data, dtype)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| st_error(&weights, e))
        })
        .collect::<Result<_, _>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    serialize_file(views, Some(meta), &weights)?;
    copy_side_files(&src, out)?;
    Ok(weights)
}

/// Saves the trained tensors as a PEFT-style adapter directory: `adapter_config.json` (`r`,
/// `lora_alpha`, `target_modules`, ...) and `adapter_model.safetensors` holding
/// `base_model.model.{module}.lora_A.weight` / `.lora_B.weight` and, for tensors trained in
/// full (the MoE blocks, coefficients, merger), `base_model.model.{name}` in f32. Load it over
/// the base checkpoint with `LoadOptions::adapter`.
pub fn save_adapter(trainer: &Trainer, out: &Path) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut tensors = Vec::new();
    for (p, v) in trainer.params().iter().zip(trainer.values()) {
        let v = if matches!(p.slot, Slot::Bias) {
            let [_, d] = v.dims();
            v.reshape([1, d])
        } else {
            v
        };
        tensors.push((format!("{PEFT_PREFIX}{}", p.name()), v));
    }
    let weights = out.join(ADAPTER_WEIGHTS);
    // biases are stored 1-D, as in the model
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for ((name, t), p) in tensors.iter().zip(trainer.params()) {
        let mut shape = t.dims().to_vec();
        if matches!(p.slot, Slot::Bias) {
            shape = vec![shape[1]];
        }
        owned.push((
            name.clone(),
            shape,
            bytes_of(&to_f32_vec(t.clone())?, StorageDtype::F32),
        ));
    }
    write_raw(&weights, &owned, Dtype::F32)?;
    let trainable: &Trainable = &trainer.config().trainable;
    let lora = trainable.lora.as_ref();
    let full: Vec<String> = trainer
        .params()
        .iter()
        .filter(|p| matches!(p.slot, Slot::Weight))
        .map(|p| p.module.clone())
        .collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": trainer.model().dir().display().to_string(),
        "r": lora.map_or(0, |l| l.rank),
        "lora_alpha": lora.map_or(0.0, |l| l.alpha),
        "lora_dropout": 0.0,
        "target_modules": lora.map(|l| l.targets.clone()).unwrap_or_default(),
        "bias": "none",
        "use_rslora": false,
        "fan_in_fan_out": false,
        "modules_to_save": full,
        "inference_mode": true,
    });
    let cfg_path = out.join(ADAPTER_CONFIG);
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| TrainError::io(&cfg_path, e))?;
    Ok(weights)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
