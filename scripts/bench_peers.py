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
`--only timm` selects the three ViTs and `--only vit_base` one of them). Prints a table; `--json FILE`
also writes a list of records
{"peer", "op", "B", "N", "k", "H", "d", "median_ms", "gflops", "threads", "torch", "pyg", ...}
(k null for dense ops, gflops null for PyG; extras: calls, min_ms, max_rss_mib, and for PyG E, graph,
graph_build_ms; for timm (op = the model name, H and d its heads and head width): timm,
ms_per_image, images_per_s, img_size, embed_dim, depth, params, flops_per_image, fused_attn).
"""

import argparse
import json
import statistics
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="min timed seconds per case")
    ap.add_argument("--quick", action="store_true", help="only N in {50, 197}")
    ap.add_argument("--only", default=None, help="keep ops whose name contains this substring")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the records here")
    args = ap.parse_args()

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
