//! `PatchGat`: a graph attention network on image patches — the GAT of Veličković et al.
//! (2018) with the patches as its nodes: stacked multi-head GAT layers (PyG `GATConv`, or
//! `GATv2Conv`), ELU between them, skip connections as in the paper's inductive (PPI) model,
//! mean-pooled over the nodes, then a linear classifier.
//!
//! ```text
//! images [B x C x H x W] -> patches [B*N x C*P*P]
//! h_0     [B*N x D]  = PatchEmbed(patches)                     linear + learned position per patch
//! z_l     [B*N x D]  = GATConv_l(G_l, h_l)                     H heads of D/H channels, concatenated
//! h_{l+1} [B*N x D]  = h_l + elu(z_l)                          l = 0 .. depth
//! pooled  [B x D]    = mean_r h_L[i*N + r]
//! logits  [B x K]    = head(pooled)
//! ```
//!
//! Each layer's graph `G_l` is any [`GraphSpec`] on the patch grid (default `grid8:1`, the
//! 8-neighbourhood), one disjoint-union graph per batch; GATConv replaces its self-loops by one
//! per node, as PyG does. Initialisation is PyG's Glorot for every weight matrix (and the
//! embedding), zeros for biases. The backward runs the forward lines in reverse, each layer's
//! through [`GraphAttention::backward`], which recomputes that layer's projections and attention
//! from `h_l` (twice the attention forward per step; the layers cache nothing).
//!
//! Checkpoint names: `patch_embed.proj.weight [D, C, P, P]`, `patch_embed.proj.bias`,
//! `patch_embed.pos_embed [1, N, D]`, `layers.{l}.{lin.weight, att_src, att_dst, bias}` (PyG's
//! GATConv names; GATv2: `lin_l.*, lin_r.*, att, bias`), `head.weight [K, D]`, `head.bias`.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Init, PatchGat, PatchGatConfig};
//! let config = PatchGatConfig { image: (1, 12, 12), patch: 4, dim: 8, depth: 2, heads: 2, num_classes: 5, ..PatchGatConfig::mnist() };
//! let gat = PatchGat::new(config, &mut Init::new(0)).unwrap();
//! let image = ChwImage::from_fn(1, 12, 12, |_, y, x| ((y * 12 + x) as f32 * 0.1).sin()).unwrap();
//! let logits = gat.forward(&[image], &[]).unwrap();
//! assert_eq!(logits.shape(), (1, 5));
//! ```

use super::classifier::{add_into, batch_graph, layer_specs};
use super::{
    AttentionConfig, AttentionGrads, Classifier, CrossEntropy, GraphAttention, Init, Linear, LinearGrads, ParamVisitor,
    PatchEmbed, PatchEmbedGrads, elu_backward, elu_inplace,
};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::graph::{Graph, GraphSpec, Neighbourhood};
use crate::image::ChwImage;
use crate::tensor::Matrix;

/// The shape of a [`PatchGat`] (serde JSON, stored in its checkpoints).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchGatConfig {
    /// Input `(C, H, W)`.
    pub image: (usize, usize, usize),
    /// Patch side `P`.
    pub patch: usize,
    /// Node width `D` (= heads x channels per head).
    pub dim: usize,
    /// GAT layers.
    pub depth: usize,
    /// Heads per layer; `D` must be a multiple.
    pub heads: usize,
    /// Classes `K`.
    pub num_classes: usize,
    /// GATv2 scores (`a . LeakyReLU(W_r h_i + W_l h_j)`) instead of GAT's.
    pub v2: bool,
    /// LeakyReLU slope of the score.
    pub negative_slope: f32,
}

impl PatchGatConfig {
    /// For 28 x 28 digits: patch 7 (16 nodes), D 64, 4 layers of 4 heads, 10 classes, GAT scores.
    pub fn mnist() -> Self {
        PatchGatConfig {
            image: (1, 28, 28),
            patch: 7,
            dim: 64,
            depth: 4,
            heads: 4,
            num_classes: 10,
            v2: false,
            negative_slope: 0.2,
        }
    }

    /// Each layer: PyG's `GATConv(D, D/H, heads=H)` (or `GATv2Conv`) with this slope.
    fn layer(&self) -> AttentionConfig {
        let (f, c, heads) = (self.dim, self.dim / self.heads.max(1), self.heads);
        let mut layer = if self.v2 { AttentionConfig::gatv2(f, c, heads) } else { AttentionConfig::gat(f, c, heads) };
        if let AttentionConfig::Gat { negative_slope, .. } | AttentionConfig::GatV2 { negative_slope, .. } = &mut layer
        {
            *negative_slope = self.negative_slope;
        }
        layer
    }

    fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.dim % self.heads != 0 {
            return Err(Error::invalid(
                "PatchGat",
                format!("dim {} is not a multiple of {} heads", self.dim, self.heads),
            ));
        }
        if self.num_classes == 0 {
            return Err(Error::invalid("PatchGat", "num_classes must be at least 1"));
        }
        // GATv2's lin_l and lin_r: 2 D^2 per layer.
        crate::limits::check_patch_model("PatchGat", self.image, self.patch, self.dim, self.depth, 2, self.num_classes)
    }
}

/// A GAT network over image patches (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchGat {
    config: PatchGatConfig,
    /// Patch embedding and position embedding.
    pub embed: PatchEmbed,
    /// The GAT layers.
    pub layers: Vec<GraphAttention>,
    /// Classifier `[K x D]`.
    pub head: Linear,
}

/// Gradients of every [`PatchGat`] parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchGatGrads {
    /// Of the stem.
    pub embed: PatchEmbedGrads,
    /// Per layer.
    pub layers: Vec<AttentionGrads>,
    /// Of `head`.
    pub head: LinearGrads,
}

impl PatchGat {
    /// A model with PyG's Glorot initialisation from a seeded generator.
    pub fn new(config: PatchGatConfig, init: &mut Init) -> Result<PatchGat> {
        config.validate()?;
        let embed = PatchEmbed::new(init, config.image, config.patch, config.dim, true)?;
        let layers = (0..config.depth).map(|_| GraphAttention::new(config.layer(), init)).collect::<Result<_>>()?;
        let head = Linear::glorot_init(init, config.dim, config.num_classes, true);
        Ok(PatchGat { config, embed, layers, head })
    }

    /// The configuration.
    pub fn config(&self) -> &PatchGatConfig {
        &self.config
    }

    /// Loads the tensors of [`PatchGat::state_dict`]; every problem is reported at once.
    pub fn load(config: PatchGatConfig, mut map: TensorMap, what: &str) -> Result<PatchGat> {
        config.validate()?;
        map.collect_problems();
        let embed = PatchEmbed::load(&mut map, "patch_embed.", config.image, config.patch, config.dim)?;
        let layers = (0..config.depth)
            .map(|l| GraphAttention::load(config.layer(), &mut map, &format!("layers.{l}.")))
            .collect::<Result<_>>()?;
        let head = Linear::load(&mut map, "head", config.dim, config.num_classes, true)?;
        map.finish_collected(what)?;
        Ok(PatchGat { config, embed, layers, head })
    }

    /// The default graph of every layer: the 8-neighbourhood of each patch.
    pub fn default_graph() -> GraphSpec {
        GraphSpec::Grid { neighbourhood: Neighbourhood::Eight, radius: 1 }
    }

    /// Logits `[B x K]`.
    pub fn forward(&self, images: &[ChwImage], graphs: &[GraphSpec]) -> Result<Matrix> {
        let patches = self.embed.patches(images)?;
        let b = images.len();
        let specs = layer_specs(graphs, self.config.depth, |_| Self::default_graph())?;
        let mut h = self.embed.forward(&patches, b)?;
        for (layer, spec) in self.layers.iter().zip(&specs) {
            let g = batch_graph(spec, self.embed.grid(), b, &h)?;
            let mut z = layer.forward(&g, &h)?;
            elu_inplace(z.as_mut_slice());
            add_into(&mut h, &z);
        }
        self.head.forward(&self.mean_pool(&h, b))
    }

    /// `[B*N x D] -> [B x D]`: the mean over each image's nodes.
    fn mean_pool(&self, h: &Matrix, b: usize) -> Matrix {
        let n = self.embed.num_patches();
        Matrix::from_fn(b, h.cols(), |i, c| (0..n).map(|r| h.get(i * n + r, c)).sum::<f32>() / n as f32)
    }

    /// Zero gradients.
    pub fn zero_grads(&self) -> PatchGatGrads {
        PatchGatGrads {
            embed: self.embed.zero_grads(),
            layers: self.layers.iter().map(|l| l.zero_grads()).collect(),
            head: LinearGrads::zeros(&self.head),
        }
    }
}

impl Classifier for PatchGat {
    type Grads = PatchGatGrads;

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn input_shape(&self) -> (usize, usize, usize) {
        self.config.image
    }

    fn logits(&self, images: &[ChwImage], graphs: &[GraphSpec]) -> Result<Matrix> {
        self.forward(images, graphs)
    }

    fn loss_grads_logits(
        &self,
        images: &[ChwImage],
        targets: &[usize],
        smoothing: f32,
        graphs: &[GraphSpec],
    ) -> Result<(f32, PatchGatGrads, Matrix)> {
        let patches = self.embed.patches(images)?;
        let (b, n) = (images.len(), self.embed.num_patches());
        let specs = layer_specs(graphs, self.config.depth, |_| Self::default_graph())?;
        let mut grads = self.zero_grads();
        // ---- forward, keeping h_l, G_l and z_l
        let mut h = self.embed.forward(&patches, b)?; // h_0 = PatchEmbed(patches)
        let mut saved: Vec<(Matrix, Graph, Matrix)> = Vec::with_capacity(self.layers.len());
        for (layer, spec) in self.layers.iter().zip(&specs) {
            let g = batch_graph(spec, self.embed.grid(), b, &h)?;
            let z = layer.forward(&g, &h)?; // z_l = GATConv_l(G_l, h_l)
            let mut next = h.clone();
            let mut a = z.clone();
            elu_inplace(a.as_mut_slice());
            add_into(&mut next, &a); // h_{l+1} = h_l + elu(z_l)
            saved.push((std::mem::replace(&mut h, next), g, z));
        }
        let pooled = self.mean_pool(&h, b); // pooled = mean_r h_L
        let logits = self.head.forward(&pooled)?; // logits = head(pooled)
        // ---- backward
        let (loss, dlogits) = CrossEntropy { smoothing }.forward_backward(&logits, targets)?;
        let dpooled = self.head.backward(&pooled, &dlogits, &mut grads.head)?; // logits = head(pooled)
        // pooled = mean_r h_L[i*N + r]
        let mut dh = Matrix::from_fn(b * n, self.config.dim, |row, c| dpooled.get(row / n, c) / n as f32);
        for ((layer, (h_l, g, z)), gl) in self.layers.iter().zip(&saved).zip(grads.layers.iter_mut()).rev() {
            // h_{l+1} = h_l + elu(z_l): dh_l = dh_{l+1} + GATConv_l.backward(elu'(z_l) dh_{l+1})
            let dz = Matrix::from_vec(z.rows(), z.cols(), elu_backward(z.as_slice(), dh.as_slice()))?;
            let dx = layer.backward(g, h_l, &dz, gl)?; // z_l = GATConv_l(G_l, h_l)
            add_into(&mut dh, &dx);
        }
        self.embed.backward(&patches, &dh, &mut grads.embed)?; // h_0 = PatchEmbed(patches)
        Ok((loss, grads, logits))
    }

    fn grad_slices(grads: &mut PatchGatGrads) -> Vec<&mut [f32]> {
        let mut out = grads.embed.slices_mut();
        for g in &mut grads.layers {
            out.extend(attention_grad_slices(g));
        }
        grads.head.push_slices(&mut out);
        out
    }

    /// Slots: 0-2 the stem, then 6 per layer (see [`GraphAttention::visit_params`]), then the
    /// head's weight and bias.
    fn visit_params_mut(&mut self, grads: &PatchGatGrads, f: &mut ParamVisitor<'_>) {
        let mut slot = self.embed.visit_params(&grads.embed, 0, f);
        for (layer, g) in self.layers.iter_mut().zip(&grads.layers) {
            let base = slot;
            layer.visit_params(g, &mut |local, p, gr, decay| f(base + local, p, gr, decay));
            slot += 6;
        }
        self.head.visit_params(&grads.head, &mut slot, f);
    }

    fn state_dict(&self) -> Result<TensorMap> {
        let mut map = TensorMap::default();
        self.embed.save(&mut map, "patch_embed.")?;
        for (l, layer) in self.layers.iter().enumerate() {
            layer.save(&mut map, &format!("layers.{l}."))?;
        }
        self.head.save(&mut map, "head")?;
        map.set_metadata("patchgraph_patch_gat_config", serde_json::to_string(&self.config).unwrap_or_default());
        Ok(map)
    }
}

/// The gradient tensors of an attention layer, mutable.
pub(crate) fn attention_grad_slices(g: &mut AttentionGrads) -> Vec<&mut [f32]> {
    let mut out: Vec<&mut [f32]> = Vec::new();
    match g {
        AttentionGrads::Gat { lin: l, att_src, att_dst, bias } => {
            l.push_slices(&mut out);
            out.push(att_src);
            out.push(att_dst);
            if let Some(b) = bias.as_mut() {
                out.push(b);
            }
        }
        AttentionGrads::GatV2 { lin_l, lin_r, att, bias } => {
            lin_l.push_slices(&mut out);
            if let Some(r) = lin_r.as_mut() {
                r.push_slices(&mut out);
            }
            out.push(att);
            if let Some(b) = bias.as_mut() {
                out.push(b);
            }
        }
        AttentionGrads::Timm { qkv, qk_norm, norm, proj } => {
            qkv.push_slices(&mut out);
            if let Some((q, k)) = qk_norm {
                q.push_slices(&mut out);
                k.push_slices(&mut out);
            }
            if let Some(n) = norm {
                n.push_slices(&mut out);
            }
            proj.push_slices(&mut out);
        }
        AttentionGrads::Transformer { qkvs, lin_beta } => {
            qkvs.push_slices(&mut out);
            if let Some(b) = lin_beta.as_mut() {
                b.push_slices(&mut out);
            }
        }
    }
    out
}
