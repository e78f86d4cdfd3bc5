"""torch.distributed (gloo, two CPU processes) through patchgraph's attention: DDP averages the
two processes' gradients, so a few steps on half-batches each end at the parameters of the same
steps on whole batches in one process (up to float rounding)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_and_data():
    import timm

    import patchgraph.torch as pgt

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
                              num_classes=10, embed_dim=32, depth=2, num_heads=2, global_pool="avg")
    pgt.patch_timm_vit(model, "grid8:1")
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(3, 16, 1, 28, 28, generator=g), torch.randint(0, 10, (3, 16), generator=g)


def train(model, xs, ys, rank, world):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    per = xs.shape[1] // world
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[rank * per:(rank + 1) * per]), y[rank * per:(rank + 1) * per])
        loss.backward()
        opt.step()


def worker(rank, world, port, out):
    import patchgraph as pg

    pg.init_threads(1)
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, xs, ys = model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    train(ddp, xs, ys, rank, world)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    dist.destroy_process_group()


def test_two_processes_step_as_one(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    ddp_state = torch.load(out)
    model, xs, ys = model_and_data()
    train(model, xs, ys, 0, 1)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-4, atol=1e-5, msg=f"parameter {name}")
    assert any(not torch.equal(v, model_and_data()[0].state_dict()[k]) for k, v in ddp_state.items()), "it trained"
