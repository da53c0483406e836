//! Hostile and borderline images through `EchoVlm::generate` / `prepare` with
//! `Request::new(..).image(path)`: empty, corrupt and truncated files, unsupported formats,
//! decompression bombs, extreme aspect ratios, and unusual but valid pixel formats.
//!
//! Bad images give one typed `EchoError::Image` naming the file; images the reference
//! processor accepts (a single pixel, aspect ratio exactly 200, 16-bit, palette, grey+alpha,
//! CMYK JPEG) generate. Inputs: `tests/corpus/images/` (`tools/make_hostile_corpus.py`).

mod support;

use std::path::{Path, PathBuf};

use echovlm_pipeline::{EchoError, EchoVlm, GenerationOptions, LoadOptions, Request};
use echovlm_vision::error::ImageError;
use echovlm_vision::preprocess::{MAX_IMAGE_PIXELS, load_image};
use support::model_dir;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/images")
        .join(name)
}

fn model() -> EchoVlm {
    EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap()
}

fn greedy() -> GenerationOptions {
    GenerationOptions::greedy(3).ignore_eos(true)
}

/// Generates for one corpus image; the image error must name the file.
fn image_error(m: &EchoVlm, name: &str) -> ImageError {
    let path = corpus(name);
    let err = m
        .generate(&Request::new("x").image(path.as_path()), &greedy())
        .expect_err("a hostile image was accepted");
    assert!(err.to_string().contains(name), "{name}: {err}");
    match err {
        EchoError::Image(e) => e,
        other => panic!("{name}: expected EchoError::Image, got {other:?}"),
    }
}

#[test]
fn unreadable_images_are_typed_errors_naming_the_file() {
    let m = model();
    let cases: [(&str, &str); 7] = [
        ("not_an_image.png", "not a recognised image format"),
        ("gif.gif", "Gif images are not supported"),
        ("truncated.jpg", "JPEG data is truncated"),
        ("corrupt.jpg", ""),
        ("truncated.png", ""),
        ("zero_width.png", ""),
        ("max_size_truncated.png", ""),
    ];
    for (name, needle) in cases {
        match image_error(&m, name) {
            ImageError::Decode { path, reason } => {
                assert_eq!(path, Some(corpus(name)), "{name}");
                assert!(!reason.is_empty(), "{name}");
                assert!(
                    reason.contains(needle),
                    "{name}: {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{name}: expected ImageError::Decode, got {other:?}"),
        }
    }
}

#[test]
fn empty_file_is_an_empty_image_error() {
    let m = model();
    match image_error(&m, "empty.png") {
        ImageError::Empty { path } => assert_eq!(path, Some(corpus("empty.png"))),
        other => panic!("expected ImageError::Empty, got {other:?}"),
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let m = model();
    match image_error(&m, "no_such_frame.png") {
        ImageError::Io { path, source } => {
            assert_eq!(path, corpus("no_such_frame.png"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected ImageError::Io, got {other:?}"),
    }
}

/// Headers declaring 20000² (PNG) and 30000² (BMP) pixels are refused from the header: the
/// files are 69 and 70 bytes and no pixel buffer is allocated.
#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let m = model();
    for (name, size) in [
        ("bomb_20000x20000.png", 20000),
        ("bomb_30000x30000.bmp", 30000),
    ] {
        match image_error(&m, name) {
            ImageError::TooLarge {
                path,
                width,
                height,
                limit,
            } => {
                assert_eq!(path, Some(corpus(name)));
                assert_eq!((width, height), (size, size), "{name}");
                assert_eq!(limit, MAX_IMAGE_PIXELS);
            }
            other => panic!("{name}: expected ImageError::TooLarge, got {other:?}"),
        }
    }
}

#[test]
fn aspect_ratio_above_200_is_refused() {
    let m = model();
    let err = m
        .prepare(&Request::new("x").image(corpus("wide_100000x10.png")))
        .unwrap_err();
    assert!(err.to_string().contains("aspect ratio above 200"), "{err}");
    match err {
        EchoError::Image(ImageError::AspectRatio { height, width }) => {
            assert_eq!((height, width), (10, 100000))
        }
        other => panic!("expected ImageError::AspectRatio, got {other:?}"),
    }
}

/// Images the reference processor accepts generate, with the grid `smart_resize` gives.
#[test]
fn borderline_valid_images_generate() {
    let m = model();
    let cases = [
        // 1x1 is upsized to the 56x56 minimum (min_pixels = 3136)
        ("one_pixel.png", [1, 4, 4]),
        // 2000x10 is exactly the largest accepted ratio
        ("ratio_200_2000x10.png", [1, 2, 142]),
        ("gray16.png", [1, 4, 6]),
        ("rgb16.png", [1, 4, 6]),
        ("palette.png", [1, 4, 4]),
        ("la.png", [1, 4, 4]),
        ("gray.jpg", [1, 4, 4]),
        ("cmyk.jpg", [1, 4, 4]),
    ];
    for (name, grid) in cases {
        let out = m
            .generate(&Request::new("Describe.").image(corpus(name)), &greedy())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.image_grid_thw, vec![grid], "{name}");
        assert_eq!(out.generated_token_ids.len(), 3, "{name}");
        let merged = grid.iter().product::<usize>() / 4;
        let image_id = m.tokenizer().special().image_pad;
        let placeholders = out
            .prompt_token_ids
            .iter()
            .filter(|&&t| t == image_id)
            .count();
        assert_eq!(placeholders, merged, "{name}");
    }
}

/// 16-bit samples become 8-bit as `(v + 128) / 257`: a 16-bit PNG decodes to the levels of
/// the same picture stored with 8 bits, within rounding.
#[test]
fn sixteen_bit_png_matches_its_8_bit_levels() {
    let img = load_image(&corpus("rgb16.png")).unwrap();
    assert_eq!(img.dimensions(), (40, 30));
    // the corpus picture is uniform noise over 0..=65535: 8-bit levels cover 0..=255
    let (lo, hi) = img
        .as_raw()
        .iter()
        .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(lo <= 5 && hi >= 250, "levels {lo}..={hi}");
}

/// CMYK JPEGs (Adobe, as Pillow writes them) decode to RGB: the corpus picture is a red ramp
/// along x and a green ramp along y over constant blue, saved as CMYK.
#[test]
fn cmyk_jpeg_decodes_to_the_rgb_picture() {
    let img = load_image(&corpus("cmyk.jpg")).unwrap();
    assert_eq!(img.dimensions(), (64, 48));
    let mut worst = 0i32;
    for (x, y, p) in img.enumerate_pixels() {
        let want = [(x * 4) as i32, (y * 5) as i32, 128];
        for (&got, want) in p.0.iter().zip(want) {
            worst = worst.max((i32::from(got) - want).abs());
        }
    }
    assert!(worst <= 12, "largest channel error {worst}");
}

#[test]
fn empty_and_ragged_cine_loops_are_refused() {
    let m = model();
    let err = m
        .prepare(&Request::new("x").cine(Vec::<PathBuf>::new()))
        .unwrap_err();
    assert!(
        matches!(err, EchoError::Image(ImageError::NoFrames)),
        "{err:?}"
    );
    let frames = [support::image("heart_cine_0.png"), corpus("gray16.png")];
    match m.prepare(&Request::new("x").cine(frames)).unwrap_err() {
        EchoError::Image(ImageError::FrameSizeMismatch { index, found, .. }) => {
            assert_eq!(index, 1);
            assert_eq!(found, (30, 40));
        }
        other => panic!("expected ImageError::FrameSizeMismatch, got {other:?}"),
    }
}

/// A file with the DICOM preamble and magic but nothing after it is sent to the DICOM reader
/// and refused by it.
#[cfg(feature = "dicom")]
#[test]
fn truncated_dicom_is_refused() {
    let m = model();
    let dir = support::temp_dir("dicom");
    let path = dir.path().join("study.dcm");
    let mut bytes = vec![0u8; 128];
    bytes.extend(b"DICM\x02\x00\x00\x00UL\x04\x00");
    std::fs::write(&path, bytes).unwrap();
    let err = m
        .prepare(&Request::new("x").image(path.as_path()))
        .unwrap_err();
    assert!(err.to_string().contains("study.dcm"), "{err}");
    assert!(
        matches!(err, EchoError::Image(ImageError::Dicom { .. })),
        "{err:?}"
    );
}

#[test]
fn pixel_budget_overrides_are_checked() {
    let m = model();
    let request = Request::new("x")
        .image(support::image("liver_182x238.png"))
        .pixels(Some(10_000), Some(5_000));
    match m.prepare(&request).unwrap_err() {
        EchoError::Image(ImageError::Config { reason, .. }) => assert!(
            reason.contains("min_pixels (10000) is larger than max_pixels (5000)"),
            "{reason}"
        ),
        other => panic!("expected ImageError::Config, got {other:?}"),
    }
    let request = Request::new("x")
        .image(support::image("liver_182x238.png"))
        .pixels(None, Some(0));
    assert!(matches!(
        m.prepare(&request).unwrap_err(),
        EchoError::Image(ImageError::Config { .. })
    ));
}
