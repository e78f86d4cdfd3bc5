//! `Linear`: `y = x W^T + b`, PyTorch's layout (`weight` `[out x in]`, `bias` `[out]`).
//!
//! ```text
//! x [N x in]  ->  y [N x out],   y_n = W x_n + b
//! ```
//!
//! ```
//! use patchgraph::{Matrix, nn::Linear};
//! let lin = Linear::from_parts(Matrix::from_vec(1, 2, vec![2.0, 3.0]).unwrap(), Some(vec![1.0])).unwrap();
//! let y = lin.forward(&Matrix::from_vec(2, 2, vec![1.0, 1.0, 0.0, 2.0]).unwrap()).unwrap();
//! assert_eq!(y.as_slice(), &[6.0, 7.0]);
//! ```

use super::Init;
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, Par};

/// A fully connected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out x in]`.
    pub weight: Matrix,
    /// `[out]`, if any.
    pub bias: Option<Vec<f32>>,
}

/// GEMMs below this many multiply-adds run on one thread (rayon's overhead dominates).
const PARALLEL_FLOPS: usize = 1 << 20;

/// faer parallelism for an `[m x k] x [k x n]` product on the current rayon pool.
pub(crate) fn gemm_par(m: usize, k: usize, n: usize) -> Par {
    if m * k * n >= PARALLEL_FLOPS && rayon::current_num_threads() > 1 { Par::rayon(0) } else { Par::Seq }
}

impl Linear {
    /// From a weight `[out x in]` and an optional bias `[out]`.
    pub fn from_parts(weight: Matrix, bias: Option<Vec<f32>>) -> Result<Linear> {
        if let Some(b) = &bias {
            if b.len() != weight.rows() {
                return Err(Error::shape("linear bias", format!("[{}]", weight.rows()), format!("[{}]", b.len())));
            }
        }
        Ok(Linear { weight, bias })
    }

    /// PyTorch's default initialisation (uniform weight and bias, bound `1/sqrt(in)`).
    pub fn torch_init(init: &mut Init, in_dim: usize, out_dim: usize, bias: bool) -> Linear {
        let weight = Matrix::from_vec(out_dim, in_dim, init.torch_linear(out_dim, in_dim)).unwrap_or_default();
        let a = 1.0 / (in_dim.max(1) as f32).sqrt();
        Linear { weight, bias: bias.then(|| init.uniform(out_dim, -a, a)) }
    }

    /// Glorot weight, zero bias (PyG's `Linear(weight_initializer='glorot')`).
    pub fn glorot_init(init: &mut Init, in_dim: usize, out_dim: usize, bias: bool) -> Linear {
        let weight = Matrix::from_vec(out_dim, in_dim, init.glorot(out_dim, in_dim)).unwrap_or_default();
        Linear { weight, bias: bias.then(|| vec![0.0; out_dim]) }
    }

    /// Loads `{prefix}.weight` `[out x in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(map: &mut TensorMap, prefix: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let weight = Matrix::from_vec(out_dim, in_dim, map.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?)?;
        let bias = if bias { Some(map.take(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Writes `{prefix}.weight` and `{prefix}.bias` into `map`.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        map.insert(format!("{prefix}.weight"), vec![self.out_dim(), self.in_dim()], self.weight.as_slice().to_vec())?;
        if let Some(b) = &self.bias {
            map.insert(format!("{prefix}.bias"), vec![b.len()], b.clone())?;
        }
        Ok(())
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.cols()
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.rows()
    }

    /// `x [N x in] -> x W^T + b [N x out]` (faer GEMM).
    pub fn forward(&self, x: &Matrix) -> Result<Matrix> {
        x.expect_cols("linear input", self.in_dim())?;
        let mut y = Matrix::zeros(x.rows(), self.out_dim());
        let par = gemm_par(x.rows(), self.in_dim(), self.out_dim());
        matmul(y.as_faer_mut(), Accum::Replace, x.as_faer(), self.weight.as_faer().transpose(), 1.0, par);
        if let Some(b) = &self.bias {
            for n in 0..y.rows() {
                for (v, bb) in y.row_mut(n).iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        Ok(y)
    }

    /// The plain triple loop (f64 accumulation): the oracle for [`Linear::forward`].
    pub fn forward_reference(&self, x: &Matrix) -> Result<Matrix> {
        x.expect_cols("linear input", self.in_dim())?;
        Ok(Matrix::from_fn(x.rows(), self.out_dim(), |n, o| {
            let s: f64 = x.row(n).iter().zip(self.weight.row(o)).map(|(a, b)| *a as f64 * *b as f64).sum();
            (s + self.bias.as_ref().map_or(0.0, |b| b[o] as f64)) as f32
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The faer path equals the plain loops at sizes around the SIMD widths, on one and on
    /// several threads (large enough that the GEMM runs in parallel), with the same bits.
    #[test]
    fn forward_matches_reference_around_simd_widths() {
        let pools: Vec<_> =
            [1, 2].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
        for (n, i, o) in [(15, 16, 17), (16, 17, 15), (17, 15, 16), (63, 64, 65), (65, 63, 64), (300, 65, 63)] {
            let mut init = Init::new((n * i * o) as u64);
            let lin = Linear::torch_init(&mut init, i, o, true);
            let x = Matrix::from_vec(n, i, init.normal(n * i, 1.0)).unwrap();
            let reference = lin.forward_reference(&x).unwrap();
            let outs: Vec<Matrix> = pools.iter().map(|p| p.install(|| lin.forward(&x).unwrap())).collect();
            let tol = 1e-5 * reference.max_abs().max(1.0);
            assert!(outs[0].max_abs_diff(&reference) <= tol, "{n}x{i}x{o}");
            assert_eq!(outs[0], outs[1], "{n}x{i}x{o}: depends on the thread count");
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let lin = Linear::torch_init(&mut Init::new(0), 4, 2, false);
        assert!(matches!(lin.forward(&Matrix::zeros(3, 5)), Err(Error::Shape { .. })));
        assert!(Linear::from_parts(Matrix::zeros(2, 4), Some(vec![0.0; 3])).is_err());
    }
}
