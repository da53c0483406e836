//! A freshly initialised EchoVLM V1 checkpoint of any size: the starting point of a model
//! trained from scratch (the demo model), in the Hugging Face layout of the released one.

use std::collections::HashMap;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use safetensors::{Dtype, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The sizes of a V1 model (vision tower, decoder with the dynamic MoE in every layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSize {
    /// Vision blocks.
    pub vision_depth: usize,
    /// Vision width.
    pub vision_embed: usize,
    /// Vision attention heads.
    pub vision_heads: usize,
    /// Vision MLP width as a multiple of `vision_embed`.
    pub vision_mlp_ratio: usize,
    /// Decoder width.
    pub hidden: usize,
    /// Dense MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Routed experts.
    pub experts: usize,
    /// Width of each routed expert.
    pub expert_intermediate: usize,
    /// Width of the shared expert.
    pub shared_intermediate: usize,
    /// M-RoPE sections (temporal, height, width), summing to `hidden / heads / 2`.
    pub mrope_section: [usize; 3],
    /// Images are resized to this many pixels (`min_pixels = max_pixels`).
    pub image_pixels: usize,
}

impl ModelSize {
    /// The demo model: 2 vision blocks of width 64, 2 decoder layers of width 128 with 4
    /// experts, 112×112 images (16 visual tokens); about 1 M parameters.
    pub fn demo() -> Self {
        Self {
            vision_depth: 2,
            vision_embed: 64,
            vision_heads: 4,
            vision_mlp_ratio: 2,
            hidden: 128,
            intermediate: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            experts: 4,
            expert_intermediate: 64,
            shared_intermediate: 128,
            mrope_section: [4, 6, 6],
            image_pixels: 112 * 112,
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Setup(format!("model size: {m}")));
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad("hidden must be a multiple of heads");
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad("heads must be a multiple of kv_heads");
        }
        if self.vision_heads == 0 || !self.vision_embed.is_multiple_of(self.vision_heads) {
            return bad("vision_embed must be a multiple of vision_heads");
        }
        if self.mrope_section.iter().sum::<usize>() * 2 != self.hidden / self.heads {
            return bad("mrope_section must sum to half the head width");
        }
        if self.experts < 2 || self.layers == 0 || self.vision_depth == 0 {
            return bad("at least 2 experts, 1 layer and 1 vision block");
        }
        Ok(())
    }
}

/// Writes a new checkpoint of `size` to `out`: `config.json` (from `template`'s, with the
/// sizes replaced), `preprocessor_config.json` (fixed image size), `generation_config.json`
/// (greedy), the template's tokenizer files and chat template, and `model.safetensors` with
/// weights drawn from `seed` (normal(0, 0.02) matrices, zero biases, unit norms), as
/// transformers initialises them.
pub fn init_checkpoint(
    template: &Path,
    out: &Path,
    size: &ModelSize,
    seed: u64,
) -> Result<(), TrainError> {
    size.check()?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let read_json = |name: &str| -> Result<serde_json::Value, TrainError> {
        let path = template.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Json {
            path,
            reason: e.to_string(),
        })
    };
    let mut config = read_json("config.json")?;
    let vocab = config["vocab_size"]
        .as_u64()
        .ok_or_else(|| TrainError::Setup("the template config has no vocab_size".into()))?
        as usize;
    let s = size;
    for (k, v) in [
        ("hidden_size", s.hidden),
        ("intermediate_size", s.intermediate),
        ("num_hidden_layers", s.layers),
        ("max_window_layers", s.layers),
        ("num_attention_heads", s.heads),
        ("num_key_value_heads", s.kv_heads),
        ("num_experts", s.experts),
        ("moe_intermediate_size", s.expert_intermediate),
        ("shared_expert_intermediate_size", s.shared_intermediate),
    ] {
        config[k] = v.into();
    }
    config["tie_word_embeddings"] = false.into();
    config["torch_dtype"] = "float32".into();
    config["rope_scaling"]["mrope_section"] = serde_json::json!(s.mrope_section);
    config["vision_config"]["depth"] = s.vision_depth.into();
    config["vision_config"]["embed_dim"] = s.vision_embed.into();
    config["vision_config"]["num_heads"] = s.vision_heads.into();
    config["vision_config"]["mlp_ratio"] = s.vision_mlp_ratio.into();
    config["vision_config"]["hidden_size"] = s.hidden.into();
    write_json(&out.join("config.json"), &config)?;
    let mut pre = read_json("preprocessor_config.json")?;
    pre["min_pixels"] = s.image_pixels.into();
    pre["max_pixels"] = s.image_pixels.into();
    write_json(&out.join("preprocessor_config.json"), &pre)?;
    let mut generation = read_json("generation_config.json")?;
    generation["do_sample"] = false.into();
    generation["repetition_penalty"] = 1.0.into();
    for k in ["temperature", "top_k", "top_p"] {
        if let Some(o) = generation.as_object_mut() {
            o.remove(k);
        }
    }
    write_json(&out.join("generation_config.json"), &generation)?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
    ] {
        let from = template.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).map_err(|e| TrainError::io(&from, e))?;
        }
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut normal = |shape: Vec<usize>| -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n).map(|_| 0.02 * gaussian(&mut rng)).collect()
    };
    let mut add = |name: String, shape: Vec<usize>, v: Vec<f32>| tensors.push((name, shape, v));
    let ones = |n: usize| vec![1f32; n];
    let zeros = |n: usize| vec![0f32; n];
    let (ve, vm) = (s.vision_embed, s.vision_embed * s.vision_mlp_ratio);
    add(
        "visual.patch_embed.proj.weight".into(),
        vec![ve, 3, 2, 14, 14],
        normal(vec![ve, 1176]),
    );
    for i in 0..s.vision_depth {
        let p = format!("visual.blocks.{i}");
        for n in ["norm1", "norm2"] {
            add(format!("{p}.{n}.weight"), vec![ve], ones(ve));
            add(format!("{p}.{n}.bias"), vec![ve], zeros(ve));
        }
        for (n, o, i_) in [
            ("attn.qkv", 3 * ve, ve),
            ("attn.proj", ve, ve),
            ("mlp.fc1", vm, ve),
            ("mlp.fc2", ve, vm),
        ] {
            add(format!("{p}.{n}.weight"), vec![o, i_], normal(vec![o, i_]));
            add(format!("{p}.{n}.bias"), vec![o], zeros(o));
        }
    }
    let m = 4 * ve;
    add("visual.merger.ln_q.weight".into(), vec![ve], ones(ve));
    add("visual.merger.ln_q.bias".into(), vec![ve], zeros(ve));
    add(
        "visual.merger.mlp.0.weight".into(),
        vec![m, m],
        normal(vec![m, m]),
    );
    add("visual.merger.mlp.0.bias".into(), vec![m], zeros(m));
    add(
        "visual.merger.mlp.2.weight".into(),
        vec![s.hidden, m],
        normal(vec![s.hidden, m]),
    );
    add(
        "visual.merger.mlp.2.bias".into(),
        vec![s.hidden],
        zeros(s.hidden),
    );

    let (h, hd) = (s.hidden, s.hidden / s.heads);
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, h],
        normal(vec![vocab, h]),
    );
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![h], ones(h));
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            ones(h),
        );
        for (n, o, bias) in [
            ("q_proj", s.heads * hd, true),
            ("k_proj", s.kv_heads * hd, true),
            ("v_proj", s.kv_heads * hd, true),
        ] {
            add(
                format!("{p}.self_attn.{n}.weight"),
                vec![o, h],
                normal(vec![o, h]),
            );
            if bias {
                add(format!("{p}.self_attn.{n}.bias"), vec![o], zeros(o));
            }
        }
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, s.heads * hd],
            normal(vec![h, s.heads * hd]),
        );
        let mut mlp = |prefix: String, width: usize| {
            add(
                format!("{prefix}.gate_proj.weight"),
                vec![width, h],
                normal(vec![width, h]),
            );
            add(
                format!("{prefix}.up_proj.weight"),
                vec![width, h],
                normal(vec![width, h]),
            );
            add(
                format!("{prefix}.down_proj.weight"),
                vec![h, width],
                normal(vec![h, width]),
            );
        };
        mlp(format!("{p}.mlp"), s.intermediate);
        for e in 0..s.experts {
            mlp(format!("{p}.moe.experts.{e}"), s.expert_intermediate);
        }
        mlp(format!("{p}.moe.shared_expert"), s.shared_intermediate);
        add(
            format!("{p}.moe.gate.weight"),
            vec![s.experts, h],
            normal(vec![s.experts, h]),
        );
        add(
            format!("{p}.moe.shared_expert_gate.weight"),
            vec![1, h],
            normal(vec![1, h]),
        );
        add(
            format!("{p}.coefficient.weight"),
            vec![2, h],
            normal(vec![2, h]),
        );
        add(format!("{p}.coefficient.bias"), vec![2], zeros(2));
    }
    add("model.norm.weight".into(), vec![h], ones(h));
    add(
        "lm_head.weight".into(),
        vec![vocab, h],
        normal(vec![vocab, h]),
    );

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (n, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let path = out.join("model.safetensors");
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Safetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    crate::save::serialize_file(views, Some(meta), &path)
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = ((rng.next_u32() >> 8) as f64 + 0.5) / (1u32 << 24) as f64;
    let u2 = (rng.next_u32() >> 8) as f64 / (1u32 << 24) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Replaces the chat template of the checkpoint in `dir`: the `chat_template` entry of its
/// `tokenizer_config.json` and, where the directory has one, of its `chat_template.json` (which
/// loaders read first). The model's prompts are rendered with `template` from then on.
pub fn set_chat_template(dir: &Path, template: &str) -> Result<(), TrainError> {
    let mut found = false;
    for name in ["tokenizer_config.json", "chat_template.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::Json {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let Some(o) = v.as_object_mut() else {
            return Err(TrainError::Json {
                path,
                reason: "not a JSON object".into(),
            });
        };
        o.insert("chat_template".into(), template.into());
        write_json(&path, &v)?;
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(TrainError::Setup(format!(
            "{} has no tokenizer_config.json or chat_template.json to hold a chat template",
            dir.display()
        )))
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), TrainError> {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap_or_default())
        .map_err(|e| TrainError::io(path, e))
}
