//! # patchgraph
//!
//! Vision Transformers and graph attention networks as one message-passing algebra over patch
//! graphs. An image is a graph whose nodes are its patches; ViT self-attention is graph attention
//! on the complete graph with self-loops and a scaled-dot-product score:
//!
//! ```text
//! for each destination node i:
//!     s_ij  = score(q_i, k_j [, b_ij])      for each incoming edge j -> i
//!     a_ij  = softmax over i's incoming edges
//!     out_i = sum_j a_ij v_j
//! ```
//!
//! See `notes/architecture.md` for how the modules fit together.

#![warn(missing_docs)]

pub mod algebra;
pub mod atomic_file;
pub mod attention;
pub mod attention_map;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod graph;
pub mod image;
pub mod infer;
pub mod kernels;
pub mod limits;
pub mod nn;
pub mod tensor;
pub mod train;
pub mod viz;

pub use error::{Error, Result};
pub use graph::{Graph, Topology};
pub use tensor::{ColumnBlock, Matrix};

/// The README's code, compiled and run as a doctest so that it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
