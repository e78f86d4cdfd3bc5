//! `Classifier`: what the trainer needs from an image model, implemented by the three model
//! families ([`Vit`], [`PatchGat`](super::PatchGat), [`Vig`](super::Vig)) so that one training loop serves them all.
//!
//! ```text
//! logits [B x K]         = model(images, graphs)
//! (loss, grads, logits)  = model.loss_grads_logits(images, targets, smoothing, graphs)
//! for (slot, p, g, decay) in model.visit_params_mut(grads):  optimiser.update(...)
//! ```
//!
//! `graphs` chooses each layer's graph as `--graph` does: empty for the model's default, one
//! spec for every layer, or one per layer.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Classifier, Init, PatchGat, PatchGatConfig};
//! let config = PatchGatConfig { image: (1, 8, 8), patch: 4, dim: 8, depth: 1, heads: 2, num_classes: 3, ..PatchGatConfig::mnist() };
//! let model = PatchGat::new(config, &mut Init::new(0)).unwrap();
//! let image = ChwImage::from_fn(1, 8, 8, |_, y, x| (y + x) as f32 / 16.0).unwrap();
//! let (loss, _grads, logits) = model.loss_grads_logits(&[image], &[2], 0.0, &[]).unwrap();
//! assert_eq!(logits.shape(), (1, 3));
//! assert!(loss > 0.0);
//! ```

use super::{ParamVisitor, Vit, VitGrads, VitOptions};
use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::graph::GraphSpec;
use crate::image::ChwImage;
use crate::tensor::Matrix;

/// An image classifier that can be trained (see the module docs).
pub trait Classifier {
    /// Gradients of every parameter.
    type Grads;
    /// Classes `K`.
    fn num_classes(&self) -> usize;
    /// Input image shape `(C, H, W)`.
    fn input_shape(&self) -> (usize, usize, usize);
    /// Logits `[B x K]`.
    fn logits(&self, images: &[ChwImage], graphs: &[GraphSpec]) -> Result<Matrix>;
    /// Mean cross-entropy with label smoothing, every parameter's gradient, and the logits.
    fn loss_grads_logits(
        &self,
        images: &[ChwImage],
        targets: &[usize],
        smoothing: f32,
        graphs: &[GraphSpec],
    ) -> Result<(f32, Self::Grads, Matrix)>;
    /// Every gradient tensor, mutable (for clipping).
    fn grad_slices(grads: &mut Self::Grads) -> Vec<&mut [f32]>;
    /// `f(slot, parameter, gradient, decay)` for every parameter tensor, slots fixed per model.
    fn visit_params_mut(&mut self, grads: &Self::Grads, f: &mut ParamVisitor<'_>);
    /// The parameters by name (what a checkpoint holds), the model's config in the metadata.
    fn state_dict(&self) -> Result<TensorMap>;
}

impl Classifier for Vit {
    type Grads = VitGrads;

    fn num_classes(&self) -> usize {
        self.config().num_classes
    }

    fn input_shape(&self) -> (usize, usize, usize) {
        let c = self.config();
        (c.in_chans, c.img_size.h, c.img_size.w)
    }

    fn logits(&self, images: &[ChwImage], graphs: &[GraphSpec]) -> Result<Matrix> {
        Ok(self.forward_with(images, &VitOptions { graphs: graphs.to_vec(), ..Default::default() })?.logits)
    }

    fn loss_grads_logits(
        &self,
        images: &[ChwImage],
        targets: &[usize],
        smoothing: f32,
        graphs: &[GraphSpec],
    ) -> Result<(f32, VitGrads, Matrix)> {
        let options = VitOptions { graphs: graphs.to_vec(), ..Default::default() };
        Vit::loss_grads_logits(self, images, targets, smoothing, &options)
    }

    fn grad_slices(grads: &mut VitGrads) -> Vec<&mut [f32]> {
        grads.slices_mut()
    }

    fn visit_params_mut(&mut self, grads: &VitGrads, f: &mut ParamVisitor<'_>) {
        Vit::visit_params_mut(self, grads, f)
    }

    /// timm's names, with the config under `patchgraph_vit_config` in the metadata.
    fn state_dict(&self) -> Result<TensorMap> {
        let mut map = Vit::state_dict(self)?;
        map.set_metadata("patchgraph_vit_config", serde_json::to_string(self.config()).unwrap_or_default());
        Ok(map)
    }
}

/// The graph of each of `depth` layers from `graphs` (empty: `default`).
pub(crate) fn layer_specs(
    graphs: &[GraphSpec],
    depth: usize,
    default: impl Fn(usize) -> GraphSpec,
) -> Result<Vec<GraphSpec>> {
    match graphs.len() {
        0 => Ok((0..depth).map(default).collect()),
        1 => Ok((0..depth).map(|l| graphs[0].for_layer(l)).collect()),
        n if n == depth => Ok(graphs.iter().enumerate().map(|(l, g)| g.for_layer(l)).collect()),
        n => Err(crate::Error::invalid("layer graphs", format!("{n} specs for {depth} layers: give 1 or {depth}"))),
    }
}

/// The batch graph of one layer: the spec built on each image's patch grid (feature k-NN from
/// that image's rows of `features` `[B*N x D]`), as one disjoint union.
pub(crate) fn batch_graph(
    spec: &GraphSpec,
    grid: (usize, usize),
    batch: usize,
    features: &Matrix,
) -> Result<crate::Graph> {
    let n = grid.0 * grid.1;
    if let GraphSpec::LowRank(m) = spec {
        return Err(crate::Error::invalid(
            "layer graphs",
            format!("`{m}` replaces a ViT block's softmax attention; graph layers (GAT, ViG) need a graph"),
        ));
    }
    let per_image = match spec {
        _ if spec.needs_features() => (0..batch)
            .map(|i| {
                let rows = Matrix::from_fn(n, features.cols(), |r, c| features.get(i * n + r, c));
                spec.build(grid.0, grid.1, Some(&rows), false)
            })
            .collect::<Result<Vec<_>>>()?,
        _ => vec![spec.build(grid.0, grid.1, None, false)?; batch],
    };
    crate::Graph::disjoint_union(&per_image)
}

/// `a += b`, elementwise (residual sums).
pub(crate) fn add_into(a: &mut Matrix, b: &Matrix) {
    for (x, y) in a.as_mut_slice().iter_mut().zip(b.as_slice()) {
        *x += y;
    }
}
