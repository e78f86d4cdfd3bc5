"""Fixtures for timm's later ``VisionTransformer`` arguments (issue 13: the peers' conventions),
written to ``tests/fixtures/vit_timm/`` (new files only: ``tests/fixtures/vit/`` is untouched).

For each variant below: ``NAME.json`` (the config as a timm user writes it: timm's argument names
and values, ``act_layer`` by its registered name), ``NAME.safetensors`` (the state dict, every
parameter randomised as ``make_fixtures.py`` does: LayerNorm weight 1 + 0.2 randn, bias 0.1 randn,
Linear/Conv weight randn / sqrt(fan_in), bias 0.1 randn, tokens and pos_embed 0.5 randn),
``NAME.io.safetensors`` (``input`` float32 ``[2, C, H, W]``, ``logits64`` and ``pre_logits64``:
timm's model in float64 on exactly those float32 numbers) and ``NAME.grad.safetensors``
(``loss``, ``targets``, ``grad.<name>``: the cross-entropy with label smoothing 0.1 and every
gradient, in float64; not written for ``pool_none``, whose outputs are per token).

    /tmp/pgvenv/bin/python scripts/make_timm_fixtures.py

Needs torch, timm, safetensors (the venv of make_fixtures.py).
"""

import copy
import json
import math
import os
from collections import OrderedDict

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "vit_timm")

BASE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=24, depth=2, num_heads=2)

VARIANTS = [
    ("qk_norm", dict(qk_norm=True)),
    ("registers", dict(reg_tokens=2)),
    ("registers_no_embed_class", dict(reg_tokens=3, no_embed_class=True, global_pool="avg")),
    ("pre_norm_no_final_norm", dict(pre_norm=True, final_norm=False)),
    ("pool_max", dict(global_pool="max")),
    ("pool_avgmax_with_prefix", dict(global_pool="avgmax", pool_include_prefix=True, reg_tokens=1)),
    ("pool_none", dict(global_pool="")),
    ("gelu_tanh", dict(act_layer="gelu_tanh")),
    ("quick_gelu", dict(act_layer="quick_gelu", pre_norm=True)),
    ("relu", dict(act_layer="relu")),
    ("silu_no_class_token", dict(act_layer="silu", class_token=False, global_pool="avg")),
    ("scale_norms_no_proj_bias", dict(scale_attn_norm=True, scale_mlp_norm=True, proj_bias=False)),
    ("pos_embed_none", dict(pos_embed="none")),
    ("rectangular", dict(img_size=[12, 16], patch_size=[4, 2])),
    ("dropouts_accepted", dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2, weight_init="jax")),
]


def randomise_(m):
    owners = dict(m.named_modules())
    with torch.no_grad():
        for name, p in m.named_parameters():
            owner = owners[name.rpartition(".")[0]]
            leaf = name.rpartition(".")[2]
            if isinstance(owner, torch.nn.LayerNorm):
                new = 1.0 + 0.2 * torch.randn(p.shape) if leaf == "weight" else 0.1 * torch.randn(p.shape)
            elif isinstance(owner, (torch.nn.Linear, torch.nn.Conv2d)):
                new = torch.randn(p.shape) / math.sqrt(p[0].numel()) if leaf == "weight" else 0.1 * torch.randn(p.shape)
            else:  # cls_token, reg_token, pos_embed
                new = 0.5 * torch.randn(p.shape)
            p.copy_(new)


def main():
    import timm
    from timm.models.vision_transformer import VisionTransformer

    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    versions = dict(torch=torch.__version__, timm=timm.__version__)
    for i, (name, extra) in enumerate(VARIANTS):
        cfg = dict(BASE, **extra)
        torch.manual_seed(3000 + i)
        m = VisionTransformer(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}).eval()
        randomise_(m)
        h, w = (cfg["img_size"], cfg["img_size"]) if isinstance(cfg["img_size"], int) else cfg["img_size"]
        x = torch.randn(2, cfg["in_chans"], h, w)
        m64 = copy.deepcopy(m).double()
        with torch.no_grad():
            feats = m64.forward_features(x.double())
            logits64 = m64.forward_head(feats)
            pre64 = m64.forward_head(feats, pre_logits=True)
        meta = {"config": json.dumps(cfg), "versions": json.dumps(versions), "seed": str(3000 + i)}
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            f.write(json.dumps(cfg) + "\n")
        sd = OrderedDict((k, v.detach().clone().contiguous()) for k, v in m.state_dict().items())
        save_file(sd, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)
        save_file({"input": x.contiguous(), "logits64": logits64.contiguous(), "pre_logits64": pre64.contiguous()},
                  os.path.join(OUT, f"{name}.io.safetensors"), metadata=meta)
        line = f"{name}: logits {tuple(logits64.shape)}"
        if cfg.get("global_pool", "token") != "":
            with torch.enable_grad():
                targets = torch.tensor([3, 1]) % cfg["num_classes"]
                loss = torch.nn.functional.cross_entropy(m64(x.double()), targets, label_smoothing=0.1)
                loss.backward()
            grads = OrderedDict(loss=loss.detach().reshape(1), targets=targets)
            for pname, p in m64.named_parameters():
                grads[f"grad.{pname}"] = p.grad.detach().contiguous()
            save_file(grads, os.path.join(OUT, f"{name}.grad.safetensors"), metadata=meta)
            line += f", loss {loss.item():.6f}, {len(grads) - 2} gradients"
        print(line)


if __name__ == "__main__":
    main()
