//! End to end through the public API against the transformers reference.

#[allow(dead_code)]
mod choose;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::ops::ControlFlow;

use echovlm_pipeline::{
    ChatTemplate, EchoError, EchoVlm, FinishReason, GenerationOptions, LoadOptions, Request,
};
use echovlm_text::PromptError;
use echovlm_vision::error::ImageError;
use support::{Golden, image, max_abs_diff, model_dir};

/// The device chooser (what a GPU decode runs) against the host sampler, on the CPU backend;
/// the `gpu` suite runs the same on GPU backends.
#[test]
fn device_choice_equals_the_host_sampler() {
    let device = echovlm_pipeline::Device::flex();
    choose::device_choice_equals_the_host_sampler(&device, "flex");
    choose::bad_inputs_are_refused(&device);
}

fn model() -> EchoVlm {
    EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap()
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::greedy(n).ignore_eos(true)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn check_case(m: &EchoVlm, g: &Golden, request: &Request, case: &serde_json::Value, label: &str) {
    let prepared = m.prepare(request).unwrap();
    assert_eq!(
        prepared.rendered,
        case["rendered"].as_str().unwrap(),
        "{label}: rendered prompt"
    );
    assert_eq!(prepared.ids, ids(&case["input_ids"]), "{label}: prompt ids");
    let want = ids(&case["greedy"]);
    let out = m.generate(request, &greedy(want.len())).unwrap();
    assert_eq!(out.generated_token_ids, want, "{label}: greedy tokens");
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.text, case["greedy_text"].as_str().unwrap());
    let top: Vec<(u32, f32)> =
        serde_json::from_value(case["first_step_top_logits"].clone()).unwrap();
    assert_eq!(out.first_step_top_logits.len(), 20);
    for ((t, v), (wt, wv)) in out.first_step_top_logits.iter().zip(&top) {
        assert_eq!(t, wt, "{label}: top logit token");
        assert!((v - wv).abs() <= 1e-4, "{label}: top logit {v} vs {wv}");
    }
    let _ = g;
}

#[test]
fn text_only_prompt_matches_reference() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    for lang in ["en", "zh"] {
        let case = &g.meta[format!("text_{lang}")];
        let request = Request::new(case["prompt"].as_str().unwrap());
        check_case(&m, &g, &request, case, lang);
    }
}

#[test]
fn one_and_two_image_prompts_match_reference() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    for case_name in ["one_image", "two_images"] {
        let case = &g.meta["e2e"][case_name];
        let mut request = Request::new(case["prompt"].as_str().unwrap());
        for name in case["images"].as_array().unwrap() {
            request = request.image(image(name.as_str().unwrap()));
        }
        check_case(&m, &g, &request, case, case_name);
        let out = m.generate(&request, &greedy(1)).unwrap();
        let grids: Vec<Vec<usize>> =
            serde_json::from_value(case["image_grid_thw"].clone()).unwrap();
        let got: Vec<Vec<usize>> = out.image_grid_thw.iter().map(|g| g.to_vec()).collect();
        assert_eq!(got, grids);
        // every logit of the prompt's last position
        let logits = m.next_token_logits(&m.prepare(&request).unwrap()).unwrap();
        let d = max_abs_diff(&logits, &g.f32(&format!("e2e.{case_name}.last_logits")));
        eprintln!("{case_name}: last-position logits max abs diff {d:.2e}");
        assert!(d <= 1e-4, "{case_name}: {d}");
    }
}

#[test]
fn cine_loop_prompt_matches_reference() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    let case = &g.meta["rope"]["video"];
    // three frames: the odd count repeats the last one, as in the reference's four frames
    let frames = (0..3).map(|i| image(&format!("heart_cine_{i}.png")));
    let request = Request::new("Describe the cine loop.").cine(frames);
    let prepared = m.prepare(&request).unwrap();
    assert_eq!(prepared.rendered, case["rendered"].as_str().unwrap());
    let want: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    assert_eq!(prepared.ids, want[0]);
    let out = m.generate(&request, &greedy(1)).unwrap();
    let grids: Vec<Vec<usize>> = serde_json::from_value(case["video_grid_thw"].clone()).unwrap();
    assert_eq!(out.video_grid_thw[0].to_vec(), grids[0]);
    let gold = g.f32("e2e.video.last_logits");
    for (t, v) in &out.first_step_top_logits {
        assert!(
            (gold[*t as usize] - v).abs() <= 1e-4,
            "{t}: {v} vs {}",
            gold[*t as usize]
        );
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    for (name, case) in g.meta["chat_template"].as_object().unwrap() {
        let r = m
            .chat_template()
            .render_json(&case["messages"], true, false)
            .unwrap();
        assert_eq!(r, case["rendered"].as_str().unwrap(), "{name}");
        let r = m
            .chat_template()
            .render_json(&case["messages"], true, true)
            .unwrap();
        assert_eq!(
            r,
            case["rendered_vision_id"].as_str().unwrap(),
            "{name} with vision ids"
        );
    }
    // the template found in chat_template.json renders the same
    let other = ChatTemplate::from_model_dir(&model_dir("tiny-echovlm-newlayout")).unwrap();
    let case = &g.meta["chat_template"]["multi_turn"];
    assert_eq!(
        other.render_json(&case["messages"], true, false).unwrap(),
        case["rendered"].as_str().unwrap()
    );
}

#[test]
fn repetition_penalty_matches_reference() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    let request = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    for rp in ["1.05", "1.3"] {
        let case = &g.meta[format!("repetition_penalty_{rp}")];
        let want = ids(&case["greedy"]);
        let opts = greedy(want.len()).repetition_penalty(rp.parse().unwrap());
        let out = m.generate(&request, &opts).unwrap();
        assert_eq!(out.generated_token_ids, want, "penalty {rp}");
    }
    assert!(
        g.meta["repetition_penalty_1.3"]["differs"]
            .as_bool()
            .unwrap()
    );
}

#[test]
fn batch_of_different_lengths_equals_single_runs() {
    let m = model();
    let g = Golden::load("tiny-echovlm");
    let a = Request::new(g.meta["text_zh"]["prompt"].as_str().unwrap());
    let b = Request::new("Findings?").image(image("liver_182x238.png"));
    let c = Request::new("Compare.")
        .image(image("thyroid_300x220.png"))
        .image(image("liver_182x238.png"));
    let opts = greedy(24);
    let batch = m
        .generate_batch(&[a.clone(), b.clone(), c.clone()], &opts)
        .unwrap();
    for (req, out) in [a, b, c].iter().zip(&batch) {
        let single = m.generate(req, &opts).unwrap();
        assert_eq!(out.generated_token_ids, single.generated_token_ids);
        assert_eq!(out.prompt_token_ids, single.prompt_token_ids);
        assert_ne!(out.routing, None);
    }
    assert_ne!(
        batch[0].prompt_token_ids.len(),
        batch[1].prompt_token_ids.len()
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = model();
    let request = Request::new("Describe the liver.");
    let opts = |seed| {
        greedy(32)
            .do_sample(true)
            .temperature(1.5)
            .top_k(50)
            .top_p(0.95)
            .seed(seed)
    };
    let a = m.generate(&request, &opts(7)).unwrap();
    let b = m.generate(&request, &opts(7)).unwrap();
    let c = m.generate(&request, &opts(8)).unwrap();
    assert_eq!(a.generated_token_ids, b.generated_token_ids);
    assert_ne!(a.generated_token_ids, c.generated_token_ids);
    // the same request in a batch draws the same tokens
    let batch = m
        .generate_batch(&[request.clone(), Request::new("?")], &opts(7))
        .unwrap();
    assert_eq!(batch[0].generated_token_ids, a.generated_token_ids);
}

#[test]
fn streamed_chinese_text_concatenates_to_the_output() {
    let m = model();
    let request = Request::new("请根据超声图像给出超声报告。").image(image("thyroid_300x220.png"));
    let mut pieces = Vec::new();
    let out = m
        .generate_stream(&request, &greedy(60), |d| {
            pieces.push(d.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(pieces.concat(), out.text);
    assert!(pieces.len() > 1);
    assert!(!out.text.is_empty());
    // held-back partial characters never leak into a piece
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')) || out.text.contains('\u{FFFD}'));
    // stopping from the callback cancels
    let out = m
        .generate_stream(&request, &greedy(60), |_| ControlFlow::Break(()))
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert!(out.generated_token_ids.len() < 60);
}

#[test]
fn cancel_token_stops_generation() {
    let m = model();
    let cancel = echovlm_pipeline::CancelToken::new();
    cancel.cancel();
    let opts = greedy(50).cancel(cancel);
    let out = m.generate(&Request::new("hello"), &opts).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.generated_token_ids.len(), 1);
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = model();
    // a literal placeholder in the text: two placeholders, one image
    let r = Request::new("look <|image_pad|>").image(image("liver_182x238.png"));
    assert!(matches!(
        m.generate(&r, &greedy(2)).unwrap_err(),
        EchoError::Prompt(PromptError::ImageCountMismatch {
            placeholders: 2,
            images: 1
        })
    ));
    // aspect ratio above 200
    let thin = image::RgbImage::new(4000, 10);
    let err = m
        .generate(&Request::new("x").image(thin), &greedy(2))
        .unwrap_err();
    assert!(
        matches!(err, EchoError::Image(ImageError::AspectRatio { .. })),
        "{err}"
    );
    // longer than the context
    let err = m.generate(&Request::new("x"), &greedy(600)).unwrap_err();
    assert!(
        matches!(
            err,
            EchoError::Prompt(PromptError::ContextTooLong { max: 512, .. })
        ),
        "{err}"
    );
    // empty prompt
    assert!(matches!(
        m.generate(&Request::new("  "), &greedy(2)).unwrap_err(),
        EchoError::Prompt(PromptError::EmptyPrompt)
    ));
    // missing image file
    let err = m
        .generate(
            &Request::new("x").image("/nonexistent/frame.png"),
            &greedy(2),
        )
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/frame.png"), "{err}");
}

#[test]
fn unreadable_model_directories_are_typed_errors() {
    let err = EchoVlm::load("/nonexistent/model", &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
    let dir = support::copy_model("tiny-echovlm-tied", "nocfg");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = EchoVlm::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}
