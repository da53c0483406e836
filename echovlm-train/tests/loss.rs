//! The cross-entropy by hand on a tiny case, rows of odd lengths, and the loss over the
//! scored positions' logits against the loss over all of them.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use echovlm_core::host::to_f32_vec;
use echovlm_train::{IGNORE, causal_lm_loss, scored_positions, selected_lm_loss};

fn logits(values: Vec<f32>, b: usize, s: usize, v: usize) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values, [b, s, v]), &Device::flex())
}

fn value(t: Tensor<1>) -> f32 {
    to_f32_vec(t).unwrap()[0]
}

#[test]
fn shifted_cross_entropy_matches_a_hand_computation() {
    // one row, 3 positions, vocab 3; labels [x, 2, 0]: position 0 predicts 2, position 1
    // predicts 0, position 2 predicts nothing
    let l = logits(vec![1.0, 2.0, 3.0, 0.5, 0.0, -0.5, 9.0, 9.0, 9.0], 1, 3, 3);
    let lse = |r: [f32; 3]| r.iter().map(|x| x.exp()).sum::<f32>().ln();
    let want = ((lse([1.0, 2.0, 3.0]) - 3.0) + (lse([0.5, 0.0, -0.5]) - 0.5)) / 2.0;
    let (loss, n) = causal_lm_loss(l, &[vec![IGNORE, 2, 0]]);
    assert_eq!(n, 2);
    assert!((value(loss) - want).abs() < 1e-6);
}

#[test]
fn ignored_short_and_missing_rows_are_not_scored() {
    let l = || logits(vec![0.0; 2 * 4 * 5], 2, 4, 5);
    // nothing labelled: zero loss, nothing counted
    let (loss, n) = causal_lm_loss(l(), &[vec![IGNORE; 4], vec![IGNORE; 4]]);
    assert_eq!((value(loss), n), (0.0, 0));
    // an empty row, a missing row, a short row, an out-of-vocabulary id: no panic
    let (_, n) = causal_lm_loss(l(), &[vec![]]);
    assert_eq!(n, 0);
    let (loss, n) = causal_lm_loss(l(), &[vec![IGNORE, 1], vec![IGNORE, 7, 2, 3]]);
    // row 0 scores one position; row 1 scores positions predicting 2 and 3 (7 is out of range)
    assert_eq!(n, 3);
    assert!(
        (value(loss) - 5f32.ln()).abs() < 1e-6,
        "uniform logits give ln(vocab)"
    );
}

/// The loss over the logits of the scored positions only (what the trainer computes) is the
/// loss over every position's logits, and those logits are the full pass's at the same
/// positions, for the golden image batch (two rows of different lengths, right-padded).
#[test]
fn logits_at_the_scored_positions_give_the_full_loss() {
    let golden = common::Golden::load();
    let model = common::load_model();
    let vocab = model.text_model().config.vocab_size;
    let batch = golden.samples("image");
    let sequences: Vec<_> = batch.iter().map(|s| s.sequence.clone()).collect();
    let labels: Vec<Vec<i64>> = batch.iter().map(|s| s.labels.clone()).collect();
    assert_ne!(sequences[0].ids.len(), sequences[1].ids.len());

    let full = model.forward_sequences(&sequences).unwrap();
    let [_, s, v] = full.logits.dims();
    let (want, want_n) = causal_lm_loss(full.logits.clone(), &labels);
    let (positions, targets) = scored_positions(&labels, vocab);
    let picked = model.forward_sequences_at(&sequences, &positions).unwrap();
    assert_eq!(picked.logits.dims(), [1, targets.len(), v]);
    let (got, n) = selected_lm_loss(picked.logits.clone(), &targets);
    assert_eq!(n, want_n);
    assert!(n > 0 && n < sequences.iter().map(|p| p.ids.len()).sum::<usize>() / 2);
    let (got, want) = (value(got.inner()), value(want.inner()));
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");

    let all = to_f32_vec(full.logits.inner()).unwrap();
    let some = to_f32_vec(picked.logits.inner()).unwrap();
    let mut k = 0;
    for (r, ts) in positions.iter().enumerate() {
        for &t in ts {
            let row = &all[(r * s + t) * v..(r * s + t + 1) * v];
            let diff = row
                .iter()
                .zip(&some[k * v..(k + 1) * v])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "row {r} position {t}: {diff}");
            k += 1;
        }
    }
    // the positions a row scores predict its labels
    assert_eq!(positions[0].len() + positions[1].len(), targets.len());
    assert_eq!(targets[0], labels[0][positions[0][0] + 1]);

    // positions past a sequence, or not one list per sequence, are errors that say so
    let past = vec![vec![0], vec![sequences[1].ids.len()]];
    let e = model.forward_sequences_at(&sequences, &past).unwrap_err();
    assert!(e.to_string().contains("past its"), "{e}");
    let e = model
        .forward_sequences_at(&sequences, &positions[..1])
        .unwrap_err();
    assert!(e.to_string().contains("2 sequences"), "{e}");
}
