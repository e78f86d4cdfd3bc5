//! `Vig`: a Vision GNN (Han et al. 2022, "Vision GNN: An Image is Worth Graph of Nodes") on
//! image patches: isotropic blocks of a Grapher, whose graph is a feature k-NN rebuilt in every
//! layer with ViG's dilation and whose messages are max-relative (`MRConv`), and an FFN.
//!
//! ```text
//! x_0 [B*N x D] = PatchEmbed(patches)                        linear + learned position per patch
//! Grapher:  a = LN(x) ; y = fc1(a)                           [B*N x D]
//!           G = feature k-NN of y per image (k, dilation_l)  rebuilt every layer, not differentiated
//!           m = max-relative(G, y)                           m_i = max_{j in N(i)} (y_j - y_i)
//!           u = gc([y | m]) ; z = gelu(u)                    [B*N x 2D]   (ViG's graph conv, D -> 2D)
//!           x = x + fc2(z)                                   [B*N x D]
//! FFN:      x = x + fc2(gelu(fc1(LN(x))))                    hidden 4D
//! pooled [B x D] = mean_r LN(x_L)[i*N + r] ; logits = head(pooled)
//! ```
//!
//! Layer `l` of `depth` uses dilation `min(l * max_dilation / depth + 1, max_dilation)`: ViG's
//! `min(l / 4 + 1, max_dilation)` for its depth-12 models with `max_dilation = 3`, and the
//! same ramp for other depths. The k-NN ranks by cosine distance, which is ViG's L2 on
//! normalised features, and includes the node itself (ViG does). Departures from ViG, for
//! a small model trained from scratch: pre-LayerNorm in place of its BatchNorm after each 1x1
//! conv (no batch statistics, so the model is the same in training and evaluation), a linear
//! patch stem instead of the convolutional one, a dense (not grouped) graph conv, mean pooling
//! and one linear head. Any [`GraphSpec`] can replace the k-NN graph (then max-relative runs
//! on that graph).
//!
//! Checkpoint names: `patch_embed.{proj.weight, proj.bias, pos_embed}`,
//! `blocks.{l}.grapher.{norm, fc1, graph_conv, fc2}.*`, `blocks.{l}.ffn.{norm, fc1, fc2}.*`,
//! `norm.*`, `head.*`.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Init, Vig, VigConfig};
//! let config = VigConfig { image: (1, 16, 16), patch: 4, dim: 8, depth: 2, k: 3, ..VigConfig::mnist() };
//! let vig = Vig::new(config, &mut Init::new(0)).unwrap();
//! let image = ChwImage::from_fn(1, 16, 16, |_, y, x| ((y * 16 + x) as f32 * 0.1).sin()).unwrap();
//! let logits = vig.forward(&[image], &[]).unwrap();
//! assert_eq!(logits.shape(), (1, 10));
//! ```

use super::classifier::{add_into, batch_graph, layer_specs};
use super::{
    Classifier, CrossEntropy, Init, LayerNorm, LayerNormGrads, Linear, LinearGrads, MaxRelative, Mlp, MlpGrads,
    ParamVisitor, PatchEmbed, PatchEmbedGrads, gelu_backward, gelu_inplace,
};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::graph::{Graph, GraphSpec, Metric};
use crate::image::ChwImage;
use crate::tensor::Matrix;

/// The shape of a [`Vig`] (serde JSON, stored in its checkpoints).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VigConfig {
    /// Input `(C, H, W)`.
    pub image: (usize, usize, usize),
    /// Patch side `P`.
    pub patch: usize,
    /// Node width `D`.
    pub dim: usize,
    /// Blocks (Grapher + FFN).
    pub depth: usize,
    /// Classes `K`.
    pub num_classes: usize,
    /// Neighbours per node.
    pub k: usize,
    /// Largest dilation (the last layers').
    pub max_dilation: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

impl VigConfig {
    /// For 28 x 28 digits: patch 7 (16 nodes), D 64, depth 4, k 6, dilation up to 2, 10 classes.
    pub fn mnist() -> Self {
        VigConfig { image: (1, 28, 28), patch: 7, dim: 64, depth: 4, num_classes: 10, k: 6, max_dilation: 2, eps: 1e-6 }
    }

    /// Layer `l`'s default graph: cosine feature k-NN with the dilation ramp of the module docs.
    pub fn layer_graph(&self, l: usize) -> GraphSpec {
        let max = self.max_dilation.max(1);
        let dilation = (l * max / self.depth.max(1) + 1).min(max);
        GraphSpec::FeatureKnn { k: self.k, dilation, metric: Metric::Cosine }
    }

    fn validate(&self) -> Result<()> {
        if self.num_classes == 0 || self.dim == 0 {
            return Err(Error::invalid("Vig", "num_classes and dim must be at least 1"));
        }
        // graph_conv [2D x 2D] and the FFN's D -> 4D -> D: 13 D^2 per block, the largest 4 D^2.
        crate::limits::check_patch_model("Vig", self.image, self.patch, self.dim, self.depth, 11, self.num_classes)
    }
}

/// ViG's Grapher with its FFN.
#[derive(Clone, Debug, PartialEq)]
pub struct VigBlock {
    /// Pre-norm of the Grapher.
    pub norm1: LayerNorm,
    /// `[D x D]`.
    pub fc1: Linear,
    /// The graph conv on `[y | m]`: `[2D x 2D]`.
    pub graph_conv: Linear,
    /// `[D x 2D]`.
    pub fc2: Linear,
    /// Pre-norm of the FFN.
    pub norm2: LayerNorm,
    /// `D -> 4D -> D`.
    pub ffn: Mlp,
}

/// Gradients of a [`VigBlock`].
#[derive(Clone, Debug, PartialEq)]
pub struct VigBlockGrads {
    /// Of `norm1`.
    pub norm1: LayerNormGrads,
    /// Of `fc1`.
    pub fc1: LinearGrads,
    /// Of `graph_conv`.
    pub graph_conv: LinearGrads,
    /// Of `fc2`.
    pub fc2: LinearGrads,
    /// Of `norm2`.
    pub norm2: LayerNormGrads,
    /// Of `ffn`.
    pub ffn: MlpGrads,
}

/// What a block's backward needs from its forward.
struct BlockCache {
    x: Matrix,
    a: Matrix,
    c: Matrix,
    u: Matrix,
    z: Matrix,
    mr: MaxRelative,
    x1: Matrix,
    f: Matrix,
    h: Matrix,
    act: Matrix,
}

impl VigBlock {
    fn new(init: &mut Init, d: usize, eps: f32) -> VigBlock {
        VigBlock {
            norm1: LayerNorm::new(d, eps),
            fc1: Linear::torch_init(init, d, d, true),
            graph_conv: Linear::torch_init(init, 2 * d, 2 * d, true),
            fc2: Linear::torch_init(init, 2 * d, d, true),
            norm2: LayerNorm::new(d, eps),
            ffn: Mlp::new(init, d, 4 * d),
        }
    }

    fn load(map: &mut TensorMap, prefix: &str, d: usize, eps: f32) -> Result<VigBlock> {
        Ok(VigBlock {
            norm1: LayerNorm::load(map, &format!("{prefix}grapher.norm"), d, eps)?,
            fc1: Linear::load(map, &format!("{prefix}grapher.fc1"), d, d, true)?,
            graph_conv: Linear::load(map, &format!("{prefix}grapher.graph_conv"), 2 * d, 2 * d, true)?,
            fc2: Linear::load(map, &format!("{prefix}grapher.fc2"), 2 * d, d, true)?,
            norm2: LayerNorm::load(map, &format!("{prefix}ffn.norm"), d, eps)?,
            ffn: Mlp::load(map, &format!("{prefix}ffn"), d, 4 * d)?,
        })
    }

    fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        self.norm1.save(map, &format!("{prefix}grapher.norm"))?;
        self.fc1.save(map, &format!("{prefix}grapher.fc1"))?;
        self.graph_conv.save(map, &format!("{prefix}grapher.graph_conv"))?;
        self.fc2.save(map, &format!("{prefix}grapher.fc2"))?;
        self.norm2.save(map, &format!("{prefix}ffn.norm"))?;
        self.ffn.save(map, &format!("{prefix}ffn"))
    }

    fn zero_grads(&self) -> VigBlockGrads {
        let d = self.norm1.weight.len();
        VigBlockGrads {
            norm1: LayerNormGrads::zeros(d),
            fc1: LinearGrads::zeros(&self.fc1),
            graph_conv: LinearGrads::zeros(&self.graph_conv),
            fc2: LinearGrads::zeros(&self.fc2),
            norm2: LayerNormGrads::zeros(d),
            ffn: MlpGrads::zeros(&self.ffn),
        }
    }

    /// `x [B*N x D] -> [B*N x D]`, the graph built by `graph(y)` from the fc1 features.
    fn forward_cached(&self, x: &Matrix, graph: impl FnOnce(&Matrix) -> Result<Graph>) -> Result<(Matrix, BlockCache)> {
        let d = x.cols();
        let a = self.norm1.forward(x)?; // a = LN(x)
        let y = self.fc1.forward(&a)?; // y = fc1(a)
        let g = graph(&y)?; // G = k-NN(y)
        let mr = MaxRelative::forward(&g, &y)?; // m = max-relative(G, y)
        let c = Matrix::from_fn(y.rows(), 2 * d, |r, j| if j < d { y.get(r, j) } else { mr.out.get(r, j - d) }); // c = [y | m]
        let u = self.graph_conv.forward(&c)?; // u = gc(c)
        let mut z = u.clone();
        gelu_inplace(z.as_mut_slice()); // z = gelu(u)
        let mut x1 = self.fc2.forward(&z)?; // x1 = x + fc2(z)
        add_into(&mut x1, x);
        let f = self.norm2.forward(&x1)?; // f = LN(x1)
        let (mut out, h, act) = self.ffn.forward_cached(&f)?; // out = x1 + ffn(f)
        add_into(&mut out, &x1);
        Ok((out, BlockCache { x: x.clone(), a, c, u, z, mr, x1, f, h, act }))
    }

    fn backward(&self, cache: &BlockCache, dout: &Matrix, grads: &mut VigBlockGrads) -> Result<Matrix> {
        let d = dout.cols();
        // out = x1 + ffn(f), f = LN(x1)
        let df = self.ffn.backward_cached(&cache.f, &cache.h, &cache.act, dout, &mut grads.ffn)?;
        let mut dx1 = self.norm2.backward(&cache.x1, &df, &mut grads.norm2)?;
        add_into(&mut dx1, dout);
        // x1 = x + fc2(z)
        let dz = self.fc2.backward(&cache.z, &dx1, &mut grads.fc2)?;
        // z = gelu(u)
        let du = Matrix::from_vec(dz.rows(), dz.cols(), gelu_backward(cache.u.as_slice(), dz.as_slice()))?;
        // u = gc(c)
        let dc = self.graph_conv.backward(&cache.c, &du, &mut grads.graph_conv)?;
        // c = [y | m], m = max-relative(G, y)
        let dm = Matrix::from_fn(dc.rows(), d, |r, j| dc.get(r, d + j));
        let mut dy = cache.mr.backward(&dm)?;
        for r in 0..dy.rows() {
            for (v, g) in dy.row_mut(r).iter_mut().zip(&dc.row(r)[..d]) {
                *v += g;
            }
        }
        // y = fc1(a), a = LN(x)
        let da = self.fc1.backward(&cache.a, &dy, &mut grads.fc1)?;
        let mut dx = self.norm1.backward(&cache.x, &da, &mut grads.norm1)?;
        add_into(&mut dx, &dx1); // x1 = x + ...
        Ok(dx)
    }
}

/// A Vision GNN (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Vig {
    config: VigConfig,
    /// Patch and position embedding.
    pub embed: PatchEmbed,
    /// The blocks.
    pub blocks: Vec<VigBlock>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Classifier `[K x D]`.
    pub head: Linear,
}

/// Gradients of every [`Vig`] parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct VigGrads {
    /// Of the stem.
    pub embed: PatchEmbedGrads,
    /// Per block.
    pub blocks: Vec<VigBlockGrads>,
    /// Of `norm`.
    pub norm: LayerNormGrads,
    /// Of `head`.
    pub head: LinearGrads,
}

impl Vig {
    /// A model with PyTorch's default init for the linear layers (ViG's 1x1 convs), unit norms,
    /// and a zero position embedding (as ViG).
    pub fn new(config: VigConfig, init: &mut Init) -> Result<Vig> {
        config.validate()?;
        let (d, eps) = (config.dim, config.eps);
        let mut embed = PatchEmbed::new(init, config.image, config.patch, d, false)?;
        embed.pos_embed = Matrix::zeros(embed.num_patches(), d);
        let blocks = (0..config.depth).map(|_| VigBlock::new(init, d, eps)).collect();
        let head = Linear::torch_init(init, d, config.num_classes, true);
        Ok(Vig { embed, blocks, norm: LayerNorm::new(d, eps), head, config })
    }

    /// The configuration.
    pub fn config(&self) -> &VigConfig {
        &self.config
    }

    /// Loads the tensors of the module docs; every problem is reported at once.
    pub fn load(config: VigConfig, mut map: TensorMap, what: &str) -> Result<Vig> {
        config.validate()?;
        map.collect_problems();
        let (d, eps) = (config.dim, config.eps);
        let embed = PatchEmbed::load(&mut map, "patch_embed.", config.image, config.patch, d)?;
        let blocks = (0..config.depth)
            .map(|l| VigBlock::load(&mut map, &format!("blocks.{l}."), d, eps))
            .collect::<Result<_>>()?;
        let norm = LayerNorm::load(&mut map, "norm", d, eps)?;
        let head = Linear::load(&mut map, "head", d, config.num_classes, true)?;
        map.finish_collected(what)?;
        Ok(Vig { config, embed, blocks, norm, head })
    }

    /// Logits `[B x K]`.
    pub fn forward(&self, images: &[ChwImage], graphs: &[GraphSpec]) -> Result<Matrix> {
        Ok(self.run(images, graphs, None)?.0)
    }

    /// Zero gradients.
    pub fn zero_grads(&self) -> VigGrads {
        VigGrads {
            embed: self.embed.zero_grads(),
            blocks: self.blocks.iter().map(|b| b.zero_grads()).collect(),
            norm: LayerNormGrads::zeros(self.config.dim),
            head: LinearGrads::zeros(&self.head),
        }
    }

    /// Forward (and, with `backward = Some((targets, smoothing))`, the backward).
    fn run(
        &self,
        images: &[ChwImage],
        graphs: &[GraphSpec],
        backward: Option<(&[usize], f32)>,
    ) -> Result<(Matrix, Option<(f32, VigGrads)>)> {
        let patches = self.embed.patches(images)?;
        let (b, n, grid) = (images.len(), self.embed.num_patches(), self.embed.grid());
        let specs = layer_specs(graphs, self.config.depth, |l| self.config.layer_graph(l))?;
        let mut x = self.embed.forward(&patches, b)?; // x_0 = PatchEmbed(patches)
        let mut caches = Vec::with_capacity(self.blocks.len());
        for (block, spec) in self.blocks.iter().zip(&specs) {
            let (next, cache) = block.forward_cached(&x, |y| batch_graph(spec, grid, b, y))?;
            x = next;
            caches.push(cache);
        }
        let xn = self.norm.forward(&x)?; // xn = LN(x_L)
        let pooled = Matrix::from_fn(b, xn.cols(), |i, c| (0..n).map(|r| xn.get(i * n + r, c)).sum::<f32>() / n as f32);
        let logits = self.head.forward(&pooled)?; // logits = head(pooled)
        let Some((targets, smoothing)) = backward else {
            return Ok((logits, None));
        };
        let mut grads = self.zero_grads();
        let (loss, dlogits) = CrossEntropy { smoothing }.forward_backward(&logits, targets)?;
        let dpooled = self.head.backward(&pooled, &dlogits, &mut grads.head)?; // logits = head(pooled)
        let dxn = Matrix::from_fn(b * n, xn.cols(), |row, c| dpooled.get(row / n, c) / n as f32); // pooled = mean
        let mut dx = self.norm.backward(&x, &dxn, &mut grads.norm)?; // xn = LN(x_L)
        for ((block, cache), g) in self.blocks.iter().zip(&caches).zip(grads.blocks.iter_mut()).rev() {
            dx = block.backward(cache, &dx, g)?; // x_{l+1} = block_l(x_l)
        }
        self.embed.backward(&patches, &dx, &mut grads.embed)?; // x_0 = PatchEmbed(patches)
        Ok((logits, Some((loss, grads))))
    }
}

impl Classifier for Vig {
    type Grads = VigGrads;

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
    ) -> Result<(f32, VigGrads, Matrix)> {
        let (logits, lg) = self.run(images, graphs, Some((targets, smoothing)))?;
        let (loss, grads) = lg.ok_or_else(|| Error::invalid("Vig", "backward did not run"))?;
        Ok((loss, grads, logits))
    }

    fn grad_slices(grads: &mut VigGrads) -> Vec<&mut [f32]> {
        let mut out = grads.embed.slices_mut();
        for g in &mut grads.blocks {
            g.norm1.push_slices(&mut out);
            g.fc1.push_slices(&mut out);
            g.graph_conv.push_slices(&mut out);
            g.fc2.push_slices(&mut out);
            g.norm2.push_slices(&mut out);
            g.ffn.fc1.push_slices(&mut out);
            g.ffn.fc2.push_slices(&mut out);
        }
        grads.norm.push_slices(&mut out);
        grads.head.push_slices(&mut out);
        out
    }

    /// Slots: 0-2 the stem, 14 per block (norm1, fc1, graph_conv, fc2, norm2, ffn.fc1, ffn.fc2;
    /// weight then bias), then the final norm and the head.
    fn visit_params_mut(&mut self, grads: &VigGrads, f: &mut ParamVisitor<'_>) {
        let mut slot = self.embed.visit_params(&grads.embed, 0, f);
        for (b, g) in self.blocks.iter_mut().zip(&grads.blocks) {
            b.norm1.visit_params(&g.norm1, &mut slot, f);
            b.fc1.visit_params(&g.fc1, &mut slot, f);
            b.graph_conv.visit_params(&g.graph_conv, &mut slot, f);
            b.fc2.visit_params(&g.fc2, &mut slot, f);
            b.norm2.visit_params(&g.norm2, &mut slot, f);
            b.ffn.fc1.visit_params(&g.ffn.fc1, &mut slot, f);
            b.ffn.fc2.visit_params(&g.ffn.fc2, &mut slot, f);
        }
        self.norm.visit_params(&grads.norm, &mut slot, f);
        self.head.visit_params(&grads.head, &mut slot, f);
    }

    fn state_dict(&self) -> Result<TensorMap> {
        let mut map = TensorMap::default();
        self.embed.save(&mut map, "patch_embed.")?;
        for (l, b) in self.blocks.iter().enumerate() {
            b.save(&mut map, &format!("blocks.{l}."))?;
        }
        self.norm.save(&mut map, "norm")?;
        self.head.save(&mut map, "head")?;
        map.set_metadata("patchgraph_vig_config", serde_json::to_string(&self.config).unwrap_or_default());
        Ok(map)
    }
}
