#!/usr/bin/env bash
# Everything the GPU table in README.md needs, in one run on a machine with an NVIDIA GPU,
# CUDA's driver and NVRTC, and python3 with torch + transformers (it reaches no network):
#
#   tools/gpu_check.sh BIN OUT [SECONDS] [STEPS]
#
# BIN holds two programs built on another machine (the `cuda` feature needs the LLVM of
# tools/setup-cuda-llvm.sh there; tools/gpu_pack.sh builds both and packs them to send):
#   echovlm  cargo build --release --features cuda,wgpu --example echovlm
#   gpu      cargo test --release -p echovlm-pipeline --features wgpu,cuda,kernel-cache --test gpu --no-run
# STEPS (default "v2 probe scaling tests") run in that order, each skipped once the time budget
# (default 600 s) runs short. Measured on an H200: parity 32 s; v1's checkpoint 31 s, its Rust
# runs about 215 s (load 77 s, then a first run that compiles and autotunes for 130 s); v2's
# checkpoint 27-35 s, its Rust runs 132-200 s, PyTorch 40-60 s; probe over 150 s (load 30 s, a
# first decode that compiles for 50 s, then the separate products' first decode); scaling 80 s;
# the CUDA tests compile a kernel per shape and take minutes (the read-back test alone over
# 150 s). Every step together takes well over a 15-minute device lease: choose STEPS to fit.
#   parity  the CUDA parity test on the tiny fixtures (f32; decodes of one request replay a recorded
#           step), then replayed against step-by-step decoding (`cuda_decode_graphs_*`: one
#           request, a continuous batch's lone sequence, a conversation's turns), and
#           the device's choice of tokens against the host sampler's;
#   v1, v2  a full-size random checkpoint (v1: the released EchoVLM's shapes, 23.4 GB; v2:
#           Qwen2.5-VL-7B's, 16.6 GB; bf16) drawn on the GPU; the Rust CLI on it (--device cuda
#           --dtype bf16, 64 greedy tokens after one image, two runs: the first compiles and
#           tunes the kernels); PyTorch eager transformers on the same checkpoint and prompt
#           (tools/bench_gpu_torch.py), with the copy bandwidth and the bound it puts on decode;
#   eager   after v1 or v2, on its checkpoint: the Rust CLI again with --no-decode-graphs (every
#           decode step run one by one instead of replaying a recorded step), rust-eager.json;
#   probe   after v1 or v2, on its checkpoint: decode tokens/s with the fused products, the
#           kernel launches and tensor operations of a decode step and how much of the step the
#           device is busy, by kernel; then decode with the separate layers, and the time of
#           one token's product at each of the decoder's shapes and of a normalisation (the gpu
#           test `cuda_decode_probe`);
#   formats one token's products at the decoder's shapes (V1 and V2, fused as decoded) with bf16
#           weights and with Burn's int8 and int4 quantised weights (block 32): time, speed
#           against bf16, bandwidth, difference (the gpu test `cuda_weight_format_products`);
#           whether a quantised GPU weight format is worth porting; then a decode step's
#           attention at those shapes in three forms (`cuda_decode_attention_forms`);
#   tests   the other CUDA tests (f16/bf16, Qwen2.5-VL fixtures, read-backs per decode step),
#           then the wgpu tests on the NVIDIA Vulkan driver (`tests-cuda`: the CUDA ones only);
#   scaling the CPU path at 1, 2, 4, 8 and 16 threads (tools/scaling.py on the benchmark
#           checkpoint's e2e model, bf16, int8 and int4 weights).
# OUT receives log.txt, tests.txt, probe.txt, formats.txt, rust-v1.json, torch-v1.json, rust-v2.json,
# torch-v2.json, rust-eager.json and scaling.md.
set -u
bin=$(cd "$1" && pwd)
out=$2
budget=${3:-600}
steps=${4:-v2 probe scaling tests}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ECHOVLM_FIXTURES=$root/fixtures
start=$(date +%s)
exec > >(tee -a "$out/log.txt") 2>&1

left() { echo $((budget - ($(date +%s) - start))); }
step() { echo "== [$(($(date +%s) - start)) s] $*"; }
# runs "$@" with at most $1 seconds, and not past the budget
run_for() {
    local want=$1
    shift
    local have
    have=$(left)
    if [ "$have" -lt 20 ]; then
        echo "skipped (budget spent): $*"
        return 124
    fi
    [ "$want" -gt "$((have - 5))" ] && want=$((have - 5))
    timeout -k 5 "$want" "$@"
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
nproc
# NVRTC and friends: the CUDA toolkit's, else the ones the torch wheels carry
libs=$(python3 - <<'EOF'
import glob, os, site
dirs = ["/usr/local/cuda/lib64"]
for s in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ls /usr/local/cuda/lib64/libnvrtc* 2>/dev/null | head -3

parity() {
    step "CUDA parity, tiny fixtures, f32 (decodes of one request replay a recorded step)"
    run_for 90 "$bin/gpu" --test-threads 1 --nocapture cuda_runs_the_fixtures 2>&1 | tee -a "$out/tests.txt"
    step "CUDA decode graphs against step-by-step decoding (one request, a batch's lone sequence, a conversation)"
    run_for 150 "$bin/gpu" --test-threads 1 --nocapture cuda_decode_graphs 2>&1 | tee -a "$out/tests.txt"
    step "CUDA token choice against the host sampler"
    run_for 60 "$bin/gpu" --test-threads 1 --nocapture cuda_device_choice 2>&1 | tee -a "$out/tests.txt"
}

# bench NAME FLAG: checkpoint, Rust, PyTorch
bench() {
    local name=$1 flag=$2 dir=/tmp/echovlm-bench
    step "$name: full-size checkpoint"
    rm -rf "$dir"
    run_for 120 python3 tools/make_bench_checkpoint.py --out "$dir" "$flag" --gen-device cuda || return
    local ckpt
    ckpt=$(dirname "$(ls "$dir"/*/config.json)")
    [ -f /tmp/scan.png ] || python3 -c "from PIL import Image; import numpy as np; Image.fromarray((np.random.default_rng(0).random((504, 504, 3)) * 255).astype('uint8')).save('/tmp/scan.png')"
    step "$name: Rust, cuda bf16"
    run_for 260 "$bin/echovlm" --model "$ckpt" --image /tmp/scan.png --device cuda --dtype bf16 \
        --prompt "Describe this ultrasound image." --temperature 0 --repetition-penalty 1.0 \
        --ignore-eos --max-new-tokens 64 --runs 2 --json > "$out/rust-$name.json"
    tail -c 1500 "$out/rust-$name.json"
    echo
    step "$name: PyTorch eager, bf16"
    run_for 150 python3 tools/bench_gpu_torch.py --ckpt "$ckpt" --rust-json "$out/rust-$name.json" \
        --new-tokens 64 --out "$out/torch-$name.json"
}

# after v1 or v2, on its checkpoint: the Rust CLI again, every decode step run one by one
eager() {
    local ckpt name
    ckpt=$(dirname "$(ls /tmp/echovlm-bench/*/config.json)") || return
    name=$(basename "$ckpt")
    step "$name: Rust, cuda bf16, decode step by step (--no-decode-graphs)"
    run_for 260 "$bin/echovlm" --model "$ckpt" --image /tmp/scan.png --device cuda --dtype bf16 \
        --prompt "Describe this ultrasound image." --temperature 0 --repetition-penalty 1.0 \
        --ignore-eos --max-new-tokens 64 --runs 2 --json --no-decode-graphs > "$out/rust-eager.json"
    tail -c 1500 "$out/rust-eager.json"
    echo
}

probe() {
    step "decode probe"
    local ckpt
    ckpt=$(dirname "$(ls /tmp/echovlm-bench/*/config.json)") || return
    ECHOVLM_PROBE_MODEL=$ckpt run_for 200 "$bin/gpu" --ignored --test-threads 1 --nocapture \
        cuda_decode_probe 2>&1 | tee -a "$out/probe.txt"
}

# Burn's int8 and int4 quantised products against bf16 at the decoder's shapes (no checkpoint)
formats() {
    step "weight formats: bf16, int8 and int4 products of one token; decode attention forms"
    run_for 150 "$bin/gpu" --ignored --test-threads 1 --nocapture cuda_weight_format_products 2>&1 |
        grep -v "^  *[0-9]*: \|^  *at " | tee -a "$out/formats.txt"
    run_for 90 "$bin/gpu" --ignored --test-threads 1 --nocapture cuda_decode_attention_forms 2>&1 |
        tee -a "$out/formats.txt"
}

tests() {
    step "the other GPU tests"
    CUBECL_AUTOTUNE_LEVEL=minimal run_for 150 "$bin/gpu" --test-threads 1 --nocapture cuda_ 2>&1 |
        tee -a "$out/tests.txt"
    [ "${1:-}" = cuda ] && return
    if ! ldconfig -p | grep -q libvulkan; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
    run_for 150 "$bin/gpu" --test-threads 1 --nocapture --skip cuda_ 2>&1 | tee -a "$out/tests.txt"
}

scaling() {
    step "CPU scaling"
    local dir=/tmp/echovlm-cpu
    [ -f "$dir/e2e/config.json" ] ||
        run_for 60 python3 tools/make_bench_checkpoint.py --out "$dir" --only-e2e --gen-device cuda || return
    run_for 240 python3 tools/scaling.py --exe "$bin/echovlm" --model "$dir/e2e" --threads 1,2,4,8,16 \
        --weights bf16,int8,int4 | tee "$out/scaling.md"
}

for s in $steps; do
    case $s in
        parity) parity ;;
        v2) bench v2 --only-full-v2 ;;
        v1) bench v1 --only-full ;;
        probe) probe ;;
        formats) formats ;;
        eager) eager ;;
        tests) tests ;;
        tests-cuda) tests cuda ;;
        scaling) scaling ;;
        *) echo "unknown step $s" ;;
    esac
done
step "done"
