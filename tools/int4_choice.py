"""Measures the candidate 4-bit weight formats of `--weights int4` and prints a Markdown table.

For each candidate (symmetric or asymmetric, 32 or 64 weights per group, f16 or f32 scales) it
quantises weight matrices, multiplies them with random activations and reports the error of the
product relative to f32 (RMS of the error over RMS of the exact product). The activations are
also quantised the way the CPU kernels do it (int8, one scale per 32 values), so the last column
is what a decode step sees.

Weights: Gaussian (the random benchmark checkpoints), Student-t with 4 degrees of freedom
(heavy-tailed, like trained LLM weights with their outlier columns), and every 2-D weight of the
tiny EchoVLM fixture.

    tools/.venv/bin/python tools/int4_choice.py
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent


def q_sym(w, g, scale_dtype):
    """Symmetric, 16 levels: the value of largest magnitude maps to -8 (scale = it / -8)."""
    r, c = w.shape
    b = w.reshape(r, c // g, g)
    idx = np.abs(b).argmax(-1)
    m = np.take_along_axis(b, idx[..., None], -1)[..., 0]
    d = (m / -8.0).astype(scale_dtype).astype(np.float32)
    inv = np.where(d != 0, 1.0 / np.where(d == 0, 1, d), 0)
    q = np.clip(np.round(b * inv[..., None]), -8, 7)
    return (q * d[..., None]).reshape(r, c), 4 + 8 * np.dtype(scale_dtype).itemsize / g


def q_asym(w, g, scale_dtype):
    """Asymmetric: w = d * q + min, q in 0..15."""
    r, c = w.shape
    b = w.reshape(r, c // g, g)
    lo = b.min(-1)
    hi = b.max(-1)
    d = ((hi - lo) / 15.0).astype(scale_dtype).astype(np.float32)
    lo = lo.astype(scale_dtype).astype(np.float32)
    inv = np.where(d != 0, 1.0 / np.where(d == 0, 1, d), 0)
    q = np.clip(np.round((b - lo[..., None]) * inv[..., None]), 0, 15)
    return (q * d[..., None] + lo[..., None]).reshape(r, c), 4 + 16 * np.dtype(scale_dtype).itemsize / g


def q_int8(w):
    """The int8 format: symmetric, one f32 scale per 64 weights."""
    r, c = w.shape
    b = w.reshape(r, c // 64, 64)
    s = np.abs(b).max(-1) / 127.0
    inv = np.where(s != 0, 1.0 / np.where(s == 0, 1, s), 0)
    q = np.clip(np.round(b * inv[..., None]), -127, 127)
    return (q * s[..., None]).reshape(r, c), 8 + 32 / 64


def q_act(x):
    """Activations as the kernels quantise them: int8, one scale per 32 values."""
    m, c = x.shape
    b = x.reshape(m, c // 32, 32)
    s = np.abs(b).max(-1) / 127.0
    inv = np.where(s != 0, 1.0 / np.where(s == 0, 1, s), 0)
    return (np.round(b * inv[..., None]) * s[..., None]).reshape(m, c)


CANDIDATES = [
    ("int8 (reference: the int8 format)", lambda w: q_int8(w)),
    ("symmetric, 32 per group, f16 scale", lambda w: q_sym(w, 32, np.float16)),
    ("symmetric, 64 per group, f16 scale", lambda w: q_sym(w, 64, np.float16)),
    ("symmetric, 64 per group, f32 scale", lambda w: q_sym(w, 64, np.float32)),
    ("asymmetric, 32 per group, f16 scale + min", lambda w: q_asym(w, 32, np.float16)),
    ("asymmetric, 64 per group, f16 scale + min", lambda w: q_asym(w, 64, np.float16)),
]


def rel(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


def main():
    gen = np.random.default_rng(0)
    sets = {
        "Gaussian": [gen.standard_normal((1024, 2048)).astype(np.float32) * 0.02],
        "Student-t (4)": [gen.standard_t(4, (1024, 2048)).astype(np.float32) * 0.02],
    }
    fixture = ROOT / "fixtures" / "models" / "tiny-echovlm" / "model.safetensors"
    if fixture.exists():
        ws = [v.astype(np.float32) for v in load_file(str(fixture)).values()]
        sets["tiny fixture"] = [w for w in ws if w.ndim == 2 and w.shape[1] % 64 == 0]
    xs = {k: [gen.standard_normal((4, w.shape[1])).astype(np.float32) for w in ws] for k, ws in sets.items()}
    print("| format | bits per weight | " + " | ".join(f"{k}: weights only / with int8 activations" for k in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for name, quant in CANDIDATES:
        cells = []
        bits = None
        for key, ws in sets.items():
            e_w, e_wx = [], []
            for w, x in zip(ws, xs[key]):
                wq, bits = quant(w)
                exact = x @ w.T
                e_w.append(rel(x @ wq.T, exact))
                e_wx.append(rel(q_act(x) @ wq.T, exact))
            cells.append(f"{np.mean(e_w):.4f} / {np.mean(e_wx):.4f}")
        print(f"| {name} | {bits:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
