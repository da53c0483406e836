//! The model's linear layers by their checkpoint names, and the choice of what trains.

use burn::tensor::{Tensor, TensorData};
use echovlm_core::{Linear, LinearWeight, LoraAdapter};
use echovlm_pipeline::EchoVlm;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Every linear layer of the model with its checkpoint module name
/// ([`EchoVlm::named_linears_mut`]).
pub fn named_linears(model: &mut EchoVlm) -> Vec<(String, &mut Linear)> {
    model.named_linears_mut()
}

/// LoRA settings: which modules get adapters, of what rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Module-name suffixes that get adapters, matched at a `.` boundary (PEFT's
    /// `target_modules`), e.g. `self_attn.q_proj` or `mlp.down_proj`.
    pub targets: Vec<String>,
    /// Seed of the initial `lora_A` (uniform in ±1/√d_in, as PEFT's default); `lora_B` starts
    /// at zero, so a fresh adapter changes nothing.
    pub seed: u64,
}

impl LoraConfig {
    /// Rank `rank`, alpha `2·rank`, on the decoder's attention projections and dense MLP.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            alpha: 2.0 * rank as f64,
            targets: Self::DECODER_TARGETS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            seed: 0,
        }
    }

    /// The decoder's attention projections and dense MLP (not the MoE experts).
    pub const DECODER_TARGETS: [&'static str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];

    /// `alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether module `name` gets an adapter.
    pub fn targets_module(&self, name: &str) -> bool {
        // decoder MLP targets must not catch the experts' projections of the same name
        if name.contains(".moe.") {
            return false;
        }
        self.targets
            .iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}")))
    }
}

/// What trains; everything else is frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trainable {
    /// The MoE blocks (`moe.*`: router, experts, shared expert and its gate) and the mixing
    /// coefficients (`coefficient.*`), as EchoVLM's authors train them.
    pub moe: bool,
    /// The vision merger's MLP (`visual.merger.mlp.*`).
    pub merger: bool,
    /// LoRA adapters, if any.
    pub lora: Option<LoraConfig>,
    /// Further linear layers trained in full, by module-name substring.
    pub full: Vec<String>,
}

impl Default for Trainable {
    /// The MoE blocks, the coefficients and the merger (EchoVLM's first stage).
    fn default() -> Self {
        Self {
            moe: true,
            merger: true,
            lora: None,
            full: Vec::new(),
        }
    }
}

impl Trainable {
    /// Every linear layer (vision, merger, decoder, MoE, coefficients, an untied LM head):
    /// training a model from scratch. Token embeddings and norms stay as they are.
    pub fn all() -> Self {
        Self {
            moe: true,
            merger: true,
            lora: None,
            full: vec![String::new()],
        }
    }

    /// Whether module `name` is trained in full.
    pub fn trains_module(&self, name: &str) -> bool {
        (self.moe && (name.contains(".moe.") || name.ends_with(".coefficient")))
            || (self.merger && name.starts_with("visual.merger.mlp"))
            || self.full.iter().any(|f| name.contains(f.as_str()))
    }
}

/// Which tensor of a linear layer a trainable parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `{module}.weight`.
    Weight,
    /// `{module}.bias`.
    Bias,
    /// `{module}.lora_A.weight`.
    LoraA,
    /// `{module}.lora_B.weight`.
    LoraB,
}

impl Slot {
    /// The suffix after the module name.
    pub fn suffix(self) -> &'static str {
        match self {
            Slot::Weight => "weight",
            Slot::Bias => "bias",
            Slot::LoraA => "lora_A.weight",
            Slot::LoraB => "lora_B.weight",
        }
    }
}

/// One trainable tensor: a slot of a named linear layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// The module name, e.g. `model.layers.0.moe.gate`.
    pub module: String,
    /// Which tensor of it.
    pub slot: Slot,
}

impl Param {
    /// The full tensor name, e.g. `model.layers.0.moe.gate.weight` or
    /// `model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.module, self.slot.suffix())
    }
}

/// Reads the tensor of `slot` in `linear` (as a 2-D tensor; biases as `[1, d]`).
pub(crate) fn get(linear: &Linear, slot: Slot) -> Option<Tensor<2>> {
    match slot {
        Slot::Weight => match &linear.weight {
            LinearWeight::Tensor(t) => Some(t.clone()),
            LinearWeight::Packed(_) => None,
        },
        Slot::Bias => linear.bias.clone().map(|b| b.unsqueeze_dim(0)),
        Slot::LoraA => linear.lora.as_ref().map(|l| l.lora_a.clone()),
        Slot::LoraB => linear.lora.as_ref().map(|l| l.lora_b.clone()),
    }
}

/// Writes the tensor of `slot` in `linear` (biases given as `[1, d]`).
pub(crate) fn set(linear: &mut Linear, slot: Slot, t: Tensor<2>) {
    match slot {
        Slot::Weight => linear.weight = LinearWeight::Tensor(t),
        Slot::Bias => {
            let [_, d] = t.dims();
            linear.bias = Some(t.reshape([d]));
        }
        Slot::LoraA => {
            if let Some(l) = linear.lora.as_mut() {
                l.lora_a = t;
            }
        }
        Slot::LoraB => {
            if let Some(l) = linear.lora.as_mut() {
                l.lora_b = t;
            }
        }
    }
}

/// Attaches fresh adapters to the modules `lora` targets and lists every trainable tensor in a
/// fixed order (vision before decoder, layer by layer, weight before bias, A before B).
pub(crate) fn select(model: &mut EchoVlm, trainable: &Trainable) -> Result<Vec<Param>, TrainError> {
    let mut params = Vec::new();
    let mut rng = trainable
        .lora
        .as_ref()
        .map(|l| ChaCha8Rng::seed_from_u64(l.seed));
    let mut lora_targets = 0;
    for (name, linear) in named_linears(model) {
        if trainable.trains_module(&name) {
            if matches!(linear.weight, LinearWeight::Packed(_)) {
                return Err(TrainError::Setup(format!(
                    "{name}: packed CPU weights cannot train; load the model on an autodiff device"
                )));
            }
            params.push(Param {
                module: name.clone(),
                slot: Slot::Weight,
            });
            if linear.bias.is_some() {
                params.push(Param {
                    module: name.clone(),
                    slot: Slot::Bias,
                });
            }
        }
        if let (Some(cfg), Some(rng)) = (trainable.lora.as_ref(), rng.as_mut())
            && cfg.targets_module(&name)
        {
            lora_targets += 1;
            let (d_in, d_out) = (linear.d_in(), linear.d_out());
            let device = match &linear.weight {
                LinearWeight::Tensor(t) => t.device(),
                LinearWeight::Packed(_) => {
                    return Err(TrainError::Setup(format!(
                        "{name}: packed CPU weights cannot carry an adapter while training"
                    )));
                }
            };
            let bound = 1.0 / (d_in as f32).sqrt();
            let a: Vec<f32> = (0..cfg.rank * d_in)
                .map(|_| {
                    let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                    (2.0 * u - 1.0) * bound
                })
                .collect();
            linear.lora = Some(LoraAdapter {
                lora_a: Tensor::from_data(TensorData::new(a, [cfg.rank, d_in]), &device),
                lora_b: Tensor::zeros([d_out, cfg.rank], &device),
                scaling: cfg.scaling(),
            });
            params.push(Param {
                module: name.clone(),
                slot: Slot::LoraA,
            });
            params.push(Param {
                module: name,
                slot: Slot::LoraB,
            });
        }
    }
    if let Some(cfg) = &trainable.lora {
        if cfg.rank == 0 {
            return Err(TrainError::Setup("LoRA rank 0".into()));
        }
        if lora_targets == 0 {
            return Err(TrainError::Setup(format!(
                "no module matches the LoRA targets {:?}",
                cfg.targets
            )));
        }
    }
    if params.is_empty() {
        return Err(TrainError::Setup(
            "nothing to train: the checkpoint has no module the selection names".into(),
        ));
    }
    Ok(params)
}
