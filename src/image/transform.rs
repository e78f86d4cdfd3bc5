//! [`ImageTransform`]: the whole eval preprocessing (decode, resize, centre crop, normalise) as one
//! serialisable config, defaulting to timm's ImageNet eval transform.

use std::path::Path;

use ::image::DynamicImage;
use serde::{Deserialize, Serialize};

use super::chw::ChwImage;
use super::crop::center_crop;
use super::load::{Channels, from_dynamic_image, load_image_with};
use super::normalize::{Normalization, normalize_in_place};
use super::resize::{Interpolation, resize_exact, resize_shorter_side};
use crate::error::Result;

/// How [`ImageTransform`] resizes before cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeTo {
    /// Shorter side to this many pixels, aspect ratio kept ([`resize_shorter_side`]).
    ShorterSide(usize),
    /// Exactly this size, aspect ratio ignored ([`resize_exact`]; timm's `crop_mode = "squash"`).
    Exact {
        /// Target height `H`.
        height: usize,
        /// Target width `W`.
        width: usize,
    },
}

/// The size of a centre crop, `height x width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropSize {
    /// Crop height.
    pub height: usize,
    /// Crop width.
    pub width: usize,
}

/// An eval preprocessing pipeline, in this order:
///
/// 1. decode to `channels` planes with values in `[0, 1]` ([`from_dynamic_image`]);
/// 2. `resize` with `interpolation` (skipped if `None`), then clamp to `[0, 1]` (Pillow resizes
///    8-bit images, clipping bicubic overshoot: the clamp keeps us with the peer);
/// 3. centre `crop` ([`center_crop`]; skipped if `None`; an error if larger than the image);
/// 4. `normalize` per channel (skipped if `None`; needs one mean/std per channel).
///
/// `[H0 x W0]` file `->` `[C x crop.height x crop.width]`. The [`Default`] is timm's ImageNet eval
/// transform for 224 inputs: resize shorter side to `floor(224 / 0.875) = 256` bicubic, centre crop
/// 224, [`super::IMAGENET_MEAN`] / [`super::IMAGENET_STD`]. Serialises with serde (JSON below);
/// missing fields take the default's values.
///
/// ```
/// use patchgraph::image::{ImageTransform, Normalization};
/// let json = r#"{
///     "resize": {"shorter_side": 248},
///     "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
/// }"#;
/// let t: ImageTransform = serde_json::from_str(json).unwrap();
/// // Google's ViT AugReg eval: 224 / 0.9 -> 248, bicubic, crop 224, inception mean / std.
/// assert_eq!(t, ImageTransform::timm_eval(224, 0.9, Normalization::inception()));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageTransform {
    /// Gray (1 plane) or RGB (3 planes).
    pub channels: Channels,
    /// The resize step.
    pub resize: Option<ResizeTo>,
    /// The resampling filter of the resize step.
    pub interpolation: Interpolation,
    /// The centre crop.
    pub crop: Option<CropSize>,
    /// The per-channel normalisation.
    pub normalize: Option<Normalization>,
}

impl Default for ImageTransform {
    fn default() -> Self {
        ImageTransform::timm_eval(224, 0.875, Normalization::imagenet())
    }
}

impl ImageTransform {
    /// timm's `transforms_imagenet_eval` for square `img_size` inputs with the default centre crop
    /// mode: RGB, resize shorter side to `floor(img_size / crop_pct)` bicubic, centre crop
    /// `img_size`, then `normalization`. timm's default `crop_pct` is 0.875 (224 -> 256); Google's
    /// ViT AugReg checkpoints use 0.9 (224 -> 248) with [`Normalization::inception`].
    ///
    /// A `crop_pct` that is not in `(0, 1]` makes no sense; it is used as given (its size errors
    /// surface in [`ImageTransform::apply`]).
    pub fn timm_eval(img_size: usize, crop_pct: f64, normalization: Normalization) -> Self {
        let scale = (img_size as f64 / crop_pct).floor();
        let scale = if scale.is_finite() && scale >= 0.0 { scale as usize } else { 0 };
        ImageTransform {
            channels: Channels::Rgb,
            resize: Some(ResizeTo::ShorterSide(scale)),
            interpolation: Interpolation::Bicubic,
            crop: Some(CropSize { height: img_size, width: img_size }),
            normalize: Some(normalization),
        }
    }

    /// Runs the pipeline on a decoded image: `-> [C x crop.height x crop.width]`.
    ///
    /// Errors: those of each step ([`crate::Error::Image`] for an empty image, a zero resize size
    /// or a crop larger than the resized image; [`crate::Error::Shape`] / [`crate::Error::Invalid`]
    /// for a normalisation that does not match the channels or has a zero std).
    pub fn apply(&self, image: &DynamicImage) -> Result<ChwImage> {
        self.apply_chw(from_dynamic_image(image, self.channels)?)
    }

    /// Loads the file at `path` ([`load_image_with`], with its I/O and codec errors) and runs the
    /// pipeline on it.
    pub fn apply_path(&self, path: impl AsRef<Path>) -> Result<ChwImage> {
        let path = path.as_ref();
        // A step's image error names the file it came from.
        self.apply_chw(load_image_with(path, self.channels)?).map_err(|e| match e {
            crate::Error::Image { what, reason } => {
                crate::Error::Image { what: format!("{} ({what})", path.display()), reason }
            }
            other => other,
        })
    }

    /// Runs steps 2 to 4 on an image already in `[C x H x W]` (`channels` is not checked here:
    /// the normalisation must match `image`'s own channel count).
    pub fn apply_chw(&self, image: ChwImage) -> Result<ChwImage> {
        let mut img = match self.resize {
            None => image,
            Some(ResizeTo::ShorterSide(size)) => resize_shorter_side(&image, size, self.interpolation)?,
            Some(ResizeTo::Exact { height, width }) => resize_exact(&image, width, height, self.interpolation)?,
        };
        if self.resize.is_some() {
            img.clamp_in_place(0.0, 1.0);
        }
        if let Some(CropSize { height, width }) = self.crop {
            img = center_crop(&img, height, width)?;
        }
        if let Some(n) = &self.normalize {
            normalize_in_place(&mut img, &n.mean, &n.std)?;
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_timm_imagenet_eval() {
        let t = ImageTransform::default();
        assert_eq!(t.resize, Some(ResizeTo::ShorterSide(256)));
        assert_eq!(t.interpolation, Interpolation::Bicubic);
        assert_eq!(t.crop, Some(CropSize { height: 224, width: 224 }));
        assert_eq!(t.normalize, Some(Normalization::imagenet()));
        assert_eq!(t.channels, Channels::Rgb);
        // 224 / 0.9 = 248.9 -> 248.
        assert_eq!(
            ImageTransform::timm_eval(224, 0.9, Normalization::inception()).resize,
            Some(ResizeTo::ShorterSide(248))
        );
    }

    #[test]
    fn json_round_trip() {
        let t = ImageTransform {
            channels: Channels::Gray,
            resize: Some(ResizeTo::Exact { height: 32, width: 48 }),
            interpolation: Interpolation::Bilinear,
            crop: None,
            normalize: Some(Normalization { mean: vec![0.1307], std: vec![0.3081] }),
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<ImageTransform>(&s).unwrap(), t);
        assert_eq!(serde_json::from_str::<ImageTransform>("{}").unwrap(), ImageTransform::default());
    }

    #[test]
    fn bad_crop_pct_gives_an_error_not_a_panic() {
        let img = DynamicImage::new_rgb8(10, 10);
        for pct in [0.0, -1.0, f64::NAN] {
            assert!(ImageTransform::timm_eval(8, pct, Normalization::imagenet()).apply(&img).is_err());
        }
    }
}
