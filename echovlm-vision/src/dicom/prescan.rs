//! The pre-scan: a walk over the file meta group and the data set's element headers before
//! dicom-rs parses the file, so that a length field that promises more bytes than the file holds
//! is refused instead of turning into an allocation of that size (dicom-rs reserves a value's
//! declared length before reading it).
//!
//! Both walks follow dicom-rs' own reading exactly, so that every length it will allocate for is
//! one the walk has seen: the file meta group is walked as `dicom-object` reads it (up to its
//! group length, explicit VR, an unknown VR taking a 4-byte length), and the data set is walked
//! by dicom-rs' own token reader (`dicom-parser`'s `DataSetReader`), checking each element and
//! item length it announces before it reads the value.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_object::Tag;
use dicom_parser::dataset::DataToken;
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions};
use dicom_transfer_syntax_registry::entries;

use super::uid::trim_uid;

/// Pixel Data (7FE0,0010).
pub(super) const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

const TRUNCATED: &str = "the file is truncated or corrupt";
const UNDEFINED: u32 = 0xFFFF_FFFF;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Explicit VRs with a 2-byte length (PS3.5 7.1.2); every other VR, unknown ones included (which
/// dicom-rs reads as UN), has 2 reserved bytes and a 4-byte length.
fn short_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Walks the file meta group (explicit VR little endian, from byte 132) as dicom-object reads
/// it: File Meta Information Group Length (0002,0000) first, then elements until that many bytes
/// are read. Returns the Transfer Syntax UID and where the data set starts.
pub(super) fn scan_meta(b: &[u8]) -> Result<(String, usize), String> {
    let no_ts = |pos: usize| {
        format!(
            "the file meta group has no Transfer Syntax UID (0002,0010){}",
            if pos >= b.len() {
                format!(" and the file ends after it: {TRUNCATED}")
            } else {
                String::new()
            }
        )
    };
    let mut pos = 132;
    if pos >= b.len() {
        return Err(no_ts(pos));
    }
    let group_length = match (u16_at(b, pos), u16_at(b, pos + 2), b.get(pos + 4..pos + 8)) {
        (Some(0x0002), Some(0x0000), Some(&[_, _, 4, 0])) => u32_at(b, pos + 8)
            .ok_or_else(|| format!("the file meta group length is cut off: {TRUNCATED}"))?,
        (Some(0x0002), Some(0x0000), Some(_)) => {
            return Err("the file meta group length (0002,0000) is not a 4-byte value".into());
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(
                "the file meta group does not start with its group length (0002,0000)".into(),
            );
        }
        _ => {
            return Err(format!(
                "the file meta group is cut off inside its first element header: {TRUNCATED}"
            ));
        }
    };
    pos += 12;
    let mut read = 0u64;
    let mut ts = None;
    while read < u64::from(group_length) {
        let cut = || {
            format!(
                "the file meta group is cut off inside an element header at byte {}: {TRUNCATED}",
                b.len()
            )
        };
        let group = u16_at(b, pos).ok_or_else(cut)?;
        let elem = u16_at(b, pos + 2).ok_or_else(cut)?;
        let (len, header) = if group == 0xFFFE {
            (u32_at(b, pos + 4).ok_or_else(cut)?, 8)
        } else {
            let vr = [
                *b.get(pos + 4).ok_or_else(cut)?,
                *b.get(pos + 5).ok_or_else(cut)?,
            ];
            if short_vr(vr) {
                (u32::from(u16_at(b, pos + 6).ok_or_else(cut)?), 8)
            } else {
                (u32_at(b, pos + 8).ok_or_else(cut)?, 12)
            }
        };
        if len == UNDEFINED {
            return Err(format!(
                "file meta element ({group:04X},{elem:04X}) has an undefined length"
            ));
        }
        let start = pos + header;
        let value = b
            .get(start..start.saturating_add(len as usize))
            .ok_or_else(|| {
                format!(
                    "file meta element ({group:04X},{elem:04X}) declares {len} bytes but only {} \
                 remain: {TRUNCATED}",
                    b.len().saturating_sub(start)
                )
            })?;
        if (group, elem) == (0x0002, 0x0010) {
            let uid = String::from_utf8_lossy(value);
            ts = Some(trim_uid(&uid).to_string());
        }
        pos = start + len as usize;
        read += header as u64 + u64::from(len);
    }
    match ts {
        Some(ts) if !ts.is_empty() => Ok((ts, pos)),
        _ => Err(no_ts(pos)),
    }
}

/// A reader over the data set that counts what it hands out.
struct Counted<'a> {
    rest: &'a [u8],
    read: Rc<Cell<usize>>,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.read(buf)?;
        self.read.set(self.read.get() + n);
        Ok(n)
    }
}

/// Walks the data set with dicom-rs' token reader and refuses any element or item whose defined
/// length runs past the end of the file, before the reader reserves a buffer of that length.
/// A parse error ends the walk quietly: the parse proper reports it.
pub(super) fn check_lengths(b: &[u8], start: usize, explicit: bool) -> Result<(), String> {
    let data = b.get(start..).unwrap_or_default();
    let read = Rc::new(Cell::new(0usize));
    let source = Counted {
        rest: data,
        read: Rc::clone(&read),
    };
    let ts = if explicit {
        entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let Ok(tokens) =
        DataSetReader::new_with_ts_options(source, &ts, DataSetReaderOptions::default())
    else {
        return Ok(());
    };
    for token in tokens {
        let (what, len) = match token {
            Ok(DataToken::ElementHeader(h)) => {
                (format!("({:04X},{:04X})", h.tag.0, h.tag.1), h.len.get())
            }
            Ok(DataToken::ItemStart { len }) => ("an item".to_string(), len.get()),
            Ok(_) => continue,
            Err(_) => return Ok(()),
        };
        let remain = data.len() - read.get();
        if let Some(len) = len
            && len as usize > remain
        {
            return Err(format!(
                "{what} declares {len} bytes but only {remain} remain: {TRUNCATED}"
            ));
        }
    }
    Ok(())
}
