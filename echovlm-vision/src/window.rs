//! Which patches attend to which: whole images and frames, and Qwen2.5-VL's windows.

use crate::vit::VisionError;

/// Qwen2.5-VL's window order: which merged tokens form each attention window.
///
/// `grids` are the `(t, h, w)` patch grids of the images and videos, in input order;
/// `window_size` is the window side in pixels, `patch_size` the patch side in pixels and
/// `merge` the spatial merge size. Returns `(window_index, cu_window_seqlens)`:
///
/// * `window_index[j]` is the raster index (over all images, frame by frame, row-major over
///   the merged `h/merge × w/merge` grid of each frame) of the merged token that comes `j`-th
///   in window order. Each frame's merged grid is cut into windows of
///   `window_size / patch_size / merge` merged tokens a side, starting at the top left;
///   windows are taken row-major, tokens row-major inside each window, and the windows at the
///   bottom and right edge hold only the tokens that exist. Images and frames follow one
///   another, so every window stays inside its frame.
/// * `cu_window_seqlens` are the window boundaries in **patches** (`merge²` patches per
///   merged token), starting with `0` and strictly increasing: window `i` is the patch range
///   `cu[i]..cu[i + 1]` of the permuted sequence.
///
/// This is transformers' `get_window_index` followed by the `unique_consecutive` of its
/// forward pass. transformers pads each frame's merged grid by `vws − h % vws` rows (and
/// likewise columns), so a side that is already a multiple of `vws` gets one whole extra row
/// (column) of windows that hold only padding; those empty windows repeat a boundary, which
/// `unique_consecutive` removes, exactly as they are left out here.
///
/// # Errors
/// [`VisionError::Window`] if `window_size` is not a positive multiple of
/// `patch_size · merge`; [`VisionError::BadGrid`] for an empty grid, one whose `h` or `w` is
/// not a multiple of `merge`, or one too large to count.
pub fn window_index(
    grids: &[[usize; 3]],
    window_size: usize,
    patch_size: usize,
    merge: usize,
) -> Result<(Vec<usize>, Vec<usize>), VisionError> {
    let unit = patch_size.checked_mul(merge).unwrap_or(0);
    if unit == 0 || window_size == 0 || !window_size.is_multiple_of(unit) {
        return Err(VisionError::Window {
            window_size,
            patch_size,
            merge,
        });
    }
    // merged tokens per window side
    let vws = window_size / unit;
    let tokens = merge * merge;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut offset = 0usize;
    for &grid in grids {
        let [t, h, w] = grid;
        let frame = merged_frame(grid, merge)?;
        let (lh, lw) = (h / merge, w / merge);
        let frames = t
            .checked_mul(frame)
            .ok_or(VisionError::BadGrid { grid, merge })?;
        offset
            .checked_add(frames)
            .and_then(|n| n.checked_mul(tokens))
            .ok_or(VisionError::BadGrid { grid, merge })?;
        // transformers' window count: (l + vws − l % vws) / vws, i.e. one more than whole
        // windows, even when l is a multiple of vws (the last row/column then being empty)
        let (nwh, nww) = (lh / vws + 1, lw / vws + 1);
        for f in 0..t {
            let base = offset + f * frame;
            for wh in 0..nwh {
                for ww in 0..nww {
                    let rows = wh * vws..((wh + 1) * vws).min(lh);
                    let cols = ww * vws..((ww + 1) * vws).min(lw);
                    let count = rows.len() * cols.len();
                    if count == 0 {
                        // a padding-only window: its boundary would repeat the previous one
                        continue;
                    }
                    for r in rows {
                        index.extend(cols.clone().map(|c| base + r * lw + c));
                    }
                    let last = *cu.last().expect("starts with 0");
                    cu.push(last + count * tokens);
                }
            }
        }
        offset += frames;
    }
    Ok((index, cu))
}

/// Merged tokens in one frame of `grid`, after checking the grid.
fn merged_frame(grid: [usize; 3], merge: usize) -> Result<usize, VisionError> {
    let [t, h, w] = grid;
    if merge == 0
        || t == 0
        || h == 0
        || w == 0
        || !h.is_multiple_of(merge)
        || !w.is_multiple_of(merge)
    {
        return Err(VisionError::BadGrid { grid, merge });
    }
    (h / merge)
        .checked_mul(w / merge)
        .ok_or(VisionError::BadGrid { grid, merge })
}

/// `[start, end)` patch ranges that attend to each other in a full-attention block: one per
/// image, one per video frame (transformers' `cu_seqlens`).
pub(crate) fn frame_segments(grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &[t, h, w] in grids {
        for _ in 0..t {
            out.push((start, start + h * w));
            start += h * w;
        }
    }
    out
}

/// `[start, end)` ranges between consecutive boundaries.
pub(crate) fn boundaries_to_segments(cu: &[usize]) -> Vec<(usize, usize)> {
    cu.windows(2).map(|w| (w[0], w[1])).collect()
}

/// A run of `count` consecutive segments of `len` rows each, starting at row `start`: attended
/// as one batch of `count` independent sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: usize,
    pub len: usize,
    pub count: usize,
}

/// Groups consecutive equal-length segments (which must tile their range without gaps).
pub(crate) fn runs(segments: &[(usize, usize)]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &(s, e) in segments {
        let len = e - s;
        if len == 0 {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.len == len && r.start + r.len * r.count == s => r.count += 1,
            _ => out.push(Run {
                start: s,
                len,
                count: 1,
            }),
        }
    }
    out
}

/// The patch-level permutation of a merged-token order: each merged token `i` brings its
/// `tokens` consecutive patches `i·tokens .. (i+1)·tokens` along.
pub(crate) fn expand(order: &[usize], tokens: usize) -> Vec<usize> {
    order
        .iter()
        .flat_map(|&i| i * tokens..(i + 1) * tokens)
        .collect()
}

/// The inverse of a permutation (`argsort` of it).
pub(crate) fn inverse(order: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; order.len()];
    for (j, &i) in order.iter().enumerate() {
        inv[i] = j;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_equal_neighbours() {
        let segs = [(0, 4), (4, 8), (8, 10), (10, 12), (12, 16)];
        assert_eq!(
            runs(&segs),
            vec![
                Run {
                    start: 0,
                    len: 4,
                    count: 2
                },
                Run {
                    start: 8,
                    len: 2,
                    count: 2
                },
                Run {
                    start: 12,
                    len: 4,
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn inverse_undoes_the_order() {
        let order = [2, 0, 3, 1];
        let inv = inverse(&order);
        assert_eq!(inv, vec![1, 3, 0, 2]);
        assert_eq!(expand(&[1, 0], 2), vec![2, 3, 0, 1]);
    }
}
