//! `attend`: the one entry point that picks an implementation of the algebra for a graph.
//!
//! Complete graphs (and batches of them) go to the dense kernel. A single-block graph whose
//! edge density `E / N^2` is at least [`dense_density`]`(N)` (the crossover measured by
//! `patchgraph bench`: 0.3 up to N = 785, 0.15 from N = 3137) also goes to the dense kernel,
//! as a mask over the complete graph, when it has no duplicate edge, no edge bias and no
//! weights are asked for (the dense kernel reports those in the complete graph's edge order). Everything else goes to the sparse kernel. [`Path`] forces
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
use crate::kernels::{dense::attend_dense, finite_check::locate, sparse::attend_sparse};

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

/// Edge density `E / N^2` from which `Auto` prefers the dense kernel with a mask, for graphs of
/// up to [`DENSE_DENSITY_SMALL_N`] nodes. Measured with `patchgraph bench` (random graphs, dot
/// score, H = 12, d = 64, 2 threads): sparse stopped being faster at densities 0.28-0.64
/// (N = 50), 0.24-0.37 (N = 197) and 0.31 (N = 785); see `notes/benchmarks.md`.
pub const DENSE_DENSITY: f64 = 0.3;

/// The crossover density for graphs of at least [`DENSE_DENSITY_LARGE_N`] nodes: 0.12-0.18 at
/// N = 3137, where gathering random key and value rows from a 10 MB working set is bound by the
/// caches while the dense kernel stays compute-bound.
pub const DENSE_DENSITY_LARGE: f64 = 0.15;

/// Largest node count measured with the small-graph crossover.
pub const DENSE_DENSITY_SMALL_N: usize = 785;

/// Smallest node count measured with the large-graph crossover.
pub const DENSE_DENSITY_LARGE_N: usize = 3137;

/// The edge density from which `Auto` runs an `n`-node graph densely: [`DENSE_DENSITY`] up to
/// 785 nodes, [`DENSE_DENSITY_LARGE`] from 3137, linear in `ln n` between the two measurements.
///
/// ```
/// use patchgraph::attention::dense_density;
/// assert_eq!(dense_density(197), 0.3);
/// assert_eq!(dense_density(12_545), 0.15);
/// let mid = dense_density(1568);
/// assert!(0.15 < mid && mid < 0.3);
/// ```
pub fn dense_density(n: usize) -> f64 {
    if n <= DENSE_DENSITY_SMALL_N {
        return DENSE_DENSITY;
    }
    if n >= DENSE_DENSITY_LARGE_N {
        return DENSE_DENSITY_LARGE;
    }
    let (a, b) = ((DENSE_DENSITY_SMALL_N as f64).ln(), (DENSE_DENSITY_LARGE_N as f64).ln());
    let t = ((n as f64).ln() - a) / (b - a);
    DENSE_DENSITY + t * (DENSE_DENSITY_LARGE - DENSE_DENSITY)
}

/// The kernel `Path::Auto` runs `graph` on: [`Path::Dense`] for complete graphs (and batches of
/// them), and for a single-block graph at least [`dense_density`] dense with no edge bias and no
/// weights asked for (unless it has a duplicate edge, which a mask cannot express: found while
/// building the mask, then it runs sparse); [`Path::Sparse`] otherwise.
pub fn auto_path(graph: &Graph, has_bias: bool, weights: bool) -> Path {
    let n = graph.num_nodes();
    let maskable = !weights && !has_bias && graph.blocks().len() == 2 && n > 0;
    if graph.is_complete() || (maskable && graph.num_edges() as f64 >= dense_density(n) * (n as f64) * (n as f64)) {
        Path::Dense
    } else {
        Path::Sparse
    }
}

/// The mask of `graph` over the complete graph on its nodes (`mask[i * N + j]` for `j -> i`),
/// if `Auto` should run it densely (see the module docs).
fn dense_mask(graph: &Graph, inputs: &AttentionInputs<'_>, weights: bool) -> Option<Vec<bool>> {
    let n = graph.num_nodes();
    if graph.is_complete() || auto_path(graph, inputs.bias.is_some(), weights) != Path::Dense {
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
        Path::Reference => {
            if inputs.check_finite {
                // The oracle has no tasks to fold the check into: one pass before it.
                locate(&[("q", inputs.query), ("k", inputs.key), ("v", inputs.value)])?;
            }
            attend_reference(graph, score, inputs, weights)
        }
    }
}
