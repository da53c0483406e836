//! The server over HTTP on the tiny fixture model: answers equal the library's, streams,
//! errors, concurrency, auth, shutdown.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{TestServer, model, png_data_uri, root};
use echovlm_pipeline::{GenerationOptions, Request};
use echovlm_server::ServerConfig;
use serde_json::{Value, json};

const LIVER: &str = "liver_crop_64x48.png";

/// The library's greedy settings that `temperature: 0, repetition_penalty: 1` ask for.
fn greedy(n: usize) -> GenerationOptions {
    model()
        .default_generation()
        .do_sample(false)
        .repetition_penalty(1.0)
        .max_new_tokens(n)
        .trace_routing(false)
}

fn with_image(text: &str, image: &str, n: usize) -> Value {
    json!({
        "model": "tiny",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": png_data_uri(image)}}
            ]}
        ],
        "max_tokens": n,
        "temperature": 0,
        "repetition_penalty": 1.0
    })
}

fn text_only(text: &str, n: usize) -> Value {
    json!({
        "messages": [{"role": "user", "content": text}],
        "max_tokens": n,
        "temperature": 0,
        "repetition_penalty": 1.0
    })
}

fn assert_error(r: &common::Resp, status: u16, code: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
}

#[test]
fn greedy_answers_equal_the_library() {
    let server = TestServer::start(ServerConfig::default());
    let m = model();
    let png = std::fs::read(root().join("fixtures/images").join(LIVER)).unwrap();
    let cases = [
        (
            with_image("Describe the image.", LIVER, 12),
            Request::new("Describe the image.").image_bytes(png.clone()),
        ),
        (
            text_only("What is a liver cyst?", 12),
            Request::new("What is a liver cyst?"),
        ),
        (
            json!({
                "messages": [
                    {"role": "system", "content": "You are a sonographer."},
                    {"role": "user", "content": "Report."}
                ],
                "max_tokens": 12, "temperature": 0, "repetition_penalty": 1
            }),
            Request::new("Report.").system("You are a sonographer."),
        ),
    ];
    for (body, request) in cases {
        let want = m.generate(&request, &greedy(12)).unwrap();
        let r = server.chat(&body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
        assert_eq!(v["usage"]["prompt_tokens"], want.prompt_token_ids.len());
        assert_eq!(
            v["usage"]["completion_tokens"],
            want.generated_token_ids.len()
        );
        assert_eq!(
            v["usage"]["total_tokens"],
            want.prompt_token_ids.len() + want.generated_token_ids.len()
        );
        let reason = if want.generated_token_ids.len() == 12 {
            "length"
        } else {
            "stop"
        };
        assert_eq!(v["choices"][0]["finish_reason"], reason);
    }
}

#[test]
fn seeded_sampling_equals_the_library() {
    let server = TestServer::start(ServerConfig::default());
    let m = model();
    let opts = |seed: u64| {
        m.default_generation()
            .do_sample(true)
            .temperature(1.3)
            .top_p(1.0)
            .top_k(0)
            .seed(seed)
            .max_new_tokens(16)
            .trace_routing(false)
    };
    let mut texts = Vec::new();
    for seed in [7u64, 8] {
        let want = m.generate(&Request::new("Describe."), &opts(seed)).unwrap();
        let mut body = text_only("Describe.", 16);
        body["temperature"] = json!(1.3);
        body["top_p"] = json!(1.0);
        body["top_k"] = json!(0);
        body["seed"] = json!(seed);
        body.as_object_mut().unwrap().remove("repetition_penalty");
        let v = server.chat(&body).json();
        assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
        texts.push(want.text);
    }
    assert_ne!(texts[0], texts[1], "two seeds gave the same sample");
}

#[test]
fn streaming_gives_the_same_text_in_openai_chunks() {
    let server = TestServer::start(ServerConfig::default());
    for mut body in [
        with_image("Describe the image.", LIVER, 16),
        text_only("Hello", 16),
    ] {
        let plain = server.chat(&body).json();
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = server.chat(&body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.headers
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream")
        );
        let events = r.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], plain["usage"]);
        let (text, finish) = r.stream_text();
        assert_eq!(
            text,
            plain["choices"][0]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(
            finish.as_deref(),
            plain["choices"][0]["finish_reason"].as_str()
        );
        // every chunk of one stream has the same id
        let ids: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap()["id"].clone())
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]));
    }
}

#[test]
fn multi_turn_conversations_run_and_single_turns_render_as_the_library() {
    let server = TestServer::start(ServerConfig::default());
    let m = model();
    // a single turn prepared through the conversation path equals `EchoVlm::prepare`
    let req: echovlm_server::api::ChatRequest =
        serde_json::from_value(with_image("Describe the image.", LIVER, 4)).unwrap();
    let plan = echovlm_server::api::plan(
        &req,
        &echovlm_server::api::RequestLimits {
            max_images: 4,
            local_files: None,
        },
    )
    .unwrap();
    let direct = m.prepare(&plan.request().unwrap()).unwrap();
    let composed = plan.prepare_conversation(&m).unwrap();
    assert_eq!(composed.ids, direct.ids);
    assert_eq!(composed.rendered, direct.rendered);
    assert_eq!(composed.images[0].data, direct.images[0].data);

    let body = json!({
        "messages": [
            {"role": "system", "content": "You are a sonographer."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_uri(LIVER)}},
                {"type": "text", "text": "Describe the image."}
            ]},
            {"role": "assistant", "content": "A liver."},
            {"role": "user", "content": [
                {"type": "text", "text": "And this one?"},
                {"type": "image_url", "image_url": {"url": png_data_uri("kidney_gray_256x200.png")}}
            ]}
        ],
        "max_tokens": 6, "temperature": 0
    });
    let r = server.chat(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    // two images of 4x4 and more patches, two turns of text: far more than one turn alone
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > direct.ids.len() as u64 + 20);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[test]
fn malformed_requests_get_json_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(ServerConfig::default().max_images(2));
    let bad_b64 = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}]}]});
    let not_image = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}]}]});
    let remote = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
    let local = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": root().join("fixtures/images").join(LIVER).display().to_string()}}]}]});
    let image = json!({"type": "image_url", "image_url": {"url": png_data_uri(LIVER)}});
    let three = json!({"messages": [{"role": "user", "content": [image, image, image]}]});
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, Some("invalid_json")),
        ("[1, 2]".into(), 400, Some("invalid_json")),
        (json!({"messages": "hi"}).to_string(), 400, Some("invalid_json")),
        (json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}).to_string(), 400, Some("invalid_json")),
        (json!({"messages": [{"role": "user", "content": 5}]}).to_string(), 400, Some("invalid_json")),
        (json!({"messages": []}).to_string(), 400, None),
        (json!({"messages": [{"role": "tool", "content": "x"}]}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "task": "sing"}).to_string(), 400, None),
        (json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).to_string(), 400, Some("context_length_exceeded")),
        (json!({"messages": [{"role": "user", "content": "word ".repeat(600)}]}).to_string(), 400, Some("context_length_exceeded")),
        (bad_b64.to_string(), 400, Some("invalid_base64")),
        (not_image.to_string(), 400, Some("invalid_image")),
        (remote.to_string(), 400, Some("remote_url_refused")),
        (local.to_string(), 400, Some("invalid_image_url")),
        (three.to_string(), 400, Some("too_many_images")),
    ];
    for (body, status, code) in &cases {
        let r = server.post("/v1/chat/completions", body);
        assert_error(&r, *status, *code);
    }
    assert_error(&server.get("/v1/nothing"), 404, Some("not_found"));
    let r = server.get("/v1/chat/completions");
    assert_eq!(r.status, 405);

    // a body over --max-body-bytes
    let small = TestServer::start(ServerConfig::default().max_body_bytes(1000));
    let r = small.chat(&with_image("x", LIVER, 4));
    assert_error(&r, 413, Some("request_too_large"));
    assert_eq!(small.chat(&text_only("hi", 2)).status, 200);

    // still serving, and the counts are in the metrics
    assert_eq!(server.chat(&text_only("hi", 3)).status, 200);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains(&format!(
            "echovlm_http_requests_total{{route=\"/v1/chat/completions\",status=\"400\"}} {}",
            cases.len()
        )),
        "{metrics}"
    );
}

#[test]
fn eight_concurrent_requests_with_two_malformed_all_complete() {
    let server = TestServer::start(ServerConfig::default());
    let m = model();
    let prompts = [
        "Describe.",
        "Report the findings.",
        "Is it normal?",
        "Liver",
        "Kidney?",
        "Size?",
    ];
    let want: Vec<String> = prompts
        .iter()
        .map(|p| m.generate(&Request::new(*p), &greedy(10)).unwrap().text)
        .collect();
    let png = std::fs::read(root().join("fixtures/images").join(LIVER)).unwrap();
    let want_image = m
        .generate(
            &Request::new("Describe the image.").image_bytes(png),
            &greedy(10),
        )
        .unwrap()
        .text;
    let addr = server.addr;
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let body = text_only(p, 10).to_string();
            handles.push((
                Some(i),
                s.spawn(move || {
                    common::http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes())
                }),
            ));
        }
        let body = with_image("Describe the image.", LIVER, 10).to_string();
        handles.push((
            Some(99),
            s.spawn(move || {
                common::http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes())
            }),
        ));
        for bad in [
            "{",
            "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:;base64,xx\"}}]}]}",
        ] {
            handles.push((
                None,
                s.spawn(move || {
                    common::http(addr, "POST", "/v1/chat/completions", &[], bad.as_bytes())
                }),
            ));
        }
        for (i, h) in handles {
            let r = h.join().unwrap();
            match i {
                None => assert_error(&r, 400, None),
                Some(99) => {
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert_eq!(
                        r.json()["choices"][0]["message"]["content"],
                        want_image.as_str()
                    );
                }
                Some(i) => {
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert_eq!(
                        r.json()["choices"][0]["message"]["content"],
                        want[i].as_str(),
                        "prompt {i}"
                    );
                }
            }
        }
    });
    assert_eq!(server.metric("echovlm_batched_requests_total"), 7.0);
    assert!(
        server.metric("echovlm_decode_step_sequences_total")
            >= server.metric("echovlm_decode_steps_total")
    );
    assert_eq!(server.metric("echovlm_running_sequences"), 0.0);
    assert_eq!(server.metric("echovlm_requests_in_flight"), 0.0);
    assert_eq!(server.metric("echovlm_queue_depth"), 0.0);
}

#[test]
fn a_full_queue_answers_503() {
    let server = TestServer::start(ServerConfig::default().max_queue(0));
    let r = server.chat(&text_only("hi", 2));
    assert_error(&r, 503, Some("queue_full"));
    assert!(r.headers.to_ascii_lowercase().contains("retry-after: 1"));
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn an_api_key_is_required_when_set() {
    let server = TestServer::start(ServerConfig::default().api_key(Some("sekrit".into())));
    let body = text_only("hi", 2).to_string();
    let post = |auth: Option<&str>| {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        common::http(
            server.addr,
            "POST",
            "/v1/chat/completions",
            &h,
            body.as_bytes(),
        )
    };
    assert_error(&post(None), 401, Some("invalid_api_key"));
    assert_error(&post(Some("Bearer wrong")), 401, Some("invalid_api_key"));
    assert_error(&post(Some("sekrit")), 401, Some("invalid_api_key"));
    assert_eq!(post(Some("Bearer sekrit")).status, 200);
    assert_error(&server.get("/v1/models"), 401, None);
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/ready").status, 200);
}

#[test]
fn health_ready_models_and_metrics() {
    let server = TestServer::start(ServerConfig::default().model_name("tiny-echovlm"));
    assert_eq!(server.get("/health").json()["status"], "ok");
    assert_eq!(server.get("/ready").json()["status"], "ready");
    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-echovlm");
    assert_eq!(models["data"][0]["object"], "model");
    let r = server.chat(&text_only("hi", 5));
    let n = r.json()["usage"]["completion_tokens"].as_u64().unwrap();
    let metrics = server.get("/metrics");
    assert!(metrics.headers.contains("text/plain"));
    for line in [
        "# TYPE echovlm_request_duration_seconds histogram",
        "echovlm_request_duration_seconds_count 1",
        "echovlm_request_duration_seconds_bucket{le=\"+Inf\"} 1",
        "echovlm_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "echovlm_requests_in_flight 0",
        "echovlm_queue_depth 0",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing in\n{}",
            metrics.body
        );
    }
    assert_eq!(server.metric("echovlm_generated_tokens_total"), n as f64);
}

#[test]
fn stop_strings_cut_the_answer() {
    let server = TestServer::start(ServerConfig::default());
    let full = server.chat(&text_only("Describe the image.", 24)).json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // a stop string taken from the middle of the greedy answer
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "{full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut body = text_only("Describe the image.", 24);
    body["stop"] = json!(stop);
    let v = server.chat(&body).json();
    assert_eq!(v["choices"][0]["message"]["content"], expected);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let (text, finish) = server.chat(&body).stream_text();
    assert_eq!(text, expected);
    assert_eq!(finish.as_deref(), Some("stop"));
}

#[test]
fn local_files_only_under_the_allowed_directory() {
    let dir = root().join("fixtures/images");
    let server = TestServer::start(ServerConfig::default().allow_local_files(Some(dir.clone())));
    let ask = |url: &str| {
        server.chat(&json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe the image."},
            {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 6, "temperature": 0, "repetition_penalty": 1}))
    };
    let by_data = server
        .chat(&with_image("Describe the image.", LIVER, 6))
        .json();
    for url in [
        LIVER.to_string(),
        format!("file://{}", dir.join(LIVER).display()),
    ] {
        let r = ask(&url);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["choices"], by_data["choices"]);
    }
    for url in [
        "../models/tiny-echovlm/config.json",
        "/etc/passwd",
        "missing.png",
        "alpha/../../../Cargo.toml",
    ] {
        assert_error(&ask(url), 400, Some("invalid_image_url"));
    }
}

#[test]
fn a_client_that_disconnects_cancels_its_stream() {
    let server = TestServer::start(ServerConfig::default());
    let mut body = text_only("Describe the image.", 400);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    let mut s = common::connect(server.addr);
    s.write_all(&common::request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    ))
    .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let t = Instant::now();
    while server.metric("echovlm_requests_in_flight") != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the stream was never dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // the worker is free again: a new request is answered
    assert_eq!(server.chat(&text_only("hi", 3)).status, 200);
}

#[test]
fn shutdown_drains_requests_in_flight() {
    let mut server = TestServer::start(ServerConfig::default());
    let addr = server.addr;
    let mut body = text_only("Describe the image.", 200);
    body["stream"] = json!(true);
    let body = body.to_string();
    let stream = std::thread::spawn(move || {
        common::http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes())
    });
    let t = Instant::now();
    while server.metric("echovlm_requests_in_flight") == 0.0 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    server.begin_shutdown();
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    assert!(r.stream_text().1.is_some(), "{}", r.body);
    server.shutdown();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn curl_example() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n*** SKIPPED curl_example: curl is not installed ***\n");
        return;
    }
    let server = TestServer::start(ServerConfig::default());
    let body = with_image("Describe the image.", LIVER, 8).to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ])
        .arg(server.url("/v1/chat/completions"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let mut stream = with_image("Describe the image.", LIVER, 8);
    stream["stream"] = json!(true);
    let out = std::process::Command::new("curl")
        .args([
            "-sSN",
            "-H",
            "Content-Type: application/json",
            "-d",
            &stream.to_string(),
        ])
        .arg(server.url("/v1/chat/completions"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn official_openai_python_client() {
    let Ok(python) = std::env::var("ECHOVLM_OPENAI_PYTHON") else {
        eprintln!(
            "\n*** SKIPPED official_openai_python_client: set ECHOVLM_OPENAI_PYTHON to a python with \
             `pip install -r tools/requirements-server.txt` ***\n"
        );
        return;
    };
    let server = TestServer::start(ServerConfig::default().api_key(Some("test-key".into())));
    let out = std::process::Command::new(python)
        .arg(root().join("tools/openai_client_check.py"))
        .args(["--base-url", &server.url("/v1"), "--api-key", "test-key"])
        .arg("--image")
        .arg(root().join("fixtures/images").join(LIVER))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
}
