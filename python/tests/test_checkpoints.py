"""PyTorch checkpoints read by patchgraph (its restricted unpickler) against PyTorch itself in the
same process: a timm ViT and DeiT's distilled ViT saved by ``torch.save`` in the layouts people
have (``{"model": ...}``, ``module.`` prefixes, float16, the legacy format), a pickle that would
run code, and ``embed`` on a CLIP tower. Tolerance 1e-4 of the logits' scale (whole models)."""

import os

import numpy as np
import pytest
import torch

import patchgraph as pg
from conftest import DATA, FIXTURES, close

CONFIG = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 2, "num_heads": 3, "num_classes": 5}


def perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    "layout",
    ["plain", "nested", "float16", "legacy"],
)
def test_timm_vit_saved_by_torch(tmp_path, layout):
    from timm.models.vision_transformer import VisionTransformer

    model = perturbed(VisionTransformer(**CONFIG), 0)
    sd = model.state_dict()
    path = tmp_path / "model.pth"
    if layout == "nested":
        torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    elif layout == "float16":
        sd = {k: v.half() for k, v in sd.items()}
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        torch.save(sd, path)
    elif layout == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(sd, path)
    vit, notes = pg.Vit.load(path, CONFIG)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    close(vit.forward(x), want, 1e-4, f"{layout} logits")
    if layout == "nested":
        assert any("state dict under `model`" in n for n in notes), notes


def test_deit_distilled(tmp_path):
    from timm.models.deit import VisionTransformerDistilled

    model = perturbed(VisionTransformerDistilled(**CONFIG), 1)
    path = tmp_path / "deit.pth"
    torch.save({"model": model.state_dict()}, path)
    vit, notes = pg.Vit.load(path, CONFIG)  # a plain config: the distillation token is found
    assert any("distilled" in n for n in notes), notes
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    close(vit.forward(x), want, 1e-4, "DeiT logits")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/patchgraph_pytest_pwned",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(ValueError, match=r"system.*nothing from the file was run"):
        pg.Vit.load(path, CONFIG)
    assert not os.path.exists("/tmp/patchgraph_pytest_pwned")
    # a whole pickled module (torch.save(model)) names its class
    from timm.models.vision_transformer import VisionTransformer

    torch.save(VisionTransformer(**CONFIG), tmp_path / "whole.pth")
    with pytest.raises(ValueError, match=r"state_dict.*timm\.models\.vision_transformer\.VisionTransformer"):
        pg.Vit.load(tmp_path / "whole.pth", CONFIG)


def test_embed_a_clip_tower_on_the_bundled_photos(tmp_path):
    out = tmp_path / "clip.npy"
    r = pg.embed(
        DATA / "images",
        FIXTURES / "checkpoints" / "clip_tiny_jit.pt",
        out,
        config=FIXTURES / "checkpoints" / "clip_tiny.timm_config.json",
        norm="clip",
        crop_pct=1.0,
        graph="grid8:1",
        compare=True,
    )
    e = np.load(out)
    assert e.shape == (4, 32) and e.dtype == np.float32 and r["embedding_width"] == 32
    assert [os.path.basename(f) for f in r["files"]] == ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    cos = r["compare"]["cosine"]
    assert len(cos) == 4 and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    assert min(cos) == pytest.approx(r["compare"]["min_cosine"])


def test_convert_writes_what_torch_load_reads(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    # timm names as .pth: torch.load(weights_only=True) + a strict load_state_dict
    model = perturbed(VisionTransformer(**CONFIG), 3)
    src = tmp_path / "src.pth"
    torch.save({"model": model.state_dict()}, src)
    out = tmp_path / "timm.pth"
    pg.convert(src, out, config=FIXTURES / "checkpoints" / "vit_tiny.config.json")
    again = VisionTransformer(**CONFIG).eval()
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(again(x).numpy(), model(x).numpy(), 0.0, "timm .pth written by convert")
    # CLIP names as .pth: the tensors open_clip's own tower saved, exactly
    out = tmp_path / "tower.pt"
    ckpt = FIXTURES / "checkpoints"
    pg.convert(ckpt / "clip_tiny_jit.pt", out, config=ckpt / "clip_tiny.timm_config.json", to="clip")
    ours = torch.load(out, weights_only=True)
    theirs = torch.load(ckpt / "clip_tiny_visual_only.pth", weights_only=True)
    assert set(ours) == set(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k].float()), k
    with pytest.raises(ValueError, match="not a CLIP model"):
        pg.convert(src, tmp_path / "nope.pth", config=ckpt / "vit_tiny.config.json", to="clip")
    assert not (tmp_path / "nope.pth").exists()
