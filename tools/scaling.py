#!/usr/bin/env python3
"""Image encode, prefill and decode throughput of the CLI at several thread counts, in one run.

  cargo build --release --example echovlm
  tools/.venv/bin/python tools/make_bench_checkpoint.py      # once: target/bench-ckpt/e2e
  python3 tools/scaling.py [--model target/bench-ckpt/e2e] [--threads 1,2,4,8,16] [--weights bf16,int8,int4]

Each configuration runs the CLI once as a fresh process (`--threads N --json`; the thread pool
is sized once per process) on one 280x224 frame and a report prompt with 32 generated tokens
(EOS ignored), after one warm-up run that fills the page cache. Prints a Markdown table: image
encode time, prefill tokens/s, decode tokens/s and the bandwidth decode reaches (bytes of
weights held / time per token; a lower bound of what each step reads, since the KV cache and
activations are not counted), and the speed-up over the smallest thread count. Needs only
python3 (no third-party packages), so it runs on a machine that only has the built binary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(exe: Path, model: str, image: str, threads: int, weights: str, tokens: int) -> dict:
    cmd = [str(exe), "--model", model, "--image", image, "--task", "report", "--lang", "en",
           "--max-new-tokens", str(tokens), "--ignore-eos", "--json",
           "--threads", str(threads), "--weights", weights]
    env = dict(os.environ)
    env.pop("RAYON_NUM_THREADS", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", default=str(ROOT / "target/release/examples/echovlm"))
    ap.add_argument("--model", default=str(ROOT / "target/bench-ckpt/e2e"))
    ap.add_argument("--image", default=str(ROOT / "fixtures/images/demo_ultrasound.png"))
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--weights", default="bf16,int8,int4")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    exe = Path(args.exe)
    if not exe.is_file():
        sys.exit(f"no {exe}: run `cargo build --release --example echovlm` first")
    threads = [int(t) for t in args.threads.split(",") if t]
    cores = os.cpu_count() or 1
    print(f"{args.model}; {cores} logical CPUs here; one frame, {args.tokens} tokens\n")
    print("| weights | threads | image encode | prefill | decode | decode bandwidth | speed-up (encode / prefill / decode) |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for weights in [w for w in args.weights.split(",") if w]:
        run(exe, args.model, args.image, threads[0], weights, 2)  # warm the page cache
        base = None
        for n in threads:
            v = run(exe, args.model, args.image, n, weights, args.tokens)
            t = v["timings"]
            vision_s = t["vision_ms"] / 1e3
            prefill = t["prefill_tokens"] / (t["prefill_ms"] / 1e3)
            decode = t["decode_tokens_per_s"]
            gbs = v["weight_bytes"] * decode / 1e9
            row = dict(weights=weights, threads=v["threads"], vision_s=vision_s, prefill_tps=prefill,
                       decode_tps=decode, decode_gbs=gbs)
            results.append(row)
            base = base or row
            note = " (more threads than CPUs)" if n > cores else ""
            print(f"| {weights} | {v['threads']}{note} | {vision_s * 1e3:.0f} ms | {prefill:.1f} tokens/s | "
                  f"{decode:.1f} tokens/s | {gbs:.1f} GB/s | {base['vision_s'] / vision_s:.2f}x / "
                  f"{prefill / base['prefill_tps']:.2f}x / {decode / base['decode_tps']:.2f}x |", flush=True)
    out = ROOT / "target/scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
