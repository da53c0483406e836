//! A chat template that ties `namespace()` objects into a reference cycle must not leak what
//! they hold: found by the `chat_template` fuzz target (LeakSanitizer), where a mutated Qwen2-VL
//! template did `{% set video_count.value = video_count %}`. Such assignments are now refused
//! (`EchoError::Template`), and the refused render must free what it built; a macro stored in
//! a namespace still closes a cycle (the macro holds the namespace), which must not leak either.
//!
//! Linux only (reads `/proc/self/status`). This file holds one test so that no other test
//! allocates in the process while it measures.

mod support;

use echovlm_pipeline::{EchoError, EchoVlm, LoadOptions, Request};
use support::copy_model;

/// Bytes held by each cycle: above glibc's largest mmap threshold (32 MiB), so a freed string
/// goes back to the system at once and only a leak stays resident.
const BIG: usize = 40_000_000;
/// Renders per template.
const RENDERS: usize = 6;

fn rss_kb() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn namespace_cycles_in_a_chat_template_do_not_leak() {
    let text = "{% for m in messages %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}\
                {% endfor %}<|im_start|>assistant\n";
    let templates = [
        // a namespace holding itself
        format!("{{% set ns = namespace(big='x' * {BIG}) %}}{{% set ns.me = ns %}}{text}"),
        // two namespaces holding each other through a list
        format!(
            "{{% set a = namespace() %}}{{% set b = namespace(x=[a], big='y' * {BIG}) %}}\
             {{% set a.b = b %}}{text}"
        ),
        // the fuzzer's shape: a counter namespace assigned to its own attribute
        format!(
            "{{% set video_count = namespace(value=0, pad='z' * {BIG}) %}}\
             {{% set video_count.value = video_count %}}{text}"
        ),
        // a macro closing over the namespace it is stored in (allowed)
        format!(
            "{{% set ns = namespace(big='w' * {BIG}) %}}{{% macro m() %}}{{{{ ns.big|length }}}}\
             {{% endmacro %}}{{% set ns.m = m %}}{text}"
        ),
    ];
    for (i, source) in templates.iter().enumerate() {
        let dir = copy_model("tiny-echovlm", "cycle");
        std::fs::write(
            dir.path().join("chat_template.json"),
            serde_json::json!({ "chat_template": source }).to_string(),
        )
        .unwrap();
        let m = EchoVlm::load(dir.path(), &LoadOptions::default()).unwrap();
        let request = Request::new("Describe the liver.");
        // the namespace cycles are refused, the macro one renders
        let refused = i < 3;
        let render = || match m.prepare(&request) {
            Ok(prepared) if !refused => {
                assert!(prepared.rendered.starts_with("Describe the liver."))
            }
            Err(EchoError::Template(msg)) if refused => {
                assert!(msg.contains("cannot be stored in a namespace"), "{msg}")
            }
            other => panic!("template {i}: unexpected {other:?}"),
        };
        // warm-up, then measure
        render();
        let before = rss_kb();
        for _ in 0..RENDERS {
            render();
        }
        let (Some(before), Some(after)) = (before, rss_kb()) else {
            // the renders above still ran and were checked; only the measurement is skipped
            eprintln!("WARNING: SKIPPED the memory check of template {i}: no /proc/self/status");
            continue;
        };
        let growth = after - before;
        println!("template {i}: RSS {before} → {after} KiB over {RENDERS} renders");
        // a leak keeps RENDERS × 40 MB = 240 MB
        assert!(
            growth < 40_000,
            "template {i}: RSS grew by {growth} KiB over {RENDERS} renders"
        );
    }
}
