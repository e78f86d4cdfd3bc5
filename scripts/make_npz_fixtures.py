"""Generate the `.npz` fixtures of patchgraph's Rust tests with real numpy and timm.

Writes into ``tests/fixtures/npz/``:

* ``numpy_dtypes.npz``            ``np.savez`` (stored entries) of the arrays in ``ARRAYS`` below;
* ``numpy_dtypes_compressed.npz`` the same arrays with ``np.savez_compressed`` (deflated);
* ``numpy_bigendian.npz``         one ``>f4`` array ``be`` (a dtype patchgraph must refuse);
* ``numpy_versions.npz``          ``v1``, ``v2``, ``v3``: ``[1, 2, 3] * k`` as float32, written by
                                  ``np.lib.format.write_array`` with NPY format version ``(k, 0)``;
* ``google_vit_tiny.npz``         a tiny ViT in Google's original naming (``Transformer/
                                  encoderblock_{i}/MultiHeadDotProductAttention_1/...``), random
                                  float32 values, and ``google_vit_tiny_timm.safetensors``: the
                                  ``state_dict()`` of timm's ``VisionTransformer`` after timm's own
                                  ``_load_weights`` loaded that ``.npz`` into it;
* ``google_vit_bigvision.npz``    the same for big_vision's naming (``params/`` prefix, scanned
                                  ``Transformer/encoderblock/`` with a leading layer axis,
                                  ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``, ``LayerNorm_1``,
                                  top-level ``pos_embedding``, no class token), and
                                  ``google_vit_bigvision_timm.safetensors``.

Every timm parameter is filled with NaN before ``_load_weights`` runs, and the script checks that
none is left: each tensor of the ``.safetensors`` file came from the ``.npz``.

Run from the repo root:  /tmp/pgvenv/bin/python scripts/make_npz_fixtures.py
"""

import io
import os
import zipfile

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer, _load_weights

OUT = os.path.join("tests", "fixtures", "npz")

ARRAYS = {
    "f4_c": np.array([[1.5, -2.0, 3.25], [4.0, 5.5, -6.75]], dtype=np.float32),
    # F-contiguous: numpy writes fortran_order True and the values column by column.
    "f8_fortran": np.asfortranarray(np.array([[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], dtype=np.float64)),
    "f4_fortran_3d": np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    "f2": np.array([1.0, -2.0, 0.333251953125, 65504.0], dtype=np.float16),
    "u1": np.array([0, 7, 255], dtype=np.uint8),
    "i4": np.array([[-1, 2], [3, -2147483648]], dtype=np.int32),
    "i8": np.array([-(2**40), 5], dtype=np.int64),
    "b1": np.array([True, False, True]),
    "scalar": np.array(2.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "Transformer/encoderblock_0/LayerNorm_0/scale": np.array([0.25, -0.5], dtype=np.float32),
}

D, H, P, C, K, M, DEPTH, IMG = 6, 2, 2, 3, 4, 12, 2, 4
DH = D // H
N = (IMG // P) ** 2


def google_block(rng, ln2, mha, mlp):
    """One encoder block's tensors in Google naming (relative to the block prefix)."""
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return {
        "LayerNorm_0/scale": r(D), "LayerNorm_0/bias": r(D),
        f"MultiHeadDotProductAttention_{mha}/query/kernel": r(D, H, DH),
        f"MultiHeadDotProductAttention_{mha}/query/bias": r(H, DH),
        f"MultiHeadDotProductAttention_{mha}/key/kernel": r(D, H, DH),
        f"MultiHeadDotProductAttention_{mha}/key/bias": r(H, DH),
        f"MultiHeadDotProductAttention_{mha}/value/kernel": r(D, H, DH),
        f"MultiHeadDotProductAttention_{mha}/value/bias": r(H, DH),
        f"MultiHeadDotProductAttention_{mha}/out/kernel": r(H, DH, D),
        f"MultiHeadDotProductAttention_{mha}/out/bias": r(D),
        f"LayerNorm_{ln2}/scale": r(D), f"LayerNorm_{ln2}/bias": r(D),
        f"MlpBlock_{mlp}/Dense_0/kernel": r(D, M), f"MlpBlock_{mlp}/Dense_0/bias": r(M),
        f"MlpBlock_{mlp}/Dense_1/kernel": r(M, D), f"MlpBlock_{mlp}/Dense_1/bias": r(D),
    }


def timm_reference(npz_path, st_path, **kwargs):
    model = VisionTransformer(img_size=IMG, patch_size=P, in_chans=C, num_classes=K, embed_dim=D, depth=DEPTH,
                              num_heads=H, mlp_ratio=M / D, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    _load_weights(model, npz_path)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        assert not torch.isnan(v).any(), f"{k} was not loaded by _load_weights"
    save_file(sd, st_path, metadata={"made_by": "scripts/make_npz_fixtures.py", "timm": timm.__version__,
                                     "numpy": np.__version__, "torch": torch.__version__,
                                     "constructed_as": f"VisionTransformer({kwargs})"})


def main():
    os.makedirs(OUT, exist_ok=True)
    np.savez(os.path.join(OUT, "numpy_dtypes.npz"), **ARRAYS)
    np.savez_compressed(os.path.join(OUT, "numpy_dtypes_compressed.npz"), **ARRAYS)
    np.savez(os.path.join(OUT, "numpy_bigendian.npz"), be=np.array([1.0], dtype=">f4"))
    with zipfile.ZipFile(os.path.join(OUT, "numpy_versions.npz"), "w") as z:
        for k in (1, 2, 3):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.array([1, 2, 3], dtype=np.float32) * k, version=(k, 0))
            z.writestr(f"v{k}.npy", buf.getvalue())

    rng = np.random.default_rng(20240611)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)

    # Google's original ViT naming, as in ViT-B_16.npz.
    g = {"embedding/kernel": r(P, P, C, D), "embedding/bias": r(D), "cls": r(1, 1, D),
         "Transformer/posembed_input/pos_embedding": r(1, N + 1, D),
         "Transformer/encoder_norm/scale": r(D), "Transformer/encoder_norm/bias": r(D),
         "head/kernel": r(D, K), "head/bias": r(K)}
    for i in range(DEPTH):
        for k, v in google_block(rng, ln2=2, mha=1, mlp=3).items():
            g[f"Transformer/encoderblock_{i}/{k}"] = v
    path = os.path.join(OUT, "google_vit_tiny.npz")
    np.savez(path, **g)
    timm_reference(path, os.path.join(OUT, "google_vit_tiny_timm.safetensors"))

    # big_vision naming: params/ prefix, scanned blocks, no class token, average pooling.
    blocks = [google_block(rng, ln2=1, mha=0, mlp=0) for _ in range(DEPTH)]
    b = {"params/embedding/kernel": r(P, P, C, D), "params/embedding/bias": r(D),
         "params/pos_embedding": r(1, N, D),
         "params/Transformer/encoder_norm/scale": r(D), "params/Transformer/encoder_norm/bias": r(D),
         "params/head/kernel": r(D, K), "params/head/bias": r(K)}
    for k in blocks[0]:
        b[f"params/Transformer/encoderblock/{k}"] = np.stack([blk[k] for blk in blocks])
    path = os.path.join(OUT, "google_vit_bigvision.npz")
    np.savez(path, **b)
    timm_reference(path, os.path.join(OUT, "google_vit_bigvision_timm.safetensors"),
                   class_token=False, global_pool="avg", fc_norm=False)


if __name__ == "__main__":
    main()
