//! `PatchEmbed`: the ViT stem for the graph models: every `P x P x C` patch of an image is a
//! node, embedded by a linear layer, plus a learned position embedding per patch.
//!
//! ```text
//! images   [B x C x H x W]
//! patches  [B*N x C*P*P]          N = (H/P)(W/P) patches per image, rows in timm's conv order
//! x        [B*N x D] = patches W^T + b + pos[r]       r = the patch's index in its image
//! ```
//!
//! Backward (`PatchEmbed::backward`): `dW, db` from the linear layer's backward on `dx`, and
//! `dpos[r] = sum_i dx[i*N + r]`.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Init, PatchEmbed};
//! let stem = PatchEmbed::new(&mut Init::new(0), (1, 28, 28), 7, 16, false).unwrap();
//! let image = ChwImage::from_fn(1, 28, 28, |_, y, x| (y * x) as f32 / 784.0).unwrap();
//! let patches = stem.patches(&[image.clone(), image]).unwrap();
//! assert_eq!(patches.shape(), (2 * 16, 49));
//! let x = stem.forward(&patches, 2).unwrap();
//! assert_eq!(x.shape(), (32, 16));
//! assert_eq!(x.row(3), x.row(16 + 3)); // same image, same patch, same node features
//! ```

use super::{Init, Linear, LinearGrads};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result, ensure_finite};
use crate::image::{ChwImage, patchify};
use crate::tensor::Matrix;

/// Patch embedding with a learned absolute position embedding (no class token).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchEmbed {
    /// The `[D, C, P, P]` conv as a linear layer `[D x C*P*P]`.
    pub proj: Linear,
    /// `[N x D]`.
    pub pos_embed: Matrix,
    /// `(C, H, W)` of the input images.
    pub image: (usize, usize, usize),
    /// Patch side `P`.
    pub patch: usize,
}

/// Gradients of a [`PatchEmbed`].
#[derive(Clone, Debug, PartialEq)]
pub struct PatchEmbedGrads {
    /// Of `proj`.
    pub proj: LinearGrads,
    /// Of `pos_embed` `[N x D]`.
    pub pos_embed: Matrix,
}

impl PatchEmbed {
    /// A stem for `(C, H, W)` images, patch `P`, width `D`: Glorot weights (`glorot`) or
    /// PyTorch's default conv init, zero bias; position embedding trunc-normal(0.02).
    pub fn new(init: &mut Init, image: (usize, usize, usize), patch: usize, dim: usize, glorot: bool) -> Result<Self> {
        let (c, h, w) = image;
        if patch == 0 || c == 0 || h % patch != 0 || w % patch != 0 || h == 0 || w == 0 || dim == 0 {
            return Err(Error::invalid(
                "patch embedding",
                format!("a {c} x {h} x {w} image does not split into {patch} x {patch} patches of width {dim}"),
            ));
        }
        let cpp = c * patch * patch;
        let mut proj =
            if glorot { Linear::glorot_init(init, cpp, dim, true) } else { Linear::torch_init(init, cpp, dim, true) };
        proj.bias = Some(vec![0.0; dim]);
        let n = (h / patch) * (w / patch);
        let pos_embed = Matrix::from_vec(n, dim, init.trunc_normal(n * dim, 0.02))?;
        Ok(PatchEmbed { proj, pos_embed, image, patch })
    }

    /// Loads `{prefix}proj.weight [D, C, P, P]`, `{prefix}proj.bias [D]`, `{prefix}pos_embed [1, N, D]`.
    pub fn load(
        map: &mut TensorMap,
        prefix: &str,
        image: (usize, usize, usize),
        patch: usize,
        dim: usize,
    ) -> Result<Self> {
        let mut stem = PatchEmbed::new(&mut Init::new(0), image, patch, dim, false)?;
        let (c, n) = (image.0, stem.num_patches());
        let w = map.take(&format!("{prefix}proj.weight"), &[dim, c, patch, patch])?;
        stem.proj = Linear::from_parts(
            Matrix::from_vec(dim, c * patch * patch, w)?,
            Some(map.take(&format!("{prefix}proj.bias"), &[dim])?),
        )?;
        stem.pos_embed = Matrix::from_vec(n, dim, map.take(&format!("{prefix}pos_embed"), &[1, n, dim])?)?;
        Ok(stem)
    }

    /// Writes the tensors [`PatchEmbed::load`] reads.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        let (d, c, p) = (self.dim(), self.image.0, self.patch);
        map.insert(format!("{prefix}proj.weight"), vec![d, c, p, p], self.proj.weight.as_slice().to_vec())?;
        if let Some(b) = &self.proj.bias {
            map.insert(format!("{prefix}proj.bias"), vec![d], b.clone())?;
        }
        map.insert(format!("{prefix}pos_embed"), vec![1, self.num_patches(), d], self.pos_embed.as_slice().to_vec())
    }

    /// Width `D`.
    pub fn dim(&self) -> usize {
        self.proj.out_dim()
    }

    /// `(rows, cols)` of the patch grid.
    pub fn grid(&self) -> (usize, usize) {
        (self.image.1 / self.patch, self.image.2 / self.patch)
    }

    /// Patches per image `N`.
    pub fn num_patches(&self) -> usize {
        let (r, c) = self.grid();
        r * c
    }

    /// The patch rows of every image `[B*N x C*P*P]`, each image checked for shape and finiteness.
    pub fn patches(&self, images: &[ChwImage]) -> Result<Matrix> {
        if images.is_empty() {
            return Err(Error::invalid("model input", "no images"));
        }
        let (n, cpp) = (self.num_patches(), self.proj.in_dim());
        let mut patches = Matrix::zeros(images.len() * n, cpp);
        for (i, image) in images.iter().enumerate() {
            if image.shape() != self.image {
                return Err(Error::shape(
                    format!("model input image {i}"),
                    format!("{:?} (C, H, W)", self.image),
                    format!("{:?}", image.shape()),
                ));
            }
            ensure_finite(&format!("model input image {i}"), image.as_slice())?;
            let p = patchify(image, self.patch)?;
            patches.as_mut_slice()[i * n * cpp..(i + 1) * n * cpp].copy_from_slice(p.as_slice());
        }
        Ok(patches)
    }

    /// Node features `[B*N x D]` from patch rows `[B*N x C*P*P]`.
    pub fn forward(&self, patches: &Matrix, batch: usize) -> Result<Matrix> {
        let n = self.num_patches();
        patches.expect_shape("patch rows", batch * n, self.proj.in_dim())?;
        let mut x = self.proj.forward(patches)?; // x = patches W^T + b
        for i in 0..batch {
            for r in 0..n {
                for (v, p) in x.row_mut(i * n + r).iter_mut().zip(self.pos_embed.row(r)) {
                    *v += p; // x[i*N + r] += pos[r]
                }
            }
        }
        Ok(x)
    }

    /// Backward of [`PatchEmbed::forward`] (the input patches are data: no gradient returned).
    pub fn backward(&self, patches: &Matrix, dx: &Matrix, grads: &mut PatchEmbedGrads) -> Result<()> {
        let n = self.num_patches();
        dx.expect_shape("patch embedding dx", patches.rows(), self.dim())?;
        for row in 0..dx.rows() {
            // x[i*N + r] += pos[r]
            for (g, v) in grads.pos_embed.row_mut(row % n).iter_mut().zip(dx.row(row)) {
                *g += v;
            }
        }
        self.proj.backward(patches, dx, &mut grads.proj)?; // x = patches W^T + b
        Ok(())
    }

    /// Zero gradients.
    pub fn zero_grads(&self) -> PatchEmbedGrads {
        PatchEmbedGrads {
            proj: LinearGrads::zeros(&self.proj),
            pos_embed: Matrix::zeros(self.pos_embed.rows(), self.pos_embed.cols()),
        }
    }

    /// `f(slot, parameter, gradient, decay)` for slots `base` (weight, decayed), `base + 1`
    /// (bias), `base + 2` (position embedding); returns the next free slot.
    pub fn visit_params(&mut self, grads: &PatchEmbedGrads, base: usize, f: &mut super::ParamVisitor<'_>) -> usize {
        f(base, self.proj.weight.as_mut_slice(), grads.proj.weight.as_slice(), true);
        if let (Some(b), Some(g)) = (self.proj.bias.as_mut(), grads.proj.bias.as_ref()) {
            f(base + 1, b, g, false);
        }
        f(base + 2, self.pos_embed.as_mut_slice(), grads.pos_embed.as_slice(), false);
        base + 3
    }
}

impl PatchEmbedGrads {
    /// Every gradient tensor, mutable (for clipping).
    pub fn slices_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        self.proj.push_slices(&mut out);
        out.push(self.pos_embed.as_mut_slice());
        out
    }
}
