//! The ViT's backward: the loss of a batch and the gradient of every parameter, under timm's
//! names, each step quoting the forward line it differentiates.
//!
//! ```text
//! tokens = embed(patches)            d patch_embed, d cls_token, d pos_embed (summed over the batch)
//! x_{l+1} = block_l(x_l)              dx_l = block_l.backward(x_l, dx_{l+1})   (inputs x_l kept)
//! xn = norm(x_L)                      dx_L = norm.backward(x_L, dxn)
//! pooled = row 0 | mean of patches    dxn[row 0] = dpooled | dxn[patch rows] = dpooled / G^2
//! pn = fc_norm(pooled)                dpooled = fc_norm.backward(pooled, dpn)
//! logits = head(pn)                   dpn = head.backward(pn, dlogits)
//! DeiT: logits = (head(x_c) + head_dist(x_d)) / 2    dx_c = head.backward(x_c, dlogits / 2), same for x_d
//! loss = CE(logits, targets)          dlogits = (softmax - q) / B
//! ```
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::nn::{Init, Vit, VitConfig, VitOptions};
//! let mut c = VitConfig::tiny(8, 4, 3);
//! (c.embed_dim, c.depth, c.num_heads) = (8, 1, 2);
//! let vit = Vit::new(c, &mut Init::new(0)).unwrap();
//! let x = ChwImage::from_fn(3, 8, 8, |c, y, x| (c + y + x) as f32 * 0.1).unwrap();
//! let (loss, grads) = vit.loss_and_grads(&[x], &[2], 0.1, &VitOptions::default()).unwrap();
//! assert!(loss > 0.0);
//! assert!(grads.to_tensor_map().unwrap().contains("blocks.0.attn.qkv.weight"));
//! ```

use super::pool::{pool, pool_backward};
use super::{GlobalPool, Vit, VitOptions};
use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::graph::{Graph, GraphSpec};
use crate::image::ChwImage;
use crate::nn::{AttentionGrads, BlockGrads, CrossEntropy, LayerNormGrads, LinearGrads, LowRankGrads};
use crate::tensor::Matrix;

/// Gradients of every [`Vit`] parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct VitGrads {
    /// `patch_embed.proj` as a linear layer `[D x C*P*P]`.
    pub patch_embed: LinearGrads,
    /// `cls_token` `[D]`.
    pub cls_token: Option<Vec<f32>>,
    /// `dist_token` `[D]` (DeiT).
    pub dist_token: Option<Vec<f32>>,
    /// `reg_token` `[R x D]`.
    pub reg_token: Option<Matrix>,
    /// `pos_embed` `[T' x D]` (no rows without a position embedding).
    pub pos_embed: Matrix,
    /// `norm_pre`.
    pub norm_pre: Option<LayerNormGrads>,
    /// Per block.
    pub blocks: Vec<BlockGrads>,
    /// `norm`.
    pub norm: Option<LayerNormGrads>,
    /// `fc_norm`.
    pub fc_norm: Option<LayerNormGrads>,
    /// `head`.
    pub head: Option<LinearGrads>,
    /// `head_dist` (DeiT).
    pub head_dist: Option<LinearGrads>,
    /// Shapes for naming: (D, C, Ph, Pw).
    dims: (usize, usize, usize, usize),
    /// The relative position window `M`, for naming the table's shape.
    relative_window: Option<usize>,
}

impl VitGrads {
    /// Every gradient tensor, mutable (for clipping).
    pub fn slices_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        self.patch_embed.push_slices(&mut out);
        if let Some(c) = self.cls_token.as_mut() {
            out.push(c);
        }
        if let Some(r) = self.reg_token.as_mut() {
            out.push(r.as_mut_slice());
        }
        out.push(self.pos_embed.as_mut_slice());
        if let Some(n) = self.norm_pre.as_mut() {
            n.push_slices(&mut out);
        }
        for b in &mut self.blocks {
            b.norm1.push_slices(&mut out);
            if let AttentionGrads::Timm { qkv, qk_norm, norm, proj } = &mut b.attn {
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
            for g in [&mut b.ls1, &mut b.ls2].into_iter().flatten() {
                out.push(g);
            }
            b.norm2.push_slices(&mut out);
            b.mlp.fc1.push_slices(&mut out);
            if let Some(n) = b.mlp.norm.as_mut() {
                n.push_slices(&mut out);
            }
            b.mlp.fc2.push_slices(&mut out);
            if let Some(g) = b.relative_position.as_mut() {
                out.push(g);
            }
            if let Some(g) = b.low_rank.as_mut() {
                g.push_slices(&mut out);
            }
        }
        for g in [&mut self.norm, &mut self.fc_norm].into_iter().flatten() {
            g.push_slices(&mut out);
        }
        if let Some(h) = self.head.as_mut() {
            h.push_slices(&mut out);
        }
        if let Some(c) = self.dist_token.as_mut() {
            out.push(c);
        }
        if let Some(h) = self.head_dist.as_mut() {
            h.push_slices(&mut out);
        }
        out
    }

    /// The gradients under timm's parameter names and shapes (as `model.named_parameters()`).
    pub fn to_tensor_map(&self) -> Result<TensorMap> {
        let mut m = TensorMap::default();
        let (d, c, ph, pw) = self.dims;
        let lin = |m: &mut TensorMap, name: &str, g: &LinearGrads, shape: Vec<usize>| -> Result<()> {
            m.insert(format!("{name}.weight"), shape, g.weight.as_slice().to_vec())?;
            if let Some(b) = &g.bias {
                m.insert(format!("{name}.bias"), vec![b.len()], b.clone())?;
            }
            Ok(())
        };
        let ln = |m: &mut TensorMap, name: &str, g: &LayerNormGrads| -> Result<()> {
            m.insert(format!("{name}.weight"), vec![g.weight.len()], g.weight.clone())?;
            m.insert(format!("{name}.bias"), vec![g.bias.len()], g.bias.clone())
        };
        let rel_rows = self.relative_window.map_or(0, |w| (2 * w - 1) * (2 * w - 1));
        lin(&mut m, "patch_embed.proj", &self.patch_embed, vec![d, c, ph, pw])?;
        if let Some(cls) = &self.cls_token {
            m.insert("cls_token", vec![1, 1, d], cls.clone())?;
        }
        if let Some(r) = &self.reg_token {
            m.insert("reg_token", vec![1, r.rows(), d], r.as_slice().to_vec())?;
        }
        if self.pos_embed.rows() > 0 {
            m.insert("pos_embed", vec![1, self.pos_embed.rows(), d], self.pos_embed.as_slice().to_vec())?;
        }
        if let Some(g) = &self.norm_pre {
            ln(&mut m, "norm_pre", g)?;
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let pre = format!("blocks.{i}.");
            ln(&mut m, &format!("{pre}norm1"), &b.norm1)?;
            if let AttentionGrads::Timm { qkv, qk_norm, norm, proj } = &b.attn {
                lin(&mut m, &format!("{pre}attn.qkv"), qkv, vec![qkv.weight.rows(), qkv.weight.cols()])?;
                if let Some((q, k)) = qk_norm {
                    ln(&mut m, &format!("{pre}attn.q_norm"), q)?;
                    ln(&mut m, &format!("{pre}attn.k_norm"), k)?;
                }
                if let Some(n) = norm {
                    ln(&mut m, &format!("{pre}attn.norm"), n)?;
                }
                lin(&mut m, &format!("{pre}attn.proj"), proj, vec![proj.weight.rows(), proj.weight.cols()])?;
            }
            ln(&mut m, &format!("{pre}norm2"), &b.norm2)?;
            for (name, g) in [("mlp.fc1", &b.mlp.fc1), ("mlp.fc2", &b.mlp.fc2)] {
                lin(&mut m, &format!("{pre}{name}"), g, vec![g.weight.rows(), g.weight.cols()])?;
            }
            if let Some(g) = &b.mlp.norm {
                ln(&mut m, &format!("{pre}mlp.norm"), g)?;
            }
            for (name, g) in [("ls1.gamma", &b.ls1), ("ls2.gamma", &b.ls2)] {
                if let Some(g) = g {
                    m.insert(format!("{pre}{name}"), vec![g.len()], g.clone())?;
                }
            }
            if let Some(g) = &b.relative_position {
                let heads = g.len() / rel_rows.max(1);
                m.insert(format!("{pre}attn.relative_position_bias_table"), vec![rel_rows, heads], g.clone())?;
            }
            match &b.low_rank {
                Some(LowRankGrads::Linformer { e, f }) => {
                    m.insert(format!("{pre}attn.proj_k"), vec![e.rows(), e.cols()], e.as_slice().to_vec())?;
                    if let Some(f) = f {
                        m.insert(format!("{pre}attn.proj_v"), vec![f.rows(), f.cols()], f.as_slice().to_vec())?;
                    }
                }
                Some(LowRankGrads::Nystrom { res_conv }) => {
                    let (h, k) = res_conv.shape();
                    m.insert(format!("{pre}attn.res_conv.weight"), vec![h, 1, k, 1], res_conv.as_slice().to_vec())?;
                }
                Some(LowRankGrads::None) | None => {}
            }
        }
        if let Some(g) = &self.norm {
            ln(&mut m, "norm", g)?;
        }
        if let Some(g) = &self.fc_norm {
            ln(&mut m, "fc_norm", g)?;
        }
        if let Some(g) = &self.head {
            lin(&mut m, "head", g, vec![g.weight.rows(), g.weight.cols()])?;
        }
        if let Some(c) = &self.dist_token {
            m.insert("dist_token", vec![1, 1, d], c.clone())?;
        }
        if let Some(g) = &self.head_dist {
            lin(&mut m, "head_dist", g, vec![g.weight.rows(), g.weight.cols()])?;
        }
        Ok(m)
    }
}

/// One parameter tensor and its gradient, for an optimiser: `decay` follows timm's rule
/// (weight decay for weight matrices only; not for biases, norms, LayerScale, `pos_embed`,
/// `cls_token`).
type Visit<'f> = crate::nn::ParamVisitor<'f>;

impl Vit {
    /// Calls `f(slot, parameter, gradient, decay)` for every parameter tensor, in a fixed order
    /// (`slot` numbers the tensors, for optimiser state).
    pub fn visit_params_mut(&mut self, grads: &VitGrads, f: &mut Visit<'_>) {
        let mut slot = 0;
        self.patch_embed.visit_params(&grads.patch_embed, &mut slot, f);
        if let (Some(c), Some(gc)) = (self.cls_token.as_mut(), grads.cls_token.as_ref()) {
            f(slot, c, gc, false);
        }
        slot += 1;
        f(slot, self.pos_embed.as_mut_slice(), grads.pos_embed.as_slice(), false);
        slot += 1;
        for (b, gb) in self.blocks.iter_mut().zip(&grads.blocks) {
            b.norm1.visit_params(&gb.norm1, &mut slot, f);
            let base = slot;
            b.attn.visit_params(&gb.attn, &mut |local, p, g, decay| f(base + local, p, g, decay));
            slot += 4;
            for (ls, g) in [(&mut b.ls1, &gb.ls1), (&mut b.ls2, &gb.ls2)] {
                if let (Some(p), Some(g)) = (ls.as_mut(), g.as_ref()) {
                    f(slot, p, g, false);
                }
                slot += 1;
            }
            b.norm2.visit_params(&gb.norm2, &mut slot, f);
            b.mlp.fc1.visit_params(&gb.mlp.fc1, &mut slot, f);
            b.mlp.fc2.visit_params(&gb.mlp.fc2, &mut slot, f);
        }
        if let (Some(n), Some(g)) = (self.norm.as_mut(), grads.norm.as_ref()) {
            n.visit_params(g, &mut slot, f);
        } else {
            slot += 2;
        }
        if let (Some(n), Some(g)) = (self.fc_norm.as_mut(), grads.fc_norm.as_ref()) {
            n.visit_params(g, &mut slot, f);
        } else {
            slot += 2;
        }
        if let (Some(h), Some(g)) = (self.head.as_mut(), grads.head.as_ref()) {
            h.visit_params(g, &mut slot, f);
        }
        // The tensors beyond timm's ViT come after all of timm's (so that a model without them
        // keeps its slot numbers): per block, the relative position table and two low-rank slots.
        let mut slot = slot + 2;
        for (b, gb) in self.blocks.iter_mut().zip(&grads.blocks) {
            if let (Some(rp), Some(g)) = (b.relative_position.as_mut(), gb.relative_position.as_ref()) {
                f(slot, rp.table.as_mut_slice(), g, false);
            }
            if let (Some(lr), Some(g)) = (b.low_rank.as_mut(), gb.low_rank.as_ref()) {
                lr.visit_params(g, slot + 1, f);
            }
            slot += 3;
        }
        // Then the parts of timm's later options, in fixed slots whether present or not (a
        // model without them keeps every slot number above): the register tokens and
        // `norm_pre`, then per block `q_norm`, `k_norm`, `attn.norm` and `mlp.norm`.
        if let (Some(r), Some(g)) = (self.reg_token.as_mut(), grads.reg_token.as_ref()) {
            f(slot, r.as_mut_slice(), g.as_slice(), false);
        }
        slot += 1;
        match (self.norm_pre.as_mut(), grads.norm_pre.as_ref()) {
            (Some(n), Some(g)) => n.visit_params(g, &mut slot, f),
            _ => slot += 2,
        }
        for (b, gb) in self.blocks.iter_mut().zip(&grads.blocks) {
            b.attn.visit_norm_params(&gb.attn, &mut slot, f);
            match (b.mlp.norm.as_mut(), gb.mlp.norm.as_ref()) {
                (Some(n), Some(g)) => n.visit_params(g, &mut slot, f),
                _ => slot += 2,
            }
        }
        // DeiT's distillation token and head, last.
        if let (Some(c), Some(gc)) = (self.dist_token.as_mut(), grads.dist_token.as_ref()) {
            f(slot, c, gc, false);
        }
        slot += 1;
        if let (Some(h), Some(g)) = (self.head_dist.as_mut(), grads.head_dist.as_ref()) {
            h.visit_params(g, &mut slot, f);
        }
    }

    /// Zero gradients shaped like the model's parameters.
    pub fn zero_grads(&self) -> VitGrads {
        let cfg = self.config();
        VitGrads {
            patch_embed: LinearGrads::zeros(&self.patch_embed),
            cls_token: self.cls_token.as_ref().map(|c| vec![0.0; c.len()]),
            reg_token: self.reg_token.as_ref().map(|r| Matrix::zeros(r.rows(), r.cols())),
            pos_embed: Matrix::zeros(self.pos_embed.rows(), self.pos_embed.cols()),
            norm_pre: self.norm_pre.as_ref().map(|n| LayerNormGrads::zeros(n.dim())),
            blocks: self.blocks.iter().map(|b| b.zero_grads()).collect(),
            norm: self.norm.as_ref().map(|n| LayerNormGrads::zeros(n.weight.len())),
            fc_norm: self.fc_norm.as_ref().map(|n| LayerNormGrads::zeros(n.weight.len())),
            head: self.head.as_ref().map(LinearGrads::zeros),
            dist_token: self.dist_token.as_ref().map(|c| vec![0.0; c.len()]),
            head_dist: self.head_dist.as_ref().map(LinearGrads::zeros),
            dims: (cfg.embed_dim, cfg.in_chans, cfg.patch_size.h, cfg.patch_size.w),
            relative_window: cfg.relative_position_bias,
        }
    }

    /// The mean cross-entropy (label smoothing `smoothing`) of `images` against `targets`, and
    /// the gradient of every parameter (see the module docs).
    pub fn loss_and_grads(
        &self,
        images: &[ChwImage],
        targets: &[usize],
        smoothing: f32,
        options: &VitOptions,
    ) -> Result<(f32, VitGrads)> {
        self.loss_grads_logits(images, targets, smoothing, options).map(|(l, g, _)| (l, g))
    }

    /// [`Vit::loss_and_grads`], also returning the forward's logits `[B x K]` (for accuracy).
    pub fn loss_grads_logits(
        &self,
        images: &[ChwImage],
        targets: &[usize],
        smoothing: f32,
        options: &VitOptions,
    ) -> Result<(f32, VitGrads, Matrix)> {
        let cfg = self.config().clone();
        let specs = self.layer_specs(&options.graphs)?;
        let (b, t, d) = (images.len(), cfg.num_tokens(), cfg.embed_dim);
        if b == 0 {
            return Err(crate::Error::invalid("ViT input", "no images"));
        }
        if cfg.global_pool == GlobalPool::None {
            return Err(crate::Error::invalid(
                "ViT training",
                "global_pool '' gives one output per token; the loss needs one prediction per image",
            ));
        }
        let mut grads = self.zero_grads();
        // ---- forward, keeping each block's input and graph
        let patches = self.patches(images)?;
        let tokens = self.embed_patches(&patches, b)?;
        let mut x = match &self.norm_pre {
            Some(n) => n.forward(&tokens)?, // x_0 = norm_pre(tokens)
            None => tokens.clone(),
        };
        let mut cache: Vec<(GraphSpec, Graph)> = Vec::new();
        let mut layer_inputs = Vec::with_capacity(self.blocks.len());
        for (l, (block, spec)) in self.blocks.iter().zip(&specs).enumerate() {
            let graph = self.layer_graph(block, spec, &x, b, &mut cache)?;
            let la = self.layer_attention(l, spec, &graph)?;
            let (next, block_cache) = block.forward_cached_with(&graph, &x, &la.options(Default::default(), false))?;
            layer_inputs.push((std::mem::replace(&mut x, next), graph, block_cache, la));
        }
        let xn = match &self.norm {
            Some(n) => n.forward(&x)?,
            None => x.clone(),
        };
        if cfg.distilled {
            // ---- DeiT: forward of the two heads, and the backward to the two token rows
            let (logits, _) = self.distilled_head(&xn, b)?;
            let (loss, dlogits) = CrossEntropy { smoothing }.forward_backward(&logits, targets)?; // loss = CE(logits)
            let half = Matrix::from_fn(dlogits.rows(), dlogits.cols(), |i, k| 0.5 * dlogits.get(i, k));
            let (xc, xd) = self.distilled_tokens(&xn, b);
            // logits = (head(x_c) + head_dist(x_d)) / 2; without classes logits = (x_c + x_d) / 2
            let (dxc, dxd) = match (&self.head, &mut grads.head, &self.head_dist, &mut grads.head_dist) {
                (Some(h), Some(gh), Some(hd), Some(ghd)) => {
                    (h.backward(&xc, &half, gh)?, hd.backward(&xd, &half, ghd)?)
                }
                _ => (half.clone(), half),
            };
            let mut dxn = Matrix::zeros(b * t, d);
            for i in 0..b {
                dxn.row_mut(i * t).copy_from_slice(dxc.row(i)); // x_c = xn[b T]
                dxn.row_mut(i * t + 1).copy_from_slice(dxd.row(i)); // x_d = xn[b T + 1]
            }
            return self.backward_from_tokens(x, dxn, layer_inputs, tokens, patches, grads, loss, logits, b);
        }
        let (pooled, pool_cache) = pool(&cfg, &xn, b)?;
        let pn = match &self.fc_norm {
            Some(n) => n.forward(&pooled)?,
            None => pooled.clone(),
        };
        let logits = match &self.head {
            Some(h) => h.forward(&pn)?,
            None => pn.clone(),
        };
        // ---- backward
        let (loss, dlogits) = CrossEntropy { smoothing }.forward_backward(&logits, targets)?; // loss = CE(logits)
        let logits = logits.clone();
        let dpn = match (&self.head, &mut grads.head) {
            (Some(h), Some(gh)) => h.backward(&pn, &dlogits, gh)?, // logits = head(pn)
            _ => dlogits,
        };
        let dpooled = match (&self.fc_norm, &mut grads.fc_norm) {
            (Some(n), Some(gn)) => n.backward(&pooled, &dpn, gn)?, // pn = fc_norm(pooled)
            _ => dpn,
        };
        let dxn = pool_backward(&cfg, &pool_cache, &dpooled, b)?; // pooled = pool(xn)
        self.backward_from_tokens(x, dxn, layer_inputs, tokens, patches, grads, loss, logits, b)
    }

    /// The backward from the gradient of the final tokens `dxn` (after `norm`) down to the
    /// patch embedding.
    #[allow(clippy::too_many_arguments)]
    fn backward_from_tokens(
        &self,
        x: Matrix,
        dxn: Matrix,
        layer_inputs: Vec<(Matrix, Graph, crate::nn::BlockCache, super::LayerAttention<'_>)>,
        tokens: Matrix,
        patches: Matrix,
        mut grads: VitGrads,
        loss: f32,
        logits: Matrix,
        b: usize,
    ) -> Result<(f32, VitGrads, Matrix)> {
        let cfg = self.config();
        let (t, np, d, prefix) = (cfg.num_tokens(), cfg.num_patches(), cfg.embed_dim, cfg.prefix_tokens());
        let mut dx = match (&self.norm, &mut grads.norm) {
            (Some(n), Some(gn)) => n.backward(&x, &dxn, gn)?, // xn = norm(x_L)
            _ => dxn,
        };
        // A layerwise-shared Linformer's projections live in block 0: every layer's gradient goes there.
        let mut shared_grads = match layer_inputs.first() {
            Some((.., la)) if la.shares_low_rank() => grads.blocks[0].low_rank.take(),
            _ => None,
        };
        for ((block, (x_l, graph, c, la)), gb) in
            self.blocks.iter().zip(&layer_inputs).zip(grads.blocks.iter_mut()).rev()
        {
            let options = la.options(Default::default(), false);
            // x_{l+1} = block_l(x_l)
            dx = block.backward_cached_with(graph, x_l, c, &dx, gb, &options, la.rel_index(), shared_grads.as_mut())?;
        }
        if shared_grads.is_some() {
            grads.blocks[0].low_rank = shared_grads;
        }
        if let (Some(n), Some(g)) = (&self.norm_pre, grads.norm_pre.as_mut()) {
            dx = n.backward(&tokens, &dx, g)?; // x_0 = norm_pre(tokens)
        }
        // tokens[i*t + k] = prefix_k (+ pos[k]);  tokens[i*t + prefix + r] = patch_embed(patches)[i*np + r] + pos[off + r]
        let has_pos = self.pos_embed.rows() > 0;
        let pos_offset = if cfg.no_embed_class { 0 } else { prefix };
        let cls = usize::from(cfg.class_token);
        let dist = usize::from(cfg.distilled);
        let mut dpatch = Matrix::zeros(b * np, d);
        for i in 0..b {
            for k in 0..prefix {
                let src = dx.row(i * t + k);
                let target = if k < cls {
                    grads.cls_token.as_deref_mut()
                } else if k < cls + dist {
                    grads.dist_token.as_deref_mut()
                } else {
                    grads.reg_token.as_mut().map(|g| g.row_mut(k - cls - dist))
                };
                if let Some(g) = target {
                    g.iter_mut().zip(src).for_each(|(a, v)| *a += v);
                }
                if has_pos && !cfg.no_embed_class {
                    grads.pos_embed.row_mut(k).iter_mut().zip(src).for_each(|(a, v)| *a += v);
                }
            }
            for r in 0..np {
                let src = dx.row(i * t + prefix + r);
                dpatch.row_mut(i * np + r).copy_from_slice(src);
                if has_pos {
                    grads.pos_embed.row_mut(pos_offset + r).iter_mut().zip(src).for_each(|(a, v)| *a += v);
                }
            }
        }
        self.patch_embed.backward(&patches, &dpatch, &mut grads.patch_embed)?;
        Ok((loss, grads, logits))
    }
}
