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

use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::GenerationOptions;
use crate::error::EchoError;

/// Bisection steps of the top-p cut-off: the interval shrinks to `max_prob · 2⁻⁴⁰`.
const TOP_P_STEPS: usize = 40;

/// Chooses the next token of each row of `logits` (`[batch, vocab]`, any float type) on the
/// device that holds them, with the processors of `opts` in [`Sampler`](crate::Sampler)'s
/// order and with the numbers it draws, so that a decode loop on a GPU reads back only the
/// `[batch]` ids returned (what [`EchoVlm::generate`](crate::EchoVlm::generate) does off the
/// CPU backend).
///
/// `histories` holds each row's tokens so far, prompt included (read when the repetition
/// penalty is on); when `opts` samples, `uniforms` holds one number in `[0, 1)` per row, drawn
/// from that row's sampler with [`Sampler::uniform`](crate::Sampler::uniform) (unread when
/// greedy). The host sampler sums in f64 and sorts for top-p, this in f32 with a bisection:
/// a draw within about 1e-6 of the boundary between two tokens may pick the neighbour.
///
/// Errors when `opts` is invalid ([`GenerationOptions::validate`]), when the logits have no
/// column, or when `histories` or (sampling) `uniforms` do not hold one entry per row, or a
/// uniform is outside `[0, 1)`.
///
/// ```
/// use echovlm_pipeline::{choose_tokens, Device, GenerationOptions, Sampler};
/// use burn::tensor::Tensor;
///
/// let logits = Tensor::<2>::from_floats([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], &Device::default());
/// let opts = GenerationOptions::greedy(16);
/// let ids = choose_tokens(&opts, logits.clone(), &[&[], &[]], &[]).unwrap();
/// let ids: Vec<i64> = ids.into_data().iter::<i64>().collect();
/// assert_eq!(ids, [1, 0]);
///
/// // sampling: each row draws from its own random stream
/// let opts = opts.do_sample(true).top_p(0.9).seed(3);
/// let mut samplers = [Sampler::new(&opts), Sampler::new(&opts.clone().seed(4))];
/// let uniforms = samplers.each_mut().map(|s| s.uniform());
/// let ids = choose_tokens(&opts, logits, &[&[], &[]], &uniforms).unwrap();
/// assert_eq!(ids.dims(), [2]);
/// ```
pub fn choose_tokens(
    opts: &GenerationOptions,
    logits: Tensor<2>,
    histories: &[&[u32]],
    uniforms: &[f64],
) -> Result<Tensor<1, Int>, EchoError> {
    opts.validate()?;
    let [b, vocab] = logits.dims();
    let bad = |m: String| Err(EchoError::InvalidRequest(m));
    if vocab == 0 {
        return bad("logits over an empty vocabulary".into());
    }
    if histories.len() != b {
        return bad(format!(
            "{} histories for {b} rows of logits",
            histories.len()
        ));
    }
    if opts.do_sample {
        if uniforms.len() != b {
            return bad(format!(
                "{} uniform numbers for {b} rows of logits",
                uniforms.len()
            ));
        }
        if let Some(u) = uniforms.iter().find(|u| !(0.0..1.0).contains(*u)) {
            return bad(format!("the uniform number {u} is outside [0, 1)"));
        }
    }
    Ok(choose(opts, logits, histories, uniforms))
}

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
    choose_seen(opts, logits, seen, |device| {
        Draws::upload(uniforms, vocab, device)
    })
}

/// What a sampled choice draws with, on the device.
pub(crate) struct Draws {
    /// `[batch, 1]`: each row's uniform number in `[0, 1)`.
    pub(crate) uniforms: Tensor<2>,
    /// `[1, vocab]`: `0, 1, …`, the token order (a draw rounded past the last possible token
    /// falls back to it).
    pub(crate) order: Tensor<2, Int>,
}

impl Draws {
    /// Uploads `uniforms` (one per row) and the token order.
    pub(crate) fn upload(uniforms: &[f64], vocab: usize, device: &Device) -> Self {
        let u: Vec<f32> = uniforms.iter().map(|&u| u as f32).collect();
        Self {
            uniforms: Tensor::<2>::from_data(
                TensorData::new(u, [uniforms.len(), 1]),
                (device, DType::F32),
            ),
            order: Self::order(vocab, device),
        }
    }

    /// The token order alone, `[1, vocab]`.
    pub(crate) fn order(vocab: usize, device: &Device) -> Tensor<2, Int> {
        Tensor::<1, Int>::arange(0..vocab as i64, device).reshape([1, vocab])
    }
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
/// device (`None` when the penalty is off), and the numbers a sampled choice draws with from
/// `draws` (called only when sampling, with the logits' device). Uploads nothing itself, so a
/// recorded decode step can choose its token with it.
pub(crate) fn choose_seen(
    opts: &GenerationOptions,
    logits: Tensor<2>,
    seen: Option<Tensor<2>>,
    draws: impl FnOnce(&Device) -> Draws,
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
    let Draws { uniforms, order } = draws(&device);
    let threshold = uniforms * total;
    // the first token whose cumulative mass passes the threshold
    let chosen = cum.lower_equal(threshold).int().sum_dim(1);
    // a threshold rounded up to the total falls back to the last possible token
    let order = order.expand([b, vocab]);
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
        // each bound is updated from itself, `mid` only a value: `mid.mask_where(fits, hi)`
        // (the same selection) came out as `mid` where it fits under Burn 0.22.1's fusion on
        // wgpu, the bisection collapsing onto its first midpoint
        lo = lo.mask_where(fits.clone(), mid.clone());
        hi = hi.mask_where(fits.bool_not(), mid);
    }
    probs.lower_equal(lo)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    // the device chooser against the host sampler: the `choose` test module of the integration
    // tests (on the CPU backend in `e2e`, on GPU backends in `gpu`)
    use super::*;

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
        let device = Device::flex();
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
