//! The server binary under 16 concurrent clients, a quarter of them sending malformed
//! requests: every good request gets the library's greedy answer, every bad one a 4xx
//! OpenAI-style error, and the server's resident set stays bounded.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Replica, model, png_data_uri, root};
use echovlm_pipeline::{GenerationOptions, Request};
use serde_json::{Value, json};

/// The server's peak resident set must stay under this (the tiny checkpoint serving 16
/// clients peaked at 27 MiB here).
const RSS_BOUND_MIB: u64 = 128;
/// `--max-body-bytes` of the server under test.
const MAX_BODY: usize = 96 * 1024;

fn greedy(n: usize) -> GenerationOptions {
    model()
        .default_generation()
        .do_sample(false)
        .repetition_penalty(1.0)
        .max_new_tokens(n)
        .trace_routing(false)
}

fn good(image: Option<&str>, text: &str, n: usize) -> (Value, String) {
    let mut req = Request::new(text);
    let content = match image {
        Some(name) => {
            req =
                req.image_bytes(std::fs::read(root().join("fixtures/images").join(name)).unwrap());
            json!([
                {"type": "image_url", "image_url": {"url": png_data_uri(name)}},
                {"type": "text", "text": text}
            ])
        }
        None => json!(text),
    };
    let want = model().generate(&req, &greedy(n)).unwrap().text;
    let body = json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": n, "temperature": 0, "repetition_penalty": 1.0
    });
    (body, want)
}

/// Sends raw bytes; tolerates the server closing early (an oversize body is refused before
/// it is read).
fn send(addr: std::net::SocketAddr, body: &[u8]) -> common::Resp {
    let mut s = common::connect(addr);
    let req = common::request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body,
    );
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    common::parse(&raw)
}

#[test]
fn sixteen_clients_with_malformed_requests_get_right_answers_and_bounded_memory() {
    let dir = root().join("fixtures/models/tiny-echovlm");
    let server = Replica::start(
        &[
            "--model",
            dir.to_str().unwrap(),
            "--max-body-bytes",
            &MAX_BODY.to_string(),
            "--max-batch",
            "8",
        ],
        &[],
    );
    let goods = [
        good(Some("liver_crop_64x48.png"), "Describe the image.", 10),
        good(Some("vessel_gray16_130x100.png"), "Report.", 8),
        good(None, "What is a liver cyst?", 12),
        good(Some("heart_cine_0.png"), "Findings?", 6),
    ];
    let text_png = format!(
        "data:image/png;base64,{}",
        // base64 of "this is not an image at all"
        "dGhpcyBpcyBub3QgYW4gaW1hZ2UgYXQgYWxs"
    );
    let image_msg = |url: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "x"}]}], "max_tokens": 4})
        .to_string()
        .into_bytes()
    };
    let bad: Vec<(Vec<u8>, u16)> = vec![
        (image_msg("data:image/png;base64,@@not*base64!!"), 400),
        (image_msg(&text_png), 400),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"})
                .to_string()
                .into_bytes(),
            400,
        ),
        (json!({"messages": 5}).to_string().into_bytes(), 400),
        (b"{\"messages\": [".to_vec(), 400),
        (
            json!({"messages": [{"role": "user", "content": "x".repeat(MAX_BODY + 4096)}]})
                .to_string()
                .into_bytes(),
            413,
        ),
    ];
    let addr = server.addr;
    // 16 clients, each sending 3 requests: 12 good, 4 bad (rotating through the kinds)
    let mut handles = Vec::new();
    for client in 0..16usize {
        let goods = goods.clone();
        let bad = bad.clone();
        handles.push(std::thread::spawn(move || {
            let mut checked = (0, 0);
            for round in 0..3usize {
                let k = client * 3 + round;
                if k % 4 == 3 {
                    let (body, status) = &bad[(k / 4) % bad.len()];
                    let r = send(addr, body);
                    assert_eq!(r.status, *status, "bad request {k}: {}", r.body);
                    let v = r.json();
                    let e = &v["error"];
                    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
                    assert!(e["type"].is_string() && e.get("code").is_some(), "{v}");
                    checked.1 += 1;
                } else {
                    let (body, want) = &goods[k % goods.len()];
                    let r = send(addr, body.to_string().as_bytes());
                    assert_eq!(r.status, 200, "good request {k}: {}", r.body);
                    assert_eq!(
                        r.json()["choices"][0]["message"]["content"].as_str(),
                        Some(want.as_str()),
                        "good request {k}"
                    );
                    checked.0 += 1;
                }
            }
            checked
        }));
    }
    let (mut n_good, mut n_bad) = (0, 0);
    for h in handles {
        let (g, b) = h.join().unwrap();
        n_good += g;
        n_bad += b;
    }
    assert_eq!((n_good, n_bad), (36, 12));
    // the server still serves
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(send(addr, goods[2].0.to_string().as_bytes()).status, 200);
    match server.memory_kib() {
        Some((rss, hwm)) => {
            eprintln!(
                "server memory: VmRSS {} MiB, VmHWM {} MiB",
                rss / 1024,
                hwm / 1024
            );
            assert!(
                hwm / 1024 < RSS_BOUND_MIB,
                "peak resident set {} MiB over {RSS_BOUND_MIB} MiB",
                hwm / 1024
            );
        }
        None => eprintln!(
            "WARNING: /proc/{}/status is not readable here; the resident-set bound was NOT checked",
            server.child.id()
        ),
    }
}
