//! Sparse attention over a graph's incoming edges (CSR by destination).
//!
//! ```text
//! for each destination i (rayon over ranges of destinations), head h:
//!     s_t  = score(q_i, k_{j_t}) + b_t        t = 0 .. in_degree(i)      (SDDMM)
//!     p_t  = exp(s_t - max s) / sum exp(...)                              (edge softmax)
//!     out_i[h] = sum_t p_t v_{j_t}[h]                                     (SpMM)
//! ```
//! Each destination is reduced by one thread in its edge order, so the result is the same bits
//! whatever the thread count. A node with no incoming edge (or only `-inf`-masked ones) outputs
//! zeros.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{AttentionInputs, Score};
//! use patchgraph::kernels::sparse::attend_sparse;
//! let g = Graph::from_edge_index(3, &[0, 1], &[2, 2]).unwrap(); // 0 -> 2, 1 -> 2
//! let q = Matrix::zeros(3, 1); // equal scores: node 2 averages v_0 and v_1
//! let v = Matrix::from_vec(3, 1, vec![1.0, 3.0, 7.0]).unwrap();
//! let out = attend_sparse(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&q, &q, &v, 1), false).unwrap();
//! assert_eq!(out.out.as_slice(), &[0.0, 0.0, 2.0]);
//! ```

use crate::attention::{AttentionInputs, AttentionOutput, Dims, Score};
use crate::error::Result;
use crate::graph::Graph;
use crate::tensor::Matrix;
use rayon::prelude::*;

/// Destinations per rayon task.
const CHUNK: usize = 64;

/// Runs the algebra over `graph`'s edges; `weights` asks for the `[E x H]` attention weights.
pub fn attend_sparse(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    weights: bool,
) -> Result<AttentionOutput> {
    let dims = inputs.validate(graph, score)?;
    let cols = dims.heads * dims.value_dim;
    let mut out = Matrix::zeros(dims.nodes, cols);
    let mut w = if weights { vec![0.0f32; dims.edges * dims.heads] } else { Vec::new() };

    // Split the output rows and (if asked) the weight rows into disjoint per-task slices.
    let mut tasks = Vec::with_capacity(dims.nodes.div_ceil(CHUNK));
    let (mut out_rest, mut w_rest) = (out.as_mut_slice(), w.as_mut_slice());
    let mut start = 0;
    while start < dims.nodes {
        let end = (start + CHUNK).min(dims.nodes);
        let (o, orest) = out_rest.split_at_mut((end - start) * cols);
        out_rest = orest;
        let w_len =
            if weights { (graph.edge_range(end - 1).end - graph.edge_range(start).start) * dims.heads } else { 0 };
        let (wt, wrest) = w_rest.split_at_mut(w_len);
        w_rest = wrest;
        tasks.push((start..end, o, wt));
        start = end;
    }
    tasks.into_par_iter().for_each(|(range, o, wt)| {
        let max_degree = range.clone().map(|i| graph.in_degree(i)).max().unwrap_or(0);
        let mut scratch = vec![0.0f32; max_degree];
        let first_edge = graph.edge_range(range.start).start;
        for i in range.clone() {
            let row = &mut o[(i - range.start) * cols..(i - range.start + 1) * cols];
            let edges = graph.edge_range(i);
            let w_row = if weights {
                Some(&mut wt[(edges.start - first_edge) * dims.heads..(edges.end - first_edge) * dims.heads])
            } else {
                None
            };
            destination(graph, score, inputs, &dims, i, row, w_row, &mut scratch[..edges.len()]);
        }
    });
    Ok(AttentionOutput { out, weights: weights.then_some(w) })
}

/// Reduces destination `i` into its output row `[H*dv]` and weight rows `[deg x H]`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn destination(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    dims: &Dims,
    i: usize,
    row: &mut [f32],
    mut w_row: Option<&mut [f32]>,
    s: &mut [f32],
) {
    let (heads, dk, dv) = (dims.heads, dims.key_dim, dims.value_dim);
    let first = graph.edge_range(i).start;
    let q_row = inputs.query.row(i);
    for h in 0..heads {
        let q = &q_row[h * dk..(h + 1) * dk];
        let mut m = f32::NEG_INFINITY;
        for (t, j) in graph.incoming(i).enumerate() {
            let k = &inputs.key.row(j)[h * dk..(h + 1) * dk];
            let b = inputs.bias.map_or(0.0, |b| b[(first + t) * heads + h]);
            s[t] = score.edge(h, q, k) + b;
            m = m.max(s[t]);
        }
        if m == f32::NEG_INFINITY {
            continue; // no incoming edge, or all masked: zeros (row and weights start at 0)
        }
        let mut z = 0.0f32;
        for x in s.iter_mut() {
            *x = (*x - m).exp();
            z += *x;
        }
        let inv = 1.0 / z;
        let acc = &mut row[h * dv..(h + 1) * dv];
        for (t, j) in graph.incoming(i).enumerate() {
            let p = s[t] * inv;
            let v = &inputs.value.row(j)[h * dv..(h + 1) * dv];
            for (a, x) in acc.iter_mut().zip(v) {
                *a += p * x;
            }
            if let Some(w) = w_row.as_deref_mut() {
                w[t * heads + h] = p;
            }
        }
    }
}
