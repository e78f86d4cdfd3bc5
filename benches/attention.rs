//! Dense versus sparse attention, and whole layers against PyG's shapes.
//!
//! H = 12 heads of d = 64 (ViT-B), N = 1 + g*g tokens (g = 7, 14, 28, 56: a class token plus a
//! patch grid), B in {1, 8}; sparse graphs are spatial k-NN over the patch grid (k in {8, 16,
//! 32}, self included) with the class token linked both ways to every patch. The same shapes
//! and graphs are timed for PyTorch / PyG by `scripts/bench_peers.py`.
//!
//! Groups: `dense` (the algebra on complete graphs, no projections: what SDPA computes),
//! `sparse` (the algebra on k-NN graphs), `checked` (the dot score on the complete graph and
//! on k-NN 16, forward and forward+backward, with and without the NaN/inf check of the inputs
//! inside the kernels, `AttentionInputs::checked`, which the Python package asks for),
//! `layer` (GATConv / GATv2Conv / TransformerConv 768 -> 12 x 64 including the input
//! projections, as PyG runs them), `build` (graph building).
//!
//! Run: `cargo bench --bench attention` (filter: `cargo bench --bench attention -- dense/dot`).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use patchgraph::attention::{AttentionInputs, Path, Score, attend, attend_backward};
use patchgraph::nn::{AttentionConfig, GraphAttention, Init, Linear};
use patchgraph::{Graph, Matrix};
use std::hint::black_box;
use std::time::Duration;

const HEADS: usize = 12;
const D: usize = 64;
const GRIDS: [usize; 4] = [7, 14, 28, 56];

fn random(init: &mut Init, rows: usize, cols: usize) -> Matrix {
    Matrix::from_vec(rows, cols, init.normal(rows * cols, 1.0)).expect("shape")
}

/// Query/key/value for a score: GAT's query and key are one scalar per node and head.
fn inputs(score: &str, n: usize) -> (Score, Matrix, Matrix, Matrix) {
    let mut init = Init::new(n as u64);
    let v = random(&mut init, n, HEADS * D);
    match score {
        "dot" => (Score::Dot { scale: 0.125 }, random(&mut init, n, HEADS * D), random(&mut init, n, HEADS * D), v),
        "gat" => (Score::Gat { negative_slope: 0.2 }, random(&mut init, n, HEADS), random(&mut init, n, HEADS), v),
        _ => (
            Score::GatV2 { attention: init.normal(HEADS * D, 0.1), negative_slope: 0.2 },
            random(&mut init, n, HEADS * D),
            random(&mut init, n, HEADS * D),
            v,
        ),
    }
}

/// The k-NN patch graph with a class token, as `scripts/bench_peers.py` builds it.
pub fn knn_graph(g: usize, k: usize) -> Graph {
    Graph::spatial_knn(g, g, k, true).expect("k <= g*g").with_global_node(true)
}

fn dense(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for score in ["dot", "gat", "gatv2"] {
        for b in [1, 8] {
            for g in GRIDS {
                let n = g * g + 1;
                if b == 8 && n > 785 {
                    continue; // B = 8 at N = 3137 is 8x the B = 1 time: nothing new
                }
                let graph = Graph::disjoint_union(&vec![Graph::complete(n, true); b]).expect("batch");
                let (s, q, k, v) = inputs(score, b * n);
                let x = AttentionInputs::new(&q, &k, &v, HEADS);
                group.bench_function(BenchmarkId::new(format!("{score}/B{b}"), n), |bench| {
                    bench.iter(|| black_box(attend(&graph, &s, &x, Path::Dense, false).expect("dense")))
                });
            }
        }
    }
    group.finish();
}

fn sparse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sparse");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for score in ["dot", "gat", "gatv2"] {
        for k in [8, 16, 32] {
            for g in GRIDS {
                if k > g * g {
                    continue;
                }
                let graph = knn_graph(g, k);
                let (s, q, kk, v) = inputs(score, graph.num_nodes());
                let x = AttentionInputs::new(&q, &kk, &v, HEADS);
                group.bench_function(BenchmarkId::new(format!("{score}/knn{k}"), graph.num_nodes()), |bench| {
                    bench.iter(|| black_box(attend(&graph, &s, &x, Path::Sparse, false).expect("sparse")))
                });
                // The same k-NN graph without the class token: every in-degree k, the fixed-degree path.
                let plain = Graph::spatial_knn(g, g, k, true).expect("k <= g*g");
                let (s, q, kk, v) = inputs(score, plain.num_nodes());
                let x = AttentionInputs::new(&q, &kk, &v, HEADS);
                group.bench_function(BenchmarkId::new(format!("{score}/fixed-knn{k}"), plain.num_nodes()), |bench| {
                    bench.iter(|| black_box(attend(&plain, &s, &x, Path::Sparse, false).expect("sparse")))
                });
            }
        }
    }
    group.finish();
}

fn checked(c: &mut Criterion) {
    let mut group = c.benchmark_group("checked");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for g in [14, 28] {
        for (name, graph) in [("complete", Graph::complete(g * g + 1, true)), ("knn16", knn_graph(g, 16))] {
            let n = graph.num_nodes();
            let (s, q, k, v) = inputs("dot", n);
            let dout = random(&mut Init::new(7), n, HEADS * D);
            let plain = AttentionInputs::new(&q, &k, &v, HEADS);
            for (label, x) in [("plain", plain), ("checked", plain.checked())] {
                group.bench_function(BenchmarkId::new(format!("{name}/forward/{label}"), n), |bench| {
                    bench.iter(|| black_box(attend(&graph, &s, &x, Path::Auto, false).expect("forward")))
                });
                group.bench_function(BenchmarkId::new(format!("{name}/forward+backward/{label}"), n), |bench| {
                    bench.iter(|| {
                        let lse = attend(&graph, &s, &x, Path::Auto, false).expect("forward").log_sum_exp;
                        black_box(attend_backward(&graph, &s, &x, &lse, &dout).expect("backward"))
                    })
                });
            }
        }
    }
    group.finish();
}

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let configs = [
        ("gat", AttentionConfig::gat(768, D, HEADS)),
        ("gatv2", AttentionConfig::gatv2(768, D, HEADS)),
        ("transformer", AttentionConfig::transformer(768, D, HEADS)),
    ];
    for (name, config) in configs {
        let layer = GraphAttention::new(config, &mut Init::new(0)).expect("layer");
        for k in [8, 16, 32] {
            for g in GRIDS {
                let graph = knn_graph(g, k);
                let x = random(&mut Init::new(1), graph.num_nodes(), 768);
                group.bench_function(BenchmarkId::new(format!("{name}/knn{k}"), graph.num_nodes()), |bench| {
                    bench.iter(|| black_box(layer.forward(&graph, &x).expect("forward")))
                });
            }
        }
        for g in [7, 14] {
            let graph = Graph::complete(g * g + 1, true);
            let x = random(&mut Init::new(1), graph.num_nodes(), 768);
            group.bench_function(BenchmarkId::new(format!("{name}/complete"), graph.num_nodes()), |bench| {
                bench.iter(|| black_box(layer.forward(&graph, &x).expect("forward")))
            });
        }
    }
    group.finish();
}

/// The parts of a TransformerConv layer at k = 16, N = 3137: one 768 x 768 projection, the
/// four projections with their outputs alive together (as the layer holds them), the attention.
fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("parts");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let graph = knn_graph(56, 16);
    let n = graph.num_nodes();
    let mut init = Init::new(2);
    let x = random(&mut init, n, 768);
    let lins: Vec<Linear> = (0..4).map(|_| Linear::torch_init(&mut init, 768, 768, true)).collect();
    group.bench_function("linear_768x768/3137", |b| b.iter(|| black_box(lins[0].forward(&x).expect("linear"))));
    group.bench_function("four_linears_alive/3137", |b| {
        b.iter(|| black_box(lins.iter().map(|l| l.forward(&x).expect("linear")).collect::<Vec<_>>()))
    });
    let (q, k, v) = (lins[0].forward(&x).expect("q"), lins[1].forward(&x).expect("k"), lins[2].forward(&x).expect("v"));
    let inputs = AttentionInputs::new(&q, &k, &v, HEADS);
    group.bench_function("attend_knn16/3137", |b| {
        b.iter(|| {
            black_box(attend(&graph, &Score::Dot { scale: 0.125 }, &inputs, Path::Sparse, false).expect("attend"))
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for k in [8, 16, 32] {
        for g in GRIDS {
            group.bench_function(BenchmarkId::new(format!("knn{k}"), g * g + 1), |bench| {
                bench.iter(|| black_box(knn_graph(g, k)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dense, sparse, checked, layer, parts, build);
criterion_main!(benches);
