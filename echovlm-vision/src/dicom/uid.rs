//! UIDs the reader knows by name: the supported transfer syntaxes, the ultrasound SOP classes,
//! and the names of the others for messages.

/// SOP Class UID of US Image Storage (single-frame ultrasound).
pub const US_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.6.1";
/// SOP Class UID of US Multi-frame Image Storage (ultrasound cine loops).
pub const US_MULTIFRAME_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.3.1";
/// Transfer Syntax UID of Implicit VR Little Endian.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Transfer Syntax UID of Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Transfer Syntax UID of JPEG Baseline (Process 1).
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// The name of a transfer syntax (PS3.6 Table A-1), for messages.
pub fn transfer_syntax_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless Image Compression",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Part 2 Multi-component (Lossless Only)",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component Image Compression",
        "1.2.840.10008.1.2.4.94" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.95" => "JPIP Referenced Deflate",
        "1.2.840.10008.1.2.4.100" => "MPEG2 Main Profile / Main Level",
        "1.2.840.10008.1.2.4.101" => "MPEG2 Main Profile / High Level",
        "1.2.840.10008.1.2.4.102" => "MPEG-4 AVC/H.264 High Profile / Level 4.1",
        "1.2.840.10008.1.2.4.103" => "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
        "1.2.840.10008.1.2.4.104" => "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
        "1.2.840.10008.1.2.4.105" => "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
        "1.2.840.10008.1.2.4.106" => "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
        "1.2.840.10008.1.2.4.107" => "HEVC/H.265 Main Profile / Level 5.1",
        "1.2.840.10008.1.2.4.108" => "HEVC/H.265 Main 10 Profile / Level 5.1",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => return None,
    })
}

/// The name of a few SOP classes met next to ultrasound images, for messages.
pub(super) fn sop_class_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        US_IMAGE_STORAGE => "US Image Storage",
        US_MULTIFRAME_IMAGE_STORAGE => "US Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.2" => "Enhanced US Volume Storage",
        "1.2.840.10008.5.1.4.1.1.7" => "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.11.1" => "Grayscale Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.66" => "Raw Data Storage",
        "1.2.840.10008.5.1.4.1.1.88.11" => "Basic Text SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.22" => "Enhanced SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.33" => "Comprehensive SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.34" => "Comprehensive 3D SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.59" => "Key Object Selection Document Storage",
        "1.2.840.10008.5.1.4.1.1.104.1" => "Encapsulated PDF Storage",
        _ => return None,
    })
}

/// `s` without the NUL / space padding of DICOM text values.
pub(super) fn trim_uid(s: &str) -> &str {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}
