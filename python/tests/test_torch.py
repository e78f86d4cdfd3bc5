"""``patchgraph.torch``: gradients of the autograd function against PyTorch's own autograd
through the peers' math (1e-4), ``torch.autograd.gradcheck`` on float64 cases, and the drop-in
modules against PyG's layers with the same state dict."""

import math

import numpy as np
import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric.utils import scatter, softmax

import patchgraph as pg
from patchgraph.torch import GATConv, GATv2Conv, TransformerConv, graph_attention
from conftest import close


def torch_attention(q, k, v, edge_index, heads, score="dot", attention=None, slope=0.2, bias=None):
    """The algebra in plain PyTorch ops (PyG's utilities): differentiable by torch itself."""
    n = q.shape[0]
    src, dst = edge_index
    qh, kh, vh = q.view(n, heads, -1), k.view(n, heads, -1), v.view(n, heads, -1)
    if score == "dot":
        s = (qh[dst] * kh[src]).sum(-1) / math.sqrt(qh.shape[-1])
    elif score == "gat":
        s = torch.nn.functional.leaky_relu(qh[dst, :, 0] + kh[src, :, 0], slope)
    else:
        z = torch.nn.functional.leaky_relu(qh[dst] + kh[src], slope)
        s = (z * attention.view(1, heads, -1)).sum(-1)
    if bias is not None:
        s = s + bias
    a = softmax(s, dst, num_nodes=n)
    return scatter(vh[src] * a.unsqueeze(-1), dst, dim=0, dim_size=n, reduce="sum").reshape(n, -1)


def random_graph(rng, n, e):
    return torch.from_numpy(np.stack([rng.integers(0, n, e), rng.integers(0, n, e)]).astype(np.int64))


@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
def test_gradients_match_torch_autograd(rng, score):
    torch.manual_seed(0)
    n, h, d = 30, 3, 4
    ei = random_graph(rng, n, 120)
    dk = 1 if score == "gat" else d
    q, k = torch.randn(n, h * dk, requires_grad=True), torch.randn(n, h * dk, requires_grad=True)
    v = torch.randn(n, h * d, requires_grad=True)
    bias = torch.randn(ei.shape[1], h, requires_grad=True)
    att = torch.randn(h * d, requires_grad=True) if score == "gatv2" else None
    dout = torch.randn(n, h * d)
    ours = graph_attention(q, k, v, ei, h, score=score, attention=att, bias=bias)
    grads = torch.autograd.grad((ours * dout).sum(), [q, k, v, bias] + ([att] if att is not None else []))
    theirs = torch_attention(q, k, v, ei, h, score, att, bias=bias)
    ref = torch.autograd.grad((theirs * dout).sum(), [q, k, v, bias] + ([att] if att is not None else []))
    close(ours.detach(), theirs.detach(), 1e-5, f"{score} forward")
    for name, a, b in zip(["q", "k", "v", "bias", "attention"], grads, ref):
        close(a, b, 1e-4, f"{score} d{name}")


@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
def test_gradcheck_float64(rng, score):
    n, h, d = 6, 2, 3
    ei = random_graph(rng, n, 14)
    dk = 1 if score == "gat" else d
    q = torch.randn(n, h * dk, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, h * dk, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, h * d, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(ei.shape[1], h, dtype=torch.float64, requires_grad=True)
    att = torch.randn(h * d, dtype=torch.float64, requires_grad=True) if score == "gatv2" else None
    g = pg.Graph.from_edge_index(ei.numpy(), n)
    if att is None:
        fn = lambda q, k, v, b: graph_attention(q, k, v, g, h, score=score, bias=b)  # noqa: E731
        inputs = (q, k, v, bias)
    else:
        fn = lambda q, k, v, b, a: graph_attention(q, k, v, g, h, score=score, attention=a, bias=b)  # noqa: E731
        inputs = (q, k, v, bias, att)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def copy_params(ours, theirs):
    ours.load_state_dict(theirs.state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["GATConv", "GATv2Conv", "TransformerConv"])
@pytest.mark.parametrize("concat", [True, False])
def test_dropin_modules_equal_pyg(rng, kind, concat):
    torch.manual_seed(1)
    n, f, c, h = 25, 12, 5, 3
    ei = random_graph(rng, n, 90)
    ei[:, :4] = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])  # self-loops PyG removes and re-adds
    kwargs = dict(heads=h, concat=concat)
    if kind == "TransformerConv":
        kwargs["beta"] = True
    peer = getattr(pyg_nn, kind)(f, c, **kwargs)
    ours = {"GATConv": GATConv, "GATv2Conv": GATv2Conv, "TransformerConv": TransformerConv}[kind](f, c, **kwargs)
    copy_params(ours, peer)
    x = torch.randn(n, f, requires_grad=True)
    y_peer, (ei_peer, alpha_peer) = peer(x, ei, return_attention_weights=True)
    y_ours, (ei_ours, alpha_ours) = ours(x, ei, return_attention_weights=True)
    close(y_ours.detach(), y_peer.detach(), 1e-5, f"{kind} output")
    assert torch.equal(ei_ours, ei_peer), "edge order as PyG returns it"
    close(alpha_ours, alpha_peer.detach(), 1e-5, f"{kind} attention weights")
    dy = torch.randn_like(y_peer)
    peer_params, our_params = dict(peer.named_parameters()), dict(ours.named_parameters())
    assert sorted(peer_params) == sorted(our_params), "the peer's parameter names"
    names = sorted(peer_params)
    g_peer = torch.autograd.grad((y_peer * dy).sum(), [x] + [peer_params[k] for k in names])
    g_ours = torch.autograd.grad((y_ours * dy).sum(), [x] + [our_params[k] for k in names])
    for name, a, b in zip(["x"] + names, g_ours, g_peer):
        close(a, b, 1e-4, f"{kind} d{name}")


def test_modules_train_a_step(rng):
    torch.manual_seed(2)
    layer = GATConv(8, 4, heads=2)
    ei = random_graph(rng, 20, 60)
    x, target = torch.randn(20, 8), torch.randn(20, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((layer(x, ei) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_torch_bad_input():
    g = pg.Graph.complete(4)
    q = torch.randn(4, 6)
    with pytest.raises(TypeError, match="int64"):
        graph_attention(q, q, q, torch.zeros(2, 3, dtype=torch.int32), heads=2)
    with pytest.raises(TypeError, match="float32"):
        graph_attention(q.half(), q.half(), q.half(), g, heads=2)
    with pytest.raises(ValueError, match="non-finite"):
        graph_attention(torch.full((4, 6), float("nan")), q, q, g, heads=2)
    with pytest.raises(ValueError):
        graph_attention(q, q, q, g, heads=4)  # 6 columns are not 4 heads


def _small_timm_vit(**extra):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3, **extra)
    model = VisionTransformer(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # off timm's init (zero biases, identity norms)
    return model, cfg


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2, "qk_norm": True}])
def test_patched_timm_vit_on_the_complete_graph_is_timm(extra):
    """A timm ViT whose attention runs through patchgraph on the complete graph gives timm's
    logits (1e-4, a whole model) and timm's parameter gradients (1e-4), register tokens and
    qk_norm included."""
    import copy

    from patchgraph.torch import patch_timm_vit

    model, _ = _small_timm_vit(**extra)
    ours = patch_timm_vit(copy.deepcopy(model), "complete")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y_ref, y = model(x), ours(x)
    close(y.detach(), y_ref.detach(), 1e-4, "logits")
    dy = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * dy).sum(), list(model.parameters()))
    g = torch.autograd.grad((y * dy).sum(), list(ours.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g, g_ref):
        close(a, b, 1e-4, f"d{name}")


@pytest.mark.parametrize("spec", ["grid8:1", "bigbird:3:1:0", "fknn:4:1", "lsh:2:1:0"])
def test_patched_timm_vit_on_a_patch_graph_is_patchgraphs_vit(spec):
    """On a sparse patch graph (static, or rebuilt from each block's norm1 features) the patched
    timm model equals patchgraph's own ViT with the same weights and spec (1e-4), and differs
    from the complete graph; the backward runs and is finite."""
    from patchgraph.torch import patch_timm_vit

    model, cfg = _small_timm_vit(reg_tokens=1)
    config = {k: cfg[k] for k in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                                  "num_heads")} | {"reg_tokens": 1}
    vit = pg.Vit.from_state_dict(config, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    complete = model(x).detach()
    patch_timm_vit(model, spec)
    y = model(x)
    close(y.detach(), vit.forward(x.numpy(), graph=spec), 1e-4, f"{spec} logits")
    assert (y.detach() - complete).abs().max() > 1e-3, "the graph changed nothing"
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_edges_file_spec_from_python(tmp_path):
    """An integer edge_index saved with np.save is a graph spec (`edges:FILE`), read exactly."""
    ei = np.array([[0, 2, 3], [1, 1, 0]], dtype=np.int64)
    np.save(tmp_path / "e.npy", ei)
    g = pg.Graph.from_spec(f"edges:{tmp_path / 'e.npy'}", 2, 2)
    assert sorted(map(tuple, g.edge_index().T)) == sorted(map(tuple, ei.T))
    np.save(tmp_path / "f.npy", ei.astype(np.float32))
    with pytest.raises(TypeError, match="f.npy"):
        pg.Graph.from_spec(f"edges:{tmp_path / 'f.npy'}", 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        pg.Graph.from_spec(f"edges:{tmp_path / 'e.npy'}", 1, 2)
