#!/usr/bin/env bash
# Builds the GPU image (Dockerfile.cuda) and checks what the machine allows:
# - with an NVIDIA GPU and the NVIDIA Container Toolkit (`docker run --gpus all` works): the image
#   serves an image request on the GPU (bf16) with its default settings;
# - without one: started with its defaults (--device cuda) it stops at once with exit status 2 and
#   an error naming the missing CUDA device, instead of listening;
# - everywhere: with ECHOVLM_DEVICE=cpu and ECHOVLM_DTYPE=f32 the same image serves on the CPU
#   and its greedy answer equals the CPU image's (echovlm-server:latest, built by
#   tools/check_docker.sh or `docker build -t echovlm-server .`).
#
#   tools/check_docker_cuda.sh          # port 18081 must be free
set -euo pipefail
cd "$(dirname "$0")/.."
name=echovlm-check-cuda
cleanup() { docker rm -f "$name" "$name-ref" >/dev/null 2>&1 || true; }
trap cleanup EXIT

DOCKER_BUILDKIT=1 docker build -q -f Dockerfile.cuda -t echovlm-server:cuda . >/dev/null
echo "image: $(docker image inspect -f '{{.Size}}' echovlm-server:cuda | awk '{printf "%.0f MB", $1/1e6}')"

ready_wait=300
# shellcheck source=tools/docker_common.sh
source tools/docker_common.sh

if docker run --rm --gpus all echovlm-server:cuda --help >/dev/null 2>&1; then
    docker run -d --name "$name" --gpus all -p 18081:8080 echovlm-server:cuda >/dev/null
    wait_ready 18081
    tokens=$(ask 18081 | field "d['usage']['completion_tokens']")
    [[ "$tokens" == 8 ]] || { echo "the GPU answer has $tokens tokens, not 8" >&2; exit 1; }
    echo "ok: served on the GPU (bf16), 8 tokens"
    docker rm -f "$name" >/dev/null
else
    set +e
    err=$(docker run --rm echovlm-server:cuda 2>&1)
    status=$?
    set -e
    [[ $status == 2 && "$err" == *"Cuda"* && "$err" == *"not available"* && "$err" != *serving* ]] ||
        { echo "without a GPU: exit $status, '$err'" >&2; exit 1; }
    echo "ok: no GPU here; the default --device cuda stops with: $err"
fi

docker run -d --name "$name" -e ECHOVLM_DEVICE=cpu -e ECHOVLM_DTYPE=f32 -p 18081:8080 echovlm-server:cuda >/dev/null
wait_ready 18081
got=$(ask 18081 | field "d['choices'][0]['message']['content']")
docker run -d --name "$name-ref" -p 18082:8080 echovlm-server:latest >/dev/null
wait_ready 18082
want=$(ask 18082 | field "d['choices'][0]['message']['content']")
[[ "$got" == "$want" ]] || { echo "on the CPU: '$got' != the CPU image's '$want'" >&2; exit 1; }
echo "ok: on the CPU the GPU image answers as the CPU image: '$got'"
