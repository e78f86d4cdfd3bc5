//! Cutting an image into non-overlapping `P x P` patches, one matrix row per patch (the nodes of
//! the patch graph), and putting the patches back together.
//!
//! Row and column order are chosen so that timm's patch embedding, a `Conv2d(C, D, kernel = P,
//! stride = P)` with weight `[D, C, P, P]`, becomes a linear layer on the rows:
//!
//! ```text
//! patches[r * gw + c, ch * P * P + dy * P + dx] = image[ch, r * P + dy, c * P + dx]
//! conv2d(image, weight, stride = P)[d, r, c]    = patches.row(r * gw + c) . weight[d].flatten()
//! ```
//!
//! so `patches x weight.reshape(D, C * P * P)^T + bias` is timm's `x.flatten(2).transpose(1, 2)`
//! after `proj`: tokens in row-major patch-grid order.

use serde::{Deserialize, Serialize};

use super::chw::{ChwImage, checked_len};
use super::crop::{center_crop, pad_zero};
use crate::error::{Error, Result};
use crate::tensor::Matrix;

/// What [`patchify_with`] does when the image height or width is not a multiple of the patch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchPolicy {
    /// Refuse: an [`Error::Image`] (the default; a ViT's input size is a multiple of `P`).
    #[default]
    Exact,
    /// Keep the centred `floor(H / P) * P x floor(W / P) * P` window (offsets as
    /// [`super::center_crop`]), dropping the margin pixels.
    CropCentre,
    /// Pad with zeros at the bottom and on the right to `ceil(H / P) * P x ceil(W / P) * P`.
    /// A zero after normalisation is the mean colour; before it, black.
    PadZero,
}

impl PatchPolicy {
    /// The patch grid `(gh, gw)` that this policy gives an `h x w` image with `p x p` patches:
    /// `(h / p, w / p)` exactly, rounded down ([`PatchPolicy::CropCentre`]) or rounded up
    /// ([`PatchPolicy::PadZero`]).
    ///
    /// Errors ([`Error::Invalid`]) if `p == 0`; ([`Error::Image`]) if the image is empty or smaller
    /// than one patch in either dimension (whatever the policy: resize it first), or, with
    /// [`PatchPolicy::Exact`], if `h` or `w` is not a multiple of `p`.
    pub fn grid(self, h: usize, w: usize, p: usize) -> Result<(usize, usize)> {
        if p == 0 {
            return Err(Error::invalid("patch size", "must be at least 1"));
        }
        if h == 0 || w == 0 || h < p || w < p {
            return Err(Error::Image {
                what: "patchify".into(),
                reason: format!("a {h} x {w} image is smaller than one {p} x {p} patch"),
            });
        }
        match self {
            PatchPolicy::Exact if h % p != 0 || w % p != 0 => Err(Error::Image {
                what: "patchify".into(),
                reason: format!(
                    "{h} x {w} is not a multiple of the patch size {p} \
                     (resize, or choose PatchPolicy::CropCentre or PadZero)"
                ),
            }),
            PatchPolicy::Exact | PatchPolicy::CropCentre => Ok((h / p, w / p)),
            PatchPolicy::PadZero => Ok((h.div_ceil(p), w.div_ceil(p))),
        }
    }
}

/// The patch grid `(gh, gw) = (h / p, w / p)` of an `h x w` image with `p x p` patches, which must
/// divide it exactly (see [`PatchPolicy::grid`] for the other policies and the errors).
///
/// ```
/// assert_eq!(patchgraph::image::patch_grid(224, 160, 16).unwrap(), (14, 10));
/// assert!(patchgraph::image::patch_grid(224, 150, 16).is_err());
/// ```
pub fn patch_grid(h: usize, w: usize, p: usize) -> Result<(usize, usize)> {
    PatchPolicy::Exact.grid(h, w, p)
}

/// Cuts `image` `[C x H x W]` into `p x p` patches: `[gh * gw x C * p * p]` with
/// `(gh, gw) = (H / p, W / p)`; row `r * gw + c` is patch `(r, c)`, flattened channel-major as a
/// conv weight `[C, p, p]` (see the module docs). `H` and `W` must be multiples of `p`.
///
/// Errors as [`PatchPolicy::grid`] with [`PatchPolicy::Exact`].
pub fn patchify(image: &ChwImage, p: usize) -> Result<Matrix> {
    patchify_with(image, p, PatchPolicy::Exact)
}

/// [`patchify`], first cropping or padding the image to a multiple of `p` as `policy` says.
/// The grid is [`PatchPolicy::grid`]`(H, W, p)`.
///
/// ```
/// use patchgraph::image::{ChwImage, PatchPolicy, patchify_with};
/// let img = ChwImage::filled(3, 30, 47, 1.0).unwrap();
/// assert!(patchify_with(&img, 16, PatchPolicy::Exact).is_err());
/// // Grid 1 x 2 when cropping (30 x 47 -> 16 x 32), 2 x 3 when padding (-> 32 x 48).
/// assert_eq!(patchify_with(&img, 16, PatchPolicy::CropCentre).unwrap().shape(), (2, 768));
/// assert_eq!(patchify_with(&img, 16, PatchPolicy::PadZero).unwrap().shape(), (6, 768));
/// ```
pub fn patchify_with(image: &ChwImage, p: usize, policy: PatchPolicy) -> Result<Matrix> {
    let (_, h, w) = image.shape();
    let (gh, gw) = policy.grid(h, w, p)?;
    let (th, tw) = (gh * p, gw * p);
    if (th, tw) == (h, w) {
        return Ok(patchify_exact(image, (p, p), gh, gw));
    }
    let fitted = match policy {
        PatchPolicy::PadZero => pad_zero(image, th, tw)?,
        _ => center_crop(image, th, tw)?,
    };
    Ok(patchify_exact(&fitted, (p, p), gh, gw))
}

/// [`patchify`] with rectangular `ph x pw` patches (timm's `patch_size=(ph, pw)`): row
/// `r * gw + c` holds patch `(r, c)` in the conv order `k * ph * pw + dy * pw + dx`. The image
/// must be exactly a multiple of the patch in both sides.
///
/// ```
/// use patchgraph::image::{ChwImage, patchify_rect};
/// let img = ChwImage::from_fn(1, 4, 6, |_, y, x| (y * 6 + x) as f32).unwrap();
/// let p = patchify_rect(&img, 2, 3).unwrap(); // a 2 x 2 grid of 2 x 3 patches
/// assert_eq!(p.shape(), (4, 6));
/// assert_eq!(p.row(1), &[3.0, 4.0, 5.0, 9.0, 10.0, 11.0]);
/// assert!(patchify_rect(&img, 3, 3).is_err()); // 4 rows are not a multiple of 3
/// ```
pub fn patchify_rect(image: &ChwImage, ph: usize, pw: usize) -> Result<Matrix> {
    let (_, h, w) = image.shape();
    if ph == 0 || pw == 0 || h % ph != 0 || w % pw != 0 || h == 0 || w == 0 {
        return Err(crate::error::Error::shape(
            "patchify",
            format!("an image whose sides are positive multiples of the patch {ph} x {pw}"),
            format!("{h} x {w}"),
        ));
    }
    Ok(patchify_exact(image, (ph, pw), h / ph, w / pw))
}

/// Patchify an image whose size is exactly `(gh * ph, gw * pw)`.
fn patchify_exact(image: &ChwImage, (ph, pw): (usize, usize), gh: usize, gw: usize) -> Matrix {
    let ch = image.channels();
    let cols = ch * ph * pw;
    let mut out = Matrix::zeros(gh * gw, cols);
    for r in 0..gh {
        for c in 0..gw {
            let row = out.row_mut(r * gw + c);
            for k in 0..ch {
                for dy in 0..ph {
                    let src = &image.row(k, r * ph + dy)[c * pw..(c + 1) * pw];
                    row[k * ph * pw + dy * pw..k * ph * pw + (dy + 1) * pw].copy_from_slice(src);
                }
            }
        }
    }
    out
}

/// The inverse of [`patchify`]: `[gh * gw x C * p * p]` back to `[C x gh * p x gw * p]`.
///
/// Errors: [`Error::Invalid`] if `channels`, `p`, `gh` or `gw` is zero, [`Error::Shape`] if
/// `patches` is not `[gh * gw x channels * p * p]`.
///
/// ```
/// use patchgraph::image::{ChwImage, patchify, unpatchify};
/// let img = ChwImage::from_fn(3, 8, 12, |c, y, x| (c * 100 + y * 12 + x) as f32).unwrap();
/// let patches = patchify(&img, 4).unwrap(); // [2 * 3 x 3 * 16]
/// assert_eq!(unpatchify(&patches, 3, 4, 2, 3).unwrap(), img);
/// ```
pub fn unpatchify(patches: &Matrix, channels: usize, p: usize, gh: usize, gw: usize) -> Result<ChwImage> {
    if channels == 0 || p == 0 || gh == 0 || gw == 0 {
        return Err(Error::invalid(
            "unpatchify arguments",
            format!("channels {channels}, patch size {p} and grid {gh} x {gw} must all be at least 1"),
        ));
    }
    let (h, w) = (gh.checked_mul(p), gw.checked_mul(p));
    let (Some(h), Some(w)) = (h, w) else {
        return Err(Error::invalid("unpatchify grid", format!("{gh} x {gw} patches of {p} overflow")));
    };
    let len = checked_len("unpatchify", channels, h, w)?;
    patches.expect_shape("patches", gh * gw, channels * p * p)?;
    let mut data = vec![0.0f32; len];
    for r in 0..gh {
        for c in 0..gw {
            let row = patches.row(r * gw + c);
            for k in 0..channels {
                for dy in 0..p {
                    let dst = (k * h + r * p + dy) * w + c * p;
                    data[dst..dst + p].copy_from_slice(&row[k * p * p + dy * p..k * p * p + (dy + 1) * p]);
                }
            }
        }
    }
    ChwImage::new(channels, h, w, data)
}
