//! `Mlp`: timm's transformer MLP, `fc2(norm(act(fc1(x))))` (`act` GELU by default, `norm` a
//! LayerNorm with timm's `scale_mlp_norm`, absent otherwise).
//!
//! ```text
//! x [N x D] -> fc1 -> h [N x hidden] -> act -> [norm] -> a -> fc2 -> [N x D]
//! dx <- fc1.backward <- act.backward <- [norm.backward] <- fc2.backward <- dy      (Mlp::backward)
//! ```
//!
//! ```
//! use patchgraph::{Matrix, nn::{Init, Mlp}};
//! let mlp = Mlp::new(&mut Init::new(0), 4, 16);
//! let y = mlp.forward(&Matrix::zeros(3, 4)).unwrap();
//! assert_eq!(y.shape(), (3, 4));
//! ```

use super::{Activation, Init, LayerNorm, LayerNormGrads, Linear, LinearGrads};
use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::tensor::Matrix;

/// Gradients of an [`Mlp`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlpGrads {
    /// Of `fc1`.
    pub fc1: LinearGrads,
    /// Of `norm`, when present.
    pub norm: Option<LayerNormGrads>,
    /// Of `fc2`.
    pub fc2: LinearGrads,
}

impl MlpGrads {
    /// Zero gradients for `mlp`.
    pub fn zeros(mlp: &Mlp) -> MlpGrads {
        MlpGrads {
            fc1: LinearGrads::zeros(&mlp.fc1),
            norm: mlp.norm.as_ref().map(|n| LayerNormGrads::zeros(n.dim())),
            fc2: LinearGrads::zeros(&mlp.fc2),
        }
    }
}

/// Two linear layers with an activation (and optionally a LayerNorm) between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// `[hidden x D]`.
    pub fc1: Linear,
    /// The activation.
    pub act: Activation,
    /// LayerNorm over the hidden width after the activation (timm's `scale_mlp_norm`).
    pub norm: Option<LayerNorm>,
    /// `[D x hidden]`.
    pub fc2: Linear,
}

/// The options of an [`Mlp`] beyond its widths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlpOptions {
    /// The activation.
    pub act: Activation,
    /// Whether `fc1` and `fc2` have biases.
    pub bias: bool,
    /// A LayerNorm after the activation, with this epsilon.
    pub norm_eps: Option<f32>,
}

impl Default for MlpOptions {
    /// timm's default: GELU, biases, no norm.
    fn default() -> Self {
        MlpOptions { act: Activation::Gelu, bias: true, norm_eps: None }
    }
}

impl Mlp {
    /// PyTorch-default initialised MLP `dim -> hidden -> dim` (GELU, biases, no norm).
    pub fn new(init: &mut Init, dim: usize, hidden: usize) -> Mlp {
        Mlp::with_options(init, dim, hidden, &MlpOptions::default())
    }

    /// PyTorch-default initialised MLP with `options`.
    pub fn with_options(init: &mut Init, dim: usize, hidden: usize, options: &MlpOptions) -> Mlp {
        Mlp {
            fc1: Linear::torch_init(init, dim, hidden, options.bias),
            act: options.act,
            norm: options.norm_eps.map(|eps| LayerNorm::new(hidden, eps)),
            fc2: Linear::torch_init(init, hidden, dim, options.bias),
        }
    }

    /// Loads `{prefix}.fc1.*` and `{prefix}.fc2.*` (timm names; GELU, biases, no norm).
    pub fn load(map: &mut TensorMap, prefix: &str, dim: usize, hidden: usize) -> Result<Mlp> {
        Mlp::load_with(map, prefix, dim, hidden, &MlpOptions::default())
    }

    /// Loads `{prefix}.fc1.*`, `{prefix}.norm.*` (with a norm) and `{prefix}.fc2.*`.
    pub fn load_with(
        map: &mut TensorMap,
        prefix: &str,
        dim: usize,
        hidden: usize,
        options: &MlpOptions,
    ) -> Result<Mlp> {
        Ok(Mlp {
            fc1: Linear::load(map, &format!("{prefix}.fc1"), dim, hidden, options.bias)?,
            act: options.act,
            norm: match options.norm_eps {
                Some(eps) => Some(LayerNorm::load(map, &format!("{prefix}.norm"), hidden, eps)?),
                None => None,
            },
            fc2: Linear::load(map, &format!("{prefix}.fc2"), hidden, dim, options.bias)?,
        })
    }

    /// Writes `{prefix}.fc1.*`, `{prefix}.norm.*` and `{prefix}.fc2.*`.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        self.fc1.save(map, &format!("{prefix}.fc1"))?;
        if let Some(n) = &self.norm {
            n.save(map, &format!("{prefix}.norm"))?;
        }
        self.fc2.save(map, &format!("{prefix}.fc2"))
    }

    /// `x [N x D] -> [N x D]`.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix> {
        Ok(self.forward_cached(x)?.0)
    }

    /// Backward of [`Mlp::forward`], recomputing `h = fc1(x)` and `a`:
    /// `da = fc2.backward(a, dy)`, (`norm.backward`), `dh = act_backward(h, ..)`, `dx = fc1.backward(x, dh)`.
    pub fn backward(&self, x: &Matrix, dy: &Matrix, grads: &mut MlpGrads) -> Result<Matrix> {
        let (_, h, a) = self.forward_cached(x)?;
        self.backward_cached(x, &h, &a, dy, grads)
    }

    /// Forward returning `(y, h, a)`: the output, `h = fc1(x)` and `a = norm(act(h))` (the
    /// input of `fc2`; `act(h)` itself without a norm).
    pub fn forward_cached(&self, x: &Matrix) -> Result<(Matrix, Matrix, Matrix)> {
        let h = self.fc1.forward(x)?; // h = fc1(x)
        let mut a = Matrix::zeros(h.rows(), h.cols());
        self.act.forward_into(h.as_slice(), a.as_mut_slice()); // a = act(h)
        if let Some(n) = &self.norm {
            a = n.forward(&a)?; // a = norm(act(h))
        }
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
        if let (Some(n), Some(g)) = (&self.norm, grads.norm.as_mut()) {
            let mut act = Matrix::zeros(h.rows(), h.cols());
            self.act.forward_into(h.as_slice(), act.as_mut_slice()); // act(h), recomputed
            dh = n.backward(&act, &dh, g)?; // a = norm(act(h))
        }
        self.act.backward_inplace(h.as_slice(), dh.as_mut_slice()); // act(h): dh = da act'(h)
        self.fc1.backward(x, &dh, &mut grads.fc1) // h = fc1(x)
    }
}
