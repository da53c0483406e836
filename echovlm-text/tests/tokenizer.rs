//! The tokenizer wrapper on the real Qwen2 BPE and on the fixtures' small vocabulary.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::Read;

use echovlm_text::{Qwen2Tokenizer, TokenizerError};
use support::{Golden, fixtures, model_dir};

fn full_tokenizer() -> Qwen2Tokenizer {
    let gz = std::fs::read(fixtures().join("qwen2-tokenizer/tokenizer.json.gz")).unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut json)
        .unwrap();
    Qwen2Tokenizer::from_bytes(&json).unwrap()
}

#[test]
fn qwen2_special_tokens_are_found_by_name() {
    let t = full_tokenizer();
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("goldens/qwen2_tokenizer.json")).unwrap(),
    )
    .unwrap();
    let s = t.special();
    let want = |name: &str| g["specials"][name].as_u64().unwrap() as u32;
    assert_eq!(s.endoftext, want("<|endoftext|>"));
    assert_eq!(s.im_start, want("<|im_start|>"));
    assert_eq!(s.im_end, want("<|im_end|>"));
    assert_eq!(s.vision_start, want("<|vision_start|>"));
    assert_eq!(s.vision_end, want("<|vision_end|>"));
    assert_eq!(s.image_pad, want("<|image_pad|>"));
    assert_eq!(s.video_pad, want("<|video_pad|>"));
    assert_eq!(s.image_pad, 151655);
    assert_eq!(t.vocab_size(), 151657);
}

#[test]
fn qwen2_tokenisation_matches_reference() {
    let t = full_tokenizer();
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("goldens/qwen2_tokenizer.json")).unwrap(),
    )
    .unwrap();
    for sample in g["samples"].as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(sample["ids"].clone()).unwrap();
        let ids = t.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(
            t.decode(&ids, true).unwrap(),
            sample["decoded_skip_special"].as_str().unwrap()
        );
    }
    // the canonical chat prefix from the EchoVLM training collator
    assert_eq!(
        t.encode("<|im_start|>assistant\n").unwrap(),
        vec![151644, 77091, 198]
    );
    assert_eq!(t.encode("<|im_end|>\n").unwrap(), vec![151645, 198]);
}

#[test]
fn small_fixture_tokenizer_matches_reference() {
    let t = Qwen2Tokenizer::from_file(model_dir("tiny-echovlm").join("tokenizer.json")).unwrap();
    let g = Golden::load("tiny-echovlm");
    for s in g.meta["small_tokenizer"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        assert_eq!(t.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(
            t.decode(&want, false).unwrap(),
            s["decoded"].as_str().unwrap()
        );
    }
    assert_eq!(t.special().image_pad, 652);
    assert!(t.is_special(t.special().im_end));
    assert!(!t.is_special(t.encode("a").unwrap()[0]));
}

#[test]
fn broken_tokenizer_files_are_typed_errors() {
    let dir = support::temp_dir("tok");
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, b"{ this is not json").unwrap();
    match Qwen2Tokenizer::from_file(&p).unwrap_err() {
        TokenizerError::Load { path, .. } => assert_eq!(path, p),
        other => panic!("{other}"),
    }
    // a valid tokenizer without Qwen2-VL's vision tokens
    let small = std::fs::read_to_string(model_dir("tiny-echovlm").join("tokenizer.json")).unwrap();
    std::fs::write(&p, small.replace("<|image_pad|>", "<|img|>")).unwrap();
    assert!(matches!(
        Qwen2Tokenizer::from_file(&p).unwrap_err(),
        TokenizerError::MissingSpecial("<|image_pad|>")
    ));
    assert!(matches!(
        Qwen2Tokenizer::from_file(dir.path().join("absent.json")).unwrap_err(),
        TokenizerError::Load { .. }
    ));
}

/// Qwen2.5's 22 added tokens, the last 8 not special: ids from the file, and decoding (with and
/// without skipping special tokens) as transformers 4.51 does.
#[test]
fn qwen25_added_tokens_encode_and_decode_like_transformers() {
    let t = Qwen2Tokenizer::from_file(model_dir("tiny-qwen25vl").join("tokenizer.json")).unwrap();
    let g = Golden::load("tiny-qwen25vl");
    let tok = &g.meta["tokenizer"];
    let added = tok["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 22);
    let mut not_special = 0;
    for a in added {
        let id = a["id"].as_u64().unwrap() as u32;
        let content = a["content"].as_str().unwrap();
        assert_eq!(t.token_to_id(content), Some(id), "{content}");
        assert_eq!(
            t.is_special(id),
            a["special"].as_bool().unwrap(),
            "{content}"
        );
        not_special += usize::from(!t.is_special(id));
    }
    assert_eq!(not_special, 8);
    let samples = tok["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    for s in samples {
        let text = s["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        assert_eq!(t.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            s["decoded"].as_str().unwrap()
        );
        assert_eq!(
            t.decode(&ids, true).unwrap(),
            s["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
    }
}
