//! The products: one pass of matrix-vector kernels over the weights for a few activation rows,
//! tiled `gemm` calls beyond.

use rayon::prelude::*;

use super::aligned::Aligned;
use super::error::{check_len, checked_bytes};
use super::format::{INT4_GROUP, INT4_GROUP_BYTES, QuantizedRows};
use super::kernels::{self, Dots};
use super::packed::{Data, PANEL, PackedWeight};
use super::select::{Kernel, active_kernel, resolve_kernel};
use super::{CpuError, INT8_BLOCK};

/// Activation rows up to which the matrix-vector kernels run (beyond: tiled gemm).
pub const SMALL_M: usize = 8;

/// Activation rows per task of the f32 panel product.
const PANEL_MC: usize = 256;
/// Columns per pass of the f32 panel product (prompt-sized products).
const PANEL_KC: usize = 512;
/// Panels per task of the f32 panel product (prompt-sized products).
const PANEL_GROUP: usize = 4;

/// Weight rows widened together into the panel layout (one 32-byte run per column).
const WIDEN_ROWS: usize = 8;

/// Multiply-accumulates below which a matrix-vector product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

impl PackedWeight {
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
        if let Data::F32(w) = &self.data {
            self.panel_product(resolve_kernel(kernel, Kernel::is_supported), w, x, m, y);
            return Ok(());
        }
        if m <= SMALL_M {
            let dots = Dots::new(resolve_kernel(kernel, Kernel::is_supported), self.cols);
            self.matvec(dots, x, m, y)
        } else {
            self.tiled_gemm(resolve_kernel(kernel, Kernel::is_supported), x, m, y)
        }
    }

    /// f32 weights (stored in panels, see `Data::F32`) times `m` activation rows, on the
    /// panel kernel of `kernel` (already resolved against the CPU).
    ///
    /// A task multiplies a block of up to [`PANEL_MC`] activation rows with a group of
    /// panels, [`PANEL_KC`] columns at a time (columns at once for `m ≤ SMALL_M`): the block's
    /// `PANEL_MC · PANEL_KC` activations (512 KiB) stay in L2 while every panel of the group meets
    /// them, and each panel's `PANEL_KC · 32` weights stay in L1/L2 while all of the block's
    /// rows meet them. Nothing is packed per call. `x` is `m · cols` long and `y` `m · rows`
    /// (checked by the caller).
    fn panel_product(&self, kernel: Kernel, w: &[f32], x: &[f32], m: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(
            x.len() == m * cols
                && y.len() == m * rows
                && w.len() >= rows.div_ceil(PANEL) * PANEL * cols,
            "panel product lengths"
        );
        let f = kernels::panel_f32(kernel);
        let panels = rows.div_ceil(PANEL);
        let threads = rayon::current_num_threads().max(1);
        let (kc, mc, group) = if m <= SMALL_M {
            // one pass over the weights: about eight groups per thread to balance
            (cols, m, panels.div_ceil(threads * 8).clamp(1, 32))
        } else {
            (PANEL_KC, PANEL_MC, PANEL_GROUP)
        };
        let groups = panels.div_ceil(group);
        let tasks = m.div_ceil(mc) * groups;
        let y_ptr = SendPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let (i0, p0) = (t / groups * mc, t % groups * group);
            let mm = mc.min(m - i0);
            // SAFETY: the kernel was resolved against the CPU's features; rows i0..i0 + mm of
            // y, at the columns of panels p0.. (rows of the matrix), lie inside y ([m, rows],
            // asserted above) in a block no other task writes.
            unsafe {
                panel_block(
                    f,
                    &x[i0 * cols..],
                    cols,
                    mm,
                    w,
                    p0..(p0 + group).min(panels),
                    kc,
                    y_ptr.get().add(i0 * rows),
                    rows,
                    rows,
                )
            }
        };
        // waking the thread pool costs tens of microseconds: small products stay on this thread
        let macs = rows.saturating_mul(cols).saturating_mul(m);
        if threads == 1 || tasks == 1 || macs < PARALLEL_MIN_MACS {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    /// One pass over the weights; every weight row is dotted with all `m` activation rows
    /// (quantised to int8 first for int4 weights).
    /// `x` is `m · cols` long and `y` `m · rows` (checked by the caller).
    fn matvec(&self, dots: Dots, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (aligned, quantized);
        let x = if let Data::Int4 { .. } = self.data {
            quantized = QuantizedRows::new(x, m, self.cols)?;
            Input::Int8(&quantized)
        } else {
            aligned = {
                let mut a = Aligned::from_slice(x)?;
                if matches!(self.data, Data::Bf16(_)) && dots.bf16_pairs {
                    kernels::pair_split(&mut a, self.cols);
                }
                a
            };
            Input::F32(&aligned)
        };
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

    /// Row `r` dotted with the `m` rows of `x` into `out` (`m` long).
    fn dot_row(&self, dots: Dots, r: usize, x: Input, m: usize, out: &mut [f32]) {
        let c = self.cols;
        assert!(out.len() >= m, "dot_row lengths");
        if let Input::F32(x) = x {
            assert!(x.len() >= m * c, "dot_row lengths");
        }
        // SAFETY: `dots` holds kernels the CPU supports (`Dots::new` after `resolve_kernel`),
        // int8 vector kernels only for `c` a multiple of INT8_BLOCK; each weight slice is one
        // row of `c` values (with `c / INT8_BLOCK` scales for int8, and `c / INT4_GROUP` groups
        // and scales, rounded up, for int4); f32 `x` and `out` are at least `m · c` and `m`
        // long (asserted above), quantised `x` holds `m` rows (the kernel asserts it).
        unsafe {
            match (&self.data, x) {
                (Data::Bf16(w), Input::F32(x)) => (dots.bf16)(&w[r * c..(r + 1) * c], x, m, c, out),
                (Data::Int8 { q, scales }, Input::F32(x)) => {
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
                (Data::Int4 { q, scales }, Input::Int8(x)) => {
                    let g = c.div_ceil(INT4_GROUP);
                    let gb = g * INT4_GROUP_BYTES;
                    (dots.int4)(
                        &q[r * gb..(r + 1) * gb],
                        &scales[r * g..(r + 1) * g],
                        x,
                        m,
                        out,
                    )
                }
                _ => unreachable!("matvec quantises the activations exactly for int4 weights"),
            }
        }
    }

    /// Prompt-sized products of bf16, int8 and int4 weights: the weight rows are split into
    /// tiles of 128, one per task on the thread pool; each task widens its tile once into a
    /// per-thread scratch in the f32 panel layout and multiplies it with every activation row on
    /// the panel kernel, as `panel_product` does for f32 weights.
    ///
    /// bf16 weights meet the activations rounded to bf16 on every kernel: on
    /// [`Kernel::Avx512Bf16`] (which `kernel`, already resolved, names only where the CPU has
    /// it) with `vdpbf16ps` on the bf16 rows as stored, elsewhere widened to f32 panels.
    /// `x` is `m · cols` long and `y` `m · rows` (checked by the caller).
    fn tiled_gemm(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), CpuError> {
        const TILE: usize = 128;
        let rows = self.rows;
        let cols = self.cols;
        assert!(
            x.len() == m * cols && y.len() == m * rows,
            "tiled_gemm lengths"
        );
        let tiles = rows.div_ceil(TILE);
        let y_ptr = SendPtr(y.as_mut_ptr());
        let rounded;
        let x = if let Data::Bf16(w) = &self.data {
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Avx512Bf16 {
                // rows padded to whole vectors of 32 bf16, zeros past `cols`
                let stride = cols.div_ceil(32) * 32;
                let xb = bf16_rows(x, m, cols, stride)?;
                // 64 rows of a 3584-wide matrix (448 KiB) stay in L2 while every activation
                // row meets them
                const BF16_TILE: usize = 64;
                (0..rows.div_ceil(BF16_TILE)).into_par_iter().for_each(|t| {
                    let r0 = t * BF16_TILE;
                    let n = BF16_TILE.min(rows - r0);
                    // SAFETY: the kernel was resolved against the CPU's features; the tile
                    // writes y[i · rows + r0 + j] for i < m, j < n: inside y ([m, rows],
                    // asserted above) and in columns no other tile writes.
                    unsafe {
                        kernels::gemm_bf16(
                            &xb,
                            stride,
                            &w[r0 * cols..(r0 + n) * cols],
                            cols,
                            y_ptr.get().add(r0),
                            rows,
                        )
                    }
                });
                return Ok(());
            }
            let _ = (kernel, w);
            // the same rounding, then the f32 product below
            rounded = x
                .par_iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect::<Vec<f32>>();
            &rounded[..]
        } else {
            x
        };
        // at most `rows · cols` f32 (plus padding to whole panels): fits, as checked when the
        // matrix was packed
        let f = kernels::panel_f32(kernel);
        let panels_len = TILE * cols;
        (0..tiles).into_par_iter().for_each_init(
            || (vec![0f32; WIDEN_ROWS * cols], vec![0f32; panels_len]),
            |(wide, panels), t| {
                let r0 = t * TILE;
                let n = TILE.min(rows - r0);
                // the tile's rows widened into the panel layout, WIDEN_ROWS rows at a time so
                // that each column's values land in one contiguous run
                for j0 in (0..TILE).step_by(WIDEN_ROWS) {
                    let valid = n.saturating_sub(j0).min(WIDEN_ROWS);
                    for j in 0..WIDEN_ROWS {
                        let row = &mut wide[j * cols..(j + 1) * cols];
                        if j < valid {
                            self.widen_row(r0 + j0 + j, row);
                        } else {
                            row.fill(0.0);
                        }
                    }
                    let panel = &mut panels[j0 / PANEL * cols * PANEL..];
                    let lane = j0 % PANEL;
                    for c in 0..cols {
                        let dst = &mut panel[c * PANEL + lane..c * PANEL + lane + WIDEN_ROWS];
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = wide[j * cols + c];
                        }
                    }
                }
                for i0 in (0..m).step_by(PANEL_MC) {
                    let mm = PANEL_MC.min(m - i0);
                    // SAFETY: the kernel suits the CPU; rows i0..i0 + mm of y at columns
                    // r0..r0 + n (this tile's) lie inside y and no other task writes them.
                    unsafe {
                        panel_block(
                            f,
                            &x[i0 * cols..],
                            cols,
                            mm,
                            panels,
                            0..n.div_ceil(PANEL),
                            PANEL_KC,
                            y_ptr.get().add(i0 * rows + r0),
                            rows,
                            n,
                        )
                    }
                }
            },
        );
        Ok(())
    }
}

/// `mm` activation rows (`x`, `cols` apart) times the panels `ps` of `w` (f32 panel layout,
/// `cols` columns; its first panel's row 0 is the matrix row `y` points at, and `valid` rows
/// are real), `kc` columns per pass, into `y` (rows `ldy` apart): the first pass stores, the
/// others add.
///
/// # Safety
/// `f` suits the CPU, and `y` is writable at `i · ldy + j` for `i < mm` and every real row `j`
/// of the panels `ps`, with no other thread touching those values. (The slices are checked by
/// the kernel.)
#[allow(clippy::too_many_arguments)]
unsafe fn panel_block(
    f: kernels::PanelF32,
    x: &[f32],
    cols: usize,
    mm: usize,
    w: &[f32],
    ps: std::ops::Range<usize>,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    valid: usize,
) {
    for k0 in (0..cols).step_by(kc) {
        let kl = kc.min(cols - k0);
        for p in ps.clone() {
            // SAFETY: as the caller guarantees; the kernel checks the slices.
            unsafe {
                f(
                    &x[k0..],
                    cols,
                    mm,
                    &w[(p * cols + k0) * PANEL..],
                    kl,
                    y.add(p * PANEL),
                    ldy,
                    PANEL.min(valid - p * PANEL),
                    k0 > 0,
                )
            }
        }
    }
}

/// The `m` rows of `x` (`cols` each) rounded to bf16 (to nearest, ties to even), each row
/// zero-padded to `stride` values.
fn bf16_rows(x: &[f32], m: usize, cols: usize, stride: usize) -> Result<Aligned<u16>, CpuError> {
    let mut out = Aligned::<u16>::zeroed(checked_bytes("bf16 activations", m, stride, 2)? / 2)?;
    out.par_chunks_mut(stride)
        .zip(x.par_chunks(cols))
        .for_each(|(d, s)| {
            for (o, &v) in d.iter_mut().zip(s) {
                *o = half::bf16::from_f32(v).to_bits();
            }
        });
    Ok(out)
}

/// The activations of a matrix-vector product: f32 rows, or their int8 form for int4 weights.
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    Int8(&'a QuantizedRows),
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
