//! Linformer self-attention (Wang et al. 2020, "Linformer: Self-Attention with Linear
//! Complexity"), as lucidrains' `linformer` package computes it
//! (`LinformerSelfAttention(dim, seq_len, k, heads, dim_head, one_kv_head=False, share_kv)`):
//! the keys and values of the `n` tokens of an image are mixed down to `k` rows along the
//! sequence axis by learnt projections `E` (`proj_k`) and `F` (`proj_v`), and every query
//! attends to those `k` rows.
//!
//! ```text
//! per block b (one image: rows b n .. (b + 1) n of Q, K, V), head h (columns h d .. (h + 1) d):
//!     K'_b  = E^T K_b                          [k x H d]     E = proj_k  [n x k]
//!     V'_b  = F^T V_b                          [k x H dv]    F = proj_v  [n x k]
//!     S_bh  = Q_bh K'_bh^T / sqrt(d)           [n x k]
//!     P_bh  = softmax_rows(S_bh)               [n x k]
//!     out_bh = P_bh V'_bh                      [n x dv]      out [N x H dv], heads concatenated
//!
//!   K_b [n x Hd] --E^T--> K'_b [k x Hd]      Q_bh [n x d] x K'_bh^T [d x k] -> P [n x k]
//!   V_b [n x Hdv] -F^T--> V'_b [k x Hdv]     P [n x k] x V'_bh [k x dv]    -> out_bh [n x dv]
//! ```
//!
//! Sharing (the paper's section 4): the projections are always shared by the heads (headwise
//! sharing: one `E`, `F` pair per layer, as in the peer with `one_kv_head=False`); key-value
//! sharing (`share_kv`) is `F = E`: pass the same matrix twice, and add the two gradients
//! ([`LinformerGrads::e`] + [`LinformerGrads::f`]); layerwise sharing is the caller passing the
//! same `E` (and `F`) to every layer.
//!
//! Cost: `O(n k d)` time and `O(n k)` memory per head instead of `O(n^2)`: the scores are `[n x
//! k]`. The projection ties a layer to one token count: a block of another size is an error
//! ([`Error::Invalid`], "Linformer was built for n = .. tokens, got ..") where the peer slices
//! `E` to its first rows for a shorter sequence (and asserts on a longer one).
//!
//! The fast forward and backward are in [`crate::kernels::linformer`] (re-exported here); this
//! module adds the seeded initialisation and the plain f64 references they are tested against.
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::attention::linformer::{linformer_forward, linformer_init, linformer_reference};
//! let (n, k, heads) = (16, 4, 2);
//! let x = Matrix::from_fn(2 * n, heads * 8, |i, j| ((i * 7 + j * 3) as f32 * 0.1).sin());
//! let inputs = AttentionInputs::new(&x, &x, &x, heads); // two images of 16 tokens, 2 heads
//! let (e, f) = (linformer_init(n, k, 1).unwrap(), linformer_init(n, k, 2).unwrap());
//! let (out, _cache) = linformer_forward(&inputs, &[0, n, 2 * n], &e, &f).unwrap();
//! let oracle = linformer_reference(&inputs, &[0, n, 2 * n], &e, &f).unwrap();
//! assert!(out.max_abs_diff(&oracle) < 1e-5);
//! // The projection is tied to n = 16 tokens: a block of 15 is refused.
//! let y = Matrix::zeros(15, heads * 8);
//! assert!(linformer_forward(&AttentionInputs::new(&y, &y, &y, heads), &[0, 15], &e, &f).is_err());
//! ```

// Index loops mirror the formulas: this file is read as the definition.
#![allow(clippy::needless_range_loop)]

pub use crate::kernels::linformer::{
    LinformerCache, LinformerDims, LinformerGrads, QUERY_TILE, linformer_backward, linformer_dims, linformer_forward,
};

use super::AttentionInputs;
use crate::error::{Error, Result, ensure_finite};
use crate::nn::Init;
use crate::tensor::Matrix;

/// A projection `[tokens x k]` initialised as the peer's `init_`: uniform in `(-1/sqrt(k),
/// 1/sqrt(k))`, from a ChaCha8 generator seeded with `seed` (the same numbers on every machine).
///
/// ```
/// use patchgraph::attention::linformer::linformer_init;
/// let e = linformer_init(197, 64, 0).unwrap();
/// assert_eq!(e.shape(), (197, 64));
/// assert!(e.as_slice().iter().all(|x| x.abs() <= 0.125));
/// assert!(linformer_init(197, 0, 0).is_err());
/// ```
pub fn linformer_init(tokens: usize, k: usize, seed: u64) -> Result<Matrix> {
    if k == 0 {
        return Err(Error::invalid("Linformer k", "must be at least 1"));
    }
    if tokens == 0 {
        return Err(Error::invalid("Linformer tokens (seq_len)", "must be at least 1"));
    }
    let bound = 1.0 / (k as f32).sqrt();
    Matrix::from_vec(tokens, k, Init::new(seed).uniform(tokens * k, -bound, bound))
}

/// The forward in f64, everything kept for the backward.
struct Forward {
    /// `K'` `[B][k][H d]`.
    kp: Vec<f64>,
    /// `V'` `[B][k][H dv]`.
    vp: Vec<f64>,
    /// `P` `[N][H][k]`.
    p: Vec<f64>,
    /// `out` `[N][H dv]`.
    out: Vec<f64>,
}

fn forward_f64(inputs: &AttentionInputs<'_>, dims: &LinformerDims, e: &Matrix, f: &Matrix) -> Forward {
    let LinformerDims { nodes, blocks, tokens: n, k, heads, key_dim: d, value_dim: dv } = *dims;
    let (hd, hdv) = (heads * d, heads * dv);
    let scale = 1.0 / (d as f64).sqrt();
    let mut kp = vec![0.0f64; blocks * k * hd];
    let mut vp = vec![0.0f64; blocks * k * hdv];
    for b in 0..blocks {
        for r in 0..k {
            for i in 0..n {
                // K'_b[r] = sum_i E[i][r] K[b n + i]
                let (wk, wv) = (e.get(i, r) as f64, f.get(i, r) as f64);
                let (key, value) = (inputs.key.row(b * n + i), inputs.value.row(b * n + i));
                for c in 0..hd {
                    kp[(b * k + r) * hd + c] += wk * key[c] as f64;
                }
                for c in 0..hdv {
                    vp[(b * k + r) * hdv + c] += wv * value[c] as f64;
                }
            }
        }
    }
    let mut p = vec![0.0f64; nodes * heads * k];
    let mut out = vec![0.0f64; nodes * hdv];
    for b in 0..blocks {
        for i in 0..n {
            let row = b * n + i;
            let q = inputs.query.row(row);
            for h in 0..heads {
                let pr = &mut p[(row * heads + h) * k..(row * heads + h + 1) * k];
                for r in 0..k {
                    pr[r] = scale * (0..d).map(|c| q[h * d + c] as f64 * kp[(b * k + r) * hd + h * d + c]).sum::<f64>();
                }
                let m = pr.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let z: f64 = pr.iter().map(|x| (x - m).exp()).sum();
                for x in pr.iter_mut() {
                    *x = (*x - m).exp() / z;
                }
                for c in 0..dv {
                    out[row * hdv + h * dv + c] = (0..k).map(|r| pr[r] * vp[(b * k + r) * hdv + h * dv + c]).sum();
                }
            }
        }
    }
    Forward { kp, vp, p, out }
}

fn to_matrix(rows: usize, cols: usize, v: &[f64]) -> Matrix {
    Matrix::from_fn(rows, cols, |i, j| v[i * cols + j] as f32)
}

/// The forward in plain f64 loops: `out` `[N x H dv]` (the oracle of
/// [`linformer_forward`]; the same preconditions and errors).
pub fn linformer_reference(inputs: &AttentionInputs<'_>, blocks: &[usize], e: &Matrix, f: &Matrix) -> Result<Matrix> {
    let dims = linformer_dims(inputs, blocks, e, f)?;
    let fwd = forward_f64(inputs, &dims, e, f);
    Ok(to_matrix(dims.nodes, dims.heads * dims.value_dim, &fwd.out))
}

/// The backward in plain f64 loops (the oracle of [`linformer_backward`], the same gradients):
///
/// ```text
/// dP_r   = dout . V'_r                    (out = sum_r P_r V'_r)
/// dV'_r += P_r dout                       (out = sum_r P_r V'_r)
/// dS_r   = P_r (dP_r - sum_r' P_r' dP_r') (P = softmax S)
/// dq    += scale sum_r dS_r K'_r          (S_r = scale q . K'_r)
/// dK'_r += scale dS_r q                   (S_r = scale q . K'_r)
/// dK_i   = sum_r E_ir dK'_r ; dE_ir += K_i . dK'_r    (K'_r = sum_i E_ir K_i)
/// dV_i   = sum_r F_ir dV'_r ; dF_ir += V_i . dV'_r    (V'_r = sum_i F_ir V_i)
/// ```
pub fn linformer_backward_reference(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    e: &Matrix,
    f: &Matrix,
    dout: &Matrix,
) -> Result<LinformerGrads> {
    let dims = linformer_dims(inputs, blocks, e, f)?;
    let LinformerDims { nodes, blocks: nb, tokens: n, k, heads, key_dim: d, value_dim: dv } = dims;
    dout.expect_shape("Linformer backward dout", nodes, heads * dv)?;
    ensure_finite("Linformer backward dout", dout.as_slice())?;
    let (hd, hdv) = (heads * d, heads * dv);
    let scale = 1.0 / (d as f64).sqrt();
    let Forward { kp, vp, p, .. } = forward_f64(inputs, &dims, e, f);
    let mut dkp = vec![0.0f64; nb * k * hd];
    let mut dvp = vec![0.0f64; nb * k * hdv];
    let mut dq = vec![0.0f64; nodes * hd];
    let mut dp = vec![0.0f64; k];
    for b in 0..nb {
        for i in 0..n {
            let row = b * n + i;
            let (q, g) = (inputs.query.row(row), dout.row(row));
            for h in 0..heads {
                let pr = &p[(row * heads + h) * k..(row * heads + h + 1) * k];
                for r in 0..k {
                    let vr = &vp[(b * k + r) * hdv + h * dv..][..dv];
                    dp[r] = (0..dv).map(|c| g[h * dv + c] as f64 * vr[c]).sum();
                    for c in 0..dv {
                        dvp[(b * k + r) * hdv + h * dv + c] += pr[r] * g[h * dv + c] as f64;
                    }
                }
                let dot: f64 = (0..k).map(|r| pr[r] * dp[r]).sum();
                for r in 0..k {
                    let ds = pr[r] * (dp[r] - dot);
                    for c in 0..d {
                        dq[row * hd + h * d + c] += scale * ds * kp[(b * k + r) * hd + h * d + c];
                        dkp[(b * k + r) * hd + h * d + c] += scale * ds * q[h * d + c] as f64;
                    }
                }
            }
        }
    }
    let mut dk = vec![0.0f64; nodes * hd];
    let mut dvv = vec![0.0f64; nodes * hdv];
    let mut de = vec![0.0f64; n * k];
    let mut df = vec![0.0f64; n * k];
    for b in 0..nb {
        for i in 0..n {
            let row = b * n + i;
            let (key, value) = (inputs.key.row(row), inputs.value.row(row));
            for r in 0..k {
                let (wk, wv) = (e.get(i, r) as f64, f.get(i, r) as f64);
                for c in 0..hd {
                    let g = dkp[(b * k + r) * hd + c];
                    dk[row * hd + c] += wk * g;
                    de[i * k + r] += key[c] as f64 * g;
                }
                for c in 0..hdv {
                    let g = dvp[(b * k + r) * hdv + c];
                    dvv[row * hdv + c] += wv * g;
                    df[i * k + r] += value[c] as f64 * g;
                }
            }
        }
    }
    Ok(LinformerGrads {
        query: to_matrix(nodes, hd, &dq),
        key: to_matrix(nodes, hd, &dk),
        value: to_matrix(nodes, hdv, &dvv),
        e: to_matrix(n, k, &de),
        f: to_matrix(n, k, &df),
    })
}
