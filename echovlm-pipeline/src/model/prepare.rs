//! Turning a [`Request`] into a [`PreparedPrompt`]: decoding and preprocessing images,
//! rendering the chat template, tokenising and expanding the image placeholders; and checking
//! prompts made by hand.

use std::time::Instant;

use echovlm_text::PromptError;
use echovlm_vision::preprocess::{
    PixelValues, PreprocessConfig, decode_image, load_image, preprocess_image, preprocess_video,
    resized_size,
};
use image::RgbImage;

use super::EchoVlm;
use crate::error::EchoError;
use crate::request::{DEFAULT_FPS, ImageSource, Request};

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
    /// Frames per second of each cine loop (one entry per video): Qwen2.5-VL checkpoints place
    /// video frames on an absolute time axis; Qwen2-VL checkpoints ignore it.
    pub video_fps: Vec<f64>,
    /// Time spent preparing, in milliseconds.
    pub preprocess_ms: f64,
}

impl PreparedPrompt {
    /// A prompt of token ids (each image and video placeholder already expanded to its
    /// merged-token count) and the pixel values of its images and videos, in prompt order.
    /// Videos play at [`DEFAULT_FPS`]; set their rates with [`with_video_fps`](Self::with_video_fps).
    pub fn new(ids: Vec<u32>, images: Vec<PixelValues>, videos: Vec<PixelValues>) -> Self {
        Self {
            rendered: String::new(),
            ids,
            video_fps: vec![DEFAULT_FPS; videos.len()],
            images,
            videos,
            preprocess_ms: 0.0,
        }
    }

    /// Sets the frames per second of each video (one entry per video, in prompt order).
    pub fn with_video_fps(mut self, fps: Vec<f64>) -> Self {
        self.video_fps = fps;
        self
    }
}

impl EchoVlm {
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
        if let Some(fps) = request.fps {
            check_fps(fps)?;
        }
        let mut images = Vec::with_capacity(request.images.len());
        let mut videos = Vec::with_capacity(request.videos.len());
        let mut video_fps = Vec::with_capacity(request.videos.len());
        let mut visual_tokens = 0;
        let mut count =
            |frames: &[RgbImage]| self.count_visual_tokens(frames, &cfg, &mut visual_tokens);
        for src in &request.images {
            match decode_source(src, request)? {
                Decoded::Still(img) => {
                    count(std::slice::from_ref(&*img))?;
                    images.push(preprocess_image(&img, &cfg)?);
                }
                Decoded::Frames(frames, rate) => {
                    count(&frames)?;
                    videos.push(preprocess_video(&frames, &cfg)?);
                    video_fps.push(request.fps.or(rate).unwrap_or(DEFAULT_FPS));
                }
            }
        }
        for sources in &request.videos {
            let mut frames = Vec::with_capacity(sources.len());
            let mut rate = None;
            for src in sources {
                match decode_source(src, request)? {
                    Decoded::Still(img) => frames.push(img.into_owned()),
                    Decoded::Frames(f, r) => {
                        // one multi-frame object as the whole loop plays at its own rate
                        rate = r.filter(|_| sources.len() == 1);
                        frames.extend(f);
                    }
                }
            }
            count(&frames)?;
            videos.push(preprocess_video(&frames, &cfg)?);
            video_fps.push(request.fps.or(rate).unwrap_or(DEFAULT_FPS));
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
            video_fps,
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
    pub(super) fn expand_placeholders(
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
    pub(super) fn check_prepared(&self, prompt: &PreparedPrompt) -> Result<(), EchoError> {
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
        if prompt.video_fps.len() != prompt.videos.len() {
            return bad(format!(
                "{} frame rates for {} videos",
                prompt.video_fps.len(),
                prompt.videos.len()
            ));
        }
        if let Some(&fps) = prompt
            .video_fps
            .iter()
            .find(|f| !(f.is_finite() && **f > 0.0))
        {
            return bad(format!("video fps = {fps} is not a positive number"));
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

    pub(super) fn merge_size(&self) -> usize {
        self.vision
            .as_ref()
            .map_or(2, |v| v.config.spatial_merge_size)
    }
}

/// An image source, decoded: one still image, or the frames of a multi-frame DICOM object
/// with its frame rate when the object records one.
enum Decoded<'a> {
    Still(std::borrow::Cow<'a, RgbImage>),
    // only a DICOM cine loop decodes to frames
    #[cfg_attr(not(feature = "dicom"), expect(dead_code))]
    Frames(Vec<RgbImage>, Option<f64>),
}

/// Refuses a frame rate that is not a positive finite number.
fn check_fps(fps: f64) -> Result<(), EchoError> {
    if fps.is_finite() && fps > 0.0 {
        Ok(())
    } else {
        Err(EchoError::InvalidRequest(format!(
            "fps = {fps}: the frame rate must be a positive number"
        )))
    }
}

/// Decodes a source. Files and bytes are told apart by content: DICOM (the `DICM` magic; with
/// the `dicom` feature) or PNG/JPEG/BMP/TIFF. A DICOM object with one selected frame is a still
/// image, with several a cine loop.
fn decode_source<'a>(src: &'a ImageSource, request: &Request) -> Result<Decoded<'a>, EchoError> {
    use std::borrow::Cow;
    #[cfg(feature = "dicom")]
    let dicom = |d: echovlm_vision::dicom::DicomImage| {
        let rate = d.frames_per_second();
        match <[RgbImage; 1]>::try_from(d.frames) {
            Ok([frame]) => Decoded::Still(Cow::Owned(frame)),
            Err(frames) => Decoded::Frames(frames, rate),
        }
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
