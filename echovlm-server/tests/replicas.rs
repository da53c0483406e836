//! The `echovlm-server` binary scaled out: two replicas (one loading the fixture directory, one
//! the same checkpoint by hub id from a local mock of the Hugging Face Hub) behind a
//! round-robin TCP proxy; both serve, and their answers are equal. Also the binary's refusal
//! of `--allow-remote-images`.

mod common;

#[path = "../../echovlm-pipeline/tests/mock_hub/mod.rs"]
mod mock_hub;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Replica, http, png_data_uri, root};
use mock_hub::{MockHub, MockRepo};
use serde_json::json;

/// A round-robin TCP proxy: each connection goes, whole, to the next backend.
fn proxy(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let backend = backends[next.fetch_add(1, Ordering::SeqCst) % backends.len()];
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(backend) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let (mut s, mut c) = (server, client);
                let _ = std::io::copy(&mut s, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    addr
}

#[test]
fn two_replicas_behind_a_round_robin_proxy_serve_equal_answers() {
    let model_dir = root().join("fixtures/models/tiny-echovlm");
    let hub = MockHub::start(BTreeMap::from([(
        "echovlm-test/tiny".to_string(),
        MockRepo {
            dir: model_dir.clone(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            revisions: vec!["main".into()],
        },
    )]));
    let home = tempfile::tempdir().unwrap();
    let a = Replica::start(
        &[
            "--model",
            model_dir.to_str().unwrap(),
            "--model-name",
            "tiny",
        ],
        &[],
    );
    let b = Replica::start(
        &["--model", "echovlm-test/tiny", "--model-name", "tiny"],
        &[
            ("HF_ENDPOINT", hub.url.as_str()),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    // the hub replica downloaded into the cache under HF_HOME
    assert!(
        home.path()
            .join("hub/models--echovlm-test--tiny/snapshots")
            .is_dir()
    );
    let lb = proxy(vec![a.addr, b.addr]);
    let body = json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe the image."},
            {"type": "image_url", "image_url": {"url": png_data_uri("liver_crop_64x48.png")}}
        ]}],
        "max_tokens": 8, "temperature": 0, "repetition_penalty": 1.0
    })
    .to_string();
    let post = |addr| {
        let r = http(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let direct = post(a.addr);
    let (a0, b0) = (a.chat_requests(), b.chat_requests());
    let through: Vec<String> = (0..6).map(|_| post(lb)).collect();
    assert!(
        through.iter().all(|t| *t == direct),
        "{through:?} vs {direct:?}"
    );
    let (da, db) = (a.chat_requests() - a0, b.chat_requests() - b0);
    assert_eq!((da, db), (3.0, 3.0), "round robin over both replicas");
    // a replica that is not ready is one a balancer skips: /ready is 200 on both
    for r in [&a, &b] {
        assert_eq!(http(r.addr, "GET", "/ready", &[], b"").status, 200);
        assert_eq!(http(r.addr, "GET", "/health", &[], b"").status, 200);
    }
}

#[test]
fn allow_remote_images_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_echovlm-server"))
        .args(["--model", "unused", "--allow-remote-images"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-remote-images") && err.contains("SSRF"),
        "{err}"
    );
}

/// A device this build lacks, an unknown float type or weight format: refused with the reason
/// before the server listens or loads anything.
#[test]
fn device_dtype_and_weights_are_checked_before_serving() {
    let refused = |args: &[&str], needles: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_echovlm-server"))
            .args(["--model", "unused", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("serving"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    };
    // the default build has the CPU backend only
    refused(
        &["--device", "cuda"],
        &["cuda", "feature", "available: cpu"],
    );
    refused(&["--device", "tpu"], &["tpu"]);
    refused(&["--dtype", "f64"], &["f64"]);
    refused(&["--weights", "int3"], &["--weights int3"]);
}
