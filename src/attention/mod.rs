//! The one attention algebra: score every incoming edge, softmax over each destination's
//! incoming edges, sum the weighted messages.
//!
//! ```text
//! s_ij  = score(q_i, k_j) + b_ij      [E x H]       (SDDMM)
//! a_ij  = softmax_{j -> i} s_ij       [E x H]       (edge softmax, max-subtracted)
//! out_i = sum_{j -> i} a_ij v_j       [N x H*dv]    (SpMM)
//! ```
//!
//! ViT self-attention is this on the complete graph with self-loops and [`Score::Dot`] with
//! `scale = 1/sqrt(d)`; GAT is [`Score::Gat`]; GATv2 is [`Score::GatV2`]. Three
//! implementations agree to float tolerance: [`attend_reference`] (plain f64 loops, the oracle),
//! [`crate::kernels::sparse`] (CSR, rayon over destinations) and [`crate::kernels::dense`]
//! (complete graphs, faer GEMM). [`attend`] picks one.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend, AttentionInputs, Path, Score};
//! let x = Matrix::from_fn(5, 8, |i, j| ((i * 8 + j) as f32).sin());
//! let inputs = AttentionInputs::new(&x, &x, &x, 2); // 2 heads of width 4
//! let score = Score::Dot { scale: 0.5 };
//! let g = Graph::complete(5, true);
//! let fast = attend(&g, &score, &inputs, Path::Auto, true).unwrap();
//! let oracle = attend(&g, &score, &inputs, Path::Reference, true).unwrap();
//! assert!(fast.out.max_abs_diff(&oracle.out) < 1e-5);
//! ```

mod backward;
mod dispatch;
pub mod linformer;
pub mod low_rank;
pub mod nystrom;
pub mod performer;

pub use backward::{AttentionGrads, attend_backward, attend_backward_qkv, attend_backward_reference};
pub use dispatch::{
    DENSE_DENSITY, DENSE_DENSITY_LARGE, DENSE_DENSITY_LARGE_N, DENSE_DENSITY_SMALL_N, Path, attend, auto_path,
    dense_density,
};
// The problem's types live in `crate::algebra`, below the kernels; re-exported here.
pub use crate::algebra::{AttentionInputs, AttentionOutput, Dims, Score, attend_reference, leaky_relu};
