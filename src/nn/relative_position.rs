//! `RelativePositionBias`: Swin's learned relative position bias, a per-head table indexed by the
//! offset `(dy, dx)` between two patches, added to the score of every edge through the edge-bias
//! path of the attention (so it works on any patch graph, not only Swin's windows).
//!
//! ```text
//! table  [(2M-1)^2 x H]                       relative_position_bias_table (Swin's name and shape)
//! idx(e) = (dy + M-1) (2M-1) + (dx + M-1)     e = (j -> i), dy = r_i - r_j, dx = c_i - c_j (query minus key)
//! b[e, h] = table[idx(e), h]                  0 for edges with |dy| or |dx| >= M and edges of the class token
//! s[e, h] = q_i . k_j / sqrt(d) + b[e, h]
//! backward: dtable[idx(e), h] += ds[e, h]     (edges in order: deterministic)
//! ```
//!
//! Swin's window attention adds `table[index]` to every pair of the same window, where all
//! offsets are below `M`; on other graphs the edges that reach farther than the table get no
//! bias, and so do the class token's edges (Swin has no class token).
//!
//! ```
//! use patchgraph::Graph;
//! use patchgraph::graph::WindowKind;
//! use patchgraph::nn::{RelativePositionBias, TokenGrid};
//! let mut rpb = RelativePositionBias::zeros(2, 3); // M = 2: a 3 x 3 table of offsets, 3 heads
//! rpb.table.row_mut(4).copy_from_slice(&[1.0, 2.0, 3.0]); // offset (0, 0)
//! let g = Graph::window(2, 2, WindowKind::Partition, 2).unwrap();
//! let index = RelativePositionBias::edge_index(&g, TokenGrid { rows: 2, cols: 2, prefix: 0 }, 2).unwrap();
//! let bias = rpb.edge_bias(&index);
//! assert_eq!(&bias[..3], &[1.0, 2.0, 3.0]); // the first edge is 0 -> 0, offset (0, 0)
//! ```

use super::{Init, TokenGrid};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::graph::{Graph, relative_position_index};
use crate::tensor::Matrix;

/// No table entry (class-token edges, offsets beyond the window).
pub const NO_ENTRY: u32 = u32::MAX;

/// Swin's relative position bias table (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct RelativePositionBias {
    /// The window side `M`.
    pub window: usize,
    /// `[(2M-1)^2 x H]`.
    pub table: Matrix,
}

impl RelativePositionBias {
    /// A zero table for windows of side `window` and `heads` heads.
    pub fn zeros(window: usize, heads: usize) -> RelativePositionBias {
        let side = (2 * window).saturating_sub(1);
        RelativePositionBias { window, table: Matrix::zeros(side * side, heads) }
    }

    /// Swin's init: `trunc_normal_(std=.02)`.
    pub fn new(window: usize, heads: usize, init: &mut Init) -> Result<RelativePositionBias> {
        if window == 0 || heads == 0 {
            return Err(Error::invalid("relative position bias", "the window side and the heads must be positive"));
        }
        let rows = (2 * window - 1) * (2 * window - 1);
        Ok(RelativePositionBias {
            window,
            table: Matrix::from_vec(rows, heads, init.trunc_normal(rows * heads, 0.02))?,
        })
    }

    /// Loads `{prefix}relative_position_bias_table [(2M-1)^2, H]`.
    pub fn load(window: usize, heads: usize, map: &mut TensorMap, prefix: &str) -> Result<RelativePositionBias> {
        let rows = (2 * window).saturating_sub(1).pow(2);
        let data = map.take(&format!("{prefix}relative_position_bias_table"), &[rows, heads])?;
        Ok(RelativePositionBias { window, table: Matrix::from_vec(rows, heads, data)? })
    }

    /// Writes the table under its Swin name.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        let (r, h) = self.table.shape();
        map.insert(format!("{prefix}relative_position_bias_table"), vec![r, h], self.table.as_slice().to_vec())
    }

    /// The table row of every edge of `graph` (a batch of images of `grid` tokens each, in the
    /// graph's edge order), [`NO_ENTRY`] where there is none. Built once per layer graph.
    pub fn edge_index(graph: &Graph, grid: TokenGrid, window: usize) -> Result<Vec<u32>> {
        let t = grid.tokens();
        let n = graph.num_nodes();
        if t == 0 || n % t != 0 {
            return Err(Error::invalid(
                "relative position bias",
                format!("{n} nodes are not whole images of {t} tokens"),
            ));
        }
        let mut index = Vec::with_capacity(graph.num_edges());
        for i in 0..n {
            for j in graph.incoming(i) {
                let (img_i, ti) = (i / t, i % t);
                let (img_j, tj) = (j / t, j % t);
                let entry = if img_i != img_j || ti < grid.prefix || tj < grid.prefix {
                    None
                } else {
                    let (pi, pj) = (ti - grid.prefix, tj - grid.prefix);
                    let dy = (pi / grid.cols) as isize - (pj / grid.cols) as isize;
                    let dx = (pi % grid.cols) as isize - (pj % grid.cols) as isize;
                    relative_position_index(dy, dx, window)
                };
                index.push(entry.map_or(NO_ENTRY, |e| e as u32));
            }
        }
        Ok(index)
    }

    /// `b [E x H]`: the table row of each edge (zeros for [`NO_ENTRY`]).
    pub fn edge_bias(&self, index: &[u32]) -> Vec<f32> {
        let h = self.table.cols();
        let mut bias = vec![0.0; index.len() * h];
        for (b, &e) in bias.chunks_exact_mut(h.max(1)).zip(index) {
            if e != NO_ENTRY {
                b.copy_from_slice(self.table.row(e as usize));
            }
        }
        bias
    }

    /// Backward of [`RelativePositionBias::edge_bias`]: `dtable[idx(e)] += dbias[e]`, edges in order.
    pub fn backward(&self, index: &[u32], dbias: &[f32], dtable: &mut [f32]) {
        let h = self.table.cols().max(1);
        for (db, &e) in dbias.chunks_exact(h).zip(index) {
            if e != NO_ENTRY {
                let row = &mut dtable[e as usize * h..(e as usize + 1) * h];
                for (a, b) in row.iter_mut().zip(db) {
                    *a += b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_token_and_far_edges_get_no_entry() {
        let g = Graph::complete(5, true); // a class token and a 2 x 2 grid
        let index = RelativePositionBias::edge_index(&g, TokenGrid { rows: 2, cols: 2, prefix: 1 }, 1).unwrap();
        // M = 1: only offset (0, 0) has an entry: the patches' self-loops.
        let with_entry: Vec<usize> = (0..25).filter(|&e| index[e] != NO_ENTRY).collect();
        assert_eq!(with_entry, vec![6, 12, 18, 24]);
        assert!(RelativePositionBias::edge_index(&g, TokenGrid { rows: 2, cols: 2, prefix: 0 }, 2).is_err());
    }
}
