//! The sparse block against its dense reference, and the load-balancing loss against
//! transformers' `load_balancing_loss_func`.

#[path = "../../tests/support/mod.rs"]
mod support;

use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use echovlm_core::host::flex_f32_vec;
use echovlm_core::{Checkpoint, LinearOptions, load};
use echovlm_moe::{
    DeviceRouting, DynamicFfn, LayerRouting, MoeConfig, Routing, SparseMoeBlock,
    load_balancing_loss, load_balancing_loss_host,
};
use support::{Golden, max_abs_diff, model_dir};

fn block(layer: usize, config: MoeConfig) -> DynamicFfn {
    block_with(layer, config, LinearOptions::default())
}

fn block_with(layer: usize, config: MoeConfig, options: LinearOptions) -> DynamicFfn {
    let ckpt = Checkpoint::open_dir(model_dir("tiny-echovlm")).unwrap();
    load(&ckpt, &Device::default(), DType::F32, options, |l| {
        l.ignore_prefix("");
        DynamicFfn::load(l, &format!("model.layers.{layer}"), 64, 128, config)
    })
    .unwrap()
}

#[test]
fn sparse_dispatch_equals_running_every_expert() {
    let ffn = block(1, MoeConfig::default());
    assert_eq!(ffn.moe.num_experts(), 4);
    assert_eq!(ffn.moe.experts[0].intermediate_size(), 32);
    assert_eq!(ffn.moe.shared_expert.intermediate_size(), 64);
    let device = Device::default();
    for tokens in [1, 2, 7, 33] {
        let h = Tensor::<2>::random([tokens, 64], Distribution::Normal(0.0, 1.0), &device);
        let (sparse, routing) = ffn.moe.forward(h.clone()).unwrap();
        let dense = ffn.moe.forward_all_experts(h).unwrap();
        let d = max_abs_diff(&flex_f32_vec(sparse), &flex_f32_vec(dense));
        assert!(d < 1e-5, "{tokens} tokens: sparse and dense differ by {d}");
        assert_eq!(routing.tokens(), tokens);
    }
}

/// The device-resident block (routing on the device, every expert weighted densely), used on
/// GPUs, run here on the CPU backend: same output and same routing as the host routing with
/// sparse dispatch, renormalised or not, and the routing plus the coefficients read back in one
/// transfer.
#[test]
fn device_routing_equals_host_routing() {
    let device = Device::default();
    for renorm in [false, true] {
        let ffn = block(
            1,
            MoeConfig {
                num_experts_per_tok: 2,
                norm_topk_prob: renorm,
            },
        );
        for tokens in [1, 3, 33] {
            let h = Tensor::<2>::random([tokens, 64], Distribution::Normal(0.0, 1.0), &device);
            let (want, host) = ffn.moe.forward(h.clone()).unwrap();
            let (got, on_device) = ffn.moe.forward_on_device(h.clone());
            let d = max_abs_diff(&flex_f32_vec(got), &flex_f32_vec(want));
            assert!(
                d < 1e-5,
                "renorm {renorm}, {tokens} tokens: outputs differ by {d}"
            );
            let c = ffn.coefficients(h);
            let (read, coef) = on_device.read_back_with(c.clone()).unwrap();
            assert_eq!(
                read.experts, host.experts,
                "renorm {renorm}, {tokens} tokens"
            );
            assert_eq!((read.num_experts, read.top_k), (4, 2));
            assert!(max_abs_diff(&read.weights, &host.weights) < 1e-6);
            assert!(max_abs_diff(&read.router_logits, &host.router_logits) < 1e-6);
            assert_eq!(coef, flex_f32_vec(c));
            if renorm {
                for w in read.weights.chunks_exact(2) {
                    assert!((w[0] + w[1] - 1.0).abs() < 1e-6);
                }
            }
        }
    }
}

/// The device routing's weights (the chosen experts' softmax probabilities, computed for those
/// only) against the definition in f64: rows with a spread where the other terms overflow or
/// vanish, ties, random rows; renormalised or not; bf16 logits are routed in f32.
#[test]
fn device_routing_weights_are_the_softmax_probabilities() {
    let device = Device::default();
    let mut rows: Vec<Vec<f32>> = vec![
        vec![0.5, -1.0, 2.0, 0.0],
        vec![-200.0, 200.0, 0.0, 1.0],
        vec![1e-3, -1e-3, 30.0, -30.0],
        vec![0.5, 0.5, 0.5, -0.5],
    ];
    let random = flex_f32_vec(Tensor::<2>::random(
        [5, 4],
        Distribution::Normal(0.0, 3.0),
        &device,
    ));
    rows.extend(random.chunks_exact(4).map(<[f32]>::to_vec));
    let n = rows.len();
    let x = Tensor::<2>::from_data(TensorData::new(rows.concat(), [n, 4]), &device);
    for renorm in [false, true] {
        let r = DeviceRouting::from_logits(x.clone(), 2, renorm);
        assert_eq!(r.weights.dtype(), DType::F32);
        let experts = echovlm_core::host::to_i64_vec(r.experts.clone()).unwrap();
        let weights = flex_f32_vec(r.weights.clone());
        for (i, row) in rows.iter().enumerate() {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let p: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = p.iter().sum();
            let (a, b) = (experts[2 * i] as usize, experts[2 * i + 1] as usize);
            assert!(a != b && p[a] >= p[b], "row {i}: experts {a}, {b}");
            assert!(
                row.iter()
                    .enumerate()
                    .all(|(e, _)| e == a || e == b || p[e] <= p[b]),
                "row {i}: {a}, {b} are not the top two"
            );
            let total = if renorm { p[a] + p[b] } else { s };
            for (k, e) in [a, b].into_iter().enumerate() {
                let (got, want) = (weights[2 * i + k] as f64, p[e] / total);
                assert!(
                    (got - want).abs() <= 1e-6 * want + 1e-30,
                    "renorm {renorm}, row {i}, expert {e}: {got} against {want}"
                );
            }
        }
        let half = DeviceRouting::from_logits(x.clone().cast(DType::BF16), 2, renorm);
        assert_eq!(half.weights.dtype(), DType::F32);
        assert_eq!(half.router_logits().dtype(), DType::BF16);
    }
}

/// The block as two matrix products (what GPUs run, here on the CPU backend with Burn tensor
/// weights): the same output, routing and coefficients as the separate layers, renormalised or
/// not; the separate layers still compute what they did, from views of the fused weights.
#[test]
fn fused_block_equals_the_separate_layers() {
    let device = Device::default();
    for renorm in [false, true] {
        let config = MoeConfig {
            num_experts_per_tok: 2,
            norm_topk_prob: renorm,
        };
        let separate = block_with(1, config, LinearOptions::portable());
        let mut fused = separate.clone();
        assert!(fused.fuse());
        let f = fused.fused.as_ref().unwrap();
        // dense 128 + 4 experts of 32 + shared 64; gates, ups, router, shared gate, coefficients
        assert_eq!((f.down.d_in(), f.down.d_out()), (320, 64));
        assert_eq!((f.up.d_in(), f.up.d_out()), (64, 2 * 320 + 4 + 1 + 2));
        assert_eq!(f.segments.dims(), [6, 320]);
        for tokens in [1, 3, 33] {
            let h = Tensor::<2>::random([tokens, 64], Distribution::Normal(0.0, 1.0), &device);
            let (m, routing) = separate.moe.forward_on_device(h.clone());
            let c = separate.coefficients(h.clone());
            let c0 = c.clone().narrow(1, 0, 1);
            let c1 = c.clone().narrow(1, 1, 1);
            let want = c0 * m + c1 * separate.mlp.forward(h.clone());
            let (got, got_routing, got_c) = f.forward(h.clone(), config);
            let d = max_abs_diff(&flex_f32_vec(got), &flex_f32_vec(want.clone()));
            assert!(
                d < 1e-5,
                "renorm {renorm}, {tokens} tokens: outputs differ by {d}"
            );
            let (a, _) = routing.read_back_with(c.clone()).unwrap();
            let (b, coef) = got_routing.read_back_with(got_c).unwrap();
            assert_eq!(a.experts, b.experts, "renorm {renorm}, {tokens} tokens");
            assert_eq!(b.router_logits.len(), tokens * 4);
            assert!(max_abs_diff(&a.router_logits, &b.router_logits) < 1e-5);
            assert!(max_abs_diff(&a.weights, &b.weights) < 1e-6);
            assert!(max_abs_diff(&coef, &flex_f32_vec(c)) < 1e-6);
            // the separate layers, now views of the fused weights, are unchanged
            let (m2, _) = fused.moe.forward_on_device(h.clone());
            let (m1, _) = separate.moe.forward_on_device(h.clone());
            assert_eq!(flex_f32_vec(m1), flex_f32_vec(m2));
            let dense = max_abs_diff(
                &flex_f32_vec(fused.mlp.forward(h.clone())),
                &flex_f32_vec(separate.mlp.forward(h)),
            );
            assert!(dense < 1e-6, "{dense}");
        }
    }
    // packed CPU weights have their own kernels: nothing is fused, nothing changes
    let mut packed = block(1, MoeConfig::default());
    assert!(!packed.fuse());
    assert!(packed.fused.is_none());
}

#[test]
fn routing_takes_top_k_of_the_softmax_without_renormalising() {
    let logits = vec![1.0, 3.0, 2.0, 0.0, /* tie */ 0.5, 0.5, 0.5, -1.0];
    let r = Routing::from_logits(logits.clone(), 4, 2, false);
    assert_eq!(r.experts, vec![1, 2, 0, 1]);
    let e: Vec<f32> = [1.0f32, 3.0, 2.0, 0.0].iter().map(|x| x.exp()).collect();
    let s: f32 = e.iter().sum();
    assert!((r.weights[0] - e[1] / s).abs() < 1e-7);
    assert!((r.weights[1] - e[2] / s).abs() < 1e-7);
    let n = Routing::from_logits(logits, 4, 2, true);
    assert!((n.weights[0] + n.weights[1] - 1.0).abs() < 1e-6);
    assert!((n.weights[0] - e[1] / (e[1] + e[2])).abs() < 1e-6);
}

#[test]
fn renormalised_routing_changes_the_output() {
    let plain = block(0, MoeConfig::default());
    let renorm = block(
        0,
        MoeConfig {
            num_experts_per_tok: 2,
            norm_topk_prob: true,
        },
    );
    let h = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &Device::default());
    let a = flex_f32_vec(plain.forward(h.clone(), false).unwrap().0);
    let b = flex_f32_vec(renorm.forward(h, false).unwrap().0);
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

#[test]
fn load_balancing_loss_matches_transformers() {
    let g = Golden::load("tiny-echovlm");
    let shape = g.shape("aux.router_logits");
    let (layers, tokens, experts) = (shape[0], shape[1], shape[2]);
    let all = g.f32("aux.router_logits");
    let device = Device::default();
    let per_layer: Vec<Tensor<2>> = all
        .chunks_exact(tokens * experts)
        .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), [tokens, experts]), &device))
        .collect();
    let mask_vals: Vec<f32> = g
        .i64("aux.attention_mask")
        .iter()
        .map(|&m| m as f32)
        .collect();
    let mask_shape = g.shape("aux.attention_mask");
    for k in [1usize, 2] {
        let want = g.f32(&format!("aux.loss_top{k}"))[0];
        let got = flex_f32_vec(load_balancing_loss(&per_layer, k, None))[0];
        assert!((got - want).abs() < 1e-6, "top{k}: {got} vs {want}");
        let mask = Tensor::<2>::from_data(
            TensorData::new(mask_vals.clone(), [mask_shape[0], mask_shape[1]]),
            &device,
        );
        let want = g.f32(&format!("aux.loss_top{k}_masked"))[0];
        let got = flex_f32_vec(load_balancing_loss(&per_layer, k, Some(mask)))[0];
        assert!((got - want).abs() < 1e-6, "top{k} masked: {got} vs {want}");
    }

    // the host version over routing records of the real tokens equals the masked loss
    let keep: Vec<bool> = mask_vals.iter().map(|&m| m > 0.0).collect();
    let records: Vec<LayerRouting> = all
        .chunks_exact(tokens * experts)
        .enumerate()
        .map(|(i, c)| {
            let mut rec = LayerRouting::new(i);
            let r = Routing::from_logits(c.to_vec(), experts, 2, false);
            let coef = vec![0.5; 2 * tokens];
            for t in (0..tokens).filter(|&t| keep[t]) {
                rec.push_token(&r, &coef, t);
            }
            rec
        })
        .collect();
    assert_eq!(records.len(), layers);
    let want = g.f32("aux.loss_top2_masked")[0] as f64;
    let got = load_balancing_loss_host(&records);
    assert!((got - want).abs() < 1e-6, "host masked: {got} vs {want}");
}

#[test]
fn sparse_block_loads_sizes_from_shapes() {
    let ckpt = Checkpoint::open_dir(model_dir("tiny-echovlm-bf16")).unwrap();
    let block = load(
        &ckpt,
        &Device::default(),
        DType::F32,
        LinearOptions::default(),
        |l| {
            l.ignore_prefix("");
            SparseMoeBlock::load(l, "model.layers.0.moe", 32, MoeConfig::default())
        },
    )
    .unwrap();
    assert_eq!(block.num_experts(), 4);
    assert_eq!(block.experts[3].intermediate_size(), 16);
    assert_eq!(block.shared_expert.intermediate_size(), 32);
}
