//! Against the peers: every layer reproduces PyTorch's own module on the fixtures written by
//! `scripts/make_fixtures.py` (timm 1.0 `Attention` and `Block`, PyG 2.8 `GATConv`,
//! `GATv2Conv`, `TransformerConv`). The fixture outputs were computed by PyTorch in float64 from
//! the stored float32 parameters, so they are the exact answer; we run in f32.
//!
//! Tolerance: `max |ours - theirs| <= 1e-5 * max |theirs|` (1e-5 of the output's scale) for
//! outputs, and `1e-5` absolute for attention weights (which lie in [0, 1]).

use patchgraph::checkpoint::TensorMap;
use patchgraph::nn::{AttentionConfig, Block, BlockConfig, ForwardOptions, GraphAttention};
use patchgraph::{Graph, Matrix};
use serde_json::Value;

const REL_TOL: f32 = 1e-5;

fn fixture(name: &str) -> (TensorMap, Value) {
    let path = format!("{}/tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let map = TensorMap::load_safetensors(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let config: Value = serde_json::from_str(&map.metadata()["config"]).expect("config metadata is JSON");
    (map, config)
}

/// `[.., D]` tensor as a `[rows x D]` matrix.
fn matrix(map: &mut TensorMap, name: &str) -> Matrix {
    let t = map.take_any(name).unwrap();
    let d = *t.shape.last().unwrap();
    Matrix::from_vec(t.data.len() / d, d, t.data).unwrap()
}

fn assert_close(what: &str, ours: &Matrix, theirs: &Matrix) {
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let scale = theirs.max_abs();
    let diff = ours.max_abs_diff(theirs);
    assert!(scale > 0.0, "{what}: reference is all zeros, the test would be blind");
    assert!(diff <= REL_TOL * scale, "{what}: max diff {diff:e} > {REL_TOL:e} * scale {scale:e}");
}

fn edge_index(map: &mut TensorMap, name: &str, num_nodes: usize) -> Graph {
    let (shape, v) = map.take_ints(name).unwrap();
    Graph::from_edge_index_tensor(num_nodes, &shape, &v).unwrap()
}

fn flag(c: &Value, key: &str) -> bool {
    c[key].as_bool().unwrap_or_else(|| panic!("config has no bool {key}"))
}

fn num(c: &Value, key: &str) -> usize {
    c[key].as_u64().unwrap_or_else(|| panic!("config has no integer {key}")) as usize
}

fn pyg_config(module: &str, c: &Value) -> AttentionConfig {
    let (in_channels, out_channels, heads) = (num(c, "in_channels"), num(c, "out_channels"), num(c, "heads"));
    let concat = flag(c, "concat");
    match module {
        "gat" => AttentionConfig::Gat {
            in_channels,
            out_channels,
            heads,
            concat,
            negative_slope: c["negative_slope"].as_f64().unwrap() as f32,
            add_self_loops: flag(c, "add_self_loops"),
            bias: flag(c, "bias"),
        },
        "gatv2" => AttentionConfig::GatV2 {
            in_channels,
            out_channels,
            heads,
            concat,
            negative_slope: c["negative_slope"].as_f64().unwrap() as f32,
            add_self_loops: flag(c, "add_self_loops"),
            bias: flag(c, "bias"),
            share_weights: flag(c, "share_weights"),
        },
        "transformer" => AttentionConfig::Transformer {
            in_channels,
            out_channels,
            heads,
            concat,
            beta: flag(c, "beta"),
            root_weight: flag(c, "root_weight"),
            bias: flag(c, "bias"),
        },
        _ => unreachable!(),
    }
}

/// Runs one PyG fixture: output and attention weights (matched edge by edge via their endpoints).
fn check_pyg(name: &str, module: &str) {
    let (mut map, c) = fixture(name);
    let x = matrix(&mut map, "x");
    let graph = edge_index(&mut map, "edge_index", x.rows());
    let expected = matrix(&mut map, "out");
    let alpha = map.take_any("alpha").unwrap();
    // PyG's order (not grouped by destination): alpha's row e belongs to edge e of this list.
    let (shape, raw) = map.take_ints("alpha_edge_index").unwrap();
    let (asrc, adst) = raw.split_at(shape[1]);
    let (asrc, adst): (Vec<usize>, Vec<usize>) =
        (asrc.iter().map(|&v| v as usize).collect(), adst.iter().map(|&v| v as usize).collect());
    let layer = GraphAttention::load(pyg_config(module, &c), &mut map, "").unwrap();
    map.finish().expect("every fixture tensor maps to a parameter");

    let result = layer.forward_with(&graph, &x, &ForwardOptions { weights: true, ..Default::default() }).unwrap();
    assert_close(name, &result.out, &expected);

    let weights = result.weights.unwrap();
    let heads = layer.config().heads();
    let (osrc, odst) = weights.graph.edge_index();
    assert_eq!(osrc.len(), asrc.len(), "{name}: number of attended edges");
    for e in 0..asrc.len() {
        let ours: Vec<usize> = (0..osrc.len()).filter(|&f| osrc[f] == asrc[e] && odst[f] == adst[e]).collect();
        assert!(!ours.is_empty(), "{name}: edge {} -> {} missing", asrc[e], adst[e]);
        for f in ours {
            for h in 0..heads {
                let (a, b) = (weights.values[f * heads + h], alpha.data[e * heads + h]);
                assert!((a - b).abs() <= 1e-5, "{name}: alpha of {} -> {} head {h}: {a} vs {b}", asrc[e], adst[e]);
            }
        }
    }
}

#[test]
fn gat_concat_with_self_loops() {
    check_pyg("gat_concat_selfloops", "gat");
}

#[test]
fn gat_concat_without_self_loops() {
    check_pyg("gat_concat_noselfloops", "gat");
}

#[test]
fn gat_mean_with_self_loops() {
    check_pyg("gat_mean_selfloops", "gat");
}

#[test]
fn gat_mean_without_self_loops() {
    check_pyg("gat_mean_noselfloops", "gat");
}

#[test]
fn gat_other_negative_slope() {
    check_pyg("gat_slope_noselfloops", "gat");
}

#[test]
fn gatv2_concat_with_self_loops() {
    check_pyg("gatv2_concat_selfloops", "gatv2");
}

#[test]
fn gatv2_mean_without_self_loops() {
    check_pyg("gatv2_mean_noselfloops", "gatv2");
}

#[test]
fn transformer_conv_concat() {
    check_pyg("transformer_concat", "transformer");
}

#[test]
fn transformer_conv_mean_without_root_weight() {
    check_pyg("transformer_mean_noroot", "transformer");
}

#[test]
fn transformer_conv_beta() {
    check_pyg("transformer_beta", "transformer");
}

/// timm runs `[B, N, D]`; we run the batch as one disjoint union of complete graphs.
fn timm_batch_graph(map: &TensorMap) -> Graph {
    let shape = &map.get("x").unwrap().shape;
    let (b, n) = (shape[0], shape[1]);
    Graph::disjoint_union(&vec![Graph::complete(n, true); b]).unwrap()
}

fn check_timm_attention(name: &str) {
    let (mut map, c) = fixture(name);
    let graph = timm_batch_graph(&map);
    assert!(graph.is_complete(), "a batch of complete graphs stays dense");
    let x = matrix(&mut map, "x");
    let expected = matrix(&mut map, "out");
    let config = AttentionConfig::Timm {
        dim: num(&c, "dim"),
        heads: num(&c, "num_heads"),
        qkv_bias: flag(&c, "qkv_bias"),
        qk_norm: false,
        scale_norm: false,
        proj_bias: true,
        norm_eps: 1e-6,
    };
    let layer = GraphAttention::load(config, &mut map, "").unwrap();
    map.finish().unwrap();
    assert_close(name, &layer.forward(&graph, &x).unwrap(), &expected);
    // The same weights on the materialised graph (sparse path) give the same answer.
    assert_close(&format!("{name} (sparse)"), &layer.forward(&graph.materialize(), &x).unwrap(), &expected);
}

#[test]
fn timm_attention() {
    check_timm_attention("timm_attention");
}

#[test]
fn timm_attention_without_qkv_bias() {
    check_timm_attention("timm_attention_noqkvbias");
}

fn check_timm_block(name: &str) {
    let (mut map, c) = fixture(name);
    let graph = timm_batch_graph(&map);
    let x = matrix(&mut map, "x");
    let expected = matrix(&mut map, "out");
    let config = BlockConfig {
        mlp_hidden: num(&c, "mlp_hidden"),
        qkv_bias: flag(&c, "qkv_bias"),
        eps: c["eps"].as_f64().unwrap() as f32,
        layer_scale: c["init_values"].as_f64().map(|v| v as f32),
        ..BlockConfig::vit(num(&c, "dim"), num(&c, "num_heads"))
    };
    let block = Block::load(&config, &mut map, "").unwrap();
    map.finish().unwrap();
    assert_close(name, &block.forward(&graph, &x).unwrap(), &expected);
}

#[test]
fn timm_block() {
    check_timm_block("timm_block");
}

#[test]
fn timm_block_with_layer_scale() {
    check_timm_block("timm_block_layerscale");
}

#[test]
fn unknown_and_missing_checkpoint_keys_are_errors() {
    let (mut map, _) = fixture("gat_concat_selfloops");
    map.take_any("x").unwrap();
    map.take_ints("edge_index").unwrap();
    map.take_any("out").unwrap();
    map.take_any("alpha").unwrap();
    map.take_ints("alpha_edge_index").unwrap();
    // As a TransformerConv the GAT tensors are missing keys.
    let err = GraphAttention::load(AttentionConfig::transformer(6, 5, 3), &mut map.clone(), "").unwrap_err();
    assert!(matches!(err, patchgraph::Error::MissingTensor { .. }), "{err}");
    // As a GAT with 4 heads, att_src has the wrong shape.
    let err = GraphAttention::load(AttentionConfig::gat(6, 5, 4), &mut map.clone(), "").unwrap_err();
    assert!(matches!(err, patchgraph::Error::Shape { .. }), "{err}");
    // An extra tensor is reported by name.
    map.insert("lin.extra", vec![1], vec![0.0]).unwrap();
    GraphAttention::load(AttentionConfig::gat(6, 5, 3), &mut map, "").unwrap();
    match map.finish().unwrap_err() {
        patchgraph::Error::UnexpectedTensors { names } => assert_eq!(names, vec!["lin.extra".to_string()]),
        other => panic!("{other}"),
    }
}
