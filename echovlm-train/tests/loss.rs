//! The cross-entropy by hand on a tiny case, and rows of odd lengths.

use burn::tensor::{Device, Tensor, TensorData};
use echovlm_core::host::to_f32_vec;
use echovlm_train::{IGNORE, causal_lm_loss};

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
