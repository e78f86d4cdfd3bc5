//! `attend`: the one entry point that picks an implementation of the algebra for a graph.
//!
//! Complete graphs (and batches of them) go to the dense kernel, everything else to the sparse
//! kernel; [`Path`] forces a choice (tests compare all three).
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
    /// Dense for complete graphs, sparse otherwise.
    #[default]
    Auto,
    /// The dense kernel (complete graphs only).
    Dense,
    /// The sparse kernel (any graph; a complete graph is walked implicitly).
    Sparse,
    /// The plain f64 reference loops.
    Reference,
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
        Path::Auto | Path::Sparse => attend_sparse(graph, score, inputs, weights),
        Path::Dense => attend_dense(graph, score, inputs, None, weights),
        Path::Reference => attend_reference(graph, score, inputs, weights),
    }
}
