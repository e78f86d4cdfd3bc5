//! Images to patch nodes: decode, resize, crop, normalise, patchify.
//!
//! An image is a [`ChwImage`], f32 planes `[C x H x W]` row-major (PyTorch's layout). The steps
//! of timm's eval preprocessing are here one function each, and [`ImageTransform`] chains them:
//!
//! - [`load_image`] / [`from_dynamic_image`]: any format of the `image` crate to `[3 x H x W]` (or
//!   `[1 x H x W]` with [`Channels::Gray`]) in `[0, 1]`;
//! - [`resize_shorter_side`] / [`resize_exact`]: Pillow's antialiased bilinear / bicubic
//!   resampling, implemented on f32 planes (see the `resize` docs for why and how);
//! - [`center_crop`]: torchvision's `CenterCrop` offsets;
//! - [`normalize`]: `(x - mean[c]) / std[c]` with [`IMAGENET_MEAN`] / [`IMAGENET_STD`] or the
//!   inception `0.5` constants;
//! - [`patchify`]: `[C x H x W] -> [N x C * P * P]`, `N = (H / P) * (W / P)` patch nodes in
//!   row-major grid order, each row flattened like a conv weight `[C, P, P]`, so that timm's
//!   `patch_embed.proj` (a stride-`P` conv) is `patches x W^T + b` with
//!   `W = weight.reshape(D, -1)`; [`unpatchify`] goes back.
//!
//! Nothing here panics on user input: empty images, undecodable files, crops larger than the
//! image, sizes that are not a multiple of the patch size and zero std are typed
//! [`crate::Error`]s.
//!
//! ```
//! use patchgraph::image::{ImageTransform, patchify, patch_grid};
//! // timm's ImageNet eval transform on the bundled cat photo (451 x 300):
//! // resize shorter side to 256 (bicubic), centre crop 224, ImageNet mean / std.
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/images/chelsea.png");
//! let img = ImageTransform::default().apply_path(path).unwrap();
//! assert_eq!(img.shape(), (3, 224, 224));
//!
//! // 16 x 16 patches: a 14 x 14 grid of 196 nodes with 3 * 16 * 16 = 768 features each.
//! let nodes = patchify(&img, 16).unwrap();
//! assert_eq!(patch_grid(224, 224, 16).unwrap(), (14, 14));
//! assert_eq!(nodes.shape(), (196, 768));
//! // Node 15 is patch (row 1, column 1); its first feature is channel 0 at pixel (16, 16).
//! assert_eq!(nodes.get(15, 0), img.get(0, 16, 16));
//! ```

mod chw;
mod crop;
mod load;
mod normalize;
mod patchify;
mod resize;
mod transform;

pub use chw::ChwImage;
pub use crop::{center_crop, center_crop_offsets, crop, pad_zero};
pub use load::{Channels, from_dynamic_image, load_image, load_image_with, to_dynamic_image};
pub use normalize::{
    IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Normalization, denormalize, normalize,
    normalize_in_place,
};
pub use patchify::{PatchPolicy, patch_grid, patchify, patchify_rect, patchify_with, unpatchify};
pub use resize::{Interpolation, resize_exact, resize_shorter_side, shorter_side_size};
pub use transform::{CropSize, ImageTransform, ResizeTo};
