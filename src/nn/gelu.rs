//! `gelu`: the exact (erf) GELU that timm and PyTorch use by default.
//!
//! ```text
//! gelu(x) = x/2 * (1 + erf(x / sqrt 2))      elementwise, [N x D] -> [N x D]
//! ```
//!
//! ```
//! use patchgraph::nn::gelu;
//! assert_eq!(gelu(0.0), 0.0);
//! assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6); // Phi(1) = 0.8413447
//! ```

/// Exact GELU of one value.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Exact GELU in place.
pub fn gelu_inplace(x: &mut [f32]) {
    for v in x {
        *v = gelu(*v);
    }
}
