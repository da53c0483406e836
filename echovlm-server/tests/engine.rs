//! The generation worker on its own: cancelled and abandoned requests stop early.

mod common;

use std::sync::Arc;

use echovlm_pipeline::{CancelToken, Request};
use echovlm_server::engine::{Engine, Event, Job};
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
    assert_eq!((metrics.generated_tokens(), metrics.batches()), (0, 0));
    // after shutdown nothing is taken
    let (j, _rx) = job(false, CancelToken::new());
    assert_eq!(engine.submit(j).unwrap_err().code, Some("shutting_down"));
}
