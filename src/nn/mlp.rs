//! `Mlp`: timm's transformer MLP, `fc2(gelu(fc1(x)))`.
//!
//! ```text
//! x [N x D] -> fc1 -> [N x hidden] -> gelu -> fc2 -> [N x D]
//! dx <- fc1.backward <- gelu_backward <- fc2.backward <- dy          (Mlp::backward)
//! ```
//!
//! ```
//! use patchgraph::{Matrix, nn::{Init, Mlp}};
//! let mlp = Mlp::new(&mut Init::new(0), 4, 16);
//! let y = mlp.forward(&Matrix::zeros(3, 4)).unwrap();
//! assert_eq!(y.shape(), (3, 4));
//! ```

use super::{Init, Linear, LinearGrads, gelu_backward_inplace, gelu_inplace, gelu_into};
use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::tensor::Matrix;

/// Gradients of an [`Mlp`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlpGrads {
    /// Of `fc1`.
    pub fc1: LinearGrads,
    /// Of `fc2`.
    pub fc2: LinearGrads,
}

impl MlpGrads {
    /// Zero gradients for `mlp`.
    pub fn zeros(mlp: &Mlp) -> MlpGrads {
        MlpGrads { fc1: LinearGrads::zeros(&mlp.fc1), fc2: LinearGrads::zeros(&mlp.fc2) }
    }
}

/// Two linear layers with an exact GELU between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// `[hidden x D]`.
    pub fc1: Linear,
    /// `[D x hidden]`.
    pub fc2: Linear,
}

impl Mlp {
    /// PyTorch-default initialised MLP `dim -> hidden -> dim`.
    pub fn new(init: &mut Init, dim: usize, hidden: usize) -> Mlp {
        Mlp { fc1: Linear::torch_init(init, dim, hidden, true), fc2: Linear::torch_init(init, hidden, dim, true) }
    }

    /// Loads `{prefix}.fc1.*` and `{prefix}.fc2.*` (timm names).
    pub fn load(map: &mut TensorMap, prefix: &str, dim: usize, hidden: usize) -> Result<Mlp> {
        Ok(Mlp {
            fc1: Linear::load(map, &format!("{prefix}.fc1"), dim, hidden, true)?,
            fc2: Linear::load(map, &format!("{prefix}.fc2"), hidden, dim, true)?,
        })
    }

    /// Writes `{prefix}.fc1.*` and `{prefix}.fc2.*`.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        self.fc1.save(map, &format!("{prefix}.fc1"))?;
        self.fc2.save(map, &format!("{prefix}.fc2"))
    }

    /// `x [N x D] -> [N x D]`.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix> {
        let mut h = self.fc1.forward(x)?;
        gelu_inplace(h.as_mut_slice());
        self.fc2.forward(&h)
    }

    /// Backward of [`Mlp::forward`], recomputing `h = fc1(x)` and `a = gelu(h)`:
    /// `da = fc2.backward(a, dy)`, `dh = gelu_backward(h, da)`, `dx = fc1.backward(x, dh)`.
    pub fn backward(&self, x: &Matrix, dy: &Matrix, grads: &mut MlpGrads) -> Result<Matrix> {
        let (_, h, a) = self.forward_cached(x)?;
        self.backward_cached(x, &h, &a, dy, grads)
    }

    /// Forward returning `(y, h, a)`: the output, `h = fc1(x)` and `a = gelu(h)`.
    pub fn forward_cached(&self, x: &Matrix) -> Result<(Matrix, Matrix, Matrix)> {
        let h = self.fc1.forward(x)?; // h = fc1(x)
        let mut a = Matrix::zeros(h.rows(), h.cols());
        gelu_into(h.as_slice(), a.as_mut_slice()); // a = gelu(h)
        Ok((self.fc2.forward(&a)?, h, a)) // y = fc2(a)
    }

    /// Backward from [`Mlp::forward_cached`]'s `h` and `a`.
    pub fn backward_cached(
        &self,
        x: &Matrix,
        h: &Matrix,
        a: &Matrix,
        dy: &Matrix,
        grads: &mut MlpGrads,
    ) -> Result<Matrix> {
        // x [N x D] -> h [N x hidden] -> a [N x hidden] -> y [N x D]
        let mut dh = self.fc2.backward(a, dy, &mut grads.fc2)?; // y = fc2(a): da
        h.expect_shape("mlp backward h", dh.rows(), dh.cols())?;
        gelu_backward_inplace(h.as_slice(), dh.as_mut_slice()); // a = gelu(h): dh = da gelu'(h)
        self.fc1.backward(x, &dh, &mut grads.fc1) // h = fc1(x)
    }
}
