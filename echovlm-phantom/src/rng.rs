//! Seeded draws: ChaCha8 with one stream per purpose, so that adding draws to one purpose never
//! changes another's.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A ChaCha8 generator with the few distributions the phantoms need.
pub(crate) struct Draw(ChaCha8Rng);

impl Draw {
    /// The stream of the attribute draw.
    pub(crate) const ATTRIBUTES: u64 = 0;
    /// The stream of the scene geometry (fan, scale, organ, lesion shape and place).
    pub(crate) const GEOMETRY: u64 = 1;
    /// The stream of the organ's (and lesion's) speckle.
    pub(crate) const SPECKLE: u64 = 2;
    /// The stream of the background tissue's speckle.
    pub(crate) const TISSUE_SPECKLE: u64 = 3;
    /// The stream of the organ's coarse texture.
    pub(crate) const TEXTURE: u64 = 4;
    /// The stream of the background tissue's streaks.
    pub(crate) const STREAKS: u64 = 5;

    pub(crate) fn new(seed: u64, stream: u64) -> Draw {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Draw(rng)
    }

    /// Uniform in [0, 1), 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0), without modulo bias.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        if n <= 1 {
            return 0;
        }
        // Lemire's widening multiply with rejection.
        let zone = u32::MAX - (u32::MAX - n + 1) % n;
        loop {
            let x = self.0.next_u32();
            let m = u64::from(x) * u64::from(n);
            if (m as u32) <= zone {
                return (m >> 32) as u32;
            }
        }
    }

    /// A uniformly chosen element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, values: &'a [T]) -> &'a T {
        let n = u32::try_from(values.len()).unwrap_or(u32::MAX);
        &values[self.below(n) as usize]
    }

    /// Two independent standard normals (Box-Muller).
    pub(crate) fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        (r * t.cos(), r * t.sin())
    }
}
