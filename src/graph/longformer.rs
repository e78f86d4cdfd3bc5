//! Vision Longformer on the patch grid: a centred sliding window plus global patches.
//!
//! Vision Longformer (ViL, Zhang et al. 2021) gives every patch a local window and a few global
//! tokens that attend to, and are attended by, everything. Here the globals are existing patches
//! made global, BigBird's ITC construction, not ViL's extra tokens: the model keeps its token
//! count, position embeddings and weights (a pretrained ViT runs unchanged; ViL's extra tokens
//! would need new parameters and a longer sequence). The class token, when
//! [`GraphSpec::build`](super::GraphSpec::build) adds it, is one more global token, as in ViL.
//!
//! The `g` globals are spread evenly over the patch ids ([`global_patches`]). A 6 x 6 grid,
//! `window = 3`, `globals = 2` (patches 9 and 27, `G`); `*` = patch (4, 4) = node 28 and its
//! window `w`:
//!
//! ```text
//!     c: 0 1 2 3 4 5
//! r 0:   . . . . . .
//! r 1:   . . . G . .        G = global_patches(36, 2) = [9, 27]
//! r 2:   . . . . . .        node 28 reads its 3 x 3 window and both globals: 9 + 1
//! r 3:   . . . w w w        (27 is in its window: counted once)
//! r 4:   . . . G * w        a global reads all 36 patches
//! r 5:   . . . w w w
//! ```
//!
//! Built by [`Graph::longformer`], which documents the exact rules.
//!
//! ```
//! use patchgraph::graph::{Graph, global_patches};
//! assert_eq!(global_patches(36, 2), vec![9, 27]);
//! let g = Graph::longformer(6, 6, 3, 2).unwrap();
//! assert_eq!(g.in_degree(28), 9 + 1); // window (holding global 27) plus global 9
//! assert_eq!(g.in_degree(9), 36); // a global reads everything
//! ```

use super::bigbird::{centred_span, span_sum, window_half};
use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};

/// The `g` global patches among `n` spread evenly: patch ids `floor((2k + 1) n / (2g))` for
/// `k = 0 .. g`, the centres of `g` equal slices of `0 .. n`, ascending.
///
/// They are distinct when `g <= n` (consecutive values are `n / g >= 1` apart before flooring);
/// [`Graph::longformer`] and the `global:G` spec refuse `g > n`. Computed in `u128`, so no
/// product overflows. `g = 0` gives no patch.
///
/// ```
/// use patchgraph::graph::global_patches;
/// assert_eq!(global_patches(196, 1), vec![98]); // the middle id of a 14 x 14 grid
/// assert_eq!(global_patches(10, 4), vec![1, 3, 6, 8]); // 1.25, 3.75, 6.25, 8.75
/// assert_eq!(global_patches(3, 3), vec![0, 1, 2]);
/// ```
pub fn global_patches(n: usize, g: usize) -> Vec<usize> {
    (0..g).map(|k| ((2 * k as u128 + 1) * n as u128 / (2 * g as u128)) as usize).collect()
}

impl Graph {
    /// Vision Longformer's pattern on a `rows x cols` patch grid: a centred window plus `globals`
    /// global patches.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major). With
    /// `h = (window - 1) / 2` and `G = global_patches(n, globals)`, the edge `j -> i` exists iff
    ///
    /// ```text
    /// max(|r_i - r_j|, |c_i - c_j|) <= h        (the centred window, clipped, self included)
    /// or j in G                                  (every patch reads the globals)
    /// or i in G                                  (a global reads every patch)
    /// ```
    ///
    /// The relation is symmetric, so the graph is. In-degrees: `n` for a global,
    /// `|window_i| + |G \ window_i|` for the others.
    ///
    /// The globals are existing patches made global (BigBird-ITC), not ViL's extra tokens: see
    /// the module doc for why. With `globals = 0` this is the clipped window alone; with
    /// `window = 1` it is the `global:G` spec (the globals' edges and one self-loop per node).
    ///
    /// ```
    /// use patchgraph::Graph;
    /// // 4 x 4, windows 3, one global: global_patches(16, 1) = [8], patch (2, 0).
    /// let g = Graph::longformer(4, 4, 3, 1).unwrap();
    /// assert_eq!(g.incoming(3).collect::<Vec<_>>(), vec![2, 3, 6, 7, 8]); // corner (0, 3) + global
    /// assert_eq!(g.in_degree(8), 16);
    /// assert!(g.has_edge(8, 15) && g.has_edge(15, 8));
    /// ```
    ///
    /// Sources are listed in ascending order, each once.
    ///
    /// Errors: `rows` or `cols` zero; `window` zero or even (named `longformer window`);
    /// `globals` more than the `n` patches (named `longformer globals`); a bound on the edges
    /// (the window's plus `2 n globals`) beyond [`crate::limits::MAX_EDGES`], checked before
    /// allocating.
    pub fn longformer(rows: usize, cols: usize, window: usize, globals: usize) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        let half = window_half("longformer window", window)?;
        if globals > n {
            return Err(Error::invalid(
                "longformer globals",
                format!("{globals} global patches requested, the {rows} x {cols} grid has {n}"),
            ));
        }
        let window_edges = span_sum(rows, half).zip(span_sum(cols, half)).and_then(|(a, b)| a.checked_mul(b));
        let global_edges = n.checked_mul(globals).and_then(|e| e.checked_mul(2));
        let edges = window_edges.zip(global_edges).and_then(|(a, b)| a.checked_add(b));
        check_edges(&format!("longformer graph {rows} x {cols}, window {window}, globals {globals}"), edges)?;

        let global = global_patches(n, globals);
        let mut is_global = vec![false; n];
        global.iter().for_each(|&k| is_global[k] = true);
        let topology = Topology::Longformer { rows, cols, window, globals };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            if is_global[i] {
                out.extend(0..n as u32);
                return;
            }
            let (r, c) = (i / cols, i % cols);
            // Merge the window (ascending) with the globals (ascending), each source once.
            let mut next = global.iter().copied().peekable();
            for rj in centred_span(r, rows, half) {
                for cj in centred_span(c, cols, half) {
                    let j = rj * cols + cj;
                    while let Some(k) = next.next_if(|&k| k <= j) {
                        if k < j {
                            out.push(k as u32);
                        }
                    }
                    out.push(j as u32);
                }
            }
            out.extend(next.map(|k| k as u32));
        }))
    }
}
