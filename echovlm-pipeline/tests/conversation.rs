//! Conversations that keep their keys and values between turns: each follow-up gives what a
//! run over the whole conversation's tokens gives, and bad follow-ups are refused with typed
//! errors that leave the conversation usable.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cases;

use echovlm_pipeline::{
    EchoError, EchoVlm, FinishReason, GenerationOptions, LoadOptions, Output, PreparedPrompt,
    Request, Role,
};
use echovlm_text::PromptError;
use support::{Golden, fixtures, image, model_dir};

fn model(name: &str) -> EchoVlm {
    EchoVlm::load(model_dir(name), &LoadOptions::default()).unwrap()
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::greedy(n).ignore_eos(true)
}

fn one_image_request() -> Request {
    cases::request(&Golden::load("tiny-echovlm").meta["e2e"]["one_image"])
}

/// What a run over the whole conversation's tokens gives for `turn` (its prompt ids, with the
/// images, cine loops and frame rates of `visual`: every one the conversation has had).
fn from_scratch(
    m: &EchoVlm,
    visual: &PreparedPrompt,
    turn: &Output,
    opts: &GenerationOptions,
) -> Output {
    let prompt = PreparedPrompt::new(
        turn.prompt_token_ids.clone(),
        visual.images.clone(),
        visual.videos.clone(),
    )
    .with_video_fps(visual.video_fps.clone());
    m.run(vec![prompt], opts, None).unwrap().pop().unwrap()
}

fn assert_same(turn: &Output, want: &Output, label: &str) {
    assert_eq!(
        turn.generated_token_ids, want.generated_token_ids,
        "{label}: tokens"
    );
    assert_eq!(turn.text, want.text, "{label}: text");
    for ((t, v), (wt, wv)) in turn
        .first_step_top_logits
        .iter()
        .zip(&want.first_step_top_logits)
    {
        assert_eq!(t, wt, "{label}: top logit token");
        assert!((v - wv).abs() <= 1e-4, "{label}: top logit {v} vs {wv}");
    }
}

/// Follow-ups about one image (greedy with a penalty, sampled, traced; one after an answer cut
/// at its token budget, one after an answer that stopped at the end of its turn) give the
/// tokens and first-step logits of a run over the whole conversation, while running only
/// their own tokens; the template's turn tokens sit between the answers. (The random fixtures
/// never stop at the end of a turn: they answer up to their token budget.)
#[test]
fn follow_ups_equal_a_run_over_the_whole_conversation() {
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        let m = model(name);
        let request = one_image_request();
        let first = m.prepare(&request).unwrap();
        let opts = greedy(8).repetition_penalty(1.3);
        let (mut conv, report) = m.converse(&request, &opts).unwrap();
        let alone = m.generate(&request, &opts).unwrap();
        assert_same(&report, &alone, &format!("{name}: first turn"));
        assert_eq!(report.generated_token_ids.len(), 8);
        let cached = conv.cached_positions().unwrap();
        assert_eq!(cached, report.prompt_token_ids.len() + 7, "{name}");

        let turns: [(&str, GenerationOptions); 3] = [
            ("Is there a lesion?", opts.clone()),
            (
                "Describe its margins.",
                greedy(10).do_sample(true).temperature(0.9).seed(5),
            ),
            (
                "And the echogenicity?",
                greedy(6).repetition_penalty(1.2).trace_routing(true),
            ),
        ];
        for (q, o) in &turns {
            let before = conv.ids().len();
            let turn = conv.ask(q, o).unwrap();
            let label = format!("{name}: {q}");
            assert_eq!(&turn.prompt_token_ids[..before], &conv.ids()[..before]);
            // the last answer's last token, the end of its turn and the question's turn
            assert_eq!(
                turn.timings.prefill_tokens,
                turn.prompt_token_ids.len() - before + 1,
                "{label}"
            );
            let text = m
                .tokenizer()
                .decode(&turn.prompt_token_ids[before - 1..], false)
                .unwrap();
            assert!(
                text.ends_with(&format!(
                    "<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
                )),
                "{label}: {text:?}"
            );
            assert_eq!(turn.image_grid_thw, report.image_grid_thw);
            assert_same(&turn, &from_scratch(&m, &first, &turn, o), &label);
            if o.trace_routing && name == "tiny-echovlm" {
                // the turn's own tokens: those it ran before the answer, and each step's
                let routing = turn.routing.as_ref().expect("a traced routing");
                let steps = turn.generated_token_ids.len() - 1;
                assert_eq!(
                    routing.tokens,
                    turn.timings.prefill_tokens + steps,
                    "{label}"
                );
            }
        }
        assert_eq!(conv.turns(), 4);
        let roles: Vec<Role> = conv.messages().iter().map(|m| m.role).collect();
        assert_eq!(roles.iter().filter(|&&r| r == Role::User).count(), 4);
        assert_eq!(roles.last(), Some(&Role::Assistant));
    }
}

/// Follow-ups with images of their own (another frame; on the Qwen2.5-VL fixture also a cine
/// loop at 1 fps, placed on its absolute time axis), then a text follow-up after them: each
/// equals a run over the whole conversation with every image and loop so far, in order (their
/// M-RoPE positions continue after the conversation's, and the offset the new images add
/// carries into the next turn).
#[test]
fn follow_ups_with_images_of_their_own() {
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        let m = model(name);
        let request = one_image_request();
        // every image and loop the conversation has had, in order
        let mut visual = m.prepare(&request).unwrap();
        let opts = greedy(8).repetition_penalty(1.3);
        let (mut conv, report) = m.converse(&request, &opts).unwrap();
        let view = Request::new("Compare with this view.").image(image("thyroid_300x220.png"));
        let new_image = m.prepare(&view).unwrap().images.remove(0);
        let turn = conv.follow_up(&view, &opts, None).unwrap();
        visual.images.push(new_image);
        let label = format!("{name}: a second image");
        assert_eq!(turn.image_grid_thw.len(), 2, "{label}");
        assert!(
            turn.timings.vision_ms > 0.0,
            "{label}: the new image is encoded"
        );
        assert_same(&turn, &from_scratch(&m, &visual, &turn, &opts), &label);
        if name == "tiny-qwen25vl" {
            let frames = (0..3).map(|i| image(&format!("heart_cine_{i}.png")));
            let cine = Request::new("And over this loop?").cine(frames).fps(1.0);
            let loop_values = m.prepare(&cine).unwrap().videos.remove(0);
            let turn = conv.follow_up(&cine, &opts, None).unwrap();
            visual.videos.push(loop_values);
            visual.video_fps.push(1.0);
            assert_eq!(turn.video_grid_thw.len(), 1);
            assert_same(
                &turn,
                &from_scratch(&m, &visual, &turn, &opts),
                &format!("{name}: a cine loop"),
            );
        }
        let turn = conv
            .ask("Which one shows the lesion better?", &opts)
            .unwrap();
        assert_eq!(turn.timings.vision_ms, 0.0);
        assert_same(
            &turn,
            &from_scratch(&m, &visual, &turn, &opts),
            &format!("{name}: text after images"),
        );
        let _ = report;
    }
}

/// After an answer that ended its turn itself (the demo model ends its reports with
/// `<|im_end|>`), the follow-up does not repeat that token, and gives what a run over the whole
/// conversation gives.
#[test]
fn a_follow_up_after_an_answer_that_ended_its_turn() {
    let m = model("echovlm-demo");
    let request =
        Request::new("Describe this ultrasound image and give the findings and the impression.")
            .image(fixtures().join("phantoms/heldout/1000000.png"));
    let first = m.prepare(&request).unwrap();
    let opts = m.default_generation().max_new_tokens(96);
    let (mut conv, report) = m.converse(&request, &opts).unwrap();
    assert_eq!(report.finish_reason, FinishReason::Stop, "{}", report.text);
    let end = *report.generated_token_ids.last().unwrap();
    assert_eq!(m.tokenizer().decode(&[end], false).unwrap(), "<|im_end|>");
    let question = "What is the echogenicity of the lesion?";
    let turn = conv.ask(question, &opts).unwrap();
    eprintln!("{}\n> {question}\n{}", report.text, turn.text);
    let fed = &turn.prompt_token_ids[turn.prompt_token_ids.len() - turn.timings.prefill_tokens..];
    assert_eq!(
        fed[0], end,
        "the answer's end, not yet in the cache, runs first"
    );
    assert_eq!(
        fed.iter().filter(|&&t| t == end).count(),
        2,
        "the answer's end and the question's: {fed:?}"
    );
    assert_same(&turn, &from_scratch(&m, &first, &turn, &opts), "demo");
}

/// Bad follow-ups are refused with typed errors and leave the conversation usable: an empty
/// question, one with an image placeholder, one with a system prompt or an unreadable image,
/// one whose tokens, or whose rotary positions, would pass the model's context.
#[test]
fn bad_follow_ups_are_refused_and_the_conversation_goes_on() {
    let m = model("tiny-echovlm");
    let request = one_image_request();
    let (mut conv, _) = m.converse(&request, &greedy(4)).unwrap();
    let ids = conv.ids().to_vec();
    let err = conv.ask("  ", &greedy(4)).unwrap_err();
    assert!(
        matches!(err, EchoError::Prompt(PromptError::EmptyPrompt)),
        "{err}"
    );
    let err = conv
        .ask(
            "<|vision_start|><|image_pad|><|vision_end|>What now?",
            &greedy(4),
        )
        .unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");
    let limit = m.text_model().config.max_position_embeddings;
    let err = conv.ask("Is there a lesion?", &greedy(limit)).unwrap_err();
    assert!(
        matches!(err, EchoError::Prompt(PromptError::ContextTooLong { .. })),
        "{err}"
    );
    assert_eq!(conv.ids(), ids.as_slice(), "the refused turns left nothing");
    let system = Request::new("Is there a lesion?").system("Answer briefly.");
    let err = conv.follow_up(&system, &greedy(4), None).unwrap_err();
    assert!(err.to_string().contains("system prompt"), "{err}");
    let err = conv
        .follow_up(
            &Request::new("And this?").image(image("missing_frame.png")),
            &greedy(4),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("missing_frame"), "{err}");
    assert_eq!(conv.ids(), ids.as_slice(), "the refused turns left nothing");
    let turn = conv.ask("Is there a lesion?", &greedy(4)).unwrap();
    assert_eq!(turn.generated_token_ids.len(), 4);

    // a cine loop so slow that its time axis passes the context's rotary positions (Qwen2.5-VL
    // places frames at absolute times), though its tokens fit
    let m = model("tiny-qwen25vl");
    let (mut conv, _) = m.converse(&request, &greedy(4)).unwrap();
    let frames = (0..3).map(|i| image(&format!("heart_cine_{i}.png")));
    let slow = Request::new("And over this loop?").cine(frames).fps(0.001);
    let err = conv.follow_up(&slow, &greedy(4), None).unwrap_err();
    assert!(
        matches!(err, EchoError::Prompt(PromptError::ContextTooLong { .. })),
        "{err}"
    );
    assert!(
        conv.cached_positions().is_some(),
        "the keys and values are kept"
    );
    let turn = conv.ask("Is there a lesion?", &greedy(4)).unwrap();
    assert_eq!(turn.generated_token_ids.len(), 4);
}
