//! Local-window graphs on the patch grid: Swin's partition windows and NAT's sliding windows.
//!
//! Built by [`Graph::window`], which documents the exact rules.

use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};

/// Which local-window rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WindowKind {
    /// Swin: the grid is cut into non-overlapping `size x size` windows; every node attends to
    /// every node of its own window.
    Partition,
    /// NAT: every node attends to the `size x size` neighbourhood around it, shifted inward at
    /// the borders so every node has exactly `size^2` neighbours.
    Sliding,
}

impl Graph {
    /// The local-window graph on a `rows x cols` patch grid.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major). Both rules include the
    /// self-loop `i -> i`, as the attention they model does.
    ///
    /// - **Partition** (Swin, window size `s`): the grid is cut into non-overlapping `s x s` windows
    ///   starting at the top-left corner; `j -> i` iff `(r_i / s, c_i / s) == (r_j / s, c_j / s)`.
    ///   When `s` does not divide `rows` (or `cols`), the last windows along the bottom (right) edge
    ///   are smaller: `(rows mod s)` rows (columns) instead of `s`. (Swin pads the image instead; we
    ///   keep the real patches only.) The graph is symmetric: a union of complete blocks.
    /// - **Sliding** (NAT / NATTEN, kernel size `s`, odd): node `(r, c)` attends to the `s x s`
    ///   window of cells `start(r, rows) .. start(r, rows) + s` by `start(c, cols) .. start(c, cols) + s`
    ///   with `start(x, len) = clamp(x - (s - 1) / 2, 0, len - s)`: centred on the node, shifted
    ///   inward at the borders, so every node has exactly `s^2` incoming edges. Not symmetric near
    ///   the borders.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, WindowKind};
    /// // A 4 x 4 grid in 2 x 2 windows: node 5 = (1, 1) shares the top-left window with 0, 1, 4.
    /// let g = Graph::window(4, 4, WindowKind::Partition, 2).unwrap();
    /// assert_eq!(g.incoming(5).collect::<Vec<_>>(), vec![0, 1, 4, 5]);
    /// // NAT 3 x 3 on the same grid: the corner's window is shifted inward to rows 0..3, cols 0..3.
    /// let g = Graph::window(4, 4, WindowKind::Sliding, 3).unwrap();
    /// assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![0, 1, 2, 4, 5, 6, 8, 9, 10]);
    /// ```
    ///
    /// Sources are listed in ascending order.
    ///
    /// Errors: `rows` or `cols` zero, `size` zero; for [`WindowKind::Sliding`] also `size` even
    /// or larger than `rows` or `cols` (as NATTEN). A partition window larger than the grid is
    /// allowed: it is clipped (one window, the complete graph with self-loops, stored as CSR).
    /// More edges than [`crate::limits::MAX_EDGES`] is an error, checked before allocating.
    pub fn window(rows: usize, cols: usize, kind: WindowKind, size: usize) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        if size == 0 {
            return Err(Error::invalid("window size", "must be at least 1"));
        }
        if kind == WindowKind::Sliding {
            if size % 2 == 0 {
                return Err(Error::invalid(
                    "sliding window size",
                    format!("{size} is even; the window is centred on its node, so it must be odd"),
                ));
            }
            if size > rows || size > cols {
                return Err(Error::invalid(
                    "sliding window size",
                    format!("{size} does not fit the {rows} x {cols} grid"),
                ));
            }
        }
        // Per axis: the window of coordinate `x` on an axis of length `len`.
        let span = |x: usize, len: usize| match kind {
            WindowKind::Partition => {
                let start = x / size * size;
                start..start.saturating_add(size).min(len)
            }
            WindowKind::Sliding => {
                let start = x.saturating_sub((size - 1) / 2).min(len - size);
                start..start + size
            }
        };
        // The exact edge count, checked before any source is pushed. Partition: per axis, the
        // windows of length `min(s, len)` and the shorter last one, each window a complete block,
        // so E = (sum of row-window lengths squared) x (the same for columns). Sliding: N s^2.
        let squares = |len: usize| {
            let s = size.min(len);
            let (full, rest) = (len / s, len % s);
            full.checked_mul(s * s)?.checked_add(rest * rest)
        };
        let edges = match kind {
            WindowKind::Partition => squares(rows).zip(squares(cols)).and_then(|(a, b)| a.checked_mul(b)),
            WindowKind::Sliding => size.checked_mul(size).and_then(|s2| s2.checked_mul(n)),
        };
        check_edges(&format!("window graph {rows} x {cols}, size {size}"), edges)?;
        let topology = Topology::Window { rows, cols, kind, size };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r, c) = (i / cols, i % cols);
            for rj in span(r, rows) {
                out.extend(span(c, cols).map(|cj| (rj * cols + cj) as u32));
            }
        }))
    }
}
