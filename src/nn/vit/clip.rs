//! A ViT as a CLIP vision tower: which ViTs are one, and their tensors under OpenAI CLIP /
//! open_clip names (the inverse of timm's `_convert_openai_clip`, which
//! [`to_timm_vit`](crate::checkpoint::to_timm_vit) applies on the way in).
//!
//! ```text
//! CLIP's VisionTransformer            timm's VisionTransformer
//! conv1 (no bias)                     patch_embed.proj            pre_norm = true
//! class_embedding [D]                 cls_token [1, 1, D]
//! positional_embedding [T, D]         pos_embed [1, T, D]
//! ln_pre                              norm_pre
//! transformer.resblocks.N.ln_1        blocks.N.norm1
//!   attn.in_proj_{weight,bias}          attn.qkv
//!   attn.out_proj                       attn.proj
//!   ln_2, mlp.c_fc, mlp.c_proj          norm2, mlp.fc1, mlp.fc2
//! ln_post                             norm                         global_pool = "token"
//! proj [D, E]: x @ proj               head: weight = proj^T, bias = 0
//! QuickGELU (OpenAI, open_clip's *-quickgelu) or GELU (open_clip's own towers)
//! ```
//!
//! ```
//! use patchgraph::nn::{Init, Vit, VitConfig};
//! // A Google / timm classifier is not a CLIP tower: the answer says why.
//! let vit = Vit::new(VitConfig::tiny(8, 4, 3), &mut Init::new(0)).unwrap();
//! let err = vit.clip_state_dict().unwrap_err().to_string();
//! assert!(err.contains("ln_pre") && err.contains("QuickGELU"));
//! ```

use super::{GlobalPool, Vit};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::nn::Activation;

impl Vit {
    /// Why this ViT is not a CLIP vision tower, one reason each (empty: it is one).
    pub fn clip_differences(&self) -> Vec<String> {
        let c = self.config();
        let mut why = Vec::new();
        if !c.pre_norm {
            why.push(
                "no ln_pre: CLIP normalises the tokens before the first block (timm's pre_norm = true), \
                 and its conv1 has no bias"
                    .to_string(),
            );
        }
        match c.act_layer {
            Activation::QuickGelu => {}
            Activation::Gelu => {}
            other => why.push(format!("activation {other:?}: CLIP towers use QuickGELU (OpenAI) or GELU (open_clip)")),
        }
        if !c.class_token || c.global_pool != GlobalPool::Token {
            why.push("CLIP pools the class token (global_pool = \"token\")".into());
        }
        if !c.has_norm() {
            why.push("no final norm before pooling (CLIP's ln_post)".into());
        }
        match &self.head {
            None => why.push("no projection: CLIP ends in `proj` (a head without bias)".into()),
            Some(h) if h.bias.as_ref().is_some_and(|b| b.iter().any(|&v| v != 0.0)) => why.push(format!(
                "a classifier head with a bias ({} classes) instead of CLIP's projection `proj` (no bias)",
                h.weight.rows()
            )),
            Some(_) => {}
        }
        if !c.qkv_bias || !c.proj_bias {
            why.push("attention without biases (CLIP's in_proj and out_proj have them)".into());
        }
        if c.qk_norm || c.reg_tokens > 0 || c.distilled || c.scale_attn_norm || c.scale_mlp_norm {
            why.push("parts CLIP's tower does not have (qk_norm, register or distillation tokens, scale norms)".into());
        }
        if c.no_embed_class || matches!(c.pos_embed, super::PosEmbed::None) {
            why.push("CLIP's positional_embedding covers the class token too".into());
        }
        if c.attention.is_some() || c.relative_position_bias.is_some() {
            why.push("low-rank attention or relative position tables (not in CLIP)".into());
        }
        if !why.is_empty() && c.act_layer == Activation::Gelu {
            why.push("GELU, not OpenAI CLIP's QuickGELU (only open_clip's own towers use GELU)".into());
        }
        why
    }

    /// The tensors under OpenAI CLIP's vision-tower names (no `visual.` prefix:
    /// `model.visual.load_state_dict(...)` in open_clip or OpenAI's `clip`), or an
    /// [`Error::Invalid`] listing every way this ViT differs from a CLIP tower.
    pub fn clip_state_dict(&self) -> Result<TensorMap> {
        let why = self.clip_differences();
        if !why.is_empty() {
            return Err(Error::invalid(
                "conversion to a CLIP vision tower",
                format!("this ViT is not a CLIP model: {}", why.join("; ")),
            ));
        }
        let timm = self.state_dict()?;
        let mut out = TensorMap::default();
        for (name, shape) in timm.shapes() {
            let t = timm.get(name)?;
            let (name, shape, data) = match name {
                "cls_token" => ("class_embedding".to_string(), vec![shape[2]], t.data.clone()),
                "pos_embed" => ("positional_embedding".to_string(), shape[1..].to_vec(), t.data.clone()),
                "head.bias" => continue, // zero (checked above)
                "head.weight" => {
                    // head(x) = x @ head.weight^T  ==  x @ proj
                    let (e, d) = (shape[0], shape[1]);
                    ("proj".to_string(), vec![d, e], crate::checkpoint::permute_axes(&t.data, shape, &[1, 0])?)
                }
                other => (clip_name(other), shape.to_vec(), t.data.clone()),
            };
            out.insert(name, shape, data)?;
        }
        Ok(out)
    }
}

/// timm's name of a tower tensor under CLIP's (the swaps of `_convert_openai_clip`, reversed).
fn clip_name(timm: &str) -> String {
    const SWAPS: &[(&str, &str)] = &[
        ("patch_embed.proj", "conv1"),
        ("norm_pre", "ln_pre"),
        ("blocks.", "transformer.resblocks."),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("ls1.gamma", "ls_1.gamma"),
        ("ls2.gamma", "ls_2.gamma"),
    ];
    if let Some(rest) = timm.strip_prefix("norm.") {
        return format!("ln_post.{rest}");
    }
    let mut n = timm.to_string();
    for (from, to) in SWAPS {
        n = n.replace(from, to);
    }
    n
}
