//! Adding and removing self-loops, with PyG's semantics.
//!
//! ```
//! use patchgraph::Graph;
//! let g = Graph::from_edge_index(3, &[0, 2, 1], &[1, 2, 2]).unwrap(); // 0->1, 2->2, 1->2
//! let with = g.add_self_loops();
//! // existing self-loops are removed, then one self-loop per node is the last incoming edge
//! assert_eq!(with.incoming(2).collect::<Vec<_>>(), vec![1, 2]);
//! assert_eq!(with.incoming(0).collect::<Vec<_>>(), vec![0]);
//! assert_eq!(g.remove_self_loops().num_edges(), 2);
//! ```

use super::{Edges, Graph, Topology};

impl Graph {
    /// PyG's `remove_self_loops` then `add_self_loops`: every node gets exactly one self-loop,
    /// as the last of its incoming edges; other edges keep their order. Blocks are kept; an
    /// implicit complete graph stays implicit (with self-loops).
    pub fn add_self_loops(&self) -> Graph {
        self.edit_self_loops(true)
    }

    /// Removes every self-loop; other edges keep their order.
    pub fn remove_self_loops(&self) -> Graph {
        self.edit_self_loops(false)
    }

    fn edit_self_loops(&self, add: bool) -> Graph {
        if let Edges::Complete { .. } = self.edges {
            let topology = retag(&self.topology, add);
            return Graph { edges: Edges::Complete { self_loops: add }, topology, ..self.clone() };
        }
        let mut offsets = Vec::with_capacity(self.num_nodes + 1);
        offsets.push(0);
        let mut sources = Vec::with_capacity(self.num_edges() + if add { self.num_nodes } else { 0 });
        for i in 0..self.num_nodes {
            sources.extend(self.incoming(i).filter(|&j| j != i).map(|j| j as u32));
            if add {
                sources.push(i as u32);
            }
            offsets.push(sources.len());
        }
        Graph {
            num_nodes: self.num_nodes,
            edges: Edges::Csr { offsets, sources },
            blocks: self.blocks.clone(),
            topology: retag(&self.topology, add),
            visit: self.visit.clone(),
        }
    }
}

/// The tag after a self-loop edit: complete graphs and grids record the new policy (also inside
/// a batch); any other topology is no longer what its builder made, so it becomes `Custom`.
fn retag(topology: &Topology, add: bool) -> Topology {
    match topology {
        Topology::Complete { .. } => Topology::Complete { self_loops: add },
        Topology::Grid { rows, cols, neighbourhood, radius, .. } => {
            Topology::Grid { rows: *rows, cols: *cols, neighbourhood: *neighbourhood, radius: *radius, self_loops: add }
        }
        Topology::Batch(parts) => Topology::Batch(parts.iter().map(|t| retag(t, add)).collect()),
        _ => Topology::Custom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Neighbourhood;

    #[test]
    fn tags_follow_the_edit() {
        let batch = Graph::disjoint_union(&[Graph::complete(2, false), Graph::complete(3, false)]).unwrap();
        let with = batch.add_self_loops();
        assert!(with.is_complete());
        assert_eq!(with.num_edges(), 4 + 9);
        assert_eq!(with.topology(), &Topology::Batch(vec![Topology::Complete { self_loops: true }; 2]));
        let grid = Graph::grid(3, 3, Neighbourhood::Four, 1, false).unwrap().add_self_loops();
        assert!(matches!(grid.topology(), Topology::Grid { self_loops: true, .. }));
        assert_eq!(grid.num_edges(), 12 * 2 + 9); // 12 undirected grid edges both ways + 9 loops
        let custom = Graph::random(5, 2, 1, false).unwrap().add_self_loops();
        assert_eq!(custom.topology(), &Topology::Custom);
    }
}
