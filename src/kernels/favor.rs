//! FAVOR+ (Performer) attention, the fast path: positive orthogonal random features and the
//! linear form of the kernel attention, by faer GEMMs over fixed row tiles.
//!
//! With `x' = d^-1/4 x`, `W` `[m x d]` (rows `w_r`, [`crate::attention::performer`] builds it),
//! `eps = 1e-4` and `M` a stabiliser that the backward holds constant (performer-pytorch's
//! `.detach()`), per block `b` (one image) and head `h`:
//!
//! ```text
//! e(x)_r   = m^-1/2 exp(w_r . x' - |x'|^2/2 - M)        phi(x) = e(x) + m^-1/2 eps      [n_b x m]
//!            M = max_r w_r . q'_i  (per query row)      M = max_{j,r} w_r . k'_j  (per block, head)
//! C        = sum_j phi(k_j) v_j^T      [m x dv]         s = sum_j phi(k_j)               [m]
//! num_i    = C^T phi(q_i)              [dv]             den_i = phi(q_i) . s
//! out_i    = num_i / den_i             [N x H*dv]
//! ```
//!
//! Forward, in two parallel phases. Keys: one task per (block, head), a first pass over the
//! key tiles (`TILE` rows) for `M` (`K W^T` by GEMM), a second that recomputes each tile's
//! `K W^T`, maps it to `phi` and accumulates `C += phi^T V_t` (GEMM) and `s`, tile after tile.
//! Queries: one task per (block, head, query tile): `phi(Q)` `[T x m]`, `num = phi(Q) C` (GEMM),
//! `den = phi(Q) s`. The [`FavorCache`] keeps `M`, `C` and `s` per (block, head), `O(m dv)`,
//! never the `N x m` feature maps: the backward recomputes them tile by tile.
//!
//! The backward (one task per (block, head), queries then keys), each line quoting the forward
//! line it differentiates, `dout` given:
//!
//! ```text
//! dnum_i   = dout_i / den_i                              (out_i = num_i / den_i)
//! dden_i   = -(dout_i . out_i) / den_i                   (out_i = num_i / den_i)
//! dphi_q_i = C dnum_i + s dden_i                         (num_i = C^T phi_q_i, den_i = phi_q_i . s)
//! dC       = sum_i phi_q_i dnum_i^T                      (num_i = C^T phi_q_i)
//! ds       = sum_i phi_q_i dden_i                        (den_i = phi_q_i . s)
//! dphi_k_j = dC v_j + ds                                 (C = sum_j phi_k_j v_j^T, s = sum_j phi_k_j)
//! dv_j     = dC^T phi_k_j                                (C = sum_j phi_k_j v_j^T)
//! g        = dphi o e(x)                                 (phi_r = m^-1/2 (exp(w_r.x' - |x'|^2/2 - M) + eps))
//! dx'      = W^T g - x' sum_r g_r                        (d/dx' of w_r.x' - |x'|^2/2, M constant)
//! dx       = d^-1/4 dx'                                  (x' = d^-1/4 x)
//! ```
//!
//! As GEMMs per tile: `dNum = dOut / den`, `dPhi_Q = dNum C^T + dden s^T`, `dC += phi_Q^T dNum`,
//! `dQ = d^-1/4 (G W) - d^-1/2 g x`; then `dV_t = phi_K dC`, `dPhi_K = V_t dC^T + 1 ds^T`,
//! `dK` as `dQ`. Every reduction runs in a fixed order inside one task (tiles never depend on the
//! thread count), so results are bit-identical on any rayon pool. The f64 oracles are
//! [`crate::attention::performer::performer_reference`] (the kernel attention materialised)
//! and [`crate::attention::performer::performer_backward_reference`].
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::attention::performer::orthogonal_random_features;
//! use patchgraph::kernels::favor::{favor_backward, favor_forward};
//! let x = Matrix::from_fn(5, 4, |i, j| ((3 * i + j) as f32).cos() * 0.5);
//! let inputs = AttentionInputs::new(&x, &x, &x, 1); // one head of width 4
//! let w = orthogonal_random_features(8, 4, 1).unwrap();
//! let (out, cache) = favor_forward(&inputs, &[0, 5], &w).unwrap();
//! assert_eq!(cache.context(0, 0).len(), 8 * 4); // C is [m x dv]
//! let ones = Matrix::from_fn(5, 4, |_, _| 1.0);
//! let (_dq, _dk, dv) = favor_backward(&inputs, &[0, 5], &w, &cache, &ones).unwrap();
//! // the weights of each query sum to one, so d sum(out) / d v_j sums to N over j
//! let total: f32 = dv.as_slice().iter().sum();
//! assert!((total - 5.0 * 4.0).abs() < 1e-4);
//! # let _ = out;
//! ```

use super::simd;
use crate::algebra::AttentionInputs;
use crate::error::{Error, Result, ensure_finite, ensure_finite_block};
use crate::tensor::{ColumnBlock, Matrix};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The `eps` added to every feature (performer-pytorch's `softmax_kernel` default).
pub const EPS: f32 = 1e-4;

/// Rows per tile, for queries and keys alike (a block's query rows are cut into equal tiles of
/// at most this many in the forward).
pub const TILE: usize = 256;

/// The checked sizes of one FAVOR+ call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FavorDims {
    /// `N`.
    pub nodes: usize,
    /// `H`.
    pub heads: usize,
    /// Query/key width per head `d`.
    pub head_dim: usize,
    /// Value width per head `dv`.
    pub value_dim: usize,
    /// Random features `m`.
    pub features: usize,
}

/// Checks every precondition of a FAVOR+ call up front: heads, block offsets, shapes, the
/// projection, finiteness. Shared by the fast kernel and the f64 references.
pub(crate) fn check(inputs: &AttentionInputs<'_>, blocks: &[usize], projection: &Matrix) -> Result<FavorDims> {
    let heads = inputs.heads;
    if heads == 0 {
        return Err(Error::invalid("heads", "must be at least 1"));
    }
    if inputs.bias.is_some() {
        return Err(Error::invalid("performer bias", "FAVOR+ attends over complete blocks and takes no edge bias"));
    }
    let n = inputs.query.rows();
    if blocks.len() < 2 || blocks[0] != 0 || blocks.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(
            "blocks",
            format!("node offsets [0, n_0, n_0 + n_1, ..., N] (non-decreasing, from 0) expected, got {blocks:?}"),
        ));
    }
    let total = blocks[blocks.len() - 1];
    for (name, x) in [("query", inputs.query), ("key", inputs.key), ("value", inputs.value)] {
        if x.rows() != total {
            return Err(Error::shape(
                format!("performer {name}"),
                format!("{total} rows (the blocks' last offset)"),
                format!("{} rows", x.rows()),
            ));
        }
        if x.cols() % heads != 0 {
            return Err(Error::shape(
                format!("performer {name}"),
                format!("a multiple of {heads} heads columns"),
                format!("{} columns", x.cols()),
            ));
        }
    }
    if inputs.key.cols() != inputs.query.cols() {
        return Err(Error::shape(
            "performer key",
            format!("{} columns like the query", inputs.query.cols()),
            format!("{} columns", inputs.key.cols()),
        ));
    }
    let head_dim = inputs.query.cols() / heads;
    if head_dim == 0 {
        return Err(Error::shape(
            "performer query",
            format!("at least one column per head ({heads} heads)"),
            "0 columns",
        ));
    }
    if projection.rows() == 0 {
        return Err(Error::invalid("features", "m = 0: FAVOR+ needs at least one random feature (projection row)"));
    }
    if projection.cols() != head_dim {
        return Err(Error::shape(
            "performer projection",
            format!("[m x {head_dim}] (one column per query/key channel of a head)"),
            format!("[{} x {}]", projection.rows(), projection.cols()),
        ));
    }
    ensure_finite_block("performer query", inputs.query)?;
    ensure_finite_block("performer key", inputs.key)?;
    ensure_finite_block("performer value", inputs.value)?;
    ensure_finite("performer projection", projection.as_slice())?;
    Ok(FavorDims { nodes: n, heads, head_dim, value_dim: inputs.value.cols() / heads, features: projection.rows() })
}

/// What the backward needs from the forward, per (block, head): the key stabiliser `M`, the
/// context `C = sum_j phi(k_j) v_j^T` `[m x dv]` and `s = sum_j phi(k_j)` `[m]`. `O(B H m dv)`
/// in all; the `N x m` feature maps are not kept.
#[derive(Clone, Debug, PartialEq)]
pub struct FavorCache {
    blocks: Vec<usize>,
    heads: usize,
    features: usize,
    value_dim: usize,
    /// Indexed `block * heads + head`.
    stats: Vec<HeadStats>,
}

/// The key statistics of one (block, head).
#[derive(Clone, Debug, PartialEq)]
struct HeadStats {
    key_max: f32,
    context: Vec<f32>,
    ksum: Vec<f32>,
}

impl FavorCache {
    /// The key stabiliser `M = max_{j, r} w_r . k'_j` of `(block, head)` (`-inf` for an empty block).
    pub fn key_max(&self, block: usize, head: usize) -> f32 {
        self.stats[block * self.heads + head].key_max
    }

    /// `C = sum_j phi(k_j) v_j^T` of `(block, head)`, row-major `[m x dv]`.
    pub fn context(&self, block: usize, head: usize) -> &[f32] {
        &self.stats[block * self.heads + head].context
    }

    /// `s = sum_j phi(k_j)` of `(block, head)`, `[m]`.
    pub fn ksum(&self, block: usize, head: usize) -> &[f32] {
        &self.stats[block * self.heads + head].ksum
    }

    /// The number of random features `m`.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Floats held: `B H (m dv + m + 1)`.
    pub fn len_floats(&self) -> usize {
        self.stats.iter().map(|s| s.context.len() + s.ksum.len() + 1).sum()
    }
}

/// Rows `r0 .. r0 + rows` of `x`, head `h`: one tile of queries or keys.
#[derive(Clone, Copy)]
struct Rows<'a> {
    x: ColumnBlock<'a>,
    r0: usize,
    rows: usize,
    h: usize,
}

/// What every task reads.
struct Problem<'a> {
    inputs: &'a AttentionInputs<'a>,
    blocks: &'a [usize],
    w: MatRef<'a, f32>,
    heads: usize,
    d: usize,
    dv: usize,
    m: usize,
    /// `d^-1/4`.
    alpha: f32,
    /// `m^-1/2`.
    ratio: f32,
}

impl<'a> Problem<'a> {
    fn new(inputs: &'a AttentionInputs<'a>, blocks: &'a [usize], projection: &'a Matrix, dims: FavorDims) -> Self {
        Problem {
            inputs,
            blocks,
            w: projection.as_faer(),
            heads: dims.heads,
            d: dims.head_dim,
            dv: dims.value_dim,
            m: dims.features,
            alpha: (dims.head_dim as f32).powf(-0.25),
            ratio: (dims.features as f32).powf(-0.5),
        }
    }

    /// `dd = x' W^T` for rows `r0 .. r0 + rows` of `x`, head `h`, into `out` `[rows x m]`.
    fn project(&self, x: ColumnBlock<'_>, r0: usize, rows: usize, h: usize, out: &mut [f32]) {
        let xt = x.as_faer().submatrix(r0, h * self.d, rows, self.d);
        let dst = MatMut::from_row_major_slice_mut(&mut out[..rows * self.m], rows, self.m);
        matmul(dst, Accum::Replace, xt, self.w.transpose(), self.alpha, Par::Seq);
    }

    /// `phi` of rows `r0 .. r0 + rows` of `x` (head `h`) into `phi` `[rows x m]`, and `e = phi -
    /// m^-1/2 eps` into `e` when asked. The stabiliser is `key_max` when given (keys), else each
    /// row's own max (queries).
    fn features(&self, t: Rows<'_>, key_max: Option<f32>, e: Option<&mut [f32]>, phi: &mut [f32]) {
        let Rows { x, r0, rows, h } = t;
        let (d, m) = (self.d, self.m);
        let phi = &mut phi[..rows * m];
        // data_dash = (d^-1/4 x) W^T
        self.project(x, r0, rows, h, phi);
        let half_a2 = 0.5 * self.alpha * self.alpha;
        for (a, row) in phi.chunks_exact_mut(m).enumerate() {
            let xi = &x.row(r0 + a)[h * d..(h + 1) * d];
            // diag = |x'|^2 / 2
            let diag = half_a2 * simd::dot(xi, xi);
            let max = key_max.unwrap_or_else(|| simd::max(row));
            // e = m^-1/2 exp(data_dash - diag - M)
            simd::exp_sub_sum(row, diag + max);
            simd::scale(row, self.ratio);
        }
        if let Some(e) = e {
            e[..rows * m].copy_from_slice(phi);
        }
        // phi = e + m^-1/2 eps
        let shift = self.ratio * EPS;
        for v in phi.iter_mut() {
            *v += shift;
        }
    }

    /// The key statistics of one (block, head): `M`, then `C` and `s` tile after tile.
    fn key_stats(&self, b: usize, h: usize) -> HeadStats {
        let (m, dv) = (self.m, self.dv);
        let (base, n) = (self.blocks[b], self.blocks[b + 1] - self.blocks[b]);
        let mut phi = vec![0.0f32; TILE.min(n) * m];
        let mut context = vec![0.0f32; m * dv];
        let mut ksum = vec![0.0f32; m];
        // Pass 1: M = max_{j, r} w_r . k'_j over the block (performer-pytorch's amax over both dims).
        let mut key_max = f32::NEG_INFINITY;
        for k0 in (0..n).step_by(TILE) {
            let rows = TILE.min(n - k0);
            self.project(self.inputs.key, base + k0, rows, h, &mut phi);
            key_max = key_max.max(simd::max(&phi[..rows * m]));
        }
        // Pass 2: C += phi_K^T V_t, s += colsum phi_K.
        for k0 in (0..n).step_by(TILE) {
            let rows = TILE.min(n - k0);
            self.features(Rows { x: self.inputs.key, r0: base + k0, rows, h }, Some(key_max), None, &mut phi);
            let pk = MatRef::from_row_major_slice(&phi[..rows * m], rows, m);
            let vt = self.inputs.value.as_faer().submatrix(base + k0, h * dv, rows, dv);
            let c = MatMut::from_row_major_slice_mut(&mut context, m, dv);
            matmul(c, Accum::Add, pk.transpose(), vt, 1.0, Par::Seq);
            for row in phi[..rows * m].chunks_exact(m) {
                simd::axpy(&mut ksum, 1.0, row);
            }
        }
        HeadStats { key_max, context, ksum }
    }
}

/// A raw pointer to a row-major matrix that tasks write through at disjoint tiles.
#[derive(Clone, Copy)]
struct SharedMut {
    ptr: *mut f32,
    rows: usize,
    stride: usize,
}
// SAFETY: the pointer is only written through at tiles that exactly one task owns (see
// `SharedMut::write`), while the matrix outlives the parallel loop.
unsafe impl Send for SharedMut {}
// SAFETY: as above: concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn new(m: &mut Matrix) -> Self {
        SharedMut { ptr: m.as_mut_slice().as_mut_ptr(), rows: m.rows(), stride: m.cols() }
    }

    /// Copies `src` (row-major, rows of `width`) to rows `r0 ..`, columns `c0 .. c0 + width`.
    ///
    /// # Safety
    /// The tile must lie inside the matrix (checked by `debug_assert`), no other task may read or
    /// write it during the parallel loop, and the matrix must outlive the loop.
    unsafe fn write(self, r0: usize, c0: usize, width: usize, src: &[f32]) {
        if width == 0 {
            return;
        }
        debug_assert!(r0 + src.len() / width <= self.rows && c0 + width <= self.stride);
        for (a, row) in src.chunks_exact(width).enumerate() {
            // SAFETY: row r0 + a < rows, columns c0 .. c0 + width <= stride: inside the matrix;
            // exclusive to the calling task by the function's contract.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add((r0 + a) * self.stride + c0), width) };
        }
    }
}

/// A forward task: head `head` of block `block`, local query rows `q0 .. q1`.
#[derive(Clone, Copy, Debug)]
struct Task {
    block: usize,
    head: usize,
    q0: usize,
    q1: usize,
}

/// FAVOR+ attention of every block and head: `out` `[N x H*dv]` and the cache for
/// [`favor_backward`].
///
/// `inputs`: `q`, `k` `[N x H*d]`, `v` `[N x H*dv]`, no bias; `blocks`: node offsets
/// `[0, n_0, ..., N]` (a [`crate::Graph::blocks`]), each block one image attending to itself;
/// `projection`: `W` `[m x d]`, shared by every head and block (performer-pytorch's buffer).
/// Errors: zero heads, bad offsets, mismatched shapes, `m = 0` ([`Error::Invalid`] naming
/// `features`), a bias, or a non-finite input ([`Error::NonFinite`]).
pub fn favor_forward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    projection: &Matrix,
) -> Result<(Matrix, FavorCache)> {
    let dims = check(inputs, blocks, projection)?;
    let p = Problem::new(inputs, blocks, projection, dims);
    let (heads, m, dv) = (p.heads, p.m, p.dv);
    let nb = blocks.len() - 1;
    // Phase 1, per (block, head): M, C, s.
    let stats: Vec<HeadStats> = (0..nb * heads).into_par_iter().map(|t| p.key_stats(t / heads, t % heads)).collect();

    // Phase 2, per (block, head, query tile): out = phi(Q) C / phi(Q) s. Tiles of equal size
    // (at most TILE rows), depending on the problem only, never on the thread count.
    let mut tasks = Vec::new();
    for block in 0..nb {
        let n = blocks[block + 1] - blocks[block];
        let tile = n.div_ceil(n.div_ceil(TILE).max(1)).max(1);
        for head in 0..heads {
            for q0 in (0..n).step_by(tile) {
                tasks.push(Task { block, head, q0, q1: (q0 + tile).min(n) });
            }
        }
    }
    let mut out = Matrix::zeros(dims.nodes, heads * dv);
    let out_ptr = SharedMut::new(&mut out);
    // Scratch once per group of tasks; grouping never changes a task's arithmetic.
    let group = tasks.len().div_ceil(4 * rayon::current_num_threads()).max(1);
    tasks.par_chunks(group).for_each(|group| {
        let rows_max = group.iter().map(|t| t.q1 - t.q0).max().unwrap_or(0);
        let mut phi = vec![0.0f32; rows_max * m];
        let mut num = vec![0.0f32; rows_max * dv];
        for t in group {
            let rows = t.q1 - t.q0;
            let row0 = blocks[t.block] + t.q0;
            let st = &stats[t.block * heads + t.head];
            let (phi, num) = (&mut phi[..rows * m], &mut num[..rows * dv]);
            // phi_Q [rows x m]
            p.features(Rows { x: inputs.query, r0: row0, rows, h: t.head }, None, None, phi);
            // num = phi_Q C [rows x dv]
            let c = MatRef::from_row_major_slice(&st.context, m, dv);
            let dst = MatMut::from_row_major_slice_mut(num, rows, dv);
            matmul(dst, Accum::Replace, MatRef::from_row_major_slice(phi, rows, m), c, 1.0, Par::Seq);
            if dv > 0 {
                for (pr, nr) in phi.chunks_exact(m).zip(num.chunks_exact_mut(dv)) {
                    // D_inv = 1 / (phi_q . s); out = num * D_inv
                    simd::scale(nr, 1.0 / simd::dot(pr, &st.ksum));
                }
            }
            // SAFETY: this task owns rows row0 .. row0 + rows (its query tile of block t.block)
            // x columns head*dv .. (head+1)*dv of `out`; tasks partition (block, head, tile), so
            // no other task writes them, and `out` outlives the parallel loop.
            unsafe { out_ptr.write(row0, t.head * dv, dv, num) };
        }
    });
    let cache = FavorCache { blocks: blocks.to_vec(), heads, features: m, value_dim: dv, stats };
    Ok((out, cache))
}

/// The gradients `(dq, dk, dv)` of `L` given `dout = dL/dout` `[N x H*dv]`, for the inputs,
/// blocks and projection of the [`favor_forward`] call that made `cache` (the stabilisers are
/// held constant, as performer-pytorch's `.detach()`). One task per (block, head); the feature
/// maps are recomputed tile by tile (see the module docs for the math).
pub fn favor_backward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    projection: &Matrix,
    cache: &FavorCache,
    dout: &Matrix,
) -> Result<(Matrix, Matrix, Matrix)> {
    let dims = check(inputs, blocks, projection)?;
    let p = Problem::new(inputs, blocks, projection, dims);
    let (heads, d, dv, m) = (p.heads, p.d, p.dv, p.m);
    if cache.blocks != blocks || cache.heads != heads || cache.features != m || cache.value_dim != dv {
        return Err(Error::invalid(
            "performer cache",
            format!(
                "made for blocks {:?}, {} heads, m = {}, dv = {}; this call has blocks {blocks:?}, {heads} heads, m = {m}, dv = {dv}",
                cache.blocks, cache.heads, cache.features, cache.value_dim
            ),
        ));
    }
    dout.expect_shape("performer backward dout", dims.nodes, heads * dv)?;
    ensure_finite("performer backward dout", dout.as_slice())?;
    let n_total = dims.nodes;
    let (mut dq, mut dk, mut dvm) =
        (Matrix::zeros(n_total, heads * d), Matrix::zeros(n_total, heads * d), Matrix::zeros(n_total, heads * dv));
    let (dq_ptr, dk_ptr, dv_ptr) = (SharedMut::new(&mut dq), SharedMut::new(&mut dk), SharedMut::new(&mut dvm));
    let nb = blocks.len() - 1;
    (0..nb * heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / heads, t % heads);
        let (base, n) = (blocks[b], blocks[b + 1] - blocks[b]);
        if n == 0 {
            return;
        }
        let st = &cache.stats[t];
        let cap = TILE.min(n);
        let mut e = vec![0.0f32; cap * m];
        let mut phi = vec![0.0f32; cap * m];
        let mut dphi = vec![0.0f32; cap * m];
        let mut num = vec![0.0f32; cap * dv];
        let mut dnum = vec![0.0f32; cap * dv];
        let mut dx = vec![0.0f32; cap * d];
        let mut dden = vec![0.0f32; cap];
        let mut dc = vec![0.0f32; m * dv];
        let mut ds = vec![0.0f32; m];
        let c = MatRef::from_row_major_slice(&st.context, m, dv);
        let s = &st.ksum[..];

        // Queries: dq, and dC, ds summed over the query tiles in order.
        for q0 in (0..n).step_by(TILE) {
            let rows = TILE.min(n - q0);
            let row0 = base + q0;
            let (e, phi, dphi) = (&mut e[..rows * m], &mut phi[..rows * m], &mut dphi[..rows * m]);
            let (num, dnum, dden) = (&mut num[..rows * dv], &mut dnum[..rows * dv], &mut dden[..rows]);
            let tile = Rows { x: inputs.query, r0: row0, rows, h };
            p.features(tile, None, Some(&mut *e), phi);
            let phi_m = MatRef::from_row_major_slice(phi, rows, m);
            // num = phi_Q C                                  (num_i = C^T phi_q_i)
            matmul(MatMut::from_row_major_slice_mut(num, rows, dv), Accum::Replace, phi_m, c, 1.0, Par::Seq);
            for a in 0..rows {
                // out_i = num_i / den_i, den_i = phi_q_i . s
                let inv = 1.0 / simd::dot(&phi[a * m..(a + 1) * m], s);
                let out_i = &mut num[a * dv..(a + 1) * dv];
                simd::scale(out_i, inv);
                let g = &dout.row(row0 + a)[h * dv..(h + 1) * dv];
                // dnum_i = dout_i / den_i ; dden_i = -(dout_i . out_i) / den_i
                let dn = &mut dnum[a * dv..(a + 1) * dv];
                dn.copy_from_slice(g);
                simd::scale(dn, inv);
                dden[a] = -simd::dot(g, out_i) * inv;
            }
            let dnum_m = MatRef::from_row_major_slice(dnum, rows, dv);
            // dphi_q_i = C dnum_i + s dden_i                 (num_i = C^T phi_q_i, den_i = phi_q_i . s)
            matmul(
                MatMut::from_row_major_slice_mut(dphi, rows, m),
                Accum::Replace,
                dnum_m,
                c.transpose(),
                1.0,
                Par::Seq,
            );
            for (a, row) in dphi.chunks_exact_mut(m).enumerate() {
                simd::axpy(row, dden[a], s);
            }
            // dC += phi_Q^T dNum ; ds += sum_i dden_i phi_q_i
            let dc_m = MatMut::from_row_major_slice_mut(&mut dc, m, dv);
            matmul(dc_m, Accum::Add, phi_m.transpose(), dnum_m, 1.0, Par::Seq);
            for (a, row) in phi.chunks_exact(m).enumerate() {
                simd::axpy(&mut ds, dden[a], row);
            }
            p.through_features(tile, e, dphi, &mut dx);
            // SAFETY: this task owns rows base .. base + n (block b) x columns h*d .. (h+1)*d of
            // `dq`: tasks partition (block, head); `dq` outlives the parallel loop.
            unsafe { dq_ptr.write(row0, h * d, d, &dx[..rows * d]) };
        }

        // Keys: dv and dk from the finished dC, ds.
        let dc_ref = MatRef::from_row_major_slice(&dc, m, dv);
        for k0 in (0..n).step_by(TILE) {
            let rows = TILE.min(n - k0);
            let row0 = base + k0;
            let (e, phi, dphi) = (&mut e[..rows * m], &mut phi[..rows * m], &mut dphi[..rows * m]);
            let dvt = &mut num[..rows * dv];
            let tile = Rows { x: inputs.key, r0: row0, rows, h };
            p.features(tile, Some(st.key_max), Some(&mut *e), phi);
            // dv_j = dC^T phi_k_j                            (C = sum_j phi_k_j v_j^T)
            let phi_m = MatRef::from_row_major_slice(phi, rows, m);
            matmul(MatMut::from_row_major_slice_mut(dvt, rows, dv), Accum::Replace, phi_m, dc_ref, 1.0, Par::Seq);
            // SAFETY: as for `dq`: rows of block b, columns of head h of `dv`, this task's alone.
            unsafe { dv_ptr.write(row0, h * dv, dv, dvt) };
            // dphi_k_j = dC v_j + ds                         (C = sum_j phi_k_j v_j^T, s = sum_j phi_k_j)
            let vt = inputs.value.as_faer().submatrix(row0, h * dv, rows, dv);
            let dst = MatMut::from_row_major_slice_mut(dphi, rows, m);
            matmul(dst, Accum::Replace, vt, dc_ref.transpose(), 1.0, Par::Seq);
            for row in dphi.chunks_exact_mut(m) {
                simd::axpy(row, 1.0, &ds);
            }
            p.through_features(tile, e, dphi, &mut dx);
            // SAFETY: as for `dq`: rows of block b, columns of head h of `dk`, this task's alone.
            unsafe { dk_ptr.write(row0, h * d, d, &dx[..rows * d]) };
        }
    });
    Ok((dq, dk, dvm))
}

impl Problem<'_> {
    /// `dx` `[rows x d]` from `dphi` `[rows x m]` (overwritten with `g = dphi o e`):
    ///
    /// ```text
    /// g    = dphi o e                    (phi_r = m^-1/2 (exp(w_r.x' - |x'|^2/2 - M) + eps))
    /// dx'  = g W - x' rowsum(g)          (d/dx' of w_r.x' - |x'|^2/2, M constant)
    /// dx   = d^-1/4 dx'                  (x' = d^-1/4 x)
    /// ```
    fn through_features(&self, t: Rows<'_>, e: &[f32], dphi: &mut [f32], dx: &mut [f32]) {
        let Rows { x, r0, rows, h } = t;
        let (d, m) = (self.d, self.m);
        let dx = &mut dx[..rows * d];
        for (gv, ev) in dphi.iter_mut().zip(e) {
            *gv *= ev;
        }
        // dx = d^-1/4 G W
        let g = MatRef::from_row_major_slice(&dphi[..rows * m], rows, m);
        matmul(MatMut::from_row_major_slice_mut(dx, rows, d), Accum::Replace, g, self.w, self.alpha, Par::Seq);
        // dx -= d^-1/2 rowsum(g) x
        let a2 = self.alpha * self.alpha;
        for (a, row) in dx.chunks_exact_mut(d).enumerate() {
            let gsum: f32 = dphi[a * m..(a + 1) * m].iter().sum();
            simd::axpy(row, -a2 * gsum, &x.row(r0 + a)[h * d..(h + 1) * d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_matrix(n: usize, cols: usize, seed: usize) -> Matrix {
        Matrix::from_fn(n, cols, |i, j| (((i * 31 + j * 17 + seed * 7) % 23) as f32 - 11.0) * 0.05)
    }

    /// The cached statistics equal f64 sums of the features (computed here from the formula).
    #[test]
    fn cache_holds_the_key_statistics() {
        let (n, d, dv, m) = (37, 5, 3, 9);
        let q = inputs_matrix(n, d, 1);
        let k = inputs_matrix(n, d, 2);
        let v = inputs_matrix(n, dv, 3);
        let w = Matrix::from_fn(m, d, |r, c| ((r * 5 + c * 3) % 7) as f32 * 0.3 - 0.9);
        let inputs = AttentionInputs::new(&q, &k, &v, 1);
        let (_, cache) = favor_forward(&inputs, &[0, n], &w).unwrap();
        let alpha = (d as f64).powf(-0.25);
        let dd = |j: usize, r: usize| (0..d).map(|c| alpha * k.get(j, c) as f64 * w.get(r, c) as f64).sum::<f64>();
        let max = (0..n).flat_map(|j| (0..m).map(move |r| (j, r))).map(|(j, r)| dd(j, r)).fold(f64::MIN, f64::max);
        assert!((cache.key_max(0, 0) as f64 - max).abs() < 1e-5);
        let phi = |j: usize, r: usize| {
            let diag = 0.5 * alpha * alpha * (0..d).map(|c| (k.get(j, c) as f64).powi(2)).sum::<f64>();
            (m as f64).powf(-0.5) * ((dd(j, r) - diag - max).exp() + 1e-4)
        };
        for r in 0..m {
            let s: f64 = (0..n).map(|j| phi(j, r)).sum();
            assert!((cache.ksum(0, 0)[r] as f64 - s).abs() < 1e-5 * s, "s[{r}]");
            for c in 0..dv {
                let want: f64 = (0..n).map(|j| phi(j, r) * v.get(j, c) as f64).sum();
                assert!((cache.context(0, 0)[r * dv + c] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
        assert_eq!(cache.len_floats(), m * dv + m + 1);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let x = Matrix::zeros(4, 6);
        let w = Matrix::zeros(3, 3);
        let ok = AttentionInputs::new(&x, &x, &x, 2);
        assert!(favor_forward(&ok, &[0, 4], &w).is_ok());
        assert!(matches!(favor_forward(&ok, &[0, 3], &w), Err(Error::Shape { .. })));
        assert!(matches!(favor_forward(&ok, &[0, 3, 2, 4], &w), Err(Error::Invalid { .. })));
        assert!(matches!(favor_forward(&ok, &[4], &w), Err(Error::Invalid { .. })));
        assert!(matches!(favor_forward(&ok, &[1, 4], &w), Err(Error::Invalid { .. })));
        assert!(matches!(favor_forward(&AttentionInputs::new(&x, &x, &x, 0), &[0, 4], &w), Err(Error::Invalid { .. })));
        assert!(matches!(favor_forward(&AttentionInputs::new(&x, &x, &x, 4), &[0, 4], &w), Err(Error::Shape { .. })));
        assert!(matches!(favor_forward(&ok, &[0, 4], &Matrix::zeros(3, 2)), Err(Error::Shape { .. })));
        let Err(Error::Invalid { what, .. }) = favor_forward(&ok, &[0, 4], &Matrix::zeros(0, 3)) else {
            panic!("m = 0 accepted")
        };
        assert_eq!(what, "features");
        let bias = [0.0f32; 32];
        assert!(matches!(favor_forward(&ok.with_bias(&bias), &[0, 4], &w), Err(Error::Invalid { .. })));
        let mut bad = x.clone();
        bad.row_mut(2)[5] = f32::NAN;
        let col = bad.column_block(3, 3).unwrap();
        let xs = x.column_block(0, 3).unwrap();
        let Err(Error::NonFinite { what, position, .. }) =
            favor_forward(&AttentionInputs::new(xs, xs, col, 1), &[0, 4], &w)
        else {
            panic!("NaN value accepted")
        };
        assert_eq!((what.as_str(), position), ("performer value", 2 * 3 + 2));
        let (_, cache) = favor_forward(&ok, &[0, 4], &w).unwrap();
        assert!(matches!(favor_backward(&ok, &[0, 4], &w, &cache, &Matrix::zeros(4, 5)), Err(Error::Shape { .. })));
        assert!(matches!(favor_backward(&ok, &[0, 2, 4], &w, &cache, &x), Err(Error::Invalid { .. })));
        let mut inf = x.clone();
        inf.row_mut(0)[0] = f32::INFINITY;
        assert!(matches!(favor_backward(&ok, &[0, 4], &w, &cache, &inf), Err(Error::NonFinite { .. })));
    }

    /// Empty blocks (and an empty batch) give empty outputs, no panic.
    #[test]
    fn empty_blocks_are_fine() {
        let x = inputs_matrix(5, 4, 0);
        let w = Matrix::from_fn(3, 2, |r, c| (r + c) as f32 * 0.1);
        let inputs = AttentionInputs::new(&x, &x, &x, 2);
        let (out, cache) = favor_forward(&inputs, &[0, 0, 5, 5], &w).unwrap();
        let (whole, _) = favor_forward(&inputs, &[0, 5], &w).unwrap();
        assert_eq!(out, whole);
        let (dq, ..) = favor_backward(&inputs, &[0, 0, 5, 5], &w, &cache, &x).unwrap();
        assert_eq!(dq.shape(), (5, 4));
        let e = Matrix::zeros(0, 4);
        let empty = AttentionInputs::new(&e, &e, &e, 2);
        let (out, _) = favor_forward(&empty, &[0, 0], &w).unwrap();
        assert_eq!(out.shape(), (0, 4));
    }
}
