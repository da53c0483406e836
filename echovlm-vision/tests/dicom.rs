//! DICOM input against pydicom 3.0.2: fixtures and goldens from `tools/make_dicom_fixtures.py`.
//!
//! Native data (MONOCHROME1/2 8- and 16-bit, RGB planar 0/1, YBR_FULL, YBR_FULL_422) must decode
//! bit-exactly to the goldens; JPEG baseline within the tolerance measured between `jpeg-decoder`
//! and libjpeg-turbo (through Pillow) + pydicom's colour conversion.
#![cfg(feature = "dicom")]

use std::path::{Path, PathBuf};

use echovlm_vision::dicom::{
    DicomImage, FrameSelection, VoiLutFunction, apply_window, decode_dicom_bytes, has_dicom_magic,
    is_dicom, load_dicom, ybr_full_to_rgb,
};
use echovlm_vision::error::ImageError;
use echovlm_vision::preprocess::MAX_IMAGE_PIXELS;
use serde_json::Value;

/// Largest per-sample difference on `us_ybr422_jpeg` between jpeg-decoder (IDCT, chroma
/// upsampling and colour conversion its own) and Pillow's libjpeg-turbo YCbCr + pydicom's
/// float32 colour conversion: measured 3 (8 of 27 648 samples; 1 300 differ by 1, 438 by 2).
const JPEG_MAX_DIFF: u8 = 3;
/// Smallest fraction of identical samples on `us_ybr422_jpeg` (measured 0.9368).
const JPEG_MIN_EXACT: f64 = 0.93;
/// Largest mean absolute difference on `us_ybr422_jpeg` (measured 0.0796).
const JPEG_MAX_MEAN: f64 = 0.09;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dicom")
}

fn fixture(name: &str) -> PathBuf {
    dir().join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn object(name: &str) -> Value {
    expected()["objects"][name].clone()
}

/// The golden frames of `name`: frames x rows x columns x 3 bytes.
fn golden(name: &str) -> (Vec<u8>, [usize; 4]) {
    let o = object(name);
    let shape: Vec<usize> = o["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(fixture(o["golden"].as_str().unwrap())).unwrap();
    assert_eq!(bytes.len(), shape.iter().product::<usize>());
    (bytes, [shape[0], shape[1], shape[2], shape[3]])
}

fn golden_frame(name: &str, index: usize) -> Vec<u8> {
    let (bytes, [_, h, w, c]) = golden(name);
    let n = h * w * c;
    bytes[index * n..(index + 1) * n].to_vec()
}

fn load(name: &str, sel: &FrameSelection) -> DicomImage {
    load_dicom(&fixture(&format!("{name}.dcm")), sel).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Loads `name` with all frames and checks metadata and pixels (exactly) against pydicom.
fn check_exact(name: &str) -> DicomImage {
    let o = object(name);
    let img = load(name, &FrameSelection::All);
    let (bytes, [frames, h, w, _]) = golden(name);
    assert_eq!(img.frames.len(), frames, "{name}");
    assert_eq!(
        img.number_of_frames,
        o["number_of_frames"].as_u64().unwrap() as usize
    );
    assert_eq!(img.frame_indices, (0..frames).collect::<Vec<_>>());
    assert_eq!(img.rows as usize, h);
    assert_eq!(img.columns as usize, w);
    assert_eq!(img.rows as u64, o["rows"].as_u64().unwrap());
    assert_eq!(img.columns as u64, o["columns"].as_u64().unwrap());
    assert_eq!(img.sop_class_uid, o["sop_class_uid"].as_str().unwrap());
    assert_eq!(
        img.transfer_syntax_uid,
        o["transfer_syntax_uid"].as_str().unwrap()
    );
    assert_eq!(
        img.photometric_interpretation,
        o["photometric_interpretation"].as_str().unwrap()
    );
    assert_eq!(
        img.samples_per_pixel as u64,
        o["samples_per_pixel"].as_u64().unwrap()
    );
    assert_eq!(
        img.bits_allocated as u64,
        o["bits_allocated"].as_u64().unwrap()
    );
    assert_eq!(img.frame_time_ms, o["frame_time_ms"].as_f64());
    assert_eq!(img.modality.as_deref(), Some("US"));
    assert_eq!(img.is_multiframe(), img.number_of_frames > 1);
    let n = h * w * 3;
    for (i, f) in img.frames.iter().enumerate() {
        assert_eq!((f.height() as usize, f.width() as usize), (h, w));
        let want = &bytes[i * n..(i + 1) * n];
        let diff = f.as_raw().iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff, 0,
            "{name} frame {i}: {diff} samples differ from pydicom"
        );
    }
    img
}

#[test]
fn mono8_single_frame_explicit_vr() {
    let img = check_exact("us_mono8");
    assert!(!img.is_multiframe());
    assert_eq!((img.rows, img.columns), (72, 96));
    assert_eq!(img.sop_class_uid, "1.2.840.10008.5.1.4.1.1.6.1");
    assert_eq!(img.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    assert_eq!(img.window, None);
    // grey replicated to three channels, with real content (speckle, black outside the fan)
    let raw = img.frames[0].as_raw();
    assert!(raw.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    assert_eq!(raw[0], 0);
    assert!(raw.iter().max().copied().unwrap() > 150);
}

#[test]
fn rgb_cine_implicit_vr_planar0() {
    let img = check_exact("us_rgb_cine");
    assert!(img.is_multiframe());
    assert_eq!(img.number_of_frames, 5);
    assert_eq!(img.transfer_syntax_uid, "1.2.840.10008.1.2");
    assert_eq!(img.sop_class_uid, "1.2.840.10008.5.1.4.1.1.3.1");
    assert_eq!(img.frame_time_ms, Some(33.3));
    // the red Doppler box of frame 0 at row 9 (48/5), column 9 (0.15 * 64)
    assert_eq!(img.frames[0].get_pixel(9, 9).0, [200, 40, 40]);
}

#[test]
fn rgb_planar_configuration_1() {
    let img = check_exact("us_rgb_planar1");
    assert_eq!(object("us_rgb_planar1")["planar_configuration"], 1);
    assert_eq!(img.number_of_frames, 3);
}

#[test]
fn mono1_is_inverted() {
    let img = check_exact("us_mono1");
    assert_eq!(img.photometric_interpretation, "MONOCHROME1");
    // stored 255 outside the fan (255 - black) displays black
    assert_eq!(img.frames[0].get_pixel(0, 0).0, [0, 0, 0]);
}

#[test]
fn ybr_full_native_matches_pydicom_colour_conversion() {
    check_exact("us_ybr_full");
}

#[test]
fn ybr_full_422_native_matches_pydicom() {
    check_exact("us_ybr422_native");
}

#[test]
fn ybr_full_to_rgb_table_matches_pydicom_everywhere() {
    // all 2^24 (Y, Cb, Cr) against pydicom's convert_color_space, as weighted sums
    let want: Vec<u64> = expected()["ybr_full_to_rgb_checksum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut sums = [0u64; 3];
    for i in 0u64..1 << 24 {
        let rgb = ybr_full_to_rgb((i >> 16) as u8, (i >> 8) as u8, i as u8);
        let w = i % 65521 + 1;
        for c in 0..3 {
            sums[c] += u64::from(rgb[c]) * w;
        }
    }
    assert_eq!(sums.to_vec(), want);
}

#[test]
fn mono16_window_center_width() {
    let img = check_exact("us_mono16_window");
    // the first of the two windows (500/1600), in rescaled units (intercept -1024)
    assert_eq!(img.window, Some((500.0, 1600.0)));
    assert_eq!(img.bits_allocated, 16);
    assert_eq!(img.bits_stored, 12);
    // the ramp on the left edge covers both saturated ends and the linear part
    let col: Vec<u8> = (0..60)
        .map(|y| img.frames[0].get_pixel(0, y).0[0])
        .collect();
    assert_eq!(col[0], 0);
    assert_eq!(col[59], 255);
    assert!(col.iter().any(|&v| v > 0 && v < 255));
    // one value by hand: stored 68 * 21 = 1428 (row 21) -> x = 404,
    // ((404 - 499.5) / 1599 + 0.5) * 255 = 112.27 -> 112
    assert_eq!(col[21], 112);
}

#[test]
fn mono16_signed_min_max_per_frame() {
    let img = check_exact("us_mono16_minmax");
    assert_eq!(img.window, None);
    for f in &img.frames[..2] {
        let raw = f.as_raw();
        assert_eq!(raw.iter().min(), Some(&0));
        assert_eq!(raw.iter().max(), Some(&255));
    }
    // a constant frame maps to 0
    assert!(img.frames[2].as_raw().iter().all(|&v| v == 0));
}

#[test]
fn window_functions() {
    use VoiLutFunction::*;
    // LINEAR, c = 40, w = 400: [-160.5, 239.5] -> [0, 255]
    assert_eq!(apply_window(-160.5, 40.0, 400.0, Linear), 0.0);
    assert_eq!(apply_window(239.6, 40.0, 400.0, Linear), 255.0);
    assert_eq!(apply_window(39.5, 40.0, 400.0, Linear), 127.5);
    // w = 1 is a threshold at c - 0.5
    assert_eq!(apply_window(9.5, 10.0, 1.0, Linear), 0.0);
    assert_eq!(apply_window(9.6, 10.0, 1.0, Linear), 255.0);
    // LINEAR_EXACT: (x - c) / w + 0.5
    assert_eq!(apply_window(40.0, 40.0, 400.0, LinearExact), 127.5);
    assert_eq!(apply_window(140.0, 40.0, 400.0, LinearExact), 191.25);
    assert_eq!(apply_window(-160.0, 40.0, 400.0, LinearExact), 0.0);
    // SIGMOID: 255 / (1 + exp(-4 (x - c) / w))
    assert_eq!(apply_window(40.0, 40.0, 400.0, Sigmoid), 127.5);
    let s = apply_window(140.0, 40.0, 400.0, Sigmoid);
    assert!((s - 255.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
}

#[test]
fn jpeg_baseline_ybr_full_422_within_measured_tolerance() {
    let name = "us_ybr422_jpeg";
    let o = object(name);
    let img = load(name, &FrameSelection::All);
    let (bytes, [frames, h, w, _]) = golden(name);
    assert_eq!(img.transfer_syntax_uid, "1.2.840.10008.1.2.4.50");
    assert_eq!(img.photometric_interpretation, "YBR_FULL_422");
    assert_eq!(img.frames.len(), frames);
    assert_eq!((img.rows as usize, img.columns as usize), (h, w));
    assert_eq!(
        img.number_of_frames,
        o["number_of_frames"].as_u64().unwrap() as usize
    );
    let ours: Vec<u8> = img.frames.iter().flat_map(|f| f.as_raw().clone()).collect();
    assert_eq!(ours.len(), bytes.len());
    let mut hist = [0usize; 256];
    for (a, b) in ours.iter().zip(&bytes) {
        hist[usize::from(a.abs_diff(*b))] += 1;
    }
    let max = hist.iter().rposition(|&n| n > 0).unwrap() as u8;
    let exact = hist[0] as f64 / bytes.len() as f64;
    let mean = hist
        .iter()
        .enumerate()
        .map(|(d, &n)| d as f64 * n as f64)
        .sum::<f64>()
        / bytes.len() as f64;
    println!(
        "JPEG baseline vs pydicom: max |diff| {max}, exact {:.4}, mean |diff| {mean:.4}, \
         histogram {:?}",
        exact,
        &hist[..=usize::from(max)]
    );
    assert!(max <= JPEG_MAX_DIFF, "max |diff| {max} > {JPEG_MAX_DIFF}");
    assert!(exact >= JPEG_MIN_EXACT, "only {exact:.4} of samples exact");
    assert!(mean <= JPEG_MAX_MEAN, "mean |diff| {mean:.4}");
}

#[test]
fn frame_selection_stride_and_list() {
    let name = "us_rgb_cine";
    let img = load(name, &FrameSelection::Stride(2));
    assert_eq!(img.frame_indices, vec![0, 2, 4]);
    assert_eq!(img.number_of_frames, 5);
    for (f, i) in img.frames.iter().zip([0, 2, 4]) {
        assert_eq!(f.as_raw(), &golden_frame(name, i));
    }
    let img = load(name, &FrameSelection::Stride(10));
    assert_eq!(img.frame_indices, vec![0]);
    let img = load(name, &FrameSelection::List(vec![4, 0, 4]));
    assert_eq!(img.frame_indices, vec![4, 0, 4]);
    for (f, i) in img.frames.iter().zip([4, 0, 4]) {
        assert_eq!(f.as_raw(), &golden_frame(name, i));
    }
    // the same on encapsulated (JPEG) data: a list decodes the same frames as All
    let all = load("us_ybr422_jpeg", &FrameSelection::All);
    let two = load("us_ybr422_jpeg", &FrameSelection::List(vec![2, 1]));
    assert_eq!(
        two.frames,
        vec![all.frames[2].clone(), all.frames[1].clone()]
    );
    assert_eq!(FrameSelection::default(), FrameSelection::All);
}

fn dicom_reason(e: &ImageError) -> &str {
    match e {
        ImageError::Dicom { reason, .. } => reason,
        other => panic!("expected ImageError::Dicom, got {other:?}"),
    }
}

fn unsupported_reason(e: &ImageError) -> &str {
    match e {
        ImageError::UnsupportedDicom { reason, .. } => reason,
        other => panic!("expected ImageError::UnsupportedDicom, got {other:?}"),
    }
}

#[test]
fn bad_frame_selections_are_refused() {
    let path = fixture("us_rgb_cine.dcm");
    let e = load_dicom(&path, &FrameSelection::Stride(0)).unwrap_err();
    assert!(dicom_reason(&e).contains("stride"), "{e}");
    assert_eq!(e.path(), Some(path.as_path()));
    let e = load_dicom(&path, &FrameSelection::List(vec![])).unwrap_err();
    assert!(dicom_reason(&e).contains("empty"), "{e}");
    let e = load_dicom(&path, &FrameSelection::List(vec![1, 5])).unwrap_err();
    let r = dicom_reason(&e);
    assert!(
        r.contains("frame index 5 is out of range") && r.contains("5 frames"),
        "{e}"
    );
    let e = load_dicom(&fixture("us_mono8.dcm"), &FrameSelection::List(vec![1])).unwrap_err();
    assert!(dicom_reason(&e).contains("1 frame "), "{e}");
    let e = load_dicom(
        &fixture("us_ybr422_jpeg.dcm"),
        &FrameSelection::List(vec![3]),
    )
    .unwrap_err();
    assert!(dicom_reason(&e).contains("out of range"), "{e}");
}

#[test]
fn non_image_object_is_refused() {
    let path = fixture("sr_text.dcm");
    assert!(is_dicom(&path));
    let e = load_dicom(&path, &FrameSelection::All).unwrap_err();
    let r = unsupported_reason(&e);
    for want in expected()["errors"]["sr_text"]["contains"]
        .as_array()
        .unwrap()
    {
        assert!(r.contains(want.as_str().unwrap()), "{e}");
    }
    assert!(
        r.contains("Basic Text SR Storage") && r.contains("not an image"),
        "{e}"
    );
    assert_eq!(e.path(), Some(path.as_path()));
    assert!(e.to_string().contains("sr_text.dcm"), "{e}");
}

#[test]
fn unsupported_transfer_syntax_is_named() {
    let path = fixture("us_rle.dcm");
    assert!(is_dicom(&path));
    let e = load_dicom(&path, &FrameSelection::All).unwrap_err();
    let r = unsupported_reason(&e);
    for want in expected()["errors"]["us_rle"]["contains"]
        .as_array()
        .unwrap()
    {
        assert!(r.contains(want.as_str().unwrap()), "{e}");
    }
    assert!(e.to_string().contains("us_rle.dcm"), "{e}");
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn truncated_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "us_mono8",
        "us_rgb_cine",
        "us_ybr422_jpeg",
        "us_mono16_window",
    ] {
        let bytes = std::fs::read(fixture(&format!("{name}.dcm"))).unwrap();
        // cut inside the pixel data, inside the data set header and inside the file meta
        for cut in [bytes.len() - 301, 700, 200] {
            let p = write_temp(&tmp, &format!("{name}_{cut}.dcm"), &bytes[..cut]);
            let e = load_dicom(&p, &FrameSelection::All).unwrap_err();
            println!("{name} cut at {cut}: {e}");
            let r = dicom_reason(&e);
            assert!(
                r.contains("truncated") || r.contains("cannot parse"),
                "{name} at {cut}: {e}"
            );
            assert_eq!(e.path(), Some(p.as_path()));
        }
        // only the preamble and the magic
        let p = write_temp(&tmp, &format!("{name}_magic.dcm"), &bytes[..132]);
        let e = load_dicom(&p, &FrameSelection::All).unwrap_err();
        assert!(dicom_reason(&e).contains("Transfer Syntax UID"), "{e}");
    }
}

#[test]
fn pixel_data_shorter_than_declared_frames_is_refused() {
    // cine loop claiming 6 frames while holding 5
    let mut bytes = std::fs::read(fixture("us_rgb_cine.dcm")).unwrap();
    let at = find(&bytes, &[0x28, 0x00, 0x08, 0x00]).expect("Number of Frames");
    // implicit VR: tag, 4-byte length 2, value "5 "
    assert_eq!(&bytes[at + 8..at + 10], b"5 ");
    bytes[at + 8] = b'6';
    let e = decode_dicom_bytes(&bytes, &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("need"), "{e}");
    assert_eq!(e.path(), None);
}

#[test]
fn empty_and_non_dicom_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write_temp(&tmp, "empty.dcm", b"");
    assert!(!is_dicom(&empty));
    assert!(matches!(
        load_dicom(&empty, &FrameSelection::All),
        Err(ImageError::Empty { path: Some(p) }) if p == empty
    ));

    // a PNG named .dcm: the extension alone does not make it DICOM
    let png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/liver_182x238.png"),
    )
    .unwrap();
    let fake = write_temp(&tmp, "liver.dcm", &png);
    assert!(!is_dicom(&fake));
    let e = load_dicom(&fake, &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("not a DICOM file"), "{e}");
    assert!(e.to_string().contains("liver.dcm"), "{e}");

    let short = write_temp(&tmp, "short.dcm", b"DICM");
    let e = load_dicom(&short, &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("too short"), "{e}");

    // a real DICOM without the .dcm extension is recognised by its content
    let bytes = std::fs::read(fixture("us_mono8.dcm")).unwrap();
    let plain = write_temp(&tmp, "IM000001", &bytes);
    assert!(is_dicom(&plain));
    assert!(has_dicom_magic(&bytes));
    assert!(load_dicom(&plain, &FrameSelection::All).is_ok());

    let missing = tmp.path().join("missing.dcm");
    assert!(!is_dicom(&missing));
    assert!(matches!(
        load_dicom(&missing, &FrameSelection::All),
        Err(ImageError::Io { .. })
    ));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `us_mono8.dcm` with Rows and Columns replaced (explicit VR `US` values).
fn mono8_with_size(rows: u16, cols: u16) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture("us_mono8.dcm")).unwrap();
    let r = find(&bytes, &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0]).unwrap();
    bytes[r + 8..r + 10].copy_from_slice(&rows.to_le_bytes());
    let c = find(&bytes, &[0x28, 0x00, 0x11, 0x00, b'U', b'S', 2, 0]).unwrap();
    bytes[c + 8..c + 10].copy_from_slice(&cols.to_le_bytes());
    bytes
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let e = decode_dicom_bytes(&mono8_with_size(65535, 65535), &FrameSelection::All).unwrap_err();
    assert!(
        matches!(e, ImageError::TooLarge { width: 65535, height: 65535, limit, .. } if limit == MAX_IMAGE_PIXELS),
        "{e}"
    );
    // one frame at the per-frame limit is fine size-wise (then too little pixel data) ...
    let e = decode_dicom_bytes(&mono8_with_size(16384, 16384), &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("need"), "{e}");
    // ... but selecting it 5 times is over the total limit
    let e = decode_dicom_bytes(
        &mono8_with_size(16384, 16384),
        &FrameSelection::List(vec![0; 5]),
    )
    .unwrap_err();
    assert!(dicom_reason(&e).contains("select fewer frames"), "{e}");
    assert!(matches!(
        decode_dicom_bytes(&mono8_with_size(0, 96), &FrameSelection::All),
        Err(ImageError::ZeroSize {
            height: 0,
            width: 96
        })
    ));
}

#[test]
fn corrupt_element_length_is_refused() {
    // Pixel Data (explicit VR OB/OW) declaring ~4 GiB
    let mut bytes = std::fs::read(fixture("us_mono8.dcm")).unwrap();
    let at = find(&bytes, &[0xE0, 0x7F, 0x10, 0x00]).unwrap();
    bytes[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let e = decode_dicom_bytes(&bytes, &FrameSelection::All).unwrap_err();
    let r = dicom_reason(&e);
    assert!(
        r.contains("(7FE0,0010) declares 4294967280 bytes") && r.contains("truncated"),
        "{e}"
    );

    // a text element (Patient Name, short explicit VR) longer than the rest of the file
    let mut bytes = std::fs::read(fixture("us_rgb_cine.dcm")).unwrap();
    let at = find(&bytes, &[0x10, 0x00, 0x10, 0x00]).unwrap();
    // implicit VR: 4-byte length
    bytes[at + 4..at + 8].copy_from_slice(&0x7FFF_0000u32.to_le_bytes());
    let e = decode_dicom_bytes(&bytes, &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("(0010,0010) declares"), "{e}");

    // a JPEG fragment whose frame header disagrees with Rows/Columns
    let mut bytes = std::fs::read(fixture("us_ybr422_jpeg.dcm")).unwrap();
    let sof = find(&bytes, &[0xFF, 0xC0, 0x00, 0x11, 0x08]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&96u16.to_be_bytes()); // height 48 -> 96
    let e = decode_dicom_bytes(&bytes, &FrameSelection::All).unwrap_err();
    assert!(dicom_reason(&e).contains("JPEG frame 0 is 96x64"), "{e}");
    // corrupt entropy-coded data decodes or fails, but never panics
    let mut bytes = std::fs::read(fixture("us_ybr422_jpeg.dcm")).unwrap();
    let sos = find(&bytes, &[0xFF, 0xDA]).unwrap();
    for b in &mut bytes[sos + 20..sos + 400] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let _ = decode_dicom_bytes(&bytes, &FrameSelection::All);
}

#[test]
fn bytes_and_file_decode_the_same() {
    let bytes = std::fs::read(fixture("us_rgb_planar1.dcm")).unwrap();
    let a = decode_dicom_bytes(&bytes, &FrameSelection::Stride(2)).unwrap();
    let b = load("us_rgb_planar1", &FrameSelection::Stride(2));
    assert_eq!(a, b);
    assert_eq!(a.frame_indices, vec![0, 2]);
}

/// The committed hostile DICOM files (`tools/make_hostile_corpus.py`, `tests/corpus/dicom/`):
/// each is refused with [`ImageError::Dicom`] naming what is wrong, without allocating what its
/// lengths or frame count declare.
#[test]
fn hostile_corpus_is_refused() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/dicom");
    let cases: [(&str, FrameSelection, &str); 4] = [
        // a VR dicom-rs reads as UN with a 4-byte length (fuzz finding: the pre-scan stopped)
        (
            "unknown_vr_long_length.dcm",
            FrameSelection::All,
            "(0010,0020) declares 1330135877 bytes",
        ),
        (
            "meta_unknown_vr_long_length.dcm",
            FrameSelection::All,
            "file meta element (0002,0002) declares 4294967280 bytes",
        ),
        (
            "huge_number_of_frames.dcm",
            FrameSelection::All,
            "1000000000 frames of 1x1 pixels",
        ),
        (
            "jpeg_huge_number_of_frames.dcm",
            FrameSelection::List(vec![0]),
            "Number of Frames (0028,0008) is 999999999, but the Pixel Data holds 3 fragments",
        ),
    ];
    for (name, selection, want) in cases {
        let path = corpus.join(name);
        assert!(is_dicom(&path), "{name}");
        let e = load_dicom(&path, &selection).unwrap_err();
        assert!(dicom_reason(&e).contains(want), "{name}: {e}");
        assert!(
            dicom_reason(&e).contains("truncated") == want.contains("declares"),
            "{e}"
        );
        assert_eq!(e.path(), Some(path.as_path()));
    }
}

#[test]
fn cine_frame_rate_follows_frame_time_and_the_selection() {
    let all = load("us_rgb_cine", &FrameSelection::All);
    assert_eq!(all.cine_rate, None);
    let fps = all.frames_per_second().unwrap();
    assert!((fps - 1000.0 / 33.3).abs() < 1e-9, "{fps}");
    // every second frame plays at half the rate
    let strided = load("us_rgb_cine", &FrameSelection::Stride(2));
    let half = strided.frames_per_second().unwrap();
    assert!((half - 1000.0 / 33.3 / 2.0).abs() < 1e-9, "{half}");
    // frames picked out of order have no rate
    let picked = load("us_rgb_cine", &FrameSelection::List(vec![3, 0, 1]));
    assert_eq!(picked.frames_per_second(), None);
    // an object without Frame Time or Cine Rate records none
    let still = check_exact("us_mono8");
    assert_eq!(still.frames_per_second(), None);
}
