#!/usr/bin/env python3
"""Random-weight checkpoints for benchmarks, in the real Hugging Face layout.

  tools/.venv/bin/python tools/make_bench_checkpoint.py [--out target/bench-ckpt] [--full] [--full-v2]
      [--gen-device cuda]

writes under --out:
  layer/    one EchoVLM decoder layer at the released model's dimensions (hidden 3584, 28 query /
            4 KV heads, dense MLP 18944, 4 x 1408 experts top-2, shared expert 5632), f32 keys
            model.layers.0.*  (about 1.5 GB)
  vision/   one Qwen2-VL vision block at real dimensions (1280 wide, 16 heads), f32 (80 MB)
  e2e/      a complete EchoVLM-shaped model of ~400 M parameters (8 layers, hidden 896, tied
            embeddings, real Qwen2 tokenizer, ViT 640 x 8), bf16, loadable by the pipeline
  vision25/ a two-block Qwen2.5-VL vision tower at real dimensions (1280 wide, 16 heads, SwiGLU
            3420 with biases, RMSNorm, merger to 3584), f32 keys visual.* (340 MB): block 0
            attends within 112-pixel windows, block 1 is a full-attention block
  full/     with --full (or --only-full): the exact dimensions of the released EchoVLM V1
            (11.68 B parameters, 1262 tensors, bf16 shards of ~2 GB, 23.4 GB)
  full-v2/  with --full-v2 (or --only-full-v2): the exact dimensions of Qwen2.5-VL-7B, i.e.
            EchoVLM V2 (8,292,166,656 parameters, 729 tensors, bf16 shards of ~2 GB, 16.6 GB),
            model_type qwen2_5_vl

The full-size checkpoints carry the real Qwen2 tokenizer and chat template and are written one
tensor at a time (each generated in blocks of rows straight into its shard), so they never hold
more than a part of one tensor in memory.

Weights are N(0, 1/fan_in) (norms 1, biases small) so activations keep unit scale. The same
files feed the Rust benchmarks (benches/) and tools/bench_side_by_side.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

try:
    from make_fixtures import CHAT_TEMPLATE  # noqa: E402
except ImportError:  # another transformers than tools/requirements.txt pins: the fixtures carry it
    CHAT_TEMPLATE = json.loads((ROOT / "fixtures/models/tiny-echovlm/tokenizer_config.json").read_text())[
        "chat_template"
    ]

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

# Qwen2.5-VL-7B's vision_config (EchoVLM V2); its text part is REAL without the MoE.
REAL_V2_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
V2_PARAMETERS = 8_292_166_656  # Qwen2.5-VL-7B (vision 676,550,144)

V1_PREPROCESSOR = ROOT / "fixtures/models/tiny-echovlm/preprocessor_config.json"
V2_PREPROCESSOR = ROOT / "fixtures/models/tiny-qwen25vl/preprocessor_config.json"


# A tensor to write: its key, its shape and how it is filled ("rand" with a fan-in, "ones",
# "zeros"). Lists of specs describe a checkpoint without holding it, so the full-size ones can be
# generated and written one tensor at a time.
Spec = tuple  # (name, shape, kind, fan_in)


def rnd(name: str, shape, fan_in: float) -> Spec:
    return (name, tuple(shape), "rand", fan_in)


def ones(name: str, n: int) -> Spec:
    return (name, (n,), "ones", 0.0)


def zeros(name: str, n: int) -> Spec:
    return (name, (n,), "zeros", 0.0)


class TorchRandom:
    """Normal values drawn by torch on `device` (on a GPU the full-size checkpoints take seconds
    to generate; the values differ from numpy's stream)."""

    def __init__(self, device: str, seed: int):
        self.device = device
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)


def rand(gen, shape, fan_in: float, dtype) -> torch.Tensor:
    if isinstance(gen, TorchRandom):
        a = torch.randn(tuple(shape), generator=gen.gen, device=gen.device, dtype=torch.float32)
        a *= 1.0 / math.sqrt(fan_in)
        return a.to(dtype).cpu()
    a = gen.standard_normal(size=shape, dtype=np.float32)
    a *= 1.0 / math.sqrt(fan_in)
    return torch.from_numpy(a).to(dtype)


def make(spec: Spec, gen, dtype) -> torch.Tensor:
    _, shape, kind, fan_in = spec
    if kind == "rand":
        return rand(gen, shape, fan_in, dtype)
    return (torch.ones if kind == "ones" else torch.zeros)(shape, dtype=dtype)


def materialize(specs: list, gen, dtype) -> dict:
    """Every tensor of `specs` in memory (the small checkpoints)."""
    return {s[0]: make(s, gen, dtype) for s in specs}


def numel(spec: Spec) -> int:
    return math.prod(spec[1])


def decoder_layer(prefix: str, d: dict, moe: bool = True) -> list:
    h, nh, nkv = d["hidden"], d["heads"], d["kv_heads"]
    hd = h // nh
    t = [
        ones(f"{prefix}.input_layernorm.weight", h),
        ones(f"{prefix}.post_attention_layernorm.weight", h),
        rnd(f"{prefix}.self_attn.q_proj.weight", (nh * hd, h), h),
        rnd(f"{prefix}.self_attn.q_proj.bias", (nh * hd,), 100),
        rnd(f"{prefix}.self_attn.k_proj.weight", (nkv * hd, h), h),
        rnd(f"{prefix}.self_attn.k_proj.bias", (nkv * hd,), 100),
        rnd(f"{prefix}.self_attn.v_proj.weight", (nkv * hd, h), h),
        rnd(f"{prefix}.self_attn.v_proj.bias", (nkv * hd,), 100),
        rnd(f"{prefix}.self_attn.o_proj.weight", (h, nh * hd), nh * hd),
    ]
    i = d["intermediate"]
    t += [
        rnd(f"{prefix}.mlp.gate_proj.weight", (i, h), h),
        rnd(f"{prefix}.mlp.up_proj.weight", (i, h), h),
        rnd(f"{prefix}.mlp.down_proj.weight", (h, i), i),
    ]
    if moe:
        e, w, s = d["experts"], d["expert_width"], d["shared_width"]
        t.append(rnd(f"{prefix}.moe.gate.weight", (e, h), h / 4.0))
        for k in range(e):
            t += [
                rnd(f"{prefix}.moe.experts.{k}.gate_proj.weight", (w, h), h),
                rnd(f"{prefix}.moe.experts.{k}.up_proj.weight", (w, h), h),
                rnd(f"{prefix}.moe.experts.{k}.down_proj.weight", (h, w), w),
            ]
        t += [
            rnd(f"{prefix}.moe.shared_expert.gate_proj.weight", (s, h), h),
            rnd(f"{prefix}.moe.shared_expert.up_proj.weight", (s, h), h),
            rnd(f"{prefix}.moe.shared_expert.down_proj.weight", (h, s), s),
            rnd(f"{prefix}.moe.shared_expert_gate.weight", (1, h), h),
            rnd(f"{prefix}.coefficient.weight", (2, h), h),
            zeros(f"{prefix}.coefficient.bias", 2),
        ]
    return t


def vision_attention(prefix: str, e: int) -> list:
    return [
        rnd(f"{prefix}.attn.qkv.weight", (3 * e, e), e),
        rnd(f"{prefix}.attn.qkv.bias", (3 * e,), 100),
        rnd(f"{prefix}.attn.proj.weight", (e, e), e),
        rnd(f"{prefix}.attn.proj.bias", (e,), 100),
    ]


def vision_block(prefix: str, e: int) -> list:
    """Qwen2-VL: LayerNorm, fc1/fc2 MLP (4·e, QuickGELU)."""
    t = []
    for n in ("norm1", "norm2"):
        t += [ones(f"{prefix}.{n}.weight", e), zeros(f"{prefix}.{n}.bias", e)]
    t += vision_attention(prefix, e)
    t += [
        rnd(f"{prefix}.mlp.fc1.weight", (4 * e, e), e),
        rnd(f"{prefix}.mlp.fc1.bias", (4 * e,), 100),
        rnd(f"{prefix}.mlp.fc2.weight", (e, 4 * e), 4 * e),
        rnd(f"{prefix}.mlp.fc2.bias", (e,), 100),
    ]
    return t


def vision25_block(prefix: str, e: int, inter: int) -> list:
    """Qwen2.5-VL: RMSNorm (weight only), SwiGLU MLP with biases."""
    t = [ones(f"{prefix}.norm1.weight", e), ones(f"{prefix}.norm2.weight", e)]
    t += vision_attention(prefix, e)
    t += [
        rnd(f"{prefix}.mlp.gate_proj.weight", (inter, e), e),
        rnd(f"{prefix}.mlp.gate_proj.bias", (inter,), 100),
        rnd(f"{prefix}.mlp.up_proj.weight", (inter, e), e),
        rnd(f"{prefix}.mlp.up_proj.bias", (inter,), 100),
        rnd(f"{prefix}.mlp.down_proj.weight", (e, inter), inter),
        rnd(f"{prefix}.mlp.down_proj.bias", (e,), 100),
    ]
    return t


def vision_tower(e: int, depth: int, out: int, inter: int | None = None) -> list:
    """`visual.*` of Qwen2-VL, or of Qwen2.5-VL when `inter` (the SwiGLU width) is given."""
    t = [rnd("visual.patch_embed.proj.weight", (e, 3, 2, 14, 14), 1176)]
    for b in range(depth):
        p = f"visual.blocks.{b}"
        t += vision_block(p, e) if inter is None else vision25_block(p, e, inter)
    m = 4 * e
    t.append(ones("visual.merger.ln_q.weight", e))
    if inter is None:
        t.append(zeros("visual.merger.ln_q.bias", e))
    t += [
        rnd("visual.merger.mlp.0.weight", (m, m), m),
        zeros("visual.merger.mlp.0.bias", m),
        rnd("visual.merger.mlp.2.weight", (out, m), m),
        zeros("visual.merger.mlp.2.bias", out),
    ]
    return t


def language_model(d: dict, moe: bool) -> list:
    """Embedding, decoder layers, final norm and untied LM head."""
    t = [rnd("model.embed_tokens.weight", (d["vocab"], d["hidden"]), 1.0)]
    for i in range(d["layers"]):
        t += decoder_layer(f"model.layers.{i}", d, moe)
    t.append(ones("model.norm.weight", d["hidden"]))
    t.append(rnd("lm_head.weight", (d["vocab"], d["hidden"]), d["hidden"]))
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


def config_v2(d: dict, vision: dict, dtype: str) -> dict:
    """A Qwen2.5-VL `config.json` (EchoVLM V2 is a stock `Qwen2_5_VLForConditionalGeneration`):
    the Qwen2-VL text part without MoE, the Qwen2.5-VL vision_config as the released 7B writes it."""
    c = config(d, False, dtype, max_pos=128000)
    for k in ("moe_intermediate_size", "shared_expert_intermediate_size", "num_experts",
              "num_experts_per_tok", "norm_topk_prob"):
        del c[k]
    c["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    c["model_type"] = "qwen2_5_vl"
    c["sliding_window"] = 32768
    c["max_window_layers"] = d["layers"]
    c["vision_config"] = {
        "depth": vision["depth"],
        "hidden_act": "silu",
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_heads": vision["num_heads"],
        "in_chans": 3,
        "out_hidden_size": d["hidden"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": vision["window_size"],
        "fullatt_block_indexes": vision["fullatt_block_indexes"],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    }
    return c


def model_files(out: Path, preprocessor: Path):
    """Tokenizer, template, processor and generation configs of the real Qwen2-VL (Qwen2.5-VL
    has the same tokenizer, chat template and special tokens)."""
    raw = gzip.decompress((ROOT / "fixtures/qwen2-tokenizer/tokenizer.json.gz").read_bytes())
    (out / "tokenizer.json").write_bytes(raw)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"})
        + "\n"
    )
    shutil.copy(preprocessor, out / "preprocessor_config.json")
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


SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16"}
CHUNK = 1 << 26  # values generated at a time (256 MB as f32)


def write_tensor(f, spec: Spec, gen, dtype) -> None:
    """Generates one tensor in row blocks of at most CHUNK values and appends its bytes to f."""
    name, shape, kind, fan_in = spec
    rows = shape[0]
    per_row = numel(spec) // rows
    step = max(1, CHUNK // max(per_row, 1))
    for r in range(0, rows, step):
        part = make((name, (min(step, rows - r), *shape[1:]), kind, fan_in), gen, dtype)
        raw = part.view(torch.int16) if dtype == torch.bfloat16 else part
        f.write(raw.contiguous().numpy().data)


def write_sharded(out: Path, specs: list, gen, dtype, shard_bytes: int = 2_000_000_000) -> int:
    """Writes `specs` as safetensors shards of ~shard_bytes plus model.safetensors.index.json,
    one tensor at a time: every shard's header is known from the shapes, so each tensor is
    generated, written and dropped in turn. Returns the parameter count."""
    esize = torch.tensor([], dtype=dtype).element_size()
    shards, cur, size = [], [], 0
    for s in specs:
        cur.append(s)
        size += numel(s) * esize
        if size >= shard_bytes:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, _, _ in shard:
            n = math.prod(shape) * esize
            header[name] = {"dtype": SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        path = out / fname
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for s in shard:
                write_tensor(f, s, gen, dtype)
        if path.stat().st_size != 8 + len(hb) + off:
            raise RuntimeError(f"{fname}: wrote {path.stat().st_size} bytes, expected {8 + len(hb) + off}")
        total += off
        print(f"  wrote {fname} ({off / 1e9:.2f} GB)", flush=True)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1)
    )
    return sum(numel(s) for s in specs)


def write_full_model(out: Path, label: str, specs: list, cfg: dict, preprocessor: Path, gen, expect: int | None = None):
    """A full-size bf16 checkpoint directory: shards, config.json and the tokenizer files."""
    out.mkdir(parents=True, exist_ok=True)
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise RuntimeError(f"{label}: duplicate tensor names")
    count = write_sharded(out, specs, gen, torch.bfloat16)
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    model_files(out, preprocessor)
    print(f"{label}: {count:,} parameters in {len(specs)} tensors")
    if expect is not None and count != expect:
        raise RuntimeError(f"{label}: {count:,} parameters, expected {expect:,}")


def write_full(out: Path, gen):
    """The released EchoVLM's exact shapes (V1: Qwen2-VL + dynamic MoE)."""
    specs = language_model(REAL, moe=True) + vision_tower(REAL["vision_embed"], REAL["vision_depth"], REAL["hidden"])
    write_full_model(out, "full", specs, config(REAL, False, "bfloat16"), V1_PREPROCESSOR, gen)


def write_full_v2(out: Path, gen):
    """Qwen2.5-VL-7B's exact shapes (EchoVLM V2: a stock Qwen2.5-VL, no MoE)."""
    v = REAL_V2_VISION
    specs = language_model(REAL, moe=False) + vision_tower(
        v["hidden_size"], v["depth"], REAL["hidden"], v["intermediate_size"]
    )
    cfg = config_v2(REAL, v, "bfloat16")
    write_full_model(out, "full-v2", specs, cfg, V2_PREPROCESSOR, gen, expect=V2_PARAMETERS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-ckpt"))
    ap.add_argument("--full", action="store_true", help="also write the 23 GB EchoVLM V1 checkpoint (full/)")
    ap.add_argument("--only-full", action="store_true", help="write only full/")
    ap.add_argument("--full-v2", action="store_true", help="also write the 16.6 GB EchoVLM V2 checkpoint (full-v2/)")
    ap.add_argument("--only-full-v2", action="store_true", help="write only full-v2/")
    ap.add_argument("--only-e2e", action="store_true", help="write only e2e/ (what tools/scaling.py runs)")
    ap.add_argument(
        "--gen-device", metavar="DEVICE", help="draw the random values with torch on DEVICE (e.g. cuda) instead of numpy"
    )
    args = ap.parse_args()
    out = Path(args.out)
    gen = TorchRandom(args.gen_device, 2026) if args.gen_device else np.random.default_rng(2026)
    if not (args.only_full or args.only_full_v2 or args.only_e2e):
        # a one-layer model with a 1024-token vocabulary: the decoder layer is all that costs
        (out / "layer").mkdir(parents=True, exist_ok=True)
        t = materialize(decoder_layer("model.layers.0", REAL), gen, torch.float32)
        t["model.embed_tokens.weight"] = rand(gen, (1024, REAL["hidden"]), 1.0, torch.float32)
        t["model.norm.weight"] = torch.ones(REAL["hidden"])
        t["lm_head.weight"] = rand(gen, (1024, REAL["hidden"]), REAL["hidden"], torch.float32)
        save_file(t, str(out / "layer/model.safetensors"))
        (out / "layer/config.json").write_text(
            json.dumps(config(dict(REAL, layers=1, vocab=1024), False, "float32"), indent=1)
        )
        # a one-block vision tower at real width
        (out / "vision").mkdir(parents=True, exist_ok=True)
        t = materialize(vision_tower(REAL["vision_embed"], 1, REAL["hidden"]), gen, torch.float32)
        save_file(t, str(out / "vision/model.safetensors"))
        (out / "vision/config.json").write_text(
            json.dumps(config(dict(REAL, layers=1, vision_depth=1, vocab=1024), False, "float32"), indent=1)
        )
    if not (args.only_full or args.only_full_v2):
        e2e = dict(
            hidden=896, heads=14, kv_heads=2, intermediate=4864, experts=4, expert_width=608,
            shared_width=2432, vision_embed=640, vision_heads=10, vision_depth=8, vocab=152064, layers=8,
        )
        ed = out / "e2e"
        ed.mkdir(parents=True, exist_ok=True)
        specs = [rnd("model.embed_tokens.weight", (e2e["vocab"], e2e["hidden"]), 1.0)]
        for i in range(e2e["layers"]):
            specs += decoder_layer(f"model.layers.{i}", e2e)
        specs.append(ones("model.norm.weight", e2e["hidden"]))
        specs += vision_tower(e2e["vision_embed"], e2e["vision_depth"], e2e["hidden"])
        t = materialize(specs, gen, torch.bfloat16)
        save_file(t, str(ed / "model.safetensors"), metadata={"format": "pt"})
        (ed / "config.json").write_text(json.dumps(config(e2e, True, "bfloat16"), indent=1))
        model_files(ed, V1_PREPROCESSOR)
        n = sum(v.numel() for v in t.values())
        print(f"e2e: {n / 1e6:.0f} M parameters")
    if not (args.only_full or args.only_full_v2 or args.only_e2e):
        # a two-block Qwen2.5-VL vision tower at real width: block 0 attends within 112-pixel
        # windows, block 1 (in fullatt_block_indexes) to the whole image
        vd = out / "vision25"
        vd.mkdir(parents=True, exist_ok=True)
        v = dict(REAL_V2_VISION, depth=2, fullatt_block_indexes=[1])
        t = materialize(
            vision_tower(v["hidden_size"], v["depth"], REAL["hidden"], v["intermediate_size"]), gen, torch.float32
        )
        save_file(t, str(vd / "model.safetensors"), metadata={"format": "pt"})
        (vd / "config.json").write_text(
            json.dumps(config_v2(dict(REAL, layers=1, vocab=1024), v, "float32"), indent=1) + "\n"
        )
        n = sum(x.numel() for x in t.values())
        print(f"vision25: {n / 1e6:.1f} M parameters (2 blocks and the merger)")
    if args.full or args.only_full:
        write_full(out / "full", gen)
    if args.full_v2 or args.only_full_v2:
        write_full_v2(out / "full-v2", gen)


if __name__ == "__main__":
    main()
