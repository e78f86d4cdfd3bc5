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

Install the dependencies (outside the repo; CPU is enough)::

    python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch timm torch_geometric safetensors numpy

Run from the repository root::

    /tmp/pgvenv/bin/python scripts/make_fixtures.py

Then optionally verify the files independently with numpy::

    /tmp/pgvenv/bin/python scripts/check_fixtures.py
"""

import functools
import json
import os
import platform
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


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.set_grad_enabled(False)
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
    print("versions:", json.dumps(VERSIONS))


if __name__ == "__main__":
    main()
