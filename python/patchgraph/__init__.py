"""patchgraph: Vision Transformers and graph attention networks as one attention algebra over
patch graphs, with Rust kernels, NumPy arrays in and out, and PyTorch autograd (``patchgraph.torch``).

An image is a graph whose nodes are its patches; ViT self-attention is graph attention on the
complete graph with self-loops. Every function here runs the same Rust code as the ``patchgraph``
command (the GIL released while it runs) and returns data: NumPy arrays, ``Graph`` objects and
plain dicts.

>>> import numpy as np, patchgraph as pg
>>> g = pg.Graph.from_spec("grid8:1", 4, 4, class_token=True)
>>> x = np.random.default_rng(0).standard_normal((17, 8), dtype=np.float32)
>>> out, lse, _ = pg.attend(g, x, x, x, heads=2)
>>> out.shape, lse.shape
((17, 8), (17, 2))

Errors from Rust arrive as ``ValueError`` (bad shapes, indices, configs, checkpoints),
``TypeError`` (a wrong dtype), ``FileNotFoundError`` or ``OSError``, with Rust's message.
"""

from __future__ import annotations

import json as _json
import os as _os
from typing import Any, Dict, Iterable, Optional, Sequence, Union

from . import _core
from ._core import (
    Graph,
    Layer,
    Vit,
    __version__,
    attend,
    attend64,
    attend_backward,
    attend_backward64,
    init_threads,
    load_dataset,
    num_threads,
)

__all__ = [
    "Graph",
    "Layer",
    "Vit",
    "attend",
    "attend_backward",
    "attend64",
    "attend_backward64",
    "load_dataset",
    "init_threads",
    "num_threads",
    "graph",
    "attention",
    "convert",
    "embed",
    "infer",
    "train",
    "bench",
    "plot",
    "__version__",
]

PathLike = Union[str, "_os.PathLike[str]"]


def _flags(kwargs: Dict[str, Any]) -> list:
    """Command-line flags from keyword arguments, as the ``patchgraph`` command spells them:
    ``img_size=384`` -> ``--img-size 384``; ``True`` -> the bare flag; ``False``/``None`` -> left
    out; a list -> the flag once per value."""
    argv = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, _os.fspath(v) if isinstance(v, _os.PathLike) else str(v)]
        else:
            argv += [flag, _os.fspath(value) if isinstance(value, _os.PathLike) else str(value)]
    return argv


def _run(name: str, positional: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    threads = kwargs.pop("threads", None)
    allow_nonfinite = bool(kwargs.pop("allow_nonfinite", False))
    verbose = bool(kwargs.pop("verbose", name in ("train", "bench")))
    argv = [_os.fspath(p) if isinstance(p, _os.PathLike) else str(p) for p in positional] + _flags(kwargs)
    text, graph_obj = _core.run_command(name, argv, threads=threads, allow_nonfinite=allow_nonfinite, verbose=verbose)
    report = _json.loads(text)
    if graph_obj is not None:
        report["graph"] = graph_obj
    return report


def graph(image: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph graph IMAGE``: the photo's patch graph (``report["graph"]``, a :class:`Graph`)
    and its statistics; ``graph="fknn:9:2"``, ``patch=16``, ``class_token=True``, ``dot=...``,
    ``out=...`` as the command's flags."""
    return _run("graph", [image], kwargs)


def attention(checkpoint: PathLike, image: Optional[PathLike] = None, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph attention``: one query's attention (or the rollout) over the patches,
    ``report["values"]`` (``grid x grid``, row-major); the picture goes to ``out=``."""
    positional = [image] if image is not None else []
    return _run("attention", positional, dict(checkpoint=checkpoint, **kwargs))


def convert(checkpoint: PathLike, out: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph convert``: a ViT checkpoint (timm, Google ``.npz``, PyTorch ``.pth`` of
    timm / DeiT / DINO / MAE / CLIP) written under ``to="timm"`` (default), ``"clip"`` or
    ``"google"`` names (``.safetensors`` or ``.npz``); ``arch=`` or ``config=``."""
    return _run("convert", [], dict(checkpoint=checkpoint, out=out, **kwargs))


def infer(inputs: Union[PathLike, Iterable[PathLike]], checkpoint: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph infer``: classify images or prepared tensors; every result carries its
    ``logits`` and ``top`` classes; ``graph=``, ``compare=True`` as the command."""
    if isinstance(inputs, (str, bytes, _os.PathLike)):
        inputs = [inputs]
    return _run("infer", list(inputs), dict(checkpoint=checkpoint, **kwargs))


def embed(inputs: Union[PathLike, Iterable[PathLike]], checkpoint: PathLike, out: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph embed``: one embedding per image (a folder's images, or files) written to
    ``out`` (``.npy`` or ``.safetensors``); ``graph=``, ``compare=True`` (cosine per image to the
    complete graph), ``norm="clip"``, ``crop_pct=1.0`` as the command."""
    if isinstance(inputs, (str, bytes, _os.PathLike)):
        inputs = [inputs]
    return _run("embed", list(inputs), dict(checkpoint=checkpoint, out=out, **kwargs))


def train(data: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph train``: every epoch's metrics in ``report["metrics"]``; ``model=``,
    ``graph=``, ``epochs=``, ``out=`` as the command; ``verbose=False`` silences the epoch lines."""
    return _run("train", [], dict(data=data, **kwargs))


def bench(**kwargs: Any) -> Dict[str, Any]:
    """``patchgraph bench``: the timing records (``report["records"]``)."""
    return _run("bench", [], kwargs)


def plot(out: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """``patchgraph plot``: ``bench=`` (and ``peers=``) or ``metrics=[...]`` into ``out``."""
    return _run("plot", [], dict(out=out, **kwargs))
