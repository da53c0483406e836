//! Generation settings, the logits processors (with transformers' semantics and order) and the
//! UTF-8-safe text stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Serialize;

use crate::error::EchoError;
use echovlm_core::LoadError;
use echovlm_text::Qwen2Tokenizer;
use std::path::Path;

/// Lets a caller stop a generation from another thread; the output then ends with
/// [`FinishReason::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop after the current step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The caller cancelled.
    Cancelled,
}

/// Decoding settings. [`Default`] is greedy decoding with a repetition penalty of 1.05 and
/// 1024 new tokens; a checkpoint's `generation_config.json` gives
/// [`EchoVlm::default_generation`](crate::EchoVlm::default_generation).
///
/// Built from [`Default`], [`GenerationOptions::greedy`] or a model's defaults, then adjusted
/// with one setter per field:
///
/// ```
/// use echovlm_pipeline::GenerationOptions;
/// let opts = GenerationOptions::greedy(64).do_sample(true).temperature(0.7).top_p(0.9).seed(7);
/// assert_eq!((opts.max_new_tokens, opts.top_p, opts.seed), (64, 0.9, 7));
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerationOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Sample (true) or take the most likely token (false).
    pub do_sample: bool,
    /// Softmax temperature when sampling.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens when sampling; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Penalty on every token already in the sequence (prompt included), transformers'
    /// semantics: positive logits divided by it, negative ones multiplied; 1 disables.
    pub repetition_penalty: f32,
    /// Seed of the sampler (each request of a batch has its own generator with this seed).
    pub seed: u64,
    /// Tokens that end generation (from `generation_config.json`).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past stop tokens until `max_new_tokens`.
    pub ignore_eos: bool,
    /// Record the MoE routing of every token for [`Output::routing`](crate::Output::routing).
    pub trace_routing: bool,
    /// Stops the generation when cancelled.
    pub cancel: Option<CancelToken>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 1024,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.05,
            seed: 0,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            trace_routing: true,
            cancel: None,
        }
    }
}

impl GenerationOptions {
    /// Plain greedy decoding: no penalty, no sampling.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            repetition_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Sets [`max_new_tokens`](Self::max_new_tokens).
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sets [`do_sample`](Self::do_sample).
    pub fn do_sample(mut self, yes: bool) -> Self {
        self.do_sample = yes;
        self
    }

    /// Sets [`temperature`](Self::temperature).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets [`top_k`](Self::top_k).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Sets [`top_p`](Self::top_p).
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sets [`repetition_penalty`](Self::repetition_penalty).
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Sets [`seed`](Self::seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets [`stop_token_ids`](Self::stop_token_ids).
    pub fn stop_token_ids(mut self, ids: Vec<u32>) -> Self {
        self.stop_token_ids = ids;
        self
    }

    /// Sets [`ignore_eos`](Self::ignore_eos).
    pub fn ignore_eos(mut self, yes: bool) -> Self {
        self.ignore_eos = yes;
        self
    }

    /// Sets [`trace_routing`](Self::trace_routing).
    pub fn trace_routing(mut self, yes: bool) -> Self {
        self.trace_routing = yes;
        self
    }

    /// Sets [`cancel`](Self::cancel).
    pub fn cancel(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Reads the sampling fields and the stop tokens (`eos_token_id`) of a
    /// `generation_config.json` (its parsed content `json`, read from `path`) over `self`.
    ///
    /// A token id that is not an integer from 0 to `u32::MAX` is an error naming `path` and
    /// the key.
    pub fn with_generation_config(
        mut self,
        json: &serde_json::Value,
        path: &Path,
    ) -> Result<Self, EchoError> {
        if let Some(v) = json.get("do_sample").and_then(|v| v.as_bool()) {
            self.do_sample = v;
        }
        if let Some(v) = json.get("temperature").and_then(|v| v.as_f64()) {
            self.temperature = v as f32;
        }
        if let Some(v) = json.get("top_k").and_then(|v| v.as_u64()) {
            self.top_k = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = json.get("top_p").and_then(|v| v.as_f64()) {
            self.top_p = v as f32;
        }
        if let Some(v) = json.get("repetition_penalty").and_then(|v| v.as_f64()) {
            self.repetition_penalty = v as f32;
        }
        if let Some(v) = json.get("max_new_tokens").and_then(|v| v.as_u64()) {
            self.max_new_tokens = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(ids) = token_ids(json, "eos_token_id", path)? {
            self.stop_token_ids = ids;
        }
        // checked even though only the stop tokens are used, so that a broken file is reported
        token_ids(json, "bos_token_id", path)?;
        Ok(self)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), EchoError> {
        let bad = |m: String| Err(EchoError::InvalidRequest(m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature {} must be positive", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty {} must be positive",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// The token ids under `key` of a `generation_config.json` (`json`, read from `path`): one
/// integer or a list of them; `None` when the key is absent or `null`. Anything else, and ids
/// outside `0..=u32::MAX`, is an error naming the file and the key.
pub(crate) fn token_ids(
    json: &serde_json::Value,
    key: &str,
    path: &Path,
) -> Result<Option<Vec<u32>>, EchoError> {
    let bad = |v: &serde_json::Value| {
        EchoError::Load(LoadError::config(
            path,
            format!(
                "{key} holds {v}, not a token id (an integer from 0 to {})",
                u32::MAX
            ),
        ))
    };
    let one = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(v))
    };
    match json.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => {
            items.iter().map(one).collect::<Result<_, _>>().map(Some)
        }
        Some(v) => Ok(Some(vec![one(v)?])),
    }
}

/// Picks next tokens from logits: repetition penalty, then (when sampling) temperature, top-k
/// and top-p, as transformers orders its logits processors.
#[derive(Debug, Clone)]
pub struct Sampler {
    opts: GenerationOptions,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from `opts.seed`.
    pub fn new(opts: &GenerationOptions) -> Self {
        Self {
            opts: opts.clone(),
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
        }
    }

    /// Draws the uniform number in `[0, 1)` that the next sampling step of [`next`](Self::next)
    /// would draw (for choosing the token elsewhere, with the same random stream: on the
    /// device, with [`choose_tokens`](crate::choose_tokens)).
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Applies the processors to `logits` in place (`history`: every token of the sequence so
    /// far, prompt included) and returns the chosen token.
    pub fn next(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = self.opts.repetition_penalty;
        if p != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in history {
                let t = t as usize;
                if t < logits.len() && !seen[t] {
                    seen[t] = true;
                    let s = logits[t];
                    logits[t] = if s < 0.0 { s * p } else { s / p };
                }
            }
        }
        if !self.opts.do_sample {
            return argmax(logits);
        }
        if self.opts.temperature != 1.0 {
            let t = self.opts.temperature;
            logits.iter_mut().for_each(|x| *x /= t);
        }
        if self.opts.top_k > 0 && self.opts.top_k < logits.len() {
            let mut sorted: Vec<f32> = logits.to_vec();
            let k = self.opts.top_k;
            sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            logits
                .iter_mut()
                .filter(|x| **x < kth)
                .for_each(|x| *x = f32::NEG_INFINITY);
        }
        if self.opts.top_p < 1.0 {
            top_p(logits, self.opts.top_p);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f64> = logits.iter().map(|&x| ((x - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        let u = self.uniform() * total;
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &q) in probs.iter().enumerate() {
            if q > 0.0 {
                last = i;
                acc += q;
                if u < acc {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// transformers' `TopPLogitsWarper`: sort ascending, remove tokens whose cumulative
/// probability is at most `1 − top_p`, always keeping the most likely one.
fn top_p(logits: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let Some(&last) = order.last() else { return };
    let max = logits[last];
    let exps: Vec<f32> = order.iter().map(|&i| (logits[i] - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut cum = 0f32;
    let threshold = 1.0 - top_p;
    let n = order.len();
    for (rank, (&i, e)) in order.iter().zip(exps).enumerate() {
        cum += e / sum;
        if cum <= threshold && rank < n - 1 {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The `n` largest `(token, logit)` pairs, largest first.
pub(crate) fn top_logits(v: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.into_iter().take(n).map(|i| (i as u32, v[i])).collect()
}

/// Turns generated ids into text deltas that never split a UTF-8 character: text is held back
/// while it ends in an incomplete byte sequence.
///
/// Each token decodes only a short window of ids: those since the last point where the text
/// was complete, and the ones before it up to the point before that (so that a token whose text
/// depends on its predecessor decodes as in the whole sequence). A report of `n` tokens costs
/// `O(n)` decoding, not `O(n²)`. The deltas concatenate to the whole sequence's decoded text.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Qwen2Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for each token.
    prefix: usize,
    /// End of the text already emitted (a complete point).
    read: usize,
}

impl<'a> TextStream<'a> {
    /// A stream over `tokenizer`.
    pub fn new(tokenizer: &'a Qwen2Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, EchoError> {
        self.ids.push(id);
        self.advance(false)
    }

    /// The text after the emitted point, when it is complete (or `force`): the window decoded
    /// from `prefix`, less the text of `prefix..read` that was already emitted.
    fn advance(&mut self, force: bool) -> Result<Option<String>, EchoError> {
        let done = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], true)?;
        let text = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        if !force && text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        // `done` ended at a complete point, so it is a prefix of `text`; should a decoder
        // rewrite earlier text, everything after the common prefix is emitted rather than lost
        let common = done
            .char_indices()
            .zip(text.chars())
            .find(|((_, a), b)| a != b)
            .map_or(done.len().min(text.len()), |((i, _), _)| i);
        let delta = &text[common..];
        if delta.is_empty() {
            return Ok(None);
        }
        let delta = delta.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(delta))
    }

    /// The text not yet emitted (an incomplete tail included).
    pub fn finish(&mut self) -> Result<Option<String>, EchoError> {
        self.advance(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Qwen2Tokenizer {
        Qwen2Tokenizer::from_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/models/tiny-echovlm/tokenizer.json"),
        )
        .unwrap()
    }

    /// The deltas of a stream over `ids`, and the text `finish` adds.
    fn stream(t: &Qwen2Tokenizer, ids: &[u32]) -> (Vec<String>, Option<String>) {
        let mut s = TextStream::new(t);
        let deltas = ids.iter().filter_map(|&id| s.push(id).unwrap()).collect();
        (deltas, s.finish().unwrap())
    }

    #[test]
    fn streamed_deltas_are_whole_characters_that_add_up_to_the_text() {
        let t = tokenizer();
        // Chinese, accents and an emoji: most of them several byte-level tokens each
        let text = "肝脏大小正常，回声均匀。 Liver: normal size, échogénicité homogène 🫀 ok";
        let ids = t.encode(text).unwrap();
        let (deltas, tail) = stream(&t, &ids);
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert!(deltas.len() > 10, "{deltas:?}");
        assert_eq!(tail, None);
        assert_eq!(deltas.concat(), t.decode(&ids, true).unwrap());
        assert_eq!(deltas.concat(), text);
    }

    #[test]
    fn any_id_sequence_streams_to_its_decoded_text() {
        // arbitrary ids: broken byte sequences, special tokens, lone continuation bytes
        let t = tokenizer();
        let vocab = t.vocab_size() as u64;
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in [1usize, 2, 5, 17, 64, 200] {
            for _ in 0..20 {
                let ids: Vec<u32> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed % vocab) as u32
                    })
                    .collect();
                let (deltas, tail) = stream(&t, &ids);
                let streamed = deltas.concat() + tail.as_deref().unwrap_or("");
                assert_eq!(streamed, t.decode(&ids, true).unwrap(), "{ids:?}");
                // only the tail may end inside a character
                assert!(deltas.iter().all(|d| !d.ends_with('\u{FFFD}')), "{ids:?}");
            }
        }
    }
}
