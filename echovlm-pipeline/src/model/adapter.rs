//! The model's linear layers by checkpoint name, and PEFT-style LoRA adapter directories
//! applied over a loaded model ([`LoadOptions::adapter`](super::LoadOptions::adapter)).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use echovlm_core::cpu::PackedWeight;
use echovlm_core::{Linear, LinearWeight, LoadError, LoraAdapter, canonical_name};
use echovlm_text::FeedForward;
use echovlm_vision::VisionMlp;
use safetensors::{Dtype, SafeTensors};

use super::EchoVlm;
use crate::error::EchoError;

/// A tensor read from the adapter file: shape and values.
type Stored = (Vec<usize>, Vec<f32>);

fn push_mlp<'a>(
    out: &mut Vec<(String, &'a mut Linear)>,
    name: String,
    m: &'a mut echovlm_moe::Mlp,
) {
    out.push((format!("{name}.gate_proj"), &mut m.gate_proj));
    out.push((format!("{name}.up_proj"), &mut m.up_proj));
    out.push((format!("{name}.down_proj"), &mut m.down_proj));
}

impl EchoVlm {
    /// Every linear layer with its module name in the checkpoint (e.g.
    /// `model.layers.0.self_attn.q_proj`, `visual.merger.mlp.0`; the tensors are
    /// `{name}.weight` and `{name}.bias`), vision tower first, then the decoder layer by layer
    /// and an untied LM head (`lm_head`). The vision patch embedding (`visual.patch_embed.proj`,
    /// a Conv3d stored `[embed, 3, 2, 14, 14]`) is held as its `[embed, 1176]` matrix. Token
    /// embeddings and norms are not linear layers and are not listed. For fine-tuning and
    /// adapters.
    ///
    /// The decoder's fused layers ([`LoadOptions::fuse`](super::LoadOptions::fuse)) are
    /// dropped first, so that what is changed through the returned layers is what runs; call
    /// [`TextModel::fuse`](echovlm_text::TextModel::fuse) on [`text_model_mut`](Self::text_model_mut) again once done.
    pub fn named_linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.text.unfuse();
        let mut out: Vec<(String, &mut Linear)> = Vec::new();
        if let Some(vision) = self.vision.as_mut() {
            out.push(("visual.patch_embed.proj".into(), &mut vision.patch_embed));
            for (i, block) in vision.blocks.iter_mut().enumerate() {
                let p = format!("visual.blocks.{i}");
                out.push((format!("{p}.attn.qkv"), &mut block.attn.qkv));
                out.push((format!("{p}.attn.proj"), &mut block.attn.proj));
                match &mut block.mlp {
                    VisionMlp::Plain { fc1, fc2, .. } => {
                        out.push((format!("{p}.mlp.fc1"), fc1));
                        out.push((format!("{p}.mlp.fc2"), fc2));
                    }
                    VisionMlp::Gated {
                        gate_proj,
                        up_proj,
                        down_proj,
                        ..
                    } => {
                        out.push((format!("{p}.mlp.gate_proj"), gate_proj));
                        out.push((format!("{p}.mlp.up_proj"), up_proj));
                        out.push((format!("{p}.mlp.down_proj"), down_proj));
                    }
                    _ => {}
                }
            }
            out.push(("visual.merger.mlp.0".into(), &mut vision.merger.mlp_0));
            out.push(("visual.merger.mlp.2".into(), &mut vision.merger.mlp_2));
        }
        let text = &mut self.text;
        let tied = text.config.tie_word_embeddings;
        for (i, layer) in text.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            match &mut layer.ffn {
                FeedForward::Dense(m) => push_mlp(&mut out, format!("{p}.mlp"), m),
                FeedForward::Dynamic(f) => {
                    push_mlp(&mut out, format!("{p}.mlp"), &mut f.mlp);
                    out.push((format!("{p}.moe.gate"), &mut f.moe.gate));
                    for (e, expert) in f.moe.experts.iter_mut().enumerate() {
                        push_mlp(&mut out, format!("{p}.moe.experts.{e}"), expert);
                    }
                    push_mlp(
                        &mut out,
                        format!("{p}.moe.shared_expert"),
                        &mut f.moe.shared_expert,
                    );
                    out.push((
                        format!("{p}.moe.shared_expert_gate"),
                        &mut f.moe.shared_expert_gate,
                    ));
                    out.push((format!("{p}.coefficient"), &mut f.coefficient));
                }
            }
        }
        if !tied {
            out.push(("lm_head".into(), &mut text.lm_head));
        }
        out
    }

    /// Applies a PEFT-style LoRA adapter directory (`adapter_config.json` with `r`,
    /// `lora_alpha` and optionally `use_rslora`; `adapter_model.safetensors` with
    /// `base_model.model.{module}.lora_A.weight` / `.lora_B.weight`, and full tensors
    /// `base_model.model.{module}.weight` / `.bias` for modules trained in full). Adapters are
    /// attached to their layers (they run beside packed or quantised weights alike); full
    /// tensors replace the checkpoint's.
    pub(crate) fn apply_adapter(&mut self, dir: &Path) -> Result<(), EchoError> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| LoadError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoadError::config(&cfg_path, e.to_string()))?;
        let bad = |m: String| -> EchoError { LoadError::config(&cfg_path, m).into() };
        for key in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(key)
                .and_then(|v| v.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(format!("{key} (per-module ranks) is not supported")));
            }
        }
        let r = cfg.get("r").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let alpha = cfg.get("lora_alpha").and_then(|v| v.as_f64()).unwrap_or(r);
        let rslora = cfg
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|source| LoadError::Io {
            path: weights_path.clone(),
            source,
        })?;
        let bad_w = |m: String| -> EchoError { LoadError::config(&weights_path, m).into() };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad_w(e.to_string()))?;
        // module → (lora_A, lora_B); name → full tensor
        let mut pairs: BTreeMap<String, (Option<Stored>, Option<Stored>)> = BTreeMap::new();
        let mut full: BTreeMap<String, Stored> = BTreeMap::new();
        for (key, view) in st.tensors() {
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                d => return Err(bad_w(format!("{key} is {d:?}, not a float type"))),
            };
            let shape = view.shape().to_vec();
            let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
            let name = canonical_name(&name.replace(".modules_to_save.default", ""));
            let name = name.replace(".default.weight", ".weight");
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                pairs.entry(module.to_string()).or_default().0 = Some((shape, values));
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                pairs.entry(module.to_string()).or_default().1 = Some((shape, values));
            } else {
                full.insert(name, (shape, values));
            }
        }
        let device = self.device();
        let mut linears = self.named_linears_mut();
        for (module, (a, b)) in pairs {
            let (Some((sa, a)), Some((sb, b))) = (a, b) else {
                return Err(bad_w(format!("{module} has only one of lora_A and lora_B")));
            };
            let linear = find(&mut linears, &module, &weights_path)?;
            let rank = sa.first().copied().unwrap_or(0);
            if sa != [rank, linear.d_in()] || sb != [linear.d_out(), rank] || rank == 0 {
                return Err(bad_w(format!(
                    "{module}: lora_A {sa:?} and lora_B {sb:?} do not fit a [{}, {}] layer",
                    linear.d_out(),
                    linear.d_in()
                )));
            }
            let scaling = if rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            linear.lora = Some(LoraAdapter {
                lora_a: Tensor::from_data(TensorData::new(a, [rank, linear.d_in()]), &device),
                lora_b: Tensor::from_data(TensorData::new(b, [linear.d_out(), rank]), &device),
                scaling,
            });
        }
        for (name, (shape, values)) in full {
            let (module, is_bias) = match (name.strip_suffix(".weight"), name.strip_suffix(".bias"))
            {
                (Some(m), _) => (m, false),
                (_, Some(m)) => (m, true),
                _ => return Err(bad_w(format!("{name} is neither a weight nor a bias"))),
            };
            let linear = find(&mut linears, module, &weights_path)?;
            let (d_out, d_in) = (linear.d_out(), linear.d_in());
            if is_bias {
                if shape.iter().product::<usize>() != d_out || linear.bias.is_none() {
                    return Err(bad_w(format!("{name} {shape:?} does not fit the layer")));
                }
                let dtype = linear.bias.as_ref().map(|b| b.dtype());
                let t = Tensor::<1>::from_data(TensorData::new(values, [d_out]), &device);
                linear.bias = Some(match dtype {
                    Some(d) => t.cast(d),
                    None => t,
                });
                continue;
            }
            if shape.iter().product::<usize>() != d_out * d_in {
                return Err(bad_w(format!(
                    "{name} {shape:?} does not fit a [{d_out}, {d_in}] layer"
                )));
            }
            linear.weight = match &linear.weight {
                LinearWeight::Tensor(old) => {
                    let dtype = old.dtype();
                    LinearWeight::Tensor(
                        Tensor::<2>::from_data(TensorData::new(values, [d_out, d_in]), &device)
                            .cast(dtype),
                    )
                }
                LinearWeight::Packed(old) => LinearWeight::Packed(Arc::new(
                    PackedWeight::from_f32(d_out, d_in, &values, old.format())
                        .map_err(|e| bad_w(format!("{name}: {e}")))?,
                )),
            };
        }
        Ok(())
    }
}

/// The layer named `module`, or an error naming it.
fn find<'a>(
    linears: &'a mut [(String, &mut Linear)],
    module: &str,
    path: &Path,
) -> Result<&'a mut Linear, EchoError> {
    linears
        .iter_mut()
        .find(|(n, _)| n == module)
        .map(|(_, l)| &mut **l)
        .ok_or_else(|| {
            LoadError::config(path, format!("the model has no linear layer {module}")).into()
        })
}
