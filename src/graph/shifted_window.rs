//! Swin's shifted windows as a graph, and Swin's relative position index.
//!
//! Swin (Liu et al. 2021) alternates regular `M x M` windows with windows shifted by `s`
//! (`s = M / 2`): it rolls the feature map by `-s` on both axes, partitions it into `M x M`
//! windows, and masks attention between tokens that came from different regions of the
//! unrolled map. On each axis of length `len` (a multiple of `M`, as Swin pads), the rolled
//! window `[kM, (k + 1) M)` holds the original positions `[kM + s, (k + 1) M + s)`, except the
//! last one, which wraps around and is cut by the mask into `[len - M + s, len)` and `[0, s)`. So
//! the attention that cyclic shift + mask produce is the partition of each axis into the
//! segments
//!
//! ```text
//! [0, s), [s, s + M), [s + M, s + 2M), ..., [s + kM, len)
//! ```
//!
//! and `j -> i` iff `i` and `j` share a segment on both axes. A 6 x 6 grid with `M = 3, s = 1`
//! (segments `[0, 1), [1, 4), [4, 6)` per axis); each letter is one group, complete inside:
//!
//! ```text
//!     c: 0 1 2 3 4 5
//! r 0:   a b b b c c
//! r 1:   d e e e f f        node 14 = (2, 2) reads the 9 `e` patches
//! r 2:   d e e e f f        node 0 = (0, 0) reads itself only
//! r 3:   d e e e f f
//! r 4:   g h h h i i
//! r 5:   g h h h i i
//! ```
//!
//! With `s = 0` these are Swin's regular windows, [`Graph::window`] with
//! [`WindowKind::Partition`](super::WindowKind::Partition). Built by [`Graph::shifted_window`],
//! which documents the exact rules; [`relative_position_index`] is Swin's bias-table index.
//!
//! ```
//! use patchgraph::Graph;
//! let g = Graph::shifted_window(6, 6, 3, 1).unwrap();
//! assert_eq!(g.in_degree(14), 9);
//! assert_eq!(g.in_degree(0), 1);
//! assert_eq!(g.in_degree(35), 4); // (5, 5): the 2 x 2 group `i`
//! ```

use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};
use std::ops::Range;

/// The effective `(window, shift)` on an axis of length `len`, timm's `_calc_window_shift`: an
/// axis no longer than the window is one window, unshifted.
fn effective(len: usize, size: usize, shift: usize) -> (usize, usize) {
    if len <= size { (len, 0) } else { (size, shift) }
}

/// The segment of coordinate `x` on an axis of length `len`, window `m`, shift `s`.
fn segment(x: usize, len: usize, m: usize, s: usize) -> Range<usize> {
    if x < s {
        return 0..s;
    }
    let start = s + (x - s) / m * m;
    start..(start + m).min(len)
}

/// Sum of the squared segment lengths of an axis (`None` on overflow).
fn squares(len: usize, m: usize, s: usize) -> Option<usize> {
    let rest = len - s;
    let (full, tail) = (rest / m, rest % m);
    full.checked_mul(m.checked_mul(m)?)?.checked_add(s * s)?.checked_add(tail * tail)
}

/// Swin's relative position index of a query-key offset in an `M x M` window.
///
/// `dy = r_i - r_j` and `dx = c_i - c_j` are the query's row and column minus the key's (Swin's
/// `relative_coords = coords[:, :, None] - coords[:, None, :]`). The index into the
/// `(2M - 1)^2`-row bias table is
///
/// ```text
/// (dy + M - 1) * (2M - 1) + (dx + M - 1)
/// ```
///
/// and `None` when `|dy| >= M` or `|dx| >= M` (no two tokens of one window are that far apart;
/// so always `None` for `M = 0`).
///
/// ```
/// use patchgraph::graph::relative_position_index;
/// assert_eq!(relative_position_index(0, 0, 7), Some(84)); // the centre of the 13 x 13 table
/// assert_eq!(relative_position_index(-6, -6, 7), Some(0));
/// assert_eq!(relative_position_index(6, 6, 7), Some(168));
/// assert_eq!(relative_position_index(7, 0, 7), None);
/// ```
pub fn relative_position_index(dy: isize, dx: isize, size: usize) -> Option<usize> {
    if dy.unsigned_abs() >= size || dx.unsigned_abs() >= size {
        return None;
    }
    // i128: no intermediate overflows for any `size`; the result fits when the table would.
    let m = size as i128;
    usize::try_from((dy as i128 + m - 1) * (2 * m - 1) + (dx as i128 + m - 1)).ok()
}

impl Graph {
    /// Swin's shifted-window graph on a `rows x cols` patch grid: window `size = M`, shift `s`.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major). Each axis is cut into
    /// the segments `[0, s), [s, s + M), [s + M, s + 2M), ...`, the last one clipped at the end of
    /// the axis (Swin pads instead; we keep the real patches only), and `j -> i` iff `i` and `j`
    /// are in the same segment on both axes: the graph that Swin's cyclic shift and attention
    /// mask produce (the module doc derives it). A union of complete blocks with self-loops, so
    /// symmetric. With `s = 0` it is `Graph::window(rows, cols, WindowKind::Partition, M)` edge for
    /// edge (only the [`Topology`] tag differs).
    ///
    /// Small grids follow timm (`SwinTransformerBlock._calc_window_shift`), axis by axis: on an
    /// axis of length `<= M` the window is the whole axis and the shift 0. So when
    /// `M >= rows` and `M >= cols` the window is the whole grid and the shift is 0 (the complete
    /// graph with self-loops, stored). The tag keeps `size` and `shift` as given.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, WindowKind};
    /// // 4 x 4, M = 2, s = 1: segments [0, 1), [1, 3), [3, 4) per axis.
    /// let g = Graph::shifted_window(4, 4, 2, 1).unwrap();
    /// assert_eq!(g.incoming(5).collect::<Vec<_>>(), vec![5, 6, 9, 10]); // (1, 1): the middle 2 x 2
    /// assert_eq!(g.incoming(1).collect::<Vec<_>>(), vec![1, 2]); // (0, 1): [0, 1) x [1, 3)
    /// assert_eq!(g.in_degree(3), 1); // (0, 3): [0, 1) x [3, 4), itself only
    /// // No shift: Swin's regular windows, edge for edge.
    /// let regular = Graph::shifted_window(4, 4, 2, 0).unwrap();
    /// assert_eq!(regular.csr(), Graph::window(4, 4, WindowKind::Partition, 2).unwrap().csr());
    /// // M >= rows and M >= cols: one window, no shift.
    /// assert_eq!(Graph::shifted_window(4, 4, 7, 3).unwrap().num_edges(), 16 * 16);
    /// ```
    ///
    /// Sources are listed in ascending order. In-degree of `i`: the product of its two segments'
    /// lengths.
    ///
    /// Errors: `rows` or `cols` zero; `size` zero (named `shifted window size`); `shift >= size`
    /// (named `shifted window shift`); more edges than [`crate::limits::MAX_EDGES`], checked
    /// before allocating.
    pub fn shifted_window(rows: usize, cols: usize, size: usize, shift: usize) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        if size == 0 {
            return Err(Error::invalid("shifted window size", "must be at least 1"));
        }
        if shift >= size {
            return Err(Error::invalid(
                "shifted window shift",
                format!("{shift} is not below the window size {size} (Swin: 0 <= shift < window)"),
            ));
        }
        let (mr, sr) = effective(rows, size, shift);
        let (mc, sc) = effective(cols, size, shift);
        let edges = squares(rows, mr, sr).zip(squares(cols, mc, sc)).and_then(|(a, b)| a.checked_mul(b));
        check_edges(&format!("shifted window graph {rows} x {cols}, size {size}, shift {shift}"), edges)?;
        let topology = Topology::ShiftedWindow { rows, cols, size, shift };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r, c) = (i / cols, i % cols);
            let cs = segment(c, cols, mc, sc);
            for rj in segment(r, rows, mr, sr) {
                out.extend(cs.clone().map(|cj| (rj * cols + cj) as u32));
            }
        }))
    }
}
