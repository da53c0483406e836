"""Side by side: one fine-tuning step (forward, backward, gradient clipping, AdamW) of the
transformers reference and of echovlm-rs, on the same tiny checkpoint
(fixtures/models/tiny-echovlm) and the same batches (fixtures/goldens/train-tiny-echovlm).

    tools/.venv/bin/python tools/bench_train.py [--threads 2] [--steps 20]

Prints one line per (set, case) with the median step time of each and their ratio, and writes
target/bench_train.json. The Rust side is `cargo run --release --example train_step`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_train_goldens as mtg  # noqa: E402


def batch_of(golden: dict, case: str) -> dict:
    b = {k: golden[f"{case}.{k}"] for k in ("input_ids", "attention_mask", "labels", "position_ids")}
    if f"{case}.pixel_values" in golden:
        b["pixel_values"] = golden[f"{case}.pixel_values"]
        b["image_grid_thw"] = golden[f"{case}.image_grid_thw"]
    return b


def torch_step_ms(model, which: str, batch: dict, coef: float, steps: int) -> tuple[float, int]:
    if which == "all":
        params = []
        for name, p in model.named_parameters():
            on = (p.dim() >= 2 and "embed_tokens" not in name) or (name.endswith(".bias") and "norm" not in name and "ln_q" not in name)
            p.requires_grad_(on)
            if on:
                params.append(p)
    else:
        params = [p for _, p in mtg.set_trainable(model, which)]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = mtg.losses(model, batch, coef)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], sum(p.numel() for p in params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    golden = load_file(str(ROOT / "fixtures/goldens/train-tiny-echovlm.safetensors"))
    rows = []
    for which in ("moe", "all"):
        for case in ("text", "image"):
            model, _, cfg = mtg.load_reference(ROOT / "fixtures/models/tiny-echovlm")
            coef = float(cfg.get("router_aux_loss_coef", 0.001))
            t_ms, n = torch_step_ms(model, which, batch_of(golden, case), coef, args.steps)
            out = subprocess.run(
                ["cargo", "run", "--release", "-q", "--example", "train_step", "--", "--set", which,
                 "--case", case, "--steps", str(args.steps), "--threads", str(args.threads)],
                cwd=ROOT, check=True, capture_output=True, text=True).stdout
            rust = json.loads(out.strip().splitlines()[-1])
            row = {"set": which, "case": case, "torch_ms": t_ms, "rust_ms": rust["median_ms"],
                   "speedup": t_ms / rust["median_ms"], "torch_trainable": n,
                   "rust_trainable": rust["trainable"], "tokens": rust["tokens"]}
            rows.append(row)
            print(f"{which:>4} {case:>5}: PyTorch {t_ms:7.1f} ms  echovlm-rs {rust['median_ms']:7.1f} ms  "
                  f"speed-up {row['speedup']:.2f}x  ({rust['tokens']} tokens, trainable {n} / {rust['trainable']})")
    (ROOT / "target").mkdir(exist_ok=True)
    (ROOT / "target/bench_train.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
