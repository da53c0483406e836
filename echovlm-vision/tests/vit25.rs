//! The Qwen2.5-VL vision tower: window order, configuration, and parity with transformers.

#[path = "../../tests/support/mod.rs"]
mod support;

use burn::tensor::{DType, Device, Tensor, TensorData};
use echovlm_core::host::flex_f32_vec;
use echovlm_core::{Checkpoint, LinearOptions, LoadError, load};
use echovlm_vision::{VisionAct, VisionArch, VisionConfig, VisionError, VisionModel, window_index};
use serde_json::{Value, json};
use support::{Golden, max_abs_diff, model_dir};

/// Qwen2.5-VL-7B-Instruct's `config.json`, vision part (and the decoder width).
fn qwen25_7b() -> Value {
    json!({
        "model_type": "qwen2_5_vl",
        "hidden_size": 3584,
        "vision_config": {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2
        }
    })
}

fn config_error(json: &Value, text_hidden: usize) -> String {
    match VisionConfig::from_json(json, text_hidden, "config.json") {
        Err(LoadError::Config { path, reason }) => {
            assert_eq!(path, std::path::Path::new("config.json"));
            reason
        }
        other => panic!("expected LoadError::Config, got {other:?}"),
    }
}

fn with_vision(field: &str, value: Value) -> Value {
    let mut j = qwen25_7b();
    j["vision_config"][field] = value;
    j
}

// ---------------------------------------------------------------- window index, by hand

/// A 2×2 merged grid with windows of 2×2 merged tokens: one window, plus transformers' extra
/// padding row and column of windows, which hold nothing and leave no boundary.
#[test]
fn window_index_exact_multiple_has_no_empty_windows() {
    let (index, cu) = window_index(&[[1, 4, 4]], 56, 14, 2).unwrap();
    assert_eq!(index, vec![0, 1, 2, 3]);
    assert_eq!(cu, vec![0, 16]);
}

/// A 3×4 merged grid (raster indices r·4 + c) cut into 2×2 windows: the bottom row of windows
/// is one token high.
#[test]
fn window_index_partial_windows_at_the_edge() {
    let (index, cu) = window_index(&[[1, 6, 8]], 56, 14, 2).unwrap();
    assert_eq!(index, vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11]);
    assert_eq!(cu, vec![0, 16, 32, 40, 48]);
}

/// An image, then a two-frame video whose merged frames are 2×3: indices continue across
/// images and frames, and windows never cross a frame.
#[test]
fn window_index_offsets_across_images_and_frames() {
    let (index, cu) = window_index(&[[1, 4, 4], [2, 4, 6]], 56, 14, 2).unwrap();
    assert_eq!(
        index,
        vec![0, 1, 2, 3, 4, 5, 7, 8, 6, 9, 10, 11, 13, 14, 12, 15]
    );
    assert_eq!(cu, vec![0, 16, 32, 40, 56, 64]);
}

/// Qwen2.5-VL-7B's 112-pixel windows (4×4 merged tokens) on a 16×20-patch image: an 8×10
/// merged grid, two full window rows and a 2-token-wide right column.
#[test]
fn window_index_7b_windows() {
    let (index, cu) = window_index(&[[1, 16, 20]], 112, 14, 2).unwrap();
    assert_eq!(cu, vec![0, 64, 128, 160, 224, 288, 320]);
    assert_eq!(
        &index[..16],
        &[0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33]
    );
    assert_eq!(&index[32..40], &[8, 9, 18, 19, 28, 29, 38, 39]);
    assert_eq!(&index[40..44], &[40, 41, 42, 43]);
    let mut sorted = index.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..80).collect::<Vec<_>>(), "a permutation");
}

/// Windows of one merged token: the window order is the raster order.
#[test]
fn window_index_single_token_windows_are_raster_order() {
    let (index, cu) = window_index(&[[3, 4, 6]], 28, 14, 2).unwrap();
    assert_eq!(index, (0..18).collect::<Vec<_>>());
    assert_eq!(cu, (0..=18).map(|i| 4 * i).collect::<Vec<_>>());
}

#[test]
fn window_index_refuses_bad_windows_and_grids() {
    assert_eq!(
        window_index(&[[1, 4, 4]], 100, 14, 2),
        Err(VisionError::Window {
            window_size: 100,
            patch_size: 14,
            merge: 2
        })
    );
    assert!(matches!(
        window_index(&[[1, 4, 4]], 0, 14, 2),
        Err(VisionError::Window { .. })
    ));
    assert!(matches!(
        window_index(&[[1, 4, 4]], 56, 14, 0),
        Err(VisionError::Window { .. })
    ));
    assert_eq!(
        window_index(&[[1, 4, 3]], 56, 14, 2),
        Err(VisionError::BadGrid {
            grid: [1, 4, 3],
            merge: 2
        })
    );
    assert!(matches!(
        window_index(&[[0, 4, 4]], 56, 14, 2),
        Err(VisionError::BadGrid { .. })
    ));
    assert!(matches!(
        window_index(&[[usize::MAX, 4, 4]], 56, 14, 2),
        Err(VisionError::BadGrid { .. })
    ));
    assert_eq!(window_index(&[], 56, 14, 2), Ok((vec![], vec![0])));
}

// ---------------------------------------------------------------- configuration

#[test]
fn qwen25_7b_config_reads_the_renamed_widths() {
    let c = VisionConfig::from_json(&qwen25_7b(), 3584, "config.json").unwrap();
    assert_eq!(c.arch, VisionArch::Qwen25Vl);
    assert_eq!(
        c.embed_dim, 1280,
        "vision_config.hidden_size is the ViT width"
    );
    assert_eq!(
        c.out_hidden_size, 3584,
        "out_hidden_size is the merger output"
    );
    assert_eq!(c.intermediate_size, 3420);
    assert_eq!(c.hidden_act, VisionAct::Silu);
    assert_eq!(c.head_dim(), 80);
    assert_eq!(c.patch_dim(), 1176);
    assert_eq!(c.window_size, Some(112));
    assert_eq!(c.fullatt_block_indexes, vec![7, 15, 23, 31]);
    assert_eq!(c.tokens_per_second, Some(2.0));
    assert!(c.full_attention(7) && c.full_attention(31));
    assert!(!c.full_attention(0) && !c.full_attention(8));
}

/// Qwen2.5-VL is recognised by model_type alone, or by a window field alone; in_chans is
/// ignored as transformers ignores it.
#[test]
fn qwen25_detection_and_defaults() {
    let mut j = qwen25_7b();
    let v = j["vision_config"].as_object_mut().unwrap();
    v.remove("window_size");
    v.remove("fullatt_block_indexes");
    v.remove("tokens_per_second");
    v.insert("in_chans".into(), json!(1));
    let c = VisionConfig::from_json(&j, 3584, "config.json").unwrap();
    assert_eq!(c.arch, VisionArch::Qwen25Vl);
    assert_eq!(c.window_size, Some(112));
    assert_eq!(c.fullatt_block_indexes, vec![7, 15, 23, 31]);
    assert_eq!(c.tokens_per_second, Some(4.0), "transformers' default");
    assert_eq!(c.in_channels, 3);

    j["model_type"] = json!("qwen2_vl");
    j["vision_config"]["model_type"] = json!("qwen2_5_vl");
    let c = VisionConfig::from_json(&j, 3584, "config.json").unwrap();
    assert_eq!(c.arch, VisionArch::Qwen25Vl);

    let mut j = qwen25_7b();
    j["model_type"] = json!("qwen2_vl");
    let c = VisionConfig::from_json(&j, 3584, "config.json").unwrap();
    assert_eq!(c.arch, VisionArch::Qwen25Vl, "window_size alone");

    let q2 = json!({"model_type": "qwen2_vl", "vision_config": {"embed_dim": 1280, "hidden_size": 3584}});
    let c = VisionConfig::from_json(&q2, 3584, "config.json").unwrap();
    assert_eq!(c.arch, VisionArch::Qwen2Vl);
    assert_eq!(c.intermediate_size, 5120);
    assert_eq!(c.hidden_act, VisionAct::QuickGelu);
    assert_eq!(c.window_size, None);
    assert!(c.fullatt_block_indexes.is_empty() && c.full_attention(0));
    assert_eq!(c.tokens_per_second, None);
}

/// Malformed Qwen2.5-VL configurations are typed errors naming the field.
#[test]
fn malformed_qwen25_configs_name_the_field() {
    let cases = [
        (
            with_vision("window_size", json!(100)),
            "vision_config.window_size = 100 is not a multiple of patch_size · spatial_merge_size",
        ),
        (
            with_vision("window_size", json!(0)),
            "vision_config.window_size = 0 is outside the supported range",
        ),
        (
            with_vision("fullatt_block_indexes", json!([7, 15, 32])),
            "vision_config.fullatt_block_indexes = [7, 15, 32] names block 32",
        ),
        (
            with_vision("fullatt_block_indexes", json!([7, -1])),
            "vision_config.fullatt_block_indexes must be a list of non-negative integers",
        ),
        (
            with_vision("fullatt_block_indexes", json!("7")),
            "vision_config.fullatt_block_indexes must be a list",
        ),
        (
            with_vision("out_hidden_size", json!(2048)),
            "vision_config.out_hidden_size = 2048 but the decoder's hidden_size is 3584",
        ),
        (
            with_vision("hidden_size", json!(1000)),
            "vision_config.hidden_size = 1000 is not divisible by num_heads = 16",
        ),
        (
            with_vision("hidden_act", json!("mish")),
            "vision_config.hidden_act = \"mish\" is not supported",
        ),
        (
            with_vision("intermediate_size", json!(0)),
            "vision_config.intermediate_size = 0 is outside the supported range",
        ),
        (
            with_vision("tokens_per_second", json!(-2)),
            "vision_config.tokens_per_second must be a positive number",
        ),
        (
            with_vision("in_channels", json!(1)),
            "vision_config.in_channels = 1 is outside the supported range",
        ),
    ];
    for (json, needle) in cases {
        let reason = config_error(&json, 3584);
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    }
    // the default fullatt_block_indexes do not fit a shallow tower either, and say so
    let mut j = qwen25_7b();
    j["vision_config"]["depth"] = json!(2);
    j["vision_config"]
        .as_object_mut()
        .unwrap()
        .remove("fullatt_block_indexes");
    let reason = config_error(&j, 3584);
    assert!(
        reason.contains("(transformers' default) names block 7")
            && reason.contains("Qwen2.5-VL vision tower has depth = 2"),
        "{reason}"
    );
    // repeated entries are accepted
    let c = VisionConfig::from_json(
        &with_vision("fullatt_block_indexes", json!([3, 3])),
        3584,
        "config.json",
    )
    .unwrap();
    assert!(c.full_attention(3) && !c.full_attention(4));
}

// ---------------------------------------------------------------- parity with transformers

const CASES: [&str; 4] = ["odd_window", "even_window", "two_images", "cine"];
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

fn golden() -> Golden {
    Golden::load("tiny-qwen25vl-vision")
}

fn load_tiny() -> VisionModel {
    let dir = model_dir("tiny-qwen25vl");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = VisionConfig::from_json(&json, 32, "config.json").unwrap();
    assert_eq!(cfg.arch, VisionArch::Qwen25Vl);
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

fn grids(g: &Golden, case: &str) -> Vec<[usize; 3]> {
    serde_json::from_value(g.meta["cases"][case]["grid_thw"].clone()).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    serde_json::from_value(v.clone()).unwrap()
}

fn as_usize(v: Vec<i64>) -> Vec<usize> {
    v.into_iter().map(|x| x as usize).collect()
}

/// The processor's rows, rebuilt from their 8-bit levels.
fn pixels(g: &Golden, model: &VisionModel, case: &str) -> Tensor<2> {
    let key = format!("{case}.pixel_levels");
    let rows = g.shape(&key)[0];
    let v: Vec<f32> = g
        .u8(&key)
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let c = (i % 1176) / 392;
            (((l as f64 / 255.0) - CLIP_MEAN[c]) / CLIP_STD[c]) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [rows, 1176]), &model.device())
}

/// Largest difference relative to the largest reference value.
fn relative_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    (max_abs_diff(got, want), max)
}

/// window_index and cu_window_seqlens equal transformers' for every case, including the
/// exact-multiple grid whose raw boundaries repeat, two images, and a two-slice video.
#[test]
fn window_index_matches_transformers() {
    let g = golden();
    let vc = &g.meta["vision_config"];
    let (ws, patch, merge) = (
        vc["window_size"].as_u64().unwrap() as usize,
        vc["patch_size"].as_u64().unwrap() as usize,
        vc["spatial_merge_size"].as_u64().unwrap() as usize,
    );
    for case in CASES {
        let meta = &g.meta["cases"][case];
        let (index, cu) = window_index(&grids(&g, case), ws, patch, merge).unwrap();
        assert_eq!(index, usizes(&meta["window_index"]), "{case}");
        assert_eq!(
            index,
            as_usize(g.i64(&format!("{case}.window_index"))),
            "{case}"
        );
        assert_eq!(cu, usizes(&meta["cu_window_seqlens"]), "{case}");
        assert_eq!(
            cu,
            as_usize(g.i64(&format!("{case}.cu_window_seqlens"))),
            "{case}"
        );
        let mut raw = usizes(&meta["cu_window_seqlens_raw"]);
        raw.dedup();
        assert_eq!(cu, raw, "{case}: unique_consecutive of the raw boundaries");
    }
    let raw = usizes(&g.meta["cases"]["even_window"]["cu_window_seqlens_raw"]);
    assert!(
        raw.windows(2).any(|w| w[0] == w[1]),
        "the quirk is exercised"
    );
}

/// The tower's merged output (after the inverse permutation) equals transformers' for odd and
/// exact-multiple window grids, two images in one call, and a two-slice video.
#[test]
fn tower_output_matches_transformers() {
    let model = load_tiny();
    let g = golden();
    for case in CASES {
        let out = model
            .forward(pixels(&g, &model, case), &grids(&g, case))
            .unwrap();
        let want = g.f32(&format!("{case}.out"));
        assert_eq!(
            out.dims()[0],
            g.meta["cases"][case]["out_rows"].as_u64().unwrap() as usize
        );
        let (d, max) = relative_diff(&flex_f32_vec(out), &want);
        eprintln!(
            "{case}: max abs diff {d:.2e} (max |out| {max:.3}, ratio {:.2e})",
            d / max
        );
        assert!(d <= 1e-4 * max, "{case}: {d} vs max {max}");
    }
}

/// The blocks alone, on transformers' block-0 input in window order, reproduce its last block
/// output (blocks_forward takes and returns processor order).
#[test]
fn blocks_match_transformers_hidden_states() {
    let model = load_tiny();
    let g = golden();
    let grid = grids(&g, "odd_window");
    let hs = g.f32("odd_window.hidden_states");
    let [layers, n, e] = <[usize; 3]>::try_from(g.shape("odd_window.hidden_states")).unwrap();
    let order = usizes(&g.meta["cases"]["odd_window"]["window_index"]);
    // window order -> processor order, merged token by merged token
    let to_raster = |h: &[f32]| {
        let mut out = vec![0f32; n * e];
        for (j, &i) in order.iter().enumerate() {
            out[i * 4 * e..(i + 1) * 4 * e].copy_from_slice(&h[j * 4 * e..(j + 1) * 4 * e]);
        }
        out
    };
    let input = to_raster(&hs[..n * e]);
    let want = to_raster(&hs[(layers - 1) * n * e..]);
    let x = Tensor::<2>::from_data(TensorData::new(input, [n, e]), &model.device());
    let got = flex_f32_vec(model.blocks_forward(x, &grid));
    let (d, max) = relative_diff(&got, &want);
    eprintln!("odd_window blocks: max abs diff {d:.2e} (max {max:.3})");
    assert!(d <= 1e-4 * max, "{d} vs {max}");
}

/// The reference itself shows that window attention matters on these inputs: a tower that
/// attended to whole images in every block would be far outside the tolerance.
#[test]
fn full_attention_everywhere_is_far_from_the_reference() {
    let g = golden();
    let (d, max) = relative_diff(
        &g.f32("odd_window.out_full_attention"),
        &g.f32("odd_window.out"),
    );
    assert!(d > 1e-2 * max, "{d} vs {max}");
}

#[test]
fn inconsistent_grids_are_errors() {
    let model = load_tiny();
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
        model.forward(t.clone(), &[[1, 4, 3]]),
        Err(VisionError::BadGrid { .. })
    ));
    assert!(matches!(
        model.forward(t, &[[usize::MAX, 4, 4]]),
        Err(VisionError::BadGrid { .. })
    ));
    let t = Tensor::<2>::zeros([16, 100], &model.device());
    assert!(matches!(
        model.forward(t, &[[1, 4, 4]]),
        Err(VisionError::PixelShape { cols: 100, .. })
    ));
}
