#!/usr/bin/env bash
# Builds the two programs tools/gpu_check.sh runs and packs them, stripped, into one xz archive
# small enough to send to a GPU machine that has no Rust toolchain and no registry:
#
#   tools/gpu_pack.sh [ARCHIVE]          (default .gpu/bins.tar.xz)
#
# then, on the GPU machine, from a copy of this checkout:
#
#   python3 -c "import tarfile; tarfile.open('.gpu/bins.tar.xz').extractall('/tmp/bin')"
#   tools/gpu_check.sh /tmp/bin OUT
#
# The CLI and the gpu test share most of their code (Burn, CubeCL, the static LLVM): one archive
# whose dictionary is larger than either program compresses the second almost for free (43 MB
# for both, against 164 + 158 MB stripped). The `cuda` feature needs tools/setup-cuda-llvm.sh
# once. xz at this setting takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/bins.tar.xz}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/echovlm-rs/target}"

cargo build --release --features cuda,wgpu --example echovlm
gpu_test=$(cargo test --release -p echovlm-pipeline --features wgpu,cuda,kernel-cache --test gpu --no-run \
    --message-format=json | python3 -c '
import json, sys
paths = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable")]
print(paths[-1])
')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$CARGO_TARGET_DIR/release/examples/echovlm" "$tmp/echovlm"
cp "$gpu_test" "$tmp/gpu"
strip "$tmp/echovlm" "$tmp/gpu"
mkdir -p "$(dirname "$out")"
tar -C "$tmp" -cf - echovlm gpu | xz -9 --lzma2=dict=384MiB -T1 > "$out.part"
mv "$out.part" "$out"
ls -l "$out"
