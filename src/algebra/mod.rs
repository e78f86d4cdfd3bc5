//! The attention algebra's problem: what every implementation is given and returns, and the
//! plain definition they all answer to.
//!
//! ```text
//! s_ij  = score(q_i, k_j) + b_ij      [E x H]       (SDDMM)        Score
//! a_ij  = softmax_{j -> i} s_ij       [E x H]       (edge softmax)
//! out_i = sum_{j -> i} a_ij v_j       [N x H*dv]    (SpMM)         AttentionInputs -> AttentionOutput
//! ```
//!
//! The layering: [`crate::kernels`] (the fast implementations) depend on this module and on
//! nothing above it; [`crate::attention`] (the dispatch, the backward, the low-rank methods'
//! references) depends on both and re-exports these types, so `patchgraph::attention::Score`
//! and `patchgraph::algebra::Score` are the same type. [`attend_reference`] is the f64 oracle
//! every kernel is tested against; [`float64`] is the same definition on `f64` inputs (forward and
//! backward, for gradient checks); [`landmarks`] holds Nyström's landmark layouts and call sizes.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::algebra::{AttentionInputs, Score, attend_reference};
//! let x = Matrix::from_fn(3, 2, |i, j| (i + j) as f32);
//! let out = attend_reference(&Graph::complete(3, true), &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&x, &x, &x, 1), false).unwrap();
//! assert_eq!(out.out.shape(), (3, 2));
//! ```

pub mod float64;
mod inputs;
pub mod landmarks;
mod reference;
mod score;

pub use inputs::{AttentionInputs, AttentionOutput, Dims};
pub use reference::attend_reference;
pub use score::{Score, leaky_relu};
