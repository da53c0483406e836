//! The GPU backends against the reference fixtures.
//!
//! With `wgpu` (a real GPU, or Mesa's lavapipe Vulkan driver in CI): text only, one image and
//! two images, in f32 and f16; the Qwen2.5-VL (EchoVLM V2) fixtures in f32: windowed images,
//! two images, cine loops at two frame rates; and the count of host read-backs per decode step.
//! With `cuda`: on a machine with an NVIDIA GPU the same checks in f32, f16 and bf16; on one
//! without, the device is refused with an error naming it.
//!
//! Run with (the CPU backend is not needed, so it is left out of the build):
//! `cargo test --release -p echovlm-pipeline --no-default-features --features wgpu,cuda --test gpu`
//! (with `ECHOVLM_GPU_STRICT=1` a dtype the wgpu adapter lacks fails instead of being skipped;
//! `cuda` needs `tools/setup-cuda-llvm.sh` once).

#![cfg(any(feature = "wgpu", feature = "cuda"))]

#[path = "../../tests/support/mod.rs"]
mod support;

mod cases;
#[allow(dead_code)]
mod choose;

use std::sync::Mutex;

use burn::tensor::{DType, Device};
use echovlm_pipeline::{EchoVlm, GenerationOptions, LoadOptions, Request};
use support::{Golden, image, max_abs_diff, model_dir};

/// The tests of this binary take turns: the read-back counter is process-wide, and one GPU
/// runs one model at a time anyway.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Largest last-position logit difference allowed for `dtype` on `backend` (logits of
/// magnitude ~10).
fn tolerance(dtype: DType, backend: &str) -> f32 {
    match dtype {
        // cubek's matmul multiplies f32 operands in TF32 (10-bit mantissa) on GPUs whose
        // tensor cores have it (CUDA), as PyTorch does with allow_tf32: measured 5.1e-3 on an
        // H200 (text case); f16's tolerance
        DType::F32 if tf32(backend) => 0.03,
        // measured on lavapipe: f32 5e-6, f16 1.3e-2; tolerances add a stated margin
        DType::F32 => 5e-5,
        DType::F16 => 0.03,
        // bf16 keeps 8 bits of mantissa against f16's 11: eight times f16's tolerance
        _ => 0.25,
    }
}

/// Whether f32 matrix products run in TF32 on this backend.
fn tf32(backend: &str) -> bool {
    backend == "cuda"
}

/// The wgpu device (the default adapter).
#[cfg(feature = "wgpu")]
fn wgpu() -> Option<Device> {
    Some(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

/// The first CUDA device, or `None` (after checking the error names it) on a machine without
/// one.
#[cfg(feature = "cuda")]
fn cuda() -> Option<Device> {
    use echovlm_pipeline::{device_from_name, probe_device};
    let device = device_from_name("cuda").unwrap();
    match probe_device(&device) {
        Ok(()) => Some(device),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(
                msg.contains("Cuda") && msg.contains("not available"),
                "{msg}"
            );
            None
        }
    }
}

fn load(device: Option<Device>, dtype: DType) -> Option<EchoVlm> {
    load_model(device, "tiny-echovlm", dtype)
}

fn load_model(device: Option<Device>, name: &str, dtype: DType) -> Option<EchoVlm> {
    let device = device?;
    if !device.supports_dtype(dtype) {
        // CI sets ECHOVLM_GPU_STRICT: there the adapter (lavapipe) must run every dtype tested
        assert!(
            std::env::var_os("ECHOVLM_GPU_STRICT").is_none(),
            "the device lacks {dtype:?}"
        );
        eprintln!("the device lacks {dtype:?}; skipped");
        return None;
    }
    Some(
        EchoVlm::load(
            model_dir(name),
            &LoadOptions::default().device(device).dtype(dtype),
        )
        .unwrap(),
    )
}

/// How many leading tokens two generations share.
fn same_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::greedy(n)
        .ignore_eos(true)
        .trace_routing(false)
}

fn check(model: &EchoVlm, dtype: DType, backend: &str) {
    let g = Golden::load("tiny-echovlm");
    let mut cases: Vec<(String, Request, serde_json::Value)> = Vec::new();
    let text = g.meta["text_en"].clone();
    cases.push((
        "text_en".into(),
        Request::new(text["prompt"].as_str().unwrap()),
        text,
    ));
    for name in ["one_image", "two_images"] {
        let case = g.meta["e2e"][name].clone();
        let mut r = Request::new(case["prompt"].as_str().unwrap());
        for img in case["images"].as_array().unwrap() {
            r = r.image(image(img.as_str().unwrap()));
        }
        cases.push((name.into(), r, case));
    }
    for (name, request, case) in cases {
        let prepared = model.prepare(&request).unwrap();
        let logits = model.next_token_logits(&prepared).unwrap();
        let key = if name == "text_en" {
            "text_en.last_logits".to_string()
        } else {
            format!("e2e.{name}.last_logits")
        };
        let d = max_abs_diff(&logits, &g.f32(&key));
        eprintln!("{backend} {dtype:?} {name}: last-position logits max abs diff {d:.2e}");
        assert!(d <= tolerance(dtype, backend), "{name}: {d}");
        let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
        let out = model.generate(&request, &greedy(want.len())).unwrap();
        let same = same_prefix(&out.generated_token_ids, &want);
        eprintln!(
            "{backend} {dtype:?} {name}: {same}/{} greedy tokens identical",
            want.len()
        );
        if dtype == DType::F32 && !tf32(backend) {
            assert_eq!(out.generated_token_ids, want, "{name}: greedy tokens");
        } else {
            // measured 40/40 on lavapipe; 2 tokens of margin
            assert!(same + 2 >= want.len(), "{name}: only {same} tokens agree");
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn reference_fixtures_in_f32() {
    let _turn = turn();
    if let Some(model) = load(wgpu(), DType::F32) {
        check(&model, DType::F32, "wgpu");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn reference_fixtures_in_f16() {
    let _turn = turn();
    if let Some(model) = load(wgpu(), DType::F16) {
        check(&model, DType::F16, "wgpu");
    }
}

/// A CPU weight format asked for on a GPU loads Burn tensors of the model's float type, and the
/// load says so instead of claiming the format was used.
#[cfg(feature = "wgpu")]
#[test]
fn cpu_weight_formats_are_named_off_the_cpu() {
    use echovlm_pipeline::Weights;
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let model = EchoVlm::load(
        model_dir("tiny-echovlm"),
        &LoadOptions::default()
            .device(device)
            .weights("int8".parse::<Weights>().unwrap()),
    )
    .unwrap();
    let choice = model.weight_choice();
    assert!(
        choice.contains("int8 weights are a format of the CPU kernels")
            && !choice.contains("as asked"),
        "{choice}"
    );
}

/// EchoVLM V2's architecture in f32: last logits within 1e-4 of max |logit| and 32 greedy
/// tokens identical, as on the CPU (with TF32 products: within 3e-3, 30 tokens).
fn check_qwen25(model: &EchoVlm, backend: &str) {
    let g = Golden::load("tiny-qwen25vl");
    let mut cases = vec![("text_en".to_string(), g.meta["text_en"].clone())];
    for name in [
        "odd_window",
        "even_window",
        "two_images",
        "cine_fps2",
        "cine_fps1",
    ] {
        cases.push((name.to_string(), g.meta["e2e"][name].clone()));
    }
    for (name, case) in cases {
        let r = cases::request(&case);
        let key = match name.as_str() {
            "text_en" => "text_en.last_logits".to_string(),
            _ => format!("e2e.{name}.last_logits"),
        };
        let want_logits = g.f32(&key);
        let max = want_logits.iter().fold(0f32, |a, x| a.max(x.abs()));
        let logits = model
            .next_token_logits(&model.prepare(&r).unwrap())
            .unwrap();
        let d = max_abs_diff(&logits, &want_logits);
        eprintln!("{backend} F32 qwen25 {name}: last-position logits max abs diff {d:.2e}");
        // TF32 products: f16's tolerance relative to the largest logit, and 2 tokens of margin
        let rel = if tf32(backend) { 3e-3 } else { 1e-4 };
        assert!(d <= rel * max, "{name}: {d}");
        let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
        let out = model.generate(&r, &greedy(want.len())).unwrap();
        if tf32(backend) {
            let same = same_prefix(&out.generated_token_ids, &want);
            eprintln!(
                "{backend} F32 qwen25 {name}: {same}/{} greedy tokens identical",
                want.len()
            );
            assert!(same + 2 >= want.len(), "{name}: only {same} tokens agree");
        } else {
            assert_eq!(out.generated_token_ids, want, "{name}: greedy tokens");
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn qwen25_fixtures_in_f32() {
    let _turn = turn();
    if let Some(model) = load_model(wgpu(), "tiny-qwen25vl", DType::F32) {
        check_qwen25(&model, "wgpu");
    }
}

/// A decode step reads back exactly one tensor, of one value (the chosen token id): the MoE
/// routing, the dynamic mix and the sampling stay on the device. Greedy and sampled, one image;
/// a traced routing, read back from the device, counts the experts as the reference does.
fn check_read_backs(model: &EchoVlm, backend: &str) {
    use echovlm_core::host::{read_back_values, read_backs};
    let g = Golden::load("tiny-echovlm");
    let r = cases::request(&g.meta["e2e"]["one_image"]);
    let sampled = |n| {
        greedy(n)
            .do_sample(true)
            .temperature(0.8)
            .top_k(40)
            .top_p(0.9)
            .repetition_penalty(1.1)
            .seed(5)
    };
    for (what, short, long) in [
        ("greedy", greedy(3), greedy(9)),
        ("sampled", sampled(3), sampled(9)),
    ] {
        let count = |opts: &GenerationOptions| {
            let before = (read_backs(), read_back_values());
            let out = model.generate(&r, opts).unwrap();
            assert_eq!(out.generated_token_ids.len(), opts.max_new_tokens);
            (read_backs() - before.0, read_back_values() - before.1)
        };
        let ((a, va), (b, vb)) = (count(&short), count(&long));
        eprintln!("{backend} {what}: {a} read-backs ({va} values) for 3 tokens, {b} ({vb}) for 9");
        assert_eq!(b - a, 6, "{what}: read-backs per decode step");
        assert_eq!(vb - va, 6, "{what}: values read back per decode step");
    }
    // a traced routing stays on the device during the decode and is read back once at the
    // end: a traced decode step reads back its token only
    let traced = |n| {
        let before = read_backs();
        let out = model.generate(&r, &greedy(n).trace_routing(true)).unwrap();
        let routing = out.routing.expect("a traced run returns its routing");
        assert!(!routing.layers.is_empty());
        assert_eq!(routing.tokens, out.timings.prefill_tokens + n - 1);
        read_backs() - before
    };
    let (a, b) = (traced(3), traced(9));
    eprintln!("{backend} traced: {a} read-backs for 3 tokens, {b} for 9");
    assert_eq!(b - a, 6, "traced: read-backs per decode step");
    // and what it reads back is the reference's routing: the text prompt's expert counts
    let text = &g.meta["text_en"];
    let out = model
        .generate(
            &Request::new(text["prompt"].as_str().unwrap()),
            &greedy(1).trace_routing(true),
        )
        .unwrap();
    let want: Vec<Vec<u64>> = serde_json::from_value(text["expert_counts"].clone()).unwrap();
    let got = out
        .routing
        .expect("a traced run returns its routing")
        .expert_counts;
    eprintln!("{backend}: expert counts of the text prompt {got:?}");
    assert_eq!(got, want, "expert counts of the text prompt");
}

/// The request the launch counts decode after: the reference's one-image case.
fn one_image_request() -> Request {
    cases::request(&Golden::load("tiny-echovlm").meta["e2e"]["one_image"])
}

/// Kernel launches per decode step of `model` on `r`: the launches of a 9-token generation less
/// those of a 3-token one, over 6 steps (after a run that compiles and tunes them). Prints
/// them by kernel, and the tensor operations Burn's fusion registered per step by kind; returns
/// the launches and the operations per step.
fn decode_launches(model: &EchoVlm, r: &Request, label: &str) -> (f64, f64) {
    use echovlm_core::launches::Launches;
    use std::collections::BTreeMap;
    // a first run compiles and tunes every shape the counted runs meet (the attention of each
    // cache length among them)
    model.generate(r, &greedy(9)).unwrap();
    let device = model.device();
    let count = |n: usize| {
        device.sync().unwrap();
        let launches = Launches::count();
        model.generate(r, &greedy(n)).unwrap();
        device.sync().unwrap();
        let ops: BTreeMap<String, i64> = launches
            .operations()
            .into_iter()
            .map(|(k, n)| (k, n as i64))
            .collect();
        let by = launches
            .by_kernel()
            .into_iter()
            .map(|k| (k.name, k.count as i64))
            .collect::<BTreeMap<_, _>>();
        (by, ops)
    };
    let ((short, ops_short), (long, ops_long)) = (count(3), count(9));
    let ops_per_step = print_per_step(&ops_long, &ops_short, label, "tensor operations", 12);
    let per_step = print_per_step(&long, &short, label, "kernel launches", usize::MAX);
    (per_step, ops_per_step)
}

/// What one decode step adds to each count (`long` after 9 tokens less `short` after 3, over
/// 6 steps): prints the total per step and the first `rows` counts, largest first; returns the
/// total per step.
fn print_per_step(
    long: &std::collections::BTreeMap<String, i64>,
    short: &std::collections::BTreeMap<String, i64>,
    label: &str,
    what: &str,
    rows: usize,
) -> f64 {
    let mut per: Vec<(&String, i64)> = long
        .iter()
        .map(|(k, &n)| (k, n - short.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 0)
        .collect();
    per.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let total = per.iter().map(|(_, n)| n).sum::<i64>() as f64 / 6.0;
    eprintln!("{label}: {total:.1} {what} per decode step");
    for (k, n) in per.iter().take(rows) {
        let k: String = k.chars().take(100).collect();
        eprintln!("  {:7.1}  {k}", *n as f64 / 6.0);
    }
    total
}

/// A decode step's kernel launches and tensor operations stay within budget. On a GPU a step
/// costs launches more than bytes (each launch, and each operation even where it launches
/// nothing, is Burn's fusion bookkeeping and a dispatch on the host): these budgets pin what was
/// removed. Measured on lavapipe (Mesa's CPU Vulkan, where Burn's autotune runs attention as
/// separate kernels): the EchoVLM fixture (3 layers with the dynamic MoE feed-forward) went from
/// 231 launches to 157 (365 operations to 351), then to 131 (345), the Qwen2.5-VL fixture (2
/// dense layers) from 68 to 65 (158 operations to 160), then to 58 (153). The operations do not
/// depend on the adapter; the launches do, on what the autotuner picked earlier in the process
/// (in CI's run of this binary the Qwen2.5-VL step once copied two tensors more): their budgets
/// are upper bounds with room.
#[cfg(feature = "wgpu")]
#[test]
fn decode_step_launch_budget() {
    let _turn = turn();
    let r = one_image_request();
    for (name, launches, operations) in [
        ("tiny-echovlm", 116.0, 371.0),
        ("tiny-qwen25vl", 49.0, 171.0),
    ] {
        if let Some(mut model) = load_model(wgpu(), name, DType::F32) {
            // the step run one by one (a replayed graph launches nothing through this path)
            model.set_decode_graphs(false);
            let (n, ops) = decode_launches(&model, &r, &format!("wgpu {name}"));
            assert!(n <= launches, "{name}: {n} launches per decode step");
            assert!(
                ops <= operations,
                "{name}: {ops} operations per decode step"
            );
        }
    }
}

/// The decoder's step with every input on the device ([`TextModel::device_decode`], what a
/// recorded graph replays) gives the logits of the step through the key/value cache, step by
/// step over eight fed tokens after a text prompt; it errors past the steps it has room for.
fn check_device_decode(model: &EchoVlm, label: &str) {
    use burn::tensor::{Int, Tensor};
    use echovlm_text::{DecoderInput, Positions};
    let text = model.text_model();
    let g = Golden::load("tiny-echovlm");
    let request = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    let ids = model.prepare(&request).unwrap().ids;
    let n = ids.len();
    let feed: Vec<u32> = vec![5, 17, 300, 42, 42, 7, 511, 2];
    let prefill = || {
        let mut cache = text.new_cache_with_capacity(n + feed.len());
        let pos = Positions::decode(&[0], 0, n);
        let emb = text.embed(std::slice::from_ref(&ids)).unwrap();
        text.forward(DecoderInput::new(emb, &pos), &mut cache, None)
            .unwrap();
        cache
    };
    let read = |t: Tensor<2>| echovlm_core::host::to_f32_vec(t).unwrap();
    let mut cache = prefill();
    let mut want = Vec::new();
    for &t in &feed {
        let pos = Positions::decode(&[0], cache.len(), 1);
        let emb = text.embed(&[vec![t]]).unwrap();
        let out = text
            .forward(DecoderInput::new(emb, &pos), &mut cache, None)
            .unwrap();
        want.push(read(
            out.logits.unwrap().reshape([1, text.config.vocab_size]),
        ));
    }
    let mut state = text
        .device_decode(prefill(), feed[0], 0, feed.len())
        .unwrap();
    let device = model.device();
    for (i, want) in want.iter().enumerate() {
        let got = read(text.decode_step(&mut state).unwrap());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&got, want);
        eprintln!("{label}: device step {i}: logits within {d:.2e} (max |logit| {scale:.1})");
        assert!(d <= 1e-5 * scale.max(1.0), "{label}: step {i}: {d}");
        if let Some(&next) = feed.get(i + 1) {
            state.feed(Tensor::<1, Int>::from_data([next as i64], &device));
        }
    }
    assert!(
        text.decode_step(&mut state).is_err(),
        "a step past the room it has"
    );
    // rotary positions past the context are refused up front
    let limit = text.config.max_position_embeddings as i64;
    let err = text.device_decode(prefill(), 5, limit, 8).unwrap_err();
    assert!(
        err.to_string().contains("exceed the model's context"),
        "{err}"
    );
    // and so is a cache the device decode cannot take over: two rows
    let mut two = text.new_cache();
    let pos = Positions::decode(&[0, 0], 0, 2);
    let emb = text.embed(&[vec![5, 6], vec![7, 8]]).unwrap();
    text.forward(DecoderInput::new(emb, &pos), &mut two, None)
        .unwrap();
    let err = text.device_decode(two, 5, 0, 8).unwrap_err();
    assert!(err.to_string().contains("one row"), "{err}");
}

#[cfg(feature = "wgpu")]
#[test]
fn device_decode_steps_equal_cached_steps() {
    let _turn = turn();
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        if let Some(model) = load_model(wgpu(), name, DType::F32) {
            check_device_decode(&model, &format!("wgpu {name}"));
        }
    }
}

/// Decoding one sequence replays a recorded step after three steps run one by one, and
/// chooses the tokens the step-by-step decode chooses, greedy with and without the repetition
/// penalty and sampled, and records the same routing when traced; a replayed step goes
/// through neither Burn's fusion nor CubeCL's launch path.
/// With `exact` (f32 without TF32) every token must agree; otherwise (TF32 products, whose
/// rounding can differ between the step's two forms) all but two.
fn check_decode_graphs(model: &mut EchoVlm, label: &str, exact: bool) {
    use echovlm_core::launches::Launches;
    let r = one_image_request();
    // (a strong penalty: the EchoVLM fixture repeats one token from the third on without);
    // sampled: each step draws its own number, the same as one by one
    let sampled = greedy(24).do_sample(true).seed(7);
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    for opts in [
        greedy(24),
        greedy(24).repetition_penalty(3.0),
        sampled.clone(),
        sampled.clone().temperature(0.8).top_k(20).top_p(0.9),
        sampled.clone().top_p(0.95).repetition_penalty(1.3),
    ] {
        model.set_decode_graphs(false);
        let eager = model.generate(&r, &opts).unwrap();
        model.set_decode_graphs(true);
        let graph = model.generate(&r, &opts).unwrap();
        let per_step = |o: &echovlm_pipeline::Output| o.timings.decode_ms / 23.0;
        eprintln!(
            "{label} (sampled {}, penalty {}): {:.2} ms per step one by one, {:.2} ms with {} \
             of 23 replayed",
            opts.do_sample,
            opts.repetition_penalty,
            per_step(&eager),
            per_step(&graph),
            graph.timings.replayed_steps,
        );
        assert_eq!(eager.timings.replayed_steps, 0);
        assert_eq!(
            graph.timings.replayed_steps,
            23 - 3,
            "{label}: replayed steps"
        );
        let same = same_prefix(&graph.generated_token_ids, &eager.generated_token_ids);
        eprintln!(
            "{label}: {same}/24 tokens identical: {:?}",
            graph.generated_token_ids
        );
        if exact {
            assert_eq!(
                graph.generated_token_ids, eager.generated_token_ids,
                "{label}: tokens of the replayed steps"
            );
        } else {
            assert!(same + 2 >= 24, "{label}: only {same} tokens agree");
        }
        tokens.push(graph.generated_token_ids);
    }
    // the sampled decodes chose otherwise than the greedy one, and each step drew anew
    assert_ne!(tokens[2], tokens[0], "{label}: sampling draws");
    assert_ne!(
        tokens[2][3..],
        tokens[0][3..],
        "{label}: replayed steps' draws"
    );
    // a traced routing: kept on the device by the replayed steps, read at the end, the same as
    // read back step by step
    let traced = greedy(24).repetition_penalty(3.0).trace_routing(true);
    model.set_decode_graphs(false);
    let eager = model.generate(&r, &traced).unwrap();
    model.set_decode_graphs(true);
    let graph = model.generate(&r, &traced).unwrap();
    assert_eq!(
        graph.timings.replayed_steps,
        23 - 3,
        "{label}: traced, replayed"
    );
    let same = same_prefix(&graph.generated_token_ids, &eager.generated_token_ids);
    assert!(same == 24 || !exact, "{label}: traced, {same}/24");
    match (eager.routing, graph.routing) {
        (Some(e), Some(g)) if same == 24 => {
            eprintln!("{label}: traced expert counts {:?}", g.expert_counts);
            assert_eq!((g.tokens, &g.layers), (e.tokens, &e.layers));
            assert_eq!(g.expert_counts, e.expert_counts, "{label}: expert counts");
            for (a, b) in g.mean_coefficients.iter().zip(&e.mean_coefficients) {
                let d = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
                assert!(d < 1e-5, "{label}: mean coefficients {a:?} against {b:?}");
            }
        }
        (Some(e), Some(g)) => assert_eq!(g.tokens, e.tokens),
        (e, g) => assert!(e.is_none() && g.is_none(), "{label}: routing {e:?}, {g:?}"),
    }
    // a short prompt: its cache holds more positions than prompt and steps need (all masked)
    let g = Golden::load("tiny-echovlm");
    let text = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    model.set_decode_graphs(false);
    let eager = model.generate(&text, &greedy(10)).unwrap();
    model.set_decode_graphs(true);
    let graph = model.generate(&text, &greedy(10)).unwrap();
    assert!(
        eager.timings.prefill_tokens + 10 < 64,
        "a cache larger than needed"
    );
    assert_eq!(graph.timings.replayed_steps, 9 - 3);
    let same = same_prefix(&graph.generated_token_ids, &eager.generated_token_ids);
    assert!(
        same == 10 || (!exact && same + 2 >= 10),
        "{label}: short prompt, {same}/10"
    );
    // a decode that stops before its recording (at a stop token among its first three) leaves
    // the device ready for the next one to record
    let ids = model.generate(&r, &greedy(24)).unwrap().generated_token_ids;
    let i = (1..3)
        .find(|&i| !ids[..i].contains(&ids[i]))
        .expect("a new token early on");
    let stop = greedy(24).ignore_eos(false).stop_token_ids(vec![ids[i]]);
    let out = model.generate(&r, &stop).unwrap();
    assert_eq!(
        (out.generated_token_ids.len(), out.timings.replayed_steps),
        (i + 1, 0)
    );
    assert_eq!(
        model
            .generate(&r, &greedy(9))
            .unwrap()
            .timings
            .replayed_steps,
        5
    );
    // launches and operations of 6 more replayed steps: none
    let device = model.device();
    let count = |n: usize| {
        device.sync().unwrap();
        let launches = Launches::count();
        let out = model.generate(&r, &greedy(n)).unwrap();
        device.sync().unwrap();
        (
            launches.total(),
            launches.operations().iter().map(|(_, n)| n).sum::<u64>(),
            out.timings.replayed_steps,
        )
    };
    // a decode too short to record first: the next one still records
    let (tiny, short, long) = (count(3), count(9), count(15));
    assert_eq!(tiny.2, 0);
    eprintln!("{label}: 9 tokens {short:?}, 15 tokens {long:?} (launches, operations, replays)");
    assert_eq!(long.2 - short.2, 6);
    assert_eq!(
        (long.0, long.1),
        (short.0, short.1),
        "{label}: launches of replayed steps"
    );
}

/// The device chooser against the host sampler (greedy, penalised, sampled with temperature,
/// top-k and top-p), on wgpu.
#[cfg(feature = "wgpu")]
#[test]
fn device_choice_equals_the_host_sampler() {
    let _turn = turn();
    if let Some(device) = wgpu() {
        choose::device_choice_equals_the_host_sampler(&device, "wgpu");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn decode_graphs_replay_the_step() {
    let _turn = turn();
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        if let Some(mut model) = load_model(wgpu(), name, DType::F32) {
            check_decode_graphs(&mut model, &format!("wgpu {name}"), true);
        }
    }
}

/// Kernel launches of the first and the second greedy decode of a text prompt in this process,
/// printed for [`kernel_cache_keeps_tuning_between_processes`], which runs it as a child
/// process (ignored otherwise).
#[cfg(all(feature = "wgpu", feature = "kernel-cache"))]
#[test]
#[ignore = "run by kernel_cache_keeps_tuning_between_processes"]
fn kernel_cache_child() {
    use echovlm_core::launches::Launches;
    let model = EchoVlm::load(
        model_dir("tiny-qwen25vl"),
        &LoadOptions::default()
            .device(echovlm_pipeline::device_from_name("wgpu").unwrap())
            .dtype(DType::F32),
    )
    .unwrap();
    let g = Golden::load("tiny-qwen25vl");
    let r = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    let device = model.device();
    let count = || {
        device.sync().unwrap();
        let launches = Launches::count();
        let t = std::time::Instant::now();
        let out = model.generate(&r, &greedy(4)).unwrap();
        device.sync().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (launches.total(), out.generated_token_ids, ms)
    };
    let ((first, a, t1), (second, b, t2)) = (count(), count());
    assert_eq!(a, b);
    eprintln!("kernel-cache child: first decode {t1:.0} ms, second {t2:.0} ms");
    println!("kernel-cache child: launches {first} {second} tokens {a:?}");
}

/// With the `kernel-cache` feature, what CubeCL tunes in one process is kept on disk (here in
/// `ECHOVLM_KERNEL_CACHE`) for the next: a first process launches more kernels in its first
/// decode than in its second (the autotuner times its candidates), a second process sharing the
/// cache launches as many in its first as in its second, and both choose the same tokens.
#[cfg(all(feature = "wgpu", feature = "kernel-cache"))]
#[test]
fn kernel_cache_keeps_tuning_between_processes() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kernel_cache_child", "--ignored", "--nocapture"])
            .env("ECHOVLM_KERNEL_CACHE", dir.path())
            // the default autotune level: candidates are timed
            .env_remove("CUBECL_AUTOTUNE_LEVEL")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}{err}");
        if let Some((_, times)) = err.split_once("kernel-cache child: ") {
            eprintln!("kernel cache: {}", times.lines().next().unwrap_or_default());
        }
        let line = text
            .split_once("kernel-cache child: launches ")
            .and_then(|(_, rest)| rest.lines().next())
            .unwrap_or_else(|| panic!("no count in {text}"))
            .to_string();
        let (counts, tokens) = line.split_once(" tokens ").unwrap();
        let n: Vec<u64> = counts.split(' ').map(|x| x.parse().unwrap()).collect();
        (n[0], n[1], tokens.to_string())
    };
    let first = run();
    let stored: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let second = run();
    eprintln!("kernel cache: first process {first:?}, second {second:?}, {stored} bytes stored");
    assert!(stored > 0, "nothing was stored in the cache directory");
    assert!(
        first.0 > first.1,
        "the first process tuned nothing: {first:?}"
    );
    assert_eq!(second.0, second.1, "the second process tuned again");
    assert_eq!(second.0, first.1, "the second process chose other kernels");
    assert_eq!(first.2, second.2, "tokens");
}

/// The launch counter itself: a matrix product and an element-wise chain are seen as kernels
/// and as operations, timing reports a duration for every launch it saw (what the GPU probe
/// reads), and a dry run drops the launches (the output keeps what the buffer held).
#[cfg(feature = "wgpu")]
#[test]
fn launches_are_counted_timed_and_dropped() {
    use burn::tensor::{Distribution, Tensor, TensorData};
    use echovlm_core::launches::{DryRun, Launches};
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let a = Tensor::<2>::random([64, 64], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([64, 64], Distribution::Normal(0.0, 1.0), &device);
    let run = || (a.clone().matmul(b.clone()).exp() + 1.0).sqrt();
    // compile and tune first
    run().into_data();
    device.sync().unwrap();
    let counted = Launches::count();
    let y = run();
    device.sync().unwrap();
    let kernels = counted.by_kernel();
    let total: u64 = kernels.iter().map(|k| k.count).sum();
    assert_eq!(total, counted.total());
    assert!(
        (1..=4).contains(&total),
        "{total} launches for a product and a chain: {kernels:?}"
    );
    assert!(
        kernels.iter().any(|k| k.name.contains("Matmul")),
        "{kernels:?}"
    );
    let ops = counted.operations();
    assert!(ops.iter().any(|(k, _)| k == "Float::Matmul"), "{ops:?}");
    assert!(ops.iter().any(|(k, _)| k == "Float::Exp"), "{ops:?}");
    assert!(kernels.iter().all(|k| k.device_time.is_zero()));
    drop(counted);
    let want = y.into_data();

    let timed = Launches::timed();
    let y = run();
    device.sync().unwrap();
    let kernels = timed.by_kernel();
    assert!(!kernels.is_empty());
    assert!(
        kernels.iter().all(|k| !k.device_time.is_zero()),
        "every launch timed: {kernels:?}"
    );
    drop(timed);
    assert_eq!(y.into_data(), want, "timing changes no value");

    // dry run: the launch is made and dropped, the output buffer is never written
    let zeros = Tensor::<2>::from_data(TensorData::new(vec![0f32; 64 * 64], [64, 64]), &device);
    let near = |t: Tensor<2>, want: f32| {
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        v.iter().all(|&x| (x - want).abs() < 1e-5 * want)
    };
    let e = std::f32::consts::E;
    assert!(near((zeros.clone() + 1.0).exp(), e), "the chain computes e");
    let dry = DryRun::new();
    let counted = Launches::count();
    let y = (zeros + 2.0).exp();
    device.sync().unwrap();
    assert!(counted.total() >= 1);
    drop(counted);
    drop(dry);
    assert!(!near(y, e * e), "a dry run computed the values");
}

/// What a decode step costs (ignored: it times; run it with `--ignored`): the wall time per
/// step run one by one and per replayed recorded step, from generations of 35 and 19 tokens
/// (both past the recording), best of 5; greedy, sampled, and greedy with the routing traced. (Timing the host side alone with every launch dropped
/// says little: the token read back is then whatever its buffer held, and the generation may
/// end early.)
#[cfg(feature = "wgpu")]
#[test]
#[ignore = "timing"]
fn decode_step_host_cost() {
    let _turn = turn();
    let r = one_image_request();
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        let Some(mut model) = load_model(wgpu(), name, DType::F32) else {
            return;
        };
        model.set_decode_graphs(false);
        let (launches, _) = decode_launches(&model, &r, name);
        type Options = fn(usize) -> GenerationOptions;
        let settings: [(&str, Options); 3] = [
            ("greedy", greedy),
            ("sampled (temperature 0.8, top-k 20, top-p 0.9)", |n| {
                greedy(n)
                    .do_sample(true)
                    .temperature(0.8)
                    .top_k(20)
                    .top_p(0.9)
            }),
            ("greedy, routing traced", |n| greedy(n).trace_routing(true)),
        ];
        for (what, opts) in settings {
            let step_time = |model: &EchoVlm| {
                let time = |n: usize| {
                    let t = std::time::Instant::now();
                    model.generate(&r, &opts(n)).unwrap();
                    t.elapsed().as_secs_f64()
                };
                (0..5)
                    .map(|_| (time(35) - time(19)) / 16.0)
                    .fold(f64::INFINITY, f64::min)
            };
            model.set_decode_graphs(false);
            let wall = step_time(&model);
            model.set_decode_graphs(true);
            let replayed = step_time(&model);
            eprintln!(
                "{name}, {what}: a step run one by one {:.0} µs, a replayed step {:.0} µs \
                 ({launches:.0} launches of a greedy step one by one)",
                wall * 1e6,
                replayed * 1e6
            );
        }
    }
}

/// Continuous batching on the device: three rows with different sampling options decode
/// together, each gets the tokens it gets alone, and a step reads back one tensor of one value
/// per row.
fn check_continuous(model: &EchoVlm, backend: &str) {
    use echovlm_core::host::{read_back_values, read_backs};
    use echovlm_pipeline::{BatchEvent, ContinuousBatch};
    let g = Golden::load("tiny-echovlm");
    let request = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    let opts = [
        greedy(8),
        greedy(8).do_sample(true).top_k(20).top_p(0.9).seed(3),
        greedy(8).do_sample(true).temperature(0.7).seed(4),
    ];
    let alone: Vec<Vec<u32>> = opts
        .iter()
        .map(|o| model.generate(&request, o).unwrap().generated_token_ids)
        .collect();
    let prepared = model.prepare(&request).unwrap();
    let mut batch = ContinuousBatch::new(model);
    let added = batch
        .add_all(opts.iter().map(|o| (prepared.clone(), o.clone())).collect())
        .unwrap();
    let ids: Vec<_> = added.iter().map(|(id, _)| *id).collect();
    let mut done = std::collections::HashMap::new();
    let (reads, values, mut steps) = (read_backs(), read_back_values(), 0u64);
    while !batch.is_empty() {
        for e in batch.step().unwrap() {
            if let BatchEvent::Finished { id, output } = e {
                done.insert(id, output.generated_token_ids);
            }
        }
        steps += 1;
    }
    let (reads, values) = (read_backs() - reads, read_back_values() - values);
    eprintln!("{backend}: continuous batch, {steps} steps, {reads} read-backs of {values} values");
    assert_eq!(reads, steps, "read-backs per step");
    assert_eq!(values, 3 * steps, "values read back per step");
    for (r, id) in ids.iter().enumerate() {
        assert_eq!(done[id], alone[r], "row {r}: tokens in the batch and alone");
    }
}

/// A continuous batch's sequence that runs alone replays a recorded step, and hands its keys
/// and values back when another joins: its tokens (greedy with a penalty, sampled) and its
/// traced routing are those of the request alone, before, while and after it shares the
/// batch, and so are the joining sequence's.
/// With `exact` (f32 without TF32) every token must agree; otherwise all but two.
fn check_continuous_lone(model: &mut EchoVlm, label: &str, exact: bool) {
    use echovlm_pipeline::{BatchEvent, ContinuousBatch, Output, SeqId};
    let r = one_image_request();
    let g = Golden::load("tiny-echovlm");
    let text = Request::new(g.meta["text_en"]["prompt"].as_str().unwrap());
    let penalised = greedy(24).repetition_penalty(3.0);
    // (plain sampling: with top-k and top-p the fixture's few likely tokens leave the draws
    // little to choose)
    let sampled = greedy(24).do_sample(true).seed(11);
    let traced = penalised.clone().trace_routing(true);
    let joining = greedy(6).repetition_penalty(1.3);
    model.set_decode_graphs(false);
    let joining_alone = model.generate(&text, &joining).unwrap();
    model.set_decode_graphs(true);
    // a batch of `opts` on `r`, run until every sequence left; `joining` on `text` is added
    // after `late` steps
    let run = |model: &EchoVlm, opts: &GenerationOptions, late: Option<usize>| {
        let mut batch = ContinuousBatch::new(model);
        let (first, _) = batch.add(model.prepare(&r).unwrap(), opts.clone()).unwrap();
        let mut done: std::collections::HashMap<SeqId, Output> = Default::default();
        let mut second = None;
        let mut steps = 0;
        while !batch.is_empty() {
            if Some(steps) == late {
                let (id, _) = batch
                    .add(model.prepare(&text).unwrap(), joining.clone())
                    .unwrap();
                second = Some(id);
            }
            for e in batch.step().unwrap() {
                if let BatchEvent::Finished { id, output } = e {
                    done.insert(id, *output);
                }
            }
            steps += 1;
        }
        let second = second.map(|id| done.remove(&id).unwrap());
        (done.remove(&first).unwrap(), second)
    };
    for (name, opts) in [
        ("penalised", &penalised),
        ("sampled", &sampled),
        ("traced", &traced),
    ] {
        model.set_decode_graphs(false);
        let eager = model.generate(&r, opts).unwrap();
        model.set_decode_graphs(true);
        let (lone, _) = run(model, opts, None);
        // joins after 8 steps (4 of them replayed) and leaves after 5 more; the first goes on
        // alone again for the rest
        let (shared, second) = run(model, opts, Some(8));
        let second = second.unwrap();
        eprintln!(
            "{label} {name}: replayed alone {}, with a sequence joining {}",
            lone.timings.replayed_steps, shared.timings.replayed_steps
        );
        assert_eq!(lone.timings.replayed_steps, 23 - 3, "{label} {name}: alone");
        assert!(
            (1..23 - 3 - 5).contains(&shared.timings.replayed_steps),
            "{label} {name}: replayed {} with a sequence joining",
            shared.timings.replayed_steps
        );
        let agree = |a: &[u32], b: &[u32]| {
            let same = same_prefix(a, b);
            same == b.len() || (!exact && same + 2 >= b.len())
        };
        for (how, out) in [("alone", &lone), ("joined", &shared)] {
            assert!(
                agree(&out.generated_token_ids, &eager.generated_token_ids),
                "{label} {name}: tokens {how} in the batch {:?} and step by step {:?}",
                out.generated_token_ids,
                eager.generated_token_ids
            );
        }
        assert!(
            agree(
                &second.generated_token_ids,
                &joining_alone.generated_token_ids
            ),
            "{label} {name}: the joining sequence's tokens"
        );
        assert_eq!(second.timings.replayed_steps, 0);
        if let (true, Some(e)) = (exact, &eager.routing) {
            for (how, out) in [("alone", &lone), ("joined", &shared)] {
                let got = out.routing.as_ref().unwrap();
                assert_eq!((got.tokens, &got.layers), (e.tokens, &e.layers), "{how}");
                assert_eq!(got.expert_counts, e.expert_counts, "{label} {how}: experts");
                for (a, b) in got.mean_coefficients.iter().zip(&e.mean_coefficients) {
                    let d = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
                    assert!(d < 1e-5, "{label} {how}: coefficients {a:?} against {b:?}");
                }
            }
        }
    }
}

/// A conversation on the device: each turn replays a recorded step, hands its keys and values
/// back for the next turn, and gives the tokens of a run over the whole conversation.
/// With `exact` (f32 without TF32) every token must agree; otherwise all but two.
fn check_conversation(model: &EchoVlm, label: &str, exact: bool) {
    use echovlm_pipeline::PreparedPrompt;
    let r = one_image_request();
    let first = model.prepare(&r).unwrap();
    let opts = greedy(24).repetition_penalty(3.0);
    let (mut conv, report) = model.converse(&r, &opts).unwrap();
    assert_eq!(report.timings.replayed_steps, 23 - 3, "{label}: first turn");
    for q in ["Is there a lesion?", "Describe its margins."] {
        let turn = conv.ask(q, &opts).unwrap();
        assert_eq!(turn.timings.replayed_steps, 23 - 3, "{label}: {q}");
        let whole = PreparedPrompt::new(
            turn.prompt_token_ids.clone(),
            first.images.clone(),
            first.videos.clone(),
        );
        let want = model.run(vec![whole], &opts, None).unwrap().remove(0);
        let same = same_prefix(&turn.generated_token_ids, &want.generated_token_ids);
        assert!(
            same == 24 || (!exact && same + 2 >= 24),
            "{label}: {q}: {same}/24 tokens of the follow-up as of the whole conversation"
        );
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn a_conversation_keeps_its_cache_on_the_device() {
    let _turn = turn();
    if let Some(model) = load(wgpu(), DType::F32) {
        check_conversation(&model, "wgpu", true);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn a_lone_sequence_of_a_continuous_batch_replays_the_step() {
    let _turn = turn();
    if let Some(mut model) = load(wgpu(), DType::F32) {
        check_continuous_lone(&mut model, "wgpu", true);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn continuous_batching_chooses_tokens_on_the_device() {
    let _turn = turn();
    if let Some(model) = load(wgpu(), DType::F32) {
        check_continuous(&model, "wgpu");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn a_decode_step_reads_back_only_the_token_ids() {
    let _turn = turn();
    if let Some(model) = load(wgpu(), DType::F32) {
        check_read_backs(&model, "wgpu");
    }
}

/// `ECHOVLM_KERNEL_CACHE` and the CLI's `--kernel-cache` read a setting one way.
#[test]
fn kernel_cache_settings_are_read_one_way() {
    use echovlm_pipeline::KernelCache;
    use std::path::PathBuf;
    assert_eq!(KernelCache::from_setting(""), KernelCache::Default);
    for off in ["off", "0", "false"] {
        assert_eq!(KernelCache::from_setting(off), KernelCache::Off, "{off}");
    }
    assert_eq!(
        KernelCache::from_setting("/tmp/kernels"),
        KernelCache::Dir(PathBuf::from("/tmp/kernels"))
    );
    assert_eq!(
        KernelCache::from_setting("Off"),
        KernelCache::Dir(PathBuf::from("Off")),
        "a directory whose name only looks like the word"
    );
}

/// The device names this build offers are the backends it was built with: here no CPU
/// backend, so `cpu` is refused with an error that names the feature it needs.
#[test]
fn the_build_offers_exactly_its_backends() {
    use echovlm_pipeline::{available_devices, device_from_name};
    let mut want = Vec::new();
    if cfg!(feature = "flex") {
        want.push("cpu");
    }
    if cfg!(feature = "wgpu") {
        want.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        want.push("cuda");
    }
    assert_eq!(available_devices(), want);
    if !cfg!(feature = "flex") {
        let err = device_from_name("cpu").unwrap_err().to_string();
        assert!(err.contains("`flex` feature"), "{err}");
        assert!(!err.contains("available: cpu"), "{err}");
    }
}

/// CUDA: with a device, the reference fixtures run as on wgpu; without one (CI), the probe
/// returns an error naming the device instead of panicking.
#[cfg(feature = "cuda")]
#[test]
fn cuda_runs_the_fixtures_or_says_there_is_no_device() {
    let _turn = turn();
    assert!(echovlm_pipeline::device_from_name("cuda:x").is_err());
    if let Some(model) = load(cuda(), DType::F32) {
        check(&model, DType::F32, "cuda");
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_reference_fixtures_in_f16_and_bf16() {
    let _turn = turn();
    for dtype in [DType::F16, DType::BF16] {
        if let Some(model) = load(cuda(), dtype) {
            check(&model, dtype, "cuda");
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_qwen25_fixtures_in_f32() {
    let _turn = turn();
    if let Some(model) = load_model(cuda(), "tiny-qwen25vl", DType::F32) {
        check_qwen25(&model, "cuda");
    }
}

/// The device chooser against the host sampler, on CUDA.
#[cfg(feature = "cuda")]
#[test]
fn cuda_device_choice_equals_the_host_sampler() {
    let _turn = turn();
    if let Some(device) = cuda() {
        choose::device_choice_equals_the_host_sampler(&device, "cuda");
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_decode_graphs_replay_the_step() {
    let _turn = turn();
    for name in ["tiny-echovlm", "tiny-qwen25vl"] {
        if let Some(mut model) = load_model(cuda(), name, DType::F32) {
            check_decode_graphs(&mut model, &format!("cuda {name}"), !tf32("cuda"));
        }
    }
}

/// Decode graphs on CUDA for a continuous batch's lone sequence and for a conversation's
/// turns (`tools/gpu_check.sh` step `parity`).
#[cfg(feature = "cuda")]
#[test]
fn cuda_decode_graphs_in_a_batch_and_a_conversation() {
    let _turn = turn();
    if let Some(mut model) = load(cuda(), DType::F32) {
        check_continuous_lone(&mut model, "cuda", !tf32("cuda"));
        check_conversation(&model, "cuda", !tf32("cuda"));
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_decode_step_reads_back_only_the_token_ids() {
    let _turn = turn();
    if let Some(model) = load(cuda(), DType::F32) {
        check_read_backs(&model, "cuda");
        check_continuous(&model, "cuda");
    }
}

/// Launches per decode step of `model` on `r`, and the device time they take by kernel (CubeCL's
/// deferred timing): generations of 17 and 3 tokens, the difference over 14 steps. Set against
/// the step time of an untimed run, the device time says how much of a step the GPU is busy.
#[cfg(feature = "cuda")]
fn device_time(model: &EchoVlm, r: &Request, device: &burn::tensor::Device) {
    use echovlm_core::launches::Launches;
    use std::collections::HashMap;
    use std::time::Duration;
    let (launches, _) = decode_launches(model, r, "probe");
    let run = |n: usize| {
        device.sync().unwrap();
        let timed = Launches::timed();
        model.generate(r, &greedy(n)).unwrap();
        device.sync().unwrap();
        timed.by_kernel()
    };
    let plain = model.generate(r, &greedy(17)).unwrap().timings;
    let step_ms = 1e3 / plain.decode_tokens_per_s;
    let (short, long) = (run(3), run(17));
    let before: HashMap<_, _> = short
        .iter()
        .map(|k| (k.name.clone(), k.device_time))
        .collect();
    let mut rows: Vec<(String, u64, Duration)> = long
        .iter()
        .map(|k| {
            let d = k
                .device_time
                .saturating_sub(before.get(&k.name).copied().unwrap_or_default());
            (k.name.chars().take(60).collect(), k.count, d / 14)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2));
    let busy: Duration = rows.iter().map(|r| r.2).sum();
    let host_timed: Duration = long.iter().map(|k| k.host_timed).sum();
    println!(
        "probe: {launches:.0} launches per decode step; the device is busy {:.2} ms of a {step_ms:.2} ms step ({:.0}%); host-timed share of the timings {:.1} ms",
        busy.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3 / step_ms * 100.0,
        host_timed.as_secs_f64() * 1e3
    );
    println!("| kernel | device time per step |");
    println!("|---|---|");
    for (name, _, d) in rows.iter().take(15) {
        println!("| {name} | {:.1} µs |", d.as_secs_f64() * 1e6);
    }
}

/// Where a decode step's time goes on an NVIDIA GPU, printed for the README (`tools/gpu_check.sh`
/// step `probe`; ignored otherwise). Needs `ECHOVLM_PROBE_MODEL`, a full-size checkpoint, loaded
/// in bf16. Prints, most telling first:
/// 1. decode tokens/s of a text prompt with the fused products, replaying a recorded step and
///    step by step, and with the separate layers (two runs each: the first compiles and tunes
///    the kernels), then the fused model's kernel launches per step and how much of a step the
///    device is busy, by kernel (`device_time`, step by step);
/// 2. the time of one matrix-vector product (one token) at each of the decoder's shapes, fused
///    and not, and the bandwidth it reaches, and of a normalisation: each call is followed by a
///    synchronisation, whose own cost (measured alone) is subtracted. Queuing many independent
///    calls before one synchronisation measures Burn's fusion search instead (a first version of
///    this probe saw 82 ms per normalisation that way).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "measures a full-size checkpoint on a GPU"]
fn cuda_decode_probe() {
    use burn::tensor::{Distribution, Tensor};
    use std::time::Instant;
    let _turn = turn();
    let Some(device) = cuda() else { return };
    let Some(dir) = std::env::var_os("ECHOVLM_PROBE_MODEL") else {
        eprintln!("ECHOVLM_PROBE_MODEL is not set; skipped");
        return;
    };
    let t = Instant::now();
    let mut model = EchoVlm::load(
        &dir,
        &LoadOptions::default()
            .device(device.clone())
            .dtype(DType::BF16),
    )
    .unwrap();
    println!("probe: loaded in {:.1} s", t.elapsed().as_secs_f64());

    let request = Request::new(
        "Describe the typical ultrasound findings of a simple renal cyst, then of a complex one.",
    );
    let opts = greedy(64);
    let decode = |model: &EchoVlm, label: &str| {
        for run in 0..2 {
            let out = model.generate(&request, &opts).unwrap();
            let t = &out.timings;
            println!(
                "probe: {label}, run {run}: prefill {} tokens {:.1} ms, decode {} tokens {:.1} tokens/s ({} steps replayed)",
                t.prefill_tokens,
                t.prefill_ms,
                t.generated_tokens,
                t.decode_tokens_per_s,
                t.replayed_steps
            );
        }
    };
    decode(&model, "fused, decode graph");
    // the launches are counted and timed on the step run one by one (a replay bypasses them)
    model.set_decode_graphs(false);
    decode(&model, "fused, step by step");
    device_time(&model, &request, &device);
    model.text_model_mut(); // drops the fused layers
    decode(&model, "separate");

    let sync = || device.sync().unwrap();
    // microseconds per call of `f`, each call followed by a synchronisation, over `n` calls
    // after 3 warm-ups
    let time = |n: usize, f: &mut dyn FnMut() -> Tensor<3>| {
        for _ in 0..3 {
            let _y = f();
            sync();
        }
        let t = Instant::now();
        for _ in 0..n {
            let _y = f();
            sync();
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let cfg = model.text_model().config.clone();
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let x = |k: usize| {
        Tensor::<3>::random([1, 1, k], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16)
    };
    let xs = x(h);
    let base = time(50, &mut || xs.clone());
    println!("probe: a synchronisation alone takes {base:.1} µs");
    println!("| product (one token, bf16) | shape | time | bandwidth |");
    println!("|---|---|---|---|");
    for (name, k, n) in [
        ("k_proj, v_proj", h, kv),
        ("q_proj, o_proj", h, q),
        ("q/k/v fused", h, q + 2 * kv),
        ("gate_proj, up_proj", h, i),
        ("gate/up fused", h, 2 * i),
        ("down_proj", i, h),
    ] {
        let w =
            Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), &device).cast(DType::BF16);
        let xs = x(k);
        let us = time(20, &mut || {
            burn::tensor::module::linear(xs.clone(), w.clone().transpose(), None)
        }) - base;
        let gbs = (n * k * 2) as f64 / us / 1e3;
        println!("| {name} | {k} → {n} | {us:.1} µs | {gbs:.0} GB/s |");
    }
    let norm = model.text_model().norm.clone();
    let us = time(20, &mut || norm.forward(xs.clone())) - base;
    println!("| RMSNorm of one token | {h} | {us:.1} µs | |");
}

/// One token's matrix products in the weight formats Burn's CubeCL backends multiply without
/// widening the weights first: the float type `dtype`, and Burn's quantised tensors, int8 and
/// int4 symmetric per block of 32 along the input (f32 scales). For each `(name, k, n)` prints
/// one table row: the time of `[1, k] · [n, k]ᵀ` per format (each call followed by a
/// synchronisation, whose own cost is subtracted), its speed against the float product, the
/// bandwidth over the bytes the weights occupy, and the largest difference from the float
/// product relative to its largest output. A format whose product fails says so in its cell
/// and the others go on. Returns the relative differences, by shape and format.
fn weight_format_products(
    device: &Device,
    dtype: DType,
    shapes: &[(&str, usize, usize)],
    reps: usize,
) -> Vec<[Option<f32>; 2]> {
    use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
    use burn::tensor::{Distribution, Tensor};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    let time = |f: &mut dyn FnMut() -> Tensor<2>| micros_per_call(device, reps, f);
    let x0 = Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let base = time(&mut || x0.clone());
    let formats = [
        ("int8", QuantValue::Q8S, 1.0 + 4.0 / 32.0),
        ("int4", QuantValue::Q4S, 0.5 + 4.0 / 32.0),
    ];
    println!(
        "weight formats, one token ({dtype:?} activations; a synchronisation alone takes {base:.1} µs):"
    );
    println!(
        "| product | shape | {dtype:?} weights | int8, block 32 | int8 difference | int4, block 32 | int4 difference |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut diffs = Vec::new();
    for &(name, k, n) in shapes {
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), device).cast(dtype);
        let x = Tensor::<2>::random([1, k], Distribution::Normal(0.0, 1.0), device).cast(dtype);
        let float = x.clone().matmul(w.clone().transpose());
        let reference = float
            .cast(DType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let peak = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let us = time(&mut || x.clone().matmul(w.clone().transpose())) - base;
        let gbs = |bytes: f64, us: f64| bytes / us / 1e3;
        let float_bytes = (n * k * dtype.size()) as f64;
        let mut row = format!(
            "| {name} | {k} → {n} | {us:.1} µs ({:.0} GB/s) |",
            gbs(float_bytes, us)
        );
        let mut shape_diffs = [None; 2];
        for (i, (label, value, bytes_per_weight)) in formats.into_iter().enumerate() {
            let scheme = QuantScheme::default()
                .with_value(value)
                .with_store(QuantStore::PackedU32(0))
                .per_block([1, 32], ScaleDtype::F32);
            // a kernel that fails panics on the device's thread and the read returns an error
            let first = catch_unwind(AssertUnwindSafe(|| {
                let q = w.clone().quantize_dynamic(&scheme);
                let y = x.clone().matmul(q.clone().transpose());
                y.cast(DType::F32)
                    .try_into_data()
                    .map_err(|e| format!("{e:?}"))
                    .map(|d| (q, d.try_to_vec::<f32>().unwrap()))
            }));
            match first {
                Ok(Ok((q, y))) => {
                    let diff = y
                        .iter()
                        .zip(&reference)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                        / peak;
                    shape_diffs[i] = Some(diff);
                    let qus = time(&mut || x.clone().matmul(q.clone().transpose())) - base;
                    let bytes = n as f64 * k as f64 * bytes_per_weight;
                    row += &format!(
                        " {qus:.1} µs ({:.2}x, {:.0} GB/s) | {diff:.2e} |",
                        us / qus,
                        gbs(bytes, qus)
                    );
                }
                Ok(Err(e)) => {
                    row += &format!(" failed: {} | |", e.chars().take(80).collect::<String>())
                }
                Err(_) => row += &format!(" {label} panicked | |"),
            }
        }
        println!("{row}");
        diffs.push(shape_diffs);
    }
    diffs
}

/// Microseconds per call of `f` on `device`, each call followed by a synchronisation, over
/// `reps` calls after 3 warm-ups.
fn micros_per_call<T>(device: &Device, reps: usize, f: &mut dyn FnMut() -> T) -> f64 {
    let sync = || device.sync().unwrap();
    for _ in 0..3 {
        let _y = f();
        sync();
    }
    let t = std::time::Instant::now();
    for _ in 0..reps {
        let _y = f();
        sync();
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

/// The decode products of the released EchoVLM (V1) and of Qwen2.5-VL-7B (V2), fused as the
/// decoder runs them, in bf16 and in Burn's int8 and int4 quantised formats, on an NVIDIA GPU
/// (`tools/gpu_check.sh` step `formats`; ignored otherwise): whether Burn's quantised
/// products are faster than bf16 there, and how far from it they land.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "times products on a GPU"]
fn cuda_weight_format_products() {
    let _turn = turn();
    let Some(device) = cuda() else { return };
    let (h, i, q, kv) = (3584, 18944, 3584, 512);
    // V1's dynamic feed-forward: the dense MLP, 4 experts of 1408 and a shared expert of 5632
    let width = i + 4 * 1408 + 5632;
    weight_format_products(
        &device,
        DType::BF16,
        &[
            ("q/k/v fused", h, q + 2 * kv),
            ("o_proj", q, h),
            ("gate/up fused (V2)", h, 2 * i),
            ("down_proj (V2)", i, h),
            ("dynamic FFN up, fused (V1)", h, 2 * width + 4 + 3),
            ("dynamic FFN down, fused (V1)", width, h),
            ("lm_head", h, 152064),
        ],
        20,
    );
}

/// [`weight_format_products`] on the wgpu device at small shapes: the code path of the CUDA
/// table, and Burn's quantised products within their rounding of the float one (f32 and f16
/// activations). Ignored: it checks Burn, which no model path here uses yet.
#[cfg(feature = "wgpu")]
#[test]
#[ignore = "checks Burn's quantised products, which no model path uses yet"]
fn wgpu_weight_format_products() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    for dtype in [DType::F32, DType::F16] {
        let diffs = weight_format_products(
            &device,
            dtype,
            &[("square", 256, 256), ("wide", 512, 1024)],
            5,
        );
        for d in diffs {
            // int8 rounds each weight to 1/254 of its block's largest, int4 to 1/14
            assert!(d[0].is_some_and(|d| d < 0.02), "{dtype:?} int8: {d:?}");
            assert!(d[1].is_some_and(|d| d < 0.25), "{dtype:?} int4: {d:?}");
        }
    }
}

/// A decode step's attention as the decoder runs it off the CPU
/// ([`echovlm_core::backend::grouped_decode_attention`]: tensor operations the fuser can join)
/// against Burn's attention with the keys and values repeated per query head (what a prompt's
/// attention runs) and Burn's attention of the grouped heads (the decode form before), at
/// `heads` query heads over `kv_heads` key/value heads of width `dim` and each of `keys`
/// cached positions, the last quarter masked; prints microseconds per call (each followed by a
/// synchronisation) and returns, per key count, the largest difference of each form from the
/// repeated one relative to its largest output.
fn decode_attention_forms(
    device: &Device,
    dtype: DType,
    (heads, kv_heads, dim): (usize, usize, usize),
    keys: &[usize],
    reps: usize,
) -> Vec<[f32; 2]> {
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Distribution, Int, Tensor};
    use echovlm_core::backend::{grouped_decode_attention, repeat_kv};

    let time = |f: &mut dyn FnMut() -> Tensor<4>| micros_per_call(device, reps, f);
    let opts = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    let read = |t: Tensor<4>| t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
    println!(
        "decode attention, {heads} query heads over {kv_heads} key/value heads of {dim} ({dtype:?}):"
    );
    println!(
        "| keys | tensor operations | Burn's, grouped heads | Burn's, repeated keys and values |"
    );
    println!("|---|---|---|---|");
    // the same inputs every run
    device.seed(17);
    let mut diffs = Vec::new();
    for &n in keys {
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([1, heads, 1, dim], normal, device).cast(dtype);
        let k = Tensor::<4>::random([1, kv_heads, n, dim], normal, device).cast(dtype);
        let v = Tensor::<4>::random([1, kv_heads, n, dim], normal, device).cast(dtype);
        let visible = (n - n / 4) as i64;
        let mask: Tensor<4, Bool> = Tensor::<1, Int>::arange(0..n as i64, device)
            .greater_equal_elem(visible)
            .reshape([1, 1, 1, n]);
        let n_rep = heads / kv_heads;
        let ours = || grouped_decode_attention(q.clone(), k.clone(), v.clone(), Some(mask.clone()));
        let grouped = || {
            burn::tensor::module::attention(
                q.clone().reshape([1, kv_heads, n_rep, dim]),
                k.clone(),
                v.clone(),
                Some(mask.clone().expand([1, kv_heads, n_rep, n])),
                None,
                opts,
            )
            .reshape([1, heads, 1, dim])
        };
        let repeated = || {
            burn::tensor::module::attention(
                q.clone(),
                repeat_kv(k.clone(), n_rep),
                repeat_kv(v.clone(), n_rep),
                Some(mask.clone().expand([1, heads, 1, n])),
                None,
                opts,
            )
        };
        let reference = read(repeated());
        let peak = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = |y: Vec<f32>| max_abs_diff(&y, &reference) / peak;
        let d = [diff(read(ours())), diff(read(grouped()))];
        let t = [
            time(&mut || ours()),
            time(&mut || grouped()),
            time(&mut || repeated()),
        ];
        println!(
            "| {n} | {:.1} µs (difference {:.1e}) | {:.1} µs ({:.1e}) | {:.1} µs |",
            t[0], d[0], t[1], d[1], t[2]
        );
        diffs.push(d);
    }
    diffs
}

/// The decoder's decode attention equals Burn's attention over repeated keys and values on
/// the wgpu device, in f32 and f16, with masked positions, at Qwen2-VL's grouping (7 query
/// heads per key/value head).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_decode_attention_equals_burns() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 2e-3)] {
        if !device.supports_dtype(dtype) {
            continue;
        }
        for d in decode_attention_forms(&device, dtype, (14, 2, 64), &[8, 37, 256], 3) {
            assert!(d[0] < tolerance, "{dtype:?}: {d:?}");
        }
    }
}

/// [`decode_attention_forms`] at the decoder's shapes (28 query heads over 4 key/value heads
/// of 128, Qwen2-VL-7B and Qwen2.5-VL-7B alike) in bf16 on an NVIDIA GPU (`tools/gpu_check.sh`
/// step `formats`; ignored otherwise): whether the tensor-operation form beats Burn's
/// attention (which the autotuner may give a flash kernel there).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "times attention on a GPU"]
fn cuda_decode_attention_forms() {
    let _turn = turn();
    let Some(device) = cuda() else { return };
    decode_attention_forms(
        &device,
        DType::BF16,
        (28, 4, 128),
        &[512, 1024, 2048, 4096],
        20,
    );
}
