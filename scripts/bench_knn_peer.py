"""The peer for `benches/knn.rs`: ViG's dense k-NN graph in PyTorch, timed the same way.

ViG (Han et al. 2022, `gcn_lib/torch_edge.py`, `dense_knn_matrix`) computes all pairwise squared
distances with one matmul, `|x_i|^2 - 2 x_i.x_j + |x_j|^2`, then `torch.topk(-dist, k * d)` and
keeps every d-th. Same sizes as the Rust bench: N = 197, 785, 3137; D = 768; k = 9; dilation 1.

Run (needs torch; keep the venv out of the repo):
    python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch
    /tmp/pgvenv/bin/python scripts/bench_knn_peer.py [--threads 2]
Prints one line per size: the median of 30 timed calls after 5 warm-ups, in ms.
"""

import argparse
import statistics
import time

import torch


def dense_knn(x: torch.Tensor, k: int, dilation: int) -> torch.Tensor:
    """x: [N, D] -> neighbour indices [N, k] (ViG's dense_knn_matrix, batch of one)."""
    with torch.no_grad():
        sq = (x * x).sum(dim=-1, keepdim=True)
        dist = sq - 2 * x @ x.T + sq.T
        _, idx = torch.topk(-dist, k=k * dilation, dim=-1)
        return idx[:, ::dilation]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for n in (197, 785, 3137):
        x = torch.randn(n, 768, generator=gen)
        for _ in range(5):
            dense_knn(x, 9, 1)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            dense_knn(x, 9, 1)
            times.append((time.perf_counter() - t) * 1e3)
        print(f"knn N={n} D=768 k=9: median {statistics.median(times):.3f} ms")


if __name__ == "__main__":
    main()
