"""The peers of our attention benches: PyTorch SDPA, a PyTorch GEMM, and PyG graph-attention layers.

Times, on the shapes of the Rust benches (ViT-B: H = 12 heads of d = 64, model width 768), fp32,
`torch.no_grad()`, modules in eval mode, `torch.set_num_threads(--threads)`:

- `sdpa`: `F.scaled_dot_product_attention(q, k, v)`, q, k, v `[B, 12, N, 64]`, B in {1, 8},
  N in {50, 197, 785, 3137}. GFLOP/s = 4 * B * H * N^2 * d / t (QK^T and PV only).
- `torch_mm_2048`: `torch.mm` of two 2048 x 2048 matrices, the practical GEMM peak (2 * 2048^3 / t).
- PyG `GATConv`, `GATv2Conv`, `TransformerConv` (768 -> 12 heads x 64, defaults: concat=True,
  GAT/GATv2 add_self_loops=True), x `[N, 768]`, on N = g*g + 1 (g = 7, 14, 28, 56: a class token
  plus a g x g patch grid). The timed call includes PyG's input projection (768 -> 768 Linear), as
  PyG computes it. GFLOP/s is left null for them (not well defined). Graphs (numpy, untimed):
  - `knn{k}`, k in {8, 16, 32}: node 0 is the class token, patch (r, c) is node 1 + r*g + c. Patch
    i's sources are its k nearest patches by squared grid distance (itself first, distance 0), ties
    by node index ascending (as `Graph::spatial_knn(g, g, k, true)`); then the class token:
    0 -> i and i -> 0 for every patch, plus 0 -> 0 (as `.with_global_node(true)`).
    E = g*g*k + 2*g*g + 1.
  - `complete`: all N^2 ordered pairs, self-loops included; N in {50, 197}, and N = 785 when one
    call takes under 10 s (one cold probe call per layer; otherwise skipped with a note; each
    probe costs its own time, and the per-edge [E, 12, 64] tensors take several GiB there).
  Graph build is O(P^2) numpy (all pairwise grid distances, P = g*g patches): ~1.5 s at
  N = 3137, outside the timed region.
  Note: with add_self_loops=True, GAT/GATv2 first remove and then re-add one self-loop per node.
  Our graphs already hold exactly one self-loop per node, so the edge count they run on is E.

- `timm`: whole ViT forwards, `timm.create_model(name, pretrained=False)` (random init) for
  vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224, `.eval()`, under
  `torch.inference_mode()`, input `[B, 3, 224, 224]`, B in {1, 8} (N = 197 tokens). Reported per
  batch (median_ms), per image (ms_per_image = median_ms / B) and as images_per_s = 1000 B / median_ms.
  GFLOP/s = B * F / t with F the matmul FLOPs of one image, 2 * multiply-adds: patch embedding
  2 * 196 * (3*16*16) * D, per block 24 * N * D^2 + 4 * N^2 * D (qkv, proj, MLP with hidden 4D, QK^T,
  PV), head 2 * D * 1000 (LayerNorm, softmax, GELU not counted). F = 2.5, 9.2, 35.1 GFLOP for
  tiny / small / base (twice the usual "GMACs" of 1.3, 4.6, 17.6).
  Needs timm (imported only when this section runs).

- `efficient`: ONE attention layer at ViT-B widths (H = 12 heads of d = 64, width 768), B = 1,
  fp32, on N = g*g + 1 for g in {14, 28, 56, 112, 224} (N = 197, 785, 3137, 12545, 50177: patch 16,
  8, 4, 2, 1 at 224 px; --quick: g in {14, 28}), each op twice: `_fwd` (under `torch.no_grad()`)
  and `_fwdbwd` (forward, then `out.backward(dout)` with the inputs requiring grad; the inputs'
  and parameters' .grad are set to None before every call). Ops (op = efficient_{name}_{fwd|fwdbwd}):
  - `sdpa`: `F.scaled_dot_product_attention(q, k, v)`, q, k, v `[1, 12, N, 64]` (exact attention; on
    CPU torch runs its flash kernel, forward and backward). GFLOP/s = 4 H N^2 d / t forward,
    14 H N^2 d / t forward+backward (backward counted as 2.5 forwards); null for the others.
  - `performer`: `performer_pytorch.FastAttention(64, nb_features=266 = int(64 ln 64), causal=False)`
    called on q, k, v `[1, 12, N, 64]` (attention only, no linears).
  - `linformer`: `linformer.LinformerSelfAttention(dim=768, seq_len=N, k=256, heads=12, dim_head=64)`
    with its to_q, to_k, to_v and to_out linears replaced by `nn.Identity()`, on x `[1, N, 768]`
    (so q = k = v = x): the attention alone, its two learned [N, 256] sequence projections E, F
    included, as ours is timed from given q, k, v (k = 256 > N at N = 197: allowed).
  - `nystrom`: `nystrom_attention.NystromAttention(dim=768, dim_head=64, heads=12, num_landmarks=256,
    pinv_iterations=6, residual=True)` (residual conv kernel 33) with to_qkv and to_out replaced by
    `nn.Identity()`, on x `[1, N, 2304]` (its chunks are q, k, v): the attention alone, conv
    included; it zero-pads N at the front to a multiple of 256.
  - `window`, `bigbird`: graph attention over the very edges patchgraph times (`nat:7` and
    `bigbird:7:3:0`, class token linked both ways), read from `--graphs DIR` (written by
    `cargo run --release --example efficient_sweep -- --export-graphs DIR`), the way PyG's
    `TransformerConv` attends without its linears: q, k, v `[N, 12, 64]`,
    `alpha = (q[dst] * k[src]).sum(-1) / 8`, `torch_geometric.utils.softmax(alpha, dst)`,
    `torch_geometric.utils.scatter(v[src] * alpha, dst, reduce="sum")`. Skipped without --graphs.
  - `lsh`: the same edge attention on Reformer's LSH graph of the patch rows of q, built inside the
    timed call as ours is (`lsh:16:1:0:32`: a Gaussian [768, 8] rotation, bucket = argmax [xR, -xR],
    a stable sort by bucket, chunks of 32, each node linked to the nodes of its bucket in its chunk
    and the previous one; the class token both ways). The rotation is torch's, not ChaCha's, so the
    edges differ from ours but follow the same rule (about 57 per node at N = 3137, 64 at 50,177).
  Every case runs in its own fresh process (this script with a hidden --efficient-case argument),
  so memory is measured per case: peak_extra_mib = peak RSS during the calls (VmHWM, reset with
  `echo 5 > /proc/self/clear_refs` just before the first call) minus the RSS just before it (inputs,
  dout and the module already built): the memory the calls themselves add (torch's CPU allocator
  returns large blocks to the OS, so this is what the calls hold at their peak). Where clear_refs
  cannot be written, ru_maxrss of the process minus that RSS (method named in `mem_method`). Budget:
  the first (cold) call is timed as a probe; when it has not finished after --budget seconds (default
  60) the process is killed and the case recorded with median_ms null and note "over budget" (so are
  the larger N of the same op and mode, without running them). A case whose RSS passes
  --efficient-mem-gib (default 12) is killed and recorded likewise ("over memory limit"). After a
  probe of 1 s or more the probe counts as the warm-up: no further warm-up, at least 3 timed calls;
  otherwise the usual 3 warm-ups and at least 5 calls and --min-time s. Needs performer-pytorch,
  linformer, nystrom-attention (imported only in the case processes). Extra record fields: probe_s,
  peak_extra_mib, mem_method, package, package_version, note, and features / proj_k / landmarks.

Each case: 3 warm-up calls, then timed calls until at least --min-time seconds and at least 5
calls (timm: at least 10); the median is reported. timm with --quick: 1 warm-up, 3 timed calls,
no minimum time.

Run (needs torch and torch_geometric; keep the venv out of the repo):
    python3 -m venv /tmp/pgvenv && /tmp/pgvenv/bin/pip install torch torch_geometric numpy
    /tmp/pgvenv/bin/python scripts/bench_peers.py [--threads 2] [--min-time 1.0] [--quick]
        [--only SUBSTRING] [--json FILE]
`--quick` keeps only N in {50, 197} (a smoke test); `--only` keeps the ops whose name contains the
substring (case-insensitive; op names: sdpa, torch_mm_2048, GATConv_knn8, GATv2Conv_complete,
TransformerConv_knn32, ...; the timm ops are matched as timm_vit_tiny_patch16_224, ..., so
`--only timm` selects the three ViTs and `--only vit_base` one of them; the efficient ops are
efficient_sdpa_fwd, efficient_sdpa_fwdbwd, efficient_performer_fwd, ..., so `--only efficient` selects
all fourteen, `--only performer` two, and `--only sdpa` the sdpa section plus the two efficient sdpa
ops; flags for them: [--budget 60] [--efficient-mem-gib 12] [--graphs DIR] [--efficient-grids 56,112]). Prints a table; `--json FILE`
also writes a list of records
{"peer", "op", "B", "N", "k", "H", "d", "median_ms", "gflops", "threads", "torch", "pyg", ...}
(k null for dense ops, gflops null for PyG; extras: calls, min_ms, max_rss_mib, and for PyG E, graph,
graph_build_ms; for timm (op = the model name, H and d its heads and head width): timm,
ms_per_image, images_per_s, img_size, embed_dim, depth, params, flops_per_image, fused_attn).
"""

import argparse
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import warnings

import resource

import numpy as np
import torch

GRIDS = (7, 14, 28, 56)  # N = g*g + 1 = 50, 197, 785, 3137
TIMM_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
TIMM_BATCHES = (1, 8)
KNN_KS = (8, 16, 32)
H, D, WIDTH = 12, 64, 768
COMPLETE_PROBE_LIMIT_S = 10.0
EFFICIENT_GRIDS = (14, 28, 56, 112, 224)  # N = 197, 785, 3137, 12545, 50177 (patch 16 .. 1 at 224 px)
EFFICIENT_OPS = ("sdpa", "performer", "linformer", "nystrom", "window", "bigbird", "lsh")
LSH_BUCKETS, LSH_CHUNK = 16, 32
EFFICIENT_MODES = ("fwd", "fwdbwd")
PERFORMER_FEATURES = int(D * np.log(D))  # 266, performer_pytorch's own default for d = 64
LINFORMER_K = 256
NYSTROM_LANDMARKS, NYSTROM_ITERS = 256, 6


def time_call(fn, min_time: float, min_calls: int = 5, warmup: int = 3):
    """Median and minimum wall time of fn() in ms, and the number of timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times), len(times)


def knn_grid_graph(g: int, k: int) -> np.ndarray:
    """Spatial k-NN on a g x g patch grid plus a class token as node 0: edge_index [2, E]."""
    p = g * g
    rc = np.stack(np.divmod(np.arange(p), g), axis=1)  # patch j at (j // g, j % g)
    diff = rc[:, None, :] - rc[None, :, :]
    d2 = (diff * diff).sum(-1)  # [P, P], row = destination
    # Stable sort on d2 over columns in index order = sort on (d2, index).
    nbr = np.argsort(d2, axis=1, kind="stable")[:, :k]  # [P, k], nearest first
    assert (nbr[:, 0] == np.arange(p)).all(), "rank 0 must be the node itself"
    patches = np.arange(1, p + 1)
    # Destination 0 (class token): sources 0, 1, ..., P.
    src = [np.arange(0, p + 1)]
    dst = [np.zeros(p + 1, dtype=np.int64)]
    # Destination patch i: the class token first, then its k neighbours (shifted by one).
    src.append(np.concatenate([np.zeros((p, 1), dtype=np.int64), nbr + 1], axis=1).ravel())
    dst.append(np.repeat(patches, k + 1))
    ei = np.stack([np.concatenate(src), np.concatenate(dst)]).astype(np.int64)
    assert ei.shape[1] == p * k + 2 * p + 1, (ei.shape, p, k)
    return ei


def complete_graph(n: int) -> np.ndarray:
    """All n^2 ordered pairs, self-loops included, grouped by destination: edge_index [2, n^2]."""
    src = np.tile(np.arange(n), n)
    dst = np.repeat(np.arange(n), n)
    ei = np.stack([src, dst]).astype(np.int64)
    assert ei.shape[1] == n * n
    return ei


def vit_flops_per_image(img: int, patch: int, dim: int, depth: int, classes: int, mlp_ratio: float = 4.0,
                        in_chans: int = 3, prefix_tokens: int = 1) -> int:
    """Matmul FLOPs (2 * multiply-adds) of one ViT forward; norms, softmax and GELU not counted."""
    p = (img // patch) ** 2
    n = p + prefix_tokens
    hidden = int(dim * mlp_ratio)
    embed = 2 * p * (in_chans * patch * patch) * dim
    block = 2 * n * dim * 3 * dim + 2 * n * dim * dim + 2 * 2 * n * dim * hidden + 2 * 2 * n * n * dim
    return embed + depth * block + 2 * dim * classes


def wanted(op: str, only) -> bool:
    return only is None or only.lower() in op.lower()


def _status_mib(field: str, pid="self"):
    """A /proc/PID/status field (VmRSS, VmHWM) in MiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def edge_attention(q, k, v, src, dst):
    """Dot-product attention over the edges src -> dst as PyG's TransformerConv computes it
    (without its linears): q, k, v [N, H, d] -> [N, H, d]."""
    from torch_geometric.utils import scatter, softmax
    alpha = (q[dst] * k[src]).sum(-1) / math.sqrt(q.shape[-1])
    alpha = softmax(alpha, dst, num_nodes=q.shape[0])
    return scatter(v[src] * alpha.unsqueeze(-1), dst, dim=0, dim_size=q.shape[0], reduce="sum")


def lsh_edges(q, rotation):
    """Reformer's LSH graph of the patch rows of q [N, H, d] (node 0 the class token), as
    patchgraph's `lsh:B:1:0:C` with the class token: (src, dst) int64."""
    n = q.shape[0]
    x = q.detach()[1:].reshape(n - 1, -1)
    p = x @ rotation
    bucket = torch.cat([p, -p], 1).argmax(1)
    order = torch.sort(bucket, stable=True).indices           # nodes by (bucket, id)
    sb = bucket[order]
    pos = torch.arange(n - 1)
    cand = ((pos // LSH_CHUNK - 1) * LSH_CHUNK).unsqueeze(1) + torch.arange(2 * LSH_CHUNK)  # [P, 2c]
    ok = (cand >= 0) & (cand < n - 1)
    cand = cand.clamp(0, n - 2)
    ok &= sb[cand] == sb.unsqueeze(1)
    rows, cols = ok.nonzero(as_tuple=True)
    dst, src = order[rows] + 1, order[cand[rows, cols]] + 1
    patches = torch.arange(1, n)
    src = torch.cat([src, torch.zeros(n - 1, dtype=torch.long), torch.arange(n)])
    dst = torch.cat([dst, patches, torch.zeros(n, dtype=torch.long)])
    return src, dst


def efficient_worker(spec: dict) -> None:
    """One `efficient` case in this (fresh) process; talks to the parent by '@@' lines on stdout."""
    import gc

    def say(tag, payload):
        print(f"@@{tag} {json.dumps(payload)}", flush=True)

    torch.set_num_threads(spec["threads"])
    op, mode, n = spec["op"], spec["mode"], spec["N"]
    grad = mode == "fwdbwd"
    msgs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # module parameters and the Performer projection
        params, extra = [], {}
        if op in ("sdpa", "performer"):
            q, k, v = (torch.randn(1, H, n, D, generator=gen).requires_grad_(grad) for _ in range(3))
            inputs = [q, k, v]
            if op == "sdpa":
                package, version = "torch", torch.__version__
                call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
            else:
                import importlib.metadata
                from performer_pytorch import FastAttention
                package, version = "performer-pytorch", importlib.metadata.version("performer-pytorch")
                fa = FastAttention(D, nb_features=PERFORMER_FEATURES, causal=False)
                assert fa.projection_matrix.shape == (PERFORMER_FEATURES, D)
                call = lambda: fa(q, k, v)
                extra["features"] = PERFORMER_FEATURES
            out_shape = (1, H, n, D)
        elif op in ("window", "bigbird", "lsh"):
            import importlib.metadata
            import torch_geometric
            package, version = "torch_geometric", importlib.metadata.version("torch_geometric")
            q, k, v = (torch.randn(n, H, D, generator=gen).requires_grad_(grad) for _ in range(3))
            inputs = [q, k, v]
            if op == "lsh":
                rotation = torch.randn(WIDTH, LSH_BUCKETS // 2, generator=gen)
                call = lambda: edge_attention(q, k, v, *lsh_edges(q, rotation))
                extra["buckets"], extra["chunk"] = LSH_BUCKETS, LSH_CHUNK
            else:
                ei = np.load(os.path.join(spec["graphs"], f"{op}_{n}.npz"))["edge_index"].astype(np.int64)
                src, dst = torch.from_numpy(ei[0]).contiguous(), torch.from_numpy(ei[1]).contiguous()
                call = lambda: edge_attention(q, k, v, src, dst)
                extra["edges"] = int(src.numel())
            out_shape = (n, H, D)
        else:
            import importlib.metadata
            import torch.nn as nn
            if op == "linformer":
                from linformer import LinformerSelfAttention
                package = "linformer"
                x = torch.randn(1, n, WIDTH, generator=gen).requires_grad_(grad)
                layer = LinformerSelfAttention(dim=WIDTH, seq_len=n, k=LINFORMER_K, heads=H, dim_head=D)
                for name in ("to_q", "to_k", "to_v", "to_out"):
                    setattr(layer, name, nn.Identity())  # the attention alone: q = k = v = x
                extra["proj_k"] = LINFORMER_K
            else:
                from nystrom_attention import NystromAttention
                package = "nystrom-attention"
                x = torch.randn(1, n, 3 * WIDTH, generator=gen).requires_grad_(grad)
                layer = NystromAttention(dim=WIDTH, dim_head=D, heads=H, num_landmarks=NYSTROM_LANDMARKS,
                                         pinv_iterations=NYSTROM_ITERS, residual=True)
                layer.to_qkv, layer.to_out = nn.Identity(), nn.Identity()  # x's chunks are q, k, v
                extra["landmarks"] = NYSTROM_LANDMARKS
                extra["pinv_iterations"] = NYSTROM_ITERS
                extra["residual_conv_kernel"] = layer.res_conv.kernel_size[0]
            inputs = [x]
            version = importlib.metadata.version(package)
            layer = layer.eval().requires_grad_(grad)
            params = list(layer.parameters())
            extra["params"] = sum(p.numel() for p in params)
            call = lambda: layer(x)
            out_shape = (1, n, WIDTH)
        dout = torch.randn(*out_shape, generator=gen)

        if grad:
            def fn():
                for t in inputs + params:
                    t.grad = None
                out = call()
                out.backward(dout)
        else:
            def fn():
                with torch.no_grad():
                    return call()

        gc.collect()
        base = _status_mib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM (peak RSS) to the current RSS
            method = "VmHWM after clear_refs reset - VmRSS before the calls"
        except OSError:
            method = "ru_maxrss (not reset) - VmRSS before the calls"
        say("ready", {"rss_mib": base})
        t = time.perf_counter()
        out = fn()
        probe = time.perf_counter() - t
        if not grad:
            assert tuple(out.shape) == out_shape, (tuple(out.shape), out_shape)
        del out
        say("probe", {"probe_s": probe})
        if probe >= 1.0:
            ms, min_ms, calls = time_call(fn, spec["min_time"], min_calls=3, warmup=0)
        else:
            ms, min_ms, calls = time_call(fn, spec["min_time"])
        if method.startswith("VmHWM"):
            peak = _status_mib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for w in caught:
        m = f"{w.category.__name__}: {w.message}"
        if m not in msgs:
            msgs.append(m)
    say("result", dict(median_ms=ms, min_ms=min_ms, calls=calls, probe_s=probe, rss_before_mib=base,
                       peak_extra_mib=max(0.0, peak - base), max_rss_mib=max_rss, mem_method=method,
                       package=package, package_version=version, warnings=msgs, **extra))


def run_efficient_case(spec: dict, budget: float, mem_limit_mib: float):
    """Run one case in a fresh process; returns (result dict or None, note or None)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--efficient-case", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    err = []
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    state, probe_deadline, result, note = "setup", None, None, None
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line.startswith("@@"):
            tag, payload = line[2:].split(" ", 1)
            payload = json.loads(payload)
            if tag == "ready":
                state, probe_deadline = "probe", time.perf_counter() + budget
            elif tag == "probe":
                state = "timing"
            elif tag == "result":
                result = payload
        rss = _status_mib("VmRSS", proc.pid)
        if rss is not None and rss > mem_limit_mib:
            note = f"over memory limit: RSS {rss:.0f} MiB > {mem_limit_mib:.0f} MiB (killed)"
        elif state == "probe" and time.perf_counter() > probe_deadline:
            note = f"over budget: one cold call took more than {budget:g} s (killed)"
        if note is not None:
            proc.kill()
            proc.wait()
            return None, note
    rc = proc.wait()
    if result is None:
        tail = "".join(err).strip().splitlines()[-3:]
        return None, f"failed: exit code {rc}: " + " | ".join(tail)
    return result, None


def efficient_section(args, records, torch_v, pyg_v) -> None:
    """Section 6: one attention layer, SDPA vs Performer / Linformer / Nystromformer (see docstring)."""
    grids = EFFICIENT_GRIDS[:2] if args.quick else EFFICIENT_GRIDS
    if args.efficient_grids:
        grids = tuple(int(g) for g in args.efficient_grids.split(","))
    mem_limit = args.efficient_mem_gib * 1024
    print()
    print(f"# efficient: one attention layer, B=1, H={H}, d={D}, width {WIDTH}, fp32; a fresh process per "
          f"case; budget {args.budget:g} s for the cold probe call; memory limit {args.efficient_mem_gib:g} GiB")
    hdr = (f"{'peer':<10} {'op':<26} {'N':>6} {'median_ms':>11} {'min_ms':>11} {'GFLOP/s':>8} {'calls':>5} "
           f"{'probe_s':>8} {'extraMiB':>9} {'rssMiB':>7}  note")
    print(hdr)
    print("-" * len(hdr))
    warned = []
    for name in EFFICIENT_OPS:
        peer = {"sdpa": "torch", "window": "pyg", "bigbird": "pyg", "lsh": "pyg"}.get(name, name)
        for mode in EFFICIENT_MODES:
            op = f"efficient_{name}_{mode}"
            if not wanted(op, args.only):
                continue
            if name in ("window", "bigbird") and args.graphs is None:
                print(f"# {op}: skipped (no --graphs DIR from efficient_sweep --export-graphs)")
                continue
            skip = None
            for g in grids:
                n = g * g + 1
                rec = {"peer": peer, "op": op, "B": 1, "N": n, "k": None, "H": H, "d": D,
                       "median_ms": None, "gflops": None, "threads": args.threads, "torch": torch_v,
                       "pyg": pyg_v, "calls": 0, "min_ms": None, "grid": g, "patch": 224 // g,
                       "mode": mode}
                if skip is None:
                    spec = {"op": name, "mode": mode, "N": n, "threads": args.threads,
                            "min_time": args.min_time, "graphs": args.graphs}
                    res, note = run_efficient_case(spec, args.budget, mem_limit)
                    if note is not None and note.startswith("over"):
                        skip = f"{note.split(':')[0]} (at N = {n}; larger N not run)"
                else:
                    res, note = None, skip
                if res is not None:
                    warned += [w for w in res.pop("warnings") if w not in warned]
                    rec.update(res)
                    if name == "sdpa":
                        flops = (4 if mode == "fwd" else 14) * H * n * n * D
                        rec["gflops"] = flops / (res["median_ms"] * 1e-3) / 1e9
                rec["note"] = note
                records.append(rec)
                f = lambda v, w, p: f"{'-':>{w}}" if v is None else f"{v:>{w}.{p}f}"
                print(f"{peer:<10} {op:<26} {n:>6} {f(rec['median_ms'], 11, 3)} {f(rec['min_ms'], 11, 3)} "
                      f"{f(rec['gflops'], 8, 1)} {rec['calls']:>5} {f(rec.get('probe_s'), 8, 2)} "
                      f"{f(rec.get('peak_extra_mib'), 9, 0)} {f(rec.get('max_rss_mib'), 7, 0)}  {note or ''}",
                      flush=True)
    for w in warned:
        print(f"# warning (efficient case processes): {w}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="min timed seconds per case")
    ap.add_argument("--quick", action="store_true", help="only N in {50, 197}")
    ap.add_argument("--only", default=None, help="keep ops whose name contains this substring")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the records here")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="efficient: skip a case whose cold probe call takes longer (s)")
    ap.add_argument("--efficient-mem-gib", type=float, default=12.0,
                    help="efficient: kill a case whose RSS passes this (GiB)")
    ap.add_argument("--efficient-grids", default=None, metavar="G,G,...",
                    help="efficient: these grids only (N = g*g + 1), e.g. 56,112")
    ap.add_argument("--graphs", default=None, metavar="DIR",
                    help="efficient: edge lists of window and bigbird (efficient_sweep --export-graphs DIR)")
    ap.add_argument("--efficient-case", default=None, help=argparse.SUPPRESS)  # internal: one case
    args = ap.parse_args()
    if args.efficient_case is not None:
        efficient_worker(json.loads(args.efficient_case))
        return

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    caught = []  # PyG / torch warnings raised while importing, building or running the layers
    with warnings.catch_warnings(record=True) as import_warnings:
        warnings.simplefilter("always")
        import torch_geometric
        from torch_geometric.nn import GATConv, GATv2Conv, TransformerConv
    caught += [w for w in import_warnings]

    torch_v, pyg_v = torch.__version__, torch_geometric.__version__
    print(f"torch {torch_v}, torch_geometric {pyg_v}, numpy {np.__version__}")
    print(f"torch.get_num_threads() = {torch.get_num_threads()} (--threads {args.threads})")
    print(f"torch.backends.mkldnn.is_available() = {torch.backends.mkldnn.is_available()}")
    info = torch.__config__.parallel_info().splitlines()
    print("parallel_info: " + "; ".join(
        l.strip() for l in info if "threads" in l or "backend" in l or "OpenMP" in l))
    print(f"min-time {args.min_time} s, >= 5 calls after 3 warm-ups, median reported")
    print()

    grids = GRIDS[:2] if args.quick else GRIDS
    records = []

    def record(peer, op, b, n, k, ms, min_ms, calls, gflops, **extra):
        rec = {"peer": peer, "op": op, "B": b, "N": n, "k": k, "H": H, "d": D,
               "median_ms": ms, "gflops": gflops, "threads": args.threads,
               "torch": torch_v, "pyg": pyg_v, "calls": calls, "min_ms": min_ms}
        rec.update(extra)
        # Peak resident memory of the whole process so far (Linux reports KiB): it only grows, so
        # a jump on a row means that case raised it.
        rec["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        records.append(rec)
        e = extra.get("E")
        dash = lambda v, w: f"{'-':>{w}}" if v is None else f"{v:>{w}}"
        gf = f"{'-':>9}" if gflops is None else f"{gflops:>9.1f}"
        print(f"{peer:<6} {op:<24} {dash(b, 3)} {n:>5} {dash(k, 4)} {dash(e, 8)} "
              f"{ms:>11.3f} {min_ms:>10.3f} {gf} {calls:>6} {rec['max_rss_mib']:>8.0f}", flush=True)

    header = (f"{'peer':<6} {'op':<24} {'B':>3} {'N':>5} {'k':>4} {'E':>8} "
              f"{'median_ms':>11} {'min_ms':>10} {'GFLOP/s':>9} {'calls':>6} {'maxrssMiB':>8}")
    print(header)
    print("-" * len(header))

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # 1. SDPA, dense attention.
        if wanted("sdpa", args.only):
            for b in (1, 8):
                for g in grids:
                    n = g * g + 1
                    q, k_, v = (torch.randn(b, H, n, D, generator=gen) for _ in range(3))
                    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k_, v)
                    ms, min_ms, calls = time_call(fn, args.min_time)
                    gf = 4 * b * H * n * n * D / (ms * 1e-3) / 1e9
                    record("torch", "sdpa", b, n, None, ms, min_ms, calls, gf)
                    del q, k_, v

        # 2. GEMM peak.
        if wanted("torch_mm_2048", args.only):
            a = torch.randn(2048, 2048, generator=gen)
            bm = torch.randn(2048, 2048, generator=gen)
            ms, min_ms, calls = time_call(lambda: torch.mm(a, bm), args.min_time)
            rec_gf = 2 * 2048**3 / (ms * 1e-3) / 1e9
            record("torch", "torch_mm_2048", None, 2048, None, ms, min_ms, calls, rec_gf,
                   note="2048x2048 @ 2048x2048; H, d are not meaningful here")
            records[-1]["H"] = records[-1]["d"] = None
            del a, bm

        # 3. PyG layers.
        layer_types = (GATConv, GATv2Conv, TransformerConv)
        graph_names = [f"knn{k}" for k in KNN_KS] + ["complete"]
        if any(wanted(f"{L.__name__}_{gn}", args.only) for L in layer_types for gn in graph_names):
            torch.manual_seed(0)
            with warnings.catch_warnings(record=True) as w_layers:
                warnings.simplefilter("always")
                layers = {L.__name__: L(WIDTH, D, heads=H).eval() for L in layer_types}
            caught += list(w_layers)
            for name, layer in layers.items():
                extra = f"add_self_loops={layer.add_self_loops}" if hasattr(
                    layer, "add_self_loops") else "no self-loop handling"
                print(f"# {name}: concat={layer.concat}, {extra}, "
                      f"params={sum(p.numel() for p in layer.parameters())}")

            notes = []
            for g in grids:
                n = g * g + 1
                x = torch.randn(n, WIDTH, generator=gen)
                graphs = []
                for k in KNN_KS:
                    graphs.append((f"knn{k}", k, lambda k=k: knn_grid_graph(g, k),
                                   g * g * k + 2 * g * g + 1))
                graphs.append(("complete", None, lambda: complete_graph(n), n * n))
                for gname, k, build, e_expected in graphs:
                    ops = [L for L in layers if wanted(f"{L}_{gname}", args.only)]
                    if not ops:
                        continue
                    if gname == "complete" and n > 785:
                        notes.append(f"complete N={n}: skipped ({n * n} edges)")
                        continue
                    t = time.perf_counter()
                    ei_np = build()
                    build_ms = (time.perf_counter() - t) * 1e3
                    assert ei_np.shape == (2, e_expected), (gname, n, ei_np.shape, e_expected)
                    assert ei_np.min() >= 0 and ei_np.max() < n
                    ei = torch.from_numpy(ei_np)
                    print(f"# graph {gname} N={n}: E={ei.shape[1]} (formula ok), "
                          f"built in {build_ms:.1f} ms (numpy, untimed)", flush=True)
                    for lname in ops:
                        layer = layers[lname]
                        fn = lambda: layer(x, ei)
                        with warnings.catch_warnings(record=True) as w_run:
                            warnings.simplefilter("always")
                            if gname == "complete" and n == 785:
                                t = time.perf_counter()
                                fn()
                                probe = time.perf_counter() - t
                                if probe >= COMPLETE_PROBE_LIMIT_S:
                                    notes.append(f"{lname}_complete N=785: skipped, one call "
                                                 f"took {probe:.1f} s >= 10 s")
                                    continue
                            ms, min_ms, calls = time_call(fn, args.min_time)
                        caught += list(w_run)
                        record("pyg", f"{lname}_{gname}", 1, n, k, ms, min_ms, calls, None,
                               E=int(ei.shape[1]), graph=gname, graph_build_ms=build_ms)
                    del ei, ei_np
            for note in notes:
                print(f"# note: {note}")

    # 4. timm ViT forwards.
    timm_ops = [m for m in TIMM_MODELS if wanted(f"timm_{m}", args.only)]
    if timm_ops:
        with warnings.catch_warnings(record=True) as w_timm:
            warnings.simplefilter("always")
            import timm
        caught += list(w_timm)
        timm_v = timm.__version__
        print(f"# timm {timm_v}: create_model(name, pretrained=False).eval(), torch.inference_mode(), "
              + ("1 warm-up + 3 timed calls (--quick)" if args.quick
                 else f">= 10 calls and >= {args.min_time} s after 3 warm-ups"), flush=True)
        for name in timm_ops:
            torch.manual_seed(0)
            with warnings.catch_warnings(record=True) as w_model:
                warnings.simplefilter("always")
                model = timm.create_model(name, pretrained=False).eval()
            caught += list(w_model)
            img = model.patch_embed.img_size[0]
            patch = model.patch_embed.patch_size[0]
            dim, depth = model.embed_dim, len(model.blocks)
            heads = model.blocks[0].attn.num_heads
            n = model.patch_embed.num_patches + model.num_prefix_tokens
            flops = vit_flops_per_image(img, patch, dim, depth, model.num_classes,
                                        mlp_ratio=model.blocks[0].mlp.fc1.out_features / dim,
                                        prefix_tokens=model.num_prefix_tokens)
            params = sum(p.numel() for p in model.parameters())
            print(f"# {name}: D={dim}, depth={depth}, heads={heads}, N={n}, params={params / 1e6:.1f} M, "
                  f"{flops / 1e9:.2f} GFLOP/image, fused_attn={model.blocks[0].attn.fused_attn}", flush=True)
            for b in TIMM_BATCHES:
                x = torch.randn(b, 3, img, img, generator=gen)
                with torch.inference_mode():
                    fn = lambda: model(x)
                    if args.quick:
                        ms, min_ms, calls = time_call(fn, 0.0, min_calls=3, warmup=1)
                    else:
                        ms, min_ms, calls = time_call(fn, args.min_time, min_calls=10, warmup=3)
                    assert fn().shape == (b, model.num_classes)
                record("timm", name, b, n, None, ms, min_ms, calls, b * flops / (ms * 1e-3) / 1e9,
                       H=heads, d=dim // heads, timm=timm_v, ms_per_image=ms / b,
                       images_per_s=1e3 * b / ms, img_size=img, embed_dim=dim, depth=depth,
                       params=params, flops_per_image=flops,
                       fused_attn=bool(model.blocks[0].attn.fused_attn))
                print(f"#   {name} B={b}: {ms:.2f} ms/batch, {ms / b:.2f} ms/image, "
                      f"{1e3 * b / ms:.1f} images/s", flush=True)
                del x
            del model

    # 5. Training throughput of the small MNIST ViT (issue #5): forward + backward + AdamW.
    if wanted("train_vit_mnist", args.only):
        with warnings.catch_warnings(record=True) as w_timm:
            warnings.simplefilter("always")
            import functools
            from timm.models.vision_transformer import VisionTransformer
        caught += list(w_timm)
        torch.manual_seed(0)
        model = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4,
                                  num_heads=4, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        b = 128
        x = torch.randn(b, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (b,), generator=gen)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        with torch.enable_grad():
            if args.quick:
                ms, min_ms, calls = time_call(step, 0.0, min_calls=5, warmup=2)
            else:
                ms, min_ms, calls = time_call(step, args.min_time, min_calls=20, warmup=3)
        record("torch", "train_vit_mnist", b, 50, None, ms, min_ms, calls, None, images_per_s=1e3 * b / ms,
               model="VisionTransformer(28, patch 4, in 1, D 64, depth 4, heads 4, 10 classes)",
               step="zero_grad + CE(label_smoothing=0.1) + backward + clip_grad_norm_(1.0) + AdamW.step")
        print(f"#   train_vit_mnist B={b}: {ms:.2f} ms/step, {1e3 * b / ms:.1f} images/s", flush=True)
        del model, opt

    # 6. Efficient attention, one layer (a fresh process per case).
    if any(wanted(f"efficient_{o}_{m}", args.only) for o in EFFICIENT_OPS for m in EFFICIENT_MODES):
        efficient_section(args, records, torch_v, pyg_v)

    print()
    seen = set()
    for w in caught:
        key = (w.category.__name__, str(w.message))
        if key not in seen:
            seen.add(key)
            print(f"# warning: {key[0]}: {key[1]}")
    total = time.perf_counter() - t_start
    print(f"# total run time {total:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"# wrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    main()
