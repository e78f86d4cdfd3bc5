//! Efficient attention inside a whole ViT: Performer, Linformer (headwise, key-value and
//! layerwise sharing) and Nyström as the blocks' attention with the same qkv/proj weights, and
//! Swin's relative position bias on window graphs. The gradients of `Vit::loss_and_grads` are
//! checked against central differences of the loss itself along a random direction of each
//! tensor; checkpoints round-trip; batches equal images one by one; bad requests are typed errors.

use patchgraph::attention::low_rank::LowRank;
use patchgraph::graph::GraphSpec;
use patchgraph::image::ChwImage;
use patchgraph::nn::{Init, Vit, VitConfig, VitOptions};
use patchgraph::{Error, Matrix};

fn config(attention: Option<&str>, rel: Option<usize>) -> VitConfig {
    let mut c = VitConfig::tiny(8, 2, 3); // a 4 x 4 grid and a class token: 17 tokens
    (c.embed_dim, c.depth, c.num_heads) = (8, 2, 2);
    c.attention = attention.map(|a| a.parse::<LowRank>().unwrap());
    c.relative_position_bias = rel;
    c
}

fn images(n: usize) -> Vec<ChwImage> {
    (0..n)
        .map(|i| ChwImage::from_fn(3, 8, 8, |c, y, x| ((c * 7 + y * 3 + x + i * 5) as f32 * 0.37).sin()).unwrap())
        .collect()
}

fn options(graph: Option<&str>) -> VitOptions {
    VitOptions {
        graphs: graph.map(|g| vec![g.parse::<GraphSpec>().unwrap()]).unwrap_or_default(),
        ..Default::default()
    }
}

/// A model whose weights are large enough that attention is far from uniform.
fn model(c: VitConfig) -> Vit {
    let vit = Vit::new(c.clone(), &mut Init::new(3)).unwrap();
    let mut map = vit.state_dict().unwrap();
    let mut init = Init::new(11);
    let names: Vec<String> = map.shapes().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if name.ends_with("qkv.weight") || name.ends_with("proj.weight") {
            let t = map.remove(&name).unwrap();
            let n = t.data.len();
            map.insert(name, t.shape, init.normal(n, 0.4)).unwrap();
        }
    }
    Vit::load(c, map, "test").unwrap()
}

/// Central difference of the loss along a random unit direction of tensor `name`, against the
/// analytic gradient's projection on it.
fn check_direction(vit: &Vit, graph: Option<&str>, name: &str) {
    let imgs = images(2);
    let targets = [1usize, 2];
    let opts = options(graph);
    let (_, grads) = vit.loss_and_grads(&imgs, &targets, 0.0, &opts).unwrap();
    let gmap = grads.to_tensor_map().unwrap();
    let g = gmap.get(name).unwrap_or_else(|_| panic!("no gradient for {name}")).data.clone();
    let mut init = Init::new(5);
    let mut dir = init.normal(g.len(), 1.0);
    let norm = dir.iter().map(|v| v * v).sum::<f32>().sqrt();
    dir.iter_mut().for_each(|v| *v /= norm);
    let analytic: f64 = g.iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
    let loss_at = |eps: f32| {
        let mut map = vit.state_dict().unwrap();
        let t = map.remove(name).unwrap();
        let data = t.data.iter().zip(&dir).map(|(v, d)| v + eps * d).collect();
        map.insert(name, t.shape, data).unwrap();
        let v = Vit::load(vit.config().clone(), map, "fd").unwrap();
        v.loss_and_grads(&imgs, &targets, 0.0, &opts).unwrap().0 as f64
    };
    let eps = 1e-2;
    let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
    let err = (analytic - numeric).abs();
    assert!(
        err <= 2e-3 + 2e-2 * numeric.abs(),
        "{name} on {graph:?}: analytic {analytic:.6e}, central difference {numeric:.6e}"
    );
    assert!(numeric.abs() > 1e-5, "{name}: the direction does not change the loss; the check would be empty");
}

#[test]
fn performer_in_a_vit_has_the_gradient_of_its_loss() {
    let vit = model(config(Some("performer:16:1"), None));
    for name in ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "pos_embed"] {
        check_direction(&vit, None, name);
    }
}

#[test]
fn linformer_in_a_vit_has_the_gradient_of_its_loss() {
    for (spec, names) in [
        ("linformer:5", &["blocks.0.attn.proj_k", "blocks.0.attn.proj_v", "blocks.1.attn.qkv.weight"][..]),
        ("linformer:5:kv", &["blocks.1.attn.proj_k", "blocks.0.attn.qkv.weight"][..]),
        ("linformer:5:layerwise", &["blocks.0.attn.proj_k"][..]),
    ] {
        let vit = model(config(Some(spec), None));
        for name in names {
            check_direction(&vit, None, name);
        }
        let map = vit.state_dict().unwrap();
        assert_eq!(map.contains("blocks.0.attn.proj_v"), spec == "linformer:5", "{spec}");
        assert_eq!(map.contains("blocks.1.attn.proj_k"), spec != "linformer:5:layerwise", "{spec}");
    }
}

#[test]
fn nystrom_in_a_vit_has_the_gradient_of_its_loss() {
    let vit = model(config(Some("nystrom:4:3"), None));
    for name in ["blocks.0.attn.res_conv.weight", "blocks.1.attn.qkv.weight"] {
        check_direction(&vit, None, name);
    }
    let vit = model(config(Some("nystrom:4"), None));
    check_direction(&vit, None, "blocks.0.attn.qkv.weight");
}

#[test]
fn relative_position_bias_is_trained_through_the_edge_bias() {
    let vit = model(config(None, Some(2)));
    let table = vit.state_dict().unwrap();
    assert_eq!(table.get("blocks.0.attn.relative_position_bias_table").unwrap().shape, vec![9, 2]);
    for graph in ["swin:2", "nat:3"] {
        check_direction(&vit, Some(graph), "blocks.0.attn.relative_position_bias_table");
        check_direction(&vit, Some(graph), "blocks.1.attn.qkv.weight");
    }
}

/// The table changes the output exactly through the edges it reaches: a table of zeros is the
/// model without one.
#[test]
fn a_zero_table_is_no_bias() {
    let plain = model(config(None, None));
    let mut map = plain.state_dict().unwrap();
    for l in 0..2 {
        map.insert(format!("blocks.{l}.attn.relative_position_bias_table"), vec![9, 2], vec![0.0; 18]).unwrap();
    }
    let with = Vit::load(config(None, Some(2)), map, "zeros").unwrap();
    let opts = options(Some("window:2"));
    let a = plain.forward_with(&images(2), &opts).unwrap().logits;
    let b = with.forward_with(&images(2), &opts).unwrap().logits;
    assert!(a.max_abs_diff(&b) <= 1e-6 * a.max_abs().max(1.0), "{}", a.max_abs_diff(&b));
}

/// Save and load keep every method's tensors (peer names), and batches are images one by one.
#[test]
fn checkpoints_round_trip_and_batches_are_independent() {
    for spec in ["performer:16:1", "linformer:5", "linformer:5:layerwise", "nystrom:4:3"] {
        let vit = model(config(Some(spec), None));
        let map = vit.state_dict().unwrap();
        let back = Vit::load(vit.config().clone(), map, "round trip").unwrap();
        assert_eq!(back, vit, "{spec}");
        let imgs = images(3);
        let batch = vit.forward(&imgs).unwrap();
        for (i, img) in imgs.iter().enumerate() {
            let one = vit.forward(std::slice::from_ref(img)).unwrap();
            let diff = one.row(0).iter().zip(batch.row(i)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff <= 1e-5 * batch.max_abs().max(1.0), "{spec}: image {i} differs by {diff}");
        }
        // A missing tensor is reported by name.
        let mut map = vit.state_dict().unwrap();
        let name = match spec {
            s if s.starts_with("performer") => "blocks.1.attn.projection_matrix",
            s if s.starts_with("linformer") => "blocks.0.attn.proj_k",
            _ => "blocks.1.attn.res_conv.weight",
        };
        map.remove(name);
        let msg = Vit::load(vit.config().clone(), map, "damaged").unwrap_err().to_string();
        assert!(msg.contains(name), "{spec}: {msg}");
    }
}

/// The parameter-free methods run a model trained with softmax attention with the same
/// weights; with many random features FAVOR+ is close to the complete graph.
#[test]
fn parameter_free_methods_run_on_a_softmax_model() {
    let vit = Vit::new(config(None, None), &mut Init::new(3)).unwrap();
    let imgs = images(2);
    let exact = vit.forward(&imgs).unwrap();
    let favor = vit.forward_with(&imgs, &options(Some("performer:4096:2"))).unwrap().logits;
    let err = exact.max_abs_diff(&favor) / exact.max_abs();
    assert!(err < 2e-2, "FAVOR+ with 4096 features is {err} from exact attention");
    let nys = vit.forward_with(&imgs, &options(Some("nystrom:4"))).unwrap().logits;
    assert_eq!(nys.shape(), (2, 3));
    let msg = vit.forward_with(&imgs, &options(Some("linformer:4"))).unwrap_err().to_string();
    assert!(msg.contains("linformer:4") && msg.contains("learned"), "{msg}");
    let msg = vit.forward_with(&imgs, &options(Some("nystrom:4:3"))).unwrap_err().to_string();
    assert!(msg.contains("nystrom:4:3"), "{msg}");
}

/// Bad requests are typed errors naming the option.
#[test]
fn bad_requests_are_typed_errors() {
    // Nyström landmarks must be a square that fits the 4 x 4 grid.
    for (spec, word) in [("nystrom:5", "square"), ("nystrom:25", "fit")] {
        let err = Vit::new(config(Some(spec), None), &mut Init::new(0)).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains(word), "{spec}: {err}");
    }
    // Weights of a low-rank layer do not exist.
    let vit = model(config(Some("performer:8:0"), None));
    let opts = VitOptions { weights: true, ..Default::default() };
    let msg = vit.forward_with(&images(1), &opts).unwrap_err().to_string();
    assert!(msg.contains("performer:8:0") && msg.contains("weights"), "{msg}");
    // A relative position table with low-rank attention.
    let mut c = config(Some("performer:8:0"), None);
    c.relative_position_bias = Some(2);
    assert!(c.validate().unwrap_err().to_string().contains("relative_position_bias"));
    // A Linformer built for 17 tokens, given 26 rows.
    let lr = model(config(Some("linformer:5"), None));
    let block = &lr.blocks[0];
    let x = Matrix::from_fn(26, 8, |i, j| ((i + j) as f32).cos());
    let g = patchgraph::Graph::complete(26, true);
    let opts = patchgraph::nn::ForwardOptions { low_rank: block.low_rank.as_ref(), ..Default::default() };
    let msg = block.attn.forward_with(&g, &x, &opts).unwrap_err().to_string();
    assert!(msg.contains("17 tokens"), "{msg}");
}
