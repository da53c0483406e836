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
//! Only [`crate::Linear`] uses this module, and only on the flex device; every other
//! backend takes Burn's own matmul. `tests/cpu_kernels.rs` pins the kernels to a plain
//! reference.
//!
//! # Choosing the kernel
//!
//! The kernel is chosen once per process ([`active_kernel`]): the fastest one the CPU runs,
//! unless the environment variable [`KERNEL_ENV`] (`ECHOVLM_CPU_KERNEL`) names one of
//! `portable`, `avx2`, `avx512` or `auto`. A kernel the CPU lacks is never run: asking for one
//! falls back to the fastest supported kernel below it (AVX-512 → AVX2 → portable) and says so
//! once on standard error; an unknown value falls back to `auto` the same way.

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

/// What is wrong with a shape or buffer handed to the CPU kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpuError {
    /// A size computed from the given dimensions does not fit in the address space.
    #[error("{what} of dimensions {dims:?} is too large for the address space")]
    Overflow {
        /// What was being sized.
        what: &'static str,
        /// The dimensions whose product overflowed.
        dims: Vec<usize>,
    },
    /// A buffer's length does not match the shape it comes with.
    #[error("{what} has {found} elements, expected {expected}")]
    Length {
        /// The buffer.
        what: &'static str,
        /// Length the shape calls for.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// A row index past the last row.
    #[error("row {row} of a matrix with {rows} rows")]
    Row {
        /// The index asked for.
        row: usize,
        /// Rows of the matrix.
        rows: usize,
    },
    /// Storage that is not a float format.
    #[error("cannot pack {0} storage (F32, F16 or BF16 only)")]
    Storage(&'static str),
    /// The memory for a buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes")]
    Alloc {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A name that is not one of the accepted ones.
    #[error("unknown {what} {name:?} (use {expected})")]
    UnknownName {
        /// What was being named.
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
}

/// Largest byte size of one buffer (Rust allocations are limited to `isize::MAX` bytes).
const MAX_BYTES: usize = isize::MAX as usize;

/// `a · b · size ≤ MAX_BYTES`, or [`CpuError::Overflow`] about `what`.
fn checked_bytes(what: &'static str, a: usize, b: usize, size: usize) -> Result<usize, CpuError> {
    a.checked_mul(b)
        .and_then(|n| n.checked_mul(size))
        .filter(|&n| n <= MAX_BYTES)
        .ok_or_else(|| CpuError::Overflow {
            what,
            dims: vec![a, b, size],
        })
}

/// Elements of a `[rows, cols]` weight matrix, checked so that its f32 copy fits in memory
/// addresses (the dequantised matrix and the gemm scratch are sized from it).
fn matrix_elements(rows: usize, cols: usize) -> Result<usize, CpuError> {
    checked_bytes("weight matrix", rows, cols, 4).map(|bytes| bytes / 4)
}

/// Environment variable that forces a kernel: `portable`, `avx2`, `avx512` or `auto`.
pub const KERNEL_ENV: &str = "ECHOVLM_CPU_KERNEL";

/// A family of matrix-vector kernels. Ordered from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Plain Rust loops the compiler vectorises for the target's baseline.
    Portable,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512];

    /// The name [`KERNEL_ENV`] accepts for it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best_supported() -> Kernel {
        resolve_kernel(Kernel::Avx512, Kernel::is_supported)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernel {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| CpuError::UnknownName {
                what: "kernel",
                name: s.to_string(),
                expected: "portable, avx2 or avx512",
            })
    }
}

/// The fastest kernel no faster than `wanted` that `supported` accepts (portable at worst).
fn resolve_kernel(wanted: Kernel, supported: impl Fn(Kernel) -> bool) -> Kernel {
    Kernel::ALL
        .into_iter()
        .rev()
        .find(|&k| k <= wanted && (k == Kernel::Portable || supported(k)))
        .unwrap_or(Kernel::Portable)
}

/// The kernel for a value of [`KERNEL_ENV`] (`None`: unset), and a note when the value could not
/// be followed as given.
fn choose_kernel(
    value: Option<&str>,
    supported: impl Fn(Kernel) -> bool,
) -> (Kernel, Option<String>) {
    let best = resolve_kernel(Kernel::Avx512, &supported);
    let value = value.map(str::trim).unwrap_or("");
    if value.is_empty() || value.eq_ignore_ascii_case("auto") {
        return (best, None);
    }
    match value.to_ascii_lowercase().parse::<Kernel>() {
        Ok(wanted) => {
            let got = resolve_kernel(wanted, &supported);
            let note = (got != wanted).then(|| {
                format!(
                    "{KERNEL_ENV}={value}: this CPU cannot run the {wanted} kernel; using {got}"
                )
            });
            (got, note)
        }
        Err(e) => (best, Some(format!("{KERNEL_ENV}: {e}; using {best}"))),
    }
}

/// The kernel every product in this process runs: chosen on first use from the CPU and
/// [`KERNEL_ENV`] (see the [module documentation](self)), then fixed.
pub fn active_kernel() -> Kernel {
    static ACTIVE: OnceLock<Kernel> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let value = std::env::var(KERNEL_ENV).ok();
        let (kernel, note) = choose_kernel(value.as_deref(), Kernel::is_supported);
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        kernel
    })
}

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
    /// `len` zero values (`T` is plain data: integers or floats, for which all-zero bytes are
    /// zero). Fails on a byte size beyond `isize::MAX` or an allocation failure.
    fn zeroed(len: usize) -> Result<Self, CpuError> {
        let bytes = checked_bytes("aligned buffer", len, std::mem::size_of::<T>(), 1)?;
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
            None => {
                let lines = bytes.div_ceil(64);
                let mut v = Vec::new();
                v.try_reserve_exact(lines)
                    .map_err(|_| CpuError::Alloc { bytes })?;
                v.resize(lines, Line([0; 64]));
                Storage::Lines(v)
            }
        };
        Ok(Self {
            storage,
            len,
            _t: std::marker::PhantomData,
        })
    }

    fn from_slice(v: &[T]) -> Result<Self, CpuError> {
        let mut a = Self::zeroed(v.len())?;
        a.copy_from_slice(v);
        Ok(a)
    }
}

impl<T: Copy + Default> Clone for Aligned<T> {
    /// Like `Vec`'s clone, aborts when memory runs out (the size itself was checked when the
    /// original was allocated).
    fn clone(&self) -> Self {
        Self::from_slice(self).unwrap_or_else(|_| {
            let bytes = std::mem::size_of_val::<[T]>(self);
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes.max(1), 64)
                    .unwrap_or(std::alloc::Layout::new::<Line>()),
            )
        })
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
///
/// Every constructor checks that `rows · cols` f32 values fit in memory addresses, so no size
/// derived from the shape afterwards can overflow.
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
    ///
    /// Fails when `w` does not hold `rows · cols` values or that size overflows.
    pub fn from_f32(
        rows: usize,
        cols: usize,
        w: &[f32],
        format: WeightFormat,
    ) -> Result<Self, CpuError> {
        let n = matrix_elements(rows, cols)?;
        check_len("weights", n, w.len())?;
        let data = match format {
            WeightFormat::F32 => Data::F32(Aligned::from_slice(w)?),
            WeightFormat::Bf16 => {
                let mut bits = Aligned::<u16>::zeroed(n)?;
                bits.par_iter_mut()
                    .zip(w.par_iter())
                    .for_each(|(b, &x)| *b = bf16::from_f32(x).to_bits());
                Data::Bf16(bits)
            }
            WeightFormat::Int8 => {
                let (mut q, mut scales) = int8_buffers(rows, cols)?;
                if n > 0 {
                    let blocks = cols.div_ceil(INT8_BLOCK);
                    q.par_chunks_mut(cols)
                        .zip(scales.par_chunks_mut(blocks))
                        .zip(w.par_chunks(cols))
                        .for_each(|((qr, sr), wr)| quantize_row(wr, qr, sr));
                }
                Data::Int8 {
                    q,
                    scales: scales.into(),
                }
            }
        };
        Ok(Self { rows, cols, data })
    }

    /// Packs a tensor straight from its little-endian storage bytes (`F32`, `F16` or `BF16`,
    /// row-major `[rows, cols]`), row by row, never holding an f32 copy of the whole matrix.
    /// bf16 storage packed as bf16 is copied bit for bit.
    ///
    /// Fails on non-float storage, when `bytes` does not hold `rows · cols` values or when that
    /// size overflows.
    pub fn from_storage(
        rows: usize,
        cols: usize,
        bytes: &[u8],
        storage: crate::StorageDtype,
        format: WeightFormat,
    ) -> Result<Self, CpuError> {
        use crate::StorageDtype as S;
        let size = storage.size();
        if size == 0 {
            return Err(CpuError::Storage(storage.name()));
        }
        let n = matrix_elements(rows, cols)?;
        check_len(
            "storage bytes",
            checked_bytes("storage", rows, cols, size)?,
            bytes.len(),
        )?;
        if n == 0 {
            return Self::from_f32(rows, cols, &[], format);
        }
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
                let mut w = Aligned::<f32>::zeroed(n)?;
                w.par_chunks_mut(cols)
                    .zip(bytes.par_chunks(row_bytes))
                    .for_each(|(o, raw)| widen(raw, o));
                Data::F32(w)
            }
            WeightFormat::Bf16 => {
                let mut w = Aligned::<u16>::zeroed(n)?;
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
                let (mut q, mut scales) = int8_buffers(rows, cols)?;
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
        Ok(Self { rows, cols, data })
    }

    /// Packs bf16 weights (raw bits) without rounding.
    ///
    /// Fails when `w` does not hold `rows · cols` values or that size overflows.
    pub fn from_bf16_bits(rows: usize, cols: usize, w: &[u16]) -> Result<Self, CpuError> {
        check_len("weights", matrix_elements(rows, cols)?, w.len())?;
        Ok(Self {
            rows,
            cols,
            data: Data::Bf16(Aligned::from_slice(w)?),
        })
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
        if self.cols == 0 {
            return out;
        }
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.widen_row(r, row));
        out
    }

    /// Row `r` widened to f32 into `out` (`cols` long): an embedding lookup.
    ///
    /// Fails when `r` is not a row or `out` is not `cols` long.
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<(), CpuError> {
        if r >= self.rows {
            return Err(CpuError::Row {
                row: r,
                rows: self.rows,
            });
        }
        check_len("row output", self.cols, out.len())?;
        self.widen_row(r, out);
        Ok(())
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

    /// `y[m, rows] = x[m, cols] · Wᵀ`, both row-major, with the [`active_kernel`].
    ///
    /// Fails when `x` is not `m · cols` long or `y` not `m · rows` long (or those overflow),
    /// or when the scratch memory cannot be allocated.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        self.matmul_with(active_kernel(), x, m, y)
    }

    /// [`matmul`](Self::matmul) with `kernel` (or, if the CPU cannot run it, the fastest
    /// supported kernel below it): to compare kernels within one process.
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), CpuError> {
        check_len(
            "activations",
            checked_bytes("activations", m, self.cols, 4)? / 4,
            x.len(),
        )?;
        check_len(
            "output",
            checked_bytes("output", m, self.rows, 4)? / 4,
            y.len(),
        )?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if self.cols == 0 {
            y.fill(0.0);
            return Ok(());
        }
        if m <= SMALL_M {
            let dots = Dots::new(resolve_kernel(kernel, Kernel::is_supported), self.cols);
            self.matvec(dots, x, m, y)
        } else {
            self.tiled_gemm(x, m, y)
        }
    }

    /// One pass over the weights; every weight row is dotted with all `m` activation rows.
    /// `x` is `m · cols` long and `y` `m · rows` (checked by the caller).
    fn matvec(&self, dots: Dots, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let x_aligned = Aligned::from_slice(x)?;
        let x: &[f32] = &x_aligned;
        let threads = rayon::current_num_threads().max(1);
        // enough chunks to balance, each large enough to stream well
        let chunk = (self.rows.div_ceil(threads * 8)).clamp(8, 1024);
        let mut out = vec![0f32; y.len()];
        let work = |(ci, dst): (usize, &mut [f32])| {
            let r0 = ci * chunk;
            for (i, d) in dst.chunks_exact_mut(m).enumerate() {
                self.dot_row(dots, r0 + i, x, m, d);
            }
        };
        // waking the thread pool costs tens of microseconds: small products stay on this thread
        let macs = self.rows.saturating_mul(self.cols).saturating_mul(m);
        if threads == 1 || macs < PARALLEL_MIN_MACS {
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
        Ok(())
    }

    /// Row `r` dotted with the `m` rows of `x` (`m · cols` long) into `out` (`m` long).
    fn dot_row(&self, dots: Dots, r: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let c = self.cols;
        assert!(x.len() >= m * c && out.len() >= m, "dot_row lengths");
        // SAFETY: `dots` holds kernels the CPU supports (`Dots::new` after `resolve_kernel`),
        // int8 vector kernels only for `c` a multiple of INT8_BLOCK; each weight slice is one
        // row of `c` values (with `c / INT8_BLOCK` scales for int8); `x` and `out` are at least
        // `m · c` and `m` long (asserted above).
        unsafe {
            match &self.data {
                Data::F32(w) => (dots.f32)(&w[r * c..(r + 1) * c], x, m, c, out),
                Data::Bf16(w) => (dots.bf16)(&w[r * c..(r + 1) * c], x, m, c, out),
                Data::Int8 { q, scales } => {
                    let blocks = c.div_ceil(INT8_BLOCK);
                    (dots.int8)(
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
    }

    /// Splits the weight rows into tiles, one per task on the thread pool; each tile is
    /// multiplied single-threaded by the `gemm` crate (f32 rows in place, bf16/int8 rows widened
    /// into a per-thread scratch first). Tiling beats handing `gemm` the whole matrix: its
    /// packing of a column-major right-hand side is the costly part, and per-tile calls keep
    /// that packing in cache.
    /// `x` is `m · cols` long and `y` `m · rows` (checked by the caller).
    fn tiled_gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        const TILE: usize = 128;
        let rows = self.rows;
        let cols = self.cols;
        assert!(
            x.len() == m * cols && y.len() == m * rows,
            "tiled_gemm lengths"
        );
        let tiles = rows.div_ceil(TILE);
        let y_ptr = SendPtr(y.as_mut_ptr());
        let run = |w: &[f32], r0: usize, n: usize| {
            assert!(w.len() >= n * cols && r0 + n <= rows, "gemm tile");
            // SAFETY: `w` holds n rows of `cols` f32 (used as wᵀ [cols, n]); x is [m, cols]; the
            // tile writes the disjoint columns r0..r0+n of y [m, rows] (lengths asserted above;
            // `rows` and `cols` are below isize::MAX since the matrix fits in memory).
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
            return Ok(());
        }
        // at most `rows · cols` f32: fits, as checked when the matrix was packed
        let scratch_len = TILE.min(rows) * cols;
        (0..tiles).into_par_iter().for_each_init(
            || vec![0f32; scratch_len],
            |scratch, t| {
                let r0 = t * TILE;
                let n = TILE.min(rows - r0);
                for i in 0..n {
                    self.widen_row(r0 + i, &mut scratch[i * cols..(i + 1) * cols]);
                }
                run(&scratch[..n * cols], r0, n);
            },
        );
        Ok(())
    }
}

/// `Ok` when `found == expected`, else [`CpuError::Length`] about `what`.
fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), CpuError> {
    if expected == found {
        Ok(())
    } else {
        Err(CpuError::Length {
            what,
            expected,
            found,
        })
    }
}

/// Zeroed int8 values and scales for a `[rows, cols]` matrix whose size was checked.
fn int8_buffers(rows: usize, cols: usize) -> Result<(Aligned<i8>, Vec<f32>), CpuError> {
    let q = Aligned::<i8>::zeroed(rows * cols)?;
    let n = rows * cols.div_ceil(INT8_BLOCK);
    let mut scales = Vec::new();
    scales
        .try_reserve_exact(n)
        .map_err(|_| CpuError::Alloc { bytes: n * 4 })?;
    scales.resize(n, 0f32);
    Ok((q, scales))
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

/// A dot product of one f32 weight row (`w`, `c` values) with `m` activation rows (`x`,
/// `m · c` values) into `out` (`m` values).
type DotF32 = unsafe fn(&[f32], &[f32], usize, usize, &mut [f32]);
/// [`DotF32`] for a bf16 row (raw bits).
type DotBf16 = unsafe fn(&[u16], &[f32], usize, usize, &mut [f32]);
/// [`DotF32`] for an int8 row with its `c / INT8_BLOCK` (rounded up) scales.
type DotInt8 = unsafe fn(&[i8], &[f32], &[f32], usize, usize, &mut [f32]);

/// The row kernels of one [`Kernel`], chosen once per product.
///
/// Every function is `unsafe` to call: the slices must be as long as described on [`DotF32`]
/// (the vector kernels read them through raw pointers), and the CPU must support the kernel
/// the functions were taken from, which [`Dots::new`] ensures for a kernel it is given after
/// [`resolve_kernel`].
#[derive(Clone, Copy)]
struct Dots {
    f32: DotF32,
    bf16: DotBf16,
    int8: DotInt8,
}

impl Dots {
    /// The row kernels of `kernel`, which the CPU must support, for rows of `cols` weights
    /// (int8 rows whose length is not a multiple of [`INT8_BLOCK`] take the portable loop).
    fn new(kernel: Kernel, cols: usize) -> Self {
        let portable = Dots {
            f32: kernels::dot_f32,
            bf16: kernels::dot_bf16,
            int8: kernels::dot_int8,
        };
        let int8_vector = cols.is_multiple_of(INT8_BLOCK);
        debug_assert!(kernel.is_supported());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Dots {
                f32: kernels::x86::dot_f32_avx512,
                bf16: kernels::x86::dot_bf16_avx512,
                int8: if int8_vector {
                    kernels::x86::dot_int8_avx512
                } else {
                    portable.int8
                },
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Dots {
                f32: kernels::x86::dot_f32_avx2,
                bf16: kernels::x86::dot_bf16_avx2,
                int8: if int8_vector {
                    kernels::x86::dot_int8_avx2
                } else {
                    portable.int8
                },
            },
            _ => {
                let _ = int8_vector;
                portable
            }
        }
    }
}

/// Dot products of one weight row with `m` activation rows: the portable loops here, the
/// x86-64 vector kernels in `x86`.
#[allow(clippy::needless_range_loop)] // kernel loops index several arrays in lockstep
mod kernels {
    use super::INT8_BLOCK;

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
    pub(super) mod x86 {
        //! One kernel per (instruction set, weight type), monomorphised over the number `M` of
        //! activation rows handled per pass (1 to 4) so that every accumulator stays in a
        //! register; 4 independent accumulators per row hide the FMA latency. Everything is
        //! inlined into `#[target_feature]` functions (closures would not inherit the features).
        use super::INT8_BLOCK;
        use std::arch::x86_64::*;

        /// Bytes ahead of the current position that are prefetched.
        const PREFETCH: usize = 2048;

        /// The lengths the int8 vector kernels read within, asserted.
        fn check_int8(q: &[i8], scales: &[f32], x: &[f32], m: usize, c: usize, out: &[f32]) {
            assert!(
                INT8_BLOCK == 64
                    && c.is_multiple_of(INT8_BLOCK)
                    && q.len() >= c
                    && scales.len() == c / INT8_BLOCK
                    && m.checked_mul(c).is_some_and(|n| x.len() >= n)
                    && out.len() >= m,
                "int8 kernel lengths"
            );
        }

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

                /// Dots one weight row (`c` values) with `m` activation rows.
                ///
                /// # Safety
                /// The CPU must support AVX-512F. (Lengths are checked: `w` at least `c`
                /// long, `x` at least `m · c`, `out` at least `m`, or this panics.)
                #[target_feature(enable = "avx512f")]
                pub unsafe fn $name($w: &[$wty], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
                    assert!(
                        $w.len() >= c
                            && m.checked_mul(c).is_some_and(|n| x.len() >= n)
                            && out.len() >= m,
                        "kernel lengths"
                    );
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

        /// Dots one int8 weight row (`c` values, `c / 64` scales) with `m` activation rows.
        ///
        /// # Safety
        /// The CPU must support AVX-512F. (Lengths are checked: `c` a multiple of 64, `q` at
        /// least `c` long, `scales` exactly `c / 64`, `x` at least `m · c`, `out` at least `m`,
        /// or this panics.)
        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot_int8_avx512(
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            m: usize,
            c: usize,
            out: &mut [f32],
        ) {
            check_int8(q, scales, x, m, c, out);
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

                /// Dots one weight row (`c` values) with `m` activation rows.
                ///
                /// # Safety
                /// The CPU must support AVX2 and FMA. (Lengths are checked: `w` at least `c`
                /// long, `x` at least `m · c`, `out` at least `m`, or this panics.)
                #[target_feature(enable = "avx2,fma")]
                pub unsafe fn $name($w: &[$wty], x: &[f32], m: usize, c: usize, out: &mut [f32]) {
                    assert!(
                        $w.len() >= c
                            && m.checked_mul(c).is_some_and(|n| x.len() >= n)
                            && out.len() >= m,
                        "kernel lengths"
                    );
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

        /// Dots one int8 weight row (`c` values, `c / 64` scales) with `m` activation rows.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA. (Lengths are checked as in
        /// `dot_int8_avx512`.)
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dot_int8_avx2(
            q: &[i8],
            scales: &[f32],
            x: &[f32],
            m: usize,
            c: usize,
            out: &mut [f32],
        ) {
            check_int8(q, scales, x, m, c, out);
            unsafe { dispatch_rows!(int8_avx2, m, q, scales, x, c, out) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_the_cpu_lacks_falls_back_to_the_fastest_below_it() {
        let avx2_only = |k: Kernel| k <= Kernel::Avx2;
        let none = |_: Kernel| false;
        let all = |_: Kernel| true;
        assert_eq!(choose_kernel(None, avx2_only), (Kernel::Avx2, None));
        assert_eq!(choose_kernel(Some("auto"), all), (Kernel::Avx512, None));
        assert_eq!(choose_kernel(Some(" AVX2 "), all), (Kernel::Avx2, None));
        assert_eq!(
            choose_kernel(Some("portable"), all),
            (Kernel::Portable, None)
        );
        let (k, note) = choose_kernel(Some("avx512"), avx2_only);
        assert_eq!(k, Kernel::Avx2);
        assert!(
            note.unwrap()
                .contains("cannot run the avx512 kernel; using avx2")
        );
        let (k, note) = choose_kernel(Some("avx2"), none);
        assert_eq!(k, Kernel::Portable);
        assert!(note.is_some());
        let (k, note) = choose_kernel(Some("neon"), avx2_only);
        assert_eq!(k, Kernel::Avx2);
        assert!(note.unwrap().contains("unknown kernel \"neon\""));
    }
}
