//! The portable kernels: safe, bounds-checked loops the compiler vectorises for the target's
//! baseline.
#![allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep

use crate::cpu::INT8_BLOCK;
use crate::cpu::format::{INT4_GROUP, INT4_GROUP_BYTES, QuantizedRows};

/// Portable f32 row kernel (see `DotF32`); safe, bounds-checked.
pub fn dot_f32(w: &[f32], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
    portable(m, c, x, out, |i| w[i])
}

/// Portable bf16 row kernel; safe, bounds-checked.
pub fn dot_bf16(w: &[u16], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
    portable(m, c, x, out, |i| f32::from_bits((w[i] as u32) << 16))
}

/// Portable int8 row kernel; safe, bounds-checked.
pub fn dot_int8(q: &[i8], scales: &[f32], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
    for (mi, o) in out.iter_mut().enumerate().take(m) {
        let xr = &x[mi * c..(mi + 1) * c];
        let mut acc = 0f32;
        for (b, s) in scales.iter().enumerate() {
            let lo = b * INT8_BLOCK;
            let hi = (lo + INT8_BLOCK).min(c);
            let mut part = 0f32;
            for i in lo..hi {
                part += q[i] as f32 * xr[i];
            }
            acc += part * s;
        }
        *o = acc;
    }
}

/// Portable int4 row kernel; safe, bounds-checked. Per group: the exact integer dot of the
/// nibbles with the quantised activations, scaled by both scales; the weights' `−8` offset is
/// subtracted once at the end (`Σ d_w · o`), the order the vector kernel uses.
pub fn dot_int4(q: &[u8], scales: &[u16], x: &QuantizedRows, m: usize, out: &mut [f32]) {
    let g = x.blocks;
    for (mi, o) in out.iter_mut().enumerate().take(m) {
        let xq = &x.q[mi * g * INT4_GROUP..(mi + 1) * g * INT4_GROUP];
        let (mut acc, mut off) = (0f32, 0f32);
        for b in 0..g {
            let bytes = &q[b * INT4_GROUP_BYTES..(b + 1) * INT4_GROUP_BYTES];
            let xb = &xq[b * INT4_GROUP..(b + 1) * INT4_GROUP];
            let mut dot = 0i32;
            for j in 0..INT4_GROUP_BYTES {
                dot += (bytes[j] & 0x0f) as i32 * xb[j] as i32
                    + (bytes[j] >> 4) as i32 * xb[j + INT4_GROUP_BYTES] as i32;
            }
            let dw = half::f16::from_bits(scales[b]).to_f32();
            acc += dw * x.d[mi * g + b] * dot as f32;
            off += dw * x.o[mi * g + b];
        }
        *o = acc - off;
    }
}

/// Eight independent accumulators so that the compiler vectorises the loop.
fn portable(m: usize, c: usize, x: &[f32], out: &mut [f32], w: impl Fn(usize) -> f32) {
    for (mi, o) in out.iter_mut().enumerate().take(m) {
        let xr = &x[mi * c..(mi + 1) * c];
        let mut acc = [0f32; 8];
        let full = c / 8 * 8;
        for i in (0..full).step_by(8) {
            for l in 0..8 {
                acc[l] += w(i + l) * xr[i + l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in full..c {
            s += w(i) * xr[i];
        }
        *o = s;
    }
}
