"""Graphs and the attention algebra from NumPy, against PyTorch's SDPA and PyG's own message
passing (``torch_geometric.utils.softmax`` + scatter) on the same edges; bad input from Python."""

import math

import numpy as np
import pytest
import torch
from torch_geometric.utils import scatter, softmax

import patchgraph as pg
from conftest import close


def pyg_attention(q, k, v, edge_index, heads, bias=None):
    """Dot-product attention over ``edge_index`` as PyG's TransformerConv computes it."""
    n = q.shape[0]
    q, k, v = (torch.from_numpy(t).view(n, heads, -1).double() for t in (q, k, v))
    src, dst = torch.from_numpy(edge_index)
    alpha = (q[dst] * k[src]).sum(-1) / math.sqrt(q.shape[-1])
    if bias is not None:
        alpha = alpha + torch.from_numpy(bias).double()
    alpha = softmax(alpha, dst, num_nodes=n)
    out = scatter(v[src] * alpha.unsqueeze(-1), dst, dim=0, dim_size=n, reduce="sum")
    return out.reshape(n, -1).numpy(), alpha.numpy()


def test_complete_graph_is_sdpa(rng):
    n, h, d = 197, 3, 16
    q, k, v = (rng.standard_normal((n, h * d), dtype=np.float32) for _ in range(3))
    out, lse, _ = pg.attend(pg.Graph.complete(n), q, k, v, heads=h)
    tq, tk, tv = (torch.from_numpy(t).view(n, h, d).transpose(0, 1) for t in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).transpose(0, 1).reshape(n, h * d)
    close(out, sdpa.numpy(), 1e-5, "complete graph vs SDPA")
    ref = torch.logsumexp((tq @ tk.transpose(1, 2)) / math.sqrt(d), -1).T
    close(lse, ref.numpy(), 1e-5, "log-sum-exp")


def test_edge_index_order_is_kept_for_bias_and_weights(rng):
    n, h, d = 12, 2, 4
    e = 40
    edge_index = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)]).astype(np.int64)
    g = pg.Graph.from_edge_index(edge_index, n)
    assert g.num_edges == e
    np.testing.assert_array_equal(g.edge_index(), edge_index)  # the caller's order, not by destination
    q, k, v = (rng.standard_normal((n, h * d), dtype=np.float32) for _ in range(3))
    bias = rng.standard_normal((e, h), dtype=np.float32)
    out, _, w = pg.attend(g, q, k, v, heads=h, bias=bias, return_weights=True)
    ref_out, ref_alpha = pyg_attention(q, k, v, edge_index, h, bias)
    close(out, ref_out, 1e-5, "output vs PyG message passing")
    close(w, ref_alpha, 1e-5, "weights, in the caller's edge order")
    # A node with no incoming edge outputs zeros.
    isolated = sorted(set(range(n)) - set(edge_index[1].tolist()))
    for i in isolated:
        assert np.all(out[i] == 0.0)


def test_specs_and_builders(rng):
    g = pg.Graph.from_spec("grid8:1", 4, 4, class_token=True)
    assert g.num_nodes == 17
    assert g.num_edges == pg.Graph.grid(4, 4, 8, 1).num_edges + 2 * 16 + 1
    assert pg.Graph.from_spec("complete", 3, 3).is_complete
    x = rng.standard_normal((16, 5), dtype=np.float32)
    knn = pg.Graph.from_spec("fknn:3:1", 4, 4, features=x)
    assert (knn.in_degrees() == 3).all()
    batch = pg.Graph.disjoint_union([g, g])
    assert batch.blocks == [0, 17, 34] and batch.num_edges == 2 * g.num_edges
    with pytest.raises(ValueError, match="fknn"):
        pg.Graph.from_spec("fknn:3:1", 4, 4)  # features needed
    with pytest.raises(ValueError, match="unknown"):
        pg.Graph.from_spec("hexagon:3", 4, 4)


@pytest.mark.parametrize("graph", ["complete", "nat:1 + class token", "path"])
@pytest.mark.parametrize("array", ["q", "k", "v", "dout"])
def test_every_non_finite_input_is_named(rng, graph, array):
    """The kernels check q, k, v (and the backward's dout) inside their tasks: a NaN, +inf or
    -inf anywhere is a ValueError naming its [row, column], dense and sparse, forward and
    backward, with no result: also a -inf key entry (which would only mask edges) and a row
    that the graph never reads (node 0 of the path has no incoming edge, the last node is
    nobody's source)."""
    h, d = 2, 3
    g = {
        "complete": lambda: pg.Graph.complete(17),
        "nat:1 + class token": lambda: pg.Graph.from_spec("nat:1", 4, 4, class_token=True),
        "path": lambda: pg.Graph.from_edge_index(np.array([list(range(15)), list(range(1, 16))], dtype=np.int64), 17),
    }[graph]()
    n = g.num_nodes
    x = {name: rng.standard_normal((n, h * d), dtype=np.float32) for name in ("q", "k", "v", "dout")}
    _, lse, _ = pg.attend(g, x["q"], x["k"], x["v"], heads=h)
    for r, c, bad in [(0, 0, np.nan), (n - 1, h * d - 1, np.inf), (n // 2, 4, -np.inf), (5, 1, np.nan)]:
        y = {name: a.copy() for name, a in x.items()}
        y[array][r, c] = bad
        pattern = rf"{array}\[{r}, {c}\] holds a non-finite value"
        if array != "dout":
            with pytest.raises(ValueError, match=pattern):
                pg.attend(g, y["q"], y["k"], y["v"], heads=h)
        with pytest.raises(ValueError, match=pattern):
            pg.attend_backward(g, y["q"], y["k"], y["v"], h, lse, y["dout"])


def test_bad_input_is_a_python_exception(rng):
    n, h, d = 6, 2, 4
    g = pg.Graph.complete(n)
    q = rng.standard_normal((n, h * d), dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        pg.attend(g, q.astype(np.float64), q, q, heads=h)
    with pytest.raises(ValueError, match="C-contiguous"):
        pg.attend(g, np.asfortranarray(q), q, q, heads=h)
    with pytest.raises(ValueError, match="query"):
        pg.attend(g, q[:5], q, q, heads=h)
    with pytest.raises(ValueError, match="dimensions"):
        pg.attend(g, q.reshape(-1), q, q, heads=h)
    bad = q.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"q\[2, 3\] holds a non-finite value"):
        pg.attend(g, bad, q, q, heads=h)
    bias = np.zeros((g.num_edges, h), dtype=np.float32)
    bias[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"bias\[7, 1\] holds a non-finite value \(inf\)"):
        pg.attend(g, q, q, q, heads=h, bias=bias)
    out, lse, _ = pg.attend(g, q, q, q, heads=h)
    with pytest.raises(ValueError, match=r"dout\[2, 3\]"):
        pg.attend_backward(g, q, q, q, h, lse, bad)
    # A bias of the wrong shape on a graph given by edge_index (its rows are reordered to the
    # CSR first): a ValueError naming it, in float32 and float64 alike.
    eg = pg.Graph.from_edge_index(np.array([[0, 1, 2], [1, 2, 0]], dtype=np.int64))
    x3 = q[:3]
    for wrong in (np.zeros((2, h), np.float32), np.zeros((3, h + 1), np.float32)):
        with pytest.raises(ValueError, match=r"bias: expected \[3 edges x 2 heads\]"):
            pg.attend(eg, x3, x3, x3, heads=h, bias=wrong)
        x64 = x3.astype(np.float64)
        with pytest.raises(ValueError, match=r"bias: expected \[3 edges x 2 heads\]"):
            pg.attend64(eg, x64, x64, x64, heads=h, bias=wrong.astype(np.float64))
    with pytest.raises(TypeError, match="int64"):
        pg.Graph.from_edge_index(np.array([[0, 1], [1, 0]], dtype=np.int32))
    with pytest.raises(ValueError, match="negative"):
        pg.Graph.from_edge_index(np.array([[0, -1], [1, 0]], dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        pg.Graph.from_edge_index(np.array([[0, 5], [1, 0]], dtype=np.int64), num_nodes=3)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        pg.Graph.from_edge_index(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="numpy array"):
        pg.attend(g, q.tolist(), q, q, heads=h)
