//! Performer attention (FAVOR+, Choromanski et al. 2021), as performer-pytorch (lucidrains)
//! computes it: softmax attention on the complete graph with self-loops of each block (one
//! image), its kernel `exp(q . k / sqrt(d))` estimated by positive orthogonal random features,
//! and evaluated in linear form.
//!
//! ```text
//! q, k   [N x H*d]    v [N x H*dv]    W [m x d] (rows w_r, shared by every head and block)
//! per block b (n_b rows), head h, with x' = d^-1/4 x and eps = 1e-4:
//!     phi(x)_r = m^-1/2 (exp(w_r . x' - |x'|^2 / 2 - M) + eps)          phi(Q), phi(K) [n_b x m]
//!         M = max_r w_r . q'_i         for a query row (its own max)
//!         M = max_{j, r} w_r . k'_j    for the keys (one max per block and head)
//!     out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j)    [N x H*dv]
//!           = phi(q_i)^T C / phi(q_i) . s,   C = sum_j phi(k_j) v_j^T [m x dv],  s = sum_j phi(k_j) [m]
//! ```
//!
//! **The estimator.** For `w ~ N(0, I_d)`,
//! `E[exp(w.x' - |x'|^2/2) exp(w.y' - |y'|^2/2)] = exp(x'.y') = exp(x.y / sqrt(d))`: the mean
//! of `m` positive features is an unbiased estimate of the softmax kernel (the stabilisers `M`
//! are constant factors that cancel in the normalisation, apart from `eps`). The rows of `W`
//! come in blocks of `d` mutually orthogonal directions with independent chi-distributed norms
//! ([`orthogonal_random_features`]), which lowers the variance. The relative error of `out`
//! falls roughly as `1 / sqrt(m)`; `m = d ln d` ([`default_features`]) is the peer's default.
//!
//! **Cost.** The linear form never forms the `n_b x n_b` weights: per (block, head) it costs
//! `K W^T` (twice: once for the key max), `phi(K)^T V`, `Q W^T` and `phi(Q) C`, so
//! `O(N m (d + dv))` time, against `O(N^2 d)` for exact attention; beyond the inputs and the
//! output it keeps `C` and `s` per (block, head), `O(m dv)`, plus fixed tiles of `256 x m`
//! feature rows per thread. The fast path is [`crate::kernels::favor`] (forward and backward,
//! GEMMs over tiles); here are the construction of `W` and the f64 oracles, which
//! materialise the kernel attention pair by pair (the test that the linear form is the kernel
//! attention on the complete graph).
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::attention::AttentionInputs;
//! use patchgraph::attention::performer::{default_features, orthogonal_random_features, performer_reference};
//! use patchgraph::kernels::favor::favor_forward;
//! let (n, heads, d) = (10, 2, 4);
//! let x = Matrix::from_fn(n, heads * d, |i, j| ((i * 7 + j) as f32 * 0.37).sin() * 0.5);
//! let inputs = AttentionInputs::new(&x, &x, &x, heads);
//! let w = orthogonal_random_features(default_features(d), d, 0).unwrap(); // [5 x 4]
//! let blocks = [0, 6, 10]; // two images, of 6 and 4 tokens
//! let (out, _cache) = favor_forward(&inputs, &blocks, &w).unwrap();
//! let oracle = performer_reference(&inputs, &blocks, &w).unwrap();
//! assert!(out.max_abs_diff(&oracle) < 1e-5);
//! ```

// Index loops mirror the formulas: the references are read as the definition.
#![allow(clippy::needless_range_loop)]

use super::AttentionInputs;
use crate::error::{Error, Result};
use crate::kernels::favor::{self, EPS, FavorDims};
use crate::nn::Init;
use crate::tensor::{ColumnBlock, Matrix};

/// performer-pytorch's default number of random features for head width `d`:
/// `int(d ln d)`, at least 1 (`d = 64`: 266; `d = 16`: 44).
pub fn default_features(head_dim: usize) -> usize {
    if head_dim <= 1 {
        return 1;
    }
    ((head_dim as f64 * (head_dim as f64).ln()) as usize).max(1)
}

/// One `d x d` orthogonal matrix, transposed: `Q^T` of the QR of a Gaussian `[d x d]` matrix
/// (performer-pytorch's `orthogonal_matrix_chunk`), row-major f64.
fn orthogonal_chunk(d: usize, rng: &mut Init) -> Vec<f64> {
    // Drawn row-major, as torch.randn((cols, cols)).
    let g: Vec<f64> = (0..d * d).map(|_| rng.normal_one() as f64).collect();
    let g = faer::Mat::<f64>::from_fn(d, d, |i, j| g[i * d + j]);
    let q = g.qr().compute_thin_Q();
    let mut qt = vec![0.0f64; d * d];
    for r in 0..d {
        for c in 0..d {
            qt[r * d + c] = q[(c, r)];
        }
    }
    qt
}

/// The projection `W` `[features x head_dim]` of performer-pytorch's
/// `gaussian_orthogonal_random_matrix(m, d, scaling = 0)`: `floor(m / d)` blocks of `d` rows,
/// each the rows of `Q^T` for the QR of a fresh Gaussian `[d x d]` matrix (faer QR), then the
/// first `m mod d` rows of one more; row `r` is then scaled by the norm of row `r` of an
/// independent Gaussian `[m x d]` matrix (so rows are Gaussian-distributed in norm, orthogonal
/// within a block). Seeded by `ChaCha8Rng::seed_from_u64(seed)` (via [`Init`]): the same
/// matrix on every machine and thread count.
///
/// Errors: `features == 0` ([`Error::Invalid`] naming `features`), `head_dim == 0`.
pub fn orthogonal_random_features(features: usize, head_dim: usize, seed: u64) -> Result<Matrix> {
    if features == 0 {
        return Err(Error::invalid("features", "m = 0: FAVOR+ needs at least one random feature"));
    }
    if head_dim == 0 {
        return Err(Error::invalid("head_dim", "must be at least 1"));
    }
    crate::limits::check_elements("performer projection", &[features, head_dim])?;
    let d = head_dim;
    let mut rng = Init::new(seed);
    let mut w = vec![0.0f64; features * d];
    let full = features / d;
    let remaining = features - full * d;
    let chunks = full + usize::from(remaining > 0);
    for chunk in 0..chunks {
        let qt = orthogonal_chunk(d, &mut rng);
        let take = if chunk < full { d } else { remaining };
        w[chunk * d * d..chunk * d * d + take * d].copy_from_slice(&qt[..take * d]);
    }
    // multiplier = torch.randn((m, d)).norm(dim = 1); W = diag(multiplier) @ final_matrix
    let mut out = Matrix::zeros(features, d);
    for r in 0..features {
        let norm = (0..d).map(|_| (rng.normal_one() as f64).powi(2)).sum::<f64>().sqrt();
        for (o, x) in out.row_mut(r).iter_mut().zip(&w[r * d..(r + 1) * d]) {
            *o = (norm * x) as f32;
        }
    }
    Ok(out)
}

/// The features of rows `rows` of one block and head in f64: `(phi, e)`, each `[n x m]`
/// row-major, `e = phi - m^-1/2 eps` (the exponential part). The stabiliser is each row's own
/// max for queries (`is_query`), the max over the whole block for keys.
fn features_f64(
    x: ColumnBlock<'_>,
    rows: std::ops::Range<usize>,
    h: usize,
    w: &Matrix,
    is_query: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (m, d) = (w.rows(), w.cols());
    let alpha = (d as f64).powf(-0.25);
    let ratio = (m as f64).powf(-0.5);
    let n = rows.len();
    // data_dash = (d^-1/4 x) W^T ; diag = |x'|^2 / 2
    let mut dd = vec![0.0f64; n * m];
    let mut diag = vec![0.0f64; n];
    for (a, i) in rows.clone().enumerate() {
        let xi = &x.row(i)[h * d..(h + 1) * d];
        for r in 0..m {
            dd[a * m + r] = (0..d).map(|c| alpha * xi[c] as f64 * w.get(r, c) as f64).sum();
        }
        diag[a] = 0.5 * (0..d).map(|c| (alpha * xi[c] as f64).powi(2)).sum::<f64>();
    }
    let block_max = dd.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut e = vec![0.0f64; n * m];
    for a in 0..n {
        let max =
            if is_query { dd[a * m..(a + 1) * m].iter().copied().fold(f64::NEG_INFINITY, f64::max) } else { block_max };
        for r in 0..m {
            e[a * m + r] = ratio * (dd[a * m + r] - diag[a] - max).exp();
        }
    }
    let phi = e.iter().map(|v| v + ratio * EPS as f64).collect();
    (phi, e)
}

/// The kernel weights `A_ij = phi(q_i) . phi(k_j)` `[n x n]` of one block and head, with the
/// features `(phi_q, e_q, phi_k, e_k)`.
struct Materialised {
    a: Vec<f64>,
    phi_q: Vec<f64>,
    e_q: Vec<f64>,
    phi_k: Vec<f64>,
    e_k: Vec<f64>,
}

fn materialise(inputs: &AttentionInputs<'_>, base: usize, n: usize, h: usize, w: &Matrix) -> Materialised {
    let m = w.rows();
    let (phi_q, e_q) = features_f64(inputs.query, base..base + n, h, w, true);
    let (phi_k, e_k) = features_f64(inputs.key, base..base + n, h, w, false);
    let mut a = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..m).map(|r| phi_q[i * m + r] * phi_k[j * m + r]).sum();
        }
    }
    Materialised { a, phi_q, e_q, phi_k, e_k }
}

/// The f64 oracle of [`crate::kernels::favor::favor_forward`], materialised: for every block
/// and head, every pair `(i, j)` of the block gets the weight `phi(q_i) . phi(k_j)`, and
/// `out_i = sum_j A_ij v_j / sum_j A_ij` (the kernel attention on the complete graph with
/// self-loops). `O(N^2 m)`: for tests. Same inputs and errors as `favor_forward`.
pub fn performer_reference(inputs: &AttentionInputs<'_>, blocks: &[usize], projection: &Matrix) -> Result<Matrix> {
    let FavorDims { nodes, heads, value_dim: dv, .. } = favor::check(inputs, blocks, projection)?;
    let mut out = Matrix::zeros(nodes, heads * dv);
    for b in 0..blocks.len() - 1 {
        let (base, n) = (blocks[b], blocks[b + 1] - blocks[b]);
        for h in 0..heads {
            let mat = materialise(inputs, base, n, h, projection);
            for i in 0..n {
                let den: f64 = mat.a[i * n..(i + 1) * n].iter().sum();
                for c in 0..dv {
                    let num: f64 =
                        (0..n).map(|j| mat.a[i * n + j] * inputs.value.get(base + j, h * dv + c) as f64).sum();
                    out.row_mut(base + i)[h * dv + c] = (num / den) as f32;
                }
            }
        }
    }
    Ok(out)
}

/// The f64 oracle of [`crate::kernels::favor::favor_backward`]: `(dq, dk, dv)` for `dout`
/// `[N x H*dv]`, through the materialised weights (not the linear form), stabilisers held
/// constant:
///
/// ```text
/// P_ij     = A_ij / den_i                         (out_i = sum_j A_ij v_j / den_i)
/// dv_j     = sum_i P_ij dout_i
/// dA_ij    = (dout_i . v_j - dout_i . out_i) / den_i
/// dphi_q_i = sum_j dA_ij phi_k_j,   dphi_k_j = sum_i dA_ij phi_q_i     (A_ij = phi_q_i . phi_k_j)
/// dx       = d^-1/4 (sum_r dphi_r e_r w_r - x' sum_r dphi_r e_r)      (through phi, x' = d^-1/4 x)
/// ```
pub fn performer_backward_reference(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    projection: &Matrix,
    dout: &Matrix,
) -> Result<(Matrix, Matrix, Matrix)> {
    let FavorDims { nodes, heads, head_dim: d, value_dim: dv, features: m } = favor::check(inputs, blocks, projection)?;
    dout.expect_shape("performer backward dout", nodes, heads * dv)?;
    crate::error::ensure_finite("performer backward dout", dout.as_slice())?;
    let alpha = (d as f64).powf(-0.25);
    let (mut dq, mut dk, mut dvm) =
        (Matrix::zeros(nodes, heads * d), Matrix::zeros(nodes, heads * d), Matrix::zeros(nodes, heads * dv));
    for b in 0..blocks.len() - 1 {
        let (base, n) = (blocks[b], blocks[b + 1] - blocks[b]);
        for h in 0..heads {
            let mat = materialise(inputs, base, n, h, projection);
            let v = |j: usize, c: usize| inputs.value.get(base + j, h * dv + c) as f64;
            let g = |i: usize, c: usize| dout.get(base + i, h * dv + c) as f64;
            let mut dphi_q = vec![0.0f64; n * m];
            let mut dphi_k = vec![0.0f64; n * m];
            let mut dv_acc = vec![0.0f64; n * dv];
            for i in 0..n {
                let den: f64 = mat.a[i * n..(i + 1) * n].iter().sum();
                let out_i: Vec<f64> =
                    (0..dv).map(|c| (0..n).map(|j| mat.a[i * n + j] * v(j, c)).sum::<f64>() / den).collect();
                let g_out: f64 = (0..dv).map(|c| g(i, c) * out_i[c]).sum();
                for j in 0..n {
                    let p = mat.a[i * n + j] / den;
                    for c in 0..dv {
                        dv_acc[j * dv + c] += p * g(i, c);
                    }
                    let da = ((0..dv).map(|c| g(i, c) * v(j, c)).sum::<f64>() - g_out) / den;
                    for r in 0..m {
                        dphi_q[i * m + r] += da * mat.phi_k[j * m + r];
                        dphi_k[j * m + r] += da * mat.phi_q[i * m + r];
                    }
                }
            }
            for (x, dphi, e, dst) in
                [(inputs.query, &dphi_q, &mat.e_q, &mut dq), (inputs.key, &dphi_k, &mat.e_k, &mut dk)]
            {
                for i in 0..n {
                    let xi = &x.row(base + i)[h * d..(h + 1) * d];
                    let gsum: f64 = (0..m).map(|r| dphi[i * m + r] * e[i * m + r]).sum();
                    for c in 0..d {
                        let wg: f64 =
                            (0..m).map(|r| dphi[i * m + r] * e[i * m + r] * projection.get(r, c) as f64).sum();
                        dst.row_mut(base + i)[h * d + c] = (alpha * (wg - alpha * xi[c] as f64 * gsum)) as f32;
                    }
                }
            }
            for j in 0..n {
                for c in 0..dv {
                    dvm.row_mut(base + j)[h * dv + c] = dv_acc[j * dv + c] as f32;
                }
            }
        }
    }
    Ok((dq, dk, dvm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_features_is_d_ln_d() {
        // int(d * math.log(d)) in Python: 0 -> 1, 1 -> 1, 2 -> 1, 4 -> 5, 16 -> 44, 64 -> 266.
        for (d, want) in [(0, 1), (1, 1), (2, 1), (4, 5), (16, 44), (32, 110), (64, 266)] {
            assert_eq!(default_features(d), want, "d = {d}");
        }
    }

    /// Rows within a block are orthogonal; each row's norm is a fresh chi(d) draw (mean near
    /// sqrt(d)); the last block is partial; the same seed gives the same bits on 1 and 3
    /// threads, another seed other rows.
    #[test]
    fn projection_is_block_orthogonal_and_seeded() {
        let (m, d) = (44, 16);
        let w = orthogonal_random_features(m, d, 7).unwrap();
        assert_eq!(w.shape(), (m, d));
        let dot = |a: usize, b: usize| (0..d).map(|c| w.get(a, c) as f64 * w.get(b, c) as f64).sum::<f64>();
        for blk in 0..m.div_ceil(d) {
            let rows = (blk * d)..((blk + 1) * d).min(m);
            for a in rows.clone() {
                for b in rows.clone() {
                    if a != b {
                        let cos = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
                        assert!(cos.abs() < 1e-5, "rows {a}, {b}: cos {cos}");
                    }
                }
            }
        }
        // Across blocks: generic directions, not orthogonal.
        assert!((0..d).any(|b| dot(0, d + b).abs() > 1e-3));
        let mean_norm = (0..m).map(|r| dot(r, r).sqrt()).sum::<f64>() / m as f64;
        assert!((mean_norm - (d as f64).sqrt()).abs() < 1.0, "mean row norm {mean_norm}");
        let norms: Vec<f64> = (0..m).map(|r| dot(r, r).sqrt()).collect();
        assert!(norms.windows(2).all(|p| (p[0] - p[1]).abs() > 1e-6), "norms are independent draws");
        let on = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| orthogonal_random_features(m, d, 7))
        };
        assert_eq!(on(1).unwrap(), w);
        assert_eq!(on(3).unwrap(), w);
        assert_ne!(orthogonal_random_features(m, d, 8).unwrap(), w);
        // m < d: one partial block.
        let small = orthogonal_random_features(3, 8, 1).unwrap();
        assert_eq!(small.shape(), (3, 8));
    }

    #[test]
    fn zero_sizes_are_typed_errors() {
        let Err(Error::Invalid { what, reason }) = orthogonal_random_features(0, 16, 0) else {
            panic!("m = 0 accepted")
        };
        assert_eq!(what, "features");
        assert!(reason.contains("m = 0"));
        assert!(matches!(orthogonal_random_features(4, 0, 0), Err(Error::Invalid { .. })));
    }

    /// One query, keys equal to it: weights are equal, so out is the mean of the values; the
    /// reference's kernel weight matches the formula computed by hand for d = 1, m = 1.
    #[test]
    fn reference_on_a_hand_example() {
        // d = 1, m = 1, w = [[2]]: x' = x, phi(x) = exp(2x - x^2/2 - M) + eps.
        let q = Matrix::from_vec(2, 1, vec![0.5, -0.25]).unwrap();
        let k = Matrix::from_vec(2, 1, vec![0.3, 0.1]).unwrap();
        let v = Matrix::from_vec(2, 1, vec![1.0, 3.0]).unwrap();
        let w = Matrix::from_vec(1, 1, vec![2.0]).unwrap();
        let out = performer_reference(&AttentionInputs::new(&q, &k, &v, 1), &[0, 2], &w).unwrap();
        let eps = 1e-4f64;
        let phi_k = |x: f64| (2.0 * x - x * x / 2.0 - 0.6).exp() + eps; // key max: 2 * 0.3
        let phi_q = |x: f64| (2.0 * x - x * x / 2.0 - 2.0 * x).exp() + eps; // own max: 2x
        for (i, qi) in [0.5f64, -0.25].into_iter().enumerate() {
            let (a0, a1) = (phi_q(qi) * phi_k(0.3), phi_q(qi) * phi_k(0.1));
            let want = (a0 * 1.0 + a1 * 3.0) / (a0 + a1);
            assert!((out.get(i, 0) as f64 - want).abs() < 1e-6, "row {i}");
        }
    }
}
