#!/usr/bin/env python3
"""Writes the DICOM test objects and their golden RGB frames under fixtures/dicom/.

Run from the repository root:  tools/.venv/bin/python tools/make_dicom_fixtures.py
(reference versions: pydicom 3.0.2, numpy 2.1.3, Pillow 13.0.0 with libjpeg-turbo; pydicom
decodes JPEG baseline through its Pillow plugin, as no other JPEG plugin is installed).
Everything is seeded and every UID and date is fixed, so rerunning rewrites identical files
(the JPEG bytes depend on the libjpeg build inside Pillow).

For every decodable object `<name>.dcm` the golden `<name>.rgb` holds all frames as raw 8-bit
RGB, frames x rows x columns x 3 bytes, taken from pydicom's `ds.pixel_array` and mapped to
8-bit RGB exactly as `echovlm_vision::dicom` does:

* RGB: as is (pydicom reorders planar configuration 1 itself);
* YBR_FULL / YBR_FULL_422: pydicom converts to RGB itself (`convert_color_space(arr,
  "YBR_FULL", "RGB")`, float32); for JPEG baseline the YCbCr planes come from libjpeg (Pillow in
  "YCbCr" draft mode, fancy chroma upsampling), the colour conversion from pydicom;
* 8-bit unsigned MONOCHROME2: the stored value, replicated to 3 channels; MONOCHROME1: 255 - v;
* other monochrome samples (16-bit, signed): in float64, `x = v * RescaleSlope + RescaleIntercept`
  (slope 1 and intercept 0 when absent), then with the first WindowCenter c / WindowWidth w
  (DICOM linear VOI LUT, PS3.3 C.11.2.1.2.1):
      y = 0                                        if x <= c - 0.5 - (w - 1) / 2
      y = 255                                      if x >  c - 0.5 + (w - 1) / 2
      y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255  otherwise
  and without a window, per frame, `y = (x - min) / (max - min) * 255` (0 for a constant frame);
  then `floor(y + 0.5)` clipped to 0..=255 (255 - that for MONOCHROME1), replicated to RGB.

`expected.json` lists each object's attributes and golden shape, what the error objects
(non-image SR, RLE transfer syntax) must be refused with, and a checksum of pydicom's whole
YBR_FULL -> RGB table (all 2^24 inputs).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UID,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "dicom"

US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # fixed, synthetic


def synthetic_ultrasound(h: int, w: int, seed: int, lesion=True, shift=0.0) -> np.ndarray:
    """A B-mode-like frame (as in tools/make_fixtures.py): sector fan, speckle, dark lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, top = w / 2.0, -0.15 * h
    r = np.hypot(xx - cx, yy - top)
    ang = np.arctan2(xx - cx, yy - top)
    fan = (np.abs(ang) < 0.6) & (r > 0.2 * h) & (r < 1.12 * h)
    speckle = rng.rayleigh(0.35, size=(h, w))
    base = 0.45 + 0.25 * np.sin(r / (0.07 * h))
    img = base * speckle
    if lesion:
        ly, lx, rad = 0.55 * h, (0.52 + shift) * w, 0.14 * min(h, w)
        d = np.hypot(xx - lx, yy - ly)
        img = np.where(d < rad, img * 0.3, img)
        img = np.where(np.abs(d - rad) < 1.5, img + 0.5, img)
    img = np.where(np.abs(yy - 0.8 * h) < 1.0, img + 0.6, img)
    img = np.where(fan, img, 0.0)
    return np.clip(img * 200.0, 0, 255).astype(np.uint8)


def colour_frame(h: int, w: int, seed: int, shift: float) -> np.ndarray:
    """A grey B-mode frame with a red/blue Doppler box moving with `shift`."""
    g = synthetic_ultrasound(h, w, seed, shift=shift)
    rgb = np.stack([g, (g * 0.9).astype(np.uint8), np.clip(g.astype(int) + 12, 0, 255).astype(np.uint8)], -1)
    x0 = int(w * (0.15 + shift))
    rgb[h // 5 : h // 5 + h // 6, x0 : x0 + w // 5] = [200, 40, 40]
    rgb[h // 2 : h // 2 + h // 8, w - x0 - w // 6 : w - x0] = [40, 60, 210]
    return rgb


def base_dataset(sop_class: UID, ts: UID, n: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(f"{UID_ROOT}{n}.1")
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = UID(f"{UID_ROOT}0.1")
    meta.ImplementationVersionName = "ECHOVLM_FIXT"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.Modality = "US" if sop_class in (US_IMAGE, US_MULTIFRAME) else "SR"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = f"ECHOVLM{n:03d}"
    ds.StudyInstanceUID = UID(f"{UID_ROOT}{n}.2")
    ds.SeriesInstanceUID = UID(f"{UID_ROOT}{n}.3")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def image_attrs(ds: Dataset, rows: int, cols: int, spp: int, pi: str, bits: int, frames: int | None):
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = pi
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if spp == 3:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # Frame Time


def save(ds: Dataset, name: str) -> Path:
    path = OUT / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def to_rgb8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """pydicom's pixel_array as frames x rows x cols x 3 uint8 (see the module docstring)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.SamplesPerPixel)
    arr = arr.reshape((frames, int(ds.Rows), int(ds.Columns)) + ((3,) if spp == 3 else ()))
    pi = str(ds.PhotometricInterpretation)
    if spp == 3:
        assert arr.dtype == np.uint8
        return arr
    if arr.dtype == np.uint8:
        grey = arr.copy()
    else:
        out = []
        for f in arr:
            x = f.astype(np.float64)
            x = x * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            if "WindowCenter" in ds and "WindowWidth" in ds:
                c = float(np.atleast_1d(ds.WindowCenter)[0])
                w = float(np.atleast_1d(ds.WindowWidth)[0])
                lo = c - 0.5 - (w - 1) / 2
                hi = c - 0.5 + (w - 1) / 2
                with np.errstate(divide="ignore", invalid="ignore"):
                    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
                y = np.where(x <= lo, 0.0, np.where(x > hi, 255.0, y))
            else:
                mn, mx = x.min(), x.max()
                y = np.zeros_like(x) if mx == mn else (x - mn) / (mx - mn) * 255.0
            out.append(np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8))
        grey = np.stack(out)
    if pi == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., None], 3, axis=-1)


def golden(path: Path, name: str, extra: dict) -> dict:
    ds = pydicom.dcmread(path)
    rgb = to_rgb8(ds, ds.pixel_array)
    (OUT / f"{name}.rgb").write_bytes(np.ascontiguousarray(rgb).tobytes())
    entry = {
        "file": path.name,
        "golden": f"{name}.rgb",
        "shape": list(rgb.shape),
        "sop_class_uid": str(ds.SOPClassUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "number_of_frames": int(ds.get("NumberOfFrames", 1) or 1),
        "samples_per_pixel": int(ds.SamplesPerPixel),
        "bits_allocated": int(ds.BitsAllocated),
        "planar_configuration": int(ds.PlanarConfiguration) if "PlanarConfiguration" in ds else None,
        "frame_time_ms": float(ds.FrameTime) if "FrameTime" in ds else None,
    }
    entry.update(extra)
    return entry


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    expected: dict = {
        "versions": {"pydicom": pydicom.__version__, "numpy": np.__version__, "pillow": PIL.__version__},
        "golden_layout": "raw uint8, frames x rows x columns x 3 (RGB)",
        "objects": {},
        "errors": {},
    }
    objs = expected["objects"]

    # (1) single-frame US, MONOCHROME2 8-bit, Explicit VR LE
    ds = base_dataset(US_IMAGE, ExplicitVRLittleEndian, 1)
    image_attrs(ds, 72, 96, 1, "MONOCHROME2", 8, None)
    ds.PixelData = synthetic_ultrasound(72, 96, 11).tobytes()
    objs["us_mono8"] = golden(save(ds, "us_mono8"), "us_mono8", {"exact": True})

    # (2) US multi-frame RGB 8-bit cine loop, Implicit VR LE, planar configuration 0
    ds = base_dataset(US_MULTIFRAME, ImplicitVRLittleEndian, 2)
    image_attrs(ds, 48, 64, 3, "RGB", 8, 5)
    cine = np.stack([colour_frame(48, 64, 20 + i, 0.05 * i) for i in range(5)])
    ds.PixelData = cine.tobytes()
    objs["us_rgb_cine"] = golden(save(ds, "us_rgb_cine"), "us_rgb_cine", {"exact": True})

    # (3) RGB planar configuration 1 (colour-by-plane), Explicit VR LE
    ds = base_dataset(US_MULTIFRAME, ExplicitVRLittleEndian, 3)
    image_attrs(ds, 36, 48, 3, "RGB", 8, 3)
    ds.PlanarConfiguration = 1
    frames = np.stack([colour_frame(36, 48, 30 + i, 0.1 * i) for i in range(3)])
    ds.PixelData = np.ascontiguousarray(frames.transpose(0, 3, 1, 2)).tobytes()
    objs["us_rgb_planar1"] = golden(save(ds, "us_rgb_planar1"), "us_rgb_planar1", {"exact": True})

    # (4) US multi-frame YBR_FULL_422 JPEG baseline: Pillow JPEG (quality 90, 4:2:2), encapsulated
    ds = base_dataset(US_MULTIFRAME, JPEGBaseline8Bit, 4)
    image_attrs(ds, 48, 64, 3, "YBR_FULL_422", 8, 3)
    jpegs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(colour_frame(48, 64, 40 + i, 0.08 * i), "RGB").save(
            buf, "JPEG", quality=90, subsampling="4:2:2"
        )
        jpegs.append(buf.getvalue())
    ds.PixelData = encapsulate(jpegs, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    objs["us_ybr422_jpeg"] = golden(
        save(ds, "us_ybr422_jpeg"),
        "us_ybr422_jpeg",
        {"exact": False, "decoder": "pydicom pillow plugin (libjpeg-turbo, YCbCr draft) + convert_color_space"},
    )

    # (5) MONOCHROME2 16-bit (12 bits stored) with rescale and window, Explicit VR LE
    ds = base_dataset(US_IMAGE, ExplicitVRLittleEndian, 5)
    image_attrs(ds, 60, 80, 1, "MONOCHROME2", 16, None)
    ds.BitsStored = 12
    ds.HighBit = 11
    g = synthetic_ultrasound(60, 80, 50).astype(np.uint16) * 16
    g[:, :8] = np.arange(0, 4096, 4096 // 60, dtype=np.uint16)[:60, None]  # a full-range ramp
    ds.PixelData = g.tobytes()
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = ["500", "1000"]
    ds.WindowWidth = ["1600", "3000"]
    objs["us_mono16_window"] = golden(
        save(ds, "us_mono16_window"), "us_mono16_window", {"exact": True, "window": [500.0, 1600.0]}
    )

    # (6) non-image object: Basic Text SR without Pixel Data
    ds = base_dataset(BASIC_TEXT_SR, ExplicitVRLittleEndian, 6)
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue = "121071"
    name.CodingSchemeDesignator = "DCM"
    name.CodeMeaning = "Finding"
    text.ConceptNameCodeSequence = Sequence([name])
    text.TextValue = "Thyroid nodule, 8 mm, TI-RADS 3."
    ds.ContentSequence = Sequence([text])
    save(ds, "sr_text")
    expected["errors"]["sr_text"] = {
        "file": "sr_text.dcm",
        "kind": "UnsupportedDicom",
        "contains": ["Pixel Data", str(BASIC_TEXT_SR)],
    }

    # (7) unsupported transfer syntax: RLE Lossless (pydicom's own RLE encoder)
    ds = base_dataset(US_IMAGE, ExplicitVRLittleEndian, 7)
    image_attrs(ds, 48, 64, 1, "MONOCHROME2", 8, None)
    ds.PixelData = synthetic_ultrasound(48, 64, 70).tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, "us_rle")
    expected["errors"]["us_rle"] = {
        "file": "us_rle.dcm",
        "kind": "UnsupportedDicom",
        "contains": [str(RLELossless), "RLE Lossless"],
    }

    # (8) MONOCHROME1 8-bit (inverted on output)
    ds = base_dataset(US_IMAGE, ExplicitVRLittleEndian, 8)
    image_attrs(ds, 24, 32, 1, "MONOCHROME1", 8, None)
    ds.PixelData = (255 - synthetic_ultrasound(24, 32, 80)).tobytes()
    objs["us_mono1"] = golden(save(ds, "us_mono1"), "us_mono1", {"exact": True})

    # (9) native YBR_FULL, 2 frames, Explicit VR LE (pydicom converts to RGB)
    ds = base_dataset(US_MULTIFRAME, ExplicitVRLittleEndian, 9)
    image_attrs(ds, 24, 32, 3, "YBR_FULL", 8, 2)
    rgb = np.stack([colour_frame(24, 32, 90 + i, 0.1 * i) for i in range(2)])
    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    ds.PixelData = ybr.tobytes()
    objs["us_ybr_full"] = golden(save(ds, "us_ybr_full"), "us_ybr_full", {"exact": True})

    # (10) native YBR_FULL_422 (Y1 Y2 Cb Cr per pixel pair), 1 frame
    ds = base_dataset(US_IMAGE, ExplicitVRLittleEndian, 10)
    image_attrs(ds, 24, 32, 3, "YBR_FULL_422", 8, None)
    full = pydicom.pixels.convert_color_space(colour_frame(24, 32, 100, 0.0), "RGB", "YBR_FULL")
    pairs = full.reshape(24, 16, 2, 3)
    packed = np.stack([pairs[:, :, 0, 0], pairs[:, :, 1, 0], pairs[:, :, 0, 1], pairs[:, :, 0, 2]], -1)
    ds.PixelData = packed.astype(np.uint8).tobytes()
    objs["us_ybr422_native"] = golden(save(ds, "us_ybr422_native"), "us_ybr422_native", {"exact": True})

    # (11) 16-bit signed MONOCHROME2 without window: per-frame min-max; frame 2 is constant
    ds = base_dataset(US_MULTIFRAME, ExplicitVRLittleEndian, 11)
    image_attrs(ds, 24, 32, 1, "MONOCHROME2", 16, 3)
    ds.PixelRepresentation = 1
    rng = np.random.default_rng(110)
    f0 = synthetic_ultrasound(24, 32, 111).astype(np.int16) * 37 - 3000
    f1 = rng.integers(-20000, 20001, size=(24, 32)).astype(np.int16)
    f2 = np.full((24, 32), -7, np.int16)
    ds.PixelData = np.stack([f0, f1, f2]).astype("<i2").tobytes()
    objs["us_mono16_minmax"] = golden(save(ds, "us_mono16_minmax"), "us_mono16_minmax", {"exact": True})

    # The whole YBR_FULL -> RGB table of pydicom (every Y, Cb, Cr), as position-weighted sums
    # per channel: sum over i = Y * 65536 + Cb * 256 + Cr of out[i, c] * (i % 65521 + 1).
    ybr = np.mgrid[0:256, 0:256, 0:256].reshape(3, -1).T.astype(np.uint8)
    table = pydicom.pixels.convert_color_space(ybr, "YBR_FULL", "RGB").astype(np.uint64)
    weights = np.arange(ybr.shape[0], dtype=np.uint64) % 65521 + 1
    expected["ybr_full_to_rgb_checksum"] = [int((table[:, c] * weights).sum()) for c in range(3)]

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
