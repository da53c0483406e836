//! Image preprocessing against the goldens of `tools/make_fixtures.py` (transformers 4.47
//! `Qwen2VLImageProcessor` on Pillow 13): target sizes, decoding, Pillow bicubic resize,
//! normalisation and patch order, and typed errors on bad input.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;

use echovlm_vision::error::ImageError;
use echovlm_vision::preprocess::{
    MAX_IMAGE_PIXELS, PixelValues, PreprocessConfig, decode_image, load_image, preprocess_image,
    preprocess_path, preprocess_video, preprocess_video_paths, resize, resized_size, smart_resize,
    to_rgb,
};
use image::{ImageEncoder, RgbImage};
use support::Golden;

const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
const ROW: usize = 1176;

// ---------------------------------------------------------------------------------------------
// smart_resize
// ---------------------------------------------------------------------------------------------

#[test]
fn smart_resize_table() {
    let d = 16384 * 28 * 28;
    let cases = [
        // (h, w, max_pixels) -> (h, w)
        ((600, 800, d), (588, 812)),
        ((768, 1024, d), (756, 1036)),
        ((1080, 1920, d), (1092, 1932)),
        ((1080, 1920, 1280 * 28 * 28), (728, 1316)),
        ((600, 800, 196 * 28 * 28), (336, 448)),
        ((600, 800, 144 * 28 * 28), (280, 364)),
        ((224, 224, d), (224, 224)),
        // banker's rounding: 70 / 28 = 2.5 -> 2
        ((70, 70, d), (56, 56)),
        // min_pixels branch
        ((42, 42, d), (56, 56)),
        // 238 / 28 = 8.5 -> 8, 182 / 28 = 6.5 -> 6
        ((238, 182, d), (224, 168)),
        // 1x1: clamped to 28x28, then the min_pixels branch
        ((1, 1, d), (56, 56)),
        // ratio exactly 200 is accepted
        ((10, 2000, d), (28, 1988)),
    ];
    for ((h, w, max), want) in cases {
        let got = smart_resize(h, w, 28, 3136, max).unwrap();
        assert_eq!(got, want, "smart_resize({h}, {w}, max_pixels={max})");
    }
    // the spec's token counts
    assert_eq!(588 / 28 * (812 / 28), 609);
    assert_eq!(756 / 28 * (1036 / 28), 999);
}

#[test]
fn smart_resize_errors() {
    assert!(matches!(
        smart_resize(10, 2001, 28, 3136, 12845056),
        Err(ImageError::AspectRatio {
            height: 10,
            width: 2001
        })
    ));
    assert!(matches!(
        smart_resize(100000, 10, 28, 3136, 12845056),
        Err(ImageError::AspectRatio { .. })
    ));
    assert!(matches!(
        smart_resize(0, 10, 28, 3136, 12845056),
        Err(ImageError::ZeroSize {
            height: 0,
            width: 10
        })
    ));
    assert!(matches!(
        smart_resize(10, 10, 0, 3136, 12845056),
        Err(ImageError::Config { .. })
    ));
    let msg = smart_resize(4000, 10, 28, 3136, 12845056)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("aspect ratio above 200"), "{msg}");
    // a max_pixels too small for the aspect ratio keeps a side of at least 28
    assert_eq!(
        smart_resize(10, 2000, 28, 0, 64 * 28 * 28).unwrap(),
        (28, 3164)
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn config_defaults_and_json() {
    let d = PreprocessConfig::default();
    assert_eq!(
        (d.min_pixels, d.max_pixels, d.patch_size, d.merge_size),
        (3136, 12845056, 14, 2)
    );
    assert_eq!(d.temporal_patch_size, 2);
    assert_eq!(d.factor(), 28);
    assert_eq!(d.row_len(), ROW);
    assert_eq!(PreprocessConfig::ultrasound().max_pixels, 1280 * 28 * 28);

    let from_model = PreprocessConfig::from_file(support::model_dir("tiny-echovlm")).unwrap();
    assert_eq!(from_model, d);
    for c in 0..3 {
        assert_eq!(d.image_mean[c], CLIP_MEAN[c] as f32);
        assert_eq!(d.image_std[c], CLIP_STD[c] as f32);
    }

    let partial = serde_json::json!({"max_pixels": 50176, "min_pixels": 3136});
    let cfg = PreprocessConfig::from_json(&partial).unwrap();
    assert_eq!(cfg.max_pixels, 50176);
    assert_eq!(cfg.patch_size, 14);
    let newer = serde_json::json!({"size": {"shortest_edge": 100, "longest_edge": 200000}});
    let cfg = PreprocessConfig::from_json(&newer).unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (100, 200000));

    for bad in [
        serde_json::json!({"min_pixels": 10, "max_pixels": 5}),
        serde_json::json!({"patch_size": 0}),
        serde_json::json!({"merge_size": -1}),
        serde_json::json!({"image_mean": [0.5, 0.5]}),
        serde_json::json!({"image_std": [0.5, 0.0, 0.5]}),
        serde_json::json!({"image_std": [0.5, "x", 0.5]}),
        serde_json::json!({"do_normalize": false}),
        serde_json::json!({"rescale_factor": 1.0}),
        serde_json::json!({"resample": 2}),
        serde_json::json!([1, 2]),
    ] {
        let err = PreprocessConfig::from_json(&bad).unwrap_err();
        assert!(matches!(err, ImageError::Config { .. }), "{bad}: {err}");
    }

    let dir = support::temp_dir("preproc-cfg");
    let p = dir.path().join("preprocessor_config.json");
    std::fs::write(&p, "{ not json").unwrap();
    let err = PreprocessConfig::from_file(&p).unwrap_err();
    assert!(
        matches!(&err, ImageError::Config { path: Some(q), .. } if q == &p),
        "{err}"
    );
    assert!(matches!(
        PreprocessConfig::from_file(dir.path().join("missing.json")),
        Err(ImageError::Io { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Goldens
// ---------------------------------------------------------------------------------------------

/// The normalised value golden level `level` of channel `c` stands for.
fn golden_value(level: u8, c: usize) -> f64 {
    ((f64::from(level) / 255.0) - CLIP_MEAN[c]) / CLIP_STD[c]
}

/// The 8-bit level an output value was normalised from (inverse of the normalisation, as
/// `pixel_levels` in the fixture generator).
fn level_of(x: f32, c: usize) -> i32 {
    ((f64::from(x) * CLIP_STD[c] + CLIP_MEAN[c]) * 255.0).round() as i32
}

struct Closeness {
    max_level_diff: i32,
    exact_fraction: f64,
    max_value_diff: f64,
}

/// Compares processor output with golden levels; checks the reconstruction is consistent.
fn compare(pv: &PixelValues, levels: &[u8], shape: &[usize]) -> Closeness {
    assert_eq!(shape, [pv.rows, ROW]);
    assert_eq!(pv.data.len(), levels.len());
    assert_eq!(pv.cols(), ROW);
    let mut max_level_diff = 0;
    let mut exact = 0usize;
    let mut max_value_diff = 0f64;
    for (i, (&x, &l)) in pv.data.iter().zip(levels).enumerate() {
        let c = (i % ROW) / (ROW / 3);
        let mine = level_of(x, c);
        // our value is exactly the normalisation of some 8-bit level
        assert!(
            (f64::from(x) - golden_value(mine as u8, c)).abs() < 1e-6,
            "value {x} at {i} is not a normalised 8-bit level"
        );
        let d = (mine - i32::from(l)).abs();
        max_level_diff = max_level_diff.max(d);
        if d == 0 {
            exact += 1;
        }
        max_value_diff = max_value_diff.max((f64::from(x) - golden_value(l, c)).abs());
    }
    Closeness {
        max_level_diff,
        exact_fraction: exact as f64 / levels.len() as f64,
        max_value_diff,
    }
}

fn golden_grid(g: &Golden, name: &str) -> [usize; 3] {
    let v = g.meta["images"][name]["grid_thw"].as_array().unwrap();
    [0, 1, 2].map(|i| v[i].as_u64().unwrap() as usize)
}

#[test]
fn images_match_processor_goldens() {
    let g = Golden::load("tiny-echovlm");
    let cfg = PreprocessConfig::default();
    let names = [
        "thyroid_300x220.png",
        "liver_182x238.png",
        "kidney_gray_256x200.jpg",
        "breast_rgba_150x120.png",
        "vessel_gray16_130x100.png",
    ];
    for name in names {
        let img = load_image(&support::image(name)).unwrap();
        let size = g.meta["images"][name]["size_hw"].as_array().unwrap();
        assert_eq!(
            [img.height() as u64, img.width() as u64],
            [size[0].as_u64().unwrap(), size[1].as_u64().unwrap()],
            "{name}: decoded size"
        );
        let pv = preprocess_image(&img, &cfg).unwrap();
        assert_eq!(pv.grid_thw, golden_grid(&g, name), "{name}: grid_thw");
        assert_eq!(pv.rows, pv.grid_thw.iter().product::<usize>());
        let key = format!("image.{name}.pixel_levels");
        let c = compare(&pv, &g.u8(&key), &g.shape(&key));
        eprintln!(
            "{name}: max level diff {}, exact {:.4}%, max value diff {:.2e}",
            c.max_level_diff,
            100.0 * c.exact_fraction,
            c.max_value_diff
        );
        if name.ends_with(".jpg") {
            // The JPEG decoders differ (zune-jpeg vs libjpeg-turbo): within one level.
            assert!(c.max_level_diff <= 1, "{name}: {}", c.max_level_diff);
        } else {
            // Lossless formats: decoding and Pillow's resize are reproduced exactly.
            assert_eq!(c.max_level_diff, 0, "{name}");
            assert!(c.max_value_diff < 1e-5, "{name}: {}", c.max_value_diff);
        }
        // the path helper is the same pipeline
        assert_eq!(preprocess_path(&support::image(name), &cfg).unwrap(), pv);
    }
}

#[test]
fn downscale_matches_golden() {
    let g = Golden::load("tiny-echovlm");
    let cfg = PreprocessConfig {
        min_pixels: 4 * 28 * 28,
        max_pixels: 64 * 28 * 28,
        ..PreprocessConfig::default()
    };
    let img = load_image(&support::image("thyroid_300x220.png")).unwrap();
    assert_eq!(resized_size(220, 300, &cfg).unwrap(), (168, 252));
    let pv = preprocess_image(&img, &cfg).unwrap();
    assert_eq!(pv.grid_thw, golden_grid(&g, "thyroid_small"));
    let key = "image.thyroid_small.pixel_levels";
    let c = compare(&pv, &g.u8(key), &g.shape(key));
    eprintln!(
        "thyroid_small (downscale): max level diff {}, exact {:.4}%",
        c.max_level_diff,
        100.0 * c.exact_fraction
    );
    assert_eq!(c.max_level_diff, 0);
    assert!(c.max_value_diff < 1e-5);
}

#[test]
fn odd_video_matches_golden() {
    let g = Golden::load("tiny-echovlm");
    let paths: Vec<_> = (0..3)
        .map(|i| support::image(&format!("heart_cine_{i}.png")))
        .collect();
    let frames: Vec<RgbImage> = paths.iter().map(|p| load_image(p).unwrap()).collect();
    let cfg = PreprocessConfig::default();
    let pv = preprocess_video(&frames, &cfg).unwrap();
    let want: Vec<usize> = g.meta["video_grid_thw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(pv.grid_thw.to_vec(), want);
    assert_eq!(pv.grid_thw[0], 2);
    let key = "video.heart_cine.pixel_levels";
    let c = compare(&pv, &g.u8(key), &g.shape(key));
    eprintln!(
        "heart_cine video: max level diff {}, exact {:.4}%",
        c.max_level_diff,
        100.0 * c.exact_fraction
    );
    assert_eq!(c.max_level_diff, 0);
    assert!(c.max_value_diff < 1e-5);

    // explicitly repeating the last frame gives the same rows
    let mut four = frames.clone();
    four.push(frames[2].clone());
    assert_eq!(preprocess_video(&four, &cfg).unwrap(), pv);
    assert_eq!(preprocess_video_paths(&paths, &cfg).unwrap(), pv);

    // one frame as a video equals the still image
    let still = preprocess_image(&frames[0], &cfg).unwrap();
    assert_eq!(preprocess_video(&frames[..1], &cfg).unwrap(), still);
}

#[test]
fn video_errors() {
    let cfg = PreprocessConfig::default();
    assert!(matches!(
        preprocess_video(&[], &cfg),
        Err(ImageError::NoFrames)
    ));
    let frames = [
        RgbImage::new(60, 50),
        RgbImage::new(60, 50),
        RgbImage::new(61, 50),
    ];
    let err = preprocess_video(&frames, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::FrameSizeMismatch {
                index: 2,
                expected: (50, 60),
                found: (50, 61)
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Layout and normalisation details
// ---------------------------------------------------------------------------------------------

#[test]
fn patch_order_and_normalisation() {
    // 56x56 image whose pixel (y, x) encodes its position: R = y, G = x, B = 7.
    let img = RgbImage::from_fn(56, 56, |x, y| image::Rgb([y as u8, x as u8, 7]));
    let cfg = PreprocessConfig::default();
    let pv = preprocess_image(&img, &cfg).unwrap();
    assert_eq!(pv.grid_thw, [1, 4, 4]);
    assert_eq!(pv.rows, 16);
    assert_eq!(pv.merged_tokens(2), 4);
    let norm = |v: u8, c: usize| {
        let x = (f64::from(v) * (1.0 / 255.0)) as f32;
        (x - CLIP_MEAN[c] as f32) / CLIP_STD[c] as f32
    };
    for row in 0..16 {
        // rows ordered (hb, wb, hm, wm)
        let (hb, wb, hm, wm) = (row / 8, (row / 4) % 2, (row / 2) % 2, row % 2);
        let (y0, x0) = ((hb * 2 + hm) * 14, (wb * 2 + wm) * 14);
        for c in 0..3 {
            for t in 0..2 {
                for py in 0..14 {
                    for px in 0..14 {
                        let col = ((c * 2 + t) * 14 + py) * 14 + px;
                        let v = [(y0 + py) as u8, (x0 + px) as u8, 7][c];
                        // bit-identical to transformers' f64 rescale + f32 normalize
                        assert_eq!(pv.data[row * ROW + col].to_bits(), norm(v, c).to_bits());
                    }
                }
            }
        }
    }
}

#[test]
fn resize_same_size_is_copy_and_constant_is_preserved() {
    let img = load_image(&support::image("demo_ultrasound.png")).unwrap();
    assert_eq!(resize(&img, 224, 280), img);
    let flat = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 90]));
    for (h, w) in [(56, 84), (12, 10), (23, 100), (90, 37)] {
        let r = resize(&flat, h, w);
        assert_eq!((r.height(), r.width()), (h as u32, w as u32));
        assert!(r.pixels().all(|p| p.0 == [200, 13, 90]), "{h}x{w}");
    }
    assert_eq!(resize(&flat, 0, 5).len(), 0);
}

#[test]
fn one_pixel_image() {
    let img = RgbImage::from_pixel(1, 1, image::Rgb([10, 20, 30]));
    let pv = preprocess_image(&img, &PreprocessConfig::default()).unwrap();
    assert_eq!(pv.grid_thw, [1, 4, 4]);
    assert_eq!(pv.rows, 16);
    // upscaling a single pixel keeps its value everywhere
    for (i, &x) in pv.data.iter().enumerate() {
        let c = (i % ROW) / 392;
        assert_eq!(level_of(x, c), [10, 20, 30][c]);
    }
    // also from an encoded file
    let png = encode_png(&img);
    let decoded = decode_image(&png).unwrap();
    assert_eq!(decoded, img);
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn formats_decode_identically() {
    let png = load_image(&support::image("liver_crop_64x48.png")).unwrap();
    assert_eq!((png.width(), png.height()), (64, 48));
    for ext in ["bmp", "tiff"] {
        let other = load_image(&support::image(&format!("liver_crop_64x48.{ext}"))).unwrap();
        assert_eq!(other, png, "{ext}");
    }
    // the crop is rows 100..148, columns 60..124 of the liver image
    let liver = load_image(&support::image("liver_182x238.png")).unwrap();
    for y in 0..48 {
        for x in 0..64 {
            assert_eq!(png.get_pixel(x, y), liver.get_pixel(x + 60, y + 100));
        }
    }
    // from bytes
    let bytes = std::fs::read(support::image("liver_crop_64x48.bmp")).unwrap();
    assert_eq!(decode_image(&bytes).unwrap(), png);
}

/// Every image under `fixtures/images/alpha/` against `<name>.rgb`, the RGB bytes the
/// reference loading (`qwen_vl_utils.to_rgb` on Pillow 13) produces from it
/// (`tools/make_alpha_fixtures.py`): RGBA composited on white with Pillow's integer blend,
/// LA / palette + tRNS / colour-key tRNS converted without their transparency, 16-bit colour
/// samples truncated to their high byte.
#[test]
fn transparency_matches_pillow_goldens() {
    let dir = support::image("alpha");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "rgb"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    for path in names {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
        let got = load_image(&path).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            bad,
            0,
            "{name}: {bad} of {} bytes differ from Pillow",
            want.len()
        );
    }
}

/// `to_rgb` on images the `image` crate decodes: RGBA is composited (every alpha value
/// 0..=255 occurs in the fixture), LA drops its alpha.
#[test]
fn to_rgb_of_decoded_images() {
    let dir = support::image("alpha");
    for name in [
        "rgba8_32x32.png",
        "rgba16_16x16.png",
        "la8_16x16.png",
        "la16_16x16.png",
    ] {
        let img = image::open(dir.join(name)).unwrap();
        let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
        let got = to_rgb(img).into_raw();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{name}: {bad} bytes differ from Pillow");
    }
    // gray + alpha: the gray value, whatever the alpha
    let la = image::GrayAlphaImage::from_fn(4, 1, |x, _| {
        image::LumaA([[0, 100, 200, 77][x as usize], [0, 128, 255, 1][x as usize]])
    });
    let rgb = to_rgb(image::DynamicImage::ImageLumaA8(la));
    for (x, v) in [0u8, 100, 200, 77].into_iter().enumerate() {
        assert_eq!(rgb.get_pixel(x as u32, 0).0, [v; 3], "x={x}");
    }
    // RGBA: DIV255(255 (255 - a) + c a)
    let rgba = image::RgbaImage::from_fn(4, 1, |x, _| {
        image::Rgba([
            [0, 100, 200, 77][x as usize],
            0,
            255,
            [0, 128, 255, 1][x as usize],
        ])
    });
    let rgb = to_rgb(image::DynamicImage::ImageRgba8(rgba));
    let want = [
        [255, 255, 255],
        [177, 127, 255],
        [200, 0, 255],
        [254, 254, 255],
    ];
    for (x, w) in want.into_iter().enumerate() {
        assert_eq!(rgb.get_pixel(x as u32, 0).0, w, "x={x}");
    }
}

#[test]
fn sixteen_bit_gray_is_rounded() {
    // 16-bit gray: (v + 128) / 257
    let g16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(4, 1, |x, _| {
        image::Luma([[0u16, 129, 643, 65535][x as usize]])
    });
    let raw: Vec<u8> = g16.as_raw().iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(&raw, 4, 1, image::ExtendedColorType::L16)
        .unwrap();
    let rgb = decode_image(&bytes).unwrap();
    let want: [u8; 4] = [0, 1, 3, 255];
    for x in 0..4 {
        assert_eq!(rgb.get_pixel(x, 0).0, [want[x as usize]; 3], "x={x}");
    }
}

fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn names_file(err: &ImageError, p: &Path) -> bool {
    err.path() == Some(p) && err.to_string().contains(&p.display().to_string())
}

#[test]
fn bad_files_give_typed_errors() {
    let dir = support::temp_dir("preproc-bad");

    // empty file
    let p = write(dir.path(), "empty.png", &[]);
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::Empty { .. }), "{err}");
    assert!(names_file(&err, &p), "{err}");
    assert!(matches!(
        decode_image(&[]),
        Err(ImageError::Empty { path: None })
    ));

    // missing file
    let missing = dir.path().join("missing.png");
    let err = load_image(&missing).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(names_file(&err, &missing), "{err}");

    // truncated PNG (header intact, image data cut)
    let png = std::fs::read(support::image("thyroid_300x220.png")).unwrap();
    let p = write(dir.path(), "truncated.png", &png[..png.len() / 2]);
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    assert!(names_file(&err, &p), "{err}");

    // PNG with a damaged image-data chunk
    let mut bad = png.clone();
    let idat = bad.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut bad[idat + 4..idat + 40] {
        *b ^= 0x5a;
    }
    let p = write(dir.path(), "corrupt.png", &bad);
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");

    // corrupt JPEG: valid start-of-image marker followed by garbage
    let mut jpg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpg.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let p = write(dir.path(), "corrupt.jpg", &jpg);
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    assert!(names_file(&err, &p), "{err}");

    // truncated JPEG (cut inside the scan data; the decoder alone would fill it with grey)
    let kidney = std::fs::read(support::image("kidney_gray_256x200.jpg")).unwrap();
    for cut in [kidney.len() / 2, kidney.len() - 2] {
        let p = write(dir.path(), "truncated.jpg", &kidney[..cut]);
        let err = load_image(&p).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(names_file(&err, &p), "{err}");
    }
    // trailing bytes after the end-of-image marker are fine (as in Pillow)
    let mut padded = kidney.clone();
    padded.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        decode_image(&padded).unwrap(),
        load_image(&support::image("kidney_gray_256x200.jpg")).unwrap()
    );

    // truncated JPEG (cut inside the headers)
    let err = decode_image(&kidney[..100]).unwrap_err();
    assert!(
        matches!(err, ImageError::Decode { path: None, .. }),
        "{err}"
    );

    // not an image at all
    let p = write(dir.path(), "notes.png", b"this is not an image");
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    assert!(names_file(&err, &p), "{err}");
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    // a valid 2x2 PNG whose IHDR is patched to declare 20000x20000 pixels
    let mut png = encode_png(&RgbImage::new(2, 2));
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&20000u32.to_be_bytes());
    png[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());

    let err = decode_image(&png).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 20000,
                height: 20000,
                limit: MAX_IMAGE_PIXELS,
                ..
            }
        ),
        "{err}"
    );
    let dir = support::temp_dir("preproc-bomb");
    let p = write(dir.path(), "bomb.png", &png);
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(names_file(&err, &p), "{err}");
    assert!(err.to_string().contains("20000x20000"), "{err}");
}

#[test]
fn extreme_aspect_ratio_image_is_refused() {
    let dir = support::temp_dir("preproc-ratio");
    let img = RgbImage::from_pixel(4000, 10, image::Rgb([50, 60, 70]));
    let p = write(dir.path(), "strip.png", &encode_png(&img));
    let loaded = load_image(&p).unwrap();
    let err = preprocess_image(&loaded, &PreprocessConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::AspectRatio {
                height: 10,
                width: 4000
            }
        ),
        "{err}"
    );
    assert!(matches!(
        preprocess_path(&p, &PreprocessConfig::default()),
        Err(ImageError::AspectRatio { .. })
    ));
    // zero-sized input
    assert!(matches!(
        preprocess_image(&RgbImage::new(0, 0), &PreprocessConfig::default()),
        Err(ImageError::ZeroSize { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Pillow bicubic resize grid
// ---------------------------------------------------------------------------------------------

/// The source image of `tools/make_resize_fixtures.py`: the low byte of successive splitmix64
/// outputs, every 7th column alternately black and white.
fn resize_source(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut state = seed;
    let mut raw = Vec::with_capacity((w * h * 3) as usize);
    for _ in 0..w * h * 3 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        raw.push((z ^ (z >> 31)) as u8);
    }
    let mut img = RgbImage::from_raw(w, h, raw).unwrap();
    for x in (0..w).step_by(7) {
        let v = if (x / 7) % 2 == 0 { 0 } else { 255 };
        for y in 0..h {
            img.put_pixel(x, y, image::Rgb([v; 3]));
        }
    }
    img
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// `resize` against Pillow 13's `Image.resize((w, h), Image.BICUBIC)` on 160 cases
/// (`tools/make_resize_fixtures.py`): sources 37×23, 101×77, 23×300, 1000×120 and 257×193,
/// targets from ¼ to 4× on each axis independently (up on one, down on the other, unchanged on
/// one), including the `smart_resize` sizes 1008×112 and 252×196 and both sides of Pillow 13's
/// pass-order rule. Every output byte is compared
/// (hash of the whole output; the full image for the cases stored as PNG).
#[test]
fn resize_grid_matches_pillow() {
    let dir = support::image("resize");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert_eq!(
        fnv1a64(resize_source(37, 23, 1).as_raw()),
        spec["source_37x23_seed1_fnv1a64"].as_str().unwrap(),
        "the source generator differs from the Python one"
    );
    let cases = spec["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 160);
    let mut failed = Vec::new();
    let mut full = 0;
    for case in cases {
        let n = |v: &serde_json::Value| u32::try_from(v.as_u64().unwrap()).unwrap();
        let (w, h, seed) = (
            n(&case["src"][0]),
            n(&case["src"][1]),
            case["src"][2].as_u64().unwrap(),
        );
        let (ow, oh) = (n(&case["out"][0]), n(&case["out"][1]));
        let got = resize(&resize_source(w, h, seed), oh as usize, ow as usize);
        assert_eq!((got.width(), got.height()), (ow, oh));
        if fnv1a64(got.as_raw()) != case["fnv1a64"].as_str().unwrap() {
            failed.push(format!("{w}x{h} -> {ow}x{oh}"));
        }
        if let Some(png) = case.get("png").and_then(|p| p.as_str()) {
            let want = image::open(dir.join(png)).unwrap().to_rgb8();
            let bad = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(bad, 0, "{png}: {bad} bytes differ from Pillow");
            full += 1;
        }
    }
    assert_eq!(full, 4);
    assert!(
        failed.is_empty(),
        "{} cases differ from Pillow: {failed:?}",
        failed.len()
    );
}

// ---------------------------------------------------------------------------------------------
// PixelValues consistency
// ---------------------------------------------------------------------------------------------

#[test]
fn pixel_values_validate_rejects_inconsistent_shapes() {
    let img = resize_source(60, 45, 9);
    let pv = preprocess_image(&img, &PreprocessConfig::default()).unwrap();
    assert_eq!(pv.grid_thw, [1, 4, 4]);
    pv.validate(ROW, 2).unwrap();
    let video = preprocess_video(
        &[img.clone(), img.clone(), img],
        &PreprocessConfig::default(),
    )
    .unwrap();
    assert_eq!(video.grid_thw, [2, 4, 4]);
    video.validate(ROW, 2).unwrap();

    let broken = |f: &dyn Fn(&mut PixelValues)| {
        let mut p = pv.clone();
        f(&mut p);
        p
    };
    let cases: Vec<(&str, PixelValues, usize, usize)> = vec![
        (
            "one value short",
            broken(&|p| p.data.truncate(p.data.len() - 1)),
            ROW,
            2,
        ),
        (
            "one row more than the grid",
            broken(&|p| {
                p.rows += 1;
                p.data.extend(vec![0.0; ROW]);
            }),
            ROW,
            2,
        ),
        (
            "grid of another image",
            broken(&|p| p.grid_thw = [1, 4, 6]),
            ROW,
            2,
        ),
        (
            "grid side not a multiple of merge",
            broken(&|p| {
                p.grid_thw = [1, 2, 8];
            }),
            ROW,
            4,
        ),
        (
            "zero grid",
            broken(&|p| {
                p.grid_thw = [0, 4, 4];
                p.rows = 0;
                p.data.clear();
            }),
            ROW,
            2,
        ),
        ("other row length", pv.clone(), 3 * 2 * 16 * 16, 2),
        ("zero merge", pv.clone(), ROW, 0),
        (
            "grid product overflows",
            broken(&|p| p.grid_thw = [usize::MAX, 2, 2]),
            ROW,
            2,
        ),
    ];
    for (what, p, row_len, merge) in cases {
        let Err(err) = p.validate(row_len, merge) else {
            panic!("{what}: accepted");
        };
        let ImageError::PixelShape {
            data_len,
            rows,
            grid_thw,
            row_len: r,
            merge_size,
        } = err
        else {
            panic!("{what}: {err}");
        };
        assert_eq!(
            (data_len, rows, grid_thw, r, merge_size),
            (p.data.len(), p.rows, p.grid_thw, row_len, merge),
            "{what}"
        );
        assert!(err.to_string().contains("inconsistent"), "{what}: {err}");
    }
}
