//! The server binary on a GPU backend (wgpu: Mesa's lavapipe in CI): its greedy answers equal
//! the library's on the same device, and a decode step reads back only token ids there.
//!
//! `cargo test --release -p echovlm-server --no-default-features --features wgpu,cuda --test gpu`

#![cfg(feature = "wgpu")]

mod common;

use common::{Replica, http, png_data_uri, root};
use echovlm_pipeline::{EchoVlm, LoadOptions, Request, device_from_name};
use serde_json::json;

#[test]
fn serves_on_wgpu_as_the_library_does() {
    let dir = root().join("fixtures/models/tiny-echovlm");
    let server = Replica::start(
        &[
            "--model",
            dir.to_str().unwrap(),
            "--device",
            "wgpu",
            "--dtype",
            "f32",
        ],
        &[],
    );
    let library = EchoVlm::load(
        &dir,
        &LoadOptions::default().device(device_from_name("wgpu").unwrap()),
    )
    .unwrap();
    let png = std::fs::read(root().join("fixtures/images/liver_crop_64x48.png")).unwrap();
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "What is a liver cyst?"}]}),
            Request::new("What is a liver cyst?"),
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "Describe the image."},
                {"type": "image_url", "image_url": {"url": png_data_uri("liver_crop_64x48.png")}}
            ]}]}),
            Request::new("Describe the image.").image_bytes(png),
        ),
    ];
    for (mut body, request) in cases {
        body["max_tokens"] = json!(10);
        body["temperature"] = json!(0);
        body["repetition_penalty"] = json!(1.0);
        let want = library
            .generate(
                &request,
                &library
                    .default_generation()
                    .do_sample(false)
                    .repetition_penalty(1.0)
                    .max_new_tokens(10)
                    .trace_routing(false),
            )
            .unwrap();
        let r = http(
            server.addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
        assert_eq!(
            v["usage"]["completion_tokens"],
            want.generated_token_ids.len()
        );
    }
}
