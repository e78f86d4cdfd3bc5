//! The Nyström attention kernel: forward ([`nystrom_forward`]) and backward
//! ([`nystrom_backward`]) by faer GEMM, rayon over (block, head). The math, the landmark
//! layouts and the f64 oracle are in [`crate::attention::nystrom`].
//!
//! # Forward, per block (`n` tokens, `m` landmarks) and head
//!
//! ```text
//! Ql = s M q,  Kl = M k                    [m x d]   s = 1/sqrt(d); M: landmark means
//! A1 = softmax(s q Kl^T)                   [n x m]   (GEMM, row softmax)
//! A2 = softmax(Ql Kl^T)                    [m x m]
//! A3 = softmax(Ql k^T | p zeros)           [m x n]   p: the front padding's zero-score keys
//! W  = A3 v                                [m x dv]
//! alpha = max_{heads, i} sum_j |A2_ij|,  beta = max_{heads, j} sum_i |A2_ij|   (the block's heads)
//! Z_0 = A2^T / (alpha beta)
//! A_t = A2 Z_t;  B_t = 7I - A_t;  C_t = 15I - A_t B_t;  D_t = 13I - A_t C_t
//! Z_t+1 = 1/4 Z_t D_t                      [m x m]   t = 0 .. iters
//! U  = Z W                                 [m x dv]  (Z = Z_iters)
//! out = A1 U + conv_h(v)                   [n x dv]  conv_h(v)_t = sum_i w_hi v_{t + i - K/2}
//! ```
//!
//! The heads of a block share `alpha beta`, so the forward runs in two parallel phases over
//! (block, head): up to `W` and each head's row and column maxima; then, with the block's
//! maxima reduced over its heads in order, the iteration and the output.
//!
//! # Backward (each line: the forward line it differentiates)
//!
//! ```text
//! out = A1 U:                dA1 = dO U^T,  dU = A1^T dO
//! A1 = softmax(s q Kl^T):    dS1 = A1 * (dA1 - rowsum(dA1 * A1));  dQ = dS1 Kl;  dKl = s dS1^T q
//! U = Z W:                   dZ = dU W^T,  dW = Z^T dU
//! W = A3 v:                  dA3 = dW v^T,  dv = A3^T dW
//! A3 = softmax(Ql k^T | 0):  dS3 = A3 * (dA3 - rowsum(dA3 * A3));  dQl = dS3 k;  dk = dS3^T Ql
//!                            (the padded keys are constants: nothing flows to them)
//! Z_t+1 = 1/4 Z_t D_t:       dD = 1/4 Z_t^T dZ_t+1;  dZ_t = 1/4 dZ_t+1 D_t^T
//! D_t = 13I - A_t C_t:       dA = -dD C_t^T;  dC = -A_t^T dD
//! C_t = 15I - A_t B_t:       dA -= dC B_t^T;  dB = -A_t^T dC
//! B_t = 7I - A_t:            dA -= dB
//! A_t = A2 Z_t:              dA2 += dA Z_t^T;  dZ_t += A2^T dA
//! Z_0 = A2^T / (alpha beta): dA2 += dZ_0^T / (alpha beta);  g = sum_heads sum dZ_0 * A2^T
//!                            dalpha = -g / (alpha^2 beta),  dbeta = -g / (alpha beta^2)
//! alpha = sum_j |A2_i*j|:    dA2_i*j += dalpha sign(A2_i*j)   (head and row of the first max)
//! beta = sum_i |A2_ij*|:     dA2_ij* += dbeta sign(A2_ij*)    (head and column of the first max)
//! A2 = softmax(Ql Kl^T):     dS2 = A2 * (dA2 - rowsum(dA2 * A2));  dQl += dS2 Kl;  dKl += dS2^T Ql
//! Ql = s M q, Kl = M k:      dq = s (dQ + M^T dQl);  dk += M^T dKl
//! out += conv_h(v):          dv_{t + i - K/2} += w_hi dO_t;  dw_hi = sum_t dO_t . v_{t + i - K/2}
//! ```
//!
//! `g` couples the heads of a block, so the backward also runs in two phases: everything down
//! to `dA2` (without the maxima's terms) and each head's part of `g`; then, with `g` summed
//! over the heads in order, the maxima's terms, the `A2` softmax and the landmark means.
//! As torch's `max` backward, the gradient of each maximum goes to its arg-max element (we take
//! the first in (head, index) order; ties have measure zero). For a softmax `A2` every row sum
//! is 1, so `alpha`'s gradient vanishes through the softmax; `beta`'s does not.
//!
//! # Memory and determinism
//!
//! [`NystromCache`] keeps, per (block, head), `A1` and `A3` (`2 n m` floats), `A2`, the
//! iterates `Z_0 ..= Z_iters` and each iteration's `A_t`, `C_t`, `D_t` (`(4 iters + 2) m^2`),
//! `Ql`, `Kl` (`2 m d`) and `W`, `U` (`2 m dv`): `O(n m)` per head, never `O(n^2)`. ViT-S-like
//! (n = 197, m = 50, d = dv = 64, 6 iterations): 390 KB per head. Keeping `A_t, C_t, D_t` spares
//! the backward 3 of its 11 `[m x m]` GEMMs per iteration (it rebuilds only `B_t = 7I - A_t`).
//!
//! Every task's arithmetic depends on the problem only (sequential faer GEMMs, fixed loop
//! orders); the reductions over heads (maxima, `g`) and over blocks (`dw`) run in a fixed
//! order after the parallel phases: the same bits on any number of threads.
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::attention::nystrom::{Landmarks, nystrom_backward_reference};
//! use patchgraph::kernels::nystrom::{nystrom_backward, nystrom_forward};
//! let x = Matrix::from_fn(12, 6, |i, j| ((i * 6 + j) as f32 * 0.21).cos());
//! let inputs = AttentionInputs::new(&x, &x, &x, 3);
//! let blocks = [0, 6, 12]; // two images of 6 tokens
//! let lm = Landmarks::segments(6, 3).unwrap();
//! let conv = Matrix::from_fn(3, 3, |h, i| 0.1 * (h + i) as f32); // [H x K]
//! let (out, cache) = nystrom_forward(&inputs, &blocks, &lm, 6, Some(&conv)).unwrap();
//! let dout = Matrix::from_fn(12, 6, |i, j| (i as f32 - j as f32) * 0.1);
//! let grads = nystrom_backward(&inputs, &blocks, &lm, 6, Some(&conv), &cache, &dout).unwrap();
//! let oracle = nystrom_backward_reference(&inputs, &blocks, &lm, 6, Some(&conv), &dout).unwrap();
//! assert_eq!(out.shape(), (12, 6));
//! assert!(grads.query.max_abs_diff(&oracle.query) < 1e-4);
//! assert!(grads.res_conv.unwrap().max_abs_diff(&oracle.res_conv.unwrap()) < 1e-4);
//! ```

use super::simd;
use crate::algebra::AttentionInputs;
use crate::algebra::landmarks::{Landmarks, NystromDims, validate};
use crate::error::{Error, Result, ensure_finite};
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Gradients of a Nyström call: `query` `[N x H*d]` (with respect to the unscaled q), `key`
/// `[N x H*d]`, `value` `[N x H*dv]`, and `res_conv` `[H x K]` when a residual conv was given.
#[derive(Clone, Debug, PartialEq)]
pub struct NystromGrads {
    /// `dL/dq`.
    pub query: Matrix,
    /// `dL/dk`.
    pub key: Matrix,
    /// `dL/dv`.
    pub value: Matrix,
    /// `dL/dw` of the residual convolution, summed over the blocks.
    pub res_conv: Option<Matrix>,
}

/// What the backward needs of one (block, head), all row-major.
#[derive(Clone, Debug)]
struct HeadCache {
    /// `Ql = s M q` and `Kl = M k`, `[m x d]`.
    ql: Vec<f32>,
    kl: Vec<f32>,
    /// `A1 [n x m]`, `A2 [m x m]`, `A3 [m x n]`.
    a1: Vec<f32>,
    a2: Vec<f32>,
    a3: Vec<f32>,
    /// `Z_0 ..= Z_iters`, `(iters + 1)` matrices `[m x m]` one after the other.
    zs: Vec<f32>,
    /// Per iteration `t`, `A_t`, `C_t`, `D_t` (`B_t = 7I - A_t` is rebuilt), `3 iters` matrices
    /// `[m x m]`: the backward does not recompute them.
    steps: Vec<f32>,
    /// `W = A3 v`, `U = Z W`, `[m x dv]`.
    w: Vec<f32>,
    u: Vec<f32>,
}

/// A block's pinv scale: the maxima and where they are.
#[derive(Clone, Copy, Debug)]
struct BlockScale {
    /// Largest row sum of `|A2|` over the block's heads, its head and row.
    alpha: (f32, usize, usize),
    /// Largest column sum of `|A2|` over the block's heads, its head and column.
    beta: (f32, usize, usize),
}

/// What [`nystrom_forward`] keeps for [`nystrom_backward`]: per (block, head) `2 n m +
/// (4 iters + 2) m^2 + 2 m (d + dv)` floats (see the module docs), never an `[n x n]` matrix.
#[derive(Clone, Debug)]
pub struct NystromCache {
    dims: NystromDims,
    iterations: usize,
    /// In (block, head) order.
    heads: Vec<HeadCache>,
    /// One per block.
    scales: Vec<BlockScale>,
}

impl NystromCache {
    /// Bytes of f32 data held.
    pub fn bytes(&self) -> usize {
        let floats: usize = self
            .heads
            .iter()
            .map(|h| {
                h.ql.len()
                    + h.kl.len()
                    + h.a1.len()
                    + h.a2.len()
                    + h.a3.len()
                    + h.zs.len()
                    + h.steps.len()
                    + h.w.len()
                    + h.u.len()
            })
            .sum();
        floats * std::mem::size_of::<f32>()
    }
}

/// A row-major slice as a faer matrix.
#[inline]
fn rm(s: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&s[..rows * cols], rows, cols)
}

/// `dst [rows x cols] (+)= alpha a b`, `dst` row-major, one sequential faer GEMM.
#[inline]
fn gemm(dst: &mut [f32], accum: Accum, a: MatRef<'_, f32>, b: MatRef<'_, f32>, alpha: f32) {
    let (rows, cols) = (a.nrows(), b.ncols());
    matmul(MatMut::from_row_major_slice_mut(&mut dst[..rows * cols], rows, cols), accum, a, b, alpha, Par::Seq);
}

/// Row softmax of `s [rows x cols]` in place; `pad` more keys of score 0 in every denominator.
fn softmax_rows(s: &mut [f32], cols: usize, pad: usize) {
    for row in s.chunks_exact_mut(cols) {
        let mut mx = simd::max(row);
        if pad > 0 {
            mx = mx.max(0.0);
        }
        let z = simd::exp_sub_sum(row, mx) + pad as f32 * (-mx).exp();
        simd::scale(row, 1.0 / z);
    }
}

/// Softmax backward per row: `da` becomes `dS = A * (dA - rowsum(dA * A))`.
fn softmax_back(a: &[f32], da: &mut [f32], cols: usize) {
    for (ar, dr) in a.chunks_exact(cols).zip(da.chunks_exact_mut(cols)) {
        let dot = simd::dot(ar, dr);
        for (d, &p) in dr.iter_mut().zip(ar) {
            *d = p * (*d - dot);
        }
    }
}

/// `dst = t src + s I` for `[m x m]` matrices.
fn affine_eye(dst: &mut [f32], src: &[f32], m: usize, t: f32, s: f32) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = t * x;
    }
    for i in 0..m {
        dst[i * m + i] += s;
    }
}

/// One pinv step's intermediates: `A = x z`, `B = 7I - A`, `C = 15I - A B`, `D = 13I - A C`.
fn pinv_step(x: &[f32], z: &[f32], m: usize, [a, b, c, d]: [&mut [f32]; 4]) {
    // A_t = A2 Z_t
    gemm(a, Accum::Replace, rm(x, m, m), rm(z, m, m), 1.0);
    // B_t = 7I - A_t
    affine_eye(b, a, m, -1.0, 7.0);
    // C_t = 15I - A_t B_t
    gemm(c, Accum::Replace, rm(a, m, m), rm(b, m, m), -1.0);
    for i in 0..m {
        c[i * m + i] += 15.0;
    }
    // D_t = 13I - A_t C_t
    gemm(d, Accum::Replace, rm(a, m, m), rm(c, m, m), -1.0);
    for i in 0..m {
        d[i * m + i] += 13.0;
    }
}

/// Sign as torch's `abs` backward uses it (0 at 0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// What every task reads.
struct Problem<'a> {
    inputs: &'a AttentionInputs<'a>,
    blocks: &'a [usize],
    landmarks: &'a Landmarks,
    iterations: usize,
    res_conv: Option<&'a Matrix>,
    dims: NystromDims,
}

impl Problem<'_> {
    fn scale(&self) -> f32 {
        1.0 / (self.dims.key_dim as f32).sqrt()
    }

    /// `src` token of the conv tap `i` at output token `t`, when inside the block.
    #[inline]
    fn tap(&self, t: usize, i: usize) -> Option<usize> {
        (t + i).checked_sub(self.dims.kernel / 2).filter(|&s| s < self.dims.block)
    }
}

/// Forward phase 1 of (block `b`, head `h`): landmarks, `A1`, `A2`, `A3`, `W`, and the head's
/// largest row and column sums of `|A2|` (first maxima).
fn forward_head(p: &Problem<'_>, b: usize, h: usize) -> (HeadCache, (f32, usize), (f32, usize)) {
    let NystromDims { block: n, landmarks: m, key_dim: d, value_dim: dv, .. } = p.dims;
    let base = p.blocks[b];
    let s = p.scale();
    let inp = p.inputs;
    let q = inp.query.as_faer().submatrix(base, h * d, n, d);
    let k = inp.key.as_faer().submatrix(base, h * d, n, d);
    let v = inp.value.as_faer().submatrix(base, h * dv, n, dv);
    // Ql = s M q,  Kl = M k   [m x d]: sums in token order, then each row scaled once.
    let (mut ql, mut kl) = (vec![0.0f32; m * d], vec![0.0f32; m * d]);
    for (t, &j) in p.landmarks.assignment().iter().enumerate() {
        let j = j as usize;
        let (qr, kr) = (&inp.query.row(base + t)[h * d..(h + 1) * d], &inp.key.row(base + t)[h * d..(h + 1) * d]);
        for c in 0..d {
            ql[j * d + c] += qr[c];
            kl[j * d + c] += kr[c];
        }
    }
    for j in 0..m {
        let c = p.landmarks.divisor(j) as f32;
        simd::scale(&mut ql[j * d..(j + 1) * d], s / c);
        simd::scale(&mut kl[j * d..(j + 1) * d], 1.0 / c);
    }
    // A1 = softmax(s q Kl^T)   [n x m]
    let mut a1 = vec![0.0f32; n * m];
    gemm(&mut a1, Accum::Replace, q, rm(&kl, m, d).transpose(), s);
    softmax_rows(&mut a1, m, 0);
    // A2 = softmax(Ql Kl^T)   [m x m]
    let mut a2 = vec![0.0f32; m * m];
    gemm(&mut a2, Accum::Replace, rm(&ql, m, d), rm(&kl, m, d).transpose(), 1.0);
    softmax_rows(&mut a2, m, 0);
    // A3 = softmax(Ql k^T | p zeros)   [m x n]
    let mut a3 = vec![0.0f32; m * n];
    gemm(&mut a3, Accum::Replace, rm(&ql, m, d), k.transpose(), 1.0);
    softmax_rows(&mut a3, n, p.landmarks.padding());
    // W = A3 v   [m x dv]
    let mut w = vec![0.0f32; m * dv];
    gemm(&mut w, Accum::Replace, rm(&a3, m, n), v, 1.0);
    // Row and column sums of |A2|, each summed in index order; the first maximum wins.
    let mut row_max = (f32::NEG_INFINITY, 0);
    let mut cols = vec![0.0f32; m];
    for (i, row) in a2.chunks_exact(m).enumerate() {
        let mut sum = 0.0f32;
        for (c, &x) in cols.iter_mut().zip(row) {
            sum += x.abs();
            *c += x.abs();
        }
        if sum > row_max.0 {
            row_max = (sum, i);
        }
    }
    let mut col_max = (f32::NEG_INFINITY, 0);
    for (j, &c) in cols.iter().enumerate() {
        if c > col_max.0 {
            col_max = (c, j);
        }
    }
    (HeadCache { ql, kl, a1, a2, a3, zs: Vec::new(), steps: Vec::new(), w, u: Vec::new() }, row_max, col_max)
}

/// Forward phase 2 of (block `b`, head `h`): the pinv iterates, `U`, and the head's output
/// `[n x dv]` (with the residual conv).
fn finish_head(p: &Problem<'_>, b: usize, h: usize, hc: &mut HeadCache, scale: BlockScale) -> Vec<f32> {
    let NystromDims { block: n, landmarks: m, value_dim: dv, .. } = p.dims;
    let mm = m * m;
    let x = &hc.a2;
    // Z_0 = A2^T / (alpha beta)
    let ab = scale.alpha.0 * scale.beta.0;
    let mut zs = vec![0.0f32; (p.iterations + 1) * mm];
    for i in 0..m {
        for j in 0..m {
            zs[i * m + j] = x[j * m + i] / ab;
        }
    }
    let mut steps = vec![0.0f32; 3 * p.iterations * mm];
    let mut bb = vec![0.0f32; mm];
    for (t, acd) in steps.chunks_exact_mut(3 * mm).enumerate() {
        let (done, next) = zs.split_at_mut((t + 1) * mm);
        let z = &done[t * mm..];
        let (a, rest) = acd.split_at_mut(mm);
        let (c, d) = rest.split_at_mut(mm);
        pinv_step(x, z, m, [&mut *a, &mut bb, &mut *c, &mut *d]);
        // Z_t+1 = 1/4 Z_t D_t
        gemm(&mut next[..mm], Accum::Replace, rm(z, m, m), rm(d, m, m), 0.25);
    }
    // U = Z W   [m x dv]
    let mut u = vec![0.0f32; m * dv];
    gemm(&mut u, Accum::Replace, rm(&zs[p.iterations * mm..], m, m), rm(&hc.w, m, dv), 1.0);
    // out = A1 U + conv_h(v)   [n x dv]
    let mut out = vec![0.0f32; n * dv];
    gemm(&mut out, Accum::Replace, rm(&hc.a1, n, m), rm(&u, m, dv), 1.0);
    if let Some(wc) = p.res_conv {
        let base = p.blocks[b];
        for (t, row) in out.chunks_exact_mut(dv).enumerate() {
            for i in 0..p.dims.kernel {
                let Some(src) = p.tap(t, i) else { continue };
                simd::axpy(row, wc.get(h, i), &p.inputs.value.row(base + src)[h * dv..(h + 1) * dv]);
            }
        }
    }
    hc.zs = zs;
    hc.steps = steps;
    hc.u = u;
    out
}

/// Nyström attention over a batch of blocks (images of `landmarks.n()` tokens each; `blocks` =
/// token offsets `[0, n, 2n, ..., N]`), as the peer's `NystromAttention` between `to_qkv` and
/// `to_out`: `q` `[N x H*d]` unscaled (scaled by `1/sqrt(d)` here), `k` `[N x H*d]`, `v`
/// `[N x H*dv]`, `res_conv` `[H x K]` (K odd) the depth-wise residual conv's kernels. Returns
/// `out` `[N x H*dv]` and what the backward needs.
///
/// The pinv scale's maxima are taken over the heads of each block, not the whole batch (see
/// [`crate::attention::nystrom`]). Errors: shapes (the one check of
/// [`crate::attention::nystrom`]), an edge bias, non-finite inputs.
pub fn nystrom_forward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    landmarks: &Landmarks,
    iterations: usize,
    res_conv: Option<&Matrix>,
) -> Result<(Matrix, NystromCache)> {
    let dims = validate(inputs, blocks, landmarks, res_conv)?;
    let p = Problem { inputs, blocks, landmarks, iterations, res_conv, dims };
    let hh = dims.heads;
    let tasks: Vec<(usize, usize)> = (0..dims.blocks).flat_map(|b| (0..hh).map(move |h| (b, h))).collect();
    // Phase 1, parallel over (block, head).
    let first: Vec<_> = tasks.par_iter().map(|&(b, h)| forward_head(&p, b, h)).collect();
    // The block's maxima over its heads, in head order.
    let scales: Vec<BlockScale> = first
        .chunks(hh)
        .map(|heads| {
            let mut s = BlockScale { alpha: (f32::NEG_INFINITY, 0, 0), beta: (f32::NEG_INFINITY, 0, 0) };
            for (h, (_, row, col)) in heads.iter().enumerate() {
                if row.0 > s.alpha.0 {
                    s.alpha = (row.0, h, row.1);
                }
                if col.0 > s.beta.0 {
                    s.beta = (col.0, h, col.1);
                }
            }
            s
        })
        .collect();
    let mut heads: Vec<HeadCache> = first.into_iter().map(|(hc, _, _)| hc).collect();
    // Phase 2, parallel over (block, head).
    let outs: Vec<Vec<f32>> =
        heads.par_iter_mut().zip(tasks.par_iter()).map(|(hc, &(b, h))| finish_head(&p, b, h, hc, scales[b])).collect();
    let (n, dv) = (dims.block, dims.value_dim);
    let mut out = Matrix::zeros(dims.nodes, hh * dv);
    for (&(b, h), o) in tasks.iter().zip(&outs) {
        for t in 0..n {
            out.row_mut(blocks[b] + t)[h * dv..(h + 1) * dv].copy_from_slice(&o[t * dv..(t + 1) * dv]);
        }
    }
    Ok((out, NystromCache { dims, iterations, heads, scales }))
}

/// One (block, head)'s gradients between the two backward phases.
struct HeadGrad {
    /// `dQ = dS1 Kl` (with respect to `s q`), then `dq`, `[n x d]`.
    dq: Vec<f32>,
    /// `dk` `[n x d]`, `dv` `[n x dv]`.
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// `dQl`, `dKl` `[m x d]`.
    dql: Vec<f32>,
    dkl: Vec<f32>,
    /// `dA2` `[m x m]` (phase 1: without the maxima's terms; phase 2: `dS2`).
    da2: Vec<f32>,
    /// This block's `dw_h` `[K]`.
    dconv: Vec<f64>,
    /// This head's part of `g = sum dZ_0 * A2^T`.
    g: f64,
}

/// Backward phase 1 of (block `b`, head `h`): everything down to `dA2`, and the head's part of
/// the pinv scale's gradient.
fn backward_head(p: &Problem<'_>, b: usize, h: usize, hc: &HeadCache, scale: BlockScale, dout: &Matrix) -> HeadGrad {
    let NystromDims { block: n, landmarks: m, key_dim: d, value_dim: dv, kernel, .. } = p.dims;
    let mm = m * m;
    let base = p.blocks[b];
    let s = p.scale();
    let inp = p.inputs;
    let q = inp.query.as_faer().submatrix(base, h * d, n, d);
    let k = inp.key.as_faer().submatrix(base, h * d, n, d);
    let v = inp.value.as_faer().submatrix(base, h * dv, n, dv);
    let d_o = dout.as_faer().submatrix(base, h * dv, n, dv);
    // out = A1 U:  dA1 = dO U^T, dU = A1^T dO
    let mut ds1 = vec![0.0f32; n * m];
    gemm(&mut ds1, Accum::Replace, d_o, rm(&hc.u, m, dv).transpose(), 1.0);
    let mut du = vec![0.0f32; m * dv];
    gemm(&mut du, Accum::Replace, rm(&hc.a1, n, m).transpose(), d_o, 1.0);
    // A1 = softmax(s q Kl^T):  dS1 = A1 * (dA1 - rowsum(dA1 * A1)); dQ = dS1 Kl; dKl = s dS1^T q
    softmax_back(&hc.a1, &mut ds1, m);
    let mut dq = vec![0.0f32; n * d];
    gemm(&mut dq, Accum::Replace, rm(&ds1, n, m), rm(&hc.kl, m, d), 1.0);
    let mut dkl = vec![0.0f32; m * d];
    gemm(&mut dkl, Accum::Replace, rm(&ds1, n, m).transpose(), q, s);
    // U = Z W:  dZ = dU W^T, dW = Z^T dU
    let z = &hc.zs[p.iterations * mm..];
    let mut dz = vec![0.0f32; mm];
    gemm(&mut dz, Accum::Replace, rm(&du, m, dv), rm(&hc.w, m, dv).transpose(), 1.0);
    let mut dw = vec![0.0f32; m * dv];
    gemm(&mut dw, Accum::Replace, rm(z, m, m).transpose(), rm(&du, m, dv), 1.0);
    // W = A3 v:  dA3 = dW v^T, dv = A3^T dW
    let mut ds3 = vec![0.0f32; m * n];
    gemm(&mut ds3, Accum::Replace, rm(&dw, m, dv), v.transpose(), 1.0);
    let mut dvv = vec![0.0f32; n * dv];
    gemm(&mut dvv, Accum::Replace, rm(&hc.a3, m, n).transpose(), rm(&dw, m, dv), 1.0);
    // A3 = softmax(Ql k^T | 0):  dS3 = A3 * (dA3 - rowsum(dA3 * A3)); dQl = dS3 k; dk = dS3^T Ql
    softmax_back(&hc.a3, &mut ds3, n);
    let mut dql = vec![0.0f32; m * d];
    gemm(&mut dql, Accum::Replace, rm(&ds3, m, n), k, 1.0);
    let mut dk = vec![0.0f32; n * d];
    gemm(&mut dk, Accum::Replace, rm(&ds3, m, n).transpose(), rm(&hc.ql, m, d), 1.0);
    // The pinv iterations, last first (A_t, C_t, D_t from the cache, B_t = 7I - A_t rebuilt).
    let x = &hc.a2;
    let mut da2 = vec![0.0f32; mm];
    let mut buf = vec![0.0f32; 6 * mm];
    {
        let mut parts = buf.chunks_exact_mut(mm);
        let mut next = || parts.next().expect("six [m x m] buffers");
        let (bb, d_d, d_c, nb, d_a, dzp) = (next(), next(), next(), next(), next(), next());
        for t in (0..p.iterations).rev() {
            let zt = &hc.zs[t * mm..(t + 1) * mm];
            let acd = &hc.steps[3 * t * mm..3 * (t + 1) * mm];
            let (a, c, dd) = (&acd[..mm], &acd[mm..2 * mm], &acd[2 * mm..]);
            // B_t = 7I - A_t
            affine_eye(bb, a, m, -1.0, 7.0);
            // Z_t+1 = 1/4 Z_t D_t:  dD = 1/4 Z_t^T dZ_t+1;  dZ_t = 1/4 dZ_t+1 D_t^T
            gemm(d_d, Accum::Replace, rm(zt, m, m).transpose(), rm(&dz, m, m), 0.25);
            gemm(dzp, Accum::Replace, rm(&dz, m, m), rm(dd, m, m).transpose(), 0.25);
            // D_t = 13I - A_t C_t:  dA = -dD C_t^T;  dC = -A_t^T dD
            gemm(d_a, Accum::Replace, rm(d_d, m, m), rm(c, m, m).transpose(), -1.0);
            gemm(d_c, Accum::Replace, rm(a, m, m).transpose(), rm(d_d, m, m), -1.0);
            // C_t = 15I - A_t B_t:  dA -= dC B_t^T;  dB = -A_t^T dC (nb = -dB)
            gemm(d_a, Accum::Add, rm(d_c, m, m), rm(bb, m, m).transpose(), -1.0);
            gemm(nb, Accum::Replace, rm(a, m, m).transpose(), rm(d_c, m, m), 1.0);
            // B_t = 7I - A_t:  dA -= dB
            for (x, &y) in d_a.iter_mut().zip(nb.iter()) {
                *x += y;
            }
            // A_t = A2 Z_t:  dA2 += dA Z_t^T;  dZ_t += A2^T dA
            gemm(&mut da2, Accum::Add, rm(d_a, m, m), rm(zt, m, m).transpose(), 1.0);
            gemm(dzp, Accum::Add, rm(x, m, m).transpose(), rm(d_a, m, m), 1.0);
            dz.copy_from_slice(dzp);
        }
    }
    // Z_0 = A2^T / (alpha beta):  dA2 += dZ_0^T / (alpha beta);  g += sum dZ_0 * A2^T
    let ab = scale.alpha.0 * scale.beta.0;
    let mut g = 0.0f64;
    for i in 0..m {
        for j in 0..m {
            da2[j * m + i] += dz[i * m + j] / ab;
            g += dz[i * m + j] as f64 * x[j * m + i] as f64;
        }
    }
    // out += conv_h(v):  dv_{t + i - K/2} += w_hi dO_t;  dw_hi = sum_t dO_t . v_{t + i - K/2}
    let mut dconv = vec![0.0f64; kernel];
    if let Some(wc) = p.res_conv {
        for t in 0..n {
            let dot = &dout.row(base + t)[h * dv..(h + 1) * dv];
            for (i, acc) in dconv.iter_mut().enumerate() {
                let Some(src) = p.tap(t, i) else { continue };
                simd::axpy(&mut dvv[src * dv..(src + 1) * dv], wc.get(h, i), dot);
                let vs = &inp.value.row(base + src)[h * dv..(h + 1) * dv];
                *acc += dot.iter().zip(vs).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
            }
        }
    }
    HeadGrad { dq, dk, dv: dvv, dql, dkl, da2, dconv, g }
}

/// Backward phase 2 of (block `b`, head `h`): the maxima's terms, the `A2` softmax and the
/// landmark means; leaves `dq`, `dk`, `dv` final.
fn finish_grad(p: &Problem<'_>, h: usize, hc: &HeadCache, scale: BlockScale, g: f64, gr: &mut HeadGrad) {
    let NystromDims { block: n, landmarks: m, key_dim: d, .. } = p.dims;
    let (alpha, beta) = (scale.alpha.0 as f64, scale.beta.0 as f64);
    // 1 / (alpha beta):  dalpha = -g / (alpha^2 beta),  dbeta = -g / (alpha beta^2)
    let (dalpha, dbeta) = ((-g / (alpha * alpha * beta)) as f32, (-g / (alpha * beta * beta)) as f32);
    let x = &hc.a2;
    // alpha = sum_j |A2_i*j|:  dA2_i*j += dalpha sign(A2_i*j)
    if scale.alpha.1 == h {
        let i = scale.alpha.2;
        for j in 0..m {
            gr.da2[i * m + j] += dalpha * sign(x[i * m + j]);
        }
    }
    // beta = sum_i |A2_ij*|:  dA2_ij* += dbeta sign(A2_ij*)
    if scale.beta.1 == h {
        let j = scale.beta.2;
        for i in 0..m {
            gr.da2[i * m + j] += dbeta * sign(x[i * m + j]);
        }
    }
    // A2 = softmax(Ql Kl^T):  dS2 = A2 * (dA2 - rowsum(dA2 * A2)); dQl += dS2 Kl; dKl += dS2^T Ql
    softmax_back(x, &mut gr.da2, m);
    gemm(&mut gr.dql, Accum::Add, rm(&gr.da2, m, m), rm(&hc.kl, m, d), 1.0);
    gemm(&mut gr.dkl, Accum::Add, rm(&gr.da2, m, m).transpose(), rm(&hc.ql, m, d), 1.0);
    // Ql = s M q, Kl = M k:  dq = s (dQ + M^T dQl);  dk += M^T dKl
    for (t, &j) in p.landmarks.assignment().iter().enumerate().take(n) {
        let j = j as usize;
        let inv = 1.0 / p.landmarks.divisor(j) as f32;
        simd::axpy(&mut gr.dq[t * d..(t + 1) * d], inv, &gr.dql[j * d..(j + 1) * d]);
        simd::axpy(&mut gr.dk[t * d..(t + 1) * d], inv, &gr.dkl[j * d..(j + 1) * d]);
    }
    simd::scale(&mut gr.dq, p.scale());
}

/// The gradients of [`nystrom_forward`]'s output, given `dout` `[N x H*dv]` and the forward's
/// cache (the same arguments as the forward; a cache of another call is an error). Differentiates
/// through the softmaxes, the landmark means, the unrolled pinv iteration with its scale and the
/// residual conv (see the module docs for each line). Extra memory: per (block, head) a few
/// `[n x m]` and `[m x m]` buffers.
pub fn nystrom_backward(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    landmarks: &Landmarks,
    iterations: usize,
    res_conv: Option<&Matrix>,
    cache: &NystromCache,
    dout: &Matrix,
) -> Result<NystromGrads> {
    let dims = validate(inputs, blocks, landmarks, res_conv)?;
    if cache.dims != dims || cache.iterations != iterations || cache.heads.len() != dims.blocks * dims.heads {
        return Err(Error::invalid(
            "nystrom cache",
            format!(
                "made by a forward of other sizes ({:?}, {} iterations), not {:?}, {iterations} iterations",
                cache.dims, cache.iterations, dims
            ),
        ));
    }
    let (hh, n, d, dv) = (dims.heads, dims.block, dims.key_dim, dims.value_dim);
    dout.expect_shape("nystrom dout", dims.nodes, hh * dv)?;
    ensure_finite("nystrom dout", dout.as_slice())?;
    let p = Problem { inputs, blocks, landmarks, iterations, res_conv, dims };
    let tasks: Vec<(usize, usize)> = (0..dims.blocks).flat_map(|b| (0..hh).map(move |h| (b, h))).collect();
    // Phase 1, parallel over (block, head).
    let mut grads: Vec<HeadGrad> = tasks
        .par_iter()
        .zip(cache.heads.par_iter())
        .map(|(&(b, h), hc)| backward_head(&p, b, h, hc, cache.scales[b], dout))
        .collect();
    // g summed over each block's heads, in head order.
    let g: Vec<f64> = grads.chunks(hh).map(|heads| heads.iter().map(|gr| gr.g).sum()).collect();
    // Phase 2, parallel over (block, head).
    grads
        .par_iter_mut()
        .zip(tasks.par_iter())
        .zip(cache.heads.par_iter())
        .for_each(|((gr, &(b, h)), hc)| finish_grad(&p, h, hc, cache.scales[b], g[b], gr));
    let mut dq = Matrix::zeros(dims.nodes, hh * d);
    let mut dk = Matrix::zeros(dims.nodes, hh * d);
    let mut dvm = Matrix::zeros(dims.nodes, hh * dv);
    let mut dconv = vec![0.0f64; hh * dims.kernel];
    for (&(b, h), gr) in tasks.iter().zip(&grads) {
        for t in 0..n {
            let row = blocks[b] + t;
            dq.row_mut(row)[h * d..(h + 1) * d].copy_from_slice(&gr.dq[t * d..(t + 1) * d]);
            dk.row_mut(row)[h * d..(h + 1) * d].copy_from_slice(&gr.dk[t * d..(t + 1) * d]);
            dvm.row_mut(row)[h * dv..(h + 1) * dv].copy_from_slice(&gr.dv[t * dv..(t + 1) * dv]);
        }
        for (acc, x) in dconv[h * dims.kernel..(h + 1) * dims.kernel].iter_mut().zip(&gr.dconv) {
            *acc += x;
        }
    }
    let res_conv = res_conv.map(|_| Matrix::from_fn(hh, dims.kernel, |h, i| dconv[h * dims.kernel + i] as f32));
    Ok(NystromGrads { query: dq, key: dk, value: dvm, res_conv })
}
