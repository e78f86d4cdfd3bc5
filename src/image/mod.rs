//! Images to patch nodes: decode, resize, crop, normalise, patchify.
//!
//! An image is a [`ChwImage`], f32 planes `[C x H x W]` row-major (PyTorch's layout).
//!
//! ```
//! use patchgraph::image::load_image;
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/images/chelsea.png");
//! let img = load_image(path).unwrap();
//! assert_eq!(img.shape(), (3, 300, 451));
//! ```

mod chw;
mod crop;
mod load;
mod normalize;
mod patchify;
mod resize;

pub use chw::ChwImage;
pub use crop::{center_crop, center_crop_offsets, crop, pad_zero};
pub use load::{Channels, from_dynamic_image, load_image, load_image_with, to_dynamic_image};
pub use normalize::{
    IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Normalization, denormalize,
    normalize, normalize_in_place,
};
pub use patchify::{PatchPolicy, patch_grid, patchify, patchify_with, unpatchify};
pub use resize::{Interpolation, resize_exact, resize_shorter_side, shorter_side_size};
