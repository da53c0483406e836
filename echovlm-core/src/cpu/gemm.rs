//! The products: one pass of matrix-vector kernels over the weights for a few activation rows,
//! tiled `gemm` calls beyond.

use rayon::prelude::*;

use super::aligned::Aligned;
use super::error::{check_len, checked_bytes};
use super::format::{INT4_GROUP, INT4_GROUP_BYTES, QuantizedRows};
use super::kernels::{self, Dots};
use super::packed::{Data, INT8_RECORD, INT8_SCALES, PANEL, PackedWeight, record_scales};
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
        let kernel = resolve_kernel(kernel, Kernel::is_supported);
        if let Data::F32(w) = &self.data {
            let layout = Layout {
                kcols: self.cols,
                xcol: 1,
                wcol: PANEL,
            };
            self.panel_product(kernels::panel_f32(kernel), layout, w, x, self.cols, m, y);
            return Ok(());
        }
        if let Data::Bf16(w) = &self.data {
            return self.bf16_product(kernel, w, x, m, y);
        }
        if let (Data::Int8(w), true) = (&self.data, m <= SMALL_M) {
            // a column's 32 weights widened and scaled in registers; prompt-sized products
            // widen tiles once (below) and run the f32 kernel, which keeps 8 rows in registers
            let blocks = self.cols.div_ceil(INT8_BLOCK);
            let layout = Layout {
                kcols: blocks,
                xcol: INT8_BLOCK,
                wcol: INT8_RECORD,
            };
            // activation rows of whole blocks (the padded columns meet zero weights)
            let stride = blocks * INT8_BLOCK;
            let padded;
            let x = if stride == self.cols {
                x
            } else {
                padded = padded_rows(x, m, self.cols, stride, |v| v)?;
                &padded[..]
            };
            self.panel_product(kernels::panel_int8(kernel), layout, w, x, stride, m, y);
            return Ok(());
        }
        if m <= SMALL_M {
            self.matvec(Dots::new(kernel), x, m, y)
        } else {
            self.tiled_gemm(kernel, x, m, y)
        }
    }

    /// bf16 weights (stored in panels of column pairs, see `Data::Bf16`) times `m` activation
    /// rows, on the panel kernels of `kernel` (already resolved against the CPU): decode
    /// (`m ≤ SMALL_M`) multiplies the f32 activations as they are; prompt-sized products round
    /// them to bf16 (as a bf16 model computes) and run on `vdpbf16ps` where the CPU has
    /// AVX512_BF16, else in f32 on the same rounded values. `x` is `m · cols` long and `y`
    /// `m · rows` (checked by the caller).
    fn bf16_product(
        &self,
        kernel: Kernel,
        w: &[u16],
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), CpuError> {
        let cols = self.cols;
        let pairs = cols.div_ceil(2);
        let layout = Layout {
            kcols: pairs,
            xcol: 2,
            wcol: kernels::PAIR,
        };
        // activation rows of a whole number of pairs (an odd last column meets zero weights)
        let stride = 2 * pairs;
        let f = kernels::panel_bf16(kernel);
        if m <= SMALL_M {
            let padded;
            let x = if stride == cols {
                x
            } else {
                padded = padded_rows(x, m, cols, stride, |v| v)?;
                &padded[..]
            };
            self.panel_product(f, layout, w, x, stride, m, y);
        } else if let Some(dot) = kernels::panel_bf16_dot(kernel) {
            let xb = padded_rows(x, m, cols, stride, |v| half::bf16::from_f32(v).to_bits())?;
            self.panel_product(dot, layout, w, &xb, stride, m, y);
        } else {
            let rounded = padded_rows(x, m, cols, stride, |v| half::bf16::from_f32(v).to_f32())?;
            self.panel_product(f, layout, w, &rounded, stride, m, y);
        }
        Ok(())
    }

    /// Panels of weights (f32, bf16 pairs or int8 records, as `layout` says) times `m`
    /// activation rows (`ldx` apart), on the panel kernel `f` (resolved against the CPU).
    ///
    /// A task multiplies a block of up to [`PANEL_MC`] activation rows with a group of
    /// panels, [`PANEL_KC`] activation values at a time (all of them for `m ≤ SMALL_M`): the
    /// block's `PANEL_MC · PANEL_KC` activations (512 KiB in f32) stay in L2 while every panel of
    /// the group meets them, and each panel's weights of those columns stay in L1/L2 while all
    /// of the block's rows meet them. Nothing is packed per call. `x` holds `m` rows of
    /// `layout.kcols · layout.xcol` values `ldx` apart, and `y` is `m · rows`.
    #[allow(clippy::too_many_arguments)] // the kernel, its layout and the operands
    fn panel_product<X: Sync, W: Sync>(
        &self,
        f: Panel<X, W>,
        layout: Layout,
        w: &[W],
        x: &[X],
        ldx: usize,
        m: usize,
        y: &mut [f32],
    ) {
        let rows = self.rows;
        let panels = rows.div_ceil(PANEL);
        assert!(
            layout.kcols * layout.xcol <= ldx
                && x.len() >= m * ldx
                && y.len() == m * rows
                && w.len() >= panels * layout.kcols * layout.wcol,
            "panel product lengths"
        );
        let threads = rayon::current_num_threads().max(1);
        let (kc, mc, group) = if m <= SMALL_M {
            // one pass over the weights: about eight groups per thread to balance
            (layout.kcols, m, panels.div_ceil(threads * 8).clamp(1, 32))
        } else {
            (PANEL_KC / layout.xcol, PANEL_MC, PANEL_GROUP)
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
                    layout,
                    &x[i0 * ldx..],
                    ldx,
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
        let macs = rows.saturating_mul(self.cols).saturating_mul(m);
        if threads == 1 || tasks == 1 || macs < PARALLEL_MIN_MACS {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    /// One pass over int4 weights; every weight row is dotted with all `m` activation rows,
    /// quantised to int8 first.
    /// `x` is `m · cols` long and `y` `m · rows` (checked by the caller).
    fn matvec(&self, dots: Dots, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let x = QuantizedRows::new(x, m, self.cols)?;
        let threads = rayon::current_num_threads().max(1);
        // enough chunks to balance, each large enough to stream well
        let chunk = (self.rows.div_ceil(threads * 8)).clamp(8, 1024);
        let work = |(ci, dst): (usize, &mut [f32])| {
            let r0 = ci * chunk;
            for (i, d) in dst.chunks_exact_mut(m).enumerate() {
                self.dot_row(dots, r0 + i, &x, m, d);
            }
        };
        // waking the thread pool costs tens of microseconds: small products stay on this thread
        let macs = self.rows.saturating_mul(self.cols).saturating_mul(m);
        let run = |out: &mut [f32]| {
            if threads == 1 || macs < PARALLEL_MIN_MACS {
                out.chunks_mut(chunk * m).enumerate().for_each(work);
            } else {
                out.par_chunks_mut(chunk * m).enumerate().for_each(work);
            }
        };
        if m == 1 {
            // one activation row: the [rows, 1] results are y as it is laid out
            run(y);
            return Ok(());
        }
        let mut out = vec![0f32; y.len()];
        run(&mut out);
        // [rows, m] -> [m, rows]
        for (r, vals) in out.chunks_exact(m).enumerate() {
            for (mi, &v) in vals.iter().enumerate() {
                y[mi * self.rows + r] = v;
            }
        }
        Ok(())
    }

    /// Row `r` of int4 weights dotted with the `m` quantised rows of `x` into `out` (`m`
    /// long).
    fn dot_row(&self, dots: Dots, r: usize, x: &QuantizedRows, m: usize, out: &mut [f32]) {
        let Data::Int4 { q, scales } = &self.data else {
            unreachable!("matvec runs int4 weights only")
        };
        let g = self.cols.div_ceil(INT4_GROUP);
        let gb = g * INT4_GROUP_BYTES;
        // SAFETY: `dots` holds kernels the CPU supports (`Dots::new` after `resolve_kernel`);
        // the weight slices are one row's groups and scales; the kernel asserts the lengths of
        // `x` and `out`.
        unsafe {
            (dots.int4)(
                &q[r * gb..(r + 1) * gb],
                &scales[r * g..(r + 1) * g],
                x,
                m,
                out,
            )
        }
    }

    /// Prompt-sized products of int8 and int4 weights: the weight rows are split into tiles
    /// of 128, one per task on the thread pool; each task widens its tile once into a
    /// per-thread scratch in the f32 panel layout and multiplies it with every activation row on
    /// the panel kernel, as `panel_product` does for f32 weights.
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
        let layout = Layout {
            kcols: cols,
            xcol: 1,
            wcol: PANEL,
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
                if let Data::Int8(w) = &self.data {
                    // the tile's int8 panels widened and scaled record by record
                    let blocks = cols.div_ceil(INT8_BLOCK);
                    let first = r0 / PANEL;
                    for (pi, panel) in panels
                        .chunks_exact_mut(cols * PANEL)
                        .take(n.div_ceil(PANEL))
                        .enumerate()
                    {
                        widen_int8_panel(&w[(first + pi) * blocks * INT8_RECORD..], cols, panel);
                    }
                } else {
                    // the tile's rows widened into the panel layout, WIDEN_ROWS rows at a time
                    // so that each column's values land in one contiguous run
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
                }
                for i0 in (0..m).step_by(PANEL_MC) {
                    let mm = PANEL_MC.min(m - i0);
                    // SAFETY: the kernel suits the CPU; rows i0..i0 + mm of y at columns
                    // r0..r0 + n (this tile's) lie inside y and no other task writes them.
                    unsafe {
                        panel_block(
                            f,
                            layout,
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

/// A panel kernel: `(x, ldx, m, w, kc, y, ldy, n, accumulate)` as [`kernels::PanelF32`]
/// describes, for activations of type `X` and weights of type `W`.
type Panel<X, W> = unsafe fn(&[X], usize, usize, &[W], usize, *mut f32, usize, usize, bool);

/// How a panel kernel's columns map to the operands: `kcols` kernel columns (matrix columns,
/// or column pairs), each `xcol` activation values and `wcol` weight values of a panel.
#[derive(Clone, Copy)]
struct Layout {
    kcols: usize,
    xcol: usize,
    wcol: usize,
}

/// `mm` activation rows (`x`, `ldx` apart) times the panels `ps` of `w` (in `layout`; its
/// first panel's row 0 is the matrix row `y` points at, and `valid` rows are real), `kc`
/// kernel columns per pass, into `y` (rows `ldy` apart): the first pass stores, the others
/// add.
///
/// # Safety
/// `f` suits the CPU, and `y` is writable at `i · ldy + j` for `i < mm` and every real row `j`
/// of the panels `ps`, with no other thread touching those values. (The slices are checked by
/// the kernel.)
#[allow(clippy::too_many_arguments)]
unsafe fn panel_block<X, W>(
    f: Panel<X, W>,
    layout: Layout,
    x: &[X],
    ldx: usize,
    mm: usize,
    w: &[W],
    ps: std::ops::Range<usize>,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    valid: usize,
) {
    let Layout { kcols, xcol, wcol } = layout;
    for k0 in (0..kcols).step_by(kc) {
        let kl = kc.min(kcols - k0);
        for p in ps.clone() {
            // SAFETY: as the caller guarantees; the kernel checks the slices.
            unsafe {
                f(
                    &x[k0 * xcol..],
                    ldx,
                    mm,
                    &w[(p * kcols + k0) * wcol..],
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

/// One panel of int8 records (`w` from the panel's first record) widened and scaled into the
/// f32 panel layout (`out`: `cols` columns of 32).
fn widen_int8_panel(w: &[u8], cols: usize, out: &mut [f32]) {
    for (b, rec) in w
        .chunks_exact(INT8_RECORD)
        .take(cols.div_ceil(INT8_BLOCK))
        .enumerate()
    {
        let s = record_scales(rec);
        let c0 = b * INT8_BLOCK;
        let weights = rec[INT8_SCALES..].chunks_exact(PANEL);
        for (col, q) in out[c0 * PANEL..]
            .chunks_exact_mut(PANEL)
            .zip(weights)
            .take(cols - c0)
        {
            for ((o, &q), &s) in col.iter_mut().zip(q).zip(&s) {
                *o = q as i8 as f32 * s;
            }
        }
    }
}

/// The `m` rows of `x` (`cols` each) mapped by `f` (to f32, or to bf16 bits) and zero-padded
/// to `stride` values each (on the thread pool for prompt-sized products only: waking it would
/// cost a decode step more than the copy).
fn padded_rows<E: Copy + Default + Send>(
    x: &[f32],
    m: usize,
    cols: usize,
    stride: usize,
    f: impl Fn(f32) -> E + Sync,
) -> Result<Aligned<E>, CpuError> {
    let size = std::mem::size_of::<E>();
    let mut out = Aligned::<E>::zeroed(checked_bytes("activations", m, stride, size)? / size)?;
    let row = |(d, s): (&mut [E], &[f32])| {
        for (o, &v) in d.iter_mut().zip(s) {
            *o = f(v);
        }
    };
    if m > SMALL_M {
        out.par_chunks_mut(stride)
            .zip(x.par_chunks(cols))
            .for_each(row);
    } else {
        out.chunks_mut(stride).zip(x.chunks(cols)).for_each(row);
    }
    Ok(out)
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
