//! `attend`: the one entry point that picks an implementation of the algebra for a graph.
//!
//! Complete graphs (and batches of them) go to the dense kernel. A single-block graph whose
//! edge density `E / N^2` is at least [`DENSE_DENSITY`] (the crossover measured by `patchgraph
//! bench`) also goes to the dense kernel, as a mask over the complete graph, when it has no
//! duplicate edge, no edge bias and no weights are asked for (the dense kernel reports those in
//! the complete graph's edge order). Everything else goes to the sparse kernel. [`Path`] forces
//! a choice (tests compare all three).
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend, AttentionInputs, Path, Score};
//! let g = Graph::complete(4, true);
//! let x = Matrix::from_fn(4, 2, |i, j| (i + j) as f32);
//! let inputs = AttentionInputs::new(&x, &x, &x, 1);
//! let dense = attend(&g, &Score::Dot { scale: 0.5 }, &inputs, Path::Auto, false).unwrap();
//! let sparse = attend(&g, &Score::Dot { scale: 0.5 }, &inputs, Path::Sparse, false).unwrap();
//! assert!(dense.out.max_abs_diff(&sparse.out) < 1e-5);
//! ```

use super::{AttentionInputs, AttentionOutput, Score, attend_reference};
use crate::error::Result;
use crate::graph::Graph;
use crate::kernels::{dense::attend_dense, sparse::attend_sparse};

/// Which implementation runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Path {
    /// Dense for complete graphs and graphs denser than [`DENSE_DENSITY`], sparse otherwise.
    #[default]
    Auto,
    /// The dense kernel (complete graphs only).
    Dense,
    /// The sparse kernel (any graph; a complete graph is walked implicitly).
    Sparse,
    /// The plain f64 reference loops.
    Reference,
}

/// Edge density `E / N^2` from which `Auto` prefers the dense kernel with a mask. Measured with
/// `patchgraph bench` (random graphs, dot score, H = 12, d = 64, 2 threads): sparse stopped
/// being faster at densities 0.28 (N = 50), 0.24 (N = 197) and 0.31 (N = 785); see
/// `notes/benchmarks.md`.
pub const DENSE_DENSITY: f64 = 0.3;

/// The mask of `graph` over the complete graph on its nodes (`mask[i * N + j]` for `j -> i`),
/// if `Auto` should run it densely (see the module docs).
fn dense_mask(graph: &Graph, inputs: &AttentionInputs<'_>, weights: bool) -> Option<Vec<bool>> {
    let n = graph.num_nodes();
    if weights || inputs.bias.is_some() || graph.blocks().len() != 2 || n == 0 {
        return None;
    }
    if (graph.num_edges() as f64) < DENSE_DENSITY * (n as f64) * (n as f64) {
        return None;
    }
    let mut mask = vec![false; n * n];
    for i in 0..n {
        for j in graph.incoming(i) {
            if std::mem::replace(&mut mask[i * n + j], true) {
                return None; // a duplicate edge counts twice in the softmax: not a mask
            }
        }
    }
    Some(mask)
}

/// Runs `score` attention over `graph`; `weights` asks for the `[E x H]` attention weights.
pub fn attend(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    path: Path,
    weights: bool,
) -> Result<AttentionOutput> {
    match path {
        Path::Auto if graph.is_complete() => attend_dense(graph, score, inputs, None, weights),
        Path::Auto => match dense_mask(graph, inputs, weights) {
            Some(mask) => attend_dense(&Graph::complete(graph.num_nodes(), true), score, inputs, Some(&mask), false),
            None => attend_sparse(graph, score, inputs, weights),
        },
        Path::Sparse => attend_sparse(graph, score, inputs, weights),
        Path::Dense => attend_dense(graph, score, inputs, None, weights),
        Path::Reference => attend_reference(graph, score, inputs, weights),
    }
}
