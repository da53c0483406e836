//! The pre-scan: a walk over the file meta group and the data set's element headers before
//! dicom-rs parses the file, so that a length field that promises more bytes than the file holds
//! is refused instead of turning into an allocation of that size.

use dicom_object::Tag;

use super::uid::trim_uid;

/// Pixel Data (7FE0,0010).
pub(super) const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Explicit VRs with a 2-byte reserved field and a 4-byte length.
fn long_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

const TRUNCATED: &str = "the file is truncated or corrupt";

/// Walks the file meta group (explicit VR little endian, from byte 132) and returns the
/// Transfer Syntax UID and where the data set starts.
pub(super) fn scan_meta(b: &[u8]) -> Result<(String, usize), String> {
    let mut pos = 132;
    let mut ts = None;
    while u16_at(b, pos) == Some(0x0002) {
        let cut = || {
            format!(
                "the file meta group is cut off inside an element header at byte {}: {TRUNCATED}",
                b.len()
            )
        };
        let elem = u16_at(b, pos + 2).ok_or_else(cut)?;
        let vr = [
            *b.get(pos + 4).ok_or_else(cut)?,
            *b.get(pos + 5).ok_or_else(cut)?,
        ];
        let (len, header) = if long_vr(vr) {
            (u32_at(b, pos + 8).ok_or_else(cut)? as usize, 12)
        } else {
            (usize::from(u16_at(b, pos + 6).ok_or_else(cut)?), 8)
        };
        let start = pos + header;
        let value = b.get(start..start.saturating_add(len)).ok_or_else(|| {
            format!(
                "file meta element (0002,{elem:04X}) declares {len} bytes but only {} remain: \
                 {TRUNCATED}",
                b.len().saturating_sub(start)
            )
        })?;
        if elem == 0x0010 {
            let uid = String::from_utf8_lossy(value);
            ts = Some(trim_uid(&uid).to_string());
        }
        pos = start + len;
    }
    match ts {
        Some(ts) if !ts.is_empty() => Ok((ts, pos)),
        _ => Err(format!(
            "the file meta group has no Transfer Syntax UID (0002,0010){}",
            if pos >= b.len() {
                format!(" and the file ends after it: {TRUNCATED}")
            } else {
                String::new()
            }
        )),
    }
}

/// Walks the element headers of the data set and refuses any defined length that runs past the
/// end of the file, before dicom-rs would allocate a buffer of that length. Sequences and items
/// are walked into; encapsulated pixel data items are skipped by their length. Anything the
/// walk does not understand ends it quietly, leaving the verdict to the parser.
pub(super) fn check_lengths(b: &[u8], start: usize, explicit: bool) -> Result<(), String> {
    const UNDEFINED: u32 = 0xFFFF_FFFF;
    let mut pos = start;
    let mut in_pixel_items = false;
    while b.len() - pos >= 8 {
        let (Some(group), Some(elem), Some(item_len)) =
            (u16_at(b, pos), u16_at(b, pos + 2), u32_at(b, pos + 4))
        else {
            return Ok(());
        };
        let too_long = |len: u32, at: usize| {
            format!(
                "({group:04X},{elem:04X}) declares {len} bytes but only {} remain: {TRUNCATED}",
                b.len() - at
            )
        };
        if group == 0xFFFE {
            pos += 8;
            match elem {
                0xE000 if item_len != UNDEFINED => {
                    if item_len as usize > b.len() - pos {
                        return Err(too_long(item_len, pos));
                    }
                    if in_pixel_items {
                        pos += item_len as usize;
                    }
                }
                0xE000 | 0xE00D => {}
                0xE0DD => in_pixel_items = false,
                _ => return Ok(()),
            }
            continue;
        }
        if in_pixel_items {
            return Ok(());
        }
        let (vr, len, header) = if explicit {
            let vr = [b[pos + 4], b[pos + 5]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Ok(());
            }
            if long_vr(vr) {
                let Some(len) = u32_at(b, pos + 8) else {
                    return Err(format!(
                        "the header of ({group:04X},{elem:04X}) is cut off: {TRUNCATED}"
                    ));
                };
                (Some(vr), len, 12)
            } else {
                (Some(vr), u32::from(u16_at(b, pos + 6).unwrap_or(0)), 8)
            }
        } else {
            (None, item_len, 8)
        };
        pos += header;
        if len == UNDEFINED {
            if Tag(group, elem) == PIXEL_DATA {
                in_pixel_items = true;
                continue;
            }
            match vr {
                // a sequence (implicit VR: undefined length means a sequence)
                Some(vr) if &vr == b"SQ" => continue,
                None => continue,
                // e.g. UN of undefined length (an implicit VR sequence inside): stop here
                Some(_) => return Ok(()),
            }
        }
        if len as usize > b.len() - pos {
            return Err(too_long(len, pos));
        }
        let sequence = match vr {
            Some(vr) => &vr == b"SQ",
            // implicit VR: a defined-length sequence starts with an item that fits in it
            None => {
                len >= 8
                    && u16_at(b, pos) == Some(0xFFFE)
                    && u16_at(b, pos + 2) == Some(0xE000)
                    && u32_at(b, pos + 4).is_some_and(|l| l == UNDEFINED || l <= len - 8)
            }
        };
        if !sequence {
            pos += len as usize;
        }
    }
    Ok(())
}
