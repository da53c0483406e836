#!/usr/bin/env python3
"""Writes the training goldens of the tiny EchoVLM checkpoint: losses, gradients and an AdamW
trajectory computed by the transformers 4.47 reference (the model of tools/make_fixtures.py).

Run from the repository root:

    tools/.venv/bin/python tools/make_train_goldens.py

It reads fixtures/models/tiny-echovlm (float32) and writes
fixtures/goldens/train-tiny-echovlm.safetensors (float32 / int64 tensors) and
fixtures/goldens/train-tiny-echovlm.json (settings, scalar losses, parameter lists).
Everything is seeded and runs on the CPU with deterministic algorithms; rerunning rewrites
identical files.

Two inputs ("cases"), each a batch of 2 chat conversations right-padded with <|endoftext|>:
  text   user question + assistant answer, no image
  image  one image per conversation (two sizes) + assistant answer
Labels are -100 except the assistant spans: from just after "<|im_start|>assistant\\n" up to and
including "<|im_end|>\\n".

Losses (per case and trainable set):
  ce     shifted causal-LM cross-entropy, mean over the labelled positions
  aux    transformers' load_balancing_loss_func over the router logits of all layers
         (num_experts 4, top_k 2, with the attention mask)
  total  ce + router_aux_loss_coef * aux  (0.001, from config.json)

Trainable sets ("everything else frozen"):
  moe    parameters whose name contains "moe.", "coefficient." or "merger.mlp"
  lora   LoRA (r 4, alpha 8, no dropout) on every layer's self_attn.{q,k,v,o}_proj and dense
         mlp.{gate,up,down}_proj, plus the "moe." and "coefficient." parameters

Keys of the safetensors file:
  {case}.input_ids / .attention_mask / .labels      [B, S] int64
  {case}.position_ids                               [3, B, S] int64 (get_rope_index)
  image.pixel_values [N, 1176] f32, image.image_grid_thw [n, 3] int64
  {case}.{set}.ce / .aux / .total                   [1]
  {case}.{set}.grad.{parameter}                     gradient of total (zeros where unused)
  lora_init.{module}.lora_A.weight [r, in], lora_init.{module}.lora_B.weight [out, r]
  adamw.loss / .lr / .grad_norm [5]; adamw.step5.{parameter}
  adamw_accum.loss / .lr / .grad_norm [5]; adamw_accum.step5.{parameter}
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoProcessor, get_cosine_schedule_with_warmup
from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func
from transformers.models.qwen2_vl import modeling_qwen2_vl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets 2 threads and deterministic algorithms)

ROOT = mf.ROOT
MODEL_DIR = mf.MODELS / "tiny-echovlm"
NAME = "train-tiny-echovlm"
GOLDEN = mf.GOLD / f"{NAME}.safetensors"

LORA_R = 4
LORA_ALPHA = 8
LORA_SEED = 4321
LORA_A_STD = 0.1
LORA_B_STD = 0.02
LORA_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

ADAMW = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
SCHEDULE = {"name": "transformers.get_cosine_schedule_with_warmup", "num_warmup_steps": 2, "num_training_steps": 5}
MAX_GRAD_NORM = 1.0
STEPS = 5

TEXT_CONVERSATIONS = [
    ("Describe the ultrasound image.", "The liver is normal in size."),
    ("Write the findings and the impression.",
     "Both kidneys are normal in size; no hydronephrosis or calculi are seen. Impression: normal kidneys."),
]
IMAGE_CONVERSATIONS = [
    ("liver_crop_64x48.png", "Describe the ultrasound image.", "The liver is normal in size with a smooth capsule."),
    ("heart_cine_0.png", "Findings?", "Left ventricular ejection fraction is preserved. No pericardial effusion."),
]


# --------------------------------------------------------------------------------------------
# Loading a checkpoint directory into the reference model
# --------------------------------------------------------------------------------------------


def read_config(model_dir: Path) -> dict:
    """config.json flattened: text fields at the top (flat form) or under text_config."""
    cfg = json.loads((model_dir / "config.json").read_text())
    flat = {k: v for k, v in cfg.items() if k != "text_config"}
    flat.update(cfg.get("text_config", {}))
    if "rope_parameters" in flat:
        rp = flat.pop("rope_parameters")
        flat.setdefault("rope_theta", rp.get("rope_theta"))
        flat["rope_scaling"] = rp
    return flat


def special_ids(model_dir: Path) -> dict:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in mf.SPECIALS}
    missing = [s for s, i in ids.items() if i is None]
    if missing:
        raise SystemExit(f"{model_dir}/tokenizer.json lacks the special tokens {missing}")
    return ids


def spec_from_config(cfg: dict) -> dict:
    v = cfg["vision_config"]
    spec = {
        "seed": 0,
        "vocab_size": cfg["vocab_size"],
        "hidden": cfg["hidden_size"],
        "intermediate": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": cfg["num_attention_heads"],
        "kv_heads": cfg["num_key_value_heads"],
        "mrope_section": list(cfg["rope_scaling"]["mrope_section"]),
        "max_pos": cfg["max_position_embeddings"],
        "tied": bool(cfg.get("tie_word_embeddings", False)),
        "vision": {"depth": v["depth"], "embed_dim": v["embed_dim"], "heads": v["num_heads"]},
        "moe": None,
    }
    if cfg.get("num_experts"):
        spec["moe"] = {k: cfg[k] for k in ("num_experts", "num_experts_per_tok", "norm_topk_prob",
                                           "moe_intermediate_size", "shared_expert_intermediate_size")}
    # what tools/make_fixtures.py's make_config fixes
    fixed = {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu"}
    for k, want in fixed.items():
        if k in cfg and cfg[k] != want:
            raise SystemExit(f"config.json: {k} = {cfg[k]!r}; the reference supports {want!r}")
    vfixed = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "mlp_ratio": 4,
              "in_channels": 3, "hidden_act": "quick_gelu"}
    for k, want in vfixed.items():
        if k in v and v[k] != want:
            raise SystemExit(f"config.json: vision_config.{k} = {v[k]!r}; the reference supports {want!r}")
    if v.get("hidden_size", cfg["hidden_size"]) != cfg["hidden_size"]:
        raise SystemExit("config.json: vision_config.hidden_size differs from hidden_size")
    return spec


def read_weights(model_dir: Path) -> dict:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for f in files:
        for k, t in load_file(str(model_dir / f)).items():
            if k.startswith("model.visual."):
                k = "visual." + k[len("model.visual."):]
            elif k.startswith("model.language_model."):
                k = "model." + k[len("model.language_model."):]
            if k in sd:
                raise SystemExit(f"{model_dir}: tensor {k} appears twice")
            sd[k] = t
    return sd


def load_reference(model_dir: Path):
    """The patched reference model (float32, eval mode) with the weights of model_dir, its
    special-token ids and its config (flattened)."""
    cfg = read_config(model_dir)
    ids = special_ids(model_dir)
    for key, tok in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                     ("vision_start_token_id", "<|vision_start|>"), ("eos_token_id", "<|im_end|>")]:
        if key in cfg and cfg[key] != ids[tok]:
            raise SystemExit(f"config.json: {key} = {cfg[key]} but the tokenizer has {tok} = {ids[tok]}")
    spec = spec_from_config(cfg)
    model = mf.build_model(spec, ids)
    sd = read_weights(model_dir)
    want = dict(model.state_dict())
    if spec["tied"] and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise SystemExit(f"{model_dir}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    for k, t in sd.items():
        if tuple(t.shape) != tuple(want[k].shape):
            raise SystemExit(f"{model_dir}: {k} has shape {list(t.shape)}, expected {list(want[k].shape)}")
    model.load_state_dict({k: t.to(torch.float32) for k, t in sd.items()}, strict=True)
    if spec["tied"]:
        model.tie_weights()
    model.eval()
    return model, ids, cfg


def load_processor(model_dir: Path):
    processor = AutoProcessor.from_pretrained(str(model_dir))
    # the chat template lives in tokenizer_config.json (or chat_template.json)
    if processor.chat_template is None:
        processor.chat_template = processor.tokenizer.chat_template
    processor.tokenizer.padding_side = "right"
    return processor


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


class LoraLinear(torch.nn.Module):
    """y = base(x) + scaling * (x A^T) B^T with A [r, in] and B [out, r] (PEFT's lora.Linear
    without dropout); the base layer keeps its own parameters under base_layer."""

    def __init__(self, base: torch.nn.Linear, r: int, alpha: float, scaling: float | None = None):
        super().__init__()
        self.base_layer = base
        self.r = r
        self.scaling = alpha / r if scaling is None else scaling
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False, dtype=dtype, device=device)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False, dtype=dtype, device=device)

    def forward(self, x):
        return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))


def lora_module_names(model) -> list[str]:
    names = []
    for i in range(len(model.model.layers)):
        for t in LORA_TARGETS:
            names.append(f"model.layers.{i}.{t}")
    return names


def wrap_lora(model, modules: list[str], r: int, alpha: float, scaling: float | None = None) -> dict:
    """Replaces each named nn.Linear by a LoraLinear; returns {module name: wrapper}."""
    out = {}
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, torch.nn.Linear):
            raise SystemExit(f"LoRA target {name} is a {type(base).__name__}, not a Linear")
        w = LoraLinear(base, r, alpha, scaling)
        setattr(parent, child, w)
        out[name] = w
    return out


def init_lora(wrappers: dict, seed: int) -> dict:
    """Seeded normal A (std 0.1) and B (std 0.02), in module order; returns the initial values."""
    g = torch.Generator().manual_seed(seed)
    init = {}
    with torch.no_grad():
        for name, w in wrappers.items():
            a = torch.randn(w.lora_A.weight.shape, generator=g) * LORA_A_STD
            b = torch.randn(w.lora_B.weight.shape, generator=g) * LORA_B_STD
            w.lora_A.weight.copy_(a)
            w.lora_B.weight.copy_(b)
            init[f"{name}.lora_A.weight"] = a
            init[f"{name}.lora_B.weight"] = b
    return init


# --------------------------------------------------------------------------------------------
# Inputs and losses
# --------------------------------------------------------------------------------------------


def find_all(seq: list[int], pat: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(pat) + 1) if seq[i:i + len(pat)] == pat]


def assistant_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> torch.Tensor:
    """-100 everywhere except each assistant span: from just after "<|im_start|>assistant\\n" up to
    and including "<|im_end|>\\n" (the EchoVLM collator)."""
    start = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    labels = torch.full_like(input_ids, -100)
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        assert attention_mask[b, :n].all() and not attention_mask[b, n:].any(), "right padding expected"
        row = input_ids[b, :n].tolist()
        starts = find_all(row, start)
        assert starts, "no assistant turn"
        for s in starts:
            a = s + len(start)
            ends = [e for e in find_all(row, end) if e >= a]
            stop = ends[0] + len(end) if ends else n
            labels[b, a:stop] = input_ids[b, a:stop]
    return labels


def build_cases(processor, model) -> tuple[dict, dict]:
    """{case: tensors} and {case: description} for the text and image batches."""
    cases, meta = {}, {}
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.pad_token_id == pad

    def finish(case, enc, desc):
        batch = {
            "input_ids": enc["input_ids"].to(torch.int64),
            "attention_mask": enc["attention_mask"].to(torch.int64),
        }
        if "pixel_values" in enc:
            batch["pixel_values"] = enc["pixel_values"].to(torch.float32)
            batch["image_grid_thw"] = enc["image_grid_thw"].to(torch.int64)
        batch["labels"] = assistant_labels(batch["input_ids"], batch["attention_mask"], tok)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()
        pos, _ = model.get_rope_index(batch["input_ids"], batch.get("image_grid_thw"), None, batch["attention_mask"])
        batch["position_ids"] = pos.to(torch.int64)
        lengths = batch["attention_mask"].sum(1).tolist()
        desc.update({
            "batch": batch["input_ids"].shape[0],
            "seq_len": batch["input_ids"].shape[1],
            "lengths": lengths,
            "labelled_tokens": (batch["labels"] != -100).sum(1).tolist(),
            "pad_token_id": pad,
            "padding_side": "right",
        })
        assert min(lengths) >= 12 and max(lengths) - min(lengths) >= 4, lengths
        cases[case] = batch
        meta[case] = desc

    convs = [[{"role": "user", "content": [{"type": "text", "text": q}]}, {"role": "assistant", "content": a}]
             for q, a in TEXT_CONVERSATIONS]
    rendered = [processor.apply_chat_template(c, add_generation_prompt=False) for c in convs]
    enc = processor(text=rendered, return_tensors="pt", padding=True)
    finish("text", enc, {"messages": convs, "rendered": rendered, "images": None})

    convs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
              {"role": "assistant", "content": a}] for _, q, a in IMAGE_CONVERSATIONS]
    rendered = [processor.apply_chat_template(c, add_generation_prompt=False) for c in convs]
    images = [mf.load_rgb(mf.IMAGES / n) for n, _, _ in IMAGE_CONVERSATIONS]
    enc = processor(text=rendered, images=images, return_tensors="pt", padding=True)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    finish("image", enc, {
        "messages": convs,
        "rendered": rendered,
        "images": [f"fixtures/images/{n}" for n, _, _ in IMAGE_CONVERSATIONS],
        "image_grid_thw": enc["image_grid_thw"].tolist(),
        "image_tokens_per_row": (enc["input_ids"] == image_token).sum(1).tolist(),
    })
    return cases, meta


def micro_batch(batch: dict, row: int) -> dict:
    """Row `row` of a batch as a batch of one (same length, its padding and mask kept)."""
    out = {k: batch[k][row:row + 1] for k in ("input_ids", "attention_mask", "labels")}
    out["position_ids"] = batch["position_ids"][:, row:row + 1]
    if "pixel_values" in batch:
        counts = batch["image_grid_thw"].prod(-1).tolist()
        offset = sum(counts[:row])
        out["pixel_values"] = batch["pixel_values"][offset:offset + counts[row]]
        out["image_grid_thw"] = batch["image_grid_thw"][row:row + 1]
    return out


def causal_lm_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    lg = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def losses(model, batch: dict, coef: float, check_model_loss: bool = False) -> dict:
    """ce, aux and total of one forward; the router logits keep their autograd graph."""
    router = []
    handles = [layer.moe.register_forward_hook(lambda m, i, o: router.append(o[1])) for layer in model.model.layers]
    model.rope_deltas = None
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if "pixel_values" in batch:
        kw["pixel_values"] = batch["pixel_values"].to(model.dtype)
        kw["image_grid_thw"] = batch["image_grid_thw"]
    if check_model_loss:
        kw["labels"] = batch["labels"]
    try:
        out = model(**kw, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert len(router) == len(model.model.layers)
    ce = causal_lm_ce(out.logits, batch["labels"])
    if check_model_loss:
        assert torch.allclose(out.loss, ce.float(), rtol=0, atol=1e-6), (out.loss.item(), ce.item())
    moe = model.model.layers[0].moe
    aux = load_balancing_loss_func(tuple(router), moe.num_experts, moe.top_k, batch["attention_mask"])
    return {"ce": ce, "aux": aux, "total": ce + coef * aux, "logits": out.logits}


# --------------------------------------------------------------------------------------------
# Trainable sets
# --------------------------------------------------------------------------------------------


def in_set(name: str, which: str) -> bool:
    if which == "moe":
        return "moe." in name or "coefficient." in name or "merger.mlp" in name
    if which == "lora":
        return "moe." in name or "coefficient." in name or ".lora_A." in name or ".lora_B." in name
    raise ValueError(which)


def set_trainable(model, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    params = []
    for name, p in model.named_parameters():
        on = in_set(name, which)
        p.requires_grad_(on)
        if on:
            params.append((name, p))
    return params


SET_RULES = {
    "moe": 'every parameter whose name contains "moe.", "coefficient." or "merger.mlp" (stage1)',
    "lora": ('LoRA A/B of self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj of every decoder layer, '
             'plus every parameter whose name contains "moe." or "coefficient." (stage2)'),
}


def gradients(model, params, batch, coef) -> tuple[dict, dict, list[str]]:
    out = losses(model, batch, coef, check_model_loss=True)
    grads = torch.autograd.grad(out["total"], [p for _, p in params], allow_unused=True)
    result, unused = {}, []
    for (name, p), g in zip(params, grads):
        if g is None:
            unused.append(name)
            g = torch.zeros_like(p)
        result[name] = g.detach()
    return out, result, unused


# --------------------------------------------------------------------------------------------
# Finite differences in float64
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def float64_reference():
    """transformers computes RMSNorm and the softmaxes in float32 whatever the input dtype; for a
    float64 model they run in float64 here (the same formulas, without the float32 round trip)."""
    orig_softmax = F.softmax
    orig_rms = modeling_qwen2_vl.Qwen2RMSNorm.forward

    def softmax(input, dim=None, _stacklevel=3, dtype=None):
        if input.dtype == torch.float64:
            dtype = None
        return orig_softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    def rms(self, x):
        if x.dtype != torch.float64:
            return orig_rms(self, x)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    torch.nn.functional.softmax = softmax
    modeling_qwen2_vl.Qwen2RMSNorm.forward = rms
    try:
        yield
    finally:
        torch.nn.functional.softmax = orig_softmax
        modeling_qwen2_vl.Qwen2RMSNorm.forward = orig_rms


def finite_difference_checks(model32, which, batch, coef, grads32, picks, eps=1e-6):
    """Central differences of total in float64 against float64 autograd and the float32 gradient."""
    model = copy.deepcopy(model32).to(torch.float64)
    params = dict(set_trainable(model, which))
    results = []
    with float64_reference():
        out = losses(model, batch, coef)
        names = [n for n, _ in picks]
        g64 = dict(zip(names, torch.autograd.grad(out["total"], [params[n] for n in names], allow_unused=True)))
        for name, idx in picks:
            p = params[name]
            if idx is None:  # the entry with the largest float32 gradient
                idx = tuple(int(i) for i in torch.unravel_index(grads32[name].abs().argmax(), p.shape))
            with torch.no_grad():
                orig = p[idx].item()
                p[idx] = orig + eps
                up = losses(model, batch, coef)["total"].item()
                p[idx] = orig - eps
                down = losses(model, batch, coef)["total"].item()
                p[idx] = orig
            fd = (up - down) / (2 * eps)
            ag = 0.0 if g64[name] is None else g64[name][idx].item()
            g32 = grads32[name][idx].item()
            scale = max(abs(fd), 1e-4)
            assert abs(ag - fd) <= 1e-6 * scale + 1e-9, (name, idx, fd, ag)
            assert abs(g32 - fd) <= 2e-3 * scale + 1e-7, (name, idx, fd, g32)
            results.append({"param": name, "index": list(idx), "finite_difference_f64": fd,
                            "autograd_f64": ag, "autograd_f32": g32, "eps": eps})
    return results


# --------------------------------------------------------------------------------------------
# AdamW trajectory
# --------------------------------------------------------------------------------------------


def adamw_run(base, batch, coef, accumulate: bool):
    model = copy.deepcopy(base)
    params = set_trainable(model, "moe")
    opt = torch.optim.AdamW([p for _, p in params], lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    sched = get_cosine_schedule_with_warmup(opt, SCHEDULE["num_warmup_steps"], SCHEDULE["num_training_steps"])
    rows = batch["input_ids"].shape[0]
    rec = {"loss": [], "lr": [], "grad_norm": [], "snapshots": {}}
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        if accumulate:
            total = 0.0
            for r in range(rows):
                loss = losses(model, micro_batch(batch, r), coef)["total"] / rows
                loss.backward()
                total += loss.item()
            rec["loss"].append(total)
        else:
            loss = losses(model, batch, coef)["total"]
            loss.backward()
            rec["loss"].append(loss.item())
        for name, p in params:
            assert p.grad is not None, f"{name} has no gradient"
        rec["grad_norm"].append(torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_GRAD_NORM).item())
        rec["lr"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if step in (1, STEPS):
            rec["snapshots"][step] = {n: p.detach().clone() for n, p in params}
    return rec


# --------------------------------------------------------------------------------------------


def main():
    t0 = time.time()
    torch.manual_seed(0)
    model, ids, cfg = load_reference(MODEL_DIR)
    coef = float(cfg["router_aux_loss_coef"])
    processor = load_processor(MODEL_DIR)
    cases, case_meta = build_cases(processor, model)

    g = mf.Golden(NAME)
    for case, batch in cases.items():
        for k, v in batch.items():
            g.t(f"{case}.{k}", v)

    lora_model = copy.deepcopy(model)
    wrappers = wrap_lora(lora_model, lora_module_names(lora_model), LORA_R, LORA_ALPHA)
    lora_init = init_lora(wrappers, LORA_SEED)
    for k, v in lora_init.items():
        g.t(f"lora_init.{k}", v)
    models = {"moe": model, "lora": lora_model}

    meta = {
        "model_dir": "fixtures/models/tiny-echovlm",
        "generator": "tools/make_train_goldens.py",
        "reference": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                      "dtype": "float32", "mode": "eval (attention dropout 0, LoRA dropout 0)",
                      "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        "loss": {
            "ce": "shifted causal-LM cross-entropy: logits[:, :-1] against labels[:, 1:], mean over labels != -100",
            "aux": ("transformers.models.qwen2_moe.modeling_qwen2_moe.load_balancing_loss_func(router logits of "
                    "every layer's moe gate, each [B*S, E] before the softmax, num_experts, top_k, attention_mask)"),
            "total": "ce + router_aux_loss_coef * aux",
            "router_aux_loss_coef": coef,
            "num_experts": cfg["num_experts"],
            "top_k": cfg["num_experts_per_tok"],
        },
        "labels": ('-100 except each assistant span: from just after "<|im_start|>assistant\\n" up to and '
                   'including "<|im_end|>\\n"; -100 on padding'),
        "cases": case_meta,
        "position_ids": "{case}.position_ids = model.get_rope_index(input_ids, image_grid_thw, None, attention_mask)",
        "lora": {
            "r": LORA_R, "lora_alpha": LORA_ALPHA, "scaling": LORA_ALPHA / LORA_R, "dropout": 0.0,
            "target_modules": list(wrappers),
            "math": "y = base(x) + scaling * (x A^T) B^T, A [r, in], B [out, r]",
            "init": {"seed": LORA_SEED, "A_std": LORA_A_STD, "B_std": LORA_B_STD,
                     "order": "torch.Generator().manual_seed(seed); per module in target_modules order: "
                              "A = randn([r, in]) * A_std, then B = randn([out, r]) * B_std",
                     "keys": "lora_init.{module}.lora_A.weight, lora_init.{module}.lora_B.weight"},
        },
        "sets": {},
        "losses": {},
        "grad_norms": {},
        "unused_parameters": {},
        "zero_gradients": {},
    }

    fd_results = []
    for which, m in models.items():
        params = set_trainable(m, which)
        meta["sets"][which] = {"rule": SET_RULES[which], "params": [n for n, _ in params],
                               "shapes": {n: list(p.shape) for n, p in params},
                               "num_elements": sum(p.numel() for _, p in params)}
        for case, batch in cases.items():
            out, grads, unused = gradients(m, params, batch, coef)
            for k in ("ce", "aux", "total"):
                g.t(f"{case}.{which}.{k}", out[k].detach().reshape(1))
            for name, gr in grads.items():
                g.t(f"{case}.{which}.grad.{name}", gr)
            meta["losses"].setdefault(case, {})[which] = {k: out[k].item() for k in ("ce", "aux", "total")}
            meta["grad_norms"].setdefault(case, {})[which] = math.sqrt(sum(float(x.double().pow(2).sum()) for x in grads.values()))
            meta["unused_parameters"].setdefault(case, {})[which] = unused
            meta["zero_gradients"].setdefault(case, {})[which] = [n for n, x in grads.items() if not x.any()]

            if case == "text" and which == "moe":
                # a cross-entropy without the -100 mask must differ
                unmasked = causal_lm_ce(out["logits"].detach(), batch["input_ids"]).item()
                assert abs(unmasked - out["ce"].item()) > 1e-2, (unmasked, out["ce"].item())
                meta["ce_without_label_mask"] = {"case": "text", "labels": "input_ids (nothing ignored)",
                                                 "ce": unmasked}
            # finite differences
            if which == "moe":
                picks = [("model.layers.1.coefficient.bias", (0,)), ("model.layers.0.moe.gate.weight", None),
                         ("model.layers.2.moe.shared_expert.down_proj.weight", None)]
                if case == "image":
                    picks = [("visual.merger.mlp.0.weight", None), ("model.layers.1.moe.experts.1.up_proj.weight", None)]
            else:
                picks = [("model.layers.0.self_attn.q_proj.lora_A.weight", None),
                         ("model.layers.2.mlp.down_proj.lora_B.weight", None)]
            for r in finite_difference_checks(m, which, batch, coef, grads, picks):
                r.update({"case": case, "set": which})
                fd_results.append(r)
    meta["finite_difference_checks"] = fd_results
    meta["unused_parameters_note"] = (
        "parameters the loss does not reach (the patch merger in the text case: no image) have a zero "
        "gradient written")

    # AdamW trajectories on the image batch, set "moe", from the fixture weights
    base = load_reference(MODEL_DIR)[0]
    plain = adamw_run(base, cases["image"], coef, accumulate=False)
    accum = adamw_run(base, cases["image"], coef, accumulate=True)
    for k in ("loss", "lr", "grad_norm"):
        g.t(f"adamw.{k}", torch.tensor(plain[k], dtype=torch.float64))
        g.t(f"adamw_accum.{k}", torch.tensor(accum[k], dtype=torch.float64))
    # step 1 runs at lr 0 (warm-up): its parameters equal the fixture's, so only step 5 is kept
    for n, v in plain["snapshots"][STEPS].items():
        g.t(f"adamw.step{STEPS}.{n}", v)
    for n, v in accum["snapshots"][STEPS].items():
        g.t(f"adamw_accum.step{STEPS}.{n}", v)
    optimizer = {
        "set": "moe", "case": "image", "steps": STEPS, "start": "the fixture weights",
        "optimizer": dict(ADAMW, name="torch.optim.AdamW"), "schedule": SCHEDULE,
        "clip": f"torch.nn.utils.clip_grad_norm_(trainable, max_norm={MAX_GRAD_NORM}) before every step",
        "order": "zero_grad; loss; backward; clip (grad_norm = the norm it returns, before clipping); "
                 "lr = the group lr used by this step; optimizer.step(); scheduler.step()",
    }
    meta["adamw"] = dict(optimizer, loss=plain["loss"], lr=plain["lr"], grad_norm=plain["grad_norm"],
                         note="the warmup gives lr 0 at step 1: the parameters after it equal the initial ones "
                              "(the Adam moments and step count are updated), so no step-1 snapshot is written")
    meta["adamw_accum"] = dict(
        optimizer, loss=accum["loss"], lr=accum["lr"], grad_norm=accum["grad_norm"],
        accumulation=("each optimizer step runs 2 micro-batches, micro-batch r = row r of the image batch alone "
                      "(same length S, its trailing padding and attention mask kept, its own pixel_values rows and "
                      "grid); each micro-batch loss is its own total (its own CE mean over its labels and its own "
                      "aux with its own attention mask); the loss backpropagated is total_r / 2, so the "
                      "accumulated gradient is that of the mean of the micro-batch totals; adamw_accum.loss is "
                      "that mean"))

    keys = sorted(g.tensors)
    meta["num_tensors"] = len(keys)
    meta["key_groups"] = {
        "{case}.{input_ids,attention_mask,labels}": "[B, S] int64",
        "{case}.position_ids": "[3, B, S] int64",
        "image.pixel_values": "[N, 1176] float32",
        "image.image_grid_thw": "[n, 3] int64",
        "{case}.{set}.{ce,aux,total}": "[1] float32",
        "{case}.{set}.grad.{param}": "shape of the parameter, float32",
        "lora_init.{module}.lora_{A,B}.weight": "[r, in] / [out, r] float32",
        "adamw.{loss,lr,grad_norm}, adamw_accum.{loss,lr,grad_norm}": "[5] float32",
        "adamw.step5.{param}, adamw_accum.step5.{param}": "parameters of set moe after that step",
    }
    g.meta = meta
    g.write()

    size = GOLDEN.stat().st_size
    print(f"{NAME}: {len(keys)} tensors, {size / 1e6:.2f} MB, {time.time() - t0:.1f} s")
    for case in cases:
        for which in models:
            l = meta["losses"][case][which]
            print(f"  {case:5s} {which:4s} ce {l['ce']:.6f} aux {l['aux']:.6f} total {l['total']:.6f} "
                  f"|grad| {meta['grad_norms'][case][which]:.6f}")
    print(f"  adamw loss {['%.6f' % x for x in plain['loss']]} grad_norm {['%.4f' % x for x in plain['grad_norm']]}")
    print(f"  adamw_accum loss {['%.6f' % x for x in accum['loss']]}")
    print(f"  lr {plain['lr']}")
    for r in fd_results:
        print(f"  fd {r['case']}/{r['set']} {r['param']}{r['index']}: fd {r['finite_difference_f64']:.8e} "
              f"f64 {r['autograd_f64']:.8e} f32 {r['autograd_f32']:.8e}")


if __name__ == "__main__":
    sys.exit(main())
