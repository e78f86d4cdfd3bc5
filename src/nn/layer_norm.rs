//! `LayerNorm` over each row: `y = (x - mean) / sqrt(var + eps) * weight + bias`.
//!
//! ```text
//! x [N x D] -> y [N x D];  mean, var (biased) over the D values of a row
//! ```
//! timm and the JAX ViTs use `eps = 1e-6`, PyTorch's default is `1e-5`, Hugging Face `1e-12`.
//!
//! ```
//! use patchgraph::{Matrix, nn::LayerNorm};
//! let ln = LayerNorm::new(2, 0.0);
//! let y = ln.forward(&Matrix::from_vec(1, 2, vec![1.0, 3.0]).unwrap()).unwrap();
//! assert_eq!(y.as_slice(), &[-1.0, 1.0]);
//! ```

use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::tensor::Matrix;
use rayon::prelude::*;

/// Layer normalisation with an affine transform.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// Scale `[D]`.
    pub weight: Vec<f32>,
    /// Shift `[D]`.
    pub bias: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Identity affine (weight 1, bias 0).
    pub fn new(dim: usize, eps: f32) -> LayerNorm {
        LayerNorm { weight: vec![1.0; dim], bias: vec![0.0; dim], eps }
    }

    /// The normalised width `D`.
    pub fn dim(&self) -> usize {
        self.weight.len()
    }

    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(map: &mut TensorMap, prefix: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: map.take(&format!("{prefix}.weight"), &[dim])?,
            bias: map.take(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Writes `{prefix}.weight` and `{prefix}.bias`.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        map.insert(format!("{prefix}.weight"), vec![self.weight.len()], self.weight.clone())?;
        map.insert(format!("{prefix}.bias"), vec![self.bias.len()], self.bias.clone())
    }

    /// Normalises every row of `x` `[N x D]` (rows in parallel; each row's arithmetic is fixed,
    /// so the bits do not depend on the thread count).
    pub fn forward(&self, x: &Matrix) -> Result<Matrix> {
        let d = self.weight.len();
        x.expect_cols("layer norm input", d)?;
        let mut y = x.clone();
        if d == 0 {
            return Ok(y);
        }
        let rows_per_task = (ROWS_PER_TASK_ELEMENTS / d).max(1);
        let norm_rows = |rows: &mut [f32]| crate::kernels::simd::dispatch(ForwardRows { ln: self, rows });
        if y.rows() <= rows_per_task {
            norm_rows(y.as_mut_slice());
        } else {
            y.as_mut_slice().par_chunks_mut(rows_per_task * d).for_each(norm_rows);
        }
        Ok(y)
    }

    /// [`LayerNorm::forward`] without the SIMD dispatch and on one thread: the plain reference
    /// the dispatched rows are compared with (the same arithmetic, so the same bits).
    pub fn forward_scalar(&self, x: &Matrix) -> Result<Matrix> {
        x.expect_cols("layer norm input", self.weight.len())?;
        let mut y = x.clone();
        for row in y.as_mut_slice().chunks_exact_mut(self.weight.len().max(1)) {
            self.normalize_row(row);
        }
        Ok(y)
    }

    /// `row = (row - mean) / sqrt(var + eps) * weight + bias`, biased variance, in f32. The sums
    /// run over 16 partial sums (vectorised by the compiler), added in a fixed order.
    #[inline(always)]
    fn normalize_row(&self, row: &mut [f32]) {
        let d = row.len() as f32;
        let mean = lane_sum(row, |v| v) / d;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// Gradients of a [`LayerNorm`]'s parameters, accumulated by [`LayerNorm::backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormGrads {
    /// `dL/dweight` `[D]`.
    pub weight: Vec<f32>,
    /// `dL/dbias` `[D]`.
    pub bias: Vec<f32>,
}

impl LayerNormGrads {
    /// Zero gradients for a `[D]` norm.
    pub fn zeros(dim: usize) -> LayerNormGrads {
        LayerNormGrads { weight: vec![0.0; dim], bias: vec![0.0; dim] }
    }

    /// Appends the gradient tensors (weight, then bias) to `out`, mutable (for clipping).
    pub fn push_slices<'a>(&'a mut self, out: &mut Vec<&'a mut [f32]>) {
        out.push(&mut self.weight);
        out.push(&mut self.bias);
    }
}

impl LayerNorm {
    /// `f(slot, weight, dw, false)` and `f(slot + 1, bias, db, false)`; advances `slot` by 2.
    /// For optimisers (norms are not decayed).
    pub fn visit_params(&mut self, grads: &LayerNormGrads, slot: &mut usize, f: &mut super::ParamVisitor<'_>) {
        f(*slot, &mut self.weight, &grads.weight, false);
        f(*slot + 1, &mut self.bias, &grads.bias, false);
        *slot += 2;
    }

    /// Backward of [`LayerNorm::forward`]. With `xhat = (x - mean) * inv`, `inv = 1/sqrt(var + eps)`
    /// recomputed per row from the forward input `x`, and `g = dy * weight`:
    ///
    /// ```text
    /// dweight += sum_rows dy * xhat      dbias += sum_rows dy
    /// dx = inv * (g - mean(g) - xhat * mean(g * xhat))          (means over the row's D values)
    /// ```
    pub fn backward(&self, x: &Matrix, dy: &Matrix, grads: &mut LayerNormGrads) -> Result<Matrix> {
        // x [N x D], dy [N x D] -> dx [N x D]
        let d = self.weight.len();
        x.expect_cols("layer norm backward input", d)?;
        dy.expect_shape("layer norm backward dy", x.rows(), d)?;
        let mut dx = Matrix::zeros(x.rows(), d);
        if d == 0 {
            return Ok(dx);
        }
        let rows_per_task = (ROWS_PER_TASK_ELEMENTS / d).max(1);
        // Rows in parallel over fixed chunks; each chunk's dweight/dbias partial sums are added
        // in chunk order (the same bits on any thread count).
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .as_mut_slice()
            .par_chunks_mut(rows_per_task * d)
            .enumerate()
            .map(|(c, dx)| {
                let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                let r0 = c * rows_per_task * d;
                let (x, dy) = (&x.as_slice()[r0..r0 + dx.len()], &dy.as_slice()[r0..r0 + dx.len()]);
                crate::kernels::simd::dispatch(BackwardRows { ln: self, x, dy, dx, dw: &mut dw, db: &mut db });
                (dw, db)
            })
            .collect();
        for (dw, db) in partials {
            for j in 0..d {
                grads.weight[j] += dw[j];
                grads.bias[j] += db[j];
            }
        }
        Ok(dx)
    }

    /// [`LayerNorm::backward`] without the SIMD dispatch and on one thread, in one chunk: the
    /// plain reference the dispatched rows are compared with (the same per-row arithmetic).
    pub fn backward_scalar(&self, x: &Matrix, dy: &Matrix, grads: &mut LayerNormGrads) -> Result<Matrix> {
        let d = self.weight.len();
        x.expect_cols("layer norm backward input", d)?;
        dy.expect_shape("layer norm backward dy", x.rows(), d)?;
        let mut dx = Matrix::zeros(x.rows(), d);
        let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
        self.backward_rows(x.as_slice(), dy.as_slice(), dx.as_mut_slice(), &mut dw, &mut db);
        for j in 0..d {
            grads.weight[j] += dw[j];
            grads.bias[j] += db[j];
        }
        Ok(dx)
    }

    /// The backward of consecutive rows (`x`, `dy`, `dx`: the same rows, `D` values each),
    /// accumulating their `dweight`, `dbias` into `dw`, `db`. Written as plain loops over
    /// slices, so that the compiler vectorises them for the instruction set it is inlined into
    /// (the reductions keep [`lane_sum`]'s fixed order; no FMA contraction).
    #[inline(always)]
    fn backward_rows(&self, x: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        let d = self.weight.len();
        if d == 0 {
            return;
        }
        let (mut g, mut xhat) = (vec![0.0f32; d], vec![0.0f32; d]);
        for ((row, dy_row), dx_row) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            // the forward's `mean`, `var`, `inv` (same arithmetic as normalize_row)
            let mean = lane_sum(row, |v| v) / d as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((((h, gj), dwj), dbj), (&xv, &dyv)), &wv) in xhat
                .iter_mut()
                .zip(g.iter_mut())
                .zip(dw.iter_mut())
                .zip(db.iter_mut())
                .zip(row.iter().zip(dy_row))
                .zip(&self.weight)
            {
                *h = (xv - mean) * inv;
                *dwj += dyv * *h;
                *dbj += dyv;
                *gj = dyv * wv;
            }
            let mean_g = lane_sum(&g, |v| v) / d as f32;
            let mean_gx = lane_sum2(&g, &xhat) / d as f32;
            for ((o, &gj), &h) in dx_row.iter_mut().zip(&g).zip(&xhat) {
                *o = inv * (gj - mean_g - h * mean_gx);
            }
        }
    }
}

/// [`LayerNorm::normalize_row`] over consecutive rows, compiled for the dispatched SIMD level.
struct ForwardRows<'a> {
    ln: &'a LayerNorm,
    rows: &'a mut [f32],
}

impl pulp::WithSimd for ForwardRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for row in self.rows.chunks_exact_mut(self.ln.weight.len()) {
            self.ln.normalize_row(row);
        }
    }
}

/// [`LayerNorm::backward_rows`], compiled for the dispatched SIMD level.
struct BackwardRows<'a> {
    ln: &'a LayerNorm,
    x: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    dw: &'a mut [f32],
    db: &'a mut [f32],
}

impl pulp::WithSimd for BackwardRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.ln.backward_rows(self.x, self.dy, self.dx, self.dw, self.db);
    }
}

/// About this many elements per rayon task.
const ROWS_PER_TASK_ELEMENTS: usize = 1 << 15;

/// `sum_i f(x[i])` over 16 partial sums (one per lane of an AVX-512 register), then added
/// pairwise in a fixed order: the same bits on every machine and thread count.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *a += f(*v);
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// `sum_i a[i] * b[i]` with [`lane_sum`]'s 16 partial sums and fixed pairwise reduction.
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ta.iter().zip(tb).enumerate() {
        acc[i] += x * y;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched, parallel forward and backward give the bits of the plain one-thread
    /// loops (widths around the SIMD lanes, several row chunks), on 1 and 2 threads.
    #[test]
    fn dispatched_rows_equal_the_scalar_reference() {
        for (n, d) in [(3, 1), (7, 15), (9, 16), (5, 17), (1100, 64), (300, 200)] {
            let x = Matrix::from_fn(n, d, |i, j| ((i * 31 + j * 7) % 23) as f32 * 0.37 - 4.0);
            let dy = Matrix::from_fn(n, d, |i, j| ((i * 13 + j * 5) % 19) as f32 * 0.11 - 1.0);
            let ln = LayerNorm {
                weight: (0..d).map(|j| 1.0 + j as f32 * 0.01).collect(),
                bias: (0..d).map(|j| j as f32 * -0.02).collect(),
                eps: 1e-6,
            };
            let want_y = ln.forward_scalar(&x).unwrap();
            let mut want_g = LayerNormGrads::zeros(d);
            let want_dx = ln.backward_scalar(&x, &dy, &mut want_g).unwrap();
            for t in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                let (y, dx, g) = pool.install(|| {
                    let mut g = LayerNormGrads::zeros(d);
                    (ln.forward(&x).unwrap(), ln.backward(&x, &dy, &mut g).unwrap(), g)
                });
                assert_eq!(y, want_y, "{n}x{d}, {t} threads: forward");
                assert_eq!(dx, want_dx, "{n}x{d}, {t} threads: dx");
                if n * d <= ROWS_PER_TASK_ELEMENTS {
                    // one chunk: the same sums in the same order
                    assert_eq!(g, want_g, "{n}x{d}, {t} threads: dweight, dbias");
                } else {
                    for (a, b) in g.weight.iter().chain(&g.bias).zip(want_g.weight.iter().chain(&want_g.bias)) {
                        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{n}x{d}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// Row [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    #[test]
    fn normalises_with_biased_variance_and_eps() {
        let ln = LayerNorm { weight: vec![1.0, 2.0, 1.0, 1.0], bias: vec![0.0, 0.0, 0.5, 0.0], eps: 0.5 };
        let y = ln.forward(&Matrix::from_vec(1, 4, vec![1.0, 2.0, 3.0, 6.0]).unwrap()).unwrap();
        let s = 1.0 / (3.5f32 + 0.5).sqrt(); // = 0.5
        let expected = [-2.0 * s, -2.0 * s, 0.5, 3.0 * s]; // (x - 3) * s * weight + bias
        for (a, b) in y.as_slice().iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
