#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds from fixtures/ and tests/corpus/ (the hostile corpus
# written by tools/make_hostile_corpus.py). Safe to run again: files are only added.
set -euo pipefail
cd "$(dirname "$0")/.."
C=fuzz/corpus
mkdir -p $C/image_preprocess $C/config_parse $C/safetensors_open $C/shard_index $C/chat_template

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
echo "seeded: $(for t in $C/*; do printf '%s=%s ' "$(basename $t)" "$(ls $t | wc -l)"; done)"
