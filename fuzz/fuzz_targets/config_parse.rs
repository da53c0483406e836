//! Bytes → JSON → `TextConfig::from_json`, `VisionConfig::from_json` and
//! `PreprocessConfig::from_json`.
//!
//! Any JSON value must give a typed error or a configuration whose invariants hold.
#![no_main]

use std::path::Path;

use echovlm_core::LoadError;
use echovlm_text::TextConfig;
use echovlm_vision::VisionConfig;
use echovlm_vision::preprocess::{PreprocessConfig, resized_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let path = Path::new("config.json");
    match TextConfig::from_json(&json, path) {
        Ok(t) => {
            assert!(t.hidden_size > 0 && t.num_hidden_layers > 0 && t.vocab_size > 0);
            assert!(t.num_key_value_heads > 0);
            assert_eq!(t.num_attention_heads % t.num_key_value_heads, 0);
            assert!(t.head_dim >= 2 && t.head_dim % 2 == 0);
            assert_eq!(t.mrope_section.iter().sum::<usize>(), t.head_dim / 2);
            assert!(t.max_position_embeddings > 0);
            assert!(t.rope_theta.is_finite() && t.rms_norm_eps > 0.0);
            check_vision(
                VisionConfig::from_json(&json, t.hidden_size, path),
                t.hidden_size,
            );
        }
        Err(e) => assert_config_error(&e),
    }
    check_vision(VisionConfig::from_json(&json, 64, path), 64);
    if let Ok(p) = PreprocessConfig::from_json(&json) {
        assert!(p.validate().is_ok());
        let factor = p.factor();
        for (h, w) in [(1, 1), (10, 1999), (600, 800), (16384, 16384)] {
            if let Ok((rh, rw)) = resized_size(h, w, &p) {
                assert!(rh >= 1 && rw >= 1, "{h}x{w} → {rh}x{rw} (factor {factor})");
            }
        }
    }
});

fn check_vision(v: Result<VisionConfig, LoadError>, hidden: usize) {
    match v {
        Ok(v) => {
            assert_eq!(v.embed_dim % v.num_heads, 0);
            assert_eq!(v.head_dim() % 4, 0);
            assert_eq!(v.out_hidden_size, hidden);
            assert!(v.patch_dim() > 0);
        }
        Err(e) => assert_config_error(&e),
    }
}

fn assert_config_error(e: &LoadError) {
    match e {
        LoadError::Config { path, reason } => {
            assert_eq!(path, Path::new("config.json"));
            assert!(!reason.is_empty());
        }
        other => panic!("expected LoadError::Config, got {other}"),
    }
}
