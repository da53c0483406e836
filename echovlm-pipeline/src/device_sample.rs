//! Choosing next tokens on the device that computed the logits, so that a decode step on a GPU
//! reads back only the chosen token ids.
//!
//! The processors are [`Sampler`](crate::Sampler)'s, in the same order and with the same
//! numbers drawn: repetition penalty, then greedy argmax, or temperature, top-k, top-p and a
//! draw by inverse CDF in token order with the uniform number the host sampler would have
//! drawn. Two things differ in form, not in meaning:
//!
//! * top-p finds its cut-off by bisection on the probability (the probabilities at or below
//!   it sum to at most `1 − top_p`) instead of sorting, which GPU backends do not run on the
//!   device;
//! * sums are f32 on the device (the host sampler draws in f64), so a draw that falls within
//!   about 1e-6 of a boundary between two tokens may pick the neighbour.

use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::GenerationOptions;

/// Bisection steps of the top-p cut-off: the interval shrinks to `max_prob · 2⁻⁴⁰`.
const TOP_P_STEPS: usize = 40;

/// Chooses one token per row of `logits` (`[batch, vocab]`, any float type) with the
/// processors of `opts`, without leaving their device. `histories` are the rows' tokens so far
/// (for the repetition penalty: uploaded as a `[batch, vocab]` mask when the penalty is on),
/// `uniforms` one number in `[0, 1)` per row, used when sampling. Returns `[batch]` ids.
pub(crate) fn choose(
    opts: &GenerationOptions,
    logits: Tensor<2>,
    histories: &[&[u32]],
    uniforms: &[f64],
) -> Tensor<1, Int> {
    let [b, vocab] = logits.dims();
    let seen =
        (opts.repetition_penalty != 1.0).then(|| seen_mask(histories, b, vocab, &logits.device()));
    choose_seen(opts, logits, seen, uniforms)
}

/// `[batch, vocab]`, 1 where a row's history holds the token, else 0 (f32).
pub(crate) fn seen_mask(
    histories: &[&[u32]],
    b: usize,
    vocab: usize,
    device: &burn::tensor::Device,
) -> Tensor<2> {
    let mut mask = vec![0f32; b * vocab];
    for (r, h) in histories.iter().enumerate() {
        for &t in h.iter().filter(|&&t| (t as usize) < vocab) {
            mask[r * vocab + t as usize] = 1.0;
        }
    }
    Tensor::<2>::from_data(TensorData::new(mask, [b, vocab]), (device, DType::F32))
}

/// [`choose`] with the repetition penalty's tokens given as a [`seen_mask`] already on the
/// device (`None` when the penalty is off); uploads nothing unless sampling.
pub(crate) fn choose_seen(
    opts: &GenerationOptions,
    logits: Tensor<2>,
    seen: Option<Tensor<2>>,
    uniforms: &[f64],
) -> Tensor<1, Int> {
    let [b, vocab] = logits.dims();
    let device = logits.device();
    let mut logits = logits.cast(DType::F32);
    let p = opts.repetition_penalty;
    if let Some(seen) = seen.filter(|_| p != 1.0) {
        let seen = seen.greater_elem(0.5);
        // negative logits are multiplied by the penalty, the others divided
        let penalised = (logits.clone() * p)
            .mask_where(logits.clone().greater_equal_elem(0.0), logits.clone() / p);
        logits = logits.mask_where(seen, penalised);
    }
    if !opts.do_sample {
        return logits.argmax(1).reshape([b]);
    }
    if opts.temperature != 1.0 {
        logits = logits / opts.temperature;
    }
    let k = opts.top_k;
    if k > 0 && k < vocab {
        let kth = logits.clone().topk(k, 1).narrow(1, k - 1, 1);
        let below = logits.clone().lower(kth);
        logits = logits.mask_fill(below, f32::NEG_INFINITY);
    }
    if opts.top_p < 1.0 {
        let drop = top_p_cut(logits.clone(), opts.top_p);
        logits = logits.mask_fill(drop, f32::NEG_INFINITY);
    }
    let max = logits.clone().max_dim(1);
    let probs = (logits - max).exp();
    let cum = probs.clone().cumsum(1);
    let total = cum.clone().narrow(1, vocab - 1, 1);
    let u: Vec<f32> = uniforms.iter().map(|&u| u as f32).collect();
    let u = Tensor::<2>::from_data(TensorData::new(u, [b, 1]), (&device, DType::F32));
    let threshold = u * total;
    // the first token whose cumulative mass passes the threshold
    let chosen = cum.lower_equal(threshold).int().sum_dim(1);
    // a threshold rounded up to the total falls back to the last possible token
    let order = Tensor::<1, Int>::arange(0..vocab as i64, &device)
        .reshape([1, vocab])
        .expand([b, vocab]);
    let last = order.mask_fill(probs.lower_equal_elem(0.0), -1).max_dim(1);
    let past = chosen.clone().greater(last.clone());
    chosen.mask_where(past, last).reshape([b])
}

/// Whether two option sets choose tokens the same way (seeds aside: each row draws from its own
/// stream), so that their rows can share one pass of [`choose`].
pub(crate) fn same_processors(a: &GenerationOptions, b: &GenerationOptions) -> bool {
    a.do_sample == b.do_sample
        && a.repetition_penalty.to_bits() == b.repetition_penalty.to_bits()
        && (!a.do_sample
            || (a.temperature.to_bits() == b.temperature.to_bits()
                && a.top_k == b.top_k
                && a.top_p.to_bits() == b.top_p.to_bits()))
}

/// transformers' `TopPLogitsWarper` without a sort: the tokens to remove are those whose
/// probability is at most the largest `t` for which the probabilities `≤ t` sum to at most
/// `1 − top_p`; `t` is found by bisection per row. The most likely token always stays.
fn top_p_cut(logits: Tensor<2>, top_p: f32) -> Tensor<2, Bool> {
    let probs = burn::tensor::activation::softmax(logits, 1);
    let threshold = 1.0 - top_p;
    let [b, _] = probs.dims();
    let device = probs.device();
    let mut lo = Tensor::<2>::zeros([b, 1], (&device, DType::F32));
    let mut hi = probs.clone().max_dim(1);
    for _ in 0..TOP_P_STEPS {
        let mid = (lo.clone() + hi.clone()) / 2.0;
        let above = probs.clone().greater(mid.clone());
        let mass = probs.clone().mask_fill(above, 0.0).sum_dim(1);
        let fits = mass.lower_equal_elem(threshold);
        lo = lo.mask_where(fits.clone(), mid.clone());
        hi = mid.mask_where(fits, hi);
    }
    probs.lower_equal(lo)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::Sampler;
    use burn::tensor::Device;
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

    /// Runs the device chooser and the host sampler over the same logits and draws for
    /// `steps` steps and counts the steps whose tokens agree.
    fn agree(opts: &GenerationOptions, vocab: usize, steps: usize) -> usize {
        let b = 3;
        let device = Device::default();
        let mut host: Vec<Sampler> = (0..b)
            .map(|r| Sampler::new(&opts.clone().seed(opts.seed + r as u64)))
            .collect();
        let mut draws: Vec<Sampler> = host.clone();
        let mut histories: Vec<Vec<u32>> = (0..b).map(|r| vec![r as u32, 7, 9]).collect();
        let mut same = 0;
        for step in 0..steps {
            let values = logits(b, vocab, 1000 + step as u64);
            let t = Tensor::<2>::from_data(TensorData::new(values.clone(), [b, vocab]), &device);
            let uniforms: Vec<f64> = draws
                .iter_mut()
                .map(|s| if opts.do_sample { s.uniform() } else { 0.0 })
                .collect();
            let refs: Vec<&[u32]> = histories.iter().map(Vec::as_slice).collect();
            let ids = choose(opts, t, &refs, &uniforms);
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

    #[test]
    fn greedy_with_and_without_repetition_penalty_equals_the_host() {
        let greedy = GenerationOptions::greedy(8);
        assert_eq!(agree(&greedy, 50, 20), 20);
        // a strong penalty changes the choice within a few steps
        assert_eq!(agree(&greedy.clone().repetition_penalty(3.0), 50, 20), 20);
    }

    #[test]
    fn sampling_with_temperature_top_k_and_top_p_equals_the_host() {
        let base = GenerationOptions::greedy(8).do_sample(true).seed(11);
        for opts in [
            base.clone(),
            base.clone().temperature(0.7),
            base.clone().top_k(5),
            base.clone().top_p(0.8),
            base.clone().temperature(1.3).top_k(20).top_p(0.6),
            base.clone().top_p(0.9).repetition_penalty(1.5),
        ] {
            // f32 sums against the host's f64: allow one boundary case in 60 steps
            let same = agree(&opts, 300, 60);
            assert!(same >= 59, "{opts:?}: {same}/60 steps agree");
        }
    }

    #[test]
    fn rows_share_a_pass_only_when_their_processors_agree() {
        let g = GenerationOptions::greedy(8);
        assert!(same_processors(&g, &g.clone().seed(3).temperature(0.5)));
        assert!(!same_processors(&g, &g.clone().repetition_penalty(1.1)));
        let s = g.clone().do_sample(true);
        assert!(!same_processors(&g, &s));
        assert!(same_processors(&s, &s.clone().seed(9)));
        assert!(!same_processors(&s, &s.clone().top_p(0.9)));
        assert!(!same_processors(&s, &s.clone().top_k(3)));
        assert!(!same_processors(&s, &s.clone().temperature(0.7)));
    }

    #[test]
    fn top_p_keeps_the_smallest_head_that_reaches_it() {
        let device = Device::default();
        // probabilities 0.5, 0.25, 0.15, 0.1 (in scrambled order)
        let p = [0.15f32, 0.5, 0.1, 0.25];
        let l: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        for (top_p, kept) in [(0.4, 1), (0.6, 2), (0.7, 2), (0.8, 3), (0.95, 4)] {
            let t = Tensor::<2>::from_data(TensorData::new(l.clone(), [1, 4]), &device);
            let drop: Vec<bool> = top_p_cut(t, top_p).into_data().iter::<bool>().collect();
            let n = drop.iter().filter(|d| !**d).count();
            assert_eq!(n, kept, "top_p {top_p}: {drop:?}");
            assert!(!drop[1], "the most likely token stays");
        }
    }
}
