//! Hub rows: destinations with thousands of incoming edges (a class or global token joined to
//! every patch), reduced by several threads at once.
//!
//! The sparse kernel reduces each destination on one thread; a class token at N = 3137 holds as
//! many edges as 185 patches of a 16-NN graph, so one thread would carry it alone. A hub's edges
//! are cut into fixed segments of [`HUB_SEGMENT`] edges, each segment reduced on its own (the
//! same score, softmax and weighted sum as any destination, but with its own running maximum),
//! and the partial results merged in segment order, FlashDecoding's split-K:
//!
//! ```text
//! segment s of hub i, head h:   m_s = max_t s_t,   l_s = sum_t exp(s_t - m_s),
//!                               o_s = sum_t exp(s_t - m_s) v_t                 [dv]
//! merge (s = 0, 1, ... in order):  M = max_s m_s,  L = sum_s exp(m_s - M) l_s,
//!                                  out_i = sum_s exp(m_s - M) o_s / L,   lse_i = M + ln L
//! weights:                         a_t = exp(s_t - m_s) exp(m_s - M) / L
//! ```
//!
//! Only a few destinations are split: a graph with more than [`MAX_HUBS`] of them (a complete
//! graph run on the sparse path) has enough destinations to keep every thread busy, and
//! splitting them all would hold a partial row per segment.
//!
//! Segments depend on the degree only, never on the thread count, and the merge runs in segment
//! order, so a hub's output is the same bits on any pool (`tests` below, and
//! `tests/algebra.rs` on every graph). A hub whose edges are all masked outputs zeros.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend, AttentionInputs, Path, Score};
//! // A star: node 0 receives an edge from each of 5000 nodes: a hub row, split in segments.
//! let n = 5001;
//! let g = Graph::from_edge_index(n, &(1..n).collect::<Vec<_>>(), &vec![0; n - 1]).unwrap();
//! let q = Matrix::zeros(n, 1); // equal scores: node 0 averages every v_j
//! let v = Matrix::from_fn(n, 1, |j, _| j as f32);
//! let out = attend(&g, &Score::Dot { scale: 1.0 }, &AttentionInputs::new(&q, &q, &v, 1), Path::Sparse, false).unwrap();
//! assert!((out.out.get(0, 0) - 2500.5).abs() < 1e-2);
//! ```

use super::simd::within;
use super::sparse::edge_scores;
use crate::algebra::{AttentionInputs, Dims, Score};
use crate::graph::Graph;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Destinations with at least this many incoming edges are hub rows.
pub const HUB_DEGREE: usize = 2048;

/// Edges per segment of a hub row.
pub const HUB_SEGMENT: usize = 512;

/// Graphs with more high-degree destinations than this have no hub rows: their destinations
/// already give every thread work (a complete graph run on the sparse path has `N` of them), and
/// splitting them all would hold `N * deg / HUB_SEGMENT` partial rows at once.
pub const MAX_HUBS: usize = 64;

/// The hub rows of `graph`: the destinations with at least `hub_degree` incoming edges, in
/// order, or none when more than [`MAX_HUBS`] reach it. Depends on the graph only, never on the
/// thread count.
pub fn hub_nodes(graph: &Graph, hub_degree: usize) -> Vec<usize> {
    let hub_degree = hub_degree.max(1);
    let hubs: Vec<usize> =
        (0..graph.num_nodes()).filter(|&i| graph.in_degree(i) >= hub_degree).take(MAX_HUBS + 1).collect();
    if hubs.len() > MAX_HUBS { Vec::new() } else { hubs }
}

/// One segment: hub `node`, its edges `first_edge + t0 .. first_edge + t1` (`t` local to the
/// node's edge list).
#[derive(Clone, Copy, Debug)]
struct Segment {
    node: usize,
    t0: usize,
    t1: usize,
}

/// A segment's partial result per head: running max `m [H]`, sum `l [H]`, output `o [H x dv]`.
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    o: Vec<f32>,
}

/// Reduces the destinations `hubs` ([`hub_nodes`]) of `graph` into `out` (`[N x H*dv]`), `lse`
/// (`[N x H]`) and, when given, the weights `w` (`[E x H]`), split into segments of `segment`
/// edges. Other destinations are left untouched.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_hubs(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    dims: &Dims,
    hubs: &[usize],
    segment: usize,
    out: &mut [f32],
    lse: &mut [f32],
    mut w: Option<&mut [f32]>,
) {
    assert!(segment > 0, "attend_hubs: segments of 0 edges");
    let (heads, dv) = (dims.heads, dims.value_dim);
    if hubs.is_empty() {
        return;
    }
    let segments: Vec<Segment> = hubs
        .iter()
        .flat_map(|&node| {
            let deg = graph.in_degree(node);
            (0..deg).step_by(segment).map(move |t0| Segment { node, t0, t1: (t0 + segment).min(deg) })
        })
        .collect();

    // Each segment's weights slice (the unnormalised exp(s - m_s), rescaled after the merge).
    let mut w_slices: Vec<Option<&mut [f32]>> = Vec::with_capacity(segments.len());
    if let Some(w) = w.as_deref_mut() {
        let mut rest = w;
        let mut at = 0; // edge id where `rest` starts
        for sg in &segments {
            let start = graph.edge_range(sg.node).start + sg.t0;
            let (_, tail) = rest.split_at_mut((start - at) * heads);
            let (mine, tail) = tail.split_at_mut((sg.t1 - sg.t0) * heads);
            w_slices.push(Some(mine));
            (rest, at) = (tail, start + sg.t1 - sg.t0);
        }
    } else {
        w_slices.resize_with(segments.len(), || None);
    }

    let partials: Vec<Partial> = segments
        .par_iter()
        .zip(w_slices.par_iter_mut())
        .map_init(
            || (Vec::new(), Vec::new()),
            |(scores, sources): &mut (Vec<f32>, Vec<u32>), (sg, w_seg)| {
                let mut part = Partial { m: vec![0.0; heads], l: vec![0.0; heads], o: vec![0.0; heads * dv] };
                pulp::Arch::new().dispatch(SegmentTask {
                    graph,
                    score,
                    inputs,
                    dims,
                    sg: *sg,
                    part: &mut part,
                    w: w_seg.as_deref_mut(),
                    scores,
                    sources,
                });
                part
            },
        )
        .collect();

    // Merge each hub's segments in order.
    let cols = heads * dv;
    let mut k = 0;
    for &node in hubs {
        let first = k;
        while k < segments.len() && segments[k].node == node {
            k += 1;
        }
        let parts = &partials[first..k];
        let row = &mut out[node * cols..(node + 1) * cols];
        row.fill(0.0);
        for h in 0..heads {
            let m = parts.iter().map(|p| p.m[h]).fold(f32::NEG_INFINITY, f32::max);
            let lse_h = &mut lse[node * heads + h];
            if parts.iter().any(|p| p.l[h].is_nan()) {
                // A NaN score in some segment: the head's output, lse and weights are NaN (the
                // `l > 0` tests below would otherwise drop that segment as if masked).
                *lse_h = f32::NAN;
                row[h * dv..(h + 1) * dv].fill(f32::NAN);
                if let Some(w) = w.as_deref_mut() {
                    let e = graph.edge_range(node);
                    (e.start..e.end).for_each(|e| w[e * heads + h] = f32::NAN);
                }
                continue;
            }
            if m == f32::NEG_INFINITY {
                *lse_h = f32::NEG_INFINITY; // every edge masked: zeros
                if let Some(w) = w.as_deref_mut() {
                    let e = graph.edge_range(node);
                    (e.start..e.end).for_each(|e| w[e * heads + h] = 0.0);
                }
                continue;
            }
            let l: f32 = parts.iter().map(|p| if p.l[h] > 0.0 { (p.m[h] - m).exp() * p.l[h] } else { 0.0 }).sum();
            let o = &mut row[h * dv..(h + 1) * dv];
            for p in parts.iter().filter(|p| p.l[h] > 0.0) {
                let c = (p.m[h] - m).exp();
                for (x, &y) in o.iter_mut().zip(&p.o[h * dv..(h + 1) * dv]) {
                    *x += c * y;
                }
            }
            let inv = 1.0 / l;
            o.iter_mut().for_each(|x| *x *= inv);
            *lse_h = m + l.ln();
            if let Some(w) = w.as_deref_mut() {
                let e0 = graph.edge_range(node).start;
                for (p, sg) in parts.iter().zip(&segments[first..k]) {
                    let c = if p.l[h] > 0.0 { (p.m[h] - m).exp() * inv } else { 0.0 };
                    for t in sg.t0..sg.t1 {
                        w[(e0 + t) * heads + h] *= c;
                    }
                }
            }
        }
    }
}

/// One segment's scores, softmax numerators and weighted sums, inside a SIMD dispatch.
struct SegmentTask<'a, 'b> {
    graph: &'a Graph,
    score: &'a Score,
    inputs: &'a AttentionInputs<'b>,
    dims: &'a Dims,
    sg: Segment,
    part: &'a mut Partial,
    w: Option<&'a mut [f32]>,
    scores: &'a mut Vec<f32>,
    sources: &'a mut Vec<u32>,
}

impl WithSimd for SegmentTask<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let SegmentTask { graph, score, inputs, dims, sg, part, w, scores, sources } = self;
        let (heads, dv) = (dims.heads, dims.value_dim);
        let len = sg.t1 - sg.t0;
        sources.clear();
        match graph.stored_sources(sg.node) {
            Some(src) => sources.extend_from_slice(&src[sg.t0..sg.t1]),
            None => sources.extend(graph.incoming(sg.node).skip(sg.t0).take(len).map(|j| j as u32)),
        }
        scores.resize(heads * len, 0.0);
        let first_edge = graph.edge_range(sg.node).start + sg.t0;
        edge_scores(simd, score, inputs, dims, inputs.query.row(sg.node), sources, first_edge, scores, len);
        let value = inputs.value;
        for h in 0..heads {
            let sh = &mut scores[h * len..(h + 1) * len];
            let m = within::max(simd, sh);
            part.m[h] = m;
            if m == f32::NEG_INFINITY {
                // all masked in this segment: l = 0, o = 0; unless the max skipped NaN scores,
                // which make l NaN for the merge to propagate
                part.l[h] = if sh.iter().any(|v| v.is_nan()) { f32::NAN } else { 0.0 };
                sh.fill(0.0);
                continue;
            }
            part.l[h] = within::exp_sub_sum(simd, sh, m); // sh = exp(s - m)
            let src = &sources[..];
            within::weighted_sum(simd, &mut part.o[h * dv..(h + 1) * dv], sh, |t| {
                &value.row(src[t] as usize)[h * dv..]
            });
        }
        if let Some(w) = w {
            for (t, wt) in w.chunks_exact_mut(heads).enumerate() {
                for (h, x) in wt.iter_mut().enumerate() {
                    *x = scores[h * len + t];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algebra::attend_reference;
    use crate::kernels::sparse::{attend_sparse, attend_sparse_with};
    use crate::tensor::Matrix;

    /// A graph with hub rows of several sizes (one all-masked by the bias on some heads), each
    /// patch node also receiving a few edges, and the class-token pattern (node 0 from all).
    fn hub_graph(n: usize) -> Graph {
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for j in 0..n {
            src.push(j);
            dst.push(0); // node 0: in-degree n
        }
        for j in (0..n).step_by(3) {
            src.push(j);
            dst.push(1); // node 1: in-degree n / 3
        }
        for i in 2..n {
            for d in [1, 2, 5] {
                src.push((i + d) % n);
                dst.push(i);
            }
        }
        Graph::from_edge_index(n, &src, &dst).unwrap()
    }

    fn sine(rows: usize, cols: usize, seed: f32) -> Matrix {
        Matrix::from_fn(rows, cols, |i, j| ((i * cols + j) as f32 * 0.37 + seed).sin() * 2.0)
    }

    /// Hub rows split into segments (sizes around the segment length, 1 and 2 threads) equal the
    /// f64 reference in outputs, lse and weights; the bits do not depend on the thread count.
    #[test]
    fn hub_rows_match_the_reference_on_any_thread_count() {
        for (n, segment) in [(40, 7), (65, 16), (100, 64), (33, 1)] {
            let g = hub_graph(n);
            let (heads, d) = (3, 5);
            let (q, k, v) = (sine(n, heads * d, 0.1), sine(n, heads * d, 1.3), sine(n, heads * d, 2.9));
            // Bias: head 2 of node 1 fully masked (-inf), other entries finite.
            let mut bias: Vec<f32> = (0..g.num_edges() * heads).map(|e| (e as f32 * 0.11).cos()).collect();
            for e in g.edge_range(1) {
                bias[e * heads + 2] = f32::NEG_INFINITY;
            }
            for score in [
                Score::Dot { scale: 0.4 },
                Score::GatV2 { attention: (0..heads * d).map(|c| (c as f32).cos()).collect(), negative_slope: 0.2 },
            ] {
                let inputs = AttentionInputs::new(&q, &k, &v, heads).with_bias(&bias);
                let oracle = attend_reference(&g, &score, &inputs, true).unwrap();
                let runs: Vec<_> = [1, 2]
                    .iter()
                    .map(|&t| {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                        pool.install(|| attend_sparse_with(&g, &score, &inputs, true, 10, segment).unwrap())
                    })
                    .collect();
                let got = &runs[0];
                assert!(got.out.max_abs_diff(&oracle.out) < 1e-5, "n={n} seg={segment}: out");
                for (a, b) in got.log_sum_exp.iter().zip(&oracle.log_sum_exp) {
                    assert!(a == b || (a - b).abs() < 1e-5 * b.abs().max(1.0), "n={n}: lse {a} vs {b}");
                }
                let (wg, wr) = (got.weights.as_ref().unwrap(), oracle.weights.as_ref().unwrap());
                for (a, b) in wg.iter().zip(wr) {
                    assert!((a - b).abs() < 1e-6, "n={n}: weight {a} vs {b}");
                }
                assert!(got.out.row(1)[2 * d..3 * d].iter().all(|&x| x == 0.0), "masked head is not zero");
                assert_eq!(got.log_sum_exp[heads + 2], f32::NEG_INFINITY);
                assert_eq!(runs[0], runs[1], "n={n} seg={segment}: depends on the thread count");
            }
        }
    }

    /// More than `MAX_HUBS` high-degree destinations (a complete graph on the sparse path): no
    /// hub rows, and the answer still equals the reference; up to `MAX_HUBS`, the threshold holds.
    #[test]
    fn many_high_degree_destinations_are_not_split() {
        let n = MAX_HUBS + 6;
        let complete = Graph::complete(n, true);
        assert_eq!(hub_nodes(&complete, 10), Vec::<usize>::new());
        assert_eq!(hub_nodes(&hub_graph(n), 10), [0, 1]); // two nodes reach 10
        let (q, k, v) = (sine(n, 6, 0.3), sine(n, 6, 0.6), sine(n, 6, 0.9));
        let inputs = AttentionInputs::new(&q, &k, &v, 2);
        let score = Score::Dot { scale: 0.3 };
        let got = attend_sparse_with(&complete, &score, &inputs, true, 10, 4).unwrap();
        let oracle = attend_reference(&complete, &score, &inputs, true).unwrap();
        assert!(got.out.max_abs_diff(&oracle.out) < 1e-5);
    }

    /// Through `attend_sparse` (the default thresholds): a 3000-source class row equals the reference.
    #[test]
    fn class_row_through_attend_matches_the_reference() {
        let n = 3000;
        let g = hub_graph(n);
        assert!(g.in_degree(0) >= HUB_DEGREE);
        let (q, k, v) = (sine(n, 4, 0.5), sine(n, 4, 0.7), sine(n, 4, 0.9));
        let inputs = AttentionInputs::new(&q, &k, &v, 2);
        let score = Score::Dot { scale: 0.5 };
        let fast = attend_sparse(&g, &score, &inputs, false).unwrap();
        let oracle = attend_reference(&g, &score, &inputs, false).unwrap();
        assert!(fast.out.max_abs_diff(&oracle.out) < 1e-5);
    }
}
