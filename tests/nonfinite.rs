//! Nothing silent with NaN and infinities (issue 14).
//!
//! 1. A checkpoint with a non-finite value is refused at load time, naming the tensor and the
//!    index; `allow_nonfinite` (`--allow-nonfinite`) loads it anyway.
//! 2. No path turns a NaN into a finite number: every attention kernel (dense, sparse, the hub
//!    rows of the sparse kernel, the f64 reference) with every score (dot, GAT, GATv2) gives NaN
//!    in exactly the outputs that depend on a NaN query, key or value, and finite numbers in the
//!    others; and every model (ViT on the complete and on a sparse graph, GAT, GATv2, ViG) with
//!    one NaN weight ends in an [`Error::NonFinite`] or in NaN logits, never in finite ones.
//!
//! Before the fix, a head whose scores were all NaN came out as zeros: the SIMD max skipped the
//! NaN, the row looked fully masked (`max = -inf`), and `l > 0` failed as for a node without
//! edges; the ViG's max-relative aggregation skipped NaN differences with `>`.

use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::checkpoint::TensorMap;
use patchgraph::graph::GraphSpec;
use patchgraph::image::ChwImage;
use patchgraph::nn::{Classifier, Init, PatchGat, PatchGatConfig, Vig, VigConfig, Vit, VitConfig, VitOptions};
use patchgraph::{Error, Graph, Matrix};

fn fixture_dir() -> String {
    format!("{}/tests/fixtures/vit", env!("CARGO_MANIFEST_DIR"))
}

fn tiny_config() -> VitConfig {
    VitConfig::from_json_file(format!("{}/tiny_token.json", fixture_dir())).unwrap()
}

fn tiny_weights() -> TensorMap {
    TensorMap::load_safetensors(format!("{}/tiny_token.safetensors", fixture_dir())).unwrap()
}

/// `map[name]` with `value` at flat position `pos`.
fn poison(map: &mut TensorMap, name: &str, pos: usize, value: f32) {
    let allow = map.allows_nonfinite();
    map.set_allow_nonfinite(true);
    let mut t = map.take_any(name).unwrap();
    t.data[pos] = value;
    map.insert(name, t.shape, t.data).unwrap();
    map.set_allow_nonfinite(allow);
}

#[test]
fn nonfinite_checkpoint_tensor_is_reported_by_name_and_index() {
    // head.weight is [10, 48]: flat 3 * 48 + 17 is index [3, 17]
    for (name, pos, value, index) in
        [("head.weight", 3 * 48 + 17, f32::NAN, "[3, 17]"), ("head.bias", 4, f32::INFINITY, "[4]")]
    {
        let mut map = tiny_weights();
        poison(&mut map, name, pos, value);
        let err = Vit::load(tiny_config(), map.clone(), "model.safetensors").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Checkpoint { .. }), "{text}");
        assert!(text.contains(&format!("`{name}`")) && text.contains(index), "{text}");
        assert!(text.contains("--allow-nonfinite"), "the message says how to load it anyway: {text}");
        map.set_allow_nonfinite(true);
        Vit::load(tiny_config(), map, "model.safetensors").expect("allowed");
    }
}

#[test]
fn nonfinite_in_files_is_reported_at_load_time() {
    let dir = std::env::temp_dir().join(format!("pg-nonfinite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // a timm safetensors file
    let mut map = tiny_weights();
    poison(&mut map, "blocks.0.attn.qkv.weight", 1000, f32::NAN);
    let path = dir.join("nan.safetensors");
    map.save_safetensors(&path).unwrap();
    let err = patchgraph::infer::load_vit(&path, tiny_config()).unwrap_err().to_string();
    assert!(err.contains("blocks.0.attn.qkv.weight") && err.contains("[20, 40]"), "{err}");
    assert!(patchgraph::infer::load_vit_with(&path, tiny_config(), true).is_ok());
    // a Google npz: named as the file names it, before the mapping to timm's names
    let mut google = TensorMap::load_npz(format!("{}/tiny_token.npz", fixture_dir())).unwrap();
    let name = "head/bias";
    poison(&mut google, name, 2, f32::NEG_INFINITY);
    let npz = dir.join("inf.npz");
    google.save_npz(&npz).unwrap();
    let err = patchgraph::infer::load_vit(&npz, tiny_config()).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { what, value, .. } if what.contains(name) && *value == f32::NEG_INFINITY),
        "{err}"
    );
    assert!(patchgraph::infer::load_vit_with(&npz, tiny_config(), true).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Deterministic pseudo-random values in `[-1, 1)`.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Which input gets the NaN.
#[derive(Clone, Copy, Debug)]
enum Poisoned {
    Query,
    Key,
    Value,
}

/// For every kernel and score: a NaN in one node's query, key or value for one head makes
/// exactly the dependent outputs NaN (that head of that node, or of every node the source
/// feeds) and leaves every other output finite.
#[test]
fn every_attention_path_propagates_nan_exactly() {
    let heads = 3;
    let n_hub = 2100; // node 0 has in-degree 2100 >= 2048: the sparse kernel's hub rows
    let mut hub_src: Vec<usize> = (0..n_hub).collect();
    let mut hub_dst = vec![0; n_hub];
    hub_src.extend(1..n_hub);
    hub_dst.extend((1..n_hub).map(|i| i - 1)); // a chain for the other nodes
    let graphs = [
        ("complete", Graph::complete(19, true), vec![Path::Dense, Path::Sparse, Path::Reference]),
        (
            "grid",
            Graph::grid(4, 5, patchgraph::graph::Neighbourhood::Eight, 1, true).unwrap(),
            vec![Path::Sparse, Path::Reference],
        ),
        ("hub", Graph::from_edge_index(n_hub, &hub_src, &hub_dst).unwrap(), vec![Path::Sparse]),
    ];
    let (h_bad, node) = (1, 5);
    for (gname, graph, paths) in &graphs {
        let n = graph.num_nodes();
        for (score, dk) in [
            (Score::Dot { scale: 0.5 }, 4),
            (Score::Gat { negative_slope: 0.2 }, 1),
            (Score::GatV2 { attention: values(heads * 4, 9), negative_slope: 0.2 }, 4),
        ] {
            let dv = 2;
            for poisoned in [Poisoned::Query, Poisoned::Key, Poisoned::Value] {
                let mut q = Matrix::from_vec(n, heads * dk, values(n * heads * dk, 1)).unwrap();
                let mut k = Matrix::from_vec(n, heads * dk, values(n * heads * dk, 2)).unwrap();
                let mut v = Matrix::from_vec(n, heads * dv, values(n * heads * dv, 3)).unwrap();
                let target = match poisoned {
                    Poisoned::Query => &mut q,
                    Poisoned::Key => &mut k,
                    Poisoned::Value => &mut v,
                };
                let width = target.cols() / heads;
                target.row_mut(node)[h_bad * width] = f32::NAN;
                // output (i, h, c) depends on the NaN: its own query, or a source's key (every
                // channel of the head), or a source's value (the poisoned channel 0 only)
                let depends = |i: usize, h: usize, c: usize| {
                    h == h_bad
                        && match poisoned {
                            Poisoned::Query => i == node,
                            Poisoned::Key => graph.incoming(i).any(|j| j == node),
                            Poisoned::Value => c == 0 && graph.incoming(i).any(|j| j == node),
                        }
                };
                let inputs = AttentionInputs::new(&q, &k, &v, heads);
                for &path in paths {
                    let out = attend(graph, &score, &inputs, path, false).unwrap().out;
                    let case = format!("{gname} {} {poisoned:?} {path:?}", score.name());
                    let mut nan_rows = 0;
                    for i in 0..n {
                        for h in 0..heads {
                            for c in 0..dv {
                                let x = out.row(i)[h * dv + c];
                                if depends(i, h, c) {
                                    assert!(x.is_nan(), "{case}: node {i} head {h} channel {c} = {x}");
                                    nan_rows += 1;
                                } else {
                                    assert!(x.is_finite(), "{case}: node {i} head {h} channel {c} = {x}");
                                }
                            }
                        }
                    }
                    assert!(nan_rows > 0, "{case}: the test would be blind");
                }
            }
        }
    }
}

/// A masked edge (bias -inf) with a NaN score still gives NaN: NaN is not a mask.
#[test]
fn nan_score_is_not_a_mask() {
    let g = Graph::complete(6, true);
    let mut q = Matrix::from_vec(6, 2, values(12, 4)).unwrap();
    let k = Matrix::from_vec(6, 2, values(12, 5)).unwrap();
    q.row_mut(2)[0] = f32::NAN;
    let mut bias = vec![0.0f32; 36];
    bias[2 * 6..3 * 6].fill(f32::NEG_INFINITY); // every edge into node 2 masked
    let inputs = AttentionInputs::new(&q, &k, &k, 1).with_bias(&bias);
    for path in [Path::Sparse, Path::Reference] {
        let out = attend(&g, &Score::Dot { scale: 1.0 }, &inputs, path, false).unwrap().out;
        assert!(out.row(2).iter().all(|x| x.is_nan()), "{path:?}: {:?}", out.row(2));
        assert!(out.row(3).iter().all(|x| x.is_finite()), "{path:?}");
    }
}

/// The output of a model with NaN somewhere in a weight: an `Error::NonFinite` or NaN logits.
fn assert_not_absorbed(what: &str, result: patchgraph::Result<Matrix>) {
    match result {
        Err(Error::NonFinite { .. }) => {}
        Err(other) => panic!("{what}: unexpected error {other}"),
        Ok(logits) => {
            assert!(logits.as_slice().iter().any(|x| x.is_nan()), "{what}: NaN absorbed into {:?}", logits.as_slice())
        }
    }
}

fn image(c: usize, h: usize, w: usize) -> ChwImage {
    ChwImage::new(c, h, w, values(c * h * w, 7)).unwrap()
}

#[test]
fn no_model_absorbs_a_nan_weight() {
    // ViT: the case (NaN at positions of blocks.0.attn.qkv.weight), every graph
    let img = image(3, 32, 32);
    for pos in [5, 100, 1000, 3 * 48 * 48 - 1] {
        let mut map = tiny_weights();
        map.set_allow_nonfinite(true);
        poison(&mut map, "blocks.0.attn.qkv.weight", pos, f32::NAN);
        let vit = Vit::load(tiny_config(), map, "nan").unwrap();
        for g in ["complete", "knn:4", "grid8:1", "window:2"] {
            let opts = VitOptions { graphs: vec![g.parse::<GraphSpec>().unwrap()], ..Default::default() };
            assert_not_absorbed(
                &format!("ViT qkv[{pos}] {g}"),
                vit.forward_with(std::slice::from_ref(&img), &opts).map(|o| o.logits),
            );
        }
    }
    // GAT, GATv2, ViG: a NaN in each weight tensor in turn
    for v2 in [false, true] {
        let config = PatchGatConfig { dim: 16, depth: 2, heads: 2, v2, ..PatchGatConfig::mnist() };
        let model = PatchGat::new(config.clone(), &mut Init::new(0)).unwrap();
        each_weight_poisoned(&format!("GAT v2={v2}"), &model, |map| PatchGat::load(config.clone(), map, "nan"));
    }
    let config = VigConfig { dim: 16, depth: 2, ..VigConfig::mnist() };
    let model = Vig::new(config.clone(), &mut Init::new(0)).unwrap();
    each_weight_poisoned("ViG", &model, |map| Vig::load(config.clone(), map, "nan"));
}

/// For every weight tensor of `model` in turn: a copy with NaN at its first value, loaded by
/// `load`, does not absorb the NaN on a digit.
fn each_weight_poisoned<M: Classifier>(what: &str, model: &M, load: impl Fn(TensorMap) -> patchgraph::Result<M>) {
    let digit = image(1, 28, 28);
    let state = model.state_dict().unwrap();
    for (name, _) in state.shapes() {
        let mut map = state.clone();
        map.set_allow_nonfinite(true);
        poison(&mut map, name, 0, f32::NAN);
        let m = load(map).unwrap();
        assert_not_absorbed(&format!("{what} {name}"), m.logits(std::slice::from_ref(&digit), &[]));
    }
}
