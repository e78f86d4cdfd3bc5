//! Cropping and zero-padding: [`crop`], [`center_crop`] (torchvision's `CenterCrop`), [`pad_zero`].

use super::chw::{ChwImage, checked_len};
use crate::error::{Error, Result};

/// Cuts the window of `height x width` pixels whose top-left pixel is `(top, left)` out of every
/// channel: `[C x H x W] -> [C x height x width]`.
///
/// Errors ([`Error::Image`]) if the window is empty or does not fit inside the image.
pub fn crop(image: &ChwImage, top: usize, left: usize, height: usize, width: usize) -> Result<ChwImage> {
    let (c, h, w) = image.shape();
    checked_len("crop window", c, height, width)?;
    let fits = top.checked_add(height).is_some_and(|b| b <= h) && left.checked_add(width).is_some_and(|r| r <= w);
    if !fits {
        return Err(Error::Image {
            what: "crop".into(),
            reason: format!(
                "window of {height} x {width} at (top {top}, left {left}) \
                 does not fit in a {h} x {w} image"
            ),
        });
    }
    let mut data = Vec::with_capacity(c * height * width);
    for ch in 0..c {
        for y in top..top + height {
            data.extend_from_slice(&image.row(ch, y)[left..left + width]);
        }
    }
    ChwImage::new(c, height, width, data)
}

/// `(top, left)` of the centred `crop_h x crop_w` window in an `h x w` image, as torchvision's
/// `CenterCrop` computes it: `round((h - crop_h) / 2)` with Python's round half to even. So an odd
/// margin of `2k + 1` pixels puts `k` or `k + 1` above, whichever is even (margin 1 -> 0,
/// margin 3 -> 2, margin 5 -> 2).
///
/// Errors ([`Error::Image`]) if the crop is larger than the image in either dimension or empty.
pub fn center_crop_offsets(h: usize, w: usize, crop_h: usize, crop_w: usize) -> Result<(usize, usize)> {
    if crop_h == 0 || crop_w == 0 || crop_h > h || crop_w > w {
        return Err(Error::Image {
            what: "center_crop".into(),
            reason: format!("cannot take a {crop_h} x {crop_w} centre crop of a {h} x {w} image"),
        });
    }
    Ok((half_round_even(h - crop_h), half_round_even(w - crop_w)))
}

/// `round(margin / 2)` with ties to even, as Python's `round`.
fn half_round_even(margin: usize) -> usize {
    let k = margin / 2;
    if margin % 2 == 1 && k % 2 == 1 { k + 1 } else { k }
}

/// Cuts the centred `height x width` window (note the order: height first, as torchvision's
/// `CenterCrop((h, w))`): `[C x H x W] -> [C x height x width]`, offsets from
/// [`center_crop_offsets`].
///
/// Errors ([`Error::Image`]) if the crop is larger than the image (torchvision would pad; we
/// refuse) or empty.
///
/// ```
/// use patchgraph::image::{ChwImage, center_crop};
/// // A 1 x 4 x 4 image holding 0..16; its centre 2 x 2 is rows 1..3, columns 1..3.
/// let img = ChwImage::from_fn(1, 4, 4, |_, y, x| (4 * y + x) as f32).unwrap();
/// let c = center_crop(&img, 2, 2).unwrap();
/// assert_eq!(c.as_slice(), &[5., 6., 9., 10.]);
/// assert!(center_crop(&img, 5, 2).is_err());
/// ```
pub fn center_crop(image: &ChwImage, height: usize, width: usize) -> Result<ChwImage> {
    let (top, left) = center_crop_offsets(image.height(), image.width(), height, width)?;
    crop(image, top, left, height, width)
}

/// Pads with zeros at the bottom and on the right up to `height x width`:
/// `[C x H x W] -> [C x height x width]`, the original in the top-left corner.
///
/// Errors ([`Error::Image`]) if the target is smaller than the image.
pub fn pad_zero(image: &ChwImage, height: usize, width: usize) -> Result<ChwImage> {
    let (c, h, w) = image.shape();
    if height < h || width < w {
        return Err(Error::Image {
            what: "pad_zero".into(),
            reason: format!("cannot pad a {h} x {w} image to the smaller {height} x {width}"),
        });
    }
    crate::limits::check_image_size("pad_zero target", height, width)?;
    let len = checked_len("pad_zero target", c, height, width)?;
    let mut data = vec![0.0; len];
    for ch in 0..c {
        for y in 0..h {
            let start = (ch * height + y) * width;
            data[start..start + w].copy_from_slice(image.row(ch, y));
        }
    }
    ChwImage::new(c, height, width, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_matches_python() {
        // Python: round(0/2) = 0, round(1/2) = 0, round(2/2) = 1, round(3/2) = 2,
        // round(5/2) = 2, round(7/2) = 4.
        let want = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (7, 4), (9, 4)];
        for (m, r) in want {
            assert_eq!(half_round_even(m), r, "margin {m}");
        }
    }

    #[test]
    fn pad_puts_zeros_bottom_right() {
        let img = ChwImage::new(1, 1, 2, vec![1., 2.]).unwrap();
        let p = pad_zero(&img, 2, 3).unwrap();
        assert_eq!(p.as_slice(), &[1., 2., 0., 0., 0., 0.]);
        assert!(pad_zero(&img, 1, 1).is_err());
    }

    #[test]
    fn crop_out_of_bounds_is_an_error() {
        let img = ChwImage::filled(2, 3, 3, 1.0).unwrap();
        assert!(crop(&img, 2, 0, 2, 1).is_err());
        assert!(crop(&img, usize::MAX, 0, 2, 1).is_err());
        assert!(crop(&img, 0, 0, 0, 1).is_err());
        assert_eq!(crop(&img, 1, 1, 2, 2).unwrap().shape(), (2, 2, 2));
    }
}
