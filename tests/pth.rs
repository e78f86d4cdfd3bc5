//! PyTorch checkpoints read without running code, against the models that wrote them: the
//! fixtures in `tests/fixtures/checkpoints/` (written by `scripts/make_checkpoint_fixtures.py`
//! with torch 2.15, timm 1.0.31 and open_clip 3.3.0; see the README there) hold `.pth` / `.pt`
//! files in every container format and dtype, the layouts of DeiT, DINO, MAE and CLIP, hostile
//! pickles, and per model an input batch with the reference outputs.
//!
//! Tolerances: tensors read from a file are compared exactly (they are copies, widened); a
//! whole model's outputs as `tests/vit.rs`, `max |ours - ref| <= 1e-4 * max |ref|`.

mod common;
use common::{assert_close, io_file, matrix};
use patchgraph::Error;
use patchgraph::checkpoint::{PthFormat, TensorMap, read_pth};
use patchgraph::image::ChwImage;
use patchgraph::infer::load_vit;
use patchgraph::nn::{Activation, Vit, VitConfig, VitOptions};

const DIR: &str = "tests/fixtures/checkpoints";
const MODEL_TOL: f32 = 1e-4;

fn path(name: &str) -> String {
    format!("{DIR}/{name}")
}

fn config(name: &str) -> VitConfig {
    VitConfig::from_json_file(path(name)).unwrap()
}

/// The input batch and the reference outputs of `NAME.expected.safetensors`.
fn expected(name: &str) -> (Vec<ChwImage>, TensorMap) {
    io_file(&path(&format!("{name}.expected.safetensors")))
}

fn logits(vit: &Vit, images: &[ChwImage]) -> patchgraph::Matrix {
    vit.forward_with(images, &VitOptions::default()).unwrap().logits
}

fn read(name: &str) -> patchgraph::Result<patchgraph::checkpoint::Pth> {
    let bytes = std::fs::read(path(name)).unwrap();
    read_pth(&bytes, name)
}

#[test]
fn timm_vit_in_every_container_and_dtype() {
    for (file, reference) in [
        ("vit_tiny.pth", "vit_tiny"),
        ("vit_tiny_nested.pth", "vit_tiny"),
        ("vit_tiny_legacy.pth", "vit_tiny"),
        ("vit_tiny_fp16.pth", "vit_tiny_fp16"),
        ("vit_tiny_bf16.pth", "vit_tiny_bf16"),
        ("vit_tiny_f64.pth", "vit_tiny_f64"),
    ] {
        let (vit, notes) = load_vit(path(file), config("vit_tiny.config.json")).unwrap();
        let (images, want) = expected(reference);
        assert_close(file, &logits(&vit, &images), &matrix(&want, "logits"), MODEL_TOL);
        if file == "vit_tiny_nested.pth" {
            let all = notes.join("\n");
            assert!(all.contains("state dict under `model`") && all.contains("`module.` prefix stripped"), "{all}");
            assert!(all.contains("optimizer (dict)") && all.contains("epoch (int)"), "{all}");
        }
    }
    assert_eq!(read("vit_tiny_legacy.pth").unwrap().format, PthFormat::Legacy);
    assert_eq!(read("vit_tiny.pth").unwrap().format, PthFormat::Zip);
}

#[test]
fn views_keep_offsets_strides_and_dtypes() {
    let pth = read("views.pth").unwrap();
    let mut got = pth.map;
    let mut want = TensorMap::load_safetensors(path("views.expected.safetensors")).unwrap();
    for name in ["t", "slice", "row", "shared", "half_t", "scalar"] {
        let (g, w) = (got.take_any(name).unwrap(), want.take_any(name).unwrap());
        assert_eq!(g.shape, w.shape, "{name}");
        assert_eq!(g.data, w.data, "{name}");
    }
    assert_eq!(got.take_ints("long").unwrap(), want.take_ints("long").unwrap());
}

#[test]
fn globals_that_run_code_are_refused_by_name() {
    for (file, global) in [("evil.pth", "posix.system"), ("evil_builtins.pth", "__builtin__.eval")] {
        let err = read(file).unwrap_err();
        assert!(
            matches!(&err, Error::RefusedGlobal { global: g, key, .. } if g == global && key == "payload"),
            "{file}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(global) && msg.contains("`payload`") && msg.contains("nothing from the file was run"),
            "{msg}"
        );
    }
    assert!(!std::path::Path::new("/tmp/patchgraph_pwned").exists());
}

#[test]
fn dino_teacher_and_backbone() {
    let (images, want) = expected("dino_full");
    let (vit, notes) = load_vit(path("dino_full.pth"), config("dino.config.json")).unwrap();
    assert_close("dino teacher", &logits(&vit, &images), &matrix(&want, "teacher_features"), MODEL_TOL);
    let all = notes.join("\n");
    assert!(all.contains("state dict under `teacher`"), "{all}");
    assert!(all.contains("args (argparse.Namespace, a global that is not allowed: never called)"), "{all}");
    assert!(all.contains("outside `backbone.` dropped"), "{all}");
    let (vit, _) = load_vit(path("dino_backbone.pth"), config("dino.config.json")).unwrap();
    assert_close("dino backbone", &logits(&vit, &images), &matrix(&want, "teacher_features"), MODEL_TOL);
}

#[test]
fn mae_pretrained_encoder_and_finetuned_classifier() {
    let (images, want) = expected("mae_pretrain");
    let (vit, notes) = load_vit(path("mae_pretrain.pth"), config("mae_pretrain.config.json")).unwrap();
    assert_close("mae features", &logits(&vit, &images), &matrix(&want, "features"), MODEL_TOL);
    assert!(notes.iter().any(|n| n.contains("MAE's pretraining decoder")), "{notes:?}");
    let (images, want) = expected("mae_finetuned");
    let (vit, _) = load_vit(path("mae_finetuned.pth"), config("mae_finetuned.config.json")).unwrap();
    assert_close("mae logits", &logits(&vit, &images), &matrix(&want, "logits"), MODEL_TOL);
}

/// The embedding and its L2-normalised form from a CLIP tower loaded as timm's ViT.
fn clip_embeddings(file: &str, act: Activation) -> (patchgraph::Matrix, patchgraph::Matrix) {
    let mut c = config("clip_tiny.timm_config.json");
    c.act_layer = act;
    let (vit, _) = load_vit(path(file), c).unwrap();
    let (images, _) = expected("clip_tiny");
    let e = logits(&vit, &images);
    let n = patchgraph::Matrix::from_fn(e.rows(), e.cols(), |r, k| {
        e.get(r, k) / e.row(r).iter().map(|v| v * v).sum::<f32>().sqrt()
    });
    (e, n)
}

#[test]
fn clip_towers_from_open_clip_state_dicts_and_torchscript() {
    let (_, want) = expected("clip_tiny");
    for file in ["clip_tiny.pth", "clip_tiny_visual_only.pth", "clip_tiny_jit.pt"] {
        let (e, n) = clip_embeddings(file, Activation::QuickGelu);
        assert_close(file, &e, &matrix(&want, "embedding"), MODEL_TOL);
        assert_close(file, &n, &matrix(&want, "embedding_normalized"), MODEL_TOL);
    }
    assert_eq!(read("clip_tiny_jit.pt").unwrap().format, PthFormat::TorchScript);
    let (_, want) = expected("clip_tiny_gelu");
    let (e, _) = clip_embeddings("clip_tiny_gelu.pth", Activation::Gelu);
    assert_close("open_clip GELU tower", &e, &matrix(&want, "embedding"), MODEL_TOL);
}

#[test]
fn clip_renaming_equals_timms_own_conversion() {
    let (map, _) = patchgraph::checkpoint::to_timm_vit(read("clip_tiny.pth").unwrap().map).unwrap();
    let mut timm = TensorMap::load_safetensors(path("clip_tiny.timm.safetensors")).unwrap();
    let mut ours = map;
    let names: Vec<String> = timm.shapes().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        let (a, b) = (ours.take_any(name).unwrap(), timm.take_any(name).unwrap());
        assert_eq!(a, b, "{name}");
    }
    assert!(ours.remaining().is_empty(), "tensors timm does not have: {:?}", ours.remaining());
}

#[test]
fn truncated_files_are_format_errors() {
    for file in ["vit_tiny.pth", "vit_tiny_legacy.pth", "clip_tiny_jit.pt"] {
        let bytes = std::fs::read(path(file)).unwrap();
        for cut in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 30] {
            let err = read_pth(&bytes[..cut], file).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{file} cut at {cut}: {err:?}");
        }
    }
}

#[test]
fn deit_distilled_averages_its_two_heads() {
    let (images, want) = expected("deit_tiny_distilled");
    let (vit, notes) = load_vit(path("deit_tiny_distilled.pth"), config("deit_tiny_distilled.config.json")).unwrap();
    assert!(notes.iter().any(|n| n.contains("state dict under `model`")), "{notes:?}");
    let out = vit.forward_with(&images, &VitOptions::default()).unwrap();
    assert_close("deit logits", &out.logits, &matrix(&want, "logits"), MODEL_TOL);
    assert_close("deit pre-logits", &out.pre_logits, &matrix(&want, "pre_logits_mean"), MODEL_TOL);
    // each head on its own token, from the model's own parts
    let x = vit.embed(&images).unwrap();
    assert_eq!(x.rows(), 2 * (16 + 2), "class, distillation and 16 patch tokens per image");
    // a plain ViT config is adapted, as the class count is, and said so
    let (plain, notes) = load_vit(path("deit_tiny_distilled.pth"), config("vit_tiny.config.json")).unwrap();
    assert!(notes.iter().any(|n| n.contains("distilled (DeiT)")), "{notes:?}");
    assert_eq!(plain.forward_with(&images, &VitOptions::default()).unwrap().logits, out.logits);
}

#[test]
fn deit_distilled_gradients_match_finite_differences() {
    use patchgraph::nn::Init;
    let mut c = config("deit_tiny_distilled.config.json");
    (c.depth, c.embed_dim, c.num_heads) = (1, 8, 2);
    let vit = Vit::new(c, &mut Init::new(3)).unwrap();
    let (images, _) = expected("deit_tiny_distilled");
    let targets = [1, 4];
    let (_, grads) = vit.loss_and_grads(&images, &targets, 0.0, &VitOptions::default()).unwrap();
    let g = grads.to_tensor_map().unwrap();
    let mut state = vit.state_dict().unwrap();
    for name in ["dist_token", "head_dist.weight", "head.weight", "cls_token"] {
        let analytic = g.get(name).unwrap().data.clone();
        let base = state.get(name).unwrap().clone();
        let i = analytic.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        let h = 2e-3f32;
        let loss_at = |delta: f32, state: &mut TensorMap| {
            let mut t = base.clone();
            t.data[i] += delta;
            state.insert(name, t.shape.clone(), t.data).unwrap();
            let v = Vit::load(vit.config().clone(), state.clone(), "perturbed").unwrap();
            v.loss_and_grads(&images, &targets, 0.0, &VitOptions::default()).unwrap().0
        };
        let numeric = (loss_at(h, &mut state) - loss_at(-h, &mut state)) / (2.0 * h);
        state.insert(name, base.shape.clone(), base.data.clone()).unwrap();
        assert!(analytic[i].abs() > 1e-4, "{name}: gradient too small to test");
        assert!(
            (numeric - analytic[i]).abs() <= 2e-2 * analytic[i].abs().max(1e-3),
            "{name}[{i}]: {numeric} vs {}",
            analytic[i]
        );
    }
}

fn convert(checkpoint: &str, config: &str, to: &str, out: &std::path::Path) -> patchgraph::Result<()> {
    let args = patchgraph::cli::convert::Args {
        model: patchgraph::cli::ModelArgs {
            checkpoint: path(checkpoint).into(),
            config: Some(path(config).into()),
            arch: None,
        },
        img_size: None,
        to: to.into(),
        out: out.to_path_buf(),
    };
    patchgraph::cli::convert::run(&args, &Default::default()).map(|_| ())
}

#[test]
fn convert_between_clip_timm_and_google_names() {
    let dir = std::env::temp_dir().join(format!("pg-pth-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // open_clip -> CLIP names: the visual tower's own tensors, exactly
    let out = dir.join("tower.safetensors");
    convert("clip_tiny.pth", "clip_tiny.timm_config.json", "clip", &out).unwrap();
    let mut ours = TensorMap::load_safetensors(&out).unwrap();
    let mut theirs = read("clip_tiny_visual_only.pth").unwrap().map;
    let names: Vec<String> = theirs.shapes().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        assert_eq!(ours.take_any(name).unwrap(), theirs.take_any(name).unwrap(), "{name}");
    }
    assert!(ours.remaining().is_empty(), "{:?}", ours.remaining());
    // CLIP -> timm names: timm's own conversion
    let out = dir.join("timm.safetensors");
    convert("clip_tiny_jit.pt", "clip_tiny.timm_config.json", "timm", &out).unwrap();
    let ours = TensorMap::load_safetensors(&out).unwrap();
    let timm = TensorMap::load_safetensors(path("clip_tiny.timm.safetensors")).unwrap();
    for (name, _) in timm.shapes() {
        assert_eq!(ours.get(name).unwrap(), timm.get(name).unwrap(), "{name}");
    }
    // a classifier ViT is not a CLIP tower: refused with the reasons, nothing written
    let out = dir.join("not_clip.safetensors");
    let err = convert("vit_tiny.pth", "vit_tiny.config.json", "clip", &out).unwrap_err().to_string();
    assert!(
        err.contains("not a CLIP model")
            && err.contains("no ln_pre")
            && err.contains("classifier head")
            && err.contains("QuickGELU"),
        "{err}"
    );
    assert!(!out.exists());
    // a CLIP tower has no place in Google's naming for norm_pre: refused, nothing written
    let out = dir.join("clip.npz");
    assert!(convert("clip_tiny.pth", "clip_tiny.timm_config.json", "google", &out).is_err());
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_writes_pth_that_reads_back() {
    let dir = std::env::temp_dir().join(format!("pg-pth-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tower.pth");
    convert("clip_tiny.pth", "clip_tiny.timm_config.json", "clip", &out).unwrap();
    let mut ours = read_pth(&std::fs::read(&out).unwrap(), "written").unwrap().map;
    let mut theirs = read("clip_tiny_visual_only.pth").unwrap().map;
    let names: Vec<String> = theirs.shapes().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        assert_eq!(ours.take_any(name).unwrap(), theirs.take_any(name).unwrap(), "{name}");
    }
    assert!(ours.remaining().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
