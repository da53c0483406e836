//! [`EchoVlm`]: a loaded checkpoint and the generation loop.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use echovlm_core::{Checkpoint, LinearOptions, LoadError, load_counted};
use echovlm_moe::RoutingTrace;
use echovlm_text::config::read_json;
use echovlm_text::{
    DecoderInput, Positions, PromptError, Qwen2Tokenizer, TextConfig, TextModel, VisionTokenIds,
    rope_index,
};
use echovlm_vision::preprocess::{
    PixelValues, PreprocessConfig, decode_image, load_image, preprocess_image, preprocess_video,
    resized_size,
};
use echovlm_vision::{VisionConfig, VisionModel};
use image::RgbImage;

use crate::chat::ChatTemplate;
use crate::error::EchoError;
use crate::generate::{
    FinishReason, GenerationOptions, Sampler, TextStream, token_ids, top_logits,
};
use crate::output::{Output, Timings};
use crate::request::{ImageSource, Request};

/// Receives streamed text; `ControlFlow::Break` stops the generation.
pub type TextCallback<'a> = dyn FnMut(&str) -> ControlFlow<()> + 'a;

/// Where and how to load a checkpoint: [`Default`] (the default device, `F32`, default linear
/// layers), adjusted with one setter per field.
///
/// ```
/// use echovlm_pipeline::{DType, LoadOptions, device_from_name};
/// let opts = LoadOptions::default().device(device_from_name("cpu")?).dtype(DType::F32);
/// assert_eq!(opts.dtype, DType::F32);
/// # Ok::<(), echovlm_pipeline::EchoError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The device (backend) the model runs on.
    pub device: Device,
    /// Float type of weights and activations (`F32` on CPU; `F16`/`BF16` where the device
    /// supports them).
    pub dtype: DType,
    /// How linear layers keep their weights.
    pub linear: LinearOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::default(),
            dtype: DType::F32,
            linear: LinearOptions::default(),
        }
    }
}

/// A prompt ready to run: token ids with placeholders expanded, and pixel values.
///
/// Made by [`EchoVlm::prepare`], or by hand with [`PreparedPrompt::new`]; running one whose ids
/// and pixel values do not fit together is an [`EchoError::InvalidPrompt`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PreparedPrompt {
    /// The rendered chat template.
    pub rendered: String,
    /// Token ids, each image/video placeholder expanded to its merged-token count.
    pub ids: Vec<u32>,
    /// Preprocessed images, in prompt order.
    pub images: Vec<PixelValues>,
    /// Preprocessed cine loops, in prompt order.
    pub videos: Vec<PixelValues>,
    /// Time spent preparing, in milliseconds.
    pub preprocess_ms: f64,
}

impl LoadOptions {
    /// Sets the device (backend) the model runs on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Sets the float type of weights and activations.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets how linear layers keep their weights.
    pub fn linear(mut self, linear: LinearOptions) -> Self {
        self.linear = linear;
        self
    }
}

impl PreparedPrompt {
    /// A prompt of token ids (each image and video placeholder already expanded to its
    /// merged-token count) and the pixel values of its images and videos, in prompt order.
    pub fn new(ids: Vec<u32>, images: Vec<PixelValues>, videos: Vec<PixelValues>) -> Self {
        Self {
            rendered: String::new(),
            ids,
            images,
            videos,
            preprocess_ms: 0.0,
        }
    }
}

/// A loaded EchoVLM (or stock Qwen2-VL) checkpoint: decoder, vision tower, tokenizer, chat
/// template, preprocessing settings and generation defaults.
pub struct EchoVlm {
    text: TextModel,
    vision: Option<VisionModel>,
    tokenizer: Qwen2Tokenizer,
    template: ChatTemplate,
    preprocess: PreprocessConfig,
    generation: GenerationOptions,
    vision_tokens: VisionTokenIds,
    /// The image placeholder token (`vision_tokens.image`).
    image_id: u32,
    /// The video placeholder token (`vision_tokens.video`).
    video_id: u32,
    pad_id: u32,
    dir: PathBuf,
    parameters: usize,
    weight_bytes: usize,
}

impl std::fmt::Debug for EchoVlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoVlm")
            .field("dir", &self.dir)
            .field("parameters", &self.parameters)
            .field("layers", &self.text.layers.len())
            .field("vision", &self.vision.is_some())
            .finish()
    }
}

fn inconsistent(msg: String) -> EchoError {
    EchoError::Inconsistent(msg)
}

impl EchoVlm {
    /// Loads a model directory: `config.json`, safetensors weights (single or sharded),
    /// `tokenizer.json`, the chat template (`chat_template.json` or `tokenizer_config.json`),
    /// and, if present, `preprocessor_config.json` and `generation_config.json`.
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self, EchoError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(LoadError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model directory",
                ),
            }
            .into());
        }
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        let text_cfg = TextConfig::from_json(&json, &config_path)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let vision_cfg = if ckpt.keys_with_prefix("visual.").next().is_some() {
            Some(VisionConfig::from_json(
                &json,
                text_cfg.hidden_size,
                &config_path,
            )?)
        } else {
            None
        };
        let ((text, vision), weight_bytes) = load_counted(
            &ckpt,
            &options.device,
            options.dtype,
            options.linear.clone(),
            |l| {
                let text = TextModel::load(l, &text_cfg)?;
                let vision = match &vision_cfg {
                    Some(c) => Some(VisionModel::load(l, c)?),
                    None => None,
                };
                Ok((text, vision))
            },
        )?;
        let parameters = ckpt.num_elements();
        drop(ckpt);

        let tokenizer = Qwen2Tokenizer::from_file(dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_model_dir(dir)?;
        let preprocess_path = dir.join("preprocessor_config.json");
        let preprocess = if preprocess_path.is_file() {
            PreprocessConfig::from_file(&preprocess_path)?
        } else {
            PreprocessConfig::default()
        };
        if let Some(v) = &vision {
            let c = &v.config;
            for (name, pre, tower) in [
                ("patch_size", preprocess.patch_size, c.patch_size),
                ("merge_size", preprocess.merge_size, c.spatial_merge_size),
                (
                    "temporal_patch_size",
                    preprocess.temporal_patch_size,
                    c.temporal_patch_size,
                ),
            ] {
                if pre != tower {
                    return Err(inconsistent(format!(
                        "preprocessor_config.json says {name} = {pre} but the vision tower's is {tower}"
                    )));
                }
            }
        }
        let special = *tokenizer.special();
        if tokenizer.vocab_size() > text_cfg.vocab_size {
            return Err(inconsistent(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                text_cfg.vocab_size
            )));
        }
        let check = |name: &str, config: Option<u32>, tok: u32| -> Result<u32, EchoError> {
            match config {
                Some(c) if c != tok => Err(inconsistent(format!(
                    "config.json says {name} = {c} but the tokenizer gives {tok}"
                ))),
                _ => Ok(tok),
            }
        };
        let vt = &text_cfg.vision_tokens;
        let vision_tokens = VisionTokenIds {
            vision_start: Some(check(
                "vision_start_token_id",
                vt.vision_start,
                special.vision_start,
            )?),
            vision_end: Some(check(
                "vision_end_token_id",
                vt.vision_end,
                special.vision_end,
            )?),
            image: Some(check("image_token_id", vt.image, special.image_pad)?),
            video: Some(check("video_token_id", vt.video, special.video_pad)?),
        };
        let (image_id, video_id) = (special.image_pad, special.video_pad);

        let gen_path = dir.join("generation_config.json");
        let gen_json = if gen_path.is_file() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        let mut generation = GenerationOptions::default();
        if let Some(g) = &gen_json {
            generation = generation.with_generation_config(g, &gen_path)?;
        }
        if generation.stop_token_ids.is_empty() {
            generation.stop_token_ids = text_cfg.eos_token_ids.clone();
        }
        if !generation.stop_token_ids.contains(&special.im_end) {
            generation.stop_token_ids.push(special.im_end);
        }
        let pad_id = match &gen_json {
            Some(g) => {
                token_ids(g, "pad_token_id", &gen_path)?.and_then(|ids| ids.first().copied())
            }
            None => None,
        }
        .unwrap_or(special.endoftext);
        Ok(Self {
            text,
            vision,
            tokenizer,
            template,
            preprocess,
            generation,
            vision_tokens,
            image_id,
            video_id,
            pad_id,
            dir: dir.to_path_buf(),
            parameters,
            weight_bytes,
        })
    }

    /// The decoder.
    pub fn text_model(&self) -> &TextModel {
        &self.text
    }

    /// The vision tower, if the checkpoint has one.
    pub fn vision_model(&self) -> Option<&VisionModel> {
        self.vision.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Qwen2Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The checkpoint's preprocessing settings.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Generation settings from `generation_config.json` (stop tokens included), with
    /// `max_new_tokens` 1024 unless the file sets it.
    pub fn default_generation(&self) -> GenerationOptions {
        self.generation.clone()
    }

    /// Number of stored parameters.
    pub fn num_parameters(&self) -> usize {
        self.parameters
    }

    /// Bytes the loaded weights occupy in memory (after any packing or quantisation).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.text.device()
    }

    /// Renders, tokenises and preprocesses a request without running the model.
    pub fn prepare(&self, request: &Request) -> Result<PreparedPrompt, EchoError> {
        let start = Instant::now();
        let has_vision_input = !request.images.is_empty() || !request.videos.is_empty();
        if request.user_text().trim().is_empty() && !has_vision_input {
            return Err(PromptError::EmptyPrompt.into());
        }
        if has_vision_input && self.vision.is_none() {
            return Err(EchoError::NoVision);
        }
        let mut cfg = self.preprocess.clone();
        if let Some(v) = request.min_pixels {
            cfg.min_pixels = v;
        }
        if let Some(v) = request.max_pixels {
            cfg.max_pixels = v;
        }
        cfg.validate()?;
        let mut images = Vec::with_capacity(request.images.len());
        let mut videos = Vec::with_capacity(request.videos.len());
        let mut visual_tokens = 0;
        let mut count =
            |frames: &[RgbImage]| self.count_visual_tokens(frames, &cfg, &mut visual_tokens);
        for src in &request.images {
            match decode_source(src, request)? {
                Decoded::Still(img) => {
                    count(std::slice::from_ref(&*img))?;
                    images.push(preprocess_image(&img, &cfg)?);
                }
                Decoded::Frames(frames) => {
                    count(&frames)?;
                    videos.push(preprocess_video(&frames, &cfg)?);
                }
            }
        }
        for sources in &request.videos {
            let mut frames = Vec::with_capacity(sources.len());
            for src in sources {
                match decode_source(src, request)? {
                    Decoded::Still(img) => frames.push(img.into_owned()),
                    Decoded::Frames(f) => frames.extend(f),
                }
            }
            count(&frames)?;
            videos.push(preprocess_video(&frames, &cfg)?);
        }
        let messages = request.messages_with(images.len(), videos.len());
        let rendered = self.template.render(&messages, true, false)?;
        let raw = self.tokenizer.encode(&rendered)?;
        let ids = self.expand_placeholders(&raw, &images, &videos)?;
        Ok(PreparedPrompt {
            rendered,
            ids,
            images,
            videos,
            preprocess_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Adds the visual tokens an image (one frame) or a video (several) becomes under `cfg` to
    /// `total`, from the frame size alone, and refuses the request once `total` exceeds the
    /// context: a pixel budget far beyond it would otherwise resize and patchify gigabytes for
    /// a prompt that cannot run.
    fn count_visual_tokens(
        &self,
        frames: &[RgbImage],
        cfg: &PreprocessConfig,
        total: &mut usize,
    ) -> Result<(), EchoError> {
        let Some(first) = frames.first() else {
            return Ok(());
        };
        let (h, w) = resized_size(first.height() as usize, first.width() as usize, cfg)?;
        let per_frame = (h / cfg.patch_size).saturating_mul(w / cfg.patch_size)
            / cfg.merge_size.saturating_mul(cfg.merge_size);
        let steps = frames.len().div_ceil(cfg.temporal_patch_size);
        *total = total.saturating_add(per_frame.saturating_mul(steps));
        let max = self.text.config.max_position_embeddings;
        if *total > max {
            return Err(PromptError::ContextTooLong {
                tokens: *total,
                max,
            }
            .into());
        }
        Ok(())
    }

    /// Replaces each image (video) placeholder token by `t·h·w / merge²` copies.
    fn expand_placeholders(
        &self,
        ids: &[u32],
        images: &[PixelValues],
        videos: &[PixelValues],
    ) -> Result<Vec<u32>, EchoError> {
        let (image_id, video_id) = (self.image_id, self.video_id);
        let count = |id| ids.iter().filter(|&&t| t == id).count();
        let (n_img, n_vid) = (count(image_id), count(video_id));
        if n_img != images.len() {
            return Err(PromptError::ImageCountMismatch {
                placeholders: n_img,
                images: images.len(),
            }
            .into());
        }
        if n_vid != videos.len() {
            return Err(PromptError::VideoCountMismatch {
                placeholders: n_vid,
                videos: videos.len(),
            }
            .into());
        }
        let merge = self.merge_size();
        let (mut i, mut v) = (0, 0);
        let mut out = Vec::with_capacity(ids.len());
        for &t in ids {
            if t == image_id {
                out.extend(std::iter::repeat_n(t, images[i].merged_tokens(merge)));
                i += 1;
            } else if t == video_id {
                out.extend(std::iter::repeat_n(t, videos[v].merged_tokens(merge)));
                v += 1;
            } else {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Checks that a prepared prompt fits together and fits the model, so that a hand-built
    /// one is an error rather than a failed shape assertion inside Burn: token ids inside the
    /// vocabulary; per image and video, `data.len() == rows · cols` with `cols` the vision
    /// tower's patch size, `rows = t · h · w` of a non-empty grid whose `h` and `w` the merge
    /// size divides; and as many placeholder tokens as the merged pixel rows.
    fn check_prepared(&self, prompt: &PreparedPrompt) -> Result<(), EchoError> {
        let bad = |m: String| Err(EchoError::InvalidPrompt(m));
        if prompt.ids.is_empty() {
            return bad("no token ids".into());
        }
        let vocab = self.text.config.vocab_size;
        if let Some(&id) = prompt.ids.iter().find(|&&id| id as usize >= vocab) {
            return bad(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            ));
        }
        let has_pixels = !prompt.images.is_empty() || !prompt.videos.is_empty();
        let Some(vision) = self.vision.as_ref() else {
            return if has_pixels {
                Err(EchoError::NoVision)
            } else {
                Ok(())
            };
        };
        let c = &vision.config;
        let cols = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let merge = c.spatial_merge_size;
        for (kind, items, id) in [
            ("image", &prompt.images, self.image_id),
            ("video", &prompt.videos, self.video_id),
        ] {
            let mut merged = 0usize;
            for (i, p) in items.iter().enumerate() {
                let [t, h, w] = p.grid_thw;
                let rows = t.checked_mul(h).and_then(|x| x.checked_mul(w));
                if t == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
                    return bad(format!(
                        "{kind} {i}: grid_thw {:?} must be positive with h and w multiples of the merge size {merge}",
                        p.grid_thw
                    ));
                }
                if rows != Some(p.rows) {
                    return bad(format!(
                        "{kind} {i}: rows = {} but grid_thw {:?} gives {}",
                        p.rows,
                        p.grid_thw,
                        rows.map_or("an overflow".into(), |r| r.to_string())
                    ));
                }
                if p.rows.checked_mul(cols) != Some(p.data.len()) {
                    return bad(format!(
                        "{kind} {i}: {} values are not rows x cols = {} x {cols}",
                        p.data.len(),
                        p.rows
                    ));
                }
                merged += p.merged_tokens(merge);
            }
            let placeholders = prompt.ids.iter().filter(|&&t| t == id).count();
            if placeholders != merged {
                return bad(format!(
                    "{placeholders} {kind} placeholder tokens but the {kind}s' pixel values make {merged} merged tokens"
                ));
            }
        }
        Ok(())
    }

    fn merge_size(&self) -> usize {
        self.vision
            .as_ref()
            .map_or(2, |v| v.config.spatial_merge_size)
    }

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
        let image_grids: Vec<[usize; 3]> = prompt.images.iter().map(|x| x.grid_thw).collect();
        let video_grids: Vec<[usize; 3]> = prompt.videos.iter().map(|x| x.grid_thw).collect();
        let image_embeds = self.encode(prompt.images.iter())?;
        let video_embeds = self.encode(prompt.videos.iter())?;
        let embeds = self.merge_embeddings(&ids, image_embeds, video_embeds)?;
        let (positions, _) = rope_index(
            &ids,
            None,
            &image_grids,
            &video_grids,
            &self.vision_tokens,
            self.merge_size(),
        )?;
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
        mut on_text: Option<&mut TextCallback<'_>>,
    ) -> Result<Vec<Output>, EchoError> {
        opts.validate()?;
        let b = prompts.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        for p in &prompts {
            self.check_prepared(p)?;
        }
        if on_text.is_some() && b != 1 {
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
        let image_grids: Vec<[usize; 3]> = prompts
            .iter()
            .flat_map(|p| p.images.iter().map(|x| x.grid_thw))
            .collect();
        let video_grids: Vec<[usize; 3]> = prompts
            .iter()
            .flat_map(|p| p.videos.iter().map(|x| x.grid_thw))
            .collect();
        let image_embeds = self.encode(prompts.iter().flat_map(|p| p.images.iter()))?;
        let video_embeds = self.encode(prompts.iter().flat_map(|p| p.videos.iter()))?;
        let embeds = self.merge_embeddings(&padded, image_embeds, video_embeds)?;
        let vision_ms = if image_grids.is_empty() && video_grids.is_empty() {
            0.0
        } else {
            ms(t_vision)
        };

        // prefill
        let t_prefill = Instant::now();
        let (positions, deltas) = rope_index(
            &padded,
            mask,
            &image_grids,
            &video_grids,
            &self.vision_tokens,
            self.merge_size(),
        )?;
        let mut cache = self
            .text
            .new_cache_with_capacity(max_len + opts.max_new_tokens);
        let has_moe = self.text.layers.iter().any(|l| l.is_moe());
        let mut traces = (opts.trace_routing && has_moe).then(|| vec![RoutingTrace::new(); b]);
        let out = self.text.forward(
            DecoderInput::new(embeds, &positions).valid(mask),
            &mut cache,
            traces.as_deref_mut(),
        )?;
        let mut logits = read_logits(out.logits)?;
        let prefill_ms = ms(t_prefill);

        // decode
        let t_decode = Instant::now();
        let vocab = self.text.config.vocab_size;
        let mut samplers: Vec<Sampler> = (0..b).map(|_| Sampler::new(opts)).collect();
        let mut history: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut finished: Vec<Option<FinishReason>> = vec![None; b];
        let mut first_top: Vec<Vec<(u32, f32)>> = vec![Vec::new(); b];
        let mut stream = on_text.as_ref().map(|_| TextStream::new(&self.tokenizer));
        let mut step = 0;
        loop {
            for r in 0..b {
                if finished[r].is_some() {
                    continue;
                }
                let row = &mut logits[r * vocab..(r + 1) * vocab];
                if step == 0 {
                    first_top[r] = top_logits(row, 20);
                }
                let tok = samplers[r].next(row, &history[r]);
                history[r].push(tok);
                generated[r].push(tok);
                if !opts.ignore_eos && opts.stop_token_ids.contains(&tok) {
                    finished[r] = Some(FinishReason::Stop);
                } else if generated[r].len() >= opts.max_new_tokens {
                    finished[r] = Some(FinishReason::Length);
                }
                if let (Some(stream), Some(cb)) = (stream.as_mut(), on_text.as_mut())
                    && let Some(delta) = stream.push(tok)?
                    && cb(&delta).is_break()
                {
                    finished[r] = Some(FinishReason::Cancelled);
                }
            }
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                for f in finished.iter_mut().filter(|f| f.is_none()) {
                    *f = Some(FinishReason::Cancelled);
                }
            }
            if finished.iter().all(Option::is_some) {
                break;
            }
            step += 1;
            let next: Vec<Vec<u32>> = (0..b)
                .map(|r| {
                    vec![if finished[r].is_some() {
                        self.pad_id
                    } else {
                        generated[r][generated[r].len() - 1]
                    }]
                })
                .collect();
            let live: Vec<Vec<bool>> = finished.iter().map(|f| vec![f.is_none()]).collect();
            let all_live = finished.iter().all(Option::is_none);
            let emb = self.text.embed(&next)?;
            let pos = Positions::decode(&deltas, cache.len(), 1);
            let out = self.text.forward(
                DecoderInput::new(emb, &pos).valid((!all_live).then_some(live.as_slice())),
                &mut cache,
                traces.as_deref_mut(),
            )?;
            logits = read_logits(out.logits)?;
        }
        if let (Some(stream), Some(cb)) = (stream.as_mut(), on_text.as_mut())
            && let Some(rest) = stream.finish()?
        {
            let _ = cb(&rest);
        }
        let decode_ms = ms(t_decode);

        let mut outputs = Vec::with_capacity(b);
        for (r, p) in prompts.into_iter().enumerate() {
            let n = generated[r].len();
            let timings = Timings {
                preprocess_ms: p.preprocess_ms,
                vision_ms,
                prefill_ms,
                prefill_tokens: p.ids.len(),
                decode_ms,
                generated_tokens: n,
                decode_tokens_per_s: if n > 1 && decode_ms > 0.0 {
                    (n - 1) as f64 / (decode_ms / 1e3)
                } else {
                    0.0
                },
            };
            outputs.push(Output {
                text: self.tokenizer.decode(&generated[r], true)?,
                image_grid_thw: p.images.iter().map(|x| x.grid_thw).collect(),
                video_grid_thw: p.videos.iter().map(|x| x.grid_thw).collect(),
                prompt_token_ids: p.ids,
                generated_token_ids: std::mem::take(&mut generated[r]),
                finish_reason: finished[r].unwrap_or(FinishReason::Length),
                first_step_top_logits: std::mem::take(&mut first_top[r]),
                timings,
                routing: traces.as_ref().map(|t| t[r].summary()),
            });
        }
        Ok(outputs)
    }

    /// Encodes images (or videos) with the vision tower, all in one forward pass.
    fn encode<'a>(
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
    fn merge_embeddings(
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

/// An image source, decoded: one still image, or the frames of a multi-frame DICOM object.
enum Decoded<'a> {
    Still(std::borrow::Cow<'a, RgbImage>),
    Frames(Vec<RgbImage>),
}

/// Decodes a source. Files and bytes are told apart by content: DICOM (the `DICM` magic; with
/// the `dicom` feature) or PNG/JPEG/BMP/TIFF. A DICOM object with one selected frame is a still
/// image, with several a cine loop.
fn decode_source<'a>(src: &'a ImageSource, request: &Request) -> Result<Decoded<'a>, EchoError> {
    use std::borrow::Cow;
    #[cfg(feature = "dicom")]
    let dicom = |d: echovlm_vision::dicom::DicomImage| match <[RgbImage; 1]>::try_from(d.frames) {
        Ok([frame]) => Decoded::Still(Cow::Owned(frame)),
        Err(frames) => Decoded::Frames(frames),
    };
    #[cfg(not(feature = "dicom"))]
    let _ = request;
    Ok(match src {
        #[cfg(feature = "dicom")]
        ImageSource::Path(p) if echovlm_vision::dicom::is_dicom(p) => {
            dicom(echovlm_vision::dicom::load_dicom(p, &request.dicom_frames)?)
        }
        ImageSource::Path(p) => Decoded::Still(Cow::Owned(load_image(p)?)),
        #[cfg(feature = "dicom")]
        ImageSource::Encoded(b) if echovlm_vision::dicom::has_dicom_magic(b) => dicom(
            echovlm_vision::dicom::decode_dicom_bytes(b, &request.dicom_frames)?,
        ),
        ImageSource::Encoded(b) => Decoded::Still(Cow::Owned(decode_image(b)?)),
        ImageSource::Image(img) => Decoded::Still(Cow::Borrowed(&**img)),
    })
}

/// The one output of a one-request run.
fn single(mut outputs: Vec<Output>) -> Result<Output, EchoError> {
    match (outputs.pop(), outputs.is_empty()) {
        (Some(out), true) => Ok(out),
        _ => Err(EchoError::Device(
            "a run of one request did not return one output".into(),
        )),
    }
}

/// Reads the decoder's logits back to the host.
fn read_logits(logits: Option<Tensor<3>>) -> Result<Vec<f32>, EchoError> {
    let logits =
        logits.ok_or_else(|| EchoError::Device("the decoder returned no logits".into()))?;
    logits
        .try_into_vec_as::<f32>()
        .map_err(|e| EchoError::Device(format!("reading the logits back failed: {e:?}")))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
