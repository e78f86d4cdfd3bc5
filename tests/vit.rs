//! Whole ViTs against timm: the fixtures in `tests/fixtures/vit/` (written by
//! `scripts/make_fixtures.py --only vit` from timm 1.0.31 models with every parameter perturbed)
//! hold a timm state dict, an input batch and timm's logits computed in float64 from the stored
//! float32 weights. We run in f32.
//!
//! Tolerance: `max |ours - timm| <= 1e-4 * max |timm|` for logits and pre-logits (a whole model:
//! depth x (LayerNorm, two GEMMs, softmax, GELU) of f32 rounding); `1e-5` of the scale for a
//! resampled position embedding (one interpolation).

mod common;
use common::{assert_close, matrix};
use patchgraph::checkpoint::TensorMap;
use patchgraph::graph::GraphSpec;
use patchgraph::image::ChwImage;
use patchgraph::nn::{Init, Vit, VitConfig, VitOptions};
use patchgraph::{Error, Matrix};

const MODEL_TOL: f32 = 1e-4;

fn dir() -> String {
    format!("{}/tests/fixtures/vit", env!("CARGO_MANIFEST_DIR"))
}

fn config(name: &str) -> VitConfig {
    VitConfig::from_json_file(format!("{}/{name}.json", dir())).unwrap()
}

fn weights(name: &str) -> TensorMap {
    TensorMap::load_safetensors(format!("{}/{name}.safetensors", dir())).unwrap()
}

fn io(name: &str) -> (Vec<ChwImage>, TensorMap) {
    common::io(&dir(), name)
}

const VARIANTS: [&str; 6] =
    ["tiny_token", "no_qkv_bias", "avg_pool", "no_class_token", "layer_scale_no_embed_class", "mlp_ratio"];

/// Every variant (depth, heads, patch and image size, qkv bias off, avg pooling with fc_norm,
/// no class token, LayerScale with `no_embed_class`, MLP ratio 2.5 with eps 1e-12) gives timm's
/// logits and pre-logits.
#[test]
fn logits_match_timm() {
    for name in VARIANTS {
        let vit = Vit::load(config(name), weights(name), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (images, out) = io(name);
        let ours = vit.forward_with(&images, &VitOptions::default()).unwrap();
        assert_close(&format!("{name} logits"), &ours.logits, &matrix(&out, "logits_f64"), MODEL_TOL);
        assert_close(&format!("{name} pre_logits"), &ours.pre_logits, &matrix(&out, "pre_logits_f64"), MODEL_TOL);
    }
}

/// timm's `checkpoint_filter_fn` resamples a 4 x 4 position grid to 6 x 6 (img 48) and 2 x 2
/// (img 16); loading tiny_token's weights into those configs does the same.
#[test]
fn resampled_position_embedding_matches_timm() {
    for name in ["tiny_token_48", "tiny_token_16"] {
        let (vit, notes) = Vit::load_adapting(config(name), weights("tiny_token"), "tiny_token").unwrap();
        assert!(notes.iter().any(|n| n.contains("pos_embed resampled from a 4x4")), "{name}: {notes:?}");
        let (images, out) = io(name);
        assert_close(&format!("{name} pos_embed"), &vit.pos_embed, &matrix(&out, "pos_embed"), 1e-5);
        assert_close(&format!("{name} logits"), &vit.forward(&images).unwrap(), &matrix(&out, "logits_f64"), MODEL_TOL);
    }
    // Strict loading refuses the other grid, naming the tensor and both shapes.
    let err = Vit::load(config("tiny_token_48"), weights("tiny_token"), "tiny_token").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("pos_embed") && text.contains("[1, 37, 48]") && text.contains("[1, 17, 48]"), "{text}");
}

/// Saving writes timm's names and the same values; loading the file gives the same model.
#[test]
fn save_round_trips_with_timm_names() {
    let name = "layer_scale_no_embed_class";
    let original = weights(name);
    let vit = Vit::load(config(name), original.clone(), name).unwrap();
    let path = std::env::temp_dir().join(format!("pg-vit-{}.safetensors", std::process::id()));
    vit.save_safetensors(&path).unwrap();
    let saved = TensorMap::load_safetensors(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let names: Vec<_> = original.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    let saved_names: Vec<_> = saved.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    assert_eq!(saved_names, names);
    for (n, _) in &names {
        assert_eq!(saved.get(n).unwrap().data, original.get(n).unwrap().data, "{n}");
    }
    assert_eq!(Vit::load(config(name), saved, "saved").unwrap(), vit);
}

/// A checkpoint with a missing tensor, an unexpected one, a wrong shape and an integer tensor
/// is refused with all four problems in one error.
#[test]
fn every_checkpoint_problem_is_reported_at_once() {
    let name = "tiny_token";
    let mut map = weights(name);
    map.remove("blocks.1.norm2.bias").unwrap();
    map.insert("blocks.7.attn.qkv.weight", vec![2, 2], vec![0.0; 4]).unwrap();
    let head = map.remove("head.weight").unwrap();
    map.insert("head.weight", vec![9, 48], head.data[..9 * 48].to_vec()).unwrap();
    let bytes = map.to_safetensors_bytes().unwrap();
    let Err(Error::Checkpoint { path, problems }) = Vit::load(
        config(name),
        TensorMap::from_safetensors_bytes(&bytes, "broken.safetensors").unwrap(),
        "broken.safetensors",
    ) else {
        panic!("expected Error::Checkpoint")
    };
    assert_eq!(path, "broken.safetensors");
    let all = problems.join("\n");
    assert_eq!(problems.len(), 3, "{all}");
    assert!(all.contains("missing tensor `blocks.1.norm2.bias`"), "{all}");
    assert!(all.contains("`head.weight`: expected shape [10, 48], found [9, 48]"), "{all}");
    assert!(all.contains("unexpected tensor `blocks.7.attn.qkv.weight`"), "{all}");
}

#[test]
fn truncated_checkpoint_is_a_format_error() {
    let bytes = std::fs::read(format!("{}/tiny_token.safetensors", dir())).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = TensorMap::from_safetensors_bytes(&bytes[..cut], "cut").unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "cut at {cut}: {err}");
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let vit = Vit::load(config("tiny_token"), weights("tiny_token"), "tiny_token").unwrap();
    assert!(matches!(vit.forward(&[]), Err(Error::Invalid { .. })));
    let wrong = ChwImage::filled(3, 24, 32, 0.0).unwrap();
    let err = vit.forward(&[wrong]).unwrap_err();
    assert!(err.to_string().contains("image 0") && err.to_string().contains("(3, 32, 32)"), "{err}");
    let mut nan = ChwImage::filled(3, 32, 32, 0.0).unwrap();
    nan.set(1, 5, 5, f32::NAN);
    let ok = ChwImage::filled(3, 32, 32, 0.0).unwrap();
    assert!(matches!(vit.forward(&[ok, nan]), Err(Error::NonFinite { .. })));
    let options = VitOptions { graphs: vec![GraphSpec::Complete; 3], ..Default::default() };
    assert!(vit.forward_with(&[ChwImage::filled(3, 32, 32, 0.0).unwrap()], &options).is_err());
}

/// A batch is one disjoint-union graph: each image's logits are those it gets alone.
#[test]
fn batch_equals_images_one_by_one() {
    let vit = Vit::load(config("tiny_token"), weights("tiny_token"), "tiny_token").unwrap();
    let (images, _) = io("tiny_token");
    for graphs in [vec![], vec!["knn:5".parse().unwrap()], vec!["fknn:4:2".parse().unwrap()]] {
        let options = VitOptions { graphs, ..Default::default() };
        let batch = vit.forward_with(&images, &options).unwrap().logits;
        for (i, image) in images.iter().enumerate() {
            let alone = vit.forward_with(std::slice::from_ref(image), &options).unwrap().logits;
            let row = Matrix::from_vec(1, batch.cols(), batch.row(i).to_vec()).unwrap();
            assert_close(&format!("image {i} {:?}", options.graphs), &row, &alone, 1e-5);
        }
    }
}

/// The same weights on a sparse graph: the `complete` spec is the default model bit for bit, a
/// k-NN graph changes the logits, and per-layer specs are honoured (a complete last layer after
/// a sparse first one differs from both). Average pooling, so that every token's last layer
/// counts (with token pooling the class token attends to every patch in any spec).
#[test]
fn sparse_graphs_run_the_same_weights() {
    let vit = Vit::load(config("avg_pool"), weights("avg_pool"), "avg_pool").unwrap();
    let (images, _) = io("avg_pool");
    let run = |specs: &[&str]| {
        let graphs = specs.iter().map(|s| s.parse().unwrap()).collect();
        vit.forward_with(&images, &VitOptions { graphs, ..Default::default() }).unwrap().logits
    };
    let complete = vit.forward(&images).unwrap();
    assert_eq!(run(&["complete"]), complete);
    let knn = run(&["knn:3"]);
    let mixed = run(&["knn:3", "complete"]);
    assert!(knn.max_abs_diff(&complete) > 1e-3);
    assert!(mixed.max_abs_diff(&complete) > 1e-3 && mixed.max_abs_diff(&knn) > 1e-3);
}

/// Google's `.npz` naming (written by the fixture script and checked there with timm's own
/// `_load_weights`) maps to the same model, hence timm's logits.
#[test]
fn google_npz_gives_timm_logits() {
    let path = format!("{}/tiny_token.npz", dir());
    let map = patchgraph::infer::load_checkpoint(&path).unwrap();
    let vit = Vit::load(config("tiny_token"), map, &path).unwrap();
    assert_eq!(vit, Vit::load(config("tiny_token"), weights("tiny_token"), "st").unwrap());
    let (images, out) = io("tiny_token");
    assert_close("npz logits", &vit.forward(&images).unwrap(), &matrix(&out, "logits_f64"), MODEL_TOL);
}

/// `patchgraph infer` on a prepared tensor (the fixture's input batch) ranks timm's top class
/// first for both images, with the probabilities of timm's logits, in its JSON output.
#[test]
fn infer_command_ranks_timm_classes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchgraph"))
        .args(["infer", "--checkpoint", &format!("{}/tiny_token.safetensors", dir())])
        .args(["--config", &format!("{}/tiny_token.json", dir()), "--json", "--topk", "3"])
        .arg(format!("{}/tiny_token.io.safetensors", dir()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, io_map) = io("tiny_token");
    let logits = matrix(&io_map, "logits_f64");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (i, r) in results.iter().enumerate() {
        let row = logits.row(i);
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        let top = &r["top"][0];
        assert_eq!(top["class"].as_u64().unwrap() as usize, best, "input {i}");
        // softmax probability of the best class, from timm's logits
        let z: f64 = row.iter().map(|v| ((*v - row[best]) as f64).exp()).sum();
        let p = top["probability"].as_f64().unwrap();
        assert!((p - 1.0 / z).abs() < 1e-4, "input {i}: {p} vs {}", 1.0 / z);
        assert_eq!(r["top"].as_array().unwrap().len(), 3);
    }
}

/// `--compare` on a sparse graph reports agreement in [0, 1], a non-negative KL and timings; a
/// bad graph spec or a missing checkpoint is an error message, not a panic.
#[test]
fn infer_command_compares_and_reports_errors() {
    let run = |extra: &[&str], ckpt: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_patchgraph"))
            .args(["infer", "--checkpoint", ckpt, "--config", &format!("{}/avg_pool.json", dir())])
            .args(extra)
            .arg(format!("{}/avg_pool.io.safetensors", dir()))
            .output()
            .unwrap()
    };
    let ckpt = format!("{}/avg_pool.safetensors", dir());
    let out = run(&["--graph", "knn:2", "--compare", "--json", "--runs", "1"], &ckpt);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &json["compare"];
    let agreement = c["top1_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    assert!(c["mean_kl"].as_f64().unwrap() > 0.0, "a 2-NN graph changes the predictions");
    assert!(c["complete_seconds"].as_f64().unwrap() > 0.0);
    let bad = run(&["--graph", "knn"], &ckpt);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("graph spec"));
    let missing = run(&[], "/nonexistent/model.safetensors");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model.safetensors"));
}

/// `patchgraph convert` writes the Google `.npz` as a timm-named safetensors file holding the same
/// model. (That timm itself loads such a file strictly and reproduces the fixture's logits
/// exactly was checked once by hand with timm 1.0.31; see `notes/experiments.md`.)
#[test]
fn convert_command_writes_timm_safetensors() {
    let out_path = std::env::temp_dir().join(format!("pg-convert-{}.safetensors", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchgraph"))
        .args(["convert", "--checkpoint", &format!("{}/tiny_token.npz", dir())])
        .args(["--config", &format!("{}/tiny_token.json", dir()), "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = TensorMap::load_safetensors(&out_path).unwrap();
    std::fs::remove_file(&out_path).unwrap();
    let original = weights("tiny_token");
    let names = |m: &TensorMap| m.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect::<Vec<_>>();
    assert_eq!(names(&written), names(&original));
    for (n, _) in names(&original) {
        assert_eq!(written.get(&n).unwrap().data, original.get(&n).unwrap().data, "{n}");
    }
}

/// A prepared `.npy` input (bytes as `np.save` writes them) is read as `[C, H, W]`.
#[test]
fn npy_input_is_read_as_prepared_tensor() {
    let (images, _) = io("tiny_token");
    let img = &images[0];
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 32, 32), }";
    let mut h = header.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend(img.as_slice().iter().flat_map(|v| v.to_le_bytes()));
    let path = std::env::temp_dir().join(format!("pg-input-{}.npy", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let pre = patchgraph::infer::Preprocess {
        img_size: patchgraph::nn::Size2::square(32),
        in_chans: 3,
        crop_pct: 0.875,
        interpolation: patchgraph::image::Interpolation::Bicubic,
        normalization: patchgraph::image::Normalization::inception(),
    };
    let inputs = patchgraph::infer::load_inputs(&[&path], &pre).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].image.as_slice(), img.as_slice());
}

/// A fresh model saves and reloads to the same model, and its config is the one asked for.
#[test]
fn fresh_model_round_trips() {
    let mut c = VitConfig::tiny(16, 4, 3);
    (c.embed_dim, c.depth, c.num_heads, c.init_values) = (12, 2, 3, Some(0.1));
    let vit = Vit::new(c.clone(), &mut Init::new(7)).unwrap();
    assert_eq!(vit.config(), &c);
    let again = Vit::load(c, vit.state_dict().unwrap(), "state_dict").unwrap();
    assert_eq!(again, vit);
}

/// The whole model's loss and every parameter gradient against PyTorch's autograd (float64, on
/// timm's model with the fixture's weights and input; `scripts/make_fixtures.py --only grad`):
/// token pooling, average pooling with fc_norm, LayerScale with `no_embed_class`. Tolerance:
/// `1e-4` of each gradient tensor's largest magnitude, `1e-5` relative for the loss.
#[test]
fn gradients_match_pytorch_autograd() {
    for name in ["tiny_token", "avg_pool", "layer_scale_no_embed_class"] {
        let vit = Vit::load(config(name), weights(name), name).unwrap();
        let (images, _) = io(name);
        let mut reference = TensorMap::load_safetensors(format!("{}/{name}.grad.safetensors", dir())).unwrap();
        let (_, targets) = reference.take_ints("targets").unwrap();
        let targets: Vec<usize> = targets.into_iter().map(|t| t as usize).collect();
        let (loss, grads) = vit.loss_and_grads(&images, &targets, 0.1, &VitOptions::default()).unwrap();
        let want_loss = reference.get("loss").unwrap().data[0];
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{name}: loss {loss} vs {want_loss}");
        let ours = grads.to_tensor_map().unwrap();
        let theirs: Vec<(String, Vec<usize>)> = reference
            .shapes()
            .filter_map(|(n, s)| n.strip_prefix("grad.").map(|p| (p.to_string(), s.to_vec())))
            .collect();
        let our_names: Vec<(String, Vec<usize>)> = ours.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
        assert_eq!(our_names, theirs, "{name}: gradient names and shapes");
        for (param, _) in &theirs {
            let want = &reference.get(&format!("grad.{param}")).unwrap().data;
            let got = &ours.get(param).unwrap().data;
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(scale > 0.0, "{name}: {param}: PyTorch's gradient is zero, the test would be blind");
            assert!(diff <= 1e-4 * scale, "{name}: {param}: max diff {diff:e} > 1e-4 * {scale:e}");
        }
    }
}

/// A few AdamW steps on one batch of real digits lower the loss, and give the same bits on 1
/// and 2 threads (same seed, same numbers, whatever the thread count).
#[test]
fn adamw_steps_lower_the_loss_identically_on_any_thread_count() {
    use patchgraph::data::{Split, load_mnist};
    use patchgraph::train::AdamW;
    let test = load_mnist(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k"), Split::Test).unwrap();
    let (images, targets): (Vec<ChwImage>, Vec<usize>) = (0..16).map(|i| test.get(i).unwrap()).unzip();
    let mut c = VitConfig::tiny(28, 7, 10);
    (c.in_chans, c.embed_dim, c.depth, c.num_heads) = (1, 32, 2, 4);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut vit = Vit::new(c.clone(), &mut Init::new(3)).unwrap();
            let mut opt = AdamW::new(1e-3, 0.05);
            let mut losses = Vec::new();
            for _ in 0..5 {
                let (loss, grads) = vit.loss_and_grads(&images, &targets, 0.1, &VitOptions::default()).unwrap();
                losses.push(loss);
                opt.begin_step();
                vit.visit_params_mut(&grads, &mut |slot, p, g, decay| opt.update(slot, p, g, decay));
            }
            (losses, vit)
        })
    };
    let (losses1, vit1) = run(1);
    let (losses2, vit2) = run(2);
    assert!(losses1[4] < losses1[0] - 0.05, "loss did not fall: {losses1:?}");
    assert_eq!(losses1, losses2);
    assert_eq!(vit1, vit2);
}

/// `Vit::layer_features` are the features each layer's feature k-NN graph is built from: the
/// graph built from them equals the graph the forward ran on (returned with the weights).
#[test]
fn layer_features_give_the_forward_graphs() {
    let mut c = VitConfig::tiny(16, 4, 3);
    (c.embed_dim, c.depth, c.num_heads) = (8, 3, 2);
    let vit = Vit::new(c, &mut Init::new(2)).unwrap();
    let mut init = Init::new(3);
    let images: Vec<ChwImage> = (0..2).map(|_| ChwImage::new(3, 16, 16, init.normal(768, 1.0)).unwrap()).collect();
    let spec: GraphSpec = "fknn:3:2".parse().unwrap();
    let options = VitOptions { graphs: vec![spec.clone()], weights: true, ..Default::default() };
    let out = vit.forward_with(&images, &options).unwrap();
    for layer in 0..3 {
        let f = vit.layer_features(&images, layer, &options).unwrap();
        assert_eq!(f.shape(), (2 * 16, 8));
        let per_image: Vec<patchgraph::Graph> = (0..2)
            .map(|i| {
                let rows = Matrix::from_fn(16, 8, |r, col| f.get(i * 16 + r, col));
                spec.build(4, 4, Some(&rows), true).unwrap()
            })
            .collect();
        let union = patchgraph::Graph::disjoint_union(&per_image).unwrap();
        assert_eq!(union.edge_index(), out.weights[layer].graph.edge_index(), "layer {layer}");
    }
    assert!(vit.layer_features(&images, 3, &options).is_err());
}
