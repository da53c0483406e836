//! Bytes → `decode_dicom_bytes` with a frame selection taken from the first input bytes.
//!
//! Input: a 4-byte header, then the body. Header byte 0, bits 0–1, choose the selection (all, a
//! stride, a list of indices, an out-of-range index); bits 2–3 the mode:
//!
//! * 0 and 3: the body is a whole DICOM file (seeded from `fixtures/dicom`), which reaches the
//!   pre-scanner (file meta and element lengths), dicom-rs' parser and every pixel layout;
//! * 1: the body is a few JPEG fragments wrapped into a JPEG Baseline object whose geometry
//!   comes from the body's first bytes, which reaches fragment gathering, the start-of-frame
//!   check and the JPEG decoder with arbitrary streams;
//! * 2: the body is native pixel data wrapped into an Explicit VR Little Endian object whose
//!   image attributes (photometric interpretation, bits, sign, planar configuration, rescale,
//!   window, VOI LUT function) come from the body's first bytes, which reaches the sample
//!   unpacking, colour conversion and VOI stage with arbitrary attribute combinations.
//!
//! Every input must give either a typed error or frames that are well-formed RGB images of the
//! declared size, as many as (and in the order) the selection asks.
#![no_main]

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use echovlm_vision::dicom::{
    EXPLICIT_VR_LITTLE_ENDIAN, FrameSelection, JPEG_BASELINE, US_MULTIFRAME_IMAGE_STORAGE,
    decode_dicom_bytes, has_dicom_magic,
};
use echovlm_vision::error::ImageError;
use libfuzzer_sys::fuzz_target;

fn selection(h: [u8; 4]) -> FrameSelection {
    match h[0] & 3 {
        0 => FrameSelection::All,
        1 => FrameSelection::Stride(usize::from(h[1])),
        2 => FrameSelection::List(
            [h[2], h[3], h[2].wrapping_add(h[3])][..usize::from(h[1] % 4).min(3)]
                .iter()
                .map(|&i| usize::from(i))
                .collect(),
        ),
        _ => FrameSelection::List(vec![usize::from(h[2]), usize::MAX - usize::from(h[3])]),
    }
}

/// The frame indices `selection` must yield for an object of `n` frames, if it fits.
fn expected_indices(selection: &FrameSelection, n: usize) -> Option<Vec<usize>> {
    match selection {
        FrameSelection::All => Some((0..n).collect()),
        FrameSelection::Stride(0) => None,
        FrameSelection::Stride(s) => Some((0..n).step_by(*s).collect()),
        FrameSelection::List(l) if l.is_empty() || l.iter().any(|&i| i >= n) => None,
        FrameSelection::List(l) => Some(l.clone()),
    }
}

/// A byte reader over the body that yields zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

const PHOTOMETRIC: [&str; 7] = [
    "MONOCHROME2",
    "MONOCHROME1",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "PALETTE COLOR",
    "",
];

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: PrimitiveValue) {
    obj.put(DataElement::new(tag, vr, value));
}

/// The common attributes of an image object, then the file around `obj`.
fn file(mut obj: InMemDicomObject, ts: &str) -> Vec<u8> {
    put(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        US_MULTIFRAME_IMAGE_STORAGE.into(),
    );
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4".into());
    put(&mut obj, tags::MODALITY, VR::CS, "US".into());
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(US_MULTIFRAME_IMAGE_STORAGE)
                .media_storage_sop_instance_uid("1.2.3.4"),
        )
        .expect("file meta");
    let mut out = Vec::new();
    file.write_all(&mut out)
        .expect("an in-memory object writes");
    out
}

/// Mode 1: JPEG fragments (`u16` length, bytes; the last one takes the rest) in a JPEG Baseline
/// object.
fn jpeg_object(mut b: Bytes<'_>) -> (Vec<u8>, u16, u16) {
    let rows = b.u16();
    let columns = b.u16();
    let samples = if b.u8() & 1 == 0 { 1u16 } else { 3 };
    let photometric = PHOTOMETRIC[usize::from(b.u8()) % PHOTOMETRIC.len()];
    let frames = b.u8();
    let table = b.u8();
    let count = usize::from(b.u8() % 4) + 1;
    let mut fragments = Vec::new();
    for k in 0..count {
        let len = if k + 1 == count {
            b.0.len()
        } else {
            usize::from(b.u16()).min(b.0.len())
        };
        let (head, rest) = b.0.split_at(len);
        // fragments have even lengths
        let mut f = head.to_vec();
        if f.len() % 2 == 1 {
            f.push(0);
        }
        fragments.push(f);
        b.0 = rest;
    }
    // Basic Offset Table: none, the true one, or the true one shifted
    let offsets: Vec<u32> = match table % 3 {
        0 => vec![],
        t => {
            let mut at = 0u32;
            fragments
                .iter()
                .map(|f| {
                    let o = at + if t == 2 { u32::from(table) } else { 0 };
                    at += f.len() as u32 + 8;
                    o
                })
                .collect()
        }
    };
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::ROWS, VR::US, rows.into());
    put(&mut obj, tags::COLUMNS, VR::US, columns.into());
    put(&mut obj, tags::SAMPLES_PER_PIXEL, VR::US, samples.into());
    put(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric.into(),
    );
    put(&mut obj, tags::BITS_ALLOCATED, VR::US, 8u16.into());
    put(&mut obj, tags::BITS_STORED, VR::US, 8u16.into());
    put(&mut obj, tags::PIXEL_REPRESENTATION, VR::US, 0u16.into());
    if frames > 0 {
        put(
            &mut obj,
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            frames.to_string().into(),
        );
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(offsets, fragments),
    ));
    (file(obj, JPEG_BASELINE), rows, columns)
}

/// Mode 2: native pixel data in an Explicit VR Little Endian object.
fn native_object(mut b: Bytes<'_>) -> (Vec<u8>, u16, u16) {
    let rows = u16::from(b.u8());
    let columns = u16::from(b.u8());
    let frames = b.u8();
    let samples = u16::from(b.u8() % 4);
    let photometric = PHOTOMETRIC[usize::from(b.u8()) % PHOTOMETRIC.len()];
    let bits_allocated = match b.u8() {
        0..=127 => 8u16,
        128..=250 => 16,
        n => u16::from(n - 250) * 4,
    };
    let bits_stored = u16::from(b.u8() % 18);
    let pixel_representation = u16::from(b.u8() % 3);
    let planar = u16::from(b.u8() % 3);
    let flags = b.u8();
    let center = b.u16() as i16;
    let width = b.u16() as i16;
    let slope = b.u8() as i8;
    let intercept = b.u16() as i16;
    let function = ["LINEAR", "LINEAR_EXACT", "SIGMOID", "OTHER"][usize::from(b.u8() % 4)];
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::ROWS, VR::US, rows.into());
    put(&mut obj, tags::COLUMNS, VR::US, columns.into());
    put(&mut obj, tags::SAMPLES_PER_PIXEL, VR::US, samples.into());
    put(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric.into(),
    );
    put(
        &mut obj,
        tags::BITS_ALLOCATED,
        VR::US,
        bits_allocated.into(),
    );
    if flags & 1 != 0 {
        put(&mut obj, tags::BITS_STORED, VR::US, bits_stored.into());
    }
    put(
        &mut obj,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        pixel_representation.into(),
    );
    if samples == 3 {
        put(&mut obj, tags::PLANAR_CONFIGURATION, VR::US, planar.into());
    }
    if frames > 0 {
        put(
            &mut obj,
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            frames.to_string().into(),
        );
    }
    if flags & 2 != 0 {
        put(
            &mut obj,
            tags::WINDOW_CENTER,
            VR::DS,
            center.to_string().into(),
        );
        put(
            &mut obj,
            tags::WINDOW_WIDTH,
            VR::DS,
            width.to_string().into(),
        );
    }
    if flags & 4 != 0 {
        put(
            &mut obj,
            tags::RESCALE_SLOPE,
            VR::DS,
            (f64::from(slope) / 16.0).to_string().into(),
        );
        put(
            &mut obj,
            tags::RESCALE_INTERCEPT,
            VR::DS,
            intercept.to_string().into(),
        );
    }
    if flags & 8 != 0 {
        put(&mut obj, tags::VOILUT_FUNCTION, VR::CS, function.into());
    }
    if flags & 16 != 0 {
        put(&mut obj, tags::FRAME_TIME, VR::DS, "33.3".into());
    }
    let pixels = if bits_allocated > 8 {
        let words: Vec<u16> =
            b.0.chunks_exact(2)
                .map(|w| u16::from_le_bytes([w[0], w[1]]))
                .collect();
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words.into()))
    } else {
        let mut bytes = b.0.to_vec();
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(bytes.into()))
    };
    obj.put(pixels);
    (file(obj, EXPLICIT_VR_LITTLE_ENDIAN), rows, columns)
}

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let selection = selection(*head);
    let (bytes, declared) = match (head[0] >> 2) & 3 {
        1 => {
            let (f, r, c) = jpeg_object(Bytes(body));
            (f, Some((r, c)))
        }
        2 => {
            let (f, r, c) = native_object(Bytes(body));
            (f, Some((r, c)))
        }
        _ => (body.to_vec(), None),
    };
    let img = match decode_dicom_bytes(&bytes, &selection) {
        Ok(img) => img,
        Err(
            ImageError::Dicom { path: None, .. }
            | ImageError::UnsupportedDicom { path: None, .. }
            | ImageError::ZeroSize { .. }
            | ImageError::TooLarge { path: None, .. },
        ) => return,
        Err(ImageError::Empty { path: None }) if bytes.is_empty() => return,
        Err(other) => panic!("unexpected error from decode_dicom_bytes: {other:?}"),
    };
    assert!(has_dicom_magic(&bytes));
    let (w, h) = (img.columns, img.rows);
    assert!(w > 0 && h > 0);
    if let Some((rows, columns)) = declared {
        assert_eq!((h, w), (u32::from(rows), u32::from(columns)));
    }
    assert!(matches!(img.samples_per_pixel, 1 | 3));
    assert!(matches!(img.bits_allocated, 8 | 16));
    assert!(img.bits_stored >= 1 && img.bits_stored <= img.bits_allocated);
    assert!(img.number_of_frames >= 1);
    let want = expected_indices(&selection, img.number_of_frames)
        .unwrap_or_else(|| panic!("{selection:?} accepted for {} frames", img.number_of_frames));
    assert_eq!(img.frame_indices, want);
    assert_eq!(img.frames.len(), img.frame_indices.len());
    assert!(!img.frames.is_empty());
    for f in &img.frames {
        assert_eq!((f.width(), f.height()), (w, h));
        assert_eq!(f.as_raw().len(), w as usize * h as usize * 3);
    }
    if let Some((c, width)) = img.window {
        assert!(c.is_finite() && width.is_finite() && width > 0.0);
    }
    if let Some(t) = img.frame_time_ms {
        assert!(t.is_finite());
    }
});
