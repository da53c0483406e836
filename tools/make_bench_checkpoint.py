#!/usr/bin/env python3
"""Random-weight checkpoints for benchmarks, in the real Hugging Face layout.

  tools/.venv/bin/python tools/make_bench_checkpoint.py [--out target/bench-ckpt] [--full]

writes under --out:
  layer/    one EchoVLM decoder layer at the released model's dimensions (hidden 3584, 28 query /
            4 KV heads, dense MLP 18944, 4 x 1408 experts top-2, shared expert 5632), f32 keys
            model.layers.0.*  (about 1.5 GB)
  vision/   one Qwen2-VL vision block at real dimensions (1280 wide, 16 heads), f32 (80 MB)
  e2e/      a complete EchoVLM-shaped model of ~400 M parameters (8 layers, hidden 896, tied
            embeddings, real Qwen2 tokenizer, ViT 640 x 8), bf16, loadable by the pipeline
  full/     with --full: the exact dimensions of the released EchoVLM (11.68 B parameters,
            1262 tensors, bf16 shards of ~2 GB, 23.4 GB); written tensor by tensor so it never
            needs more than one tensor in memory

Weights are N(0, 1/fan_in) (norms 1, biases small) so activations keep unit scale. The same
files feed the Rust benchmarks (benches/) and tools/bench_side_by_side.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from make_fixtures import CHAT_TEMPLATE  # noqa: E402

REAL = {
    "hidden": 3584,
    "heads": 28,
    "kv_heads": 4,
    "intermediate": 18944,
    "experts": 4,
    "expert_width": 1408,
    "shared_width": 5632,
    "vision_embed": 1280,
    "vision_heads": 16,
    "vision_depth": 32,
    "vocab": 152064,
    "layers": 28,
}


def rand(gen: np.random.Generator, shape, fan_in: float, dtype) -> torch.Tensor:
    a = gen.standard_normal(size=shape, dtype=np.float32)
    a *= 1.0 / math.sqrt(fan_in)
    return torch.from_numpy(a).to(dtype)


def decoder_layer(prefix: str, d: dict, gen, dtype, moe: bool = True) -> dict:
    h, nh, nkv = d["hidden"], d["heads"], d["kv_heads"]
    hd = h // nh
    t = {}
    t[f"{prefix}.input_layernorm.weight"] = torch.ones(h, dtype=dtype)
    t[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
    t[f"{prefix}.self_attn.q_proj.weight"] = rand(gen, (nh * hd, h), h, dtype)
    t[f"{prefix}.self_attn.q_proj.bias"] = rand(gen, (nh * hd,), 100, dtype)
    t[f"{prefix}.self_attn.k_proj.weight"] = rand(gen, (nkv * hd, h), h, dtype)
    t[f"{prefix}.self_attn.k_proj.bias"] = rand(gen, (nkv * hd,), 100, dtype)
    t[f"{prefix}.self_attn.v_proj.weight"] = rand(gen, (nkv * hd, h), h, dtype)
    t[f"{prefix}.self_attn.v_proj.bias"] = rand(gen, (nkv * hd,), 100, dtype)
    t[f"{prefix}.self_attn.o_proj.weight"] = rand(gen, (h, nh * hd), nh * hd, dtype)
    i = d["intermediate"]
    t[f"{prefix}.mlp.gate_proj.weight"] = rand(gen, (i, h), h, dtype)
    t[f"{prefix}.mlp.up_proj.weight"] = rand(gen, (i, h), h, dtype)
    t[f"{prefix}.mlp.down_proj.weight"] = rand(gen, (h, i), i, dtype)
    if moe:
        e, w, s = d["experts"], d["expert_width"], d["shared_width"]
        t[f"{prefix}.moe.gate.weight"] = rand(gen, (e, h), h / 4.0, dtype)
        for k in range(e):
            t[f"{prefix}.moe.experts.{k}.gate_proj.weight"] = rand(gen, (w, h), h, dtype)
            t[f"{prefix}.moe.experts.{k}.up_proj.weight"] = rand(gen, (w, h), h, dtype)
            t[f"{prefix}.moe.experts.{k}.down_proj.weight"] = rand(gen, (h, w), w, dtype)
        t[f"{prefix}.moe.shared_expert.gate_proj.weight"] = rand(gen, (s, h), h, dtype)
        t[f"{prefix}.moe.shared_expert.up_proj.weight"] = rand(gen, (s, h), h, dtype)
        t[f"{prefix}.moe.shared_expert.down_proj.weight"] = rand(gen, (h, s), s, dtype)
        t[f"{prefix}.moe.shared_expert_gate.weight"] = rand(gen, (1, h), h, dtype)
        t[f"{prefix}.coefficient.weight"] = rand(gen, (2, h), h, dtype)
        t[f"{prefix}.coefficient.bias"] = torch.zeros(2, dtype=dtype)
    return t


def vision_block(prefix: str, e: int, gen, dtype) -> dict:
    t = {}
    for n in ("norm1", "norm2"):
        t[f"{prefix}.{n}.weight"] = torch.ones(e, dtype=dtype)
        t[f"{prefix}.{n}.bias"] = torch.zeros(e, dtype=dtype)
    t[f"{prefix}.attn.qkv.weight"] = rand(gen, (3 * e, e), e, dtype)
    t[f"{prefix}.attn.qkv.bias"] = rand(gen, (3 * e,), 100, dtype)
    t[f"{prefix}.attn.proj.weight"] = rand(gen, (e, e), e, dtype)
    t[f"{prefix}.attn.proj.bias"] = rand(gen, (e,), 100, dtype)
    t[f"{prefix}.mlp.fc1.weight"] = rand(gen, (4 * e, e), e, dtype)
    t[f"{prefix}.mlp.fc1.bias"] = rand(gen, (4 * e,), 100, dtype)
    t[f"{prefix}.mlp.fc2.weight"] = rand(gen, (e, 4 * e), 4 * e, dtype)
    t[f"{prefix}.mlp.fc2.bias"] = rand(gen, (e,), 100, dtype)
    return t


def vision_tower(e: int, depth: int, out: int, gen, dtype) -> dict:
    t = {"visual.patch_embed.proj.weight": rand(gen, (e, 3, 2, 14, 14), 1176, dtype)}
    for b in range(depth):
        t.update(vision_block(f"visual.blocks.{b}", e, gen, dtype))
    m = 4 * e
    t["visual.merger.ln_q.weight"] = torch.ones(e, dtype=dtype)
    t["visual.merger.ln_q.bias"] = torch.zeros(e, dtype=dtype)
    t["visual.merger.mlp.0.weight"] = rand(gen, (m, m), m, dtype)
    t["visual.merger.mlp.0.bias"] = torch.zeros(m, dtype=dtype)
    t["visual.merger.mlp.2.weight"] = rand(gen, (out, m), m, dtype)
    t["visual.merger.mlp.2.bias"] = torch.zeros(out, dtype=dtype)
    return t


def config(d: dict, tied: bool, dtype: str, max_pos: int = 32768) -> dict:
    hd = d["hidden"] // d["heads"]
    half = hd // 2
    t_sec = half // 4
    section = [t_sec, (half - t_sec) // 2, half - t_sec - (half - t_sec) // 2]
    if hd == 128:
        section = [16, 24, 24]
    ids = {
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
    }
    if d["vocab"] <= max(ids.values()):
        ids = {}  # single-layer benchmark models have a tiny vocabulary
    return {
        **ids,
        "architectures": ["Qwen2VLMOEForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "vocab_size": d["vocab"],
        "hidden_size": d["hidden"],
        "intermediate_size": d["intermediate"],
        "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "use_sliding_window": False,
        "torch_dtype": dtype,
        "vision_config": {
            "depth": d["vision_depth"],
            "embed_dim": d["vision_embed"],
            "hidden_size": d["hidden"],
            "hidden_act": "quick_gelu",
            "mlp_ratio": 4,
            "num_heads": d["vision_heads"],
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "moe_intermediate_size": d["expert_width"],
        "shared_expert_intermediate_size": d["shared_width"],
        "num_experts": d["experts"],
        "num_experts_per_tok": 2,
        "norm_topk_prob": False,
    }


def model_files(out: Path):
    """Tokenizer, template, processor and generation configs of the real Qwen2-VL."""
    raw = gzip.decompress((ROOT / "fixtures/qwen2-tokenizer/tokenizer.json.gz").read_bytes())
    (out / "tokenizer.json").write_bytes(raw)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"})
        + "\n"
    )
    shutil.copy(ROOT / "fixtures/models/tiny-echovlm/preprocessor_config.json", out)
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 151643,
                "do_sample": True,
                "eos_token_id": [151645, 151643],
                "pad_token_id": 151643,
                "repetition_penalty": 1.05,
                "temperature": 0.1,
                "top_k": 1,
                "top_p": 0.001,
            }
        )
        + "\n"
    )


class ShardWriter:
    """Accumulates tensors and writes ~shard_bytes safetensors files plus the index."""

    def __init__(self, out: Path, shard_bytes: int, total_shards: int):
        self.out, self.limit, self.n = out, shard_bytes, total_shards
        self.buf, self.size, self.idx, self.map, self.total = {}, 0, 0, {}, 0

    def add(self, name: str, t: torch.Tensor):
        self.buf[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= self.limit:
            self.flush()

    def flush(self):
        if not self.buf:
            return
        self.idx += 1
        fname = f"model-{self.idx:05d}-of-{self.n:05d}.safetensors"
        save_file(self.buf, str(self.out / fname), metadata={"format": "pt"})
        for k, v in self.buf.items():
            self.map[k] = fname
            self.total += v.numel() * v.element_size()
        print(f"  wrote {fname} ({self.size / 1e9:.2f} GB)", flush=True)
        self.buf, self.size = {}, 0

    def finish(self):
        self.flush()
        # the real shard count is only known now: rename to it
        final = {}
        for i in range(1, self.idx + 1):
            src = self.out / f"model-{i:05d}-of-{self.n:05d}.safetensors"
            dst = self.out / f"model-{i:05d}-of-{self.idx:05d}.safetensors"
            src.rename(dst)
        for k, v in self.map.items():
            i = int(v.split("-")[1])
            final[k] = f"model-{i:05d}-of-{self.idx:05d}.safetensors"
        (self.out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": self.total}, "weight_map": dict(sorted(final.items()))}, indent=1)
        )


def write_full(out: Path, gen):
    """The released EchoVLM's exact shapes, bf16, streamed to ~2 GB shards."""
    out.mkdir(parents=True, exist_ok=True)
    d = dict(REAL)
    w = ShardWriter(out, 2_000_000_000, 99)
    bf = torch.bfloat16
    count = 0

    def add(name, t):
        nonlocal count
        count += t.numel()
        w.add(name, t)

    add("model.embed_tokens.weight", rand(gen, (d["vocab"], d["hidden"]), 1.0, bf))
    for i in range(d["layers"]):
        for k, v in decoder_layer(f"model.layers.{i}", d, gen, bf).items():
            add(k, v)
    add("model.norm.weight", torch.ones(d["hidden"], dtype=bf))
    add("lm_head.weight", rand(gen, (d["vocab"], d["hidden"]), d["hidden"], bf))
    for k, v in vision_tower(d["vision_embed"], d["vision_depth"], d["hidden"], gen, bf).items():
        add(k, v)
    w.finish()
    (out / "config.json").write_text(json.dumps(config(d, False, "bfloat16"), indent=1) + "\n")
    model_files(out)
    print(f"full: {count:,} parameters in {len(w.map)} tensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-ckpt"))
    ap.add_argument("--full", action="store_true", help="also write the 23 GB full-size checkpoint")
    ap.add_argument("--only-full", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    gen = np.random.default_rng(2026)
    if not args.only_full:
        # a one-layer model with a 1024-token vocabulary: the decoder layer is all that costs
        (out / "layer").mkdir(parents=True, exist_ok=True)
        t = decoder_layer("model.layers.0", REAL, gen, torch.float32)
        t["model.embed_tokens.weight"] = rand(gen, (1024, REAL["hidden"]), 1.0, torch.float32)
        t["model.norm.weight"] = torch.ones(REAL["hidden"])
        t["lm_head.weight"] = rand(gen, (1024, REAL["hidden"]), REAL["hidden"], torch.float32)
        save_file(t, str(out / "layer/model.safetensors"))
        (out / "layer/config.json").write_text(
            json.dumps(config(dict(REAL, layers=1, vocab=1024), False, "float32"), indent=1)
        )
        # a one-block vision tower at real width
        (out / "vision").mkdir(parents=True, exist_ok=True)
        t = vision_tower(REAL["vision_embed"], 1, REAL["hidden"], gen, torch.float32)
        save_file(t, str(out / "vision/model.safetensors"))
        (out / "vision/config.json").write_text(
            json.dumps(config(dict(REAL, layers=1, vision_depth=1, vocab=1024), False, "float32"), indent=1)
        )
        e2e = dict(
            hidden=896, heads=14, kv_heads=2, intermediate=4864, experts=4, expert_width=608,
            shared_width=2432, vision_embed=640, vision_heads=10, vision_depth=8, vocab=152064, layers=8,
        )
        ed = out / "e2e"
        ed.mkdir(parents=True, exist_ok=True)
        t = {"model.embed_tokens.weight": rand(gen, (e2e["vocab"], e2e["hidden"]), 1.0, torch.bfloat16)}
        for i in range(e2e["layers"]):
            t.update(decoder_layer(f"model.layers.{i}", e2e, gen, torch.bfloat16))
        t["model.norm.weight"] = torch.ones(e2e["hidden"], dtype=torch.bfloat16)
        t.update(vision_tower(e2e["vision_embed"], e2e["vision_depth"], e2e["hidden"], gen, torch.bfloat16))
        save_file(t, str(ed / "model.safetensors"), metadata={"format": "pt"})
        (ed / "config.json").write_text(json.dumps(config(e2e, True, "bfloat16"), indent=1))
        model_files(ed)
        n = sum(v.numel() for v in t.values())
        print(f"e2e: {n / 1e6:.0f} M parameters")
    if args.full or args.only_full:
        write_full(out / "full", gen)


if __name__ == "__main__":
    main()
