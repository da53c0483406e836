#!/usr/bin/env python3
"""Writes the tiny Qwen2.5-VL checkpoint and its golden outputs under fixtures/.

The reference is transformers 4.51.3's stock Qwen2_5_VLForConditionalGeneration (eager attention,
float32), in its own environment (tools/requirements-qwen25.txt). Run from the repository root:

    tools/setup.sh qwen25 && tools/.venv-qwen25/bin/python tools/make_qwen25_fixtures.py

Writes
    fixtures/models/tiny-qwen25vl/            checkpoint saved by save_pretrained (legacy visual.* /
                                             model.* keys, float32), tokenizer with Qwen2.5's 22
                                             added tokens, chat template, processor settings
    fixtures/goldens/tiny-qwen25vl-vision.*  vision tower: window index, cu_seqlens, merged output
    fixtures/goldens/tiny-qwen25vl.*         end to end: prompts, ids, M-RoPE positions, logits,
                                             greedy tokens; tokenizer samples

Images, the chat template and the tiny BPE come from tools/make_fixtures.py, so preprocessing is
the same as for the Qwen2-VL fixtures. Everything is seeded; rerunning rewrites identical files.
The arguments `vision`, `model` and `tokenizer` rewrite only those goldens (default: all).

Golden schema (json = meta, safetensors = tensors; pixel levels are u8 rows that decode to the
processor's float32 values as (level / 255 - CLIP_MEAN[c]) / CLIP_STD[c], c = (i % 1176) // 392):

tiny-qwen25vl-vision
    json: model_dir, vision_config, vit_merger_window_size, patch_dim, pixel_levels,
          cases.{odd_window,even_window,two_images,cine}: images | frames, [max_pixels], grid_thw,
              merged_thw, rows, out_rows, window_index, cu_window_seqlens_raw (as get_window_index
              returns it), cu_window_seqlens (after unique_consecutive), cu_seqlens
          full_attention: case, max_abs_out, max_abs_diff, ratio
    tensors: {case}.pixel_levels u8 [rows, 1176], {case}.out f32 [rows/4, out_hidden] (after the
          merger and the inverse permutation), {case}.window_index, {case}.cu_window_seqlens,
          {case}.cu_seqlens (i64), odd_window.hidden_states f32 [depth + 1, rows, hidden] (block
          inputs/outputs in window order), odd_window.out_full_attention
tiny-qwen25vl
    json: model_dir, steps, tokens_per_second, min_greedy_margin,
          text_{en,zh}: prompt, rendered, input_ids, greedy, first_step_top_logits, greedy_text,
              min_margin
          e2e.{odd_window,even_window,two_images,cine_fps2,cine_fps1}: images | frames + fps, prompt,
              rendered, input_ids, image_grid_thw | video_grid_thw + second_per_grid_ts, rope_delta,
              greedy, greedy_text, first_step_top_logits, min_margin
          rope.{text, e2e cases, cine_fps3_8_frames, padded_batch}: input_ids [B][S],
              attention_mask, [image_grid_thw], [video_grid_thw, second_per_grid_ts],
              position_ids [3][B][S], deltas [B]
          full_attention.{odd_window,even_window,cine_fps2}: max_abs_logit, max_abs_diff, ratio
          tokenizer: added_tokens [{id, content, special}], samples [{text, ids, tokens, decoded,
              decoded_skip_special}]
    tensors: text_{en,zh}.last_logits [V], text_{en,zh}.hidden_states [layers + 1, S, hidden],
          e2e.{case}.last_logits [V], e2e.{case}.position_ids i64 [3, S],
          e2e.{odd_window,even_window,cine_fps2}.last_logits_full_attention [V]
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (images, tiny BPE, chat template, golden writer)

FIX = mf.FIX
MODELS = mf.MODELS
GOLD = mf.GOLD
IMAGES = mf.IMAGES
NAME = "tiny-qwen25vl"
STEPS = 32

# Qwen2.5's added tokens in id order: Qwen2-VL's 14 special tokens, then 8 that are not special.
NON_SPECIAL = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
ADDED = mf.SPECIALS + NON_SPECIAL

SPEC = {
    "seed": 2501,
    "hidden": 32,
    "intermediate": 64,
    "layers": 2,
    "heads": 2,
    "kv_heads": 1,
    "mrope_section": [2, 3, 3],
    "max_pos": 512,
    "vision": {
        "depth": 4,
        "hidden_size": 32,
        "intermediate_size": 40,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # windows of 2 x 2 merged tokens (4 x 4 patches)
        "window_size": 2 * 2 * 14,
        "fullatt_block_indexes": [2],
        "tokens_per_second": 2,
    },
}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    """make_fixtures' byte-level BPE (Qwen2 normaliser, pre-tokeniser and decoder) with Qwen2.5's
    22 added tokens on top; the last 8 are not special, as in Qwen2.5."""
    tok = mf.build_small_tokenizer()
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in NON_SPECIAL])
    base = tok.get_vocab_size(with_added_tokens=False)
    assert [tok.token_to_id(s) for s in ADDED] == list(range(base, base + len(ADDED)))
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    cfg = mf.tokenizer_config(tok, with_template=True)
    added = cfg["added_tokens_decoder"]
    for s in NON_SPECIAL:
        added[str(tok.token_to_id(s))] = {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": False,
        }
    cfg["added_tokens_decoder"] = added
    cfg["model_max_length"] = 131072
    return dict(sorted(cfg.items()))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def make_config(vocab: int, ids: dict) -> Qwen2_5_VLConfig:
    s, v = SPEC, SPEC["vision"]
    cfg = Qwen2_5_VLConfig(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        hidden_act="silu",
        max_position_embeddings=s["max_pos"],
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        use_sliding_window=False,
        sliding_window=s["max_pos"],
        max_window_layers=s["layers"],
        attention_dropout=0.0,
        rope_scaling={"type": "mrope", "mrope_section": list(s["mrope_section"])},
        vision_config=dict(v, hidden_act="silu", in_channels=3, out_hidden_size=s["hidden"]),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        torch_dtype="float32",
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    return cfg


def generation_config(ids: dict) -> GenerationConfig:
    """Qwen2.5-VL-Instruct's shipped defaults (greedy-like sampling, repetition penalty 1.05)."""
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        do_sample=True,
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        repetition_penalty=1.05,
        temperature=0.1,
        top_k=1,
        top_p=0.001,
    )


def build_model(vocab: int, ids: dict) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(make_config(vocab, ids))
    mf.init_weights(model, SPEC["seed"])
    model.generation_config = generation_config(ids)
    model.eval()
    return model


def write_model_dir(out: Path, model, tok: Tokenizer):
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok), indent=2, ensure_ascii=False) + "\n"
    )
    # the processor settings exactly as transformers saves them
    ip = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    fast = AutoTokenizer.from_pretrained(str(out))
    with tempfile.TemporaryDirectory() as tmp:
        Qwen2_5_VLProcessor(image_processor=ip, tokenizer=fast).save_pretrained(tmp)
        pp = json.loads((Path(tmp) / "preprocessor_config.json").read_text())
    assert pp["processor_class"] == "Qwen2_5_VLProcessor", pp
    (out / "preprocessor_config.json").write_text(json.dumps(pp, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        "Random-weight stock Qwen2.5-VL test checkpoint (float32) written by "
        "tools/make_qwen25_fixtures.py for tests. The weights carry no medical knowledge.\n"
    )


def load_model(mdir: Path, reference) -> Qwen2_5_VLForConditionalGeneration:
    """The checkpoint as saved, loaded back; its weights must equal the in-memory model's."""
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(mdir), attn_implementation="eager", torch_dtype=torch.float32
    )
    m.eval()
    a, b = m.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert type(m.visual.blocks[0].attn).__name__ == "Qwen2_5_VLVisionAttention"
    assert type(m.model.layers[0].self_attn).__name__ == "Qwen2_5_VLAttention"
    # generate() would merge the shipped sampling defaults (repetition penalty 1.05, top-k 1, ...)
    # into the plain greedy settings of the goldens
    m.generation_config = GenerationConfig(
        bos_token_id=reference.config.bos_token_id, pad_token_id=reference.config.pad_token_id
    )
    return m


def load_processor(mdir: Path) -> Qwen2_5_VLProcessor:
    # the template lives in tokenizer_config.json; 4.51's processor reads only chat_template.json
    proc = AutoProcessor.from_pretrained(str(mdir), chat_template=mf.CHAT_TEMPLATE)
    assert proc.tokenizer.chat_template == mf.CHAT_TEMPLATE
    assert type(proc).__name__ == "Qwen2_5_VLProcessor", type(proc)
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessor", type(proc.image_processor)
    assert proc.chat_template == mf.CHAT_TEMPLATE
    return proc


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def cine_frames(names):
    return [mf.load_rgb(IMAGES / n) for n in names]


CINE = ["heart_cine_0.png", "heart_cine_1.png", "heart_cine_2.png", "heart_cine_2.png"]


def rel_gap(a: torch.Tensor, b: torch.Tensor):
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    return diff, scale


# --------------------------------------------------------------------------------------------
# Vision goldens
# --------------------------------------------------------------------------------------------


# max_pixels keeps the stored pixel rows few (the processor then downscales)
VISION_CASES = {
    # merged grid 3 x 5: the last window row and column are partly padding
    "odd_window": {"images": ["kidney_gray_256x200.jpg"], "max_pixels": 20 * 28 * 28},
    # merged grid 6 x 4, a multiple of the window: a whole extra window row and column of padding
    "even_window": {"images": ["liver_182x238.png"], "max_pixels": 30 * 28 * 28},
    # merged grids 4 x 5 and 2 x 2 in one call
    "two_images": {"images": ["breast_rgba_150x120.png", "liver_crop_64x48.png"]},
    # 4 frames (the third repeated) -> grid_t 2, merged 4 x 5 per temporal slice
    "cine": {"frames": CINE},
}


def vision_inputs(ip, case: dict):
    ip = copy.deepcopy(ip)
    if "max_pixels" in case:
        ip.max_pixels = case["max_pixels"]
        ip.size = {"shortest_edge": ip.min_pixels, "longest_edge": ip.max_pixels}
    if "frames" in case:
        out = ip(images=None, videos=[cine_frames(case["frames"])], return_tensors="pt")
        return out["pixel_values_videos"], out["video_grid_thw"]
    pil = [mf.load_rgb(IMAGES / n) for n in case["images"]]
    out = ip(images=pil, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def check_same_preprocessing(name: str, pv: torch.Tensor):
    """Images at default settings must give the same processor output as the Qwen2-VL goldens."""
    from safetensors.torch import load_file

    path = GOLD / "tiny-echovlm.safetensors"
    if not path.exists():
        return
    old = load_file(str(path))
    key = f"image.{name}.pixel_levels" if not name.startswith("video.") else f"{name}.pixel_levels"
    if key in old:
        assert torch.equal(old[key], mf.pixel_levels(pv)), key
        print(f"  {key}: identical to the Qwen2-VL fixtures")


def vision_goldens(model, processor) -> dict:
    vis = model.visual
    g = mf.Golden(f"{NAME}-vision")
    vc = model.config.vision_config
    g.meta["model_dir"] = f"fixtures/models/{NAME}"
    g.meta["vision_config"] = {
        k: getattr(vc, k)
        for k in [
            "depth",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "out_hidden_size",
            "patch_size",
            "spatial_merge_size",
            "temporal_patch_size",
            "window_size",
            "fullatt_block_indexes",
        ]
    }
    g.meta["vit_merger_window_size"] = vc.window_size // vc.spatial_merge_size // vc.patch_size
    g.meta["patch_dim"] = 3 * vc.temporal_patch_size * vc.patch_size**2
    g.meta["pixel_levels"] = (
        "u8 [rows, patch_dim], channel-major rows as the processor emits them; "
        "pixel_values = (level / 255 - CLIP_MEAN[c]) / CLIP_STD[c] with c = (i % patch_dim) / (patch_dim / 3)"
    )
    g.meta["cases"] = {}
    ip = processor.image_processor
    for case, spec in VISION_CASES.items():
        pv, thw = vision_inputs(ip, spec)
        if case == "cine":
            check_same_preprocessing("video.heart_cine", pv)
        with torch.no_grad():
            window_index, cu_raw = vis.get_window_index(thw)
            cu_window = torch.unique_consecutive(torch.tensor(cu_raw, dtype=torch.int64))
            cu = torch.nn.functional.pad(
                torch.repeat_interleave(thw[:, 1] * thw[:, 2], thw[:, 0]).cumsum(0), (1, 0), value=0
            )
            hidden = []
            hooks = [vis.blocks[0].register_forward_pre_hook(lambda m, a: hidden.append(a[0].clone()))]
            for blk in vis.blocks:
                hooks.append(blk.register_forward_hook(lambda m, a, o: hidden.append(o.clone())))
            out = vis(pv, grid_thw=thw)
            for h in hooks:
                h.remove()
        merged = [[int(t), int(h) // 2, int(w) // 2] for t, h, w in thw.tolist()]
        g.t(f"{case}.pixel_levels", mf.pixel_levels(pv))
        g.t(f"{case}.out", out)
        g.t(f"{case}.window_index", window_index)
        g.t(f"{case}.cu_window_seqlens", cu_window)
        g.t(f"{case}.cu_seqlens", cu)
        if case == "odd_window":
            g.t(f"{case}.hidden_states", torch.stack(hidden))
        meta = {k: v for k, v in spec.items()}
        meta.update(
            {
                "grid_thw": thw.tolist(),
                "merged_thw": merged,
                "rows": pv.shape[0],
                "out_rows": out.shape[0],
                "window_index": window_index.tolist(),
                "cu_window_seqlens_raw": list(map(int, cu_raw)),
                "cu_window_seqlens": cu_window.tolist(),
                "cu_seqlens": cu.tolist(),
            }
        )
        g.meta["cases"][case] = meta
        print(f"vision {case}: grid {thw.tolist()} windows {len(cu_window) - 1} raw {cu_raw}")

    # the padding quirk is really exercised: a repeated cumulative length that unique_consecutive drops
    ev = g.meta["cases"]["even_window"]
    assert len(ev["cu_window_seqlens_raw"]) > len(ev["cu_window_seqlens"]), ev["cu_window_seqlens_raw"]
    od = g.meta["cases"]["odd_window"]
    sizes = [b - a for a, b in zip(od["cu_window_seqlens"], od["cu_window_seqlens"][1:])]
    assert min(sizes) < max(sizes), sizes  # partly padded windows

    # every block with full attention gives clearly different numbers
    case = "odd_window"
    pv, thw = vision_inputs(ip, VISION_CASES[case])
    saved = vis.fullatt_block_indexes
    vis.fullatt_block_indexes = list(range(vc.depth))
    with torch.no_grad():
        full = vis(pv, grid_thw=thw)
    vis.fullatt_block_indexes = saved
    real = g.tensors[f"{case}.out"]
    diff, scale = rel_gap(real, full)
    print(f"vision {case}: max|out| {scale:.4f}, all-full-attention max abs diff {diff:.4f} ({diff / scale:.2e} of max|out|)")
    assert diff > 100 * 1e-4 * scale, (diff, scale)
    g.t(f"{case}.out_full_attention", full)
    g.meta["full_attention"] = {
        "case": case,
        "max_abs_out": scale,
        "max_abs_diff": diff,
        "ratio": diff / scale,
    }
    g.write()
    return g.meta


# --------------------------------------------------------------------------------------------
# Model goldens
# --------------------------------------------------------------------------------------------


def forward(model, enc: dict, **kw):
    # transformers keeps rope_deltas from the previous call and, without a cache position,
    # would silently use 1-D positions: reset it
    model.rope_deltas = None
    with torch.no_grad():
        return model(**enc, use_cache=False, **kw)


def rope_index(model, enc: dict):
    return model.get_rope_index(
        enc["input_ids"],
        enc.get("image_grid_thw"),
        enc.get("video_grid_thw"),
        enc.get("second_per_grid_ts"),
        enc["attention_mask"],
    )


def generate(model, enc: dict, ids: dict):
    """32 greedy tokens with the KV cache; checked against argmax decoding without a cache."""
    model.rope_deltas = None
    seqs, logits, margin = mf.generate(model, dict(enc), STEPS, ids)
    assert math.isfinite(margin) and margin > 0, margin
    full = dict(enc)
    tokens = []
    for _ in range(STEPS):
        nxt = int(forward(model, full).logits[0, -1].argmax())
        tokens.append(nxt)
        full["input_ids"] = torch.cat([full["input_ids"], torch.tensor([[nxt]])], dim=1)
        full["attention_mask"] = torch.cat([full["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
    assert tokens == seqs[0].tolist(), (tokens, seqs[0].tolist())
    model.rope_deltas = None
    return seqs, logits, margin


E2E_CASES = {
    # merged grid 7 x 9: windows partly padding. A lossless copy of the JPEG (as Pillow decodes
    # it, written by lossless_kidney()): JPEG decoders differ by a level here and there, which
    # would blur a 1e-4 logit comparison
    "odd_window": {"images": ["kidney_gray_256x200.png"], "prompt": "Describe this ultrasound image."},
    # merged grid 8 x 6: a multiple of the window
    "even_window": {"images": ["liver_182x238.png"], "prompt": "Findings?"},
    # merged grids 8 x 11 and 8 x 6
    "two_images": {"images": ["thyroid_300x220.png", "liver_182x238.png"], "prompt": "请给出超声报告。"},
    # the cine loop at the processor's default 2 fps: temporal step 2/2 * 2 = 2
    "cine_fps2": {"frames": CINE, "fps": 2.0, "prompt": "Describe the cine loop."},
    # at 1 fps: temporal step 2/1 * 2 = 4
    "cine_fps1": {"frames": CINE, "fps": 1.0, "prompt": "Describe the cine loop."},
}

# positions only: 8 frames at 3 fps, temporal steps floor(i * (2/3) * 2) in float32 = 0, 1, 2, 4
ROPE_ONLY = {
    "cine_fps3_8_frames": {
        "frames": CINE[:3] * 2 + CINE[:2],
        "fps": 3.0,
        "prompt": "Describe the cine loop.",
    }
}


def e2e_inputs(processor, case: dict):
    if "frames" in case:
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": case["prompt"]}]}]
        rendered = processor.apply_chat_template(msgs, add_generation_prompt=True)
        enc = processor(
            text=[rendered], videos=[cine_frames(case["frames"])], fps=case["fps"], return_tensors="pt"
        )
    else:
        pil = [mf.load_rgb(IMAGES / n) for n in case["images"]]
        rendered = processor.apply_chat_template(
            mf.image_messages(len(pil), case["prompt"]), add_generation_prompt=True
        )
        enc = processor(text=[rendered], images=pil, return_tensors="pt")
    return rendered, dict(enc)


def rope_meta(enc: dict, pos: torch.Tensor, delta: torch.Tensor) -> dict:
    out = {
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
    }
    if "image_grid_thw" in enc:
        out["image_grid_thw"] = enc["image_grid_thw"].tolist()
    if "video_grid_thw" in enc:
        out["video_grid_thw"] = enc["video_grid_thw"].tolist()
        out["second_per_grid_ts"] = [float(x) for x in enc["second_per_grid_ts"]]
    out["position_ids"] = pos.tolist()
    out["deltas"] = delta.flatten().tolist()
    return out


def lossless_kidney() -> None:
    """fixtures/images/kidney_gray_256x200.png: the JPEG fixture's pixels as Pillow decodes them."""
    from PIL import Image

    Image.open(IMAGES / "kidney_gray_256x200.jpg").save(IMAGES / "kidney_gray_256x200.png", optimize=False)


def model_goldens(model, processor, ids: dict):
    lossless_kidney()
    g = mf.Golden(NAME)
    g.meta["model_dir"] = f"fixtures/models/{NAME}"
    g.meta["steps"] = STEPS
    g.meta["tokens_per_second"] = model.config.vision_config.tokens_per_second
    margins = []
    rope = {}

    for lang, text in mf.TEXT_PROMPTS.items():
        key = f"text_{lang}"
        rendered, enc = mf.text_inputs(processor, text)
        enc = dict(enc)
        out = forward(model, enc, output_hidden_states=True)
        g.t(f"{key}.last_logits", out.logits[0, -1])
        g.t(f"{key}.hidden_states", torch.stack([h[0] for h in out.hidden_states]))
        seqs, logits, margin = generate(model, enc, ids)
        margins.append(margin)
        g.meta[key] = {
            "prompt": text,
            "rendered": rendered,
            "input_ids": enc["input_ids"][0].tolist(),
            "greedy": seqs[0].tolist(),
            "first_step_top_logits": mf.top_pairs(logits[0, 0]),
            "greedy_text": processor.tokenizer.decode(seqs[0], skip_special_tokens=True),
            "min_margin": margin,
        }
        if lang == "en":
            pos, delta = rope_index(model, enc)
            rope["text"] = rope_meta(enc, pos, delta)

    g.meta["e2e"] = {}
    for case, spec in E2E_CASES.items():
        rendered, enc = e2e_inputs(processor, spec)
        out = forward(model, enc)
        pos, delta = rope_index(model, enc)
        g.t(f"e2e.{case}.last_logits", out.logits[0, -1])
        g.t(f"e2e.{case}.position_ids", pos[:, 0])
        seqs, logits, margin = generate(model, enc, ids)
        margins.append(margin)
        # the first generated step's raw logits are the prompt's last logits
        assert (logits[0, 0] - out.logits[0, -1]).abs().max().item() < 1e-4
        meta = {k: v for k, v in spec.items()}
        meta.update(
            {
                "rendered": rendered,
                "input_ids": enc["input_ids"][0].tolist(),
                "rope_delta": int(delta[0, 0]),
                "greedy": seqs[0].tolist(),
                "greedy_text": processor.tokenizer.decode(seqs[0], skip_special_tokens=True),
                "first_step_top_logits": mf.top_pairs(logits[0, 0]),
                "min_margin": margin,
            }
        )
        if "image_grid_thw" in enc:
            meta["image_grid_thw"] = enc["image_grid_thw"].tolist()
        if "video_grid_thw" in enc:
            meta["video_grid_thw"] = enc["video_grid_thw"].tolist()
            meta["second_per_grid_ts"] = [float(x) for x in enc["second_per_grid_ts"]]
        g.meta["e2e"][case] = meta
        rope[case] = rope_meta(enc, pos, delta)
        vt = pos[0, 0][enc["input_ids"][0] == model.config.video_token_id].unique().tolist()
        print(f"e2e {case}: {enc['input_ids'].shape[1]} tokens, delta {int(delta[0, 0])}, margin {margin:.4f}"
              + (f", video t positions {vt}" if vt else ""))

    # the two frame rates give different temporal positions and different logits
    p2, p1 = g.tensors["e2e.cine_fps2.position_ids"], g.tensors["e2e.cine_fps1.position_ids"]
    assert not torch.equal(p2, p1)
    assert not torch.equal(g.tensors["e2e.cine_fps2.last_logits"], g.tensors["e2e.cine_fps1.last_logits"])

    for case, spec in ROPE_ONLY.items():
        _, enc = e2e_inputs(processor, spec)
        pos, delta = rope_index(model, enc)
        rope[case] = rope_meta(enc, pos, delta)
        vt = pos[0, 0][enc["input_ids"][0] == model.config.video_token_id].unique().tolist()
        print(f"rope {case}: grid {enc['video_grid_thw'].tolist()}, video t positions {vt}")
        assert vt == [x + vt[0] for x in [0, 1, 2, 4]], vt

    # a left-padded batch: two images / one image
    pil1 = [mf.load_rgb(IMAGES / "liver_182x238.png")]
    pil2 = [mf.load_rgb(IMAGES / "thyroid_300x220.png"), mf.load_rgb(IMAGES / "kidney_gray_256x200.jpg")]
    r1 = processor.apply_chat_template(mf.image_messages(1, "Findings?"), add_generation_prompt=True)
    r2 = processor.apply_chat_template(mf.image_messages(2, "Compare the two images."), add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    enc = dict(processor(text=[r2, r1], images=pil2 + pil1, return_tensors="pt", padding=True))
    pos, delta = rope_index(model, enc)
    rope["padded_batch"] = rope_meta(enc, pos, delta)
    assert all(d < 0 for d in rope["padded_batch"]["deltas"])
    g.meta["rope"] = rope

    # every vision block with full attention moves the logits far beyond the test tolerance
    vis = model.visual
    saved = vis.fullatt_block_indexes
    g.meta["full_attention"] = {}
    for case in ("odd_window", "even_window", "cine_fps2"):
        _, enc = e2e_inputs(processor, E2E_CASES[case])
        vis.fullatt_block_indexes = list(range(model.config.vision_config.depth))
        full = forward(model, enc).logits[0, -1]
        vis.fullatt_block_indexes = saved
        real = g.tensors[f"e2e.{case}.last_logits"]
        diff, scale = rel_gap(real, full)
        print(f"e2e {case}: max|logit| {scale:.4f}, all-full-attention max abs diff {diff:.4f} "
              f"({diff / scale:.2e} of max|logit|)")
        assert diff > 100 * 1e-4 * scale, (case, diff, scale)
        g.t(f"e2e.{case}.last_logits_full_attention", full)
        g.meta["full_attention"][case] = {"max_abs_logit": scale, "max_abs_diff": diff, "ratio": diff / scale}

    g.meta["min_greedy_margin"] = min(margins)
    return g


# --------------------------------------------------------------------------------------------
# Tokenizer goldens
# --------------------------------------------------------------------------------------------


TOKENIZER_SAMPLES = [
    "<tool_call>x</tool_call>",
    "<|fim_prefix|>a<|fim_suffix|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n    return 1<|fim_middle|>",
    "<|repo_name|>echovlm<|file_sep|>main.rs<|fim_pad|>",
    '<|im_start|>assistant\n<tool_call>\n{"name": "measure", "arguments": {"mm": 8}}\n</tool_call><|im_end|>',
    "<|vision_start|><|image_pad|><|vision_end|>超声所见<|endoftext|><tool_call>",
    "<tool_call ><tool_call><tool_call>",
]


def tokenizer_goldens(processor) -> dict:
    t = processor.tokenizer
    added = [
        {"id": t.convert_tokens_to_ids(s), "content": s, "special": s in mf.SPECIALS} for s in ADDED
    ]
    samples = []
    for s in TOKENIZER_SAMPLES:
        ids = t(s)["input_ids"]
        samples.append(
            {
                "text": s,
                "ids": ids,
                "tokens": t.convert_ids_to_tokens(ids),
                "decoded": t.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": t.decode(ids, skip_special_tokens=True),
            }
        )
    # the non-special added tokens survive skip_special_tokens, the special ones do not
    s0 = samples[0]
    assert s0["decoded_skip_special"] == "<tool_call>x</tool_call>", s0
    assert "<|endoftext|>" not in samples[5]["decoded_skip_special"]
    assert samples[5]["decoded_skip_special"].endswith("<tool_call>")
    return {"added_tokens": added, "samples": samples}


# --------------------------------------------------------------------------------------------


def main():
    only = sys.argv[1:] or ["vision", "model", "tokenizer"]
    for d in (MODELS, GOLD):
        d.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    ids = {s: tok.token_to_id(s) for s in ADDED}
    base = tok.get_vocab_size(with_added_tokens=False)
    vocab = int(math.ceil((base + len(ADDED)) / 64.0) * 64)
    print(f"tokenizer: {base} BPE tokens + {len(ADDED)} added tokens; config vocab {vocab}")

    mdir = MODELS / NAME
    ref = build_model(vocab, ids)
    write_model_dir(mdir, ref, tok)
    model = load_model(mdir, ref)
    processor = load_processor(mdir)

    if "vision" in only:
        vision_goldens(model, processor)
    if "model" in only or "tokenizer" in only:
        g = model_goldens(model, processor, ids) if "model" in only else None
        if g is None:
            g = mf.Golden(NAME)
            old = GOLD / f"{NAME}.json"
            if old.exists():
                from safetensors.torch import load_file

                g.meta = json.loads(old.read_text())
                g.tensors = load_file(str(GOLD / f"{NAME}.safetensors"))
        if "tokenizer" in only:
            g.meta["tokenizer"] = tokenizer_goldens(processor)
        g.write()
        if "min_greedy_margin" in g.meta:
            print(f"{NAME}: min greedy margin {g.meta['min_greedy_margin']:.4f}")

    new = [p for p in list(mdir.rglob("*")) + list(GOLD.glob(f"{NAME}*")) if p.is_file()]
    total = sum(p.stat().st_size for p in new)
    print(f"{NAME} files: {total / 1e6:.3f} MB")


if __name__ == "__main__":
    sys.exit(main())
