//! Dense attention for complete graphs and batches of them (block-diagonal): tiled, with an
//! online softmax, so extra memory is `O(tile)` per thread and `O(N d)` in all, never `O(N^2)`.
//!
//! One task per (block `b`, head `h`, query tile of `TQ` rows); tasks run in parallel with rayon,
//! each GEMM sequential. For a task with queries `Q` `[TQ x dk]` it streams key/value tiles
//! `K_t`, `V_t` (`TK` rows) of its block, FlashAttention's recurrence:
//!
//! ```text
//! m = -inf, l = 0, O = 0                                   per query row: running max, sum, output
//! for each key tile t:
//!     S   = scale * Q K_t^T           [TQ x TK]  (GEMM; GAT: LeakyReLU(q_i + k_j), rank one;
//!                                                  GATv2: a . LeakyReLU(q_i + k_j))
//!     S  += bias;  masked edges and excluded self-loops = -inf
//!     m'  = max(m, rowmax S);  c = exp(m - m')
//!     P   = exp(S - m');  l = c l + rowsum P;  O = c O + P V_t     (GEMM)
//!     m   = m'
//! out = O / l;  lse = m + ln l          (a row with no edge left: out = 0, lse = -inf)
//! ```
//!
//! The log-sum-exp per (node, head) is returned so that a backward pass can recompute the
//! probabilities `exp(s - lse)`; attention weights, when asked for, are recomputed tile by tile
//! from the running max and sum.
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
//! assert!((out.log_sum_exp[0] - 2f32.ln()).abs() < 1e-6);
//! ```

use super::finite_check::FiniteCheck;
use super::simd;
use super::simd::within;
use crate::algebra::{AttentionInputs, AttentionOutput, Dims, Score};
use crate::error::{Error, Result};
use crate::graph::{Graph, complete_edges};
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Query rows per task, at most (a block's rows are cut into equal tiles of at most this).
pub const QUERY_TILE: usize = 128;
/// Key/value rows per streamed tile.
pub const KEY_TILE: usize = 256;

/// A task: head `head` of block `block`, local query rows `q0 .. q1`.
#[derive(Clone, Copy, Debug)]
struct Task {
    block: usize,
    head: usize,
    q0: usize,
    q1: usize,
}

/// What every task reads.
struct Problem<'a> {
    score: &'a Score,
    inputs: &'a AttentionInputs<'a>,
    dims: Dims,
    blocks: &'a [usize],
    /// Edge id of each block's first edge.
    block_edge: Vec<usize>,
    self_loops: bool,
    mask: Option<&'a [bool]>,
    /// The inputs' NaN/inf check, when asked for: each task checks a share of its tile's rows.
    check: Option<FiniteCheck<'a>>,
}

/// Per-thread scratch: scores `[TQ x TK]`, output accumulator `[TQ x dv]`, running max and sum,
/// gathered keys `[TK x dk]`.
struct Scratch {
    s: Vec<f32>,
    gather: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    /// Grows the buffers to the sizes of a call with key width `dk` and value width `dv`.
    fn fit(&mut self, dk: usize, dv: usize) {
        for (buf, len) in [
            (&mut self.s, QUERY_TILE * KEY_TILE),
            (&mut self.gather, KEY_TILE * dk),
            (&mut self.o, QUERY_TILE * dv),
            (&mut self.m, QUERY_TILE),
            (&mut self.l, QUERY_TILE),
        ] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
    }
}

thread_local! {
    /// Each thread's dense-kernel scratch. Every task overwrites what it reads, so a buffer's
    /// earlier contents never reach a result.
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch { s: Vec::new(), gather: Vec::new(), o: Vec::new(), m: Vec::new(), l: Vec::new() })
    };
}

/// A raw pointer that tasks write through at disjoint positions.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the pointer is only dereferenced at positions that exactly one task owns (see the
// SAFETY comments at the writes), while the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
// SAFETY: as above: concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut {}

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
    if let Some(mask) = mask
        && mask.len() != dims.edges
    {
        return Err(Error::shape(
            "dense attention mask",
            format!("{} entries (one per edge)", dims.edges),
            format!("{} entries", mask.len()),
        ));
    }
    let blocks = graph.blocks();
    let mut block_edge = vec![0usize; blocks.len()];
    for b in 0..blocks.len() - 1 {
        block_edge[b + 1] = block_edge[b] + complete_edges(blocks[b + 1] - blocks[b], self_loops);
    }
    let problem = Problem { score, inputs, dims, blocks, block_edge, self_loops, mask, check: FiniteCheck::of(inputs) };

    // Tiles depend on the problem only, never on the thread count: the same bits on any pool.
    let mut tasks = Vec::new();
    for block in 0..blocks.len() - 1 {
        let m = blocks[block + 1] - blocks[block];
        // Tiles of equal size (at most QUERY_TILE rows): N = 197 is two tiles of 99 and 98 rows,
        // not 128 and 69, so the tasks of a small block balance across threads.
        let tile = m.div_ceil(m.div_ceil(QUERY_TILE).max(1)).max(1);
        for head in 0..dims.heads {
            for q0 in (0..m).step_by(tile) {
                tasks.push(Task { block, head, q0, q1: (q0 + tile).min(m) });
            }
        }
    }

    let (heads, dv) = (dims.heads, dims.value_dim);
    let mut out = Matrix::zeros(dims.nodes, heads * dv);
    let mut lse = vec![f32::NEG_INFINITY; dims.nodes * heads];
    let mut w = if weights { vec![0.0f32; dims.edges * heads] } else { Vec::new() };
    let (out_ptr, lse_ptr, w_ptr) =
        (SharedMut(out.as_mut_slice().as_mut_ptr()), SharedMut(lse.as_mut_ptr()), SharedMut(w.as_mut_ptr()));
    // Scratch is allocated once per group of tasks (a few groups per thread, for balance), not
    // once per task. Grouping never changes a task's arithmetic: the same bits on any pool.
    let group = tasks.len().div_ceil(4 * rayon::current_num_threads()).max(1);
    tasks.par_chunks(group).for_each(|group| {
        // Scratch lives with the thread and is reused across groups and calls (a ViT runs this
        // kernel 12 times per image): grown when a call needs more, never zeroed again.
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.fit(dims.key_dim, dv);
            for task in group {
                run_task(&problem, *task, scratch, out_ptr, lse_ptr, weights.then_some(w_ptr));
            }
        })
    });
    if let Some(check) = problem.check {
        check.finish()?; // a non-finite input: the result is dropped
    }
    Ok(AttentionOutput { out, weights: weights.then_some(w), log_sum_exp: lse })
}

/// Edge id of `j -> i` (block-local indices) in a complete block whose destination `i` has its
/// first edge at `first`; `None` for the excluded self-loop of a block without self-loops.
#[inline(always)]
fn edge_id(first: usize, i: usize, j: usize, self_loops: bool) -> Option<usize> {
    if self_loops {
        Some(first + j)
    } else if j == i {
        None
    } else {
        Some(first + if j < i { j } else { j - 1 })
    }
}

/// Scores of queries `q0..q1` against keys `k0..k1` of the task's block and head into `s`
/// (`[rows x cols]` row-major), with bias, mask and self-loop exclusion applied. `gather` is
/// scratch for the tile's keys (`[TK x dk]`).
fn scores(p: &Problem<'_>, t: Task, k0: usize, k1: usize, s: &mut [f32], gather: &mut [f32]) {
    let (heads, dk) = (p.dims.heads, p.dims.key_dim);
    let (base, h) = (p.blocks[t.block], t.head);
    let (rows, cols) = (t.q1 - t.q0, k1 - k0);
    let (query, key) = (p.inputs.query, p.inputs.key);
    match p.score {
        Score::Dot { scale } => {
            let q = query.as_faer().submatrix(base + t.q0, h * dk, rows, dk);
            let k = key.as_faer().submatrix(base + k0, h * dk, cols, dk);
            let dst = MatMut::from_row_major_slice_mut(&mut s[..rows * cols], rows, cols);
            matmul(dst, Accum::Replace, q, k.transpose(), *scale, Par::Seq);
        }
        Score::Gat { negative_slope } => {
            // Rank one: row a is LeakyReLU(q_a + k_j) over the tile's keys k_j (gathered once).
            let kcol = &mut gather[..cols];
            for (j, x) in kcol.iter_mut().enumerate() {
                *x = key.get(base + k0 + j, h);
            }
            for (a, row) in s[..rows * cols].chunks_exact_mut(cols).enumerate() {
                simd::leaky_relu_add(row, query.get(base + t.q0 + a, h), kcol, *negative_slope);
            }
        }
        Score::GatV2 { attention, negative_slope } => {
            // The tile's keys of head h, gathered contiguous [cols x dk] once per tile.
            let keys = &mut gather[..cols * dk];
            for (j, dst) in keys.chunks_exact_mut(dk).enumerate() {
                dst.copy_from_slice(&key.row(base + k0 + j)[h * dk..(h + 1) * dk]);
            }
            let att = &attention[h * dk..(h + 1) * dk];
            for (a, row) in s[..rows * cols].chunks_exact_mut(cols).enumerate() {
                let qi = &query.row(base + t.q0 + a)[h * dk..(h + 1) * dk];
                simd::gatv2_row(row, qi, keys, att, *negative_slope);
            }
        }
    }
    if p.inputs.bias.is_none() && p.mask.is_none() && p.self_loops {
        return;
    }
    let m = p.blocks[t.block + 1] - base;
    let deg = if p.self_loops { m } else { m - 1 };
    for (a, row) in s[..rows * cols].chunks_exact_mut(cols).enumerate() {
        let i = t.q0 + a;
        let first = p.block_edge[t.block] + i * deg;
        for (jj, x) in row.iter_mut().enumerate() {
            let j = k0 + jj;
            let Some(e) = edge_id(first, i, j, p.self_loops) else {
                *x = f32::NEG_INFINITY; // the excluded self-loop
                continue;
            };
            if let Some(bias) = p.inputs.bias {
                *x += bias[e * heads + h];
            }
            if p.mask.is_some_and(|mask| !mask[e]) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// The online-softmax update of one score tile `s` `[rows x cols]`, in place:
/// `m' = max(m, rowmax s)`, `c = exp(m - m')`, `s = exp(s - m')`, `l = c l + rowsum s`, `o = c o`.
struct OnlineSoftmax<'a> {
    s: &'a mut [f32],
    cols: usize,
    m: &'a mut [f32],
    l: &'a mut [f32],
    o: &'a mut [f32],
    dv: usize,
}

impl WithSimd for OnlineSoftmax<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let OnlineSoftmax { s, cols, m, l, o, dv } = self;
        for (a, row) in s.chunks_exact_mut(cols).enumerate() {
            let m_new = m[a].max(within::max(simd, row));
            if m_new == f32::NEG_INFINITY {
                // Nothing unmasked yet: no contribution, and no NaN from -inf - -inf. Unless the
                // max skipped a NaN score (SIMD max is unspecified with NaN): then the row's
                // result is NaN, never the zeros of a node without edges.
                if row.iter().any(|v| v.is_nan()) {
                    l[a] = f32::NAN;
                }
                row.fill(0.0);
                continue;
            }
            let c = (m[a] - m_new).exp(); // 0 when m[a] = -inf
            l[a] = c * l[a] + within::exp_sub_sum(simd, row, m_new);
            if c != 1.0 {
                within::scale(simd, &mut o[a * dv..(a + 1) * dv], c);
            }
            m[a] = m_new;
        }
    }
}

fn run_task(p: &Problem<'_>, t: Task, sc: &mut Scratch, out: SharedMut, lse: SharedMut, w: Option<SharedMut>) {
    let (heads, dv) = (p.dims.heads, p.dims.value_dim);
    let (base, h) = (p.blocks[t.block], t.head);
    let m_block = p.blocks[t.block + 1] - base;
    let rows = t.q1 - t.q0;
    if let Some(check) = &p.check {
        // The H tasks of this query tile share its rows of q, k and v (whole rows, every
        // head): every value is checked once over all tasks, in long contiguous runs.
        check.share(base + t.q0..base + t.q1, h, heads);
    }
    let (m, l) = (&mut sc.m[..rows], &mut sc.l[..rows]);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let o = &mut sc.o[..rows * dv];
    o.fill(0.0);
    for k0 in (0..m_block).step_by(KEY_TILE) {
        let k1 = (k0 + KEY_TILE).min(m_block);
        let cols = k1 - k0;
        let s = &mut sc.s[..rows * cols];
        scores(p, t, k0, k1, s, &mut sc.gather);
        // The online-softmax update of every row of the tile, in one SIMD dispatch.
        pulp::Arch::new().dispatch(OnlineSoftmax { s, cols, m, l, o, dv });
        // O += P V_t
        let pm = MatRef::from_row_major_slice(s, rows, cols);
        let v = p.inputs.value.as_faer().submatrix(base + k0, h * dv, cols, dv);
        matmul(MatMut::from_row_major_slice_mut(o, rows, dv), Accum::Add, pm, v, 1.0, Par::Seq);
    }
    for a in 0..rows {
        let node = base + t.q0 + a;
        let row = &mut o[a * dv..(a + 1) * dv];
        let lse_a = if l[a] > 0.0 {
            simd::scale(row, 1.0 / l[a]);
            m[a] + l[a].ln()
        } else if l[a].is_nan() {
            row.fill(f32::NAN); // a NaN score propagates to the whole row (and its weights)
            f32::NAN
        } else {
            row.fill(0.0);
            f32::NEG_INFINITY
        };
        // SAFETY: this task owns rows base+q0 .. base+q1 of head h: the output elements
        // `node * heads * dv + h * dv .. + dv` and the lse element `node * heads + h`; tasks
        // partition (block, head, query tile), so no other task writes them, and both buffers
        // outlive the parallel loop in `attend_dense`.
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), out.0.add(node * heads * dv + h * dv), dv);
            *lse.0.add(node * heads + h) = lse_a;
        }
    }
    let Some(w) = w else { return };
    // Weights: recompute the scores tile by tile, p = exp(s - m) / l (the running max and sum,
    // not the lse: at logits of 1e4 an f32 lse has lost three digits).
    let deg = if p.self_loops { m_block } else { m_block - 1 };
    for k0 in (0..m_block).step_by(KEY_TILE) {
        let k1 = (k0 + KEY_TILE).min(m_block);
        let cols = k1 - k0;
        let s = &mut sc.s[..rows * cols];
        scores(p, t, k0, k1, s, &mut sc.gather);
        for (a, row) in s.chunks_exact(cols).enumerate() {
            let i = t.q0 + a;
            let first = p.block_edge[t.block] + i * deg;
            for (jj, &x) in row.iter().enumerate() {
                let j = k0 + jj;
                let Some(e) = edge_id(first, i, j, p.self_loops) else { continue };
                let prob = if l[a] > 0.0 { (x - m[a]).exp() / l[a] } else { 0.0 };
                // SAFETY: edge e (an incoming edge of node base+i, owned by this task's rows) at
                // head h: element e * heads + h is written by this task only; `w` outlives the loop.
                unsafe { *w.0.add(e * heads + h) = prob };
            }
        }
    }
}
