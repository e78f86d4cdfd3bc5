//! Linformer attention (Wang et al. 2020), the fast kernels: the sequence axis of the keys and
//! values is projected from `n` tokens down to `k` rows, so every query attends to `k` mixed
//! keys instead of `n` tokens. The plain f64 reference and the model-level documentation are in
//! [`crate::attention::linformer`].
//!
//! ```text
//! per block b (one image, n tokens; base = b n), per head h (columns h d .. (h + 1) d):
//!     K'_b  = E^T K_b                    [k x H d]    (E = proj_k [n x k], GEMM per (b, h))
//!     V'_b  = F^T V_b                    [k x H dv]   (F = proj_v [n x k])
//!     S     = scale Q_bh K'_bh^T         [TQ x k]     (scale = 1/sqrt(d); per query tile, GEMM)
//!     P     = softmax_rows(S)            [TQ x k]     lse = m + ln l per (row, head)
//!     O_bh  = P V'_bh                    [TQ x dv]    (GEMM, written into out [N x H dv])
//! ```
//!
//! Two parallel passes, each a rayon loop over fixed tasks: the projections per (block, head),
//! then the attention per (block, head, query tile of at most [`QUERY_TILE`] rows); every GEMM
//! inside a task is a sequential faer GEMM. Tiles depend on the shapes only, so the bits do not
//! depend on the thread count.
//!
//! Memory: the cache ([`LinformerCache`]) keeps `K'`, `V'` and the log-sum-exp, `B k H (d + dv)
//! + N H` floats; scratch is one `[TQ x k]` score tile per thread in the forward, two in the
//! backward, so `O(n k)` per head, never `O(n^2)`. The `[N x H x k]` probabilities are not
//! stored: the backward recomputes them (one `[TQ x d] x [d x k]` GEMM per tile).
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::kernels::linformer::linformer_forward;
//! // One block of two tokens, k = 1, E = F = [1, 1]^T: the single key row is k_0 + k_1 and
//! // the single value row v_0 + v_1, with weight 1 for every query.
//! let e = Matrix::from_vec(2, 1, vec![1.0, 1.0]).unwrap();
//! let x = Matrix::from_vec(2, 1, vec![1.0, 3.0]).unwrap();
//! let (out, cache) = linformer_forward(&AttentionInputs::new(&x, &x, &x, 1), &[0, 2], &e, &e).unwrap();
//! assert_eq!(out.as_slice(), &[4.0, 4.0]);
//! assert_eq!(cache.key_proj().as_slice(), &[4.0]);
//! assert_eq!(cache.log_sum_exp(), &[4.0, 12.0]); // one key: lse = its score
//! ```

use super::simd::within;
use crate::algebra::AttentionInputs;
use crate::error::{Error, Result, ensure_finite, ensure_finite_block};
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Query rows per attention task, at most (a block's rows are cut into equal tiles of at most
/// this: n = 197 is two tiles of 99 and 98 rows).
pub const QUERY_TILE: usize = 128;

/// Rows of `dE` / `dF` per task of their reduction over blocks.
const GRAD_ROW_TILE: usize = 64;

/// The checked sizes of one Linformer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinformerDims {
    /// `N`: rows of the inputs, all blocks together.
    pub nodes: usize,
    /// `B`: number of blocks (images).
    pub blocks: usize,
    /// `n`: tokens per block, the rows of `E` and `F` (the peer's `seq_len`).
    pub tokens: usize,
    /// `k`: projected length, the columns of `E` and `F`.
    pub k: usize,
    /// `H`.
    pub heads: usize,
    /// Query/key width per head `d`.
    pub key_dim: usize,
    /// Value width per head `dv`.
    pub value_dim: usize,
}

/// Checks every precondition of a Linformer call up front and returns its sizes: `E` and `F`
/// both `[n x k]` with `n, k >= 1`; `blocks` the offsets `[0, n, 2n, ..., N]` of blocks of
/// exactly `n` tokens (another size is an error: the projection is tied to `n`); query, key and
/// value with `N` rows and `H d`, `H d`, `H dv` columns (`d, dv >= 1`); no edge bias; every value
/// finite ([`Error::NonFinite`]).
pub fn linformer_dims(inputs: &AttentionInputs<'_>, blocks: &[usize], e: &Matrix, f: &Matrix) -> Result<LinformerDims> {
    let heads = inputs.heads;
    if heads == 0 {
        return Err(Error::invalid("Linformer heads", "must be at least 1"));
    }
    if inputs.bias.is_some() {
        return Err(Error::invalid("Linformer edge bias", "Linformer attends to projected keys, not edges: no bias"));
    }
    let (n, k) = e.shape();
    if k == 0 {
        return Err(Error::invalid("Linformer k (columns of E = proj_k)", "must be at least 1"));
    }
    if n == 0 {
        return Err(Error::invalid("Linformer n (rows of E = proj_k, the peer's seq_len)", "must be at least 1"));
    }
    if f.shape() != e.shape() {
        return Err(Error::shape(
            "Linformer F (proj_v)",
            format!("[{n} x {k}] like E (proj_k)"),
            format!("[{} x {}]", f.rows(), f.cols()),
        ));
    }
    let nodes = inputs.query.rows();
    if blocks.first() != Some(&0) || blocks.last() != Some(&nodes) {
        return Err(Error::invalid(
            "Linformer blocks",
            format!("must be node offsets [0, .., {nodes}] (the query rows), got {blocks:?}"),
        ));
    }
    for (b, w) in blocks.windows(2).enumerate() {
        if w[1] < w[0] || w[1] - w[0] != n {
            let got = w[1] as i128 - w[0] as i128;
            return Err(Error::invalid(
                "Linformer block size",
                format!(
                    "Linformer was built for n = {n} tokens (seq_len, the rows of E and F), got {got} tokens in block {b}"
                ),
            ));
        }
    }
    for (name, m) in [("query", inputs.query), ("key", inputs.key), ("value", inputs.value)] {
        if m.rows() != nodes {
            return Err(Error::shape(
                format!("Linformer {name}"),
                format!("{nodes} rows (one per token)"),
                format!("{} rows", m.rows()),
            ));
        }
        if m.cols() % heads != 0 || m.cols() == 0 {
            return Err(Error::shape(
                format!("Linformer {name}"),
                format!("a positive multiple of {heads} heads columns"),
                format!("{} columns", m.cols()),
            ));
        }
    }
    if inputs.key.cols() != inputs.query.cols() {
        return Err(Error::shape(
            "Linformer key",
            format!("{} columns like the query", inputs.query.cols()),
            format!("{} columns", inputs.key.cols()),
        ));
    }
    for (name, m) in [("query", inputs.query), ("key", inputs.key), ("value", inputs.value)] {
        ensure_finite_block(&format!("Linformer {name}"), m)?;
    }
    ensure_finite("Linformer E (proj_k)", e.as_slice())?;
    ensure_finite("Linformer F (proj_v)", f.as_slice())?;
    Ok(LinformerDims {
        nodes,
        blocks: blocks.len() - 1,
        tokens: n,
        k,
        heads,
        key_dim: inputs.query.cols() / heads,
        value_dim: inputs.value.cols() / heads,
    })
}

/// What [`linformer_backward`] needs from the forward: `K'` `[B k x H d]` and `V'` `[B k x H dv]`
/// (block `b` owns rows `b k .. (b + 1) k`), and the log-sum-exp of each (row, head) `[N x H]`.
/// `B k H (d + dv) + N H` floats; the probabilities are recomputed, not kept.
#[derive(Clone, Debug, PartialEq)]
pub struct LinformerCache {
    key_proj: Matrix,
    value_proj: Matrix,
    log_sum_exp: Vec<f32>,
}

impl LinformerCache {
    /// `K'` of every block, `[B k x H d]`: rows `b k .. (b + 1) k` are `E^T K_b`.
    pub fn key_proj(&self) -> &Matrix {
        &self.key_proj
    }

    /// `V'` of every block, `[B k x H dv]`: rows `b k .. (b + 1) k` are `F^T V_b`.
    pub fn value_proj(&self) -> &Matrix {
        &self.value_proj
    }

    /// `lse = ln sum_r exp(s_r)` per (row, head), `[N x H]` row-major.
    pub fn log_sum_exp(&self) -> &[f32] {
        &self.log_sum_exp
    }

    /// Floats held: `B k H (d + dv) + N H`.
    pub fn floats(&self) -> usize {
        self.key_proj.as_slice().len() + self.value_proj.as_slice().len() + self.log_sum_exp.len()
    }
}

/// Gradients of one Linformer call (shapes as the inputs).
///
/// With key-value sharing (the peer's `share_kv`) the caller passes the same matrix as `E` and
/// `F`; its gradient is then `e + f`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinformerGrads {
    /// `dL/dQ` `[N x H d]`.
    pub query: Matrix,
    /// `dL/dK` `[N x H d]`.
    pub key: Matrix,
    /// `dL/dV` `[N x H dv]`.
    pub value: Matrix,
    /// `dL/dE` `[n x k]`, summed over the blocks.
    pub e: Matrix,
    /// `dL/dF` `[n x k]`, summed over the blocks.
    pub f: Matrix,
}

/// A raw pointer that parallel tasks write through at disjoint tiles.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only dereferenced through `SharedMut::tile` / `SharedMut::write` at positions that
// exactly one task owns (see the SAFETY comments at the calls), while the buffer outlives the
// parallel loop.
unsafe impl Send for SharedMut {}
// SAFETY: as above: concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The `[rows x cols]` tile at `(r0, c0)` of the row-major buffer with row stride `stride`.
    ///
    /// # Safety
    /// The buffer must be live for `'a`, hold the whole tile (`(r0 + rows - 1) * stride + c0 +
    /// cols` floats at least, `c0 + cols <= stride`), and no one else may access the tile for `'a`.
    unsafe fn tile<'a>(self, stride: usize, r0: usize, c0: usize, rows: usize, cols: usize) -> MatMut<'a, f32> {
        // SAFETY: the caller's contract: the tile lies inside the live buffer and is exclusive.
        unsafe { MatMut::from_raw_parts_mut(self.0.add(r0 * stride + c0), rows, cols, stride as isize, 1) }
    }

    /// Writes `value` at flat position `at`.
    ///
    /// # Safety
    /// `at` must be inside the live buffer and written by this task only.
    unsafe fn write(self, at: usize, value: f32) {
        // SAFETY: the caller's contract.
        unsafe { *self.0.add(at) = value }
    }
}

/// `out_bh = a x_bh` for every block `b` and head `h` (one task each): `x` holds row blocks of
/// `a.ncols()` rows, `out` row blocks of `a.nrows()` rows, head `h` owns columns `h w .. (h + 1) w`
/// (`w = x.ncols() / heads`). With `a = E^T` it is `K'_b = E^T K_b`; with `a = E`, `dK_b = E dK'_b`.
fn blockwise(a: MatRef<'_, f32>, x: MatRef<'_, f32>, heads: usize, out: &mut Matrix) {
    let (rows_out, rows_in, width) = (a.nrows(), a.ncols(), x.ncols() / heads);
    let blocks = x.nrows() / rows_in;
    debug_assert_eq!(out.shape(), (blocks * rows_out, x.ncols()));
    let stride = out.cols();
    let ptr = SharedMut(out.as_mut_slice().as_mut_ptr());
    (0..blocks * heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / heads, t % heads);
        let src = x.submatrix(b * rows_in, h * width, rows_in, width);
        // SAFETY: `out` is borrowed mutably for this whole function and outlives the loop; task
        // (b, h) writes only rows `b rows_out .. (b + 1) rows_out` x columns `h width .. (h + 1)
        // width` of the `[blocks rows_out x heads width]` buffer, disjoint from every other task.
        let dst = unsafe { ptr.tile(stride, b * rows_out, h * width, rows_out, width) };
        matmul(dst, Accum::Replace, a, src, 1.0, Par::Seq);
    });
}

/// One attention task: head `head` of block `block`, block-local query rows `q0 .. q1`.
#[derive(Clone, Copy, Debug)]
struct Task {
    block: usize,
    head: usize,
    q0: usize,
    q1: usize,
}

/// The tasks in (block, head, tile) order; tiles of equal size, at most [`QUERY_TILE`] rows.
fn tasks(dims: &LinformerDims) -> (Vec<Task>, usize) {
    let n = dims.tokens;
    let tile = n.div_ceil(n.div_ceil(QUERY_TILE)).max(1);
    let mut tasks = Vec::with_capacity(dims.blocks * dims.heads * n.div_ceil(tile));
    for block in 0..dims.blocks {
        for head in 0..dims.heads {
            for q0 in (0..n).step_by(tile) {
                tasks.push(Task { block, head, q0, q1: (q0 + tile).min(n) });
            }
        }
    }
    (tasks, tile)
}

/// The row softmax of a score tile `s` `[rows x cols]`, in place, with each row's log-sum-exp.
struct Softmax<'a> {
    s: &'a mut [f32],
    cols: usize,
    lse: &'a mut [f32],
}

impl WithSimd for Softmax<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Softmax { s, cols, lse } = self;
        for (row, lse) in s.chunks_exact_mut(cols).zip(lse.iter_mut()) {
            // m = rowmax s;  l = sum exp(s - m) >= 1 (the max term is 1; inputs are finite)
            let m = within::max(simd, row);
            let l = within::exp_sub_sum(simd, row, m);
            within::scale(simd, row, 1.0 / l);
            *lse = m + l.ln();
        }
    }
}

/// The forward (math in the module docs): `out` `[N x H dv]` and what the backward needs.
///
/// `blocks` are node offsets `[0, n, 2n, ..., N]` (a `Graph::blocks()` of equal blocks), `e` and
/// `f` the projections `[n x k]` (pass the same matrix twice for key-value sharing). Every
/// precondition is checked first ([`linformer_dims`]).
pub fn linformer_forward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    e: &Matrix,
    f: &Matrix,
) -> Result<(Matrix, LinformerCache)> {
    let dims = linformer_dims(inputs, blocks, e, f)?;
    let LinformerDims { nodes, blocks: nb, tokens: n, k, heads, key_dim: d, value_dim: dv } = dims;
    // K'_b = E^T K_b [k x H d], V'_b = F^T V_b [k x H dv]
    let mut key_proj = Matrix::zeros(nb * k, heads * d);
    let mut value_proj = Matrix::zeros(nb * k, heads * dv);
    rayon::join(
        || blockwise(e.as_faer().transpose(), inputs.key.as_faer(), heads, &mut key_proj),
        || blockwise(f.as_faer().transpose(), inputs.value.as_faer(), heads, &mut value_proj),
    );

    let scale = 1.0 / (d as f32).sqrt();
    let (tasks, tile) = tasks(&dims);
    let mut out = Matrix::zeros(nodes, heads * dv);
    let mut lse = vec![0.0f32; nodes * heads];
    let (out_ptr, lse_ptr) = (SharedMut(out.as_mut_slice().as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    let (kp, vp) = (key_proj.as_faer(), value_proj.as_faer());
    tasks.par_iter().for_each_init(
        || (vec![0.0f32; tile * k], vec![0.0f32; tile]),
        |(s, lse_t), t| {
            let (rows, base, h) = (t.q1 - t.q0, t.block * n, t.head);
            let (s, lse_t) = (&mut s[..rows * k], &mut lse_t[..rows]);
            // S = scale Q_bh K'_bh^T [rows x k]
            let q = inputs.query.as_faer().submatrix(base + t.q0, h * d, rows, d);
            let kh = kp.submatrix(t.block * k, h * d, k, d);
            matmul(MatMut::from_row_major_slice_mut(s, rows, k), Accum::Replace, q, kh.transpose(), scale, Par::Seq);
            // P = softmax_rows(S), lse = m + ln l
            pulp::Arch::new().dispatch(Softmax { s, cols: k, lse: lse_t });
            // O_bh = P V'_bh [rows x dv]
            let vh = vp.submatrix(t.block * k, h * dv, k, dv);
            // SAFETY: `out` `[N x H dv]` is borrowed mutably for this whole call and outlives the
            // loop; this task owns rows base + q0 .. base + q1 of head h (columns h dv .. (h + 1)
            // dv): tasks partition (block, head, query tile), so no other task touches the tile.
            let dst = unsafe { out_ptr.tile(heads * dv, base + t.q0, h * dv, rows, dv) };
            matmul(dst, Accum::Replace, MatRef::from_row_major_slice(s, rows, k), vh, 1.0, Par::Seq);
            for (a, &x) in lse_t.iter().enumerate() {
                // SAFETY: element (row base + q0 + a, head h) of `lse` `[N x H]`, owned by this
                // task as above; `lse` outlives the loop.
                unsafe { lse_ptr.write((base + t.q0 + a) * heads + h, x) };
            }
        },
    );
    Ok((out, LinformerCache { key_proj, value_proj, log_sum_exp: lse }))
}

/// The softmax backward of a tile, in place: `s` holds the scores and becomes `P`, `dp` holds
/// `dP` and becomes `dS = P * (dP - rowsum(P * dP))`.
struct SoftmaxBackward<'a> {
    s: &'a mut [f32],
    dp: &'a mut [f32],
    cols: usize,
    lse: &'a [f32],
}

impl WithSimd for SoftmaxBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let SoftmaxBackward { s, dp, cols, lse } = self;
        for ((p, dp), &lse) in s.chunks_exact_mut(cols).zip(dp.chunks_exact_mut(cols)).zip(lse) {
            // P = exp(S - lse), renormalised (the f32 lse has lost digits at large logits; the
            // sum is 1 up to rounding, and exactly the forward's softmax after the division)
            let sum = within::exp_sub_sum(simd, p, lse);
            within::scale(simd, p, 1.0 / sum);
            // dS = P * (dP - sum_r P dP)
            let dot = within::dot(simd, p, dp);
            for (x, &pr) in dp.iter_mut().zip(p.iter()) {
                *x = pr * (*x - dot);
            }
        }
    }
}

/// The backward of [`linformer_forward`]: `dout = dL/dout` `[N x H dv]` in, every gradient out.
///
/// ```text
/// dP    = dO_bh V'_bh^T                  [TQ x k]   (O_bh = P V'_bh)
/// dV'_bh += P^T dO_bh                    [k x dv]   (O_bh = P V'_bh; summed over query tiles)
/// dS    = P * (dP - rowsum(P * dP))      [TQ x k]   (P = softmax_rows(S))
/// dQ_bh = scale dS K'_bh                 [TQ x d]   (S = scale Q_bh K'_bh^T)
/// dK'_bh += scale dS^T Q_bh              [k x d]    (S = scale Q_bh K'_bh^T)
/// dK_b  = E dK'_b                        [n x H d]  (K'_b = E^T K_b)
/// dE   += K_b dK'_b^T                    [n x k]    (K'_b = E^T K_b; summed over blocks)
/// dV_b  = F dV'_b                        [n x H dv] (V'_b = F^T V_b)
/// dF   += V_b dV'_b^T                    [n x k]    (V'_b = F^T V_b; summed over blocks)
/// ```
///
/// Passes: per (block, head) the first five lines, query tile after query tile, each tile
/// writing its `dQ` rows and adding its part of `dK'`, `dV'` in tile order; per (block, head)
/// `dK`, `dV`; per 64-row tile of `dE` and `dF` the sum over blocks in block order. Every
/// reduction has a fixed order: the same bits on any thread count.
///
/// With key-value sharing (`share_kv`: one projection for keys and values) pass the same matrix
/// as `e` and `f` and add `grads.e + grads.f` for its gradient (and, when the values are the
/// keys themselves, `grads.key + grads.value` for theirs).
pub fn linformer_backward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    e: &Matrix,
    f: &Matrix,
    cache: &LinformerCache,
    dout: &Matrix,
) -> Result<LinformerGrads> {
    let dims = linformer_dims(inputs, blocks, e, f)?;
    let LinformerDims { nodes, blocks: nb, tokens: n, k, heads, key_dim: d, value_dim: dv } = dims;
    dout.expect_shape("Linformer backward dout", nodes, heads * dv)?;
    ensure_finite("Linformer backward dout", dout.as_slice())?;
    cache.key_proj.expect_shape("Linformer cache K' (from another call?)", nb * k, heads * d)?;
    cache.value_proj.expect_shape("Linformer cache V' (from another call?)", nb * k, heads * dv)?;
    if cache.log_sum_exp.len() != nodes * heads {
        return Err(Error::shape(
            "Linformer cache log-sum-exp (from another call?)",
            format!("[{nodes} x {heads}] = {} values", nodes * heads),
            format!("{} values", cache.log_sum_exp.len()),
        ));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let (kp, vp) = (cache.key_proj.as_faer(), cache.value_proj.as_faer());
    let (tasks, tile) = tasks(&dims);

    // Pass 1, per (block, head), its query tiles in order: dQ rows, and dK', dV' accumulated
    // tile after tile into the (block, head) columns (a fixed order: the same bits on any
    // thread count; no per-tile partials to store and sum).
    let mut dq = Matrix::zeros(nodes, heads * d);
    let mut dkp = Matrix::zeros(nb * k, heads * d);
    let mut dvp = Matrix::zeros(nb * k, heads * dv);
    let dq_ptr = SharedMut(dq.as_mut_slice().as_mut_ptr());
    let (dkp_ptr, dvp_ptr) = (SharedMut(dkp.as_mut_slice().as_mut_ptr()), SharedMut(dvp.as_mut_slice().as_mut_ptr()));
    tasks.par_chunk_by(|a, b| (a.block, a.head) == (b.block, b.head)).for_each_init(
        || (vec![0.0f32; tile * k], vec![0.0f32; tile * k], vec![0.0f32; tile]),
        |(s, dp, lse_t), head_tiles| {
            let (b, h) = (head_tiles[0].block, head_tiles[0].head);
            // SAFETY: `dkp` `[B k x H d]` and `dvp` `[B k x H dv]` are borrowed mutably for this
            // whole call and outlive the loop; this task is the only one of (block b, head h),
            // and owns rows b k .. (b + 1) k x head h's columns of both.
            let (mut pk, mut pv) = unsafe {
                (dkp_ptr.tile(heads * d, b * k, h * d, k, d), dvp_ptr.tile(heads * dv, b * k, h * dv, k, dv))
            };
            for (ti, t) in head_tiles.iter().enumerate() {
                let (rows, base) = (t.q1 - t.q0, b * n);
                let accum = if ti == 0 { Accum::Replace } else { Accum::Add };
                let (s, dp, lse_t) = (&mut s[..rows * k], &mut dp[..rows * k], &mut lse_t[..rows]);
                for (a, x) in lse_t.iter_mut().enumerate() {
                    *x = cache.log_sum_exp[(base + t.q0 + a) * heads + h];
                }
                let q = inputs.query.as_faer().submatrix(base + t.q0, h * d, rows, d);
                let go = dout.as_faer().submatrix(base + t.q0, h * dv, rows, dv);
                let kh = kp.submatrix(b * k, h * d, k, d);
                let vh = vp.submatrix(b * k, h * dv, k, dv);
                // S = scale Q_bh K'_bh^T (recomputed), P = exp(S - lse)
                matmul(
                    MatMut::from_row_major_slice_mut(s, rows, k),
                    Accum::Replace,
                    q,
                    kh.transpose(),
                    scale,
                    Par::Seq,
                );
                // dP = dO_bh V'_bh^T
                matmul(
                    MatMut::from_row_major_slice_mut(dp, rows, k),
                    Accum::Replace,
                    go,
                    vh.transpose(),
                    1.0,
                    Par::Seq,
                );
                // dS = P * (dP - rowsum(P * dP))
                pulp::Arch::new().dispatch(SoftmaxBackward { s, dp, cols: k, lse: lse_t });
                let (p, ds) = (MatRef::from_row_major_slice(s, rows, k), MatRef::from_row_major_slice(dp, rows, k));
                // dV'_bh += P^T dO_bh
                matmul(pv.as_mut(), accum, p.transpose(), go, 1.0, Par::Seq);
                // dK'_bh += scale dS^T Q_bh
                matmul(pk.as_mut(), accum, ds.transpose(), q, scale, Par::Seq);
                // SAFETY: `dq` `[N x H d]` is borrowed mutably for this whole call and outlives
                // the loop; this task owns rows base + q0 .. base + q1 of head h (columns h d ..
                // (h + 1) d): tasks partition (block, head), so no other task touches the tile.
                let dst = unsafe { dq_ptr.tile(heads * d, base + t.q0, h * d, rows, d) };
                // dQ_bh = scale dS K'_bh
                matmul(dst, Accum::Replace, ds, kh, scale, Par::Seq);
            }
        },
    );

    // Pass 3, per (block, head): dK_b = E dK'_b, dV_b = F dV'_b.
    let mut dk = Matrix::zeros(nodes, heads * d);
    let mut dvm = Matrix::zeros(nodes, heads * dv);
    rayon::join(
        || blockwise(e.as_faer(), dkp.as_faer(), heads, &mut dk),
        || blockwise(f.as_faer(), dvp.as_faer(), heads, &mut dvm),
    );

    // Pass 4, per row tile: dE = sum_b K_b dK'_b^T, dF = sum_b V_b dV'_b^T, blocks in order.
    let (de, df) = rayon::join(
        || reduce_blocks(inputs.key.as_faer(), dkp.as_faer(), n, k),
        || reduce_blocks(inputs.value.as_faer(), dvp.as_faer(), n, k),
    );
    Ok(LinformerGrads { query: dq, key: dk, value: dvm, e: de, f: df })
}

/// `sum_b X_b dX'_b^T` `[n x k]`, `X_b` the rows `b n .. (b + 1) n` of `x`, `dX'_b` the rows
/// `b k .. (b + 1) k` of `dxp`; one task per [`GRAD_ROW_TILE`] rows, each adding the blocks in
/// order (fixed tiles and order: the same bits on any thread count).
fn reduce_blocks(x: MatRef<'_, f32>, dxp: MatRef<'_, f32>, n: usize, k: usize) -> Matrix {
    let blocks = dxp.nrows() / k;
    let width = x.ncols();
    let mut g = Matrix::zeros(n, k);
    g.as_mut_slice().par_chunks_mut(GRAD_ROW_TILE * k).enumerate().for_each(|(t, chunk)| {
        let (r0, rows) = (t * GRAD_ROW_TILE, chunk.len() / k);
        let mut dst = MatMut::from_row_major_slice_mut(chunk, rows, k);
        for b in 0..blocks {
            let accum = if b == 0 { Accum::Replace } else { Accum::Add };
            let xb = x.submatrix(b * n + r0, 0, rows, width);
            let dxb = dxp.submatrix(b * k, 0, k, width);
            matmul(dst.as_mut(), accum, xb, dxb.transpose(), 1.0, Par::Seq);
        }
    });
    g
}
