//! The products: one pass of matrix-vector kernels over the weights for a few activation rows,
//! tiled `gemm` calls beyond.

use rayon::prelude::*;

use super::aligned::Aligned;
use super::elementwise::silu_mul_with;
use super::error::{check_len, checked_bytes};
use super::format::{
    INT4_GROUP, INT4_GROUP_BYTES, Int8Block, QuantizedRows, WeightFormat, int8_blocks,
    int8_dequantized,
};
use super::kernels::{self, Dots};
use super::packed::{
    Data, INT8_QUAD, INT8_RECORD, INT8_SCALES, PANEL, PackedWeight, int8_index, record_scales,
};
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
            let layout = f32_layout(self.cols);
            self.panel_product(kernels::panel_f32(kernel), layout, w, x, self.cols, m, y);
            return Ok(());
        }
        if let Data::Bf16(w) = &self.data {
            return self.bf16_product(kernel, w, x, m, y);
        }
        if let Data::Int8(w) = &self.data {
            if m <= SMALL_M || kernels::int8_in_integers(kernel) {
                // the activations quantised to int8 per block, each block's products summed
                // in integers
                let (layout, xq) = int8_operand(x, m, self.cols)?;
                let f = kernels::panel_int8(kernel);
                self.panel_product(f, layout, w, &xq, layout.kcols, m, y);
            } else {
                // prompt-sized, without integer products: the same quantised activations as
                // f32 values times tiles widened once to f32 panels, on the f32 kernel, which
                // keeps 8 rows in registers
                let xq = int8_dequantized(x, m, self.cols)?;
                self.tiled_gemm(kernel, &xq, m, y)?;
            }
            return Ok(());
        }
        if m <= SMALL_M {
            self.matvec(Dots::new(kernel), x, m, y)
        } else {
            self.tiled_gemm(kernel, x, m, y)
        }
    }

    /// Several matrices of one format and input width times the same activations:
    /// `ys[i][m, parts[i].rows] = x · parts[i]ᵀ` (`x` row-major `[m, cols]`), on the
    /// [`active_kernel`]. The values are those of each part's [`matmul`](Self::matmul), bit for
    /// bit; f32 and bf16 weights (and int8 ones for `m ≤ SMALL_M`, or on `vpdpbusd`) run as one
    /// pass over the thread pool with the activations prepared once, where separate products
    /// would each wake the pool and wait for its slowest task (a layer's query, key and value
    /// projections).
    ///
    /// Fails with [`CpuError::Shape`] when `ys` does not hold one output per part or the parts
    /// differ in format or input width, and otherwise as [`matmul`](Self::matmul) does.
    pub fn matmul_parts(
        parts: &[&PackedWeight],
        x: &[f32],
        m: usize,
        ys: &mut [&mut [f32]],
    ) -> Result<(), CpuError> {
        Self::matmul_parts_with(active_kernel(), parts, x, m, ys)
    }

    /// [`matmul_parts`](Self::matmul_parts) with `kernel` (or, if the CPU cannot run it, the
    /// fastest supported kernel below it).
    pub fn matmul_parts_with(
        kernel: Kernel,
        parts: &[&PackedWeight],
        x: &[f32],
        m: usize,
        ys: &mut [&mut [f32]],
    ) -> Result<(), CpuError> {
        let Some(first) = parts.first() else {
            return match ys.len() {
                0 => Ok(()),
                n => Err(CpuError::Shape {
                    what: "parts and outputs",
                    dims: vec![0, n],
                }),
            };
        };
        let (cols, format) = (first.cols, first.format());
        if ys.len() != parts.len() || parts.iter().any(|p| (p.cols, p.format()) != (cols, format)) {
            let mut dims = vec![parts.len(), ys.len()];
            dims.extend(parts.iter().map(|p| p.cols));
            return Err(CpuError::Shape {
                what: "parts of one format and input width, one output each (parts, outputs, \
                       input widths)",
                dims,
            });
        }
        check_len(
            "activations",
            checked_bytes("activations", m, cols, 4)? / 4,
            x.len(),
        )?;
        for (p, y) in parts.iter().zip(ys.iter()) {
            check_len(
                "output",
                checked_bytes("output", m, p.rows, 4)? / 4,
                y.len(),
            )?;
        }
        if m == 0 {
            return Ok(());
        }
        if cols == 0 {
            ys.iter_mut().for_each(|y| y.fill(0.0));
            return Ok(());
        }
        let kernel = resolve_kernel(kernel, Kernel::is_supported);
        fn jobs<'a, W>(
            parts: &[&'a PackedWeight],
            ys: &mut [&mut [f32]],
            m: usize,
            data: impl Fn(&'a Data) -> &'a [W],
        ) -> Vec<Job<'a, W>> {
            parts
                .iter()
                .zip(ys.iter_mut())
                .map(|(p, y)| Job::new(data(&p.data), p.rows, m, y))
                .collect()
        }
        match format {
            WeightFormat::F32 => {
                let jobs = jobs(parts, ys, m, |d| match d {
                    Data::F32(w) => &w[..],
                    _ => unreachable!("checked: one format"),
                });
                panel_products(
                    kernels::panel_f32(kernel),
                    f32_layout(cols),
                    &jobs,
                    x,
                    cols,
                    m,
                    cols,
                );
            }
            WeightFormat::Bf16 => {
                let (layout, stride) = bf16_layout(cols);
                let jobs = jobs(parts, ys, m, |d| match d {
                    Data::Bf16(w) => &w[..],
                    _ => unreachable!("checked: one format"),
                });
                match Bf16Operand::new(kernel, x, m, cols)? {
                    Bf16Operand::F32(f, xs) => {
                        panel_products(f, layout, &jobs, &xs, stride, m, cols)
                    }
                    Bf16Operand::Bits(dot, xb) => {
                        panel_products(dot, layout, &jobs, &xb, stride, m, cols)
                    }
                }
            }
            WeightFormat::Int8 if m <= SMALL_M || kernels::int8_in_integers(kernel) => {
                let (layout, xq) = int8_operand(x, m, cols)?;
                let jobs = jobs(parts, ys, m, |d| match d {
                    Data::Int8(w) => &w[..],
                    _ => unreachable!("checked: one format"),
                });
                let f = kernels::panel_int8(kernel);
                panel_products(f, layout, &jobs, &xq, layout.kcols, m, cols);
            }
            _ => {
                for (p, y) in parts.iter().zip(ys.iter_mut()) {
                    p.matmul_with(kernel, x, m, y)?;
                }
            }
        }
        Ok(())
    }

    /// The SwiGLU hidden layer of a gate and an up projection of the same input:
    /// `act[m, rows] = silu(x · Gᵀ) ⊙ (x · Uᵀ)`, with `self` as `G` and `up` as `U` (both
    /// `[rows, cols]` in one format, `x` row-major `[m, cols]`), on the [`active_kernel`].
    ///
    /// f32 and bf16 weights (and int8 ones for `m ≤ SMALL_M`, or on `vpdpbusd`) run as one pass
    /// over the thread pool: each task multiplies one block of activation rows with the same
    /// group of panels of both matrices into scratch that stays in cache, and writes only the
    /// activations. Neither product is stored whole, so a prompt's two `[m, rows]`
    /// intermediates are never allocated.
    /// The values are those of the two [`matmul`](Self::matmul)s and
    /// [`silu_mul`](super::silu_mul), bit for bit; the other formats compute it that way.
    ///
    /// Fails with [`CpuError::Shape`] when the two matrices differ in shape or format, and
    /// otherwise as [`matmul`](Self::matmul) does.
    pub fn swiglu(
        &self,
        up: &PackedWeight,
        x: &[f32],
        m: usize,
        act: &mut [f32],
    ) -> Result<(), CpuError> {
        self.swiglu_with(active_kernel(), up, x, m, act)
    }

    /// [`swiglu`](Self::swiglu) with `kernel` (or, if the CPU cannot run it, the fastest
    /// supported kernel below it).
    pub fn swiglu_with(
        &self,
        kernel: Kernel,
        up: &PackedWeight,
        x: &[f32],
        m: usize,
        act: &mut [f32],
    ) -> Result<(), CpuError> {
        if (self.rows, self.cols, self.format()) != (up.rows, up.cols, up.format()) {
            return Err(CpuError::Shape {
                what: "gate and up projections of one format (rows, cols; rows, cols)",
                dims: vec![self.rows, self.cols, up.rows, up.cols],
            });
        }
        let cols = self.cols;
        check_len(
            "activations",
            checked_bytes("activations", m, cols, 4)? / 4,
            x.len(),
        )?;
        check_len(
            "output",
            checked_bytes("output", m, self.rows, 4)? / 4,
            act.len(),
        )?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if cols == 0 {
            // silu(0) · 0
            act.fill(0.0);
            return Ok(());
        }
        let kernel = resolve_kernel(kernel, Kernel::is_supported);
        match (&self.data, &up.data) {
            (Data::F32(g), Data::F32(u)) => {
                let f = kernels::panel_f32(kernel);
                let weights = (&g[..], &u[..]);
                self.swiglu_panels(kernel, f, f32_layout(cols), weights, x, cols, m, act);
            }
            (Data::Bf16(g), Data::Bf16(u)) => {
                let (layout, stride) = bf16_layout(cols);
                let weights = (&g[..], &u[..]);
                match Bf16Operand::new(kernel, x, m, cols)? {
                    Bf16Operand::F32(f, xs) => {
                        self.swiglu_panels(kernel, f, layout, weights, &xs, stride, m, act)
                    }
                    Bf16Operand::Bits(dot, xb) => {
                        self.swiglu_panels(kernel, dot, layout, weights, &xb, stride, m, act)
                    }
                }
            }
            (Data::Int8(g), Data::Int8(u)) if m <= SMALL_M || kernels::int8_in_integers(kernel) => {
                let (layout, xq) = int8_operand(x, m, cols)?;
                let f = kernels::panel_int8(kernel);
                let weights = (&g[..], &u[..]);
                self.swiglu_panels(kernel, f, layout, weights, &xq, layout.kcols, m, act);
            }
            _ => {
                self.matmul_with(kernel, x, m, act)?;
                let mut u = vec![0f32; act.len()];
                up.matmul_with(kernel, x, m, &mut u)?;
                silu_mul_with(kernel, act, &u);
            }
        }
        Ok(())
    }

    /// The one-pass SwiGLU of [`swiglu_with`](Self::swiglu_with) on the panel kernel `f`: the
    /// gate's and the up projection's panels (`weights`, in `layout`) times `m` activation rows
    /// (`ldx` apart), scheduled as [`panel_product`](Self::panel_product) schedules one matrix.
    /// `act` is `m · rows` (checked by the caller).
    #[allow(clippy::too_many_arguments)] // the kernel, its layout and the operands
    fn swiglu_panels<X: Sync, W: Sync>(
        &self,
        kernel: Kernel,
        f: Panel<X, W>,
        layout: Layout,
        (g, u): (&[W], &[W]),
        x: &[X],
        ldx: usize,
        m: usize,
        act: &mut [f32],
    ) {
        let rows = self.rows;
        let panels = rows.div_ceil(PANEL);
        let need = panels * layout.kcols * layout.wcol;
        assert!(
            layout.kcols * layout.xcol <= ldx
                && x.len() >= m * ldx
                && act.len() == m * rows
                && g.len() >= need
                && u.len() >= need,
            "swiglu lengths"
        );
        let threads = rayon::current_num_threads().max(1);
        let Schedule { kc, mc, group } = Schedule::new(layout, m, panels, threads);
        let groups = panels.div_ceil(group);
        let tasks = m.div_ceil(mc) * groups;
        // the scratch rows of one task: the group's outputs of one activation row
        let width = group * PANEL;
        let act_ptr = SendPtr(act.as_mut_ptr());
        let task = |t: usize| {
            let (i0, p0) = (t / groups * mc, t % groups * group);
            let mm = mc.min(m - i0);
            let p1 = (p0 + group).min(panels);
            // the real rows from panel p0 on, and those of this group
            let valid = rows - p0 * PANEL;
            let n = valid.min((p1 - p0) * PANEL);
            let first = p0 * layout.kcols * layout.wcol;
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(scratch.len().max(2 * mc * width), 0.0);
                let (gs, us) = scratch.split_at_mut(mc * width);
                for (w, out) in [(g, &mut *gs), (u, &mut *us)] {
                    // SAFETY: the kernel was resolved against the CPU's features; `out` holds
                    // mm rows of `width` ≥ n values, this thread's own.
                    unsafe {
                        panel_block(
                            f,
                            layout,
                            &x[i0 * ldx..],
                            ldx,
                            mm,
                            &w[first..],
                            0..p1 - p0,
                            kc,
                            out.as_mut_ptr(),
                            width,
                            valid,
                        )
                    }
                }
                for i in 0..mm {
                    let gate = &mut gs[i * width..i * width + n];
                    silu_mul_with(kernel, gate, &us[i * width..i * width + n]);
                    // SAFETY: row i0 + i of act at the group's columns p0·PANEL.. (n of them)
                    // lies inside act ([m, rows], asserted above) and no other task writes it.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            act_ptr.get().add((i0 + i) * rows + p0 * PANEL),
                            n,
                        )
                    };
                    dst.copy_from_slice(gate);
                }
            });
        };
        // two products' multiply-accumulates
        let macs = rows.saturating_mul(self.cols).saturating_mul(m);
        run_tasks(tasks, macs.saturating_mul(2), task);
    }

    /// bf16 weights (stored in panels of column pairs, see `Data::Bf16`) times `m` activation
    /// rows, on the panel kernels of `kernel` (already resolved against the CPU): the
    /// activations are rounded to bf16 (as a bf16 model computes) and multiplied on `vdpbf16ps`
    /// where the CPU has AVX512_BF16, else in f32 on the same rounded values. `x` is `m · cols` long and `y`
    /// `m · rows` (checked by the caller).
    fn bf16_product(
        &self,
        kernel: Kernel,
        w: &[u16],
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), CpuError> {
        let (layout, stride) = bf16_layout(self.cols);
        match Bf16Operand::new(kernel, x, m, self.cols)? {
            Bf16Operand::F32(f, xs) => self.panel_product(f, layout, w, &xs, stride, m, y),
            Bf16Operand::Bits(dot, xb) => self.panel_product(dot, layout, w, &xb, stride, m, y),
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
        let job = Job::new(w, self.rows, m, y);
        panel_products(f, layout, &[job], x, ldx, m, self.cols);
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

    /// Prompt-sized products of int8 (without `vpdpbusd`; `x` then holds the quantised
    /// activations) and int4 weights: the weight rows are split into tiles
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
        let layout = f32_layout(cols);
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
    /// Matrix columns per kernel column (1 for f32, 2 for bf16 pairs, 64 for int8 records):
    /// what sets the columns of a pass.
    span: usize,
}

/// One matrix of a panel product: its panels (`w`), its rows, and its output (`m · rows`
/// values).
struct Job<'a, W> {
    w: &'a [W],
    rows: usize,
    y: SendPtr,
}

impl<'a, W> Job<'a, W> {
    /// The job of a matrix of `rows` rows times `m` activation rows into `y`.
    ///
    /// # Panics
    /// If `y` is not `m · rows` long.
    fn new(w: &'a [W], rows: usize, m: usize, y: &mut [f32]) -> Self {
        assert_eq!(y.len(), m * rows, "panel product output length");
        Self {
            w,
            rows,
            y: SendPtr(y.as_mut_ptr()),
        }
    }
}

/// Panels of weights (f32, bf16 pairs or int8 records, as `layout` says) of every job times the
/// same `m` activation rows (`ldx` apart, `cols` columns), on the panel kernel `f` (resolved
/// against the CPU), in one pass over the thread pool.
///
/// A task multiplies a block of up to [`PANEL_MC`] activation rows with a group of one job's
/// panels, [`PANEL_KC`] activation values at a time (all of them for `m ≤ SMALL_M`): the
/// block's `PANEL_MC · PANEL_KC` activations (512 KiB in f32) stay in L2 while every panel of
/// the group meets them, and each panel's weights of those columns stay in L1/L2 while all of
/// the block's rows meet them. Nothing is packed per call. `x` holds `m` rows of
/// `layout.kcols · layout.xcol` values `ldx` apart.
fn panel_products<X: Sync, W: Sync>(
    f: Panel<X, W>,
    layout: Layout,
    jobs: &[Job<'_, W>],
    x: &[X],
    ldx: usize,
    m: usize,
    cols: usize,
) {
    assert!(
        layout.kcols * layout.xcol <= ldx
            && x.len() >= m * ldx
            && jobs
                .iter()
                .all(|j| j.w.len() >= j.rows.div_ceil(PANEL) * layout.kcols * layout.wcol),
        "panel product lengths"
    );
    let threads = rayon::current_num_threads().max(1);
    let panels = jobs.iter().map(|j| j.rows.div_ceil(PANEL)).sum::<usize>();
    let Schedule { kc, mc, group } = Schedule::new(layout, m, panels, threads);
    let blocks = m.div_ceil(mc);
    // the first task of each job
    let mut starts = Vec::with_capacity(jobs.len());
    let mut tasks = 0;
    for j in jobs {
        starts.push(tasks);
        tasks += blocks * j.rows.div_ceil(PANEL).div_ceil(group);
    }
    let task = |t: usize| {
        let which = starts.partition_point(|&s| s <= t) - 1;
        let Job { w, rows, y } = &jobs[which];
        let (t, panels) = (t - starts[which], rows.div_ceil(PANEL));
        let groups = panels.div_ceil(group);
        let (i0, p0) = (t / groups * mc, t % groups * group);
        let mm = mc.min(m - i0);
        // SAFETY: the kernel was resolved against the CPU's features; rows i0..i0 + mm of the
        // job's y, at the columns of panels p0.. (rows of the matrix), lie inside y ([m, rows],
        // asserted by `Job::new`) in a block no other task writes.
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
                y.get().add(i0 * rows),
                *rows,
                *rows,
            )
        }
    };
    let rows = jobs.iter().map(|j| j.rows).sum::<usize>();
    run_tasks(tasks, rows.saturating_mul(cols).saturating_mul(m), task);
}

/// Runs `task` for every task index below `tasks`: on the thread pool, unless the pool has one
/// thread, there is one task, or the product's `macs` multiply-accumulates are too few to pay
/// for waking the pool (tens of microseconds), which a decode step would feel.
fn run_tasks(tasks: usize, macs: usize, task: impl Fn(usize) + Sync + Send) {
    if rayon::current_num_threads() <= 1 || tasks == 1 || macs < PARALLEL_MIN_MACS {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
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
    let Layout {
        kcols, xcol, wcol, ..
    } = layout;
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
        let n = INT8_BLOCK.min(cols - c0);
        for (t, quad) in rec[INT8_SCALES..]
            .chunks_exact(INT8_QUAD)
            .take(n.div_ceil(4))
            .enumerate()
        {
            for e in 0..4.min(n - 4 * t) {
                let col = &mut out[(c0 + 4 * t + e) * PANEL..][..PANEL];
                for (j, (o, &s)) in col.iter_mut().zip(&s).enumerate() {
                    *o = quad[int8_index(j, e)] as i8 as f32 * s;
                }
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

thread_local! {
    /// A thread's scratch for the one-pass SwiGLU (two blocks of outputs, kept between calls).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How the panel products split their work: `kc` kernel columns per pass, blocks of `mc`
/// activation rows and groups of `group` panels per task.
struct Schedule {
    kc: usize,
    mc: usize,
    group: usize,
}

impl Schedule {
    /// The split of `m` activation rows times `panels` panels over `threads` threads.
    fn new(layout: Layout, m: usize, panels: usize, threads: usize) -> Self {
        if m <= SMALL_M {
            // one pass over the weights: about eight groups per thread to balance
            Self {
                kc: layout.kcols,
                mc: m,
                group: panels.div_ceil(threads * 8).clamp(1, 32),
            }
        } else {
            // row blocks of near-equal height (a multiple of the kernels' 8-row step), so
            // that no block is a thin remainder: 442 rows are two blocks of 224 and 218, not
            // 256 and 186
            let blocks = m.div_ceil(PANEL_MC);
            Self {
                kc: (PANEL_KC / layout.span).max(1),
                mc: m.div_ceil(blocks).next_multiple_of(8),
                group: PANEL_GROUP,
            }
        }
    }
}

/// The layout of f32 panels of `cols` columns.
fn f32_layout(cols: usize) -> Layout {
    Layout {
        kcols: cols,
        xcol: 1,
        wcol: PANEL,
        span: 1,
    }
}

/// The layout of bf16 panels of `cols` columns (in pairs), and the activation row stride
/// they read (a whole number of pairs: an odd last column meets zero weights).
fn bf16_layout(cols: usize) -> (Layout, usize) {
    let pairs = cols.div_ceil(2);
    let layout = Layout {
        kcols: pairs,
        xcol: 2,
        wcol: kernels::PAIR,
        span: 2,
    };
    (layout, 2 * pairs)
}

/// The int8 decode kernel's layout for `cols` columns (records of [`INT8_BLOCK`]; the activation
/// rows are `layout.kcols` blocks apart), and the `m` rows of `x` quantised per block.
fn int8_operand(
    x: &[f32],
    m: usize,
    cols: usize,
) -> Result<(Layout, Aligned<Int8Block>), CpuError> {
    let layout = Layout {
        kcols: cols.div_ceil(INT8_BLOCK),
        xcol: 1,
        wcol: INT8_RECORD,
        span: INT8_BLOCK,
    };
    Ok((layout, int8_blocks(x, m, cols)?))
}

/// The activations of a bf16 product and the panel kernel that reads them: rounded to bf16 (as
/// a bf16 model computes, so that a token gets the same values in a prompt and in a decode
/// step), as bf16 bits for `vdpbf16ps` where the CPU has it, else as f32 values.
enum Bf16Operand {
    F32(Panel<f32, u16>, Aligned<f32>),
    Bits(Panel<u16, u16>, Aligned<u16>),
}

impl Bf16Operand {
    /// The operand of `m` rows of `x` (`cols` each) for `kernel` (resolved against the CPU).
    fn new(kernel: Kernel, x: &[f32], m: usize, cols: usize) -> Result<Self, CpuError> {
        let (_, stride) = bf16_layout(cols);
        let f = kernels::panel_bf16(kernel);
        Ok(if let Some(dot) = kernels::panel_bf16_dot(kernel) {
            let bits = padded_rows(x, m, cols, stride, |v| half::bf16::from_f32(v).to_bits())?;
            Bf16Operand::Bits(dot, bits)
        } else {
            let rounded = padded_rows(x, m, cols, stride, |v| half::bf16::from_f32(v).to_f32())?;
            Bf16Operand::F32(f, rounded)
        })
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
