#!/usr/bin/env python3
"""Writes the transparency goldens under fixtures/images/alpha/: small images with alpha or
tRNS transparency and, for each, `<name>.rgb` (e.g. `la8_16x16.png.rgb`), the raw 8-bit RGB bytes (row-major) that the
reference loading produces from it.

The reference loading is `qwen_vl_utils.to_rgb` (0.0.8+):

    if img.mode == "RGBA":
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img.split()[3])
    else:
        img.convert("RGB")

with the 16-bit grayscale exception of `tools/make_fixtures.py` (`load_rgb`). So only images
Pillow opens as RGBA are composited on white; "LA", "P" with tRNS, "L"/"RGB" with tRNS are
converted, which drops the transparency.

PNGs are written by hand (not by Pillow) to control colour type, bit depth, PLTE and tRNS.
Run from the repository root with Pillow 13:  /tmp/pilenv/bin/python tools/make_alpha_fixtures.py
Everything is seeded; rerunning rewrites identical files.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "images" / "alpha"


def load_rgb(path: Path) -> Image.Image:
    """`tools/make_fixtures.py`'s `load_rgb` (qwen_vl_utils' `to_rgb` + the 16-bit gray rule)."""
    img = Image.open(path)
    if img.mode == "RGBA":
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img.split()[3])
        return white
    if img.mode in ("I;16", "I;16B", "I"):
        arr = np.array(img).astype(np.uint32)
        return Image.fromarray(((arr + 128) // 257).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, color: int, rows: list[bytes], plte=b"", trns=b"") -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows), 9))
    out += chunk(b"IEND", b"")
    return out


def rows16(arr: np.ndarray) -> list[bytes]:
    return [r.astype(">u2").tobytes() for r in arr]


def rows8(arr: np.ndarray) -> list[bytes]:
    return [r.astype(np.uint8).tobytes() for r in arr]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240613)
    files: dict[str, bytes] = {}

    # RGBA 8-bit, 32x32: every alpha value 0..255 four times, each with a random colour
    # (plus the extremes 0 and 255 in every channel on the first rows).
    h, w = 32, 32
    rgb = rng.integers(0, 256, (h, w, 3))
    rgb[0, :, :] = 0
    rgb[1, :, :] = 255
    alpha = rng.permutation(np.arange(h * w) % 256).reshape(h, w)
    files["rgba8_32x32.png"] = png(w, h, 8, 6, rows8(np.concatenate([rgb, alpha[..., None]], -1).reshape(h, -1)))

    # RGBA 16-bit: Pillow keeps the most significant byte of every sample.
    h, w = 16, 16
    rgba16 = rng.integers(0, 65536, (h, w, 4))
    rgba16[0, :, 3] = np.arange(w) * 4369  # 0..65535
    files["rgba16_16x16.png"] = png(w, h, 16, 6, rows16(rgba16.reshape(h, -1)))

    # gray + alpha, 8 and 16 bit: LA converts to RGB by dropping alpha.
    h, w = 16, 16
    la = np.stack([rng.integers(0, 256, (h, w)), np.arange(h * w).reshape(h, w)], -1)
    files["la8_16x16.png"] = png(w, h, 8, 4, rows8(la.reshape(h, -1)))
    la16 = rng.integers(0, 65536, (h, w, 2))
    files["la16_16x16.png"] = png(w, h, 16, 4, rows16(la16.reshape(h, -1)))

    # palette with partial tRNS, 8-bit and 4-bit indices
    h, w = 16, 16
    plte = rng.integers(0, 256, (256, 3)).astype(np.uint8).tobytes()
    trns = rng.integers(0, 256, 200).astype(np.uint8).tobytes()
    idx = rng.permutation(256).reshape(h, w)
    files["p8_trns_16x16.png"] = png(w, h, 8, 3, rows8(idx), plte=plte, trns=trns)
    h, w = 8, 16
    plte4 = rng.integers(0, 256, (16, 3)).astype(np.uint8).tobytes()
    trns4 = bytes([0, 64, 128, 200, 255])
    idx4 = rng.integers(0, 16, (h, w))
    packed = [bytes((int(r[i]) << 4) | int(r[i + 1]) for i in range(0, w, 2)) for r in idx4]
    files["p4_trns_16x8.png"] = png(w, h, 4, 3, packed, plte=plte4, trns=trns4)

    # gray and RGB with a tRNS colour key (some pixels hit the key)
    h, w = 8, 16
    g = rng.integers(0, 256, (h, w))
    g[::2, ::3] = 77
    files["gray8_trns_16x8.png"] = png(w, h, 8, 0, rows8(g), trns=struct.pack(">H", 77))
    g16 = rng.integers(0, 65536, (h, w))
    g16[::2, ::3] = 4242
    files["gray16_trns_16x8.png"] = png(w, h, 16, 0, rows16(g16), trns=struct.pack(">H", 4242))
    c = rng.integers(0, 256, (h, w, 3))
    c[1::2, ::2] = [10, 200, 30]
    files["rgb8_trns_16x8.png"] = png(w, h, 8, 2, rows8(c.reshape(h, -1)), trns=struct.pack(">HHH", 10, 200, 30))
    c16 = rng.integers(0, 65536, (h, w, 3))
    files["rgb16_16x8.png"] = png(w, h, 16, 2, rows16(c16.reshape(h, -1)))

    for name, data in files.items():
        (OUT / name).write_bytes(data)

    # RGBA through Pillow's own TIFF and BMP writers
    h, w = 16, 16
    rgba = np.concatenate([rng.integers(0, 256, (h, w, 3)), np.arange(h * w).reshape(h, w, 1)], -1)
    im = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    im.save(OUT / "rgba8_16x16.tiff")
    im.save(OUT / "rgba8_16x16.bmp")

    for p in sorted(OUT.iterdir()):
        if p.suffix == ".rgb":
            continue
        out = load_rgb(p)
        assert out.mode == "RGB" and out.size == Image.open(p).size
        p.with_name(p.name + ".rgb").write_bytes(np.array(out).tobytes())
        print(f"{p.name}: Pillow mode {Image.open(p).mode}")


if __name__ == "__main__":
    main()
