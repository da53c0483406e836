#!/usr/bin/env python3
"""Reads a saved EchoVLM V1 checkpoint with the transformers 4.47 reference and writes its logits
on the training-golden inputs, so that a checkpoint written elsewhere can be compared with what
transformers makes of it.

    tools/.venv/bin/python tools/check_saved_model.py MODEL_DIR --out GOLDEN.json [--adapter ADAPTER_DIR]

MODEL_DIR has the layout of fixtures/models/tiny-echovlm (config.json, model.safetensors or
sharded safetensors with an index, tokenizer files). ADAPTER_DIR is a PEFT-style LoRA adapter:
adapter_config.json (r, lora_alpha, target_modules, optionally use_rslora) and
adapter_model.safetensors with keys base_model.model.{module}.lora_A.weight [r, in] and
.lora_B.weight [out, r]; any other base_model.model.{parameter} key (modules_to_save) replaces
that parameter of the model. LoRA: y = base(x) + (lora_alpha / r) * (x A^T) B^T.

The inputs are the "text" and "image" batches of fixtures/goldens/train-tiny-echovlm.safetensors
(--inputs to read another file): input ids, attention mask, labels, 3-D positions, pixel values.

Writes GOLDEN.json (per case: last_index = the last non-padding position of each row,
last_logits [B][V] at those positions, ce / aux / total on the golden labels) and GOLDEN.safetensors
next to it ({case}.logits [B, S, V], {case}.last_logits [B, V], {case}.last_index [B], float32 / int64).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_train_goldens as mtg  # noqa: E402

CASES = ("text", "image")
KEYS = ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values", "image_grid_thw")


def load_adapter(model, adapter_dir: Path) -> dict:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            raise SystemExit(f"{adapter_dir}: {k} is not supported")
    if cfg.get("lora_dropout", 0.0) not in (0, 0.0, None):
        print(f"note: lora_dropout {cfg['lora_dropout']} is ignored (eval mode)")
    scaling = alpha / r**0.5 if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    prefix = "base_model.model."
    lora, full = {}, {}
    for k, t in tensors.items():
        if not k.startswith(prefix):
            raise SystemExit(f"{adapter_dir}: key {k} does not start with {prefix}")
        name = k[len(prefix):]
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", name)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = t
        elif ".lora_" in name:
            raise SystemExit(f"{adapter_dir}: unsupported LoRA tensor {k}")
        else:
            full[name] = t
    targets = cfg.get("target_modules")
    for module, ab in lora.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise SystemExit(f"{adapter_dir}: {module} lacks {({'lora_A', 'lora_B'} - set(ab))}")
        if isinstance(targets, str):
            ok = re.fullmatch(targets, module) is not None
        elif targets:
            ok = any(module == t or module.endswith("." + t) for t in targets)
        else:
            ok = False
        if not ok:
            raise SystemExit(f"{adapter_dir}: {module} has LoRA weights but is not in target_modules {targets}")
    wrappers = mtg.wrap_lora(model, sorted(lora), r, alpha, scaling)
    with torch.no_grad():
        for module, w in wrappers.items():
            for part in ("lora_A", "lora_B"):
                t = lora[module][part]
                p = getattr(w, part).weight
                if tuple(t.shape) != tuple(p.shape):
                    raise SystemExit(f"{module}.{part}.weight has shape {list(t.shape)}, expected {list(p.shape)}")
                p.copy_(t.to(torch.float32))
        params = dict(model.named_parameters())
        for name, t in full.items():
            if name not in params:
                raise SystemExit(f"{adapter_dir}: {name} is neither a LoRA tensor nor a model parameter")
            if tuple(t.shape) != tuple(params[name].shape):
                raise SystemExit(f"{adapter_dir}: {name} has shape {list(t.shape)}, expected {list(params[name].shape)}")
            params[name].copy_(t.to(torch.float32))
    return {"r": r, "lora_alpha": alpha, "scaling": scaling, "modules": sorted(lora), "full_parameters": sorted(full)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="GOLDEN.json; GOLDEN.safetensors is written beside it")
    ap.add_argument("--adapter", type=Path, help="PEFT-style LoRA adapter directory")
    ap.add_argument("--inputs", type=Path, default=mtg.GOLDEN, help="safetensors file holding the input batches")
    args = ap.parse_args()

    model, _, cfg = mtg.load_reference(args.model_dir)
    adapter = load_adapter(model, args.adapter) if args.adapter else None
    for p in model.parameters():
        p.requires_grad_(False)
    coef = float(cfg.get("router_aux_loss_coef", 0.001))
    inputs = load_file(str(args.inputs))

    meta = {"model_dir": str(args.model_dir), "adapter": str(args.adapter) if args.adapter else None,
            "adapter_settings": adapter, "inputs": str(args.inputs), "router_aux_loss_coef": coef,
            "logits_file": args.out.with_suffix(".safetensors").name, "cases": {}}
    tensors = {}
    with torch.no_grad():
        for case in CASES:
            batch = {k: inputs[f"{case}.{k}"] for k in KEYS if f"{case}.{k}" in inputs}
            if not batch:
                continue
            out = mtg.losses(model, batch, coef)
            logits = out["logits"].float()
            last = batch["attention_mask"].sum(1) - 1
            last_logits = logits[torch.arange(logits.shape[0]), last]
            tensors[f"{case}.logits"] = logits.contiguous()
            tensors[f"{case}.last_logits"] = last_logits.contiguous()
            tensors[f"{case}.last_index"] = last.to(torch.int64)
            meta["cases"][case] = {
                "shape": list(logits.shape),
                "last_index": last.tolist(),
                "last_logits": last_logits.tolist(),
                "argmax_last": last_logits.argmax(-1).tolist(),
                "ce": out["ce"].item(), "aux": out["aux"].item(), "total": out["total"].item(),
            }
            print(f"{case}: logits {list(logits.shape)} ce {out['ce'].item():.6f} aux {out['aux'].item():.6f} "
                  f"total {out['total'].item():.6f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out.with_suffix(".safetensors")))
    args.out.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.safetensors')}")


if __name__ == "__main__":
    sys.exit(main())
