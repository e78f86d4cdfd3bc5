//! The backward of the algebra: given `dout = dL/dout [N x H*dv]`, the gradients of the query,
//! key and value rows, of the edge bias and of GATv2's attention vector.
//!
//! ```text
//! forward (per destination i, head h, edge e = j -> i):   s_e = score(q_i, k_j) + b_e
//!                                                          p_e = exp(s_e - lse_i)
//!                                                          out_i = sum_e p_e v_j
//! backward:  dv_j += p_e dout_i                            (out_i = sum_e p_e v_j)
//!            dp_e  = dout_i . v_j
//!            ds_e  = p_e (dp_e - sum_e' p_e' dp_e')        (edge softmax)
//!            db_e  = ds_e                                  (s_e = ... + b_e)
//!            Dot:   dq_i += scale ds_e k_j,  dk_j += scale ds_e q_i
//!            GAT:   z = q_i + k_j,  dq_i += ds_e lrelu'(z),  dk_j += ds_e lrelu'(z)
//!            GATv2: z = q_i + k_j,  dz = ds_e a * lrelu'(z),  dq_i += dz,  dk_j += dz,
//!                   da += ds_e lrelu(z)
//! ```
//!
//! [`attend_backward`] sends complete graphs with self-loops (dot score, no bias) to a dense
//! backward, GEMMs per (block, head) with the probabilities recomputed from the forward's
//! log-sum-exp; every other graph to two parallel edge passes, each deterministic: per
//! destination (probabilities, `ds`, `dq`), then per source over its outgoing edges in edge
//! order (`dk`, `dv`). [`attend_backward_reference`] is the f64 oracle.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend_backward, attend_reference, AttentionInputs, Score};
//! let g = Graph::from_edge_index(2, &[0, 1], &[1, 1]).unwrap(); // node 1 attends to 0 and 1
//! let q = Matrix::from_vec(2, 1, vec![1.0, 2.0]).unwrap();
//! let v = Matrix::from_vec(2, 1, vec![3.0, 5.0]).unwrap();
//! let inputs = AttentionInputs::new(&q, &q, &v, 1);
//! let score = Score::Dot { scale: 1.0 };
//! let out = attend_reference(&g, &score, &inputs, false).unwrap();
//! let dout = Matrix::from_vec(2, 1, vec![0.0, 1.0]).unwrap();
//! let grads = attend_backward(&g, &score, &inputs, &out.log_sum_exp, &dout).unwrap();
//! // d out_1 / d v_j = p_j: the two weights, summing to one
//! assert!((grads.value.get(0, 0) + grads.value.get(1, 0) - 1.0).abs() < 1e-6);
//! ```

// Index loops mirror the formulas.
#![allow(clippy::needless_range_loop)]

use super::{AttentionInputs, Score};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels::disjoint::DisjointMut;
use crate::kernels::finite_check::FiniteCheck;
use crate::kernels::simd;
use crate::tensor::{ColumnBlock, Matrix};
use rayon::prelude::*;

/// Gradients of one attention call (shapes as the inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGrads {
    /// `dL/dquery` `[N x H*dk]`.
    pub query: Matrix,
    /// `dL/dkey` `[N x H*dk]`.
    pub key: Matrix,
    /// `dL/dvalue` `[N x H*dv]`.
    pub value: Matrix,
    /// `dL/dbias` `[E x H]` (the edge-softmax gradient `ds`) when the inputs had a bias; empty
    /// otherwise.
    pub bias: Vec<f32>,
    /// `dL/da` `[H*d]` for [`Score::GatV2`], empty otherwise.
    pub attention: Vec<f32>,
}

/// Destinations per task of the first pass (fixed: the same partial sums on any thread count).
const NODES_PER_TASK: usize = 64;

/// `lrelu'(z)`.
fn lrelu_grad(z: f32, slope: f32) -> f32 {
    if z >= 0.0 { 1.0 } else { slope }
}

/// The fast backward. `log_sum_exp` `[N x H]` is the forward's ([`super::AttentionOutput`]).
/// Complete graphs with self-loops (ViT batches) and the dot score without a bias go to the
/// dense backward (GEMMs per block and head); everything else to the two edge passes.
pub fn attend_backward<'d>(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    log_sum_exp: &[f32],
    dout: impl Into<ColumnBlock<'d>>,
) -> Result<AttentionGrads> {
    let dout = dout.into();
    match (graph.complete_self_loops(), score, inputs.bias) {
        (Some(true), Score::Dot { scale }, None) => {
            let dims = inputs.validate(graph, score)?;
            let (n, h, dk, dv) = (dims.nodes, dims.heads, dims.key_dim, dims.value_dim);
            let (mut dq, mut dkm, mut dvm) =
                (Matrix::zeros(n, h * dk), Matrix::zeros(n, h * dk), Matrix::zeros(n, h * dv));
            let outs = DenseOut {
                query: (SharedMut(dq.as_mut_slice().as_mut_ptr()), h * dk),
                key: (SharedMut(dkm.as_mut_slice().as_mut_ptr()), h * dk),
                value: (SharedMut(dvm.as_mut_slice().as_mut_ptr()), h * dv),
            };
            dense_backward(graph, *scale, inputs, log_sum_exp, dout, &outs)?;
            Ok(AttentionGrads { query: dq, key: dkm, value: dvm, bias: Vec::new(), attention: Vec::new() })
        }
        _ => sparse_backward(graph, score, inputs, log_sum_exp, dout),
    }
}

/// [`attend_backward`]'s `dq`, `dk`, `dv` side by side, `[N x (2 H dk + H dv)]`: the layout
/// of a fused `qkv` projection's output, so that its backward reads the gradient without
/// another copy (the dense path writes straight into it). The edge-bias and GATv2
/// attention-vector gradients are not returned: [`attend_backward`] has them.
pub fn attend_backward_qkv<'d>(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    log_sum_exp: &[f32],
    dout: impl Into<ColumnBlock<'d>>,
) -> Result<Matrix> {
    let dout = dout.into();
    let dims = inputs.validate(graph, score)?;
    let (n, h, dk, dv) = (dims.nodes, dims.heads, dims.key_dim, dims.value_dim);
    let width = 2 * h * dk + h * dv;
    let mut dqkv = Matrix::zeros(n, width);
    match (graph.complete_self_loops(), score, inputs.bias) {
        (Some(true), Score::Dot { scale }, None) => {
            let base = dqkv.as_mut_slice().as_mut_ptr();
            // dq, dk, dv: columns 0, h dk and 2 h dk of the same `[n x width]` buffer.
            let outs = DenseOut {
                query: (SharedMut(base), width),
                key: (SharedMut(base.wrapping_add(h * dk)), width),
                value: (SharedMut(base.wrapping_add(2 * h * dk)), width),
            };
            dense_backward(graph, *scale, inputs, log_sum_exp, dout, &outs)?;
        }
        _ => {
            let g = sparse_backward(graph, score, inputs, log_sum_exp, dout)?;
            for i in 0..n {
                let row = dqkv.row_mut(i);
                row[..h * dk].copy_from_slice(g.query.row(i));
                row[h * dk..2 * h * dk].copy_from_slice(g.key.row(i));
                row[2 * h * dk..].copy_from_slice(g.value.row(i));
            }
        }
    }
    Ok(dqkv)
}

/// A raw pointer that the dense backward's tasks write through at disjoint (block, head) tiles.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only dereferenced by `dense_backward`'s tasks, each inside its own (block, head)
// tile, while the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
// SAFETY: as above: concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut {}

/// Where [`dense_backward`] writes: for each of `dq`, `dk`, `dv` the first element of a live
/// row-major buffer of `N` rows and its row stride; head `h` of node `i` goes to columns
/// `h * d .. (h + 1) * d` of row `i`.
struct DenseOut {
    query: (SharedMut, usize),
    key: (SharedMut, usize),
    value: (SharedMut, usize),
}

/// Dense backward for complete blocks with self-loops, dot score, no bias; per (block, head),
/// FlashAttention's backward with the probabilities recomputed from the log-sum-exp:
///
/// ```text
/// S = scale Q K^T,  P = exp(S - lse) (rows renormalised)      [m x m], held transposed
/// dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP))
/// dQ = scale dS K,  dK = scale dS^T Q
/// ```
///
/// Each task writes its `dq`, `dk`, `dv` rows straight into `out` (its own tile: rows of its
/// block, columns of its head); the two `[m x m]` scratch matrices are per task.
fn dense_backward(
    graph: &Graph,
    scale: f32,
    inputs: &AttentionInputs<'_>,
    log_sum_exp: &[f32],
    dout: ColumnBlock<'_>,
    out: &DenseOut,
) -> Result<()> {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Mat, MatMut, Par};
    let dims = inputs.validate(graph, &Score::Dot { scale })?;
    let (n, h_count, dk, dv) = (dims.nodes, dims.heads, dims.key_dim, dims.value_dim);
    dout.expect_shape("attention backward dout", n, h_count * dv)?;
    if log_sum_exp.len() != n * h_count {
        return Err(Error::shape(
            "attention log-sum-exp",
            format!("[{n} x {h_count}]"),
            format!("{}", log_sum_exp.len()),
        ));
    }
    let blocks = graph.blocks();
    let (q, k, v) = (inputs.query.as_faer(), inputs.key.as_faer(), inputs.value.as_faer());
    let g = dout.as_faer();
    let check = FiniteCheck::of(inputs).map(|c| c.and("dout", dout));
    let tasks = blocks.len().saturating_sub(1) * h_count;
    (0..tasks).into_par_iter().for_each(|t| {
        let (b, h) = (t / h_count, t % h_count);
        let (base, m) = (blocks[b], blocks[b + 1] - blocks[b]);
        if let Some(check) = &check {
            check.share(base..base + m, h, h_count); // the block's H tasks share its whole rows
        }
        let qb = q.submatrix(base, h * dk, m, dk);
        let kb = k.submatrix(base, h * dk, m, dk);
        let vb = v.submatrix(base, h * dv, m, dv);
        let gb = g.submatrix(base, h * dv, m, dv);
        let tile = |(ptr, stride): &(SharedMut, usize), d: usize| {
            // SAFETY: `ptr` is the first element of a live row-major buffer of `n` rows with row
            // stride `stride >= h_count * d` (see `DenseOut`), borrowed mutably by the caller
            // for this whole call. This task's tile, rows `base .. base + m <= n` x columns
            // `h * d .. (h + 1) * d <= stride`, lies inside it, and no other task's tile (other
            // block: other rows; other head: other columns) overlaps it.
            unsafe { MatMut::from_raw_parts_mut(ptr.0.add(base * stride + h * d), m, d, *stride as isize, 1) }
        };
        // Transposed, so that one query's row is one contiguous column (faer is column-major):
        // Pt = S^T = scale K Q^T ; column i: exp(S_i. - lse_i), renormalised
        let mut pt = Mat::<f32>::zeros(m, m);
        matmul(pt.as_mut(), Accum::Replace, kb, qb.transpose(), scale, Par::Seq);
        for i in 0..m {
            let col = pt.col_as_slice_mut(i);
            let sum = simd::exp_sub_sum(col, log_sum_exp[(base + i) * h_count + h]);
            simd::scale(col, if sum > 0.0 { 1.0 / sum } else { 0.0 });
        }
        // dV = P^T dO = Pt dO
        matmul(tile(&out.value, dv), Accum::Replace, pt.as_ref(), gb, 1.0, Par::Seq);
        // dPt = V dO^T ; dSt = Pt * (dPt - colsum(Pt * dPt))
        let mut dst = Mat::<f32>::zeros(m, m);
        matmul(dst.as_mut(), Accum::Replace, vb, gb.transpose(), 1.0, Par::Seq);
        for i in 0..m {
            let p_col = pt.col_as_slice(i);
            let d = simd::dot(p_col, dst.col_as_slice(i));
            for (x, p) in dst.col_as_slice_mut(i).iter_mut().zip(p_col) {
                *x = p * (*x - d);
            }
        }
        // dQ = scale dS K = scale dSt^T K ; dK = scale dS^T Q = scale dSt Q
        matmul(tile(&out.query, dk), Accum::Replace, dst.as_ref().transpose(), kb, scale, Par::Seq);
        matmul(tile(&out.key, dk), Accum::Replace, dst.as_ref(), qb, scale, Par::Seq);
    });
    check.map_or(Ok(()), FiniteCheck::finish) // a non-finite input: the gradients are dropped
}

/// The two edge passes (any graph, any score, with or without a bias).
fn sparse_backward(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    log_sum_exp: &[f32],
    dout: ColumnBlock<'_>,
) -> Result<AttentionGrads> {
    let dims = inputs.validate(graph, score)?;
    let (n, h_count, dk, dv, e_count) = (dims.nodes, dims.heads, dims.key_dim, dims.value_dim, dims.edges);
    dout.expect_shape("attention backward dout", n, h_count * dv)?;
    if log_sum_exp.len() != n * h_count {
        return Err(Error::shape(
            "attention log-sum-exp",
            format!("[{n} x {h_count}]"),
            format!("{}", log_sum_exp.len()),
        ));
    }
    let (q, k, v) = (inputs.query, inputs.key, inputs.value);
    let mut p_all = vec![0.0f32; e_count * h_count];
    let mut ds_all = vec![0.0f32; e_count * h_count];
    let mut dq = Matrix::zeros(n, h_count * dk);
    let att_len = if let Score::GatV2 { attention, .. } = score { attention.len() } else { 0 };
    // Destinations and sources are visited in the graph's visiting order when it has one
    // (same arithmetic per node, better locality), else 0, 1, ..., N - 1.
    let order = graph.visit_order();
    let node = |p: usize| order.map_or(p, |o| o[p] as usize);
    // Pass 1, per destination: p, ds (stored per edge), dq_i, and GATv2's da per task of
    // NODES_PER_TASK consecutive positions (fixed tasks: the same partial sums on any thread count).
    let tasks: Vec<(usize, usize)> = (0..n).step_by(NODES_PER_TASK).map(|a| (a, (a + NODES_PER_TASK).min(n))).collect();
    // Asked for: each pass-1 task checks its destinations' rows of q, k, v and dout (the
    // tasks cover every position once).
    let check = FiniteCheck::of(inputs).map(|c| c.and("dout", dout));
    let da_parts: Vec<Vec<f64>> = {
        let (p_view, ds_view) = (DisjointMut::new(&mut p_all), DisjointMut::new(&mut ds_all));
        let dq_view = DisjointMut::new(dq.as_mut_slice());
        tasks
            .into_par_iter()
            .map(|(a, b)| {
                if let Some(check) = &check {
                    check.rows((a..b).map(node));
                }
                let mut da = vec![0.0f64; att_len];
                let mut dp = Vec::new();
                for i in (a..b).map(node) {
                    let range = graph.edge_range(i);
                    let e0 = range.start;
                    // SAFETY: destination i's rows (its edges' p and ds, its dq row); the visiting
                    // order is a permutation, so no other task touches them.
                    let (p_c, ds_c, dq_i) = unsafe {
                        (
                            p_view.span(e0 * h_count, range.len() * h_count),
                            ds_view.span(e0 * h_count, range.len() * h_count),
                            dq_view.span(i * h_count * dk, h_count * dk),
                        )
                    };
                    for h in 0..h_count {
                        let lse = log_sum_exp[i * h_count + h];
                        if lse == f32::NEG_INFINITY {
                            continue; // no incoming edge, or all masked: out_i = 0, no gradient
                        }
                        let qi = &q.row(i)[h * dk..(h + 1) * dk];
                        let gi = &dout.row(i)[h * dv..(h + 1) * dv];
                        // p_e = exp(s_e - lse), renormalised to sum to 1 (the recomputed f32
                        // scores differ from the forward's in the last bits; with one edge p = 1
                        // exactly, so ds = 0 exactly), dp_e = dout_i . v_j, D = sum p_e dp_e
                        dp.clear();
                        let mut psum = 0.0f32;
                        for (e, j) in range.clone().zip(graph.incoming(i)) {
                            let s = score.edge(h, qi, &k.row(j)[h * dk..(h + 1) * dk])
                                + inputs.bias.map_or(0.0, |bias| bias[e * h_count + h]);
                            let p = (s - lse).exp();
                            let d: f32 = gi.iter().zip(&v.row(j)[h * dv..(h + 1) * dv]).map(|(x, y)| x * y).sum();
                            p_c[(e - e0) * h_count + h] = p;
                            psum += p;
                            dp.push(d);
                        }
                        let mut dsum = 0.0f32;
                        for (t, e) in range.clone().enumerate() {
                            let p = &mut p_c[(e - e0) * h_count + h];
                            *p /= psum;
                            dsum += *p * dp[t];
                        }
                        for (t, (e, j)) in range.clone().zip(graph.incoming(i)).enumerate() {
                            let p = p_c[(e - e0) * h_count + h];
                            let ds = p * (dp[t] - dsum);
                            ds_c[(e - e0) * h_count + h] = ds;
                            let kj = &k.row(j)[h * dk..(h + 1) * dk];
                            let dqh = &mut dq_i[h * dk..(h + 1) * dk];
                            match score {
                                Score::Dot { scale } => {
                                    for c in 0..dk {
                                        dqh[c] += scale * ds * kj[c];
                                    }
                                }
                                Score::Gat { negative_slope } => {
                                    dqh[0] += ds * lrelu_grad(qi[0] + kj[0], *negative_slope)
                                }
                                Score::GatV2 { attention, negative_slope } => {
                                    for c in 0..dk {
                                        let z = qi[c] + kj[c];
                                        dqh[c] += ds * attention[h * dk + c] * lrelu_grad(z, *negative_slope);
                                        da[h * dk + c] += (ds * super::leaky_relu(z, *negative_slope)) as f64;
                                    }
                                }
                            }
                        }
                    }
                }
                da
            })
            .collect()
    };
    let mut attention = vec![0.0f32; att_len];
    for c in 0..att_len {
        attention[c] = da_parts.iter().map(|part| part[c]).sum::<f64>() as f32;
    }
    // Pass 2, per source j over its outgoing edges (edge order): dk_j, dv_j.
    let (out_offsets, out_edges) = outgoing(graph);
    let mut dk_m = Matrix::zeros(n, h_count * dk);
    let mut dv_m = Matrix::zeros(n, h_count * dv);
    let (dk_view, dv_view) = (DisjointMut::new(dk_m.as_mut_slice()), DisjointMut::new(dv_m.as_mut_slice()));
    (0..n).into_par_iter().with_min_len(NODES_PER_TASK).for_each(|p| {
        let j = node(p);
        // SAFETY: source j's rows; the visiting order is a permutation, so no other task
        // touches them.
        let (dk_j, dv_j) =
            unsafe { (dk_view.span(j * h_count * dk, h_count * dk), dv_view.span(j * h_count * dv, h_count * dv)) };
        let kj_all = k.row(j);
        for &(e, i) in &out_edges[out_offsets[j]..out_offsets[j + 1]] {
            let (e, i) = (e as usize, i as usize);
            for h in 0..h_count {
                let p = p_all[e * h_count + h];
                let ds = ds_all[e * h_count + h];
                let gi = &dout.row(i)[h * dv..(h + 1) * dv];
                for c in 0..dv {
                    dv_j[h * dv + c] += p * gi[c];
                }
                let qi = &q.row(i)[h * dk..(h + 1) * dk];
                let kj = &kj_all[h * dk..(h + 1) * dk];
                match score {
                    Score::Dot { scale } => {
                        for c in 0..dk {
                            dk_j[h * dk + c] += scale * ds * qi[c];
                        }
                    }
                    Score::Gat { negative_slope } => dk_j[h] += ds * lrelu_grad(qi[0] + kj[0], *negative_slope),
                    Score::GatV2 { attention, negative_slope } => {
                        for c in 0..dk {
                            dk_j[h * dk + c] += ds * attention[h * dk + c] * lrelu_grad(qi[c] + kj[c], *negative_slope);
                        }
                    }
                }
            }
        }
    });
    if let Some(check) = check {
        check.finish()?; // a non-finite input: the gradients are dropped
    }
    let bias = if inputs.bias.is_some() { ds_all } else { Vec::new() };
    Ok(AttentionGrads { query: dq, key: dk_m, value: dv_m, bias, attention })
}

/// Outgoing edges per source, as `(edge id, destination)` in edge-id order (a counting sort of
/// the incoming lists): `offsets [N + 1]`, `edges [E]`.
fn outgoing(graph: &Graph) -> (Vec<usize>, Vec<(u32, u32)>) {
    let n = graph.num_nodes();
    let mut offsets = vec![0usize; n + 1];
    for i in 0..n {
        for j in graph.incoming(i) {
            offsets[j + 1] += 1;
        }
    }
    for j in 0..n {
        offsets[j + 1] += offsets[j];
    }
    let mut fill = offsets.clone();
    let mut edges = vec![(0u32, 0u32); graph.num_edges()];
    for i in 0..n {
        for (e, j) in graph.edge_range(i).zip(graph.incoming(i)) {
            edges[fill[j]] = (e as u32, i as u32);
            fill[j] += 1;
        }
    }
    (offsets, edges)
}

/// The f64 oracle: every gradient by the formulas of the module docs, with plain loops.
pub fn attend_backward_reference(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    dout: &Matrix,
) -> Result<AttentionGrads> {
    let dims = inputs.validate(graph, score)?;
    let (n, h_count, dk, dv, e_count) = (dims.nodes, dims.heads, dims.key_dim, dims.value_dim, dims.edges);
    dout.expect_shape("attention backward dout", n, h_count * dv)?;
    let (q, k, v) = (inputs.query, inputs.key, inputs.value);
    let mut dq = vec![0.0f64; n * h_count * dk];
    let mut dkk = vec![0.0f64; n * h_count * dk];
    let mut dvv = vec![0.0f64; n * h_count * dv];
    let mut db = vec![0.0f64; e_count * h_count];
    let att: &[f32] = if let Score::GatV2 { attention, .. } = score { attention } else { &[] };
    let mut da = vec![0.0f64; att.len()];
    let slope = match score {
        Score::Gat { negative_slope } | Score::GatV2 { negative_slope, .. } => *negative_slope as f64,
        Score::Dot { .. } => 1.0,
    };
    let lrelu = |z: f64| if z >= 0.0 { z } else { slope * z };
    let dlrelu = |z: f64| if z >= 0.0 { 1.0 } else { slope };
    for i in 0..n {
        let range = graph.edge_range(i);
        let sources: Vec<usize> = graph.incoming(i).collect();
        for h in 0..h_count {
            let qi: Vec<f64> = q.row(i)[h * dk..(h + 1) * dk].iter().map(|&x| x as f64).collect();
            let s: Vec<f64> = sources
                .iter()
                .zip(range.clone())
                .map(|(&j, e)| {
                    let kj = &k.row(j)[h * dk..(h + 1) * dk];
                    let b = inputs.bias.map_or(0.0, |b| b[e * h_count + h] as f64);
                    b + match score {
                        Score::Dot { scale } => *scale as f64 * (0..dk).map(|c| qi[c] * kj[c] as f64).sum::<f64>(),
                        Score::Gat { .. } => lrelu(qi[0] + kj[0] as f64),
                        Score::GatV2 { .. } => {
                            (0..dk).map(|c| att[h * dk + c] as f64 * lrelu(qi[c] + kj[c] as f64)).sum()
                        }
                    }
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            let gi: Vec<f64> = dout.row(i)[h * dv..(h + 1) * dv].iter().map(|&x| x as f64).collect();
            let dp: Vec<f64> =
                sources.iter().map(|&j| (0..dv).map(|c| gi[c] * v.row(j)[h * dv + c] as f64).sum()).collect();
            let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (t, (&j, e)) in sources.iter().zip(range.clone()).enumerate() {
                for c in 0..dv {
                    dvv[j * h_count * dv + h * dv + c] += p[t] * gi[c];
                }
                let ds = p[t] * (dp[t] - dsum);
                db[e * h_count + h] = ds;
                let kj: Vec<f64> = k.row(j)[h * dk..(h + 1) * dk].iter().map(|&x| x as f64).collect();
                for c in 0..dk {
                    let (gq, gk) = match score {
                        Score::Dot { scale } => (*scale as f64 * ds * kj[c], *scale as f64 * ds * qi[c]),
                        Score::Gat { .. } => {
                            let g = ds * dlrelu(qi[0] + kj[0]);
                            (g, g)
                        }
                        Score::GatV2 { .. } => {
                            let zc = qi[c] + kj[c];
                            da[h * dk + c] += ds * lrelu(zc);
                            let g = ds * att[h * dk + c] as f64 * dlrelu(zc);
                            (g, g)
                        }
                    };
                    dq[i * h_count * dk + h * dk + c] += gq;
                    dkk[j * h_count * dk + h * dk + c] += gk;
                }
            }
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(AttentionGrads {
        query: Matrix::from_vec(n, h_count * dk, to32(dq))?,
        key: Matrix::from_vec(n, h_count * dk, to32(dkk))?,
        value: Matrix::from_vec(n, h_count * dv, to32(dvv))?,
        bias: if inputs.bias.is_some() { to32(db) } else { Vec::new() },
        attention: to32(da),
    })
}
