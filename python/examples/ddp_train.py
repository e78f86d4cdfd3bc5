"""A timm ViT whose attention runs through patchgraph on a sparse patch graph, trained with
``torch.distributed`` (gloo, CPU) on the bundled MNIST digits, and the same run on one process.

    python python/examples/ddp_train.py                  # 2 processes, then 1 process, same recipe
    python python/examples/ddp_train.py --world-size 1   # one process only
    python python/examples/ddp_train.py --graph window:2 --epochs 10

Both runs see the same global batch (``--batch`` images from one seeded permutation per epoch,
split evenly over the processes), start from the same weights and take the same steps: DDP averages the
processes' gradients, so every step equals the one-process step up to float rounding, and the
test accuracy comes out the same. Each process pins patchgraph to one thread
(``patchgraph.init_threads``) and torch to one thread, so two processes use the machine's two
cores without oversubscribing them.

The model: ``vit_tiny_patch16_224`` reshaped for 28 x 28 digits (patch 7, 1 channel, width 64,
depth 4, 4 heads, average pooling), every block's attention on ``--graph`` (default
``grid8:1``: each patch attends to its 8 neighbours and itself, the class token to all).
"""

import argparse
import os
import pathlib
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parents[2]


def build(graph: str, seed: int):
    import timm

    import patchgraph.torch as pgt

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1, num_classes=10,
        embed_dim=64, depth=4, num_heads=4, global_pool="avg",
    )
    return pgt.patch_timm_vit(model, graph)


def load(split: str, limit: int):
    import patchgraph as pg

    images, labels, _ = pg.load_dataset(ROOT / "data" / "mnist5k", split)
    images = (images - 0.1307) / 0.3081
    return torch.from_numpy(images[:limit]), torch.from_numpy(labels[:limit])


def run(rank: int, world: int, args, results):
    import patchgraph as pg

    pg.init_threads(1)
    torch.set_num_threads(1)
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(args.port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = build(args.graph, args.seed)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    x, y = load("train", args.limit)
    xt, yt = load("test", 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(x) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=1.0 / args.epochs)
    per_rank = args.batch // world
    started = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch))
        model.train()
        for step in range(steps_per_epoch):
            batch = order[step * args.batch:(step + 1) * args.batch]
            mine = batch[rank * per_rank:(rank + 1) * per_rank]  # this process's share of the global batch
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[mine]), y[mine])
            loss.backward()
            opt.step()
            sched.step()
        if rank == 0:
            print(f"[{world} process{'es' if world > 1 else ''}] epoch {epoch + 1}: loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    if rank == 0:
        results[world] = (accuracy, time.time() - started)
    if world > 1:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--graph", default="grid8:1")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--limit", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=29512)
    args = ap.parse_args()
    if args.batch % max(args.world_size, 1):
        raise SystemExit("--batch must split evenly over the processes")
    manager = mp.Manager()
    results = manager.dict()
    worlds = [args.world_size] + ([1] if args.world_size > 1 else [])
    for world in worlds:
        if world > 1:
            mp.spawn(run, args=(world, args, results), nprocs=world, join=True)
        else:
            run(0, 1, args, results)
    for world in worlds:
        accuracy, seconds = results[world]
        print(f"{world} process{'es' if world > 1 else ''}: test accuracy {accuracy:.4f} "
              f"({args.epochs} epochs, graph {args.graph}, {seconds:.0f} s)")


if __name__ == "__main__":
    main()
