//! `Vit`: the Vision Transformer as timm builds it, with each block's attention on a graph over
//! the patch tokens (the complete graph by default, which is exactly timm's ViT).
//!
//! ```text
//! images [B x C x H x W]
//! patches  [B*Gh*Gw x C*Ph*Pw]        patchify, rows in timm's conv order
//! x        [B*Gh*Gw x D] = patches W_pe^T (+ b_pe)   patch_embed.proj (conv as linear; no bias with pre_norm)
//! tokens   [B*T x D]   = [cls | reg | x] + pos_embed  T = R' + Gh*Gw, R' = class token + register tokens
//!                                                      (with no_embed_class only the patches get pos_embed)
//! norm_pre (pre_norm: LayerNorm; identity otherwise)
//! blocks   x = x + attn(norm1(x)) over graph_l ; x = x + mlp(norm2(x))       l = 0 .. depth
//! norm     (identity with fc_norm or without final_norm)
//! pool     token | avg | max | avgmax over the patch rows (all rows with pool_include_prefix) | none
//! fc_norm, head  -> logits [B x K]  ([B*T x K] without pooling)
//! ```
//!
//! A batch is one disjoint-union graph of `B` per-image graphs: complete graphs stay implicit
//! blocks and go to the dense kernel. Any [`GraphSpec`] can replace the complete graph, per layer
//! or for all layers, with the same weights (`knn:16`, `window:7`, `fknn:9:2`...); feature k-NN
//! graphs are rebuilt at every layer from that layer's `norm1` features of the patch tokens
//! (ViG's dynamic graph), the class token linked both ways to every patch.
//!
//! Checkpoints use timm's names, with no tensor transposed (conv weight `[D, C, P, P]` read as
//! `[D x C*P*P]`): `cls_token [1, 1, D]`, `pos_embed [1, T', D]`, `patch_embed.proj.weight`,
//! `patch_embed.proj.bias`, `blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
//! mlp.fc2, ls2.gamma}`, `norm.*` or `fc_norm.*`, `head.weight [K, D]`, `head.bias`.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Init, Vit, VitConfig};
//! let mut config = VitConfig::tiny(32, 8, 10);
//! (config.embed_dim, config.depth, config.num_heads) = (24, 2, 2);
//! let vit = Vit::new(config, &mut Init::new(0)).unwrap();
//! let image = ChwImage::from_fn(3, 32, 32, |c, y, x| ((c + y * x) as f32 * 0.01).sin()).unwrap();
//! let logits = vit.forward(&[image.clone(), image]).unwrap();
//! assert_eq!(logits.shape(), (2, 10));
//! assert_eq!(logits.row(0), logits.row(1));
//! ```

mod backward;
mod clip;
mod config;
mod pool;
mod pos_embed;

pub use backward::VitGrads;
pub use config::{GlobalPool, PosEmbed, Size2, VitConfig};
pub use pool::{PoolCache, pool as vit_pool, pool_backward as vit_pool_backward};
pub use pos_embed::resample_pos_embed;

use super::{
    AttentionWeights, Block, BlockConfig, ForwardOptions, Init, LayerNorm, Linear, LowRankAttention,
    RelativePositionBias, TokenGrid,
};
use crate::attention::Path;
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result, ensure_finite};
use crate::graph::{Graph, GraphSpec};
use crate::image::{ChwImage, patchify_rect};
use crate::tensor::Matrix;
use pos_embed::square_side;
use std::borrow::Cow;

/// What one layer's attention runs with besides its graph: a low-rank method (the block's own,
/// or a parameter-free one drawn for this forward), and the edge bias of the block's relative
/// position table on this layer's graph.
pub(crate) struct LayerAttention<'v> {
    low_rank: Option<Cow<'v, LowRankAttention>>,
    shared: Option<&'v LowRankAttention>,
    rel_index: Option<Vec<u32>>,
    bias: Option<Vec<f32>>,
}

impl LayerAttention<'_> {
    /// Whether this layer uses block 0's low-rank parameters (a layerwise Linformer).
    pub(crate) fn shares_low_rank(&self) -> bool {
        self.shared.is_some()
    }

    /// The relative position table row of each edge, when the block has a table.
    pub(crate) fn rel_index(&self) -> Option<&[u32]> {
        self.rel_index.as_deref()
    }

    pub(crate) fn options(&self, path: Path, weights: bool) -> ForwardOptions<'_> {
        ForwardOptions {
            edge_bias: self.bias.as_deref(),
            weights,
            path,
            low_rank: self.low_rank.as_deref(),
            low_rank_shared: self.shared,
        }
    }
}

/// A Vision Transformer (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Vit {
    config: VitConfig,
    /// `patch_embed.proj`: the `[D, C, P, P]` conv as a linear layer `[D x C*P*P]`.
    pub patch_embed: Linear,
    /// `cls_token` `[D]`, when the model has one.
    pub cls_token: Option<Vec<f32>>,
    /// `dist_token` `[D]`, DeiT's distillation token (with `distilled`).
    pub dist_token: Option<Vec<f32>>,
    /// `reg_token` `[R x D]`, the register tokens, when the model has them.
    pub reg_token: Option<Matrix>,
    /// `pos_embed` `[T' x D]` (`T' = T`, or `Gh Gw` with `no_embed_class`; no rows with
    /// `pos_embed = none`).
    pub pos_embed: Matrix,
    /// `norm_pre`, with `pre_norm`.
    pub norm_pre: Option<LayerNorm>,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm before pooling (absent when `fc_norm` is used).
    pub norm: Option<LayerNorm>,
    /// Norm after pooling (timm's `fc_norm`).
    pub fc_norm: Option<LayerNorm>,
    /// Classifier `[K x D]`, absent when `num_classes` is 0.
    pub head: Option<Linear>,
    /// DeiT's distillation head `[K x D]` on the distillation token (with `distilled`).
    pub head_dist: Option<Linear>,
}

/// What [`Vit::forward_with`] runs and returns.
#[derive(Clone, Debug, Default)]
pub struct VitOptions {
    /// Attention graph: empty = complete in every layer; one spec = that graph in every layer;
    /// `depth` specs = one per layer.
    pub graphs: Vec<GraphSpec>,
    /// Force the attention implementation.
    pub path: Path,
    /// Return every layer's attention weights.
    pub weights: bool,
}

/// Output of [`Vit::forward_with`].
#[derive(Clone, Debug)]
pub struct VitOutput {
    /// `[B x K]` (or `[B x D]` pooled features when the model has no head; one row per
    /// token, `[B*T x ...]`, without pooling).
    pub logits: Matrix,
    /// The pooled, normalised features before the head `[B x D]` (`[B*T x D]` without pooling).
    pub pre_logits: Matrix,
    /// Per layer, the attention weights with their (batch) graph, when asked for.
    pub weights: Vec<AttentionWeights>,
}

impl Vit {
    /// A freshly initialised model with timm's init: trunc-normal(0.02) linear weights and
    /// `pos_embed`, zero biases, unit norms, `cls_token` normal(1e-6), PyTorch's default conv init
    /// for the patch embedding.
    pub fn new(config: VitConfig, init: &mut Init) -> Result<Vit> {
        config.validate()?;
        let d = config.embed_dim;
        let patch_embed = Linear::torch_init(init, config.patch_dim(), d, !config.pre_norm);
        let cls_token = config.class_token.then(|| init.normal(d, 1e-6));
        let dist_token = config.distilled.then(|| init.trunc_normal(d, 0.02));
        let reg_token = (config.reg_tokens > 0)
            .then(|| Matrix::from_vec(config.reg_tokens, d, init.normal(config.reg_tokens * d, 1e-6)))
            .transpose()?;
        let pos_embed = Matrix::from_vec(config.pos_tokens(), d, init.trunc_normal(config.pos_tokens() * d, 0.02))?;
        let mut blocks: Vec<Block> =
            (0..config.depth).map(|_| Block::new(&block_config(&config), init)).collect::<Result<_>>()?;
        for (l, block) in blocks.iter_mut().enumerate() {
            if let Some(m) = &config.attention {
                let grid = token_grid(&config);
                block.low_rank = Some(LowRankAttention::new(m, grid, config.num_heads, config.head_dim(), l, init)?);
            }
            if let Some(w) = config.relative_position_bias {
                block.relative_position = Some(RelativePositionBias::new(w, config.num_heads, init)?);
            }
        }
        let mut classifier = || {
            let k = config.num_classes;
            Linear {
                weight: Matrix::from_vec(k, d, init.trunc_normal(k * d, 0.02)).unwrap_or_default(),
                bias: Some(vec![0.0; k]),
            }
        };
        let head = (config.num_classes > 0).then(&mut classifier);
        let head_dist = (config.num_classes > 0 && config.distilled).then(&mut classifier);
        Ok(Vit {
            norm: config.has_norm().then(|| LayerNorm::new(d, config.eps)),
            fc_norm: config.has_fc_norm().then(|| LayerNorm::new(d, config.eps)),
            norm_pre: config.pre_norm.then(|| LayerNorm::new(d, config.eps)),
            config,
            patch_embed,
            cls_token,
            dist_token,
            reg_token,
            pos_embed,
            blocks,
            head,
            head_dist,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Loads a timm state dict exactly: every missing, unexpected, misshapen or unreadable
    /// tensor is reported at once in one [`Error::Checkpoint`] naming `what` (the file).
    pub fn load(config: VitConfig, mut map: TensorMap, what: &str) -> Result<Vit> {
        config.validate()?;
        map.collect_problems();
        let vit = Self::take_tensors(config, &mut map)?;
        map.finish_collected(what)?;
        Ok(vit)
    }

    /// Loads a timm state dict as timm's `checkpoint_filter_fn` + `load_state_dict` would for a
    /// model of `config`: the class count is taken from `head.weight` when the config's differs,
    /// a `dist_token` makes it DeiT's distilled model, and a position embedding of another grid is resampled (bicubic, antialiased). Returns the
    /// model and one line per adaptation made.
    pub fn load_adapting(mut config: VitConfig, mut map: TensorMap, what: &str) -> Result<(Vit, Vec<String>)> {
        let mut notes = Vec::new();
        if map.contains("dist_token") && !config.distilled && config.class_token {
            notes.push("distilled (DeiT): the checkpoint has a distillation token and head".to_string());
            config.distilled = true;
        }
        if let Ok(head) = map.get("head.weight") {
            if head.shape.len() == 2 && head.shape[0] != config.num_classes {
                notes.push(format!("num_classes {} -> {} (from head.weight)", config.num_classes, head.shape[0]));
                config.num_classes = head.shape[0];
            }
        } else if config.num_classes > 0 && !map.contains("head.bias") {
            notes.push(format!("num_classes {} -> 0 (the checkpoint has no head)", config.num_classes));
            config.num_classes = 0;
        }
        config.validate()?;
        if let Ok(pos) = map.get("pos_embed") {
            let prefix = if config.no_embed_class { 0 } else { config.prefix_tokens() };
            let want = config.pos_tokens();
            if want > 0 && pos.shape.len() == 3 && pos.shape[1] != want && pos.shape[1] > prefix {
                let (rows, d) = (pos.shape[1], pos.shape[2]);
                let old = square_side(rows - prefix).ok_or_else(|| Error::Checkpoint {
                    path: what.to_string(),
                    problems: vec![format!(
                        "tensor `pos_embed`: {rows} rows are not {prefix} prefix token(s) plus a square grid"
                    )],
                })?;
                let m = Matrix::from_vec(rows, d, pos.data.clone())?;
                let (gh, gw) = config.grid_size();
                let r = resample_pos_embed(&m, prefix, (old, old), (gh, gw))?;
                notes.push(format!("pos_embed resampled from a {old}x{old} to a {gh}x{gw} grid"));
                map.insert("pos_embed", vec![1, r.rows(), d], r.into_vec())?;
            }
        }
        Ok((Self::load(config, map, what)?, notes))
    }

    /// Takes every tensor by its timm name (the map records problems; see [`Vit::load`]).
    fn take_tensors(config: VitConfig, map: &mut TensorMap) -> Result<Vit> {
        let d = config.embed_dim;
        let (c, ph, pw) = (config.in_chans, config.patch_size.h, config.patch_size.w);
        let weight = map.take("patch_embed.proj.weight", &[d, c, ph, pw])?;
        let bias = if config.pre_norm { None } else { Some(map.take("patch_embed.proj.bias", &[d])?) };
        let patch_embed = Linear::from_parts(Matrix::from_vec(d, config.patch_dim(), weight)?, bias)?;
        let cls_token = if config.class_token { Some(map.take("cls_token", &[1, 1, d])?) } else { None };
        let dist_token = if config.distilled { Some(map.take("dist_token", &[1, 1, d])?) } else { None };
        let r = config.reg_tokens;
        let reg_token = if r > 0 { Some(Matrix::from_vec(r, d, map.take("reg_token", &[1, r, d])?)?) } else { None };
        let pt = config.pos_tokens();
        let pos_embed =
            if pt > 0 { Matrix::from_vec(pt, d, map.take("pos_embed", &[1, pt, d])?)? } else { Matrix::zeros(0, d) };
        let norm_pre = if config.pre_norm { Some(LayerNorm::load(map, "norm_pre", d, config.eps)?) } else { None };
        let bc = block_config(&config);
        let mut blocks: Vec<Block> =
            (0..config.depth).map(|i| Block::load(&bc, map, &format!("blocks.{i}."))).collect::<Result<_>>()?;
        let (h, hd, grid) = (config.num_heads, config.head_dim(), token_grid(&config));
        for (l, block) in blocks.iter_mut().enumerate() {
            let prefix = format!("blocks.{l}.attn.");
            if let Some(m) = &config.attention {
                block.low_rank = Some(LowRankAttention::load(m, grid, h, hd, l, map, &prefix)?);
            }
            if let Some(w) = config.relative_position_bias {
                block.relative_position = Some(RelativePositionBias::load(w, h, map, &prefix)?);
            }
        }
        let norm = if config.has_norm() { Some(LayerNorm::load(map, "norm", d, config.eps)?) } else { None };
        let fc_norm = if config.has_fc_norm() { Some(LayerNorm::load(map, "fc_norm", d, config.eps)?) } else { None };
        let k = config.num_classes;
        let head = if k > 0 { Some(Linear::load(map, "head", d, k, true)?) } else { None };
        let head_dist =
            if k > 0 && config.distilled { Some(Linear::load(map, "head_dist", d, k, true)?) } else { None };
        Ok(Vit {
            config,
            patch_embed,
            cls_token,
            dist_token,
            reg_token,
            pos_embed,
            norm_pre,
            blocks,
            norm,
            fc_norm,
            head,
            head_dist,
        })
    }

    /// The model's tensors under timm's names (the inverse of [`Vit::load`]).
    pub fn state_dict(&self) -> Result<TensorMap> {
        let mut map = TensorMap::default();
        let (d, c) = (self.config.embed_dim, self.config.in_chans);
        let (ph, pw) = (self.config.patch_size.h, self.config.patch_size.w);
        map.insert("patch_embed.proj.weight", vec![d, c, ph, pw], self.patch_embed.weight.as_slice().to_vec())?;
        if let Some(b) = &self.patch_embed.bias {
            map.insert("patch_embed.proj.bias", vec![d], b.clone())?;
        }
        if let Some(cls) = &self.cls_token {
            map.insert("cls_token", vec![1, 1, d], cls.clone())?;
        }
        if let Some(dist) = &self.dist_token {
            map.insert("dist_token", vec![1, 1, d], dist.clone())?;
        }
        if let Some(reg) = &self.reg_token {
            map.insert("reg_token", vec![1, reg.rows(), d], reg.as_slice().to_vec())?;
        }
        if self.pos_embed.rows() > 0 {
            map.insert("pos_embed", vec![1, self.pos_embed.rows(), d], self.pos_embed.as_slice().to_vec())?;
        }
        if let Some(n) = &self.norm_pre {
            n.save(&mut map, "norm_pre")?;
        }
        for (i, b) in self.blocks.iter().enumerate() {
            b.save(&mut map, &format!("blocks.{i}."))?;
        }
        if let Some(n) = &self.norm {
            n.save(&mut map, "norm")?;
        }
        if let Some(n) = &self.fc_norm {
            n.save(&mut map, "fc_norm")?;
        }
        if let Some(h) = &self.head {
            h.save(&mut map, "head")?;
        }
        if let Some(h) = &self.head_dist {
            h.save(&mut map, "head_dist")?;
        }
        Ok(map)
    }

    /// Writes the model as a safetensors file with timm's names (`timm.create_model(...,
    /// pretrained_cfg_overlay=dict(file=...))` or `load_state_dict` reads it back).
    pub fn save_safetensors(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let mut map = self.state_dict()?;
        map.set_metadata("format", "pt");
        map.set_metadata("patchgraph_vit_config", serde_json::to_string(&self.config).unwrap_or_default());
        map.save_safetensors(path)
    }

    /// Logits `[B x K]` of `images` (each `[C x img_size x img_size]`, already normalised), with
    /// complete-graph attention: timm's ViT.
    pub fn forward(&self, images: &[ChwImage]) -> Result<Matrix> {
        Ok(self.forward_with(images, &VitOptions::default())?.logits)
    }

    /// Forward with per-layer graphs, a forced attention path, or the attention weights.
    pub fn forward_with(&self, images: &[ChwImage], options: &VitOptions) -> Result<VitOutput> {
        let cfg = &self.config;
        let specs = self.layer_specs(&options.graphs)?;
        let b = images.len();
        if b == 0 {
            return Err(Error::invalid("ViT input", "no images"));
        }
        let mut x = self.embed(images)?;
        let mut static_graphs: Vec<(GraphSpec, Graph)> = Vec::new();
        let mut weights = Vec::new();
        for (l, (block, spec)) in self.blocks.iter().zip(&specs).enumerate() {
            let graph = self.layer_graph(block, spec, &x, b, &mut static_graphs)?;
            let la = self.layer_attention(l, spec, &graph)?;
            let fo = la.options(options.path, options.weights);
            // A NaN that reached a block (from a weight loaded with --allow-nonfinite) is
            // reported with the block it reached.
            let w = block.forward_in_place(&graph, &mut x, &fo).map_err(|e| match e {
                Error::NonFinite { what, position, value } => {
                    Error::NonFinite { what: format!("block {l}: {what}"), position, value }
                }
                other => other,
            })?;
            weights.extend(w);
        }
        if let Some(n) = &self.norm {
            x = n.forward(&x)?;
        }
        if cfg.distilled {
            let (logits, pre_logits) = self.distilled_head(&x, b)?;
            return Ok(VitOutput { logits, pre_logits, weights });
        }
        let (mut pooled, _) = pool::pool(cfg, &x, b)?;
        if let Some(n) = &self.fc_norm {
            pooled = n.forward(&pooled)?;
        }
        let logits = match &self.head {
            Some(h) => h.forward(&pooled)?,
            None => pooled.clone(),
        };
        Ok(VitOutput { logits, pre_logits: pooled, weights })
    }

    /// DeiT's eval-mode head on the final tokens `xn [B*T x D]`: the class and distillation
    /// tokens `x_c`, `x_d` `[B x D]`; logits `(head(x_c) + head_dist(x_d)) / 2` (without
    /// classes: the pre-logits), pre-logits `(x_c + x_d) / 2`.
    fn distilled_head(&self, xn: &Matrix, b: usize) -> Result<(Matrix, Matrix)> {
        let (xc, xd) = self.distilled_tokens(xn, b);
        let pre = Matrix::from_fn(b, xn.cols(), |i, c| 0.5 * (xc.get(i, c) + xd.get(i, c)));
        let logits = match (&self.head, &self.head_dist) {
            (Some(h), Some(hd)) => {
                let (lc, ld) = (h.forward(&xc)?, hd.forward(&xd)?);
                Matrix::from_fn(b, lc.cols(), |i, k| 0.5 * (lc.get(i, k) + ld.get(i, k)))
            }
            _ => pre.clone(),
        };
        Ok((logits, pre))
    }

    /// The class and distillation token rows `[B x D]` of `xn [B*T x D]` (rows `bT`, `bT + 1`).
    pub(crate) fn distilled_tokens(&self, xn: &Matrix, b: usize) -> (Matrix, Matrix) {
        let t = self.config.num_tokens();
        let row = |offset: usize| Matrix::from_fn(b, xn.cols(), |i, c| xn.get(i * t + offset, c));
        (row(0), row(1))
    }

    /// The features block `layer` builds a feature k-NN graph from: its `norm1` output on the
    /// patch tokens (class token left out), `[B*G^2 x D]`, after running blocks `0..layer` on
    /// `options.graphs`.
    pub fn layer_features(&self, images: &[ChwImage], layer: usize, options: &VitOptions) -> Result<Matrix> {
        let cfg = &self.config;
        let block = self.blocks.get(layer).ok_or_else(|| {
            Error::invalid("ViT layer", format!("{layer} is not below the model's {} blocks", self.blocks.len()))
        })?;
        let specs = self.layer_specs(&options.graphs)?;
        let (b, t, np, prefix) = (images.len(), cfg.num_tokens(), cfg.num_patches(), cfg.prefix_tokens());
        let mut x = self.embed(images)?;
        let mut cache: Vec<(GraphSpec, Graph)> = Vec::new();
        for (l, (blk, spec)) in self.blocks[..layer].iter().zip(&specs).enumerate() {
            let graph = self.layer_graph(blk, spec, &x, b, &mut cache)?;
            let la = self.layer_attention(l, spec, &graph)?;
            blk.forward_in_place(&graph, &mut x, &la.options(options.path, false))?;
        }
        let h = block.norm1.forward(&x)?;
        Ok(Matrix::from_fn(b * np, cfg.embed_dim, |r, c| h.get((r / np) * t + prefix + r % np, c)))
    }

    /// The batch graph of one layer: static specs built once per forward (cached in `cache`),
    /// feature k-NN rebuilt from this layer's `norm1` features of the patch tokens.
    pub(crate) fn layer_graph(
        &self,
        block: &Block,
        spec: &GraphSpec,
        x: &Matrix,
        b: usize,
        cache: &mut Vec<(GraphSpec, Graph)>,
    ) -> Result<Graph> {
        let cfg = &self.config;
        let (t, (gh, gw), d, prefix) = (cfg.num_tokens(), cfg.grid_size(), cfg.embed_dim, cfg.prefix_tokens());
        match spec {
            _ if spec.needs_features() => {
                let h = block.norm1.forward(x)?;
                let per_image = (0..b)
                    .map(|i| {
                        let start = i * t + prefix;
                        let patches = Matrix::from_fn(gh * gw, d, |r, c| h.get(start + r, c));
                        spec.build_with_prefix(gh, gw, Some(&patches), prefix)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Graph::disjoint_union(&per_image)
            }
            _ => match cache.iter().find(|(s, _)| s == spec) {
                Some((_, graph)) => Ok(graph.clone()),
                None => {
                    let one = spec.build_with_prefix(gh, gw, None, prefix)?;
                    let graph = Graph::disjoint_union(&vec![one; b])?;
                    cache.push((spec.clone(), graph.clone()));
                    Ok(graph)
                }
            },
        }
    }

    /// Layer `l`'s low-rank method and edge bias on `graph` (built from `spec`): the block's own
    /// method when the spec names it, else a parameter-free one for this forward (Performer's
    /// projection drawn from `seed + l`, Nyström without the conv), else an error naming it.
    pub(crate) fn layer_attention(&self, l: usize, spec: &GraphSpec, graph: &Graph) -> Result<LayerAttention<'_>> {
        let cfg = &self.config;
        let block = &self.blocks[l];
        let (low_rank, shared) = match spec {
            GraphSpec::LowRank(m) => {
                let own = block.low_rank.as_ref().filter(|lr| lr.method() == m);
                let lr = match own {
                    Some(lr) => Cow::Borrowed(lr),
                    None => Cow::Owned(LowRankAttention::parameter_free(
                        m,
                        token_grid(cfg),
                        cfg.num_heads,
                        cfg.head_dim(),
                        l,
                    )?),
                };
                let layerwise = matches!(
                    m,
                    crate::attention::low_rank::LowRank::Linformer {
                        sharing: crate::attention::low_rank::LinformerSharing::Layerwise,
                        ..
                    }
                );
                let shared = if layerwise { self.blocks[0].low_rank.as_ref() } else { None };
                (Some(lr), shared)
            }
            _ => (None, None),
        };
        let (rel_index, bias) = match (&block.relative_position, &low_rank) {
            (Some(rp), None) => {
                let index = RelativePositionBias::edge_index(graph, token_grid(cfg), rp.window)?;
                let bias = rp.edge_bias(&index);
                (Some(index), Some(bias))
            }
            (Some(_), Some(lr)) => {
                return Err(Error::invalid(
                    "relative position bias",
                    format!("block {l} adds its bias to edges; `{}` has none (run it on a graph)", lr.method()),
                ));
            }
            (None, _) => (None, None),
        };
        Ok(LayerAttention { low_rank, shared, rel_index, bias })
    }

    /// The graph spec of each layer.
    fn layer_specs(&self, graphs: &[GraphSpec]) -> Result<Vec<GraphSpec>> {
        let depth = self.config.depth;
        let per_layer = |spec: &GraphSpec| (0..depth).map(|l| spec.for_layer(l)).collect();
        match graphs.len() {
            0 => Ok(vec![self.config.attention.clone().map_or(GraphSpec::Complete, GraphSpec::LowRank); depth]),
            1 => Ok(per_layer(&graphs[0])),
            n if n == depth => Ok(graphs.iter().enumerate().map(|(l, g)| g.for_layer(l)).collect()),
            n => Err(Error::invalid("ViT graphs", format!("{n} specs for {depth} layers: give 1 or {depth}"))),
        }
    }

    /// Patch embedding, prefix tokens, position embedding and `norm_pre`: `[B*T x D]` tokens,
    /// the first block's input.
    pub fn embed(&self, images: &[ChwImage]) -> Result<Matrix> {
        let patches = self.patches(images)?;
        let tokens = self.embed_patches(&patches, images.len())?;
        match &self.norm_pre {
            Some(n) => n.forward(&tokens), // x_0 = norm_pre(tokens)
            None => Ok(tokens),
        }
    }

    /// The patch rows of every image, checked: `[B*Gh*Gw x C*Ph*Pw]`.
    pub fn patches(&self, images: &[ChwImage]) -> Result<Matrix> {
        let cfg = &self.config;
        let (np, cpp) = (cfg.num_patches(), cfg.patch_dim());
        let mut patches = Matrix::zeros(images.len() * np, cpp);
        for (i, image) in images.iter().enumerate() {
            let want = (cfg.in_chans, cfg.img_size.h, cfg.img_size.w);
            if image.shape() != want {
                return Err(Error::shape(
                    format!("ViT input image {i}"),
                    format!("{want:?} (C, H, W)"),
                    format!("{:?}", image.shape()),
                ));
            }
            ensure_finite(&format!("ViT input image {i}"), image.as_slice())?;
            let p = patchify_rect(image, cfg.patch_size.h, cfg.patch_size.w)?;
            patches.as_mut_slice()[i * np * cpp..(i + 1) * np * cpp].copy_from_slice(p.as_slice());
        }
        Ok(patches)
    }

    /// Tokens `[B*T x D]` from patch rows: patch embedding, class and register tokens, position
    /// embedding (before `norm_pre`).
    pub fn embed_patches(&self, patches: &Matrix, batch: usize) -> Result<Matrix> {
        let cfg = &self.config;
        let (t, np, d, prefix) = (cfg.num_tokens(), cfg.num_patches(), cfg.embed_dim, cfg.prefix_tokens());
        let x = self.patch_embed.forward(patches)?;
        let has_pos = self.pos_embed.rows() > 0;
        // With no_embed_class, pos_embed covers the patches only; otherwise every token.
        let pos_offset = if cfg.no_embed_class { 0 } else { prefix };
        let mut tokens = Matrix::zeros(batch * t, d);
        for i in 0..batch {
            let prefix_rows = self
                .cls_token
                .iter()
                .chain(self.dist_token.iter())
                .map(|c| c.as_slice())
                .chain(self.reg_token.iter().flat_map(|r| (0..r.rows()).map(|k| r.row(k))));
            for (k, src) in prefix_rows.enumerate() {
                let row = tokens.row_mut(i * t + k);
                row.copy_from_slice(src);
                if has_pos && !cfg.no_embed_class {
                    row.iter_mut().zip(self.pos_embed.row(k)).for_each(|(v, p)| *v += p);
                }
            }
            for r in 0..np {
                let row = tokens.row_mut(i * t + prefix + r);
                if has_pos {
                    let pos = self.pos_embed.row(pos_offset + r);
                    for ((v, e), p) in row.iter_mut().zip(x.row(i * np + r)).zip(pos) {
                        *v = e + p;
                    }
                } else {
                    row.copy_from_slice(x.row(i * np + r));
                }
            }
        }
        Ok(tokens)
    }
}

/// One image's token layout.
fn token_grid(config: &VitConfig) -> TokenGrid {
    let (rows, cols) = config.grid_size();
    TokenGrid { rows, cols, prefix: config.prefix_tokens() }
}

fn block_config(config: &VitConfig) -> BlockConfig {
    BlockConfig {
        dim: config.embed_dim,
        heads: config.num_heads,
        mlp_hidden: config.mlp_hidden(),
        qkv_bias: config.qkv_bias,
        eps: config.eps,
        layer_scale: config.init_values,
        qk_norm: config.qk_norm,
        scale_attn_norm: config.scale_attn_norm,
        scale_mlp_norm: config.scale_mlp_norm,
        proj_bias: config.proj_bias,
        act: config.act_layer,
    }
}
