//! The global node: a class token linked both ways to every patch.
//!
//! Built by [`Graph::with_global_node`], which documents the definition.

use super::{Edges, Graph, Topology};

impl Graph {
    /// This graph with a global node prepended.
    ///
    /// A new node 0 is prepended, as timm puts the class token before the patch tokens; old node
    /// `i` becomes `i + 1`. The new edges are `0 -> i` and `i -> 0` for every other node `i`,
    /// plus `0 -> 0` when `self_loop`; all existing edges are kept (renumbered).
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let g = Graph::from_edge_index(2, &[0], &[1]).unwrap().with_global_node(false);
    /// assert_eq!(g.num_nodes(), 3);
    /// assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![1, 2]); // the token reads every patch
    /// assert_eq!(g.incoming(2).collect::<Vec<_>>(), vec![0, 1]); // the old edge 0 -> 1 is now 1 -> 2
    /// ```
    ///
    /// Edge order: the global node's sources are `[0 (if self_loop), 1, ..., N]`; every other
    /// node's are the global node `0` first, then its old sources shifted by one. Sources that
    /// were ascending stay ascending.
    ///
    /// The result is one block (the global node joins any batch blocks into one graph; to give
    /// each image of a batch its own token, add it per image, then take the disjoint union).
    /// A single complete graph stays implicit when `self_loop` matches its self-loop policy: the
    /// complete graph with a class token is the complete graph on `N + 1` nodes (ViT's).
    /// Tagged [`Topology::WithGlobal`].
    pub fn with_global_node(&self, self_loop: bool) -> Graph {
        let n = self.num_nodes;
        let topology = Topology::WithGlobal(Box::new(self.topology.clone()));
        if self.blocks.len() == 2 && self.complete_self_loops() == Some(self_loop) {
            return Graph {
                num_nodes: n + 1,
                edges: Edges::Complete { self_loops: self_loop },
                blocks: vec![0, n + 1],
                topology,
                visit: None,
            };
        }
        // Node ids are at most u32::MAX after the shift, since n <= u32::MAX.
        let graph = Graph::from_fn_unchecked(n + 1, topology, |i, out| {
            if i == 0 {
                let first = if self_loop { 0 } else { 1 };
                out.extend((first..=n).map(|j| j as u32));
            } else {
                out.push(0);
                out.extend(self.incoming(i - 1).map(|j| (j + 1) as u32));
            }
        });
        // The global node first, then the patches in their own visiting order, shifted.
        match self.visit_order() {
            Some(order) => {
                graph.with_builder_visit_order(std::iter::once(0).chain(order.iter().map(|&i| i + 1)).collect())
            }
            None => graph,
        }
    }

    /// `self` with `count` global nodes `0 .. count` prepended (timm's prefix tokens: a class
    /// token and register tokens), node `i` of `self` becoming node `count + i`. Each global
    /// node reads every node (the globals, itself included, then the others in order); each
    /// other node reads the globals first, then its own sources. `count = 1` is
    /// [`Graph::with_global_node`]`(true)`. A visiting order is carried (globals first).
    pub fn with_global_nodes(&self, count: usize) -> Graph {
        let n = self.num_nodes;
        let total = n + count;
        let topology = Topology::WithGlobal(Box::new(self.topology.clone()));
        let graph = Graph::from_fn_unchecked(total, topology, |i, out| {
            if i < count {
                out.extend((0..total).map(|j| j as u32));
            } else {
                out.extend((0..count).map(|j| j as u32));
                out.extend(self.incoming(i - count).map(|j| (j + count) as u32));
            }
        });
        match self.visit_order() {
            Some(order) => graph
                .with_builder_visit_order((0..count as u32).chain(order.iter().map(|&i| i + count as u32)).collect()),
            None => graph,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Graph;

    fn sources(g: &Graph) -> Vec<Vec<usize>> {
        (0..g.num_nodes()).map(|i| g.incoming(i).collect()).collect()
    }

    /// One global node is `with_global_node(true)`, edge for edge and in the same order.
    #[test]
    fn one_global_node_is_the_class_token() {
        let g = Graph::from_edge_index(4, &[0, 1, 2, 3, 1], &[1, 2, 3, 0, 3]).unwrap();
        assert_eq!(sources(&g.with_global_nodes(1)), sources(&g.with_global_node(true)));
    }

    /// Three globals (a class token and two registers) on a path: each reads every node, each
    /// patch reads the three globals first, then its old sources shifted by three; in-degrees
    /// are `N + 3` and `3 + old`; the old edges are all kept.
    #[test]
    fn several_global_nodes_are_linked_both_ways() {
        let (n, count) = (5, 3);
        let g = Graph::from_edge_index(n, &[0, 1, 2, 3], &[1, 2, 3, 4]).unwrap();
        let h = g.with_global_nodes(count);
        assert_eq!(h.num_nodes(), n + count);
        let s = sources(&h);
        for (i, srcs) in s.iter().enumerate().take(count) {
            assert_eq!(srcs, &(0..n + count).collect::<Vec<_>>(), "global {i}");
        }
        for i in 0..n {
            let want: Vec<usize> = (0..count).chain(g.incoming(i).map(|j| j + count)).collect();
            assert_eq!(s[i + count], want, "patch {i}");
        }
        // Both ways: every (global, patch) pair has an edge in each direction.
        for j in 0..count {
            for i in count..n + count {
                assert!(s[i].contains(&j) && s[j].contains(&i), "global {j} <-> node {i}");
            }
        }
    }

    /// A visiting order is carried, the globals first, the others' order shifted.
    #[test]
    fn visit_order_is_carried_globals_first() {
        let g = Graph::from_edge_index(4, &[0, 1, 2, 3], &[1, 2, 3, 0])
            .unwrap()
            .with_visit_order(vec![2, 0, 3, 1])
            .unwrap();
        assert_eq!(g.with_global_nodes(2).visit_order().unwrap(), &[0, 1, 4, 2, 5, 3]);
        let plain = Graph::from_edge_index(4, &[0], &[1]).unwrap();
        assert!(plain.visit_order().is_none() && plain.with_global_nodes(2).visit_order().is_none());
    }
}
