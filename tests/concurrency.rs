//! One loaded model shared by many threads: `EchoVlm` is `Send + Sync`, and N threads × M
//! requests on one `Arc<EchoVlm>` give exactly the tokens of running the same requests one
//! after another on one thread.

mod support;

use std::sync::Arc;

use echovlm_pipeline::{EchoVlm, GenerationOptions, LoadOptions, Output, Request};
use support::{image, model_dir};

/// Compile-time check: only types that may cross and be shared between threads pass.
fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn pipeline_types_are_send_and_sync() {
    assert_send_sync::<EchoVlm>();
    assert_send_sync::<Arc<EchoVlm>>();
    assert_send_sync::<Request>();
    assert_send_sync::<GenerationOptions>();
    assert_send_sync::<Output>();
    assert_send_sync::<echovlm_pipeline::EchoError>();
    assert_send_sync::<echovlm_pipeline::PreparedPrompt>();
}

const THREADS: usize = 8;
const ROUNDS: usize = 3;
const NEW_TOKENS: usize = 12;

/// The workload: greedy and seeded sampling, text only, one image, two images, a cine loop.
fn workload() -> Vec<(Request, GenerationOptions)> {
    let greedy = GenerationOptions::greedy(NEW_TOKENS).ignore_eos(true);
    let sampled = |seed| {
        greedy
            .clone()
            .do_sample(true)
            .temperature(1.3)
            .top_k(40)
            .top_p(0.9)
            .repetition_penalty(1.1)
            .seed(seed)
    };
    vec![
        (Request::new("Describe the liver."), greedy.clone()),
        (Request::new("请描述甲状腺。"), sampled(11)),
        (
            Request::new("What organ is this?").image(image("liver_182x238.png")),
            greedy.clone(),
        ),
        (
            Request::new("Findings?").image(image("thyroid_300x220.png")),
            sampled(12),
        ),
        (
            Request::new("Compare the two frames.")
                .image(image("breast_rgba_150x120.png"))
                .image(image("kidney_gray_256x200.jpg")),
            sampled(13),
        ),
        (
            Request::new("Describe the motion.").cine([
                image("heart_cine_0.png"),
                image("heart_cine_1.png"),
                image("heart_cine_2.png"),
            ]),
            greedy.clone(),
        ),
        (Request::new("Describe the liver."), sampled(14)),
    ]
}

#[test]
fn threads_sharing_one_model_reproduce_single_threaded_tokens() {
    let model =
        Arc::new(EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap());
    let work = Arc::new(workload());

    // the reference: every request once, in order, on this thread
    let reference: Vec<Vec<u32>> = work
        .iter()
        .map(|(r, o)| model.generate(r, o).unwrap().generated_token_ids)
        .collect();
    assert!(reference.iter().all(|t| t.len() == NEW_TOKENS));
    // the workload is not degenerate: different requests give different tokens
    assert_ne!(reference[0], reference[6], "greedy and sampled runs agree");
    assert_ne!(reference[0], reference[2]);

    // N threads, each running the requests ROUNDS times in its own rotated order
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let model = Arc::clone(&model);
            let work = Arc::clone(&work);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for round in 0..ROUNDS {
                    for k in 0..work.len() {
                        let i = (k + t + round) % work.len();
                        let (request, opts) = &work[i];
                        let out = model.generate(request, opts).unwrap();
                        got.push((i, out.generated_token_ids));
                    }
                }
                got
            })
        })
        .collect();
    let mut runs = 0;
    for (t, h) in handles.into_iter().enumerate() {
        for (i, tokens) in h.join().expect("a worker thread panicked") {
            assert_eq!(tokens, reference[i], "thread {t}, request {i}");
            runs += 1;
        }
    }
    assert_eq!(runs, THREADS * ROUNDS * work.len());
}

/// A batch running on one thread while single requests run on others gives the same tokens.
#[test]
fn batches_and_single_requests_interleave() {
    let model =
        Arc::new(EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap());
    let work = workload();
    let opts = GenerationOptions::greedy(NEW_TOKENS).ignore_eos(true);
    let requests: Vec<Request> = work.iter().map(|(r, _)| r.clone()).collect();
    let reference: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| model.generate(r, &opts).unwrap().generated_token_ids)
        .collect();
    std::thread::scope(|s| {
        let batch = s.spawn(|| model.generate_batch(&requests, &opts).unwrap());
        let singles: Vec<_> = (0..2)
            .map(|t| {
                let (model, requests, opts) = (&model, &requests, &opts);
                s.spawn(move || {
                    requests
                        .iter()
                        .rev()
                        .skip(t)
                        .map(|r| model.generate(r, opts).unwrap().generated_token_ids)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let batch = batch.join().unwrap();
        for (i, out) in batch.iter().enumerate() {
            assert_eq!(out.generated_token_ids, reference[i], "batch row {i}");
        }
        for (t, h) in singles.into_iter().enumerate() {
            let got = h.join().unwrap();
            let want: Vec<_> = reference.iter().rev().skip(t).cloned().collect();
            assert_eq!(got, want, "thread {t}");
        }
    });
}
