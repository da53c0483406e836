//! The generation worker on its own: cancelled and abandoned requests stop early.

mod common;

use std::sync::Arc;

use echovlm_pipeline::{CancelToken, GenerationOptions, Output, Request};
use echovlm_server::engine::{Engine, Event, Finished, Job};
use echovlm_server::metrics::Metrics;

fn job(stream: bool, cancel: CancelToken) -> (Job, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let m = common::model();
    let prompt = m.prepare(&Request::new("Describe the image.")).unwrap();
    let opts = m
        .default_generation()
        .max_new_tokens(400)
        .ignore_eos(true)
        .trace_routing(false);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        prompt,
        opts,
        stops: Vec::new(),
        stream,
        cancel,
        events: tx,
        ticket: None,
    };
    (job, rx)
}

#[test]
fn a_stream_whose_client_is_gone_stops_at_its_first_text() {
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::start(common::model(), 4, 8, metrics.clone());
    // the reference: the whole generation
    let (full, mut rx) = job(true, CancelToken::new());
    engine.submit(full).unwrap();
    let done = loop {
        match rx.blocking_recv() {
            Some(Event::Done(d)) => break d.unwrap(),
            Some(Event::Delta(_)) => {}
            None => panic!("no answer"),
        }
    };
    assert_eq!(done.completion_tokens, 400);
    // the receiver dropped before the run: the first text cannot be sent and generation stops
    let (gone, rx) = job(true, CancelToken::new());
    drop(rx);
    engine.submit(gone).unwrap();
    engine.shutdown();
    let extra = metrics.generated_tokens() - 400;
    assert!(
        (1..10).contains(&extra),
        "{extra} tokens generated for a client that left"
    );
}

#[test]
fn a_cancelled_request_is_never_run() {
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::start(common::model(), 4, 8, metrics.clone());
    let cancel = CancelToken::new();
    cancel.cancel();
    for stream in [false, true] {
        let (j, _rx) = job(stream, cancel.clone());
        engine.submit(j).unwrap();
    }
    engine.shutdown();
    assert_eq!(
        (metrics.generated_tokens(), metrics.batched_requests()),
        (0, 0)
    );
    // after shutdown nothing is taken
    let (j, _rx) = job(false, CancelToken::new());
    assert_eq!(engine.submit(j).unwrap_err().code, Some("shutting_down"));
}

/// Collects a job's deltas and its answer.
fn answer(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> (String, Finished) {
    let mut streamed = String::new();
    loop {
        match rx.blocking_recv() {
            Some(Event::Delta(d)) => streamed.push_str(&d),
            Some(Event::Done(d)) => return (streamed, d.unwrap()),
            None => panic!("no answer"),
        }
    }
}

/// Requests with different settings, streaming or not, with stop strings or not, decode in
/// the same steps (a request joins the running batch between two steps) and each gets what
/// the library gives it alone.
#[test]
fn requests_with_different_settings_share_decode_steps() {
    let m = common::model();
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::start(m.clone(), 8, 8, metrics.clone());
    let base = m.default_generation().ignore_eos(true).trace_routing(false);
    let cases: Vec<(Request, GenerationOptions, bool, Vec<String>)> = vec![
        (
            Request::new("Describe the image."),
            base.clone().max_new_tokens(300),
            true,
            Vec::new(),
        ),
        (
            Request::new("Findings?")
                .image(common::root().join("fixtures/images/liver_182x238.png")),
            base.clone().max_new_tokens(120),
            false,
            Vec::new(),
        ),
        (
            Request::new("Impression."),
            base.clone()
                .max_new_tokens(200)
                .do_sample(true)
                .temperature(1.2)
                .top_p(0.9)
                .seed(11),
            true,
            Vec::new(),
        ),
        (
            Request::new("Is it normal?"),
            base.clone().max_new_tokens(150).repetition_penalty(1.2),
            false,
            Vec::new(),
        ),
    ];
    let alone: Vec<Output> = cases
        .iter()
        .map(|(r, o, _, _)| m.generate(r, o).unwrap())
        .collect();
    // a stop string: a piece of the fourth answer's text, cut there
    let text3 = &alone[3].text;
    let cut = text3
        .char_indices()
        .nth(text3.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = text3[cut..].chars().take(3).collect();
    let mut cases = cases;
    cases.push((
        Request::new("Is it normal?"),
        base.clone().max_new_tokens(150).repetition_penalty(1.2),
        true,
        vec![stop.clone()],
    ));

    let mut receivers = Vec::new();
    for (r, opts, stream, stops) in &cases {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        engine
            .submit(Job {
                prompt: m.prepare(r).unwrap(),
                opts: opts.clone(),
                stops: stops.clone(),
                stream: *stream,
                cancel: CancelToken::new(),
                events: tx,
                ticket: None,
            })
            .unwrap();
        receivers.push(rx);
    }
    let answers: Vec<(String, Finished)> = receivers.iter_mut().map(answer).collect();
    engine.shutdown();

    for (i, ((streamed, done), out)) in answers.iter().zip(&alone).enumerate() {
        assert_eq!(done.text, out.text, "request {i}");
        assert_eq!(
            done.completion_tokens,
            out.generated_token_ids.len(),
            "request {i}"
        );
        assert_eq!(done.finish_reason, "length");
        if cases[i].2 {
            assert_eq!(streamed, &out.text, "request {i}: streamed text");
        } else {
            assert!(streamed.is_empty());
        }
    }
    let (streamed, done) = &answers[4];
    let want = &alone[3].text[..alone[3].text.find(stop.as_str()).unwrap()];
    assert_eq!((done.text.as_str(), done.finish_reason), (want, "stop"));
    assert_eq!(streamed, want);
    assert!(done.completion_tokens < alone[3].generated_token_ids.len());

    // the requests ran side by side: fewer steps than tokens, more than one sequence a step
    let tokens: usize = answers.iter().map(|(_, d)| d.completion_tokens).sum();
    assert_eq!(metrics.batched_requests(), 5);
    assert_eq!(metrics.step_sequences() + 5, tokens as u64);
    assert!(
        metrics.steps() < 300 + 120,
        "{} steps for {tokens} tokens",
        metrics.steps()
    );
}
