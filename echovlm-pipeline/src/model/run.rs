//! The generation loop: vision tower, prefill, token-by-token decoding with sampling and
//! streaming, and the outputs.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::{DType, Int, Tensor, TensorData};
use echovlm_moe::{RoutingSummary, RoutingTrace};
use echovlm_text::{
    DecoderInput, KvCache, Positions, PromptError, Qwen2Tokenizer, rope_index_timed,
};
use echovlm_vision::preprocess::PixelValues;

use super::graph::GraphDecode;
use super::{EchoVlm, PreparedPrompt};
use crate::device_sample;
use crate::error::EchoError;
use crate::generate::{FinishReason, GenerationOptions, Sampler, TextStream, top_logits};
use crate::output::{Output, Timings};
use crate::request::Request;

/// Receives streamed text; `ControlFlow::Break` stops the generation.
pub type TextCallback<'a> = dyn FnMut(&str) -> ControlFlow<()> + 'a;

impl EchoVlm {
    /// Generates for one request.
    pub fn generate(
        &self,
        request: &Request,
        opts: &GenerationOptions,
    ) -> Result<Output, EchoError> {
        let prepared = self.prepare(request)?;
        single(self.run(vec![prepared], opts, None)?)
    }

    /// Generates for one request, calling `on_text` with every new piece of text as soon as it
    /// forms whole UTF-8 characters; returning `ControlFlow::Break` stops the generation
    /// ([`FinishReason::Cancelled`]).
    pub fn generate_stream(
        &self,
        request: &Request,
        opts: &GenerationOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Output, EchoError> {
        let prepared = self.prepare(request)?;
        single(self.run(vec![prepared], opts, Some(&mut on_text))?)
    }

    /// Generates for several requests at once (left-padded into one batch). Each output equals
    /// what the request gives alone.
    pub fn generate_batch(
        &self,
        requests: &[Request],
        opts: &GenerationOptions,
    ) -> Result<Vec<Output>, EchoError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = requests
            .iter()
            .map(|r| self.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.run(prepared, opts, None)
    }

    /// The logits of the position after the prompt (what the first generated token is chosen
    /// from), without generating: for scoring candidate answers or checking a port.
    pub fn next_token_logits(&self, prompt: &PreparedPrompt) -> Result<Vec<f32>, EchoError> {
        self.check_prepared(prompt)?;
        let ids = vec![prompt.ids.clone()];
        let prompts = std::slice::from_ref(prompt);
        let (embeds, image_grids, video_grids) = self.embed_prompts(prompts, &ids)?;
        let (positions, _) = self.positions(prompts, &ids, None, &image_grids, &video_grids)?;
        let out = self.text.forward(
            DecoderInput::new(embeds, &positions),
            &mut self.text.new_cache(),
            None,
        )?;
        read_logits(out.logits)
    }

    /// Runs prepared prompts as one batch.
    pub fn run(
        &self,
        prompts: Vec<PreparedPrompt>,
        opts: &GenerationOptions,
        on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<Vec<Output>, EchoError> {
        opts.validate()?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        self.check_run(&prompts, opts, on_text.is_some())?;
        let prefill = self.prefill(&prompts, opts.max_new_tokens, opts.trace_routing)?;
        Ok(self.decode_from(prompts, prefill, opts, on_text)?.0)
    }

    /// What [`run`](Self::run) checks before running `prompts` (at least one) with `opts`
    /// (already validated): consistent prompts, one when `streaming`, and room in the context
    /// for the longest and its tokens.
    pub(super) fn check_run(
        &self,
        prompts: &[PreparedPrompt],
        opts: &GenerationOptions,
        streaming: bool,
    ) -> Result<(), EchoError> {
        for p in prompts {
            self.check_prepared(p)?;
        }
        if streaming && prompts.len() != 1 {
            return Err(EchoError::InvalidRequest(
                "streaming takes exactly one request".into(),
            ));
        }
        let max_len = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let limit = self.text.config.max_position_embeddings;
        if max_len + opts.max_new_tokens > limit {
            return Err(PromptError::ContextTooLong {
                tokens: max_len + opts.max_new_tokens,
                max: limit,
            }
            .into());
        }
        Ok(())
    }

    /// Decodes after `prefill` (of `prompts`, checked by the caller against `opts` and the
    /// context): the outputs, and the cache with every position decoded but the last chosen
    /// token, which is the next step's input.
    pub(super) fn decode_from(
        &self,
        prompts: Vec<PreparedPrompt>,
        prefill: Prefill,
        opts: &GenerationOptions,
        mut on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<(Vec<Output>, KvCache), EchoError> {
        let b = prompts.len();
        let Prefill {
            mut cache,
            mut logits,
            deltas,
            mut traces,
            vision_ms,
            prefill_ms,
        } = prefill;

        // decode
        let t_decode = Instant::now();
        let vocab = self.text.config.vocab_size;
        let mut seqs: Vec<Sequence<'_>> = prompts
            .iter()
            .map(|p| Sequence::new(&p.ids, opts, on_text.is_some().then_some(&self.tokenizer)))
            .collect();
        // Off the CPU backend, every step after the first chooses its tokens on the device and
        // reads back only their ids; the first reads the logits (for `first_step_top_logits`).
        let on_device = !echovlm_core::backend::is_flex(&self.text.device());
        let mut device_logits: Option<Tensor<2>> = None;
        // One sequence: its steps after the warm-up replay a recorded step (a traced routing is
        // kept on the device and read at the end).
        let mut by_graph = on_device && self.decode_graphs && b == 1;
        let mut graph: Option<GraphDecode<'_>> = None;
        let mut graph_next: Option<u32> = None;
        loop {
            let chosen = match (graph_next.take(), device_logits.take()) {
                (Some(id), _) => Some(vec![id]),
                (None, Some(t)) => {
                    let mut rows: Vec<_> = seqs.iter_mut().map(|s| (s, opts)).collect();
                    Some(choose_on_device(t, &mut rows)?)
                }
                (None, None) => None,
            };
            for (r, seq) in seqs.iter_mut().enumerate() {
                if seq.finished.is_some() {
                    continue;
                }
                let delta = match &chosen {
                    Some(ids) => seq.accept_chosen(ids[r], opts)?,
                    None => seq.accept(&mut logits[r * vocab..(r + 1) * vocab], opts)?,
                };
                if let (Some(delta), Some(cb)) = (delta, on_text.as_mut())
                    && cb(&delta).is_break()
                {
                    seq.finished = Some(FinishReason::Cancelled);
                }
            }
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                for seq in seqs.iter_mut().filter(|s| s.finished.is_none()) {
                    seq.finished = Some(FinishReason::Cancelled);
                }
            }
            if seqs.iter().all(|s| s.finished.is_some()) {
                break;
            }
            if by_graph && graph.is_none() {
                let seq = &mut seqs[0];
                let rest = opts.max_new_tokens.saturating_sub(seq.generated.len());
                // a decode whose rotary positions would pass the model's context fails only
                // when it gets there (it may stop before): that one decodes step by step
                if GraphDecode::fits(&self.text, cache.len(), rest, deltas[0]) {
                    let cache = std::mem::replace(&mut cache, self.text.new_cache());
                    graph = Some(GraphDecode::new(
                        &self.text,
                        cache,
                        seq.last(),
                        deltas[0],
                        &seq.history,
                        opts,
                        rest,
                        || seq.sampler.uniform(),
                        traces.is_some(),
                    )?);
                } else {
                    by_graph = false;
                }
            }
            if let Some(decoder) = graph.as_mut() {
                graph_next = Some(decoder.next()?);
                continue;
            }
            let next: Vec<Vec<u32>> = seqs
                .iter()
                .map(|s| {
                    vec![if s.finished.is_some() {
                        self.pad_id
                    } else {
                        s.last()
                    }]
                })
                .collect();
            let live: Vec<Vec<bool>> = seqs.iter().map(|s| vec![s.finished.is_none()]).collect();
            let all_live = seqs.iter().all(|s| s.finished.is_none());
            let emb = self.text.embed(&next)?;
            let pos = Positions::decode(&deltas, cache.len(), 1);
            let out = self.text.forward(
                DecoderInput::new(emb, &pos).valid((!all_live).then_some(live.as_slice())),
                &mut cache,
                traces.as_deref_mut(),
            )?;
            if on_device {
                device_logits = Some(decoder_logits(out.logits)?.reshape([b, vocab]));
            } else {
                logits = read_logits(out.logits)?;
            }
        }
        if let Some(cb) = on_text.as_mut()
            && let Some(rest) = seqs[0].finish_text()?
        {
            let _ = cb(&rest);
        }
        if let (Some(g), Some(t)) = (&graph, traces.as_deref_mut()) {
            g.read_routing(&mut t[0])?;
        }
        let decode_ms = ms(t_decode);
        let replayed = graph.as_ref().map_or(0, |g| g.steps().replayed);

        let cache = match graph {
            Some(g) => g.into_cache()?,
            None => cache,
        };

        let mut outputs = Vec::with_capacity(b);
        for (r, (p, seq)) in prompts.into_iter().zip(seqs).enumerate() {
            let routing = traces.as_ref().map(|t| t[r].summary());
            let mut out = self.output(p, seq, vision_ms, prefill_ms, decode_ms, routing)?;
            out.timings.replayed_steps = replayed;
            outputs.push(out);
        }
        Ok((outputs, cache))
    }

    /// Runs prompts (several: left-padded into one batch) through the vision tower and the
    /// prefill, in a cache with room for `budget` more tokens per row; routing is traced when
    /// `trace` is set and the model has MoE layers.
    pub(super) fn prefill(
        &self,
        prompts: &[PreparedPrompt],
        budget: usize,
        trace: bool,
    ) -> Result<Prefill, EchoError> {
        let max_len = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let padded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let mut row = vec![self.pad_id; max_len - p.ids.len()];
                row.extend(&p.ids);
                row
            })
            .collect();
        let valid: Vec<Vec<bool>> = prompts
            .iter()
            .map(|p| {
                let mut row = vec![false; max_len - p.ids.len()];
                row.extend(std::iter::repeat_n(true, p.ids.len()));
                row
            })
            .collect();
        let any_padding = prompts.iter().any(|p| p.ids.len() != max_len);
        let mask = any_padding.then_some(valid.as_slice());

        // vision
        let t_vision = Instant::now();
        let (embeds, image_grids, video_grids) = self.embed_prompts(prompts, &padded)?;
        let vision_ms = self.vision_ms(t_vision, &image_grids, &video_grids)?;

        // prefill
        let t_prefill = Instant::now();
        let (positions, deltas) =
            self.positions(prompts, &padded, mask, &image_grids, &video_grids)?;
        let mut cache = self.text.new_cache_with_capacity(max_len + budget);
        let mut traces = self.routing_traces(trace, prompts.len());
        let out = self.text.forward(
            DecoderInput::new(embeds, &positions).valid(mask),
            &mut cache,
            traces.as_deref_mut(),
        )?;
        let logits = read_logits(out.logits)?;
        Ok(Prefill {
            cache,
            logits,
            deltas,
            traces,
            vision_ms,
            prefill_ms: ms(t_prefill),
        })
    }

    /// Milliseconds since `started` spent encoding the images and videos of these grids
    /// (none: 0); on a GPU, which runs asynchronously, after waiting for the encoder.
    pub(super) fn vision_ms(
        &self,
        started: Instant,
        image_grids: &[Grid],
        video_grids: &[Grid],
    ) -> Result<f64, EchoError> {
        if image_grids.is_empty() && video_grids.is_empty() {
            return Ok(0.0);
        }
        let device = self.text.device();
        if !echovlm_core::backend::is_flex(&device) {
            device
                .sync()
                .map_err(|e| EchoError::Device(format!("waiting for the device failed: {e:?}")))?;
        }
        Ok(ms(started))
    }

    /// An empty routing trace per row when `trace` is asked for and the model has MoE layers.
    pub(super) fn routing_traces(&self, trace: bool, rows: usize) -> Option<Vec<RoutingTrace>> {
        let has_moe = self.text.layers.iter().any(|l| l.is_moe());
        (trace && has_moe).then(|| vec![RoutingTrace::new(); rows])
    }

    /// The output of a finished sequence.
    pub(super) fn output(
        &self,
        p: PreparedPrompt,
        seq: Sequence<'_>,
        vision_ms: f64,
        prefill_ms: f64,
        decode_ms: f64,
        routing: Option<RoutingSummary>,
    ) -> Result<Output, EchoError> {
        let n = seq.generated.len();
        let timings = Timings {
            preprocess_ms: p.preprocess_ms,
            vision_ms,
            prefill_ms,
            prefill_tokens: p.ids.len(),
            decode_ms,
            generated_tokens: n,
            replayed_steps: 0,
            decode_tokens_per_s: if n > 1 && decode_ms > 0.0 {
                (n - 1) as f64 / (decode_ms / 1e3)
            } else {
                0.0
            },
        };
        Ok(Output {
            text: self.tokenizer.decode(&seq.generated, true)?,
            architecture: self.architecture,
            image_grid_thw: p.images.iter().map(|x| x.grid_thw).collect(),
            video_grid_thw: p.videos.iter().map(|x| x.grid_thw).collect(),
            prompt_token_ids: p.ids,
            generated_token_ids: seq.generated,
            finish_reason: seq.finished.unwrap_or(FinishReason::Length),
            first_step_top_logits: seq.first_top,
            timings,
            routing,
        })
    }

    /// The input embeddings of a padded batch (`ids`, one row per prompt) with every image and
    /// video encoded and injected at its placeholders, and the image and video grids in batch
    /// order.
    pub(super) fn embed_prompts(
        &self,
        prompts: &[PreparedPrompt],
        ids: &[Vec<u32>],
    ) -> Result<(Tensor<3>, Vec<Grid>, Vec<Grid>), EchoError> {
        let image_grids: Vec<Grid> = prompts
            .iter()
            .flat_map(|p| p.images.iter().map(|x| x.grid_thw))
            .collect();
        let video_grids: Vec<[usize; 3]> = prompts
            .iter()
            .flat_map(|p| p.videos.iter().map(|x| x.grid_thw))
            .collect();
        let image_embeds = self.encode(prompts.iter().flat_map(|p| p.images.iter()))?;
        let video_embeds = self.encode(prompts.iter().flat_map(|p| p.videos.iter()))?;
        let embeds = self.merge_embeddings(ids, image_embeds, video_embeds)?;
        Ok((embeds, image_grids, video_grids))
    }

    /// M-RoPE positions of a padded batch (and each row's decoding offset), videos placed on
    /// the time axis of this architecture at their prompts' frame rates.
    pub(super) fn positions(
        &self,
        prompts: &[PreparedPrompt],
        ids: &[Vec<u32>],
        mask: Option<&[Vec<bool>]>,
        image_grids: &[[usize; 3]],
        video_grids: &[[usize; 3]],
    ) -> Result<(Positions, Vec<i64>), EchoError> {
        let fps: Vec<f64> = prompts
            .iter()
            .flat_map(|p| p.video_fps.iter().copied())
            .collect();
        let seconds = self.seconds_per_grid(&fps);
        Ok(rope_index_timed(
            ids,
            mask,
            image_grids,
            video_grids,
            &self.vision_tokens,
            self.merge_size(),
            self.video_time(&seconds),
        )?)
    }

    /// Encodes images (or videos) with the vision tower, all in one forward pass.
    pub(super) fn encode<'a>(
        &self,
        items: impl Iterator<Item = &'a PixelValues>,
    ) -> Result<Option<Tensor<2>>, EchoError> {
        let items: Vec<&PixelValues> = items.collect();
        if items.is_empty() {
            return Ok(None);
        }
        let vision = self.vision.as_ref().ok_or(EchoError::NoVision)?;
        let rows: usize = items.iter().map(|p| p.rows).sum();
        let cols = items[0].cols();
        let mut data = Vec::with_capacity(rows * cols);
        for p in &items {
            data.extend_from_slice(&p.data);
        }
        let grids: Vec<[usize; 3]> = items.iter().map(|p| p.grid_thw).collect();
        let pixels = Tensor::<2>::from_data(
            TensorData::new(data, [rows, cols]),
            (&self.device(), DType::F32),
        );
        Ok(Some(vision.forward(pixels, &grids)?))
    }

    /// Token embeddings with every placeholder row replaced by the next visual feature row.
    pub(super) fn merge_embeddings(
        &self,
        ids: &[Vec<u32>],
        images: Option<Tensor<2>>,
        videos: Option<Tensor<2>>,
    ) -> Result<Tensor<3>, EchoError> {
        let text = self.text.embed(ids)?;
        if images.is_none() && videos.is_none() {
            return Ok(text);
        }
        let [b, s, h] = text.dims();
        let (image_id, video_id) = (self.image_id, self.video_id);
        let n_img = images.as_ref().map_or(0, |t| t.dims()[0]);
        let n_vid = videos.as_ref().map_or(0, |t| t.dims()[0]);
        let (mut i, mut v) = (0usize, 0usize);
        let mut index = Vec::with_capacity(b * s);
        for (p, &t) in ids.iter().flatten().enumerate() {
            if t == image_id {
                index.push((b * s + i) as i64);
                i += 1;
            } else if t == video_id {
                index.push((b * s + n_img + v) as i64);
                v += 1;
            } else {
                index.push(p as i64);
            }
        }
        if i != n_img {
            return Err(PromptError::FeatureCountMismatch {
                placeholders: i,
                features: n_img,
            }
            .into());
        }
        if v != n_vid {
            return Err(PromptError::FeatureCountMismatch {
                placeholders: v,
                features: n_vid,
            }
            .into());
        }
        let mut parts = vec![text.reshape([b * s, h])];
        parts.extend(images);
        parts.extend(videos);
        let source = Tensor::cat(parts, 0);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(index, [b * s]), &self.device());
        Ok(source.select(0, idx).reshape([b, s, h]))
    }
}

/// What a prefill leaves: the cache, the last-position logits of every row (`[rows × vocab]`),
/// each row's decoding offset, the routing traces when asked for, and the times taken.
pub(super) struct Prefill {
    pub(super) cache: KvCache,
    pub(super) logits: Vec<f32>,
    pub(super) deltas: Vec<i64>,
    pub(super) traces: Option<Vec<RoutingTrace>>,
    pub(super) vision_ms: f64,
    pub(super) prefill_ms: f64,
}

/// The decoding state of one sequence: its sampler, the tokens so far, why it finished, and
/// (when its text is streamed) the text emitted so far.
pub(super) struct Sequence<'t> {
    pub(super) sampler: Sampler,
    pub(super) history: Vec<u32>,
    pub(super) generated: Vec<u32>,
    pub(super) finished: Option<FinishReason>,
    first_top: Vec<(u32, f32)>,
    stream: Option<TextStream<'t>>,
}

impl<'t> Sequence<'t> {
    /// A sequence after `prompt`; its text is streamed when a tokenizer is given.
    pub(super) fn new(
        prompt: &[u32],
        opts: &GenerationOptions,
        stream: Option<&'t Qwen2Tokenizer>,
    ) -> Self {
        Self {
            sampler: Sampler::new(opts),
            history: prompt.to_vec(),
            generated: Vec::new(),
            finished: None,
            first_top: Vec::new(),
            stream: stream.map(TextStream::new),
        }
    }

    /// Chooses the next token from this sequence's `logits` (changed in place by the
    /// sampler), notes whether that ends the sequence, and returns the text it completes when
    /// streaming.
    pub(super) fn accept(
        &mut self,
        logits: &mut [f32],
        opts: &GenerationOptions,
    ) -> Result<Option<String>, EchoError> {
        if self.generated.is_empty() {
            self.first_top = top_logits(logits, 20);
        }
        let tok = self.sampler.next(logits, &self.history);
        self.accept_chosen(tok, opts)
    }

    /// Takes `tok` (chosen elsewhere, with this sequence's sampler's random stream) as the
    /// next token: notes whether that ends the sequence, and returns the text it completes
    /// when streaming.
    pub(super) fn accept_chosen(
        &mut self,
        tok: u32,
        opts: &GenerationOptions,
    ) -> Result<Option<String>, EchoError> {
        self.history.push(tok);
        self.generated.push(tok);
        if !opts.ignore_eos && opts.stop_token_ids.contains(&tok) {
            self.finished = Some(FinishReason::Stop);
        } else if self.generated.len() >= opts.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        match self.stream.as_mut() {
            Some(stream) => stream.push(tok),
            None => Ok(None),
        }
    }

    /// The last token chosen (the next decode step's input).
    pub(super) fn last(&self) -> u32 {
        self.generated.last().copied().unwrap_or_default()
    }

    /// The streamed text not yet returned (an incomplete tail included).
    pub(super) fn finish_text(&mut self) -> Result<Option<String>, EchoError> {
        match self.stream.as_mut() {
            Some(stream) => stream.finish(),
            None => Ok(None),
        }
    }
}

/// `(t, h, w)` patches of one image or video.
type Grid = [usize; 3];

/// The one output of a one-request run.
fn single(mut outputs: Vec<Output>) -> Result<Output, EchoError> {
    match (outputs.pop(), outputs.is_empty()) {
        (Some(out), true) => Ok(out),
        _ => Err(EchoError::Device(
            "a run of one request did not return one output".into(),
        )),
    }
}

/// Chooses the next token of every row of `logits` (`[rows, vocab]`) on their device, each
/// row with its own options, and reads back only the ids: rows whose processors agree share one
/// pass, and the ids of every pass come back in one read. Live rows draw their uniform number
/// from their own random stream, as the host sampler would.
pub(super) fn choose_on_device(
    logits: Tensor<2>,
    rows: &mut [(&mut Sequence<'_>, &GenerationOptions)],
) -> Result<Vec<u32>, EchoError> {
    let b = rows.len();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for r in 0..b {
        match groups
            .iter_mut()
            .find(|g| device_sample::same_processors(rows[g[0]].1, rows[r].1))
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let device = logits.device();
    let mut parts = Vec::with_capacity(groups.len());
    for members in &groups {
        let part = if members.len() == b {
            logits.clone()
        } else {
            let idx: Vec<i64> = members.iter().map(|&r| r as i64).collect();
            logits.clone().select(
                0,
                echovlm_core::host::int_tensor(idx, [members.len()], &device),
            )
        };
        let uniforms: Vec<f64> = members
            .iter()
            .map(|&r| {
                let (seq, opts) = &mut rows[r];
                match opts.do_sample && seq.finished.is_none() {
                    true => seq.sampler.uniform(),
                    false => 0.0,
                }
            })
            .collect();
        let histories: Vec<&[u32]> = members
            .iter()
            .map(|&r| rows[r].0.history.as_slice())
            .collect();
        parts.push(device_sample::choose(
            rows[members[0]].1,
            part,
            &histories,
            &uniforms,
        ));
    }
    let ids = echovlm_core::host::to_i64_vec(Tensor::cat(parts, 0)).map_err(|e| {
        EchoError::Device(format!(
            "reading the chosen tokens back failed: {}",
            e.reason
        ))
    })?;
    let mut out = vec![0u32; b];
    for (&r, id) in groups.iter().flatten().zip(ids) {
        out[r] = id as u32;
    }
    Ok(out)
}

/// The decoder's logits, which a decoding forward pass always asks for.
pub(super) fn decoder_logits(logits: Option<Tensor<3>>) -> Result<Tensor<3>, EchoError> {
    logits.ok_or_else(|| EchoError::Device("the decoder returned no logits".into()))
}

/// Reads the decoder's logits back to the host.
pub(super) fn read_logits(logits: Option<Tensor<3>>) -> Result<Vec<f32>, EchoError> {
    echovlm_core::host::to_f32_vec(decoder_logits(logits)?)
        .map_err(|e| EchoError::Device(format!("reading the logits back failed: {}", e.reason)))
}

pub(super) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
