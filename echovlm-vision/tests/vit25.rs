//! The Qwen2.5-VL vision tower: window order, configuration, and parity with transformers.

use echovlm_core::LoadError;
use echovlm_vision::{VisionAct, VisionArch, VisionConfig, VisionError, window_index};
use serde_json::{Value, json};

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
    assert_eq!(c.embed_dim, 1280, "vision_config.hidden_size is the ViT width");
    assert_eq!(c.out_hidden_size, 3584, "out_hidden_size is the merger output");
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
