//! The edge union of graphs on the same nodes: how sparse patterns are combined.
//!
//! BigBird is window + global + random; Longformer is window + global; a spec such as
//! `nat:3+lsh:8:2:1` mixes a local and a content-based pattern. All of them are the union of
//! the parts' edge sets over one node set. A 1 x 6 strip, a window of 3 (radius 1) and one
//! global patch (`global_patches(6, 1) = [3]`); the sources of each destination:
//!
//! ```text
//! destination:  0        1          2          3              4          5
//! window:       0 1      0 1 2      1 2 3      2 3 4          3 4 5      4 5
//! global:       0 3      1 3        2 3        0 1 2 3 4 5    3 4        3 5
//! union:        0 1 3    0 1 2 3    1 2 3      0 1 2 3 4 5    3 4 5      3 4 5
//! ```
//!
//! Built by [`Graph::union`], which documents the rule.
//!
//! ```
//! use patchgraph::graph::{Graph, Neighbourhood};
//! let window = Graph::grid(1, 6, Neighbourhood::Eight, 1, true).unwrap();
//! let global = Graph::longformer(1, 6, 1, 1).unwrap(); // the `global:1` spec's graph
//! let g = Graph::union(&[window, global]).unwrap();
//! assert_eq!(g.incoming(5).collect::<Vec<_>>(), vec![3, 4, 5]);
//! assert_eq!(g.in_degree(3), 6);
//! ```

use super::{Graph, Topology, check_edges};
use crate::error::{Error, Result};

impl Graph {
    /// The edge union of `parts`, graphs on the same `N` nodes: `j -> i` is an edge iff it is
    /// an edge of some part.
    ///
    /// Per destination the sources of all parts are merged, duplicates removed, and listed in
    /// ascending order (whatever order the parts list them in). Implicit complete parts are
    /// read edge by edge, so the union is always stored (CSR). When every part has the same
    /// blocks ([`Graph::blocks`]) the union keeps them (a union of batches is a batch); otherwise
    /// it is one block. Tagged [`Topology::Union`] with the parts' tags in order.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let a = Graph::from_edge_index(3, &[1, 2], &[0, 0]).unwrap();
    /// let b = Graph::from_edge_index(3, &[2, 0], &[0, 1]).unwrap();
    /// let u = Graph::union(&[a, b]).unwrap();
    /// assert_eq!(u.incoming(0).collect::<Vec<_>>(), vec![1, 2]); // 2 -> 0 once
    /// assert_eq!(u.incoming(1).collect::<Vec<_>>(), vec![0]);
    /// assert_eq!(u.num_edges(), 3);
    /// ```
    ///
    /// Errors: no parts, or parts with different node counts (named `graph union`); the sum of
    /// the parts' edges (a bound on the union's) beyond [`crate::limits::MAX_EDGES`], checked
    /// before allocating.
    pub fn union(parts: &[Graph]) -> Result<Graph> {
        let first = parts.first().ok_or_else(|| Error::invalid("graph union", "needs at least one graph"))?;
        let n = first.num_nodes;
        if let Some((k, g)) = parts.iter().enumerate().find(|(_, g)| g.num_nodes != n) {
            return Err(Error::invalid(
                "graph union",
                format!("part {k} has {} nodes, part 0 has {n}: a union needs one node set", g.num_nodes),
            ));
        }
        let bound = parts.iter().try_fold(0usize, |t, g| t.checked_add(g.num_edges()));
        check_edges(&format!("union of {} graphs on {n} nodes", parts.len()), bound)?;
        let topology = Topology::Union(parts.iter().map(|g| g.topology.clone()).collect());
        let mut scratch: Vec<u32> = Vec::new();
        let mut union = Graph::from_fn_unchecked(n, topology, |i, out| {
            scratch.clear();
            for g in parts {
                scratch.extend(g.incoming(i).map(|j| j as u32));
            }
            scratch.sort_unstable();
            scratch.dedup();
            out.extend_from_slice(&scratch);
        });
        if parts.iter().all(|g| g.blocks == first.blocks) {
            union.blocks = first.blocks.clone();
        }
        Ok(union)
    }
}
