//! Multimodal rotary position embedding (M-RoPE).
//!
//! Every token has three position components (temporal, height, width). Rotary frequency `j` of
//! a head (`0 ≤ j < head_dim/2`) takes its angle from the temporal position when
//! `j < s₀`, from the height position when `s₀ ≤ j < s₀+s₁`, and from the width position
//! otherwise, `[s₀, s₁, s₂]` being `mrope_section`. Angles, cosines and sines are computed in
//! f32 on the host exactly as transformers does, then applied with the NeoX `rotate_half`
//! convention ([`echovlm_core::rope`], shared with the vision tower). For text, whose three
//! components are equal, this is ordinary RoPE.

use burn::tensor::{DType, Device, Tensor};
use echovlm_core::rope;

/// Position ids of a batch: three components per token, `[batch, seq]` row-major each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Temporal components.
    pub t: Vec<i64>,
    /// Height components.
    pub h: Vec<i64>,
    /// Width components.
    pub w: Vec<i64>,
}

impl Positions {
    /// Text positions `start, start+1, …` on all three axes, for every row.
    pub fn text(batch: usize, seq: usize, start: i64) -> Self {
        let row: Vec<i64> = (0..seq as i64).map(|i| start + i).collect();
        let all: Vec<i64> = (0..batch).flat_map(|_| row.iter().copied()).collect();
        Self {
            batch,
            seq,
            t: all.clone(),
            h: all.clone(),
            w: all,
        }
    }

    /// Positions of `seq` new tokens appended at cache index `cache_len`: row `b` gets
    /// `cache_len + i + deltas[b]` on all axes (the rope deltas of the prompt).
    pub fn decode(deltas: &[i64], cache_len: usize, seq: usize) -> Self {
        let batch = deltas.len();
        let mut all = Vec::with_capacity(batch * seq);
        for &d in deltas {
            for i in 0..seq {
                all.push(cache_len as i64 + i as i64 + d);
            }
        }
        Self {
            batch,
            seq,
            t: all.clone(),
            h: all.clone(),
            w: all,
        }
    }

    /// Builds positions from `[3][batch][seq]` nested vectors (the layout of transformers'
    /// `position_ids`).
    pub fn from_nested(p: &[Vec<Vec<i64>>; 3]) -> Self {
        let batch = p[0].len();
        let seq = p[0].first().map_or(0, Vec::len);
        let flat = |a: &Vec<Vec<i64>>| a.iter().flatten().copied().collect::<Vec<_>>();
        Self {
            batch,
            seq,
            t: flat(&p[0]),
            h: flat(&p[1]),
            w: flat(&p[2]),
        }
    }

    /// Largest position component, if any.
    pub fn max(&self) -> Option<i64> {
        self.t.iter().chain(&self.h).chain(&self.w).copied().max()
    }
}

/// Rotary tables for one model.
#[derive(Debug, Clone)]
pub struct MRope {
    inv_freq: Vec<f32>,
    section: [usize; 3],
    head_dim: usize,
}

impl MRope {
    /// `inv_freq[j] = 1 / theta^(2j / head_dim)` in f32, as transformers computes it
    /// ([`rope::inv_freq`]).
    pub fn new(head_dim: usize, theta: f64, section: [usize; 3]) -> Self {
        Self {
            inv_freq: rope::inv_freq(head_dim, theta as f32),
            section,
            head_dim,
        }
    }

    /// A head's width, the length of a table row.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The position axis (0 = t, 1 = h, 2 = w) that rotary frequency `j` uses.
    pub fn axis(&self, j: usize) -> usize {
        if j < self.section[0] {
            0
        } else if j < self.section[0] + self.section[1] {
            1
        } else {
            2
        }
    }

    /// Host cosine and sine tables, `[tokens, head_dim]` row-major each.
    pub fn tables(&self, pos: &Positions) -> (Vec<f32>, Vec<f32>) {
        let n = pos.t.len();
        let half = self.head_dim / 2;
        let mut cos = vec![0f32; n * self.head_dim];
        let mut sin = vec![0f32; n * self.head_dim];
        let axes: Vec<usize> = (0..half).map(|j| self.axis(j)).collect();
        let mut angles = vec![0f32; half];
        let rows = cos
            .chunks_exact_mut(self.head_dim)
            .zip(sin.chunks_exact_mut(self.head_dim));
        for (i, (cos, sin)) in rows.enumerate() {
            let p = [pos.t[i] as f32, pos.h[i] as f32, pos.w[i] as f32];
            for (j, a) in angles.iter_mut().enumerate() {
                *a = p[axes[j]] * self.inv_freq[j];
            }
            rope::write_row(&angles, cos, sin);
        }
        (cos, sin)
    }

    /// Device tables shaped `[batch, 1, seq, head_dim]` for [`rope::apply`], cast to `dtype`
    /// (transformers casts cos/sin to the activation type).
    pub fn device_tables(
        &self,
        pos: &Positions,
        device: &Device,
        dtype: DType,
    ) -> (Tensor<4>, Tensor<4>) {
        let (cos, sin) = self.tables(pos);
        (
            self.device_table(cos, pos, device, dtype),
            self.device_table(sin, pos, device, dtype),
        )
    }

    /// One host table of [`tables`](Self::tables) (or [`rope::signed_sin`] of one) on `device`,
    /// shaped `[batch, 1, seq, head_dim]` and cast to `dtype`.
    ///
    /// # Panics
    /// If `table` does not hold `batch · seq · head_dim` values.
    pub fn device_table(
        &self,
        table: Vec<f32>,
        pos: &Positions,
        device: &Device,
        dtype: DType,
    ) -> Tensor<4> {
        echovlm_core::host::from_f32_vec(
            table,
            [pos.batch, 1, pos.seq, self.head_dim],
            device,
            dtype,
        )
    }
}
