//! `elu`: the exponential linear unit GAT puts between its layers (`alpha = 1`, PyTorch's
//! default).
//!
//! ```text
//! elu(x)  = x            if x > 0,   exp(x) - 1   otherwise        [N x D] -> [N x D]
//! elu'(x) = 1            if x > 0,   exp(x)       otherwise        elu_backward: dx = dy * elu'(x)
//! ```
//!
//! ```
//! use patchgraph::nn::{elu, elu_backward};
//! assert_eq!(elu(2.0), 2.0);
//! assert!((elu(-1.0) - (-0.632_120_56)).abs() < 1e-7);
//! assert_eq!(elu_backward(&[3.0, 0.0], &[1.0, 1.0]), vec![1.0, 1.0]); // exp(0) = 1
//! ```

/// ELU of one value.
#[inline]
pub fn elu(x: f32) -> f32 {
    if x > 0.0 { x } else { x.exp_m1() }
}

/// ELU of every element, in place.
pub fn elu_inplace(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = elu(*v));
}

/// Backward of [`elu_inplace`] from the pre-activation `x`: `dx = dy * elu'(x)`.
pub fn elu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    // x [n], dy [n] -> dx [n];  y = elu(x)
    x.iter().zip(dy).map(|(&x, &d)| if x > 0.0 { d } else { d * x.exp() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `elu_backward` is the derivative: central differences in f64 at points on both sides of 0.
    #[test]
    fn backward_is_the_derivative() {
        for &x in &[-3.0f32, -0.5, -1e-3, 1e-3, 0.7, 4.0] {
            let h = 1e-4f64;
            let f = |v: f64| if v > 0.0 { v } else { v.exp_m1() };
            let fd = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            let ours = elu_backward(&[x], &[1.0])[0] as f64;
            assert!((ours - fd).abs() < 1e-5, "{x}: {ours} vs {fd}");
        }
    }
}
