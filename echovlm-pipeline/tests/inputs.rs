//! Everything a caller may hold as an image (paths of every kind, decoded images, encoded
//! bytes) prepares to the same prompt as the file path; hand-built prompts that do not fit
//! together and token ids out of range in `generation_config.json` are typed errors.

use std::path::{Path, PathBuf};

use echovlm_core::LoadError;
use echovlm_pipeline::{
    EchoError, EchoVlm, GenerationOptions, ImageSource, LoadOptions, PreparedPrompt, Request,
};
use echovlm_vision::error::ImageError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("models/tiny-echovlm")
}

fn model() -> EchoVlm {
    EchoVlm::load(model_dir(), &LoadOptions::default()).unwrap()
}

fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

fn prepare(m: &EchoVlm, src: impl Into<ImageSource>) -> PreparedPrompt {
    m.prepare(&Request::new("Describe the image.").image(src))
        .unwrap()
}

/// Same ids, same grids, same pixel values, bit for bit.
fn assert_same(a: &PreparedPrompt, b: &PreparedPrompt, what: &str) {
    assert_eq!(a.ids, b.ids, "{what}: ids");
    assert_eq!(a.images.len(), b.images.len(), "{what}: images");
    assert_eq!(a.videos.len(), b.videos.len(), "{what}: videos");
    for (x, y) in a
        .images
        .iter()
        .chain(&a.videos)
        .zip(b.images.iter().chain(&b.videos))
    {
        assert_eq!(x.grid_thw, y.grid_thw, "{what}: grid");
        assert_eq!(x.rows, y.rows, "{what}: rows");
        assert!(x.data == y.data, "{what}: pixel values differ");
    }
}

#[test]
fn every_kind_of_path_prepares_like_the_file() {
    let m = model();
    let path: PathBuf = image("liver_crop_64x48.png");
    let reference = prepare(&m, path.clone());
    assert_eq!(reference.images[0].grid_thw, [1, 4, 4]);
    let string: String = path.display().to_string();
    assert_same(&reference, &prepare(&m, &string), "&String");
    assert_same(&reference, &prepare(&m, string.clone()), "String");
    assert_same(&reference, &prepare(&m, string.as_str()), "&str");
    assert_same(&reference, &prepare(&m, &path), "&PathBuf");
    assert_same(&reference, &prepare(&m, path.as_path()), "&Path");
}

#[test]
fn decoded_images_prepare_like_the_file() {
    let m = model();
    for name in [
        "liver_crop_64x48.png",
        "kidney_gray_256x200.jpg",
        "breast_rgba_150x120.png",
        "vessel_gray16_130x100.png",
    ] {
        let path = image(name);
        let reference = prepare(&m, &path);
        let decoded = image::open(&path).unwrap();
        assert_same(&reference, &prepare(&m, decoded.clone()), name);
        // the pixel buffer itself, in its own format
        let buffer = match &decoded {
            image::DynamicImage::ImageRgb8(b) => prepare(&m, b.clone()),
            image::DynamicImage::ImageRgba8(b) => prepare(&m, b.clone()),
            image::DynamicImage::ImageLuma8(b) => prepare(&m, b.clone()),
            image::DynamicImage::ImageLuma16(b) => {
                let gray16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> = b.clone();
                prepare(&m, gray16)
            }
            other => panic!("{name}: unexpected pixel format {:?}", other.color()),
        };
        assert_same(&reference, &buffer, name);
    }
}

#[test]
fn encoded_bytes_prepare_like_the_file() {
    let m = model();
    for name in [
        "liver_crop_64x48.png",
        "liver_crop_64x48.bmp",
        "liver_crop_64x48.tiff",
        "kidney_gray_256x200.jpg",
        "vessel_gray16_130x100.png",
    ] {
        let path = image(name);
        let bytes = std::fs::read(&path).unwrap();
        let from_bytes = m
            .prepare(&Request::new("Describe the image.").image_bytes(bytes))
            .unwrap();
        assert_same(&prepare(&m, &path), &from_bytes, name);
    }
}

#[cfg(feature = "dicom")]
#[test]
fn dicom_bytes_prepare_like_the_file() {
    let m = model();
    for (name, stills, loops) in [("us_mono8.dcm", 1, 0), ("us_rgb_cine.dcm", 0, 1)] {
        let path = fixtures().join("dicom").join(name);
        let from_file = prepare(&m, &path);
        let from_bytes = prepare(&m, ImageSource::bytes(std::fs::read(&path).unwrap()));
        assert_eq!(
            (from_bytes.images.len(), from_bytes.videos.len()),
            (stills, loops),
            "{name}"
        );
        assert_same(&from_file, &from_bytes, name);
    }
}

#[test]
fn cine_frames_of_every_kind_prepare_alike() {
    let m = model();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| image(&format!("heart_cine_{i}.png")))
        .collect();
    let request = |r: Request| m.prepare(&r.text("Describe the loop.")).unwrap();
    let reference = request(Request::default().cine(&paths));
    assert_eq!(reference.videos.len(), 1);
    let bytes = paths
        .iter()
        .map(|p| ImageSource::bytes(std::fs::read(p).unwrap()));
    assert_same(
        &reference,
        &request(Request::default().cine(bytes)),
        "bytes",
    );
    let decoded = paths.iter().map(|p| image::open(p).unwrap());
    assert_same(
        &reference,
        &request(Request::default().cine(decoded)),
        "decoded",
    );
    let strings: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    assert_same(
        &reference,
        &request(Request::default().cine(&strings)),
        "&String",
    );
}

#[test]
fn broken_bytes_are_typed_errors() {
    let m = model();
    let png = std::fs::read(image("liver_crop_64x48.png")).unwrap();
    let mut not_dicom = vec![0u8; 128];
    not_dicom.extend_from_slice(b"DICMgarbage");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "image is empty (0 bytes)"),
        (b"hello, world".to_vec(), "not a recognised image format"),
        (png[..png.len() / 2].to_vec(), "cannot decode image"),
        #[cfg(feature = "dicom")]
        (not_dicom, "DICOM"),
    ];
    for (bytes, needle) in cases {
        let err = m
            .prepare(&Request::new("x").image_bytes(bytes))
            .unwrap_err();
        match &err {
            EchoError::Image(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{msg} / {needle}");
                assert!(
                    !matches!(e, ImageError::Io { .. }),
                    "bytes are not a file: {e:?}"
                );
            }
            other => panic!("{needle}: expected EchoError::Image, got {other:?}"),
        }
    }
}

/// A prompt built by hand (or edited) whose ids and pixel values disagree is refused with
/// `EchoError::InvalidPrompt` before Burn sees a tensor, by `run` and by `next_token_logits`.
#[test]
fn inconsistent_prepared_prompts_are_typed_errors() {
    let m = model();
    let good = prepare(&m, image("liver_crop_64x48.png"));
    let image_id = m.tokenizer().special().image_pad;
    assert_eq!(good.ids.iter().filter(|&&t| t == image_id).count(), 4);
    type Edit = Box<dyn Fn(&mut PreparedPrompt)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|p| p.ids.clear()), "no token ids"),
        (
            Box::new(|p| p.ids[0] = 100_000),
            "token id 100000 is outside the vocabulary",
        ),
        (
            Box::new(|p| {
                p.images[0].data.pop();
            }),
            "values are not rows x cols",
        ),
        (
            Box::new(|p| p.images[0].rows = 15),
            "rows = 15 but grid_thw [1, 4, 4] gives 16",
        ),
        (
            Box::new(|p| p.images[0].grid_thw = [2, 4, 4]),
            "rows = 16 but grid_thw [2, 4, 4] gives 32",
        ),
        (
            Box::new(|p| p.images[0].grid_thw = [1, 3, 4]),
            "multiples of the merge size 2",
        ),
        (
            Box::new(|p| p.images[0].grid_thw = [0, 4, 4]),
            "must be positive",
        ),
        (
            Box::new(move |p| p.ids.push(image_id)),
            "5 image placeholder tokens but the images' pixel values make 4 merged tokens",
        ),
        (
            Box::new(|p| {
                p.videos.push(p.images[0].clone());
                p.video_fps.push(2.0);
            }),
            "0 video placeholder tokens but the videos' pixel values make 4",
        ),
        (
            Box::new(|p| p.videos.push(p.images[0].clone())),
            "0 frame rates for 1 videos",
        ),
        (
            Box::new(|p| {
                p.videos.push(p.images[0].clone());
                p.video_fps.push(f64::NAN);
            }),
            "video fps = NaN is not a positive number",
        ),
    ];
    for (edit, needle) in cases {
        let mut p = good.clone();
        edit(&mut p);
        let check = |err: EchoError| match err {
            EchoError::InvalidPrompt(msg) => assert!(msg.contains(needle), "{msg} / {needle}"),
            other => panic!("{needle}: expected EchoError::InvalidPrompt, got {other:?}"),
        };
        match m.next_token_logits(&p) {
            Err(e) => check(e),
            Ok(_) => panic!("{needle}: next_token_logits ran"),
        }
        match m.run(vec![p], &GenerationOptions::greedy(1), None) {
            Err(e) => check(e),
            Ok(_) => panic!("{needle}: run ran"),
        }
    }
    // the unedited prompt runs
    assert_eq!(m.next_token_logits(&good).unwrap().len(), 704);
}

/// Token ids in `generation_config.json` outside `0..=u32::MAX`, or not integers, are refused
/// with an error naming the file and the key instead of being truncated.
#[test]
fn out_of_range_generation_config_ids_are_refused() {
    let cases = [
        (r#"{"eos_token_id": -1}"#, "eos_token_id holds -1"),
        (
            r#"{"eos_token_id": [642, 4294967296]}"#,
            "eos_token_id holds 4294967296",
        ),
        (
            r#"{"eos_token_id": [642, null]}"#,
            "eos_token_id holds null",
        ),
        (r#"{"pad_token_id": 1.5}"#, "pad_token_id holds 1.5"),
        (r#"{"pad_token_id": "640"}"#, r#"pad_token_id holds "640""#),
        (
            r#"{"bos_token_id": 4294967296}"#,
            "bos_token_id holds 4294967296",
        ),
    ];
    for (json, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(model_dir()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
        match EchoVlm::load(dir.path(), &LoadOptions::default()).unwrap_err() {
            EchoError::Load(LoadError::Config { path, reason }) => {
                assert!(path.ends_with("generation_config.json"), "{path:?}");
                assert!(reason.contains(needle), "{reason} / {needle}");
            }
            other => panic!("{needle}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn generation_config_ids_in_range_are_read() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 642, "pad_token_id": null, "bos_token_id": [640]}"#,
    )
    .unwrap();
    let m = EchoVlm::load(dir.path(), &LoadOptions::default()).unwrap();
    let stops = m.default_generation().stop_token_ids;
    assert_eq!(stops[0], 642);
    // the tiny model's default file: a list
    assert_eq!(model().default_generation().stop_token_ids[..2], [642, 640]);
}

#[test]
fn cine_loops_carry_their_frame_rate() {
    let m = model();
    let frames = [image("heart_cine_0.png"), image("heart_cine_1.png")];
    let fps = |r: Request| m.prepare(&r).unwrap().video_fps;
    assert_eq!(fps(Request::new("x").cine(frames.clone())), vec![2.0]);
    assert_eq!(
        fps(Request::new("x").cine(frames.clone()).fps(4.5)),
        vec![4.5]
    );
    assert_eq!(
        PreparedPrompt::new(
            vec![1],
            Vec::new(),
            vec![prepare(&m, image("thyroid_300x220.png")).images[0].clone()]
        )
        .video_fps,
        vec![echovlm_pipeline::DEFAULT_FPS]
    );
    for bad in [0.0, -2.0, f64::NAN, f64::INFINITY] {
        match m.prepare(&Request::new("x").cine(frames.clone()).fps(bad)) {
            Err(EchoError::InvalidRequest(msg)) => assert!(msg.contains("fps"), "{msg}"),
            other => panic!("fps {bad}: expected InvalidRequest, got {other:?}"),
        }
    }
}

#[cfg(feature = "dicom")]
#[test]
fn multi_frame_dicom_plays_at_its_recorded_rate() {
    let m = model();
    let dcm = fixtures().join("dicom/us_rgb_cine.dcm");
    let p = m.prepare(&Request::new("x").image(&dcm)).unwrap();
    assert_eq!(p.videos.len(), 1);
    // Frame Time 33.3 ms
    assert!(
        (p.video_fps[0] - 1000.0 / 33.3).abs() < 1e-9,
        "{:?}",
        p.video_fps
    );
    let strided = Request::new("x")
        .image(&dcm)
        .dicom_frames(echovlm_vision::dicom::FrameSelection::Stride(2));
    let p = m.prepare(&strided).unwrap();
    assert!((p.video_fps[0] - 1000.0 / 33.3 / 2.0).abs() < 1e-9);
    // the request's rate wins
    let p = m.prepare(&Request::new("x").image(&dcm).fps(10.0)).unwrap();
    assert_eq!(p.video_fps, vec![10.0]);
}
