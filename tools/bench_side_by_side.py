#!/usr/bin/env python3
"""EchoVLM-rs next to PyTorch on the same shapes and the same weights, in one run.

  tools/.venv/bin/python tools/make_bench_checkpoint.py          # once: writes target/bench-ckpt
  tools/.venv/bin/python tools/bench_side_by_side.py [--skip-rust] [--threads N] [--quick] [--only GROUPS]
                                                      [--torch-dtypes f32[,bf16]]

1. runs the Rust criterion benchmarks (`cargo bench --bench layers --bench e2e`) unless --skip-rust, then
   reads their medians from target/criterion;
2. loads the same safetensors into PyTorch (transformers 4.47 Qwen2-VL modules with EchoVLM's
   dynamic MoE layer, eager mode, sdpa attention) and times the same operations in f32 and bf16
   with the same thread count; the Qwen2.5-VL vision blocks run on transformers 4.51.3's
   `Qwen2_5_VLVisionBlock` (in this interpreter when it has transformers 4.51.3, else in a
   subprocess of tools/.venv-qwen25, which `tools/setup.sh qwen25` creates);
3. measures memory bandwidth with a STREAM-like copy and derives the decode bound: bytes of
   weights (and KV cache) a decode step must read, divided by the bandwidth; the Rust benchmarks
   also copy 512 MiB right after each one-step decode (decoder_layer/copy_*), and each step's
   share of its bound is printed against that copy too, since this bandwidth moves from minute
   to minute on a shared machine;
4. prints every Rust/PyTorch ratio and the fraction of the decode bound reached.

--only takes a comma-separated list of benchmark groups (decoder_layer, vision_block,
vision25_block, moe_block, e2e) and runs and prints just those. --torch-dtypes f32 leaves out
PyTorch's bf16 timings (minutes on a CPU without native bf16 arithmetic; the ratios are taken
against f32 anyway).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, warmup: int, reps: int, min_time: float = 0.0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stream_copy_gbs(torch, size_bytes: int = 2 << 30) -> float:
    """Bytes read + written per second by a large copy (the STREAM 'copy' kernel)."""
    n = size_bytes // 4
    a = torch.ones(n, dtype=torch.float32)
    b = torch.empty_like(a)
    t = median_time(lambda: b.copy_(a), 1, 5)
    return 2 * size_bytes / t / 1e9


# bytes of each buffer of the Rust benchmarks' STREAM-like copy (benches/layers.rs, COPY_BYTES)
COPY_BYTES = 512 << 20


def rust_medians(crit: Path) -> dict:
    out = {}
    for bench in crit.glob("*/*/new/benchmark.json"):
        full_id = json.loads(bench.read_text())["full_id"]
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[full_id] = est["median"]["point_estimate"] / 1e9
    return out


def load_layer(torch, ckpt: Path, dtype):
    from safetensors.torch import load_file
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLRotaryEmbedding

    sys.path.insert(0, str(ROOT / "tools"))
    from make_fixtures import add_dynamic_moe  # noqa: E402

    cfg_json = json.loads((ckpt / "config.json").read_text())
    cfg = Qwen2VLConfig(**{k: v for k, v in cfg_json.items() if k not in ("architectures", "vision_config")})
    cfg._attn_implementation = "sdpa"

    class Holder(torch.nn.Module):
        pass

    holder = Holder()
    holder.config = cfg
    holder.model = Holder()
    holder.model.layers = torch.nn.ModuleList([Qwen2VLDecoderLayer(cfg, 0)])
    add_dynamic_moe(
        holder,
        {
            "num_experts": cfg_json["num_experts"],
            "num_experts_per_tok": 2,
            "norm_topk_prob": False,
            "moe_intermediate_size": cfg_json["moe_intermediate_size"],
            "shared_expert_intermediate_size": cfg_json["shared_expert_intermediate_size"],
        },
    )
    layer = holder.model.layers[0]
    sd = load_file(str(ckpt / "model.safetensors"))
    sd = {k[len("model.layers.0.") :]: v for k, v in sd.items() if k.startswith("model.layers.0.")}
    layer.load_state_dict(sd, strict=True)
    layer = layer.to(dtype).eval()
    rope = Qwen2VLRotaryEmbedding(config=cfg)
    return layer, rope, cfg


def torch_layer_times(torch, ckpt: Path, dtype, quick: bool) -> dict:
    from transformers.cache_utils import DynamicCache

    layer, rope, cfg = load_layer(torch, ckpt, dtype)
    h = cfg.hidden_size
    kvh = cfg.num_key_value_heads
    hd = h // cfg.num_attention_heads
    res = {}
    with torch.no_grad():
        for tokens in (256, 1024):
            x = torch.randn(1, tokens, h, dtype=dtype)
            pos = torch.arange(tokens).view(1, 1, -1).expand(3, 1, -1)
            pe = rope(x, pos)
            mask = torch.full((tokens, tokens), float("-inf")).triu(1)[None, None].to(dtype)
            f = lambda: layer(x, attention_mask=mask, position_ids=pos, position_embeddings=pe)  # noqa: E731
            res[f"prefill_{tokens}"] = median_time(f, 1, 2 if quick else 3)
        for ctx in (1024, 4096):
            x = torch.randn(1, 1, h, dtype=dtype)
            pos = torch.full((3, 1, 1), ctx)
            pe = rope(x, pos)
            k = torch.randn(1, kvh, ctx, hd, dtype=dtype)
            v = torch.randn(1, kvh, ctx, hd, dtype=dtype)

            def step():
                cache = DynamicCache()
                cache.update(k, v, 0)
                layer(x, position_ids=pos, past_key_value=cache, use_cache=True, position_embeddings=pe,
                      cache_position=torch.tensor([ctx]))

            res[f"decode_kv{ctx // 1024}k"] = median_time(step, 2, 5 if quick else 10)
    return res


def torch_vision_times(torch, ckpt: Path, dtype, quick: bool) -> dict:
    from safetensors.torch import load_file
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionBlock, VisionRotaryEmbedding

    cfg = Qwen2VLVisionConfig(embed_dim=1280, num_heads=16, depth=1, mlp_ratio=4, hidden_act="quick_gelu")
    block = Qwen2VLVisionBlock(cfg, attn_implementation="sdpa")
    sd = load_file(str(ckpt / "model.safetensors"))
    block.load_state_dict({k[len("visual.blocks.0.") :]: v for k, v in sd.items() if k.startswith("visual.blocks.0.")})
    block = block.to(dtype).eval()
    rot = VisionRotaryEmbedding(40)
    res = {}
    with torch.no_grad():
        for side in (32, 64):
            n = side * side
            x = torch.randn(n, 1280, dtype=dtype)
            hpos = torch.arange(side).unsqueeze(1).expand(-1, side).reshape(side // 2, 2, side // 2, 2).permute(0, 2, 1, 3).flatten()
            wpos = torch.arange(side).unsqueeze(0).expand(side, -1).reshape(side // 2, 2, side // 2, 2).permute(0, 2, 1, 3).flatten()
            table = rot(side)
            emb = table[torch.stack([hpos, wpos], -1)].flatten(1)
            cu = torch.tensor([0, n], dtype=torch.int32)
            res[f"patches_{n}"] = median_time(lambda: block(x, cu_seqlens=cu, rotary_pos_emb=emb), 1, 2 if quick else 3)
    return res


QWEN25_TRANSFORMERS = "4.51.3"
GROUPS = ("decoder_layer", "vision_block", "vision25_block", "moe_block", "e2e")


def load_vision25(torch, ckpt: Path, dtype):
    """The two-block Qwen2.5-VL tower of target/bench-ckpt/vision25 in transformers' own module."""
    from safetensors.torch import load_file
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vc = json.loads((ckpt / "config.json").read_text())["vision_config"]
    cfg = Qwen2_5_VLVisionConfig(**{k: v for k, v in vc.items() if k not in ("in_chans", "spatial_patch_size")})
    cfg._attn_implementation = "sdpa"
    tower = Qwen2_5_VisionTransformerPretrainedModel(cfg)
    sd = load_file(str(ckpt / "model.safetensors"))
    tower.load_state_dict({k[len("visual.") :]: v for k, v in sd.items()}, strict=True)
    return tower.to(dtype).eval()


def windows_batched(torch, block, x, cos, sin, window: int):
    """`block` with its attention run per window as one batch of equal windows and no mask: what
    flash-attention's varlen kernel computes on a GPU (the CPU sdpa path of transformers instead
    masks a dense N x N attention)."""
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    attn = block.attn
    n, e = x.shape
    heads = attn.num_heads
    h = block.norm1(x)
    q, k, v = attn.qkv(h).reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    # [n, heads, hd] -> [windows, heads, window, hd]
    split = lambda t: t.reshape(n // window, window, heads, -1).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    o = o.transpose(1, 2).reshape(n, e)
    x = x + attn.proj(o)
    return x + block.mlp(block.norm2(x))


def torch_vision25_times(torch, ckpt: Path, dtype, quick: bool) -> dict:
    """Block 0 (windowed: cu_seqlens = the 112-pixel windows) and block 1 (full attention:
    cu_seqlens = the whole image) of the Qwen2.5-VL tower on 32x32 and 64x64 patch grids, with
    the inputs, rotary angles and window index the tower itself builds."""
    tower = load_vision25(torch, ckpt, dtype)
    res = {}
    with torch.no_grad():
        for side in (32, 64):
            n = side * side
            grid = torch.tensor([[1, side, side]])
            unit = tower.spatial_merge_unit
            rot = tower.rot_pos_emb(grid)
            window_index, cu_window = tower.get_window_index(grid)
            cu_window = torch.unique_consecutive(torch.tensor(cu_window, dtype=torch.int32))
            rot = rot.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
            emb = torch.cat((rot, rot), dim=-1)
            pe = (emb.cos(), emb.sin())
            cu_full = torch.tensor([0, n], dtype=torch.int32)
            x = torch.randn(n, tower.config.hidden_size, dtype=dtype)
            lens = (cu_window[1:] - cu_window[:-1]).unique()
            reps = 2 if quick else 3
            res[f"window_{n}"] = median_time(lambda: tower.blocks[0](x, cu_seqlens=cu_window, position_embeddings=pe), 1, reps)
            res[f"full_{n}"] = median_time(lambda: tower.blocks[1](x, cu_seqlens=cu_full, position_embeddings=pe), 1, reps)
            if len(lens) == 1:
                w = int(lens[0])
                res[f"window_batched_{n}"] = median_time(lambda: windows_batched(torch, tower.blocks[0], x, *pe, w), 1, reps)
                # the batched form computes what the block computes
                ref = tower.blocks[0](x, cu_seqlens=cu_window, position_embeddings=pe)
                got = windows_batched(torch, tower.blocks[0], x, *pe, w)
                res[f"window_batched_{n}_max_abs_diff"] = float((ref.float() - got.float()).abs().max())
            res[f"windows_{n}"] = len(cu_window) - 1
    return res


def vision25_worker(args) -> None:
    """Entry point of the tools/.venv-qwen25 subprocess: times the Qwen2.5-VL blocks, writes JSON."""
    import torch

    torch.set_num_threads(args.threads)
    res = {dt: torch_vision25_times(torch, Path(args.ckpt) / "vision25", d, args.quick)
           for dt, d in torch_dtypes(torch, args)}
    Path(args.vision25_worker).write_text(json.dumps(res, indent=1))


def torch_vision25(args) -> dict:
    """Qwen2.5-VL block times from transformers 4.51.3: here if this interpreter has it, else
    from tools/.venv-qwen25."""
    try:
        import transformers

        here = transformers.__version__ == QWEN25_TRANSFORMERS
    except ImportError:
        here = False
    out = ROOT / "target/bench_vision25_torch.json"
    if here:
        cmd = [sys.executable]
    else:
        py = ROOT / "tools/.venv-qwen25/bin/python"
        if not py.exists():
            sys.exit(f"the Qwen2.5-VL rows need transformers {QWEN25_TRANSFORMERS}: run `tools/setup.sh qwen25`")
        cmd = [str(py)]
        print(f"(Qwen2.5-VL blocks: transformers {QWEN25_TRANSFORMERS} in {py})", flush=True)
    cmd += [str(Path(__file__).resolve()), "--vision25-worker", str(out), "--ckpt", args.ckpt,
            "--threads", str(args.threads), "--torch-dtypes", args.torch_dtypes] + (["--quick"] if args.quick else [])
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def torch_dtypes(torch, args) -> list:
    """The PyTorch dtypes timed: (name, dtype) for each of --torch-dtypes."""
    known = {"f32": torch.float32, "bf16": torch.bfloat16}
    names = [n for n in args.torch_dtypes.split(",") if n]
    if "f32" not in names or any(n not in known for n in names):
        sys.exit(f"--torch-dtypes: f32 and optionally bf16, not {args.torch_dtypes!r}")
    return [(n, known[n]) for n in names]


def ms(t: dict, dt: str, key: str) -> str:
    """A PyTorch time in milliseconds for the table, or '-' when that dtype was not timed."""
    v = t.get(dt, {}).get(key)
    return f"{v * 1e3:>9.1f}ms" if v else f"{'-':>11}"


def layer_bytes(cfg: dict, bytes_per_weight: float, ctx: int) -> float:
    """Bytes one decode step must read: the active weights and the cached keys and values."""
    h, nh, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // nh
    attn = h * nh * hd * 2 + h * kv * hd * 2
    dense = 3 * h * cfg["intermediate_size"]
    experts = 2 * 3 * h * cfg["moe_intermediate_size"]
    shared = 3 * h * cfg["shared_expert_intermediate_size"]
    small = h * (cfg["num_experts"] + 1 + 2)
    weights = (attn + dense + experts + shared + small) * bytes_per_weight
    cache = 2 * kv * hd * ctx * 4
    return weights + cache


def print_vision25(t: dict, rust: dict) -> None:
    """The Qwen2.5-VL rows: windowed and full-attention block, PyTorch and Rust, and what the
    windows save in each."""
    print("\nQwen2.5-VL vision blocks (1280 wide, 16 heads, SwiGLU 3420): block 0 attends within 112-pixel")
    print("windows (8x8 = 64 patches), block 1 to the whole image; time per call, Rust speed-up over torch f32:")
    print(f"{'operation':<34}{'torch f32':>11}{'torch bf16':>11}{'f32 batched':>13}   rust")
    for n in (1024, 4096):
        for kind in ("window", "full"):
            tf = t["f32"][f"{kind}_{n}"]
            wb = t["f32"].get(f"window_batched_{n}") if kind == "window" else None
            cells = []
            for fmt in ("portable", "f32"):
                r = rust.get(f"vision25_block/{kind}_{n}/{fmt}")
                if r:
                    cells.append(f"{fmt}: {r * 1e3:.1f} ms x{tf / r:.2f}")
            label = f"vision25_block/{kind}_{n}"
            batched = f"{wb * 1e3:>11.1f}ms" if wb else f"{'':>13}"
            print(f"{label:<34}{tf * 1e3:>9.1f}ms{ms(t, 'bf16', f'{kind}_{n}')}{batched}   " + "; ".join(cells))
    print("window / full attention block time (below 1: the windows are cheaper):")
    for n in (1024, 4096):
        parts = [f"torch f32 {t['f32'][f'window_{n}'] / t['f32'][f'full_{n}']:.2f}"]
        if "bf16" in t:
            parts.append(f"torch bf16 {t['bf16'][f'window_{n}'] / t['bf16'][f'full_{n}']:.2f}")
        if f"window_batched_{n}" in t["f32"]:
            parts.append(f"torch f32 batched windows {t['f32'][f'window_batched_{n}'] / t['f32'][f'full_{n}']:.2f}")
        for fmt in ("portable", "f32"):
            w, f = rust.get(f"vision25_block/window_{n}/{fmt}"), rust.get(f"vision25_block/full_{n}/{fmt}")
            if w and f:
                parts.append(f"rust {fmt} {w / f:.2f}")
        print(f"  {n} patches ({t['f32'][f'windows_{n}']} windows): " + "; ".join(parts))
    diffs = [f"{t[dt][k]:.1e}" for dt in t for k in t[dt] if k.endswith("max_abs_diff")]
    if diffs:
        print(f"  (batched windows against the block's own cu_seqlens path, max abs diff: {', '.join(diffs)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(ROOT / "target/bench-ckpt"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-rust", action="store_true", help="reuse the last criterion results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--torch-dtypes", default="f32,bf16", help="PyTorch dtypes to time: f32[,bf16]")
    ap.add_argument("--vision25-worker", metavar="OUT_JSON", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vision25_worker:
        vision25_worker(args)
        return
    ckpt = Path(args.ckpt)
    only = [g for g in args.only.split(",") if g]
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        ap.error(f"unknown groups {unknown}; known: {', '.join(GROUPS)}")

    if not args.skip_rust:
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), ECHOVLM_BENCH_DIR=str(ckpt))
        cmd = ["cargo", "bench", "--bench", "layers", "--bench", "e2e"]
        if set(only) != set(GROUPS):
            cmd += ["--", "^(" + "|".join(only) + ")/"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    rust = rust_medians(target / "criterion")

    # transformers 4.51.3 in its own process first, so the two PyTorch runs do not overlap
    t_v25 = torch_vision25(args) if "vision25_block" in only else None

    import torch

    torch.set_num_threads(args.threads)
    bw = stream_copy_gbs(torch)
    print(f"\nthreads: {args.threads}; STREAM-like copy bandwidth: {bw:.1f} GB/s (read + write)\n")
    dtypes = torch_dtypes(torch, args)
    t_layer = {dt: torch_layer_times(torch, ckpt / "layer", d, args.quick) for dt, d in dtypes} if "decoder_layer" in only else None
    t_vis = {dt: torch_vision_times(torch, ckpt / "vision", d, args.quick) for dt, d in dtypes} if "vision_block" in only else None
    cfg = json.loads((ckpt / "layer/config.json").read_text())

    bpw = {"portable": 4.0, "f32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 64, "int4": 0.5 + 2.0 / 32}
    rows, bounds = [], []
    if t_layer or t_vis:
        print(f"{'operation':<34}{'torch f32':>11}{'torch bf16':>11}   rust (format: time, speed-up over torch f32)")
    if t_layer:
        for case in ("prefill_256", "prefill_1024", "decode_kv1k", "decode_kv4k"):
            tf, tb = t_layer["f32"][case], t_layer.get("bf16", {}).get(case)
            cells = []
            for fmt in ("portable", "f32", "bf16", "int8", "int4"):
                r = rust.get(f"decoder_layer/{case}/{fmt}")
                if r:
                    cells.append(f"{fmt}: {r * 1e3:.1f} ms x{tf / r:.2f}")
                    rows.append({"op": f"decoder_layer/{case}", "format": fmt, "rust_s": r, "torch_f32_s": tf, "torch_bf16_s": tb})
            print(f"decoder_layer/{case:<20}{tf * 1e3:>9.1f}ms{ms(t_layer, 'bf16', case)}   " + "; ".join(cells))
    if t_vis:
        for case in ("patches_1024", "patches_4096"):
            tf = t_vis["f32"][case]
            cells = []
            for fmt in ("portable", "f32", "bf16"):
                r = rust.get(f"vision_block/{case}/{fmt}")
                if r:
                    cells.append(f"{fmt}: {r * 1e3:.1f} ms x{tf / r:.2f}")
            print(f"vision_block/{case:<21}{tf * 1e3:>9.1f}ms{ms(t_vis, 'bf16', case)}   " + "; ".join(cells))
    if t_v25:
        print_vision25(t_v25, rust)

    if "decoder_layer" in only:
        print("\ndecode bound (bytes read per step / copy bandwidth) and the fraction reached; 'here': against")
        print(f"the copy measured right after that step (decoder_layer/copy_*), 'torch': against the {bw:.1f} GB/s above:")
        for ctx, case in ((1024, "decode_kv1k"), (4096, "decode_kv4k")):
            for fmt in ("f32", "bf16", "int8", "int4"):
                r = rust.get(f"decoder_layer/{case}/{fmt}")
                if not r:
                    continue
                need = layer_bytes(cfg, bpw[fmt], ctx)
                bound = need / (bw * 1e9)
                c = rust.get(f"decoder_layer/copy_kv{ctx // 1024}k/{fmt}")
                here = ""
                if c:
                    bw_here = 2 * COPY_BYTES / c / 1e9
                    here = f"copy here {bw_here:5.1f} GB/s: {need / (bw_here * 1e9) / r * 100:5.1f}% (here), "
                    bounds.append({"op": f"decoder_layer/{case}", "format": fmt, "copy_here_gbs": bw_here,
                                 "bound_share_here": need / (bw_here * 1e9) / r, "bound_share_torch_copy": bound / r})
                print(f"  {case} {fmt:<5} {need / 1e6:8.1f} MB  rust {r * 1e3:6.1f} ms  {here}"
                      f"{bound / r * 100:5.1f}% (torch), {1 / r:6.1f} tokens/s")
    if "moe_block" in only:
        print("\nMoE block, sparse dispatch against running all experts (routed experts alone, then with")
        print("the always-on shared expert, which costs as much as all four routed experts):")
        for tokens in (1, 256):
            for fmt in ("f32", "int8"):
                for label, sk, ak in (("routed", "routed_sparse", "routed_all"), ("block", "sparse", "all_experts")):
                    s = rust.get(f"moe_block/{sk}_{tokens}/{fmt}")
                    a = rust.get(f"moe_block/{ak}_{tokens}/{fmt}")
                    if s and a:
                        print(f"  {label:<6} {tokens:>4} tokens {fmt:<5} sparse {s * 1e3:7.2f} ms  all {a * 1e3:7.2f} ms  ratio {s / a:.2f}")
    if "e2e" in only:
        print("\nend to end on the benchmark checkpoint (target/bench-ckpt/e2e, Rust only):")
        for fmt in ("f32", "bf16", "int8", "int4"):
            v = rust.get(f"e2e/vision_encode/{fmt}")
            p = rust.get(f"e2e/prefill/{fmt}")
            d = rust.get(f"e2e/decode_step/{fmt}")
            if v and p and d:
                print(f"  {fmt:<5} image encode {v * 1e3:7.1f} ms  prefill {p * 1e3:7.1f} ms  decode {1 / d:6.1f} tokens/s")
    (ROOT / "target/bench_side_by_side.json").write_text(json.dumps({"bandwidth_gbs": bw, "rows": rows, "bounds": bounds, "torch_layer": t_layer, "torch_vision": t_vis, "torch_vision25": t_v25, "rust": rust}, indent=1))


if __name__ == "__main__":
    main()
