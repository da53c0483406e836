use serde::Serialize;

use crate::sparse::Routing;

/// The routing of every token one MoE layer saw, in the order the tokens were processed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerRouting {
    /// Decoder layer index.
    pub layer: usize,
    /// Number of routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Router logits, `[tokens, num_experts]`.
    pub router_logits: Vec<f32>,
    /// Chosen experts, best first, `[tokens, top_k]`.
    pub experts: Vec<u32>,
    /// Weights of the chosen experts, `[tokens, top_k]`.
    pub weights: Vec<f32>,
    /// Mix coefficients, `[tokens, 2]`: index 0 weighs the MoE branch, index 1 the dense MLP.
    pub coefficients: Vec<f32>,
}

impl LayerRouting {
    /// An empty record for decoder layer `layer`.
    pub fn new(layer: usize) -> Self {
        Self {
            layer,
            ..Self::default()
        }
    }

    /// Appends the routing and mix coefficients of a batch of tokens.
    pub fn push(&mut self, routing: &Routing, coefficients: &[f32]) {
        self.num_experts = routing.num_experts;
        self.top_k = routing.top_k;
        self.router_logits.extend_from_slice(&routing.router_logits);
        self.experts.extend_from_slice(&routing.experts);
        self.weights.extend_from_slice(&routing.weights);
        self.coefficients.extend_from_slice(coefficients);
    }

    /// Appends token `t` of a routed batch.
    pub fn push_token(&mut self, routing: &Routing, coefficients: &[f32], t: usize) {
        let (e, k) = (routing.num_experts, routing.top_k);
        self.num_experts = e;
        self.top_k = k;
        self.router_logits
            .extend_from_slice(&routing.router_logits[t * e..(t + 1) * e]);
        self.experts
            .extend_from_slice(&routing.experts[t * k..(t + 1) * k]);
        self.weights
            .extend_from_slice(&routing.weights[t * k..(t + 1) * k]);
        self.coefficients
            .extend_from_slice(&coefficients[t * 2..(t + 1) * 2]);
    }

    /// Number of tokens recorded.
    pub fn tokens(&self) -> usize {
        self.coefficients.len() / 2
    }

    /// How many times each expert was chosen.
    pub fn counts(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.num_experts];
        for &e in &self.experts {
            c[e as usize] += 1;
        }
        c
    }

    /// Mean mix coefficients `[moe, dense]` over the recorded tokens.
    pub fn mean_coefficients(&self) -> [f64; 2] {
        let n = self.tokens();
        if n == 0 {
            return [0.0, 0.0];
        }
        let mut s = [0f64; 2];
        for c in self.coefficients.chunks_exact(2) {
            s[0] += c[0] as f64;
            s[1] += c[1] as f64;
        }
        [s[0] / n as f64, s[1] / n as f64]
    }
}

/// Routing records of every MoE layer of a decoder.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoutingTrace {
    /// One record per MoE layer, in layer order.
    pub layers: Vec<LayerRouting>,
}

impl RoutingTrace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of decoder layer `layer`, created on first use.
    pub fn layer_mut(&mut self, layer: usize) -> &mut LayerRouting {
        let pos = match self.layers.iter().position(|l| l.layer == layer) {
            Some(p) => p,
            None => {
                self.layers.push(LayerRouting::new(layer));
                self.layers.len() - 1
            }
        };
        &mut self.layers[pos]
    }

    /// Aggregated counts and mean coefficients per layer.
    pub fn summary(&self) -> RoutingSummary {
        RoutingSummary {
            layers: self.layers.iter().map(|l| l.layer).collect(),
            tokens: self.layers.first().map_or(0, LayerRouting::tokens),
            expert_counts: self.layers.iter().map(LayerRouting::counts).collect(),
            mean_coefficients: self
                .layers
                .iter()
                .map(LayerRouting::mean_coefficients)
                .collect(),
        }
    }
}

/// Aggregated routing: what a caller shows or plots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoutingSummary {
    /// Decoder layer index of each row below.
    pub layers: Vec<usize>,
    /// Tokens routed per layer.
    pub tokens: usize,
    /// `[layer][expert]`: how many times each expert was chosen.
    pub expert_counts: Vec<Vec<u64>>,
    /// `[layer]`: mean mix coefficients `[moe, dense]`.
    pub mean_coefficients: Vec<[f64; 2]>,
}
