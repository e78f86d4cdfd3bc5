"""patchgraph from Python against its peers, in one process on the same shapes (issue 13).

    python scripts/bench_python.py [--threads 2] [--min-time 1.0] [--json OUT.json]

Needs the package (`pip install ./python`), torch and torch_geometric. Three tables:

1. The boundary: one ViT-B attention (N = 197 tokens, 12 heads of 64) on the complete graph and
   on a sparse patch graph (nat:3 on 14 x 14 patches with the class token), timed inside Rust
   (`patchgraph._core._time_attend`: the kernels alone, and the kernels with the NaN/inf check
   of q, k, v (and dout) that the Python calls ask for) and from Python through
   `patchgraph.attend` (NumPy) and `patchgraph.torch.graph_attention` (torch autograd, forward
   and forward+backward). The boundary's cost is (Python - Rust alone) / Rust alone. The callers
   take turns in blocks of 10 back-to-back timed calls (after 3 untimed ones): each is timed
   in steady state, as a training loop calls it, and not right after another caller's
   still-spinning threads (torch's OpenMP workers spin for a while after each op).
2. The torch op against PyTorch's `scaled_dot_product_attention` on the complete graph, N = 197,
   785 and 3137 (patch 16, 8 and 4 at 224 px), forward and forward+backward.
3. The drop-in layers against PyG: `patchgraph.torch.GATConv` / `TransformerConv` against
   `torch_geometric.nn.GATConv` / `TransformerConv` with the same weights (768 -> 12 x 64) on
   the same `edge_index` (nat:3 + class token, and the complete graph), N = 197, forward and
   forward+backward through the layer's parameters and input.

Every cell of tables 2 and 3 is the median of calls after 3 warm-ups, as many as fit
`--min-time` (at least 5). Wherever there is a backward, the gradients are set to None before
each call (what `optimizer.zero_grad()` does by default), for ours and the peer alike.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


# Table 1: untimed calls before each block, and timed calls per block.
WARM, BLOCK = 3, 10


def median_time(fn, min_time, warmup=3, at_least=5):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < at_least or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def lscpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    except Exception:  # noqa: BLE001
        return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tables", default="1,2,3", help="which tables to run, e.g. 1 for the boundary alone")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch
    import torch.nn.functional as F
    import torch_geometric
    from torch_geometric.nn import GATConv as PygGAT
    from torch_geometric.nn import TransformerConv as PygTransformer

    import patchgraph as pg
    from patchgraph import _core
    from patchgraph.torch import GATConv, TransformerConv, graph_attention

    torch.set_num_threads(args.threads)
    pg.init_threads(args.threads)
    mt = args.min_time
    records = []
    print(f"lscpu: {lscpu_model()}; threads: torch {torch.get_num_threads()}, patchgraph {pg.num_threads()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, patchgraph {pg.__version__}, "
          f"python {platform.python_version()}")
    print(f"median of >= 5 calls after 3 warm-ups, at least {mt} s per cell")
    print()

    def record(table, case, mode, who, seconds, calls, **extra):
        records.append(dict(table=table, case=case, mode=mode, who=who, median_ms=seconds * 1e3, calls=calls, **extra))
        return seconds

    tables = {int(t) for t in args.tables.split(",")}
    # ---- 1. the boundary ---------------------------------------------------------------------
    heads, dh = 12, 64
    d = heads * dh
    gen = torch.Generator().manual_seed(0)
    graphs = {
        "complete": pg.Graph.complete(197),
        "nat:3 + class token": pg.Graph.from_spec("nat:3", 14, 14, class_token=True),
    }
    if 1 in tables:
        print("## 1. The Python boundary, N = 197, 12 heads of 64 (ms, median)")
        print()
        print("| graph | mode | Rust (kernels alone) | Rust + NaN check | NumPy `attend` | boundary | torch op | boundary |")
        print("|---|---|---|---|---|---|---|---|")
        for name, g in graphs.items():
            n = g.num_nodes
            qt, kt, vt = (torch.randn(n, d, generator=gen) for _ in range(3))
            q, k, v = qt.numpy(), kt.numpy(), vt.numpy()
            dout = torch.randn(n, d, generator=gen)
            # The three callers in turns of blocks (below), so that the machine's drift (a
            # shared VM) hits the three alike; medians of each.
            for mode in ("forward", "forward+backward"):
                bwd = mode != "forward"
                qg, kg, vg = (t.clone().requires_grad_(bwd) for t in (qt, kt, vt))

                def np_call():
                    _, lse, _ = pg.attend(g, q, k, v, heads)
                    if bwd:
                        pg.attend_backward(g, q, k, v, heads, lse, dout.numpy())

                def op():
                    with torch.set_grad_enabled(bwd):
                        if bwd:
                            # As `optimizer.zero_grad()` leaves them (set_to_none, PyTorch's
                            # default): the gradients are assigned, not accumulated (an
                            # accumulation is a torch add that wakes its OpenMP threads; probe 2
                            # of scripts/probe_boundary.py measures that).
                            qg.grad = kg.grad = vg.grad = None
                        out = graph_attention(qg, kg, vg, g, heads=heads)
                        if bwd:
                            out.backward(dout)

                def timed(f):
                    t0 = time.perf_counter()
                    f()
                    return time.perf_counter() - t0

                # Blocks of BLOCK back-to-back calls of one caller (after WARM untimed ones), the
                # three callers' blocks in turn, rotating: steady state for each, as in a training
                # loop, no caller following another's still-spinning threads inside a block, and
                # the machine's drift spread over all three.
                def rust_block(checked=False):
                    return _core._time_attend(g, q, k, v, heads, WARM + BLOCK, bwd, checked=checked, warmup=False)[WARM:]

                def python_block(f):
                    def block():
                        for _ in range(WARM):
                            f()
                        return [timed(f) for _ in range(BLOCK)]
                    return block

                callers = {
                    "rust": rust_block,
                    "rust_checked": lambda: rust_block(checked=True),
                    "numpy": python_block(np_call),
                    "torch_op": python_block(op),
                }
                times = {who: [] for who in callers}
                order = list(callers)
                start = time.perf_counter()
                while len(times["rust"]) < 5 * BLOCK or time.perf_counter() - start < 3 * mt:
                    for who in order:
                        times[who].extend(callers[who]())
                    order = order[1:] + order[:1]
                rust, chk, py, tor = (statistics.median(times[w]) for w in ("rust", "rust_checked", "numpy", "torch_op"))
                for who, t in (("rust", rust), ("rust_checked", chk), ("numpy", py), ("torch_op", tor)):
                    record(1, name, mode, who, t, len(times[who]))
                pct = lambda x: f"{100 * (x - rust) / rust:+.1f}%"  # noqa: E731
                print(f"| {name} | {mode} | {rust * 1e3:.3f} | {chk * 1e3:.3f} ({pct(chk)}) | {py * 1e3:.3f} | {pct(py)} "
                      f"| {tor * 1e3:.3f} | {pct(tor)} |")
        print()

    # ---- 2. the torch op against SDPA ---------------------------------------------------------
    if 2 in tables:
        print("## 2. `graph_attention` on the complete graph against `F.scaled_dot_product_attention` (ms, median)")
        print()
        print("| N | mode | patchgraph torch op | SDPA | SDPA / patchgraph |")
        print("|---|---|---|---|---|")
        for n in (197, 785, 3137):
            g = pg.Graph.complete(n)
            x = [torch.randn(n, d, generator=gen) for _ in range(3)]
            dout = torch.randn(n, d, generator=gen)
            for mode in ("forward", "forward+backward"):
                bwd = mode != "forward"
                ours_in = [t.clone().requires_grad_(bwd) for t in x]
                sdpa_in = [t.clone().view(n, heads, dh).transpose(0, 1).unsqueeze(0).requires_grad_(bwd) for t in x]
                dout4 = dout.view(n, heads, dh).transpose(0, 1).unsqueeze(0)

                # Gradients set to None before each call, as `optimizer.zero_grad()` leaves them.
                def ours():
                    for t in ours_in:
                        t.grad = None
                    out = graph_attention(*ours_in, g, heads=heads)
                    if bwd:
                        out.backward(dout)

                def sdpa():
                    for t in sdpa_in:
                        t.grad = None
                    out = F.scaled_dot_product_attention(*sdpa_in)
                    if bwd:
                        out.backward(dout4)
                with torch.set_grad_enabled(bwd):
                    t_ours, c1 = median_time(ours, mt)
                    t_sdpa, c2 = median_time(sdpa, mt)
                record(2, f"complete N={n}", mode, "patchgraph", t_ours, c1)
                record(2, f"complete N={n}", mode, "sdpa", t_sdpa, c2)
                print(f"| {n} | {mode} | {t_ours * 1e3:.2f} | {t_sdpa * 1e3:.2f} | {t_sdpa / t_ours:.2f} |")
        print()

    # ---- 3. the drop-in layers against PyG ----------------------------------------------------
    if 3 in tables:
        print("## 3. Drop-in layers against PyG, 768 -> 12 x 64, N = 197 (ms, median)")
        print()
        print("| layer | graph (E) | mode | patchgraph | PyG | PyG / patchgraph | max abs diff |")
        print("|---|---|---|---|---|---|---|")
        n = 197
        edge_sets = {
            "nat:3 + class token": torch.from_numpy(graphs["nat:3 + class token"].edge_index()),
            "complete": torch.from_numpy(pg.Graph.complete(n).edge_index()),
        }
        for layer_name, ours_cls, peer_cls in (("GATConv", GATConv, PygGAT), ("TransformerConv", TransformerConv, PygTransformer)):
            torch.manual_seed(1)
            peer = peer_cls(d, dh, heads=heads)
            ours = ours_cls(d, dh, heads=heads)
            ours.load_state_dict(peer.state_dict())
            for gname, ei in edge_sets.items():
                x = torch.randn(n, d, generator=gen)
                with torch.no_grad():
                    diff = (ours(x, ei) - peer(x, ei)).abs().max().item()
                dout = torch.randn(n, d, generator=gen)
                for mode in ("forward", "forward+backward"):
                    bwd = mode != "forward"
                    xin = x.clone().requires_grad_(bwd)

                    def run(layer):
                        def f():
                            layer.zero_grad(set_to_none=True)  # as optimizer.zero_grad() does
                            xin.grad = None
                            out = layer(xin, ei)
                            if bwd:
                                out.backward(dout)
                        return f
                    with torch.set_grad_enabled(bwd):
                        t_ours, c1 = median_time(run(ours), mt)
                        t_peer, c2 = median_time(run(peer), mt)
                    case = f"{layer_name} {gname}"
                    record(3, case, mode, "patchgraph", t_ours, c1, max_abs_diff=diff)
                    record(3, case, mode, "pyg", t_peer, c2)
                    print(f"| {layer_name} | {gname} ({ei.shape[1]}) | {mode} | {t_ours * 1e3:.2f} | {t_peer * 1e3:.2f} | "
                          f"{t_peer / t_ours:.2f} | {diff:.1e} |")
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(lscpu=lscpu_model(), threads=args.threads,
                           omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), records=records), f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
