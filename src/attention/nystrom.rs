//! Nyströmformer attention (Xiong et al. 2021), as the `nystrom-attention` package (lucidrains)
//! computes it: softmax attention approximated through `m` landmarks, in `O(n m)` memory and
//! time instead of `O(n^2)`. This file holds the landmark layouts ([`Landmarks`]), the shape
//! checks and the plain f64 reference ([`nystrom_reference`], [`nystrom_backward_reference`]);
//! the fast kernel is [`crate::kernels::nystrom`].
//!
//! # The math, per block (one image of `n` tokens) and head
//!
//! ```text
//! Q  = q / sqrt(d)                 [n x d]     (the peer scales q before anything else)
//! K  = k, V = v                    [n x d], [n x dv]
//! Ql = M Q,  Kl = M K              [m x d]     landmark means: M [m x n], M_jt = 1/c_j if token t
//!                                              belongs to landmark j (c_j: its divisor)
//! A1 = softmax_rows(Q  Kl^T)       [n x m]
//! A2 = softmax_rows(Ql Kl^T)       [m x m]
//! A3 = softmax_rows(Ql K^T)        [m x n]     (+ p zero-score columns, see the padding below)
//! Z  = pinv_iter(A2)               [m x m]     ~ A2^+ (six iterations by default)
//! out = A1 (Z (A3 V))              [n x dv]    (+ res_conv(V): a depth-wise 1-D conv along tokens)
//! ```
//!
//! The peer evaluates `(A1 Z)(A3 V)`; we evaluate `A1 (Z (A3 V))`, the same product in another
//! order (`n m dv` multiply-adds instead of `n m (m + dv)`), equal to float rounding.
//!
//! # Why `O(n m)` memory
//!
//! No `[n x n]` matrix is ever formed: the largest intermediates are `A1` `[n x m]` and `A3`
//! `[m x n]`; `A2`, `Z` and the pinv iterates are `[m x m]`. With `m` fixed (the peer's default
//! is 256; a ViT at 197 tokens might use 50) time and memory grow linearly in `n`.
//!
//! # Landmarks: 1-D segments and 2-D blocks
//!
//! The peer's landmarks ([`Landmarks::segments`]) are means of `m` consecutive runs of
//! `l = ceil(n / m)` tokens. When `m` does not divide `n` it pads the sequence at the **front**
//! with `p = m l - n` zero tokens (zero q, k and v, since its `to_qkv` has no bias). We keep
//! that exactly without materialising the padding: the padded tokens count in every divisor
//! (`c_j = l`), take part in `A3`'s softmax as `p` keys of score 0 (and value 0), and their
//! output rows are dropped. `n = 10, m = 4`: `l = 3`, `p = 2`:
//!
//! ```text
//! [ 0  0 t0 | t1 t2 t3 | t4 t5 t6 | t7 t8 t9 ]     landmark 0 = (0 + 0 + t0) / 3, ...
//! ```
//!
//! On an image, consecutive tokens are strips of patch rows. [`Landmarks::grid`] averages 2-D
//! blocks of patches instead, so each landmark is a compact region of the image; leading tokens
//! (a class token) are their own landmarks. A 4 x 4 grid, 4 landmarks:
//!
//! ```text
//! segments(16, 4)       grid(4, 4, 2, 2, 0)      grid(4, 4, 2, 2, 1): class token = landmark 0
//!  0 0 0 0               0 0 1 1                  [cls] -> 0
//!  1 1 1 1               0 0 1 1                  1 1 2 2 / 1 1 2 2 / 3 3 4 4 / 3 3 4 4
//!  2 2 2 2               2 2 3 3
//!  3 3 3 3               2 2 3 3
//! ```
//!
//! Block `r` of `side_rows` covers patch rows `floor(r rows / side_rows) .. floor((r+1) rows /
//! side_rows)` (columns alike); its divisor is its patch count. [`Landmarks::from_assignment`]
//! takes any assignment of tokens to landmarks.
//!
//! # The pseudo-inverse iteration
//!
//! `moore_penrose_iter_pinv` (Razavi et al. 2014), from a scaled transpose:
//!
//! ```text
//! alpha = max_i sum_j |A2_ij|,   beta = max_j sum_i |A2_ij|       (max row and column sums)
//! Z_0   = A2^T / (alpha beta)
//! Z_t+1 = 1/4 Z_t (13 I - A_t (15 I - A_t (7 I - A_t))),   A_t = A2 Z_t
//! ```
//!
//! **Divergence from the peer**: the peer's `torch.max(col)` and `torch.max(row)` reduce over the
//! whole tensor, every image of the batch and every head, so one image's output depends on the
//! other images in its batch. We take the maxima over the heads of one block (one image): images
//! in a batch stay independent. At batch size 1 this is exactly the peer.
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::attention::nystrom::{Landmarks, nystrom_reference};
//! use patchgraph::kernels::nystrom::nystrom_forward;
//! let x = Matrix::from_fn(10, 4, |i, j| ((i * 4 + j) as f32 * 0.37).sin());
//! let inputs = AttentionInputs::new(&x, &x, &x, 2); // 2 heads of width 2
//! let landmarks = Landmarks::segments(10, 4).unwrap(); // front-padded by 2 tokens
//! let oracle = nystrom_reference(&inputs, &[0, 10], &landmarks, 6, None).unwrap();
//! let (fast, _cache) = nystrom_forward(&inputs, &[0, 10], &landmarks, 6, None).unwrap();
//! assert!(fast.max_abs_diff(&oracle) < 1e-5);
//! ```

// Index loops mirror the formulas: this file is read as the definition.
#![allow(clippy::needless_range_loop)]

use super::AttentionInputs;
use crate::error::{Result, ensure_finite};
use crate::kernels::nystrom::NystromGrads;
use crate::tensor::{ColumnBlock, Matrix};

pub use crate::algebra::landmarks::{Landmarks, NystromOptions};
pub(crate) use crate::algebra::landmarks::{NystromDims, validate};

// ----- f64 reference -------------------------------------------------------------------------

/// `a [r x k] b [k x c]`, row-major.
fn mm(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for t in 0..k {
            let x = a[i * k + t];
            for j in 0..c {
                out[i * c + j] += x * b[t * c + j];
            }
        }
    }
    out
}

/// The transpose of `a [r x c]`.
fn tr(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = a[i * c + j];
        }
    }
    out
}

/// `a + s I` for a square `[m x m]` `a` (`a` scaled by `t` first).
fn add_eye(a: &[f64], m: usize, t: f64, s: f64) -> Vec<f64> {
    let mut out: Vec<f64> = a.iter().map(|x| t * x).collect();
    for i in 0..m {
        out[i * m + i] += s;
    }
    out
}

/// Row softmax of `s [rows x cols]` in place, with `pad` extra columns of score 0 in every
/// denominator (the front padding's keys).
fn softmax64(s: &mut [f64], cols: usize, pad: usize) {
    for row in s.chunks_exact_mut(cols) {
        let mut mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        if pad > 0 {
            mx = mx.max(0.0);
        }
        let mut z = pad as f64 * (-mx).exp();
        for v in row.iter_mut() {
            *v = (*v - mx).exp();
            z += *v;
        }
        for v in row.iter_mut() {
            *v /= z;
        }
    }
}

/// Softmax backward, row by row: `da` becomes `dS = A * (dA - rowsum(dA * A))`.
fn softmax_back64(a: &[f64], da: &mut [f64], cols: usize) {
    for (ar, dr) in a.chunks_exact(cols).zip(da.chunks_exact_mut(cols)) {
        let dot: f64 = ar.iter().zip(dr.iter()).map(|(a, d)| a * d).sum();
        for (d, a) in dr.iter_mut().zip(ar) {
            *d = a * (*d - dot);
        }
    }
}

/// Landmark means `M x` of `x [n x w]`: `[m x w]`.
fn means64(lm: &Landmarks, x: &[f64], w: usize) -> Vec<f64> {
    let mut out = vec![0.0; lm.count() * w];
    for (t, &j) in lm.assignment().iter().enumerate() {
        for c in 0..w {
            out[j as usize * w + c] += x[t * w + c];
        }
    }
    for j in 0..lm.count() {
        for c in 0..w {
            out[j * w + c] /= lm.divisor(j) as f64;
        }
    }
    out
}

/// `dx += M^T dm`: the landmark means' backward.
fn means_back64(lm: &Landmarks, dm: &[f64], w: usize, dx: &mut [f64]) {
    for (t, &j) in lm.assignment().iter().enumerate() {
        let j = j as usize;
        for c in 0..w {
            dx[t * w + c] += dm[j * w + c] / lm.divisor(j) as f64;
        }
    }
}

/// One pinv iteration's intermediates from `x` and `z`: `A = x z`, `B = 7I - A`,
/// `C = 15I - A B`, `D = 13I - A C`.
fn pinv_step64(x: &[f64], z: &[f64], m: usize) -> [Vec<f64>; 4] {
    let a = mm(x, z, m, m, m);
    let b = add_eye(&a, m, -1.0, 7.0);
    let c = add_eye(&mm(&a, &b, m, m, m), m, -1.0, 15.0);
    let d = add_eye(&mm(&a, &c, m, m, m), m, -1.0, 13.0);
    [a, b, c, d]
}

/// Sign as torch's `abs` backward uses it (0 at 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Everything one head of one block computes, in f64.
struct Head64 {
    /// `Q = q / sqrt(d)` `[n x d]`, `K` `[n x d]`, `V` `[n x dv]`.
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// `Ql`, `Kl` `[m x d]`.
    ql: Vec<f64>,
    kl: Vec<f64>,
    /// `A1 [n x m]`, `A2 [m x m]`, `A3 [m x n]`.
    a1: Vec<f64>,
    a2: Vec<f64>,
    a3: Vec<f64>,
    /// `Z_0 ..= Z_iters`.
    zs: Vec<Vec<f64>>,
    /// `W = A3 V`, `U = Z W` `[m x dv]`.
    w: Vec<f64>,
    u: Vec<f64>,
    /// `A1 U + res_conv(V)` `[n x dv]`.
    out: Vec<f64>,
}

/// One block's forward in f64, with the pinv scale shared by its heads.
struct Block64 {
    heads: Vec<Head64>,
    /// `alpha` (max row sum) and where: (head, row); `beta` (max column sum): (head, column).
    alpha: (f64, usize, usize),
    beta: (f64, usize, usize),
}

/// The f64 forward of the block starting at token `base`.
fn block64(
    inputs: &AttentionInputs<'_>,
    dims: &NystromDims,
    lm: &Landmarks,
    base: usize,
    iterations: usize,
    res_conv: Option<&Matrix>,
) -> Block64 {
    let (n, m, d, dv) = (dims.block, dims.landmarks, dims.key_dim, dims.value_dim);
    let scale = 1.0 / (d as f64).sqrt();
    let read = |x: ColumnBlock<'_>, h: usize, w: usize, s: f64| -> Vec<f64> {
        (0..n * w).map(|e| x.get(base + e / w, h * w + e % w) as f64 * s).collect()
    };
    let mut heads = Vec::with_capacity(dims.heads);
    for h in 0..dims.heads {
        let (q, k, v) = (read(inputs.query, h, d, scale), read(inputs.key, h, d, 1.0), read(inputs.value, h, dv, 1.0));
        let (ql, kl) = (means64(lm, &q, d), means64(lm, &k, d));
        let mut a1 = mm(&q, &tr(&kl, m, d), n, d, m);
        softmax64(&mut a1, m, 0);
        let mut a2 = mm(&ql, &tr(&kl, m, d), m, d, m);
        softmax64(&mut a2, m, 0);
        let mut a3 = mm(&ql, &tr(&k, n, d), m, d, n);
        softmax64(&mut a3, n, lm.padding());
        let w = mm(&a3, &v, m, n, dv);
        heads.push(Head64 { q, k, v, ql, kl, a1, a2, a3, zs: Vec::new(), w, u: Vec::new(), out: Vec::new() });
    }
    // The first maximum in (head, index) order.
    let (mut alpha, mut beta) = ((f64::NEG_INFINITY, 0, 0), (f64::NEG_INFINITY, 0, 0));
    for (h, hd) in heads.iter().enumerate() {
        for i in 0..m {
            let row: f64 = (0..m).map(|j| hd.a2[i * m + j].abs()).sum();
            if row > alpha.0 {
                alpha = (row, h, i);
            }
        }
        for j in 0..m {
            let col: f64 = (0..m).map(|i| hd.a2[i * m + j].abs()).sum();
            if col > beta.0 {
                beta = (col, h, j);
            }
        }
    }
    let k_half = dims.kernel / 2;
    for (h, hd) in heads.iter_mut().enumerate() {
        let z0: Vec<f64> = tr(&hd.a2, m, m).iter().map(|x| x / (alpha.0 * beta.0)).collect();
        hd.zs.push(z0);
        for _ in 0..iterations {
            let z = hd.zs.last().expect("z_0 is pushed first");
            let [_, _, _, dd] = pinv_step64(&hd.a2, z, m);
            let next: Vec<f64> = mm(z, &dd, m, m, m).iter().map(|x| 0.25 * x).collect();
            hd.zs.push(next);
        }
        hd.u = mm(hd.zs.last().expect("z_0 is pushed first"), &hd.w, m, m, dv);
        hd.out = mm(&hd.a1, &hd.u, n, m, dv);
        if let Some(wc) = res_conv {
            for t in 0..n {
                for i in 0..dims.kernel {
                    let Some(src) = (t + i).checked_sub(k_half).filter(|&s| s < n) else { continue };
                    let wi = wc.get(h, i) as f64;
                    for c in 0..dv {
                        hd.out[t * dv + c] += wi * hd.v[src * dv + c];
                    }
                }
            }
        }
    }
    Block64 { heads, alpha, beta }
}

/// The Nyström forward in plain f64 loops (the pinv iterated in f64 too): the oracle of
/// [`crate::kernels::nystrom::nystrom_forward`]. `blocks` are the token offsets of the images
/// (`[0, n, 2n, ..., N]`, every block `landmarks.n()` tokens); `res_conv` `[H x K]` (K odd) is
/// the peer's depth-wise residual `Conv2d(H, H, (K, 1), padding = (K / 2, 0), groups = H)`.
/// Returns `out` `[N x H*dv]` (before the peer's `to_out`).
pub fn nystrom_reference(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    landmarks: &Landmarks,
    iterations: usize,
    res_conv: Option<&Matrix>,
) -> Result<Matrix> {
    let dims = validate(inputs, blocks, landmarks, res_conv)?;
    let (n, dv) = (dims.block, dims.value_dim);
    let mut out = Matrix::zeros(dims.nodes, dims.heads * dv);
    for b in 0..dims.blocks {
        let base = blocks[b];
        let blk = block64(inputs, &dims, landmarks, base, iterations, res_conv);
        for (h, hd) in blk.heads.iter().enumerate() {
            for t in 0..n {
                for c in 0..dv {
                    out.row_mut(base + t)[h * dv + c] = hd.out[t * dv + c] as f32;
                }
            }
        }
    }
    Ok(out)
}

/// The Nyström backward in plain f64 loops: the oracle of
/// [`crate::kernels::nystrom::nystrom_backward`] (same arguments and the upstream gradient
/// `dout` `[N x H*dv]`; it recomputes the forward). Differentiates through the softmaxes, the
/// landmark means, the unrolled pinv iteration with its scale (the gradient of each maximum
/// goes to its first arg-max) and the residual convolution.
pub fn nystrom_backward_reference(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    landmarks: &Landmarks,
    iterations: usize,
    res_conv: Option<&Matrix>,
    dout: &Matrix,
) -> Result<NystromGrads> {
    let dims = validate(inputs, blocks, landmarks, res_conv)?;
    let (n, m, d, dv, hh) = (dims.block, dims.landmarks, dims.key_dim, dims.value_dim, dims.heads);
    dout.expect_shape("nystrom dout", dims.nodes, hh * dv)?;
    ensure_finite("nystrom dout", dout.as_slice())?;
    let scale = 1.0 / (d as f64).sqrt();
    let k_half = dims.kernel / 2;
    let mut dq_all = Matrix::zeros(dims.nodes, hh * d);
    let mut dk_all = Matrix::zeros(dims.nodes, hh * d);
    let mut dv_all = Matrix::zeros(dims.nodes, hh * dv);
    let mut dconv = vec![0.0f64; hh * dims.kernel];
    for b in 0..dims.blocks {
        let base = blocks[b];
        let blk = block64(inputs, &dims, landmarks, base, iterations, res_conv);
        let p = blk.alpha.0 * blk.beta.0;
        let mut da2s = Vec::with_capacity(hh);
        let mut rest = Vec::with_capacity(hh);
        let mut g = 0.0f64;
        for (h, hd) in blk.heads.iter().enumerate() {
            // dO [n x dv]
            let d_o: Vec<f64> = (0..n * dv).map(|e| dout.get(base + e / dv, h * dv + e % dv) as f64).collect();
            // out = A1 U:  dA1 = dO U^T, dU = A1^T dO
            let mut ds1 = mm(&d_o, &tr(&hd.u, m, dv), n, dv, m);
            let du = mm(&tr(&hd.a1, n, m), &d_o, m, n, dv);
            // A1 = softmax(Q Kl^T):  dQ = dS1 Kl, dKl = dS1^T Q
            softmax_back64(&hd.a1, &mut ds1, m);
            let dqq = mm(&ds1, &hd.kl, n, m, d);
            let dkl = mm(&tr(&ds1, n, m), &hd.q, m, n, d);
            // U = Z W:  dZ = dU W^T, dW = Z^T dU
            let z = hd.zs.last().expect("z_0 exists");
            let mut dz = mm(&du, &tr(&hd.w, m, dv), m, dv, m);
            let dw = mm(&tr(z, m, m), &du, m, m, dv);
            // W = A3 V:  dA3 = dW V^T, dV = A3^T dW
            let mut ds3 = mm(&dw, &tr(&hd.v, n, dv), m, dv, n);
            let mut dvv = mm(&tr(&hd.a3, m, n), &dw, n, m, dv);
            // A3 = softmax(Ql K^T) (padded keys: constant zeros):  dQl = dS3 K, dK = dS3^T Ql
            softmax_back64(&hd.a3, &mut ds3, n);
            let dql = mm(&ds3, &hd.k, m, n, d);
            let dkk = mm(&tr(&ds3, m, n), &hd.ql, n, m, d);
            // The pinv iterations, last first.
            let mut da2 = vec![0.0f64; m * m];
            for t in (0..iterations).rev() {
                let zt = &hd.zs[t];
                let [a, bb, c, dd] = pinv_step64(&hd.a2, zt, m);
                // z' = 1/4 z D:  dD = 1/4 z^T dz', dz = 1/4 dz' D^T
                let d_d: Vec<f64> = mm(&tr(zt, m, m), &dz, m, m, m).iter().map(|x| 0.25 * x).collect();
                let mut dzp: Vec<f64> = mm(&dz, &tr(&dd, m, m), m, m, m).iter().map(|x| 0.25 * x).collect();
                // D = 13I - A C:  dA = -dD C^T, dC = -A^T dD
                let mut d_a: Vec<f64> = mm(&d_d, &tr(&c, m, m), m, m, m).iter().map(|x| -x).collect();
                let d_c: Vec<f64> = mm(&tr(&a, m, m), &d_d, m, m, m).iter().map(|x| -x).collect();
                // C = 15I - A B:  dA -= dC B^T, dB = -A^T dC
                for (x, y) in d_a.iter_mut().zip(mm(&d_c, &tr(&bb, m, m), m, m, m)) {
                    *x -= y;
                }
                let d_b = mm(&tr(&a, m, m), &d_c, m, m, m);
                // B = 7I - A:  dA -= dB   (d_b holds +A^T dC = -dB, so dA += d_b)
                for (x, y) in d_a.iter_mut().zip(&d_b) {
                    *x += y;
                }
                // A = x z:  dx += dA z^T, dz += x^T dA
                for (x, y) in da2.iter_mut().zip(mm(&d_a, &tr(zt, m, m), m, m, m)) {
                    *x += y;
                }
                for (x, y) in dzp.iter_mut().zip(mm(&tr(&hd.a2, m, m), &d_a, m, m, m)) {
                    *x += y;
                }
                dz = dzp;
            }
            // Z_0 = x^T / (alpha beta):  dx += dZ_0^T / p, and g = sum dZ_0 * x^T for the scale.
            for i in 0..m {
                for j in 0..m {
                    da2[j * m + i] += dz[i * m + j] / p;
                    g += dz[i * m + j] * hd.a2[j * m + i];
                }
            }
            // res_conv: out[t] += sum_i w_i V[t + i - K/2]
            if let Some(wc) = res_conv {
                for t in 0..n {
                    for i in 0..dims.kernel {
                        let Some(src) = (t + i).checked_sub(k_half).filter(|&s| s < n) else { continue };
                        let wi = wc.get(h, i) as f64;
                        for c in 0..dv {
                            dvv[src * dv + c] += wi * d_o[t * dv + c];
                            dconv[h * dims.kernel + i] += d_o[t * dv + c] * hd.v[src * dv + c];
                        }
                    }
                }
            }
            da2s.push(da2);
            rest.push((dqq, dkk, dvv, dql, dkl));
        }
        // 1 / p, p = alpha beta:  dp = -g / p^2;  dalpha = dp beta, dbeta = dp alpha.
        let dp = -g / (p * p);
        let (ah, ai) = (blk.alpha.1, blk.alpha.2);
        let (bh, bj) = (blk.beta.1, blk.beta.2);
        // alpha = sum_j |x_{ai j}| of head ah;  beta = sum_i |x_{i bj}| of head bh.
        for j in 0..m {
            da2s[ah][ai * m + j] += dp * blk.beta.0 * sign(blk.heads[ah].a2[ai * m + j]);
        }
        for i in 0..m {
            da2s[bh][i * m + bj] += dp * blk.alpha.0 * sign(blk.heads[bh].a2[i * m + bj]);
        }
        for (h, hd) in blk.heads.iter().enumerate() {
            let (mut dqq, mut dkk, dvv, mut dql, mut dkl) = std::mem::take(&mut rest[h]);
            // A2 = softmax(Ql Kl^T):  dQl += dS2 Kl, dKl += dS2^T Ql
            let mut ds2 = std::mem::take(&mut da2s[h]);
            softmax_back64(&hd.a2, &mut ds2, m);
            for (x, y) in dql.iter_mut().zip(mm(&ds2, &hd.kl, m, m, d)) {
                *x += y;
            }
            for (x, y) in dkl.iter_mut().zip(mm(&tr(&ds2, m, m), &hd.ql, m, m, d)) {
                *x += y;
            }
            // Ql = M Q, Kl = M K;  Q = q / sqrt(d)
            means_back64(landmarks, &dql, d, &mut dqq);
            means_back64(landmarks, &dkl, d, &mut dkk);
            for t in 0..n {
                for c in 0..d {
                    dq_all.row_mut(base + t)[h * d + c] = (dqq[t * d + c] * scale) as f32;
                    dk_all.row_mut(base + t)[h * d + c] = dkk[t * d + c] as f32;
                }
                for c in 0..dv {
                    dv_all.row_mut(base + t)[h * dv + c] = dvv[t * dv + c] as f32;
                }
            }
        }
    }
    let res_conv = res_conv.map(|_| Matrix::from_fn(hh, dims.kernel, |h, i| dconv[h * dims.kernel + i] as f32));
    Ok(NystromGrads { query: dq_all, key: dk_all, value: dv_all, res_conv })
}
