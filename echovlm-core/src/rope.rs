//! Rotary position embedding, shared by the text decoder (multimodal RoPE) and the vision
//! tower (2-D RoPE).
//!
//! Both follow transformers: inverse frequencies and angles in f32 on the host, each angle's
//! cosine and sine written to both halves of a head's table row, and the NeoX `rotate_half`
//! convention to apply them. The callers differ only in which position each rotary pair takes
//! its angle from.

use burn::tensor::Tensor;

/// `inv_freq[j] = 1 / theta^(2j / dim)` for `j < dim / 2`, in f32 as transformers computes it
/// (`dim` is the number of rotated channels: a head's width for text, half of it for the
/// vision tower's rows and columns).
pub fn inv_freq(dim: usize, theta: f32) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / dim as f32))
        .collect()
}

/// Writes one token's table rows from its `angles` (one per rotary pair, `half` of them):
/// `cos[j] = cos[half + j] = cos(angles[j])`, the same for `sin`; values past `2 · half` are
/// left as they are.
///
/// # Panics
/// If `cos` or `sin` is shorter than twice `angles`.
pub fn write_row(angles: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    let half = angles.len();
    assert!(
        cos.len() >= 2 * half && sin.len() >= 2 * half,
        "rotary rows of {} and {} values for {half} angles",
        cos.len(),
        sin.len()
    );
    for (j, &angle) in angles.iter().enumerate() {
        let (s, c) = angle.sin_cos();
        cos[j] = c;
        cos[half + j] = c;
        sin[j] = s;
        sin[half + j] = s;
    }
}

/// The NeoX rotation of the last dimension: `[x₁, x₂] → [−x₂, x₁]`.
pub fn rotate_half<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let last = D - 1;
    let half = x.dims()[last] / 2;
    let x1 = x.clone().narrow(last, 0, half);
    let x2 = x.narrow(last, half, half);
    Tensor::cat(vec![x2.neg(), x1], last)
}

/// Rotates `x` by the tables: `x·cos + rotate_half(x)·sin` (`cos` and `sin` broadcast to `x`).
pub fn apply<const D: usize>(x: Tensor<D>, cos: &Tensor<D>, sin: &Tensor<D>) -> Tensor<D> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

/// `x` with the two halves of its last dimension swapped: `[x₁, x₂] → [x₂, x₁]` (one flip of a
/// pair axis, a single kernel on a GPU where `rotate_half` takes two slices, a negation and a
/// concatenation).
pub fn swap_halves(x: Tensor<4>) -> Tensor<4> {
    let [a, b, c, d] = x.dims();
    x.reshape([a, b, c, 2, d / 2])
        .flip([3])
        .reshape([a, b, c, d])
}

/// A sine table (rows of `dim` values, as [`write_row`] writes them) with the first half of
/// every row negated: the table that [`apply_signed`] multiplies the swapped halves by, since
/// `rotate_half(x) · sin = swap_halves(x) · signed_sin(sin)`. Made on the host, so that a
/// GPU pass uploads it like the other tables instead of computing it.
///
/// # Panics
/// If `dim` is zero or odd, or does not divide the table's length.
pub fn signed_sin(sin: &[f32], dim: usize) -> Vec<f32> {
    assert!(
        dim > 0 && dim.is_multiple_of(2) && sin.len().is_multiple_of(dim),
        "a sine table of {} values in rows of {dim}",
        sin.len()
    );
    let mut out = sin.to_vec();
    for row in out.chunks_exact_mut(dim) {
        for v in &mut row[..dim / 2] {
            *v = -*v;
        }
    }
    out
}

/// [`apply`] with the sign of `rotate_half` folded into the table: `x·cos +
/// swap_halves(x)·sin_signed`, `sin_signed` from [`signed_sin`]. The same values bit for bit
/// (negation is exact), in fewer kernels on a GPU.
pub fn apply_signed(x: Tensor<4>, cos: &Tensor<4>, sin_signed: &Tensor<4>) -> Tensor<4> {
    // the flip first, so that the products and the sum after it are one element-wise kernel
    let swapped = swap_halves(x.clone());
    x * cos.clone() + swapped * sin_signed.clone()
}
