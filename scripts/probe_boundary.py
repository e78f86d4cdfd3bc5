"""Two probes behind the reading of the Python boundary in notes/benchmarks.md (issue 13).

    python scripts/probe_boundary.py                          # both probes
    OMP_WAIT_POLICY=PASSIVE python scripts/probe_boundary.py  # the second with torch's threads asleep

1. Where NumPy's extra time goes: `patchgraph.attend` against the kernels timed inside Rust
   (`_core._time_attend`) on nat:3 + class token at N = 197 with 12 heads of width D / 12, for
   D = 12 and D = 768. What grows with D is the NaN/inf scan of q, k, v (the fixed cost of the
   call is what remains at D = 12).
2. torch's OpenMP threads against rayon's: 200 forward+backward calls of the torch op on the
   complete graph (N = 197, 768 wide), next to the kernels alone and the NumPy path.
Medians of microseconds / milliseconds; 2 threads for torch and rayon.
"""
import os
import statistics
import time

import numpy as np
import torch

import patchgraph as pg
from patchgraph import _core
from patchgraph.torch import graph_attention


def median(f, n):
    for _ in range(min(50, n)):
        f()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def main():
    torch.set_num_threads(2)
    pg.init_threads(2)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    g = pg.Graph.from_spec("nat:3", 14, 14, class_token=True)
    for d in (12, 768):
        q, k, v = (np.random.default_rng(i).standard_normal((197, d), dtype=np.float32) for i in range(3))
        rust = statistics.median(_core._time_attend(g, q, k, v, 12, 2000)) * 1e6
        py = median(lambda: pg.attend(g, q, k, v, 12), 2000) * 1e6
        print(f"1. D={d}: kernels {rust:.1f} us, NumPy attend {py:.1f} us, difference {py - rust:.1f} us")
    g = pg.Graph.complete(197)
    q, k, v, dout = (torch.randn(197, 768) for _ in range(4))
    rust = statistics.median(_core._time_attend(g, q.numpy(), k.numpy(), v.numpy(), 12, 200, True)) * 1e3
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def op():
        graph_attention(qg, kg, vg, g, heads=12).backward(dout)

    def numpy_path():
        _, lse, _ = pg.attend(g, q.numpy(), k.numpy(), v.numpy(), 12)
        pg.attend_backward(g, q.numpy(), k.numpy(), v.numpy(), 12, lse, dout.numpy())

    print(f"2. forward+backward: kernels {rust:.2f} ms, NumPy {median(numpy_path, 200) * 1e3:.2f} ms, "
          f"torch op {median(op, 200) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
