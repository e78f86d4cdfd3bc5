//! Grid graphs: patches linked to the patches within a radius on the `rows x cols` patch grid.
//!
//! Built by [`Graph::grid`], which documents the definition.

use super::{Graph, Topology, check_edges, ensure_u32_nodes};
use crate::error::{Error, Result};

/// Which cells count as neighbours on the patch grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Neighbourhood {
    /// Manhattan distance `|dr| + |dc| <= radius` (radius 1: the 4-neighbourhood).
    Four,
    /// Chebyshev distance `max(|dr|, |dc|) <= radius` (radius 1: the 8-neighbourhood).
    Eight,
}

/// Checks a patch grid's shape and returns its number of nodes `rows * cols`.
pub(crate) fn grid_nodes(rows: usize, cols: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Err(Error::invalid("patch grid", format!("{rows} x {cols} has no cells")));
    }
    let n = rows.checked_mul(cols).ok_or_else(|| Error::invalid("patch grid", format!("{rows} x {cols} overflows")))?;
    ensure_u32_nodes("patch grid", n)?;
    Ok(n)
}

impl Graph {
    /// The radius graph on a `rows x cols` patch grid.
    ///
    /// Node `r * cols + c` is the patch in row `r`, column `c` (row-major, timm's patch order).
    /// The edge `j -> i` exists iff the cells of `j` and `i` are within `radius` of each other:
    ///
    /// ```text
    /// Four:  |r_i - r_j| + |c_i - c_j|      <= radius   (Manhattan; radius 1 = the 4-neighbourhood)
    /// Eight: max(|r_i - r_j|, |c_i - c_j|)  <= radius   (Chebyshev; radius 1 = the 8-neighbourhood)
    /// ```
    ///
    /// and `j != i` unless self-loops are asked for. Both relations are symmetric, so the graph is.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, Neighbourhood};
    /// let g = Graph::grid(3, 3, Neighbourhood::Four, 1, false).unwrap();
    /// assert_eq!(g.incoming(4).collect::<Vec<_>>(), vec![1, 3, 5, 7]); // the centre
    /// assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![1, 3]); // a corner
    /// ```
    ///
    /// Sources are listed in ascending order (the self-loop, if any, in its sorted place).
    /// Interior in-degrees: `2 radius (radius + 1)` for `Four`, `(2 radius + 1)^2 - 1` for
    /// `Eight`, plus one with self-loops; fewer at the borders.
    ///
    /// Errors: `rows` or `cols` zero, `radius` zero, more cells than `u32` indices, a bound on
    /// the edges (`N` times the square of side `2 radius + 1`, clipped to the grid) beyond
    /// [`crate::limits::MAX_EDGES`].
    pub fn grid(
        rows: usize,
        cols: usize,
        neighbourhood: Neighbourhood,
        radius: usize,
        self_loops: bool,
    ) -> Result<Graph> {
        let n = grid_nodes(rows, cols)?;
        if radius == 0 {
            return Err(Error::invalid("grid radius", "must be at least 1"));
        }
        // At most `min(rows, 2R + 1) x min(cols, 2R + 1)` cells around each (the Chebyshev square;
        // the Manhattan diamond is inside it): that bound on the edges is checked before the
        // sources are pushed one by one.
        let side = |len: usize| radius.checked_mul(2).map_or(len, |d| d.saturating_add(1).min(len));
        let per_node = side(rows) * side(cols) - usize::from(!self_loops);
        check_edges(&format!("grid graph {rows} x {cols}, radius {radius}"), n.checked_mul(per_node))?;
        let topology = Topology::Grid { rows, cols, neighbourhood, radius, self_loops };
        Ok(Graph::from_fn_unchecked(n, topology, |i, out| {
            let (r, c) = (i / cols, i % cols);
            for rj in r.saturating_sub(radius)..=r.saturating_add(radius).min(rows - 1) {
                let dr = r.abs_diff(rj);
                // Column reach left once the row offset is spent.
                let reach = match neighbourhood {
                    Neighbourhood::Four => radius - dr,
                    Neighbourhood::Eight => radius,
                };
                for cj in c.saturating_sub(reach)..=c.saturating_add(reach).min(cols - 1) {
                    let j = rj * cols + cj;
                    if j != i || self_loops {
                        out.push(j as u32);
                    }
                }
            }
        }))
    }
}
