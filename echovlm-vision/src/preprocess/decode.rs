//! Guarded decoding of image files and the conversion of decoded images to 8-bit RGB.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::ImageError;

/// Largest `width × height` an image may declare; larger images are refused from their header,
/// before any pixel buffer is allocated (decompression-bomb guard). 16384² pixels is 768 MiB as
/// 8-bit RGB, far above any ultrasound frame.
pub const MAX_IMAGE_PIXELS: u64 = 16384 * 16384;

/// Memory the decoder may allocate at once ([`image::Limits::max_alloc`]): enough for the
/// largest accepted image in the widest pixel format the decoders produce (16-bit RGBA, 8 bytes
/// per pixel).
pub const MAX_DECODER_ALLOC: u64 = MAX_IMAGE_PIXELS * 8;

/// The [`image::Limits`] every decode runs under (see [`MAX_DECODER_ALLOC`]).
pub fn decoder_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    limits
}

/// Reads an image file (PNG, JPEG, BMP or TIFF, recognised from its content) as 8-bit RGB.
///
/// Conversion to RGB follows `qwen_vl_utils` on Pillow, bit for bit (see [`to_rgb`]): only
/// images Pillow opens as RGBA (RGBA PNG/TIFF, 16-bit gray+alpha PNG, BMP with an alpha mask)
/// are composited onto white; the transparency of gray+alpha (8-bit), palette or colour-key
/// (`tRNS`) images is dropped, as `convert("RGB")` drops it; 16-bit colour samples keep their
/// high byte and 16-bit grayscale is rounded to `(v + 128) / 257`. The EXIF orientation and
/// ICC profiles are ignored, as they are by `Image.open(...).convert("RGB")`.
///
/// PNG, BMP and TIFF decode bit-identically to Pillow. JPEG is decoded by `zune-jpeg`, not
/// libjpeg-turbo: grayscale JPEGs come within one level of Pillow (≈1 % of pixels differ),
/// colour JPEGs differ by up to a few levels (YCbCr conversion, and chroma upsampling when
/// subsampled).
///
/// # Errors
/// [`ImageError::Io`] if the file cannot be opened, [`ImageError::Empty`] for a 0-byte file,
/// [`ImageError::TooLarge`] if the header declares more than [`MAX_IMAGE_PIXELS`] pixels
/// (checked before pixels are decoded), [`ImageError::ZeroSize`] for a 0-pixel image and
/// [`ImageError::Decode`] for an unknown format or truncated / corrupt data (a JPEG without
/// its end-of-image marker counts as truncated, as in Pillow). Every error names the file.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, Some(path))
}

/// Decodes an in-memory image file (PNG, JPEG, BMP or TIFF) as 8-bit RGB, with the same
/// conversions and guards as [`load_image`].
///
/// # Errors
/// As [`load_image`], without a path in the error.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_bytes(bytes, None)
}

fn decode_bytes(bytes: &[u8], path: Option<&Path>) -> Result<RgbImage, ImageError> {
    let owned = || path.map(Path::to_path_buf);
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: owned() });
    }
    let decode_err = |reason: String| ImageError::Decode {
        path: owned(),
        reason,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(format!("cannot read the header: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Bmp | image::ImageFormat::Tiff) => {}
        Some(image::ImageFormat::Jpeg) => {
            // The JPEG decoder fills a truncated scan with grey and succeeds; Pillow refuses
            // such files ("image file is truncated"), so refuse them too.
            if !jpeg_is_complete(bytes) {
                return Err(decode_err(
                    "JPEG data is truncated (the end-of-image marker is missing)".into(),
                ));
            }
        }
        Some(other) => {
            return Err(decode_err(format!(
                "{other:?} images are not supported (PNG, JPEG, BMP and TIFF are)"
            )));
        }
        None => {
            return Err(decode_err(
                "not a recognised image format (PNG, JPEG, BMP and TIFF are supported)".into(),
            ));
        }
    }
    reader.limits(decoder_limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| decode_err(describe(&e)))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageError::TooLarge {
            path: owned(),
            width: width.into(),
            height: height.into(),
            limit: MAX_IMAGE_PIXELS,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            height: height as usize,
            width: width as usize,
        });
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(describe(&e)))?;
    let img = if png_without_alpha_channel(bytes) {
        drop_alpha(img)
    } else {
        img
    };
    Ok(to_rgb(img))
}

/// Whether a JPEG stream's marker structure reaches the end-of-image marker: segments
/// (including an EXIF thumbnail inside APP1) are skipped by their length, entropy-coded data
/// up to the next marker that is not a stuffed byte or a restart marker.
fn jpeg_is_complete(data: &[u8]) -> bool {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Next 0xFF (libjpeg also skips stray bytes before a marker, with a warning).
        let Some(off) = data
            .get(i..)
            .and_then(|d| d.iter().position(|&b| b == 0xFF))
        else {
            return false;
        };
        let mut j = i + off + 1;
        while data.get(j) == Some(&0xFF) {
            j += 1;
        }
        let Some(&marker) = data.get(j) else {
            return false;
        };
        i = j + 1;
        match marker {
            0xD9 => return true,
            // stuffed 0xFF in scan data, TEM, restart markers, SOI: no payload
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(len) = data.get(i..i + 2) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 || i + len > data.len() {
                    return false;
                }
                i += len;
            }
        }
    }
}

fn describe(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => {
            format!("the decoder would exceed its memory limit of {MAX_DECODER_ALLOC} bytes ({l})")
        }
        other => other.to_string(),
    }
}

/// 16-bit sample to 8 bits with rounding, `round(v · 255 / 65535)`.
fn to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

/// 16-bit sample to 8 bits as Pillow unpacks 16-bit RGB, RGBA and gray+alpha: the most
/// significant byte.
fn msb(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Pillow's `DIV255`: `v / 255` rounded, for `v ≤ 255 · 255`.
fn div255(v: u32) -> u32 {
    let t = v + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's `paste(img, mask=alpha)` of one channel onto white (`paste_mask_L`'s
/// `BLEND(mask, out, in) = DIV255(out · (255 − mask) + in · mask)` with `out = 255`).
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    div255(255 * (255 - a) + c * a) as u8
}

/// Builds an RGB image from one `[r, g, b]` per source pixel, in row-major order.
fn rgb_from<I: Iterator<Item = [u8; 3]>>(width: u32, height: u32, pixels: I) -> RgbImage {
    let mut raw = Vec::with_capacity(width as usize * height as usize * 3);
    for p in pixels {
        raw.extend_from_slice(&p);
    }
    RgbImage::from_raw(width, height, raw).expect("one RGB triple per pixel")
}

/// Converts a decoded image to 8-bit RGB exactly as the reference loading does
/// (`qwen_vl_utils.to_rgb` on Pillow 13, plus the 16-bit grayscale rule of
/// `tools/make_fixtures.py`), taking each [`DynamicImage`] variant for the Pillow mode it
/// corresponds to:
///
/// * **RGBA** (`Rgba8`, `Rgba16`) is composited onto white like
///   `Image.new("RGB", size, (255, 255, 255)).paste(img, mask=alpha)`: per channel
///   `DIV255(255 · (255 − a) + c · a)` with Pillow's integer `DIV255` (bit-identical for all
///   256 × 256 `(c, a)` pairs);
/// * **gray + alpha** `La8` is Pillow's `LA`, which `qwen_vl_utils` passes to
///   `convert("RGB")`: the alpha channel is **dropped** (not composited) and the gray value
///   replicated;
/// * `La16` is composited like RGBA, because Pillow opens a 16-bit gray+alpha PNG as `RGBA`;
/// * 16-bit RGB, RGBA and gray+alpha samples keep their most significant byte (`v >> 8`), as
///   Pillow unpacks them; 16-bit grayscale (`L16`, Pillow's `I;16`) is rounded to
///   `(v + 128) / 257` instead (Pillow's own `convert("RGB")` would clip every value above 255
///   to white; the reference tools round);
/// * grayscale is replicated to three channels, RGB is returned as is;
/// * floating-point images (which Pillow cannot open as colour) go through
///   [`DynamicImage::to_rgba8`] and are then composited like RGBA when they have alpha, or
///   through [`DynamicImage::to_rgb8`] otherwise.
///
/// **Transparency without an alpha channel.** Pillow opens a palette PNG with a `tRNS` chunk
/// as mode `P`, and gray or RGB PNGs with a `tRNS` colour key as `L` / `I;16` / `RGB`; the
/// reference converts all of them with `convert("RGB")`, which ignores the transparency. The
/// `image` crate instead expands `tRNS` into an alpha channel while decoding (a palette PNG
/// with `tRNS` arrives here as `Rgba8`), so this function alone cannot tell such an image
/// from a true RGBA one. [`load_image`] and [`decode_image`] read the PNG colour type and
/// drop the expanded alpha before calling `to_rgb`, so files match the reference; callers
/// decoding images themselves must do the same to match it.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => rgb_from(w, h, i.pixels().map(|p| [p.0[0]; 3])),
        DynamicImage::ImageLuma16(i) => rgb_from(w, h, i.pixels().map(|p| [to_u8(p.0[0]); 3])),
        DynamicImage::ImageRgb16(i) => rgb_from(w, h, i.pixels().map(|p| p.0.map(msb))),
        DynamicImage::ImageLumaA8(i) => rgb_from(w, h, i.pixels().map(|p| [p.0[0]; 3])),
        DynamicImage::ImageLumaA16(i) => rgb_from(
            w,
            h,
            i.pixels()
                .map(|p| [over_white(msb(p.0[0]), msb(p.0[1])); 3]),
        ),
        DynamicImage::ImageRgba8(i) => rgb_from(
            w,
            h,
            i.pixels().map(|p| {
                let [r, g, b, a] = p.0;
                [over_white(r, a), over_white(g, a), over_white(b, a)]
            }),
        ),
        DynamicImage::ImageRgba16(i) => rgb_from(
            w,
            h,
            i.pixels().map(|p| {
                let [r, g, b, a] = p.0.map(msb);
                [over_white(r, a), over_white(g, a), over_white(b, a)]
            }),
        ),
        other if other.color().has_alpha() => {
            let i = other.to_rgba8();
            rgb_from(
                w,
                h,
                i.pixels().map(|p| {
                    let [r, g, b, a] = p.0;
                    [over_white(r, a), over_white(g, a), over_white(b, a)]
                }),
            )
        }
        other => other.to_rgb8(),
    }
}

/// Whether `bytes` is a PNG whose colour type has no alpha channel (gray, RGB or palette):
/// any alpha the decoder produced for it was expanded from a `tRNS` chunk, which Pillow
/// keeps out of the pixels (see [`to_rgb`]).
fn png_without_alpha_channel(bytes: &[u8]) -> bool {
    // signature (8), IHDR length (4) and type (4), width, height, bit depth, colour type
    bytes.get(12..16) == Some(b"IHDR".as_slice()) && matches!(bytes.get(25), Some(0 | 2 | 3))
}

/// Drops the alpha channel of an image (the samples are kept as they are).
fn drop_alpha(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLumaA8(i) => DynamicImage::ImageLuma8(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| image::Luma([i.get_pixel(x, y).0[0]]),
        )),
        DynamicImage::ImageLumaA16(i) => DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| image::Luma([i.get_pixel(x, y).0[0]]),
        )),
        DynamicImage::ImageRgba8(i) => DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| {
                let [r, g, b, _] = i.get_pixel(x, y).0;
                image::Rgb([r, g, b])
            },
        )),
        DynamicImage::ImageRgba16(i) => DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(
            i.width(),
            i.height(),
            |x, y| {
                let [r, g, b, _] = i.get_pixel(x, y).0;
                image::Rgb([r, g, b])
            },
        )),
        other => other,
    }
}
