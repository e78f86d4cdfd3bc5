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
use faer::Accum;
use rayon::prelude::*;

/// Gradients of a [`Linear`]'s parameters (same shapes), accumulated by [`Linear::backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrads {
    /// `dL/dW` `[out x in]`.
    pub weight: Matrix,
    /// `dL/db` `[out]`, if the layer has a bias.
    pub bias: Option<Vec<f32>>,
}

impl LinearGrads {
    /// Appends the gradient tensors (weight, then bias if any) to `out`, mutable (for clipping).
    pub fn push_slices<'a>(&'a mut self, out: &mut Vec<&'a mut [f32]>) {
        out.push(self.weight.as_mut_slice());
        if let Some(b) = self.bias.as_mut() {
            out.push(b);
        }
    }

    /// Zero gradients for `layer`.
    pub fn zeros(layer: &Linear) -> LinearGrads {
        LinearGrads {
            weight: Matrix::zeros(layer.out_dim(), layer.in_dim()),
            bias: layer.bias.as_ref().map(|b| vec![0.0; b.len()]),
        }
    }
}

/// Rows per task of the weight-gradient reduction in [`Linear::backward`].
const GRAD_ROWS: usize = 512;

/// A fully connected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out x in]`.
    pub weight: Matrix,
    /// `[out]`, if any.
    pub bias: Option<Vec<f32>>,
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

    /// `f(slot, weight, dW, true)` and `f(slot + 1, bias, db, false)` (the bias slot is skipped,
    /// not reused, without a bias); advances `slot` by 2. For optimisers.
    pub fn visit_params(&mut self, grads: &LinearGrads, slot: &mut usize, f: &mut super::ParamVisitor<'_>) {
        f(*slot, self.weight.as_mut_slice(), grads.weight.as_slice(), true);
        if let (Some(b), Some(gb)) = (self.bias.as_mut(), grads.bias.as_ref()) {
            f(*slot + 1, b, gb, false);
        }
        *slot += 2;
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
        self.forward_leading(x, self.out_dim())
    }

    /// The first `outputs` output columns only: `x [N x in] -> x W[..outputs]^T + b[..outputs]`
    /// (a fused projection whose trailing rows a configuration does not use).
    pub fn forward_leading(&self, x: &Matrix, outputs: usize) -> Result<Matrix> {
        x.expect_cols("linear input", self.in_dim())?;
        if outputs > self.out_dim() {
            return Err(Error::shape(
                "linear outputs asked for",
                format!("at most {}", self.out_dim()),
                format!("{outputs}"),
            ));
        }
        let w = self.weight.as_faer().subrows(0, outputs);
        // Each GEMM tile starts from its part of the broadcast bias and accumulates onto it (the
        // output is never zeroed first).
        match &self.bias {
            Some(b) => {
                Matrix::from_vec(x.rows(), outputs, crate::kernels::gemm::xwt_bias(x.as_faer(), w, &b[..outputs]))
            }
            None => {
                let mut y = Matrix::zeros(x.rows(), outputs);
                crate::kernels::gemm::xwt_into(y.as_mut_slice(), Accum::Replace, x.as_faer(), w);
                Ok(y)
            }
        }
    }

    /// Stacks the layers' outputs: weights row-wise, biases end to end (one GEMM computes all
    /// of them). All must share the input width, and all or none have a bias.
    pub fn stack(parts: &[&Linear]) -> Result<Linear> {
        let in_dim = parts.first().map_or(0, |l| l.in_dim());
        let mut weight = Vec::new();
        let mut bias = parts.first().and_then(|l| l.bias.as_ref()).map(|_| Vec::new());
        for (i, l) in parts.iter().enumerate() {
            if l.in_dim() != in_dim {
                return Err(Error::shape(
                    format!("stacked linear {i}"),
                    format!("{in_dim} inputs"),
                    format!("{}", l.in_dim()),
                ));
            }
            weight.extend_from_slice(l.weight.as_slice());
            match (&mut bias, &l.bias) {
                (Some(all), Some(b)) => all.extend_from_slice(b),
                (None, None) => {}
                _ => return Err(Error::invalid(format!("stacked linear {i}"), "all or none of the parts need a bias")),
            }
        }
        let rows = weight.len() / in_dim.max(1);
        Linear::from_parts(Matrix::from_vec(rows, in_dim, weight)?, bias)
    }

    /// The inverse of [`Linear::stack`]: output rows split into blocks of the given sizes.
    pub fn unstack(&self, sizes: &[usize]) -> Result<Vec<Linear>> {
        if sizes.iter().sum::<usize>() != self.out_dim() {
            return Err(Error::shape("unstacked linear", format!("{} outputs", self.out_dim()), format!("{sizes:?}")));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let rows = (start..start + n).flat_map(|r| self.weight.row(r).iter().copied()).collect();
                let bias = self.bias.as_ref().map(|b| b[start..start + n].to_vec());
                start += n;
                Linear::from_parts(Matrix::from_vec(n, self.in_dim(), rows)?, bias)
            })
            .collect()
    }

    /// Backward of [`Linear::forward`] (`y = x W^T + b`): given the forward input `x [N x in]`
    /// and `dy = dL/dy [N x out]`, returns `dx = dy W [N x in]` and accumulates
    /// `dW += dy^T x [out x in]`, `db += sum_n dy_n [out]` into `grads`.
    pub fn backward(&self, x: &Matrix, dy: &Matrix, grads: &mut LinearGrads) -> Result<Matrix> {
        // x [N x in], dy [N x out], W [out x in]
        x.expect_cols("linear backward input", self.in_dim())?;
        dy.expect_shape("linear backward dy", x.rows(), self.out_dim())?;
        grads.weight.expect_shape("linear weight gradient", self.out_dim(), self.in_dim())?;
        // dx = dy W:   dx [N x in] = dy [N x out] (W^T [in x out])^T
        let mut dx = Matrix::zeros(x.rows(), self.in_dim());
        crate::kernels::gemm::xwt_into(
            dx.as_mut_slice(),
            Accum::Replace,
            dy.as_faer(),
            self.weight.as_faer().transpose(),
        );
        // dW += dy^T x and db += sum_n dy_n, over fixed chunks of rows in parallel, partial sums
        // added in chunk order (the same bits on any thread count)
        let (out, inp) = (self.out_dim(), self.in_dim());
        let chunks: Vec<(usize, usize)> =
            (0..x.rows()).step_by(GRAD_ROWS).map(|r| (r, (r + GRAD_ROWS).min(x.rows()))).collect();
        let partials: Vec<(Matrix, Vec<f32>)> = chunks
            .into_par_iter()
            .map(|(r0, r1)| {
                let mut dw = Matrix::zeros(out, inp);
                let dyc = dy.as_faer().subrows(r0, r1 - r0);
                let xc = x.as_faer().subrows(r0, r1 - r0);
                // dW_c [out x in] = dy_c^T [out x rows] x_c [rows x in]
                faer::linalg::matmul::matmul(
                    dw.as_faer_mut(),
                    Accum::Replace,
                    dyc.transpose(),
                    xc,
                    1.0,
                    faer::Par::Seq,
                );
                let mut db = vec![0.0f32; if grads.bias.is_some() { out } else { 0 }];
                if !db.is_empty() {
                    for n in r0..r1 {
                        for (g, d) in db.iter_mut().zip(dy.row(n)) {
                            *g += d;
                        }
                    }
                }
                (dw, db)
            })
            .collect();
        for (dw, db) in partials {
            for (g, v) in grads.weight.as_mut_slice().iter_mut().zip(dw.as_slice()) {
                *g += v;
            }
            if let Some(gb) = &mut grads.bias {
                for (g, v) in gb.iter_mut().zip(&db) {
                    *g += v;
                }
            }
        }
        Ok(dx)
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
    /// several threads (the last two large enough that the GEMM runs as parallel column blocks),
    /// with the same bits.
    #[test]
    fn forward_matches_reference_around_simd_widths() {
        let pools: Vec<_> =
            [1, 2].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
        for (n, i, o) in [
            (15, 16, 17),
            (16, 17, 15),
            (17, 15, 16),
            (63, 64, 65),
            (65, 63, 64),
            (300, 65, 63),
            (300, 65, 200),
            (257, 96, 193),
        ] {
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

    /// A stacked layer's outputs are the parts' outputs side by side, and unstacking gives the
    /// parts back; the leading outputs alone equal the first part.
    #[test]
    fn stacked_linear_is_its_parts_side_by_side() {
        let mut init = Init::new(3);
        let (a, b) = (Linear::torch_init(&mut init, 5, 3, true), Linear::torch_init(&mut init, 5, 4, true));
        let x = Matrix::from_vec(6, 5, init.normal(30, 1.0)).unwrap();
        let stacked = Linear::stack(&[&a, &b]).unwrap();
        let y = stacked.forward(&x).unwrap();
        assert_eq!(y.columns(0, 3), a.forward(&x).unwrap());
        assert_eq!(y.columns(3, 4), b.forward(&x).unwrap());
        assert_eq!(stacked.forward_leading(&x, 3).unwrap(), a.forward(&x).unwrap());
        assert_eq!(stacked.unstack(&[3, 4]).unwrap(), vec![a.clone(), b]);
        assert!(stacked.unstack(&[3, 3]).is_err());
        let no_bias = Linear::torch_init(&mut init, 5, 2, false);
        assert!(Linear::stack(&[&a, &no_bias]).is_err());
        assert!(Linear::stack(&[&a, &Linear::torch_init(&mut init, 4, 2, true)]).is_err());
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let lin = Linear::torch_init(&mut Init::new(0), 4, 2, false);
        assert!(matches!(lin.forward(&Matrix::zeros(3, 5)), Err(Error::Shape { .. })));
        assert!(Linear::from_parts(Matrix::zeros(2, 4), Some(vec![0.0; 3])).is_err());
    }
}
