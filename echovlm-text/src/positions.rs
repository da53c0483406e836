//! 3-D position ids of a multimodal prompt (transformers' `Qwen2VLForConditionalGeneration.get_rope_index`).
//!
//! Text tokens advance all three components together. A vision run whose merged grid is
//! `(T, H, W)` starting at next free position `s` gives token `(τ, r, c)` the position
//! `(s+τ, s+r, s+c)`; the text after it resumes at `1 + max(positions so far)`. Padding
//! (attention mask 0) gets position 1. The rope delta of a row is `max + 1 − row_length`; decode
//! step `n` of that row uses position `n + delta` on all axes.

use crate::config::VisionTokenIds;
use crate::error::PromptError;
use crate::rope::Positions;

/// How the temporal grid steps of a video map to M-RoPE time positions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum VideoTime<'a> {
    /// Qwen2-VL: temporal step `τ` is time position `τ` (frame rate ignored).
    #[default]
    Steps,
    /// Qwen2.5-VL: temporal step `τ` of video `v` is time position
    /// `floor(τ · seconds_per_grid[v] · tokens_per_second)`, computed in f32 as transformers does,
    /// where `seconds_per_grid[v] = temporal_patch_size / fps` of that video.
    Seconds {
        /// Seconds one temporal grid step spans, one entry per video in prompt order.
        seconds_per_grid: &'a [f32],
        /// `vision_config.tokens_per_second`.
        tokens_per_second: f32,
    },
}

/// Kind of a vision placeholder run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKind {
    /// `<|image_pad|>` run.
    Image,
    /// `<|video_pad|>` run.
    Video,
}

/// Computes position ids and rope deltas for a batch.
///
/// * `input_ids`: `[batch][seq]`, all rows the same length (left-padded).
/// * `attention_mask`: `[batch][seq]`, `true` for real tokens; `None` means all real.
/// * `image_grid_thw`, `video_grid_thw`: patch grids `(t, h, w)` of the images and videos in
///   prompt order over the whole batch.
/// * `merge`: spatial merge size (2).
///
/// Videos advance time one position per temporal grid step (Qwen2-VL); see
/// [`rope_index_timed`] for Qwen2.5-VL's absolute time.
pub fn rope_index(
    input_ids: &[Vec<u32>],
    attention_mask: Option<&[Vec<bool>]>,
    image_grid_thw: &[[usize; 3]],
    video_grid_thw: &[[usize; 3]],
    ids: &VisionTokenIds,
    merge: usize,
) -> Result<(Positions, Vec<i64>), PromptError> {
    rope_index_timed(
        input_ids,
        attention_mask,
        image_grid_thw,
        video_grid_thw,
        ids,
        merge,
        VideoTime::Steps,
    )
}

/// [`rope_index`] with the video time axis given by `time` (transformers 4.51
/// `Qwen2_5_VLForConditionalGeneration.get_rope_index` for [`VideoTime::Seconds`]).
///
/// `VideoTime::Seconds` needs one `seconds_per_grid` entry per video, each finite and
/// positive, and a finite positive `tokens_per_second`; otherwise
/// [`PromptError::InvalidVideoTime`].
pub fn rope_index_timed(
    input_ids: &[Vec<u32>],
    attention_mask: Option<&[Vec<bool>]>,
    image_grid_thw: &[[usize; 3]],
    video_grid_thw: &[[usize; 3]],
    ids: &VisionTokenIds,
    merge: usize,
    time: VideoTime<'_>,
) -> Result<(Positions, Vec<i64>), PromptError> {
    if let VideoTime::Seconds {
        seconds_per_grid,
        tokens_per_second,
    } = time
    {
        let bad = |x: f32| !x.is_finite() || x <= 0.0;
        if seconds_per_grid.len() != video_grid_thw.len() {
            return Err(PromptError::InvalidVideoTime(format!(
                "{} seconds-per-grid values for {} videos",
                seconds_per_grid.len(),
                video_grid_thw.len()
            )));
        }
        if let Some(s) = seconds_per_grid.iter().find(|&&s| bad(s)) {
            return Err(PromptError::InvalidVideoTime(format!(
                "seconds per grid step {s} is not a positive number"
            )));
        }
        if bad(tokens_per_second) {
            return Err(PromptError::InvalidVideoTime(format!(
                "tokens_per_second {tokens_per_second} is not a positive number"
            )));
        }
    }
    let batch = input_ids.len();
    let seq = input_ids.first().map_or(0, Vec::len);
    if input_ids.iter().any(|r| r.len() != seq) {
        return Err(PromptError::RaggedBatch);
    }
    if let Some(m) = attention_mask
        && (m.len() != batch || m.iter().any(|r| r.len() != seq))
    {
        return Err(PromptError::RaggedBatch);
    }
    let mut out = Positions {
        batch,
        seq,
        t: vec![1; batch * seq],
        h: vec![1; batch * seq],
        w: vec![1; batch * seq],
    };
    let mut deltas = Vec::with_capacity(batch);
    let has_vision = !image_grid_thw.is_empty() || !video_grid_thw.is_empty();
    let (mut image_index, mut video_index) = (0usize, 0usize);
    for (b, row) in input_ids.iter().enumerate() {
        let keep: Vec<usize> = (0..seq)
            .filter(|&i| attention_mask.is_none_or(|m| m[b][i]))
            .collect();
        let tokens: Vec<u32> = keep.iter().map(|&i| row[i]).collect();
        let mut pos: Vec<[i64; 3]> = Vec::with_capacity(tokens.len());
        if has_vision {
            walk_row(
                &tokens,
                image_grid_thw,
                video_grid_thw,
                ids,
                merge,
                time,
                &mut image_index,
                &mut video_index,
                &mut pos,
            )?;
        } else {
            count_placeholders(&tokens, ids)?;
            pos.extend((0..tokens.len() as i64).map(|i| [i, i, i]));
        }
        let mut max = i64::MIN;
        for (&i, p) in keep.iter().zip(&pos) {
            out.t[b * seq + i] = p[0];
            out.h[b * seq + i] = p[1];
            out.w[b * seq + i] = p[2];
            max = max.max(p[0]).max(p[1]).max(p[2]);
        }
        if keep.len() < seq && !has_vision {
            // transformers' text-only branch takes the maximum over padding (position 1) too
            max = max.max(1);
        }
        if keep.is_empty() {
            max = 1;
        }
        deltas.push(max + 1 - seq as i64);
    }
    if image_index != image_grid_thw.len() {
        return Err(PromptError::ImageCountMismatch {
            placeholders: image_index,
            images: image_grid_thw.len(),
        });
    }
    if video_index != video_grid_thw.len() {
        return Err(PromptError::VideoCountMismatch {
            placeholders: video_index,
            videos: video_grid_thw.len(),
        });
    }
    Ok((out, deltas))
}

fn count_placeholders(tokens: &[u32], ids: &VisionTokenIds) -> Result<(), PromptError> {
    let images = ids
        .image
        .map_or(0, |id| tokens.iter().filter(|&&t| t == id).count());
    if images > 0 {
        return Err(PromptError::ImageCountMismatch {
            placeholders: runs(tokens, ids.image),
            images: 0,
        });
    }
    let videos = ids
        .video
        .map_or(0, |id| tokens.iter().filter(|&&t| t == id).count());
    if videos > 0 {
        return Err(PromptError::VideoCountMismatch {
            placeholders: runs(tokens, ids.video),
            videos: 0,
        });
    }
    Ok(())
}

/// Number of maximal runs of `id` in `tokens`.
fn runs(tokens: &[u32], id: Option<u32>) -> usize {
    let Some(id) = id else { return 0 };
    tokens
        .iter()
        .enumerate()
        .filter(|&(i, &t)| t == id && (i == 0 || tokens[i - 1] != id))
        .count()
}

#[allow(clippy::too_many_arguments)]
fn walk_row(
    tokens: &[u32],
    image_grid_thw: &[[usize; 3]],
    video_grid_thw: &[[usize; 3]],
    ids: &VisionTokenIds,
    merge: usize,
    time: VideoTime<'_>,
    image_index: &mut usize,
    video_index: &mut usize,
    pos: &mut Vec<[i64; 3]>,
) -> Result<(), PromptError> {
    let start_id = ids
        .vision_start
        .ok_or(PromptError::MissingTokenId("vision_start_token_id"))?;
    let (mut images, mut videos) = (0usize, 0usize);
    for w in tokens.windows(2) {
        if w[0] == start_id {
            if Some(w[1]) == ids.image {
                images += 1;
            } else if Some(w[1]) == ids.video {
                videos += 1;
            }
        }
    }
    let find = |id: Option<u32>, from: usize| -> Option<usize> {
        let id = id?;
        tokens[from.min(tokens.len())..]
            .iter()
            .position(|&t| t == id)
            .map(|p| p + from)
    };
    let mut st = 0usize;
    let (mut remain_images, mut remain_videos) = (images, videos);
    let next_free = |pos: &Vec<[i64; 3]>| {
        pos.iter()
            .map(|p| p[0].max(p[1]).max(p[2]))
            .max()
            .map_or(0, |m| m + 1)
    };
    for _ in 0..images + videos {
        let ed_image = if remain_images > 0 {
            find(ids.image, st).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let ed_video = if remain_videos > 0 {
            find(ids.video, st).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let (grid, kind, ed, video) = if ed_image < ed_video {
            let g = image_grid_thw
                .get(*image_index)
                .ok_or(PromptError::ImageCountMismatch {
                    placeholders: *image_index + 1,
                    images: image_grid_thw.len(),
                })?;
            *image_index += 1;
            remain_images -= 1;
            (*g, VisionKind::Image, ed_image, None)
        } else if ed_video != usize::MAX {
            let g = video_grid_thw
                .get(*video_index)
                .ok_or(PromptError::VideoCountMismatch {
                    placeholders: *video_index + 1,
                    videos: video_grid_thw.len(),
                })?;
            *video_index += 1;
            remain_videos -= 1;
            (*g, VisionKind::Video, ed_video, Some(*video_index - 1))
        } else {
            break;
        };
        let (t, h, w) = (grid[0], grid[1] / merge, grid[2] / merge);
        let n = t * h * w;
        let pad = match kind {
            VisionKind::Image => ids.image,
            VisionKind::Video => ids.video,
        };
        let run = tokens[ed..].iter().take_while(|&&x| Some(x) == pad).count();
        if run != n {
            return Err(PromptError::PlaceholderLength {
                kind,
                expected: n,
                found: run,
            });
        }
        let st_idx = next_free(pos);
        let text_len = (ed - st) as i64;
        pos.extend((0..text_len).map(|i| [st_idx + i, st_idx + i, st_idx + i]));
        let base = st_idx + text_len;
        for tau in 0..t as i64 {
            let time_pos = match (time, video) {
                (
                    VideoTime::Seconds {
                        seconds_per_grid,
                        tokens_per_second,
                    },
                    Some(v),
                ) => (tau as f32 * seconds_per_grid[v] * tokens_per_second) as i64,
                _ => tau,
            };
            for r in 0..h as i64 {
                for c in 0..w as i64 {
                    pos.push([base + time_pos, base + r, base + c]);
                }
            }
        }
        st = ed + n;
    }
    if st < tokens.len() {
        let st_idx = next_free(pos);
        pos.extend((0..(tokens.len() - st) as i64).map(|i| [st_idx + i, st_idx + i, st_idx + i]));
    }
    Ok(())
}
