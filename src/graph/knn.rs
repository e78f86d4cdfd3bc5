//! Feature k-NN graphs (ViG-style, dilated).

/// Distance used by feature k-NN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    /// Euclidean distance.
    L2,
    /// Cosine distance `1 - cos(x_i, x_j)`.
    Cosine,
}

/// Options of [`Graph::feature_knn`](super::Graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KnnOptions {
    /// Neighbours kept per node.
    pub k: usize,
    /// ViG dilation `d`: take the `k * d` nearest, keep every `d`-th.
    pub dilation: usize,
    /// The distance.
    pub metric: Metric,
    /// Whether a node counts as its own nearest neighbour (ViG: yes).
    pub include_self: bool,
}
