//! Loading a checkpoint directory into an [`EchoVlm`].

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use echovlm_core::{Checkpoint, LinearOptions, LoadError, load_counted};
use echovlm_text::read_json;
use echovlm_text::{Qwen2Tokenizer, TextConfig, TextModel, VisionTokenIds};
use echovlm_vision::preprocess::PreprocessConfig;
use echovlm_vision::{VisionArch, VisionConfig, VisionModel};

use super::EchoVlm;
use super::weights::{Weights, on_cpu, resolve};
use crate::chat::ChatTemplate;
use crate::error::EchoError;
use crate::generate::{GenerationOptions, token_ids};
use crate::output::Architecture;

/// Where and how to load a checkpoint: [`Default`] (the default device, `F32` activations,
/// weights chosen at load by [`Weights::Auto`]), adjusted with one setter per field.
///
/// ```
/// use echovlm_pipeline::{DType, LoadOptions, device_from_name};
/// let opts = LoadOptions::default().device(device_from_name("cpu")?).dtype(DType::F32);
/// assert_eq!(opts.dtype, DType::F32);
/// # Ok::<(), echovlm_pipeline::EchoError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The device (backend) the model runs on.
    pub device: Device,
    /// Float type of weights and activations (`F32` on CPU; `F16`/`BF16` where the device
    /// supports them).
    pub dtype: DType,
    /// How linear layers keep their weights ([`Weights::Auto`] by default).
    pub weights: Weights,
    /// Threads of the CPU path. `None` (the default): `RAYON_NUM_THREADS` when set, else the
    /// machine's physical cores. The thread pool is sized by the first load of the process;
    /// a later load that asks for another count is an error.
    pub threads: Option<usize>,
    /// A PEFT-style LoRA adapter directory applied over the checkpoint after loading
    /// (`adapter_config.json`, `adapter_model.safetensors`; see [`EchoVlm::named_linears_mut`]
    /// for the module names).
    pub adapter: Option<PathBuf>,
    /// Fuse the decoder's products that read the same input after loading (query, key and
    /// value; gate and up; off the CPU backend the whole dynamic feed-forward into two), so
    /// that a decode step launches fewer kernels ([`TextModel::fuse`](echovlm_text::TextModel::fuse)).
    /// Applies to weights held as Burn tensors (GPU devices, or the portable CPU path); on by
    /// default.
    pub fuse: bool,
    /// Off the CPU backend, decode one sequence (greedy or sampled, repetition penalty and
    /// routing trace included) by recording a decode step as a graph once and replaying it for
    /// the steps after ([`EchoVlm::set_decode_graphs`]); on by default. A replay skips
    /// Burn's fusion bookkeeping and the launch path of every kernel: on CUDA it is one
    /// dispatch.
    pub decode_graphs: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::default(),
            dtype: DType::F32,
            weights: Weights::Auto,
            threads: None,
            adapter: None,
            fuse: true,
            decode_graphs: true,
        }
    }
}

impl LoadOptions {
    /// Sets the device (backend) the model runs on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Sets the float type of weights and activations.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets exactly how linear layers keep their weights (instead of [`Weights::Auto`]).
    pub fn linear(mut self, linear: LinearOptions) -> Self {
        self.weights = Weights::Exact(linear);
        self
    }

    /// Sets how linear layers keep their weights.
    pub fn weights(mut self, weights: Weights) -> Self {
        self.weights = weights;
        self
    }

    /// Sets the number of CPU threads (`None`: the default, see [`LoadOptions::threads`]).
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// Applies a LoRA adapter directory (as written by PEFT or `echovlm-train`) over the
    /// checkpoint.
    pub fn adapter(mut self, dir: impl Into<PathBuf>) -> Self {
        self.adapter = Some(dir.into());
        self
    }

    /// Sets whether the decoder's products are fused after loading ([`LoadOptions::fuse`]).
    pub fn fuse(mut self, fuse: bool) -> Self {
        self.fuse = fuse;
        self
    }

    /// Sets whether decode steps are recorded as a graph and replayed
    /// ([`LoadOptions::decode_graphs`]).
    pub fn decode_graphs(mut self, yes: bool) -> Self {
        self.decode_graphs = yes;
        self
    }
}

/// The model family `config.json` describes: `model_type` (top level, else `text_config`'s)
/// and `architectures` must agree, and at least one of them must name Qwen2-VL or Qwen2.5-VL.
/// A config that names neither (an old export) is Qwen2.5-VL when its `vision_config` has
/// Qwen2.5-VL's window attention, else Qwen2-VL.
pub(crate) fn detect_architecture(
    json: &serde_json::Value,
    path: &Path,
) -> Result<Architecture, LoadError> {
    let err = |reason: String| LoadError::config(path, reason);
    let from_type = |t: &str| match t {
        "qwen2_vl" => Some(Architecture::Qwen2Vl),
        "qwen2_5_vl" => Some(Architecture::Qwen25Vl),
        _ => None,
    };
    let from_class = |c: &str| {
        let c = c.to_ascii_lowercase();
        if c.starts_with("qwen2_5_vl") {
            Some(Architecture::Qwen25Vl)
        } else if c.starts_with("qwen2vl") {
            Some(Architecture::Qwen2Vl)
        } else {
            None
        }
    };
    let model_type = json
        .get("model_type")
        .or_else(|| json.get("text_config").and_then(|t| t.get("model_type")))
        .and_then(serde_json::Value::as_str);
    let by_type = match model_type {
        Some(t) => match from_type(t) {
            Some(a) => Some(a),
            // a text_config's own model_type ("qwen2_5_vl_text") is not the model's
            None if t.ends_with("_text") => None,
            None => {
                return Err(err(format!(
                    "model_type = {t:?}: only qwen2_vl (EchoVLM V1, Qwen2-VL) and qwen2_5_vl \
                     (EchoVLM V2, Qwen2.5-VL) checkpoints are supported"
                )));
            }
        },
        None => None,
    };
    let classes: Vec<&str> = json
        .get("architectures")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let by_class = classes.iter().find_map(|c| from_class(c));
    match (by_type, by_class) {
        (Some(t), Some(c)) if t != c => Err(err(format!(
            "model_type says {t} but architectures {classes:?} say {c}"
        ))),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => {
            let v = json.get("vision_config");
            let windowed = v.is_some_and(|v| {
                v.get("window_size").is_some() || v.get("fullatt_block_indexes").is_some()
            });
            Ok(if windowed {
                Architecture::Qwen25Vl
            } else {
                Architecture::Qwen2Vl
            })
        }
    }
}

fn inconsistent(msg: String) -> EchoError {
    EchoError::Inconsistent(msg)
}

impl EchoVlm {
    /// Loads a model directory: `config.json`, safetensors weights (single or sharded),
    /// `tokenizer.json`, the chat template (`chat_template.json` or `tokenizer_config.json`),
    /// and, if present, `preprocessor_config.json` and `generation_config.json`.
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self, EchoError> {
        let model = Self::load_dir(dir.as_ref(), options)?;
        model.finish_load(options)
    }

    /// What every load does after reading the checkpoint: the adapter, then fusing.
    fn finish_load(mut self, options: &LoadOptions) -> Result<Self, EchoError> {
        if let Some(adapter) = &options.adapter {
            self.apply_adapter(adapter)?;
        }
        if options.fuse {
            self.text.fuse();
        }
        self.decode_graphs = options.decode_graphs;
        Ok(self)
    }

    /// Loads a checkpoint from the Hugging Face Hub: `id` is `org/name` or
    /// `org/name@revision`. The files are downloaded into (or found in) the standard Hugging
    /// Face cache by [`hub::download`](crate::hub::download), which reads `HF_ENDPOINT`,
    /// `HF_HOME`/`HF_HUB_CACHE`, `HF_HUB_OFFLINE` and `HF_TOKEN`; then the snapshot directory
    /// is loaded as by [`load`](Self::load).
    ///
    /// ```no_run
    /// use echovlm_pipeline::{EchoVlm, LoadOptions};
    /// let model = EchoVlm::load_pretrained("org/EchoVLM", &LoadOptions::default())?;
    /// # Ok::<(), echovlm_pipeline::EchoError>(())
    /// ```
    #[cfg(feature = "hub")]
    pub fn load_pretrained(id: &str, options: &LoadOptions) -> Result<Self, EchoError> {
        let hub_id = crate::hub::HubId::parse(id).ok_or_else(|| EchoError::Hub {
            id: id.to_string(),
            message: "not a hub model id: expected org/name or org/name@revision".into(),
        })?;
        let dir = crate::hub::download(&hub_id)?;
        Self::load_dir(&dir, options)?.finish_load(options)
    }

    fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self, EchoError> {
        if !echovlm_core::backend::is_flex(&options.device) {
            crate::device::gpu_defaults();
        }
        if !dir.is_dir() {
            return Err(LoadError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model directory",
                ),
            }
            .into());
        }
        echovlm_core::cpu::set_threads(options.threads)
            .map_err(|e| EchoError::InvalidRequest(e.to_string()))?;
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        let architecture = detect_architecture(&json, &config_path)?;
        let text_cfg = TextConfig::from_json(&json, &config_path)?;
        let windowed = json.get("vision_config").is_some_and(|v| {
            v.get("window_size").is_some() || v.get("fullatt_block_indexes").is_some()
        });
        if windowed && architecture == Architecture::Qwen2Vl {
            return Err(LoadError::config(
                &config_path,
                "the model is qwen2_vl but vision_config has Qwen2.5-VL's window attention \
                 (window_size / fullatt_block_indexes)",
            )
            .into());
        }
        let ckpt = Checkpoint::open_dir(dir)?;
        let vision_cfg = if ckpt.keys_with_prefix("visual.").next().is_some() {
            Some(VisionConfig::from_json(
                &json,
                text_cfg.hidden_size,
                &config_path,
            )?)
        } else {
            None
        };
        if let Some(v) = &vision_cfg {
            let tower = match v.arch {
                VisionArch::Qwen25Vl => Architecture::Qwen25Vl,
                _ => Architecture::Qwen2Vl,
            };
            if tower != architecture {
                return Err(LoadError::config(
                    &config_path,
                    format!("the model is {architecture} but its vision_config describes a {tower} vision tower"),
                )
                .into());
            }
        }
        let (linear, weight_choice) = resolve(&options.weights, &options.device, &ckpt);
        // packed formats exist only on the CPU; elsewhere the weights are Burn tensors
        let weight_format = linear.cpu_format.filter(|_| on_cpu(&options.device));
        let ((text, vision), weight_bytes) =
            load_counted(&ckpt, &options.device, options.dtype, linear, |l| {
                let text = TextModel::load(l, &text_cfg)?;
                let vision = match &vision_cfg {
                    Some(c) => Some(VisionModel::load(l, c)?),
                    None => None,
                };
                Ok((text, vision))
            })?;
        let parameters = ckpt.num_elements();
        drop(ckpt);

        let tokenizer = Qwen2Tokenizer::from_file(dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_model_dir(dir)?;
        let preprocess_path = dir.join("preprocessor_config.json");
        let preprocess = if preprocess_path.is_file() {
            PreprocessConfig::from_file(&preprocess_path)?
        } else {
            PreprocessConfig::default()
        };
        if let Some(v) = &vision {
            let c = &v.config;
            for (name, pre, tower) in [
                ("patch_size", preprocess.patch_size, c.patch_size),
                ("merge_size", preprocess.merge_size, c.spatial_merge_size),
                (
                    "temporal_patch_size",
                    preprocess.temporal_patch_size,
                    c.temporal_patch_size,
                ),
            ] {
                if pre != tower {
                    return Err(inconsistent(format!(
                        "preprocessor_config.json says {name} = {pre} but the vision tower's is {tower}"
                    )));
                }
            }
        }
        let special = *tokenizer.special();
        if tokenizer.vocab_size() > text_cfg.vocab_size {
            return Err(inconsistent(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                text_cfg.vocab_size
            )));
        }
        let check = |name: &str, config: Option<u32>, tok: u32| -> Result<u32, EchoError> {
            match config {
                Some(c) if c != tok => Err(inconsistent(format!(
                    "config.json says {name} = {c} but the tokenizer gives {tok}"
                ))),
                _ => Ok(tok),
            }
        };
        let vt = &text_cfg.vision_tokens;
        let vision_tokens = VisionTokenIds {
            vision_start: Some(check(
                "vision_start_token_id",
                vt.vision_start,
                special.vision_start,
            )?),
            vision_end: Some(check(
                "vision_end_token_id",
                vt.vision_end,
                special.vision_end,
            )?),
            image: Some(check("image_token_id", vt.image, special.image_pad)?),
            video: Some(check("video_token_id", vt.video, special.video_pad)?),
        };
        let (image_id, video_id) = (special.image_pad, special.video_pad);

        let gen_path = dir.join("generation_config.json");
        let gen_json = if gen_path.is_file() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        let mut generation = GenerationOptions::default();
        if let Some(g) = &gen_json {
            generation = generation.with_generation_config(g, &gen_path)?;
        }
        if generation.stop_token_ids.is_empty() {
            generation.stop_token_ids = text_cfg.eos_token_ids.clone();
        }
        if !generation.stop_token_ids.contains(&special.im_end) {
            generation.stop_token_ids.push(special.im_end);
        }
        let pad_id = match &gen_json {
            Some(g) => {
                token_ids(g, "pad_token_id", &gen_path)?.and_then(|ids| ids.first().copied())
            }
            None => None,
        }
        .unwrap_or(special.endoftext);
        Ok(Self {
            architecture,
            text,
            vision,
            tokenizer,
            template,
            preprocess,
            generation,
            vision_tokens,
            image_id,
            video_id,
            pad_id,
            dir: dir.to_path_buf(),
            parameters,
            weight_bytes,
            weight_format,
            weight_choice,
            decode_graphs: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detect(v: serde_json::Value) -> Result<Architecture, LoadError> {
        detect_architecture(&v, Path::new("config.json"))
    }

    #[test]
    fn architectures_are_read_from_model_type_and_classes() {
        use Architecture::*;
        assert_eq!(detect(json!({"model_type": "qwen2_vl"})).unwrap(), Qwen2Vl);
        assert_eq!(
            detect(json!({"model_type": "qwen2_5_vl"})).unwrap(),
            Qwen25Vl
        );
        assert_eq!(
            detect(json!({"architectures": ["Qwen2VLMOEForConditionalGeneration"]})).unwrap(),
            Qwen2Vl
        );
        assert_eq!(
            detect(json!({"architectures": ["Qwen2_5_VLForConditionalGeneration"]})).unwrap(),
            Qwen25Vl
        );
        // a nested text_config's own model_type does not decide
        assert_eq!(
            detect(json!({"text_config": {"model_type": "qwen2_5_vl_text"},
                          "architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
            .unwrap(),
            Qwen25Vl
        );
        // neither given: the vision config tells
        assert_eq!(
            detect(json!({"vision_config": {"window_size": 112}})).unwrap(),
            Qwen25Vl
        );
        assert_eq!(detect(json!({"vision_config": {}})).unwrap(), Qwen2Vl);
    }

    #[test]
    fn unknown_or_contradictory_architectures_are_refused() {
        let e = detect(json!({"model_type": "llava"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type") && e.contains("llava"), "{e}");
        let e = detect(json!({"model_type": "qwen2_vl",
                              "architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("qwen2_vl") && e.contains("qwen2_5_vl"), "{e}");
    }
}
