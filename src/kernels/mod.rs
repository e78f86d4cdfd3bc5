//! The fast implementations of the attention algebra.
//!
//! - [`sparse`]: any graph, one pass per destination over its CSR edges, rayon over
//!   destination ranges (deterministic: each destination is reduced by one thread, in edge order).
//! - [`dense`]: complete graphs and batches of them, per (block, head) with faer GEMM.
//!
//! Both agree with [`crate::attention::attend_reference`] to float tolerance (`tests/algebra.rs`).

pub mod dense;
pub mod simd;
pub mod sparse;
