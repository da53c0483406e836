//! JPEG Baseline frames: gathering a frame's stream from the encapsulated fragments and checking
//! its start-of-frame header against the DICOM attributes before the decoder sees it.

use super::decode::Ctx;
use crate::error::ImageError;

/// The bytes of frame `frame`'s JPEG stream, chosen as dicom-rs' JPEG adapter chooses them:
/// one fragment per frame (or a single fragment), else gathered by the Basic Offset Table.
pub(super) fn frame_fragment_data(
    fragments: &[Vec<u8>],
    offsets: &[u32],
    number_of_frames: usize,
    frame: usize,
) -> Result<Vec<u8>, String> {
    if fragments.len() == 1 || fragments.len() == number_of_frames {
        return fragments.get(frame).cloned().ok_or_else(|| {
            format!(
                "no encapsulated fragment for frame {frame} ({} fragment{})",
                fragments.len(),
                if fragments.len() == 1 { "" } else { "s" }
            )
        });
    }
    let base = match offsets.get(frame) {
        Some(&o) => o as usize,
        None if frame == 0 => 0,
        None => {
            return Err(format!(
                "frame {frame} cannot be located: {} fragments for {number_of_frames} frames \
                 and no Basic Offset Table entry for it",
                fragments.len()
            ));
        }
    };
    let next = offsets.get(frame + 1).map(|&o| o as usize);
    let mut offset = 0usize;
    let mut data = Vec::new();
    for fragment in fragments {
        if offset >= base {
            data.extend_from_slice(fragment);
        }
        offset += fragment.len() + 8;
        if next.is_some_and(|n| offset >= n) {
            break;
        }
    }
    Ok(data)
}

/// Checks a JPEG frame's start-of-frame header against the DICOM attributes, so that the
/// decoder only ever sees frames of the declared size and layout.
pub(super) fn check_jpeg_header(
    data: &[u8],
    frame: usize,
    rows: u16,
    columns: u16,
    samples: u16,
    cx: &Ctx<'_>,
) -> Result<(), ImageError> {
    let Some(sof) = jpeg_sof(data) else {
        return Err(cx.invalid(format!(
            "JPEG frame {frame} is not a JPEG stream, or is truncated before its frame header"
        )));
    };
    if !matches!(sof.marker, 0xC0 | 0xC1) || sof.precision != 8 {
        return Err(cx.unsupported(format!(
            "JPEG frame {frame} is coded with SOF{} at {} bits, not as 8-bit baseline / \
             extended sequential JPEG",
            sof.marker - 0xC0,
            sof.precision
        )));
    }
    if sof.height != rows || sof.width != columns || u16::from(sof.components) != samples {
        return Err(cx.invalid(format!(
            "JPEG frame {frame} is {}x{} pixels with {} component(s), but the object declares \
             {rows}x{columns} pixels (rows x columns) with {samples} sample(s) per pixel",
            sof.height, sof.width, sof.components
        )));
    }
    Ok(())
}

struct Sof {
    marker: u8,
    precision: u8,
    height: u16,
    width: u16,
    components: u8,
}

/// The first start-of-frame segment of a JPEG stream.
fn jpeg_sof(data: &[u8]) -> Option<Sof> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        // Markers may be preceded by fill bytes 0xFF.
        while *data.get(i)? == 0xFF && *data.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *data.get(i)? != 0xFF {
            return None;
        }
        let marker = *data.get(i + 1)?;
        i += 2;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return None, // end of image / start of scan before any SOF
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        if len < 2 {
            return None;
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let seg = data.get(i + 2..i + len)?;
            if seg.len() < 6 {
                return None;
            }
            return Some(Sof {
                marker,
                precision: seg[0],
                height: u16::from_be_bytes([seg[1], seg[2]]),
                width: u16::from_be_bytes([seg[3], seg[4]]),
                components: seg[5],
            });
        }
        i += len;
    }
}
