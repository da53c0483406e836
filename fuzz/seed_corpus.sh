#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds from fixtures/ and tests/corpus/ (the hostile corpus
# written by tools/make_hostile_corpus.py). Safe to run again: files are only added.
set -euo pipefail
cd "$(dirname "$0")/.."
C=fuzz/corpus
mkdir -p $C/image_preprocess $C/config_parse $C/safetensors_open $C/shard_index $C/chat_template \
    $C/dicom_read

# images: the small fixture images and every hostile image
for f in fixtures/images/* tests/corpus/images/*; do
    [ "$(stat -c %s "$f")" -le 32768 ] && cp "$f" "$C/image_preprocess/$(basename "$f")"
done

# configs: every fixture config.json / preprocessor_config.json and the hostile configs
for d in fixtures/models/*/; do
    m=$(basename "$d")
    cp "$d/config.json" "$C/config_parse/$m.config.json"
    [ -f "$d/preprocessor_config.json" ] && cp "$d/preprocessor_config.json" "$C/config_parse/$m.preprocessor.json"
done
cp tests/corpus/configs/* $C/config_parse/

# safetensors files: the hostile ones plus small valid files
cp tests/corpus/checkpoints/* $C/safetensors_open/
st() { # name header-json data-bytes(printf escapes)
    local h="$2"
    while [ $(( ${#h} % 8 )) -ne 0 ]; do h="$h "; done
    { printf "$(printf '\\x%02x' $(( ${#h} & 255 )) $(( (${#h} >> 8) & 255 )))\\0\\0\\0\\0\\0\\0"
      printf '%s' "$h"; printf "$3"; } > "$C/safetensors_open/$1"
}
st valid_f32.safetensors '{"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' '\0\0\x80\x3f\0\0\0\x40'
st valid_mixed.safetensors '{"__metadata__":{"format":"pt"},"model.a.weight":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]},"model.language_model.b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},"model.visual.c":{"dtype":"I64","shape":[],"data_offsets":[6,14]},"z":{"dtype":"U8","shape":[0,3],"data_offsets":[14,14]}}' '\x80\x3f\x00\x40\x00\x3c\x01\0\0\0\0\0\0\0'

# shard indexes: the hostile ones, the fixture's, and indexes over the target's own shards
cp tests/corpus/index/* $C/shard_index/
cp fixtures/models/tiny-echovlm-sharded/model.safetensors.index.json $C/shard_index/fixture.index.json
printf '%s' '{"weight_map":{"model.a.weight":"model-00001-of-00002.safetensors","model.b.weight":"model-00002-of-00002.safetensors"}}' > $C/shard_index/valid.json
printf '%s' '{"weight_map":{"a":"model-00001-of-00002.safetensors","c":"sub/inner.safetensors","d":"./sub/../model-00002-of-00002.safetensors"}}' > $C/shard_index/subdir.json
printf '%s' '{"weight_map":{"a":"escape.safetensors"}}' > $C/shard_index/symlink.json
printf '%s' '{"weight_map":{"a":"dup.safetensors","b":"model-00001-of-00002.safetensors"}}' > $C/shard_index/dup.json
printf '%s' '{"weight_map":{"a":"corrupt.safetensors"}}' > $C/shard_index/corrupt.json

# chat templates: "<template>\0<messages json>"; an empty template means the Qwen2-VL one
msgs='[{"role":"system","content":"S"},{"role":"user","content":[{"type":"image"},{"type":"video"},{"type":"text","text":"T"}]},{"role":"assistant","content":"A"}]'
printf '\0%s' "$msgs" > $C/chat_template/qwen2vl_messages
printf '\0%s' '[{"role":"user","content":"hi"}]' > $C/chat_template/qwen2vl_string
printf '\0%s' '[{"role":"tool","content":[{"image_url":"x"},{"video":1},{"text":null}]}]' > $C/chat_template/qwen2vl_odd
# (not the runaway ones: each run of those burns the whole fuel budget, about 0.5 s under the
# sanitizer, and the fuzzer would spend its time on their mutations; nor the known crash
# namespace_cycle_print; tests/hostile_prompts.rs covers them)
for f in tests/corpus/templates/*; do
    case "$(basename "$f")" in endless_loop.*|huge_output.*|doubling_string.*|namespace_cycle_print.*) continue;; esac
    cp "$f" "$C/chat_template/$(basename "$f")"
    { cat "$f"; printf '\0%s' "$msgs"; } > "$C/chat_template/$(basename "$f").msgs"
done
python3 -c 'import json,sys; sys.stdout.write(json.load(open("fixtures/models/tiny-echovlm/tokenizer_config.json"))["chat_template"])' > $C/chat_template/qwen2vl_source
# DICOM: "<4-byte header><body>" (see fuzz_targets/dicom_read.rs). Every fixture and committed
# case as a whole file under a few frame selections; the fixture's JPEG frames wrapped as
# fragments (mode 1); native pixel data with assorted image attributes (mode 2).
python3 - "$C/dicom_read" fixtures/dicom/*.dcm tests/corpus/dicom/*.dcm <<'PY'
import os, struct, sys
out, files = sys.argv[1], [f for f in sys.argv[2:] if os.path.isfile(f)]
def seed(name, head, body):
    data = bytes(head) + body
    if len(data) <= 32768:
        open(os.path.join(out, name), "wb").write(data)
heads = {"all": [0, 0, 0, 0], "stride2": [1, 2, 0, 0], "list": [2, 3, 2, 0], "huge": [3, 0, 0, 0]}
for f in files:
    body = open(f, "rb").read()
    for tag, head in heads.items():
        seed(f"{os.path.basename(f)}.{tag}", head, body)
# mode 1: rows, columns, samples (odd: 3), photometric index, frames, offset table, fragment
# count - 1, then u16-length-prefixed fragments (the last one unprefixed)
dcm = open("fixtures/dicom/us_ybr422_jpeg.dcm", "rb").read()
pos, frags = dcm.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12, []
while dcm[pos:pos + 4] == b"\xfe\xff\x00\xe0":
    n = struct.unpack_from("<I", dcm, pos + 4)[0]
    frags.append(dcm[pos + 8:pos + 8 + n])
    pos += 8 + n
jpegs = frags[1:]  # after the Basic Offset Table
def jpeg_body(frames, table, parts):
    body = struct.pack("<HHBBBBB", 48, 64, 1, 4, frames, table, len(parts) - 1)
    for p in parts[:-1]:
        body += struct.pack("<H", len(p)) + p
    return body + parts[-1]
for tag, head in heads.items():
    seed(f"jpeg_frame0.{tag}", [head[0] | 4] + head[1:], jpeg_body(0, 0, jpegs[:1]))
    seed(f"jpeg_cine3.{tag}", [head[0] | 4] + head[1:], jpeg_body(3, 1, jpegs))
    seed(f"jpeg_split.{tag}", [head[0] | 4] + head[1:],
         jpeg_body(2, 1, [jpegs[0][:1000], jpegs[0][1000:], jpegs[1]]))
seed("jpeg_mono_header.all", [4, 0, 0, 0],
     struct.pack("<HHBBBBB", 48, 64, 0, 0, 1, 0, 0) + jpegs[0])
# mode 2: rows, columns, frames, samples, photometric index, bits allocated (<128: 8,
# 128..250: 16), bits stored, pixel representation, planar, flags (1 bits stored, 2 window,
# 4 rescale, 8 VOI LUT function, 16 frame time), center, width, slope*16, intercept, function
def native(rows, cols, frames, spp, pi, ba, bs, pr, planar, flags, c, w, slope, icpt, fn):
    bpp = (2 if ba >= 128 else 1) * spp
    n = rows * cols * max(frames, 1) * bpp
    if pi == 4:
        n = n * 2 // 3
    px = bytes((i * 37 + (i >> 3) * 11) & 255 for i in range(n))
    return struct.pack("<BBBBBBBBBBhhbhB", rows, cols, frames, spp, pi, ba, bs, pr, planar,
                       flags, c, w, slope, icpt, fn) + px
for name, args in {
    "mono8": (8, 12, 0, 1, 0, 0, 8, 0, 0, 1, 0, 0, 16, 0, 0),
    "mono1_cine": (6, 6, 3, 1, 1, 0, 8, 0, 0, 17, 0, 0, 16, 0, 0),
    "mono16_window": (8, 8, 0, 1, 0, 200, 12, 0, 0, 3, 2000, 1000, 16, 0, 0),
    "mono16_signed_rescale": (8, 8, 2, 1, 0, 200, 16, 1, 0, 7, 0, 400, 8, -1024, 0),
    "mono16_sigmoid": (8, 8, 0, 1, 1, 200, 10, 1, 0, 15, 100, 50, 16, 0, 2),
    "mono16_exact": (8, 8, 0, 1, 0, 200, 16, 0, 0, 11, 300, 1, 16, 0, 1),
    "mono8_signed": (8, 8, 0, 1, 0, 0, 7, 1, 0, 1, 0, 0, 16, 0, 0),
    "rgb": (8, 10, 2, 3, 2, 0, 8, 0, 0, 1, 0, 0, 16, 0, 0),
    "rgb_planar": (8, 10, 2, 3, 2, 0, 8, 0, 1, 1, 0, 0, 16, 0, 0),
    "ybr_full": (8, 10, 0, 3, 3, 0, 8, 0, 1, 1, 0, 0, 16, 0, 0),
    "ybr_422": (8, 10, 2, 3, 4, 0, 8, 0, 0, 1, 0, 0, 16, 0, 0),
}.items():
    for tag, head in heads.items():
        seed(f"native_{name}.{tag}", [head[0] | 8] + head[1:], native(*args))
PY

echo "seeded: $(for t in $C/*; do printf '%s=%s ' "$(basename $t)" "$(ls $t | wc -l)"; done)"
