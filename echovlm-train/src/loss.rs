//! The training losses: causal-LM cross-entropy on the labelled tokens, and the router
//! load-balancing loss.

use burn::tensor::{DType, Int, Tensor, TensorData, activation};

/// Label of a position that is not scored (transformers' `ignore_index`).
pub const IGNORE: i64 = -100;

/// Whether label `l` is scored: not [`IGNORE`] and a token id below `vocab`.
fn is_scored(l: i64, vocab: usize) -> bool {
    l != IGNORE && l >= 0 && (l as usize) < vocab
}

/// The log-probability of `targets[i]` under row `i` of `logits` (`[n, vocab]`, any float
/// type; the softmax runs in f32).
fn target_log_probs(logits: Tensor<2>, targets: Vec<i64>) -> Tensor<1> {
    let n = targets.len();
    let device = logits.device();
    let log_probs = activation::log_softmax(logits.cast(DType::F32), 1);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    log_probs.gather(1, idx).reshape([n])
}

/// The shifted causal-LM cross-entropy of transformers: position `t`'s logits predict
/// `labels[t + 1]`; the mean runs over positions whose next label is not [`IGNORE`].
///
/// `logits` is `[batch, seq, vocab]`, `labels` `[batch][seq]` (shorter or missing rows count as
/// unlabelled). Returns a one-element tensor (zero when no position is labelled) and the number
/// of scored positions.
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[Vec<i64>]) -> (Tensor<1>, usize) {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    if s < 2 {
        return (Tensor::zeros([1], (&device, DType::F32)), 0);
    }
    let n = b * (s - 1);
    let mut targets = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for r in 0..b {
        // rows shorter than the batch (right padding) or missing are not scored past their end
        let row = labels.get(r).map_or(&[][..], Vec::as_slice);
        let padded = row.iter().copied().chain(std::iter::repeat(IGNORE));
        for l in padded.skip(1).take(s - 1) {
            let scored = is_scored(l, v);
            targets.push(if scored { l } else { 0 });
            weights.push(if scored { 1f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    let picked = target_log_probs(logits.narrow(1, 0, s - 1).reshape([n, v]), targets);
    let w = Tensor::<1>::from_data(TensorData::new(weights, [n]), (&device, DType::F32));
    let total = (picked * w).sum().neg();
    (total.div_scalar(count.max(1) as f32), count)
}

/// The positions [`causal_lm_loss`] scores and their targets: for every row of `labels`, the
/// positions `t` whose next label `labels[t + 1]` is a token id below `vocab` (not [`IGNORE`]),
/// and those labels, row after row.
pub fn scored_positions(labels: &[Vec<i64>], vocab: usize) -> (Vec<Vec<usize>>, Vec<i64>) {
    let mut targets = Vec::new();
    let positions = labels
        .iter()
        .map(|row| {
            let mut at = Vec::new();
            for (t, &l) in row.iter().enumerate().skip(1) {
                if is_scored(l, vocab) {
                    at.push(t - 1);
                    targets.push(l);
                }
            }
            at
        })
        .collect();
    (positions, targets)
}

/// [`causal_lm_loss`] over logits taken at the scored positions only: the `b·s` rows of
/// `logits` (`[b, s, vocab]`; `EchoVlm::forward_sequences_at` gives `[1, n, vocab]`) in order,
/// `targets` the label each row predicts (as [`scored_positions`] gives them). Returns the mean
/// negative log-likelihood as a one-element tensor and the number of rows.
///
/// # Panics
/// If `targets` has not one label per row of `logits`.
pub fn selected_lm_loss(logits: Tensor<3>, targets: &[i64]) -> (Tensor<1>, usize) {
    let [b, s, v] = logits.dims();
    let n = b * s;
    assert_eq!(n, targets.len(), "one target per selected position");
    let device = logits.device();
    if n == 0 {
        return (Tensor::zeros([1], (&device, DType::F32)), 0);
    }
    let picked = target_log_probs(logits.reshape([n, v]), targets.to_vec());
    (picked.sum().neg().div_scalar(n as f32), n)
}

/// The Switch/Mixtral load-balancing loss over every MoE layer's router logits (transformers'
/// `load_balancing_loss_func` with the attention mask), `valid` being `[batch][seq]`.
pub fn aux_loss(router_logits: &[Tensor<2>], top_k: usize, valid: &[Vec<bool>]) -> Tensor<1> {
    let device = router_logits[0].device();
    let b = valid.len();
    let s = valid.first().map_or(0, Vec::len);
    let mask: Vec<f32> = valid
        .iter()
        .flatten()
        .map(|&v| if v { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, s]), (&device, DType::F32));
    echovlm_moe::load_balancing_loss(router_logits, top_k, Some(mask))
}
