//! The vision tower and merger against transformers (goldens from tools/make_fixtures.py).

#[path = "../../tests/support/mod.rs"]
mod support;

use burn::tensor::{DType, Device, Tensor, TensorData};
use echovlm_core::host::flex_f32_vec;
use echovlm_core::{Checkpoint, LinearOptions, load};
use echovlm_vision::{VisionConfig, VisionError, VisionModel};
use support::{Golden, max_abs_diff, model_dir};

const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

fn load_vision() -> VisionModel {
    let dir = model_dir("tiny-echovlm");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = VisionConfig::from_json(&json, 64, "config.json").unwrap();
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    load(
        &ckpt,
        &Device::default(),
        DType::F32,
        LinearOptions::default(),
        |l| {
            l.ignore_prefix("model.");
            l.ignore_prefix("lm_head.");
            VisionModel::load(l, &cfg)
        },
    )
    .unwrap()
}

/// Processor output rebuilt from its 8-bit levels.
pub fn pixel_values(g: &Golden, key: &str) -> (Vec<f32>, usize) {
    let levels = g.u8(key);
    let rows = g.shape(key)[0];
    let v = levels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let c = (i % 1176) / 392;
            (((l as f64 / 255.0) - CLIP_MEAN[c]) / CLIP_STD[c]) as f32
        })
        .collect();
    (v, rows)
}

fn grid(g: &Golden, name: &str) -> [usize; 3] {
    let v: Vec<usize> = serde_json::from_value(g.meta["images"][name]["grid_thw"].clone()).unwrap();
    [v[0], v[1], v[2]]
}

fn encode(model: &VisionModel, pv: Vec<f32>, rows: usize, grids: &[[usize; 3]]) -> Vec<f32> {
    let t = Tensor::<2>::from_data(TensorData::new(pv, [rows, 1176]), &model.device());
    flex_f32_vec(model.forward(t, grids).unwrap())
}

#[test]
fn merged_embeddings_match_reference() {
    let model = load_vision();
    let g = Golden::load("tiny-echovlm");
    for name in ["thyroid_300x220.png", "liver_182x238.png"] {
        let (pv, rows) = pixel_values(&g, &format!("image.{name}.pixel_levels"));
        let got = encode(&model, pv, rows, &[grid(&g, name)]);
        let d = max_abs_diff(&got, &g.f32(&format!("image.{name}.embeds")));
        eprintln!("{name}: merged embeddings max abs diff {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

#[test]
fn two_images_attend_separately() {
    let model = load_vision();
    let g = Golden::load("tiny-echovlm");
    let (mut pv, r1) = pixel_values(&g, "image.thyroid_300x220.png.pixel_levels");
    let (pv2, r2) = pixel_values(&g, "image.liver_182x238.png.pixel_levels");
    pv.extend(pv2);
    let grids = [
        grid(&g, "thyroid_300x220.png"),
        grid(&g, "liver_182x238.png"),
    ];
    let got = encode(&model, pv, r1 + r2, &grids);
    let d = max_abs_diff(&got, &g.f32("image.pair.embeds"));
    assert!(d <= 1e-4, "pair: {d}");
}

#[test]
fn video_frames_attend_separately() {
    let model = load_vision();
    let g = Golden::load("tiny-echovlm");
    let (pv, rows) = pixel_values(&g, "video.heart_cine.pixel_levels");
    let v: Vec<usize> = serde_json::from_value(g.meta["video_grid_thw"].clone()).unwrap();
    assert_eq!(v[0], 2, "two temporal slices");
    let got = encode(&model, pv, rows, &[[v[0], v[1], v[2]]]);
    let d = max_abs_diff(&got, &g.f32("video.heart_cine.embeds"));
    assert!(d <= 1e-4, "video: {d}");
}

#[test]
fn grids_must_match_the_pixel_rows() {
    let model = load_vision();
    let t = Tensor::<2>::zeros([16, 1176], &model.device());
    assert!(matches!(
        model.forward(t.clone(), &[[1, 4, 2]]),
        Err(VisionError::PixelShape {
            rows: 16,
            expected: 8,
            ..
        })
    ));
    assert!(matches!(
        model.forward(t, &[[1, 4, 3]]),
        Err(VisionError::BadGrid { .. })
    ));
}
