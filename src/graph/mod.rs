//! `Graph`: the patch graph that attention runs on, stored as incoming edges per destination.
//!
//! For every destination node `i`, its incoming edges `j -> i` are the sources
//! `sources[offsets[i] .. offsets[i + 1]]` (CSR by destination). Edge ids are positions in that
//! array, so per-edge data (a bias `[E x H]`, attention weights `[E x H]`) is laid out
//! destination-major. A kernel reduces each destination by one thread in a fixed order:
//! deterministic whatever the thread count.
//!
//! A complete graph (and a batch of complete graphs) is *not* materialised: it is kept as its
//! block sizes, so that dense kernels take it and `N^2` edges are never stored unless
//! [`Graph::materialize`] is asked for. Its implicit edge order is the same as a CSR would have:
//! destination-major, sources ascending.
//!
//! A batch of graphs is their disjoint union ([`Graph::disjoint_union`]), block-diagonal as PyG
//! batches, with the node ranges of the blocks kept ([`Graph::blocks`]).
//!
//! ## Builders
//!
//! Graphs over a `rows x cols` patch grid number the patch in row `r`, column `c` as node
//! `r * cols + c` (row-major, timm's patch order). Each builder documents its exact definition
//! and sets the graph's [`Topology`] tag:
//!
//! - [`Graph::grid`]: patches within a Manhattan ([`Neighbourhood::Four`]) or Chebyshev
//!   ([`Neighbourhood::Eight`]) radius.
//! - [`Graph::window`]: Swin's partition windows or NAT's sliding windows ([`WindowKind`]).
//! - [`Graph::spatial_knn`]: the `k` nearest patches by grid position.
//! - [`Graph::feature_knn`]: ViG's dilated k-NN on node features ([`KnnOptions`]), one GEMM per
//!   row tile; [`Graph::feature_knn_reference`] is its plain oracle.
//! - [`Graph::with_global_node`]: a class token prepended as node 0, linked both ways to all.
//! - [`Graph::random`]: a seeded random graph with a fixed in-degree.
//! - [`Graph::bigbird`]: BigBird's centred window plus seeded random sources outside it.
//! - [`Graph::longformer`]: Vision Longformer's centred window plus global patches
//!   ([`global_patches`]).
//! - [`Graph::shifted_window`]: Swin's shifted windows (cyclic shift + mask as a graph);
//!   [`relative_position_index`] is Swin's bias-table index.
//! - [`Graph::grid_attention`]: MaxViT's grid attention (dilated `G x G` groups).
//! - [`Graph::lsh`]: Reformer's angular LSH buckets on node features ([`LshOptions`]), sorted and
//!   chunked; [`Graph::lsh_reference`] is its plain oracle.
//! - [`Graph::union`]: the edge union of graphs on the same nodes (`window:7+global+random:3`).
//! - [`Graph::add_self_loops`], [`Graph::remove_self_loops`]: PyG's self-loop edits.
//! - petgraph and Graphviz: [`Graph::from_petgraph`], [`Graph::to_petgraph`] (and the
//!   `StableGraph` / `Csr` variants), [`Graph::to_dot`].
//!
//! ```
//! use patchgraph::graph::{Graph, Neighbourhood, WindowKind};
//! // A 14 x 14 patch grid (ViT-B/16 at 224 px) with 8-neighbourhoods and a class token.
//! let g = Graph::grid(14, 14, Neighbourhood::Eight, 1, false).unwrap().with_global_node(false);
//! assert_eq!(g.num_nodes(), 197);
//! assert_eq!(g.in_degree(0), 196); // the token reads every patch
//! assert_eq!(g.in_degree(1), 1 + 3); // patch (0, 0): the token and 3 grid neighbours
//! // GAT-style: one self-loop per node, appended last.
//! let g = g.add_self_loops();
//! assert_eq!(g.incoming(1).last(), Some(1));
//! // Swin's 7 x 7 windows on the same grid: 4 windows of 49 patches.
//! let w = Graph::window(14, 14, WindowKind::Partition, 7).unwrap();
//! assert_eq!(w.num_edges(), 4 * 49 * 49);
//! ```
//!
//! ## Complete graphs and batches
//!
//! ```
//! use patchgraph::Graph;
//! let g = Graph::complete(3, true);
//! assert_eq!(g.num_edges(), 9);
//! assert!(g.is_complete());
//! let edges: Vec<usize> = g.incoming(1).collect();
//! assert_eq!(edges, vec![0, 1, 2]);
//!
//! let batch = Graph::disjoint_union(&[Graph::complete(2, false), Graph::complete(3, false)]).unwrap();
//! assert!(batch.is_complete()); // still dense: two complete blocks
//! assert_eq!(batch.blocks(), &[0, 2, 5]);
//! assert_eq!(batch.incoming(3).collect::<Vec<_>>(), vec![2, 4]);
//! ```

mod bigbird;
mod dot;
mod global;
mod grid;
mod grid_attention;
mod interop;
mod knn;
mod longformer;
mod lsh;
mod random;
mod self_loops;
mod shifted_window;
mod spatial_knn;
mod spec;
mod topology;
mod union;
mod window;

pub use grid::Neighbourhood;
pub use knn::{KnnOptions, Metric};
pub use longformer::global_patches;
pub use lsh::LshOptions;
pub use shifted_window::relative_position_index;
pub use spec::GraphSpec;
pub use topology::Topology;
pub use window::WindowKind;

use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::Arc;

/// How a graph's edges are stored.
#[derive(Clone, Debug, PartialEq)]
enum Edges {
    /// Every block is a complete graph (with or without self-loops); nothing is stored.
    Complete { self_loops: bool },
    /// Incoming edges per destination.
    Csr { offsets: Vec<usize>, sources: Vec<u32> },
}

/// A directed graph over `N` nodes, stored as incoming edges per destination.
#[derive(Clone, Debug)]
pub struct Graph {
    num_nodes: usize,
    edges: Edges,
    /// Node offsets of the disjoint-union blocks: `[0, n_0, n_0 + n_1, ..., N]`.
    blocks: Vec<usize>,
    topology: Topology,
    /// The order in which kernels visit the destinations (see [`Graph::visit_order`]).
    visit: Option<Arc<[u32]>>,
}

/// Two graphs are equal when they have the same nodes, edges (in edge order), blocks and
/// topology tag; the visiting order is a scheduling hint, not part of what the graph is.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.num_nodes == other.num_nodes
            && self.edges == other.edges
            && self.blocks == other.blocks
            && self.topology == other.topology
    }
}

impl Graph {
    /// The complete graph on `n` nodes: every `j -> i`, including `i -> i` when `self_loops`.
    ///
    /// `in_degree(i) = n` with self-loops, `n - 1` without. Not materialised.
    pub fn complete(n: usize, self_loops: bool) -> Graph {
        Graph {
            num_nodes: n,
            edges: Edges::Complete { self_loops },
            blocks: vec![0, n],
            topology: Topology::Complete { self_loops },
            visit: None,
        }
    }

    /// [`Graph::complete`], checked: an error ([`Error::Invalid`]) if `n` is beyond the `u32`
    /// node range or its `n^2` (or `n (n - 1)`) edges would exceed [`crate::limits::MAX_EDGES`]
    /// or overflow. Nothing is allocated either way, but kernels and [`Graph::materialize`]
    /// would allocate per edge: builders from user sizes ([`GraphSpec::build`]) go through here.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// assert_eq!(Graph::try_complete(197, true).unwrap(), Graph::complete(197, true));
    /// assert!(Graph::try_complete(1 << 20, true).is_err()); // 2^40 edges
    /// ```
    pub fn try_complete(n: usize, self_loops: bool) -> Result<Graph> {
        ensure_u32_nodes("complete graph", n)?;
        let edges = if self_loops { n.checked_mul(n) } else { n.checked_mul(n.saturating_sub(1)) };
        check_edges(&format!("complete graph on {n} nodes"), edges)?;
        Ok(Graph::complete(n, self_loops))
    }

    /// A graph from CSR-by-destination arrays: the sources of the edges into `i` are
    /// `sources[offsets[i]..offsets[i+1]]`. Validates lengths, monotone offsets and indices.
    pub fn from_csr(num_nodes: usize, offsets: Vec<usize>, sources: Vec<u32>) -> Result<Graph> {
        Self::from_csr_with(num_nodes, offsets, sources, Topology::Custom)
    }

    /// A k-NN graph from its `[N x k]` neighbour table (ViG's `nn_idx`, DGL's `knn_graph`
    /// output): node `i` receives edges from `table[i * k .. (i + 1) * k]`, in that order. An
    /// index `>= N` is an [`Error::NodeOutOfRange`] that names its row and slot.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let g = Graph::from_neighbor_table(3, 2, vec![1, 2, 0, 2, 0, 1]).unwrap();
    /// assert_eq!(g.fixed_in_degree(), Some(2));
    /// assert_eq!(g.incoming(1).collect::<Vec<_>>(), [0, 2]);
    /// assert!(Graph::from_neighbor_table(3, 2, vec![1, 2, 0, 3, 0, 1]).is_err());
    /// ```
    pub fn from_neighbor_table(num_nodes: usize, k: usize, table: Vec<u32>) -> Result<Graph> {
        // `num_nodes` sizes the offsets allocated below: bounded like every node count, and
        // `num_nodes * k` must not wrap into a length that the table happens to have.
        ensure_u32_nodes("neighbour table", num_nodes)?;
        if num_nodes.checked_mul(k) != Some(table.len()) {
            return Err(Error::shape(
                "neighbour table",
                format!("[{num_nodes} x {k}] entries"),
                format!("{} entries", table.len()),
            ));
        }
        if let Some(e) = table.iter().position(|&s| s as usize >= num_nodes) {
            return Err(Error::NodeOutOfRange {
                what: format!("neighbour table row {} slot {}", e / k, e % k),
                index: table[e] as usize,
                num_nodes,
            });
        }
        let offsets = (0..=num_nodes).map(|i| i * k).collect();
        Ok(Graph {
            num_nodes,
            edges: Edges::Csr { offsets, sources: table },
            blocks: vec![0, num_nodes],
            topology: Topology::Custom,
            visit: None,
        })
    }

    pub(crate) fn from_csr_with(
        num_nodes: usize,
        offsets: Vec<usize>,
        sources: Vec<u32>,
        topology: Topology,
    ) -> Result<Graph> {
        // `num_nodes + 1` must not wrap to the length of an empty `offsets` (then indexed).
        ensure_u32_nodes("CSR graph", num_nodes)?;
        if offsets.len() != num_nodes + 1 {
            return Err(Error::shape(
                "CSR offsets",
                format!("{} entries (N + 1)", num_nodes + 1),
                format!("{} entries", offsets.len()),
            ));
        }
        if offsets[0] != 0 || offsets[num_nodes] != sources.len() {
            return Err(Error::invalid(
                "CSR offsets",
                format!(
                    "must start at 0 and end at the number of edges {}, got {} .. {}",
                    sources.len(),
                    offsets[0],
                    offsets[num_nodes]
                ),
            ));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::invalid(
                "CSR offsets",
                format!("decrease at destination {i}: {} > {}", offsets[i], offsets[i + 1]),
            ));
        }
        if let Some(e) = sources.iter().position(|&s| s as usize >= num_nodes) {
            return Err(Error::NodeOutOfRange {
                what: format!("CSR sources[{e}]"),
                index: sources[e] as usize,
                num_nodes,
            });
        }
        Ok(Graph {
            num_nodes,
            edges: Edges::Csr { offsets, sources },
            blocks: vec![0, num_nodes],
            topology,
            visit: None,
        })
    }

    /// A graph from PyG's `edge_index` rows: edge `e` goes `sources[e] -> targets[e]`.
    ///
    /// Edges are grouped by destination (a stable counting sort, so the input order is kept
    /// within each destination); duplicates and self-loops are kept as given. An index `>= N`
    /// is an [`Error::NodeOutOfRange`] that names the position.
    pub fn from_edge_index(num_nodes: usize, sources: &[usize], targets: &[usize]) -> Result<Graph> {
        if sources.len() != targets.len() {
            return Err(Error::shape(
                "edge_index",
                format!("2 rows of equal length ({})", sources.len()),
                format!("rows of {} and {}", sources.len(), targets.len()),
            ));
        }
        for (row, name) in [(sources, 0), (targets, 1)] {
            if let Some(e) = row.iter().position(|&s| s >= num_nodes) {
                return Err(Error::NodeOutOfRange {
                    what: format!("edge_index[{name}][{e}]"),
                    index: row[e],
                    num_nodes,
                });
            }
        }
        ensure_u32_nodes("graph size", num_nodes)?;
        check_edges("edge_index", Some(sources.len()))?;
        let pairs = sources.iter().zip(targets).map(|(&s, &t)| (s as u32, t));
        Ok(Self::from_pairs_unchecked(num_nodes, pairs, sources.len(), Topology::Custom))
    }

    /// A graph from a PyG `edge_index` tensor as stored (int64, shape `[2, E]`, row-major: the
    /// sources then the targets), e.g. read from a safetensors file. A shape other than
    /// `[2, E]`, a negative index or one `>= N` is an error naming the position.
    pub fn from_edge_index_tensor(num_nodes: usize, shape: &[usize], data: &[i64]) -> Result<Graph> {
        // `2 * E` checked: a wrapped product would pass for an empty `data` and size the rows.
        if shape.len() != 2 || shape[0] != 2 || shape[1].checked_mul(2) != Some(data.len()) {
            return Err(Error::shape(
                "edge_index",
                "[2, E] with 2 * E values",
                format!("{shape:?} with {} values", data.len()),
            ));
        }
        let e = shape[1];
        let mut rows = [Vec::with_capacity(e), Vec::with_capacity(e)];
        for (r, row) in rows.iter_mut().enumerate() {
            for (k, &v) in data[r * e..(r + 1) * e].iter().enumerate() {
                if v < 0 {
                    return Err(Error::invalid(format!("edge_index[{r}][{k}]"), format!("negative node index {v}")));
                }
                row.push(v as usize);
            }
        }
        Graph::from_edge_index(num_nodes, &rows[0], &rows[1])
    }

    /// Groups `(source, destination)` pairs by destination (stable). Indices must be `< n`.
    pub(crate) fn from_pairs_unchecked(
        num_nodes: usize,
        pairs: impl Iterator<Item = (u32, usize)> + Clone,
        num_edges: usize,
        topology: Topology,
    ) -> Graph {
        let mut offsets = vec![0usize; num_nodes + 1];
        for (_, t) in pairs.clone() {
            offsets[t + 1] += 1;
        }
        for i in 0..num_nodes {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor = offsets.clone();
        let mut sources = vec![0u32; num_edges];
        for (s, t) in pairs {
            sources[cursor[t]] = s;
            cursor[t] += 1;
        }
        Graph { num_nodes, edges: Edges::Csr { offsets, sources }, blocks: vec![0, num_nodes], topology, visit: None }
    }

    /// A single-block CSR graph whose destination `i` gets the sources that `fill(i, out)` pushes
    /// onto `out` (in edge order). Sources must be `< num_nodes`.
    pub(crate) fn from_fn_unchecked(
        num_nodes: usize,
        topology: Topology,
        mut fill: impl FnMut(usize, &mut Vec<u32>),
    ) -> Graph {
        let mut offsets = Vec::with_capacity(num_nodes + 1);
        offsets.push(0);
        let mut sources = Vec::new();
        for i in 0..num_nodes {
            fill(i, &mut sources);
            offsets.push(sources.len());
        }
        debug_assert!(sources.iter().all(|&s| (s as usize) < num_nodes));
        Graph { num_nodes, edges: Edges::Csr { offsets, sources }, blocks: vec![0, num_nodes], topology, visit: None }
    }

    /// A graph from per-destination source lists (`lists[i]` = sources of edges into `i`).
    pub(crate) fn from_lists_unchecked(lists: &[Vec<u32>], topology: Topology) -> Graph {
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        offsets.push(0);
        let mut sources = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        for l in lists {
            sources.extend_from_slice(l);
            offsets.push(sources.len());
        }
        Graph {
            num_nodes: lists.len(),
            edges: Edges::Csr { offsets, sources },
            blocks: vec![0, lists.len()],
            topology,
            visit: None,
        }
    }

    /// Number of nodes `N`.
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    /// Number of edges `E` (for an implicit complete graph, the number it would have).
    pub fn num_edges(&self) -> usize {
        match &self.edges {
            Edges::Complete { self_loops } => self.block_sizes().map(|m| complete_edges(m, *self_loops)).sum(),
            Edges::Csr { sources, .. } => sources.len(),
        }
    }

    /// What built this graph.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Node offsets of the disjoint-union blocks, `[0, ..., N]` (`[0, N]` for one graph).
    pub fn blocks(&self) -> &[usize] {
        &self.blocks
    }

    /// Sizes of the blocks.
    pub fn block_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.blocks.windows(2).map(|w| w[1] - w[0])
    }

    /// `Some(self_loops)` when every block is an implicit complete graph (the dense path).
    pub fn complete_self_loops(&self) -> Option<bool> {
        match self.edges {
            Edges::Complete { self_loops } => Some(self_loops),
            Edges::Csr { .. } => None,
        }
    }

    /// Whether the graph is a complete graph or a batch of complete graphs (kept implicit).
    pub fn is_complete(&self) -> bool {
        self.complete_self_loops().is_some()
    }

    /// Index of the block that holds node `i`.
    pub fn block_of(&self, i: usize) -> usize {
        self.blocks.partition_point(|&b| b <= i) - 1
    }

    /// Number of incoming edges of node `i`.
    pub fn in_degree(&self, i: usize) -> usize {
        self.edge_range(i).len()
    }

    /// Edge ids of the incoming edges of `i` (positions in destination-major edge order).
    pub fn edge_range(&self, i: usize) -> Range<usize> {
        match &self.edges {
            Edges::Csr { offsets, .. } => offsets[i]..offsets[i + 1],
            Edges::Complete { self_loops } => {
                let b = self.block_of(i);
                let (start, end) = (self.blocks[b], self.blocks[b + 1]);
                let m = end - start;
                let deg = if *self_loops { m } else { m - 1 };
                let before: usize =
                    self.blocks[..=b].windows(2).map(|w| complete_edges(w[1] - w[0], *self_loops)).sum();
                let first = before + (i - start) * deg;
                first..first + deg
            }
        }
    }

    /// Source nodes of the incoming edges of `i`, in edge-id order.
    pub fn incoming(&self, i: usize) -> Incoming<'_> {
        match &self.edges {
            Edges::Csr { offsets, sources } => Incoming::Listed(sources[offsets[i]..offsets[i + 1]].iter()),
            Edges::Complete { self_loops } => {
                let b = self.block_of(i);
                Incoming::Block {
                    next: self.blocks[b],
                    end: self.blocks[b + 1],
                    skip: if *self_loops { usize::MAX } else { i },
                }
            }
        }
    }

    /// The stored sources of the incoming edges of `i` (its CSR slice, in edge order), or `None`
    /// for an implicit complete graph.
    pub fn stored_sources(&self, i: usize) -> Option<&[u32]> {
        match &self.edges {
            Edges::Csr { offsets, sources } => Some(&sources[offsets[i]..offsets[i + 1]]),
            Edges::Complete { .. } => None,
        }
    }

    /// `Some(k)` when every node has exactly `k` stored incoming edges (a k-NN graph): then the
    /// CSR sources are the `[N x k]` neighbour table, `sources[i * k .. (i + 1) * k]` for node
    /// `i`. `None` for implicit complete graphs and graphs of varying in-degree.
    pub fn fixed_in_degree(&self) -> Option<usize> {
        let Edges::Csr { offsets, .. } = &self.edges else { return None };
        let k = offsets.get(1).copied().unwrap_or(0);
        offsets.iter().enumerate().all(|(i, &o)| o == i * k).then_some(k)
    }

    /// The CSR arrays `(offsets, sources)`, or `None` for an implicit complete graph.
    pub fn csr(&self) -> Option<(&[usize], &[u32])> {
        match &self.edges {
            Edges::Csr { offsets, sources } => Some((offsets, sources)),
            Edges::Complete { .. } => None,
        }
    }

    /// The same graph with its edges stored explicitly (CSR), same edge order, blocks and tag.
    pub fn materialize(&self) -> Graph {
        match &self.edges {
            Edges::Csr { .. } => self.clone(),
            Edges::Complete { .. } => {
                let mut offsets = Vec::with_capacity(self.num_nodes + 1);
                let mut sources = Vec::with_capacity(self.num_edges());
                offsets.push(0);
                for i in 0..self.num_nodes {
                    sources.extend(self.incoming(i).map(|j| j as u32));
                    offsets.push(sources.len());
                }
                Graph {
                    num_nodes: self.num_nodes,
                    edges: Edges::Csr { offsets, sources },
                    blocks: self.blocks.clone(),
                    topology: self.topology.clone(),
                    visit: self.visit.clone(),
                }
            }
        }
    }

    /// PyG's `edge_index`: `(sources, targets)` in edge-id order.
    pub fn edge_index(&self) -> (Vec<usize>, Vec<usize>) {
        let e = self.num_edges();
        let (mut src, mut dst) = (Vec::with_capacity(e), Vec::with_capacity(e));
        for i in 0..self.num_nodes {
            for j in self.incoming(i) {
                src.push(j);
                dst.push(i);
            }
        }
        (src, dst)
    }

    /// Whether the edge `j -> i` exists (linear in the in-degree of `i`).
    pub fn has_edge(&self, j: usize, i: usize) -> bool {
        i < self.num_nodes && self.incoming(i).any(|s| s == j)
    }

    /// The disjoint union (block-diagonal batch) of `graphs`, node ids offset block by block.
    ///
    /// If every part is an implicit complete graph with the same self-loop policy, the union
    /// stays implicit (the dense path takes it); otherwise it is stored as CSR. The block
    /// structure is kept either way.
    pub fn disjoint_union(graphs: &[Graph]) -> Result<Graph> {
        let total = graphs.iter().try_fold(0usize, |t, g| t.checked_add(g.num_nodes));
        let total = total.filter(|&t| t <= u32::MAX as usize).ok_or_else(|| {
            Error::invalid("batch", format!("{} graphs: their nodes exceed the u32 index range", graphs.len()))
        })?;
        let mut blocks = vec![0];
        for g in graphs {
            let base = *blocks.last().unwrap_or(&0);
            blocks.extend(g.blocks[1..].iter().map(|b| base + b));
        }
        let topology = Topology::Batch(graphs.iter().map(|g| g.topology.clone()).collect());
        let policy = graphs.first().and_then(Graph::complete_self_loops);
        if let Some(self_loops) = policy {
            if graphs.iter().all(|g| g.complete_self_loops() == Some(self_loops)) {
                return Ok(Graph {
                    num_nodes: total,
                    edges: Edges::Complete { self_loops },
                    blocks,
                    topology,
                    visit: None,
                });
            }
        }
        let mut offsets = Vec::with_capacity(total + 1);
        offsets.push(0);
        // Stored edge by edge from here: an implicit complete part may stand for more than fit.
        let edges = graphs.iter().try_fold(0usize, |t, g| t.checked_add(g.num_edges()));
        let mut sources = Vec::with_capacity(check_edges("batch", edges)?);
        let mut base = 0u32;
        for g in graphs {
            for i in 0..g.num_nodes {
                sources.extend(g.incoming(i).map(|j| base + j as u32));
                offsets.push(sources.len());
            }
            base += g.num_nodes as u32;
        }
        // The parts' visiting orders, offset block by block (the natural order where a part has none).
        let visit = graphs.iter().any(|g| g.visit.is_some()).then(|| {
            let mut order = Vec::with_capacity(total);
            let mut base = 0u32;
            for g in graphs {
                match g.visit_order() {
                    Some(o) => order.extend(o.iter().map(|&i| base + i)),
                    None => order.extend(base..base + g.num_nodes as u32),
                }
                base += g.num_nodes as u32;
            }
            Arc::from(order)
        });
        Ok(Graph { num_nodes: total, edges: Edges::Csr { offsets, sources }, blocks, topology, visit })
    }

    /// The order in which the sparse kernels visit the destinations, when the builder gave one:
    /// a permutation of `0..N` that puts destinations sharing their sources next to each other
    /// (Reformer's sorted buckets), so that those sources stay in cache. It never changes a
    /// result: every destination is reduced on its own, in its edge order, whatever the order
    /// of the destinations. `None`: the natural order `0, 1, ..., N - 1`.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, LshOptions};
    /// use patchgraph::Matrix;
    /// let x = Matrix::from_fn(8, 2, |i, d| if (i + d) % 3 == 0 { 1.0 } else { -1.0 });
    /// let g = Graph::lsh(&x, &LshOptions { buckets: 2, rounds: 1, seed: 0, chunk: None }).unwrap();
    /// let mut order = g.visit_order().unwrap().to_vec();
    /// order.sort();
    /// assert_eq!(order, (0..8).collect::<Vec<u32>>()); // a permutation
    /// ```
    pub fn visit_order(&self) -> Option<&[u32]> {
        self.visit.as_deref()
    }

    /// `self` with the visiting order `order` ([`Graph::visit_order`]): a permutation of
    /// `0..N` that lists destinations sharing sources next to each other (e.g. nodes sorted by
    /// cluster). Results stay the same bits; only the memory traffic changes.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let g = Graph::from_edge_index(3, &[0, 1, 2], &[1, 2, 0]).unwrap();
    /// let g = g.with_visit_order(vec![2, 0, 1]).unwrap();
    /// assert_eq!(g.visit_order(), Some(&[2u32, 0, 1][..]));
    /// assert!(Graph::complete(3, true).with_visit_order(vec![0, 0, 1]).is_err()); // not a permutation
    /// ```
    ///
    /// Errors: `order` not of length `N` ([`Error::Shape`]), an entry `>= N`
    /// ([`Error::NodeOutOfRange`]) or an entry twice ([`Error::Invalid`]).
    pub fn with_visit_order(mut self, order: Vec<u32>) -> Result<Graph> {
        check_permutation(&order, self.num_nodes)?;
        self.visit = Some(Arc::from(order));
        Ok(self)
    }

    /// [`Graph::with_visit_order`] for builders whose `order` is a permutation by construction.
    /// Still checked, always: the kernels' `unsafe` writes rely on it (a failure is a bug here,
    /// hence a panic rather than an error).
    pub(crate) fn with_builder_visit_order(self, order: Vec<u32>) -> Graph {
        match self.with_visit_order(order) {
            Ok(g) => g,
            Err(e) => panic!("a builder's visiting order is not a permutation: {e}"),
        }
    }

    /// Relabels nodes: node `i` of `self` becomes node `perm[i]` of the result. Edge order within
    /// a destination is kept. The result is a custom single-block CSR graph.
    pub fn permute(&self, perm: &[usize]) -> Result<Graph> {
        let n = self.num_nodes;
        if perm.len() != n {
            return Err(Error::shape("permutation", format!("{n} entries"), format!("{} entries", perm.len())));
        }
        let mut inverse = vec![usize::MAX; n];
        for (i, &p) in perm.iter().enumerate() {
            if p >= n {
                return Err(Error::NodeOutOfRange { what: format!("permutation[{i}]"), index: p, num_nodes: n });
            }
            if inverse[p] != usize::MAX {
                return Err(Error::invalid("permutation", format!("node {p} appears twice")));
            }
            inverse[p] = i;
        }
        let lists: Vec<Vec<u32>> =
            (0..n).map(|new_i| self.incoming(inverse[new_i]).map(|j| perm[j] as u32).collect()).collect();
        Ok(Graph::from_lists_unchecked(&lists, Topology::Custom))
    }
}

/// Errors unless `order` is a permutation of `0..n` (see [`Graph::with_visit_order`]).
fn check_permutation(order: &[u32], n: usize) -> Result<()> {
    if order.len() != n {
        return Err(Error::shape("visit order", format!("{n} entries (one per node)"), format!("{}", order.len())));
    }
    let mut seen = vec![false; n];
    for (p, &i) in order.iter().enumerate() {
        let i = i as usize;
        if i >= n {
            return Err(Error::NodeOutOfRange { what: format!("visit order[{p}]"), index: i, num_nodes: n });
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::invalid("visit order", format!("node {i} appears twice (at position {p})")));
        }
    }
    Ok(())
}

/// Errors unless `num_nodes` node ids fit the `u32` sources of the CSR.
pub(crate) fn ensure_u32_nodes(what: &str, num_nodes: usize) -> Result<()> {
    if num_nodes > u32::MAX as usize {
        return Err(Error::invalid(what, format!("{num_nodes} nodes exceed the u32 index range")));
    }
    Ok(())
}

pub(crate) use crate::limits::check_edges;

/// Edges of a complete graph on `m` nodes: `m^2` with self-loops, `m (m - 1)` without.
pub(crate) fn complete_edges(m: usize, self_loops: bool) -> usize {
    // Saturating: an implicit complete graph of any size has a count (capped at usize::MAX).
    if self_loops { m.saturating_mul(m) } else { m.saturating_mul(m.saturating_sub(1)) }
}

/// Iterator over the sources of a node's incoming edges.
#[derive(Clone, Debug)]
pub enum Incoming<'a> {
    /// Stored edges.
    Listed(std::slice::Iter<'a, u32>),
    /// A complete block `next..end`, skipping `skip` (no self-loop) if it is in range.
    Block {
        /// Next source.
        next: usize,
        /// One past the last source.
        end: usize,
        /// The destination itself when self-loops are excluded, else `usize::MAX`.
        skip: usize,
    },
}

impl Iterator for Incoming<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Incoming::Listed(it) => it.next().map(|&s| s as usize),
            Incoming::Block { next, end, skip } => {
                if *next == *skip {
                    *next += 1;
                }
                if *next < *end {
                    *next += 1;
                    Some(*next - 1)
                } else {
                    None
                }
            }
        }
    }
}
