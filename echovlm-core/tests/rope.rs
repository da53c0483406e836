//! The shared rotary helpers against hand-computed values.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use echovlm_core::host::flex_f32_vec;
use echovlm_core::rope;

#[test]
fn inverse_frequencies_follow_the_theta_power_law() {
    let f = rope::inv_freq(8, 10000.0);
    assert_eq!(f.len(), 4);
    for (j, v) in f.iter().enumerate() {
        let want = 1.0 / 10000f64.powf(2.0 * j as f64 / 8.0);
        assert!((*v as f64 - want).abs() < 1e-7 * want.max(1e-3), "{j}: {v}");
    }
    assert_eq!(f[0], 1.0);
}

#[test]
fn table_rows_repeat_each_angle_in_both_halves() {
    let angles = [0.0f32, 0.5, 2.0];
    let (mut cos, mut sin) = ([9f32; 7], [9f32; 7]);
    rope::write_row(&angles, &mut cos, &mut sin);
    for (j, a) in angles.iter().enumerate() {
        assert_eq!((cos[j], cos[3 + j]), (a.cos(), a.cos()));
        assert_eq!((sin[j], sin[3 + j]), (a.sin(), a.sin()));
    }
    assert_eq!((cos[6], sin[6]), (9.0, 9.0));
}

#[test]
fn apply_rotates_each_pair_by_its_angle() {
    // pairs (x_j, x_{j+2}) of a 4-wide head rotate by angle_j: (a, b) -> (a·c − b·s, b·c + a·s)
    let device = Device::default();
    let angles = [0.3f32, -1.2];
    let (mut cos, mut sin) = (vec![0f32; 4], vec![0f32; 4]);
    rope::write_row(&angles, &mut cos, &mut sin);
    let x = [1.0f32, 2.0, 3.0, -4.0];
    let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 4]), &device);
    let y = flex_f32_vec(rope::apply(t(x.to_vec()), &t(cos), &t(sin)));
    for (j, a) in angles.iter().enumerate() {
        let (p, q) = (x[j], x[j + 2]);
        let (s, c) = a.sin_cos();
        assert!((y[j] - (p * c - q * s)).abs() < 1e-6, "{y:?}");
        assert!((y[j + 2] - (q * c + p * s)).abs() < 1e-6, "{y:?}");
    }
    assert_eq!(
        flex_f32_vec(rope::rotate_half(t(x.to_vec()))),
        vec![-3.0, 4.0, 1.0, 2.0]
    );
}

#[test]
fn rotating_split_heads_in_place_equals_apply_bit_for_bit() {
    // backend::rope_heads rotates a projection's output [batch, seq, heads·dim] head by head in
    // one pass on the CPU: it must give rope::apply on the split heads exactly, for a decode
    // step (one token, sequential) and a prompt (parallel over tokens), shared input included
    use burn::tensor::Distribution;
    use echovlm_core::backend;
    let device = Device::default();
    let (heads, d) = (3, 8);
    for (b, s) in [(1, 1), (2, 20)] {
        let x = Tensor::<3>::random([b, s, heads * d], Distribution::Normal(0.0, 1.0), &device);
        let (mut cos, mut sin) = (vec![0f32; b * s * d], vec![0f32; b * s * d]);
        for (i, (c, sn)) in cos
            .chunks_exact_mut(d)
            .zip(sin.chunks_exact_mut(d))
            .enumerate()
        {
            let angles: Vec<f32> = (0..d / 2)
                .map(|j| 0.37 * i as f32 - 0.21 * j as f32)
                .collect();
            rope::write_row(&angles, c, sn);
        }
        let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 1, s, d]), &device);
        let (cos, sin) = (table(cos), table(sin));
        let want = rope::apply(
            x.clone().reshape([b, s, heads, d]).swap_dims(1, 2),
            &cos,
            &sin,
        );
        // `x` stays shared here: the rotation must work on a copy and leave it unchanged
        let before = flex_f32_vec(x.clone());
        let got = backend::rope_heads(x.clone(), heads, &cos, &sin);
        assert_eq!(got.dims(), [b, heads, s, d]);
        let (got, want) = (flex_f32_vec(got), flex_f32_vec(want));
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, w)| a.to_bits() == w.to_bits()),
            "{b}x{s}: rotated heads differ"
        );
        assert_eq!(flex_f32_vec(x), before);
    }
    // tables of one batch row broadcast over two rows: the tensor path, same values
    let x = Tensor::<3>::random([2, 3, heads * d], Distribution::Normal(0.0, 1.0), &device);
    let table = |f: fn(f32) -> f32| {
        let v: Vec<f32> = (0..3 * d).map(|i| f(0.1 * i as f32)).collect();
        Tensor::<4>::from_data(TensorData::new(v, [1, 1, 3, d]), &device)
    };
    let (cos, sin) = (table(f32::cos), table(f32::sin));
    let want = rope::apply(
        x.clone().reshape([2, 3, heads, d]).swap_dims(1, 2),
        &cos,
        &sin,
    );
    let got = backend::rope_heads(x, heads, &cos, &sin);
    assert_eq!(flex_f32_vec(got), flex_f32_vec(want));
}

/// The rotation with the sign folded into the table (what the fused query/key path runs) gives
/// `rope::apply`'s values bit for bit.
#[test]
fn signed_table_rotation_equals_rotate_half() {
    let device = Device::default();
    let (b, h, s, d) = (2, 3, 5, 16);
    let x = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
    let cos = Tensor::<4>::random([b, 1, s, d], Distribution::Normal(0.0, 1.0), &device);
    let sin_host: Vec<f32> = (0..b * s * d)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
        .collect();
    let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 1, s, d]), &device);
    let sin = table(sin_host.clone());
    let want = flex_f32_vec(rope::apply(x.clone(), &cos, &sin));
    let signed = table(rope::signed_sin(&sin_host, d));
    let got = flex_f32_vec(rope::apply_signed(x.clone(), &cos, &signed));
    assert_eq!(got, want);
    // and the halves really are swapped
    let swapped = flex_f32_vec(rope::swap_halves(x.clone()));
    let xs = flex_f32_vec(x);
    assert_eq!(&swapped[..d / 2], &xs[d / 2..d]);
    assert_eq!(&swapped[d / 2..d], &xs[..d / 2]);
}
