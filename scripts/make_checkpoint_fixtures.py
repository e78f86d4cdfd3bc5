"""PyTorch checkpoint fixtures for patchgraph's `.pth` loader, written to ``tests/fixtures/checkpoints/``.

It makes small checkpoints in the layouts that released ViT weights come in, each with the outputs
the PyTorch reference computes from it:

* ``vit_tiny*.pth``: one timm ``VisionTransformer`` saved as a plain state dict (zip format), as
  float16 / bfloat16 / float64, nested in a training checkpoint with an AdamW state, and in the
  legacy (pre-1.6, non-zip) format;
* ``views.pth``: tensors that are non-contiguous views sharing one storage;
* ``evil.pth`` / ``evil_builtins.pth``: pickles that call ``os.system`` / ``builtins.eval`` when
  unpickled by Python (a safe loader must refuse them; this script never loads them unsafely);
* ``deit_tiny_distilled.pth`` (DeiT, ``{"model": ...}``), ``dino_full.pth`` / ``dino_backbone.pth``
  (DINO training checkpoint with an ``argparse.Namespace``, and the released backbone layout),
  ``mae_pretrain.pth`` / ``mae_finetuned.pth`` (MAE with its decoder, and fine-tuned with fc_norm);
* ``clip_tiny*.pth`` / ``clip_tiny_jit.pt``: open_clip models (QuickGELU and GELU), the visual tower
  alone, a TorchScript archive like OpenAI's CLIP ``.pt`` files, and timm's conversion of the tower.

Each model ``X.pth`` comes with ``X.expected.safetensors`` (``input`` [2, 3, 32, 32] and the float32
eval-mode outputs) unless ``README.md`` there says it shares another's; ``*.config.json`` hold the
constructor arguments. Every parameter is randomised, so a loader that drops or swaps a tensor fails.
The models are smaller than a timm "tiny" (embed_dim 24, CLIP width 48) to keep the directory under
3 MB. Run from anywhere:

    python scripts/make_checkpoint_fixtures.py

It needs ``pip install torch timm open_clip_torch safetensors`` (numpy comes with them). It was run
with torch 2.15.0+cu132 (on the CPU), timm 1.0.31, open_clip_torch 3.3.0, safetensors 0.8.0 and
numpy 2.4.6; the versions are printed, and stored in every expected file's metadata under
``versions``. Reruns reproduce every file byte for byte except ``vit_tiny_legacy.pth``, whose
storage keys are memory addresses (its tensors are reproduced).
"""

import argparse
import copy
import io
import json
import math
import os
import pickletools
import zipfile
from collections import OrderedDict
from functools import partial

import numpy as np
import open_clip
import safetensors
import timm
import torch
from safetensors.torch import save_file
from timm.layers import LayerNorm
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer, _convert_openai_clip
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "checkpoints")

VERSIONS = {
    "torch": torch.__version__,
    "timm": timm.__version__,
    "open_clip_torch": open_clip.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}

INPUT_SEED = 1234
# timm's kwargs for every timm model here (embed_dim 24 = 3 heads of 8; 16 patches of 8x8).
TINY = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5)
# open_clip's model config (the layout of open_clip's model_configs/*.json): 2 heads of 24.
CLIP_CFG = dict(
    embed_dim=32,
    vision_cfg=dict(layers=2, width=48, head_width=24, image_size=32, patch_size=8, mlp_ratio=4.0),
    text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1),
)


def path(name):
    return os.path.join(OUT, name)


def make_input():
    """The shared input, [2, 3, 32, 32] float32, as if already normalised."""
    torch.manual_seed(INPUT_SEED)
    return torch.randn(2, 3, 32, 32)


def randomise_(model):
    """Overwrite every parameter with values that keep activations O(1)."""
    with torch.no_grad():
        for module in model.modules():
            for leaf, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm):
                    new = 1.0 + 0.2 * torch.randn(p.shape) if leaf == "weight" else 0.1 * torch.randn(p.shape)
                elif leaf == "bias" or leaf.endswith("_bias"):
                    new = 0.1 * torch.randn(p.shape)
                elif leaf == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)) or leaf == "in_proj_weight":
                    new = torch.randn(p.shape) / math.sqrt(p[0].numel())  # weight [out, in...]
                elif leaf in ("proj", "text_projection"):
                    new = torch.randn(p.shape) / math.sqrt(p.shape[0])  # used as x @ proj
                elif leaf == "logit_scale":
                    continue
                else:  # cls / dist tokens, position embeddings, token embedding
                    new = 0.5 * torch.randn(p.shape)
                p.copy_(new)
    return model


def state_dict(model):
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())


def save_expected(name, tensors):
    """``name.expected.safetensors``: float tensors as float32, each contiguous in its own storage.
    The metadata has one key, ``versions`` (safetensors writes several keys in random order)."""
    out = OrderedDict()
    for k, v in tensors.items():
        v = v.detach()
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    save_file(out, path(f"{name}.expected.safetensors"), metadata={"versions": json.dumps(VERSIONS)})


def write_json(name, obj):
    with open(path(name), "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


@torch.no_grad()
def run(model, x):
    return model.eval()(x)


# --------------------------------------------------------------------------------------------
# timm ViT in every container / dtype / format


def make_vit_tiny(x):
    torch.manual_seed(100)
    model = randomise_(VisionTransformer(**TINY)).eval()
    sd = state_dict(model)
    logits = run(model, x)

    torch.save(sd, path("vit_tiny.pth"))
    save_expected("vit_tiny", {"input": x, "logits": logits})  # also for _nested and _legacy
    write_json("vit_tiny.config.json", TINY)

    for suffix, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("f64", torch.float64)):
        rounded = OrderedDict((k, v.to(dtype)) for k, v in sd.items())
        torch.save(rounded, path(f"vit_tiny_{suffix}.pth"))
        m = VisionTransformer(**TINY)
        m.load_state_dict({k: v.float() for k, v in rounded.items()}, strict=True)
        save_expected(f"vit_tiny_{suffix}", {"input": x, "logits": run(m, x)})

    # A training checkpoint: DDP prefix, epoch, an AdamW state after one step (on a copy, so the
    # saved weights stay those of vit_tiny; over the parameters outside the blocks, as if those
    # were frozen, to stay small), and plain-Python args.
    trained = copy.deepcopy(model).train()
    params = [p for n, p in trained.named_parameters() if not n.startswith("blocks.")]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    trained(x).logsumexp(-1).mean().backward()
    optimizer.step()
    torch.save({
        "model": OrderedDict(("module." + k, v) for k, v in sd.items()),
        "epoch": 7,
        "optimizer": optimizer.state_dict(),
        "args": {"lr": 1e-3, "name": "tiny"},
    }, path("vit_tiny_nested.pth"))

    torch.save(sd, path("vit_tiny_legacy.pth"), _use_new_zipfile_serialization=False)


# --------------------------------------------------------------------------------------------
# Views, and pickles a loader must refuse


def make_views():
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    views = {
        "t": base.t(),
        "slice": base[1:5, 2:7:2],
        "row": base[3],
        "shared": base,
        "half_t": base.half().t(),
        "long": torch.arange(5),
        "scalar": torch.tensor(2.5),
    }
    assert not views["t"].is_contiguous() and not views["slice"].is_contiguous()
    torch.save(views, path("views.pth"))
    save_expected("views", views)  # half_t as float32: exact for 0..47


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/patchgraph_pwned",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("1+1",))


def make_evil():
    torch.save({"weight": torch.zeros(2), "payload": Evil()}, path("evil.pth"))
    torch.save({"weight": torch.zeros(2), "payload": EvilEval()}, path("evil_builtins.pth"))
    for name in ("evil.pth", "evil_builtins.pth"):
        try:
            torch.load(path(name), weights_only=True)
        except Exception:  # torch's own restricted unpickler refuses it too
            pass
        else:
            raise AssertionError(f"torch.load(weights_only=True) accepted {name}")


# --------------------------------------------------------------------------------------------
# DeiT, DINO, MAE


def make_deit(x):
    torch.manual_seed(200)
    model = randomise_(VisionTransformerDistilled(**TINY)).eval()
    with torch.no_grad():
        tokens = model.forward_features(x)  # [B, 2 + 16, D]: cls, dist, patches (final norm applied)
        head_logits = model.head(tokens[:, 0])
        head_dist_logits = model.head_dist(tokens[:, 1])
        pre_logits_mean = model.forward_head(tokens, pre_logits=True)
        logits = model(x)
    torch.testing.assert_close(logits, (head_logits + head_dist_logits) / 2)
    torch.testing.assert_close(pre_logits_mean, (tokens[:, 0] + tokens[:, 1]) / 2)
    torch.save({"model": state_dict(model)}, path("deit_tiny_distilled.pth"))
    save_expected("deit_tiny_distilled", {
        "input": x,
        "logits": logits,
        "head_logits": head_logits,
        "head_dist_logits": head_dist_logits,
        "pre_logits": tokens[:, 0],
        "pre_logits_mean": pre_logits_mean,
    })
    write_json("deit_tiny_distilled.config.json", TINY)


# DINOHead(in_dim=24, out_dim=8, nlayers=3, hidden_dim=32, bottleneck_dim=16), weight-normed last layer.
DINO_HEAD = OrderedDict([
    ("mlp.0.weight", (32, 24)), ("mlp.0.bias", (32,)),
    ("mlp.2.weight", (32, 32)), ("mlp.2.bias", (32,)),
    ("mlp.4.weight", (16, 32)), ("mlp.4.bias", (16,)),
    ("last_layer.weight_g", (8, 1)), ("last_layer.weight_v", (8, 16)),
])


def dino_head():
    return OrderedDict(
        (k, torch.ones(s) if k.endswith("weight_g") else 0.1 * torch.randn(s)) for k, s in DINO_HEAD.items())


def make_dino(x):
    cfg = dict(TINY, num_classes=0)
    backbones, heads = {}, {}
    for seed, who in ((300, "teacher"), (301, "student")):
        torch.manual_seed(seed)
        backbones[who] = randomise_(VisionTransformer(**cfg)).eval()
        heads[who] = dino_head()

    # DINO's AdamW has two groups (regularised weights, unregularised biases/norms); here over the
    # student head only, to stay small.
    params = {k: nn.Parameter(v.clone()) for k, v in heads["student"].items()}
    optimizer = torch.optim.AdamW([
        {"params": [p for k, p in params.items() if not k.endswith("bias")]},
        {"params": [p for k, p in params.items() if k.endswith("bias")], "weight_decay": 0.0},
    ], lr=5e-4, weight_decay=0.04)
    sum(p.square().sum() for p in params.values()).backward()
    optimizer.step()

    def full(who, prefix):
        out = OrderedDict((f"{prefix}backbone.{k}", v) for k, v in state_dict(backbones[who]).items())
        out.update((f"{prefix}head.{k}", v) for k, v in heads[who].items())
        return out

    torch.save({
        "student": full("student", "module."),  # DDP-wrapped in DINO's training
        "teacher": full("teacher", ""),
        "optimizer": optimizer.state_dict(),
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=8),
        "dino_loss": {"center": torch.zeros(1, 8)},
    }, path("dino_full.pth"))
    torch.save(state_dict(backbones["teacher"]), path("dino_backbone.pth"))
    save_expected("dino_full", {
        "input": x,
        "teacher_features": run(backbones["teacher"], x),
        "student_features": run(backbones["student"], x),
    })  # dino_backbone.pth is the teacher: it shares this file
    write_json("dino.config.json", cfg)


def sincos_2d(dim, grid, cls_token):
    """MAE's get_2d_sincos_pos_embed: [cls zeros +] grid*grid rows, w half then h half."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def make_mae(x):
    grid = TINY["img_size"] // TINY["patch_size"]
    patch_dim = TINY["patch_size"] ** 2 * 3
    dec_dim = 32

    # Pretraining checkpoint: timm's vit_base_patch16_224.mae is vit_base_patch16_224's args with
    # num_classes=0 (global_pool 'token' and fc_norm None, the defaults): the final-norm cls token.
    cfg = dict(TINY, num_classes=0, global_pool="token", fc_norm=None)
    torch.manual_seed(400)
    encoder = randomise_(VisionTransformer(**cfg)).eval()
    with torch.no_grad():
        encoder.pos_embed.copy_(sincos_2d(TINY["embed_dim"], grid, cls_token=True))
    decoder = nn.ModuleDict({
        "decoder_embed": nn.Linear(TINY["embed_dim"], dec_dim),
        "decoder_blocks": nn.ModuleList([Block(dec_dim, 2, mlp_ratio=4.0, qkv_bias=True)]),
        "decoder_norm": nn.LayerNorm(dec_dim, eps=1e-6),
        "decoder_pred": nn.Linear(dec_dim, patch_dim),
    })
    randomise_(decoder)
    enc = state_dict(encoder)
    # MAE's own order: the model's direct parameters first, then its modules.
    sd = OrderedDict((k, enc.pop(k)) for k in ("cls_token", "pos_embed"))
    sd["mask_token"] = 0.5 * torch.randn(1, 1, dec_dim)
    sd["decoder_pos_embed"] = sincos_2d(dec_dim, grid, cls_token=True)
    sd.update(enc)
    sd.update(state_dict(decoder))
    torch.save({"model": sd}, path("mae_pretrain.pth"))
    save_expected("mae_pretrain", {"input": x, "features": run(encoder, x)})
    write_json("mae_pretrain.config.json", cfg)

    # Fine-tuned: global_pool 'avg' over the patch tokens, then fc_norm; no final norm.
    cfg = dict(TINY, global_pool="avg", fc_norm=True)
    torch.manual_seed(401)
    model = randomise_(VisionTransformer(**cfg)).eval()
    sd = state_dict(model)
    assert "fc_norm.weight" in sd and "norm.weight" not in sd
    assert set(sd) == set(VisionTransformer(**dict(cfg, fc_norm=None)).state_dict())
    torch.save({"model": sd}, path("mae_finetuned.pth"))
    save_expected("mae_finetuned", {"input": x, "logits": run(model, x)})
    write_json("mae_finetuned.config.json", cfg)


# --------------------------------------------------------------------------------------------
# CLIP (open_clip, OpenAI layout), TorchScript, timm's conversion


def build_clip(quick_gelu):
    return open_clip.model.CLIP(
        embed_dim=CLIP_CFG["embed_dim"],
        vision_cfg=open_clip.model.CLIPVisionCfg(**CLIP_CFG["vision_cfg"]),
        text_cfg=open_clip.model.CLIPTextCfg(**CLIP_CFG["text_cfg"]),
        quick_gelu=quick_gelu,
    )


def timm_clip_config(quick_gelu):
    """timm's vit_*_clip_[quickgelu_]224 args at this size. timm passes
    norm_layer=partial(LayerNorm, eps=1e-5); the JSON writes that as norm_layer + eps."""
    v = CLIP_CFG["vision_cfg"]
    cfg = dict(
        img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["width"], depth=v["layers"],
        num_heads=v["width"] // v["head_width"], mlp_ratio=v["mlp_ratio"], pre_norm=True,
        num_classes=CLIP_CFG["embed_dim"], norm_layer="LayerNorm", eps=1e-5,
    )
    if quick_gelu:
        cfg["act_layer"] = "quick_gelu"
    return cfg


def build_timm_clip(cfg):
    kwargs = dict(cfg)
    kwargs["norm_layer"] = partial(LayerNorm, eps=kwargs.pop("eps"))
    return VisionTransformer(**kwargs)


def make_clip(x):
    for quick_gelu, name in ((True, "clip_tiny"), (False, "clip_tiny_gelu")):
        torch.manual_seed(500)  # the same weights for both: only the activation differs
        model = randomise_(build_clip(quick_gelu)).eval()
        sd = state_dict(model)
        with torch.no_grad():
            embedding = model.encode_image(x)
            normalized = model.encode_image(x, normalize=True)
        torch.save(sd, path(f"{name}.pth"))
        save_expected(name, {"input": x, "embedding": embedding, "embedding_normalized": normalized})
        write_json(f"{name}.config.json", dict(CLIP_CFG, quick_gelu=quick_gelu))

        # timm's own conversion of the tower must reproduce encode_image.
        tcfg = timm_clip_config(quick_gelu)
        tmodel = build_timm_clip(tcfg)
        tmodel.load_state_dict(_convert_openai_clip(sd, tmodel), strict=True)
        torch.testing.assert_close(run(tmodel, x), embedding, atol=1e-5, rtol=1e-5)
        if quick_gelu:
            save_file(state_dict(tmodel), path("clip_tiny.timm.safetensors"),
                      metadata={"versions": json.dumps(VERSIONS)})
            write_json("clip_tiny.timm_config.json", tcfg)

            torch.save(state_dict(model.visual), path("clip_tiny_visual_only.pth"))

            # check_trace re-traces and compares graphs, which differ in mangled names only;
            # the reloaded archive is compared on outputs instead.
            traced = torch.jit.trace(model.visual, x, check_trace=False)
            torch.jit.save(traced, path("clip_tiny_jit.pt"))
            reloaded = torch.jit.load(path("clip_tiny_jit.pt"))
            torch.testing.assert_close(run(reloaded, x), embedding, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# A summary of what the Rust unpickler meets


def pickle_globals(data, count=1):
    """``module.name`` of every GLOBAL in the first ``count`` pickles of ``data``, without duplicates."""
    found, f = [], io.BytesIO(data)
    for _ in range(count):
        for op, arg, _ in pickletools.genops(f):
            assert op.name != "STACK_GLOBAL", "torch pickles with protocol 2: GLOBAL only"
            if op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
    return list(OrderedDict.fromkeys(found))


def summarise():
    print("\nGlobals per pickle, in order of first use:")
    for file in sorted(os.listdir(OUT)):
        if not file.endswith((".pth", ".pt")):
            continue
        if zipfile.is_zipfile(path(file)):
            with zipfile.ZipFile(path(file)) as z:
                pickles = {n: pickle_globals(z.read(n)) for n in z.namelist() if n.endswith(".pkl")}
        else:  # legacy: magic number, protocol version, sys_info, the object, storage keys; then data
            with open(path(file), "rb") as f:
                pickles = {"(legacy)": pickle_globals(f.read(), count=5)}
        for member, names in pickles.items():
            print(f"  {file} {member}: {', '.join(names)}")

    print("\nFiles:")
    total = 0
    for file in sorted(os.listdir(OUT)):
        size = os.path.getsize(path(file))
        total += size
        print(f"  {size:>9}  {file}")
    print(f"  {total:>9}  total ({total / 2**20:.2f} MiB)")


def main():
    print("versions:", json.dumps(VERSIONS))
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    x = make_input()
    make_vit_tiny(x)
    make_views()
    make_evil()
    make_deit(x)
    make_dino(x)
    make_mae(x)
    make_clip(x)
    summarise()


if __name__ == "__main__":
    main()
