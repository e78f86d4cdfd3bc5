"""Layers from PyTorch state dicts (PyG's layers, timm's Attention), whole timm ViTs, and the
commands as functions, against the peers in the same process."""

import json

import numpy as np
import pytest
import timm
import torch
import torch_geometric.nn as pyg_nn

import patchgraph as pg
from conftest import DATA, FIXTURES, close


def state(module):
    return {k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()}


def random_edge_index(rng, n, e):
    return np.stack([rng.integers(0, n, e), rng.integers(0, n, e)]).astype(np.int64)


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "GATConv", "in_channels": 20, "out_channels": 7, "heads": 3},
        {"kind": "GATConv", "in_channels": 20, "out_channels": 7, "heads": 2, "concat": False, "negative_slope": 0.1},
        {"kind": "GATv2Conv", "in_channels": 20, "out_channels": 7, "heads": 3, "share_weights": True},
        {"kind": "TransformerConv", "in_channels": 20, "out_channels": 7, "heads": 3, "beta": True},
        {"kind": "TransformerConv", "in_channels": 20, "out_channels": 7, "heads": 2, "root_weight": False},
    ],
)
def test_pyg_layers_from_their_state_dicts(rng, config):
    torch.manual_seed(0)
    args = {k: v for k, v in config.items() if k != "kind"}
    peer = getattr(pyg_nn, config["kind"])(**args).eval()
    layer = pg.Layer.from_state_dict(config, state(peer))
    n = 30
    ei = random_edge_index(rng, n, 100)
    x = rng.standard_normal((n, 20), dtype=np.float32)
    g = pg.Graph.from_edge_index(ei, n)
    xt = torch.from_numpy(x).requires_grad_()
    y_peer, (ei_peer, alpha) = peer(xt, torch.from_numpy(ei), return_attention_weights=True)
    y, (ei_ours, w) = layer.forward(g, x, return_attention_weights=True)
    close(y, y_peer.detach().numpy(), 1e-5, f"{config['kind']} output")
    np.testing.assert_array_equal(ei_ours, ei_peer.numpy())
    close(w, alpha.detach().numpy(), 1e-5, f"{config['kind']} weights")
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, grads = layer.backward(g, x, dy)
    params = dict(peer.named_parameters())
    # allow_unused: PyG creates lin_skip even with root_weight=False and never uses it.
    ref = torch.autograd.grad((y_peer * torch.from_numpy(dy)).sum(), [xt] + list(params.values()), allow_unused=True)
    close(dx, ref[0].numpy(), 1e-4, "dx")
    for (name, p), r in zip(params.items(), ref[1:]):
        want = torch.zeros_like(p) if r is None else r
        close(grads.get(name, np.zeros(p.shape, np.float32)), want.numpy().reshape(p.shape), 1e-4, f"d{name}")
    # The state dict round-trips into the peer (PyG's names, shared weights under both names).
    peer.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})


def test_timm_attention_layer(rng):
    from timm.layers import Attention

    torch.manual_seed(0)
    peer = Attention(48, num_heads=3, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move the norms off their identity init
    config = {"kind": "Attention", "dim": 48, "num_heads": 3, "qkv_bias": True, "qk_norm": True,
              "norm_layer": "torch.nn.LayerNorm"}
    layer = pg.Layer.from_state_dict(config, state(peer))
    x = rng.standard_normal((2, 10, 48), dtype=np.float32)
    y_peer = peer(torch.from_numpy(x)).detach().numpy()
    g = pg.Graph.disjoint_union([pg.Graph.complete(10)] * 2)
    y = layer.forward(g, x.reshape(20, 48))
    close(y, y_peer.reshape(20, 48), 1e-5, "timm Attention with qk_norm")


def test_layer_config_errors():
    with pytest.raises(ValueError, match="edge_dim"):
        pg.Layer.from_config({"kind": "GATConv", "in_channels": 4, "out_channels": 2, "edge_dim": 3})
    with pytest.raises(ValueError, match="unknwn"):
        pg.Layer.from_config({"kind": "TransformerConv", "in_channels": 4, "out_channels": 2, "unknwn": 1})
    peer = pyg_nn.GATConv(4, 2)
    sd = state(peer)
    sd["extra"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="extra"):
        pg.Layer.from_state_dict({"kind": "GATConv", "in_channels": 4, "out_channels": 2}, sd)
    sd = state(peer)
    sd["lin.weight"] = sd["lin.weight"][:, :3].copy()
    with pytest.raises(ValueError, match="lin.weight"):
        pg.Layer.from_state_dict({"kind": "GATConv", "in_channels": 4, "out_channels": 2}, sd)


def timm_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()


def test_timm_vit_on_random_inputs_and_the_bundled_photo(rng):
    model = timm_vit(img_size=64, depth=3)
    config = {"img_size": 64, "patch_size": 16, "embed_dim": 192, "depth": 3, "num_heads": 3, "num_classes": 1000}
    vit = pg.Vit.from_state_dict(config, state(model))
    x = rng.standard_normal((2, 3, 64, 64), dtype=np.float32)
    close(vit.forward(x), model(torch.from_numpy(x)).detach().numpy(), 1e-4, "ViT logits")
    from PIL import Image

    photo = Image.open(DATA / "images" / "chelsea.png").convert("RGB").resize((64, 64), Image.BICUBIC)
    img = (np.asarray(photo, dtype=np.float32) / 255.0 - 0.5) / 0.5
    img = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
    close(vit.forward(img), model(torch.from_numpy(img)).detach().numpy(), 1e-4, "ViT logits on the photo")
    # The same weights on a sparse graph differ, and run.
    assert vit.forward(img, graph="grid8:1").shape == (1, 1000)


def test_vit_files_and_config(tmp_path):
    model = timm_vit(img_size=32, depth=2, num_classes=10)
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    config = {"img_size": 32, "patch_size": 16, "embed_dim": 192, "depth": 2, "num_heads": 3, "num_classes": 10}
    vit, notes = pg.Vit.load(path, config)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), dtype=np.float32)
    close(vit.forward(x), model(torch.from_numpy(x)).detach().numpy(), 1e-4, "loaded from safetensors")
    assert vit.config["embed_dim"] == 192 and notes == []
    out = tmp_path / "back.safetensors"
    vit.save(out)
    again, _ = pg.Vit.load(out)  # the config rides in the metadata
    close(again.forward(x), vit.forward(x), 0.0, "saved and loaded")
    with pytest.raises(FileNotFoundError):
        pg.Vit.load(tmp_path / "missing.safetensors", config)
    with pytest.raises(ValueError, match="patch_sise"):
        pg.Vit.from_config({"img_size": 32, "patch_sise": 16})


def test_commands_return_data(tmp_path):
    report = pg.graph(DATA / "images" / "chelsea.png", graph="knn:4", class_token=True)
    assert report["nodes"] == 197 and isinstance(report["graph"], pg.Graph)
    assert report["graph"].num_edges == report["edges"]
    ckpt, cfg = FIXTURES / "vit" / "tiny_token.safetensors", FIXTURES / "vit" / "tiny_token.json"
    r = pg.infer(DATA / "images" / "chelsea.png", ckpt, config=cfg, topk=3)
    (result,) = r["results"]
    assert len(result["top"]) == 3 and len(result["logits"]) == r["config"]["num_classes"]
    best = int(np.argmax(result["logits"]))
    assert result["top"][0]["class"] == best
    out = tmp_path / "converted.safetensors"
    assert pg.convert(ckpt, out, config=cfg)["wrote"] == [str(out)]
    t = pg.train(DATA / "mnist5k", patch=7, dim=16, depth=1, heads=2, epochs=1, limit=256, verbose=False)
    assert len(t["metrics"]) == 1 and 0.0 <= t["metrics"][0]["test_accuracy"] <= 1.0
    with pytest.raises(FileNotFoundError):
        pg.infer(DATA / "images" / "chelsea.png", tmp_path / "nope.safetensors", config=cfg)
    with pytest.raises(ValueError, match="--epochs"):
        pg.train(DATA / "mnist5k", epochs=0)
    with pytest.raises(ValueError, match="unexpected argument"):
        pg.graph(DATA / "images" / "chelsea.png", colour="red")


def test_dataset_loader():
    images, labels, classes = pg.load_dataset(DATA / "mnist5k", "test")
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64 and classes == 10 and 0.0 <= images.min() and images.max() <= 1.0
