//! petgraph interop: [`petgraph::Graph`], [`StableGraph`] and petgraph's [`Csr`] to and from
//! [`Graph`].
//!
//! [`Graph::from_petgraph`] documents the rules that every conversion here follows.

use super::{Graph, Topology, ensure_u32_nodes};
use crate::error::{Error, Result};
use petgraph::csr::Csr;
use petgraph::graph::{IndexType, NodeIndex};
use petgraph::stable_graph::StableGraph;
use petgraph::visit::{EdgeRef, IntoEdgeReferences, NodeIndexable};
use petgraph::{Directed, EdgeType};

impl Graph {
    /// A graph from a [`petgraph::Graph`], directed or undirected.
    ///
    /// The rules of every conversion of this kind: node `i` of one side is node `i` of the other (petgraph's [`NodeIndex::index`]), except for a
    /// `StableGraph` with removed nodes, whose indices are compacted (below). Node and edge weights
    /// are dropped on the way in and are `()` on the way out. An undirected petgraph edge `{a, b}`
    /// becomes both `a -> b` and `b -> a` (a self-loop `{a, a}` once). Into a `Graph`, the edges of
    /// each destination keep petgraph's edge order; out of one, edges are added in edge-id order.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, Neighbourhood};
    /// let g = Graph::grid(2, 3, Neighbourhood::Four, 1, false).unwrap();
    /// let pg = g.to_petgraph().unwrap();
    /// assert_eq!((pg.node_count(), pg.edge_count()), (6, 14));
    /// assert_eq!(Graph::from_petgraph(&pg).unwrap().edge_index(), g.edge_index());
    /// ```
    ///
    /// Errors: more nodes than the `u32` index range.
    pub fn from_petgraph<N, E, Ty: EdgeType, Ix: IndexType>(g: &petgraph::Graph<N, E, Ty, Ix>) -> Result<Graph> {
        let pairs = g.raw_edges().iter().map(|e| (e.source().index(), e.target().index()));
        from_petgraph_edges(g.node_count(), pairs, !Ty::is_directed())
    }

    /// A graph from a [`StableGraph`]. Removed nodes leave holes in a `StableGraph`'s indices;
    /// here the live nodes are renumbered `0..node_count()` in ascending index order (a graph
    /// without holes keeps its numbering).
    ///
    /// Errors: more nodes than the `u32` index range.
    pub fn from_stable_graph<N, E, Ty: EdgeType, Ix: IndexType>(g: &StableGraph<N, E, Ty, Ix>) -> Result<Graph> {
        let mut compact = vec![0usize; g.node_bound()];
        for (new, old) in g.node_indices().enumerate() {
            compact[old.index()] = new;
        }
        let pairs = g.edge_references().map(|e| (compact[e.source().index()], compact[e.target().index()]));
        from_petgraph_edges(g.node_count(), pairs, !Ty::is_directed())
    }

    /// A graph from petgraph's [`Csr`]. An undirected `Csr` already stores both directions of
    /// each edge, so its stored entries are taken as they are.
    ///
    /// Errors: more nodes than the `u32` index range.
    pub fn from_petgraph_csr<N, E, Ty: EdgeType, Ix: IndexType>(g: &Csr<N, E, Ty, Ix>) -> Result<Graph> {
        let pairs = g.edge_references().map(|e| (e.source().index(), e.target().index()));
        from_petgraph_edges(g.node_count(), pairs, false)
    }

    /// This graph as a directed [`petgraph::Graph`], edges added in edge-id order (an implicit
    /// complete graph is materialised).
    ///
    /// Errors: `u32::MAX` or more nodes or edges (petgraph's default index reserves `u32::MAX`).
    pub fn to_petgraph(&self) -> Result<petgraph::Graph<(), ()>> {
        self.ensure_petgraph_size()?;
        let mut g = petgraph::Graph::with_capacity(self.num_nodes, self.num_edges());
        for _ in 0..self.num_nodes {
            g.add_node(());
        }
        for i in 0..self.num_nodes {
            for j in self.incoming(i) {
                g.add_edge(NodeIndex::new(j), NodeIndex::new(i), ());
            }
        }
        Ok(g)
    }

    /// This graph as a directed [`StableGraph`], edges added in edge-id order.
    ///
    /// Errors: as [`Graph::to_petgraph`].
    pub fn to_stable_graph(&self) -> Result<StableGraph<(), ()>> {
        // Same node and edge indices as the plain graph.
        Ok(StableGraph::from(self.to_petgraph()?))
    }

    /// This graph as petgraph's directed [`Csr`] (outgoing edges per source, sorted).
    ///
    /// Errors: the graph has parallel edges (a `Csr` holds each `(source, target)` at most once).
    pub fn to_petgraph_csr(&self) -> Result<Csr<(), (), Directed, u32>> {
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(self.num_edges());
        for i in 0..self.num_nodes {
            pairs.extend(self.incoming(i).map(|j| (j as u32, i as u32)));
        }
        pairs.sort_unstable();
        if let Some(w) = pairs.windows(2).find(|w| w[0] == w[1]) {
            let (j, i) = w[0];
            return Err(Error::invalid(
                "graph for petgraph's Csr",
                format!("the edge {j} -> {i} appears more than once"),
            ));
        }
        let mut g =
            Csr::from_sorted_edges(&pairs).map_err(|e| Error::invalid("graph for petgraph's Csr", format!("{e:?}")))?;
        // `from_sorted_edges` stops at the largest node with an edge; add the isolated rest.
        while g.node_count() < self.num_nodes {
            g.add_node(());
        }
        Ok(g)
    }

    fn ensure_petgraph_size(&self) -> Result<()> {
        let limit = u32::MAX as usize;
        if self.num_nodes >= limit || self.num_edges() >= limit {
            return Err(Error::invalid(
                "graph for petgraph",
                format!("{} nodes and {} edges do not fit petgraph's u32 indices", self.num_nodes, self.num_edges()),
            ));
        }
        Ok(())
    }
}

/// Groups petgraph's `(source, target)` pairs by target, each undirected edge both ways.
fn from_petgraph_edges(
    num_nodes: usize,
    pairs: impl Iterator<Item = (usize, usize)>,
    undirected: bool,
) -> Result<Graph> {
    ensure_u32_nodes("petgraph graph", num_nodes)?;
    let mut directed: Vec<(u32, usize)> = Vec::with_capacity(pairs.size_hint().0);
    for (a, b) in pairs {
        directed.push((a as u32, b));
        if undirected && a != b {
            directed.push((b as u32, a));
        }
    }
    Ok(Graph::from_pairs_unchecked(num_nodes, directed.iter().copied(), directed.len(), Topology::Custom))
}
