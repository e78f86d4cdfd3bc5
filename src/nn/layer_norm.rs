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
        let norm_rows = |rows: &mut [f32]| {
            for row in rows.chunks_exact_mut(d) {
                self.normalize_row(row);
            }
        };
        if y.rows() <= rows_per_task {
            norm_rows(y.as_mut_slice());
        } else {
            y.as_mut_slice().par_chunks_mut(rows_per_task * d).for_each(norm_rows);
        }
        Ok(y)
    }

    /// `row = (row - mean) / sqrt(var + eps) * weight + bias`, biased variance, in f32. The sums
    /// run over 16 partial sums (vectorised by the compiler), added in a fixed order.
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
}

impl LayerNorm {
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
            .map(|(c, dx_rows)| {
                let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                let mut g = vec![0.0f32; d];
                let mut xhat = vec![0.0f32; d];
                for (r, dx_row) in dx_rows.chunks_exact_mut(d).enumerate() {
                    let n = c * rows_per_task + r;
                    let row = x.row(n);
                    let dy_row = dy.row(n);
                    // the forward's `mean`, `var`, `inv` (same arithmetic as normalize_row)
                    let mean = lane_sum(row, |v| v) / d as f32;
                    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for j in 0..d {
                        xhat[j] = (row[j] - mean) * inv;
                        dw[j] += dy_row[j] * xhat[j];
                        db[j] += dy_row[j];
                        g[j] = dy_row[j] * self.weight[j];
                    }
                    let mean_g = lane_sum(&g, |v| v) / d as f32;
                    let mean_gx = lane_sum2(&g, &xhat) / d as f32;
                    for (j, o) in dx_row.iter_mut().enumerate() {
                        *o = inv * (g[j] - mean_g - xhat[j] * mean_gx);
                    }
                }
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
