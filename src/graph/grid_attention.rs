//! MaxViT grid attention on the patch grid: sparse, dilated groups spread over the image.
//!
//! MaxViT (Tu et al. 2022) alternates block attention (local windows) with grid attention: the
//! map is cut into a `G x G` grid of cells of `rows / G x cols / G` patches, and the patches at
//! the same position inside their cells attend to each other. Each group is `G x G` patches
//! spread over the whole image with stride `(rows / G, cols / G)`. A 6 x 6 grid, `G = 2`
//! (stride 3); the group of `*` = patch (1, 1) = node 7 is marked `g`:
//!
//! ```text
//!     c: 0 1 2 3 4 5
//! r 0:   . . . . . .
//! r 1:   . * . . g .        sources of node 7: 7, 10, 25, 28
//! r 2:   . . . . . .        (rows 1, 4 by columns 1, 4)
//! r 3:   . . . . . .
//! r 4:   . g . . g .
//! r 5:   . . . . . .
//! ```
//!
//! Built by [`Graph::grid_attention`], which documents the exact rule.
//!
//! ```
//! use patchgraph::Graph;
//! let g = Graph::grid_attention(6, 6, 2).unwrap();
//! assert_eq!(g.incoming(7).collect::<Vec<_>>(), vec![7, 10, 25, 28]);
//! assert!((0..36).all(|i| g.in_degree(i) == 4));
//! ```

use super::grid::grid_nodes;
use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};

impl Graph {
    /// MaxViT's grid-attention graph on a `rows x cols` patch grid with grid size `G = grid`.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major). With the stride
    /// `(sr, sc) = (rows / G, cols / G)`, the edge `j -> i` exists iff
    ///
    /// ```text
    /// r_i mod sr == r_j mod sr   and   c_i mod sc == c_j mod sc
    /// ```
    ///
    /// so each group is `G x G` patches, one per cell of the `G x G` grid, every node has
    /// in-degree `G^2` (self included) and the graph is symmetric (a union of complete groups).
    /// `G = 1` is self-loops only; `G = rows = cols` is the complete graph (stored).
    ///
    /// ```
    /// use patchgraph::Graph;
    /// // 4 x 6 with G = 2: stride (2, 3).
    /// let g = Graph::grid_attention(4, 6, 2).unwrap();
    /// assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![0, 3, 12, 15]);
    /// assert_eq!(g.num_edges(), 24 * 4);
    /// ```
    ///
    /// Sources are listed in ascending order.
    ///
    /// Errors: `rows` or `cols` zero; `grid` zero or not dividing both `rows` and `cols` (named
    /// `grid attention size`); more edges than [`crate::limits::MAX_EDGES`], checked before
    /// allocating.
    pub fn grid_attention(rows: usize, cols: usize, grid: usize) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        if grid == 0 {
            return Err(Error::invalid("grid attention size", "must be at least 1"));
        }
        if rows % grid != 0 || cols % grid != 0 {
            return Err(Error::invalid(
                "grid attention size",
                format!("{grid} does not divide the {rows} x {cols} grid (MaxViT needs rows and cols multiples of G)"),
            ));
        }
        let edges = grid.checked_mul(grid).and_then(|g2| g2.checked_mul(n));
        check_edges(&format!("grid attention graph {rows} x {cols}, grid {grid}"), edges)?;
        let (sr, sc) = (rows / grid, cols / grid);
        let topology = Topology::GridAttention { rows, cols, grid };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r0, c0) = (i / cols % sr, i % cols % sc);
            for a in 0..grid {
                let row = (r0 + a * sr) * cols;
                out.extend((0..grid).map(|b| (row + c0 + b * sc) as u32));
            }
        }))
    }
}
