#!/usr/bin/env python3
"""Writes the corpus of hostile inputs under tests/corpus/ (committed; a few KB each).

Every file is a bad (or borderline) input that the end-to-end tests in tests/hostile_*.rs feed
to `EchoVlm::load` / `EchoVlm::generate`, and a seed for the fuzz targets in fuzz/:

  checkpoints/  broken single-file safetensors (truncated, corrupt header, bad offsets)
  index/        broken model.safetensors.index.json files for fixtures/models/tiny-echovlm-sharded
  configs/      config.json variants of fixtures/models/tiny-echovlm with impossible values
  tokenizers/   tokenizer.json files that cannot be parsed
  images/       empty, corrupt, truncated, tiny, extreme-aspect, oversized and unusual images
  templates/    hostile chat templates (dropping or doubling images, endless loops, ...)
  dicom/        DICOM files from fixtures/dicom with corrupt lengths, VRs and frame counts

Run from anywhere with /work/pyenv/bin/python (numpy, pillow): the output is deterministic.
"""

import copy
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
OUT = ROOT / "tests" / "corpus"


def write(rel, data):
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    assert len(data) <= 16 * 1024, f"{rel} is {len(data)} bytes"


# ------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------


def safetensors(header, data, header_len=None, pad=True):
    """A safetensors file from a header dict (or raw header text) and data bytes."""
    text = header if isinstance(header, (bytes, str)) else json.dumps(header, separators=(",", ":"))
    if isinstance(text, str):
        text = text.encode()
    if pad:
        text += b" " * (-len(text) % 8)
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def checkpoints():
    two = {"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    write("checkpoints/empty.safetensors", b"")
    write("checkpoints/short_header.safetensors", b"\x10\x00\x00")
    # 8-byte length claiming 100 GB, with a few bytes behind it
    write(
        "checkpoints/header_100gb.safetensors",
        struct.pack("<Q", 100_000_000_000) + b'{"a":1}' + b"\0" * 25,
    )
    # length past the end of the file
    write("checkpoints/header_past_eof.safetensors", safetensors(two, f32(1, 2, 3, 4), 4096))
    write("checkpoints/header_not_json.safetensors", safetensors("{this is not json", b""))
    write("checkpoints/header_not_utf8.safetensors", safetensors(b"\xff\xfe{\x80}", b""))
    write(
        "checkpoints/unknown_dtype.safetensors",
        safetensors({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0"),
    )
    # header promises 16 bytes of data, the file has 8
    write("checkpoints/truncated.safetensors", safetensors(two, f32(1, 2)))
    # header fine, 8 bytes of junk after the data
    write("checkpoints/padded.safetensors", safetensors(two, f32(1, 2, 3, 4) + b"\0" * 8))
    # two tensors sharing bytes 8..16
    write(
        "checkpoints/overlapping_offsets.safetensors",
        safetensors(
            {
                "model.a.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "model.b.weight": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            f32(*range(6)),
        ),
    )
    # a tensor 1 MB past the end of an 8-byte data region
    write(
        "checkpoints/out_of_bounds_offsets.safetensors",
        safetensors(
            {"model.a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [1 << 20, (1 << 20) + 8]}},
            f32(1, 2),
        ),
    )
    # offsets that do not match shape x dtype
    write(
        "checkpoints/shape_offsets_mismatch.safetensors",
        safetensors(
            {"model.a.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, f32(1, 2)
        ),
    )
    # a shape whose element count overflows 64 bits
    write(
        "checkpoints/shape_overflow.safetensors",
        safetensors(
            {"model.a.weight": {"dtype": "F32", "shape": [1 << 62, 1 << 62, 16], "data_offsets": [0, 0]}},
            b"",
        ),
    )
    # negative offset
    write(
        "checkpoints/negative_offset.safetensors",
        safetensors('{"model.a.weight":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}', f32(1, 2)),
    )


# ------------------------------------------------------------------------------------------
# shard index
# ------------------------------------------------------------------------------------------


def indexes():
    src = json.loads((FIXTURES / "models/tiny-echovlm-sharded/model.safetensors.index.json").read_text())
    shards = sorted(set(src["weight_map"].values()))

    def variant(name, edit):
        idx = copy.deepcopy(src)
        edit(idx)
        write(f"index/{name}.index.json", json.dumps(idx, indent=1))

    def rename(old, new):
        def edit(idx):
            wm = idx["weight_map"]
            for k in wm:
                if wm[k] == old:
                    wm[k] = new

        return edit

    variant("escape_parent", rename(shards[0], "../../etc/passwd"))
    variant("absolute_path", rename(shards[0], "/etc/passwd"))
    variant("missing_shard", rename(shards[1], "model-00004-of-00003.safetensors"))
    variant("empty_shard_name", rename(shards[2], ""))

    # the same shard under two spellings: opened twice, so every tensor appears twice
    def two_spellings(idx):
        wm = idx["weight_map"]
        keys = [k for k in sorted(wm) if wm[k] == shards[0]]
        wm[keys[0]] = "./" + shards[0]

    variant("same_shard_twice", two_spellings)

    # only the first two shards listed: the tensors of the third are missing
    def incomplete(idx):
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if v != shards[2]}

    variant("incomplete", incomplete)

    def shard_not_string(idx):
        k = sorted(idx["weight_map"])[0]
        idx["weight_map"][k] = 3

    variant("shard_not_string", shard_not_string)
    write("index/no_weight_map.index.json", json.dumps({"metadata": {"total_size": 1}}))
    write("index/empty_weight_map.index.json", json.dumps({"metadata": {}, "weight_map": {}}))
    text = json.dumps(src, indent=1)
    write("index/not_json.index.json", text[: len(text) // 2])


# ------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------


def configs():
    base = json.loads((FIXTURES / "models/tiny-echovlm/config.json").read_text())

    def variant(name, edit):
        cfg = copy.deepcopy(base)
        edit(cfg)
        write(f"configs/{name}.json", json.dumps(cfg, indent=2))

    def set_(key, value):
        def edit(cfg):
            cfg[key] = value

        return edit

    def set_vision(key, value):
        def edit(cfg):
            cfg["vision_config"][key] = value

        return edit

    variant("zero_hidden_size", set_("hidden_size", 0))
    variant("negative_layers", set_("num_hidden_layers", -3))
    variant("huge_vocab", set_("vocab_size", 10**12))
    variant("huge_intermediate", set_("intermediate_size", 2**40))
    variant("float_heads", set_("num_attention_heads", 4.5))
    variant("string_hidden_size", set_("hidden_size", "64"))
    variant("zero_context", set_("max_position_embeddings", 0))
    variant("mrope_wrong_sum", lambda c: c["rope_scaling"].update(mrope_section=[2, 3, 4]))
    variant("mrope_two_entries", lambda c: c["rope_scaling"].update(mrope_section=[4, 4]))
    variant("mrope_missing", lambda c: c.pop("rope_scaling"))
    # 64 is not divisible by 3 heads (1 key/value head keeps the GQA check out of the way)
    variant("heads_not_dividing_hidden", lambda c: c.update(num_attention_heads=3, num_key_value_heads=1))
    variant("kv_heads_not_dividing_heads", set_("num_key_value_heads", 3))
    variant("odd_head_dim", set_("head_dim", 15))
    variant("rope_theta_negative", set_("rope_theta", -5.0))
    variant("rms_norm_eps_zero", set_("rms_norm_eps", 0.0))
    variant("image_token_outside_vocab", set_("image_token_id", 5000))
    variant("negative_eos", set_("eos_token_id", -1))
    variant("missing_hidden_size", lambda c: c.pop("hidden_size"))
    # largest values the parser accepts: they must fail on the weights, not allocate 1 TB
    variant(
        "huge_but_in_range",
        lambda c: (
            c.update(hidden_size=65536, vocab_size=4194304, intermediate_size=1048576,
                     num_hidden_layers=1024, num_attention_heads=16, num_key_value_heads=2,
                     max_position_embeddings=1 << 24),
            c["rope_scaling"].update(mrope_section=[512, 768, 768]),
            c["vision_config"].update(hidden_size=65536),
        ),
    )
    # config ids that disagree with the tokenizer
    variant("image_token_mismatch", set_("image_token_id", 651))
    variant("vision_heads_not_dividing", set_vision("num_heads", 3))
    variant("vision_zero_depth", set_vision("depth", 0))
    variant("vision_hidden_mismatch", set_vision("hidden_size", 32))
    variant("vision_window_attention", set_vision("window_size", 112))
    variant("vision_missing", lambda c: c.pop("vision_config"))
    text = json.dumps(base, indent=2)
    write("configs/not_json.json", text[: len(text) // 3])
    write("configs/not_object.json", "[1, 2, 3]")
    write("configs/empty.json", "")


def tokenizers():
    text = (FIXTURES / "models/tiny-echovlm/tokenizer.json").read_text()
    write("tokenizers/not_json.json", text[:2000])
    write("tokenizers/empty.json", "")
    write("tokenizers/wrong_schema.json", json.dumps({"version": "1.0", "model": 42}))


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------


def png_bytes(img, **kw):
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True, **kw)
    return buf.getvalue()


def jpeg_bytes(img, quality=85):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header_only(width, height, bit_depth=8, color_type=2):
    """A PNG that declares a size in IHDR and holds one small IDAT (a decompression bomb if
    the decoder allocated from the header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def images():
    rng = np.random.default_rng(7)
    write("images/empty.png", b"")
    write("images/not_an_image.png", b"This is a text file that claims to be a PNG.\n")
    gray = Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    good_jpeg = jpeg_bytes(rgb)
    write("images/truncated.jpg", good_jpeg[: len(good_jpeg) // 2])
    # a JPEG whose scan data is overwritten with junk after the SOI and first segments
    corrupt = bytearray(good_jpeg)
    for i in range(20, len(corrupt) - 2):
        corrupt[i] = (i * 37) & 0xFF
    corrupt[-2:] = b"\xff\xd9"
    write("images/corrupt.jpg", bytes(corrupt))
    good_png = png_bytes(rgb)
    write("images/truncated.png", good_png[: len(good_png) // 2])
    write("images/gif.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    write("images/one_pixel.png", png_bytes(Image.new("RGB", (1, 1), (200, 30, 60))))
    # 100000 x 10: aspect ratio 10000, far above 200
    wide = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (10, 391))[:, :100000], "L")
    write("images/wide_100000x10.png", png_bytes(wide))
    # 2000 x 10 is exactly 200: accepted
    write("images/ratio_200_2000x10.png", png_bytes(gray.resize((2000, 10))))
    # IHDR declaring 20000 x 20000 (400 M pixels), a 40-byte IDAT
    write("images/bomb_20000x20000.png", png_header_only(20000, 20000))
    # 16384 x 16384 is the largest size accepted from a header: the pixels are missing
    write("images/max_size_truncated.png", png_header_only(16384, 16384, bit_depth=8, color_type=0))
    write("images/zero_width.png", png_header_only(0, 10))
    # 16-bit grayscale and 16-bit RGB PNGs
    g16 = (rng.integers(0, 65536, (30, 40), dtype=np.uint32)).astype(np.uint16)
    write("images/gray16.png", png_bytes(Image.fromarray(g16)))
    rgb16 = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    write("images/rgb16.png", png16_rgb(rgb16))
    # red ramp along x, green ramp along y, constant blue; stored as CMYK (Adobe)
    yy, xx = np.mgrid[0:48, 0:64]
    ramp = np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    write("images/cmyk.jpg", jpeg_bytes(Image.fromarray(ramp).convert("CMYK"), quality=95))
    write("images/gray.jpg", jpeg_bytes(gray))
    write("images/palette.png", png_bytes(rgb.convert("P", palette=Image.ADAPTIVE, colors=16)))
    write("images/la.png", png_bytes(gray.convert("LA")))
    # BMP whose header declares 30000 x 30000 pixels (the BMP decoder itself stops at 65535)
    bmp = bytearray()
    bmp += b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54)
    bmp += struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 16, 2835, 2835, 0, 0)
    bmp += b"\0" * 16
    write("images/bomb_30000x30000.bmp", bytes(bmp))


def png16_rgb(arr):
    """A 16-bit RGB PNG written by hand (Pillow cannot save 16-bit RGB)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------
# chat templates
# ------------------------------------------------------------------------------------------


def templates():
    user = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    text_only = (
        user + "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    write("templates/drops_images.jinja", text_only)
    doubles = (
        user + "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n"
    )
    write("templates/doubles_images.jinja", doubles)
    write(
        "templates/endless_loop.jinja",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
    )
    write(
        "templates/doubling_string.jinja",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
    )
    write("templates/huge_output.jinja", "{% for i in range(100000) %}{{ 'x' * 100000000 }}{% endfor %}")
    write(
        "templates/recursion.jinja",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    )
    # a namespace holding itself (a reference cycle), then printed: minijinja formats it
    # recursively until the stack overflows (found by the chat_template fuzz target)
    write(
        "templates/namespace_cycle_print.jinja",
        "{% set ns = namespace(value=0) %}{% set ns.value = ns %}{{ ns }}",
    )
    write("templates/syntax_error.jinja", "{% for m in messages %}{{ m['role'] }")
    write("templates/raises.jinja", "{{ raise_exception('this template refuses every conversation') }}")


# ------------------------------------------------------------------------------------------
# DICOM (fixtures/dicom with a few bytes changed; tests in echovlm-vision/tests/dicom.rs)
# ------------------------------------------------------------------------------------------


def dicom():
    def fixture(name):
        return (FIXTURES / "dicom" / name).read_bytes()

    def replace_once(data, old, new):
        assert data.count(old) == 1, old
        return data.replace(old, new)

    mono8 = fixture("us_mono8.dcm")
    # Patient ID with a VR dicom-rs does not know ("lo"): it reads it as UN, 2 reserved bytes
    # then a 4-byte length, here the value's first bytes "ECHO" = 1 330 135 877 (found by the
    # dicom_read fuzz target; the pre-scan used to stop at the unknown VR)
    write(
        "dicom/unknown_vr_long_length.dcm",
        replace_once(mono8, b"\x10\x00\x20\x00LO\x0a\x00ECHO", b"\x10\x00\x20\x00lo\x0a\x00ECHO"),
    )
    # the same in the file meta group: (0002,0002) as "ui" with a 4-byte length of 0xFFFFFFF0,
    # the group length grown to cover it (dicom-object reads up to the group length)
    meta_end = 132 + 12 + struct.unpack_from("<I", mono8, 140)[0]
    extra = b"\x02\x00\x02\x00ui\x00\x00" + struct.pack("<I", 0xFFFF_FFF0)
    grown = bytearray(mono8[:meta_end] + extra + mono8[meta_end:])
    struct.pack_into("<I", grown, 140, meta_end - 144 + len(extra))
    write("dicom/meta_unknown_vr_long_length.dcm", bytes(grown))
    # 1x1 frames, Number of Frames 1 000 000 000 (the frame list used to be built, 8 GB,
    # before the pixel data was measured)
    one = replace_once(mono8, b"\x28\x00\x10\x00US\x02\x00\x48\x00", b"\x28\x00\x10\x00US\x02\x00\x01\x00")
    one = replace_once(one, b"\x28\x00\x11\x00US\x02\x00\x60\x00", b"\x28\x00\x11\x00US\x02\x00\x01\x00")
    one = replace_once(
        one,
        b"\x28\x00\x10\x00US",
        b"\x28\x00\x08\x00IS\x0a\x001000000000\x28\x00\x10\x00US",
    )
    write("dicom/huge_number_of_frames.dcm", one)
    # the JPEG cine loop (3 frames, 3 fragments) claiming 999 999 999 frames
    jpeg = fixture("us_ybr422_jpeg.dcm")
    write(
        "dicom/jpeg_huge_number_of_frames.dcm",
        replace_once(jpeg, b"\x28\x00\x08\x00IS\x02\x003 ", b"\x28\x00\x08\x00IS\x0a\x00999999999 "),
    )


def main():
    checkpoints()
    indexes()
    configs()
    tokenizers()
    images()
    templates()
    dicom()
    files = sorted(p for p in OUT.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {total} bytes, under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
