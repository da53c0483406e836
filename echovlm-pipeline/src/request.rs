//! What a caller asks: an optional system prompt, images and cine loops, and text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, ImageBuffer, Pixel, RgbImage};

use crate::chat::{Content, Message, Role};
use crate::tasks::{Lang, Task};

/// The frame rate a cine loop is taken to have when neither the request nor the DICOM object
/// gives one: transformers' default for Qwen2.5-VL video inputs.
pub const DEFAULT_FPS: f64 = 2.0;

/// An image (or a DICOM object) as the caller holds it: a file path, decoded pixels, or the
/// encoded bytes of a file received in memory.
///
/// Anything path-like converts into a path (`&str`, `String`, `&String`, `&Path`, `PathBuf`,
/// `&PathBuf`); any decoded [`image`] buffer ([`DynamicImage`], [`RgbImage`], 8- or 16-bit
/// grey, RGBA…) into RGB pixels, converted exactly as a file of that pixel format would be.
/// Encoded bytes have their own constructor, [`ImageSource::bytes`], so that a `Vec<u8>` is
/// never taken for pixels.
///
/// Paths and decoded images:
///
/// ```
/// use echovlm_pipeline::{EchoVlm, LoadOptions, Request};
/// use std::path::PathBuf;
///
/// let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
/// let model = EchoVlm::load(root.join("models/tiny-echovlm"), &LoadOptions::default())?;
/// let path: String = root.join("images/vessel_gray16_130x100.png").display().to_string();
///
/// // a path given as &String (or String, &str, &Path, PathBuf, &PathBuf)
/// let from_path = model.prepare(&Request::new("Describe the image.").image(&path))?;
///
/// // the same picture decoded by the caller: 16-bit grey, or any DynamicImage
/// let decoded = image::open(&path).unwrap();
/// let gray16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> = decoded.to_luma16();
/// let from_gray16 = model.prepare(&Request::new("Describe the image.").image(gray16))?;
/// let from_dynamic = model.prepare(&Request::new("Describe the image.").image(decoded))?;
///
/// assert_eq!(from_gray16.ids, from_path.ids);
/// assert_eq!(from_gray16.images[0].data, from_path.images[0].data);
/// assert_eq!(from_dynamic.images[0].data, from_path.images[0].data);
/// # Ok::<(), echovlm_pipeline::EchoError>(())
/// ```
///
/// Encoded bytes (PNG, JPEG, BMP, TIFF or DICOM; the format is read from the content, and a
/// multi-frame DICOM object becomes a cine loop, as its file would):
///
/// ```
/// use echovlm_pipeline::{EchoVlm, ImageSource, LoadOptions, Request};
/// use std::path::PathBuf;
///
/// let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
/// let model = EchoVlm::load(root.join("models/tiny-echovlm"), &LoadOptions::default())?;
///
/// // a PNG received over the network
/// let png: Vec<u8> = std::fs::read(root.join("images/liver_crop_64x48.png")).unwrap();
/// let prompt = model.prepare(&Request::new("Describe the image.").image_bytes(png))?;
/// assert_eq!(prompt.images[0].grid_thw, [1, 4, 4]);
///
/// // a DICOM object with several frames: a cine loop
/// let dicom = std::fs::read(root.join("dicom/us_rgb_cine.dcm")).unwrap();
/// let prompt = model.prepare(&Request::new("Describe the loop.").image(ImageSource::bytes(dicom)))?;
/// assert_eq!((prompt.images.len(), prompt.videos.len()), (0, 1));
///
/// // bytes that are no image: a typed error
/// let err = model.prepare(&Request::new("x").image_bytes(b"not an image".to_vec()));
/// assert!(matches!(err, Err(echovlm_pipeline::EchoError::Image(_))));
/// # Ok::<(), echovlm_pipeline::EchoError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ImageSource {
    /// A PNG, JPEG, BMP or TIFF file, or a DICOM object (a multi-frame one becomes a cine
    /// loop).
    Path(PathBuf),
    /// Decoded RGB pixels.
    Image(Arc<RgbImage>),
    /// The encoded bytes of a PNG, JPEG, BMP or TIFF image or of a DICOM object, in memory.
    Encoded(Arc<[u8]>),
}

impl ImageSource {
    /// A file, by path.
    pub fn path(path: impl AsRef<Path>) -> Self {
        ImageSource::Path(path.as_ref().to_path_buf())
    }

    /// Encoded bytes (PNG, JPEG, BMP, TIFF or DICOM, told apart by their content).
    pub fn bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        ImageSource::Encoded(bytes.into())
    }
}

macro_rules! path_like {
    ($($t:ty),*) => {$(
        impl From<$t> for ImageSource {
            fn from(p: $t) -> Self {
                ImageSource::path(p)
            }
        }
    )*};
}

path_like!(PathBuf, &PathBuf, &Path, &str, String, &String);

impl From<DynamicImage> for ImageSource {
    fn from(img: DynamicImage) -> Self {
        ImageSource::Image(Arc::new(echovlm_vision::preprocess::to_rgb(img)))
    }
}

/// Any decoded image buffer ([`RgbImage`], `GrayImage`, `ImageBuffer<Luma<u16>, Vec<u16>>`,
/// `RgbaImage`…), converted to RGB like a file of the same pixel format.
impl<P: Pixel> From<ImageBuffer<P, Vec<P::Subpixel>>> for ImageSource
where
    DynamicImage: From<ImageBuffer<P, Vec<P::Subpixel>>>,
{
    fn from(img: ImageBuffer<P, Vec<P::Subpixel>>) -> Self {
        DynamicImage::from(img).into()
    }
}

impl From<Arc<RgbImage>> for ImageSource {
    fn from(img: Arc<RgbImage>) -> Self {
        ImageSource::Image(img)
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
#[non_exhaustive]
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
    /// Frames per second of the cine loops. `None`: a multi-frame DICOM object's own rate
    /// (Cine Rate, else Frame Time) when it records one, else [`DEFAULT_FPS`]. Qwen2.5-VL
    /// checkpoints place video frames on an absolute time axis; Qwen2-VL checkpoints ignore it.
    pub fps: Option<f64>,
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

    /// Adds an image: a path, a decoded image or [`ImageSource::bytes`] (see
    /// [`ImageSource`]). A multi-frame DICOM object becomes a cine loop.
    pub fn image(mut self, image: impl Into<ImageSource>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Adds an image given as encoded bytes (PNG, JPEG, BMP, TIFF or DICOM, told apart by
    /// their content): `image(ImageSource::bytes(bytes))`.
    pub fn image_bytes(self, bytes: impl Into<Arc<[u8]>>) -> Self {
        self.image(ImageSource::bytes(bytes))
    }

    /// Adds a cine loop (frames in time order, each anything [`ImageSource`] takes; a DICOM
    /// object gives all its selected frames); it is encoded as a video, frames paired in time.
    pub fn cine<I: Into<ImageSource>>(mut self, frames: impl IntoIterator<Item = I>) -> Self {
        self.videos
            .push(frames.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the frames per second of this request's cine loops (see [`Request::fps`]); a value
    /// that is not a positive number is refused when the request is prepared.
    pub fn fps(mut self, fps: f64) -> Self {
        self.fps = Some(fps);
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
