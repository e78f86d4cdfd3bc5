"""Two probes behind the reading of the Python boundary in notes/benchmarks.md (issue 13).

    python scripts/probe_boundary.py [ROUNDS]                 # both probes (ROUNDS: 40)
    OMP_WAIT_POLICY=PASSIVE python scripts/probe_boundary.py  # the second with torch's threads asleep

1. Where NumPy's extra time goes, at N = 197 with 12 heads of 64 on the complete graph and on
   nat:3 + class token, forward and forward+backward: the kernels timed inside Rust
   (`_core._time_attend`) without and with their NaN/inf check of q, k, v (and dout; what
   `patchgraph.attend` and `attend_backward` ask for), and the same calls from Python. Blocks of 20 back-to-back timed calls of each (after 3 untimed), the three in
   turn, rotating, ROUNDS rounds; medians of all calls, and the median over rounds of each
   round's ratio to the unchecked kernels.
2. torch's OpenMP threads against rayon's: 200 forward+backward calls of the torch op on the
   complete graph (N = 197, 768 wide), next to the kernels alone and the NumPy path: with the
   leaves' gradients accumulated call after call (a torch add, run by its OpenMP threads,
   which then spin on the cores rayon needs) and set to None before each call (what
   `optimizer.zero_grad()` does by default: the gradients are assigned).
3. The fixed cost of a call, on a one-node graph (768 wide, 12 heads): `patchgraph.attend`
   through the reference path (no rayon: the crossing alone), `patchgraph.attend` through the
   kernels, and the torch op `graph_attention` (autograd off); 20 rounds of 200 calls of each
   in turn.
Medians of microseconds / milliseconds; 2 threads for torch and rayon.
"""
import itertools
import os
import statistics
import sys
import time

import numpy as np
import torch

import patchgraph as pg
from patchgraph import _core
from patchgraph.torch import graph_attention

BLOCK, WARM = 20, 3


def median(f, n):
    for _ in range(min(50, n)):
        f()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def python_block(f):
    for _ in range(WARM):
        f()
    times = []
    for _ in range(BLOCK):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return times


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    torch.set_num_threads(2)
    pg.init_threads(2)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    graphs = {"complete": pg.Graph.complete(197), "nat:3 + class token": pg.Graph.from_spec("nat:3", 14, 14, class_token=True)}
    for (name, g), bwd in itertools.product(graphs.items(), (False, True)):
        q, k, v, dout = (np.random.default_rng(i).standard_normal((197, 768), dtype=np.float32) for i in range(4))

        def numpy_call():
            _, lse, _ = pg.attend(g, q, k, v, 12)
            if bwd:
                pg.attend_backward(g, q, k, v, 12, lse, dout)

        callers = {
            "kernels": lambda: _core._time_attend(g, q, k, v, 12, WARM + BLOCK, bwd, warmup=False)[WARM:],
            "checked": lambda: _core._time_attend(g, q, k, v, 12, WARM + BLOCK, bwd, checked=True, warmup=False)[WARM:],
            "numpy": lambda: python_block(numpy_call),
        }
        times = {c: [] for c in callers}
        ratios = {"checked": [], "numpy": []}
        order = list(callers)
        for _ in range(rounds):
            medians = {}
            for c in order:
                t = callers[c]()
                times[c] += t
                medians[c] = statistics.median(t)
            for c in ratios:
                ratios[c].append(medians[c] / medians["kernels"] - 1)
            order = order[1:] + order[:1]
        m = {c: statistics.median(t) * 1e6 for c, t in times.items()}
        pct = {c: 100 * (m[c] / m["kernels"] - 1) for c in ratios}
        per_round = {c: 100 * statistics.median(r) for c, r in ratios.items()}
        mode = "forward+backward" if bwd else "forward"
        print(f"1. {name}, {mode}: kernels {m['kernels']:.1f} us, with the check {m['checked']:.1f} us "
              f"({pct['checked']:+.1f}%, per round {per_round['checked']:+.1f}%), NumPy {m['numpy']:.1f} us "
              f"({pct['numpy']:+.1f}%, per round {per_round['numpy']:+.1f}%)")
    g = pg.Graph.complete(197)
    q, k, v, dout = (torch.randn(197, 768) for _ in range(4))
    rust = statistics.median(_core._time_attend(g, q.numpy(), k.numpy(), v.numpy(), 12, 200, True)) * 1e3
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def op_accumulating():
        graph_attention(qg, kg, vg, g, heads=12).backward(dout)

    def op_set_to_none():
        qg.grad = kg.grad = vg.grad = None  # what optimizer.zero_grad() does by default
        graph_attention(qg, kg, vg, g, heads=12).backward(dout)

    def numpy_path():
        _, lse, _ = pg.attend(g, q.numpy(), k.numpy(), v.numpy(), 12)
        pg.attend_backward(g, q.numpy(), k.numpy(), v.numpy(), 12, lse, dout.numpy())

    print(f"2. forward+backward: kernels {rust:.2f} ms, NumPy {median(numpy_path, 200) * 1e3:.2f} ms, "
          f"torch op with gradients accumulated {median(op_accumulating, 200) * 1e3:.2f} ms, "
          f"with gradients set to None first {median(op_set_to_none, 200) * 1e3:.2f} ms")

    g1 = pg.Graph.complete(1)
    x1 = torch.randn(1, 768)
    x1n = x1.numpy()
    fixed = {
        "attend, reference path": lambda: pg.attend(g1, x1n, x1n, x1n, 12, path="reference"),
        "attend": lambda: pg.attend(g1, x1n, x1n, x1n, 12),
        "graph_attention": lambda: graph_attention(x1, x1, x1, g1, heads=12),
    }
    per_call = {name: [] for name in fixed}
    for _ in range(20):
        for name, f in fixed.items():
            for _ in range(20):
                f()
            t0 = time.perf_counter()
            for _ in range(200):
                f()
            per_call[name].append((time.perf_counter() - t0) / 200 * 1e6)
    print("3. one-node graph: " + ", ".join(f"{name} {statistics.median(t):.1f} us" for name, t in per_call.items()))


if __name__ == "__main__":
    main()
