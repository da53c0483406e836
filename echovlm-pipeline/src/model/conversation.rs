//! Conversations that keep their keys and values between turns: a follow-up question runs only
//! its own tokens through the model.

use std::ops::ControlFlow;
use std::time::Instant;

use echovlm_text::{DecoderInput, KvCache, PromptError};
use echovlm_vision::preprocess::PixelValues;

use super::run::{Prefill, TextCallback, ms, read_logits};
use super::{EchoVlm, PreparedPrompt};
use crate::chat::{Content, Message, Role};
use crate::error::EchoError;
use crate::generate::{FinishReason, GenerationOptions};
use crate::output::Output;
use crate::request::Request;

/// Stands in for the last answer when the chat template renders a follow-up, to find where
/// the answer ends and the template's own tokens begin (a private-use character no tokenizer
/// output contains).
const ANSWER_MARK: &str = "\u{E000}echovlm-answer\u{E000}";

/// A conversation about one request (its images and question) that keeps the keys and values
/// of every token so far, so that a follow-up question ([`ask`](Self::ask)) runs only its own
/// tokens through the decoder: the images are not encoded again and the earlier turns not
/// prefilled again. On the CPU with the released model, that is the difference between
/// minutes and seconds before a follow-up's first token.
///
/// Each turn gives what [`EchoVlm::run`] gives for a prompt of the whole conversation so far
/// (the previous answers as the token ids generated, followed by the chat template's tokens
/// for the new question) within rounding: the same M-RoPE positions, the same repetition
/// penalty history; a traced routing covers the turn's own tokens.
///
/// ```no_run
/// # use echovlm_pipeline::{EchoVlm, LoadOptions, Request};
/// # fn main() -> Result<(), echovlm_pipeline::EchoError> {
/// let model = EchoVlm::load("fixtures/models/echovlm-demo", &LoadOptions::default())?;
/// let opts = model.default_generation().max_new_tokens(128);
/// let request = Request::new("Describe this ultrasound image.").image("scan.png");
/// let (mut conversation, report) = model.converse(&request, &opts)?;
/// println!("{}", report.text);
/// let answer = conversation.ask("Is the lesion more likely benign or malignant?", &opts)?;
/// println!("{}", answer.text);
/// # Ok(())
/// # }
/// ```
pub struct Conversation<'m> {
    model: &'m EchoVlm,
    /// Every token id so far: the first prompt (placeholders expanded), the answers, and the
    /// template's tokens of each follow-up.
    ids: Vec<u32>,
    /// The turns so far, the last one the model's answer.
    messages: Vec<Message>,
    /// Keys and values of every id but the last (the last answer's last token, the next
    /// turn's first input); `None` after a turn failed.
    cache: Option<KvCache>,
    /// The rotary offset of the positions after the prompt.
    delta: i64,
    /// Whether the last answer ended with a stop token.
    stopped: bool,
    /// The first prompt's image and video grids, reported by every turn's output.
    image_grid_thw: Vec<[usize; 3]>,
    video_grid_thw: Vec<[usize; 3]>,
}

impl std::fmt::Debug for Conversation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("tokens", &self.ids.len())
            .field("turns", &self.turns())
            .field("usable", &self.cache.is_some())
            .finish()
    }
}

impl EchoVlm {
    /// Answers `request` as [`generate`](Self::generate) does and keeps the keys and values,
    /// for follow-up questions about the same images ([`Conversation::ask`]). The first turn's
    /// output is that of `generate`.
    pub fn converse(
        &self,
        request: &Request,
        opts: &GenerationOptions,
    ) -> Result<(Conversation<'_>, Output), EchoError> {
        let prepared = self.prepare(request)?;
        let messages = request.messages_with(prepared.images.len(), prepared.videos.len());
        self.converse_prepared(prepared, messages, opts, None)
    }

    /// [`converse`](Self::converse), streaming the first answer's text to `on_text` as
    /// [`generate_stream`](Self::generate_stream) does.
    pub fn converse_stream(
        &self,
        request: &Request,
        opts: &GenerationOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<(Conversation<'_>, Output), EchoError> {
        let prepared = self.prepare(request)?;
        let messages = request.messages_with(prepared.images.len(), prepared.videos.len());
        self.converse_prepared(prepared, messages, opts, Some(&mut on_text))
    }

    fn converse_prepared(
        &self,
        prompt: PreparedPrompt,
        mut messages: Vec<Message>,
        opts: &GenerationOptions,
        on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<(Conversation<'_>, Output), EchoError> {
        opts.validate()?;
        let prompts = vec![prompt];
        self.check_run(&prompts, opts, on_text.is_some())?;
        let prefill = self.prefill(&prompts, opts.max_new_tokens, opts.trace_routing)?;
        let delta = prefill.deltas[0];
        let (mut outputs, cache) = self.decode_from(prompts, prefill, opts, on_text)?;
        let out = outputs
            .pop()
            .ok_or_else(|| EchoError::Device("a run of one request gave no output".into()))?;
        messages.push(Message::text(Role::Assistant, out.text.clone()));
        let mut ids = out.prompt_token_ids.clone();
        ids.extend(&out.generated_token_ids);
        let conversation = Conversation {
            model: self,
            ids,
            messages,
            cache: Some(cache),
            delta,
            stopped: out.finish_reason == FinishReason::Stop,
            image_grid_thw: out.image_grid_thw.clone(),
            video_grid_thw: out.video_grid_thw.clone(),
        };
        Ok((conversation, out))
    }
}

impl Conversation<'_> {
    /// Asks a follow-up question (text only; [`follow_up`](Self::follow_up) takes images and
    /// cine loops too) and answers it with `opts`, running only the
    /// new tokens through the model: the end of the last answer's turn and the chat
    /// template's tokens for the question, then the answer's own.
    ///
    /// The output's `prompt_token_ids` is the whole conversation before the answer; its
    /// `timings.prefill_tokens` counts the tokens this turn ran before its answer. Errors
    /// (typed, leaving the conversation as it was) for an empty question, one that holds
    /// image or video placeholders, or one whose turn would not fit in the model's context
    /// (its positions, rotary ones included); an error while running the decoder (a device
    /// failure) leaves the conversation without its keys and values, and every later turn is
    /// refused.
    pub fn ask(&mut self, question: &str, opts: &GenerationOptions) -> Result<Output, EchoError> {
        self.turn(&Request::new(question), opts, None)
    }

    /// [`ask`](Self::ask), calling `on_text` with every new piece of the answer as soon as it
    /// forms whole UTF-8 characters; returning `ControlFlow::Break` stops the answer there
    /// (the conversation goes on from it).
    pub fn ask_stream(
        &mut self,
        question: &str,
        opts: &GenerationOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Output, EchoError> {
        self.turn(&Request::new(question), opts, Some(&mut on_text))
    }

    /// A follow-up with images or cine loops of its own (another view of the same lesion, a
    /// later frame): `request`'s text is the question and its images and cine loops come
    /// with it (its pixel budget and frame rate apply to them); only they are encoded, and
    /// only this turn's tokens run through the decoder, their M-RoPE positions continuing
    /// after the conversation's. A request with a system prompt is refused (the
    /// conversation's first request set it); otherwise as [`ask`](Self::ask), streaming when
    /// `on_text` is given.
    pub fn follow_up(
        &mut self,
        request: &Request,
        opts: &GenerationOptions,
        on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<Output, EchoError> {
        if request.system.is_some() {
            return Err(EchoError::InvalidRequest(
                "a follow-up has no system prompt of its own: the conversation's first \
                 request sets it"
                    .into(),
            ));
        }
        self.turn(request, opts, on_text)
    }

    /// Every token id so far: the first prompt (image and video placeholders expanded), each
    /// answer as generated, and the template's tokens of each follow-up.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The conversation as messages: the first request's, then each answer and question; the
    /// last is the last answer.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Answers so far.
    pub fn turns(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count()
    }

    /// Positions whose keys and values are kept (every id but the last), or `None` once a
    /// turn failed and they were lost.
    pub fn cached_positions(&self) -> Option<usize> {
        self.cache.as_ref().map(KvCache::len)
    }

    /// The template's tokens between the last answer's last token and the next answer: the
    /// end of the answer's turn (unless the answer ended with it) and `question`'s turn, its
    /// image and video placeholders expanded for `images` and `videos`.
    fn follow_up_ids(
        &self,
        question: &Message,
        images: &[PixelValues],
        videos: &[PixelValues],
    ) -> Result<Vec<u32>, EchoError> {
        let model = self.model;
        let mut messages = self.messages.clone();
        if let Some(last) = messages.last_mut() {
            last.content = vec![Content::Text {
                text: ANSWER_MARK.to_string(),
            }];
        }
        messages.push(question.clone());
        let rendered = model.template.render(&messages, true, false)?;
        let Some(at) = rendered.rfind(ANSWER_MARK) else {
            return Err(EchoError::Template(
                "the chat template does not write an answer's text as given, so a \
                 conversation cannot go on from the answer it kept"
                    .into(),
            ));
        };
        let mut tail = &rendered[at + ANSWER_MARK.len()..];
        // an answer that stopped at the end of its turn already holds that token
        if self.stopped
            && let Some(&last) = self.ids.last()
        {
            let end = model.tokenizer.decode(&[last], false)?;
            if !end.is_empty()
                && let Some(rest) = tail.strip_prefix(end.as_str())
            {
                tail = rest;
            }
        }
        let raw = model.tokenizer.encode(tail)?;
        model.expand_placeholders(&raw, images, videos)
    }

    fn turn(
        &mut self,
        request: &Request,
        opts: &GenerationOptions,
        on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<Output, EchoError> {
        opts.validate()?;
        if request.user_text().trim().is_empty() {
            return Err(PromptError::EmptyPrompt.into());
        }
        let model = self.model;
        let Some(cached) = self.cached_positions() else {
            return Err(EchoError::InvalidRequest(
                "an earlier turn of this conversation failed and its keys and values are \
                 gone: start a new conversation"
                    .into(),
            ));
        };
        // the images and cine loops, decoded and preprocessed as for a first request
        let visual = model.prepare(request)?;
        let question = request
            .messages_with(visual.images.len(), visual.videos.len())
            .pop()
            .ok_or_else(|| EchoError::InvalidRequest("a follow-up without a question".into()))?;
        let follow = self.follow_up_ids(&question, &visual.images, &visual.videos)?;
        let mut ids = self.ids.clone();
        ids.extend(&follow);
        let limit = model.text.config.max_position_embeddings;
        if ids.len() + opts.max_new_tokens > limit {
            return Err(PromptError::ContextTooLong {
                tokens: ids.len() + opts.max_new_tokens,
                max: limit,
            }
            .into());
        }
        // the last answer's last token, then the follow-up's, with its images
        let feed = ids[cached..].to_vec();
        let segment = PreparedPrompt {
            ids: feed.clone(),
            ..visual
        };
        let started = Instant::now();
        let segments = std::slice::from_ref(&segment);
        let rows = std::slice::from_ref(&feed);
        let (embeds, image_grids, video_grids) = model.embed_prompts(segments, rows)?;
        let vision_ms = model.vision_ms(started, &image_grids, &video_grids)?;
        let started = Instant::now();
        // the segment's M-RoPE positions, after the conversation's: its first token (the
        // pending one) sits where a decode step would put it
        let (mut positions, deltas) =
            model.positions(segments, rows, None, &image_grids, &video_grids)?;
        let offset = cached as i64 + self.delta;
        for p in positions
            .t
            .iter_mut()
            .chain(&mut positions.h)
            .chain(&mut positions.w)
        {
            *p += offset;
        }
        let delta = self.delta + deltas[0];
        // every position of the turn within the model's context (the rotary ones too, which
        // a cine loop's time axis can stretch), checked before the cache is touched
        model
            .text
            .check_device_decode(cached, feed.len() + opts.max_new_tokens, delta)?;
        // from here an error loses the keys and values (`cache` stays `None`)
        let Some(mut cache) = self.cache.take() else {
            return Err(EchoError::Device(
                "the conversation's cache vanished".into(),
            ));
        };
        cache.reserve(feed.len() + opts.max_new_tokens);
        let mut traces = model.routing_traces(opts.trace_routing, 1);
        let out = model.text.forward(
            DecoderInput::new(embeds, &positions),
            &mut cache,
            traces.as_deref_mut(),
        )?;
        let prefill = Prefill {
            cache,
            logits: read_logits(out.logits)?,
            deltas: vec![delta],
            traces,
            vision_ms,
            prefill_ms: ms(started),
        };
        let prompt = PreparedPrompt::new(ids.clone(), Vec::new(), Vec::new());
        let (mut outputs, cache) = model.decode_from(vec![prompt], prefill, opts, on_text)?;
        let mut out = outputs
            .pop()
            .ok_or_else(|| EchoError::Device("a turn gave no output".into()))?;
        out.timings.prefill_tokens = feed.len();
        out.timings.preprocess_ms = segment.preprocess_ms;
        self.image_grid_thw.extend(image_grids);
        self.video_grid_thw.extend(video_grids);
        out.image_grid_thw = self.image_grid_thw.clone();
        out.video_grid_thw = self.video_grid_thw.clone();
        self.ids = ids;
        self.ids.extend(&out.generated_token_ids);
        self.cache = Some(cache);
        self.delta = delta;
        self.stopped = out.finish_reason == FinishReason::Stop;
        self.messages.push(question);
        self.messages
            .push(Message::text(Role::Assistant, out.text.clone()));
        Ok(out)
    }
}
