//! `gelu`: the exact (erf) GELU that timm and PyTorch use by default.
//!
//! ```text
//! gelu(x) = x/2 * (1 + erf(x / sqrt 2))      elementwise, [N x D] -> [N x D]
//! gelu'(x) = Phi(x) + x phi(x)                gelu_backward: dx = dy * gelu'(x)
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

/// Backward of [`gelu_inplace`]: `dx = dy * gelu'(x)` with the pre-activation `x`,
/// `gelu'(x) = Phi(x) + x phi(x) = (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)`
/// (SIMD, in parallel over fixed chunks).
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    // x [n] (what gelu_inplace received), dy [n] -> dx [n]
    let mut dx = vec![0.0f32; x.len().min(dy.len())];
    dx.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let start = c * CHUNK;
        crate::kernels::simd::gelu_backward(&x[start..start + out.len()], &dy[start..start + out.len()], out);
    });
    dx
}

/// [`gelu_backward`] in place: `dy = dy * gelu'(x)` (the same bits, no second buffer).
pub fn gelu_backward_inplace(x: &[f32], dy: &mut [f32]) {
    use rayon::prelude::*;
    dy.par_chunks_mut(CHUNK).enumerate().for_each(|(c, d)| {
        let start = c * CHUNK;
        crate::kernels::simd::gelu_backward_inplace(&x[start..start + d.len()], d);
    });
}

/// [`gelu_inplace`] out of place: `out = gelu(x)` (the same bits, no copy of `x` first).
pub fn gelu_into(x: &[f32], out: &mut [f32]) {
    use rayon::prelude::*;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let start = c * CHUNK;
        crate::kernels::simd::gelu_into(&x[start..start + o.len()], o);
    });
}

/// Elements per rayon task of [`gelu_inplace`].
const CHUNK: usize = 1 << 14;

/// Exact GELU in place: SIMD ([`crate::kernels::simd::gelu_inplace`], within `4e-7 * max(1, |x|)`
/// of the f64 GELU), in parallel over fixed chunks (elementwise: the same bits on any thread count).
pub fn gelu_inplace(x: &mut [f32]) {
    use rayon::prelude::*;
    if x.len() <= CHUNK {
        crate::kernels::simd::gelu_inplace(x);
    } else {
        x.par_chunks_mut(CHUNK).for_each(crate::kernels::simd::gelu_inplace);
    }
}

#[cfg(test)]
mod tests {
    use super::{gelu, gelu_inplace};

    /// The parallel SIMD GELU equals the scalar one to 6e-7 (relative to max(1, |x|)), across
    /// several chunks.
    #[test]
    fn inplace_matches_scalar() {
        let xs: Vec<f32> = (0..100_003).map(|i| ((i as f32) * 0.000_37).sin() * 7.0).collect();
        let mut fast = xs.clone();
        gelu_inplace(&mut fast);
        for (x, f) in xs.iter().zip(&fast) {
            assert!((f - gelu(*x)).abs() <= 6e-7 * x.abs().max(1.0), "{x}: {f} vs {}", gelu(*x));
        }
    }

    /// Values of x * Phi(x) from the standard normal CDF table: Phi(1) = 0.841344746,
    /// Phi(-1) = 0.158655254, Phi(2) = 0.977249868, Phi(-3) = 0.001349898.
    #[test]
    fn matches_the_normal_cdf() {
        for (x, phi) in [(1.0f32, 0.841_344_746f64), (-1.0, 0.158_655_254), (2.0, 0.977_249_868), (-3.0, 0.001_349_898)]
        {
            let expected = x as f64 * phi;
            assert!((gelu(x) as f64 - expected).abs() < 1e-6, "gelu({x}) = {} vs {expected}", gelu(x));
        }
    }
}
