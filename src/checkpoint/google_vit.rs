//! Google's original ViT checkpoints (`ViT-B_16.npz`, big_vision's `.npz`) in timm's names and
//! PyTorch layouts, and back: [`google_vit_to_timm`], [`timm_vit_to_google`].
//!
//! See [`google_vit_to_timm`] for the mapping, which is timm's `_load_weights` for plain ViTs.
//!
//! ```
//! use patchgraph::checkpoint::{TensorMap, google_vit_to_timm, timm_vit_to_google};
//! // A block-less ViT: 1x1 patches of 1 channel, width 2, one position.
//! let mut g = TensorMap::default();
//! g.insert("embedding/kernel", vec![1, 1, 1, 2], vec![1.0, 2.0]).unwrap();
//! g.insert("embedding/bias", vec![2], vec![0.5, 0.25]).unwrap();
//! g.insert("Transformer/posembed_input/pos_embedding", vec![1, 1, 2], vec![3.0, 4.0]).unwrap();
//! let mut t = google_vit_to_timm(g.clone(), "tiny").unwrap();
//! assert_eq!(t.get("patch_embed.proj.weight").unwrap().shape, vec![2, 1, 1, 1]);
//! assert_eq!(timm_vit_to_google(&t, 1, "tiny").unwrap(), g); // and back
//! assert_eq!(t.take("pos_embed", &[1, 1, 2]).unwrap(), vec![3.0, 4.0]);
//!
//! g.insert("foo/bar", vec![1], vec![0.0]).unwrap();
//! assert!(google_vit_to_timm(g, "tiny").is_err()); // `foo/bar` is not part of a ViT
//! ```

use super::layout::permute_axes;
use super::{Tensor, TensorMap};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Renames and re-lays out a ViT checkpoint in Google's naming (the tensors of `ViT-B_16.npz`)
/// into timm's `state_dict` names and layouts.
///
/// The mapping is timm's `_load_weights` (`timm/models/vision_transformer.py`) for plain ViTs.
/// `P` is the patch size, `C` the input channels, `D` the width, `H` the heads of `d = D / H`
/// channels, `M` the MLP width, `K` the classes, `N` the positions; block `i` is
/// `Transformer/encoderblock_{i}/` in Google's naming and `blocks.{i}.` in timm's.
///
/// | Google (JAX layout) | timm (PyTorch layout) | relayout |
/// |---|---|---|
/// | `embedding/kernel` `[P, P, C, D]` | `patch_embed.proj.weight` `[D, C, P, P]` | axes `(3, 2, 0, 1)` |
/// | `embedding/bias` `[D]` | `patch_embed.proj.bias` | |
/// | `cls` `[1, 1, D]` (optional) | `cls_token` | |
/// | `Transformer/posembed_input/pos_embedding` `[1, N, D]` | `pos_embed` | |
/// | `Transformer/encoder_norm/{scale,bias}` `[D]` (optional) | `norm.{weight,bias}` | |
/// | `pre_logits/kernel` `[D, R]`, `/bias` (optional) | `pre_logits.fc.{weight,bias}` | transpose |
/// | `head/kernel` `[D or R, K]`, `head/bias` `[K]` (optional) | `head.{weight,bias}` | transpose |
/// | block `LayerNorm_0/{scale,bias}` | `norm1.{weight,bias}` | |
/// | block `MultiHeadDotProductAttention_1/{query,key,value}/kernel` `[D, H, d]` | `attn.qkv.weight` `[3D, D]` | flatten to `[D, D]`, transpose, stack q, k, v |
/// | block `MultiHeadDotProductAttention_1/{query,key,value}/bias` `[H, d]` | `attn.qkv.bias` `[3D]` | flatten, stack |
/// | block `MultiHeadDotProductAttention_1/out/kernel` `[H, d, D]` | `attn.proj.weight` `[D, D]` | flatten to `[D, D]`, transpose |
/// | block `MultiHeadDotProductAttention_1/out/bias` | `attn.proj.bias` | |
/// | block `LayerNorm_2/{scale,bias}` | `norm2.{weight,bias}` | |
/// | block `MlpBlock_3/Dense_0/{kernel,bias}` `[D, M]` | `mlp.fc1.{weight,bias}` | transpose |
/// | block `MlpBlock_3/Dense_1/{kernel,bias}` `[M, D]` | `mlp.fc2.{weight,bias}` | transpose |
///
/// As in timm, the names may sit under a prefix `opt/target/`, `params/` or `params/img/`, and
/// big_vision checkpoints (a `params/` prefix, or a top-level `pos_embedding`, or scanned blocks)
/// number the sub-modules `MultiHeadDotProductAttention_0`, `LayerNorm_1` and `MlpBlock_0`, keep
/// the position embedding at `pos_embedding`, and may store all blocks "scanned" as one
/// `Transformer/encoderblock/...` tensor with a leading layer axis.
///
/// timm's current `_load_weights` skips `pre_logits` (the representation layer of the older
/// ImageNet-21k checkpoints); here it becomes `pre_logits.fc.*` (timm's former name) so that
/// nothing is dropped silently: a model without that layer reports it as unexpected. Hybrid
/// (ResNet-stem) and MAP-head checkpoints are not plain ViTs: their tensors are reported.
///
/// timm loads into a given model; this maps names and layouts only. It does not resample a
/// position table or patch kernel to another grid or patch size (timm does when the model's
/// differ), and `encoder_norm` always becomes `norm.*` (timm leaves it out of models whose final
/// norm is `fc_norm`).
///
/// Every problem is collected and returned at once as [`Error::Checkpoint`] with `what` as its
/// path: missing tensors, wrong or inconsistent shapes (expected vs found), and every tensor that
/// is not part of a plain ViT.
pub fn google_vit_to_timm(map: TensorMap, what: &str) -> Result<TensorMap> {
    let has = |name: &str| map.floats.contains_key(name);
    // timm's order of preference for the prefix.
    let prefix = ["opt/target/", "params/", "params/img/"]
        .into_iter()
        .find(|p| has(&format!("{p}embedding/kernel")))
        .unwrap_or("");
    let scanned = has(&format!("{prefix}Transformer/encoderblock/LayerNorm_0/scale"));
    let big_vision = prefix.starts_with("params/") || has(&format!("{prefix}pos_embedding")) || scanned;
    let g = Names::google(prefix, big_vision);

    let mut problems = Vec::new();
    let width = [(&g.embed_kernel, 4), (&g.embed_bias, 1), (&g.pos, 3)].into_iter().find_map(|(name, rank)| {
        let t = map.floats.get(name.as_str()).filter(|t| t.shape.len() == rank)?;
        t.shape.last().copied().filter(|&d| d <= t.data.len())
    });
    let d = match width {
        Some(d) if d > 0 => d,
        _ => {
            problems.push(format!(
                "cannot tell the width D: `{}` [P, P, C, D], `{}` [D] and `{}` [1, N, D] are all missing, \
                 misshapen or empty",
                g.embed_kernel, g.embed_bias, g.pos
            ));
            return Err(Error::Checkpoint { path: what.to_string(), problems });
        }
    };
    let scan = if scanned { unscan(&map, &g, d, &mut problems) } else { Unscanned::default() };
    let mut c = Converter::new(&map, &scan, problems);
    c.out.metadata = map.metadata.clone();

    if let Some(k) = c.required(&g.embed_kernel) {
        match *k.shape.as_slice() {
            [ph, pw, ch, w] if w == d => {
                c.relayout_to("patch_embed.proj.weight", &g.embed_kernel, k, &k.shape, &[3, 2, 0, 1], &[w, ch, ph, pw])
            }
            _ => c.problem_shape(&g.embed_kernel, &format!("[P, P, C, {d}]"), &k.shape),
        }
    }
    c.copy(&g.embed_bias, "patch_embed.proj.bias", &[d]);
    if c.has(&g.cls) {
        c.copy(&g.cls, "cls_token", &[1, 1, d]);
    }
    if let Some(p) = c.required(&g.pos) {
        let ok = matches!(p.shape.as_slice(), [1, _, w] if *w == d);
        if let Some(p) = c.expect_desc(&g.pos, p, ok, &format!("[1, N, {d}]")) {
            c.put("pos_embed", p.shape.clone(), p.data.clone());
        }
    }
    if c.has(&g.norm_scale) || c.has(&g.norm_bias) {
        c.copy(&g.norm_scale, "norm.weight", &[d]);
        c.copy(&g.norm_bias, "norm.bias", &[d]);
    }
    // Optional dense layers, [in, out] kernels: the representation layer, then the classifier.
    let mut width_in = d;
    for (kernel, bias, timm) in [(&g.pre_kernel, &g.pre_bias, "pre_logits.fc"), (&g.head_kernel, &g.head_bias, "head")]
    {
        if !(c.has(kernel) || c.has(bias)) {
            continue;
        }
        let k = c.required(kernel);
        let b = c.required(bias);
        let outs = match (k.map(|k| k.shape.as_slice()), b.map(|b| b.shape.as_slice())) {
            (Some([i, o]), _) if *i == width_in => Some(*o),
            (_, Some([o])) => Some(*o),
            _ => None,
        };
        if let Some(k) = k {
            c.expect_transposed(kernel, k, [Some(width_in), outs], &format!("{timm}.weight"));
        }
        if let Some(b) = b {
            match outs {
                Some(o) => c.copy_tensor(bias, b, &format!("{timm}.bias"), &[o]),
                None => c.problem_shape(bias, "[K]", &b.shape),
            }
        }
        width_in = outs.unwrap_or(width_in);
    }

    let names: Vec<&str> = map.floats.keys().chain(scan.tensors.keys()).map(String::as_str).collect();
    let blocks = block_indices(&names, &format!("{prefix}Transformer/encoderblock_"), '/');
    c.report_gaps(&blocks, &format!("{prefix}Transformer/encoderblock_{{i}}/"));
    for i in blocks {
        let b = g.block(i);
        let t = |name: &str| format!("blocks.{i}.{name}");
        c.copy(&b.ln1_scale, &t("norm1.weight"), &[d]);
        c.copy(&b.ln1_bias, &t("norm1.bias"), &[d]);
        let kernels = b.qkv_kernels.each_ref().map(|n| c.required(n));
        let biases = b.qkv_biases.each_ref().map(|n| c.required(n));
        let out_kernel = c.required(&b.out_kernel);
        // Heads and head width from the first kernel that shows them: [D, H, d] or [H, d, D].
        let heads = kernels
            .iter()
            .flatten()
            .find_map(|k| match k.shape.as_slice() {
                [c, h, w] if *c == d && h.checked_mul(*w) == Some(d) => Some((*h, *w)),
                _ => None,
            })
            .or_else(|| match out_kernel.map(|k| k.shape.as_slice()) {
                Some([h, w, c]) if *c == d && h.checked_mul(*w) == Some(d) => Some((*h, *w)),
                _ => None,
            });
        let (mut qkv_w, mut qkv_b) = (Vec::new(), Vec::new());
        let mut qkv_ok = true;
        for (name, k) in b.qkv_kernels.iter().zip(kernels) {
            let k = k.and_then(|k| c.expect_heads(name, k, heads, d, Part::InKernel));
            match k.and_then(|k| c.relayout(name, &k.data, &[d, d], &[1, 0])) {
                Some(w) => qkv_w.extend(w),
                None => qkv_ok = false,
            }
        }
        for (name, bias) in b.qkv_biases.iter().zip(biases) {
            match bias.and_then(|bias| c.expect_heads(name, bias, heads, d, Part::Bias)) {
                Some(bias) => qkv_b.extend(&bias.data),
                None => qkv_ok = false,
            }
        }
        if qkv_ok {
            c.put(&t("attn.qkv.weight"), vec![3 * d, d], qkv_w);
            c.put(&t("attn.qkv.bias"), vec![3 * d], qkv_b);
        }
        if let Some(k) = out_kernel.and_then(|k| c.expect_heads(&b.out_kernel, k, heads, d, Part::OutKernel)) {
            c.relayout_to(&t("attn.proj.weight"), &b.out_kernel, k, &[d, d], &[1, 0], &[d, d]);
        }
        c.copy(&b.out_bias, &t("attn.proj.bias"), &[d]);
        c.copy(&b.ln2_scale, &t("norm2.weight"), &[d]);
        c.copy(&b.ln2_bias, &t("norm2.bias"), &[d]);
        // MLP: Dense_0 [D, M], Dense_1 [M, D]; M from the first tensor that shows it.
        let fc1 = c.required(&b.fc1_kernel);
        let fc1_bias = c.required(&b.fc1_bias);
        let fc2 = c.required(&b.fc2_kernel);
        let m = match (fc1.map(|k| k.shape.as_slice()), fc2.map(|k| k.shape.as_slice())) {
            (Some([w, m]), _) if *w == d => Some(*m),
            (_, Some([m, w])) if *w == d => Some(*m),
            _ => fc1_bias.and_then(|b| match b.shape.as_slice() {
                [m] => Some(*m),
                _ => None,
            }),
        };
        if let Some(k) = fc1 {
            c.expect_transposed(&b.fc1_kernel, k, [Some(d), m], &t("mlp.fc1.weight"));
        }
        if let Some(bias) = fc1_bias {
            match m {
                Some(m) => c.copy_tensor(&b.fc1_bias, bias, &t("mlp.fc1.bias"), &[m]),
                None => c.problem_shape(&b.fc1_bias, "[M]", &bias.shape),
            }
        }
        if let Some(k) = fc2 {
            c.expect_transposed(&b.fc2_kernel, k, [m, Some(d)], &t("mlp.fc2.weight"));
        }
        c.copy(&b.fc2_bias, &t("mlp.fc2.bias"), &[d]);
    }
    c.finish(what, "not part of a plain ViT in Google's naming")
}

/// The inverse of [`google_vit_to_timm`]: a timm ViT `state_dict` (as a [`TensorMap`]) in
/// Google's original naming and layouts (`Transformer/encoderblock_{i}/...`, no prefix), with
/// `heads` attention heads (a timm checkpoint does not record them).
///
/// Every problem is collected and returned at once as [`Error::Checkpoint`] with `what` as its
/// path, as in [`google_vit_to_timm`]; timm tensors that Google's naming has no place for
/// (`fc_norm`, `reg_token`, layer scales...) are problems too. `heads == 0` is
/// [`Error::Invalid`].
pub fn timm_vit_to_google(map: &TensorMap, heads: usize, what: &str) -> Result<TensorMap> {
    if heads == 0 {
        return Err(Error::invalid("heads", "a ViT has at least one attention head"));
    }
    let g = Names::google("", false);
    let mut problems = Vec::new();
    let width = [("patch_embed.proj.weight", 4, 0), ("patch_embed.proj.bias", 1, 0), ("pos_embed", 3, 2)]
        .into_iter()
        .find_map(|(name, rank, axis)| {
            let t = map.floats.get(name).filter(|t| t.shape.len() == rank)?;
            t.shape.get(axis).copied().filter(|&d| d <= t.data.len())
        });
    let d = match width {
        Some(d) if d > 0 => d,
        _ => {
            problems.push(
                "cannot tell the width D: `patch_embed.proj.weight` [D, C, P, P], `patch_embed.proj.bias` [D] \
                 and `pos_embed` [1, N, D] are all missing, misshapen or empty"
                    .to_string(),
            );
            return Err(Error::Checkpoint { path: what.to_string(), problems });
        }
    };
    let head_dim = if d % heads == 0 {
        Some((heads, d / heads))
    } else {
        problems.push(format!("the width D = {d} is not a multiple of heads = {heads}"));
        None
    };
    let scan = Unscanned::default();
    let mut c = Converter::new(map, &scan, problems);
    c.out.metadata = map.metadata.clone();

    if let Some(w) = c.required("patch_embed.proj.weight") {
        match *w.shape.as_slice() {
            [o, ch, ph, pw] if o == d => {
                c.relayout_to(&g.embed_kernel, "patch_embed.proj.weight", w, &w.shape, &[2, 3, 1, 0], &[ph, pw, ch, o])
            }
            _ => c.problem_shape("patch_embed.proj.weight", &format!("[{d}, C, P, P]"), &w.shape),
        }
    }
    c.copy("patch_embed.proj.bias", &g.embed_bias, &[d]);
    if c.has("cls_token") {
        c.copy("cls_token", &g.cls, &[1, 1, d]);
    }
    if let Some(p) = c.required("pos_embed") {
        let ok = matches!(p.shape.as_slice(), [1, _, w] if *w == d);
        if let Some(p) = c.expect_desc("pos_embed", p, ok, &format!("[1, N, {d}]")) {
            c.put(&g.pos, p.shape.clone(), p.data.clone());
        }
    }
    if c.has("norm.weight") || c.has("norm.bias") {
        c.copy("norm.weight", &g.norm_scale, &[d]);
        c.copy("norm.bias", &g.norm_bias, &[d]);
    }
    let mut width_in = d;
    for (timm, kernel, bias) in [("pre_logits.fc", &g.pre_kernel, &g.pre_bias), ("head", &g.head_kernel, &g.head_bias)]
    {
        let (weight_name, bias_name) = (format!("{timm}.weight"), format!("{timm}.bias"));
        if !(c.has(&weight_name) || c.has(&bias_name)) {
            continue;
        }
        let w = c.required(&weight_name);
        let b = c.required(&bias_name);
        let outs = match (w.map(|w| w.shape.as_slice()), b.map(|b| b.shape.as_slice())) {
            (Some([o, i]), _) if *i == width_in => Some(*o),
            (_, Some([o])) => Some(*o),
            _ => None,
        };
        if let Some(w) = w {
            c.expect_transposed(&weight_name, w, [outs, Some(width_in)], kernel);
        }
        if let Some(b) = b {
            match outs {
                Some(o) => c.copy_tensor(&bias_name, b, bias, &[o]),
                None => c.problem_shape(&bias_name, "[K]", &b.shape),
            }
        }
        width_in = outs.unwrap_or(width_in);
    }

    let names: Vec<&str> = map.floats.keys().map(String::as_str).collect();
    let blocks = block_indices(&names, "blocks.", '.');
    c.report_gaps(&blocks, "blocks.{i}.");
    for i in blocks {
        let b = g.block(i);
        let t = |name: &str| format!("blocks.{i}.{name}");
        c.copy(&t("norm1.weight"), &b.ln1_scale, &[d]);
        c.copy(&t("norm1.bias"), &b.ln1_bias, &[d]);
        let qkv = t("attn.qkv.weight");
        // (3 D cannot overflow: D is at most the value count of the tensor it was read from.)
        if let (Some(w), Some((h, hd))) = (c.shaped(&qkv, &[3 * d, d]), head_dim) {
            // Rows [p D, (p + 1) D) of the [3D, D] weight are part p (q, k, v), transposed.
            for (name, rows) in b.qkv_kernels.iter().zip(w.data.chunks_exact(d * d)) {
                if let Some(k) = c.relayout(&qkv, rows, &[d, d], &[1, 0]) {
                    c.put(name, vec![d, h, hd], k);
                }
            }
        }
        let qkv_bias = t("attn.qkv.bias");
        if let (Some(bias), Some((h, hd))) = (c.shaped(&qkv_bias, &[3 * d]), head_dim) {
            for (name, part) in b.qkv_biases.iter().zip(bias.data.chunks_exact(d)) {
                c.put(name, vec![h, hd], part.to_vec());
            }
        }
        let proj = t("attn.proj.weight");
        if let (Some(w), Some((h, hd))) = (c.shaped(&proj, &[d, d]), head_dim) {
            c.relayout_to(&b.out_kernel, &proj, w, &[d, d], &[1, 0], &[h, hd, d]);
        }
        c.copy(&t("attn.proj.bias"), &b.out_bias, &[d]);
        c.copy(&t("norm2.weight"), &b.ln2_scale, &[d]);
        c.copy(&t("norm2.bias"), &b.ln2_bias, &[d]);
        let (fc1_name, fc1_bias_name, fc2_name) = (t("mlp.fc1.weight"), t("mlp.fc1.bias"), t("mlp.fc2.weight"));
        let fc1 = c.required(&fc1_name);
        let fc1_bias = c.required(&fc1_bias_name);
        let fc2 = c.required(&fc2_name);
        let m = match (fc1.map(|k| k.shape.as_slice()), fc2.map(|k| k.shape.as_slice())) {
            (Some([m, w]), _) if *w == d => Some(*m),
            (_, Some([w, m])) if *w == d => Some(*m),
            _ => fc1_bias.and_then(|b| match b.shape.as_slice() {
                [m] => Some(*m),
                _ => None,
            }),
        };
        if let Some(w) = fc1 {
            c.expect_transposed(&fc1_name, w, [m, Some(d)], &b.fc1_kernel);
        }
        if let Some(bias) = fc1_bias {
            match m {
                Some(m) => c.copy_tensor(&fc1_bias_name, bias, &b.fc1_bias, &[m]),
                None => c.problem_shape(&fc1_bias_name, "[M]", &bias.shape),
            }
        }
        if let Some(w) = fc2 {
            c.expect_transposed(&fc2_name, w, [Some(d), m], &b.fc2_kernel);
        }
        c.copy(&t("mlp.fc2.bias"), &b.fc2_bias, &[d]);
    }
    c.finish(what, "Google's ViT naming has no place for it")
}

/// Google's names of the non-block tensors, under a prefix.
struct Names {
    prefix: String,
    big_vision: bool,
    embed_kernel: String,
    embed_bias: String,
    cls: String,
    pos: String,
    norm_scale: String,
    norm_bias: String,
    pre_kernel: String,
    pre_bias: String,
    head_kernel: String,
    head_bias: String,
}

/// Google's names of one block's tensors.
struct BlockNames {
    ln1_scale: String,
    ln1_bias: String,
    /// query, key, value.
    qkv_kernels: [String; 3],
    qkv_biases: [String; 3],
    out_kernel: String,
    out_bias: String,
    ln2_scale: String,
    ln2_bias: String,
    fc1_kernel: String,
    fc1_bias: String,
    fc2_kernel: String,
    fc2_bias: String,
}

impl Names {
    fn google(prefix: &str, big_vision: bool) -> Names {
        let n = |name: &str| format!("{prefix}{name}");
        Names {
            prefix: prefix.to_string(),
            big_vision,
            embed_kernel: n("embedding/kernel"),
            embed_bias: n("embedding/bias"),
            cls: n("cls"),
            pos: n(if big_vision { "pos_embedding" } else { "Transformer/posembed_input/pos_embedding" }),
            norm_scale: n("Transformer/encoder_norm/scale"),
            norm_bias: n("Transformer/encoder_norm/bias"),
            pre_kernel: n("pre_logits/kernel"),
            pre_bias: n("pre_logits/bias"),
            head_kernel: n("head/kernel"),
            head_bias: n("head/bias"),
        }
    }

    /// The names of a block's tensors under `base` (`""` gives the names relative to a block).
    fn block_at(&self, base: &str) -> BlockNames {
        // timm's `mha_sub, b_sub, ln1_sub`.
        let (mha, mlp, ln2) = if self.big_vision { (0, 0, 1) } else { (1, 3, 2) };
        let n = |name: String| format!("{base}{name}");
        let attn = |part: &str, what: &str| n(format!("MultiHeadDotProductAttention_{mha}/{part}/{what}"));
        BlockNames {
            ln1_scale: n("LayerNorm_0/scale".into()),
            ln1_bias: n("LayerNorm_0/bias".into()),
            qkv_kernels: ["query", "key", "value"].map(|p| attn(p, "kernel")),
            qkv_biases: ["query", "key", "value"].map(|p| attn(p, "bias")),
            out_kernel: attn("out", "kernel"),
            out_bias: attn("out", "bias"),
            ln2_scale: n(format!("LayerNorm_{ln2}/scale")),
            ln2_bias: n(format!("LayerNorm_{ln2}/bias")),
            fc1_kernel: n(format!("MlpBlock_{mlp}/Dense_0/kernel")),
            fc1_bias: n(format!("MlpBlock_{mlp}/Dense_0/bias")),
            fc2_kernel: n(format!("MlpBlock_{mlp}/Dense_1/kernel")),
            fc2_bias: n(format!("MlpBlock_{mlp}/Dense_1/bias")),
        }
    }

    fn block(&self, i: usize) -> BlockNames {
        self.block_at(&format!("{}Transformer/encoderblock_{i}/", self.prefix))
    }
}

impl BlockNames {
    fn all(&self) -> Vec<&String> {
        let mut all = vec![&self.ln1_scale, &self.ln1_bias];
        all.extend(&self.qkv_kernels);
        all.extend(&self.qkv_biases);
        all.extend([&self.out_kernel, &self.out_bias, &self.ln2_scale, &self.ln2_bias]);
        all.extend([&self.fc1_kernel, &self.fc1_bias, &self.fc2_kernel, &self.fc2_bias]);
        all
    }
}

/// Scanned blocks split into per-block tensors under `Transformer/encoderblock_{i}/` names.
#[derive(Default)]
struct Unscanned {
    tensors: BTreeMap<String, Tensor>,
    /// Per-block name -> how to call it in a problem (`.../encoderblock/LayerNorm_0/scale[3]`).
    labels: BTreeMap<String, String>,
    /// Scanned tensors that were split (they count as used).
    consumed: BTreeSet<String>,
    /// Per-block names whose scanned tensor is missing or misshapen (already reported).
    silenced: BTreeSet<String>,
}

/// timm's `idx=i`: every `Transformer/encoderblock/{name}` tensor has a leading layer axis.
fn unscan(map: &TensorMap, g: &Names, d: usize, problems: &mut Vec<String>) -> Unscanned {
    let mut scan = Unscanned::default();
    let base = format!("{}Transformer/encoderblock/", g.prefix);
    let rel = g.block_at("");
    let anchor = format!("{base}{}", rel.ln1_scale);
    let layers = match map.floats.get(&anchor).map(|t| t.shape.as_slice()) {
        Some([l, w]) if *w == d => *l,
        Some(shape) => {
            problems.push(format!("tensor `{anchor}`: expected [L, {d}] (L scanned blocks), found {shape:?}"));
            return scan;
        }
        None => return scan,
    };
    for name in rel.all() {
        let scanned = format!("{base}{name}");
        let per_block: Vec<String> =
            (0..layers).map(|i| format!("{}Transformer/encoderblock_{i}/{name}", g.prefix)).collect();
        let tensor = map.floats.get(&scanned);
        let split = tensor.filter(|t| t.shape.first() == Some(&layers) && holds(t));
        match (tensor, split) {
            (None, _) => problems.push(format!("missing tensor `{scanned}` (scanned, leading axis {layers})")),
            (Some(t), None) if !holds(t) => problems.push(format!(
                "tensor `{scanned}`: shape {:?} does not hold its {} values",
                t.shape,
                t.data.len()
            )),
            (Some(t), None) => problems.push(format!(
                "tensor `{scanned}`: expected a leading axis of {layers} scanned blocks, found {:?}",
                t.shape
            )),
            (Some(_), Some(_)) => {}
        }
        scan.consumed.insert(scanned.clone());
        let Some(t) = split else {
            scan.silenced.extend(per_block);
            continue;
        };
        let shape = t.shape.get(1..).unwrap_or_default().to_vec();
        // `holds(t)`: layers * size values, so no product below overflows.
        let size: usize = shape.iter().product();
        for (i, per) in per_block.into_iter().enumerate() {
            let data = t.data.get(i * size..(i + 1) * size).unwrap_or_default().to_vec();
            if map.floats.contains_key(&per) {
                problems.push(format!("tensor `{per}` is also in the scanned `{scanned}`"));
            }
            scan.labels.insert(per.clone(), format!("{scanned}[{i}]"));
            scan.tensors.insert(per, Tensor { shape: shape.clone(), data });
        }
    }
    scan
}

/// Whether the shape of `t` agrees with its value count (`Tensor`'s fields are public).
fn holds(t: &Tensor) -> bool {
    t.shape.iter().try_fold(1usize, |n, &x| n.checked_mul(x)) == Some(t.data.len())
}

/// The block numbers `i` of names `{head}{i}{sep}...` (canonical decimal only: `07` is no block).
fn block_indices(names: &[&str], head: &str, sep: char) -> BTreeSet<usize> {
    names
        .iter()
        .filter_map(|name| {
            let (number, _) = name.strip_prefix(head)?.split_once(sep)?;
            number.parse::<usize>().ok().filter(|i| i.to_string() == number)
        })
        .collect()
}

/// Which part of an attention layer, for the shape it must have given `H` heads of width `d`.
#[derive(Clone, Copy)]
enum Part {
    /// query, key, value kernels `[D, H, d]`.
    InKernel,
    /// their biases `[H, d]`.
    Bias,
    /// the output kernel `[H, d, D]`.
    OutKernel,
}

/// Reads tensors by name, collects problems, writes the converted map.
struct Converter<'a> {
    map: &'a TensorMap,
    scan: &'a Unscanned,
    used: BTreeSet<String>,
    problems: Vec<String>,
    out: TensorMap,
}

impl<'a> Converter<'a> {
    fn new(map: &'a TensorMap, scan: &'a Unscanned, problems: Vec<String>) -> Self {
        Converter { map, scan, used: BTreeSet::new(), problems, out: TensorMap::default() }
    }

    fn label(&self, name: &str) -> String {
        self.scan.labels.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    fn find(&self, name: &str) -> Option<&'a Tensor> {
        self.scan.tensors.get(name).or_else(|| self.map.floats.get(name))
    }

    fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The tensor `name`, or a "missing" problem.
    fn required(&mut self, name: &str) -> Option<&'a Tensor> {
        self.used.insert(name.to_string());
        let t = self.find(name);
        match t {
            None if !self.scan.silenced.contains(name) => {
                self.problems.push(format!("missing tensor `{}`", self.label(name)));
            }
            Some(t) if !holds(t) => {
                let (shape, n) = (&t.shape, t.data.len());
                self.problems
                    .push(format!("tensor `{}`: shape {shape:?} does not hold its {n} values", self.label(name)));
                return None;
            }
            _ => {}
        }
        t
    }

    fn problem_shape(&mut self, name: &str, expected: &str, found: &[usize]) {
        self.problems.push(format!("tensor `{}`: expected {expected}, found {found:?}", self.label(name)));
    }

    fn expect_desc(&mut self, name: &str, t: &'a Tensor, ok: bool, expected: &str) -> Option<&'a Tensor> {
        if !ok {
            self.problem_shape(name, expected, &t.shape);
        }
        ok.then_some(t)
    }

    fn expect(&mut self, name: &str, t: &'a Tensor, expected: &[usize]) -> Option<&'a Tensor> {
        self.expect_desc(name, t, t.shape == expected, &format!("{expected:?}"))
    }

    /// The tensor `name` of shape `expected`, or a problem saying what is wrong.
    fn shaped(&mut self, name: &str, expected: &[usize]) -> Option<&'a Tensor> {
        if self.find(name).is_none() && !self.scan.silenced.contains(name) {
            self.used.insert(name.to_string());
            self.problems.push(format!("missing tensor `{}` (expected {expected:?})", self.label(name)));
            return None;
        }
        let t = self.required(name)?;
        self.expect(name, t, expected)
    }

    /// An attention tensor of heads `(H, d)`; if no tensor of the layer showed them, a problem.
    fn expect_heads(
        &mut self,
        name: &str,
        t: &'a Tensor,
        heads: Option<(usize, usize)>,
        width: usize,
        part: Part,
    ) -> Option<&'a Tensor> {
        match (heads, part) {
            (Some((h, w)), Part::InKernel) => self.expect(name, t, &[width, h, w]),
            (Some((h, w)), Part::Bias) => self.expect(name, t, &[h, w]),
            (Some((h, w)), Part::OutKernel) => self.expect(name, t, &[h, w, width]),
            (None, part) => {
                let (expected, ok) = match part {
                    Part::InKernel => (format!("[{width}, H, d] with H * d = {width}"), false),
                    Part::OutKernel => (format!("[H, d, {width}] with H * d = {width}"), false),
                    // A bias may be right while all kernels are wrong: only its own shape counts.
                    Part::Bias => {
                        let ok = matches!(t.shape.as_slice(), [h, w] if h.checked_mul(*w) == Some(width));
                        (format!("[H, d] with H * d = {width}"), ok)
                    }
                };
                self.expect_desc(name, t, ok, &expected);
                None
            }
        }
    }

    /// Copies `from` (of shape `shape`) to `to`.
    fn copy(&mut self, from: &str, to: &str, shape: &[usize]) {
        if let Some(t) = self.shaped(from, shape) {
            self.put(to, t.shape.clone(), t.data.clone());
        }
    }

    fn copy_tensor(&mut self, from: &str, t: &'a Tensor, to: &str, shape: &[usize]) {
        if let Some(t) = self.expect(from, t, shape) {
            self.put(to, t.shape.clone(), t.data.clone());
        }
    }

    /// A 2-d `[a, b]` tensor (a dimension `None` is unknown: a problem) written to `to` transposed.
    fn expect_transposed(&mut self, name: &str, t: &'a Tensor, expected: [Option<usize>; 2], to: &str) {
        match expected {
            [Some(a), Some(b)] => {
                if let Some(t) = self.expect(name, t, &[a, b]) {
                    self.relayout_to(to, name, t, &[a, b], &[1, 0], &[b, a]);
                }
            }
            _ => {
                let dim = |x: Option<usize>| x.map_or("?".to_string(), |x| x.to_string());
                let expected = format!("[{}, {}]", dim(expected[0]), dim(expected[1]));
                self.problem_shape(name, &expected, &t.shape);
            }
        }
    }

    /// `data` viewed as `shape`, axes permuted.
    fn relayout(&mut self, name: &str, data: &[f32], shape: &[usize], perm: &[usize]) -> Option<Vec<f32>> {
        permute_axes(data, shape, perm)
            .map_err(|e| self.problems.push(format!("tensor `{}`: cannot re-lay it out: {e}", self.label(name))))
            .ok()
    }

    /// `t` viewed as `shape`, axes permuted, written to `to` with shape `out_shape`.
    fn relayout_to(&mut self, to: &str, name: &str, t: &Tensor, shape: &[usize], perm: &[usize], out_shape: &[usize]) {
        if let Some(data) = self.relayout(name, &t.data, shape, perm) {
            self.put(to, out_shape.to_vec(), data);
        }
    }

    fn put(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        if let Err(e) = self.out.insert(name, shape, data) {
            self.problems.push(e.to_string());
        }
    }

    fn report_gaps(&mut self, indices: &BTreeSet<usize>, pattern: &str) {
        let mut next = 0;
        for &i in indices {
            if i > next {
                let range = if i - 1 == next { format!("{next}") } else { format!("{next} to {}", i - 1) };
                self.problems.push(format!("no tensors for block {range} (`{pattern}`), though block {i} has some"));
            }
            next = i.saturating_add(1);
        }
    }

    /// Every tensor nobody asked for is a problem; then all problems at once, or the map.
    fn finish(mut self, what: &str, why: &str) -> Result<TensorMap> {
        for (name, t) in &self.map.floats {
            if !self.used.contains(name) && !self.scan.consumed.contains(name) {
                self.problems.push(format!("unexpected tensor `{name}` {:?}: {why}", t.shape));
            }
        }
        for (name, (shape, _)) in &self.map.ints {
            self.problems.push(format!("unexpected integer tensor `{name}` {shape:?}: {why}"));
        }
        if self.problems.is_empty() {
            Ok(self.out)
        } else {
            Err(Error::Checkpoint { path: what.to_string(), problems: self.problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: usize = 6;
    const H: usize = 2;
    const DH: usize = 3;
    const P: usize = 2;
    const C: usize = 3;
    const K: usize = 4;
    const M: usize = 12;
    const N: usize = 5;

    /// A tiny ViT in Google's naming; the t-th tensor added (from 1) holds `1000 t + flat index`.
    fn google_tiny() -> TensorMap {
        let mut map = TensorMap::default();
        let mut id = 0;
        let mut add = |name: String, shape: Vec<usize>| {
            id += 1;
            let n: usize = shape.iter().product();
            map.insert(name, shape, (0..n).map(|i| (1000 * id + i) as f32).collect()).unwrap();
        };
        add("embedding/kernel".into(), vec![P, P, C, D]); // 1
        add("embedding/bias".into(), vec![D]); // 2
        add("cls".into(), vec![1, 1, D]); // 3
        add("Transformer/posembed_input/pos_embedding".into(), vec![1, N, D]); // 4
        add("Transformer/encoder_norm/scale".into(), vec![D]); // 5
        add("Transformer/encoder_norm/bias".into(), vec![D]); // 6
        add("head/kernel".into(), vec![D, K]); // 7
        add("head/bias".into(), vec![K]); // 8
        for i in 0..2 {
            let b = |name: &str| format!("Transformer/encoderblock_{i}/{name}");
            add(b("LayerNorm_0/scale"), vec![D]); // 9 in block 0
            add(b("LayerNorm_0/bias"), vec![D]); // 10
            for part in ["query", "key", "value"] {
                add(b(&format!("MultiHeadDotProductAttention_1/{part}/kernel")), vec![D, H, DH]); // 11, 13, 15
                add(b(&format!("MultiHeadDotProductAttention_1/{part}/bias")), vec![H, DH]); // 12, 14, 16
            }
            add(b("MultiHeadDotProductAttention_1/out/kernel"), vec![H, DH, D]);
            add(b("MultiHeadDotProductAttention_1/out/bias"), vec![D]);
            add(b("LayerNorm_2/scale"), vec![D]);
            add(b("LayerNorm_2/bias"), vec![D]);
            add(b("MlpBlock_3/Dense_0/kernel"), vec![D, M]);
            add(b("MlpBlock_3/Dense_0/bias"), vec![M]);
            add(b("MlpBlock_3/Dense_1/kernel"), vec![M, D]);
            add(b("MlpBlock_3/Dense_1/bias"), vec![D]);
        }
        map
    }

    /// `t[index]`, row-major.
    fn at(map: &TensorMap, name: &str, index: &[usize]) -> f32 {
        let t = map.get(name).unwrap();
        assert_eq!(t.shape.len(), index.len(), "{name}");
        let flat = t.shape.iter().zip(index).fold(0, |acc, (n, i)| {
            assert!(i < n, "{name}{index:?}");
            acc * n + i
        });
        t.data[flat]
    }

    fn problems(err: Error) -> Vec<String> {
        match err {
            Error::Checkpoint { problems, .. } => problems,
            other => panic!("not a checkpoint error: {other}"),
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz").join(name)
    }

    #[test]
    fn names_and_shapes() {
        let t = google_vit_to_timm(google_tiny(), "tiny").unwrap();
        let mut expected: Vec<(String, Vec<usize>)> = vec![
            ("patch_embed.proj.weight".into(), vec![D, C, P, P]),
            ("patch_embed.proj.bias".into(), vec![D]),
            ("cls_token".into(), vec![1, 1, D]),
            ("pos_embed".into(), vec![1, N, D]),
            ("norm.weight".into(), vec![D]),
            ("norm.bias".into(), vec![D]),
            ("head.weight".into(), vec![K, D]),
            ("head.bias".into(), vec![K]),
        ];
        for i in 0..2 {
            for (name, shape) in [
                ("norm1.weight", vec![D]),
                ("norm1.bias", vec![D]),
                ("attn.qkv.weight", vec![3 * D, D]),
                ("attn.qkv.bias", vec![3 * D]),
                ("attn.proj.weight", vec![D, D]),
                ("attn.proj.bias", vec![D]),
                ("norm2.weight", vec![D]),
                ("norm2.bias", vec![D]),
                ("mlp.fc1.weight", vec![M, D]),
                ("mlp.fc1.bias", vec![M]),
                ("mlp.fc2.weight", vec![D, M]),
                ("mlp.fc2.bias", vec![D]),
            ] {
                expected.push((format!("blocks.{i}.{name}"), shape));
            }
        }
        let mut got: Vec<(String, Vec<usize>)> =
            t.remaining().into_iter().map(|n| (n.clone(), t.get(&n).unwrap().shape.clone())).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn layouts_element_by_element() {
        let g = google_tiny();
        let t = google_vit_to_timm(g.clone(), "tiny").unwrap();
        for (o, c, y, x) in
            (0..D).flat_map(|o| (0..C).flat_map(move |c| (0..P * P).map(move |yx| (o, c, yx / P, yx % P))))
        {
            assert_eq!(at(&t, "patch_embed.proj.weight", &[o, c, y, x]), at(&g, "embedding/kernel", &[y, x, c, o]));
        }
        for k in 0..K {
            for c in 0..D {
                assert_eq!(at(&t, "head.weight", &[k, c]), at(&g, "head/kernel", &[c, k]));
            }
        }
        for i in 0..2 {
            let gb = |name: &str| format!("Transformer/encoderblock_{i}/{name}");
            let tb = |name: &str| format!("blocks.{i}.{name}");
            for (part, name) in ["query", "key", "value"].into_iter().enumerate() {
                let kernel = gb(&format!("MultiHeadDotProductAttention_1/{name}/kernel"));
                let bias = gb(&format!("MultiHeadDotProductAttention_1/{name}/bias"));
                for h in 0..H {
                    for j in 0..DH {
                        let row = part * D + h * DH + j;
                        assert_eq!(at(&t, &tb("attn.qkv.bias"), &[row]), at(&g, &bias, &[h, j]));
                        for c in 0..D {
                            assert_eq!(at(&t, &tb("attn.qkv.weight"), &[row, c]), at(&g, &kernel, &[c, h, j]));
                        }
                    }
                }
            }
            for o in 0..D {
                for h in 0..H {
                    for j in 0..DH {
                        let out = gb("MultiHeadDotProductAttention_1/out/kernel");
                        assert_eq!(at(&t, &tb("attn.proj.weight"), &[o, h * DH + j]), at(&g, &out, &[h, j, o]));
                    }
                }
                for m in 0..M {
                    assert_eq!(
                        at(&t, &tb("mlp.fc1.weight"), &[m, o]),
                        at(&g, &gb("MlpBlock_3/Dense_0/kernel"), &[o, m])
                    );
                    assert_eq!(
                        at(&t, &tb("mlp.fc2.weight"), &[o, m]),
                        at(&g, &gb("MlpBlock_3/Dense_1/kernel"), &[m, o])
                    );
                }
            }
            for (tn, gn) in [
                ("norm1.weight", "LayerNorm_0/scale"),
                ("norm1.bias", "LayerNorm_0/bias"),
                ("attn.proj.bias", "MultiHeadDotProductAttention_1/out/bias"),
                ("norm2.weight", "LayerNorm_2/scale"),
                ("norm2.bias", "LayerNorm_2/bias"),
                ("mlp.fc1.bias", "MlpBlock_3/Dense_0/bias"),
                ("mlp.fc2.bias", "MlpBlock_3/Dense_1/bias"),
            ] {
                assert_eq!(t.get(&tb(tn)).unwrap().data, g.get(&gb(gn)).unwrap().data, "{tn}");
            }
        }
        // Spot values from the numbering of `google_tiny`: block 0's key kernel is tensor 13, so
        // qkv row D + 1 * DH + 2 = 11, column 4 is key/kernel[4, 1, 2] = 13000 + (4 * 6 + 1 * 3 + 2).
        assert_eq!(at(&t, "blocks.0.attn.qkv.weight", &[11, 4]), 13029.0);
        // patch_embed.proj.weight[5, 2, 1, 0] is embedding/kernel[1, 0, 2, 5] = 1000 + 36 + 12 + 5.
        assert_eq!(at(&t, "patch_embed.proj.weight", &[5, 2, 1, 0]), 1053.0);
        assert_eq!(t.get("cls_token").unwrap().data, (3000..3006).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn round_trips() {
        let g = google_tiny();
        let t = google_vit_to_timm(g.clone(), "tiny").unwrap();
        assert_eq!(timm_vit_to_google(&t, H, "tiny").unwrap(), g);
        // Without the optional tensors too.
        let mut bare = g.clone();
        for name in
            ["cls", "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias", "head/kernel", "head/bias"]
        {
            bare.take_any(name).unwrap();
        }
        let t = google_vit_to_timm(bare.clone(), "bare").unwrap();
        assert!(!t.contains("cls_token") && !t.contains("head.weight") && !t.contains("norm.weight"));
        assert_eq!(timm_vit_to_google(&t, H, "bare").unwrap(), bare);
    }

    #[test]
    fn matches_timm_load_weights() {
        // The `.npz` files are Google-named; the safetensors are timm's state_dict after timm's
        // own `_load_weights` read them (tests/fixtures/npz/README.md).
        for (npz, reference) in [
            ("google_vit_tiny.npz", "google_vit_tiny_timm.safetensors"),
            ("google_vit_bigvision.npz", "google_vit_bigvision_timm.safetensors"),
        ] {
            let t = google_vit_to_timm(TensorMap::load_npz(fixture(npz)).unwrap(), npz).unwrap();
            let reference = TensorMap::load_safetensors(fixture(reference)).unwrap();
            assert_eq!(t.remaining(), reference.remaining(), "{npz}");
            for name in reference.remaining() {
                assert_eq!(t.get(&name).unwrap(), reference.get(&name).unwrap(), "{npz}: {name}");
            }
            // Back to Google's (original, unscanned) naming and forward again: the same tensors.
            let g = timm_vit_to_google(&t, 2, npz).unwrap();
            assert!(g.contains("Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"));
            assert_eq!(google_vit_to_timm(g, npz).unwrap().floats, t.floats);
        }
    }

    #[test]
    fn prefixes_and_big_vision_naming() {
        let g = google_tiny();
        let expected = google_vit_to_timm(g.clone(), "tiny").unwrap();
        let renamed = |rename: &dyn Fn(&str) -> String| {
            let mut out = TensorMap::default();
            for name in g.remaining() {
                let t = g.get(&name).unwrap().clone();
                out.insert(rename(&name), t.shape, t.data).unwrap();
            }
            out
        };
        let opt = renamed(&|n| format!("opt/target/{n}"));
        assert_eq!(google_vit_to_timm(opt, "opt").unwrap(), expected);
        let big_vision = renamed(&|n| {
            let n = n
                .replace("Transformer/posembed_input/pos_embedding", "pos_embedding")
                .replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
                .replace("LayerNorm_2", "LayerNorm_1")
                .replace("MlpBlock_3", "MlpBlock_0");
            format!("params/{n}")
        });
        assert_eq!(google_vit_to_timm(big_vision, "big_vision").unwrap(), expected);
    }

    #[test]
    fn three_problems_at_once() {
        let mut g = google_tiny();
        let query = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel";
        g.take_any(query).unwrap();
        g.insert(query, vec![D, 3, 3], vec![0.0; 54]).unwrap();
        g.take_any("Transformer/encoderblock_0/LayerNorm_2/scale").unwrap();
        g.insert("foo/bar", vec![2], vec![1.0, 2.0]).unwrap();
        let err = google_vit_to_timm(g, "broken.npz").unwrap_err();
        assert!(err.to_string().contains("broken.npz"), "{err}");
        let p = problems(err);
        assert_eq!(p.len(), 3, "{p:#?}");
        let has = |needle: &str| p.iter().any(|line| line.contains(needle));
        assert!(has(&format!("tensor `{query}`: expected [6, 2, 3], found [6, 3, 3]")), "{p:#?}");
        assert!(has("missing tensor `Transformer/encoderblock_0/LayerNorm_2/scale` (expected [6])"), "{p:#?}");
        assert!(has("unexpected tensor `foo/bar` [2]"), "{p:#?}");
    }

    #[test]
    fn every_missing_or_misshapen_tensor_is_named() {
        let g = google_tiny();
        for name in g.remaining() {
            let mut missing = g.clone();
            missing.take_any(&name).unwrap();
            // Optional ones may go, alone or with their partner.
            let optional = ["cls", "Transformer/encoder_norm/", "head/"].iter().any(|o| name.starts_with(o));
            match google_vit_to_timm(missing, "t") {
                Ok(_) => assert_eq!(name, "cls", "only the class token may go alone"),
                Err(e) => {
                    let p = problems(e);
                    assert!(p.iter().any(|l| l.contains(&format!("`{name}`"))) || optional, "{name}: {p:#?}");
                }
            }
            let len = g.get(&name).unwrap().data.len();
            for shape in [vec![], vec![len + 1], vec![2, len]] {
                let mut bad = g.clone();
                bad.take_any(&name).unwrap();
                bad.insert(name.clone(), shape.clone(), vec![0.5; shape.iter().product()]).unwrap();
                let p = problems(google_vit_to_timm(bad, "t").unwrap_err());
                assert!(p.iter().any(|l| l.contains(&format!("`{name}`"))), "{name} as {shape:?}: {p:#?}");
            }
        }
    }

    #[test]
    fn odd_inputs_are_errors_not_panics() {
        assert!(problems(google_vit_to_timm(TensorMap::default(), "empty").unwrap_err())[0].contains("width D"));
        // Zero width.
        let mut zero = TensorMap::default();
        zero.insert("embedding/kernel", vec![2, 2, 3, 0], vec![]).unwrap();
        assert!(google_vit_to_timm(zero, "zero").is_err());
        // A gap in the block numbers, and a block number with a leading zero.
        let mut gap = TensorMap::default();
        for name in google_tiny().remaining() {
            let t = google_tiny().get(&name).unwrap().clone();
            gap.insert(name.replace("encoderblock_1/", "encoderblock_3/"), t.shape, t.data).unwrap();
        }
        gap.insert("Transformer/encoderblock_01/LayerNorm_0/scale", vec![D], vec![0.0; D]).unwrap();
        let p = problems(google_vit_to_timm(gap, "gap").unwrap_err());
        assert!(p.iter().any(|l| l.contains("no tensors for block 1 to 2")), "{p:#?}");
        assert!(p.iter().any(|l| l.contains("unexpected tensor `Transformer/encoderblock_01/")), "{p:#?}");
        // Integer tensors have no place in a ViT.
        let mut ints = google_tiny();
        ints.ints.insert("step".into(), (vec![], vec![3]));
        let p = problems(google_vit_to_timm(ints, "ints").unwrap_err());
        assert_eq!(p.len(), 1, "{p:#?}");
    }

    #[test]
    fn hand_built_tensors_and_huge_numbers_are_problems_not_panics() {
        // A tensor whose shape disagrees with its values (its fields are public).
        let mut g = google_tiny();
        g.floats.insert("embedding/bias".into(), Tensor { shape: vec![D], data: vec![0.0; 5] });
        let p = problems(google_vit_to_timm(g, "t").unwrap_err());
        assert_eq!(p, vec!["tensor `embedding/bias`: shape [6] does not hold its 5 values".to_string()]);
        // An empty patch embedding cannot tell the width, however wide it claims to be.
        let mut empty = TensorMap::default();
        empty.insert("embedding/kernel", vec![2, 2, 0, 1 << 60], vec![]).unwrap();
        assert!(problems(google_vit_to_timm(empty, "t").unwrap_err())[0].contains("cannot tell the width"));
        let mut empty = TensorMap::default();
        empty.insert("patch_embed.proj.weight", vec![usize::MAX / 2, 0, 2, 2], vec![]).unwrap();
        assert!(problems(timm_vit_to_google(&empty, 1, "t").unwrap_err())[0].contains("cannot tell the width"));
        // The largest block number there is.
        let mut g = google_tiny();
        g.insert(format!("Transformer/encoderblock_{}/LayerNorm_0/scale", usize::MAX), vec![D], vec![0.0; D]).unwrap();
        let p = problems(google_vit_to_timm(g, "t").unwrap_err());
        assert!(p[0].contains(&format!("no tensors for block 2 to {}", usize::MAX - 1)), "{p:#?}");
        // A scanned tensor that disagrees with itself.
        let mut g = TensorMap::load_npz(fixture("google_vit_bigvision.npz")).unwrap();
        let name = "params/Transformer/encoderblock/MlpBlock_0/Dense_0/bias";
        g.floats.insert(name.into(), Tensor { shape: vec![2, usize::MAX], data: vec![0.0; 3] });
        let p = problems(google_vit_to_timm(g, "t").unwrap_err());
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("does not hold its 3 values"), "{p:#?}");
    }

    #[test]
    fn scanned_blocks_with_a_wrong_layer_axis() {
        let mut g = TensorMap::load_npz(fixture("google_vit_bigvision.npz")).unwrap();
        let name = "params/Transformer/encoderblock/MlpBlock_0/Dense_1/bias";
        g.take_any(name).unwrap();
        g.insert(name, vec![3, D], vec![0.0; 3 * D]).unwrap();
        let p = problems(google_vit_to_timm(g, "scanned").unwrap_err());
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains(name) && p[0].contains("leading axis of 2") && p[0].contains("[3, 6]"), "{p:#?}");
        // A misshapen per-layer slice is named by its scanned tensor and layer.
        let mut g = TensorMap::load_npz(fixture("google_vit_bigvision.npz")).unwrap();
        let name = "params/Transformer/encoderblock/LayerNorm_1/scale";
        g.take_any(name).unwrap();
        g.insert(name, vec![2, 5], vec![0.0; 10]).unwrap();
        let p = problems(google_vit_to_timm(g, "scanned").unwrap_err());
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains(&format!("`{name}[0]`: expected [6], found [5]")), "{p:#?}");
    }

    #[test]
    fn inverse_problems() {
        let t = google_vit_to_timm(google_tiny(), "tiny").unwrap();
        assert!(matches!(timm_vit_to_google(&t, 0, "t"), Err(Error::Invalid { .. })));
        let p = problems(timm_vit_to_google(&t, 4, "t").unwrap_err());
        assert!(p[0].contains("D = 6 is not a multiple of heads = 4"), "{p:#?}");
        let mut extra = t.clone();
        extra.insert("fc_norm.weight", vec![D], vec![1.0; D]).unwrap();
        extra.take_any("blocks.1.attn.qkv.bias").unwrap();
        let p = problems(timm_vit_to_google(&extra, H, "extra").unwrap_err());
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p.iter().any(|l| l.contains("missing tensor `blocks.1.attn.qkv.bias` (expected [18])")), "{p:#?}");
        assert!(p.iter().any(|l| l.contains("unexpected tensor `fc_norm.weight` [6]")), "{p:#?}");
    }

    #[test]
    fn pre_logits_become_timms_former_names() {
        let mut g = google_tiny();
        let r = 5;
        g.insert("pre_logits/kernel", vec![D, r], (0..D * r).map(|v| v as f32).collect()).unwrap();
        g.insert("pre_logits/bias", vec![r], vec![0.0; r]).unwrap();
        // With a representation layer the head reads its R = 5 outputs.
        g.take_any("head/kernel").unwrap();
        g.insert("head/kernel", vec![r, K], vec![0.0; r * K]).unwrap();
        let t = google_vit_to_timm(g.clone(), "21k").unwrap();
        assert_eq!(t.get("pre_logits.fc.weight").unwrap().shape, vec![r, D]);
        assert_eq!(at(&t, "pre_logits.fc.weight", &[4, 1]), (r + 4) as f32); // kernel[1, 4]
        assert_eq!(t.get("head.weight").unwrap().shape, vec![K, r]);
        assert_eq!(timm_vit_to_google(&t, H, "21k").unwrap(), g);
    }
}
