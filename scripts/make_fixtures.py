"""Generate reference fixtures for patchgraph's Rust tests from the real Python libraries.

What it does
------------
Builds small instances of

* timm's ViT ``Attention`` and ``Block`` (``timm.models.vision_transformer``), and
* PyTorch Geometric's ``GATConv``, ``GATv2Conv`` and ``TransformerConv``,

re-initialises EVERY parameter with random, non-trivial values (no zero biases, no
unit LayerNorm weights), runs the module in float64 / eval mode, and writes one
safetensors file per case into ``tests/fixtures/``.  Each file holds

* ``x``                 float32 input,
* ``edge_index``        int64 [2, E]  (PyG cases only; row 0 = source j, row 1 = target i),
* every ``state_dict()`` entry of the module under its exact PyTorch name, float32,
* ``out``               float64 output of ``module.double().eval()(x.double(), ...)``,
* ``alpha``             float64 [E', H] attention weights (PyG cases only), and
* ``alpha_edge_index``  int64 [2, E'] the edges ``alpha`` refers to (PyG cases only;
                        for add_self_loops=True that is PyG's edge_index after it removed
                        existing self-loops and appended one loop per node).

The float32 parameters/inputs are exactly representable in float64, so ``out`` is the
(float64-accurate) answer for exactly the float32 numbers stored in the file.

safetensors metadata (str -> str): ``module`` (class path where the class is defined),
``constructed_as`` (the path the script imported it from), ``config`` (JSON of the
constructor arguments, defaults spelled out), ``versions`` (JSON of library versions),
``seed`` and ``init`` (how parameters were randomised).

It also writes ``tests/fixtures/README.md`` with the command, versions and a table of
every file's module, config and tensor names/shapes.

``--only vit`` writes (only) ``tests/fixtures/vit/``: whole timm ``VisionTransformer`` models
(tiny configs, every parameter randomised), per variant ``NAME.json`` (config),
``NAME.safetensors`` (state_dict, float32) and ``NAME.io.safetensors`` (input, float32 logits and
pre_logits as timm computes them, plus float64 versions); two position-embedding resampling
cases through timm's ``checkpoint_filter_fn``; and ``tiny_token.npz``, the same weights under the
original Google/JAX names, verified by loading it back with timm's ``_load_weights``. See
``tests/fixtures/vit/README.md`` (written by the script).  ``--only layers`` writes everything
else (the layer fixtures, their README and the image fixtures); no ``--only`` writes both.

Install the dependencies (outside the repo; CPU is enough)::

    python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch timm torch_geometric safetensors numpy

Run from the repository root::

    /tmp/pgvenv/bin/python scripts/make_fixtures.py [--only layers|vit|grad]

Then optionally verify the files independently with numpy::

    /tmp/pgvenv/bin/python scripts/check_fixtures.py
"""

import argparse
import copy
import functools
import json
import math
import os
import platform
import tempfile
import warnings
from collections import OrderedDict

warnings.filterwarnings("ignore")

import numpy as np
import safetensors
import timm
import torch
import torch_geometric
from safetensors.torch import save_file
from timm.models.vision_transformer import Attention, Block
from torch_geometric.nn import GATConv, GATv2Conv, TransformerConv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures")

VERSIONS = OrderedDict(
    torch=torch.__version__,
    timm=timm.__version__,
    torch_geometric=torch_geometric.__version__,
    safetensors=safetensors.__version__,
    numpy=np.__version__,
    python=platform.python_version(),
)

INIT_DOC = (
    "every parameter re-initialised after construction: "
    "LayerNorm weight = 1 + 0.2*randn; LayerScale gamma = 0.5 + 0.3*randn; "
    "bias (name ends in 'bias') = 0.1*randn; everything else = 0.3*randn"
)

# ---------------------------------------------------------------------------
# The one fixed graph for all PyG cases.  N = 8 nodes, in_channels = 6.
#   * node 7 is isolated (no incoming, no outgoing edge)
#   * 0 -> 1 appears twice (duplicated edge)
#   * 2 -> 2 is an existing self-loop
#   * node 5 has only outgoing edges (5 -> 0, 5 -> 3, 5 -> 6), no incoming
# Edges are deliberately NOT sorted by target.
# ---------------------------------------------------------------------------
NUM_NODES = 8
IN_CHANNELS = 6
EDGES = [  # (source j, target i)
    (0, 1),
    (1, 2),
    (0, 1),  # duplicate of edge 0
    (2, 2),  # existing self-loop
    (2, 0),
    (3, 0),
    (3, 4),
    (4, 3),
    (5, 0),
    (5, 3),
    (5, 6),
    (6, 4),
    (1, 6),
    (4, 2),
]
EDGE_INDEX = torch.tensor(EDGES, dtype=torch.int64).t().contiguous()  # [2, 14]


def randomise_(module: torch.nn.Module) -> None:
    """Overwrite every parameter with random values (uses the current torch RNG)."""
    sd_keys = set(module.state_dict().keys())
    param_names = [n for n, _ in module.named_parameters()]
    assert sd_keys == set(param_names), f"state_dict has non-parameter entries: {sd_keys ^ set(param_names)}"
    norm_modules = {n for n, m in module.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if owner in norm_modules and leaf == "weight":
                new = 1.0 + 0.2 * torch.randn(p.shape)
            elif leaf == "gamma":
                new = 0.5 + 0.3 * torch.randn(p.shape)
            elif leaf == "bias":
                new = 0.1 * torch.randn(p.shape)
            else:
                new = 0.3 * torch.randn(p.shape)
            p.copy_(new.to(torch.float32))


def canonicalise_header(path: str) -> None:
    """Make the file byte-for-byte reproducible.

    safetensors writes ``__metadata__`` from a Rust HashMap, so its key order (and thus
    the file's bytes) changes from run to run.  Rewrite the JSON header with the
    metadata keys sorted; tensor entries, their offsets and the data are untouched
    (offsets are relative to the end of the header).  The header is padded with
    spaces to a multiple of 8 bytes, as safetensors itself does.
    """
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n], object_pairs_hook=OrderedDict)
    header["__metadata__"] = OrderedDict(sorted(header["__metadata__"].items()))
    new = json.dumps(header, separators=(",", ":")).encode("utf-8")
    new += b" " * (-(8 + len(new)) % 8)
    with open(path, "wb") as f:
        f.write(len(new).to_bytes(8, "little") + new + blob[8 + n:])
    os.chmod(path, 0o644)  # save_file creates 0600


def class_path(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def save_case(name, module, import_path, config, seed, tensors):
    """tensors: ordered dict of non-parameter tensors (x, edge_index, out, ...)."""
    out = OrderedDict()
    order = []
    for k in ("x", "edge_index"):
        if k in tensors:
            out[k] = tensors[k]
            order.append(k)
    for k, v in module.state_dict().items():
        out[k] = v
        order.append(k)
    for k in ("out", "alpha", "alpha_edge_index"):
        if k in tensors:
            out[k] = tensors[k]
            order.append(k)
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    meta = {
        "module": class_path(type(module)),
        "constructed_as": import_path,
        "config": json.dumps(config, sort_keys=True),
        "versions": json.dumps(VERSIONS),
        "seed": str(seed),
        "init": INIT_DOC,
        "tensor_order": json.dumps(order),
    }
    path = os.path.join(OUT_DIR, name)
    save_file(out, path, metadata=meta)
    canonicalise_header(path)
    return dict(
        file=name,
        module=meta["module"],
        constructed_as=import_path,
        config=config,
        tensors=[(k, str(out[k].dtype).replace("torch.", ""), list(out[k].shape)) for k in order],
        size=os.path.getsize(path),
    )


# ---------------------------------------------------------------------------
# timm cases
# ---------------------------------------------------------------------------
def timm_attention_case(name, seed, qkv_bias):
    torch.manual_seed(seed)
    config = OrderedDict(
        dim=32, num_heads=4, qkv_bias=qkv_bias, qk_norm=False, proj_bias=True,
        attn_drop=0.0, proj_drop=0.0, head_dim=8, scale=8 ** -0.5,
    )
    m = Attention(dim=32, num_heads=4, qkv_bias=qkv_bias)
    randomise_(m)
    x = torch.randn(2, 9, 32, dtype=torch.float32)
    m = m.eval()
    sd32 = OrderedDict((k, v.clone()) for k, v in m.state_dict().items())
    md = m.double().eval()
    with torch.no_grad():
        out = md(x.double())
    config["fused_attn"] = bool(getattr(m, "fused_attn", False))
    # Put the float32 params back for saving (double() cast in place).
    m.float()
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd32[k])
    return save_case(name, m, "timm.models.vision_transformer.Attention", config, seed,
                     {"x": x, "out": out.double()})


def timm_block_case(name, seed, init_values):
    torch.manual_seed(seed)
    eps = 1e-6
    config = OrderedDict(
        dim=32, num_heads=4, mlp_ratio=4.0, qkv_bias=True, qk_norm=False, proj_bias=True,
        init_values=init_values, drop_path=0.0, proj_drop=0.0, attn_drop=0.0,
        norm_layer="functools.partial(torch.nn.LayerNorm, eps=1e-06)", eps=eps,
        act_layer="torch.nn.GELU (approximate='none', exact erf)",
        mlp_layer="timm.layers.mlp.Mlp", mlp_hidden=128, head_dim=8, scale=8 ** -0.5,
        formula="x = x + ls1(attn(norm1(x))); x = x + ls2(mlp.fc2(gelu(mlp.fc1(norm2(x)))))"
                " (ls = identity when init_values is None)",
    )
    m = Block(dim=32, num_heads=4, mlp_ratio=4.0, qkv_bias=True, init_values=init_values,
              norm_layer=functools.partial(torch.nn.LayerNorm, eps=eps))
    assert m.norm1.eps == eps and m.norm2.eps == eps
    randomise_(m)
    x = torch.randn(2, 9, 32, dtype=torch.float32)
    sd32 = OrderedDict((k, v.clone()) for k, v in m.state_dict().items())
    md = m.double().eval()
    with torch.no_grad():
        out = md(x.double())
    config["fused_attn"] = bool(getattr(m.attn, "fused_attn", False))
    m.float()
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd32[k])
    return save_case(name, m, "timm.models.vision_transformer.Block", config, seed,
                     {"x": x, "out": out.double()})


# ---------------------------------------------------------------------------
# PyG cases
# ---------------------------------------------------------------------------
def pyg_case(name, seed, cls, import_path, kwargs, config_extra):
    torch.manual_seed(seed)
    m = cls(IN_CHANNELS, 5, **kwargs)
    randomise_(m)
    x = torch.randn(NUM_NODES, IN_CHANNELS, dtype=torch.float32)
    sd32 = OrderedDict((k, v.clone()) for k, v in m.state_dict().items())
    md = m.double().eval()
    with torch.no_grad():
        out, (alpha_ei, alpha) = md(x.double(), EDGE_INDEX.clone(), return_attention_weights=True)
    m.float()
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd32[k])
    config = OrderedDict(in_channels=IN_CHANNELS, out_channels=5)
    config.update(kwargs)
    config.update(config_extra)
    return save_case(name, m, import_path, config, seed, {
        "x": x,
        "edge_index": EDGE_INDEX.clone(),
        "out": out.double(),
        "alpha": alpha.double(),
        "alpha_edge_index": alpha_ei.to(torch.int64),
    })


def gat_defaults(**kw):
    d = OrderedDict(heads=3, concat=True, negative_slope=0.2, dropout=0.0, add_self_loops=True,
                    edge_dim=None, fill_value="mean", bias=True, residual=False)
    d.update(kw)
    return d


def gatv2_defaults(**kw):
    d = OrderedDict(heads=3, concat=True, negative_slope=0.2, dropout=0.0, add_self_loops=True,
                    edge_dim=None, fill_value="mean", bias=True, share_weights=False, residual=False)
    d.update(kw)
    return d


def transformer_defaults(**kw):
    d = OrderedDict(heads=3, concat=True, beta=False, dropout=0.0, edge_dim=None, bias=True,
                    root_weight=True)
    d.update(kw)
    return d


CASES = [
    ("timm_attention.safetensors", lambda n, s: timm_attention_case(n, s, qkv_bias=True)),
    ("timm_attention_noqkvbias.safetensors", lambda n, s: timm_attention_case(n, s, qkv_bias=False)),
    ("timm_block.safetensors", lambda n, s: timm_block_case(n, s, init_values=None)),
    ("timm_block_layerscale.safetensors", lambda n, s: timm_block_case(n, s, init_values=0.1)),
    ("gat_concat_selfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATConv, "torch_geometric.nn.GATConv", gat_defaults(concat=True, add_self_loops=True), {})),
    ("gat_concat_noselfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATConv, "torch_geometric.nn.GATConv", gat_defaults(concat=True, add_self_loops=False), {})),
    ("gat_mean_selfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATConv, "torch_geometric.nn.GATConv", gat_defaults(concat=False, add_self_loops=True), {})),
    ("gat_mean_noselfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATConv, "torch_geometric.nn.GATConv", gat_defaults(concat=False, add_self_loops=False), {})),
    ("gat_slope_noselfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATConv, "torch_geometric.nn.GATConv",
        gat_defaults(concat=True, add_self_loops=False, negative_slope=0.1), {})),
    ("gatv2_concat_selfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATv2Conv, "torch_geometric.nn.GATv2Conv", gatv2_defaults(concat=True, add_self_loops=True), {})),
    ("gatv2_mean_noselfloops.safetensors", lambda n, s: pyg_case(
        n, s, GATv2Conv, "torch_geometric.nn.GATv2Conv", gatv2_defaults(concat=False, add_self_loops=False), {})),
    ("transformer_concat.safetensors", lambda n, s: pyg_case(
        n, s, TransformerConv, "torch_geometric.nn.TransformerConv",
        transformer_defaults(concat=True, root_weight=True), {})),
    ("transformer_mean_noroot.safetensors", lambda n, s: pyg_case(
        n, s, TransformerConv, "torch_geometric.nn.TransformerConv",
        transformer_defaults(concat=False, root_weight=False),
        {"note": "lin_skip exists in the state_dict but is NOT used (root_weight=False)"})),
    ("transformer_beta.safetensors", lambda n, s: pyg_case(
        n, s, TransformerConv, "torch_geometric.nn.TransformerConv",
        transformer_defaults(concat=True, root_weight=True, beta=True), {})),
]


def fmt_config(cfg):
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())


def write_readme(rows):
    lines = []
    w = lines.append
    w("# Reference fixtures")
    w("")
    w("Generated by `scripts/make_fixtures.py` (do not edit by hand; this README is written by the script).")
    w("")
    w("```")
    w("python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch timm torch_geometric safetensors numpy")
    w("/tmp/pgvenv/bin/python scripts/make_fixtures.py     # from the repo root; rewrites tests/fixtures/")
    w("/tmp/pgvenv/bin/python scripts/check_fixtures.py    # optional: independent numpy re-derivation")
    w("```")
    w("")
    w("Versions used: " + ", ".join(f"{k} {v}" for k, v in VERSIONS.items()) + " (CPU).")
    w("")
    w("## Conventions")
    w("")
    w("* `x`: float32 input. timm: `[B=2, N=9, C=32]`; PyG: `[8, 6]` node features.")
    w("* `edge_index`: int64 `[2, E]`, row 0 = source j, row 1 = target i (PyG convention).")
    w("* Parameters: float32, stored under their exact PyTorch `state_dict()` names and shapes")
    w("  (`nn.Linear`-style weights are `[out_features, in_features]`, i.e. `y = x @ W^T + b`).")
    w(f"  Init: {INIT_DOC}.")
    w("* `out`: float64, the module's output after `m.double().eval()` on `x.double()`.")
    w("* `alpha`: float64 `[E', H]` from `return_attention_weights=True`;")
    w("  `alpha_edge_index`: int64 `[2, E']`, the edges those weights belong to.")
    w("* safetensors metadata: `module`, `constructed_as`, `config` (JSON), `versions` (JSON),")
    w("  `seed`, `init`, `tensor_order` (JSON list of tensor names in the order listed below).")
    w("")
    w("`scripts/check_fixtures.py` re-derives every `out` and `alpha`/`alpha_edge_index` from the stored")
    w("float32 tensors with plain numpy formulas (no torch); all agree to < 1e-13.")
    w("")
    w("## The graph (all PyG cases)")
    w("")
    w(f"N = {NUM_NODES} nodes, in_channels = {IN_CHANNELS}, E = {len(EDGES)} edges (source -> target, in file order):")
    w("")
    w("`" + ", ".join(f"{s}->{t}" for s, t in EDGES) + "`")
    w("")
    w("* node 7 is isolated; node 5 has only outgoing edges; `0->1` appears twice; `2->2` is a self-loop.")
    w("* With `add_self_loops=True` (GATConv/GATv2Conv), PyG first removes the existing self-loop `2->2`")
    w("  and then appends `i->i` for i = 0..7 at the END, so `alpha_edge_index` has 13 + 8 = 21 edges.")
    w("* With `add_self_loops=False`, and for TransformerConv (which never adds loops),")
    w("  `alpha_edge_index == edge_index` (14 edges, the existing `2->2` kept).")
    w("* The duplicated edge is kept as two separate edges: both get the same `alpha`, and both")
    w("  count in the softmax denominator and the sum (so `0->1` effectively has double weight).")
    w("* A target with no incoming edge (node 5, node 7 when there are no self-loops) receives")
    w("  an all-zero aggregate: GAT/GATv2 `out` = `bias` there; TransformerConv `out` = `lin_skip(x)`")
    w("  (root_weight=True; for beta it is `beta*x_r + (1-beta)*0`) or 0 (root_weight=False).")
    w("")
    w("## Files")
    w("")
    for r in rows:
        w(f"### `{r['file']}` ({r['size']} bytes)")
        w("")
        w(f"* module: `{r['module']}` (constructed as `{r['constructed_as']}`)")
        w(f"* config: `{fmt_config(r['config'])}`")
        w("")
        w("| tensor | dtype | shape |")
        w("| --- | --- | --- |")
        for k, dt, shp in r["tensors"]:
            w(f"| `{k}` | {dt} | {shp} |")
        w("")
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write("\n".join(lines))


IMAGE_CASES = [("bicubic", "chelsea_timm_eval_bicubic.png"), ("bilinear", "chelsea_timm_eval_bilinear.png")]


def image_cases():
    """timm's eval transform (resize shorter side to 256, centre crop 224) on the bundled cat
    photo, up to (not including) ToTensor/Normalize: the 8-bit image Pillow produces, saved as
    PNG (lossless). The Rust test runs its own resize and crop and compares in 8-bit units."""
    import PIL.Image
    import timm.data

    src = os.path.join(REPO, "data", "images", "chelsea.png")
    img = PIL.Image.open(src).convert("RGB")
    lines = ["", "## Image fixtures", ""]
    for interp, name in IMAGE_CASES:
        tf = timm.data.create_transform(input_size=224, interpolation=interp, crop_pct=0.875)
        steps = tf.transforms[:-2]  # Resize, CenterCrop (then ToTensor, Normalize)
        assert [type(t).__name__ for t in tf.transforms[-2:]] in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]), tf
        out = img
        for t in steps:
            out = t(out)
        out.save(os.path.join(OUT_DIR, name))
        lines.append(f"* `{name}`: `data/images/chelsea.png` through timm's "
                     f"`create_transform(input_size=224, interpolation='{interp}', crop_pct=0.875)` "
                     f"up to ToTensor: {' -> '.join(repr(t) for t in steps)}; 8-bit RGB {out.size[0]}x{out.size[1]}.")
    with open(os.path.join(OUT_DIR, "README.md"), "a") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# Whole-model ViT fixtures (tests/fixtures/vit/), `--only vit`
# ---------------------------------------------------------------------------
VIT_DIR = os.path.join(OUT_DIR, "vit")
VIT_BATCH = 2

# The JSON schema the Rust side deserialises (timm VisionTransformer kwarg names, plus `eps`
# for the LayerNorms). Key order here is the order written to NAME.json.
VIT_BASE = OrderedDict(
    img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3,
    mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token", no_embed_class=False,
    fc_norm=None, init_values=None, eps=1e-6,
)

VIT_INIT_DOC = (
    "timm's own init replaced after construction, every parameter: LayerNorm weight = 1 + 0.2*randn, "
    "LayerNorm bias = 0.1*randn; Linear/Conv2d weight = randn / sqrt(fan_in); Linear/Conv2d bias = "
    "0.1*randn; cls_token = 0.5*randn; pos_embed = 0.5*randn; LayerScale gamma = 0.5 + 0.3*randn "
    "(torch RNG seeded with `seed` right before construction)"
)


def vit_config(**kw):
    cfg = OrderedDict(VIT_BASE)
    for k in kw:
        assert k in cfg, k
    cfg.update(kw)
    return cfg


VIT_VARIANTS = [
    ("tiny_token", vit_config()),
    ("no_qkv_bias", vit_config(img_size=24, patch_size=4, embed_dim=32, depth=3, num_heads=4,
                               num_classes=7, qkv_bias=False)),
    ("avg_pool", vit_config(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=2,
                            num_classes=5, global_pool="avg")),
    ("no_class_token", vit_config(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                  num_classes=6, class_token=False, global_pool="avg")),
    ("layer_scale_no_embed_class", vit_config(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                              num_heads=4, num_classes=4, init_values=0.1,
                                              no_embed_class=True)),
    ("mlp_ratio", vit_config(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=6,
                             num_classes=3, mlp_ratio=2.5, eps=1e-12)),
]
# (name, source variant, new img_size): tiny_token's weights through timm's checkpoint_filter_fn.
VIT_RESAMPLED = [("tiny_token_48", "tiny_token", 48), ("tiny_token_16", "tiny_token", 16)]


def build_vit(cfg):
    """timm VisionTransformer with exactly cfg's kwargs; eps goes in through norm_layer."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {k: v for k, v in cfg.items() if k != "eps"}
    m = VisionTransformer(**kwargs, norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg["eps"]))
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert norms and all(n.eps == cfg["eps"] for n in norms), [n.eps for n in norms]
    # What the config implies, checked against what timm built.
    use_fc_norm = cfg["global_pool"] == "avg" if cfg["fc_norm"] is None else cfg["fc_norm"]
    assert isinstance(m.fc_norm, torch.nn.LayerNorm) == use_fc_norm
    assert isinstance(m.norm, torch.nn.LayerNorm) == (not use_fc_norm)
    assert m.blocks[0].mlp.fc1.out_features == int(cfg["embed_dim"] * cfg["mlp_ratio"])
    assert (m.cls_token is not None) == cfg["class_token"]
    grid = cfg["img_size"] // cfg["patch_size"]
    assert m.pos_embed.shape[1] == grid * grid + (0 if cfg["no_embed_class"] else int(cfg["class_token"]))
    return m


def randomise_vit_(m) -> None:
    """Replace every parameter (see VIT_INIT_DOC); uses the current torch RNG."""
    assert set(m.state_dict().keys()) == {n for n, _ in m.named_parameters()}
    owners = dict(m.named_modules())
    with torch.no_grad():
        for name, p in m.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = owners[owner_name]
            if isinstance(owner, torch.nn.LayerNorm):
                new = 1.0 + 0.2 * torch.randn(p.shape) if leaf == "weight" else 0.1 * torch.randn(p.shape)
            elif isinstance(owner, (torch.nn.Linear, torch.nn.Conv2d)):
                if leaf == "weight":
                    new = torch.randn(p.shape) / math.sqrt(p[0].numel())
                else:
                    new = 0.1 * torch.randn(p.shape)
            elif name in ("cls_token", "pos_embed"):
                new = 0.5 * torch.randn(p.shape)
            elif leaf == "gamma":
                new = 0.5 + 0.3 * torch.randn(p.shape)
            else:
                raise AssertionError(f"unexpected parameter {name}")
            p.copy_(new.to(torch.float32))


def vit_outputs(m, x):
    """float32 logits / pre_logits as timm computes them, and the same in float64."""
    with torch.no_grad():
        logits = m(x)
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        assert torch.allclose(m.forward_head(feats), logits, rtol=0, atol=1e-6)
        m64 = copy.deepcopy(m).double()
        logits64 = m64(x.double())
        pre64 = m64.forward_head(m64.forward_features(x.double()), pre_logits=True)
    return logits, pre, logits64, pre64


def save_st(path, tensors, meta):
    tensors = OrderedDict((k, v.detach().clone().contiguous()) for k, v in tensors.items())
    save_file(tensors, path, metadata=meta)
    canonicalise_header(path)
    return [(k, str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in tensors.items()]


def vit_meta(cfg, seed, **extra):
    meta = {
        "module": "timm.models.vision_transformer.VisionTransformer",
        "config": json.dumps(cfg),
        "versions": json.dumps(VERSIONS),
        "seed": str(seed),
        "init": VIT_INIT_DOC,
    }
    meta.update(extra)
    return meta


def write_vit_json(name, cfg):
    path = os.path.join(VIT_DIR, f"{name}.json")
    with open(path, "w") as f:
        f.write(json.dumps(cfg) + "\n")
    return path


def sensitivity(m, x, logits):
    """Smallest max|d logits| over 'set this one parameter tensor to zero': every parameter must matter."""
    worst = (math.inf, None)
    for name, _ in m.named_parameters():
        m2 = copy.deepcopy(m)
        with torch.no_grad():
            dict(m2.named_parameters())[name].zero_()
            d = (m2(x) - logits).abs().max().item()
        worst = min(worst, (d, name))
    return worst


def vit_to_google_npz(sd, cfg, allow_unused=()):
    """Inverse of timm's `_load_weights` (original Google/JAX ViT .npz names, non-big_vision layout).
    Every state_dict entry must be written, except those named in allow_unused."""
    D, H = cfg["embed_dim"], cfg["num_heads"]
    hd = D // H
    used = set()

    def g(k):
        used.add(k)
        return sd[k].detach().clone()

    w = OrderedDict()
    w["embedding/kernel"] = g("patch_embed.proj.weight").permute(2, 3, 1, 0)  # OIHW -> HWIO
    w["embedding/bias"] = g("patch_embed.proj.bias")
    if cfg["class_token"]:
        w["cls"] = g("cls_token")  # [1, 1, D]
    w["Transformer/posembed_input/pos_embedding"] = g("pos_embed")  # [1, N(+1), D]
    for i in range(cfg["depth"]):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"] = g(b + "norm1.weight")
        w[p + "LayerNorm_0/bias"] = g(b + "norm1.bias")
        qkv_w = g(b + "attn.qkv.weight")  # [3D, D], rows q | k | v, each head-major
        qkv_b = g(b + "attn.qkv.bias")
        for j, n in enumerate(("query", "key", "value")):
            w[mha + f"{n}/kernel"] = qkv_w[j * D:(j + 1) * D].t().reshape(D, H, hd)  # [D, H, d]
            w[mha + f"{n}/bias"] = qkv_b[j * D:(j + 1) * D].reshape(H, hd)  # [H, d]
        w[mha + "out/kernel"] = g(b + "attn.proj.weight").reshape(D, H, hd).permute(1, 2, 0)  # [H, d, D]
        w[mha + "out/bias"] = g(b + "attn.proj.bias")
        w[p + "LayerNorm_2/scale"] = g(b + "norm2.weight")
        w[p + "LayerNorm_2/bias"] = g(b + "norm2.bias")
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = g(b + f"mlp.fc{r + 1}.weight").t()  # [in, out]
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = g(b + f"mlp.fc{r + 1}.bias")
    if "norm.weight" in sd:  # identity when fc_norm is used
        w["Transformer/encoder_norm/scale"] = g("norm.weight")
        w["Transformer/encoder_norm/bias"] = g("norm.bias")
    w["head/kernel"] = g("head.weight").t()  # [D, classes]
    w["head/bias"] = g("head.bias")
    assert used | set(allow_unused) == set(sd.keys()), set(sd.keys()) ^ used
    return OrderedDict((k, np.ascontiguousarray(v.numpy().astype(np.float32))) for k, v in w.items())


def bicubic_aa_matrix(n_in, n_out):
    """F.interpolate(mode='bicubic', antialias=True, align_corners=False) along one axis, as a
    [n_out, n_in] matrix: Keys cubic with a = -0.5 (not -0.75), support widened by in/out when
    downsampling, taps outside the input dropped and the row renormalised to sum to 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    a = -0.5

    def cubic(t):
        t = abs(t)
        if t < 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        if t < 2:
            return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return 0.0

    mtx = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        for j in range(n_in):
            mtx[i, j] = cubic((j + 0.5 - centre) / stretch)
        mtx[i] /= mtx[i].sum()
    return mtx


def vit_cases():
    from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

    os.makedirs(VIT_DIR, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float32 reductions then do not depend on the machine's core count
    rows, notes, sources = [], [], {}
    for i, (name, cfg) in enumerate(VIT_VARIANTS):
        seed = 2000 + i
        torch.manual_seed(seed)
        m = build_vit(cfg)
        randomise_vit_(m)
        m.eval()
        x = torch.randn(VIT_BATCH, cfg["in_chans"], cfg["img_size"], cfg["img_size"], dtype=torch.float32)
        logits, pre, logits64, pre64 = vit_outputs(m, x)
        sd = m.state_dict()
        write_vit_json(name, cfg)
        w_tensors = save_st(os.path.join(VIT_DIR, f"{name}.safetensors"), sd, vit_meta(cfg, seed))
        io_tensors = save_st(os.path.join(VIT_DIR, f"{name}.io.safetensors"), OrderedDict(
            input=x, logits=logits, pre_logits=pre, logits_f64=logits64, pre_logits_f64=pre64),
            vit_meta(cfg, seed, fused_attn=str(bool(m.blocks[0].attn.fused_attn))))
        sens = sensitivity(m, x, logits)
        sources[name] = (cfg, sd, m)
        rows.append(dict(name=name, cfg=cfg, seed=seed, weights=w_tensors, io=io_tensors,
                         max_logit=logits.abs().max().item(), f32_vs_f64=(logits.double() - logits64).abs().max().item(),
                         sensitivity=sens, params=sum(p.numel() for p in m.parameters())))

    # Position-embedding resampling through timm's own checkpoint filter.
    for j, (name, src, img) in enumerate(VIT_RESAMPLED):
        src_cfg, src_sd, _ = sources[src]
        cfg = vit_config(**{**src_cfg, "img_size": img})
        seed = 2100 + j
        torch.manual_seed(seed)
        m = build_vit(cfg)  # timm init; every parameter is overwritten by the load below
        filtered = checkpoint_filter_fn(OrderedDict((k, v.clone()) for k, v in src_sd.items()), m)
        res = m.load_state_dict(filtered, strict=True)
        assert not res.missing_keys and not res.unexpected_keys, res
        m.eval()
        pos = m.pos_embed.detach().clone()
        grid_old = src_cfg["img_size"] // src_cfg["patch_size"]
        grid_new = img // cfg["patch_size"]
        assert pos.shape == (1, grid_new * grid_new + 1, cfg["embed_dim"]), pos.shape
        for k, v in src_sd.items():
            if k != "pos_embed":
                assert torch.equal(m.state_dict()[k], v), k
        assert torch.equal(pos[:, :1], src_sd["pos_embed"][:, :1]), "class-token slot must be copied"
        # Independent numpy re-derivation of the resampled grid.
        mtx = bicubic_aa_matrix(grid_old, grid_new)
        old = src_sd["pos_embed"][0, 1:].double().numpy().reshape(grid_old, grid_old, -1)
        new = np.einsum("ia,abc,jb->ijc", mtx, old, mtx).reshape(grid_new * grid_new, -1)
        resample_err = float(np.abs(new - pos[0, 1:].double().numpy()).max())
        assert resample_err < 1e-5, resample_err
        x = torch.randn(VIT_BATCH, cfg["in_chans"], img, img, dtype=torch.float32)
        logits, pre, logits64, pre64 = vit_outputs(m, x)
        write_vit_json(name, cfg)
        io_tensors = save_st(os.path.join(VIT_DIR, f"{name}.io.safetensors"), OrderedDict(
            input=x, logits=logits, pre_logits=pre, logits_f64=logits64, pre_logits_f64=pre64, pos_embed=pos),
            vit_meta(cfg, seed, weights_from=f"{src}.safetensors",
                     resampled_by="timm.models.vision_transformer.checkpoint_filter_fn (bicubic, antialias=True)"))
        rows.append(dict(name=name, cfg=cfg, seed=seed, weights=None, io=io_tensors, source=src,
                         grid=(grid_old, grid_new), resample_err=resample_err,
                         max_logit=logits.abs().max().item(), f32_vs_f64=(logits.double() - logits64).abs().max().item(),
                         sensitivity=None, params=None))

    # Google/JAX .npz naming, checked by loading it back with timm's own _load_weights.
    npz_rows = []
    for name in ("tiny_token", "avg_pool"):
        cfg, sd, src_model = sources[name]
        row = next(r for r in rows if r["name"] == name)
        with safetensors.safe_open(os.path.join(VIT_DIR, f"{name}.io.safetensors"), framework="pt") as f:
            x, want = f.get_tensor("input"), f.get_tensor("logits")
        use_fc_norm = cfg["global_pool"] == "avg" if cfg["fc_norm"] is None else cfg["fc_norm"]
        if use_fc_norm:
            # timm's _load_weights fills `norm` from Transformer/encoder_norm only when `norm` is a
            # LayerNorm, and has no name for `fc_norm` (the original JAX GAP ViT normalises BEFORE
            # pooling, i.e. timm's global_pool='avg' with fc_norm=False). Show it: write every other
            # tensor under its Google name, load, and list what _load_weights left at timm's init.
            w = vit_to_google_npz(sd, cfg, allow_unused=("fc_norm.weight", "fc_norm.bias"))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"{name}.npz")
                np.savez(path, **w)
                torch.manual_seed(9999)
                fresh = build_vit(cfg)
                _load_weights(fresh, path)
            left = [k for k, v in sd.items() if not torch.equal(fresh.state_dict()[k], v)]
            assert left == ["fc_norm.weight", "fc_norm.bias"], left
            notes.append(f"`{name}.npz` not written: timm's `_load_weights` cannot load this config. It "
                         f"has no Google name for `fc_norm` (global_pool='avg' puts the final LayerNorm "
                         f"after pooling) and leaves {left} at timm's init (checked by loading an npz of "
                         f"all the other tensors); the original JAX GAP ViT normalises before pooling "
                         f"(timm global_pool='avg', fc_norm=False).")
            continue
        w = vit_to_google_npz(sd, cfg)
        path = os.path.join(VIT_DIR, f"{name}.npz")
        np.savez(path, **w)
        os.chmod(path, 0o644)
        torch.manual_seed(9999)
        fresh = build_vit(cfg)  # timm's init: differs from the fixture's weights everywhere
        fresh.eval()
        assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())
        _load_weights(fresh, path)
        mismatched = [k for k, v in sd.items() if not torch.equal(fresh.state_dict()[k], v)]
        assert not mismatched, f"_load_weights did not reproduce {mismatched}"
        with torch.no_grad():
            got = fresh(x)
        diff = (got - want).abs().max().item()
        assert diff == 0.0, diff
        npz_rows.append(dict(file=f"{name}.npz", source=name, keys=[(k, list(v.shape)) for k, v in w.items()],
                             load_diff=diff, size=os.path.getsize(path)))
    torch.set_num_threads(prev_threads)
    write_vit_readme(rows, npz_rows, notes)
    return rows, npz_rows, notes


def vit_files(r):
    names = [f"{r['name']}.json"]
    if r["weights"] is not None:
        names.append(f"{r['name']}.safetensors")
    names.append(f"{r['name']}.io.safetensors")
    return [(n, os.path.getsize(os.path.join(VIT_DIR, n))) for n in names]


def write_vit_readme(rows, npz_rows, notes):
    lines = []
    w = lines.append
    w("# Whole-model ViT fixtures")
    w("")
    w("Generated by `scripts/make_fixtures.py --only vit` (do not edit by hand; this README is written by")
    w("the script, which leaves the other fixtures in `tests/fixtures/` alone).")
    w("")
    w("```")
    w("python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch timm torch_geometric safetensors numpy")
    w("/tmp/pgvenv/bin/python scripts/make_fixtures.py --only vit     # from the repo root; rewrites tests/fixtures/vit/")
    w("```")
    w("")
    w("Versions used: " + ", ".join(f"{k} {v}" for k, v in VERSIONS.items()) + " (CPU, `torch.set_num_threads(1)`).")
    w("")
    w("## Files per variant NAME")
    w("")
    w("* `NAME.json`: the config, one JSON object with exactly these keys (timm `VisionTransformer` kwarg")
    w("  names; `eps` is the LayerNorm epsilon, passed as `norm_layer=partial(torch.nn.LayerNorm, eps=eps)`):")
    w("  `" + json.dumps(VIT_BASE) + "`.")
    w("  `fc_norm: null` = timm's rule (a LayerNorm after pooling iff `global_pool == \"avg\"`, and then the")
    w("  final `norm` is an identity); `init_values: null` = no LayerScale. The model is")
    w("  `timm.models.vision_transformer.VisionTransformer(**config_without_eps, norm_layer=...)`; everything")
    w("  not in the JSON is timm's default (GELU erf, `proj_bias=True`, no qk_norm, no reg tokens, no pre-norm).")
    w("* `NAME.safetensors`: `model.state_dict()`, float32, timm key names and shapes, contiguous")
    w("  (`nn.Linear` weights `[out, in]`; `patch_embed.proj.weight` `[D, 3, p, p]` OIHW;")
    w("  `blocks.i.attn.qkv.weight` `[3D, D]`, rows q | k | v, each split head-major into H heads of d = D/H).")
    w(f"  Init: {VIT_INIT_DOC}.")
    w("* `NAME.io.safetensors`:")
    w(f"  * `input` float32 `[B={VIT_BATCH}, 3, img, img]`, standard normal;")
    w("  * `logits` float32 `[B, num_classes]` = `model.eval()(input)` under `torch.no_grad()` (float32, timm's")
    w("    fused SDPA attention path, 1 thread);")
    w("  * `pre_logits` float32 `[B, D]` = `model.forward_head(model.forward_features(input), pre_logits=True)`;")
    w("  * `logits_f64`, `pre_logits_f64` float64: the same with `model.double()` on `input.double()`, i.e. the")
    w("    float64-accurate answer for exactly the stored float32 weights and input (useful for a tight tolerance);")
    w("  * resampled cases only: `pos_embed` float32 `[1, 1 + g*g, D]`, the model's `pos_embed` after the load.")
    w("* safetensors metadata (str -> str) on both files: `module`, `config` (JSON), `versions` (JSON), `seed`,")
    w("  `init`; the io file of a resampled case also has `weights_from` and `resampled_by`.")
    w("")
    w("## Position-embedding resampling (`tiny_token_48`, `tiny_token_16`)")
    w("")
    w("No weights file of their own: they use `tiny_token.safetensors`. The script builds the timm model at")
    w("the new `img_size`, runs `checkpoint_filter_fn(tiny_token_state_dict, model)` and")
    w("`model.load_state_dict(..., strict=True)`. timm's filter calls `resample_abs_pos_embed(pos_embed,")
    w("new_size=grid, num_prefix_tokens=1, interpolation='bicubic', antialias=True)`: the class-token row is")
    w("kept as is; the g0 x g0 grid (rows in raster order) goes through `F.interpolate(mode='bicubic',")
    w("antialias=True, align_corners=False)`. NOTE: with `antialias=True` PyTorch uses the anti-aliasing")
    w("(Pillow-style) kernel even when upsampling: Keys cubic with **a = -0.5** (not the -0.75 of plain")
    w("bicubic), taps outside the input dropped and each output's weights renormalised to sum to 1 (no edge")
    w("clamping); when downsampling the kernel is stretched by in/out. Output i's centre is `(i + 0.5) * in/out`")
    w("in input pixel units; weight of input j = `cubic((j + 0.5 - centre) / max(in/out, 1))`. The script")
    w("re-derives the resampled grid this way in numpy (separable, float64) and asserts it matches timm's.")
    w("")
    w("## Google/JAX `.npz` naming")
    w("")
    w("`tiny_token.npz` holds `tiny_token.safetensors`'s weights under the original Google ViT names, float32,")
    w("written with `np.savez` (the inverse of timm's `_load_weights`). The script loads it into a freshly")
    w("initialised timm model with `timm.models.vision_transformer._load_weights(model, path)`, asserts every")
    w("state_dict entry equals the fixture's bit for bit and that the logits on `tiny_token.io.safetensors`'s")
    w("input equal the fixture's `logits` (max difference 0). Mapping (D = embed_dim, H heads, d = D/H):")
    w("")
    w("| npz key | shape | timm tensor |")
    w("| --- | --- | --- |")
    w("| `embedding/kernel` | [p, p, 3, D] (HWIO) | `patch_embed.proj.weight.permute(2, 3, 1, 0)` |")
    w("| `embedding/bias` | [D] | `patch_embed.proj.bias` |")
    w("| `cls` | [1, 1, D] | `cls_token` |")
    w("| `Transformer/posembed_input/pos_embedding` | [1, 1 + g*g, D] | `pos_embed` |")
    w("| `Transformer/encoderblock_{i}/LayerNorm_0/scale`, `bias` | [D] | `blocks.i.norm1.weight`, `bias` |")
    w("| `.../MultiHeadDotProductAttention_1/{query,key,value}/kernel` | [D, H, d] | `qkv.weight[j*D:(j+1)*D].T.reshape(D, H, d)` (j = 0, 1, 2) |")
    w("| `.../MultiHeadDotProductAttention_1/{query,key,value}/bias` | [H, d] | `qkv.bias[j*D:(j+1)*D].reshape(H, d)` |")
    w("| `.../MultiHeadDotProductAttention_1/out/kernel` | [H, d, D] | `attn.proj.weight.reshape(D, H, d).permute(1, 2, 0)` |")
    w("| `.../MultiHeadDotProductAttention_1/out/bias` | [D] | `attn.proj.bias` |")
    w("| `Transformer/encoderblock_{i}/LayerNorm_2/scale`, `bias` | [D] | `blocks.i.norm2.weight`, `bias` |")
    w("| `.../MlpBlock_3/Dense_0/kernel`, `bias` | [D, hidden], [hidden] | `mlp.fc1.weight.T`, `mlp.fc1.bias` |")
    w("| `.../MlpBlock_3/Dense_1/kernel`, `bias` | [hidden, D], [D] | `mlp.fc2.weight.T`, `mlp.fc2.bias` |")
    w("| `Transformer/encoder_norm/scale`, `bias` | [D] | `norm.weight`, `norm.bias` |")
    w("| `head/kernel`, `head/bias` | [D, classes], [classes] | `head.weight.T`, `head.bias` |")
    w("")
    w("The `.npz` is an uncompressed zip whose members are named `KEY.npy` (e.g. `embedding/kernel.npy`, the")
    w("`/` kept inside the member name); numpy 2's `np.savez` stamps every member 1980-01-01, so re-running the")
    w("script reproduces it byte for byte (as it does the safetensors files).")
    for n in notes:
        w("")
        w(n)
    w("")
    w("## Fixtures")
    w("")
    for r in rows:
        cfg = r["cfg"]
        w(f"### `{r['name']}`")
        w("")
        w(f"* config: `{json.dumps(cfg)}`")
        if r.get("source"):
            g0, g1 = r["grid"]
            w(f"* weights: `{r['source']}.safetensors`, pos_embed grid {g0}x{g0} -> {g1}x{g1} by timm's")
            w(f"  `checkpoint_filter_fn` (numpy re-derivation max |diff| {r['resample_err']:.1e})")
        else:
            w(f"* seed {r['seed']}, {r['params']} parameters; zeroing any single parameter tensor moves the")
            w(f"  logits by at least {r['sensitivity'][0]:.3f} (least: `{r['sensitivity'][1]}`)")
        w(f"* max |logit| {r['max_logit']:.3f}; float32 `logits` vs `logits_f64`: max |diff| {r['f32_vs_f64']:.1e}")
        w("* files: " + ", ".join(f"`{n}` ({s} bytes)" for n, s in vit_files(r)))
        w("")
        w("| io tensor | dtype | shape |")
        w("| --- | --- | --- |")
        for k, dt, shp in r["io"]:
            w(f"| `{k}` | {dt} | {shp} |")
        w("")
    for r in npz_rows:
        w(f"### `{r['file']}` ({r['size']} bytes)")
        w("")
        w(f"* `{r['source']}.safetensors` under Google names, {len(r['keys'])} arrays; loaded back by timm's")
        w(f"  `_load_weights`: logits max |diff| {r['load_diff']}")
        w("")
    with open(os.path.join(VIT_DIR, "README.md"), "w") as f:
        f.write("\n".join(lines))


def print_vit(rows, npz_rows, notes):
    for r in rows:
        sizes = ", ".join(f"{n} {s} B" for n, s in vit_files(r))
        extra = (f"resample {r['grid'][0]}->{r['grid'][1]} numpy err {r['resample_err']:.1e}" if r.get("source")
                 else f"min zero-one-param effect {r['sensitivity'][0]:.3f} ({r['sensitivity'][1]})")
        print(f"{r['name']:<28} max|logit| {r['max_logit']:7.3f}  f32-f64 {r['f32_vs_f64']:.1e}  {extra}")
        print(f"    {sizes}")
    for r in npz_rows:
        print(f"{r['file']:<28} {r['size']} B, {len(r['keys'])} arrays; timm _load_weights -> logits max |diff| {r['load_diff']}")
    for n in notes:
        print(f"note: {n}")


VIT_GRAD_CASES = ("tiny_token", "avg_pool", "layer_scale_no_embed_class")
VIT_GRAD_SMOOTHING = 0.1


def vit_grad_cases():
    """`--only grad`: for each of VIT_GRAD_CASES, timm's model with the fixture's weights, in
    float64, on the fixture's input batch with targets (3, 7) mod classes: the cross-entropy with
    label smoothing 0.1 (mean over the batch) and the gradient of every parameter, written to
    tests/fixtures/vit/NAME.grad.safetensors as `loss` [1], `targets` [B] (int64) and
    `grad.<parameter name>` (float64, timm's names and shapes)."""
    from safetensors.torch import load_file

    torch.set_grad_enabled(True)
    for name in VIT_GRAD_CASES:
        cfg = json.load(open(os.path.join(VIT_DIR, f"{name}.json")))
        m = build_vit(cfg)
        m.load_state_dict(load_file(os.path.join(VIT_DIR, f"{name}.safetensors")), strict=True)
        m = m.double().eval()
        x = load_file(os.path.join(VIT_DIR, f"{name}.io.safetensors"))["input"].double()
        targets = torch.tensor([3, 7], dtype=torch.int64)[: x.shape[0]] % cfg["num_classes"]
        loss = torch.nn.functional.cross_entropy(m(x), targets, label_smoothing=VIT_GRAD_SMOOTHING)
        loss.backward()
        tensors = OrderedDict(loss=loss.detach().reshape(1), targets=targets)
        for pname, p in m.named_parameters():
            tensors[f"grad.{pname}"] = p.grad.detach()
        path = os.path.join(VIT_DIR, f"{name}.grad.safetensors")
        save_st(path, tensors, vit_meta(cfg, 0, loss="F.cross_entropy(label_smoothing=0.1), float64",
                                         weights_from=f"{name}.safetensors", input_from=f"{name}.io.safetensors"))
        print(f"{path}: loss {loss.item():.6f}, {len(tensors) - 2} gradients, {os.path.getsize(path)} bytes")
    torch.set_grad_enabled(False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("layers", "vit", "grad"), default=None,
                    help="layers: tests/fixtures/*.safetensors, its README.md and the image fixtures; "
                         "vit: tests/fixtures/vit/ only; grad: the ViT gradient fixtures "
                         "tests/fixtures/vit/*.grad.safetensors (default: layers and vit)")
    args = ap.parse_args()
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.set_grad_enabled(False)
    if args.only in (None, "layers"):
        rows = []
        for i, (name, fn) in enumerate(CASES):
            seed = 1000 + i
            rows.append(fn(name, seed))
        write_readme(rows)
        image_cases()
        for r in rows:
            print(f"{r['file']}  ({r['size']} bytes)  {r['module']}")
            print(f"    config: {fmt_config(r['config'])}")
            for k, dt, shp in r["tensors"]:
                print(f"    {k:24s} {dt:8s} {shp}")
    if args.only in (None, "vit"):
        print_vit(*vit_cases())
    if args.only == "grad":
        vit_grad_cases()
    print("versions:", json.dumps(VERSIONS))


if __name__ == "__main__":
    main()
