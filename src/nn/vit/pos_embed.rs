//! Resampling a learned absolute position embedding to another patch grid, as timm's
//! `resample_abs_pos_embed` does when a checkpoint meets a model of another image or patch size.
//!
//! ```text
//! pos [prefix + gh*gw x D]  ->  prefix rows kept as they are,
//!                              grid rows as D planes [gh x gw], bicubic (a = -0.5, antialiased,
//!                              half-pixel centres; torch's `interpolate(..., antialias=True)`),
//!                              -> [prefix + nh*nw x D]
//! ```
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::nn::resample_pos_embed;
//! // a class token row and a 2 x 2 grid of constant rows: resampling keeps constants
//! let pos = Matrix::from_fn(5, 3, |i, j| if i == 0 { 9.0 } else { j as f32 });
//! let r = resample_pos_embed(&pos, 1, (2, 2), (3, 3)).unwrap();
//! assert_eq!(r.shape(), (10, 3));
//! assert_eq!(r.row(0), &[9.0, 9.0, 9.0]);
//! assert!((r.get(7, 2) - 2.0).abs() < 1e-6);
//! ```

use crate::error::{Error, Result};
use crate::image::{ChwImage, Interpolation, resize_exact};
use crate::tensor::Matrix;

/// Resamples the grid part of `pos` from `old = (gh, gw)` to `new = (nh, nw)`, keeping the first
/// `prefix` rows (class token) unchanged. Returns `pos` itself when the grids are equal.
pub fn resample_pos_embed(pos: &Matrix, prefix: usize, old: (usize, usize), new: (usize, usize)) -> Result<Matrix> {
    let (gh, gw) = old;
    let (nh, nw) = new;
    if pos.rows() != prefix + gh * gw {
        return Err(Error::shape(
            "position embedding",
            format!("{prefix} + {gh} x {gw} rows"),
            format!("{} rows", pos.rows()),
        ));
    }
    if nh == 0 || nw == 0 || gh == 0 || gw == 0 {
        return Err(Error::invalid("position-embedding grid", format!("{gh} x {gw} -> {nh} x {nw} is empty")));
    }
    if old == new {
        return Ok(pos.clone());
    }
    let d = pos.cols();
    let planes = ChwImage::from_fn(d, gh, gw, |c, y, x| pos.get(prefix + y * gw + x, c))?;
    let resized = resize_exact(&planes, nw, nh, Interpolation::Bicubic)?;
    Ok(Matrix::from_fn(prefix + nh * nw, d, |i, c| {
        if i < prefix {
            pos.get(i, c)
        } else {
            let k = i - prefix;
            resized.get(c, k / nw, k % nw)
        }
    }))
}

/// The side of a square grid of `n` cells, if `n` is a perfect square.
pub(crate) fn square_side(n: usize) -> Option<usize> {
    let s = (n as f64).sqrt().round() as usize;
    (s * s == n).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upsampling a linear ramp with an interpolating kernel reproduces the ramp away from the
    /// borders (Keys' cubic is exact on linear functions; the border weights are renormalised).
    #[test]
    fn linear_ramp_is_reproduced_inside() {
        let (g, n) = (8, 16);
        let pos = Matrix::from_fn(g * g, 2, |i, c| if c == 0 { (i % g) as f32 } else { (i / g) as f32 });
        let r = resample_pos_embed(&pos, 0, (g, g), (n, n)).unwrap();
        // output pixel x is centred at input coordinate (x + 0.5) * g / n - 0.5
        for y in 4..n - 4 {
            for x in 4..n - 4 {
                let want_x = (x as f32 + 0.5) * g as f32 / n as f32 - 0.5;
                let want_y = (y as f32 + 0.5) * g as f32 / n as f32 - 0.5;
                assert!((r.get(y * n + x, 0) - want_x).abs() < 1e-5, "{x},{y}");
                assert!((r.get(y * n + x, 1) - want_y).abs() < 1e-5, "{x},{y}");
            }
        }
    }

    #[test]
    fn wrong_row_count_is_an_error() {
        let pos = Matrix::zeros(10, 4);
        assert!(resample_pos_embed(&pos, 1, (2, 2), (3, 3)).is_err());
        assert!(resample_pos_embed(&pos, 1, (3, 3), (0, 3)).is_err());
        assert_eq!(resample_pos_embed(&pos, 1, (3, 3), (3, 3)).unwrap(), pos);
        assert_eq!(square_side(196), Some(14));
        assert_eq!(square_side(197), None);
    }
}
