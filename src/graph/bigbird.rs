//! BigBird on the patch grid: a centred sliding window plus random sources outside it.
//!
//! BigBird (Zaheer et al. 2020) lets every token attend to a local window, a few random tokens
//! and a few global tokens. On a `rows x cols` patch grid the window is the centred
//! `window x window` square (Chebyshev radius `(window - 1) / 2`, clipped at the borders, self
//! included) and the `random` extra sources of each patch are drawn among the patches outside
//! its window, so nothing is drawn twice. Destination `*` = patch (2, 2) = node 14 of a 6 x 6
//! grid, `window = 3`, `random = 3` (`w`: its window, `r`: where one seed puts the draws):
//!
//! ```text
//!     c: 0 1 2 3 4 5
//! r 0:   . . . . . .
//! r 1:   . w w w . .
//! r 2:   . w * w . r        in-degree = |window| + random = 9 + 3
//! r 3:   . w w w . .
//! r 4:   r . . . . .
//! r 5:   . . . r . .
//! ```
//!
//! BigBird's global tokens are the class token: [`GraphSpec::build`](super::GraphSpec::build)
//! with `class_token = true` prepends it linked both ways to every patch. More global patches
//! come from a union with `global:G` (or [`Graph::longformer`]).
//!
//! Built by [`Graph::bigbird`], which documents the exact rules.
//!
//! ```
//! use patchgraph::Graph;
//! let g = Graph::bigbird(6, 6, 3, 3, 7).unwrap();
//! assert_eq!(g.in_degree(14), 9 + 3); // interior: the full 3 x 3 window and 3 draws
//! assert_eq!(g.in_degree(0), 4 + 3); // corner: a 2 x 2 clipped window and 3 draws
//! ```

use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// Checks a centred window side (`what` names the option) and returns its half `(window - 1) / 2`.
pub(super) fn window_half(what: &str, window: usize) -> Result<usize> {
    if window == 0 {
        return Err(Error::invalid(what, "must be at least 1"));
    }
    if window % 2 == 0 {
        return Err(Error::invalid(
            what,
            format!("{window} is even; the window is centred on its patch, so it must be odd"),
        ));
    }
    Ok((window - 1) / 2)
}

/// The centred window of coordinate `x` on an axis of length `len`: `x - half ..= x + half`,
/// clipped to `0 .. len`.
pub(super) fn centred_span(x: usize, len: usize, half: usize) -> Range<usize> {
    x.saturating_sub(half)..x.saturating_add(half).min(len - 1) + 1
}

/// Sum over the coordinates of an axis of their centred-window lengths (`None` on overflow):
/// the window graph's edges are this sum for the rows times this sum for the columns.
pub(super) fn span_sum(len: usize, half: usize) -> Option<usize> {
    (0..len).try_fold(0usize, |t, x| t.checked_add(centred_span(x, len, half).len()))
}

/// The `c`-th patch (ascending) outside the window `rows_span x cols_span` of a grid with `cols`
/// columns. `c` must be below the number of patches outside.
fn outside(c: usize, rows_span: &Range<usize>, cols_span: &Range<usize>, cols: usize) -> usize {
    let above = rows_span.start * cols;
    if c < above {
        return c;
    }
    let c = c - above;
    // The rows of the window: `per` patches outside it in each, left then right of it.
    let per = cols - cols_span.len();
    let band = rows_span.len() * per;
    if c < band {
        let (row, k) = (rows_span.start + c / per, c % per);
        let col = if k < cols_span.start { k } else { k + cols_span.len() };
        return row * cols + col;
    }
    rows_span.end * cols + (c - band)
}

impl Graph {
    /// BigBird's sparse pattern on a `rows x cols` patch grid: a centred window plus random
    /// sources outside it.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major). With
    /// `h = (window - 1) / 2`, the edge `j -> i` is in the window part iff
    /// `max(|r_i - r_j|, |c_i - c_j|) <= h`: the centred `window x window` square, clipped at the
    /// borders (not shifted inward as NAT's), self included. The window part is symmetric.
    ///
    /// Every destination `i` then draws `random` distinct sources uniformly without replacement
    /// from the `n - |window_i|` patches outside its window, so
    /// `in_degree(i) = |window_i| + random` exactly. The draws come from one
    /// `ChaCha8Rng::seed_from_u64(seed)`, destinations in order, each a partial Fisher-Yates step
    /// over the outside patches' ranks with `u32` draws (as [`Graph::random`]): the same seed
    /// gives the same graph (for this crate's pinned `rand`). The random part is not symmetric.
    ///
    /// BigBird's global tokens are the class token, added by
    /// [`GraphSpec::build`](super::GraphSpec::build) with `class_token = true`.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// // 5 x 5 grid, 3 x 3 windows, 2 random sources each.
    /// let g = Graph::bigbird(5, 5, 3, 2, 1).unwrap();
    /// assert_eq!(g.in_degree(12), 9 + 2); // the centre (2, 2)
    /// assert_eq!(g.in_degree(2), 6 + 2); // top edge (0, 2): a 2 x 3 window
    /// assert_eq!(g, Graph::bigbird(5, 5, 3, 2, 1).unwrap()); // reproducible
    /// // Without random sources: the symmetric clipped window only.
    /// let w = Graph::bigbird(5, 5, 3, 0, 0).unwrap();
    /// assert_eq!(w.incoming(0).collect::<Vec<_>>(), vec![0, 1, 5, 6]);
    /// ```
    ///
    /// Sources are listed in ascending order (window and random mixed).
    ///
    /// Errors: `rows` or `cols` zero; `window` zero or even (named `bigbird window`); `random`
    /// more than the patches outside the largest window, `n - min(window, rows) min(window, cols)`
    /// (named `bigbird random`); more edges than [`crate::limits::MAX_EDGES`], checked before
    /// allocating.
    pub fn bigbird(rows: usize, cols: usize, window: usize, random: usize, seed: u64) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        let half = window_half("bigbird window", window)?;
        // The largest clipped window is min(window, len) along each axis (an interior patch).
        let largest = window.min(rows) * window.min(cols);
        let available = n - largest;
        if random > available {
            return Err(Error::invalid(
                "bigbird random",
                format!(
                    "{random} random sources per patch requested, only {available} patches lie outside a \
                     {window} x {window} window on the {rows} x {cols} grid"
                ),
            ));
        }
        let window_edges = span_sum(rows, half).zip(span_sum(cols, half)).and_then(|(a, b)| a.checked_mul(b));
        let edges = window_edges.zip(n.checked_mul(random)).and_then(|(a, b)| a.checked_add(b));
        check_edges(&format!("bigbird graph {rows} x {cols}, window {window}, random {random}"), edges)?;

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // `pool` is the identity permutation of outside ranks between destinations (as random.rs).
        let mut pool: Vec<u32> = if random > 0 { (0..n as u32).collect() } else { Vec::new() };
        let mut swaps: Vec<usize> = Vec::with_capacity(random);
        let topology = Topology::BigBird { rows, cols, window, random, seed };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r, c) = (i / cols, i % cols);
            let (rs, cs) = (centred_span(r, rows, half), centred_span(c, cols, half));
            let start = out.len();
            for rj in rs.clone() {
                out.extend(cs.clone().map(|cj| (rj * cols + cj) as u32));
            }
            if random == 0 {
                return;
            }
            let candidates = n - rs.len() * cs.len();
            swaps.clear();
            for t in 0..random {
                // u32 draws: the same stream on every platform.
                let pick = rng.random_range(t as u32..candidates as u32) as usize;
                pool.swap(t, pick);
                swaps.push(pick);
            }
            out.extend(pool[..random].iter().map(|&rank| outside(rank as usize, &rs, &cs, cols) as u32));
            out[start..].sort_unstable();
            for (t, &pick) in swaps.iter().enumerate().rev() {
                pool.swap(t, pick);
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `outside` enumerates exactly the patches outside the window, ascending, for every window
    /// position of a few grids (checked against a filter over all patches).
    #[test]
    fn outside_ranks_enumerate_the_complement() {
        for (rows, cols, half) in [(5, 7, 1), (4, 4, 2), (1, 6, 1), (6, 1, 0), (3, 3, 5)] {
            for i in 0..rows * cols {
                let (rs, cs) = (centred_span(i / cols, rows, half), centred_span(i % cols, cols, half));
                let want: Vec<usize> =
                    (0..rows * cols).filter(|&j| !(rs.contains(&(j / cols)) && cs.contains(&(j % cols)))).collect();
                let got: Vec<usize> = (0..want.len()).map(|k| outside(k, &rs, &cs, cols)).collect();
                assert_eq!(got, want, "{rows} x {cols}, half {half}, node {i}");
            }
        }
    }
}
