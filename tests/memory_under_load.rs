//! Memory under load: 1,000 generations on the demo model in one process must not grow the
//! resident set (no leak per request: KV caches, images, routing traces and token buffers are
//! all freed). Linux only (reads `/proc/self/status`); elsewhere the test only generates.
//!
//! This file holds one test so that no other test allocates in the process while it measures.

mod support;

use echovlm_pipeline::{EchoVlm, GenerationOptions, LoadOptions, Request};
use support::{image, model_dir};

/// Generations measured after the warm-up.
const GENERATIONS: usize = 1000;
/// Generations before the first measurement (allocator pools, rayon threads, caches).
const WARM_UP: usize = 100;
/// Largest accepted growth of the resident set over the measured generations: the demo model
/// runs in about 15 MiB, and leaking the pixel values, KV cache or routing trace of every request
/// would add more than this in 1,000 generations.
const MAX_GROWTH_KB: i64 = 8 * 1024;

/// `VmRSS` and `VmHWM` in KiB, if the platform has `/proc/self/status`.
fn rss_kb() -> Option<(i64, i64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<i64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[test]
fn a_thousand_generations_do_not_grow_the_resident_set() {
    let model = EchoVlm::load(model_dir("tiny-echovlm"), &LoadOptions::default()).unwrap();
    let greedy = GenerationOptions::greedy(6).ignore_eos(true);
    let sampled = greedy.clone().do_sample(true).temperature(1.2).top_k(50);
    let liver = image("liver_crop_64x48.png");
    let requests = [
        Request::new("Describe the liver."),
        Request::new("请给出超声报告。"),
        Request::new("What is shown?").image(liver.as_path()),
        Request::new("Describe the finding in detail, please."),
    ];
    let mut tokens = 0usize;
    let mut run = |i: usize| {
        let opts = if i.is_multiple_of(2) {
            &greedy
        } else {
            &sampled.clone().seed(i as u64)
        };
        let out = model.generate(&requests[i % requests.len()], opts).unwrap();
        assert_eq!(out.generated_token_ids.len(), 6);
        tokens += out.generated_token_ids.len();
    };
    for i in 0..WARM_UP {
        run(i);
    }
    let before = rss_kb();
    let start = std::time::Instant::now();
    let mut middle = None;
    for i in 0..GENERATIONS {
        run(WARM_UP + i);
        if i == GENERATIONS / 2 {
            middle = rss_kb();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let after = rss_kb();
    assert_eq!(tokens, (WARM_UP + GENERATIONS) * 6);
    let (Some((rss0, _)), Some((rss_mid, _)), Some((rss1, hwm))) = (before, middle, after) else {
        eprintln!(
            "WARNING: SKIPPED the memory check: no /proc/self/status on this platform \
             ({GENERATIONS} generations ran and were checked)"
        );
        return;
    };
    let growth = rss1 - rss0;
    println!(
        "RSS after {WARM_UP} warm-up generations: {rss0} KiB; after {} more: {rss_mid} KiB; \
         after {GENERATIONS}: {rss1} KiB (growth {growth} KiB, peak {hwm} KiB); \
         {GENERATIONS} generations in {secs:.1} s",
        GENERATIONS / 2
    );
    assert!(
        growth < MAX_GROWTH_KB,
        "resident set grew by {growth} KiB over {GENERATIONS} generations \
         ({rss0} → {rss1} KiB)"
    );
}
