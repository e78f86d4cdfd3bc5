//! The documented limits on sizes that come from files and flags.
//!
//! Every size read from a file (a checkpoint's tensor shapes, an image's width and height, an
//! IDX header, an optimiser state's slot count) or given on the command line (`--img-size`,
//! `--size`, `--crop-pct`) is checked against what it implies *before* anything of that size is
//! allocated, and reported as a typed [`Error`] naming the input. These are the limits; each
//! is far above any real model or photo and far below what would abort the process.
//!
//! | limit | value | what it bounds |
//! |---|---|---|
//! | [`MAX_IMAGE_SIDE`] | 65,536 px | one side of a decoded, resized or cropped image |
//! | [`MAX_IMAGE_PIXELS`] | 2^27 (134 M) | `H x W` of a decoded, resized or cropped image (1.5 GiB as f32 RGB) |
//! | [`MAX_TOKENS`] | 2^20 (1 M) | tokens (patches plus prefix tokens) of one image in a model |
//! | [`MAX_TENSOR_ELEMENTS`] | 2^30 (4 GiB of f32) | one tensor implied by a config or read from a file |
//! | [`MAX_PARAMETERS`] | 2^32 (16 GiB of f32) | all parameters of a model implied by a config (ViT-G/14 has 1.8 G) |
//! | [`MAX_EDGES`] | 2^31 | edges of one graph (8 GiB of `u32` sources) |
//!
//! ```
//! use patchgraph::limits::{check_elements, MAX_TENSOR_ELEMENTS};
//! assert!(check_elements("pos_embed", &[1, 197, 768]).is_ok());
//! let err = check_elements("pos_embed", &[1, 1 << 20, 1 << 12]).unwrap_err();
//! assert!(err.to_string().contains("pos_embed"));
//! assert!(check_elements("overflow", &[usize::MAX, 2]).is_err()); // no overflow either
//! # let _ = MAX_TENSOR_ELEMENTS;
//! ```

use crate::error::{Error, Result};

/// The longest side, in pixels, of an image that is decoded, resized or cropped.
pub const MAX_IMAGE_SIDE: usize = 1 << 16;

/// The most pixels (`H x W`) of an image that is decoded, resized or cropped.
pub const MAX_IMAGE_PIXELS: usize = 1 << 27;

/// The most tokens of one image in a model (`grid^2` patches plus the prefix tokens).
pub const MAX_TOKENS: usize = 1 << 20;

/// The most elements of one tensor implied by a config or read from a file.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 30;

/// The most parameters of one model implied by a config.
pub const MAX_PARAMETERS: usize = 1 << 32;

/// The most edges of one graph.
pub const MAX_EDGES: usize = 1 << 31;

/// The product of `shape`, or an [`Error::Invalid`] naming `what` if it overflows or exceeds
/// [`MAX_TENSOR_ELEMENTS`].
pub fn check_elements(what: &str, shape: &[usize]) -> Result<usize> {
    let product = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match product {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(n),
        _ => Err(Error::invalid(
            what,
            format!(
                "shape {shape:?} holds {} elements, more than the limit of {MAX_TENSOR_ELEMENTS} (2^30) per tensor",
                count_text(product)
            ),
        )),
    }
}

/// The edge count `edges` (`None` when computing it overflowed), or an [`Error::Invalid`]
/// naming `what` if it overflowed or exceeds [`MAX_EDGES`]. Graph builders call it with the
/// count (or a bound on it) before allocating any edge.
pub fn check_edges(what: &str, edges: Option<usize>) -> Result<usize> {
    match edges {
        Some(e) if e <= MAX_EDGES => Ok(e),
        _ => Err(Error::invalid(
            what,
            format!("{} edges, more than the limit of {MAX_EDGES} (2^31) per graph", count_text(edges)),
        )),
    }
}

/// A count for an error message; `None` is a count that overflowed.
fn count_text(count: Option<usize>) -> String {
    count.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
}

/// Checks an image size `height x width` (in pixels) against [`MAX_IMAGE_SIDE`] and
/// [`MAX_IMAGE_PIXELS`]; `what` names the image and the step (decoded, resized, cropped).
pub fn check_image_size(what: &str, height: usize, width: usize) -> Result<()> {
    let pixels = height.checked_mul(width);
    if height > MAX_IMAGE_SIDE || width > MAX_IMAGE_SIDE || pixels.is_none_or(|p| p > MAX_IMAGE_PIXELS) {
        return Err(Error::Image {
            what: what.to_string(),
            reason: format!(
                "{height} x {width} pixels is beyond the limits of {MAX_IMAGE_SIDE} px per side and {MAX_IMAGE_PIXELS} (2^27) pixels"
            ),
        });
    }
    Ok(())
}

/// The sizes of a patch model (a GAT on patches, a ViG) that a config implies, checked against
/// these limits with no overflow: the image (`C x H x W`), the tokens (`(H / P) (W / P)`), a
/// block's largest weight (`block_d2 x D^2`, e.g. 4 for ViG's `[2D x 2D]`), the head
/// (`classes x D`) and all `depth` blocks together. `what` names the model in errors.
pub fn check_patch_model(
    what: &str,
    (c, h, w): (usize, usize, usize),
    patch: usize,
    dim: usize,
    depth: usize,
    block_d2: usize,
    classes: usize,
) -> Result<()> {
    check_image_size(&format!("{what} input"), h, w)?;
    check_elements(&format!("{what} input image"), &[c, h, w])?;
    if patch == 0 {
        return Err(Error::invalid(what, "patch must be at least 1"));
    }
    let tokens = (h / patch).checked_mul(w / patch);
    if tokens.is_none_or(|t| t > MAX_TOKENS) {
        return Err(Error::invalid(
            what,
            format!("{h} x {w} in patches of {patch} is more than the limit of {MAX_TOKENS} (2^20) tokens"),
        ));
    }
    check_elements(&format!("{what} block weight"), &[block_d2, dim, dim])?;
    check_elements(&format!("{what} head"), &[classes, dim])?;
    check_elements(&format!("{what} patch embedding"), &[dim, c, patch, patch])?;
    let total = (block_d2 + 2).checked_mul(dim * dim).and_then(|b| b.checked_mul(depth));
    if total.is_none_or(|t| t > MAX_PARAMETERS) {
        return Err(Error::invalid(
            what,
            format!("{depth} layers of width {dim} hold more than the limit of {MAX_PARAMETERS} (2^32) parameters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds hold exactly at the limit and fail one past it, overflow included.
    #[test]
    fn limits_are_inclusive_and_overflow_safe() {
        assert_eq!(check_elements("t", &[1 << 15, 1 << 15]).unwrap(), MAX_TENSOR_ELEMENTS);
        assert!(check_elements("t", &[(1 << 30) + 1]).is_err());
        assert!(check_elements("t", &[1 << 40, 1 << 40]).is_err());
        assert_eq!(check_elements("t", &[]).unwrap(), 1);
        assert_eq!(check_elements("t", &[0, usize::MAX]).unwrap(), 0);
        assert!(check_image_size("i", 1 << 16, 1 << 11).is_ok());
        assert!(check_image_size("i", (1 << 16) + 1, 1).is_err());
        assert!(check_image_size("i", 1 << 16, (1 << 11) + 1).is_err());
        assert!(check_image_size("i", usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn patch_models_are_bounded() {
        assert!(check_patch_model("m", (1, 28, 28), 7, 64, 4, 4, 10).is_ok());
        assert!(check_patch_model("m", (1, 28, 28), 0, 64, 4, 4, 10).is_err());
        assert!(check_patch_model("m", (1, 1 << 20, 28), 7, 64, 4, 4, 10).is_err());
        assert!(check_patch_model("m", (1, 28, 28), 7, 1 << 20, 4, 4, 10).is_err());
        assert!(check_patch_model("m", (1, 28, 28), 7, 64, 1 << 40, 4, 10).is_err());
        assert!(check_patch_model("m", (1, 28, 28), 7, 64, 4, 4, usize::MAX).is_err());
        assert!(check_patch_model("m", (usize::MAX, 28, 28), 7, 64, 4, 4, 10).is_err());
    }
}
