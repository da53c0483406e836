#!/usr/bin/env python3
"""PyTorch eager transformers on the same checkpoint and the same prompt as a Rust run (EchoVLM V2,
or V1 with its dynamic MoE layer added to transformers' Qwen2-VL): the
baseline of the GPU table in README.md (tools/gpu_check.sh runs it).

  python3 tools/bench_gpu_torch.py --ckpt DIR --rust-json RUN.json [--new-tokens 128] [--out OUT.json]

RUN.json is what `echovlm --json` printed for the same checkpoint: its prompt token ids and image
grid are reused, so both sides prefill exactly the same tokens (the pixel values are random:
weights are random too, only the timings matter). Times, each the median of --reps runs after a
warm-up, with the device synchronised around each:

  encode_ms   the vision tower on the image's patches
  prefill_ms  one forward pass over the prompt, image included, minus encode_ms
  decode      tokens/s of greedy decoding, from generate() with 1 and with --new-tokens tokens

It also measures the device's copy bandwidth (bytes read + written per second) and the bytes of
weights one decode step must read (every text weight but the embedding table), whose ratio is
the memory-bandwidth bound on decode tokens/s.

Runs with transformers 4.51 (tools/requirements-qwen25.txt) and with 5.x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> float:
    """Median seconds of `reps` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(device: str, size_bytes: int = 4 << 30) -> float:
    """Bytes read plus written per second by a device-to-device copy."""
    if not device.startswith("cuda"):
        size_bytes = 256 << 20
    a = torch.empty(size_bytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), device, 5)
    return 2 * size_bytes / t


def decode_bytes(ckpt: Path) -> tuple[int, int]:
    """(bytes of every weight, bytes one decode step must read: the text weights but the
    embedding table, whose one row is negligible, and of the routed experts only the top-k)
    from the safetensors headers."""
    cfg = json.loads((ckpt / "config.json").read_text())
    routed = cfg.get("num_experts_per_tok", 2) / cfg["num_experts"] if cfg.get("num_experts") else 1.0
    total = active = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            size = meta["data_offsets"][1] - meta["data_offsets"][0]
            total += size
            if ".moe.experts." in name:
                active += int(size * routed)
            elif not (name.startswith("visual.") or "embed_tokens" in name):
                active += size
    return total, active


class Mlp(torch.nn.Module):
    """Qwen2's SwiGLU MLP."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, width, bias=False)
        self.up_proj = torch.nn.Linear(hidden, width, bias=False)
        self.down_proj = torch.nn.Linear(width, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoe(torch.nn.Module):
    """Qwen2-MoE's sparse block as transformers 4.47 runs it eagerly: router softmax in f32,
    top-k, each expert on its own tokens, plus the sigmoid-gated shared expert."""

    def __init__(self, hidden: int, experts: int, width: int, shared: int, top_k: int, renorm: bool):
        super().__init__()
        self.top_k, self.renorm = top_k, renorm
        self.gate = torch.nn.Linear(hidden, experts, bias=False)
        self.experts = torch.nn.ModuleList([Mlp(hidden, width) for _ in range(experts)])
        self.shared_expert = Mlp(hidden, shared)
        self.shared_expert_gate = torch.nn.Linear(hidden, 1, bias=False)

    def forward(self, h):
        x = h.reshape(-1, h.shape[-1])
        probs = torch.softmax(self.gate(x), dim=1, dtype=torch.float)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.renorm:
            w = w / w.sum(dim=-1, keepdim=True)
        w = w.to(x.dtype)
        out = torch.zeros_like(x)
        mask = torch.nn.functional.one_hot(idx, num_classes=len(self.experts)).permute(2, 1, 0)
        for e, expert in enumerate(self.experts):
            slot, tok = torch.where(mask[e])
            out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(h.shape)


def add_dynamic_moe(model, cfg: dict, ckpt: Path, device: str, dtype) -> int:
    """EchoVLM V1's dynamic feed-forward on a loaded Qwen2-VL: each decoder layer's `mlp` becomes
    `c0 · moe(h) + c1 · mlp(h)` with `c = softmax(coefficient(h))`, and the `moe.*` and
    `coefficient.*` tensors are read from the checkpoint (transformers does not know them).
    Works whatever module path the transformers version gives the text layers."""
    from safetensors import safe_open

    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp") and hasattr(m, "input_layernorm")]
    layers = [m for m in layers if not hasattr(m, "attn")]  # the vision blocks have `attn`
    hidden = cfg["hidden_size"]
    for layer in layers:
        layer.moe = SparseMoe(
            hidden,
            cfg["num_experts"],
            cfg["moe_intermediate_size"],
            cfg["shared_expert_intermediate_size"],
            cfg.get("num_experts_per_tok", 2),
            cfg.get("norm_topk_prob", False),
        ).to(device=device, dtype=dtype)
        layer.coefficient = torch.nn.Linear(hidden, 2, bias=True).to(device=device, dtype=dtype)
        dense = layer.mlp.forward

        def mixed(h, layer=layer, dense=dense):
            c = torch.softmax(layer.coefficient(h), dim=-1)
            return c[..., 0:1] * layer.moe(h) + c[..., 1:2] * dense(h)

        layer.mlp.forward = mixed
    loaded = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device=device) as st:
            for key in st.keys():
                parts = key.split(".")
                if len(parts) > 4 and parts[:2] == ["model", "layers"] and parts[3] in ("moe", "coefficient"):
                    target = layers[int(parts[2])].get_submodule(".".join(parts[3:-1]))
                    getattr(target, parts[-1]).data.copy_(st.get_tensor(key))
                    loaded += 1
    expect = sum(1 for layer in layers for _ in list(layer.moe.parameters()) + list(layer.coefficient.parameters()))
    if loaded != expect:
        raise RuntimeError(f"loaded {loaded} MoE tensors, expected {expect}")
    return len(layers)


def load_model(ckpt: Path, device: str, dtype):
    """The checkpoint as transformers' Qwen2-VL / Qwen2.5-VL, with EchoVLM V1's dynamic MoE
    added when the config has experts."""
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg["model_type"] == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
    else:
        from transformers import Qwen2VLForConditionalGeneration as Model
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    dtype_arg = {"dtype": dtype} if version >= (4, 56) else {"torch_dtype": dtype}
    try:  # straight onto the device (needs accelerate)
        model = Model.from_pretrained(ckpt, attn_implementation="sdpa", device_map=device, **dtype_arg)
    except (ValueError, ImportError):
        model = Model.from_pretrained(ckpt, attn_implementation="sdpa", **dtype_arg).to(device)
    if cfg.get("num_experts"):
        add_dynamic_moe(model, cfg, ckpt, device, dtype)
    return model.eval(), cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--rust-json", required=True, help="the Rust run's --json output (prompt ids, image grid)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out")
    args = ap.parse_args()
    ckpt, device = Path(args.ckpt), args.device
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    rust = json.loads(Path(args.rust_json).read_text().strip().splitlines()[-1])
    t = time.perf_counter()
    model, cfg = load_model(ckpt, device, dtype)
    sync(device)
    load_s = time.perf_counter() - t

    ids = torch.tensor([rust["prompt_token_ids"]], device=device)
    grid = torch.tensor(rust["image_grid_thw"], device=device)
    vc = cfg["vision_config"]
    patch_dim = vc.get("in_channels", vc.get("in_chans", 3)) * vc.get("temporal_patch_size", 2) * vc["patch_size"] ** 2
    patches = int(grid.prod(-1).sum())
    pixels = torch.randn(patches, patch_dim, device=device, dtype=dtype)
    visual = getattr(model, "visual", None) or model.model.visual
    mask = torch.ones_like(ids)

    def gen(n: int):
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            image_grid_thw=grid,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            repetition_penalty=1.0,
        )

    with torch.inference_mode():
        encode = timed(lambda: visual(pixels, grid_thw=grid), device, args.reps)
        forward = timed(
            lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid, use_cache=True),
            device,
            args.reps,
        )
        one = timed(lambda: gen(1), device, args.reps)
        many = timed(lambda: gen(args.new_tokens), device, args.reps)
    total_bytes, active_bytes = decode_bytes(ckpt)
    bandwidth = copy_bandwidth(device)
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "load_s": load_s,
        "prompt_tokens": ids.shape[1],
        "image_grid_thw": rust["image_grid_thw"],
        "encode_ms": encode * 1e3,
        "prefill_ms": (forward - encode) * 1e3,
        "prefill_tokens_per_s": ids.shape[1] / (forward - encode),
        "decode_tokens_per_s": (args.new_tokens - 1) / (many - one),
        "weight_bytes": total_bytes,
        "decode_weight_bytes": active_bytes,
        "copy_bandwidth_gbs": bandwidth / 1e9,
        "decode_bound_tokens_per_s": bandwidth / active_bytes,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
