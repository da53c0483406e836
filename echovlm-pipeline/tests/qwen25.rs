//! EchoVLM V2 / Qwen2.5-VL end to end through the public API against transformers 4.51.3
//! (`tools/make_qwen25_fixtures.py`): prompt ids and grids identical, last-position logits
//! within 1e-4 of max |logit|, 32 greedy tokens identical with and without the KV cache.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cases;

use cases::request;
use echovlm_pipeline::{
    Architecture, EchoVlm, FinishReason, GenerationOptions, LoadOptions, PreparedPrompt,
};
use serde_json::Value;
use support::{Golden, max_abs_diff, model_dir};

const NAME: &str = "tiny-qwen25vl";

fn model() -> EchoVlm {
    EchoVlm::load(model_dir(NAME), &LoadOptions::default()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn grids(v: &Value) -> Vec<[usize; 3]> {
    if v.is_null() {
        return Vec::new();
    }
    serde_json::from_value(v.clone()).unwrap()
}

/// Greedy decoding without a KV cache: every step recomputes the whole prompt plus what was
/// generated so far (vision tower included).
fn greedy_recomputed(m: &EchoVlm, prompt: &PreparedPrompt, steps: usize) -> Vec<u32> {
    let mut p = prompt.clone();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let logits = m.next_token_logits(&p).unwrap();
        let next = support::argmax(&logits) as u32;
        out.push(next);
        p.ids.push(next);
    }
    out
}

fn check(m: &EchoVlm, g: &Golden, case: &Value, logits_key: &str, label: &str) {
    let request = request(case);
    let prepared = m.prepare(&request).unwrap();
    assert_eq!(
        prepared.rendered,
        case["rendered"].as_str().unwrap(),
        "{label}: rendered"
    );
    assert_eq!(prepared.ids, ids(&case["input_ids"]), "{label}: prompt ids");
    let image_grids: Vec<[usize; 3]> = prepared.images.iter().map(|p| p.grid_thw).collect();
    let video_grids: Vec<[usize; 3]> = prepared.videos.iter().map(|p| p.grid_thw).collect();
    assert_eq!(
        image_grids,
        grids(&case["image_grid_thw"]),
        "{label}: image grids"
    );
    assert_eq!(
        video_grids,
        grids(&case["video_grid_thw"]),
        "{label}: video grids"
    );

    let want = g.f32(logits_key);
    let got = m.next_token_logits(&prepared).unwrap();
    let max = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    let d = max_abs_diff(&got, &want);
    eprintln!(
        "{label}: last logits max |diff| {d:.2e} ({:.2e} of max |logit| {max:.2})",
        d / max
    );
    assert!(
        d <= 1e-4 * max,
        "{label}: logits differ by {d} (max |logit| {max})"
    );

    let greedy = ids(&case["greedy"]);
    assert_eq!(greedy.len(), 32, "{label}");
    let opts = GenerationOptions::greedy(greedy.len()).ignore_eos(true);
    let out = m.generate(&request, &opts).unwrap();
    assert_eq!(
        out.generated_token_ids, greedy,
        "{label}: greedy tokens (KV cache)"
    );
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.architecture, Architecture::Qwen25Vl);
    assert_eq!(
        out.text,
        case["greedy_text"].as_str().unwrap(),
        "{label}: text"
    );
    assert_eq!(
        greedy_recomputed(m, &prepared, greedy.len()),
        greedy,
        "{label}: greedy tokens (no cache)"
    );
}

#[test]
fn a_qwen25_checkpoint_is_detected() {
    let m = model();
    assert_eq!(m.architecture(), Architecture::Qwen25Vl);
    let v1 = EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap();
    assert_eq!(v1.architecture(), Architecture::Qwen2Vl);
}

#[test]
fn text_only_prompts_match_reference() {
    let (m, g) = (model(), Golden::load(NAME));
    for lang in ["en", "zh"] {
        let key = format!("text_{lang}");
        check(&m, &g, &g.meta[&key], &format!("{key}.last_logits"), &key);
    }
}

#[test]
fn windowed_images_match_reference() {
    let (m, g) = (model(), Golden::load(NAME));
    // odd: windows partly padding; even: transformers adds a whole padding window
    for name in ["odd_window", "even_window", "two_images"] {
        check(
            &m,
            &g,
            &g.meta["e2e"][name],
            &format!("e2e.{name}.last_logits"),
            name,
        );
    }
}

#[test]
fn cine_loops_match_reference_at_each_frame_rate() {
    let (m, g) = (model(), Golden::load(NAME));
    for name in ["cine_fps2", "cine_fps1"] {
        check(
            &m,
            &g,
            &g.meta["e2e"][name],
            &format!("e2e.{name}.last_logits"),
            name,
        );
    }
    // the two rates give different logits: the frame rate reaches the positions
    let a = m.next_token_logits(&m.prepare(&request(&g.meta["e2e"]["cine_fps2"])).unwrap());
    let b = m.next_token_logits(&m.prepare(&request(&g.meta["e2e"]["cine_fps1"])).unwrap());
    assert!(max_abs_diff(&a.unwrap(), &b.unwrap()) > 1e-2);
}

#[test]
fn full_attention_everywhere_would_be_told_apart() {
    // the goldens record what making every block full attention does to the logits: far
    // above the parity tolerance, so the windowed tests above can tell the two apart
    let g = Golden::load(NAME);
    for name in ["odd_window", "even_window", "cine_fps2"] {
        let full = g.f32(&format!("e2e.{name}.last_logits_full_attention"));
        let real = g.f32(&format!("e2e.{name}.last_logits"));
        let max = real.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(max_abs_diff(&full, &real) > 100.0 * 1e-4 * max, "{name}");
    }
}
