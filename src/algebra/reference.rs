//! The plain reference implementation of the algebra: loops over every destination and its
//! incoming edges, in f64. It is the oracle the sparse and dense kernels are tested against.
//!
//! ```text
//! for each destination i, head h:
//!     s_e  = score(q_i, k_j) + b_e            for each edge e = (j -> i)
//!     m    = max_e s_e                         (no edge, or all -inf: out_i = 0)
//!     a_e  = exp(s_e - m) / sum_e' exp(s_e' - m)
//!     out_i[h] = sum_e a_e v_j[h]
//! ```
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend_reference, AttentionInputs, Score};
//! // Two nodes, one edge 0 -> 1: node 1 gets v_0, node 0 has no incoming edge and gets zeros.
//! let g = Graph::from_edge_index(2, &[0], &[1]).unwrap();
//! let q = Matrix::zeros(2, 1);
//! let v = Matrix::from_vec(2, 1, vec![3.0, 5.0]).unwrap();
//! let out = attend_reference(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&q, &q, &v, 1), true).unwrap();
//! assert_eq!(out.out.as_slice(), &[0.0, 3.0]);
//! assert_eq!(out.weights.unwrap(), vec![1.0]);
//! ```

// Index loops mirror the formulas: this file is read as the definition.
#![allow(clippy::needless_range_loop)]

use super::{AttentionInputs, AttentionOutput, Score};
use crate::error::Result;
use crate::graph::Graph;
use crate::tensor::Matrix;

/// Score of edge `j -> i` for head `h`, in f64.
fn score_f64(score: &Score, h: usize, q: &[f32], k: &[f32]) -> f64 {
    match score {
        Score::Dot { scale } => *scale as f64 * q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
        Score::Gat { negative_slope } => {
            let x = q[0] as f64 + k[0] as f64;
            if x >= 0.0 { x } else { *negative_slope as f64 * x }
        }
        Score::GatV2 { attention, negative_slope } => {
            let d = q.len();
            (0..d)
                .map(|c| {
                    let x = q[c] as f64 + k[c] as f64;
                    let l = if x >= 0.0 { x } else { *negative_slope as f64 * x };
                    attention[h * d + c] as f64 * l
                })
                .sum()
        }
    }
}

/// Runs the algebra with plain loops in f64; `weights` asks for the `[E x H]` attention weights.
pub fn attend_reference(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    weights: bool,
) -> Result<AttentionOutput> {
    let dims = inputs.validate(graph, score)?;
    let (h_count, dk, dv) = (dims.heads, dims.key_dim, dims.value_dim);
    let mut out = Matrix::zeros(dims.nodes, h_count * dv);
    let mut w = if weights { Some(vec![0.0f32; dims.edges * h_count]) } else { None };
    let mut lse = vec![f32::NEG_INFINITY; dims.nodes * h_count];
    for i in 0..dims.nodes {
        let edges = graph.edge_range(i);
        let sources: Vec<usize> = graph.incoming(i).collect();
        for h in 0..h_count {
            let q = &inputs.query.row(i)[h * dk..(h + 1) * dk];
            let s: Vec<f64> = sources
                .iter()
                .zip(edges.clone())
                .map(|(&j, e)| {
                    let k = &inputs.key.row(j)[h * dk..(h + 1) * dk];
                    let b = inputs.bias.map_or(0.0, |b| b[e * h_count + h] as f64);
                    score_f64(score, h, q, k) + b
                })
                .collect();
            // A NaN score makes the max NaN (`f64::max` would skip it), so it reaches every weight.
            let m =
                s.iter().fold(f64::NEG_INFINITY, |m, &x| if x.is_nan() || m.is_nan() { f64::NAN } else { m.max(x) });
            if m == f64::NEG_INFINITY {
                continue; // no incoming edge (or all masked): out_i = 0, weights 0
            }
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            lse[i * h_count + h] = (m + z.ln()) as f32;
            let mut acc = vec![0.0f64; dv];
            for (t, &j) in sources.iter().enumerate() {
                let a = p[t] / z;
                let v = &inputs.value.row(j)[h * dv..(h + 1) * dv];
                for c in 0..dv {
                    acc[c] += a * v[c] as f64;
                }
                if let Some(w) = w.as_mut() {
                    w[(edges.start + t) * h_count + h] = a as f32;
                }
            }
            for c in 0..dv {
                out.row_mut(i)[h * dv + c] = acc[c] as f32;
            }
        }
    }
    Ok(AttentionOutput { out, weights: w, log_sum_exp: lse })
}
