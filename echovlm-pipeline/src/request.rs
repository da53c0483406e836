//! What a caller asks: an optional system prompt, images and cine loops, and text.

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use crate::chat::{Content, Message, Role};
use crate::tasks::{Lang, Task};

/// An image given by path (decoded on use) or already decoded.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A PNG, JPEG, BMP or TIFF file, or a DICOM object (a multi-frame one becomes a cine
    /// loop).
    Path(PathBuf),
    /// Decoded RGB pixels.
    Image(Arc<RgbImage>),
}

impl From<PathBuf> for ImageSource {
    fn from(p: PathBuf) -> Self {
        ImageSource::Path(p)
    }
}

impl From<&std::path::Path> for ImageSource {
    fn from(p: &std::path::Path) -> Self {
        ImageSource::Path(p.to_path_buf())
    }
}

impl From<&str> for ImageSource {
    fn from(p: &str) -> Self {
        ImageSource::Path(PathBuf::from(p))
    }
}

impl From<RgbImage> for ImageSource {
    fn from(img: RgbImage) -> Self {
        ImageSource::Image(Arc::new(img))
    }
}

/// One request: a user turn with images and/or cine loops followed by text, and an optional
/// system prompt (without one, the chat template's default system prompt is used).
///
/// ```
/// use echovlm_pipeline::{Lang, Request, Task};
/// let request = Request::task(Task::Report, Lang::En)
///     .image("frame1.png")
///     .image("frame2.png");
/// assert_eq!(request.images.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// System prompt; `None` keeps the template's default.
    pub system: Option<String>,
    /// Still images, in order.
    pub images: Vec<ImageSource>,
    /// Cine loops (videos), each a list of frames, in order.
    pub videos: Vec<Vec<ImageSource>>,
    /// The user's text.
    pub text: String,
    /// A task preset, worded for the number of images; used when `text` is empty.
    pub task: Option<(Task, Lang)>,
    /// Overrides the checkpoint's `min_pixels` for this request.
    pub min_pixels: Option<usize>,
    /// Overrides the checkpoint's `max_pixels` for this request.
    pub max_pixels: Option<usize>,
    /// Frames taken from multi-frame DICOM objects (all by default).
    #[cfg(feature = "dicom")]
    pub dicom_frames: echovlm_vision::dicom::FrameSelection,
}

impl Request {
    /// A request with this text and nothing else.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// A request whose text is a task preset (see [`Task::prompt`]).
    pub fn task(task: Task, lang: Lang) -> Self {
        Self {
            task: Some((task, lang)),
            ..Self::default()
        }
    }

    /// The user text: `text`, or the task preset when `text` is empty.
    pub fn user_text(&self) -> String {
        match (&self.task, self.text.is_empty()) {
            (Some((task, lang)), true) => task.prompt(*lang, self.images.len() + self.videos.len()),
            _ => self.text.clone(),
        }
    }

    /// Sets the system prompt.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Replaces the text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// Adds an image.
    pub fn image(mut self, image: impl Into<ImageSource>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Adds a cine loop (frames in time order); it is encoded as a video, frames paired in time.
    pub fn cine<I: Into<ImageSource>>(mut self, frames: impl IntoIterator<Item = I>) -> Self {
        self.videos
            .push(frames.into_iter().map(Into::into).collect());
        self
    }

    /// Overrides the pixel budget of each image (`min_pixels`, `max_pixels`).
    pub fn pixels(mut self, min_pixels: Option<usize>, max_pixels: Option<usize>) -> Self {
        self.min_pixels = min_pixels;
        self.max_pixels = max_pixels;
        self
    }

    /// Chooses the frames of multi-frame DICOM objects.
    #[cfg(feature = "dicom")]
    pub fn dicom_frames(mut self, frames: echovlm_vision::dicom::FrameSelection) -> Self {
        self.dicom_frames = frames;
        self
    }

    /// The conversation this request renders: images first, then cine loops, then the text
    /// (the order EchoVLM was trained with).
    pub fn messages(&self) -> Vec<Message> {
        self.messages_with(self.images.len(), self.videos.len())
    }

    /// The conversation with `images` still images and `videos` cine loops (a multi-frame DICOM
    /// given as an image is a cine loop).
    pub fn messages_with(&self, images: usize, videos: usize) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(s) = &self.system {
            out.push(Message::text(Role::System, s.clone()));
        }
        let mut content: Vec<Content> = (0..images).map(|_| Content::Image).collect();
        content.extend((0..videos).map(|_| Content::Video));
        content.push(Content::Text {
            text: self.user_text(),
        });
        out.push(Message {
            role: Role::User,
            content,
        });
        out
    }
}
