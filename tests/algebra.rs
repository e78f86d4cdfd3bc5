//! The proof that ViT attention is graph attention on the complete graph, and that the three
//! implementations of the algebra (reference, sparse, dense) agree.
//!
//! Tolerance everywhere: `max |a - b| <= 1e-5 * max(1, max |b|)`, with `b` the f64 oracle or the
//! matrix formulation (1e-5 of the output's scale; values here are O(1)).

use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::kernels::dense::attend_dense;
use patchgraph::nn::{AttentionConfig, ForwardOptions, GraphAttention, Init};
use patchgraph::{Graph, Matrix};
use proptest::prelude::*;

const TOL: f32 = 1e-5;

fn close(what: &str, ours: &Matrix, theirs: &Matrix) -> Result<(), TestCaseError> {
    prop_assert_eq!(ours.shape(), theirs.shape());
    let diff = ours.max_abs_diff(theirs);
    let scale = theirs.max_abs().max(1.0);
    prop_assert!(diff <= TOL * scale, "{}: max diff {:e}, scale {:e}", what, diff, scale);
    Ok(())
}

/// Log-sum-exps agree: both `-inf` (no edge) or within `TOL * max(1, |b|)`.
fn lse_close(a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let ok = (*x == f32::NEG_INFINITY && *y == f32::NEG_INFINITY) || (x - y).abs() <= TOL * y.abs().max(1.0);
        prop_assert!(ok, "log-sum-exp {} vs {}", x, y);
    }
    Ok(())
}

fn random(init: &mut Init, rows: usize, cols: usize, std: f32) -> Matrix {
    Matrix::from_vec(rows, cols, init.normal(rows * cols, std)).unwrap()
}

/// A random graph with isolated nodes, self-loops and duplicate edges: each destination draws
/// a degree in 0..=max_degree and that many sources with replacement.
fn messy_graph(init: &mut Init, n: usize, max_degree: usize) -> Graph {
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for i in 0..n {
        let u = init.uniform(1, 0.0, 1.0)[0];
        let degree = if u < 0.2 { 0 } else { ((u * (max_degree + 1) as f32) as usize).min(max_degree) };
        for _ in 0..degree {
            src.push(((init.uniform(1, 0.0, 1.0)[0] * n as f32) as usize).min(n - 1));
            dst.push(i);
        }
        if u > 0.7 {
            src.push(i); // a self-loop
            dst.push(i);
        }
    }
    Graph::from_edge_index(n, &src, &dst).unwrap()
}

/// Per-score inputs: query/key widths follow the score's layout (GAT: one scalar per head).
fn score_inputs(init: &mut Init, which: usize, n: usize, heads: usize, d: usize) -> (Score, Matrix, Matrix, Matrix) {
    let v = random(init, n, heads * d, 1.0);
    match which {
        0 => (
            Score::Dot { scale: 1.0 / (d as f32).sqrt() },
            random(init, n, heads * d, 1.0),
            random(init, n, heads * d, 1.0),
            v,
        ),
        1 => (Score::Gat { negative_slope: 0.2 }, random(init, n, heads, 1.0), random(init, n, heads, 1.0), v),
        _ => (
            Score::GatV2 { attention: init.normal(heads * d, 0.5), negative_slope: 0.2 },
            random(init, n, heads * d, 1.0),
            random(init, n, heads * d, 1.0),
            v,
        ),
    }
}

/// Multi-head self-attention written as matrices, in f64, independently of the library:
/// `qkv = x Wqkv^T + b`, per head `softmax(Q K^T / sqrt(d)) V`, heads concatenated, `proj`.
fn mhsa_as_matrices(x: &Matrix, wqkv: &[f32], bqkv: &[f32], wproj: &[f32], bproj: &[f32], heads: usize) -> Matrix {
    let (n, dim) = x.shape();
    let d = dim / heads;
    let mut qkv = vec![vec![0.0f64; 3 * dim]; n];
    for (t, row) in qkv.iter_mut().enumerate() {
        for (o, v) in row.iter_mut().enumerate() {
            *v = bqkv[o] as f64 + (0..dim).map(|c| x.get(t, c) as f64 * wqkv[o * dim + c] as f64).sum::<f64>();
        }
    }
    let mut attn_out = vec![vec![0.0f64; dim]; n];
    for h in 0..heads {
        for i in 0..n {
            let logits: Vec<f64> = (0..n)
                .map(|j| (0..d).map(|c| qkv[i][h * d + c] * qkv[j][dim + h * d + c]).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            for j in 0..n {
                let p = (logits[j] - m).exp() / z;
                for c in 0..d {
                    attn_out[i][h * d + c] += p * qkv[j][2 * dim + h * d + c];
                }
            }
        }
    }
    Matrix::from_fn(n, dim, |i, o| {
        (bproj[o] as f64 + (0..dim).map(|c| attn_out[i][c] * wproj[o * dim + c] as f64).sum::<f64>()) as f32
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// (a) GraphAttention with the dot-product score on the complete graph with self-loops is
    /// multi-head self-attention `softmax(QK^T/sqrt(d))V` followed by the output projection.
    #[test]
    fn vit_attention_is_gat_on_the_complete_graph(n in 1usize..=64, heads in 1usize..=4, d in 1usize..=16, seed in any::<u64>()) {
        let dim = heads * d;
        let mut init = Init::new(seed);
        let mut map = patchgraph::checkpoint::TensorMap::default();
        let (wqkv, bqkv, wproj, bproj) = (init.normal(3 * dim * dim, 0.3), init.normal(3 * dim, 0.1), init.normal(dim * dim, 0.3), init.normal(dim, 0.1));
        map.insert("qkv.weight", vec![3 * dim, dim], wqkv.clone()).unwrap();
        map.insert("qkv.bias", vec![3 * dim], bqkv.clone()).unwrap();
        map.insert("proj.weight", vec![dim, dim], wproj.clone()).unwrap();
        map.insert("proj.bias", vec![dim], bproj.clone()).unwrap();
        let layer = GraphAttention::load(AttentionConfig::timm(dim, heads), &mut map, "").unwrap();
        let x = random(&mut init, n, dim, 1.0);
        let expected = mhsa_as_matrices(&x, &wqkv, &bqkv, &wproj, &bproj, heads);
        let graph = Graph::complete(n, true);
        close("dense", &layer.forward(&graph, &x).unwrap(), &expected)?;
        let sparse = layer.forward_with(&graph.materialize(), &x, &ForwardOptions::default()).unwrap().out;
        close("sparse on the materialised graph", &sparse, &expected)?;
    }

    /// (b) The dense path equals the sparse path on the materialised complete graph, for all
    /// three scores, with and without self-loops, for one graph and for batches, with a bias.
    #[test]
    fn dense_equals_sparse_on_complete_graphs(
        sizes in proptest::collection::vec(1usize..=24, 1..=3), heads in 1usize..=3, d in 1usize..=12,
        which in 0usize..3, self_loops in any::<bool>(), with_bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut init = Init::new(seed);
        let graph = Graph::disjoint_union(&sizes.iter().map(|&m| Graph::complete(m, self_loops)).collect::<Vec<_>>()).unwrap();
        prop_assert!(graph.is_complete());
        let n = graph.num_nodes();
        let (score, q, k, v) = score_inputs(&mut init, which, n, heads, d);
        let bias = init.normal(graph.num_edges() * heads, 1.0);
        let mut inputs = AttentionInputs::new(&q, &k, &v, heads);
        if with_bias { inputs = inputs.with_bias(&bias); }
        let dense = attend(&graph, &score, &inputs, Path::Dense, true).unwrap();
        let sparse = attend(&graph.materialize(), &score, &inputs, Path::Sparse, true).unwrap();
        close("dense vs sparse", &dense.out, &sparse.out)?;
        lse_close(&dense.log_sum_exp, &sparse.log_sum_exp)?;
        let (wd, ws) = (dense.weights.unwrap(), sparse.weights.unwrap());
        let wdiff = wd.iter().zip(&ws).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        prop_assert!(wdiff <= TOL, "weights differ by {:e}", wdiff);
    }

    /// (c) The sparse kernel equals the f64 reference on random graphs with isolated nodes,
    /// self-loops and duplicate edges, for all three scores, with and without an edge bias.
    #[test]
    fn sparse_equals_reference_on_messy_graphs(
        n in 1usize..=64, max_degree in 0usize..=12, heads in 1usize..=4, d in 1usize..=16,
        which in 0usize..3, with_bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut init = Init::new(seed);
        let graph = messy_graph(&mut init, n, max_degree);
        let (score, q, k, v) = score_inputs(&mut init, which, n, heads, d);
        let bias = init.normal(graph.num_edges() * heads, 1.0);
        let mut inputs = AttentionInputs::new(&q, &k, &v, heads);
        if with_bias { inputs = inputs.with_bias(&bias); }
        let sparse = attend(&graph, &score, &inputs, Path::Sparse, true).unwrap();
        let oracle = attend(&graph, &score, &inputs, Path::Reference, true).unwrap();
        close("sparse vs reference", &sparse.out, &oracle.out)?;
        lse_close(&sparse.log_sum_exp, &oracle.log_sum_exp)?;
        for i in 0..n {
            if graph.in_degree(i) == 0 {
                prop_assert!(sparse.out.row(i).iter().all(|&x| x == 0.0), "isolated node {} is not zero", i);
            }
        }
        let (ws, wr) = (sparse.weights.unwrap(), oracle.weights.unwrap());
        prop_assert!(ws.iter().zip(&wr).all(|(a, b)| (a - b).abs() <= TOL));
    }

    /// (d) Relabelling the nodes permutes the output: f(P x, P G P^T) = P f(x, G).
    #[test]
    fn relabelling_nodes_permutes_the_output(n in 1usize..=40, which in 0usize..3, seed in any::<u64>(), perm_seed in any::<u64>()) {
        let mut init = Init::new(seed);
        let graph = messy_graph(&mut init, n, 6);
        let config = match which {
            0 => AttentionConfig::transformer(8, 4, 2),
            1 => AttentionConfig::gat(8, 4, 2),
            _ => AttentionConfig::gatv2(8, 4, 2),
        };
        let layer = GraphAttention::new(config, &mut init).unwrap();
        let x = random(&mut init, n, 8, 1.0);
        // A random permutation (Fisher-Yates from the seeded generator).
        let mut perm: Vec<usize> = (0..n).collect();
        let mut pi = Init::new(perm_seed);
        for i in (1..n).rev() {
            let j = ((pi.uniform(1, 0.0, 1.0)[0] * (i + 1) as f32) as usize).min(i);
            perm.swap(i, j);
        }
        let permuted_graph = graph.permute(&perm).unwrap();
        let mut px = Matrix::zeros(n, 8);
        for (i, &p) in perm.iter().enumerate() { px.row_mut(p).copy_from_slice(x.row(i)); }
        let y = layer.forward(&graph, &x).unwrap();
        let py = layer.forward(&permuted_graph, &px).unwrap();
        let mut expected = Matrix::zeros(n, y.cols());
        for (i, &p) in perm.iter().enumerate() { expected.row_mut(p).copy_from_slice(y.row(i)); }
        close("permuted output", &py, &expected)?;
    }

    /// (e) Dense attention with a boolean mask equals sparse attention on the mask's graph.
    #[test]
    fn masked_dense_equals_sparse_on_the_mask_graph(n in 1usize..=48, heads in 1usize..=3, d in 1usize..=8, which in 0usize..3, density in 0.0f32..1.0, seed in any::<u64>()) {
        let mut init = Init::new(seed);
        let mask: Vec<bool> = init.uniform(n * n, 0.0, 1.0).into_iter().map(|u| u < density).collect();
        // mask[i * n + j] keeps the edge j -> i
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for i in 0..n { for j in 0..n { if mask[i * n + j] { src.push(j); dst.push(i); } } }
        let mask_graph = Graph::from_edge_index(n, &src, &dst).unwrap();
        let (score, q, k, v) = score_inputs(&mut init, which, n, heads, d);
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let dense = attend_dense(&Graph::complete(n, true), &score, &inputs, Some(&mask), false).unwrap();
        let sparse = attend(&mask_graph, &score, &inputs, Path::Sparse, false).unwrap();
        close("masked dense vs sparse", &dense.out, &sparse.out)?;
    }

    /// (f) Logits scaled to 1e4 stay finite on every path, and every output is a convex
    /// combination of its sources' values (weights sum to one).
    #[test]
    fn huge_logits_stay_finite(n in 1usize..=32, heads in 1usize..=2, d in 1usize..=8, which in 0usize..3, seed in any::<u64>()) {
        let mut init = Init::new(seed);
        let (score, q, k, v) = score_inputs(&mut init, which, n, heads, d);
        // q and k scaled by 100 each: dot-product logits of order 1e4; GAT's by 1e4 directly.
        let s = if which == 1 { 1e4 } else { 100.0 };
        let scale = |m: &Matrix| Matrix::from_vec(m.rows(), m.cols(), m.as_slice().iter().map(|x| x * s).collect()).unwrap();
        let (q, k) = (scale(&q), scale(&k));
        let score = match score { Score::GatV2 { attention, negative_slope } => Score::GatV2 { attention: attention.iter().map(|a| a * 100.0).collect(), negative_slope }, other => other };
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let complete = Graph::complete(n, true);
        let messy = messy_graph(&mut init, n, 8);
        for (graph, path) in [(&complete, Path::Dense), (&complete, Path::Sparse), (&messy, Path::Sparse), (&messy, Path::Reference)] {
            let r = attend(graph, &score, &inputs, path, true).unwrap();
            prop_assert!(r.out.as_slice().iter().all(|x| x.is_finite()), "{:?} produced a non-finite output", path);
            let w = r.weights.unwrap();
            for i in 0..n {
                let e = graph.edge_range(i);
                if e.is_empty() { continue; }
                for h in 0..heads {
                    let sum: f32 = e.clone().map(|e| w[e * heads + h]).sum();
                    prop_assert!((sum - 1.0).abs() <= 1e-4, "{:?}: weights of node {} sum to {}", path, i, sum);
                    for c in 0..d {
                        let vals: Vec<f32> = graph.incoming(i).map(|j| v.get(j, h * d + c)).collect();
                        let (lo, hi) = vals.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                        let o = r.out.get(i, h * d + c);
                        prop_assert!(o >= lo - 1e-4 && o <= hi + 1e-4, "{:?}: output {} outside [{}, {}]", path, o, lo, hi);
                    }
                }
            }
        }
    }
}

/// Sizes just around the SIMD widths (15/16/17, 63/64/65), on one and on several threads: every
/// path agrees with the oracle, and the bits do not depend on the thread count.
#[test]
fn simd_width_sweep_on_one_and_several_threads() {
    let pools: Vec<rayon::ThreadPool> =
        [1, 2, 3].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
    for n in [15, 16, 17, 63, 64, 65] {
        for d in [15, 16, 17] {
            for which in 0..3 {
                let mut init = Init::new((n * 1000 + d * 10 + which) as u64);
                let (score, q, k, v) = score_inputs(&mut init, which, n, 2, d);
                let inputs = AttentionInputs::new(&q, &k, &v, 2);
                let complete = Graph::complete(n, true);
                let messy = messy_graph(&mut init, n, 9);
                let oracle_c = attend(&complete, &score, &inputs, Path::Reference, false).unwrap().out;
                let oracle_m = attend(&messy, &score, &inputs, Path::Reference, false).unwrap().out;
                let mut first: Option<(Matrix, Matrix, Matrix)> = None;
                for pool in &pools {
                    let (dense, sparse_c, sparse_m) = pool.install(|| {
                        (
                            attend(&complete, &score, &inputs, Path::Dense, false).unwrap().out,
                            attend(&complete.materialize(), &score, &inputs, Path::Sparse, false).unwrap().out,
                            attend(&messy, &score, &inputs, Path::Sparse, false).unwrap().out,
                        )
                    });
                    for (what, ours, oracle) in [
                        ("dense", &dense, &oracle_c),
                        ("sparse complete", &sparse_c, &oracle_c),
                        ("sparse messy", &sparse_m, &oracle_m),
                    ] {
                        let diff = ours.max_abs_diff(oracle);
                        assert!(diff <= TOL * oracle.max_abs().max(1.0), "n={n} d={d} score={which} {what}: {diff:e}");
                    }
                    match &first {
                        None => first = Some((dense, sparse_c, sparse_m)),
                        Some(f) => assert!(
                            f.0 == dense && f.1 == sparse_c && f.2 == sparse_m,
                            "n={n} d={d}: results depend on the thread count"
                        ),
                    }
                }
            }
        }
    }
}

/// A whole layer (GEMMs included) gives the same bits on 1 and 2 threads, at sizes where the
/// GEMMs run in parallel.
#[test]
fn layers_are_deterministic_across_thread_counts() {
    let layer = GraphAttention::new(AttentionConfig::timm(192, 3), &mut Init::new(3)).unwrap();
    let x = random(&mut Init::new(4), 197, 192, 1.0);
    let g = Graph::complete(197, true);
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| layer.forward(&g, &x).unwrap())
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_inputs_are_typed_errors() {
    use patchgraph::Error;
    let x = Matrix::zeros(4, 8);
    let g = Graph::complete(4, true);
    // Wrong widths.
    let q3 = Matrix::zeros(4, 6);
    assert!(matches!(
        attend(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&q3, &x, &x, 2), Path::Auto, false),
        Err(Error::Shape { .. })
    ));
    // Wrong row count.
    let short = Matrix::zeros(3, 8);
    assert!(matches!(
        attend(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&short, &short, &short, 2), Path::Sparse, false),
        Err(Error::Shape { .. })
    ));
    // GAT needs one scalar per head.
    assert!(matches!(
        attend(&g, &Score::Gat { negative_slope: 0.2 }, &AttentionInputs::new(&x, &x, &x, 2), Path::Auto, false),
        Err(Error::Shape { .. })
    ));
    // Zero heads.
    assert!(matches!(
        attend(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&x, &x, &x, 0), Path::Auto, false),
        Err(Error::Invalid { .. })
    ));
    // Bias of the wrong length, and a NaN bias.
    let short_bias = vec![0.0; 5];
    assert!(matches!(
        attend(
            &g,
            &Score::Dot { scale: 1.0 },
            &AttentionInputs::new(&x, &x, &x, 2).with_bias(&short_bias),
            Path::Auto,
            false
        ),
        Err(Error::Shape { .. })
    ));
    let mut nan_bias = vec![0.0; 32];
    nan_bias[7] = f32::NAN;
    assert!(matches!(
        attend(
            &g,
            &Score::Dot { scale: 1.0 },
            &AttentionInputs::new(&x, &x, &x, 2).with_bias(&nan_bias),
            Path::Auto,
            false
        ),
        Err(Error::NonFinite { position: 7, .. })
    ));
    // Dense path on a sparse graph.
    let sparse = Graph::from_edge_index(4, &[0], &[1]).unwrap();
    assert!(matches!(
        attend(&sparse, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&x, &x, &x, 2), Path::Dense, false),
        Err(Error::Invalid { .. })
    ));
    // NaN input to a layer, wrong input width to a layer.
    let layer = GraphAttention::new(AttentionConfig::gat(8, 4, 2), &mut Init::new(0)).unwrap();
    let mut bad = Matrix::zeros(4, 8);
    bad.row_mut(2)[3] = f32::NAN;
    assert!(matches!(layer.forward(&g, &bad), Err(Error::NonFinite { position: 19, .. })));
    assert!(matches!(layer.forward(&g, &Matrix::zeros(4, 7)), Err(Error::Shape { .. })));
    // A timm config whose width is not a multiple of the heads.
    assert!(matches!(GraphAttention::new(AttentionConfig::timm(10, 3), &mut Init::new(0)), Err(Error::Invalid { .. })));
    // Edge index out of range.
    assert!(matches!(
        Graph::from_edge_index(3, &[0, 3], &[1, 1]),
        Err(Error::NodeOutOfRange { index: 3, num_nodes: 3, .. })
    ));
}

#[test]
fn empty_graph_and_graph_without_edges_give_zeros() {
    let layer = GraphAttention::new(AttentionConfig::transformer(4, 2, 2), &mut Init::new(0)).unwrap();
    let empty = Graph::from_edge_index(0, &[], &[]).unwrap();
    assert_eq!(layer.forward(&empty, &Matrix::zeros(0, 4)).unwrap().shape(), (0, 4));
    let x = Matrix::from_fn(3, 4, |i, j| (i + j) as f32);
    let v = Matrix::from_fn(3, 4, |i, j| 1.0 + (i * j) as f32);
    let no_edges = Graph::from_edge_index(3, &[], &[]).unwrap();
    for path in [Path::Sparse, Path::Reference] {
        let r =
            attend(&no_edges, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&x, &x, &v, 2), path, true).unwrap();
        assert!(r.out.as_slice().iter().all(|&o| o == 0.0));
    }
    // A complete graph without self-loops on one node has no edge either.
    let lone = Graph::complete(1, false);
    let one = Matrix::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
    let r = attend(&lone, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&one, &one, &one, 1), Path::Dense, false)
        .unwrap();
    assert_eq!(r.out.as_slice(), &[0.0, 0.0]);
}

#[test]
fn edge_index_tensors_are_validated() {
    use patchgraph::Error;
    // [2, 3]: 0 -> 1, 2 -> 1, 1 -> 0
    let g = Graph::from_edge_index_tensor(3, &[2, 3], &[0, 2, 1, 1, 1, 0]).unwrap();
    assert_eq!(g.incoming(1).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![1]);
    assert!(matches!(Graph::from_edge_index_tensor(3, &[3, 2], &[0; 6]), Err(Error::Shape { .. })));
    assert!(matches!(Graph::from_edge_index_tensor(3, &[2, 3], &[0; 5]), Err(Error::Shape { .. })));
    assert!(matches!(Graph::from_edge_index_tensor(3, &[2, 2], &[0, -1, 1, 1]), Err(Error::Invalid { .. })));
    assert!(matches!(
        Graph::from_edge_index_tensor(3, &[2, 2], &[0, 1, 1, 7]),
        Err(Error::NodeOutOfRange { index: 7, num_nodes: 3, .. })
    ));
}

/// Blocks larger than one key tile (256) and one query tile (64): the online-softmax rescaling
/// across key tiles, with and without self-loops, bias and a mask, against the f64 oracle.
#[test]
fn dense_streams_several_key_tiles() {
    for (n, which, self_loops) in [(257, 0, true), (300, 1, false), (530, 2, true), (600, 0, false)] {
        let mut init = Init::new(n as u64 + which as u64);
        let heads = 2;
        let (score, q, k, v) = score_inputs(&mut init, which, n, heads, 16);
        let graph = Graph::complete(n, self_loops);
        let e = graph.num_edges();
        // A bias that grows along the sources, so later key tiles carry the row maxima.
        let bias: Vec<f32> = (0..e * heads).map(|x| ((x / heads) % n) as f32 * 0.02).collect();
        let mask: Vec<bool> = init.uniform(e, 0.0, 1.0).into_iter().map(|u| u < 0.7).collect();
        let inputs = AttentionInputs::new(&q, &k, &v, heads).with_bias(&bias);
        let dense = attend_dense(&graph, &score, &inputs, Some(&mask), true).unwrap();
        let kept: Vec<usize> = (0..e).filter(|&x| mask[x]).collect();
        let (src, dst) = graph.edge_index();
        let masked = Graph::from_edge_index(
            n,
            &kept.iter().map(|&x| src[x]).collect::<Vec<_>>(),
            &kept.iter().map(|&x| dst[x]).collect::<Vec<_>>(),
        )
        .unwrap();
        let masked_bias: Vec<f32> = kept.iter().flat_map(|&x| bias[x * heads..(x + 1) * heads].to_vec()).collect();
        let oracle = attend(
            &masked,
            &score,
            &AttentionInputs::new(&q, &k, &v, heads).with_bias(&masked_bias),
            Path::Reference,
            true,
        )
        .unwrap();
        let diff = dense.out.max_abs_diff(&oracle.out);
        assert!(diff <= TOL * oracle.out.max_abs().max(1.0), "n={n} score={which}: {diff:e}");
        let (wd, wo) = (dense.weights.unwrap(), oracle.weights.unwrap());
        for (t, &x) in kept.iter().enumerate() {
            for h in 0..heads {
                assert!((wd[x * heads + h] - wo[t * heads + h]).abs() <= TOL, "n={n}: weight of edge {x}");
            }
        }
        for (a, b) in dense.log_sum_exp.iter().zip(&oracle.log_sum_exp) {
            assert!((a - b).abs() <= TOL * b.abs().max(1.0), "n={n}: lse {a} vs {b}");
        }
    }
}

/// `auto_path` follows the measured crossovers: a random graph of density 0.2 runs sparse at
/// N = 785 (crossover 0.3) and dense at N = 3137 (crossover 0.15); complete graphs always run
/// dense; a bias or asking for weights keeps a dense graph on the sparse path.
#[test]
fn auto_path_follows_the_measured_crossover() {
    use patchgraph::attention::auto_path;
    for (n, want) in [(785, Path::Sparse), (3137, Path::Dense)] {
        let k = n / 5; // density k / n = 0.2
        let g = Graph::random(n, k, 7, false).unwrap();
        assert!((g.num_edges() as f64 / (n * n) as f64 - 0.2).abs() < 0.01);
        assert_eq!(auto_path(&g, false, false), want, "n = {n}");
        assert_eq!(auto_path(&g, true, false), Path::Sparse, "n = {n} with a bias");
        assert_eq!(auto_path(&g, false, true), Path::Sparse, "n = {n} with weights");
    }
    assert_eq!(auto_path(&Graph::complete(5, false), true, true), Path::Dense);
}

/// `Auto` sends a dense enough graph to the dense kernel with a mask: the same answer as the
/// sparse kernel; with a duplicate edge (not expressible as a mask) it stays on the sparse path.
#[test]
fn auto_dispatch_by_density_gives_the_sparse_answer() {
    use patchgraph::attention::DENSE_DENSITY;
    let n = 40;
    let mut init = Init::new(11);
    for which in 0..3 {
        let (score, q, k, v) = score_inputs(&mut init, which, n, 2, 8);
        let inputs = AttentionInputs::new(&q, &k, &v, 2);
        let keep: Vec<bool> = init.uniform(n * n, 0.0, 1.0).into_iter().map(|u| u < 0.6).collect();
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for i in 0..n {
            for j in 0..n {
                if keep[i * n + j] {
                    src.push(j);
                    dst.push(i);
                }
            }
        }
        let graph = Graph::from_edge_index(n, &src, &dst).unwrap();
        assert!(graph.num_edges() as f64 >= DENSE_DENSITY * (n * n) as f64);
        let auto = attend(&graph, &score, &inputs, Path::Auto, false).unwrap();
        let sparse = attend(&graph, &score, &inputs, Path::Sparse, false).unwrap();
        assert!(auto.out.max_abs_diff(&sparse.out) <= TOL * sparse.out.max_abs().max(1.0), "score {which}");
        // The same graph with one edge doubled: Auto must count it twice, as sparse does.
        src.push(src[0]);
        dst.push(dst[0]);
        let doubled = Graph::from_edge_index(n, &src, &dst).unwrap();
        let auto = attend(&doubled, &score, &inputs, Path::Auto, false).unwrap();
        let sparse = attend(&doubled, &score, &inputs, Path::Sparse, false).unwrap();
        assert_eq!(auto.out, sparse.out, "score {which}: a duplicate edge must stay on the sparse path");
    }
}
