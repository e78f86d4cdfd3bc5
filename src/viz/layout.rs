//! [`PatchLayout`]: where a photo and its patch grid land on a picture's canvas.
//!
//! A photo of `H x W` pixels is shown scaled up by an integer factor `s` (each photo pixel a
//! `s x s` square, nearest neighbour) with its top-left corner at `origin`. The scale is the
//! caller's [`scale`](super::OverlayOptions::scale) when given, otherwise the smallest integer
//! that makes the longer side at least `min_side` pixels (448 by default), and never below 1:
//!
//! ```text
//! s = max(1, ceil(min_side / max(H, W)))        e.g. 28 x 28 digits: s = 16 (448 px); 224 x 224: s = 2
//! ```
//!
//! Patch `(r, c)` of a `rows x cols` grid of `ph x pw` patches covers the canvas pixels
//! `x in origin.x + c pw s .. origin.x + (c + 1) pw s` and likewise for `y`; its centre is the
//! middle of that range (rounded down). Node indices follow the crate's convention: patch
//! `(r, c)` is node `r * cols + c`, shifted by one when a class token is node 0.
//!
//! ```
//! use patchgraph::graph::{Graph, Neighbourhood};
//! use patchgraph::image::ChwImage;
//! use patchgraph::viz::{OverlayOptions, overlay_layout};
//! let digit = ChwImage::filled(1, 28, 28, 0.0).unwrap();
//! let layout = overlay_layout(&digit, 7, true, &OverlayOptions::default()).unwrap();
//! assert_eq!((layout.rows, layout.cols, layout.scale), (4, 4, 16));
//! // 8 px padding around, a 48 px strip above the photo for the class token.
//! assert_eq!(layout.origin, (8, 56));
//! assert_eq!(layout.size, (464, 512));
//! // Node 1 is patch (0, 0), a 112 x 112 square; node 0 is the token's marker.
//! assert_eq!(layout.patch_rect(0, 0), ((8, 56), (120, 168)));
//! assert_eq!(layout.node_centre(1), Some((64, 112)));
//! assert_eq!(layout.node_centre(0), layout.token);
//! assert_eq!(layout.node_centre(17), None);
//! ```

use ::image::RgbImage;

use crate::error::{Error, Result};
use crate::image::{ChwImage, to_dynamic_image};

/// Where a photo and its patch grid are drawn on a canvas (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchLayout {
    /// Patch rows.
    pub rows: usize,
    /// Patch columns.
    pub cols: usize,
    /// Patch height and width in photo pixels.
    pub patch: (usize, usize),
    /// Canvas pixels per photo pixel (each way).
    pub scale: u32,
    /// Canvas position of the photo's top-left pixel.
    pub origin: (i32, i32),
    /// Canvas width and height.
    pub size: (u32, u32),
    /// Centre of the class token's marker, when the picture has one (node 0).
    pub token: Option<(i32, i32)>,
}

impl PatchLayout {
    /// The canvas rectangle of patch `(row, col)`: `(top_left, bottom_right)`, the bottom-right
    /// corner exclusive.
    pub fn patch_rect(&self, row: usize, col: usize) -> ((i32, i32), (i32, i32)) {
        let (ph, pw) = (self.patch.0 as i64 * i64::from(self.scale), self.patch.1 as i64 * i64::from(self.scale));
        let x0 = i64::from(self.origin.0) + col as i64 * pw;
        let y0 = i64::from(self.origin.1) + row as i64 * ph;
        ((x0 as i32, y0 as i32), ((x0 + pw) as i32, (y0 + ph) as i32))
    }

    /// The canvas centre of patch `(row, col)`.
    pub fn patch_centre(&self, row: usize, col: usize) -> (i32, i32) {
        let ((x0, y0), (x1, y1)) = self.patch_rect(row, col);
        (x0 + (x1 - x0) / 2, y0 + (y1 - y0) / 2)
    }

    /// The photo's canvas rectangle `(top_left, bottom_right)`, bottom-right exclusive.
    pub fn photo_rect(&self) -> ((i32, i32), (i32, i32)) {
        let ((x0, y0), _) = self.patch_rect(self.rows, self.cols);
        (self.origin, (x0, y0))
    }

    /// The node of patch `(row, col)`: `row * cols + col`, plus one with a class token.
    pub fn node_of(&self, row: usize, col: usize) -> usize {
        row * self.cols + col + usize::from(self.token.is_some())
    }

    /// The patch `(row, col)` of `node`, or `None` for the class token or a node out of range.
    pub fn patch_of(&self, node: usize) -> Option<(usize, usize)> {
        let k = node.checked_sub(usize::from(self.token.is_some()))?;
        (k < self.rows * self.cols).then(|| (k / self.cols, k % self.cols))
    }

    /// Where `node` is drawn: its patch centre, or the token marker for node 0 with a class
    /// token; `None` for a node out of range.
    pub fn node_centre(&self, node: usize) -> Option<(i32, i32)> {
        if node == 0 && self.token.is_some() {
            return self.token;
        }
        self.patch_of(node).map(|(r, c)| self.patch_centre(r, c))
    }
}

/// The photo as 8-bit RGB: 1 channel is grey (replicated), 3 are RGB; values are clamped to
/// `[0, 1]` and scaled by 255 ([`to_dynamic_image`]'s rounding; NaN shows as 0). Errors
/// ([`Error::Image`]) for any other channel count.
pub(crate) fn photo_rgb(image: &ChwImage) -> Result<RgbImage> {
    Ok(to_dynamic_image(image)?.to_rgb8())
}

/// The photo scale: `scale` if given (must be at least 1), else
/// `max(1, ceil(min_side / max(height, width)))`.
pub(crate) fn choose_scale(height: usize, width: usize, scale: Option<u32>, min_side: u32) -> Result<u32> {
    match scale {
        Some(0) => Err(Error::invalid("scale", "must be at least 1 (canvas pixels per photo pixel)")),
        Some(s) => Ok(s),
        None => {
            let longer = height.max(width).max(1);
            Ok(u32::try_from((min_side as usize).div_ceil(longer)).unwrap_or(u32::MAX).max(1))
        }
    }
}

/// `photo_pixels * scale + extra`, or an error if it overflows a canvas side.
pub(crate) fn canvas_side(what: &str, photo_pixels: usize, scale: u32, extra: u32) -> Result<u32> {
    (photo_pixels as u64)
        .checked_mul(u64::from(scale))
        .and_then(|v| v.checked_add(u64::from(extra)))
        .filter(|&v| v <= u64::from(super::output::MAX_SIDE))
        .map(|v| v as u32)
        .ok_or_else(|| {
            Error::invalid(
                "picture size",
                format!("{what}: {photo_pixels} px x scale {scale} + {extra} exceeds {} px", super::output::MAX_SIDE),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_makes_the_longer_side_reach_min_side() {
        assert_eq!(choose_scale(28, 28, None, 448).unwrap(), 16);
        assert_eq!(choose_scale(224, 224, None, 448).unwrap(), 2);
        assert_eq!(choose_scale(300, 451, None, 448).unwrap(), 1);
        assert_eq!(choose_scale(30, 20, None, 448).unwrap(), 15); // 450 >= 448
        assert_eq!(choose_scale(28, 28, Some(3), 448).unwrap(), 3);
        assert!(choose_scale(28, 28, Some(0), 448).is_err());
        assert_eq!(choose_scale(28, 28, None, 0).unwrap(), 1);
    }

    #[test]
    fn canvas_side_rejects_huge_pictures() {
        assert_eq!(canvas_side("w", 28, 16, 16).unwrap(), 464);
        assert!(canvas_side("w", 10_000, 2, 0).is_err());
        assert!(canvas_side("w", usize::MAX, u32::MAX, 0).is_err());
    }
}
