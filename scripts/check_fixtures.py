"""Independently re-derive every fixture in tests/fixtures/ with plain numpy (float64).

Loads each file with ``safetensors.safe_open`` (numpy framework, no torch), checks the
metadata is present and parses, and recomputes ``out`` (and ``alpha`` /
``alpha_edge_index`` for PyG cases) from the stored float32 parameters using the
textbook formulas -- not the libraries -- so a mismatch means either the fixture or our
reading of the formula is wrong.

Run from the repository root (deps: see scripts/make_fixtures.py)::

    /tmp/pgvenv/bin/python scripts/check_fixtures.py
"""

import glob
import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")
TOL = 1e-10

_erf = np.vectorize(math.erf)


def load(path):
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    for k in ("module", "config", "versions"):
        assert k in meta, f"{path}: metadata {k} missing"
    cfg = json.loads(meta["config"])
    json.loads(meta["versions"])
    order = json.loads(meta["tensor_order"])
    assert sorted(order) == sorted(t.keys())
    return meta, cfg, t


def f64(a):
    return np.asarray(a, dtype=np.float64)


def linear(x, t, prefix):
    y = x @ f64(t[prefix + ".weight"]).T
    if prefix + ".bias" in t:
        y = y + f64(t[prefix + ".bias"])
    return y


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased variance
    return (x - mu) / np.sqrt(var + eps) * f64(w) + f64(b)


def softmax_last(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def vit_attention(x, t, prefix, num_heads):
    B, N, C = x.shape
    hd = C // num_heads
    qkv = linear(x, t, prefix + "qkv").reshape(B, N, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, hd]
    att = softmax_last((q * hd ** -0.5) @ k.transpose(0, 1, 3, 2))
    o = (att @ v).transpose(0, 2, 1, 3).reshape(B, N, C)
    return linear(o, t, prefix + "proj")


def vit_block(x, t, cfg):
    eps = cfg["eps"]
    a = vit_attention(layernorm(x, t["norm1.weight"], t["norm1.bias"], eps), t, "attn.", cfg["num_heads"])
    if "ls1.gamma" in t:
        a = a * f64(t["ls1.gamma"])
    x = x + a
    h = linear(layernorm(x, t["norm2.weight"], t["norm2.bias"], eps), t, "mlp.fc1")
    h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # exact GELU
    m = linear(h, t, "mlp.fc2")
    if "ls2.gamma" in t:
        m = m * f64(t["ls2.gamma"])
    return x + m


def pyg_edges(ei, n, add_loops):
    src, dst = list(ei[0]), list(ei[1])
    if add_loops:
        keep = [(s, d) for s, d in zip(src, dst) if s != d]
        keep += [(i, i) for i in range(n)]
        src, dst = [s for s, _ in keep], [d for _, d in keep]
    return np.array([src, dst], dtype=np.int64)


def seg_softmax(logits, dst, n):
    """softmax over incoming edges of each target, per head. logits [E, H]."""
    out = np.zeros_like(logits)
    for i in range(n):
        m = dst == i
        if m.any():
            out[m] = softmax_last(logits[m].T).T
    return out


def aggregate(alpha, msg_src, src, dst, n):
    """out_i = sum_{e: dst_e = i} alpha_e * msg[src_e];  msg [N, H, C]."""
    H, C = msg_src.shape[1:]
    out = np.zeros((n, H, C))
    for e in range(len(src)):
        out[dst[e]] += alpha[e][:, None] * msg_src[src[e]]
    return out


def leaky(a, slope):
    return np.where(a > 0, a, slope * a)


def finish(out, cfg):
    n = out.shape[0]
    return out.reshape(n, -1) if cfg["concat"] else out.mean(1)


def gat(x, ei, t, cfg):
    n, H, C = x.shape[0], cfg["heads"], cfg["out_channels"]
    e = pyg_edges(ei, n, cfg["add_self_loops"])
    src, dst = e
    h = linear(x, t, "lin").reshape(n, H, C)  # W x, no bias
    a_src = (h * f64(t["att_src"])).sum(-1)  # [N, H]
    a_dst = (h * f64(t["att_dst"])).sum(-1)
    alpha = seg_softmax(leaky(a_src[src] + a_dst[dst], cfg["negative_slope"]), dst, n)
    out = finish(aggregate(alpha, h, src, dst, n), cfg) + f64(t["bias"])
    return out, alpha, e


def gatv2(x, ei, t, cfg):
    n, H, C = x.shape[0], cfg["heads"], cfg["out_channels"]
    e = pyg_edges(ei, n, cfg["add_self_loops"])
    src, dst = e
    xl = linear(x, t, "lin_l").reshape(n, H, C)  # source side (messages)
    xr = linear(x, t, "lin_r").reshape(n, H, C)  # target side
    logits = (leaky(xl[src] + xr[dst], cfg["negative_slope"]) * f64(t["att"])).sum(-1)
    alpha = seg_softmax(logits, dst, n)
    out = finish(aggregate(alpha, xl, src, dst, n), cfg) + f64(t["bias"])
    return out, alpha, e


def transformer(x, ei, t, cfg):
    n, H, C = x.shape[0], cfg["heads"], cfg["out_channels"]
    src, dst = ei
    q = linear(x, t, "lin_query").reshape(n, H, C)
    k = linear(x, t, "lin_key").reshape(n, H, C)
    v = linear(x, t, "lin_value").reshape(n, H, C)
    alpha = seg_softmax((q[dst] * k[src]).sum(-1) / math.sqrt(C), dst, n)
    out = finish(aggregate(alpha, v, src, dst, n), cfg)
    if cfg["root_weight"]:
        xr = linear(x, t, "lin_skip")
        if cfg["beta"]:
            b = np.concatenate([out, xr, out - xr], -1) @ f64(t["lin_beta.weight"]).T
            b = 1.0 / (1.0 + np.exp(-b))
            out = b * xr + (1 - b) * out
        else:
            out = out + xr
    return out, alpha, np.array(ei)


def main():
    files = sorted(glob.glob(os.path.join(FIX, "*.safetensors")))
    assert files, "no fixtures found"
    bad = 0
    for path in files:
        meta, cfg, t = load(path)
        name = os.path.basename(path)
        mod = meta["module"]
        x = f64(t["x"])
        for k, v in t.items():
            if k not in ("out", "alpha", "alpha_edge_index", "edge_index"):
                assert v.dtype == np.float32, (name, k, v.dtype)
        assert t["out"].dtype == np.float64
        if mod.endswith(".Attention"):
            ref = vit_attention(x, t, "", cfg["num_heads"])
            errs = {"out": np.abs(ref - t["out"]).max()}
        elif mod.endswith(".Block"):
            ref = vit_block(x, t, cfg)
            errs = {"out": np.abs(ref - t["out"]).max()}
        else:
            fn = {"GATConv": gat, "GATv2Conv": gatv2, "TransformerConv": transformer}[mod.rsplit(".", 1)[1]]
            ref, alpha, e = fn(x, t["edge_index"], t, cfg)
            assert t["edge_index"].dtype == np.int64 and t["alpha_edge_index"].dtype == np.int64
            assert np.array_equal(e, t["alpha_edge_index"]), (name, e, t["alpha_edge_index"])
            errs = {"out": np.abs(ref - t["out"]).max(), "alpha": np.abs(alpha - t["alpha"]).max()}
        ok = all(v < TOL for v in errs.values())
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:40s} " + "  ".join(f"max|d{k}|={v:.2e}" for k, v in errs.items()))
    print(f"{len(files) - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
