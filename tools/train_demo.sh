#!/usr/bin/env bash
# Trains the demo model (fixtures/models/echovlm-demo) from nothing and scores it on the
# held-out phantoms: writes the training phantoms, runs both training stages, evaluates.
#
#   tools/train_demo.sh [WORKDIR]      (default WORKDIR: runs/demo-recipe)
#
# The model lands in WORKDIR/stage2/model; copy its files over fixtures/models/echovlm-demo to
# ship it. The weights do not depend on the machine's thread count (see finetune --workers).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/demo-recipe}"
for d in stage1 stage2; do
    if [ -e "$work/$d" ]; then
        echo "$work/$d exists: remove it or name another WORKDIR" >&2
        exit 2
    fi
done
mkdir -p "$work"

cargo build --release --example phantoms --example finetune --example eval
bin="${CARGO_TARGET_DIR:-target}/release/examples"
data="$work/data"
start=$(date +%s)
stamp() { echo "=== $1: $(( $(date +%s) - start )) s since the start"; }

# stage 1: 4 000 phantoms in English and Chinese
"$bin/phantoms" --out "$data" --name train --seeds 0..4000 --lang en,zh
"$bin/phantoms" --out "$data" --name val --seeds 2000000..2000040 --lang en,zh --alternate
# stage 2: the same phantoms once each, more irregular fluid and hypoechoic lesions, more small
# lesions, and a one-word echogenicity question on every lesion (the question sets point to
# the report sets' images)
hard=(--margin irregular --echogenicity anechoic,hypoechoic)
alt=(--lang en,zh --alternate)
"$bin/phantoms" --out "$data" --name train-alt --seeds 0..4000 "${alt[@]}" --images-of train
"$bin/phantoms" --out "$data" --name hard --seeds 4000..16000 "${alt[@]}" "${hard[@]}"
"$bin/phantoms" --out "$data" --name small --seeds 16000..28000 "${alt[@]}" --size-class small
"$bin/phantoms" --out "$data" --name train-q --seeds 0..4000 "${alt[@]}" \
    --ask echogenicity --images-of train
"$bin/phantoms" --out "$data" --name hard-q --seeds 4000..16000 "${alt[@]}" "${hard[@]}" \
    --ask echogenicity --images-of hard
"$bin/phantoms" --out "$data" --name small-q --seeds 16000..28000 "${alt[@]}" \
    --size-class small --ask echogenicity --images-of small
cat "$data"/{train-alt,hard,small,train-q,hard-q,small-q}.jsonl > "$data/stage2.jsonl"
stamp "phantoms written"

# steps of 16 samples as 4 micro-batches of 4 of like lengths, two at a time on two cores; the
# cross-entropy is the mean over the step's answer tokens, as in one batch of 16
common=(--val "$data/val.jsonl" --train all --batch 4 --accum 4 --loss-mean step
    --group-by-length --warmup-ratio 0.05 --seed 0 --save-every 500 --max-new-tokens 96)
"$bin/finetune" --init fixtures/models/tiny-echovlm --init-seed 0 --data "$data/train.jsonl" \
    --out "$work/stage1" --epochs 3 --lr 2e-3 "${common[@]}"
stamp "stage 1 done"
"$bin/finetune" --model "$work/stage1/model" --data "$data/stage2.jsonl" \
    --out "$work/stage2" --epochs 2 --lr 1e-3 "${common[@]}"
stamp "stage 2 done (the recipe's time)"

"$bin/eval" --model "$work/stage2/model" --data fixtures/phantoms/heldout.jsonl \
    --out "$work/heldout"
