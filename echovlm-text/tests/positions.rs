//! 3-D position ids and rope deltas against transformers' `get_rope_index`.

#[path = "../../tests/support/mod.rs"]
mod support;

use echovlm_text::{PromptError, TextConfig, VideoTime, VisionKind, rope_index, rope_index_timed};
use serde_json::Value;
use support::{Golden, model_dir};

fn grids(v: &Value) -> Vec<[usize; 3]> {
    if v.is_null() {
        return Vec::new();
    }
    let g: Vec<Vec<usize>> = serde_json::from_value(v.clone()).unwrap();
    g.into_iter().map(|x| [x[0], x[1], x[2]]).collect()
}

#[test]
fn positions_and_deltas_match_reference() {
    let cfg = TextConfig::from_file(model_dir("tiny-echovlm").join("config.json")).unwrap();
    let g = Golden::load("tiny-echovlm");
    let cases = g.meta["rope"].as_object().unwrap();
    for name in ["text", "one_image", "two_images", "video", "padded_batch"] {
        let case = &cases[name];
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let mask: Vec<Vec<bool>> =
            serde_json::from_value::<Vec<Vec<i64>>>(case["attention_mask"].clone())
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(|m| m == 1).collect())
                .collect();
        let (pos, deltas) = rope_index(
            &ids,
            Some(&mask),
            &grids(&case["image_grid_thw"]),
            &grids(&case["video_grid_thw"]),
            &cfg.vision_tokens,
            2,
        )
        .unwrap();
        let want: [Vec<Vec<i64>>; 3] =
            serde_json::from_value(case["position_ids"].clone()).unwrap();
        let flat = |a: &Vec<Vec<i64>>| a.iter().flatten().copied().collect::<Vec<_>>();
        assert_eq!(pos.t, flat(&want[0]), "{name}: temporal");
        assert_eq!(pos.h, flat(&want[1]), "{name}: height");
        assert_eq!(pos.w, flat(&want[2]), "{name}: width");
        let want_d: Vec<i64> = serde_json::from_value(case["deltas"].clone()).unwrap();
        assert_eq!(deltas, want_d, "{name}: rope deltas");
    }
    // the padded batch has real padding and non-zero deltas
    let d: Vec<i64> = serde_json::from_value(cases["padded_batch"]["deltas"].clone()).unwrap();
    assert!(d.iter().all(|&x| x < 0), "{d:?}");
}

#[test]
fn placeholder_and_image_counts_must_agree() {
    let cfg = TextConfig::from_file(model_dir("tiny-echovlm").join("config.json")).unwrap();
    let g = Golden::load("tiny-echovlm");
    let case = &g.meta["rope"]["two_images"];
    let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let all = grids(&case["image_grid_thw"]);
    // one grid for two placeholder runs
    assert_eq!(
        rope_index(&ids, None, &all[..1], &[], &cfg.vision_tokens, 2).unwrap_err(),
        PromptError::ImageCountMismatch {
            placeholders: 2,
            images: 1
        }
    );
    // three grids for two placeholder runs
    let three = [all[0], all[1], all[1]];
    assert_eq!(
        rope_index(&ids, None, &three, &[], &cfg.vision_tokens, 2).unwrap_err(),
        PromptError::ImageCountMismatch {
            placeholders: 2,
            images: 3
        }
    );
    // placeholders but no images at all
    assert!(matches!(
        rope_index(&ids, None, &[], &[], &cfg.vision_tokens, 2).unwrap_err(),
        PromptError::ImageCountMismatch { images: 0, .. }
    ));
    // a grid that needs more tokens than the run has
    let bigger = [[1, all[0][1] + 2, all[0][2]], all[1]];
    assert!(matches!(
        rope_index(&ids, None, &bigger, &[], &cfg.vision_tokens, 2).unwrap_err(),
        PromptError::PlaceholderLength {
            kind: VisionKind::Image,
            ..
        }
    ));
}

/// Qwen2.5-VL: videos on an absolute time axis, `floor(τ · second_per_grid_t · tokens_per_second)`.
#[test]
fn qwen25_positions_follow_the_frame_rate() {
    let cfg = TextConfig::from_file(model_dir("tiny-qwen25vl").join("config.json")).unwrap();
    let g = Golden::load("tiny-qwen25vl");
    let tps = g.meta["tokens_per_second"].as_f64().unwrap() as f32;
    let cases = g.meta["rope"].as_object().unwrap();
    let names = [
        "text",
        "odd_window",
        "even_window",
        "two_images",
        "cine_fps2",
        "cine_fps1",
        "cine_fps3_8_frames",
        "padded_batch",
    ];
    for name in names {
        let case = &cases[name];
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let mask: Vec<Vec<bool>> =
            serde_json::from_value::<Vec<Vec<i64>>>(case["attention_mask"].clone())
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(|m| m == 1).collect())
                .collect();
        let videos = grids(&case["video_grid_thw"]);
        let seconds: Vec<f32> = match case.get("second_per_grid_ts") {
            Some(v) => serde_json::from_value::<Vec<f64>>(v.clone())
                .unwrap()
                .into_iter()
                .map(|s| s as f32)
                .collect(),
            None => Vec::new(),
        };
        let run = |time| {
            rope_index_timed(
                &ids,
                Some(&mask),
                &grids(&case["image_grid_thw"]),
                &videos,
                &cfg.vision_tokens,
                2,
                time,
            )
            .unwrap()
        };
        let (pos, deltas) = run(VideoTime::Seconds {
            seconds_per_grid: &seconds,
            tokens_per_second: tps,
        });
        let want: [Vec<Vec<i64>>; 3] =
            serde_json::from_value(case["position_ids"].clone()).unwrap();
        let flat = |a: &Vec<Vec<i64>>| a.iter().flatten().copied().collect::<Vec<_>>();
        assert_eq!(pos.t, flat(&want[0]), "{name}: temporal");
        assert_eq!(pos.h, flat(&want[1]), "{name}: height");
        assert_eq!(pos.w, flat(&want[2]), "{name}: width");
        let want_d: Vec<i64> = serde_json::from_value(case["deltas"].clone()).unwrap();
        assert_eq!(deltas, want_d, "{name}: rope deltas");
        // ignoring the frame rate (Qwen2-VL's steps) is wrong exactly for the videos
        let (steps, _) = run(VideoTime::Steps);
        assert_eq!(
            steps.t == pos.t,
            videos.is_empty(),
            "{name}: fps must matter"
        );
    }
}

#[test]
fn bad_video_times_are_typed_errors() {
    let cfg = TextConfig::from_file(model_dir("tiny-qwen25vl").join("config.json")).unwrap();
    let g = Golden::load("tiny-qwen25vl");
    let case = &g.meta["rope"]["cine_fps2"];
    let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let videos = grids(&case["video_grid_thw"]);
    let run = |seconds: &[f32], tps: f32| {
        rope_index_timed(
            &ids,
            None,
            &[],
            &videos,
            &cfg.vision_tokens,
            2,
            VideoTime::Seconds {
                seconds_per_grid: seconds,
                tokens_per_second: tps,
            },
        )
    };
    for (seconds, tps) in [
        (&[][..], 2.0),
        (&[1.0, 1.0][..], 2.0),
        (&[0.0][..], 2.0),
        (&[f32::NAN][..], 2.0),
        (&[-1.0][..], 2.0),
        (&[1.0][..], 0.0),
        (&[1.0][..], f32::INFINITY),
    ] {
        assert!(
            matches!(run(seconds, tps), Err(PromptError::InvalidVideoTime(_))),
            "{seconds:?} {tps}"
        );
    }
    assert!(run(&[1.0], 2.0).is_ok());
}
