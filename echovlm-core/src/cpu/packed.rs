//! The packed weight matrix: construction from f32 values or checkpoint bytes, and reading
//! rows back as f32.

use half::bf16;
use rayon::prelude::*;

use super::CpuError;
use super::aligned::Aligned;
use super::error::{check_len, checked_bytes, matrix_elements};
use super::format::{
    INT4_GROUP, INT4_GROUP_BYTES, INT8_BLOCK, WeightFormat, int4_level, quantize_row,
    quantize_row_int4,
};
use super::kernels::{PAIR, pair_index};

/// Weight rows per panel of the f32 layout.
pub(super) const PANEL: usize = 32;

#[derive(Clone)]
pub(super) enum Data {
    /// Panels of [`PANEL`] rows, the layout the product kernels read: row `r`, column `c` at
    /// `(r / PANEL) · cols · PANEL + c · PANEL + r % PANEL`; the rows are padded with zeros to
    /// whole panels. A kernel then loads the 32 weights of one column of a panel with two
    /// contiguous 512-bit loads (four 256-bit ones) and multiplies them with one broadcast
    /// activation per row: no packing per call and no horizontal sums.
    F32(Aligned<f32>),
    /// Panels of [`PANEL`] rows in column pairs (raw bf16 bits): row `r`, column `c` at
    /// `(r / PANEL · pairs + c / 2) · PAIR + pair_index(r % PANEL, c % 2)` with
    /// `pairs = cols.div_ceil(2)`; rows padded with zeros to whole panels, and an odd last
    /// column with a zero column. One 512-bit load holds 16 rows of a column pair, which a
    /// shift and a mask widen to two f32 vectors (or `vdpbf16ps` multiplies as they are):
    /// decode streams the weights as f32 panels do, at half the bytes.
    Bf16(Aligned<u16>),
    /// Panels of [`PANEL`] rows in records of one [`INT8_BLOCK`] of columns
    /// ([`INT8_RECORD`] bytes each, the panel's records in column order): the 32 rows' f32
    /// scales of the block (little-endian), then the block's 64 columns of 32 int8 weights in
    /// quads of 4 columns. Row `r`, column `c` is at byte
    /// `INT8_SCALES + int8_index(r % 32, c % 64)` of record `r / 32 · blocks + c / 64`
    /// (`blocks = cols.div_ceil(64)`), its scale at `4 · (r % 32)`; rows are padded with zeros
    /// to whole panels and columns to whole blocks. A kernel loads 16 rows of a quad at once:
    /// `vpdpbusd` multiplies them as they are, the other kernels widen them in registers.
    Int8(Aligned<u8>),
    /// `cols.div_ceil(INT4_GROUP)` groups per row, 16 bytes and one f16 scale each.
    Int4 {
        q: Aligned<u8>,
        scales: Aligned<u16>,
    },
}

/// A `[rows, cols]` weight matrix (rows = outputs, the HF `[out, in]` layout) in host memory.
///
/// Every constructor checks that `rows · cols` f32 values fit in memory addresses, so no size
/// derived from the shape afterwards can overflow.
#[derive(Clone)]
pub struct PackedWeight {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: Data,
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
    /// block, rounded to nearest; int4: see [`WeightFormat::Int4`]).
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
            WeightFormat::F32 => Data::F32(panels(rows, cols, w, cols, |row, out| {
                out.copy_from_slice(row)
            })?),
            WeightFormat::Bf16 => Data::Bf16(bf16_panels(rows, cols, w, cols, |row, out| {
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = bf16::from_f32(x).to_bits();
                }
            })?),
            WeightFormat::Int8 | WeightFormat::Int4 => quantized(
                rows,
                cols,
                format == WeightFormat::Int4,
                w,
                cols,
                |row, out| out.copy_from_slice(row),
            )?,
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
            WeightFormat::F32 => Data::F32(panels(rows, cols, bytes, row_bytes, widen)?),
            WeightFormat::Bf16 => {
                Data::Bf16(bf16_panels(rows, cols, bytes, row_bytes, |raw, o| {
                    if storage == S::BF16 {
                        for (o, c) in o.iter_mut().zip(raw.chunks_exact(2)) {
                            *o = u16::from_le_bytes([c[0], c[1]]);
                        }
                    } else {
                        let mut tmp = vec![0f32; o.len()];
                        widen(raw, &mut tmp);
                        for (o, &x) in o.iter_mut().zip(tmp.iter()) {
                            *o = bf16::from_f32(x).to_bits();
                        }
                    }
                })?)
            }
            WeightFormat::Int8 | WeightFormat::Int4 => quantized(
                rows,
                cols,
                format == WeightFormat::Int4,
                bytes,
                row_bytes,
                widen,
            )?,
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
            data: Data::Bf16(bf16_panels(rows, cols, w, cols, |row, out| {
                out.copy_from_slice(row)
            })?),
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
            Data::Int8(_) => WeightFormat::Int8,
            Data::Int4 { .. } => WeightFormat::Int4,
        }
    }

    /// Bytes of host memory the weights occupy.
    pub fn nbytes(&self) -> usize {
        match &self.data {
            Data::F32(w) => w.len() * 4,
            Data::Bf16(w) => w.len() * 2,
            Data::Int8(w) => w.len(),
            Data::Int4 { q, scales } => q.len() + scales.len() * 2,
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

    pub(super) fn widen_row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(w) => {
                let panel = &w[r / PANEL * c * PANEL..];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = panel[j * PANEL + r % PANEL];
                }
            }
            Data::Bf16(w) => {
                let pairs = c.div_ceil(2);
                let panel = &w[r / PANEL * pairs * PAIR..];
                for (k, o) in out.iter_mut().enumerate() {
                    let b = panel[k / 2 * PAIR + pair_index(r % PANEL, k % 2)];
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            Data::Int8(w) => {
                let blocks = c.div_ceil(INT8_BLOCK);
                let j = r % PANEL;
                for (b, chunk) in out.chunks_mut(INT8_BLOCK).enumerate() {
                    let rec = &w[(r / PANEL * blocks + b) * INT8_RECORD..][..INT8_RECORD];
                    let s = record_scales(rec)[j];
                    for (kk, o) in chunk.iter_mut().enumerate() {
                        *o = rec[INT8_SCALES + int8_index(j, kk)] as i8 as f32 * s;
                    }
                }
            }
            Data::Int4 { q, scales } => {
                let groups = c.div_ceil(INT4_GROUP);
                let row = &q[r * groups * INT4_GROUP_BYTES..(r + 1) * groups * INT4_GROUP_BYTES];
                for (g, chunk) in out.chunks_mut(INT4_GROUP).enumerate() {
                    let s = half::f16::from_bits(scales[r * groups + g]).to_f32();
                    let bytes = &row[g * INT4_GROUP_BYTES..(g + 1) * INT4_GROUP_BYTES];
                    if let Ok(full) = <&mut [f32; INT4_GROUP]>::try_from(&mut *chunk) {
                        // whole groups: both nibbles of each byte, in a loop that vectorises
                        let (lo, hi) = full.split_at_mut(INT4_GROUP_BYTES);
                        for ((l, h), &b) in lo.iter_mut().zip(hi).zip(bytes) {
                            *l = ((b & 0x0f) as i32 - 8) as f32 * s;
                            *h = ((b >> 4) as i32 - 8) as f32 * s;
                        }
                    } else {
                        for (i, o) in chunk.iter_mut().enumerate() {
                            *o = int4_level(bytes, i) as f32 * s;
                        }
                    }
                }
            }
        }
    }
}

/// The `[rows, cols]` matrix laid out panel by panel, a panel of [`PANEL`] rows per task on
/// the thread pool: a panel holds `units · per_unit` values (columns of 32 weights, column
/// pairs or int8 records), and `fill(scratch, rows, panel)` writes it from its rows of `src`
/// (`src_row` elements each, up to [`PANEL`] of them; the panel's other rows stay zero).
/// `scratch` makes each task's working memory once. Every size is checked.
#[allow(clippy::too_many_arguments)] // the shape, the source and the two steps
fn by_panel<T: Sync, E: Copy + Default + Send, S>(
    rows: usize,
    cols: usize,
    src: &[T],
    src_row: usize,
    (units, per_unit): (usize, usize),
    scratch: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, &[T], &mut [E]) + Sync + Send,
) -> Result<Aligned<E>, CpuError> {
    if cols == 0 || rows == 0 {
        return Aligned::zeroed(0);
    }
    let size = std::mem::size_of::<E>();
    let panel_len = checked_bytes("weight panel", units, per_unit, 1)?;
    let len = checked_bytes("weight matrix", rows.div_ceil(PANEL), panel_len, size)? / size;
    let mut out = Aligned::<E>::zeroed(len)?;
    out.par_chunks_mut(panel_len)
        .zip(src.par_chunks(src_row * PANEL))
        .for_each_init(scratch, |scratch, (panel, raw)| fill(scratch, raw, panel));
    Ok(out)
}

/// The `[rows, cols]` matrix in the f32 panel layout (see [`Data::F32`]): each row of `src`
/// (`src_row` elements) is widened to `cols` f32 values by `widen`, then scattered into its
/// panel a block of columns at a time (the block's lines stay in L1).
fn panels<T: Sync>(
    rows: usize,
    cols: usize,
    src: &[T],
    src_row: usize,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) -> Result<Aligned<f32>, CpuError> {
    const BLOCK: usize = 64;
    by_panel(
        rows,
        cols,
        src,
        src_row,
        (cols, PANEL),
        || vec![0f32; PANEL * cols],
        |tmp, raw, panel| {
            let n = raw.len() / src_row;
            for (j, raw) in raw.chunks_exact(src_row).enumerate() {
                widen(raw, &mut tmp[j * cols..(j + 1) * cols]);
            }
            for c0 in (0..cols).step_by(BLOCK) {
                let c1 = (c0 + BLOCK).min(cols);
                for j in 0..n {
                    let row = &tmp[j * cols..(j + 1) * cols];
                    for c in c0..c1 {
                        panel[c * PANEL + j] = row[c];
                    }
                }
            }
        },
    )
}

/// The `[rows, cols]` matrix in the bf16 panel layout (see [`Data::Bf16`]): each row of `src`
/// (`src_row` elements) is converted to `cols` bf16 values by `convert`, then scattered into
/// its panel's column pairs.
fn bf16_panels<T: Sync>(
    rows: usize,
    cols: usize,
    src: &[T],
    src_row: usize,
    convert: impl Fn(&[T], &mut [u16]) + Sync,
) -> Result<Aligned<u16>, CpuError> {
    by_panel(
        rows,
        cols,
        src,
        src_row,
        (cols.div_ceil(2), PAIR),
        || vec![0u16; PANEL * cols],
        |tmp, raw, panel| {
            let n = raw.len() / src_row;
            for (j, raw) in raw.chunks_exact(src_row).enumerate() {
                convert(raw, &mut tmp[j * cols..(j + 1) * cols]);
            }
            // each row read in order, its values written 64 apart (the panel stays in L2)
            for (j, row) in tmp.chunks_exact(cols).take(n).enumerate() {
                let (even, odd) = (pair_index(j, 0), pair_index(j, 1));
                for (q, v) in row.chunks(2).enumerate() {
                    panel[q * PAIR + even] = v[0];
                    if let Some(&o) = v.get(1) {
                        panel[q * PAIR + odd] = o;
                    }
                }
            }
        },
    )
}

/// The `[rows, cols]` matrix in int4 (`int4`) or int8, quantised row by row in parallel:
/// row `i` of `src` (`src_row` elements) is widened to `cols` f32 values by `widen`, then
/// quantised into row `i` of the values and scales.
fn quantized<T: Sync>(
    rows: usize,
    cols: usize,
    int4: bool,
    src: &[T],
    src_row: usize,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) -> Result<Data, CpuError> {
    /// Fills `q` and `scales`, `q_row` and `s_row` elements per row, with `quantize`.
    fn fill<T: Sync, Q: Send, S: Send>(
        (cols, src, src_row): (usize, &[T], usize),
        (q, q_row, scales, s_row): (&mut [Q], usize, &mut [S], usize),
        widen: impl Fn(&[T], &mut [f32]) + Sync,
        quantize: fn(&[f32], &mut [Q], &mut [S]),
    ) {
        if cols == 0 {
            return;
        }
        q.par_chunks_mut(q_row)
            .zip(scales.par_chunks_mut(s_row))
            .zip(src.par_chunks(src_row))
            .for_each_init(
                || vec![0f32; cols],
                |tmp, ((qr, sr), raw)| {
                    widen(raw, tmp);
                    quantize(tmp, qr, sr);
                },
            );
    }
    let source = (cols, src, src_row);
    Ok(if int4 {
        let groups = cols.div_ceil(INT4_GROUP);
        let bytes = checked_bytes("int4 weights", rows, groups, INT4_GROUP_BYTES)?;
        let mut q = Aligned::<u8>::zeroed(bytes)?;
        let mut scales = Aligned::<u16>::zeroed(rows * groups)?;
        fill(
            source,
            (&mut q, groups * INT4_GROUP_BYTES, &mut scales, groups),
            widen,
            quantize_row_int4,
        );
        Data::Int4 { q, scales }
    } else {
        Data::Int8(int8_panels(rows, cols, src, src_row, widen)?)
    })
}

/// Bytes of the scales at the start of an int8 record: one f32 per row of the panel.
pub(super) const INT8_SCALES: usize = PANEL * 4;
/// Bytes of one int8 record (see [`Data::Int8`]): the scales, then 64 columns of 32 weights.
pub(super) const INT8_RECORD: usize = INT8_SCALES + INT8_BLOCK * PANEL;

/// Bytes of one quad of columns in an int8 record: 4 columns of 32 rows.
pub(super) const INT8_QUAD: usize = 4 * PANEL;

/// The byte of row `j` (`< 32`), column `kk` (`< 64`) among an int8 record's weights (after
/// its scales): the columns in quads of 4, each quad rows 0-15 then rows 16-31, each row's four
/// columns side by side. One 512-bit load then holds 16 rows of a quad, the layout `vpdpbusd`
/// multiplies with four broadcast activations (one 32-bit lane per row).
pub(super) const fn int8_index(j: usize, kk: usize) -> usize {
    (kk / 4) * INT8_QUAD + (j / 16) * 64 + (j % 16) * 4 + kk % 4
}

/// The 32 rows' f32 scales at the start of an int8 record.
pub(super) fn record_scales(rec: &[u8]) -> [f32; PANEL] {
    std::array::from_fn(|j| {
        f32::from_le_bytes([rec[4 * j], rec[4 * j + 1], rec[4 * j + 2], rec[4 * j + 3]])
    })
}

/// The `[rows, cols]` matrix in the int8 panel layout (see [`Data::Int8`]): each row of `src`
/// (`src_row` elements) is widened to `cols` f32 values by `widen` and quantised
/// (`quantize_row`), then scattered into its panel's records.
fn int8_panels<T: Sync>(
    rows: usize,
    cols: usize,
    src: &[T],
    src_row: usize,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) -> Result<Aligned<u8>, CpuError> {
    let blocks = cols.div_ceil(INT8_BLOCK);
    by_panel(
        rows,
        cols,
        src,
        src_row,
        (blocks, INT8_RECORD),
        || {
            (
                vec![0f32; cols],
                vec![0i8; PANEL * cols],
                vec![0f32; PANEL * blocks],
            )
        },
        |(tmp, q, scales), raw, panel| {
            let n = raw.len() / src_row;
            for (j, raw) in raw.chunks_exact(src_row).enumerate() {
                widen(raw, tmp);
                quantize_row(
                    tmp,
                    &mut q[j * cols..(j + 1) * cols],
                    &mut scales[j * blocks..(j + 1) * blocks],
                );
            }
            for (b, rec) in panel.chunks_exact_mut(INT8_RECORD).enumerate() {
                let (sc, w) = rec.split_at_mut(INT8_SCALES);
                for j in 0..n {
                    sc[4 * j..4 * j + 4].copy_from_slice(&scales[j * blocks + b].to_le_bytes());
                }
                let c0 = b * INT8_BLOCK;
                for kk in 0..INT8_BLOCK.min(cols - c0) {
                    for j in 0..n {
                        w[int8_index(j, kk)] = q[j * cols + c0 + kk] as u8;
                    }
                }
            }
        },
    )
}
