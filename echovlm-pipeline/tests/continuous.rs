//! Continuous batching: sequences that join a running batch and leave it between decode steps
//! get the tokens they get alone (the reference's greedy tokens, or the same seeded samples),
//! with their own settings, and the batch's cache stays as long as its longest sequence.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cases;

use std::collections::HashMap;

use cases::request;
use echovlm_pipeline::{
    BatchEvent, CancelToken, ContinuousBatch, EchoError, EchoVlm, FinishReason, GenerationOptions,
    LoadOptions, Output, Request, SeqId,
};
use echovlm_text::PromptError;
use support::{Golden, image, model_dir};

fn model(name: &str) -> EchoVlm {
    EchoVlm::load(model_dir(name), &LoadOptions::default()).unwrap()
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::greedy(n).ignore_eos(true)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Collects events: the text pieces and the finished outputs of each sequence.
#[derive(Default)]
struct Seen {
    text: HashMap<SeqId, String>,
    done: HashMap<SeqId, Output>,
}

impl Seen {
    fn take(&mut self, events: Vec<BatchEvent>) {
        for e in events {
            match e {
                BatchEvent::Text { id, text } => {
                    assert!(!self.done.contains_key(&id), "text after the end");
                    self.text.entry(id).or_default().push_str(&text);
                }
                BatchEvent::Finished { id, output } => {
                    assert!(self.done.insert(id, *output).is_none(), "finished twice");
                }
                _ => panic!("unknown event"),
            }
        }
    }
}

/// Steps `n` times (or until the batch is empty).
fn steps(batch: &mut ContinuousBatch<'_>, seen: &mut Seen, n: usize) {
    for _ in 0..n {
        if batch.is_empty() {
            return;
        }
        seen.take(batch.step().unwrap());
    }
}

/// Three requests with different prompts, budgets and arrival times: a text prompt runs
/// alone, an image prompt joins after 5 steps, a longer two-image prompt (which pads the rows
/// already running) after 8. The long prompt has the shortest budget: when it leaves, the
/// padding the others got for it is dropped and their positions shift. Every sequence's
/// tokens are the reference's greedy tokens, its streamed text is its output text, and the
/// sequence left running last has a cache of exactly its own positions.
#[test]
fn sequences_joining_and_leaving_get_the_reference_tokens() {
    let m = model("tiny-echovlm");
    let g = Golden::load("tiny-echovlm");
    let text = &g.meta["text_en"];
    let one = &g.meta["e2e"]["one_image"];
    let two = &g.meta["e2e"]["two_images"];
    let (want_a, want_b, want_c) = (
        ids(&text["greedy"]),
        ids(&one["greedy"]),
        ids(&two["greedy"]),
    );
    let (na, nb, nc) = (want_a.len(), 12, 6);
    assert!(na > 20);

    let mut batch = ContinuousBatch::new(&m);
    let mut seen = Seen::default();
    let prepared_a = m
        .prepare(&Request::new(text["prompt"].as_str().unwrap()))
        .unwrap();
    let prompt_a = prepared_a.ids.len();
    let prompt_b = m.prepare(&request(one)).unwrap().ids.len();
    let (a, ev) = batch.add(prepared_a, greedy(na)).unwrap();
    seen.take(ev);
    steps(&mut batch, &mut seen, 5);
    let (b, ev) = batch
        .add(m.prepare(&request(one)).unwrap(), greedy(nb))
        .unwrap();
    seen.take(ev);
    assert_eq!(batch.ids(), [a, b]);
    steps(&mut batch, &mut seen, 3);
    let prepared_c = m.prepare(&request(two)).unwrap();
    let prompt_c = prepared_c.ids.len();
    let (c, ev) = batch.add(prepared_c, greedy(nc)).unwrap();
    seen.take(ev);
    assert_eq!(batch.len(), 3);
    // the two-image prompt is longer than what the other rows hold: they were padded to it
    assert!(prompt_c > (prompt_a + 8).max(prompt_b + 3));
    assert_eq!(batch.cached_positions(), prompt_c);

    // the long prompt leaves first (after 5 steps), then the image prompt
    steps(&mut batch, &mut seen, 5);
    assert_eq!(batch.ids(), [a, b]);
    assert!(batch.cached_positions() < prompt_c + 5);
    while batch.ids().contains(&b) {
        steps(&mut batch, &mut seen, 1);
    }
    // one sequence left: no padding is kept in front of it
    assert_eq!(batch.ids(), [a]);
    assert_eq!(batch.cached_positions(), prompt_a + batch.steps() as usize);
    steps(&mut batch, &mut seen, usize::MAX);
    assert!(batch.is_empty());

    for (id, want, n) in [(a, &want_a, na), (b, &want_b, nb), (c, &want_c, nc)] {
        let out = &seen.done[&id];
        assert_eq!(out.generated_token_ids, want[..n], "{id:?}: greedy tokens");
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert_eq!(seen.text[&id], out.text, "{id:?}: streamed text");
        assert!(out.routing.is_some());
    }
    assert_eq!(seen.done[&b].image_grid_thw.len(), 1);
    assert_eq!(seen.done[&c].image_grid_thw.len(), 2);
    // steps: until the last sequence had its tokens (the first of each comes from its prefill)
    assert_eq!(
        batch.steps() as usize,
        (na - 1).max(5 + nb - 1).max(8 + nc - 1)
    );
}

/// Each sequence keeps its own settings: seeded sampling, a repetition penalty, stop tokens
/// and routing traces give what the same request gives alone.
#[test]
fn every_sequence_keeps_its_own_settings() {
    let m = model("tiny-echovlm");
    let r1 = Request::new("Describe the liver.");
    let r2 = Request::new("Findings?").image(image("liver_182x238.png"));
    let sampled = greedy(30)
        .do_sample(true)
        .temperature(1.5)
        .top_k(50)
        .top_p(0.95)
        .seed(7);
    let penalised = greedy(20).repetition_penalty(1.3);
    let alone1 = m.generate(&r1, &sampled).unwrap();
    let alone2 = m.generate(&r2, &penalised).unwrap();
    // a stop token that the greedy run of r2 reaches at its 6th token
    let stop = alone2.generated_token_ids[5];
    let first = alone2
        .generated_token_ids
        .iter()
        .position(|&t| t == stop)
        .unwrap();
    let stopping = penalised
        .clone()
        .ignore_eos(false)
        .stop_token_ids(vec![stop]);

    let mut batch = ContinuousBatch::new(&m);
    let mut seen = Seen::default();
    let (s1, ev) = batch.add(m.prepare(&r1).unwrap(), sampled).unwrap();
    seen.take(ev);
    steps(&mut batch, &mut seen, 2);
    let (s2, ev) = batch.add(m.prepare(&r2).unwrap(), penalised).unwrap();
    seen.take(ev);
    let (s3, ev) = batch.add(m.prepare(&r2).unwrap(), stopping).unwrap();
    seen.take(ev);
    steps(&mut batch, &mut seen, usize::MAX);

    assert_eq!(
        seen.done[&s1].generated_token_ids,
        alone1.generated_token_ids
    );
    assert_eq!(
        seen.done[&s2].generated_token_ids,
        alone2.generated_token_ids
    );
    assert_eq!(
        seen.done[&s3].generated_token_ids,
        alone2.generated_token_ids[..=first]
    );
    assert_eq!(seen.done[&s3].finish_reason, FinishReason::Stop);
    // routing: the trace of a sequence in the batch is the one it has alone (expert choices
    // exactly, mean coefficients to rounding)
    let (got, alone) = (
        seen.done[&s2].routing.as_ref().unwrap(),
        alone2.routing.as_ref().unwrap(),
    );
    assert_eq!(
        (&got.layers, got.tokens, &got.expert_counts),
        (&alone.layers, alone.tokens, &alone.expert_counts)
    );
    for (a, b) in got.mean_coefficients.iter().zip(&alone.mean_coefficients) {
        assert!(
            (a[0] - b[0]).abs() < 1e-5 && (a[1] - b[1]).abs() < 1e-5,
            "{a:?} {b:?}"
        );
    }
}

/// A sequence can be ended at once or through its cancel token; the others go on unchanged.
/// Bad requests are refused without touching the running batch.
#[test]
fn sequences_end_early_and_bad_requests_leave_the_batch_running() {
    let m = model("tiny-echovlm");
    let g = Golden::load("tiny-echovlm");
    let text = &g.meta["text_en"];
    let want = ids(&text["greedy"]);
    let prompt = || {
        m.prepare(&Request::new(text["prompt"].as_str().unwrap()))
            .unwrap()
    };
    let cancel = CancelToken::new();

    let mut batch = ContinuousBatch::new(&m);
    let mut seen = Seen::default();
    let (keep, ev) = batch.add(prompt(), greedy(want.len())).unwrap();
    seen.take(ev);
    let (ended, ev) = batch.add(prompt(), greedy(want.len())).unwrap();
    seen.take(ev);
    let (cancelled, ev) = batch
        .add(prompt(), greedy(want.len()).cancel(cancel.clone()))
        .unwrap();
    seen.take(ev);
    steps(&mut batch, &mut seen, 3);
    seen.take(batch.finish(ended).unwrap());
    assert!(batch.finish(ended).unwrap().is_empty());
    cancel.cancel();
    steps(&mut batch, &mut seen, 1);
    assert_eq!(batch.ids(), [keep]);

    // refused: a context too long, a budget of nothing; the running sequence is unaffected
    let limit = m.text_model().config.max_position_embeddings;
    let err = batch.add(prompt(), greedy(limit)).unwrap_err();
    assert!(
        matches!(err, EchoError::Prompt(PromptError::ContextTooLong { .. })),
        "{err:?}"
    );
    assert!(batch.add(prompt(), greedy(0)).is_err());
    assert_eq!(batch.ids(), [keep]);
    steps(&mut batch, &mut seen, usize::MAX);

    assert_eq!(seen.done[&keep].generated_token_ids, want);
    for (id, n) in [(ended, 4), (cancelled, 4)] {
        let out = &seen.done[&id];
        assert_eq!(out.finish_reason, FinishReason::Cancelled);
        assert_eq!(out.generated_token_ids, want[..n], "{id:?}");
        assert_eq!(seen.text[&id], out.text);
    }
    // a sequence already cancelled when it arrives gets its first token and leaves
    let gone = CancelToken::new();
    gone.cancel();
    let (id, ev) = batch.add(prompt(), greedy(9).cancel(gone)).unwrap();
    seen.take(ev);
    assert!(batch.is_empty());
    assert_eq!(seen.done[&id].generated_token_ids, want[..1]);
}

/// EchoVLM V2 (Qwen2.5-VL): windowed images and a cine loop (time-aligned M-RoPE) join a
/// running text sequence; every sequence gives the reference's greedy tokens.
#[test]
fn qwen25_sequences_in_one_batch_get_the_reference_tokens() {
    let m = model("tiny-qwen25vl");
    let g = Golden::load("tiny-qwen25vl");
    let names = ["text_en", "odd_window", "cine_fps1", "two_images"];
    let mut batch = ContinuousBatch::new(&m);
    let mut seen = Seen::default();
    let mut expect = Vec::new();
    for name in names {
        let case = if name == "text_en" {
            &g.meta["text_en"]
        } else {
            &g.meta["e2e"][name]
        };
        let want = ids(&case["greedy"]);
        let (id, ev) = batch
            .add(m.prepare(&request(case)).unwrap(), greedy(want.len()))
            .unwrap();
        seen.take(ev);
        expect.push((name, id, want));
        steps(&mut batch, &mut seen, 3);
    }
    steps(&mut batch, &mut seen, usize::MAX);
    for (name, id, want) in expect {
        assert_eq!(seen.done[&id].generated_token_ids, want, "{name}");
    }
}

/// Requests added together share one left-padded prefill and then run as if added one by
/// one: the reference's greedy tokens for each, one of them done after its first token. A
/// batch with a bad request adds none of them.
#[test]
fn requests_added_together_prefill_as_one_batch() {
    let m = model("tiny-echovlm");
    let g = Golden::load("tiny-echovlm");
    let text = &g.meta["text_en"];
    let one = &g.meta["e2e"]["one_image"];
    let two = &g.meta["e2e"]["two_images"];
    let (want_a, want_b, want_c) = (
        ids(&text["greedy"]),
        ids(&one["greedy"]),
        ids(&two["greedy"]),
    );
    let text_prompt = || {
        m.prepare(&Request::new(text["prompt"].as_str().unwrap()))
            .unwrap()
    };

    let mut batch = ContinuousBatch::new(&m);
    let mut seen = Seen::default();
    let (a, ev) = batch.add(text_prompt(), greedy(want_a.len())).unwrap();
    seen.take(ev);
    steps(&mut batch, &mut seen, 4);
    // one bad request (no tokens to generate): nothing is added
    let bad = vec![
        (m.prepare(&request(one)).unwrap(), greedy(12)),
        (text_prompt(), greedy(0)),
    ];
    assert!(batch.add_all(bad).is_err());
    assert_eq!(batch.ids(), [a]);

    // the longest prompt is done after its first token: the padding the two others got for
    // it is dropped before they join
    let added = batch
        .add_all(vec![
            (m.prepare(&request(one)).unwrap(), greedy(12)),
            (m.prepare(&request(two)).unwrap(), greedy(1)),
            (text_prompt(), greedy(want_a.len())),
        ])
        .unwrap();
    let ids_added: Vec<SeqId> = added.iter().map(|(id, _)| *id).collect();
    for (_, ev) in added {
        seen.take(ev);
    }
    let (b, done_at_once, c) = (ids_added[0], ids_added[1], ids_added[2]);
    assert_eq!(batch.ids(), [a, b, c]);
    assert_eq!(seen.done[&done_at_once].generated_token_ids, want_c[..1]);
    steps(&mut batch, &mut seen, usize::MAX);

    assert_eq!(seen.done[&a].generated_token_ids, want_a);
    assert_eq!(seen.done[&b].generated_token_ids, want_b[..12]);
    assert_eq!(seen.done[&c].generated_token_ids, want_a);
    for id in [a, b, c, done_at_once] {
        assert_eq!(seen.text[&id], seen.done[&id].text);
    }
}
