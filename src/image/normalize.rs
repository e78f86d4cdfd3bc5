//! Per-channel normalisation `(x - mean[c]) / std[c]` (torchvision's `Normalize`) and its inverse.

use serde::{Deserialize, Serialize};

use super::chw::ChwImage;
use crate::error::{Error, Result};

/// ImageNet per-channel mean (R, G, B), timm's `IMAGENET_DEFAULT_MEAN`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (R, G, B), timm's `IMAGENET_DEFAULT_STD`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Inception-style mean, timm's `IMAGENET_INCEPTION_MEAN` (Google's ViT / AugReg checkpoints):
/// maps `[0, 1]` to `[-1, 1]` together with [`INCEPTION_STD`].
pub const INCEPTION_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// Inception-style standard deviation, timm's `IMAGENET_INCEPTION_STD`.
pub const INCEPTION_STD: [f32; 3] = [0.5, 0.5, 0.5];

/// A per-channel mean and standard deviation (serialisable, for [`super::ImageTransform`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean, one value per channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, one non-zero value per channel.
    pub std: Vec<f32>,
}

impl Normalization {
    /// [`IMAGENET_MEAN`] / [`IMAGENET_STD`].
    pub fn imagenet() -> Self {
        Normalization { mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec() }
    }

    /// [`INCEPTION_MEAN`] / [`INCEPTION_STD`].
    pub fn inception() -> Self {
        Normalization { mean: INCEPTION_MEAN.to_vec(), std: INCEPTION_STD.to_vec() }
    }

    /// Applies it to a copy of `image` (see [`normalize`]).
    pub fn apply(&self, image: &ChwImage) -> Result<ChwImage> {
        normalize(image, &self.mean, &self.std)
    }
}

/// Errors unless `mean` and `std` have one finite value per channel and no `std` is zero.
fn check(channels: usize, mean: &[f32], std: &[f32]) -> Result<()> {
    for (what, v) in [("normalisation mean", mean), ("normalisation std", std)] {
        if v.len() != channels {
            return Err(Error::shape(
                what,
                format!("{channels} values (one per channel)"),
                format!("{} values", v.len()),
            ));
        }
        crate::error::ensure_finite(what, v)?;
    }
    if let Some(c) = std.iter().position(|&s| s == 0.0) {
        return Err(Error::invalid("normalisation std", format!("std of channel {c} is zero")));
    }
    Ok(())
}

/// `out[c, y, x] = (image[c, y, x] - mean[c]) / std[c]`, shape unchanged `[C x H x W]`.
///
/// Errors: [`Error::Shape`] if `mean` or `std` does not have exactly `C` values,
/// [`Error::Invalid`] if a `std` is zero, [`Error::NonFinite`] if a `mean` or `std` is NaN/inf.
///
/// ```
/// use patchgraph::image::{ChwImage, normalize, INCEPTION_MEAN, INCEPTION_STD};
/// let img = ChwImage::new(3, 1, 1, vec![0.0, 0.5, 1.0]).unwrap();
/// // Inception constants map [0, 1] to [-1, 1]: (0 - .5) / .5 = -1, (.5 - .5) / .5 = 0, ...
/// let n = normalize(&img, &INCEPTION_MEAN, &INCEPTION_STD).unwrap();
/// assert_eq!(n.as_slice(), &[-1.0, 0.0, 1.0]);
/// ```
pub fn normalize(image: &ChwImage, mean: &[f32], std: &[f32]) -> Result<ChwImage> {
    let mut out = image.clone();
    normalize_in_place(&mut out, mean, std)?;
    Ok(out)
}

/// [`normalize`] in place (the image is left untouched on error).
pub fn normalize_in_place(image: &mut ChwImage, mean: &[f32], std: &[f32]) -> Result<()> {
    check(image.channels(), mean, std)?;
    for c in 0..image.channels() {
        let (m, s) = (mean[c], std[c]);
        for v in image.plane_mut(c) {
            *v = (*v - m) / s;
        }
    }
    Ok(())
}

/// The inverse of [`normalize`]: `out[c, y, x] = image[c, y, x] * std[c] + mean[c]` (to show a
/// normalised image). Same errors as [`normalize`].
pub fn denormalize(image: &ChwImage, mean: &[f32], std: &[f32]) -> Result<ChwImage> {
    check(image.channels(), mean, std)?;
    let mut out = image.clone();
    for c in 0..out.channels() {
        let (m, s) = (mean[c], std[c]);
        for v in out.plane_mut(c) {
            *v = *v * s + m;
        }
    }
    Ok(out)
}
