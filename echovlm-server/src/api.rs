//! The OpenAI chat-completions request, and its translation into a prepared prompt and
//! generation settings.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use echovlm_pipeline::{
    Content, EchoError, EchoVlm, GenerationOptions, ImageSource, Lang, Message, PreparedPrompt,
    Request, Role, Task,
};
use serde::Deserialize;

use crate::error::ApiError;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// A `POST /v1/chat/completions` body. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model name (informational: the server runs one model).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// 0: greedy; above 0: sampling at this temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampler seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings: one or a list of up to four.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Answer with server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming settings.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Number of choices; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
    /// Only 0 is supported.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Only 0 is supported.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Extra: keep the `top_k` most likely tokens when sampling.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Extra: transformers' repetition penalty (1 disables).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Extra: keep generating past stop tokens until `max_tokens`.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Extra: frames per second of cine loops (multi-frame DICOM objects).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Extra: a task preset (`report`, `findings`, `impression`, `diagnosis`, `caption`) used
    /// when the user message has no text.
    #[serde(default)]
    pub task: Option<String>,
    /// Extra: language of the task preset (`zh` or `en`; `zh` by default).
    #[serde(default)]
    pub lang: Option<String>,
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    /// A string or a list of parts.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// Message content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Part {
    /// `{"type": "text", "text": …}`.
    #[serde(rename = "text")]
    Text {
        /// The text.
        text: String,
    },
    /// `{"type": "image_url", "image_url": {"url": …}}`.
    #[serde(rename = "image_url")]
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
}

/// `image_url`: a `data:` URI (base64 PNG, JPEG, BMP, TIFF or DICOM), or a local path when
/// the server allows local files.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
    /// Ignored.
    #[serde(default)]
    pub detail: Option<String>,
}

/// Limits that apply to requests.
#[derive(Debug, Clone, Default)]
pub struct RequestLimits {
    /// Most images (and cine loops) in one request.
    pub max_images: usize,
    /// Directory (canonical) under which `image_url` may name local files.
    pub local_files: Option<PathBuf>,
}

/// One turn of a conversation, images first (the order EchoVLM was trained with).
#[derive(Debug, Clone)]
struct Turn {
    role: Role,
    images: Vec<ImageSource>,
    text: String,
}

/// What the server runs for one chat request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The conversation, as turns.
    turns: Vec<Turn>,
    /// Frames per second of cine loops.
    fps: Option<f64>,
    /// Task preset for a user message without text.
    task: Option<(Task, Lang)>,
    /// Stop strings.
    pub stops: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Send usage in the last streamed chunk.
    pub include_usage: bool,
    /// `max_tokens` as asked (`None`: the model's default, cut to fit the context).
    pub max_tokens: Option<usize>,
}

/// Checks the request and turns it into a plan; images are resolved (decoded from base64 or
/// read from the allowed directory) but not yet decoded as pictures.
pub fn plan(req: &ChatRequest, limits: &RequestLimits) -> Result<Plan, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty").param("messages"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported").param("n"));
    }
    for (name, v) in [
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(format!(
                "{name} is not supported (use repetition_penalty)"
            ))
            .param(name));
        }
    }
    let stops = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOP_STRINGS || stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid(format!(
            "stop takes at most {MAX_STOP_STRINGS} non-empty strings"
        ))
        .param("stop"));
    }
    let task = match &req.task {
        None => None,
        Some(name) => {
            let task = Task::from_name(name).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown task {name:?}; known: {}",
                    echovlm_pipeline::TASK_NAMES.join(", ")
                ))
                .param("task")
            })?;
            let lang = match req.lang.as_deref() {
                None => Lang::Zh,
                Some(l) => l.parse::<Lang>().map_err(|_| {
                    ApiError::invalid(format!("unknown lang {l:?}; use zh or en")).param("lang")
                })?,
            };
            Some((task, lang))
        }
    };
    let mut turns = Vec::with_capacity(req.messages.len());
    let mut n_images = 0usize;
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(format!(
                    "role {other:?} is not supported (system, user, assistant)"
                ))
                .param(format!("messages[{i}].role")));
            }
        };
        let mut turn = Turn {
            role,
            images: Vec::new(),
            text: String::new(),
        };
        match &m.content {
            None => {}
            Some(MessageContent::Text(t)) => turn.text = t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::new();
                for (j, p) in parts.iter().enumerate() {
                    match p {
                        Part::Text { text } => texts.push(text.as_str()),
                        Part::ImageUrl { image_url } => {
                            let param = format!("messages[{i}].content[{j}].image_url.url");
                            if role != Role::User {
                                return Err(ApiError::invalid(
                                    "images are only accepted in user messages",
                                )
                                .param(param));
                            }
                            n_images += 1;
                            if n_images > limits.max_images {
                                return Err(ApiError::invalid(format!(
                                    "too many images: at most {} per request",
                                    limits.max_images
                                ))
                                .param(param)
                                .code("too_many_images"));
                            }
                            turn.images.push(
                                resolve_image(&image_url.url, limits)
                                    .map_err(|e| e.param(param))?,
                            );
                        }
                    }
                }
                turn.text = texts.join("\n");
            }
        }
        turns.push(turn);
    }
    if !turns.iter().any(|t| t.role == Role::User) {
        return Err(ApiError::invalid("messages need at least one user message").param("messages"));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => None,
        Some(0) => {
            return Err(ApiError::invalid("max_tokens must be at least 1").param("max_tokens"));
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    Ok(Plan {
        turns,
        fps: req.fps,
        task,
        stops,
        stream: req.stream.unwrap_or(false),
        include_usage: req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens,
    })
}

/// The generation settings of a request over the model's defaults: `temperature` 0 is greedy,
/// above 0 samples; `max_tokens` (when not given) is the model's default cut to the context
/// left after the prompt.
pub fn options(
    req: &ChatRequest,
    defaults: &GenerationOptions,
    max_tokens: Option<usize>,
    prompt_tokens: usize,
    context: usize,
) -> Result<GenerationOptions, ApiError> {
    let mut o = defaults.clone().trace_routing(false);
    if let Some(t) = req.temperature {
        if !(t.is_finite() && (0.0..=2.0).contains(&t)) {
            return Err(
                ApiError::invalid(format!("temperature {t} must be in [0, 2]"))
                    .param("temperature"),
            );
        }
        if t == 0.0 {
            o = o.do_sample(false);
        } else {
            o = o.do_sample(true).temperature(t);
        }
    }
    if let Some(p) = req.top_p {
        o = o.top_p(p);
    }
    if let Some(k) = req.top_k {
        o = o.top_k(k);
    }
    if let Some(r) = req.repetition_penalty {
        o = o.repetition_penalty(r);
    }
    if let Some(yes) = req.ignore_eos {
        o = o.ignore_eos(yes);
    }
    if let Some(s) = req.seed {
        o = o.seed(s as u64);
    }
    let left = context.saturating_sub(prompt_tokens);
    o.max_new_tokens = match max_tokens {
        Some(n) => n,
        None => o.max_new_tokens.min(left).max(1),
    };
    if prompt_tokens + o.max_new_tokens > context {
        return Err(ApiError::invalid(format!(
            "the prompt ({prompt_tokens} tokens) plus max_tokens ({}) exceed the model's context of {context} tokens",
            o.max_new_tokens
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }
    o.validate()?;
    Ok(o)
}

/// Decodes an `image_url` into an image source.
fn resolve_image(url: &str, limits: &RequestLimits) -> Result<ImageSource, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            ApiError::invalid("a data: URI needs a comma before its data").code("invalid_image_url")
        })?;
        if !meta.ends_with(";base64") {
            return Err(
                ApiError::invalid("only base64 data: URIs are accepted").code("invalid_image_url")
            );
        }
        let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| {
                ApiError::invalid(format!("the image's base64 data is broken: {e}"))
                    .code("invalid_base64")
            })?;
        return Ok(ImageSource::bytes(bytes));
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::invalid(
            "remote image URLs are not fetched; send the image as a base64 data: URI",
        )
        .code("remote_url_refused"));
    }
    let Some(base) = &limits.local_files else {
        return Err(ApiError::invalid(
            "image_url must be a base64 data: URI (local files are not enabled on this server)",
        )
        .code("invalid_image_url"));
    };
    let path = url.strip_prefix("file://").unwrap_or(url);
    let path = Path::new(path);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let refused = || {
        ApiError::invalid(format!(
            "{url:?} is not a readable file under the allowed directory"
        ))
        .code("invalid_image_url")
    };
    let canon = joined.canonicalize().map_err(|_| refused())?;
    if !canon.starts_with(base) || !canon.is_file() {
        return Err(refused());
    }
    Ok(ImageSource::path(canon))
}

impl Plan {
    /// Whether the conversation is one user message (after optional system messages): it then
    /// runs as a [`Request`], exactly as [`EchoVlm::generate`] would.
    fn single_turn(&self) -> bool {
        let mut it = self.turns.iter().skip_while(|t| t.role == Role::System);
        matches!((it.next(), it.next()), (Some(t), None) if t.role == Role::User)
    }

    /// The [`Request`] of a single-turn conversation.
    pub fn request(&self) -> Option<Request> {
        if !self.single_turn() {
            return None;
        }
        let system: Vec<&str> = self
            .turns
            .iter()
            .filter(|t| t.role == Role::System)
            .map(|t| t.text.as_str())
            .collect();
        let user = self.turns.iter().find(|t| t.role == Role::User)?;
        let mut r = Request::new(user.text.clone());
        if !system.is_empty() {
            r = r.system(system.join("\n"));
        }
        if let Some((task, lang)) = self.task.clone() {
            r.task = Some((task, lang));
        }
        r.fps = self.fps;
        for img in &user.images {
            r = r.image(img.clone());
        }
        Some(r)
    }

    /// Decodes the images, renders the chat template and tokenises.
    pub fn prepare(&self, model: &EchoVlm) -> Result<PreparedPrompt, EchoError> {
        match self.request() {
            Some(r) => model.prepare(&r),
            None => self.prepare_conversation(model),
        }
    }

    /// A conversation of several turns: each image is prepared on its own (a multi-frame DICOM
    /// object becomes a cine loop), the whole conversation is rendered with the checkpoint's
    /// chat template, and each placeholder is expanded to its image's merged-token count.
    pub fn prepare_conversation(&self, model: &EchoVlm) -> Result<PreparedPrompt, EchoError> {
        let start = std::time::Instant::now();
        let (mut images, mut videos, mut video_fps) = (Vec::new(), Vec::new(), Vec::new());
        let mut messages = Vec::with_capacity(self.turns.len());
        for (i, turn) in self.turns.iter().enumerate() {
            let mut content = Vec::new();
            let mut cines = 0;
            for img in &turn.images {
                let mut r = Request::new("-").image(img.clone());
                r.fps = self.fps;
                let p = model.prepare(&r)?;
                if p.images.is_empty() {
                    cines += 1;
                } else {
                    content.push(Content::Image);
                }
                images.extend(p.images);
                videos.extend(p.videos);
                video_fps.extend(p.video_fps);
            }
            content.extend((0..cines).map(|_| Content::Video));
            let is_last_user = turn.role == Role::User
                && !self.turns[i + 1..].iter().any(|t| t.role == Role::User);
            let text = match (self.task.clone(), turn.text.is_empty() && is_last_user) {
                (Some((task, lang)), true) => task.prompt(lang, turn.images.len()),
                _ => turn.text.clone(),
            };
            content.push(Content::Text { text });
            messages.push(Message::new(turn.role, content));
        }
        let rendered = model.chat_template().render(&messages, true, false)?;
        let raw = model.tokenizer().encode(&rendered)?;
        let vt = &model.text_model().config.vision_tokens;
        let merge = model
            .vision_model()
            .map_or(2, |v| v.config.spatial_merge_size);
        let (mut i, mut v) = (0usize, 0usize);
        let mut ids = Vec::with_capacity(raw.len());
        for t in raw {
            if Some(t) == vt.image && !images.is_empty() {
                let p = images.get(i).ok_or_else(|| {
                    EchoError::InvalidRequest("more image placeholders than images".into())
                })?;
                ids.extend(std::iter::repeat_n(t, p.merged_tokens(merge)));
                i += 1;
            } else if Some(t) == vt.video && !videos.is_empty() {
                let p = videos.get(v).ok_or_else(|| {
                    EchoError::InvalidRequest("more video placeholders than videos".into())
                })?;
                ids.extend(std::iter::repeat_n(t, p.merged_tokens(merge)));
                v += 1;
            } else {
                ids.push(t);
            }
        }
        let mut prompt = PreparedPrompt::new(ids, images, videos).with_video_fps(video_fps);
        prompt.rendered = rendered;
        prompt.preprocess_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(prompt)
    }
}
