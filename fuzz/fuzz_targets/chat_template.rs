//! Bytes → a chat template source and/or messages → `ChatTemplate::new` + `render_json`.
//!
//! The input is split at its first NUL byte: the part before is the template source (empty:
//! the real Qwen2-VL template of the fixtures), the part after is the messages as JSON (not
//! valid JSON: a fixed conversation with an image). Compiling or rendering may fail, but only
//! with `EchoError::Template`, and it must finish: the environment runs on fuel.
#![no_main]

use std::sync::OnceLock;

use echovlm_pipeline::{ChatTemplate, EchoError};
use libfuzzer_sys::fuzz_target;

fn qwen2vl() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| {
        let cfg: serde_json::Value = serde_json::from_str(include_str!(
            "../../fixtures/models/tiny-echovlm/tokenizer_config.json"
        ))
        .unwrap();
        ChatTemplate::new(cfg["chat_template"].as_str().unwrap()).unwrap()
    })
}

fn default_messages() -> serde_json::Value {
    serde_json::json!([
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": [
            {"type": "image"},
            {"type": "text", "text": "Describe the liver."}
        ]},
        {"role": "assistant", "content": "Normal."}
    ])
}

fn check(r: Result<String, EchoError>) {
    match r {
        Ok(_) | Err(EchoError::Template(_)) => {}
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (src, msgs) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let messages = serde_json::from_slice(msgs).unwrap_or_else(|_| default_messages());
    let owned;
    let template = if src.is_empty() {
        qwen2vl()
    } else {
        let Ok(src) = std::str::from_utf8(src) else {
            return;
        };
        match ChatTemplate::new(src) {
            Ok(t) => {
                owned = t;
                &owned
            }
            Err(EchoError::Template(_)) => return,
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    };
    check(template.render_json(&messages, true, false));
    check(template.render_json(&messages, false, true));
});
