//! The fast implementations of the attention algebra.
//!
//! - [`sparse`]: any graph, fused per destination over its CSR edges (scores, edge softmax,
//!   weighted sum), rayon over destination ranges balanced by edge count (deterministic: each
//!   destination is reduced by one thread, in edge order).
//! - [`hub`]: the rows of destinations with thousands of incoming edges (a class token joined
//!   to every patch), cut into fixed edge segments reduced in parallel and merged in order.
//! - [`dense`]: complete graphs and batches of them, per (block, head, query tile), key/value
//!   tiles streamed with an online softmax, score and output tiles by faer GEMM; O(N d) memory.
//! - [`finite_check`]: the inputs' NaN/inf check, run by those kernels' tasks on the rows each
//!   reads, when the caller asks for it ([`crate::attention::AttentionInputs::checked`]).
//! - [`gemm`]: the linear layers' GEMM `y (+)= x w^T`, parallel over fixed column blocks.
//! - [`simd`]: the vector primitives both use (pulp, runtime AVX-512 / AVX2+FMA / scalar
//!   dispatch), each beside its scalar reference.
//!
//! Both agree with [`crate::attention::attend_reference`] to float tolerance (`tests/algebra.rs`).
//!
//! ```
//! use patchgraph::kernels::simd;
//! let mut row = [1.0f32, 2.0, 3.0];
//! let z = simd::exp_sub_sum(&mut row, 3.0); // softmax numerators and their sum
//! assert!((z - (1.0 + (-1f32).exp() + (-2f32).exp())).abs() < 1e-6);
//! ```

pub mod dense;
pub(crate) mod disjoint;
pub mod favor;
pub mod finite_check;
pub mod gemm;
pub mod hub;
pub mod linformer;
pub mod nystrom;
pub mod simd;
pub mod sparse;
