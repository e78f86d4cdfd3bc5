//! Spatial k-NN graphs: every patch linked to its `k` nearest patches by grid position.
//!
//! Built by [`Graph::spatial_knn`], which documents the definition.

use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};

impl Graph {
    /// Each node's `k` nearest cells of a `rows x cols` patch grid by Euclidean distance.
    ///
    /// Node `r * cols + c` is the patch at `(r, c)`. For destination `i`, every other cell `j` (and
    /// `i` itself when `include_self`) is ranked by the squared Euclidean distance
    /// `(r_i - r_j)^2 + (c_i - c_j)^2`, ties broken by node index ascending; the first `k` are the
    /// sources of `i`, listed in that rank order (nearest first, the self-loop first when included),
    /// as a ViG-style `[N x k]` neighbour table would be.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// // 3 x 3 grid, corner 0: the two edge-adjacent cells (distance 1), then the diagonal (sqrt 2),
    /// // then cells 2 and 6 tie at distance 2 and the lower index wins.
    /// let g = Graph::spatial_knn(3, 3, 4, false).unwrap();
    /// assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![1, 3, 4, 2]);
    /// ```
    ///
    /// Every node has in-degree `k`. The search looks in a square around the node and widens it
    /// only until the `k`-th candidate is provably final: `O(k)` work per node, not `O(N)`.
    ///
    /// Errors: `rows` or `cols` zero, `k` zero, `k` larger than the candidates (`rows * cols`
    /// with `include_self`, one fewer without), `N k` edges beyond [`crate::limits::MAX_EDGES`].
    pub fn spatial_knn(rows: usize, cols: usize, k: usize, include_self: bool) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        let available = if include_self { n } else { n - 1 };
        if k == 0 || k > available {
            return Err(Error::invalid(
                "spatial k-NN k",
                format!("{k} is not in 1..={available} (the candidates of a {rows} x {cols} grid)"),
            ));
        }
        check_edges(&format!("spatial k-NN graph {rows} x {cols}, k = {k}"), n.checked_mul(k))?;
        // Smallest half-width whose full square holds k cells besides the centre.
        let mut h0 = 0usize;
        while (2 * h0 + 1) * (2 * h0 + 1) < k + 1 {
            h0 += 1;
        }
        let mut candidates: Vec<(u64, u32)> = Vec::with_capacity((2 * h0 + 1) * (2 * h0 + 1));
        let topology = Topology::SpatialKnn { rows, cols, k, include_self };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r, c) = (i / cols, i % cols);
            let mut h = h0;
            // Search the square of half-width h; a cell outside it is farther than h, so the
            // k-th candidate inside is final once its distance is at most h (or the square
            // already covers the grid). Otherwise widen the square.
            loop {
                let (r0, r1) = (r.saturating_sub(h), r.saturating_add(h).min(rows - 1));
                let (c0, c1) = (c.saturating_sub(h), c.saturating_add(h).min(cols - 1));
                candidates.clear();
                for rj in r0..=r1 {
                    let dr = r.abs_diff(rj) as u64;
                    for cj in c0..=c1 {
                        let j = rj * cols + cj;
                        if j != i || include_self {
                            let dc = c.abs_diff(cj) as u64;
                            candidates.push((dr * dr + dc * dc, j as u32));
                        }
                    }
                }
                let covers_grid = r0 == 0 && c0 == 0 && r1 == rows - 1 && c1 == cols - 1;
                // `k <= available` was checked, so a square covering the grid holds k cells.
                let m = k.min(candidates.len());
                if m == k || covers_grid {
                    if m > 0 {
                        candidates.select_nth_unstable(m - 1);
                    }
                    if covers_grid || candidates[m - 1].0 <= (h as u64).saturating_mul(h as u64) {
                        candidates[..m].sort_unstable();
                        out.extend(candidates[..m].iter().map(|&(_, j)| j));
                        return;
                    }
                }
                h = h.saturating_mul(2).saturating_add(1);
            }
        }))
    }
}
