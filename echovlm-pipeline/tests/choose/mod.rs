//! The device chooser (`choose_tokens`) against the host sampler (`Sampler`), shared by the
//! pipeline's test suites: on the CPU backend in `e2e`, on GPU backends in `gpu`.

use burn::tensor::{Device, Tensor, TensorData};
use echovlm_pipeline::{GenerationOptions, Sampler, choose_tokens};
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Random logits with a spread like a language model's: a few likely tokens, a long tail.
fn logits(b: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut unit = move || (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    (0..b * vocab)
        .map(|_| {
            let x = 2.0 * unit() - 1.0;
            4.0 * x * x * x + unit() - 0.5
        })
        .collect()
}

/// Runs the device chooser on `device` and the host sampler over the same logits and draws
/// for `steps` steps, three rows each with its own seed, and counts the steps whose tokens
/// agree.
fn agree(device: &Device, opts: &GenerationOptions, vocab: usize, steps: usize) -> usize {
    let b = 3;
    let mut host: Vec<Sampler> = (0..b)
        .map(|r| Sampler::new(&opts.clone().seed(opts.seed + r as u64)))
        .collect();
    let mut draws: Vec<Sampler> = host.clone();
    let mut histories: Vec<Vec<u32>> = (0..b).map(|r| vec![r as u32, 7, 9]).collect();
    let mut same = 0;
    for step in 0..steps {
        let values = logits(b, vocab, 1000 + step as u64);
        let t = Tensor::<2>::from_data(TensorData::new(values.clone(), [b, vocab]), device);
        let uniforms: Vec<f64> = draws
            .iter_mut()
            .map(|s| if opts.do_sample { s.uniform() } else { 0.0 })
            .collect();
        let refs: Vec<&[u32]> = histories.iter().map(Vec::as_slice).collect();
        let ids = choose_tokens(opts, t, &refs, &uniforms).unwrap();
        let ids: Vec<u32> = ids.into_data().iter::<i64>().map(|x| x as u32).collect();
        let want: Vec<u32> = (0..b)
            .map(|r| {
                let mut row = values[r * vocab..(r + 1) * vocab].to_vec();
                host[r].next(&mut row, &histories[r])
            })
            .collect();
        if ids == want {
            same += 1;
        }
        for (h, &t) in histories.iter_mut().zip(&want) {
            h.push(t);
        }
    }
    same
}

/// Greedy (with and without the repetition penalty) and sampled choices on `device` equal
/// the host sampler's; `label` names the device in failures.
pub fn device_choice_equals_the_host_sampler(device: &Device, label: &str) {
    let greedy = GenerationOptions::greedy(8);
    assert_eq!(agree(device, &greedy, 50, 20), 20, "{label}: greedy");
    // a strong penalty changes the choice within a few steps
    let penalised = greedy.clone().repetition_penalty(3.0);
    assert_eq!(agree(device, &penalised, 50, 20), 20, "{label}: penalty");
    let base = greedy.do_sample(true).seed(11);
    for opts in [
        base.clone(),
        base.clone().temperature(0.7),
        base.clone().top_k(5),
        base.clone().top_p(0.8),
        base.clone().temperature(1.3).top_k(20).top_p(0.6),
        base.clone().top_p(0.9).repetition_penalty(1.5),
    ] {
        // f32 sums against the host's f64: allow one boundary case in 60 steps
        let same = agree(device, &opts, 300, 60);
        assert!(same >= 59, "{label}, {opts:?}: {same}/60 steps agree");
    }
}

/// `choose_tokens` refuses, with an error, inputs that do not describe its rows.
pub fn bad_inputs_are_refused(device: &Device) {
    let t = || Tensor::<2>::from_floats([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], device);
    let greedy = GenerationOptions::greedy(4);
    let err = |opts: &GenerationOptions, h: &[&[u32]], u: &[f64]| {
        choose_tokens(opts, t(), h, u).unwrap_err().to_string()
    };
    assert!(err(&greedy, &[&[]], &[]).contains("1 histories for 2 rows"));
    let sampled = greedy.clone().do_sample(true);
    assert!(err(&sampled, &[&[], &[]], &[0.5]).contains("1 uniform numbers for 2 rows"));
    assert!(err(&sampled, &[&[], &[]], &[0.5, 1.0]).contains("outside [0, 1)"));
    assert!(err(&sampled.clone().top_p(0.0), &[&[], &[]], &[0.5, 0.5]).contains("top_p"));
    let empty = Tensor::<2>::from_data(TensorData::new(Vec::<f32>::new(), [2, 0]), device);
    let e = choose_tokens(&greedy, empty, &[&[], &[]], &[]).unwrap_err();
    assert!(e.to_string().contains("empty vocabulary"), "{e}");
    let ids = choose_tokens(&greedy, t(), &[&[], &[]], &[]).unwrap();
    assert_eq!(ids.into_data().iter::<i64>().collect::<Vec<_>>(), [1, 0]);
}
