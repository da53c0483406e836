//! A server that loads its model in the background: live at once, ready once loaded, and
//! stopped with an error when loading fails.

mod common;

use std::time::{Duration, Instant};

use echovlm_pipeline::{EchoError, EchoVlm, LoadOptions};
use echovlm_server::{Server, ServerConfig};
use serde_json::json;

fn serve(
    server: Server,
) -> (
    std::net::SocketAddr,
    std::thread::JoinHandle<std::io::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
    });
    (rx.recv().unwrap(), thread, stop)
}

#[test]
fn ready_only_once_the_model_is_loaded() {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let server = Server::loading(ServerConfig::default(), move || {
        wait.recv().unwrap();
        EchoVlm::load(
            common::root().join("fixtures/models/tiny-echovlm"),
            &LoadOptions::default(),
        )
    });
    let (addr, thread, stop) = serve(server);
    let get = |p: &str| common::http(addr, "GET", p, &[], b"");
    let chat = || {
        let body =
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
        common::http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes())
    };
    assert_eq!(get("/health").status, 200);
    let r = get("/ready");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("loading"))
    );
    let r = chat();
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("model_loading"))
    );
    go.send(()).unwrap();
    let t = Instant::now();
    while get("/ready").status != 200 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(chat().status, 200);
    assert_eq!(
        get("/v1/models").json()["data"][0]["architecture"],
        "qwen2_vl"
    );
    stop.send(()).unwrap();
    thread.join().unwrap().unwrap();
}

#[test]
fn a_model_that_fails_to_load_stops_the_server_with_the_error() {
    let server = Server::loading(ServerConfig::default(), || {
        Err(EchoError::InvalidRequest("no such checkpoint".into()))
    });
    let (_addr, thread, _stop) = serve(server);
    let err = thread.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("no such checkpoint"), "{err}");
}
