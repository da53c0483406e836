//! Decode steps that read nothing from the host, so that one can be captured as a graph and
//! replayed ([`DeviceDecode`]).

use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};
use echovlm_core::LinearWeight;
use echovlm_core::host::{ReadBackError, from_f32_vec, int_tensor, to_f32_vec};
use echovlm_moe::{DeviceRouting, RoutingTrace};

use super::{AttentionMask, FeedForward, RopeSource, RopeTables, RoutingSink, StepKv, TextModel};
use crate::cache::KvCache;
use crate::error::{ForwardError, PromptError};
use crate::rope::Positions;

/// The state of a decode of one sequence whose every step input lives on the device: the
/// token to feed, how many steps were taken, the keys and values of every layer at a fixed
/// capacity (prompt plus the steps to come), and the rotary rows of those steps.
///
/// A step ([`TextModel::decode_step`]) embeds the token it holds, writes its keys and values
/// at the position after the last one, attends the whole capacity with the positions after it
/// masked, and counts itself; [`feed`](Self::feed) then sets the token of the next step from a
/// device tensor. Each of these writes its buffer in place and no step uploads anything, so
/// the same launches with the same buffers compute every step: a GPU backend can record one
/// step as a graph and replay it (see `burn::tensor::capture`).
#[derive(Debug)]
pub struct DeviceDecode {
    /// `[1]`: the token the next step embeds.
    token: Tensor<1, Int>,
    /// `[1]`: the steps taken.
    step: Tensor<1, Int>,
    /// `[1]`: zero, where the one-element states are written.
    zero: Tensor<1, Int>,
    /// `[capacity]`: `0, 1, …`, compared with a step's position for its attention mask.
    positions: Tensor<1, Int>,
    /// Per layer, keys and values `[1, kv_heads, capacity, head_dim]`.
    kv: Vec<(Tensor<4>, Tensor<4>)>,
    /// `[steps, head_dim]`: the rotary rows of each step (`sin` also with the sign of
    /// `rotate_half` folded in).
    cos: Tensor<2>,
    sin: Tensor<2>,
    signed: Tensor<2>,
    /// Cached positions before the first step.
    start: usize,
    /// Steps there is room for.
    steps: usize,
    /// Positions the key/value buffers hold (at least `start + steps`).
    capacity: usize,
    /// Calls of [`TextModel::decode_step`].
    taken: usize,
    /// The routing each step records, per MoE layer ([`TextModel::record_device_routing`]).
    routing: Vec<RoutingRows>,
}

/// The routing rows of one MoE layer, one per step ([`DeviceRouting::record_with`], with the
/// mix coefficients as the extra values).
#[derive(Debug)]
struct RoutingRows {
    layer: usize,
    num_experts: usize,
    top_k: usize,
    /// `[steps, num_experts + 2·top_k + 2]`, f32.
    rows: Tensor<2>,
}

impl DeviceDecode {
    /// Positions cached before the first step (the prompt, and any token already decoded).
    pub fn start(&self) -> usize {
        self.start
    }

    /// How many steps there is room for.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// How many steps [`TextModel::decode_step`] has been called for (a call recorded into a
    /// graph included; replays of the graph are the caller's to count against
    /// [`steps`](Self::steps)).
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// `[1]` on the device: the steps that have run, replays of a recorded step included
    /// ([`taken`](Self::taken) counts calls on the host, where a replay is not one). Read
    /// after a step, it is that step's number plus one: a recorded step can select its own
    /// row of a per-step table with it.
    pub fn step_count(&self) -> Tensor<1, Int> {
        self.step.clone()
    }

    /// Reads back the routing the first `steps` steps recorded ([`TextModel::record_device_routing`];
    /// `steps` counts the steps that ran: replays of a recorded step included, the recording
    /// itself not) and appends it to `trace`, one token per step: one read-back in all. Does
    /// nothing when the routing is not recorded.
    pub fn read_routing(
        &self,
        steps: usize,
        trace: &mut RoutingTrace,
    ) -> Result<(), ReadBackError> {
        let steps = steps.min(self.steps);
        if self.routing.is_empty() || steps == 0 {
            return Ok(());
        }
        let rows: Vec<Tensor<2>> = self
            .routing
            .iter()
            .map(|r| r.rows.clone().narrow(0, 0, steps))
            .collect();
        let widths: Vec<usize> = rows.iter().map(|r| r.dims()[1]).collect();
        let total: usize = widths.iter().sum();
        let values = to_f32_vec(Tensor::cat(rows, 1))?;
        let mut start = 0;
        for (r, width) in self.routing.iter().zip(widths) {
            let layer: Vec<f32> = values
                .chunks_exact(total)
                .flat_map(|row| &row[start..start + width])
                .copied()
                .collect();
            start += width;
            let (routing, coefficients) =
                DeviceRouting::parse_records(&layer, r.num_experts, r.top_k, 2);
            trace.layer_mut(r.layer).push(&routing, &coefficients);
        }
        Ok(())
    }

    /// Hands the keys and values back as a [`KvCache`] of the positions cached before the
    /// first step and those of the first `ran` steps (`ran` counts the steps that ran, replays
    /// of a recorded step included and the recording itself not), to go on decoding through
    /// the cache, e.g. in a batch that another sequence joins. The buffers keep their
    /// capacity. The state has no room left afterwards: a further
    /// [`TextModel::decode_step`] is refused.
    ///
    /// Errors when `ran` is more than the steps there was room for, or when the buffers were
    /// already handed back.
    pub fn take_cache(&mut self, ran: usize) -> Result<KvCache, ForwardError> {
        if ran > self.steps {
            return Err(ForwardError::Cache(format!(
                "a device decode with room for {} steps cannot have run {ran}",
                self.steps
            )));
        }
        if self.kv.is_empty() {
            return Err(ForwardError::Cache(
                "the device decode's keys and values were already handed back".into(),
            ));
        }
        // no room left: `decode_step` refuses a state whose steps were all taken
        self.taken = self.steps;
        let kv = std::mem::take(&mut self.kv);
        Ok(KvCache::from_device_buffers(kv, self.start + ran))
    }

    /// Sets the token the next step embeds (`[1]` ids on the state's device), written in place.
    pub fn feed(&mut self, token: Tensor<1, Int>) {
        let held = std::mem::replace(&mut self.token, self.zero.clone());
        self.token = held.select_assign(0, self.zero.clone(), token, IndexingUpdateOp::Assign);
    }
}

impl TextModel {
    /// Starts a [`DeviceDecode`] after a prefill: `cache` (one row, no padding, held as device
    /// tensors, which the decode takes over), `token` the first token to feed (the one chosen
    /// from the prefill's logits), `rope_delta` the row's rotary offset (as for
    /// [`Positions::decode`]), and room for `steps` steps.
    ///
    /// Errors when the cache is not one unpadded row of device tensors (the CPU backend keeps
    /// it on the host), when the embeddings are packed CPU rows, when `token` is outside the
    /// vocabulary, or when the steps would pass the model's context.
    pub fn device_decode(
        &self,
        cache: KvCache,
        token: u32,
        rope_delta: i64,
        steps: usize,
    ) -> Result<DeviceDecode, ForwardError> {
        let vocab = self.config.vocab_size;
        if token as usize >= vocab {
            return Err(PromptError::TokenOutOfRange { id: token, vocab }.into());
        }
        if !matches!(self.embed_tokens, LinearWeight::Tensor(_)) {
            return Err(ForwardError::Cache(
                "a device decode needs the embeddings as a tensor, not packed CPU rows".into(),
            ));
        }
        let steps = steps.max(1);
        let start = cache.len();
        let needed = start + steps;
        self.check_device_decode(start, steps, rope_delta)?;
        let kv = cache.into_device_buffers(needed).ok_or_else(|| {
            ForwardError::Cache(
                "a device decode needs a cache of one row without padding, held as device \
                 tensors"
                    .into(),
            )
        })?;
        // the buffers may hold more positions than needed: the mask covers all of them
        let capacity = kv.first().map_or(needed, |(k, _)| k.dims()[2]);
        let device = self.device();
        let d = self.config.head_dim;
        let (cos, sin) = self
            .rope
            .tables(&Positions::decode(&[rope_delta], start, steps));
        let signed = echovlm_core::rope::signed_sin(&sin, d);
        let dtype = self.dtype;
        let table = |t: Vec<f32>| from_f32_vec(t, [steps, d], &device, dtype);
        Ok(DeviceDecode {
            token: int_tensor(vec![token as i64], [1], &device),
            step: int_tensor(vec![0], [1], &device),
            zero: int_tensor(vec![0], [1], &device),
            positions: int_tensor((0..capacity as i64).collect(), [capacity], &device),
            kv,
            cos: table(cos),
            sin: table(sin),
            signed: table(signed),
            start,
            steps,
            capacity,
            taken: 0,
            routing: Vec::new(),
        })
    }

    /// Makes every later step of `state` record the routing and mix coefficients of each MoE
    /// layer on the device, in buffers with a row per step written in place (so a recorded step
    /// still replays); [`DeviceDecode::read_routing`] reads them back at the end. The MoE
    /// layers then route as [`DynamicFfn::forward_recorded`](echovlm_moe::DynamicFfn::forward_recorded)
    /// does: on the device, on any backend. A model without MoE layers records nothing.
    ///
    /// Errors once a step has been taken: the rows of the steps before would be missing.
    pub fn record_device_routing(&self, state: &mut DeviceDecode) -> Result<(), ForwardError> {
        if state.taken > 0 {
            return Err(ForwardError::Cache(format!(
                "the routing of a device decode is recorded from its first step, and {} were \
                 taken",
                state.taken
            )));
        }
        let device = self.device();
        state.routing = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(layer, l)| match &l.ffn {
                FeedForward::Dynamic(ffn) => {
                    let (num_experts, top_k) = ffn.record_layout();
                    let width = DeviceRouting::record_width(num_experts, top_k, 2);
                    Some(RoutingRows {
                        layer,
                        num_experts,
                        top_k,
                        rows: Tensor::<2>::zeros([state.steps, width], (&device, DType::F32)),
                    })
                }
                FeedForward::Dense(_) => None,
            })
            .collect();
        Ok(())
    }

    /// The context check [`device_decode`](Self::device_decode) makes, without taking a
    /// cache: `steps` steps after `start` cached positions, at rotary offset `rope_delta`, must
    /// stay within the model's context, cached positions and rotary positions both.
    pub fn check_device_decode(
        &self,
        start: usize,
        steps: usize,
        rope_delta: i64,
    ) -> Result<(), PromptError> {
        let needed = start + steps.max(1);
        let last_rope = (needed as i64 - 1 + rope_delta).max(0) as usize + 1;
        self.check_context(needed, last_rope)
    }

    /// One decode step of `state`: returns the logits of its token, `[1, vocab]`, and advances
    /// the state's step count on the device. It reads nothing back and uploads nothing, so it
    /// can be recorded as a graph and replayed (after [`DeviceDecode::feed`] in the same
    /// recording, each replay decodes the token the previous one chose).
    ///
    /// Errors once it has been called [`DeviceDecode::steps`] times: the state has no room
    /// for another position.
    pub fn decode_step(&self, state: &mut DeviceDecode) -> Result<Tensor<2>, ForwardError> {
        if state.taken >= state.steps {
            return Err(ForwardError::Cache(format!(
                "the device decode has room for {} steps and all were taken",
                state.steps
            )));
        }
        state.taken += 1;
        let LinearWeight::Tensor(table) = &self.embed_tokens else {
            return Err(ForwardError::Cache(
                "a device decode needs the embeddings as a tensor, not packed CPU rows".into(),
            ));
        };
        let d = self.config.head_dim;
        let capacity = state.capacity;
        let x = burn::tensor::module::embedding(table.clone(), state.token.clone().reshape([1, 1]));
        let row = |t: &Tensor<2>| {
            t.clone()
                .select(0, state.step.clone())
                .reshape([1, 1, 1, d])
        };
        let rope = RopeTables {
            cos: row(&state.cos),
            source: RopeSource::Device {
                sin: row(&state.sin),
                signed: row(&state.signed),
            },
        };
        let at = state.step.clone() + state.start as i64;
        let mask = state
            .positions
            .clone()
            .greater(at.clone())
            .reshape([1, 1, 1, capacity]);
        let next = state.step.clone() + 1;
        let none = AttentionMask {
            mask: None,
            causal: false,
            keep: None,
        };
        let mut kv = StepKv::At {
            layers: &mut state.kv,
            index: at,
            mask,
        };
        let mut x = x;
        let mut pending: Option<Tensor<3>> = None;
        let tracing = !state.routing.is_empty();
        let mut recorded = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let sink = tracing.then_some(RoutingSink::Device(&mut recorded));
            let (stream, y) =
                layer.forward(x, pending.take(), &rope, &mut kv, i, &none, sink, None)?;
            x = stream;
            pending = Some(y);
        }
        drop(kv);
        // each layer's row of this step, written in place at the step's row
        let step = &state.step;
        state.routing = std::mem::take(&mut state.routing)
            .into_iter()
            .map(|r| match recorded.iter().position(|(l, _)| *l == r.layer) {
                Some(p) => {
                    let (_, row) = recorded.swap_remove(p);
                    RoutingRows {
                        rows: r
                            .rows
                            .select_assign(0, step.clone(), row, IndexingUpdateOp::Assign),
                        ..r
                    }
                }
                None => r,
            })
            .collect();
        let logits = self.head(x, pending).reshape([1, self.config.vocab_size]);
        let held = std::mem::replace(&mut state.step, state.zero.clone());
        state.step = held.select_assign(0, state.zero.clone(), next, IndexingUpdateOp::Assign);
        Ok(logits)
    }
}
