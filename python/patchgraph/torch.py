"""patchgraph inside PyTorch: graph attention as an autograd function whose backward is
patchgraph's, drop-in modules for PyG's ``GATConv`` / ``GATv2Conv`` / ``TransformerConv``, and a
patch that runs a timm ViT's attention on any patch graph.

CPU tensors only. float32 tensors run the fast kernels, read in place when contiguous (a
contiguous copy otherwise) and come back without a copy; float64 tensors run the plain f64
loops (for ``torch.autograd.gradcheck``).

>>> import torch, patchgraph as pg
>>> from patchgraph.torch import graph_attention
>>> g = pg.Graph.complete(5)
>>> q = torch.randn(5, 8, requires_grad=True)
>>> out = graph_attention(q, q, q, g, heads=2)
>>> out.sum().backward()
>>> q.grad.shape
torch.Size([5, 8])
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import Graph, _core

__all__ = [
    "graph_attention",
    "as_graph",
    "GATConv",
    "GATv2Conv",
    "TransformerConv",
    "patch_timm_vit",
    "vit_graph",
]


def _np(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A CPU tensor as a NumPy array sharing its memory (a contiguous copy when it is not)."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"patchgraph runs on the CPU; got a tensor on {t.device}")
    return t.detach().contiguous().numpy()


def as_graph(graph: Union[Graph, Tensor, np.ndarray], num_nodes: Optional[int] = None) -> Graph:
    """A :class:`patchgraph.Graph` from a Graph (returned as is) or PyG's ``edge_index`` (int64
    ``[2, E]`` tensor or array; its edge order is kept for biases and attention weights)."""
    if isinstance(graph, Graph):
        return graph
    if isinstance(graph, Tensor):
        if graph.dtype != torch.int64:
            raise TypeError(f"edge_index: expected torch.int64 (PyG's dtype), got {graph.dtype}")
        graph = _np(graph)
    return Graph.from_edge_index(graph, num_nodes)


class _GraphAttention(torch.autograd.Function):
    """``out = attend(graph, q, k, v)`` with patchgraph's forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, attention, graph, heads, score, scale, negative_slope):  # noqa: D102
        f64 = q.dtype == torch.float64
        for name, t in (("k", k), ("v", v), ("bias", bias), ("attention", attention)):
            if t is not None and t.dtype != q.dtype:
                raise TypeError(f"{name}: dtype {t.dtype}, but q is {q.dtype}")
        if q.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"q: expected float32 (or float64 for gradcheck), got {q.dtype}")
        args = dict(score=score, scale=scale, attention=_np(attention), negative_slope=negative_slope, bias=_np(bias))
        if f64:
            out, lse = _core.attend64(graph, _np(q), _np(k), _np(v), heads, **args)
        else:
            out, lse, _ = _core.attend(graph, _np(q), _np(k), _np(v), heads, **args)
        ctx.graph, ctx.heads, ctx.score, ctx.scale, ctx.slope = graph, heads, score, scale, negative_slope
        lse_t = torch.from_numpy(lse)
        ctx.save_for_backward(q, k, v, bias, attention, lse_t)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        q, k, v, bias, attention, lse = ctx.saved_tensors
        f64 = q.dtype == torch.float64
        fn = _core.attend_backward64 if f64 else _core.attend_backward
        dq, dk, dv, dbias, da = fn(
            ctx.graph, _np(q), _np(k), _np(v), ctx.heads, _np(lse), _np(dout.to(q.dtype)),
            score=ctx.score, scale=ctx.scale, attention=_np(attention), negative_slope=ctx.slope, bias=_np(bias),
        )
        grads = [torch.from_numpy(dq), torch.from_numpy(dk), torch.from_numpy(dv)]
        grads.append(torch.from_numpy(dbias) if (bias is not None and dbias is not None) else None)
        grads.append(torch.from_numpy(da).reshape(attention.shape) if (attention is not None and da is not None) else None)
        return (*grads, None, None, None, None, None)


def graph_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: Union[Graph, Tensor],
    heads: int,
    score: str = "dot",
    scale: Optional[float] = None,
    attention: Optional[Tensor] = None,
    negative_slope: float = 0.2,
    bias: Optional[Tensor] = None,
    num_nodes: Optional[int] = None,
) -> Tensor:
    """The attention algebra over ``graph`` (a :class:`Graph` or an ``edge_index``):
    ``q``, ``k`` ``[N, H*dk]``, ``v`` ``[N, H*dv]`` -> ``[N, H*dv]``, differentiable in q, k, v,
    ``bias`` (``[E, H]``, the graph's edge order) and GATv2's ``attention`` (``[H*d]``).
    ``score``: ``"dot"`` (``scale`` defaults to ``1/sqrt(dk)``), ``"gat"``, ``"gatv2"``."""
    g = as_graph(graph, num_nodes if num_nodes is not None else q.shape[0])
    return _GraphAttention.apply(q, k, v, bias, attention, g, heads, score, scale, negative_slope)


def _glorot(t: Tensor) -> None:
    # PyG's glorot: uniform(-a, a), a = sqrt(6 / (fan_in + fan_out)) over the last two dims.
    a = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
    with torch.no_grad():
        t.uniform_(-a, a)


def _pyg_self_loops(edge_index: Tensor, num_nodes: int) -> Tensor:
    """PyG's ``add_self_loops(remove_self_loops(edge_index))``: the given edges without
    self-loops, then one self-loop per node, in node order."""
    keep = edge_index[0] != edge_index[1]
    loops = torch.arange(num_nodes, dtype=edge_index.dtype).repeat(2, 1)
    return torch.cat([edge_index[:, keep], loops], dim=1)


def _edge_index_of(graph: Union[Graph, Tensor], num_nodes: int) -> Tensor:
    if isinstance(graph, Graph):
        return torch.from_numpy(graph.edge_index())
    if graph.dtype != torch.int64:
        raise TypeError(f"edge_index: expected torch.int64 (PyG's dtype), got {graph.dtype}")
    return graph


class _PygAttentionBase(nn.Module):
    def _warn_dropout(self) -> None:
        if self.training and getattr(self, "dropout", 0.0) > 0.0 and not getattr(self, "_warned", False):
            warnings.warn(
                f"{type(self).__name__}: dropout={self.dropout} on the attention weights is not applied "
                "(patchgraph's kernel computes the softmax and the sum in one pass)",
                stacklevel=3,
            )
            self._warned = True


class GATConv(_PygAttentionBase):
    """PyG's ``GATConv`` with patchgraph's edge softmax and aggregation: the same constructor,
    parameter names and shapes (``lin.weight``, ``att_src``, ``att_dst``, ``bias``: a PyG
    state dict loads as it is), ``forward(x, edge_index, return_attention_weights=None)``.
    ``edge_dim`` and ``residual`` are not supported; attention dropout is not applied."""

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value="mean", bias: bool = True, residual: bool = False):
        super().__init__()
        if edge_dim is not None or residual:
            raise ValueError("GATConv: edge_dim and residual are not supported by patchgraph's layer")
        if not isinstance(in_channels, int):
            raise ValueError("GATConv: in_channels must be an int (bipartite layers are not supported)")
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.dropout, self.add_self_loops = negative_slope, dropout, add_self_loops
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _glorot(self.lin.weight)
        _glorot(self.att_src)
        _glorot(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Union[Graph, Tensor], return_attention_weights: Optional[bool] = None):
        self._warn_dropout()
        n, h, c = x.shape[0], self.heads, self.out_channels
        ei = _edge_index_of(edge_index, n)
        if self.add_self_loops:
            ei = _pyg_self_loops(ei, n)
        g = Graph.from_edge_index(_np(ei), n)
        wh = self.lin(x)  # [N, H*C]
        whh = wh.view(n, h, c)
        alpha_src = (whh * self.att_src).sum(-1)  # [N, H]
        alpha_dst = (whh * self.att_dst).sum(-1)
        out = _GraphAttention.apply(alpha_dst.contiguous(), alpha_src.contiguous(), wh.contiguous(), None, None, g, h,
                                    "gat", None, self.negative_slope)
        out = out if self.concat else out.view(n, h, c).mean(1)
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights:
            return out, (ei, _weights(g, alpha_dst, alpha_src, wh, h, "gat", None, self.negative_slope))
        return out


class GATv2Conv(_PygAttentionBase):
    """PyG's ``GATv2Conv`` with patchgraph's kernels: ``lin_l``, ``lin_r`` (absent with
    ``share_weights``), ``att``, ``bias`` as PyG's."""

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value="mean", bias: bool = True,
                 share_weights: bool = False, residual: bool = False):
        super().__init__()
        if edge_dim is not None or residual:
            raise ValueError("GATv2Conv: edge_dim and residual are not supported by patchgraph's layer")
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.dropout, self.add_self_loops = negative_slope, dropout, add_self_loops
        self.share_weights = share_weights
        self.lin_l = nn.Linear(in_channels, heads * out_channels, bias=bias)
        self.lin_r = self.lin_l if share_weights else nn.Linear(in_channels, heads * out_channels, bias=bias)
        self.att = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in {self.lin_l, self.lin_r}:
            _glorot(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        _glorot(self.att)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Union[Graph, Tensor], return_attention_weights: Optional[bool] = None):
        self._warn_dropout()
        n, h, c = x.shape[0], self.heads, self.out_channels
        ei = _edge_index_of(edge_index, n)
        if self.add_self_loops:
            ei = _pyg_self_loops(ei, n)
        g = Graph.from_edge_index(_np(ei), n)
        xl, xr = self.lin_l(x), self.lin_r(x)
        att = self.att.reshape(-1)
        out = _GraphAttention.apply(xr.contiguous(), xl.contiguous(), xl.contiguous(), None, att, g, h, "gatv2", None,
                                    self.negative_slope)
        out = out if self.concat else out.view(n, h, c).mean(1)
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights:
            return out, (ei, _weights(g, xr, xl, xl, h, "gatv2", att, self.negative_slope))
        return out


class TransformerConv(_PygAttentionBase):
    """PyG's ``TransformerConv`` with patchgraph's kernels: ``lin_key``, ``lin_query``,
    ``lin_value``, ``lin_skip`` and (with ``beta``) ``lin_beta`` as PyG's."""

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 beta: bool = False, dropout: float = 0.0, edge_dim: Optional[int] = None, bias: bool = True,
                 root_weight: bool = True):
        super().__init__()
        if edge_dim is not None:
            raise ValueError("TransformerConv: edge_dim is not supported by patchgraph's layer")
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.beta, self.dropout, self.root_weight = beta and root_weight, dropout, root_weight
        hc = heads * out_channels
        self.lin_key = nn.Linear(in_channels, hc, bias=bias)
        self.lin_query = nn.Linear(in_channels, hc, bias=bias)
        self.lin_value = nn.Linear(in_channels, hc, bias=bias)
        self.lin_skip = nn.Linear(in_channels, hc if concat else out_channels, bias=bias)
        self.lin_beta = nn.Linear(3 * (hc if concat else out_channels), 1, bias=False) if self.beta else None

    def forward(self, x: Tensor, edge_index: Union[Graph, Tensor], return_attention_weights: Optional[bool] = None):
        self._warn_dropout()
        n, h, c = x.shape[0], self.heads, self.out_channels
        ei = _edge_index_of(edge_index, n)
        g = Graph.from_edge_index(_np(ei), n)
        q, k, v = self.lin_query(x), self.lin_key(x), self.lin_value(x)
        out = _GraphAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), None, None, g, h, "dot",
                                    1.0 / math.sqrt(c), 0.2)
        out = out if self.concat else out.view(n, h, c).mean(1)
        if self.root_weight:
            x_r = self.lin_skip(x)
            if self.lin_beta is not None:
                b = torch.sigmoid(self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1)))
                out = b * x_r + (1 - b) * out
            else:
                out = out + x_r
        if return_attention_weights:
            return out, (ei, _weights(g, q, k, v, h, "dot", None, 0.2, scale=1.0 / math.sqrt(c)))
        return out


def _weights(g: Graph, q: Tensor, k: Tensor, v: Tensor, heads: int, score: str, attention, slope: float,
             scale: Optional[float] = None) -> Tensor:
    """The attention weights ``[E, H]`` in the graph's edge order (not differentiable)."""
    with torch.no_grad():
        _, _, w = _core.attend(g, _np(q.float()), _np(k.float()), _np(v.float()), heads, score=score, scale=scale,
                               attention=_np(attention.float()) if attention is not None else None,
                               negative_slope=slope, return_weights=True)
    return torch.from_numpy(w)


# ----- timm -----------------------------------------------------------------------------------

def vit_graph(spec: str, grid: Tuple[int, int], prefix_tokens: int, batch: int,
              features: Optional[Tensor] = None) -> Graph:
    """The batch graph of a ViT layer: ``spec`` on a ``grid`` of patches with ``prefix_tokens``
    global tokens in front (timm's class and register tokens, each linked both ways to every
    token), ``batch`` images as a disjoint union. Feature-dependent specs (``fknn``, ``lsh``)
    are built per image from ``features`` ``[B, N, D]`` (the layer's input, prefix tokens
    included; the patches' rows are used), as patchgraph's own ViT builds them from ``norm1``."""
    if Graph.spec_needs_features(spec):
        if features is None:
            raise ValueError(f"`{spec}` is built from node features: pass features [B, N, D]")
        patches = features.detach()[:, prefix_tokens:, :].float()
        return Graph.disjoint_union([
            Graph.from_spec(spec, grid[0], grid[1], features=_np(patches[i]), prefix_tokens=prefix_tokens)
            for i in range(patches.shape[0])
        ])
    one = Graph.from_spec(spec, grid[0], grid[1], prefix_tokens=prefix_tokens)
    return Graph.disjoint_union([one] * batch)


def _patchgraph_attention_forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
    """timm ``Attention.forward`` with the softmax run by patchgraph over the module's patch
    graph (``self._patchgraph``: spec, grid, prefix tokens, whether the spec is built from
    features, static graphs by batch size); the module's own qkv, q_norm, k_norm, norm and proj
    around it. ``x`` is the block's ``norm1``
    output, from which feature-dependent graphs are rebuilt every call."""
    if attn_mask is not None:
        raise ValueError("patchgraph attention takes no attn_mask: the graph is the mask")
    spec, grid, prefix, from_features, graphs = self._patchgraph
    b, n, d = x.shape
    h = self.num_heads
    if from_features:
        graph = vit_graph(spec, grid, prefix, b, features=x)
    else:
        if b not in graphs:
            graphs[b] = vit_graph(spec, grid, prefix, b)
        graph = graphs[b]
    qkv = self.qkv(x).reshape(b, n, 3, h, d // h)
    q, k, v = qkv.unbind(2)  # [B, N, H, d]
    q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = (t.reshape(b * n, d) for t in (q, k, v))
    out = _GraphAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), None, None, graph, h, "dot",
                                self.scale, 0.2)
    out = self.norm(out.reshape(b, n, d))
    return self.proj_drop(self.proj(out))


def patch_timm_vit(model: nn.Module, graph: Union[str, Sequence[str]] = "complete") -> nn.Module:
    """Makes every block of a timm ``VisionTransformer`` attend over a patch graph through
    patchgraph (in place; returns the model). ``graph``: one spec for every block
    (``"grid8:1"``, ``"window:7"``, ``"knn:8"``, ``"bigbird:3:2:0"``, ...) or one per block.
    Only each attention module's ``forward`` changes: the parameters, their names and the state
    dict stay timm's. Register tokens are global nodes like the class token; feature-dependent
    specs (``fknn``, ``lsh``) are rebuilt at every forward from the block's ``norm1`` features,
    as patchgraph's own ViT does (the graph is not differentiated: k-NN and hashing are
    piecewise constant)."""
    import types

    blocks = list(model.blocks)
    specs = [graph] * len(blocks) if isinstance(graph, str) else list(graph)
    if len(specs) != len(blocks):
        raise ValueError(f"{len(specs)} graph specs for {len(blocks)} blocks")
    grid = tuple(model.patch_embed.grid_size)
    prefix = getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0)
    for block, spec in zip(blocks, specs):
        from_features = Graph.spec_needs_features(spec)  # a bad spec fails here, not at the first forward
        if not from_features:
            vit_graph(spec, grid, prefix, 1)
        block.attn._patchgraph = (spec, grid, prefix, from_features, {})
        block.attn.forward = types.MethodType(_patchgraph_attention_forward, block.attn)
    return model
