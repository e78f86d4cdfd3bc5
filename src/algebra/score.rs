//! `Score`: how an edge `j -> i` is scored, per head.
//!
//! | variant | score `s_ij` (head h) | `query` rows | `key` rows |
//! |---|---|---|---|
//! | [`Score::Dot`] | `scale * q_i . k_j` | `q_i` `[H*dk]` | `k_j` `[H*dk]` |
//! | [`Score::Gat`] | `LeakyReLU(q_i + k_j)` | `a_dst . W h_i` `[H]` | `a_src . W h_j` `[H]` |
//! | [`Score::GatV2`] | `a_h . LeakyReLU(q_i + k_j)` | `W_r h_i` `[H*d]` | `W_l h_j` `[H*d]` |
//!
//! Any of them may add a per-edge bias `b_ij` (Swin's relative position bias, ViG's relative
//! distance, a mask as `-inf`): `s_ij += b_ij`.
//!
//! ```
//! use patchgraph::attention::Score;
//! let dot = Score::Dot { scale: 0.125 };
//! // one head, dk = 2: 0.125 * (1*3 + 2*4)
//! assert_eq!(dot.edge(0, &[1.0, 2.0], &[3.0, 4.0]), 0.125 * 11.0);
//! let gat = Score::Gat { negative_slope: 0.2 };
//! assert_eq!(gat.edge(0, &[-2.0], &[1.0]), -0.2);
//! ```

/// How an edge is scored (see the module table).
#[derive(Clone, Debug, PartialEq)]
pub enum Score {
    /// Scaled dot product, `scale * q_i . k_j` (transformers: `scale = 1 / sqrt(dk)`).
    Dot {
        /// Multiplies the dot product.
        scale: f32,
    },
    /// GAT (Velickovic et al. 2018): `LeakyReLU(q_i + k_j)` with one scalar per node and head.
    Gat {
        /// Slope of LeakyReLU for negative inputs (PyG default 0.2).
        negative_slope: f32,
    },
    /// GATv2 (Brody et al. 2022): `a_h . LeakyReLU(q_i + k_j)`.
    GatV2 {
        /// The attention vector `a`, `[H * d]`, head h owning `h*d .. (h+1)*d`.
        attention: Vec<f32>,
        /// Slope of LeakyReLU for negative inputs (PyG default 0.2).
        negative_slope: f32,
    },
}

/// `LeakyReLU(x) = x` for `x >= 0`, `slope * x` otherwise.
#[inline(always)]
pub fn leaky_relu(x: f32, slope: f32) -> f32 {
    if x >= 0.0 { x } else { slope * x }
}

impl Score {
    /// Score of one edge for head `h`: `q` and `k` are the head's slices of `q_i` and `k_j`
    /// (`[dk]` each; `[1]` for GAT).
    #[inline]
    pub fn edge(&self, h: usize, q: &[f32], k: &[f32]) -> f32 {
        match self {
            Score::Dot { scale } => scale * crate::kernels::simd::dot_scalar(q, k),
            Score::Gat { negative_slope } => leaky_relu(q[0] + k[0], *negative_slope),
            Score::GatV2 { attention, negative_slope } => {
                let a = &attention[h * q.len()..(h + 1) * q.len()];
                let mut s = 0.0;
                for c in 0..q.len() {
                    s += a[c] * leaky_relu(q[c] + k[c], *negative_slope);
                }
                s
            }
        }
    }

    /// A short name for messages and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Score::Dot { .. } => "dot-product",
            Score::Gat { .. } => "GAT",
            Score::GatV2 { .. } => "GATv2",
        }
    }
}
