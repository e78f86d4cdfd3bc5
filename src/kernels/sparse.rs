//! Sparse attention over a graph's incoming edges (CSR by destination), fused per destination.
//!
//! ```text
//! for each destination i (rayon over ranges of destinations holding about EDGE_CHUNK edges):
//!     for each incoming edge t = (j -> i), every head h:
//!         s[h][t] = score(q_i[h], k_j[h]) + b_t[h]          (SDDMM; k_j read once, all heads)
//!     for each head h:
//!         m = max_t s[h][t];  z = sum_t exp(s[h][t] - m)     (edge softmax, SIMD exp)
//!         p[h][t] = exp(s[h][t] - m) / z;  lse_i[h] = m + ln z
//!     out_i[h] = sum_t p[h][t] v_j[h]                       (SpMM; per head, SIMD weighted sum)
//! ```
//! No `[E x H x d]` message tensor is formed: per thread, only a `[H x deg]` score scratch. The
//! weighted sum runs head by head with the output block in registers while the value rows
//! stream past ([`super::simd::weighted_sum`]).
//! Work is split by edge count, not node count, so a high-degree node does not serialise a
//! thread's share, and a hub row (a class token joined to every patch, in-degree at least
//! [`HUB_DEGREE`]) is itself split across threads by [`super::hub`]. Each other destination is
//! reduced by one thread in its edge order, so the result is the same bits whatever the thread
//! count. A node with no incoming edge (or only `-inf`-masked ones) outputs zeros.
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

use super::disjoint::DisjointMut;
use super::finite_check::FiniteCheck;
use super::hub::{HUB_DEGREE, HUB_SEGMENT, attend_hubs, hub_nodes};
use super::simd::within;
use crate::algebra::{AttentionInputs, AttentionOutput, Dims, Score, leaky_relu};
use crate::error::Result;
use crate::graph::Graph;
use crate::tensor::Matrix;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;
use std::ops::Range;

/// At most this many edges (plus one per node) per rayon task.
pub const EDGE_CHUNK: usize = 4096;

/// Consecutive destination ranges holding about the same number of edges each: at most
/// `EDGE_CHUNK`, and small enough for 8 tasks per thread (but at least 256), so a small graph
/// still uses every thread; a node of higher degree is a range of its own. Hub rows (in-degree
/// at least `hub_degree`, reduced separately by [`super::hub`]) count as one edge. The split never
/// changes a destination's arithmetic (one thread reduces it, in edge order), so the output is
/// the same bits for any split and thread count.
pub fn edge_balanced_ranges(graph: &Graph, hub_degree: usize) -> Vec<Range<usize>> {
    balanced_stretches(graph, graph.num_nodes(), |p| p, hub_degree)
}

/// [`edge_balanced_ranges`] over the positions of a visiting order: consecutive stretches of
/// `order` holding about the same number of edges each.
fn ordered_ranges(graph: &Graph, order: &[u32], hub_degree: usize) -> Vec<Range<usize>> {
    balanced_stretches(graph, order.len(), |p| order[p] as usize, hub_degree)
}

/// Cuts positions `0..len` (destination `node(p)` at position `p`) into consecutive stretches of
/// about the same load, a destination's load being its in-degree plus one (one for a hub row).
fn balanced_stretches(
    graph: &Graph,
    len: usize,
    node: impl Fn(usize) -> usize,
    hub_degree: usize,
) -> Vec<Range<usize>> {
    let load_of = |p: usize| {
        let d = graph.in_degree(node(p));
        if d >= hub_degree { 1 } else { d + 1 }
    };
    let total: usize = (0..len).map(load_of).sum();
    let chunk = (total / (8 * rayon::current_num_threads())).clamp(256, EDGE_CHUNK);
    let mut ranges = Vec::new();
    let (mut start, mut load) = (0, 0);
    for p in 0..len {
        let d = load_of(p);
        if load > 0 && load + d > chunk {
            ranges.push(start..p);
            (start, load) = (p, 0);
        }
        load += d;
    }
    if start < len {
        ranges.push(start..len);
    }
    ranges
}

/// The outputs, for tasks that visit destinations in a graph's visiting order (not in
/// contiguous ranges): destination `i` owns output row `i`, lse row `i` and the weight rows of
/// its edges.
#[derive(Clone, Copy)]
struct Rows {
    out: DisjointMut,
    lse: DisjointMut,
    w: DisjointMut,
    cols: usize,
    heads: usize,
}

impl Rows {
    /// The output row, lse row and (when `weights`) weight rows of destination `i`.
    ///
    /// # Safety
    /// `edges` is `i`'s edge range and no other task visits `i` while the rows are alive.
    unsafe fn of<'a>(
        self,
        i: usize,
        edges: Range<usize>,
        weights: bool,
    ) -> (&'a mut [f32], &'a mut [f32], Option<&'a mut [f32]>) {
        let h = self.heads;
        // SAFETY: destination i's rows, exclusive to the caller by the contract (bounds checked).
        unsafe {
            (
                self.out.span(i * self.cols, self.cols),
                self.lse.span(i * h, h),
                weights.then(|| self.w.span(edges.start * h, edges.len() * h)),
            )
        }
    }
}

/// One task's stretch of a visiting order, run inside a SIMD dispatch.
struct OrderedTask<'a, 'b> {
    graph: &'a Graph,
    score: &'a Score,
    inputs: &'a AttentionInputs<'b>,
    dims: &'a Dims,
    weights: bool,
    hub_degree: usize,
    nodes: &'a [u32],
    rows: Rows,
    scratch: &'a mut Scratch,
    check: Option<&'a FiniteCheck<'b>>,
}

impl WithSimd for OrderedTask<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let OrderedTask { graph, score, inputs, dims, weights, hub_degree, nodes, rows, scratch, check } = self;
        if let Some(check) = check {
            check.rows_within(simd, nodes.iter().map(|&i| i as usize)); // hub rows included
        }
        let heads = dims.heads;
        for &i in nodes {
            let i = i as usize;
            let edges = graph.edge_range(i);
            if edges.len() >= hub_degree {
                continue; // a hub row: reduced by `hub::attend_hubs`, split across threads
            }
            if scratch.scores.len() < edges.len() * heads {
                scratch.scores.resize(edges.len() * heads, 0.0);
            }
            // SAFETY: `edges` is i's range, and the visiting order is a permutation (checked by
            // `Graph::with_visit_order`): no other task visits i.
            let (row, lse, w_row) = unsafe { rows.of(i, edges.clone(), weights) };
            destination(
                simd,
                graph,
                score,
                inputs,
                dims,
                i,
                row,
                lse,
                w_row,
                &mut scratch.scores[..edges.len() * heads],
                &mut scratch.sources,
            );
        }
    }
}

/// One task's share of the outputs: its destinations' output rows, lse rows and weight rows.
struct Share<'a> {
    nodes: Range<usize>,
    out: &'a mut [f32],
    lse: &'a mut [f32],
    w: &'a mut [f32],
}

/// Runs the algebra over `graph`'s edges; `weights` asks for the `[E x H]` attention weights.
/// Destinations with at least [`HUB_DEGREE`] incoming edges are split across threads
/// ([`super::hub`]).
pub fn attend_sparse(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    weights: bool,
) -> Result<AttentionOutput> {
    attend_sparse_with(graph, score, inputs, weights, HUB_DEGREE, HUB_SEGMENT)
}

/// [`attend_sparse`] with the hub threshold and segment length given (tests use small ones).
pub(crate) fn attend_sparse_with(
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    weights: bool,
    hub_degree: usize,
    segment: usize,
) -> Result<AttentionOutput> {
    let dims = inputs.validate(graph, score)?;
    // Asked for: each task checks its destinations' rows of q, k and v; the ranges and the
    // visiting order cover every node once, hub rows included.
    let check = FiniteCheck::of(inputs);
    let hubs = hub_nodes(graph, hub_degree);
    // The threshold the ranges and tasks skip by: none when there are no hub rows.
    let hub_degree = if hubs.is_empty() { usize::MAX } else { hub_degree.max(1) };
    let (heads, cols) = (dims.heads, dims.heads * dims.value_dim);
    let mut out = Matrix::zeros(dims.nodes, cols);
    let mut lse = vec![f32::NEG_INFINITY; dims.nodes * heads];
    let mut w = if weights { vec![0.0f32; dims.edges * heads] } else { Vec::new() };

    match graph.visit_order() {
        None => {
            // Split every output into disjoint per-task slices.
            let mut shares = Vec::new();
            let (mut out_rest, mut lse_rest, mut w_rest) = (out.as_mut_slice(), lse.as_mut_slice(), w.as_mut_slice());
            for nodes in edge_balanced_ranges(graph, hub_degree) {
                let n = nodes.len();
                let (o, orest) = out_rest.split_at_mut(n * cols);
                let (l, lrest) = lse_rest.split_at_mut(n * heads);
                let w_len = if weights {
                    (graph.edge_range(nodes.end - 1).end - graph.edge_range(nodes.start).start) * heads
                } else {
                    0
                };
                let (wt, wrest) = w_rest.split_at_mut(w_len);
                (out_rest, lse_rest, w_rest) = (orest, lrest, wrest);
                shares.push(Share { nodes, out: o, lse: l, w: wt });
            }
            shares.into_par_iter().for_each_init(Scratch::default, |scratch: &mut Scratch, share| {
                // One SIMD dispatch per task: the per-edge dot products and axpys inline into the loop.
                pulp::Arch::new().dispatch(ShareTask {
                    graph,
                    score,
                    inputs,
                    dims: &dims,
                    weights,
                    hub_degree,
                    share,
                    scratch,
                    check: check.as_ref(),
                });
            });
        }
        Some(order) => {
            // The graph's visiting order: tasks take consecutive stretches of it, each
            // destination's rows written in place through `Rows`.
            let rows = Rows {
                out: DisjointMut::new(out.as_mut_slice()),
                lse: DisjointMut::new(&mut lse),
                w: DisjointMut::new(&mut w),
                cols,
                heads,
            };
            ordered_ranges(graph, order, hub_degree).into_par_iter().for_each_init(
                Scratch::default,
                |scratch: &mut Scratch, stretch| {
                    pulp::Arch::new().dispatch(OrderedTask {
                        graph,
                        score,
                        inputs,
                        dims: &dims,
                        weights,
                        hub_degree,
                        nodes: &order[stretch],
                        rows,
                        scratch,
                        check: check.as_ref(),
                    });
                },
            );
        }
    }
    attend_hubs(
        graph,
        score,
        inputs,
        &dims,
        &hubs,
        segment,
        out.as_mut_slice(),
        &mut lse,
        weights.then_some(w.as_mut_slice()),
    );
    if let Some(check) = check {
        check.finish()?; // a non-finite input: the result is dropped
    }
    Ok(AttentionOutput { out, weights: weights.then_some(w), log_sum_exp: lse })
}

/// One task's destinations, run inside a SIMD dispatch.
struct ShareTask<'a, 'b> {
    graph: &'a Graph,
    score: &'a Score,
    inputs: &'a AttentionInputs<'b>,
    dims: &'a Dims,
    weights: bool,
    hub_degree: usize,
    share: Share<'a>,
    scratch: &'a mut Scratch,
    check: Option<&'a FiniteCheck<'b>>,
}

/// Per-thread scratch: the `[H x deg]` scores and the sources of one destination; both grow to
/// the largest degree once and are reused.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    sources: Vec<u32>,
}

impl WithSimd for ShareTask<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let ShareTask { graph, score, inputs, dims, weights, hub_degree, share, scratch, check } = self;
        if let Some(check) = check {
            check.rows_within(simd, share.nodes.clone()); // this task's rows of q, k, v, hub rows included
        }
        let heads = dims.heads;
        let cols = heads * dims.value_dim;
        let first_edge = graph.edge_range(share.nodes.start).start;
        for i in share.nodes.clone() {
            let local = i - share.nodes.start;
            let edges = graph.edge_range(i);
            if edges.len() >= hub_degree {
                continue; // a hub row: reduced by `hub::attend_hubs`, split across threads
            }
            if scratch.scores.len() < edges.len() * heads {
                scratch.scores.resize(edges.len() * heads, 0.0); // grows to the largest degree once
            }
            let w_row = if weights {
                Some(&mut share.w[(edges.start - first_edge) * heads..(edges.end - first_edge) * heads])
            } else {
                None
            };
            destination(
                simd,
                graph,
                score,
                inputs,
                dims,
                i,
                &mut share.out[local * cols..(local + 1) * cols],
                &mut share.lse[local * heads..(local + 1) * heads],
                w_row,
                &mut scratch.scores[..edges.len() * heads],
                &mut scratch.sources,
            );
        }
    }
}

/// Reduces destination `i` into its output row `[H*dv]`, lse `[H]` and weight rows `[deg x H]`.
/// `s` is the `[H x deg]` score scratch, `buf` scratch for the sources of an implicit
/// (complete) graph; stored graphs lend their CSR slice.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn destination<S: Simd>(
    simd: S,
    graph: &Graph,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    dims: &Dims,
    i: usize,
    row: &mut [f32],
    lse: &mut [f32],
    w_row: Option<&mut [f32]>,
    s: &mut [f32],
    buf: &mut Vec<u32>,
) {
    let (heads, dv) = (dims.heads, dims.value_dim);
    let edges = graph.edge_range(i);
    let deg = edges.len();
    if deg == 0 {
        return; // out 0, lse -inf, weights 0: as allocated
    }
    let q_row = inputs.query.row(i);
    let src: &[u32] = match graph.stored_sources(i) {
        Some(src) => src,
        None => {
            buf.clear();
            buf.extend(graph.incoming(i).map(|j| j as u32));
            buf
        }
    };
    // s[h][t] = score(q_i[h], k_j[h]) + b_t[h]
    edge_scores(simd, score, inputs, dims, q_row, src, edges.start, s, deg);
    // Edge softmax per head.
    let mut any = false;
    for h in 0..heads {
        let sh = &mut s[h * deg..(h + 1) * deg];
        let m = within::max(simd, sh);
        if m == f32::NEG_INFINITY {
            if sh.iter().any(|v| v.is_nan()) {
                // The max skipped NaN scores (SIMD max is unspecified with NaN): the head's
                // output and weights are NaN, not the zeros of an all-masked node.
                sh.fill(f32::NAN);
                lse[h] = f32::NAN;
                any = true;
                continue;
            }
            sh.fill(0.0); // all masked: no contribution
            continue;
        }
        let z = within::exp_sub_sum(simd, sh, m);
        within::scale(simd, sh, 1.0 / z);
        lse[h] = m + z.ln();
        any = true;
    }
    if !any {
        return;
    }
    // out_i[h] = sum_t p[h][t] v_j[h]: head by head, the output block in registers while the
    // incoming value rows stream past.
    let value = inputs.value;
    for h in 0..heads {
        let p = &s[h * deg..(h + 1) * deg];
        within::weighted_sum(simd, &mut row[h * dv..(h + 1) * dv], p, |t| &value.row(src[t] as usize)[h * dv..]);
    }
    if let Some(w) = w_row {
        for (t, wt) in w.chunks_exact_mut(heads).enumerate() {
            for (h, x) in wt.iter_mut().enumerate() {
                *x = s[h * deg + t];
            }
        }
    }
}

/// Scores of one destination's edges `t < src.len()` (sources `src`, edge ids `first_edge + t`)
/// for every head: `s[h * stride + t] = score(q_i[h], k_{src[t]}[h]) + bias[(first_edge + t) * H + h]`.
/// Each key row is read once, for all heads.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn edge_scores<S: Simd>(
    simd: S,
    score: &Score,
    inputs: &AttentionInputs<'_>,
    dims: &Dims,
    q_row: &[f32],
    src: &[u32],
    first_edge: usize,
    s: &mut [f32],
    stride: usize,
) {
    let (heads, dk) = (dims.heads, dims.key_dim);
    match score {
        Score::Dot { scale } => {
            for (t, &j) in src.iter().enumerate() {
                let k_row = inputs.key.row(j as usize);
                for h in 0..heads {
                    let (q, k) = (&q_row[h * dk..(h + 1) * dk], &k_row[h * dk..(h + 1) * dk]);
                    s[h * stride + t] = scale * within::dot(simd, q, k);
                }
            }
        }
        Score::Gat { negative_slope } => {
            for (t, &j) in src.iter().enumerate() {
                let k_row = inputs.key.row(j as usize);
                for h in 0..heads {
                    s[h * stride + t] = leaky_relu(q_row[h] + k_row[h], *negative_slope);
                }
            }
        }
        Score::GatV2 { attention, negative_slope } => {
            for (t, &j) in src.iter().enumerate() {
                let k_row = inputs.key.row(j as usize);
                for h in 0..heads {
                    let (q, k, a) =
                        (&q_row[h * dk..(h + 1) * dk], &k_row[h * dk..(h + 1) * dk], &attention[h * dk..(h + 1) * dk]);
                    within::gatv2_row(simd, &mut s[h * stride + t..h * stride + t + 1], q, k, a, *negative_slope);
                }
            }
        }
    }
    if let Some(b) = inputs.bias {
        for t in 0..src.len() {
            for h in 0..heads {
                s[h * stride + t] += b[(first_edge + t) * heads + h];
            }
        }
    }
}
