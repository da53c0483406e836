//! Continuous batching: sequences join a running batch and leave it between decode steps.

use std::time::Instant;

use echovlm_moe::RoutingTrace;
use echovlm_text::{DecoderInput, KvCache, Positions, PromptError};

use super::graph::{GraphDecode, WARMUP_STEPS};
use super::run::{Prefill, Sequence, choose_on_device, decoder_logits, ms, read_logits};
use super::{EchoVlm, PreparedPrompt};
use crate::error::EchoError;
use crate::generate::{FinishReason, GenerationOptions};
use crate::output::Output;

/// Identifies a sequence of a [`ContinuousBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u64);

/// What a [`ContinuousBatch`] produced for one sequence.
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchEvent {
    /// New text of a sequence, in whole UTF-8 characters (the concatenated pieces are the
    /// text a sequence generated, special tokens skipped).
    Text {
        /// The sequence.
        id: SeqId,
        /// The new text.
        text: String,
    },
    /// A sequence finished and left the batch (after its last [`BatchEvent::Text`]).
    Finished {
        /// The sequence.
        id: SeqId,
        /// Its output, as [`EchoVlm::generate`] gives it; `timings.decode_ms` is the wall time
        /// from joining to leaving, shared with the sequences it ran beside.
        output: Box<Output>,
    },
}

/// A batch that sequences join and leave between decode steps (continuous batching), for a
/// server that keeps one model busy with requests arriving at any time.
///
/// [`add`](Self::add) runs a prompt's vision tower and prefill on its own and puts the
/// sequence in the batch; each [`step`](Self::step) decodes one token for every sequence in
/// one forward pass; a sequence leaves as soon as it finishes (a stop token, its token budget,
/// its [`CancelToken`](crate::CancelToken), or [`finish`](Self::finish)). Every sequence keeps
/// its own settings (sampling, seed, token budget, stop tokens, routing trace), and its tokens
/// are those it gets alone: the key/value cache keeps each sequence's positions right-aligned
/// with padding in front, which attention masks out, and drops the padding every row shares
/// when a long sequence leaves.
///
/// Off the CPU backend, with decode graphs on ([`EchoVlm::decode_graphs`]), a sequence that
/// runs alone (with more than a few tokens to go) decodes as [`EchoVlm::generate`] does: by
/// replaying a recorded step, its random numbers drawn from its own stream as step by step.
/// When another sequence joins, or it ends, its keys and values go back to the batch's cache
/// and decoding goes on step by step; its tokens are the same either way.
///
/// ```no_run
/// # use echovlm_pipeline::{BatchEvent, ContinuousBatch, EchoVlm, LoadOptions, Request};
/// # fn main() -> Result<(), echovlm_pipeline::EchoError> {
/// let model = EchoVlm::load("fixtures/models/echovlm-demo", &LoadOptions::default())?;
/// let mut batch = ContinuousBatch::new(&model);
/// let opts = model.default_generation().max_new_tokens(64);
/// let (first, _) = batch.add(model.prepare(&Request::new("Describe the image."))?, opts.clone())?;
/// let mut events = batch.step()?;
/// // a second request joins the running batch
/// batch.add(model.prepare(&Request::new("Any lesion?"))?, opts)?;
/// while !batch.is_empty() {
///     for event in batch.step()? {
///         if let BatchEvent::Finished { id, output } = event {
///             println!("{id:?}: {}", output.text);
///         }
///     }
/// }
/// # let _ = (first, &mut events);
/// # Ok(())
/// # }
/// ```
pub struct ContinuousBatch<'m> {
    model: &'m EchoVlm,
    cache: KvCache,
    rows: Vec<Row<'m>>,
    /// Per row: decoding position = `cache.len() + delta`.
    deltas: Vec<i64>,
    next_id: u64,
    steps: u64,
    /// The decode of the one sequence running alone by a recorded step, holding its keys and
    /// values meanwhile (`cache` is then empty).
    lone: Option<GraphDecode<'m>>,
}

impl std::fmt::Debug for ContinuousBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousBatch")
            .field("sequences", &self.ids())
            .field("cached_positions", &self.cached_positions())
            .field("replaying", &self.lone.is_some())
            .field("steps", &self.steps)
            .finish()
    }
}

/// One sequence of the batch.
struct Row<'m> {
    id: SeqId,
    prompt: PreparedPrompt,
    opts: GenerationOptions,
    seq: Sequence<'m>,
    trace: Option<RoutingTrace>,
    vision_ms: f64,
    prefill_ms: f64,
    joined: Instant,
    /// Decode steps run by replaying a recorded step.
    replayed: usize,
}

impl<'m> ContinuousBatch<'m> {
    /// An empty batch on `model`.
    pub fn new(model: &'m EchoVlm) -> Self {
        Self {
            model,
            cache: model.text.new_cache(),
            rows: Vec::new(),
            deltas: Vec::new(),
            next_id: 0,
            steps: 0,
            lone: None,
        }
    }

    /// Sequences in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no sequence is running.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The sequences running, in batch order.
    pub fn ids(&self) -> Vec<SeqId> {
        self.rows.iter().map(|r| r.id).collect()
    }

    /// Decode steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Positions each row of the key/value cache holds (the longest sequence's length, the
    /// others padded in front).
    pub fn cached_positions(&self) -> usize {
        match &self.lone {
            Some(lone) => lone.cached(),
            None => self.cache.len(),
        }
    }

    /// Checks that a request can join: valid settings, a consistent prompt, and room for its
    /// tokens in the model's context. [`add`](Self::add) and [`add_all`](Self::add_all) check
    /// the same; this lets a caller refuse one bad request before adding several together.
    pub fn check(
        &self,
        prompt: &PreparedPrompt,
        opts: &GenerationOptions,
    ) -> Result<(), EchoError> {
        opts.validate()?;
        self.model.check_prepared(prompt)?;
        let limit = self.model.text.config.max_position_embeddings;
        if prompt.ids.len() + opts.max_new_tokens > limit {
            return Err(PromptError::ContextTooLong {
                tokens: prompt.ids.len() + opts.max_new_tokens,
                max: limit,
            }
            .into());
        }
        Ok(())
    }

    /// Runs `prompt`'s vision tower and prefill, chooses its first token, and adds the
    /// sequence to the batch; returns its id and its first events (a
    /// [`BatchEvent::Finished`] among them when the first token already ends it, in which case
    /// it does not join). The running sequences wait meanwhile.
    pub fn add(
        &mut self,
        prompt: PreparedPrompt,
        opts: GenerationOptions,
    ) -> Result<(SeqId, Vec<BatchEvent>), EchoError> {
        self.add_all(vec![(prompt, opts)])?
            .pop()
            .ok_or_else(|| EchoError::Device("a request added no sequence".into()))
    }

    /// Adds several requests at once: their prompts run through the vision tower and the
    /// prefill together as one left-padded batch (cheaper than one by one), then each joins
    /// as with [`add`](Self::add). Returns each request's id and first events, in order. When
    /// any request fails [`check`](Self::check), none is added.
    pub fn add_all(
        &mut self,
        requests: Vec<(PreparedPrompt, GenerationOptions)>,
    ) -> Result<Vec<(SeqId, Vec<BatchEvent>)>, EchoError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for (prompt, opts) in &requests {
            self.check(prompt, opts)?;
        }
        // the running sequence goes on step by step beside the new ones
        self.end_lone()?;
        let model = self.model;
        let (prompts, opts): (Vec<PreparedPrompt>, Vec<GenerationOptions>) =
            requests.into_iter().unzip();
        let budget = opts.iter().map(|o| o.max_new_tokens).max().unwrap_or(0);
        let tracing = opts.iter().any(|o| o.trace_routing);
        let Prefill {
            mut cache,
            mut logits,
            deltas,
            traces,
            vision_ms,
            prefill_ms,
        } = model.prefill(&prompts, budget, tracing)?;

        let vocab = model.text.config.vocab_size;
        let mut added = Vec::with_capacity(prompts.len());
        let mut joining = Vec::new();
        let mut rows = Vec::new();
        let traces = traces.map(Vec::into_iter);
        let mut traces = traces.into_iter().flatten();
        for (r, (prompt, opts)) in prompts.into_iter().zip(opts).enumerate() {
            let id = SeqId(self.next_id);
            self.next_id += 1;
            let trace = traces.next().filter(|_| opts.trace_routing);
            let mut seq = Sequence::new(&prompt.ids, &opts, Some(&model.tokenizer));
            let mut events = Vec::new();
            if let Some(text) = seq.accept(&mut logits[r * vocab..(r + 1) * vocab], &opts)? {
                events.push(BatchEvent::Text { id, text });
            }
            let mut row = Row {
                id,
                prompt,
                opts,
                seq,
                trace,
                vision_ms,
                prefill_ms,
                joined: Instant::now(),
                replayed: 0,
            };
            if row.seq.finished.is_none() && row.cancelled() {
                row.seq.finished = Some(FinishReason::Cancelled);
            }
            if row.seq.finished.is_some() {
                events.extend(self.leave(row)?);
            } else {
                joining.push(r);
                rows.push((row, deltas[r]));
            }
            added.push((id, events));
        }
        if rows.is_empty() {
            return Ok(added);
        }
        // the new rows without those that already finished, and without the padding they
        // all share
        cache.retain_rows(&joining)?;
        let shared = cache.leading_padding();
        cache.trim_front(shared)?;
        let (pad_rows, pad_new) = self.cache.append_rows(cache)?;
        for d in &mut self.deltas {
            *d -= pad_rows as i64;
        }
        for (row, delta) in rows {
            self.deltas.push(delta + shared as i64 - pad_new as i64);
            self.rows.push(row);
        }
        Ok(added)
    }

    /// Decodes one token for every running sequence in one forward pass; sequences whose
    /// [`CancelToken`](crate::CancelToken) fired leave first. Returns the new text and the
    /// sequences that finished, which have left the batch. An error (which a validated
    /// request does not cause) leaves the running sequences unusable: [`clear`](Self::clear)
    /// the batch and answer them with it.
    pub fn step(&mut self) -> Result<Vec<BatchEvent>, EchoError> {
        let mut events = Vec::new();
        let cancelled: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.rows[r].cancelled())
            .collect();
        for &r in &cancelled {
            self.rows[r].seq.finished = Some(FinishReason::Cancelled);
        }
        events.extend(self.remove_finished()?);
        if self.rows.is_empty() {
            return Ok(events);
        }
        if self.lone.is_none() {
            self.start_lone()?;
        }
        if let Some(lone) = self.lone.as_mut() {
            let id = lone.next()?;
            self.steps += 1;
            let row = &mut self.rows[0];
            if row.opts.do_sample {
                // the number the recorded step drew, drawn here too to keep the stream in step
                row.seq.sampler.uniform();
            }
            if let Some(text) = row.seq.accept_chosen(id, &row.opts)? {
                events.push(BatchEvent::Text { id: row.id, text });
            }
            events.extend(self.remove_finished()?);
            return Ok(events);
        }
        let model = self.model;
        let next: Vec<Vec<u32>> = self.rows.iter().map(|r| vec![r.seq.last()]).collect();
        let emb = model.text.embed(&next)?;
        let pos = Positions::decode(&self.deltas, self.cache.len(), 1);
        let tracing = self.rows.iter().any(|r| r.trace.is_some());
        let mut traces: Option<Vec<RoutingTrace>> = tracing.then(|| {
            self.rows
                .iter_mut()
                .map(|r| r.trace.take().unwrap_or_else(RoutingTrace::new))
                .collect()
        });
        let out = model.text.forward(
            DecoderInput::new(emb, &pos),
            &mut self.cache,
            traces.as_deref_mut(),
        );
        if let Some(traces) = traces {
            for (row, t) in self.rows.iter_mut().zip(traces) {
                if row.opts.trace_routing {
                    row.trace = Some(t);
                }
            }
        }
        let out = out?;
        self.steps += 1;
        let vocab = model.text.config.vocab_size;
        if echovlm_core::backend::is_flex(&model.text.device()) {
            let mut logits = read_logits(out.logits)?;
            for (r, row) in self.rows.iter_mut().enumerate() {
                let text = row
                    .seq
                    .accept(&mut logits[r * vocab..(r + 1) * vocab], &row.opts)?;
                if let Some(text) = text {
                    events.push(BatchEvent::Text { id: row.id, text });
                }
            }
        } else {
            // on a GPU the tokens are chosen there: one read-back of the ids per step
            let logits = decoder_logits(out.logits)?;
            let b = self.rows.len();
            let mut rows: Vec<_> = self
                .rows
                .iter_mut()
                .map(|row| (&mut row.seq, &row.opts))
                .collect();
            let ids = choose_on_device(logits.reshape([b, vocab]), &mut rows)?;
            for (row, id) in self.rows.iter_mut().zip(ids) {
                if let Some(text) = row.seq.accept_chosen(id, &row.opts)? {
                    events.push(BatchEvent::Text { id: row.id, text });
                }
            }
        }
        events.extend(self.remove_finished()?);
        Ok(events)
    }

    /// Ends sequence `id` now ([`FinishReason::Cancelled`]), e.g. when its client found a stop
    /// string or went away; returns its last events (its remaining text, then
    /// [`BatchEvent::Finished`]), or nothing when `id` is not running.
    pub fn finish(&mut self, id: SeqId) -> Result<Vec<BatchEvent>, EchoError> {
        match self.rows.iter_mut().find(|r| r.id == id) {
            Some(row) => {
                row.seq.finished = Some(FinishReason::Cancelled);
                self.remove_finished()
            }
            None => Ok(Vec::new()),
        }
    }

    /// Drops every sequence without output (after an error left the batch unusable) and
    /// returns their ids.
    pub fn clear(&mut self) -> Vec<SeqId> {
        let ids = self.ids();
        self.lone = None;
        self.rows.clear();
        self.deltas.clear();
        self.cache.clear();
        ids
    }

    /// Moves the finished rows out of the batch (cache rows included), then drops the cache
    /// positions that are padding for every remaining row.
    fn remove_finished(&mut self) -> Result<Vec<BatchEvent>, EchoError> {
        if self.rows.iter().all(|r| r.seq.finished.is_none()) {
            return Ok(Vec::new());
        }
        self.end_lone()?;
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.rows[r].seq.finished.is_none())
            .collect();
        self.cache.retain_rows(&keep)?;
        let rows = std::mem::take(&mut self.rows);
        let deltas = std::mem::take(&mut self.deltas);
        let mut left = Vec::new();
        for (row, delta) in rows.into_iter().zip(deltas) {
            if row.seq.finished.is_none() {
                self.rows.push(row);
                self.deltas.push(delta);
            } else {
                left.push(row);
            }
        }
        let pad = self.cache.leading_padding();
        self.cache.trim_front(pad)?;
        for d in &mut self.deltas {
            *d += pad as i64;
        }
        let mut events = Vec::new();
        for row in left {
            events.extend(self.leave(row)?);
        }
        Ok(events)
    }

    /// Starts decoding the one running sequence by a recorded step, where that pays: off the
    /// CPU backend with decode graphs on, more than the warm-up's steps to go, a cache of one
    /// unpadded row, and every position within the model's context.
    fn start_lone(&mut self) -> Result<(), EchoError> {
        let model = self.model;
        let [row] = self.rows.as_mut_slice() else {
            return Ok(());
        };
        let rest = row
            .opts
            .max_new_tokens
            .saturating_sub(row.seq.generated.len());
        if !model.decode_graphs
            || echovlm_core::backend::is_flex(&model.text.device())
            || rest <= WARMUP_STEPS + 1
            || !self.cache.is_one_unpadded_row()
            || !GraphDecode::fits(&model.text, self.cache.len(), rest, self.deltas[0])
        {
            return Ok(());
        }
        let cache = std::mem::replace(&mut self.cache, model.text.new_cache());
        // the numbers of the steps to come, drawn from a copy of the sequence's stream: the
        // sequence draws each again as its step runs, so that it stays where a step-by-step
        // decode would leave it should the decode go back to the batch
        let mut stream = row.seq.sampler.clone();
        self.lone = Some(GraphDecode::new(
            &model.text,
            cache,
            row.seq.last(),
            self.deltas[0],
            &row.seq.history,
            &row.opts,
            rest,
            || stream.uniform(),
            row.trace.is_some(),
        )?);
        Ok(())
    }

    /// Ends the lone sequence's decode by a recorded step: its keys and values go back to the
    /// cache, and the routing its steps recorded to its trace.
    fn end_lone(&mut self) -> Result<(), EchoError> {
        let Some(lone) = self.lone.take() else {
            return Ok(());
        };
        if let Some(row) = self.rows.first_mut() {
            row.replayed += lone.steps().replayed;
            if let Some(trace) = row.trace.as_mut() {
                lone.read_routing(trace)?;
            }
        }
        self.cache = lone.into_cache()?;
        Ok(())
    }

    /// The last events of a row that left.
    fn leave(&self, mut row: Row<'m>) -> Result<Vec<BatchEvent>, EchoError> {
        let mut events = Vec::new();
        if let Some(text) = row.seq.finish_text()? {
            events.push(BatchEvent::Text { id: row.id, text });
        }
        let routing = row.trace.as_ref().map(RoutingTrace::summary);
        let mut output = self.model.output(
            row.prompt,
            row.seq,
            row.vision_ms,
            row.prefill_ms,
            ms(row.joined),
            routing,
        )?;
        output.timings.replayed_steps = row.replayed;
        events.push(BatchEvent::Finished {
            id: row.id,
            output: Box::new(output),
        });
        Ok(events)
    }
}

impl Row<'_> {
    fn cancelled(&self) -> bool {
        self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }
}
