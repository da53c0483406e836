use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData, activation};
use echovlm_core::host::{ReadBackError, int_tensor, to_f32_vec};
use echovlm_core::{Linear, LoadError, TensorProblem, WeightLoader, backend};

use crate::mlp::Mlp;

/// Routing settings that are not visible in the tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts each token is sent to (`num_experts_per_tok`; EchoVLM: 2).
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k probabilities to sum to one (`norm_topk_prob`; EchoVLM: false).
    pub norm_topk_prob: bool,
}

impl Default for MoeConfig {
    fn default() -> Self {
        Self {
            num_experts_per_tok: 2,
            norm_topk_prob: false,
        }
    }
}

/// The routing decision for a set of tokens, computed on the host in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Number of routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Router logits, `[tokens, num_experts]` row-major.
    pub router_logits: Vec<f32>,
    /// Chosen experts per token, best first, `[tokens, top_k]`.
    pub experts: Vec<u32>,
    /// Weights of the chosen experts, `[tokens, top_k]`.
    pub weights: Vec<f32>,
}

impl Routing {
    /// Routes tokens from their router logits: softmax in f32, top-k (ties go to the lower
    /// expert index), optional renormalisation.
    pub fn from_logits(logits: Vec<f32>, num_experts: usize, top_k: usize, renorm: bool) -> Self {
        let tokens = logits.len().checked_div(num_experts).unwrap_or(0);
        let mut experts = Vec::with_capacity(tokens * top_k);
        let mut weights = Vec::with_capacity(tokens * top_k);
        let mut probs = vec![0f32; num_experts];
        let mut order: Vec<usize> = (0..num_experts).collect();
        for row in logits.chunks_exact(num_experts.max(1)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (p, &l) in probs.iter_mut().zip(row) {
                *p = (l - max).exp();
                sum += *p;
            }
            for p in probs.iter_mut() {
                *p /= sum;
            }
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k];
            let total: f32 = chosen.iter().map(|&e| probs[e]).sum();
            for &e in chosen {
                experts.push(e as u32);
                weights.push(if renorm { probs[e] / total } else { probs[e] });
            }
        }
        Self {
            num_experts,
            top_k,
            router_logits: logits,
            experts,
            weights,
        }
    }

    /// Number of routed tokens.
    pub fn tokens(&self) -> usize {
        self.experts.len() / self.top_k.max(1)
    }

    /// For each expert, the tokens sent to it (ascending) and their weights.
    pub fn per_expert(&self) -> Vec<(Vec<i64>, Vec<f32>)> {
        let mut out = vec![(Vec::new(), Vec::new()); self.num_experts];
        for (t, (es, ws)) in self
            .experts
            .chunks_exact(self.top_k)
            .zip(self.weights.chunks_exact(self.top_k))
            .enumerate()
        {
            for (&e, &w) in es.iter().zip(ws) {
                out[e as usize].0.push(t as i64);
                out[e as usize].1.push(w);
            }
        }
        out
    }
}

/// A routing decision computed where the tensors live (on a GPU: no read-back to the host).
///
/// The same numerics as [`Routing::from_logits`]: the `top_k` largest softmax probabilities
/// of the router logits in f32, optionally renormalised. The experts are chosen by their
/// logits (the softmax keeps their order) and only the chosen ones' probabilities are
/// computed, `p_k = 1 / Σ_j exp(x_j − x_k)` in one reduction. Ties may be broken differently
/// from the host routing.
#[derive(Debug, Clone)]
pub struct DeviceRouting {
    /// The logits routed from, `[tokens, n]` in the activations' float type: the router's in
    /// the first `num_experts` columns, −∞ in any other ([`from_masked_logits`](Self::from_masked_logits)).
    logits: Tensor<2>,
    num_experts: usize,
    /// Chosen experts per token, best first, `[tokens, top_k]`.
    pub experts: Tensor<2, Int>,
    /// Weights of the chosen experts, `[tokens, top_k]`, f32.
    pub weights: Tensor<2>,
}

impl DeviceRouting {
    /// Routes from router logits (`[tokens, num_experts]`) on their device.
    ///
    /// The experts are chosen by their logits, which order them as their probabilities do,
    /// and only the chosen ones' probabilities are computed, `p_k = 1 / Σ_j exp(x_j − x_k)`:
    /// on a GPU a top-k and one reduction, where the softmax of every expert first takes a
    /// reduction and a division more.
    pub fn from_logits(logits: Tensor<2>, top_k: usize, renorm: bool) -> Self {
        let num_experts = logits.dims()[1];
        Self::from_masked_logits(logits, num_experts, top_k, renorm)
    }

    /// [`from_logits`](Self::from_logits) on the first `num_experts` columns of `logits`
    /// (`[tokens, n]`), whose other columns must hold −∞: they are never chosen and add
    /// nothing to the sums. For logits that come out of a wider product (the fused
    /// feed-forward's), where taking the columns apart would copy them: on a GPU a slice is
    /// a view only when both its ends fall on the memory alignment.
    ///
    /// # Panics
    /// If `logits` has fewer than `num_experts` columns or `top_k` is larger than
    /// `num_experts`.
    pub fn from_masked_logits(
        logits: Tensor<2>,
        num_experts: usize,
        top_k: usize,
        renorm: bool,
    ) -> Self {
        let [tokens, n] = logits.dims();
        assert!(
            top_k <= num_experts && num_experts <= n,
            "top {top_k} of {num_experts} experts from {n} logits"
        );
        let x = backend::cast_to(logits.clone(), DType::F32);
        let (top, experts) = x.clone().topk_with_indices(top_k, 1);
        // [tokens, 1, n] against [tokens, top_k, 1]: x_j − x_k at [tokens, k, j]
        let diff = x.reshape([tokens, 1, n]) - top.reshape([tokens, top_k, 1]);
        let weights = diff.exp().sum_dim(2).reshape([tokens, top_k]).recip();
        let weights = if renorm {
            weights.clone() / weights.sum_dim(1)
        } else {
            weights
        };
        Self {
            logits,
            num_experts,
            experts,
            weights,
        }
    }

    /// The router logits, `[tokens, num_experts]`, in the activations' float type.
    pub fn router_logits(&self) -> Tensor<2> {
        match self.logits.dims()[1] == self.num_experts {
            true => self.logits.clone(),
            false => self.logits.clone().narrow(1, 0, self.num_experts),
        }
    }

    /// The number of experts routed among.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// The weight of every expert for every token, `[tokens, num_experts]` in `dtype`: the
    /// routed weight where the expert was chosen, zero elsewhere.
    pub fn dense_weights(&self, dtype: DType) -> Tensor<2> {
        let (tokens, num_experts) = (self.weights.dims()[0], self.num_experts);
        let device = self.weights.device();
        let weights = Tensor::<2>::zeros([tokens, num_experts], (&device, DType::F32)).scatter(
            1,
            self.experts.clone(),
            self.weights.clone(),
            IndexingUpdateOp::Add,
        );
        backend::cast_to(weights, dtype)
    }

    /// The routing as one f32 row per token, on the device, with `extra` (`[tokens, n]`, any
    /// float type) after it: `[tokens, num_experts + 2·top_k + n]`, the router logits, the
    /// chosen experts (exact in f32), their weights, then `extra`. [`parse_records`] reads such
    /// rows back; a decode step writes them into a buffer of rows and reads all at the end.
    ///
    /// [`parse_records`]: Self::parse_records
    pub fn record_with(&self, extra: Tensor<2>) -> Tensor<2> {
        Tensor::cat(
            vec![
                self.router_logits().cast(DType::F32),
                self.experts.clone().float().cast(DType::F32),
                self.weights.clone(),
                extra.cast(DType::F32),
            ],
            1,
        )
    }

    /// Reads the routing back to the host, with `extra` (`[tokens, n]`, any float type) read in
    /// the same transfer: one read-back in all. Returns the routing and `extra`'s values.
    pub fn read_back_with(&self, extra: Tensor<2>) -> Result<(Routing, Vec<f32>), ReadBackError> {
        let top_k = self.weights.dims()[1];
        let n = extra.dims()[1];
        let values = to_f32_vec(self.record_with(extra))?;
        Ok(Self::parse_records(&values, self.num_experts, top_k, n))
    }

    /// The width of a row of [`record_with`](Self::record_with) with `n` extra values:
    /// `num_experts + 2·top_k + n`.
    pub fn record_width(num_experts: usize, top_k: usize, n: usize) -> usize {
        num_experts + 2 * top_k + n
    }

    /// The routing and the `n` extra values per token of rows written by
    /// [`record_with`](Self::record_with) (`values`: whole rows, row after row).
    pub fn parse_records(
        values: &[f32],
        num_experts: usize,
        top_k: usize,
        n: usize,
    ) -> (Routing, Vec<f32>) {
        let width = Self::record_width(num_experts, top_k, n);
        let tokens = values.len() / width.max(1);
        let mut routing = Routing {
            num_experts,
            top_k,
            router_logits: Vec::with_capacity(tokens * num_experts),
            experts: Vec::with_capacity(tokens * top_k),
            weights: Vec::with_capacity(tokens * top_k),
        };
        let mut rest = Vec::with_capacity(tokens * n);
        for row in values.chunks_exact(width.max(1)) {
            let (logits, row) = row.split_at(num_experts);
            let (experts, row) = row.split_at(top_k);
            let (weights, row) = row.split_at(top_k);
            routing.router_logits.extend_from_slice(logits);
            // expert indices are small integers, exact in f32
            routing.experts.extend(experts.iter().map(|&e| e as u32));
            routing.weights.extend_from_slice(weights);
            rest.extend_from_slice(row);
        }
        (routing, rest)
    }
}

/// The Qwen2-MoE sparse block: router, routed SwiGLU experts, sigmoid-gated shared expert.
#[derive(Debug, Clone)]
pub struct SparseMoeBlock {
    /// Router, `Linear(hidden → num_experts)` without bias.
    pub gate: Linear,
    /// Routed experts.
    pub experts: Vec<Mlp>,
    /// The always-on shared expert.
    pub shared_expert: Mlp,
    /// `Linear(hidden → 1)` without bias; its sigmoid scales the shared expert per token.
    pub shared_expert_gate: Linear,
    /// Routing settings.
    pub config: MoeConfig,
}

impl SparseMoeBlock {
    /// Loads `{prefix}.gate`, `{prefix}.experts.{e}.*`, `{prefix}.shared_expert.*` and
    /// `{prefix}.shared_expert_gate`, reading the number and widths of the experts from the
    /// tensor shapes.
    pub fn load(
        loader: &mut WeightLoader<'_>,
        prefix: &str,
        hidden: usize,
        config: MoeConfig,
    ) -> Result<Self, LoadError> {
        let gate_key = format!("{prefix}.gate.weight");
        let counted = (0..)
            .take_while(|e| loader.contains(&format!("{prefix}.experts.{e}.gate_proj.weight")))
            .count();
        let num_experts = match loader.shape_of(&gate_key) {
            Some(&[e, _]) => e,
            _ => counted,
        };
        if num_experts == 0 {
            // Nothing says how many experts there are: report the router and the first expert
            // as missing and let the strict loader fail with every other problem found.
            loader.report(TensorProblem::Missing { key: gate_key });
        } else if config.num_experts_per_tok == 0 || config.num_experts_per_tok > num_experts {
            return Err(LoadError::config(
                "config.json",
                format!(
                    "num_experts_per_tok = {} but the checkpoint has {num_experts} experts",
                    config.num_experts_per_tok
                ),
            ));
        }
        let width = |loader: &WeightLoader<'_>, key: &str| match loader.shape_of(key) {
            Some(&[w, _]) => w,
            _ => 1,
        };
        let expert_width = width(loader, &format!("{prefix}.experts.0.gate_proj.weight"));
        let shared_width = width(loader, &format!("{prefix}.shared_expert.gate_proj.weight"));
        let gate = if num_experts == 0 {
            Linear::new(
                burn::tensor::Tensor::zeros([1, hidden], (loader.device(), loader.dtype())),
                None,
            )
        } else {
            loader.linear(&format!("{prefix}.gate"), hidden, num_experts, false)
        };
        let experts = (0..num_experts.max(1))
            .map(|e| {
                Mlp::load(
                    loader,
                    &format!("{prefix}.experts.{e}"),
                    hidden,
                    expert_width,
                )
            })
            .collect();
        let shared_expert = Mlp::load(
            loader,
            &format!("{prefix}.shared_expert"),
            hidden,
            shared_width,
        );
        let shared_expert_gate =
            loader.linear(&format!("{prefix}.shared_expert_gate"), hidden, 1, false);
        Ok(Self {
            gate,
            experts,
            shared_expert,
            shared_expert_gate,
            config,
        })
    }

    /// Number of routed experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// Routes `h` (`[tokens, hidden]`) without running any expert. The router logits are read
    /// back to the host (the routing decides which experts run); that read is the only way this
    /// fails.
    pub fn route(&self, h: Tensor<2>) -> Result<Routing, ReadBackError> {
        let logits = to_f32_vec(self.gate.forward(h))?;
        Ok(Routing::from_logits(
            logits,
            self.num_experts(),
            self.config.num_experts_per_tok,
            self.config.norm_topk_prob,
        ))
    }

    /// Routes `h` (`[tokens, hidden]`) on its device, without any read-back.
    pub fn route_on_device(&self, h: Tensor<2>) -> DeviceRouting {
        DeviceRouting::from_logits(
            self.gate.forward(h),
            self.config.num_experts_per_tok,
            self.config.norm_topk_prob,
        )
    }

    /// Runs the block on `h` (`[tokens, hidden]`) without leaving its device: the routing is
    /// computed there, every expert runs on every token and is weighted by its routed weight
    /// (zero where not chosen), then the gated shared expert is added. For GPUs, where a
    /// read-back costs a synchronisation and the extra expert work is cheap; on the CPU,
    /// [`forward`](Self::forward) runs each expert on its own tokens only.
    pub fn forward_on_device(&self, h: Tensor<2>) -> (Tensor<2>, DeviceRouting) {
        let routing = self.route_on_device(h.clone());
        let w = routing.dense_weights(h.dtype());
        let mut out = self.shared(h.clone());
        for (e, expert) in self.experts.iter().enumerate() {
            out = out + expert.forward(h.clone()) * w.clone().narrow(1, e, 1);
        }
        (out, routing)
    }

    /// Runs the block on `h` (`[tokens, hidden]`): each expert runs only on the tokens routed to
    /// it, its output is weighted and added into place, then the gated shared expert is added.
    pub fn forward(&self, h: Tensor<2>) -> Result<(Tensor<2>, Routing), ReadBackError> {
        let routing = self.route(h.clone())?;
        // the experts' outputs are added into the shared expert's, in place
        let shared = self.shared(h.clone());
        Ok((self.routed(h, &routing, Some(shared)), routing))
    }

    /// [`forward`](Self::forward) for training: the expert weights are taken from the router's
    /// softmax as tensors (so gradients reach the router), and the router logits
    /// (`[tokens, experts]`, for [`load_balancing_loss`](crate::load_balancing_loss)) are
    /// returned with the output. The choice of experts is made on the host as in `forward`.
    pub fn forward_train(
        &self,
        h: Tensor<2>,
    ) -> Result<(Tensor<2>, Routing, Tensor<2>), ReadBackError> {
        let logits = self.gate.forward(h.clone());
        let routing = Routing::from_logits(
            to_f32_vec(logits.clone())?,
            self.num_experts(),
            self.config.num_experts_per_tok,
            self.config.norm_topk_prob,
        );
        let probs = activation::softmax(logits.clone().cast(DType::F32), 1);
        let weights = if self.config.norm_topk_prob {
            let [tokens, experts] = probs.dims();
            let mut chosen = vec![0f32; tokens * experts];
            for (t, es) in routing.experts.chunks_exact(routing.top_k).enumerate() {
                for &e in es {
                    chosen[t * experts + e as usize] = 1.0;
                }
            }
            let chosen = Tensor::<2>::from_data(
                TensorData::new(chosen, [tokens, experts]),
                (&h.device(), DType::F32),
            );
            let total = (probs.clone() * chosen).sum_dim(1);
            probs / total
        } else {
            probs
        };
        let weights = weights.cast(h.dtype());
        let shared = self.shared(h.clone());
        let out = self.routed_by(h, &routing, Some(shared), |e, idx| match idx {
            None => weights.clone().narrow(1, e, 1),
            Some(idx) => weights.clone().select(0, idx).narrow(1, e, 1),
        });
        Ok((out, routing, logits))
    }

    /// The routed experts only (no shared expert), dispatched sparsely.
    pub fn forward_routed(&self, h: Tensor<2>) -> Result<(Tensor<2>, Routing), ReadBackError> {
        let routing = self.route(h.clone())?;
        Ok((self.routed(h, &routing, None), routing))
    }

    /// Like [`forward`](Self::forward) but runs every expert on every token and masks the
    /// result: the dense reference the sparse dispatch is measured against.
    pub fn forward_all_experts(&self, h: Tensor<2>) -> Result<Tensor<2>, ReadBackError> {
        Ok(self.forward_routed_all_experts(h.clone())? + self.shared(h))
    }

    /// The routed experts only, every expert on every token (weights zero where not routed).
    pub fn forward_routed_all_experts(&self, h: Tensor<2>) -> Result<Tensor<2>, ReadBackError> {
        let routing = self.route(h.clone())?;
        let [tokens, _] = h.dims();
        let device = h.device();
        let dtype = h.dtype();
        let mut dense_w = vec![0f32; tokens * self.num_experts()];
        for t in 0..tokens {
            for s in 0..routing.top_k {
                let i = t * routing.top_k + s;
                dense_w[t * self.num_experts() + routing.experts[i] as usize] = routing.weights[i];
            }
        }
        let w = Tensor::<2>::from_data(
            TensorData::new(dense_w, [tokens, self.num_experts()]),
            (&device, dtype),
        );
        let mut out = Tensor::<2>::zeros(h.dims(), (&device, dtype));
        for (e, expert) in self.experts.iter().enumerate() {
            let we = w.clone().narrow(1, e, 1);
            out = out + expert.forward(h.clone()) * we;
        }
        Ok(out)
    }

    fn shared(&self, h: Tensor<2>) -> Tensor<2> {
        let gate = activation::sigmoid(self.shared_expert_gate.forward(h.clone()));
        self.shared_expert.forward(h) * gate
    }

    /// The routed experts' outputs, weighted by the routing, added to `base` (or to zeros).
    fn routed(&self, h: Tensor<2>, routing: &Routing, base: Option<Tensor<2>>) -> Tensor<2> {
        let device = h.device();
        let dtype = h.dtype();
        let per_expert = routing.per_expert();
        self.routed_by(h, routing, base, |e, _| {
            let ws = per_expert[e].1.clone();
            let n = ws.len();
            Tensor::<1>::from_data(TensorData::new(ws, [n]), (&device, dtype)).unsqueeze_dim::<2>(1)
        })
    }

    /// Runs each expert on its tokens and adds its output, weighted by `weight(e, idx)` (`[n, 1]`
    /// for the `n` tokens of expert `e`, gathered by `idx`, or every token when `idx` is `None`),
    /// into place: into `base` (`[tokens, hidden]`) when given, else into zeros.
    fn routed_by(
        &self,
        h: Tensor<2>,
        routing: &Routing,
        base: Option<Tensor<2>>,
        weight: impl Fn(usize, Option<Tensor<1, Int>>) -> Tensor<2>,
    ) -> Tensor<2> {
        let [tokens, hidden] = h.dims();
        let device = h.device();
        let dtype = h.dtype();
        let mut out = base;
        for (e, (ids, _)) in routing.per_expert().into_iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            let n = ids.len();
            if n == tokens {
                // every token uses this expert: no gather or scatter needed
                let y = self.experts[e].forward(h.clone()) * weight(e, None);
                out = Some(match out {
                    Some(o) => o + y,
                    None => y,
                });
            } else {
                let idx = int_tensor(ids, [n], &device);
                let w = weight(e, Some(idx.clone()));
                let y = self.experts[e].forward(h.clone().select(0, idx.clone())) * w;
                let base = out
                    .take()
                    .unwrap_or_else(|| Tensor::zeros([tokens, hidden], (&device, dtype)));
                out = Some(base.select_assign(0, idx, y, IndexingUpdateOp::Add));
            }
        }
        out.unwrap_or_else(|| Tensor::zeros([tokens, hidden], (&device, dtype)))
    }
}

/// What [`DynamicFfn::forward`] returns: the mixed output (`[tokens, hidden]`) and, when asked
/// for, the routing of these tokens with their mix coefficients (`[tokens, 2]`, row-major).
pub type MixOutput = (Tensor<2>, Option<(Routing, Vec<f32>)>);

/// EchoVLM's dynamic feed-forward: `softmax(coefficient(h))` mixes the MoE block (weight 0) and
/// the dense MLP (weight 1).
#[derive(Debug, Clone)]
pub struct DynamicFfn {
    /// The original dense Qwen2 MLP (`mlp.*`).
    pub mlp: Mlp,
    /// The sparse block (`moe.*`).
    pub moe: SparseMoeBlock,
    /// `Linear(hidden → 2)` with bias (`coefficient.*`).
    pub coefficient: Linear,
    /// The whole block as two matrix products, built by [`fuse`](Self::fuse) for devices that
    /// route on the device; the layers above then hold views of its weights. Set it to `None`
    /// after replacing any of their weights.
    pub fused: Option<FusedFfn>,
}

/// [`DynamicFfn`] as two matrix products around the routing, for devices where every kernel
/// launch costs more than the arithmetic (a GPU decoding one token): the first product computes
/// every gate and up projection (dense MLP, routed experts, shared expert), the router logits,
/// the shared expert's gate and the mix coefficients; the second applies every down projection
/// at once to the SwiGLU activations, each block of them scaled first by what multiplies its
/// branch's output (the dense coefficient; the MoE coefficient times the expert's routed
/// weight, zero where it was not chosen; the MoE coefficient times the shared expert's gate).
/// The down projections being linear, this is the unfused block's sum, rounded differently.
#[derive(Debug, Clone)]
pub struct FusedFfn {
    /// `[2·width + experts + 3, hidden]`: the gate projections of the dense MLP, the routed
    /// experts in order and the shared expert, their up projections in the same order, then the
    /// router, the shared expert's gate and the coefficient layer. Without bias when the MLPs
    /// have none (the last three's biases are then [`tail_bias`](Self::tail_bias)); else with
    /// every part's bias, zeros where a part has none.
    pub up: Linear,
    /// `[hidden, width]`: the down projections in the same order, side by side.
    pub down: Linear,
    /// `[experts + 2, width]`: ones over the columns of the dense MLP (row 0), of expert `e`
    /// (row `1 + e`) and of the shared expert (the last row), zeros elsewhere.
    pub segments: Tensor<2>,
    /// `[experts + 3]`: the biases of the router, the shared expert's gate and the coefficient
    /// layer, when the MLPs have none: [`fuse`](DynamicFfn::fuse) then leaves `up` without
    /// bias and they are added to those few outputs only, so that the SwiGLU reads the product
    /// as it comes out. `None` when `up` keeps its bias.
    pub tail_bias: Option<Tensor<1>>,
    /// `[1, experts + 3]`: zero over the router's outputs, −∞ over the shared expert's gate and
    /// the coefficients, added to the routing outputs so that the experts are chosen from them
    /// without taking the router's columns apart ([`DeviceRouting::from_masked_logits`]).
    pub router_mask: Tensor<2>,
}

/// The block's MLPs in the order of its fused layers: dense, each routed expert, shared.
fn every_mlp<'a>(
    mlp: &'a mut Mlp,
    experts: &'a mut [Mlp],
    shared_expert: &'a mut Mlp,
) -> impl Iterator<Item = &'a mut Mlp> {
    std::iter::once(mlp)
        .chain(experts.iter_mut())
        .chain(std::iter::once(shared_expert))
}

impl DynamicFfn {
    /// Loads `{layer_prefix}.mlp`, `{layer_prefix}.moe` and `{layer_prefix}.coefficient`.
    pub fn load(
        loader: &mut WeightLoader<'_>,
        layer_prefix: &str,
        hidden: usize,
        intermediate: usize,
        config: MoeConfig,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            mlp: Mlp::load(loader, &format!("{layer_prefix}.mlp"), hidden, intermediate),
            moe: SparseMoeBlock::load(loader, &format!("{layer_prefix}.moe"), hidden, config)?,
            coefficient: loader.linear(&format!("{layer_prefix}.coefficient"), hidden, 2, true),
            fused: None,
        })
    }

    /// Builds [`fused`](Self::fused) where every layer of the block holds a Burn tensor weight
    /// without adapter ([`Linear::fuse_outputs`], [`Linear::fuse_inputs`]); returns whether it
    /// did. [`forward`](Self::forward) uses it on devices other than the CPU backend.
    pub fn fuse(&mut self) -> bool {
        let Self {
            mlp,
            moe,
            coefficient,
            fused,
        } = self;
        let SparseMoeBlock {
            gate,
            experts,
            shared_expert,
            shared_expert_gate,
            ..
        } = moe;
        let mlps_biased = every_mlp(mlp, experts, shared_expert)
            .any(|m| m.gate_proj.bias.is_some() || m.up_proj.bias.is_some());
        let mut widths = Vec::new();
        let mut gates = Vec::new();
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        for m in every_mlp(mlp, experts, shared_expert) {
            m.gate_up_proj = None;
            widths.push(m.intermediate_size());
            gates.push(&mut m.gate_proj);
            ups.push(&mut m.up_proj);
            downs.push(&mut m.down_proj);
        }
        let mut outputs = gates;
        outputs.extend(ups);
        outputs.extend([gate, shared_expert_gate, coefficient]);
        // each side is left as it was, or holding views that compute what it did, when the
        // other cannot be fused
        let Some(mut up) = Linear::fuse_outputs(&mut outputs) else {
            *fused = None;
            return false;
        };
        let width: usize = widths.iter().sum();
        let tail_bias = match up.bias.take() {
            Some(b) if !mlps_biased => {
                let n = b.dims()[0];
                Some(b.narrow(0, 2 * width, n - 2 * width))
            }
            other => {
                up.bias = other;
                None
            }
        };
        let Some(down) = Linear::fuse_inputs(&mut downs) else {
            *fused = None;
            return false;
        };
        let Some(w) = down.tensor_weight() else {
            *fused = None;
            return false;
        };
        let (device, dtype) = (w.device(), w.dtype());
        let rows = widths.len();
        let mut seg = vec![0f32; rows * width];
        let mut start = 0;
        for (row, &w) in widths.iter().enumerate() {
            seg[row * width + start..row * width + start + w].fill(1.0);
            start += w;
        }
        let segments =
            Tensor::<2>::from_data(TensorData::new(seg, [rows, width]), (&device, DType::F32))
                .cast(dtype);
        let experts = rows - 2;
        let mask: Vec<f32> = (0..experts + 3)
            .map(|j| if j < experts { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let router_mask = Tensor::<2>::from_data(
            TensorData::new(mask, [1, experts + 3]),
            (&device, DType::F32),
        )
        .cast(dtype);
        *fused = Some(FusedFfn {
            up,
            down,
            segments,
            tail_bias,
            router_mask,
        });
        true
    }

    /// The dense MLP, each routed expert and the shared expert, in that order.
    pub fn mlps_mut(&mut self) -> impl Iterator<Item = &mut Mlp> {
        every_mlp(
            &mut self.mlp,
            &mut self.moe.experts,
            &mut self.moe.shared_expert,
        )
    }

    /// Drops [`fused`](Self::fused) and every MLP's [`gate_up_proj`](Mlp::gate_up_proj): the
    /// forward pass goes back to the separate layers, which keep their weights.
    pub fn unfuse(&mut self) {
        self.fused = None;
        self.mlps_mut().for_each(|m| m.gate_up_proj = None);
    }

    /// The two mix weights per token, `[tokens, 2]` (index 0: MoE, index 1: dense).
    pub fn coefficients(&self, h: Tensor<2>) -> Tensor<2> {
        activation::softmax(self.coefficient.forward(h), 1)
    }

    /// [`forward`](Self::forward) for training: gradients reach the router through the expert
    /// weights ([`SparseMoeBlock::forward_train`]); returns the output and the router logits
    /// (`[tokens, experts]`) for the load-balancing loss.
    pub fn forward_train(&self, h: Tensor<2>) -> Result<(Tensor<2>, Tensor<2>), ReadBackError> {
        let (m, _, logits) = self.moe.forward_train(h.clone())?;
        let c = self.coefficients(h.clone());
        Ok((mix(c, m, self.mlp.forward(h)), logits))
    }

    /// The layout of [`forward_recorded`](Self::forward_recorded)'s rows: the number of routed
    /// experts and of experts per token (each row is [`DeviceRouting::record_width`] of them
    /// and the two coefficients wide).
    pub fn record_layout(&self) -> (usize, usize) {
        (self.moe.num_experts(), self.moe.config.num_experts_per_tok)
    }

    /// Applies the dynamic feed-forward to `h` (`[tokens, hidden]`) routed on its device, on any
    /// backend, and returns with the output the routing of each token and its mix
    /// coefficients as rows on the device ([`DeviceRouting::record_with`], the coefficients as
    /// the extra values): nothing is read back, so a decode step can keep them in a buffer
    /// and read them once at the end. Off the CPU backend this is [`forward`](Self::forward)'s
    /// computation; on it, the device routing's (every expert on every token).
    pub fn forward_recorded(&self, h: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        if !backend::is_flex(&h.device())
            && let Some(fused) = &self.fused
        {
            let (y, routing, c) = fused.forward(h, self.moe.config);
            return (y, routing.record_with(c));
        }
        let c = self.coefficients(h.clone());
        let (m, routing) = self.moe.forward_on_device(h.clone());
        let record = routing.record_with(c.clone());
        (mix(c, m, self.mlp.forward(h)), record)
    }

    /// Applies the dynamic feed-forward to `h` (`[tokens, hidden]`). With `record`, also returns
    /// the routing of these tokens and their mix coefficients (`[tokens, 2]`).
    ///
    /// On the CPU backend the routing is read to the host and each expert runs on its own
    /// tokens; on any other device everything stays there ([`SparseMoeBlock::forward_on_device`])
    /// and only a recorded routing is read back, in one transfer.
    pub fn forward(&self, h: Tensor<2>, record: bool) -> Result<MixOutput, ReadBackError> {
        if !backend::is_flex(&h.device())
            && let Some(fused) = &self.fused
        {
            // the coefficients come out of the fused product
            let (y, routing, c) = fused.forward(h, self.moe.config);
            let recorded = match record {
                true => Some(routing.read_back_with(c)?),
                false => None,
            };
            return Ok((y, recorded));
        }
        let c = self.coefficients(h.clone());
        let (m, recorded) = if backend::is_flex(&h.device()) {
            let (m, routing) = self.moe.forward(h.clone())?;
            let recorded = match record {
                true => Some((routing, to_f32_vec(c.clone())?)),
                false => None,
            };
            (m, recorded)
        } else {
            let (m, routing) = self.moe.forward_on_device(h.clone());
            let recorded = match record {
                true => Some(routing.read_back_with(c.clone())?),
                false => None,
            };
            (m, recorded)
        };
        Ok((mix(c, m, self.mlp.forward(h)), recorded))
    }
}

impl FusedFfn {
    /// The dynamic feed-forward of `h` (`[tokens, hidden]`) routed on its device, with the
    /// routing and the mix coefficients (`[tokens, 2]`: MoE, dense).
    pub fn forward(
        &self,
        h: Tensor<2>,
        config: MoeConfig,
    ) -> (Tensor<2>, DeviceRouting, Tensor<2>) {
        // the segments' rows are the dense MLP, each expert and the shared expert
        let [rows, w] = self.segments.dims();
        let e = rows - 2;
        let dtype = h.dtype();
        let o = self.up.forward(h);
        let act = backend::silu_mul(o.clone().narrow(1, 0, w), o.clone().narrow(1, w, w));
        // router logits, shared expert's gate, mix coefficients' logits
        let tail = o.narrow(1, 2 * w, e + 3);
        let tail = match &self.tail_bias {
            Some(b) => tail + b.clone().unsqueeze(),
            None => tail,
        };
        let routing = DeviceRouting::from_masked_logits(
            tail.clone() + self.router_mask.clone(),
            e,
            config.num_experts_per_tok,
            config.norm_topk_prob,
        );
        let shared_gate = activation::sigmoid(tail.clone().narrow(1, e, 1));
        // the two-way softmax of the coefficients as two element-wise expressions,
        // `1 / (1 + exp(x_other − x_own))`, where a softmax over the pair takes two reductions
        let x_moe = backend::cast_to(tail.clone().narrow(1, e + 1, 1), DType::F32);
        let x_dense = backend::cast_to(tail.narrow(1, e + 2, 1), DType::F32);
        let two_way =
            |own: Tensor<2>, other: Tensor<2>| (other - own).exp().add_scalar(1.0).recip();
        let c_moe = backend::cast_to(two_way(x_moe.clone(), x_dense.clone()), dtype);
        let c_dense = backend::cast_to(two_way(x_dense, x_moe), dtype);
        let scales = Tensor::cat(
            vec![
                c_dense.clone(),
                c_moe.clone() * routing.dense_weights(dtype),
                c_moe.clone() * shared_gate,
            ],
            1,
        );
        let y = self
            .down
            .forward(act * scales.matmul(self.segments.clone()));
        let c = Tensor::cat(vec![c_moe, c_dense], 1);
        (y, routing, c)
    }
}

/// `c[:, 0] · moe + c[:, 1] · dense`, the mix of the two branches by their coefficients
/// (`[tokens, 2]`).
fn mix(c: Tensor<2>, moe: Tensor<2>, dense: Tensor<2>) -> Tensor<2> {
    backend::mix_rows(c, moe, dense)
}
