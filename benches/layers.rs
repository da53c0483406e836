//! Criterion benchmarks at the released EchoVLM's dimensions, on the random-weight checkpoints
//! written by `tools/make_bench_checkpoint.py` (default directory `target/bench-ckpt`, or
//! `ECHOVLM_BENCH_DIR`):
//!
//! * one decoder layer (hidden 3584, 28/4 heads, dense 18944, 4 × 1408 experts top-2, shared
//!   5632): prefill of 256 and 1024 tokens, decode of one token after 1k and 4k cached tokens
//!   (`decode_kv*`: one step, steps back to back on one cache rewound after each;
//!   `decode8_kv*`: eight consecutive steps on a fresh cache),
//!   for each weight format, and after each one-step decode a STREAM-like copy of 512 MiB on
//!   the thread pool (`copy_kv*`), the bandwidth of that minute;
//! * one vision block (1280 wide, 16 heads) on 1024 and 4096 patches, f32 and bf16 weights;
//! * the Qwen2.5-VL vision blocks (1280 wide, 16 heads, SwiGLU 3420): a block attending within
//!   112-pixel windows against a full-attention block, on 1024 and 4096 patches;
//! * the MoE block alone, sparse dispatch against running every expert;
//! * `matvec`: one activation row times a dense-MLP-sized matrix (18944 x 3584) in each packed
//!   format, cycling over four copies (1.1 GB in f32) so that every call streams from memory:
//!   the read bandwidth each kernel reaches (criterion prints it as throughput). Needs no
//!   checkpoint.
//! * `prompt_product`: 256 activation rows times the same matrix in each packed format, the
//!   arithmetic rate of the prompt-sized product (criterion prints floating-point operations
//!   per second as throughput). Needs no checkpoint.
//! * `attention`: the CPU path's tiled attention against Burn's (flex) on a vision block's
//!   shapes (16 heads of 80, 1024 and 4096 patches) and a prompt's (28 query and 4 key/value
//!   heads of 128, 1024 tokens, causal), and one decode step's attention over 1k and 4k
//!   cached positions of a host cache (`decode_*k/host`). Needs no checkpoint.
//!
//! Run with `cargo bench --bench layers`; `tools/bench_side_by_side.py` runs it next to PyTorch.

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::{DType, Device, Distribution, Tensor};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use echovlm_core::cpu::WeightFormat;
use echovlm_core::{Checkpoint, LinearOptions, load};
use echovlm_moe::{DynamicFfn, MoeConfig};
use echovlm_text::{DecoderInput, KvCache, Logits, Positions, TextConfig, TextModel};
use echovlm_vision::{VisionArch, VisionConfig, VisionModel};

fn bench_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ECHOVLM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-ckpt"));
    if dir.join("layer/model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "no benchmark checkpoints in {}: run `tools/.venv/bin/python tools/make_bench_checkpoint.py` first",
            dir.display()
        );
        None
    }
}

/// Whether the format named `name` is benchmarked: `ECHOVLM_BENCH_FORMATS` (comma-separated
/// names) picks formats; unset, every one is.
fn selected(name: &str) -> bool {
    let only = std::env::var("ECHOVLM_BENCH_FORMATS").unwrap_or_default();
    only.is_empty() || only.split(',').any(|o| o == name)
}

/// The CPU kernels' weight formats that are benchmarked.
fn kernel_formats() -> Vec<WeightFormat> {
    [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Int8,
        WeightFormat::Int4,
    ]
    .into_iter()
    .filter(|f| selected(&f.to_string()))
    .collect()
}

/// The formats compared: Burn's portable matmul and the CPU kernels' formats.
fn formats() -> Vec<(String, LinearOptions)> {
    let portable =
        selected("portable").then(|| ("portable".to_string(), LinearOptions::portable()));
    portable
        .into_iter()
        .chain(
            kernel_formats()
                .into_iter()
                .map(|f| (f.to_string(), LinearOptions::cpu(f))),
        )
        .collect()
}

/// `n` values drawn from N(0, 0.02²), a weight's scale.
fn random_values(n: usize) -> Vec<f32> {
    Tensor::<1>::random([n], Distribution::Normal(0.0, 0.02), &Device::default())
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

fn load_layer(dir: &std::path::Path, options: LinearOptions) -> TextModel {
    let dir = dir.join("layer");
    let cfg = TextConfig::from_file(dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    load(&ckpt, &Device::default(), DType::F32, options, |l| {
        TextModel::load(l, &cfg)
    })
    .unwrap()
}

fn random(shape: [usize; 3]) -> Tensor<3> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Device::default())
}

fn decoder_layer(c: &mut Criterion) {
    let Some(dir) = bench_dir() else { return };
    let mut g = c.benchmark_group("decoder_layer");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    let mut copy = CopyBench::new();
    for (name, options) in formats() {
        let model = load_layer(&dir, options);
        let cfg = &model.config;
        let (h, kv, hd) = (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim);
        for tokens in [256usize, 1024] {
            let x = random([1, tokens, h]);
            let pos = Positions::text(1, tokens, 0);
            g.measurement_time(Duration::from_secs(if tokens > 256 { 40 } else { 15 }));
            g.bench_function(format!("prefill_{tokens}/{name}"), |b| {
                b.iter(|| {
                    let input = DecoderInput::new(x.clone(), &pos).logits(Logits::None);
                    let out = model.forward(input, &mut model.new_cache(), None).unwrap();
                    std::hint::black_box(out);
                })
            });
        }
        for context in [1024usize, 4096] {
            let kv_t = |_| {
                Tensor::<4>::random(
                    [1, kv, context, hd],
                    Distribution::Normal(0.0, 1.0),
                    &Device::default(),
                )
            };
            // a fresh cache per iteration (built outside the timing) with room for `steps`
            // steps, as in generation: each step writes in place, nothing is copied or grown
            let fresh_cache = |steps: usize| {
                let mut cache = KvCache::from_tensors(vec![(kv_t(0), kv_t(1))]);
                cache.reserve(steps);
                cache
            };
            let x = random([1, 1, h]);
            let pos = Positions::decode(&[0], context, 1);
            // one decode step of `x` at `pos`, read back so that the backend finishes it
            let step = |cache: &mut KvCache, pos: &Positions| {
                let input = DecoderInput::new(x.clone(), pos).logits(Logits::None);
                let out = model.forward(input, cache, None).unwrap();
                std::hint::black_box(echovlm_core::host::flex_f32_vec(
                    out.hidden_states
                        .first()
                        .cloned()
                        .unwrap_or_else(|| x.clone())
                        .narrow(2, 0, 1),
                ));
            };
            g.measurement_time(Duration::from_secs(8));
            // one step at exactly `context` cached positions, steps back to back as in
            // generation: the cache is rewound to `context` after each (untimed, no copy).
            // (A fresh cache per step, built between steps, measured a machine that had just
            // idled a core: on the 2-core VM such a step took up to twice as long.)
            g.bench_function(format!("decode_kv{}k/{name}", context / 1024), |b| {
                let mut cache = fresh_cache(1);
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = std::time::Instant::now();
                        step(&mut cache, &pos);
                        total += t.elapsed();
                        cache.truncate(context);
                    }
                    total
                })
            });
            // the copy bandwidth of this minute, right after the step: this machine's memory
            // bandwidth moves from minute to minute, so the side-by-side script sets each
            // step's bound against the copy measured next to it
            g.measurement_time(Duration::from_secs(2));
            g.bench_function(format!("copy_kv{}k/{name}", context / 1024), |b| {
                b.iter(|| copy.run())
            });
            g.measurement_time(Duration::from_secs(8));
            // eight consecutive steps on one cache, as in generation
            let steps: Vec<_> = (0..8)
                .map(|i| Positions::decode(&[0], context + i, 1))
                .collect();
            g.bench_function(format!("decode8_kv{}k/{name}", context / 1024), |b| {
                b.iter_batched(
                    || fresh_cache(8),
                    |mut cache| {
                        for pos in &steps {
                            step(&mut cache, pos);
                        }
                        cache
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// Bytes of each buffer of the STREAM-like copy (`decoder_layer/copy_*`): 512 MiB, read once and
/// written once per iteration (`tools/bench_side_by_side.py` counts both).
const COPY_BYTES: usize = 512 << 20;

/// Two buffers of [`COPY_BYTES`] copied one into the other on the thread pool, in chunks of
/// 4 MiB.
struct CopyBench {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl CopyBench {
    fn new() -> Self {
        Self {
            src: vec![1; COPY_BYTES],
            dst: vec![0; COPY_BYTES],
        }
    }

    fn run(&mut self) {
        use rayon::prelude::*;
        self.dst
            .par_chunks_mut(4 << 20)
            .zip(self.src.par_chunks(4 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&self.dst);
    }
}

fn vision_block(c: &mut Criterion) {
    let Some(dir) = bench_dir() else { return };
    let dir = dir.join("vision");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = VisionConfig::from_json(&json, 3584, "config.json").unwrap();
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    let mut g = c.benchmark_group("vision_block");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    for (name, options) in formats()
        .into_iter()
        .filter(|(n, _)| matches!(n.as_str(), "portable" | "f32" | "bf16"))
    {
        let model = load(&ckpt, &Device::default(), DType::F32, options, |l| {
            l.ignore_prefix("model.");
            l.ignore_prefix("lm_head.");
            VisionModel::load(l, &cfg)
        })
        .unwrap();
        for side in [32usize, 64] {
            let patches = side * side;
            let x = Tensor::<2>::random(
                [patches, 1280],
                Distribution::Normal(0.0, 1.0),
                &Device::default(),
            );
            g.measurement_time(Duration::from_secs(if side > 32 { 30 } else { 10 }));
            g.bench_function(format!("patches_{patches}/{name}"), |b| {
                b.iter(|| {
                    let y = model.blocks_forward(x.clone(), &[[1, side, side]]);
                    std::hint::black_box(echovlm_core::host::flex_f32_vec(y.narrow(0, 0, 1)));
                })
            });
        }
    }
    g.finish();
}

/// A one-block tower made of block `block` of `tower`, attending to the whole image (`full`) or
/// within windows.
fn single_block(tower: &VisionModel, block: usize, full: bool) -> VisionModel {
    let mut m = tower.clone();
    m.blocks = vec![tower.blocks[block].clone()];
    m.config.depth = 1;
    m.config.fullatt_block_indexes = if full { vec![0] } else { Vec::new() };
    m
}

fn vision25_block(c: &mut Criterion) {
    let Some(dir) = bench_dir() else { return };
    let dir = dir.join("vision25");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "no Qwen2.5-VL vision checkpoint in {}: rerun tools/make_bench_checkpoint.py",
            dir.display()
        );
        return;
    }
    let path = dir.join("config.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cfg = VisionConfig::from_json(&json, 3584, &path).unwrap();
    // block 0 attends within windows, block 1 to the whole image
    assert!(cfg.arch == VisionArch::Qwen25Vl && cfg.depth == 2);
    assert!(!cfg.full_attention(0) && cfg.full_attention(1));
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    let mut g = c.benchmark_group("vision25_block");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    for (name, options) in formats()
        .into_iter()
        .filter(|(n, _)| *n == "portable" || *n == "f32")
    {
        let tower = load(&ckpt, &Device::default(), DType::F32, options, |l| {
            VisionModel::load(l, &cfg)
        })
        .unwrap();
        let window = single_block(&tower, 0, false);
        let full = single_block(&tower, 1, true);
        drop(tower);
        for side in [32usize, 64] {
            let patches = side * side;
            let x = Tensor::<2>::random(
                [patches, 1280],
                Distribution::Normal(0.0, 1.0),
                &Device::default(),
            );
            g.measurement_time(Duration::from_secs(if side > 32 { 30 } else { 10 }));
            for (kind, model) in [("window", &window), ("full", &full)] {
                g.bench_function(format!("{kind}_{patches}/{name}"), |b| {
                    b.iter(|| {
                        let y = model.blocks_forward(x.clone(), &[[1, side, side]]);
                        std::hint::black_box(echovlm_core::host::flex_f32_vec(y.narrow(0, 0, 1)));
                    })
                });
            }
        }
    }
    g.finish();
}

fn moe_block(c: &mut Criterion) {
    let Some(dir) = bench_dir() else { return };
    let ckpt = Checkpoint::open_dir(dir.join("layer")).unwrap();
    let mut g = c.benchmark_group("moe_block");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    for (name, options) in formats()
        .into_iter()
        .filter(|(n, _)| *n == "f32" || *n == "int8")
    {
        let ffn = load(&ckpt, &Device::default(), DType::F32, options, |l| {
            l.ignore_prefix("");
            DynamicFfn::load(l, "model.layers.0", 3584, 18944, MoeConfig::default())
        })
        .unwrap();
        for tokens in [1usize, 256] {
            let h = Tensor::<2>::random(
                [tokens, 3584],
                Distribution::Normal(0.0, 1.0),
                &Device::default(),
            );
            g.measurement_time(Duration::from_secs(8));
            g.bench_function(format!("sparse_{tokens}/{name}"), |b| {
                b.iter(|| {
                    std::hint::black_box(echovlm_core::host::flex_f32_vec(
                        ffn.moe.forward(h.clone()).unwrap().0,
                    ))
                })
            });
            g.bench_function(format!("all_experts_{tokens}/{name}"), |b| {
                b.iter(|| {
                    std::hint::black_box(echovlm_core::host::flex_f32_vec(
                        ffn.moe.forward_all_experts(h.clone()).unwrap(),
                    ))
                })
            });
            // the routed experts alone: what sparse dispatch saves (top-2 of 4)
            g.bench_function(format!("routed_sparse_{tokens}/{name}"), |b| {
                b.iter(|| {
                    std::hint::black_box(echovlm_core::host::flex_f32_vec(
                        ffn.moe.forward_routed(h.clone()).unwrap().0,
                    ))
                })
            });
            g.bench_function(format!("routed_all_{tokens}/{name}"), |b| {
                b.iter(|| {
                    std::hint::black_box(echovlm_core::host::flex_f32_vec(
                        ffn.moe.forward_routed_all_experts(h.clone()).unwrap(),
                    ))
                })
            });
        }
    }
    g.finish();
}

/// One decode-sized product (`m = 1`) per format against a matrix streamed from memory.
fn matvec(c: &mut Criterion) {
    use criterion::Throughput;
    use echovlm_core::cpu::PackedWeight;
    let (rows, cols) = (18944usize, 3584usize);
    let w = random_values(rows * cols);
    let x: Vec<f32> = (0..cols).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let mut g = c.benchmark_group("matvec");
    g.sample_size(20).warm_up_time(Duration::from_secs(1));
    for format in kernel_formats() {
        let name = format.to_string();
        let copies: Vec<PackedWeight> = (0..4)
            .map(|_| PackedWeight::from_f32(rows, cols, &w, format).expect("packs"))
            .collect();
        g.throughput(Throughput::Bytes(copies[0].nbytes() as u64));
        let mut y = vec![0f32; rows];
        let mut next = 0;
        g.bench_function(&name, |b| {
            b.iter(|| {
                copies[next % 4].matmul(&x, 1, &mut y).expect("product");
                next += 1;
            })
        });
    }
    g.finish();
}

/// One prompt-sized product (`m = 256`, a dense-MLP-sized 18944 x 3584 matrix) per format:
/// criterion prints the arithmetic rate as throughput (elements = floating-point operations,
/// two per multiply-add).
fn prompt_product(c: &mut Criterion) {
    use criterion::Throughput;
    use echovlm_core::cpu::PackedWeight;
    let (m, rows, cols) = (256usize, 18944usize, 3584usize);
    let (w, x) = (random_values(rows * cols), random_values(m * cols));
    let mut g = c.benchmark_group("prompt_product");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
    for format in kernel_formats() {
        let name = format.to_string();
        let p = PackedWeight::from_f32(rows, cols, &w, format).expect("packs");
        let mut y = vec![0f32; m * rows];
        g.bench_function(&name, |b| {
            b.iter(|| p.matmul(&x, m, &mut y).expect("product"))
        });
    }
    g.finish();
}

/// The CPU tiled attention against Burn's on vision and prompt shapes.
fn attention(c: &mut Criterion) {
    use burn::tensor::ops::AttentionModuleOptions;
    use echovlm_core::backend::repeat_kv;
    use echovlm_core::cpu::HostAttention;
    use echovlm_core::host::flex_f32_vec;
    let mut g = c.benchmark_group("attention");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    let device = Device::default();
    let normal = Distribution::Normal(0.0, 1.0);
    for (name, heads, kv_heads, len, dim, causal) in [
        ("vision_1024", 16, 16, 1024, 80, false),
        ("vision_4096", 16, 16, 4096, 80, false),
        ("prompt_1024", 28, 4, 1024, 128, true),
    ] {
        let q = Tensor::<4>::random([1, heads, len, dim], normal, &device);
        let k = Tensor::<4>::random([1, kv_heads, len, dim], normal, &device);
        let v = Tensor::<4>::random([1, kv_heads, len, dim], normal, &device);
        let (qv, kv, vv) = (
            flex_f32_vec(q.clone()),
            flex_f32_vec(k.clone()),
            flex_f32_vec(v.clone()),
        );
        g.measurement_time(Duration::from_secs(if len > 1024 { 20 } else { 8 }));
        g.bench_function(format!("{name}/tiled"), |b| {
            b.iter(|| {
                HostAttention {
                    q: &qv,
                    k: &kv,
                    v: &vv,
                    batch: 1,
                    heads,
                    kv_heads,
                    queries: len,
                    keys: len,
                    capacity: len,
                    dim,
                    mask: None,
                    causal,
                }
                .run()
                .expect("attention")
            })
        });
        let (k, v) = (
            repeat_kv(k, heads / kv_heads),
            repeat_kv(v, heads / kv_heads),
        );
        g.bench_function(format!("{name}/burn"), |b| {
            b.iter(|| {
                let o = burn::tensor::module::attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    None,
                    None,
                    AttentionModuleOptions {
                        scale: None,
                        softcap: None,
                        is_causal: causal,
                    },
                );
                flex_f32_vec(o.narrow(2, 0, 1))
            })
        });
    }
    // one decode step's attention over a host cache (what generation runs on the CPU)
    for len in [1024usize, 4096] {
        let (heads, kv_heads, dim) = (28, 4, 128);
        let q = Tensor::<4>::random([1, heads, 1, dim], normal, &device);
        let cached = || {
            flex_f32_vec(Tensor::<4>::random(
                [1, kv_heads, len, dim],
                normal,
                &device,
            ))
        };
        let (k, v) = (cached(), cached());
        let view = |data| echovlm_core::backend::HostKv {
            data,
            batch: 1,
            heads: kv_heads,
            capacity: len,
            len,
            dim,
        };
        g.measurement_time(Duration::from_secs(5));
        g.bench_function(format!("decode_{}k/host", len / 1024), |b| {
            b.iter(|| {
                let o = echovlm_core::backend::host_attention(
                    q.clone(),
                    view(&k),
                    view(&v),
                    None,
                    true,
                );
                flex_f32_vec(o)
            })
        });
    }
    g.finish();
}

/// The layer's element-wise work at a 1024-token prompt (`[1, 1024, 3584]`, f32): the
/// RMSNorm and the residual add.
fn elementwise(c: &mut Criterion) {
    use echovlm_core::RmsNorm;
    let mut g = c.benchmark_group("elementwise");
    g.sample_size(20).warm_up_time(Duration::from_secs(1));
    let device = Device::default();
    let x = random([1, 1024, 3584]);
    let norm = RmsNorm {
        weight: Tensor::random([3584], Distribution::Normal(1.0, 0.1), &device),
        eps: 1e-6,
    };
    g.bench_function("rms_norm_1024", |b| b.iter(|| norm.forward(x.clone())));
    let y = random([1, 1024, 3584]);
    g.bench_function("residual_1024", |b| {
        b.iter_batched(|| x.clone() + 0.0, |x| x + y.clone(), BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(
    benches,
    elementwise,
    attention,
    matvec,
    prompt_product,
    decoder_layer,
    vision_block,
    vision25_block,
    moe_block
);
criterion_main!(benches);
