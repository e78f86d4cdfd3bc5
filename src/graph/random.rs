//! Random graphs with a fixed in-degree, reproducible from a seed.
//!
//! Built by [`Graph::random`], which documents the definition.

use super::{Graph, Topology, check_edges, ensure_u32_nodes};
use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

impl Graph {
    /// A random graph on `n` nodes with in-degree `degree`.
    ///
    /// Every destination `i` draws `degree` distinct sources uniformly without replacement from
    /// the `n` nodes (or the `n - 1` others without self-loops), listed ascending. The draws come from
    /// one `ChaCha8Rng` seeded with `seed`, destinations in order: the same seed gives the same graph
    /// (for this crate's pinned `rand` version).
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let g = Graph::random(10, 3, 42, false).unwrap();
    /// assert_eq!(g, Graph::random(10, 3, 42, false).unwrap());
    /// assert!((0..10).all(|i| g.in_degree(i) == 3 && !g.has_edge(i, i)));
    /// ```
    ///
    /// Sampling is a partial Fisher-Yates shuffle of the candidates, undone after each
    /// destination, so it costs `O(degree)` per destination and no allocation after the first.
    ///
    /// Errors: `degree` larger than the candidates (`n` with self-loops, `n - 1` without),
    /// `n` beyond the `u32` index range, `n degree` edges beyond [`crate::limits::MAX_EDGES`].
    pub fn random(n: usize, degree: usize, seed: u64, self_loops: bool) -> Result<Graph> {
        ensure_u32_nodes("random graph", n)?;
        let available = if self_loops { n } else { n.saturating_sub(1) };
        if degree > available {
            return Err(Error::invalid(
                "random graph degree",
                format!("{degree} distinct sources requested, {available} available among {n} nodes"),
            ));
        }
        check_edges(&format!("random graph on {n} nodes, degree {degree}"), n.checked_mul(degree))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // `pool` is the identity permutation of the candidates between destinations.
        let mut pool: Vec<u32> = (0..available as u32).collect();
        let mut swaps: Vec<usize> = Vec::with_capacity(degree);
        let topology = Topology::Random { degree, seed, self_loops };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            swaps.clear();
            for t in 0..degree {
                // u32 draws: the same stream on every platform.
                let r = rng.random_range(t as u32..available as u32) as usize;
                pool.swap(t, r);
                swaps.push(r);
            }
            let start = out.len();
            // Without self-loops, candidate c stands for node c, or c + 1 from i on (skips i).
            out.extend(pool[..degree].iter().map(|&c| if !self_loops && c as usize >= i { c + 1 } else { c }));
            out[start..].sort_unstable();
            for (t, &r) in swaps.iter().enumerate().rev() {
                pool.swap(t, r);
            }
        }))
    }
}
