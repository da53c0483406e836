//! The CPU fast path: linear-layer weights packed in host memory (f32, bf16 or int8 with
//! per-block scales) and the kernels that multiply them.
//!
//! Decoding one token multiplies a vector by every weight matrix once, so its speed is set by
//! how fast weights stream from memory. Burn's flex backend runs matrix-vector products far
//! below that and has no bf16 or int8 kernels that do not dequantize the whole matrix first.
//! The kernels here read each weight once, convert it in registers and accumulate in f32, on
//! every core:
//!
//! * `m ≤ SMALL_M` rows of activations (decode, small batches): one pass over the weights,
//!   each weight row dotted with every activation row (AVX-512 or AVX2+FMA when the CPU has
//!   them, a portable loop otherwise);
//! * larger `m` (prefill): the weights are widened tile by tile into an f32 scratch buffer and
//!   multiplied with the `gemm` crate, so prefill runs at matrix-multiply speed.
//!
//! Only [`crate::linear::Linear`] uses this module, and only on the flex device; every other
//! backend takes Burn's own matmul. `tests/cpu_kernels.rs` pins the kernels to a plain
//! reference.

use half::bf16;
use rayon::prelude::*;

/// Activation rows up to which the matrix-vector kernels run (beyond: tiled gemm).
pub const SMALL_M: usize = 8;

/// Multiply-accumulates below which a matrix-vector product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

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

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(WeightFormat::F32),
            "bf16" => Ok(WeightFormat::Bf16),
            "int8" | "q8" => Ok(WeightFormat::Int8),
            other => Err(format!(
                "unknown weight format {other:?} (use f32, bf16 or int8)"
            )),
        }
    }
}

/// A 64-byte aligned buffer: vector loads never straddle two cache lines, which costs a
/// second load on every unaligned 512-bit access. Buffers of [`HUGE_PAGE_MIN`] bytes or more
/// are anonymous memory maps that Linux is asked to back with transparent huge pages: the
/// kernels stream weights across hundreds of megabytes per token, and with 4 KiB pages every
/// 4 KiB costs a TLB miss and stops the hardware prefetcher at the page boundary.
struct Aligned<T: Copy> {
    storage: Storage,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

enum Storage {
    Lines(Vec<Line>),
    Map(memmap2::MmapMut),
}

/// Smallest buffer placed in its own memory map (and offered huge pages).
const HUGE_PAGE_MIN: usize = 2 << 20;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Copy + Default> Aligned<T> {
    fn zeroed(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        let map = (bytes >= HUGE_PAGE_MIN)
            .then(|| memmap2::MmapMut::map_anon(bytes).ok())
            .flatten();
        let storage = match map {
            Some(map) => {
                // Advisory: without transparent huge pages the map works as it is.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                Storage::Map(map)
            }
            None => Storage::Lines(vec![Line([0; 64]); bytes.div_ceil(64)]),
        };
        Self {
            storage,
            len,
            _t: std::marker::PhantomData,
        }
    }

    fn from_slice(v: &[T]) -> Self {
        let mut a = Self::zeroed(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl<T: Copy + Default> Clone for Aligned<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Copy> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let ptr = match &self.storage {
            Storage::Lines(lines) => lines.as_ptr() as *const T,
            Storage::Map(map) => map.as_ptr() as *const T,
        };
        // SAFETY: the storage holds at least `len` values of T (plain data, zero-initialised
        // or written through `DerefMut`), 64-byte aligned (page-aligned for a map).
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let ptr = match &mut self.storage {
            Storage::Lines(lines) => lines.as_mut_ptr() as *mut T,
            Storage::Map(map) => map.as_mut_ptr() as *mut T,
        };
        // SAFETY: as in `deref`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }
}

#[derive(Clone)]
enum Data {
    F32(Aligned<f32>),
    Bf16(Aligned<u16>),
    Int8 { q: Aligned<i8>, scales: Box<[f32]> },
}

/// A `[rows, cols]` weight matrix (rows = outputs, the HF `[out, in]` layout) in host memory.
#[derive(Clone)]
pub struct PackedWeight {
    rows: usize,
    cols: usize,
    data: Data,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("format", &self.format())
            .finish()
    }
}

impl PackedWeight {
    /// Packs row-major f32 weights in `format` (int8: symmetric, scale = max|w| / 127 per
    /// block, rounded to nearest).
    pub fn from_f32(rows: usize, cols: usize, w: &[f32], format: WeightFormat) -> Self {
        assert_eq!(w.len(), rows * cols, "weight length");
        let data = match format {
            WeightFormat::F32 => Data::F32(Aligned::from_slice(w)),
            WeightFormat::Bf16 => {
                let bits: Vec<u16> = w.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                Data::Bf16(Aligned::from_slice(&bits))
            }
            WeightFormat::Int8 => {
                let blocks = cols.div_ceil(INT8_BLOCK);
                let mut q = Aligned::<i8>::zeroed(rows * cols);
                let mut scales = vec![0f32; rows * blocks];
                q.par_chunks_mut(cols)
                    .zip(scales.par_chunks_mut(blocks))
                    .zip(w.par_chunks(cols))
                    .for_each(|((qr, sr), wr)| quantize_row(wr, qr, sr));
                Data::Int8 {
                    q,
                    scales: scales.into(),
                }
            }
        };
        Self { rows, cols, data }
    }

    /// Packs a tensor straight from its little-endian storage bytes (`F32`, `F16` or `BF16`,
    /// row-major `[rows, cols]`), row by row, never holding an f32 copy of the whole matrix.
    /// bf16 storage packed as bf16 is copied bit for bit.
    pub fn from_storage(
        rows: usize,
        cols: usize,
        bytes: &[u8],
        storage: crate::checkpoint::StorageDtype,
        format: WeightFormat,
    ) -> Self {
        use crate::checkpoint::StorageDtype as S;
        let size = storage.size();
        assert!(
            size > 0 && bytes.len() == rows * cols * size,
            "storage length"
        );
        let widen = |raw: &[u8], out: &mut [f32]| match storage {
            S::F32 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            S::BF16 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            S::F16 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            S::Other(_) => unreachable!("checked above"),
        };
        let row_bytes = cols * size;
        let data = match format {
            WeightFormat::F32 => {
                let mut w = Aligned::<f32>::zeroed(rows * cols);
                w.par_chunks_mut(cols)
                    .zip(bytes.par_chunks(row_bytes))
                    .for_each(|(o, raw)| widen(raw, o));
                Data::F32(w)
            }
            WeightFormat::Bf16 => {
                let mut w = Aligned::<u16>::zeroed(rows * cols);
                w.par_chunks_mut(cols)
                    .zip(bytes.par_chunks(row_bytes))
                    .for_each_init(
                        || vec![0f32; cols],
                        |tmp, (o, raw)| {
                            if storage == S::BF16 {
                                for (o, c) in o.iter_mut().zip(raw.chunks_exact(2)) {
                                    *o = u16::from_le_bytes([c[0], c[1]]);
                                }
                            } else {
                                widen(raw, tmp);
                                for (o, &x) in o.iter_mut().zip(tmp.iter()) {
                                    *o = bf16::from_f32(x).to_bits();
                                }
                            }
                        },
                    );
                Data::Bf16(w)
            }
            WeightFormat::Int8 => {
                let blocks = cols.div_ceil(INT8_BLOCK);
                let mut q = Aligned::<i8>::zeroed(rows * cols);
                let mut scales = vec![0f32; rows * blocks];
                q.par_chunks_mut(cols)
                    .zip(scales.par_chunks_mut(blocks))
                    .zip(bytes.par_chunks(row_bytes))
                    .for_each_init(
                        || vec![0f32; cols],
                        |tmp, ((qr, sr), raw)| {
                            widen(raw, tmp);
                            quantize_row(tmp, qr, sr);
                        },
                    );
                Data::Int8 {
                    q,
                    scales: scales.into(),
                }
            }
        };
        Self { rows, cols, data }
    }

    /// Packs bf16 weights (raw bits) without rounding.
    pub fn from_bf16_bits(rows: usize, cols: usize, w: Vec<u16>) -> Self {
        assert_eq!(w.len(), rows * cols, "weight length");
        Self {
            rows,
            cols,
            data: Data::Bf16(Aligned::from_slice(&w)),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::F32(_) => WeightFormat::F32,
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// Bytes of host memory the weights occupy.
    pub fn nbytes(&self) -> usize {
        match &self.data {
            Data::F32(w) => w.len() * 4,
            Data::Bf16(w) => w.len() * 2,
            Data::Int8 { q, scales } => q.len() + scales.len() * 4,
        }
    }

    /// The weights as f32 (dequantised), row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.widen_row(r, row));
        out
    }

    /// Row `r` widened to f32 into `out` (`cols` long): an embedding lookup.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "row length");
        self.widen_row(r, out);
    }

    fn widen_row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Data::Bf16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c..(r + 1) * c]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            Data::Int8 { q, scales } => {
                let blocks = c.div_ceil(INT8_BLOCK);
                let row = &q[r * c..(r + 1) * c];
                for (b, chunk) in out.chunks_mut(INT8_BLOCK).enumerate() {
                    let s = scales[r * blocks + b];
                    for (o, &qi) in chunk.iter_mut().zip(&row[b * INT8_BLOCK..]) {
                        *o = qi as f32 * s;
                    }
                }
            }
        }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`, both row-major.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "activation length");
        assert_eq!(y.len(), m * self.rows, "output length");
        if m == 0 || self.rows == 0 {
            return;
        }
        if m <= SMALL_M {
            self.matvec(x, m, y);
        } else {
            self.tiled_gemm(x, m, y);
        }
    }

    /// One pass over the weights; every weight row is dotted with all `m` activation rows.
    fn matvec(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let x_aligned = Aligned::from_slice(x);
        let x: &[f32] = &x_aligned;
        let threads = rayon::current_num_threads().max(1);
        // enough chunks to balance, each large enough to stream well
        let chunk = (self.rows.div_ceil(threads * 8)).clamp(8, 1024);
        let mut out = vec![0f32; self.rows * m];
        let work = |(ci, dst): (usize, &mut [f32])| {
            let r0 = ci * chunk;
            for (i, d) in dst.chunks_exact_mut(m).enumerate() {
                self.dot_row(r0 + i, x, m, d);
            }
        };
        // waking the thread pool costs tens of microseconds: small products stay on this thread
        if threads == 1 || self.rows * self.cols * m < PARALLEL_MIN_MACS {
            out.chunks_mut(chunk * m).enumerate().for_each(work);
        } else {
            out.par_chunks_mut(chunk * m).enumerate().for_each(work);
        }
        // [rows, m] -> [m, rows]
        for (r, vals) in out.chunks_exact(m).enumerate() {
            for (mi, &v) in vals.iter().enumerate() {
                y[mi * self.rows + r] = v;
            }
        }
    }

    fn dot_row(&self, r: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(w) => kernels::dot_f32(&w[r * c..(r + 1) * c], x, m, c, out),
            Data::Bf16(w) => kernels::dot_bf16(&w[r * c..(r + 1) * c], x, m, c, out),
            Data::Int8 { q, scales } => {
                let blocks = c.div_ceil(INT8_BLOCK);
                kernels::dot_int8(
                    &q[r * c..(r + 1) * c],
                    &scales[r * blocks..(r + 1) * blocks],
                    x,
                    m,
                    c,
                    out,
                )
            }
        }
    }

    /// Splits the weight rows into tiles, one per task on the thread pool; each tile is
    /// multiplied single-threaded by the `gemm` crate (f32 rows in place, bf16/int8 rows widened
    /// into a per-thread scratch first). Tiling beats handing `gemm` the whole matrix: its
    /// packing of a column-major right-hand side is the costly part, and per-tile calls keep
    /// that packing in cache.
    fn tiled_gemm(&self, x: &[f32], m: usize, y: &mut [f32]) {
        const TILE: usize = 128;
        let rows = self.rows;
        let cols = self.cols;
        let tiles = rows.div_ceil(TILE);
        let y_ptr = SendPtr(y.as_mut_ptr());
        let run = |w: &[f32], r0: usize, n: usize| {
            // SAFETY: `w` holds n rows of `cols` f32 (used as wᵀ [cols, n]); x is [m, cols]; the
            // tile writes the disjoint columns r0..r0+n of y [m, rows].
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    cols,
                    y_ptr.get().add(r0),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    w.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        if let Data::F32(w) = &self.data {
            (0..tiles).into_par_iter().for_each(|t| {
                let r0 = t * TILE;
                let n = TILE.min(rows - r0);
                run(&w[r0 * cols..(r0 + n) * cols], r0, n);
            });
            return;
        }
        (0..tiles).into_par_iter().for_each_init(
            || vec![0f32; TILE * cols],
            |scratch, t| {
                let r0 = t * TILE;
                let n = TILE.min(rows - r0);
                for i in 0..n {
                    self.widen_row(r0 + i, &mut scratch[i * cols..(i + 1) * cols]);
                }
                run(&scratch[..n * cols], r0, n);
            },
        );
    }
}

/// Symmetric per-block int8: `scale = max|w| / 127`, `q = round(w / scale)`.
fn quantize_row(w: &[f32], q: &mut [i8], scales: &mut [f32]) {
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

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to write disjoint regions from parallel tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Dot products of one weight row with `m` activation rows, with runtime CPU dispatch.
#[allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep
mod kernels {
    use super::INT8_BLOCK;

    pub fn dot_f32(w: &[f32], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { x86::dot_f32_avx512(w, x, m, c, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { x86::dot_f32_avx2(w, x, m, c, out) };
            }
        }
        portable(m, c, x, out, |i| w[i])
    }

    pub fn dot_bf16(w: &[u16], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { x86::dot_bf16_avx512(w, x, m, c, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { x86::dot_bf16_avx2(w, x, m, c, out) };
            }
        }
        portable(m, c, x, out, |i| f32::from_bits((w[i] as u32) << 16))
    }

    pub fn dot_int8(q: &[i8], scales: &[f32], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && c.is_multiple_of(INT8_BLOCK) {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { x86::dot_int8_avx512(q, scales, x, m, c, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && c.is_multiple_of(INT8_BLOCK)
            {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { x86::dot_int8_avx2(q, scales, x, m, c, out) };
            }
        }
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

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        //! One kernel per (instruction set, weight type), monomorphised over the number `M` of
        //! activation rows handled per pass (1 to 4) so that every accumulator stays in a
        //! register; 4 independent accumulators per row hide the FMA latency. Everything is
        //! inlined into `#[target_feature]` functions (closures would not inherit the features).
        use super::INT8_BLOCK;
        use std::arch::x86_64::*;

        /// Bytes ahead of the current position that are prefetched.
        const PREFETCH: usize = 2048;

        /// Runs `kernel::<M>` over the activation rows in passes of at most 4.
        macro_rules! dispatch_rows {
            ($kernel:ident, $m:expr, $($arg:expr),*) => {{
                let mut m0 = 0;
                while m0 < $m {
                    let mm = ($m - m0).min(4);
                    match mm {
                        1 => $kernel::<1>(m0, $($arg),*),
                        2 => $kernel::<2>(m0, $($arg),*),
                        3 => $kernel::<3>(m0, $($arg),*),
                        _ => $kernel::<4>(m0, $($arg),*),
                    }
                    m0 += mm;
                }
            }};
        }

        macro_rules! avx512_kernel {
            ($name:ident, $inner:ident, $wty:ty, |$w:ident, $i:ident| $load:expr, |$wt:ident, $j:ident| $tail:expr) => {
                #[target_feature(enable = "avx512f")]
                unsafe fn $inner<const M: usize>(
                    m0: usize,
                    $w: &[$wty],
                    x: &[f32],
                    c: usize,
                    out: &mut [f32],
                ) {
                    let full = c / 64 * 64;
                    let mut acc = [[_mm512_setzero_ps(); 4]; M];
                    let xp = unsafe { x.as_ptr().add(m0 * c) };
                    let mut $i = 0;
                    let line_elems = 64 / std::mem::size_of::<$wty>();
                    while $i < full {
                        let mut l = 0;
                        while l < 64 {
                            _mm_prefetch::<_MM_HINT_T0>(
                                ($w.as_ptr().wrapping_add($i + l) as *const i8)
                                    .wrapping_add(PREFETCH),
                            );
                            l += line_elems;
                        }
                        let wv: [__m512; 4] = unsafe {
                            [
                                {
                                    let $i = $i;
                                    $load
                                },
                                {
                                    let $i = $i + 16;
                                    $load
                                },
                                {
                                    let $i = $i + 32;
                                    $load
                                },
                                {
                                    let $i = $i + 48;
                                    $load
                                },
                            ]
                        };
                        for k in 0..M {
                            let xr = unsafe { xp.add(k * c + $i) };
                            for u in 0..4 {
                                let xv = unsafe { _mm512_loadu_ps(xr.add(16 * u)) };
                                acc[k][u] = _mm512_fmadd_ps(wv[u], xv, acc[k][u]);
                            }
                        }
                        $i += 64;
                    }
                    for k in 0..M {
                        let a = _mm512_add_ps(
                            _mm512_add_ps(acc[k][0], acc[k][1]),
                            _mm512_add_ps(acc[k][2], acc[k][3]),
                        );
                        let mut s = _mm512_reduce_add_ps(a);
                        for $j in full..c {
                            let $wt = $w;
                            s += $tail * x[(m0 + k) * c + $j];
                        }
                        out[m0 + k] = s;
                    }
                }

                #[target_feature(enable = "avx512f")]
                pub unsafe fn $name($w: &[$wty], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
                    unsafe { dispatch_rows!($inner, m, $w, x, c, out) }
                }
            };
        }

        avx512_kernel!(
            dot_f32_avx512,
            f32_avx512,
            f32,
            |w, i| _mm512_loadu_ps(w.as_ptr().add(i)),
            |w, j| w[j]
        );
        avx512_kernel!(
            dot_bf16_avx512,
            bf16_avx512,
            u16,
            |w, i| _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(w.as_ptr().add(i) as *const __m256i)),
                16
            )),
            |w, j| f32::from_bits((w[j] as u32) << 16)
        );

        /// int8 with one scale per 64 weights: each block is widened, scaled and accumulated.
        #[target_feature(enable = "avx512f")]
        unsafe fn int8_avx512<const M: usize>(
            m0: usize,
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            c: usize,
            out: &mut [f32],
        ) {
            let xp = unsafe { x.as_ptr().add(m0 * c) };
            let mut acc = [[_mm512_setzero_ps(); 4]; M];
            for (b, &s) in scales.iter().enumerate() {
                let i = b * INT8_BLOCK;
                let sv = _mm512_set1_ps(s);
                _mm_prefetch::<_MM_HINT_T0>(q.as_ptr().wrapping_add(i + PREFETCH));
                let wv: [__m512; 4] = unsafe {
                    let p = q.as_ptr().add(i) as *const __m128i;
                    [
                        _mm512_mul_ps(
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))),
                            sv,
                        ),
                        _mm512_mul_ps(
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1)))),
                            sv,
                        ),
                        _mm512_mul_ps(
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2)))),
                            sv,
                        ),
                        _mm512_mul_ps(
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(3)))),
                            sv,
                        ),
                    ]
                };
                for k in 0..M {
                    let xr = unsafe { xp.add(k * c + i) };
                    for u in 0..4 {
                        let xv = unsafe { _mm512_loadu_ps(xr.add(16 * u)) };
                        acc[k][u] = _mm512_fmadd_ps(wv[u], xv, acc[k][u]);
                    }
                }
            }
            for k in 0..M {
                let a = _mm512_add_ps(
                    _mm512_add_ps(acc[k][0], acc[k][1]),
                    _mm512_add_ps(acc[k][2], acc[k][3]),
                );
                out[m0 + k] = _mm512_reduce_add_ps(a);
            }
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot_int8_avx512(
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            m: usize,
            c: usize,
            out: &mut [f32],
        ) {
            debug_assert_eq!(INT8_BLOCK, 64);
            unsafe { dispatch_rows!(int8_avx512, m, q, scales, x, c, out) }
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn hsum256(v: __m256) -> f32 {
            let hi = _mm256_extractf128_ps(v, 1);
            let lo = _mm256_castps256_ps128(v);
            let s = _mm_add_ps(hi, lo);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }

        macro_rules! avx2_kernel {
            ($name:ident, $inner:ident, $wty:ty, |$w:ident, $i:ident| $load:expr, |$wt:ident, $j:ident| $tail:expr) => {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn $inner<const M: usize>(
                    m0: usize,
                    $w: &[$wty],
                    x: &[f32],
                    c: usize,
                    out: &mut [f32],
                ) {
                    let full = c / 32 * 32;
                    let mut acc = [[_mm256_setzero_ps(); 4]; M];
                    let xp = unsafe { x.as_ptr().add(m0 * c) };
                    let mut $i = 0;
                    let line_elems = 64 / std::mem::size_of::<$wty>();
                    while $i < full {
                        let mut l = 0;
                        while l < 32 {
                            _mm_prefetch::<_MM_HINT_T0>(
                                ($w.as_ptr().wrapping_add($i + l) as *const i8)
                                    .wrapping_add(PREFETCH),
                            );
                            l += line_elems;
                        }
                        let wv: [__m256; 4] = unsafe {
                            [
                                {
                                    let $i = $i;
                                    $load
                                },
                                {
                                    let $i = $i + 8;
                                    $load
                                },
                                {
                                    let $i = $i + 16;
                                    $load
                                },
                                {
                                    let $i = $i + 24;
                                    $load
                                },
                            ]
                        };
                        for k in 0..M {
                            let xr = unsafe { xp.add(k * c + $i) };
                            for u in 0..4 {
                                let xv = unsafe { _mm256_loadu_ps(xr.add(8 * u)) };
                                acc[k][u] = _mm256_fmadd_ps(wv[u], xv, acc[k][u]);
                            }
                        }
                        $i += 32;
                    }
                    for k in 0..M {
                        let a = _mm256_add_ps(
                            _mm256_add_ps(acc[k][0], acc[k][1]),
                            _mm256_add_ps(acc[k][2], acc[k][3]),
                        );
                        let mut s = unsafe { hsum256(a) };
                        for $j in full..c {
                            let $wt = $w;
                            s += $tail * x[(m0 + k) * c + $j];
                        }
                        out[m0 + k] = s;
                    }
                }

                #[target_feature(enable = "avx2,fma")]
                pub unsafe fn $name($w: &[$wty], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
                    unsafe { dispatch_rows!($inner, m, $w, x, c, out) }
                }
            };
        }

        avx2_kernel!(
            dot_f32_avx2,
            f32_avx2,
            f32,
            |w, i| _mm256_loadu_ps(w.as_ptr().add(i)),
            |w, j| w[j]
        );
        avx2_kernel!(
            dot_bf16_avx2,
            bf16_avx2,
            u16,
            |w, i| _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(w.as_ptr().add(i) as *const __m128i)),
                16
            )),
            |w, j| f32::from_bits((w[j] as u32) << 16)
        );

        #[target_feature(enable = "avx2,fma")]
        unsafe fn int8_avx2<const M: usize>(
            m0: usize,
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            c: usize,
            out: &mut [f32],
        ) {
            let xp = unsafe { x.as_ptr().add(m0 * c) };
            let mut acc = [[_mm256_setzero_ps(); 4]; M];
            for (b, &s) in scales.iter().enumerate() {
                let sv = _mm256_set1_ps(s);
                _mm_prefetch::<_MM_HINT_T0>(q.as_ptr().wrapping_add(b * INT8_BLOCK + PREFETCH));
                for half in 0..2 {
                    let i = b * INT8_BLOCK + half * 32;
                    let wv: [__m256; 4] = unsafe {
                        let p = q.as_ptr().add(i) as *const __m128i;
                        let lo = _mm_loadu_si128(p);
                        let hi = _mm_loadu_si128(p.add(1));
                        [
                            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), sv),
                            _mm256_mul_ps(
                                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                                sv,
                            ),
                            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), sv),
                            _mm256_mul_ps(
                                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
                                sv,
                            ),
                        ]
                    };
                    for k in 0..M {
                        let xr = unsafe { xp.add(k * c + i) };
                        for u in 0..4 {
                            let xv = unsafe { _mm256_loadu_ps(xr.add(8 * u)) };
                            acc[k][u] = _mm256_fmadd_ps(wv[u], xv, acc[k][u]);
                        }
                    }
                }
            }
            for k in 0..M {
                let a = _mm256_add_ps(
                    _mm256_add_ps(acc[k][0], acc[k][1]),
                    _mm256_add_ps(acc[k][2], acc[k][3]),
                );
                out[m0 + k] = unsafe { hsum256(a) };
            }
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dot_int8_avx2(
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            m: usize,
            c: usize,
            out: &mut [f32],
        ) {
            unsafe { dispatch_rows!(int8_avx2, m, q, scales, x, c, out) }
        }
    }
}
