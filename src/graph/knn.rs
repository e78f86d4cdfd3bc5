//! Feature k-NN graphs (ViG-style, dilated).
//!
//! Built by [`Graph::feature_knn`] (fast; documents the definition) and
//! [`Graph::feature_knn_reference`] (the oracle).

use super::{Edges, Graph, Topology, ensure_u32_nodes};
use crate::error::{Error, Result, ensure_finite};
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::cmp::Ordering;

/// Distance used by feature k-NN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    /// Squared Euclidean distance `|x_i - x_j|^2` (ranks as the Euclidean distance).
    L2,
    /// Cosine distance `1 - cos(x_i, x_j)`; the cosine with a zero row is taken as 0.
    Cosine,
}

/// Options of [`Graph::feature_knn`](super::Graph::feature_knn).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KnnOptions {
    /// Neighbours kept per node.
    pub k: usize,
    /// ViG dilation `d`: take the `k * d` nearest, keep every `d`-th.
    pub dilation: usize,
    /// The distance.
    pub metric: Metric,
    /// Whether a node counts as its own nearest neighbour (ViG: yes).
    pub include_self: bool,
}

/// At most this many rows share one GEMM tile. Taller tiles amortise faer's packing of the
/// `[D x N]` right-hand side, which every tile repeats: at N = 3137, D = 768 on one thread,
/// 64-row tiles took 270 ms, 256-row tiles 220 ms (the full GEMM alone: 180 ms).
const TILE_ROWS: usize = 256;
/// Fewer rows per tile when `rows * N` would exceed this many f32 (16 MiB per thread).
const TILE_FLOATS: usize = 1 << 22;

/// Rows per GEMM tile for `n` nodes: at least 4 tiles (work for the threads), at most
/// [`TILE_ROWS`], within [`TILE_FLOATS`]. A function of `n` only, so the tiling (and with it
/// every float) is the same whatever the thread count.
fn tile_rows(n: usize) -> usize {
    n.div_ceil(4).clamp(1, TILE_ROWS).min((TILE_FLOATS / n.max(1)).max(1))
}

impl KnnOptions {
    /// Checks the options against the features `x` (one node per row).
    fn validate(&self, x: &Matrix) -> Result<()> {
        let n = x.rows();
        ensure_u32_nodes("feature k-NN", n)?;
        if self.k == 0 {
            return Err(Error::invalid("feature k-NN k", "must be at least 1"));
        }
        if self.dilation == 0 {
            return Err(Error::invalid("feature k-NN dilation", "must be at least 1"));
        }
        let available = if self.include_self { n } else { n.saturating_sub(1) };
        if self.k.checked_mul(self.dilation).is_none_or(|span| span > available) {
            return Err(Error::invalid(
                "feature k-NN k * dilation",
                format!("{} * {} nearest requested, {available} candidates among {n} nodes", self.k, self.dilation),
            ));
        }
        super::check_edges(&format!("feature k-NN graph on {n} nodes, k = {}", self.k), n.checked_mul(self.k))?;
        ensure_finite("feature k-NN features", x.as_slice())
    }
}

impl Graph {
    /// ViG's dilated feature k-NN graph of the rows of `x` (`[N x D]`, one node per row).
    ///
    /// The graph of Vision GNN (Han et al. 2022, `DenseDilatedKnnGraph`): for each node `i`, rank
    /// every node `j` by the distance between feature rows `x_i` and `x_j`,
    ///
    /// ```text
    /// L2:      dist(i, j) = |x_i - x_j|^2
    /// Cosine:  dist(i, j) = 1 - x_i . x_j / (|x_i| |x_j|)        (cos taken as 0 for a zero row)
    /// ```
    ///
    /// ties broken by node index ascending, with `i` itself first when `include_self` (distance 0)
    /// and left out otherwise. Call that ranking `R_i`. With `k` neighbours and dilation `d`, the
    /// sources of `i` are `R_i[0], R_i[d], ..., R_i[(k - 1) d]`: the `k d` nearest, every `d`-th
    /// kept. Edges go neighbour `j -> centre i`, listed in rank order (nearest first) so that the
    /// sources form ViG's `[N x k]` neighbour table row by row. (ViG L2-normalises the features and
    /// then uses L2, which ranks exactly as [`Metric::Cosine`].)
    ///
    /// This function computes all pairwise distances with one faer GEMM per tile of rows,
    /// `dist(i, j) = |x_i|^2 + |x_j|^2 - 2 x_i . x_j` (normalised rows for cosine), so memory stays
    /// `O(tile N)` per thread; each row is then ranked by a partial selection. Rows run in parallel
    /// with rayon; the result does not depend on the thread count. [`Graph::feature_knn_reference`]
    /// is the plain `O(N^2 D)` oracle in f64.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, KnnOptions, Metric};
    /// use patchgraph::Matrix;
    /// // Five points on a line at 0, 1, 3, 6, 10.
    /// let x = Matrix::from_vec(5, 1, vec![0., 1., 3., 6., 10.]).unwrap();
    /// let opts = KnnOptions { k: 2, dilation: 2, metric: Metric::L2, include_self: true };
    /// let g = Graph::feature_knn(&x, &opts).unwrap();
    /// // Node 2 (at 3) ranks itself, then 1 (distance 2), 0 (3), 3 (3; tie, higher index): keep ranks 0 and 2.
    /// assert_eq!(g.incoming(2).collect::<Vec<_>>(), vec![2, 0]);
    /// assert_eq!(g, Graph::feature_knn_reference(&x, &opts).unwrap());
    /// ```
    ///
    /// Every node has in-degree `k`.
    ///
    /// Errors: `k` or `dilation` zero, `k * dilation` more than the candidates (`N` with
    /// `include_self`, `N - 1` without), a non-finite feature, `N` beyond the `u32` range.
    pub fn feature_knn(x: &Matrix, opts: &KnnOptions) -> Result<Graph> {
        opts.validate(x)?;
        Ok(feature_knn_tiled(x, opts, tile_rows(x.rows())))
    }

    /// The same graph as [`Graph::feature_knn`] by plain `O(N^2 D)` loops in f64, every
    /// distance computed as its definition reads: the oracle for tests. Same errors.
    pub fn feature_knn_reference(x: &Matrix, opts: &KnnOptions) -> Result<Graph> {
        opts.validate(x)?;
        let n = x.rows();
        let norm = |i: usize| x.row(i).iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let dist = |i: usize, j: usize| -> f64 {
            let (a, b) = (x.row(i), x.row(j));
            match opts.metric {
                Metric::L2 => a.iter().zip(b).map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2)).sum(),
                Metric::Cosine => {
                    let dot: f64 = a.iter().zip(b).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
                    let (na, nb) = (norm(i), norm(j));
                    1.0 - if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 0.0 }
                }
            }
        };
        let mut table = vec![0u32; n * opts.k];
        let mut candidates: Vec<(f64, u32)> = Vec::with_capacity(n);
        for (i, neighbours) in table.chunks_mut(opts.k).enumerate() {
            candidates.clear();
            candidates.extend((0..n).filter(|&j| j != i).map(|j| (dist(i, j), j as u32)));
            pick_ranks(&mut candidates, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)), i, opts, neighbours);
        }
        Ok(fixed_degree_graph(n, table, opts))
    }
}

/// [`Graph::feature_knn`] with `tile` rows per GEMM (options already validated).
fn feature_knn_tiled(x: &Matrix, opts: &KnnOptions, tile: usize) -> Graph {
    let (n, dim) = x.shape();
    let k = opts.k;
    // Rank j for row i by key(i, j) = alpha x_i . x_j + bias_j, which is dist(i, j) less a
    // term constant along the row: L2 drops |x_i|^2, cosine drops the 1.
    let normalised;
    let (feats, alpha, bias) = match opts.metric {
        Metric::L2 => (x, -2.0f32, (0..n).map(|j| squared_norm(x.row(j)) as f32).collect::<Vec<_>>()),
        Metric::Cosine => {
            normalised = normalise_rows(x);
            (&normalised, -1.0f32, vec![0.0f32; n])
        }
    };
    let all = feats.as_faer().transpose(); // [D x N]
    let mut table = vec![0u32; n * k];
    table.par_chunks_mut(tile * k).enumerate().for_each_init(
        || (vec![0.0f32; tile * n], Vec::<(f32, u32)>::with_capacity(n)),
        |(gram, candidates), (t, out)| {
            let (first, rows) = (t * tile, out.len() / k);
            let lhs = MatRef::from_row_major_slice(&feats.as_slice()[first * dim..(first + rows) * dim], rows, dim);
            let dst = MatMut::from_row_major_slice_mut(&mut gram[..rows * n], rows, n);
            matmul(dst, Accum::Replace, lhs, all, alpha, Par::Seq);
            for (a, neighbours) in out.chunks_mut(k).enumerate() {
                let i = first + a;
                candidates.clear();
                let row = gram[a * n..(a + 1) * n].iter().zip(&bias).enumerate();
                // `+ 0.0` turns a -0.0 into +0.0, which total_cmp would order before it.
                candidates.extend(row.filter(|&(j, _)| j != i).map(|(j, (&g, &b))| (g + b + 0.0, j as u32)));
                pick_ranks(candidates, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)), i, opts, neighbours);
            }
        },
    );
    fixed_degree_graph(n, table, opts)
}

/// Writes the kept ranks `0, d, 2d, ...` of node `i` into `out` (`k` slots). `candidates` are
/// the other nodes with their keys; `cmp` orders them by key, then index.
fn pick_ranks<K>(
    candidates: &mut [(K, u32)],
    cmp: impl Fn(&(K, u32), &(K, u32)) -> Ordering,
    i: usize,
    opts: &KnnOptions,
    out: &mut [u32],
) {
    let skip_self = usize::from(opts.include_self);
    // Ranks 0 .. k d of R_i; with include_self, rank 0 is i and the others come from candidates.
    let needed = opts.k * opts.dilation - skip_self;
    if needed > 0 {
        candidates.select_nth_unstable_by(needed - 1, &cmp);
        candidates[..needed].sort_unstable_by(&cmp);
    }
    for (slot, o) in out.iter_mut().enumerate() {
        let rank = slot * opts.dilation;
        *o = if rank < skip_self { i as u32 } else { candidates[rank - skip_self].1 };
    }
}

/// The CSR graph whose destination `i` has sources `table[i k .. (i + 1) k]`.
fn fixed_degree_graph(n: usize, table: Vec<u32>, opts: &KnnOptions) -> Graph {
    let offsets = (0..=n).map(|i| i * opts.k).collect();
    Graph {
        num_nodes: n,
        edges: Edges::Csr { offsets, sources: table },
        blocks: vec![0, n],
        topology: Topology::FeatureKnn(*opts),
        visit: None,
    }
}

fn squared_norm(row: &[f32]) -> f64 {
    row.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// Rows scaled to unit length (zero rows stay zero).
fn normalise_rows(x: &Matrix) -> Matrix {
    let mut out = x.clone();
    for i in 0..out.rows() {
        let norm = squared_norm(out.row(i)).sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            out.row_mut(i).iter_mut().for_each(|v| *v *= inv);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix (no ties in practice).
    fn features(n: usize, d: usize, seed: u64) -> Matrix {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Matrix::from_fn(n, d, |_, _| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    }

    #[test]
    fn every_tile_height_gives_the_reference_graph() {
        let x = features(37, 9, 3);
        for metric in [Metric::L2, Metric::Cosine] {
            let opts = KnnOptions { k: 4, dilation: 2, metric, include_self: true };
            let want = Graph::feature_knn_reference(&x, &opts).unwrap();
            for tile in [1, 2, 5, 36, 37, 64] {
                assert_eq!(feature_knn_tiled(&x, &opts, tile), want, "tile {tile}, {metric:?}");
            }
        }
    }
}
