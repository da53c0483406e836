//! Decoding one sequence by replaying a recorded decode step.
//!
//! A decode step whose inputs all live on the device ([`DeviceDecode`]) computes every step with
//! the same launches on the same buffers, so a GPU backend can record it once as a graph and
//! replay it: the replay skips Burn's fusion bookkeeping and the launch path of every kernel
//! (on CUDA and HIP the whole step is one dispatch; wgpu re-encodes the recorded dispatches).
//! The recorded step also chooses the next token and feeds it to the step after, so a step
//! reads back only that token: greedy or sampled, with the repetition penalty's mask kept on
//! the device, and for sampling the uniform numbers of every step drawn beforehand from the
//! sequence's random stream (in the order the steps run one by one would draw them) and
//! uploaded once, each step selecting its own by the device's step count.

use burn::backend::{Backend, BackendGraph, Dispatch};
use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor};
use echovlm_moe::RoutingTrace;
use echovlm_text::{DeviceDecode, KvCache, TextModel};

use crate::device_sample::{self, Draws};
use crate::error::EchoError;
use crate::generate::GenerationOptions;

/// Steps run one by one before the recording: the first ones build and tune Burn's fused
/// kernels and allocate the buffers of the steady state, so that the recorded step allocates
/// nothing (Burn's own `capture` helper warms up as many times).
pub(super) const WARMUP_STEPS: usize = 3;

/// How a [`GraphDecode`] has run its steps so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct GraphSteps {
    /// Steps run one by one (the warm-up, or every step where no graph was recorded).
    pub(super) eager: usize,
    /// Steps run by replaying the recorded graph.
    pub(super) replayed: usize,
}

/// The decode of one sequence by a recorded step.
pub(super) struct GraphDecode<'m> {
    // dropped first: the graph replays against the buffers of the fields below
    graph: Option<BackendGraph<Dispatch>>,
    /// The token the recorded step chooses, overwritten by every replay.
    out: Option<Tensor<1, Int>>,
    state: DeviceDecode,
    /// `[1, vocab]`, 1 for every token of the sequence so far (repetition penalty on).
    seen: Option<Tensor<2>>,
    /// `[1, 1]` of 1.
    one: Tensor<2>,
    /// Sampling: `[room, 1]`, the uniform number each step draws with, and the token order.
    draws: Option<Draws>,
    text: &'m TextModel,
    opts: GenerationOptions,
    device: Device,
    prepared: bool,
    steps: GraphSteps,
}

impl<'m> GraphDecode<'m> {
    /// Takes over `cache` (the prefilled prompt) to decode from `token` (the token chosen from
    /// the prompt's logits), with room for `steps` more; `history` is the sequence so far
    /// (prompt and `token`), `delta` its rotary offset. When `opts` samples, `uniform` draws
    /// the number of each step to come, in order, from the sequence's random stream (one per
    /// step of room, drawn here). With `trace`, each step records the MoE routing on the device
    /// ([`read_routing`](Self::read_routing) reads it at the end).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        text: &'m TextModel,
        cache: KvCache,
        token: u32,
        delta: i64,
        history: &[u32],
        opts: &GenerationOptions,
        steps: usize,
        uniform: impl FnMut() -> f64,
        trace: bool,
    ) -> Result<Self, EchoError> {
        let mut state = text.device_decode(cache, token, delta, Self::room(steps))?;
        if trace {
            text.record_device_routing(&mut state)?;
        }
        let device = text.device();
        let vocab = text.config.vocab_size;
        let seen = (opts.repetition_penalty != 1.0)
            .then(|| device_sample::seen_mask(&[history], 1, vocab, &device));
        let draws = opts.do_sample.then(|| {
            let u: Vec<f64> = std::iter::repeat_with(uniform)
                .take(Self::room(steps))
                .collect();
            Draws::upload(&u, vocab, &device)
        });
        // allocations from here on go where a recording can keep them (a backend without
        // graphs answers no and decodes step by step); not worth it when there are no steps
        // left to replay after the warm-up
        let prepared =
            steps > WARMUP_STEPS + 1 && Dispatch::graph_prepare(device.as_dispatch()).is_ok();
        Ok(Self {
            graph: None,
            out: None,
            state,
            seen,
            one: Tensor::<2>::ones([1, 1], (&device, DType::F32)),
            draws,
            text,
            opts: opts.clone(),
            device,
            prepared,
            steps: GraphSteps::default(),
        })
    }

    /// The steps a decode of `steps` needs room for: one more, as recording a step counts as
    /// one ([`DeviceDecode::taken`]).
    fn room(steps: usize) -> usize {
        steps + 1
    }

    /// Whether a decode of `steps` after `cached` positions, at rotary offset `delta`, stays
    /// within the model's context ([`TextModel::check_device_decode`]), so that
    /// [`new`](Self::new) takes it.
    pub(super) fn fits(text: &TextModel, cached: usize, steps: usize, delta: i64) -> bool {
        text.check_device_decode(cached, Self::room(steps), delta)
            .is_ok()
    }

    /// One step's launches: the decoder, the choice, and the writes that feed the next step.
    fn run_step(&mut self) -> Result<Tensor<1, Int>, EchoError> {
        let logits = self.text.decode_step(&mut self.state)?;
        let (state, draws) = (&self.state, self.draws.as_ref());
        let next = device_sample::choose_seen(&self.opts, logits, self.seen.clone(), |device| {
            match draws {
                // the step count after the step is its number plus one
                Some(Draws { uniforms, order }) => Draws {
                    uniforms: uniforms.clone().select(0, state.step_count() - 1),
                    order: order.clone(),
                },
                // not reached (`new` draws whenever `opts` samples); an upload here would
                // only make a recording fail, never choose wrongly
                None => Draws::upload(&[0.0], self.text.config.vocab_size, device),
            }
        });
        if let Some(seen) = self.seen.take() {
            let one = self.one.clone();
            self.seen = Some(seen.select_assign(1, next.clone(), one, IndexingUpdateOp::Assign));
        }
        self.state.feed(next.clone());
        Ok(next)
    }

    /// Decodes the next token and reads it back.
    pub(super) fn next(&mut self) -> Result<u32, EchoError> {
        let chosen = match (&self.graph, &self.out) {
            (Some(graph), Some(out)) => {
                // Safety: every buffer the recording touched belongs to `self` (the state, the
                // mask, the output) or to the model it borrows, so all outlive the graph, which
                // is dropped first; and everything runs on this thread's stream.
                unsafe { Dispatch::graph_replay(self.device.as_dispatch(), graph) }.map_err(
                    |e| EchoError::Device(format!("replaying the decode step failed: {e:?}")),
                )?;
                self.steps.replayed += 1;
                out.clone()
            }
            _ => {
                let next = self.run_step()?;
                self.steps.eager += 1;
                next
            }
        };
        let id = echovlm_core::host::to_i64_vec(chosen).map_err(|e| {
            EchoError::Device(format!(
                "reading the chosen token back failed: {}",
                e.reason
            ))
        })?;
        if self.graph.is_none() && self.prepared && self.steps.eager == WARMUP_STEPS {
            self.record()?;
        }
        match id.as_slice() {
            [id] => Ok(*id as u32),
            _ => Err(EchoError::Device(format!(
                "the decode step chose {} tokens for one sequence",
                id.len()
            ))),
        }
    }

    /// Records the next step as a graph (without running it). A backend that cannot record
    /// says so before anything is recorded, and the decode goes on step by step.
    fn record(&mut self) -> Result<(), EchoError> {
        let device = self.device.clone();
        let dispatch = device.as_dispatch();
        if Dispatch::graph_start_capture(dispatch).is_err() {
            self.prepared = false;
            return Ok(());
        }
        let out = self.run_step();
        let graph = Dispatch::graph_stop_capture(dispatch);
        match (out, graph) {
            (Ok(out), Ok(graph)) => {
                self.out = Some(out);
                self.graph = Some(graph);
                Ok(())
            }
            (Err(e), _) => Err(e),
            // the buffers the recording wrote are marked failed: the decode cannot go on
            (Ok(_), Err(e)) => Err(EchoError::Device(format!(
                "recording the decode step as a graph failed: {e:?} (decode_graphs(false) in \
                 LoadOptions decodes step by step)"
            ))),
        }
    }

    /// Ends the decode here and hands back its keys and values as a cache of the positions
    /// decoded so far (the recorded graph dropped first), to go on step by step through the
    /// cache. The last token [`next`](Self::next) returned is not in it: it is the next
    /// step's input, as after a step through the cache.
    pub(super) fn into_cache(mut self) -> Result<KvCache, EchoError> {
        if self.graph.take().is_some() {
            // the recording closed the prepared stream: nothing for `drop` to close
            self.prepared = false;
        }
        self.out = None;
        let ran = self.steps.eager + self.steps.replayed;
        Ok(self.state.take_cache(ran)?)
    }

    /// Positions cached so far: the prompt's and those of the steps that ran.
    pub(super) fn cached(&self) -> usize {
        self.state.start() + self.steps.eager + self.steps.replayed
    }

    /// How the steps have run so far.
    pub(super) fn steps(&self) -> GraphSteps {
        self.steps
    }

    /// Appends the routing the steps so far recorded to `trace` (one read-back; nothing when
    /// made without `trace`).
    pub(super) fn read_routing(&self, trace: &mut RoutingTrace) -> Result<(), EchoError> {
        let ran = self.steps.eager + self.steps.replayed;
        self.state.read_routing(ran, trace).map_err(|e| {
            EchoError::Device(format!(
                "reading the decode's routing back failed: {}",
                e.reason
            ))
        })
    }
}

impl Drop for GraphDecode<'_> {
    fn drop(&mut self) {
        // A decode that ended before its recording leaves the stream prepared for one; closing
        // it returns the allocations to the ordinary pools and lets the next decode record.
        if self.prepared && self.graph.is_none() {
            let _ = Dispatch::graph_stop_capture(self.device.as_dispatch());
        }
    }
}
