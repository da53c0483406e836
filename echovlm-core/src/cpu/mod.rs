//! The CPU fast path: linear-layer weights packed in host memory (f32, bf16, or int8 / int4
//! with per-block scales) and the kernels that multiply them.
//!
//! Decoding one token multiplies a vector by every weight matrix once, so its speed is set by
//! how fast weights stream from memory. Burn's flex backend runs matrix-vector products far
//! below that and has no bf16 or int8 kernels that do not dequantize the whole matrix first.
//! The kernels here read each weight once, convert it in registers and accumulate in f32, on
//! every core:
//!
//! * f32 weights are stored in panels of 32 rows, column by column (`packed::Data::F32`): the
//!   layout one kernel per instruction set reads for every product. It keeps up to 8 activation
//!   rows times the panel's 32 outputs in registers, broadcasts one activation per row and
//!   column from the rows as they are, and loads the panel's 32 weights of that column with
//!   two contiguous loads: no packing per call, no horizontal sums. Decode runs it in one pass
//!   over the weights; prompts in blocks of 256 activation rows and 512 columns, so that the
//!   block's activations stay in L2 while every panel of a task meets them;
//! * bf16 weights are stored in panels of 32 rows too, by column pairs (`packed::Data::Bf16`):
//!   one 512-bit load holds 16 rows of two columns. Every bf16 product rounds the activations
//!   to bf16 (as a bf16 model computes) and, where the CPU has AVX512_BF16, multiplies the
//!   stored pairs with broadcast activation pairs on `vdpbf16ps`: twice the f32 rate, without
//!   widening, for decode as for prompts. Elsewhere the kernels widen the pairs in registers
//!   (a shift for the even column, a mask for the odd one) and multiply in f32;
//! * int8 weights are stored in panels of 32 rows too, in records of 64 columns
//!   (`packed::Data::Int8`: the 32 rows' scales, then 64 columns of 32 weights in quads of 4
//!   columns). Products quantise the activation rows to int8 per block of 64 and sum each
//!   block's products exactly in integers: where the CPU has AVX-512 VNNI, one `vpdpbusd`
//!   multiplies 16 rows of a quad as they are stored with four broadcast activations (64
//!   multiply-adds), for decode and prompts alike, the records streaming through the driver f32
//!   panels use. Elsewhere decode widens the weights in registers and sums the integer
//!   products in f32, exactly, so every kernel gives the same bits; prompt-sized products
//!   widen each tile of 128 rows once into f32 panels and run the f32 kernel on the quantised
//!   activations;
//! * int4 weights with `m ≤ SMALL_M` rows of activations (decode, small batches): one pass
//!   over the weights, each weight row multiplied in integers with every activation row
//!   quantised to int8 per block of 32 (AVX2, or the portable loop); larger `m`: tiles of 128
//!   rows widened to f32 panels, as for int8.
//!
//! Products that read the same input run together: [`PackedWeight::matmul_parts`] multiplies
//! several matrices (a layer's query, key and value projections) in one pass over the thread
//! pool, and [`PackedWeight::swiglu`] computes a SwiGLU MLP's `silu(x·Gᵀ) ⊙ (x·Uᵀ)` with each
//! task multiplying the same group of panels of both matrices into per-thread scratch, so
//! that neither `[m, rows]` product is stored. Both give the separate products' values bit for
//! bit.
//!
//! Beside the products, two more kernels serve the long sequences of prompts and images:
//! tiled attention over host buffers ([`HostAttention`]: online softmax, no full score matrix,
//! causal tiles skipped, prompts' products on the f32 panel kernel) and the element-wise
//! activations ([`scaled_silu`], [`silu_mul`]), all on one vectorised exponential, with the
//! row-wise RMSNorm ([`rms_norm`]) and per-row mix of two branches ([`mix_rows`]).
//!
//! Only [`crate::Linear`] and [`crate::backend`] use this module, and only on the flex device;
//! every other backend takes Burn's own operations. `tests/cpu_kernels.rs` pins the kernels to a plain
//! reference.
//!
//! One concept per file: `error` (the error type and size checks), `aligned` (aligned and
//! huge-page buffers), `attention` (tiled attention), `elementwise` (the exponential and the
//! activations), `format` (storage formats, their quantisation, and the int8 activations
//! of int8 and int4 decode products), `packed` (the packed
//! matrix), `select` (which kernel runs), `threads` (the size of the thread pool), `gemm` (the products, dispatching to `kernels`: one
//! file per instruction set; the `gemm` crate serves only the attention tiles).
//!
//! # Choosing the kernel
//!
//! The kernel is chosen once per process ([`active_kernel`]): the fastest one the CPU runs,
//! unless the environment variable [`KERNEL_ENV`] (`ECHOVLM_CPU_KERNEL`) names one of
//! `portable`, `avx2`, `avx512`, `avx512bf16` or `auto`. A kernel the CPU lacks is never run:
//! asking for one falls back to the fastest supported kernel below it (AVX512_BF16 → AVX-512 →
//! AVX2 → portable) and says so
//! once on standard error; an unknown value falls back to `auto` the same way.

mod aligned;
mod attention;
mod elementwise;
mod error;
mod format;
mod gemm;
mod kernels;
mod packed;
mod select;
mod threads;

pub use attention::{BLOCK_KV, BLOCK_Q, HostAttention, PACK_MIN_QUERIES};
pub use elementwise::{
    mix_rows, mix_rows_with, rms_norm, rms_norm_with, scaled_silu, scaled_silu_with, silu_mul,
    silu_mul_with,
};
pub use error::CpuError;
pub use format::{INT4_GROUP, INT8_BLOCK, WeightFormat};
pub use gemm::SMALL_M;
pub use packed::PackedWeight;
pub use select::{KERNEL_ENV, Kernel, active_kernel};
pub use threads::{on_pool, physical_cores, set_threads};
