//! Storage formats of packed weights, their quantisation, and the int8 quantisation of
//! activations that the int8 products and the int4 decode kernels multiply with.

use super::CpuError;
use super::aligned::Aligned;

/// Values per int8 quantisation block (one f32 scale each).
pub const INT8_BLOCK: usize = 64;

/// Weights per int4 group (one f16 scale each), and activations per int8 block of the int4
/// products.
pub const INT4_GROUP: usize = 32;

/// Bytes of one packed int4 group: two weights per byte.
pub(super) const INT4_GROUP_BYTES: usize = INT4_GROUP / 2;

/// How packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightFormat {
    /// IEEE f32 (4 bytes per weight).
    F32,
    /// bfloat16 (2 bytes per weight): the upper half of the f32.
    Bf16,
    /// Symmetric int8 with one f32 scale per [`INT8_BLOCK`] consecutive weights of a row
    /// (1.0625 bytes per weight). Products quantise the activations to int8 per block of 64
    /// ([`INT8_BLOCK`]) and sum each block's products exactly in integers: on `vpdpbusd` where
    /// the CPU has AVX-512 VNNI, for any number of activation rows; elsewhere decode-sized
    /// products widen the weights in registers (the same bits as `vpdpbusd`), and prompt-sized
    /// ones multiply the quantised activations with weights widened to f32.
    Int8,
    /// Symmetric 4-bit with one f16 scale per [`INT4_GROUP`] consecutive weights of a row
    /// (0.5625 bytes per weight): `w = scale · (q − 8)`, `q` in 0..=15, the value of largest
    /// magnitude mapped to −8. Products with a few activation rows (decode) quantise the
    /// activations to int8 per block of 32 and multiply in integers; prompt-sized products widen
    /// the weights to f32.
    Int4,
}

impl WeightFormat {
    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::Bf16 => 2.0,
            WeightFormat::Int8 => 1.0 + 4.0 / INT8_BLOCK as f64,
            WeightFormat::Int4 => 0.5 + 2.0 / INT4_GROUP as f64,
        }
    }
}

/// The name [`FromStr`](std::str::FromStr) reads: `f32`, `bf16`, `int8` or `int4`.
impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        })
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(WeightFormat::F32),
            "bf16" => Ok(WeightFormat::Bf16),
            "int8" | "q8" => Ok(WeightFormat::Int8),
            "int4" | "q4" => Ok(WeightFormat::Int4),
            other => Err(CpuError::UnknownName {
                what: "weight format",
                name: other.to_string(),
                expected: "f32, bf16, int8 or int4",
            }),
        }
    }
}

/// Symmetric per-block int8: `scale = max|w| / 127`, `q = round(w / scale)`.
pub(super) fn quantize_row(w: &[f32], q: &mut [i8], scales: &mut [f32]) {
    let cols = w.len();
    for (b, s) in scales.iter_mut().enumerate() {
        let lo = b * INT8_BLOCK;
        let hi = (lo + INT8_BLOCK).min(cols);
        let amax = w[lo..hi].iter().fold(0f32, |a, &x| a.max(x.abs()));
        let scale = amax / 127.0;
        *s = scale;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (qi, &x) in q[lo..hi].iter_mut().zip(&w[lo..hi]) {
            *qi = (x * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Symmetric per-group int4 of one row (`w`, any length): `scale = m / −8` where `m` is the
/// group's value of largest magnitude, `q = round(w / scale) + 8` clamped to 0..=15, the scale
/// stored as f16 (and the values quantised with the rounded scale). Group `g` fills bytes
/// `16g..16g + 16` of `q`: byte `j` holds weight `j` in its low nibble and weight `j + 16` in its
/// high one. A last partial group is padded with zero weights (`q = 8`).
pub(super) fn quantize_row_int4(w: &[f32], q: &mut [u8], scales: &mut [u16]) {
    for (g, (s, bytes)) in scales
        .iter_mut()
        .zip(q.chunks_exact_mut(INT4_GROUP_BYTES))
        .enumerate()
    {
        let lo = g * INT4_GROUP;
        let hi = (lo + INT4_GROUP).min(w.len());
        let group = &w[lo..hi];
        let m = group
            .iter()
            .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        let scale = half::f16::from_f32(m / -8.0);
        *s = scale.to_bits();
        let scale = scale.to_f32();
        let inv = if scale != 0.0 && scale.is_finite() {
            1.0 / scale
        } else {
            0.0
        };
        let nibble = |i: usize| -> u8 {
            let x = group.get(i).copied().unwrap_or(0.0);
            ((x * inv).round() + 8.0).clamp(0.0, 15.0) as u8
        };
        for (j, b) in bytes.iter_mut().enumerate() {
            *b = nibble(j) | (nibble(j + INT4_GROUP_BYTES) << 4);
        }
    }
}

/// The weight at position `i` of an int4 group (`bytes`: its 16 bytes), before scaling.
#[inline]
pub(super) fn int4_level(bytes: &[u8], i: usize) -> i32 {
    let b = bytes[i % INT4_GROUP_BYTES];
    let q = if i < INT4_GROUP_BYTES {
        b & 0x0f
    } else {
        b >> 4
    };
    q as i32 - 8
}

/// Quantises one block of activations `xb` into `qb` (as long, or longer: the rest stays as it
/// is): `d = max|x| / 127`, `q = round(x / d)` (ties to even). Returns `d` and `Σq`.
fn quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &v) in qb.iter_mut().zip(xb) {
        // round to nearest, ties to even, without a call into libm: adding 1.5 · 2²³ leaves
        // no fraction bits for values of magnitude ≤ 2²²
        const SHIFT: f32 = 12_582_912.0;
        let r = ((v * inv + SHIFT) - SHIFT).clamp(-127.0, 127.0) as i8;
        *qi = r;
        sum += r as i32;
    }
    (scale, sum)
}

/// Activation rows quantised for the int4 products: per block of [`INT4_GROUP`] values,
/// `d = max|x| / 127`, `q = round(x / d)` (int8, ties to even), and `o = 8 · d · Σq` (what the `q − 8` offset
/// of the weights subtracts). Rows are padded with zeros to whole blocks.
pub(super) struct QuantizedRows {
    /// `m · blocks · 32` values.
    pub(super) q: Aligned<i8>,
    /// `m · blocks` scales.
    pub(super) d: Vec<f32>,
    /// `m · blocks` offsets, `8 · d · Σq`.
    pub(super) o: Vec<f32>,
    /// Blocks per row.
    pub(super) blocks: usize,
}

impl QuantizedRows {
    /// Quantises the `m` rows of `x` (`m · cols` values, checked by the caller).
    pub(super) fn new(x: &[f32], m: usize, cols: usize) -> Result<Self, CpuError> {
        let blocks = cols.div_ceil(INT4_GROUP);
        let width = super::error::checked_bytes("quantised activations", m, blocks, INT4_GROUP)?;
        let mut q = Aligned::<i8>::zeroed(width)?;
        let mut d = vec![0f32; m * blocks];
        let mut o = vec![0f32; m * blocks];
        if cols > 0 {
            for (((xr, qr), dr), or) in x
                .chunks_exact(cols)
                .zip(q.chunks_exact_mut(blocks * INT4_GROUP))
                .zip(d.chunks_exact_mut(blocks))
                .zip(o.chunks_exact_mut(blocks))
            {
                for (b, (xb, qb)) in xr
                    .chunks(INT4_GROUP)
                    .zip(qr.chunks_exact_mut(INT4_GROUP))
                    .enumerate()
                {
                    let (scale, sum) = quantize_block(xb, qb);
                    dr[b] = scale;
                    or[b] = 8.0 * scale * sum as f32;
                }
            }
        }
        Ok(Self { q, d, o, blocks })
    }
}

/// One block of [`INT8_BLOCK`] activations quantised for the int8 products:
/// `d = max|x| / 127`, `q = round(x / d)` (ties to even, zeros past the row's
/// end), and `bias = 128 · Σq`.
///
/// A product then sums `q_w · q` over the block exactly, in integers (or in f32, where every
/// partial sum of these products is an integer below 2²⁴), and adds `(s_w · d) · Σ` to the
/// row's f32 sum: every kernel computes the same values, bit for bit. `bias` is what the VNNI
/// kernel subtracts after multiplying the weights offset to unsigned (`q_w + 128`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Int8Block {
    /// The quantised values.
    pub(super) q: [i8; INT8_BLOCK],
    /// The scale.
    pub(super) d: f32,
    /// `128 · Σq`.
    pub(super) bias: i32,
}

impl Default for Int8Block {
    fn default() -> Self {
        Self {
            q: [0; INT8_BLOCK],
            d: 0.0,
            bias: 0,
        }
    }
}

/// The `m` rows of `x` (`m · cols` values, checked by the caller) quantised per block of
/// [`INT8_BLOCK`] (`cols.div_ceil(INT8_BLOCK)` blocks per row, the last one padded with zeros),
/// rows split over the thread pool for prompt-sized products.
pub(super) fn int8_blocks(
    x: &[f32],
    m: usize,
    cols: usize,
) -> Result<Aligned<Int8Block>, CpuError> {
    use rayon::prelude::*;
    let blocks = cols.div_ceil(INT8_BLOCK);
    let n = super::error::checked_bytes("quantised activations", m, blocks, 1)?;
    let mut out = Aligned::<Int8Block>::zeroed(n)?;
    if cols > 0 {
        let row = |(xr, br): (&[f32], &mut [Int8Block])| {
            for (xb, blk) in xr.chunks(INT8_BLOCK).zip(br.iter_mut()) {
                let (d, sum) = quantize_block(xb, &mut blk.q);
                blk.d = d;
                blk.bias = 128 * sum;
            }
        };
        if m > super::SMALL_M {
            x.par_chunks_exact(cols)
                .zip(out.par_chunks_exact_mut(blocks))
                .for_each(row);
        } else {
            x.chunks_exact(cols)
                .zip(out.chunks_exact_mut(blocks))
                .for_each(row);
        }
    }
    Ok(out)
}

/// The `m` rows of `x` as an int8 product sees them, `d · q` per block of [`INT8_BLOCK`] (see
/// [`Int8Block`]), as f32 values (`m · cols`): what kernels without integer products multiply
/// prompt-sized int8 products with. Rows are split over the thread pool.
pub(super) fn int8_dequantized(x: &[f32], m: usize, cols: usize) -> Result<Vec<f32>, CpuError> {
    use rayon::prelude::*;
    let mut out = Vec::new();
    out.try_reserve_exact(x.len())
        .map_err(|_| CpuError::Alloc { bytes: 4 * x.len() })?;
    out.resize(x.len(), 0.0);
    if cols > 0 {
        out.par_chunks_exact_mut(cols)
            .zip(x.par_chunks_exact(cols))
            .take(m)
            .for_each(|(or, xr)| {
                let mut q = [0i8; INT8_BLOCK];
                for (ob, xb) in or.chunks_mut(INT8_BLOCK).zip(xr.chunks(INT8_BLOCK)) {
                    let (d, _) = quantize_block(xb, &mut q);
                    for (o, &v) in ob.iter_mut().zip(&q) {
                        *o = v as f32 * d;
                    }
                }
            });
    }
    Ok(out)
}
