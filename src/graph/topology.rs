//! `Topology`: the tag that says what built a [`Graph`](super::Graph).
//!
//! The tag is descriptive (for printing, DOT export and the dispatcher's sanity); what decides
//! dense versus sparse is whether the edges are stored (see [`Graph::is_complete`](super::Graph::is_complete)).
//!
//! ```
//! use patchgraph::{Graph, Topology};
//! assert_eq!(Graph::complete(4, true).topology(), &Topology::Complete { self_loops: true });
//! ```

use super::{KnnOptions, LshOptions, Neighbourhood, WindowKind};

/// What built a graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Topology {
    /// Every pair of nodes, optionally with self-loops.
    Complete {
        /// Whether `i -> i` is an edge.
        self_loops: bool,
    },
    /// Patches within a radius on an `rows x cols` grid.
    Grid {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// 4- (Manhattan) or 8- (Chebyshev) neighbourhood.
        neighbourhood: Neighbourhood,
        /// Radius in patches.
        radius: usize,
        /// Whether `i -> i` is an edge.
        self_loops: bool,
    },
    /// Local windows (Swin-style partitions or NAT-style sliding neighbourhoods).
    Window {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Which window rule.
        kind: WindowKind,
        /// Window side in patches.
        size: usize,
    },
    /// k nearest patches by grid position.
    SpatialKnn {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Neighbours per node.
        k: usize,
        /// Whether a node counts as its own nearest neighbour.
        include_self: bool,
    },
    /// k nearest nodes by feature distance (ViG).
    FeatureKnn(KnnOptions),
    /// A graph with a global (class-token) node 0 linked both ways to every other node; the
    /// inner tag describes the other nodes (shifted by one).
    WithGlobal(Box<Topology>),
    /// Random edges.
    Random {
        /// Edges per destination.
        degree: usize,
        /// The seed.
        seed: u64,
        /// Whether a node may draw itself.
        self_loops: bool,
    },
    /// BigBird on the patch grid: a centred clipped window plus random sources outside it
    /// ([`Graph::bigbird`](super::Graph::bigbird)).
    BigBird {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Window side (odd).
        window: usize,
        /// Random sources per patch, outside its window.
        random: usize,
        /// The seed.
        seed: u64,
    },
    /// Vision Longformer: a centred clipped window plus global patches linked both ways to all
    /// ([`Graph::longformer`](super::Graph::longformer)).
    Longformer {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Window side (odd).
        window: usize,
        /// Number of global patches.
        globals: usize,
    },
    /// Swin's shifted windows ([`Graph::shifted_window`](super::Graph::shifted_window)); the
    /// size and shift as asked for (before Swin's clipping to a small grid).
    ShiftedWindow {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Window side `M`.
        size: usize,
        /// Shift `s < M`.
        shift: usize,
    },
    /// MaxViT grid attention ([`Graph::grid_attention`](super::Graph::grid_attention)).
    GridAttention {
        /// Patch rows.
        rows: usize,
        /// Patch columns.
        cols: usize,
        /// Grid size `G` (each group is `G x G` patches).
        grid: usize,
    },
    /// Reformer's angular LSH buckets on node features ([`Graph::lsh`](super::Graph::lsh)).
    Lsh(LshOptions),
    /// The edge union of graphs on the same nodes ([`Graph::union`](super::Graph::union)).
    Union(Vec<Topology>),
    /// A disjoint union of these.
    Batch(Vec<Topology>),
    /// Built from user edges (edge list, petgraph, CSR) or edited.
    Custom,
}
