//! Dense attention for complete graphs and batches of them (block-diagonal), with faer GEMM.
//!
//! For each block `b` (nodes `s .. s+m`) and head `h`, with `Q, K, V` the block's rows of that
//! head (`[m x dk]`, `[m x dk]`, `[m x dv]`):
//!
//! ```text
//! S^T = scale * K Q^T                 [m x m], column i = scores of destination i  (GEMM)
//!       (GAT / GATv2 fill S^T entry by entry)
//! S^T[j, i] += b_(j->i);  masked or excluded self-loop entries = -inf
//! P^T = softmax down each column (contiguous in faer's column-major storage)
//! O   = (P^T)^T V                     [m x dv]                                      (GEMM)
//! ```
//!
//! This is the correct first version: it holds one `[m x m]` score matrix per (block, head)
//! task. Tasks run in parallel with rayon, each GEMM sequential (`Par::Seq`), which
//! `KERNEL-FACTS.md` measured to be the better split for attention-sized GEMMs.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{AttentionInputs, Score};
//! use patchgraph::kernels::dense::attend_dense;
//! let g = Graph::complete(2, true);
//! let q = Matrix::zeros(2, 1); // equal scores: each node averages v_0 and v_1
//! let v = Matrix::from_vec(2, 1, vec![1.0, 3.0]).unwrap();
//! let out = attend_dense(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&q, &q, &v, 1), None, false).unwrap();
//! assert_eq!(out.out.as_slice(), &[2.0, 2.0]);
//! ```

use crate::attention::score::leaky_relu;
use crate::attention::{AttentionInputs, AttentionOutput, Score};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

/// Runs the algebra on a complete graph (or a batch of complete graphs) without materialising it.
///
/// `mask`, if given, has one entry per edge of the complete graph in its edge order
/// (destination-major, sources ascending; for one block with self-loops that is the row-major
/// `[N x N]` matrix `mask[i * N + j]` for `j -> i`): `false` drops the edge. A destination
/// whose edges are all dropped outputs zeros. `weights` asks for the `[E x H]` weights.
pub fn attend_dense(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    mask: Option<&[bool]>,
    weights: bool,
) -> Result<AttentionOutput> {
    let Some(self_loops) = graph.complete_self_loops() else {
        return Err(Error::invalid(
            "dense attention graph",
            format!("needs a complete graph or a batch of them, got {:?}", graph.topology()),
        ));
    };
    let dims = inputs.validate(graph, score)?;
    if let Some(mask) = mask {
        if mask.len() != dims.edges {
            return Err(Error::shape(
                "dense attention mask",
                format!("{} entries (one per edge)", dims.edges),
                format!("{} entries", mask.len()),
            ));
        }
    }
    let (heads, dk, dv) = (dims.heads, dims.key_dim, dims.value_dim);
    let blocks = graph.blocks();
    // Edge id of the first edge of each block.
    let mut block_edge = vec![0usize; blocks.len()];
    for b in 0..blocks.len() - 1 {
        let m = blocks[b + 1] - blocks[b];
        block_edge[b + 1] = block_edge[b] + if self_loops { m * m } else { m * m.saturating_sub(1) };
    }

    let tasks: Vec<(usize, usize)> = (0..blocks.len() - 1).flat_map(|b| (0..heads).map(move |h| (b, h))).collect();
    let results: Vec<(Mat<f32>, Mat<f32>)> = tasks
        .par_iter()
        .map(|&(b, h)| {
            let (s0, m) = (blocks[b], blocks[b + 1] - blocks[b]);
            let q = inputs.query.as_faer().submatrix(s0, h * dk, m, dk);
            let k = inputs.key.as_faer().submatrix(s0, h * dk, m, dk);
            let v = inputs.value.as_faer().submatrix(s0, h * dv, m, dv);
            let mut st = Mat::<f32>::zeros(m, m);
            match score {
                // S^T = scale * K Q^T
                Score::Dot { scale } => matmul(st.as_mut(), Accum::Replace, k, q.transpose(), *scale, Par::Seq),
                Score::Gat { negative_slope } => {
                    for i in 0..m {
                        let col = st.col_as_slice_mut(i);
                        for (j, x) in col.iter_mut().enumerate() {
                            *x = leaky_relu(q[(i, 0)] + k[(j, 0)], *negative_slope);
                        }
                    }
                }
                Score::GatV2 { .. } => {
                    for i in 0..m {
                        let qi = &inputs.query.row(s0 + i)[h * dk..(h + 1) * dk];
                        let col = st.col_as_slice_mut(i);
                        for (j, x) in col.iter_mut().enumerate() {
                            let kj = &inputs.key.row(s0 + j)[h * dk..(h + 1) * dk];
                            *x = score.edge(h, qi, kj);
                        }
                    }
                }
            }
            let deg = if self_loops { m } else { m.saturating_sub(1) };
            for i in 0..m {
                let col = st.col_as_slice_mut(i);
                let first = block_edge[b] + i * deg;
                let mut mx = f32::NEG_INFINITY;
                for (j, x) in col.iter_mut().enumerate() {
                    if !self_loops && j == i {
                        *x = f32::NEG_INFINITY;
                        continue;
                    }
                    let e = first + if self_loops || j < i { j } else { j - 1 };
                    if let Some(bias) = inputs.bias {
                        *x += bias[e * heads + h];
                    }
                    if mask.is_some_and(|mask| !mask[e]) {
                        *x = f32::NEG_INFINITY;
                    }
                    mx = mx.max(*x);
                }
                if mx == f32::NEG_INFINITY {
                    col.fill(0.0); // no edge left: zero weights, zero output
                    continue;
                }
                let mut z = 0.0f32;
                for x in col.iter_mut() {
                    *x = (*x - mx).exp();
                    z += *x;
                }
                let inv = 1.0 / z;
                for x in col.iter_mut() {
                    *x *= inv;
                }
            }
            // O = P V with P = (S^T)^T
            let mut o = Mat::<f32>::zeros(m, dv);
            matmul(o.as_mut(), Accum::Replace, st.transpose(), v, 1.0, Par::Seq);
            (o, if weights { st } else { Mat::zeros(0, 0) })
        })
        .collect();

    let mut out = Matrix::zeros(dims.nodes, heads * dv);
    let mut w = if weights { vec![0.0f32; dims.edges * heads] } else { Vec::new() };
    for (&(b, h), (o, p)) in tasks.iter().zip(&results) {
        let (s0, m) = (blocks[b], blocks[b + 1] - blocks[b]);
        for i in 0..m {
            let row = out.row_mut(s0 + i);
            for c in 0..dv {
                row[h * dv + c] = o[(i, c)];
            }
        }
        if weights {
            let deg = if self_loops { m } else { m.saturating_sub(1) };
            for i in 0..m {
                let first = block_edge[b] + i * deg;
                let mut t = 0;
                for j in 0..m {
                    if self_loops || j != i {
                        w[(first + t) * heads + h] = p[(j, i)];
                        t += 1;
                    }
                }
            }
        }
    }
    Ok(AttentionOutput { out, weights: weights.then_some(w) })
}
