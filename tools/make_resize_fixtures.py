#!/usr/bin/env python3
"""Writes fixtures/images/resize/: Pillow 13.0.0's `Image.resize((w, h), Image.BICUBIC)` on a grid
of sizes, to pin the Rust port of Pillow's bicubic resampling byte for byte.

The source images are not stored: they are generated from a seed by `source(w, h, seed)`
below, which `echovlm-vision/tests/preprocess.rs` reimplements (splitmix64 bytes, with every
7th column alternately black and white so the negative lobes of the kernel clip). For every
case `cases.json` holds the FNV-1a 64-bit hash of Pillow's output bytes (row-major RGB), and
for a few small cases the output itself is stored as a PNG (`<w>x<h>_to_<W>x<H>.png`), so a
mismatch there shows where it is.

Run from the repository root with Pillow 13:  /tmp/pilenv/bin/python tools/make_resize_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "images" / "resize"
MASK = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def source(w: int, h: int, seed: int) -> np.ndarray:
    """`h x w x 3` bytes: the low byte of successive splitmix64 outputs (row-major, R G B),
    then every 7th column set to black (even multiples of 7) or white (odd multiples)."""
    state = seed
    out = np.empty(w * h * 3, np.uint8)
    for i in range(out.size):
        state, z = splitmix64(state)
        out[i] = z & 0xFF
    img = out.reshape(h, w, 3)
    for x in range(0, w, 7):
        img[:, x, :] = 0 if (x // 7) % 2 == 0 else 255
    return img


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return f"{h:016x}"


def sizes(n: int, factors) -> list[int]:
    return sorted({max(1, round(n * f)) for f in factors} | {n})


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    factors = [0.25, 0.5, 0.71, 1.37, 2.0, 4.0]
    cases = []
    sources = [(37, 23, 1), (101, 77, 2), (23, 300, 3)]
    for w, h, seed in sources:
        for ow in sizes(w, factors):
            for oh in sizes(h, factors):
                if (ow, oh) != (w, h):
                    cases.append((w, h, seed, ow, oh))
    # wide extreme aspect: each axis up and down, and the sizes smart_resize picks
    w, h, seed = 1000, 120, 4
    for ow, oh in [
        (1008, 112),  # width up, height down (smart_resize of 1000x120)
        (1000, 112),
        (1008, 120),
        (992, 128),  # width down, height up
        (250, 30),
        (500, 240),
        (2000, 60),
        (84, 28),
    ]:
        cases.append((w, h, seed, ow, oh))
    # both sides of Pillow 13's pass-order rule (vertical first iff the height shrinks by more
    # than twice as many pixels as the width): shrink_h == 2 * shrink_w and one more
    for w, h, seed, ow, oh in [
        (101, 77, 2, 91, 57),
        (101, 77, 2, 91, 56),
        (37, 23, 1, 36, 21),
        (37, 23, 1, 36, 20),
        (37, 23, 1, 40, 22),
    ]:
        cases.append((w, h, seed, ow, oh))
    w, h, seed = 257, 193, 5
    for ow, oh in [(252, 196), (224, 168), (260, 190)]:
        cases.append((w, h, seed, ow, oh))
    full = {(37, 23, 148, 92), (37, 23, 9, 6), (101, 77, 138, 38), (23, 300, 32, 150)}

    srcs = {}
    entries = []
    for w, h, seed, ow, oh in cases:
        key = (w, h, seed)
        if key not in srcs:
            srcs[key] = Image.fromarray(source(w, h, seed), "RGB")
        out = srcs[key].resize((ow, oh), Image.BICUBIC)
        raw = np.array(out).tobytes()
        entry = {"src": [w, h, seed], "out": [ow, oh], "fnv1a64": fnv1a64(raw)}
        if (w, h, ow, oh) in full:
            name = f"{w}x{h}_to_{ow}x{oh}.png"
            out.save(OUT / name)
            entry["png"] = name
        entries.append(entry)
    # a check value of the generator itself
    check = fnv1a64(source(37, 23, 1).tobytes())
    (OUT / "cases.json").write_text(
        json.dumps({"source_37x23_seed1_fnv1a64": check, "cases": entries}, indent=0) + "\n"
    )
    print(f"{len(entries)} cases")


if __name__ == "__main__":
    main()
