//! A graph's visiting order (`Graph::visit_order`, set by the LSH builder or by
//! `Graph::with_visit_order`) changes only the order in which the sparse kernels visit the
//! destinations, never a result: the forward (outputs, log-sum-exps, weights) and the backward
//! (every gradient) are the same bits with and without it, for every score, with an edge bias,
//! with hub rows (a class token of in-degree >= 2048), on 1 and 3 threads.

use patchgraph::attention::{AttentionInputs, Path, Score, attend, attend_backward};
use patchgraph::graph::{GraphSpec, LshOptions};
use patchgraph::nn::Init;
use patchgraph::{Error, Graph, Matrix};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

fn random(init: &mut Init, rows: usize, cols: usize) -> Matrix {
    Matrix::from_vec(rows, cols, init.normal(rows * cols, 1.0)).unwrap()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn in_threads<T: Send>(t: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(f)
}

/// Everything one forward and backward produce, as bits.
fn run(
    graph: &Graph,
    score: &Score,
    q: &Matrix,
    k: &Matrix,
    v: &Matrix,
    bias: Option<&[f32]>,
    heads: usize,
) -> Vec<Vec<u32>> {
    let mut inputs = AttentionInputs::new(q, k, v, heads);
    if let Some(b) = bias {
        inputs = inputs.with_bias(b);
    }
    let out = attend(graph, score, &inputs, Path::Sparse, true).unwrap();
    let mut init = Init::new(99);
    let dout = random(&mut init, q.rows(), v.cols());
    let g = attend_backward(graph, score, &inputs, &out.log_sum_exp, &dout).unwrap();
    vec![
        bits(out.out.as_slice()),
        bits(&out.log_sum_exp),
        bits(out.weights.as_deref().unwrap_or_default()),
        bits(g.query.as_slice()),
        bits(g.key.as_slice()),
        bits(g.value.as_slice()),
        bits(&g.bias),
        bits(&g.attention),
    ]
}

#[test]
fn any_visiting_order_gives_the_same_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // A 46 x 46 grid of 7 x 7 windows with the class token (2117 nodes: the class token's row is
    // a hub row), and a small random graph with isolated nodes.
    let window = "nat:7".parse::<GraphSpec>().unwrap().build(46, 46, None, true).unwrap();
    let small = Graph::from_edge_index(17, &[0, 3, 3, 5, 16, 2, 9, 9], &[1, 1, 2, 2, 2, 16, 9, 0]).unwrap();
    for graph in [window, small] {
        let n = graph.num_nodes();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng);
        let ordered = graph.clone().with_visit_order(order).unwrap();
        assert_eq!(ordered, graph); // the order is not part of the graph's identity
        let (heads, d) = (3, 5);
        let mut init = Init::new(n as u64);
        let v = random(&mut init, n, heads * d);
        let bias = init.normal(graph.num_edges() * heads, 1.0);
        let scores = [
            (Score::Dot { scale: 0.4 }, random(&mut init, n, heads * d), random(&mut init, n, heads * d)),
            (Score::Gat { negative_slope: 0.2 }, random(&mut init, n, heads), random(&mut init, n, heads)),
            (
                Score::GatV2 { attention: init.normal(heads * d, 0.5), negative_slope: 0.2 },
                random(&mut init, n, heads * d),
                random(&mut init, n, heads * d),
            ),
        ];
        for (score, q, k) in &scores {
            for b in [None, Some(bias.as_slice())] {
                let want = in_threads(1, || run(&graph, score, q, k, &v, b, heads));
                for t in [1, 3] {
                    let got = in_threads(t, || run(&ordered, score, q, k, &v, b, heads));
                    assert!(got == want, "N {n}, {score:?}, bias {}, {t} threads", b.is_some());
                }
            }
        }
    }
}

#[test]
fn lsh_graphs_attend_as_their_plain_copies() {
    // An LSH graph carries its visiting order; a copy without it (relabelled by the identity)
    // attends to the same bits.
    let mut init = Init::new(3);
    let x = random(&mut init, 300, 16);
    let lsh = Graph::lsh(&x, &LshOptions { buckets: 8, rounds: 2, seed: 1, chunk: None }).unwrap();
    assert!(lsh.visit_order().is_some());
    let plain = lsh.permute(&(0..300).collect::<Vec<_>>()).unwrap();
    assert!(plain.visit_order().is_none());
    let (q, k, v) = (random(&mut init, 300, 16), random(&mut init, 300, 16), random(&mut init, 300, 16));
    let score = Score::Dot { scale: 0.25 };
    assert!(run(&lsh, &score, &q, &k, &v, None, 2) == run(&plain, &score, &q, &k, &v, None, 2));
}

#[test]
fn a_visiting_order_must_be_a_permutation() {
    let g = Graph::complete(4, true);
    assert!(matches!(g.clone().with_visit_order(vec![0, 1, 2]), Err(Error::Shape { .. })));
    assert!(matches!(g.clone().with_visit_order(vec![0, 1, 2, 4]), Err(Error::NodeOutOfRange { index: 4, .. })));
    let e = g.clone().with_visit_order(vec![0, 1, 1, 3]).unwrap_err().to_string();
    assert!(e.contains("node 1 appears twice"), "{e}");
    assert!(g.with_visit_order(vec![3, 2, 1, 0]).is_ok());
}
