//! Graph builders over an `rows x cols` patch grid: grid neighbourhoods, local windows,
//! spatial k-NN, the global (class-token) node, random graphs and self-loop edits.
//!
//! (Filled in by the graph-builders work; see the module docs of each builder.)

/// Which cells count as neighbours on the patch grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Neighbourhood {
    /// Manhattan distance `|dr| + |dc| <= radius` (radius 1: the 4-neighbourhood).
    Four,
    /// Chebyshev distance `max(|dr|, |dc|) <= radius` (radius 1: the 8-neighbourhood).
    Eight,
}

/// Which local-window rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WindowKind {
    /// Swin: the grid is cut into non-overlapping `size x size` windows; every node attends to
    /// every node of its own window.
    Partition,
    /// NAT: every node attends to the `size x size` neighbourhood around it, shifted inward at
    /// the borders so every node has exactly `size^2` neighbours.
    Sliding,
}
