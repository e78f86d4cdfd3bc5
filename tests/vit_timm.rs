//! timm's later `VisionTransformer` arguments, as a timm user writes them, against timm itself:
//! the fixtures in `tests/fixtures/vit_timm/` (written by `scripts/make_timm_fixtures.py` from
//! timm 1.0.31 models with every parameter perturbed) hold the config JSON exactly as passed to
//! `VisionTransformer(**config)`, the state dict, an input batch, timm's logits and pre-logits in
//! float64 from the stored float32 weights, and (pooled variants) the loss and every gradient.
//!
//! Variants: `qk_norm`, register tokens (with and without `no_embed_class`), `pre_norm` without
//! a final norm, `global_pool` `max`, `avgmax` (with `pool_include_prefix`) and `''`, the
//! activations `gelu_tanh`, `quick_gelu`, `relu`, `silu`, `scale_attn_norm` / `scale_mlp_norm`
//! without `proj_bias`, `pos_embed='none'`, a rectangular image in rectangular patches, and the
//! training-only arguments (dropouts, stochastic depth, `weight_init`), accepted.
//!
//! Tolerances as `tests/vit.rs`: `max |ours - timm| <= 1e-4 * max |timm|` for a whole model's
//! outputs and for each gradient tensor, `1e-5` relative for the loss.

mod common;
use common::{assert_close, matrix};
use patchgraph::checkpoint::TensorMap;
use patchgraph::image::ChwImage;
use patchgraph::nn::{GlobalPool, Size2, Vit, VitConfig, VitOptions};

const MODEL_TOL: f32 = 1e-4;

const VARIANTS: [&str; 15] = [
    "qk_norm",
    "registers",
    "registers_no_embed_class",
    "pre_norm_no_final_norm",
    "pool_max",
    "pool_avgmax_with_prefix",
    "pool_none",
    "gelu_tanh",
    "quick_gelu",
    "relu",
    "silu_no_class_token",
    "scale_norms_no_proj_bias",
    "pos_embed_none",
    "rectangular",
    "dropouts_accepted",
];

fn dir() -> String {
    format!("{}/tests/fixtures/vit_timm", env!("CARGO_MANIFEST_DIR"))
}

fn config(name: &str) -> VitConfig {
    VitConfig::from_json_file(format!("{}/{name}.json", dir())).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn weights(name: &str) -> TensorMap {
    TensorMap::load_safetensors(format!("{}/{name}.safetensors", dir())).unwrap()
}

fn io(name: &str) -> (Vec<ChwImage>, TensorMap) {
    common::io(&dir(), name)
}

/// Every variant, loaded from timm's own config and state dict, gives timm's logits and
/// pre-logits (for `global_pool=''`: one row per token, `[B*T x K]`).
#[test]
fn logits_match_timm() {
    for name in VARIANTS {
        let vit = Vit::load(config(name), weights(name), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (images, out) = io(name);
        let ours = vit.forward_with(&images, &VitOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(&format!("{name} logits"), &ours.logits, &matrix(&out, "logits64"), MODEL_TOL);
        assert_close(&format!("{name} pre_logits"), &ours.pre_logits, &matrix(&out, "pre_logits64"), MODEL_TOL);
    }
}

/// The loss (cross-entropy, label smoothing 0.1) and every parameter gradient against
/// PyTorch's autograd through timm's model in float64, for every pooled variant: the backward
/// of `q_norm`/`k_norm`, register tokens, `norm_pre`, max pooling, each activation, the scale
/// norms, a model without `pos_embed` and a rectangular grid.
#[test]
fn gradients_match_pytorch_autograd() {
    for name in VARIANTS.into_iter().filter(|n| *n != "pool_none") {
        let vit = Vit::load(config(name), weights(name), name).unwrap();
        let (images, _) = io(name);
        let mut reference = TensorMap::load_safetensors(format!("{}/{name}.grad.safetensors", dir())).unwrap();
        let (_, targets) = reference.take_ints("targets").unwrap();
        let targets: Vec<usize> = targets.into_iter().map(|t| t as usize).collect();
        let (loss, grads) = vit
            .loss_and_grads(&images, &targets, 0.1, &VitOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want_loss = reference.get("loss").unwrap().data[0];
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{name}: loss {loss} vs {want_loss}");
        let ours = grads.to_tensor_map().unwrap();
        let theirs: Vec<(String, Vec<usize>)> = reference
            .shapes()
            .filter_map(|(n, s)| n.strip_prefix("grad.").map(|p| (p.to_string(), s.to_vec())))
            .collect();
        let mut our_names: Vec<(String, Vec<usize>)> =
            ours.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
        let mut sorted_theirs = theirs.clone();
        our_names.sort();
        sorted_theirs.sort();
        assert_eq!(our_names, sorted_theirs, "{name}: gradient names and shapes");
        let max_abs = |data: &[f32]| data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let model_scale = theirs
            .iter()
            .map(|(p, _)| max_abs(&reference.get(&format!("grad.{p}")).unwrap().data))
            .fold(0.0f32, f32::max);
        for (param, _) in &theirs {
            let want = &reference.get(&format!("grad.{param}")).unwrap().data;
            let got = &ours.get(param).unwrap().data;
            let scale = max_abs(want);
            let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            if scale <= 1e-10 * model_scale {
                // Zero in exact arithmetic (`k_norm.bias`: adding one vector to every key of a
                // head changes no softmax; PyTorch's float64 gives ~1e-16): ours must be at
                // float32 rounding level against the model's gradients.
                assert!(diff <= 1e-6 * model_scale, "{name}: {param}: {diff:e} where the gradient is zero");
                continue;
            }
            assert!(diff <= 1e-4 * scale, "{name}: {param}: max diff {diff:e} > 1e-4 * {scale:e}");
        }
    }
}

/// timm's way of writing sizes: an int for a square, a pair for a rectangle, in and out.
#[test]
fn sizes_read_and_write_as_timm_writes_them() {
    let c = config("rectangular");
    assert_eq!((c.img_size, c.patch_size), (Size2 { h: 12, w: 16 }, Size2 { h: 4, w: 2 }));
    assert_eq!(c.grid_size(), (3, 8));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["img_size"], serde_json::json!([12, 16]));
    assert_eq!(json["patch_size"], serde_json::json!([4, 2]));
    let square = config("qk_norm");
    let json = serde_json::to_value(&square).unwrap();
    assert_eq!(json["img_size"], serde_json::json!(16));
    let again: VitConfig = serde_json::from_value(json).unwrap();
    assert_eq!(again, square);
    // Anything else is refused by serde, naming the field.
    for bad in [r#""16""#, "[16]", "[16, 8, 4]", "-4"] {
        let text = format!(
            r#"{{"img_size": {bad}, "patch_size": 4, "num_classes": 2, "embed_dim": 8, "depth": 1, "num_heads": 2}}"#
        );
        let err = serde_json::from_str::<VitConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("expected a size: an int or [height, width]"), "{bad}: {err}");
    }
}

/// The training-only arguments are accepted and change nothing: the `dropouts_accepted` model
/// gives the same logits as the same weights under a config without them.
#[test]
fn training_only_arguments_change_nothing() {
    let name = "dropouts_accepted";
    let with = config(name);
    assert!(with.drop_path_rate > 0.0 && with.drop_rate > 0.0 && with.weight_init.as_deref() == Some("jax"));
    let mut without = with.clone();
    (without.drop_rate, without.attn_drop_rate, without.drop_path_rate, without.weight_init) = (0.0, 0.0, 0.0, None);
    let (images, _) = io(name);
    let a = Vit::load(with, weights(name), name).unwrap().forward(&images).unwrap();
    let b = Vit::load(without, weights(name), name).unwrap().forward(&images).unwrap();
    assert_eq!(a, b);
}

/// The arguments patchgraph does not implement are refused by name, with what is missing; an
/// argument timm does not have is refused by serde, naming it.
#[test]
fn unimplemented_and_unknown_arguments_are_refused_by_name() {
    let base = r#""img_size": 16, "patch_size": 4, "num_classes": 2, "embed_dim": 8, "depth": 1, "num_heads": 2"#;
    let cases = [
        (r#""global_pool": "map""#, "global_pool", "attention pooling"),
        (r#""dynamic_img_size": true"#, "dynamic_img_size", "resamples"),
        (r#""dynamic_img_pad": true"#, "dynamic_img_pad", "pads"),
        (r#""block_fn": "ResPostBlock""#, "block_fn", "Block"),
        (r#""mlp_layer": "SwiGLUPacked""#, "mlp_layer", "SwiGLU"),
        (r#""norm_layer": "RMSNorm""#, "norm_layer", "RMSNorm"),
        (r#""embed_norm_layer": "LayerNorm""#, "embed_norm_layer", "not implemented"),
        (r#""dtype": "bfloat16""#, "dtype", "float32"),
        (r#""weight_init": "xavier""#, "weight_init", "schemes"),
        (r#""act_layer": "mish""#, "mish", "unknown variant"),
        (r#""qk_norn": true"#, "qk_norn", "unknown field"),
        (r#""global_pool": "token", "class_token": false"#, "global_pool", "class token"),
    ];
    for (extra, field, why) in cases {
        let path = std::env::temp_dir().join(format!("pg-vit-timm-{}-{field}.json", std::process::id()));
        std::fs::write(&path, format!("{{{base}, {extra}}}")).unwrap();
        let err = VitConfig::from_json_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(field) && err.contains(why), "{extra}: {err}");
    }
}

/// Reading a config does not depend on where the pooling is spelled: timm's `''` is no pooling.
#[test]
fn empty_global_pool_is_per_token_output() {
    let c = config("pool_none");
    assert_eq!(c.global_pool, GlobalPool::None);
    let vit = Vit::load(c.clone(), weights("pool_none"), "pool_none").unwrap();
    let (images, _) = io("pool_none");
    let out = vit.forward_with(&images, &VitOptions::default()).unwrap();
    assert_eq!(out.logits.shape(), (images.len() * c.num_tokens(), c.num_classes));
}

/// A one-channel model (`in_chans = 1`) reads image files as grey, with PIL's `L` conversion
/// (`(19595 R + 38470 G + 7471 B + 2^15) >> 16` on the 8-bit values), and takes `.npy`
/// tensors `[H, W]` and `[B, H, W]` as prepared inputs.
#[test]
fn one_channel_models_read_grey_images_and_hw_arrays() {
    use patchgraph::image::{Interpolation, Normalization};
    use patchgraph::infer::{Preprocess, load_inputs};
    let dir = std::env::temp_dir().join(format!("pg-grey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("solid.png");
    image::RgbImage::from_pixel(20, 24, image::Rgb([200, 100, 50])).save(&png).unwrap();
    let pre = |in_chans| Preprocess {
        img_size: Size2::square(16),
        in_chans,
        crop_pct: 1.0,
        interpolation: Interpolation::Bicubic,
        normalization: Normalization::inception(),
    };
    let grey = load_inputs(&[&png], &pre(1)).unwrap();
    assert_eq!(grey[0].image.shape(), (1, 16, 16));
    let luma = ((19595 * 200 + 38470 * 100 + 7471 * 50 + (1 << 15)) >> 16) as f32; // 124
    let want = (luma / 255.0 - 0.5) / 0.5;
    assert!(grey[0].image.as_slice().iter().all(|v| (v - want).abs() < 1e-6), "{:?}", &grey[0].image.as_slice()[..4]);
    assert_eq!(load_inputs(&[&png], &pre(3)).unwrap()[0].image.shape(), (3, 16, 16));
    // np.save of float32 [2, 16, 16] and [16, 16].
    let npy = |shape: &str, values: &[f32]| {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let len = (10 + header.len() + 1).div_ceil(64) * 64 - 10;
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((len as u16).to_le_bytes());
        out.extend(format!("{header:<w$}\n", w = len - 1).bytes());
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out
    };
    let values: Vec<f32> = (0..512).map(|i| i as f32 / 512.0).collect();
    std::fs::write(dir.join("b.npy"), npy("(2, 16, 16)", &values)).unwrap();
    std::fs::write(dir.join("one.npy"), npy("(16, 16)", &values[..256])).unwrap();
    let batch = load_inputs(&[dir.join("b.npy"), dir.join("one.npy")], &pre(1)).unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|i| i.image.shape() == (1, 16, 16)));
    assert_eq!(batch[1].image.as_slice(), &values[256..]);
    assert_eq!(batch[2].image.as_slice(), &values[..256]);
    // A three-channel model refuses [H, W], naming the shapes it takes.
    let err = load_inputs(&[dir.join("one.npy")], &pre(3)).unwrap_err().to_string();
    assert!(err.contains("[C, H, W] or [B, C, H, W]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
