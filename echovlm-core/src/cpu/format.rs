//! Storage formats of packed weights and the int8 quantisation.

use super::CpuError;

/// Values per int8 quantisation block (one f32 scale each).
pub const INT8_BLOCK: usize = 64;

/// How packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightFormat {
    /// IEEE f32 (4 bytes per weight).
    F32,
    /// bfloat16 (2 bytes per weight): the upper half of the f32.
    Bf16,
    /// Symmetric int8 with one f32 scale per [`INT8_BLOCK`] consecutive weights of a row
    /// (1.0625 bytes per weight).
    Int8,
}

impl WeightFormat {
    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::Bf16 => 2.0,
            WeightFormat::Int8 => 1.0 + 4.0 / INT8_BLOCK as f64,
        }
    }
}

/// The name [`FromStr`](std::str::FromStr) reads: `f32`, `bf16` or `int8`.
impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
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
            other => Err(CpuError::UnknownName {
                what: "weight format",
                name: other.to_string(),
                expected: "f32, bf16 or int8",
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
