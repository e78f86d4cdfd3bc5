//! Resizing f32 planes with Pillow's convolution resampler (bilinear and bicubic, antialiased).
//!
//! Implemented here on f32 planes rather than through `image::imageops::resize`, so that it takes
//! any number of channels and any values (also normalised ones, no clamping to `[0, 1]`), and so
//! that it follows the peer exactly: timm's eval transform resizes with torchvision on PIL
//! images, i.e. Pillow's `ImagingResample`. This is that algorithm:
//!
//! - separable, horizontal pass then vertical pass; a pass whose size does not change is skipped;
//! - output pixel `i` is centred at input coordinate `(i + 0.5) * scale`, `scale = in / out`;
//! - when shrinking, the filter is stretched by `scale` (antialiasing: every input pixel
//!   contributes), when enlarging it is not;
//! - the weights of the input pixels inside the image are normalised to sum to 1 (edges are not
//!   padded);
//! - bilinear = triangle filter of support 1, bicubic = Keys' cubic with `a = -0.5` (support 2).
//!
//! The one difference with Pillow on 8-bit images: Pillow rounds and clips to `u8` after each
//! pass, we keep f32 (differences are below `1/255`). Bicubic can overshoot `[0, 1]` near edges;
//! [`super::ImageTransform`] clamps back to `[0, 1]` after resizing, as Pillow's `u8`
//! clip does.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::chw::{ChwImage, checked_len};
use crate::error::{Error, Result};

/// Resampling filter for [`resize_exact`] and [`resize_shorter_side`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Triangle filter, support 1 (Pillow `BILINEAR`, torchvision `InterpolationMode.BILINEAR`).
    Bilinear,
    /// Keys' cubic convolution with `a = -0.5`, support 2 (Pillow `BICUBIC`; the same kernel as
    /// the `image` crate's `CatmullRom`). timm's default for ViTs.
    #[default]
    Bicubic,
}

impl Interpolation {
    /// Half-width of the filter in input pixels (before stretching for downscaling).
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    /// The filter kernel at offset `x` (Pillow's `bilinear_filter` / `bicubic_filter`).
    fn kernel(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// The taps of one resampling pass: output `i` reads inputs `start[i] .. start[i] + len[i]` with
/// weights `weights[i * stride ..][..len[i]]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

/// Pillow's `precompute_coeffs` for resampling `in_size` pixels to `out_size` (both >= 1).
fn taps(in_size: usize, out_size: usize, filter: Interpolation) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let stride = support.ceil() as usize * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        stride,
        weights: vec![0.0; out_size * stride],
    };
    for i in 0..out_size {
        let centre = (i as f64 + 0.5) * scale;
        // Pillow truncates `centre -/+ support + 0.5` to int and clips to the image.
        let lo = (centre - support + 0.5).max(0.0) as usize;
        let hi = ((centre + support + 0.5).max(0.0) as usize).min(in_size);
        let len = hi.saturating_sub(lo).min(stride);
        let w: Vec<f64> = (0..len).map(|k| filter.kernel(((lo + k) as f64 - centre + 0.5) / filter_scale)).collect();
        let sum: f64 = w.iter().sum();
        let row = &mut t.weights[i * stride..i * stride + len];
        for (dst, wk) in row.iter_mut().zip(&w) {
            *dst = if sum != 0.0 { (wk / sum) as f32 } else { *wk as f32 };
        }
        t.start.push(lo);
        t.len.push(len);
    }
    t
}

/// Resizes `image` to exactly `width x height` (note the order: width first, as Pillow's
/// `Image.resize((w, h))` and `image::imageops::resize`), ignoring the aspect ratio.
///
/// `[C x H x W] -> [C x height x width]`; every channel is resampled independently with Pillow's
/// algorithm (see the module docs). Resizing to the same size returns an identical copy; a
/// constant image stays constant.
///
/// Errors ([`Error::Image`]) if `width` or `height` is zero.
///
/// ```
/// use patchgraph::image::{ChwImage, Interpolation, resize_exact};
/// // Halving a 1 x 1 x 4 row with the bilinear (triangle) filter, stretched to support 2.
/// let row = ChwImage::new(1, 1, 4, vec![0., 2., 4., 6.]).unwrap();
/// let half = resize_exact(&row, 2, 1, Interpolation::Bilinear).unwrap();
/// // Output 0 is centred at input coordinate 1.0; pixel centres 0.5, 1.5, 2.5 lie at distances
/// // 0.5, 0.5, 1.5, weights 1 - d/2 = 3/4, 3/4, 1/4 (pixel -1 is outside and is not padded),
/// // normalised by 7/4: (3 * 0 + 3 * 2 + 1 * 4) / 7 = 10/7.
/// // Output 1 (centre 3.0) reads pixels 1, 2, 3 with 1/4, 3/4, 3/4: (2 + 12 + 18) / 7 = 32/7.
/// let want = [10.0 / 7.0, 32.0 / 7.0];
/// assert!(half.as_slice().iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6));
/// ```
pub fn resize_exact(image: &ChwImage, width: usize, height: usize, filter: Interpolation) -> Result<ChwImage> {
    let (c, h, w) = image.shape();
    // A size from a flag or an aspect ratio (a 60000 x 1 image resized to shorter side 256 is
    // 15 M pixels wide) is refused before the buffers are allocated.
    crate::limits::check_image_size(&format!("resized from {h} x {w}"), height, width)?;
    checked_len("resize target", c, height, width)?;
    // Horizontal pass: [C*H x w] -> [C*H x width].
    let horizontal = if width == w {
        image.as_slice().to_vec()
    } else {
        let t = taps(w, width, filter);
        let mut out = vec![0.0f32; c * h * width];
        out.par_chunks_mut(width).zip(image.as_slice().par_chunks(w)).for_each(|(dst, src)| {
            for (i, d) in dst.iter_mut().enumerate() {
                let ws = &t.weights[i * t.stride..i * t.stride + t.len[i]];
                let xs = &src[t.start[i]..t.start[i] + t.len[i]];
                *d = ws.iter().zip(xs).map(|(a, b)| a * b).sum();
            }
        });
        out
    };
    // Vertical pass, plane by plane: [h x width] -> [height x width].
    let data = if height == h {
        horizontal
    } else {
        let t = taps(h, height, filter);
        let mut out = vec![0.0f32; c * height * width];
        out.par_chunks_mut(width).enumerate().for_each(|(r, dst)| {
            let (plane, y) = (r / height, r % height);
            let src = &horizontal[plane * h * width..(plane + 1) * h * width];
            let ws = &t.weights[y * t.stride..y * t.stride + t.len[y]];
            for (k, wk) in ws.iter().enumerate() {
                let line = &src[(t.start[y] + k) * width..(t.start[y] + k + 1) * width];
                for (d, s) in dst.iter_mut().zip(line) {
                    *d += wk * s;
                }
            }
        });
        out
    };
    ChwImage::new(c, height, width, data)
}

/// The `(height, width)` that [`resize_shorter_side`] produces for an `h x w` image: the shorter
/// side becomes `size`, the longer `floor(size * long / short)` (torchvision's `Resize(int)`).
///
/// Errors ([`Error::Image`]) if any argument is zero.
pub fn shorter_side_size(h: usize, w: usize, size: usize) -> Result<(usize, usize)> {
    if h == 0 || w == 0 || size == 0 {
        return Err(Error::Image {
            what: "resize_shorter_side".into(),
            reason: format!("cannot resize a {h} x {w} image to shorter side {size}"),
        });
    }
    // torchvision: `int(size * long / short)`, an exact integer product then a float division.
    let scaled = |long: usize, short: usize| ((size as f64 * long as f64) / short as f64) as usize;
    Ok(if h <= w { (size, scaled(w, h).max(1)) } else { (scaled(h, w).max(1), size) })
}

/// Resizes so that the shorter side is `size`, keeping the aspect ratio (timm's ImageNet eval
/// resize, e.g. `size = floor(224 / 0.875) = 256`; torchvision `Resize(size)`).
///
/// `[C x H x W] -> [C x H' x W']` with `(H', W') =` [`shorter_side_size`]`(H, W, size)`.
/// Errors ([`Error::Image`]) if `size` is zero.
///
/// ```
/// use patchgraph::image::{ChwImage, Interpolation, resize_shorter_side};
/// let img = ChwImage::filled(3, 300, 451, 0.5).unwrap();
/// let r = resize_shorter_side(&img, 256, Interpolation::Bicubic).unwrap();
/// assert_eq!(r.shape(), (3, 256, 384)); // floor(256 * 451 / 300) = floor(384.85)
/// ```
pub fn resize_shorter_side(image: &ChwImage, size: usize, filter: Interpolation) -> Result<ChwImage> {
    let (height, width) = shorter_side_size(image.height(), image.width(), size)?;
    resize_exact(image, width, height, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's aborts: a 60000 x 1 image resized to shorter side 256 (a 47 GB buffer) and a
    /// shorter side of 224 / 0.001 are typed errors, before any allocation of that size.
    #[test]
    fn huge_resize_targets_are_refused() {
        let strip = ChwImage::filled(3, 1, 60_000, 0.5).unwrap();
        let err = resize_shorter_side(&strip, 256, Interpolation::Bicubic).unwrap_err();
        assert!(matches!(&err, Error::Image { reason, .. } if reason.contains("15360000")), "{err}");
        let img = ChwImage::filled(3, 4, 4, 0.5).unwrap();
        assert!(resize_shorter_side(&img, 224_000, Interpolation::Bilinear).is_err());
        assert!(resize_exact(&img, usize::MAX, 2, Interpolation::Bilinear).is_err());
    }

    #[test]
    fn kernels_match_pillow_values() {
        // Triangle: 1 - |x|. Keys a = -0.5 at 0.5: (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625;
        // at 1.5: (((1.5 - 5) * 1.5 + 8) * 1.5 - 4) * a = (2.75 * 1.5 - 4) * -0.5 = -0.0625.
        assert_eq!(Interpolation::Bilinear.kernel(0.25), 0.75);
        assert_eq!(Interpolation::Bicubic.kernel(0.0), 1.0);
        assert_eq!(Interpolation::Bicubic.kernel(1.0), 0.0);
        assert_eq!(Interpolation::Bicubic.kernel(0.5), 0.5625);
        assert_eq!(Interpolation::Bicubic.kernel(-1.5), -0.0625);
        assert_eq!(Interpolation::Bicubic.kernel(2.5), 0.0);
    }

    #[test]
    fn taps_weights_sum_to_one_and_stay_inside() {
        for (i, o) in [(10, 3), (3, 10), (7, 7), (451, 256), (1, 5), (5, 1)] {
            for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let t = taps(i, o, f);
                for k in 0..o {
                    assert!(t.len[k] >= 1 && t.start[k] + t.len[k] <= i);
                    let s: f32 = t.weights[k * t.stride..k * t.stride + t.len[k]].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{i}->{o} {f:?} out {k}: {s}");
                }
            }
        }
    }

    #[test]
    fn shorter_side_sizes() {
        assert_eq!(shorter_side_size(300, 451, 256).unwrap(), (256, 384));
        assert_eq!(shorter_side_size(451, 300, 256).unwrap(), (384, 256));
        assert_eq!(shorter_side_size(512, 512, 248).unwrap(), (248, 248));
        // 400 x 600 -> 256 x floor(256 * 1.5) = 384, exactly.
        assert_eq!(shorter_side_size(400, 600, 256).unwrap(), (256, 384));
        assert!(shorter_side_size(0, 4, 2).is_err());
        assert!(shorter_side_size(4, 4, 0).is_err());
    }
}
