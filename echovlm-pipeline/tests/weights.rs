//! `Weights::Auto`, the default: a checkpoint keeps its storage type on the CPU (bf16 stays
//! bf16, f32 stays f32) and generates exactly as the same format asked for explicitly.

use std::path::{Path, PathBuf};

use echovlm_core::cpu::{Kernel, active_kernel};
use echovlm_pipeline::{
    EchoVlm, GenerationOptions, LinearOptions, LoadOptions, Request, WeightFormat, Weights,
};

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/models")
        .join(name)
}

fn load(name: &str, opts: LoadOptions) -> EchoVlm {
    EchoVlm::load(model_dir(name), &opts).unwrap()
}

fn greedy(m: &EchoVlm) -> (Vec<u32>, Vec<(u32, f32)>) {
    let req = Request::new("Describe the image.").image(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/demo_ultrasound.png"),
    );
    let out = m
        .generate(&req, &GenerationOptions::greedy(8).ignore_eos(true))
        .unwrap();
    (out.generated_token_ids, out.first_step_top_logits)
}

#[test]
fn the_default_is_auto() {
    assert_eq!(LoadOptions::default().weights, Weights::Auto);
}

#[test]
fn auto_keeps_the_storage_type_and_says_why() {
    let vector = active_kernel() != Kernel::Portable;
    for (name, stored, want) in [
        ("tiny-echovlm", "f32", WeightFormat::F32),
        (
            "tiny-echovlm-bf16",
            "bf16",
            if vector {
                WeightFormat::Bf16
            } else {
                WeightFormat::F32
            },
        ),
    ] {
        let auto = load(name, LoadOptions::default());
        assert_eq!(
            auto.weight_format(),
            Some(want),
            "{name}: {}",
            auto.weight_choice()
        );
        let why = auto.weight_choice();
        assert!(why.starts_with(&want.to_string()), "{name}: {why}");
        if want.to_string() == stored {
            assert!(
                why.contains("storage type") || why.contains(&format!("stored in {stored}")),
                "{name}: {why}"
            );
        }
        // the same model as the format asked for by name
        let exact = load(
            name,
            LoadOptions::default().linear(LinearOptions::cpu(want)),
        );
        assert_eq!(exact.weight_format(), Some(want));
        assert!(
            exact.weight_choice().contains("as asked"),
            "{}",
            exact.weight_choice()
        );
        assert_eq!(auto.weight_bytes(), exact.weight_bytes(), "{name}");
        assert_eq!(greedy(&auto), greedy(&exact), "{name}");
    }
}

#[test]
fn asked_formats_are_kept() {
    let m = load(
        "tiny-echovlm-bf16",
        LoadOptions::default().linear(LinearOptions::cpu(WeightFormat::Int8)),
    );
    assert_eq!(m.weight_format(), Some(WeightFormat::Int8));
    let m = load(
        "tiny-echovlm-bf16",
        LoadOptions::default().linear(LinearOptions::cpu(WeightFormat::Int4)),
    );
    assert_eq!(m.weight_format(), Some(WeightFormat::Int4));
    let int8_bytes = load(
        "tiny-echovlm-bf16",
        LoadOptions::default().linear(LinearOptions::cpu(WeightFormat::Int8)),
    )
    .weight_bytes();
    // 0.5625 bytes per packed weight against 1.0625 (norms and biases stay f32)
    assert!(
        m.weight_bytes() < int8_bytes * 6 / 10,
        "{} vs {int8_bytes}",
        m.weight_bytes()
    );
    let m = load(
        "tiny-echovlm",
        LoadOptions::default().weights(Weights::Exact(LinearOptions::portable())),
    );
    assert_eq!(m.weight_format(), None);
    assert!(
        m.weight_choice().contains("Burn tensors"),
        "{}",
        m.weight_choice()
    );
}
