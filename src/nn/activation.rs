//! `Activation`: the MLP's nonlinearity, forward and backward side by side, by timm's
//! registered names (`act_layer`).
//!
//! | name | `y = f(x)` | `f'(x)` |
//! |---|---|---|
//! | `gelu` | `x Phi(x)` (exact erf; SIMD, [`super::gelu`]) | `Phi(x) + x phi(x)` |
//! | `gelu_tanh` | `x/2 (1 + tanh u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)` | `(1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 0.134145 x^2)` |
//! | `quick_gelu` | `x s(1.702 x)` (CLIP) | `s + 1.702 x s (1 - s)` |
//! | `relu` | `max(x, 0)` | `1` for `x > 0`, else `0` |
//! | `silu` (`swish`) | `x s(x)` | `s + x s (1 - s)` |
//!
//! (`s` the logistic sigmoid, `t = tanh u`.)
//!
//! ```
//! use patchgraph::nn::Activation;
//! let x = [-1.0f32, 0.0, 2.0];
//! let mut y = [0.0f32; 3];
//! Activation::Relu.forward_into(&x, &mut y);
//! assert_eq!(y, [0.0, 0.0, 2.0]);
//! let mut dy = [1.0f32; 3];
//! Activation::Relu.backward_inplace(&x, &mut dy); // dy = dy * f'(x)
//! assert_eq!(dy, [0.0, 0.0, 1.0]);
//! ```

use serde::{Deserialize, Serialize};

/// The MLP's activation (timm's `act_layer`, by its registered name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `nn.GELU()`, the exact erf form (timm's default).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// `nn.GELU(approximate='tanh')`.
    #[serde(rename = "gelu_tanh")]
    GeluTanh,
    /// CLIP's `x sigmoid(1.702 x)`.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
    /// `x sigmoid(x)` (timm also calls it `swish`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// `sqrt(2 / pi)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Activation {
    /// `out[i] = f(x[i])` (same lengths).
    pub fn forward_into(self, x: &[f32], out: &mut [f32]) {
        match self {
            Activation::Gelu => super::gelu_into(x, out),
            Activation::GeluTanh => {
                for (o, &v) in out.iter_mut().zip(x) {
                    // y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                    *o = 0.5 * v * (1.0 + (SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)).tanh());
                }
            }
            Activation::QuickGelu => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * sigmoid(1.702 * v); // y = x s(1.702 x)
                }
            }
            Activation::Relu => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v.max(0.0); // y = max(x, 0)
                }
            }
            Activation::Silu => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * sigmoid(v); // y = x s(x)
                }
            }
        }
    }

    /// `dy[i] *= f'(x[i])`: the backward of [`Activation::forward_into`] given its input `x`.
    pub fn backward_inplace(self, x: &[f32], dy: &mut [f32]) {
        match self {
            Activation::Gelu => super::gelu_backward_inplace(x, dy),
            Activation::GeluTanh => {
                for (d, &v) in dy.iter_mut().zip(x) {
                    // y = x/2 (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3)
                    let t = (SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)).tanh();
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
                    *d *= 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du;
                }
            }
            Activation::QuickGelu => {
                for (d, &v) in dy.iter_mut().zip(x) {
                    let s = sigmoid(1.702 * v); // y = x s(1.702 x)
                    *d *= s + 1.702 * v * s * (1.0 - s);
                }
            }
            Activation::Relu => {
                for (d, &v) in dy.iter_mut().zip(x) {
                    if v <= 0.0 {
                        *d = 0.0; // y = max(x, 0)
                    }
                }
            }
            Activation::Silu => {
                for (d, &v) in dy.iter_mut().zip(x) {
                    let s = sigmoid(v); // y = x s(x)
                    *d *= s + v * s * (1.0 - s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each backward equals central differences of its forward in f64, and the forward matches
    /// its formula written out independently in f64.
    #[test]
    fn backwards_are_the_derivatives_of_the_forwards() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.1 + 0.013).collect();
        let exact = |a: Activation, x: f64| -> f64 {
            let s = |z: f64| 1.0 / (1.0 + (-z).exp());
            match a {
                Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
                Activation::GeluTanh => {
                    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
                }
                Activation::QuickGelu => x * s(1.702 * x),
                Activation::Relu => x.max(0.0),
                Activation::Silu => x * s(x),
            }
        };
        for a in [Activation::Gelu, Activation::GeluTanh, Activation::QuickGelu, Activation::Relu, Activation::Silu] {
            let mut y = vec![0.0f32; xs.len()];
            a.forward_into(&xs, &mut y);
            let mut dy = vec![1.0f32; xs.len()];
            a.backward_inplace(&xs, &mut dy);
            for (i, &x) in xs.iter().enumerate() {
                let x64 = x as f64;
                assert!((y[i] as f64 - exact(a, x64)).abs() < 1e-5, "{a:?} f({x})");
                let h = 1e-5;
                let fd = (exact(a, x64 + h) - exact(a, x64 - h)) / (2.0 * h);
                assert!((dy[i] as f64 - fd).abs() < 1e-4, "{a:?} f'({x}): {} vs {fd}", dy[i]);
            }
        }
        let swish: Activation = serde_json::from_str("\"swish\"").unwrap();
        assert_eq!(swish, Activation::Silu);
        assert!(serde_json::from_str::<Activation>("\"hard_swish\"").is_err());
    }
}
