//! `VitConfig`: the shape of a Vision Transformer, with timm's `VisionTransformer` argument names
//! so that a timm user can write it from memory, read from JSON or named by architecture.
//!
//! | arch | `embed_dim` | `depth` | `num_heads` | parameters (1000 classes, patch 16, 224) |
//! |---|---|---|---|---|
//! | `vit_tiny_patch{16,32}_{224,384}` | 192 | 12 | 3 | 5.7 M |
//! | `vit_small_patch{16,32}_{224,384}` | 384 | 12 | 6 | 22 M |
//! | `vit_base_patch{16,32}_{224,384}` | 768 | 12 | 12 | 86 M |
//! | `vit_large_patch{16,32}_{224,384}` | 1024 | 24 | 16 | 304 M |
//!
//! Google's names (`ViT-Ti_16`, `ViT-S_16`, `ViT-B_16`, `ViT-B_32`, `ViT-L_16`, `ViT-L_32`,
//! optionally with `-384`) name the same models.
//!
//! ```
//! use patchgraph::nn::{GlobalPool, VitConfig};
//! let c = VitConfig::arch("vit_base_patch16_224").unwrap();
//! assert_eq!((c.embed_dim, c.depth, c.num_heads, c.grid_size()), (768, 12, 12, (14, 14)));
//! assert_eq!(c.num_tokens(), 197);
//! let json = r#"{"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 48,
//!                "depth": 2, "num_heads": 3, "global_pool": "avg"}"#;
//! let c: VitConfig = serde_json::from_str(json).unwrap();
//! assert_eq!((c.global_pool, c.uses_fc_norm(), c.eps), (GlobalPool::Avg, true, 1e-6));
//! assert!(serde_json::from_str::<VitConfig>(r#"{"img_size": 32, "patch_sise": 8}"#).is_err());
//! ```

use crate::attention::low_rank::LowRank;
use crate::error::{Error, Result};
use crate::nn::Activation;
use serde::{Deserialize, Serialize};

/// How the token sequence becomes the head's input (timm's `global_pool`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPool {
    /// The class token's final state (`'token'`).
    #[default]
    Token,
    /// The mean over the tokens (`'avg'`): the patch tokens, or every token with
    /// `pool_include_prefix`.
    Avg,
    /// The per-channel maximum over those tokens (`'max'`).
    Max,
    /// Half the mean plus half the maximum (`'avgmax'`).
    #[serde(rename = "avgmax")]
    AvgMax,
    /// No pooling (`''`): the head reads every token, and the output has one row per token.
    #[serde(rename = "")]
    None,
    /// timm's attention-pooling head (`'map'`): read, and refused by [`VitConfig::validate`].
    #[serde(rename = "map")]
    Map,
    /// timm's `'prr'` attention pooling: read, and refused by [`VitConfig::validate`].
    #[serde(rename = "prr")]
    Prr,
}

/// An image or patch size: one side (square, as timm takes an int) or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Size2 {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Size2 {
    /// A square.
    pub fn square(side: usize) -> Size2 {
        Size2 { h: side, w: side }
    }

    /// `h * w`.
    pub fn area(&self) -> usize {
        self.h.saturating_mul(self.w)
    }
}

impl std::fmt::Display for Size2 {
    /// `16`, or `16x8` for a rectangle.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.h == self.w { write!(f, "{}", self.h) } else { write!(f, "{}x{}", self.h, self.w) }
    }
}

impl Serialize for Size2 {
    /// An int when square (as timm's configs write it), else `[h, w]`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.h == self.w { s.serialize_u64(self.h as u64) } else { [self.h, self.w].serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Size2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Size2, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(usize),
            Two([usize; 2]),
        }
        match Either::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size: an int or [height, width]"))?
        {
            Either::One(s) => Ok(Size2::square(s)),
            Either::Two([h, w]) => Ok(Size2 { h, w }),
        }
    }
}

/// Whether and how positions are embedded (timm's `pos_embed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PosEmbed {
    /// A learned `pos_embed` (`'learn'`).
    #[default]
    #[serde(rename = "learn")]
    Learn,
    /// None (`'none'` or `''`).
    #[serde(rename = "none", alias = "")]
    None,
}

fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f32 {
    1e-6
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn is_true(v: &bool) -> bool {
    *v
}

/// A Vision Transformer's shape, as timm's `VisionTransformer(**kwargs)` (JSON with these names;
/// an argument timm does not have is an error naming it). Every argument of timm 1.0's
/// `VisionTransformer.__init__` is read: those that change inference are implemented, those
/// that act only in training or initialisation (`drop_rate`, `drop_path_rate`, ...,
/// `weight_init`, `fix_init`) are accepted and have no effect, and the few patchgraph does not
/// implement (`global_pool='map'`, `dynamic_img_size=True`, another `block_fn`, ...) are refused
/// by [`VitConfig::validate`] with what is missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input size in pixels: one side (square) or `[height, width]`.
    pub img_size: Size2,
    /// Patch size `P` in pixels: one side or `[height, width]`.
    pub patch_size: Size2,
    /// Input channels `C` (default 3).
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Classes of the head; 0 means no head (the pooled features are the output).
    pub num_classes: usize,
    /// Width `D`.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width = `int(embed_dim * mlp_ratio)` (default 4).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Whether `qkv` has a bias (default true).
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// LayerNorm of every head's query and key (`attn.q_norm`, `attn.k_norm`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub qk_norm: bool,
    /// LayerNorm of the attended values before `attn.proj` (`attn.norm`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub scale_attn_norm: bool,
    /// LayerNorm of the MLP's hidden activations before `fc2` (`mlp.norm`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub scale_mlp_norm: bool,
    /// Whether `attn.proj`, `mlp.fc1` and `mlp.fc2` have biases (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub proj_bias: bool,
    /// Whether there is a class token (default true).
    #[serde(default = "default_true")]
    pub class_token: bool,
    /// A learned position embedding, or none (default `learn`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pos_embed: PosEmbed,
    /// Register tokens after the class token (`reg_token [1, R, D]`, default 0).
    #[serde(default, skip_serializing_if = "is_default")]
    pub reg_tokens: usize,
    /// Pooling before the head (default `token`).
    #[serde(default)]
    pub global_pool: GlobalPool,
    /// Whether average / max pooling includes the prefix tokens (default false).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pool_include_prefix: bool,
    /// Position embedding for the patches only, the prefix tokens added without one (default false).
    #[serde(default)]
    pub no_embed_class: bool,
    /// LayerNorm after the embeddings, before the blocks (`norm_pre`; CLIP's `ln_pre`); the
    /// patch embedding then has no bias.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pre_norm: bool,
    /// The final LayerNorm (`norm` or `fc_norm`, default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub final_norm: bool,
    /// LayerNorm after pooling instead of before it; `None` = timm's rule (pooling `avg`,
    /// `avgmax` or `max`).
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// LayerScale initial value (`ls1.gamma`, `ls2.gamma`), if any.
    #[serde(default)]
    pub init_values: Option<f32>,
    /// The MLP's activation (timm's `act_layer`: `gelu`, `gelu_tanh`, `quick_gelu`, `relu`, `silu`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub act_layer: Activation,
    /// LayerNorm epsilon (timm and the JAX originals: 1e-6; Hugging Face: 1e-12).
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Training only (dropout, stochastic depth): accepted, no effect here.
    #[serde(default, skip_serializing)]
    pub drop_rate: f64,
    /// Training only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub pos_drop_rate: f64,
    /// Training only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub patch_drop_rate: f64,
    /// Training only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub proj_drop_rate: f64,
    /// Training only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub attn_drop_rate: f64,
    /// Training only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub drop_path_rate: f64,
    /// Initialisation only: accepted, no effect (patchgraph initialises as timm's default).
    #[serde(default, skip_serializing)]
    pub weight_init: Option<String>,
    /// Initialisation only: accepted, no effect.
    #[serde(default, skip_serializing)]
    pub fix_init: bool,
    /// Must be false: inputs of another size are resampled once at load (`--img-size`).
    #[serde(default, skip_serializing)]
    pub dynamic_img_size: bool,
    /// Must be false (no padding of inputs to a multiple of the patch).
    #[serde(default, skip_serializing)]
    pub dynamic_img_pad: bool,
    /// timm's module names, accepted at their defaults only (`PatchEmbed`, `LayerNorm`, `Block`,
    /// `Mlp`, `Attention`; `embed_norm_layer` none); anything else is refused by name.
    #[serde(default, skip_serializing)]
    pub embed_layer: Option<String>,
    /// See `embed_layer`.
    #[serde(default, skip_serializing)]
    pub embed_norm_layer: Option<String>,
    /// See `embed_layer` (`LayerNorm`; its eps is `eps`).
    #[serde(default, skip_serializing)]
    pub norm_layer: Option<String>,
    /// See `embed_layer`.
    #[serde(default, skip_serializing)]
    pub block_fn: Option<String>,
    /// See `embed_layer`.
    #[serde(default, skip_serializing)]
    pub mlp_layer: Option<String>,
    /// See `embed_layer`.
    #[serde(default, skip_serializing)]
    pub attn_layer: Option<String>,
    /// Accepted: patchgraph runs on the CPU (`None` or `"cpu"`).
    #[serde(default, skip_serializing)]
    pub device: Option<String>,
    /// Accepted: patchgraph computes in float32 (`None` or `"float32"`).
    #[serde(default, skip_serializing)]
    pub dtype: Option<String>,
    /// patchgraph: a low-rank attention in every block instead of the softmax on a graph
    /// (`"performer:M:SEED"`, `"linformer:K[:SHARING]"`, `"nystrom:L[:CONV]"`), with its
    /// parameters part of the model (`blocks.N.attn.projection_matrix`, `proj_k`, `proj_v`,
    /// `res_conv.weight`). It is every layer's default graph; an explicit graph overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<LowRank>,
    /// patchgraph: Swin's relative position bias in every block, for windows of this side `M`
    /// (`blocks.N.attn.relative_position_bias_table [(2M-1)^2, H]`), added to the score of
    /// every patch-to-patch edge whose offset is below `M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_position_bias: Option<usize>,
    /// timm's `VisionTransformerDistilled` (DeiT): a distillation token `dist_token` after the
    /// class token and a second head `head_dist` on it; the logits are
    /// `(head(x_cls) + head_dist(x_dist)) / 2` and the pre-logits `(x_cls + x_dist) / 2`, as
    /// timm's eval mode. Needs the class token and `global_pool = "token"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distilled: bool,
}

impl VitConfig {
    /// A timm-style ViT with 1000 classes: `vit_{tiny,small,base,large}_patch{16,32}_{224,384}`,
    /// or Google's `ViT-{Ti,S,B,L}_{16,32}[-384]`.
    pub fn arch(name: &str) -> Result<VitConfig> {
        let unknown = || {
            Error::invalid(
                "architecture",
                format!(
                    "unknown `{name}`: expected vit_{{tiny,small,base,large}}_patch{{16,32}}_{{224,384}}, \
                     ViT-{{Ti,S,B,L}}_{{16,32}}[-384], or a CLIP tower ViT-{{B-32,B-16,L-14,L-14-336,H-14}}[-quickgelu]"
                ),
            )
        };
        if let Some(config) = Self::clip_arch(name) {
            return Ok(config);
        }
        let (size, patch, img) = if let Some(rest) = name.strip_prefix("vit_") {
            let mut parts = rest.split('_');
            let size = parts.next().ok_or_else(unknown)?;
            let patch = parts.next().and_then(|p| p.strip_prefix("patch")).ok_or_else(unknown)?;
            let img = parts.next().ok_or_else(unknown)?;
            if parts.next().is_some() {
                return Err(unknown());
            }
            (size.to_string(), patch.to_string(), img.to_string())
        } else if let Some(rest) = name.strip_prefix("ViT-") {
            let (model, img) = match rest.split_once('-') {
                Some((m, i)) => (m, i),
                None => (rest, "224"),
            };
            let (size, patch) = model.split_once('_').ok_or_else(unknown)?;
            let size = match size {
                "Ti" => "tiny",
                "S" => "small",
                "B" => "base",
                "L" => "large",
                _ => return Err(unknown()),
            };
            (size.to_string(), patch.to_string(), img.to_string())
        } else {
            return Err(unknown());
        };
        let (embed_dim, depth, num_heads) = match size.as_str() {
            "tiny" => (192, 12, 3),
            "small" => (384, 12, 6),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return Err(unknown()),
        };
        let patch_size = match patch.as_str() {
            "16" => 16,
            "32" => 32,
            _ => return Err(unknown()),
        };
        let img_size = match img.as_str() {
            "224" => 224,
            "384" => 384,
            _ => return Err(unknown()),
        };
        Ok(VitConfig { embed_dim, depth, num_heads, ..VitConfig::tiny(img_size, patch_size, 1000) })
    }

    /// An OpenAI CLIP / open_clip vision tower by open_clip's model name (`ViT-B-32`,
    /// `ViT-B-16`, `ViT-L-14`, `ViT-L-14-336`, `ViT-H-14`; GELU as open_clip's own models,
    /// `-quickgelu` for OpenAI's weights) as timm builds it: `pre_norm`, LayerNorm eps 1e-5,
    /// heads of width 64 (80 for H), and the projection `proj` as a head of `embed_dim` outputs.
    pub fn clip_arch(name: &str) -> Option<VitConfig> {
        let (model, act) = match name.strip_suffix("-quickgelu") {
            Some(m) => (m, Activation::QuickGelu),
            None => (name, Activation::Gelu),
        };
        // (width, layers, patch, image, embedding, heads): open_clip's model_configs/*.json
        let (width, layers, patch, img, embed, heads) = match model {
            "ViT-B-32" => (768, 12, 32, 224, 512, 12),
            "ViT-B-16" => (768, 12, 16, 224, 512, 12),
            "ViT-L-14" => (1024, 24, 14, 224, 768, 16),
            "ViT-L-14-336" => (1024, 24, 14, 336, 768, 16),
            "ViT-H-14" => (1280, 32, 14, 224, 1024, 16),
            _ => return None,
        };
        Some(VitConfig {
            embed_dim: width,
            depth: layers,
            num_heads: heads,
            pre_norm: true,
            eps: 1e-5,
            act_layer: act,
            ..VitConfig::tiny(img, patch, embed)
        })
    }

    /// A small custom ViT with timm's defaults otherwise (D = 192, 12 blocks, 3 heads = ViT-Ti).
    pub fn tiny(img_size: usize, patch_size: usize, num_classes: usize) -> VitConfig {
        VitConfig {
            img_size: Size2::square(img_size),
            patch_size: Size2::square(patch_size),
            in_chans: 3,
            num_classes,
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            mlp_ratio: 4.0,
            qkv_bias: true,
            qk_norm: false,
            scale_attn_norm: false,
            scale_mlp_norm: false,
            proj_bias: true,
            class_token: true,
            pos_embed: PosEmbed::Learn,
            reg_tokens: 0,
            global_pool: GlobalPool::Token,
            pool_include_prefix: false,
            no_embed_class: false,
            pre_norm: false,
            final_norm: true,
            fc_norm: None,
            init_values: None,
            act_layer: Activation::Gelu,
            eps: 1e-6,
            drop_rate: 0.0,
            pos_drop_rate: 0.0,
            patch_drop_rate: 0.0,
            proj_drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            weight_init: None,
            fix_init: false,
            dynamic_img_size: false,
            dynamic_img_pad: false,
            embed_layer: None,
            embed_norm_layer: None,
            norm_layer: None,
            block_fn: None,
            mlp_layer: None,
            attn_layer: None,
            device: None,
            dtype: None,
            attention: None,
            relative_position_bias: None,
            distilled: false,
        }
    }

    /// Reads a JSON config file.
    pub fn from_json_file(path: impl AsRef<std::path::Path>) -> Result<VitConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let config: VitConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: path.display().to_string(), reason: format!("ViT config: {e}") })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes fit together (every error names the field).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, reason: String| Err(Error::invalid(format!("ViT config `{what}`"), reason));
        let (img, patch) = (self.img_size, self.patch_size);
        let fits = |i: usize, p: usize| p > 0 && i >= p && i % p == 0;
        if !fits(img.h, patch.h) || !fits(img.w, patch.w) {
            return bad(
                "img_size",
                format!("{img:?} must be a positive multiple of patch_size {patch:?} (height and width)"),
            );
        }
        self.refuse_unimplemented()?;
        if self.distilled
            && (!self.class_token
                || self.global_pool != GlobalPool::Token
                || self.reg_tokens > 0
                || self.no_embed_class)
        {
            return bad(
                "distilled",
                "DeiT's distillation token needs class_token, global_pool = \"token\", no register tokens and \
                 no_embed_class = false (timm's VisionTransformerDistilled)"
                    .into(),
            );
        }
        if self.in_chans == 0 || self.embed_dim == 0 || self.num_heads == 0 {
            return bad("embed_dim", "in_chans, embed_dim and num_heads must be positive".into());
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(
                "num_heads",
                format!("embed_dim {} is not a multiple of {} heads", self.embed_dim, self.num_heads),
            );
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || self.mlp_hidden() == 0 {
            return bad("mlp_ratio", format!("{} gives no MLP width", self.mlp_ratio));
        }
        if !self.class_token && self.global_pool == GlobalPool::Token {
            return bad("global_pool", "`token` pooling needs a class token".into());
        }
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("patch_drop_rate", self.patch_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(name, format!("{p} is not a rate in [0, 1)"));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return bad("eps", format!("{} must be positive", self.eps));
        }
        if self.relative_position_bias == Some(0) {
            return bad("relative_position_bias", "the window side must be at least 1".into());
        }
        let (gh, gw) = self.grid_size();
        if self.relative_position_bias.is_some_and(|m| m > gh.min(gw).max(1)) {
            return bad(
                "relative_position_bias",
                format!("a window of {:?} patches is larger than the {gh} x {gw} grid", self.relative_position_bias),
            );
        }
        if self.attention.is_some() && self.relative_position_bias.is_some() {
            return bad(
                "relative_position_bias",
                "a relative position bias is an edge bias: low-rank attention has no edges to add it to".into(),
            );
        }
        self.check_sizes()
    }

    /// The timm arguments patchgraph reads but does not implement, each refused by name with
    /// what is missing; their defaults pass.
    fn refuse_unimplemented(&self) -> Result<()> {
        let no = |what: &str, reason: &str| Err(Error::invalid(format!("ViT config `{what}`"), reason.to_string()));
        if matches!(self.global_pool, GlobalPool::Map | GlobalPool::Prr) {
            return no(
                "global_pool",
                "attention pooling ('map', 'prr': a learned latent query) is not implemented; token, avg, avgmax, max and '' are",
            );
        }
        if self.dynamic_img_size {
            return no(
                "dynamic_img_size",
                "true resamples the position embedding at every call; patchgraph resamples it once when loading (`--img-size`, Vit::load_adapting)",
            );
        }
        if self.dynamic_img_pad {
            return no("dynamic_img_pad", "true pads inputs to a multiple of the patch; give inputs of img_size");
        }
        let module = |value: &Option<String>, allowed: &[&str]| value.as_deref().is_none_or(|v| allowed.contains(&v));
        if !module(&self.embed_layer, &["PatchEmbed", "timm.layers.PatchEmbed"]) {
            return no("embed_layer", "only timm's PatchEmbed (a strided convolution) embeds patches");
        }
        if self.embed_norm_layer.is_some() {
            return no("embed_norm_layer", "a norm inside the patch embedding is not implemented");
        }
        if !module(
            &self.norm_layer,
            &["LayerNorm", "layernorm", "nn.LayerNorm", "torch.nn.LayerNorm", "timm.layers.LayerNorm"],
        ) {
            return no("norm_layer", "only LayerNorm (with `eps`) normalises; RMSNorm and others are not implemented");
        }
        if !module(&self.block_fn, &["Block", "timm.models.vision_transformer.Block"]) {
            return no("block_fn", "only timm's pre-norm Block (attention then MLP) is implemented");
        }
        if !module(&self.mlp_layer, &["Mlp", "timm.layers.Mlp"]) {
            return no("mlp_layer", "only timm's two-layer Mlp is implemented (no SwiGLU / GluMlp)");
        }
        if !module(&self.attn_layer, &["Attention", "timm.layers.Attention"]) {
            return no("attn_layer", "only timm's Attention (its softmax on any patch graph) is implemented");
        }
        if self.device.as_deref().is_some_and(|d| d != "cpu") {
            return no("device", "patchgraph runs on the CPU");
        }
        if !self.dtype.as_deref().is_none_or(|d| matches!(d, "float32" | "torch.float32")) {
            return no("dtype", "patchgraph computes in float32");
        }
        if let Some(w) = &self.weight_init {
            if !matches!(w.as_str(), "" | "skip" | "reset" | "jax" | "jax_nlhb" | "moco") {
                return no(
                    "weight_init",
                    "is not one of timm's schemes ('', 'skip', 'reset', 'jax', 'jax_nlhb', 'moco')",
                );
            }
        }
        Ok(())
    }

    /// The sizes a config implies, checked against [`crate::limits`] before anything is
    /// allocated (a config read from a file, or `--img-size`, can say anything): tokens per
    /// image, each parameter tensor, and all parameters together.
    fn check_sizes(&self) -> Result<()> {
        use crate::limits::{MAX_PARAMETERS, MAX_TOKENS, check_elements};
        let bad = |what: &str, reason: String| Err(Error::invalid(format!("ViT config `{what}`"), reason));
        let (gh, gw) = self.grid_size();
        let tokens = gh.checked_mul(gw).and_then(|p| p.checked_add(self.prefix_tokens()));
        if tokens.is_none_or(|t| t > MAX_TOKENS) {
            return bad(
                "img_size",
                format!(
                    "{:?} px in patches of {:?} is a {gh} x {gw} grid: more than the limit of {MAX_TOKENS} (2^20) tokens",
                    self.img_size, self.patch_size
                ),
            );
        }
        if self.reg_tokens > MAX_TOKENS {
            return bad("reg_tokens", format!("{} register tokens exceed the limit of {MAX_TOKENS}", self.reg_tokens));
        }
        let (d, hidden, c) = (self.embed_dim, self.mlp_hidden(), self.in_chans);
        let (ph, pw) = (self.patch_size.h, self.patch_size.w);
        let per_block = [
            ("blocks.N.attn.qkv.weight", vec![3, d, d]),
            ("blocks.N.mlp.fc1.weight", vec![hidden, d]),
            ("patch_embed.proj.weight", vec![d, c, ph, pw]),
            ("pos_embed", vec![self.pos_tokens(), d]),
            ("head.weight", vec![self.num_classes, d]),
        ];
        for (name, shape) in &per_block {
            check_elements(&format!("ViT config: parameter `{name}`"), shape)?;
        }
        // Each block holds about 4 D^2 (attention) + 2 D hidden (MLP) values.
        let block = 4 * d * d + 2 * d * hidden + 9 * d + hidden;
        let stem = d * c * ph * pw + (self.pos_tokens() + self.reg_tokens) * d + self.num_classes * d + 6 * d;
        let total = block.checked_mul(self.depth).and_then(|b| b.checked_add(stem));
        if total.is_none_or(|t| t > MAX_PARAMETERS) {
            return bad(
                "depth",
                format!(
                    "{} blocks of width {d} hold more than the limit of {MAX_PARAMETERS} (2^32) parameters",
                    self.depth
                ),
            );
        }
        Ok(())
    }

    /// Patch rows and columns: `img_size / patch_size` per side.
    pub fn grid_size(&self) -> (usize, usize) {
        (self.img_size.h / self.patch_size.h.max(1), self.img_size.w / self.patch_size.w.max(1))
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid_size();
        h * w
    }

    /// Prefix tokens: the class token, if any, DeiT's distillation token, then the register tokens.
    pub fn prefix_tokens(&self) -> usize {
        self.class_token as usize + self.distilled as usize + self.reg_tokens
    }

    /// Tokens per image: the prefix tokens and the patches.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + self.prefix_tokens()
    }

    /// Rows of `pos_embed`: the tokens, less the prefix tokens with `no_embed_class`; 0 without
    /// a position embedding.
    pub fn pos_tokens(&self) -> usize {
        match self.pos_embed {
            PosEmbed::None => 0,
            PosEmbed::Learn if self.no_embed_class => self.num_patches(),
            PosEmbed::Learn => self.num_tokens(),
        }
    }

    /// Input values per patch, `C x Ph x Pw` (the patch embedding's input width).
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.patch_size.area()
    }

    /// MLP hidden width, `int(embed_dim * mlp_ratio)` as timm computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Whether the final LayerNorm comes after pooling (`fc_norm`) rather than before it (`norm`).
    pub fn uses_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(matches!(self.global_pool, GlobalPool::Avg | GlobalPool::AvgMax | GlobalPool::Max))
    }

    /// Whether there is a final `norm` (before pooling).
    pub fn has_norm(&self) -> bool {
        self.final_norm && !self.uses_fc_norm()
    }

    /// Whether there is an `fc_norm` (after pooling).
    pub fn has_fc_norm(&self) -> bool {
        self.final_norm && self.uses_fc_norm()
    }

    /// Width per head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_give_open_clips_towers() {
        // open_clip 3.3's model_configs: ViT-B-32 {embed_dim 512, width 768, layers 12, patch 32},
        // ViT-L-14-336 {768, 1024, 24, 14, image 336}, ViT-H-14 {1024, 1280, 32, 14, head_width 80}
        let b = VitConfig::arch("ViT-B-32-quickgelu").unwrap();
        assert_eq!((b.num_classes, b.embed_dim, b.depth, b.patch_size.h, b.img_size.h), (512, 768, 12, 32, 224));
        assert_eq!((b.act_layer, b.pre_norm, b.eps), (Activation::QuickGelu, true, 1e-5));
        let l = VitConfig::arch("ViT-L-14-336").unwrap();
        assert_eq!((l.num_classes, l.embed_dim, l.depth, l.patch_size.h, l.img_size.h), (768, 1024, 24, 14, 336));
        assert_eq!(l.act_layer, Activation::Gelu);
        let h = VitConfig::arch("ViT-H-14").unwrap();
        assert_eq!((h.num_classes, h.embed_dim / h.num_heads, h.depth), (1024, 80, 32));
        // Google's names stay Google's
        assert_eq!(VitConfig::arch("ViT-B_16").unwrap().act_layer, Activation::Gelu);
        assert!(!VitConfig::arch("ViT-B_16").unwrap().pre_norm);
        assert!(VitConfig::arch("ViT-B-64").is_err());
    }

    #[test]
    fn arch_names_give_timm_shapes() {
        let l = VitConfig::arch("vit_large_patch32_384").unwrap();
        assert_eq!((l.embed_dim, l.depth, l.num_heads), (1024, 24, 16));
        assert_eq!((l.patch_size, l.img_size), (Size2::square(32), Size2::square(384)));
        assert_eq!(l.grid_size(), (12, 12));
        let g = VitConfig::arch("ViT-B_16").unwrap();
        assert_eq!(g, VitConfig::arch("vit_base_patch16_224").unwrap());
        assert_eq!(VitConfig::arch("ViT-L_32-384").unwrap(), l);
        assert_eq!(VitConfig::arch("vit_tiny_patch16_224").unwrap().mlp_hidden(), 768);
        for bad in ["vit_huge_patch16_224", "vit_base_patch8_224", "vit_base_patch16", "ViT-X_16", "resnet50"] {
            assert!(VitConfig::arch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = VitConfig::tiny(32, 8, 10);
        assert!(c.validate().is_ok());
        c.img_size = Size2::square(30);
        assert!(c.validate().unwrap_err().to_string().contains("img_size"));
        let mut c = VitConfig::tiny(32, 8, 10);
        c.num_heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("num_heads"));
        let mut c = VitConfig::tiny(32, 8, 10);
        c.class_token = false;
        assert!(c.validate().unwrap_err().to_string().contains("global_pool"));
        c.global_pool = GlobalPool::Avg;
        assert!(c.validate().is_ok());
        assert_eq!((c.num_tokens(), c.pos_tokens()), (16, 16));
    }

    /// Sizes from a file or a flag are checked before anything is allocated: a huge image
    /// (`--img-size 1000000`, the issue's abort), width, class count or depth is a typed error
    /// naming the field, and the largest real configs pass.
    #[test]
    fn huge_sizes_are_refused_before_allocation() {
        for name in ["vit_large_patch16_384", "vit_base_patch16_224"] {
            VitConfig::arch(name).unwrap().validate().unwrap();
        }
        let base = VitConfig::arch("vit_base_patch16_224").unwrap();
        type Edit = fn(&mut VitConfig);
        let cases: [(&str, Edit); 6] = [
            ("img_size", |c| c.img_size = Size2::square(16 * 62_500)), // 1,000,000 px
            ("img_size", |c| {
                (c.img_size, c.patch_size) = (Size2::square(usize::MAX - usize::MAX % 2), Size2::square(2))
            }),
            ("qkv", |c| c.embed_dim = 12 << 18),
            ("fc1", |c| c.mlp_ratio = 1e30),
            ("head", |c| c.num_classes = usize::MAX),
            ("depth", |c| c.depth = 1 << 40),
        ];
        for (field, edit) in cases {
            let mut c = base.clone();
            edit(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn mlp_hidden_truncates_like_python_int() {
        let mut c = VitConfig::tiny(16, 4, 3);
        c.embed_dim = 24;
        c.mlp_ratio = 2.5;
        assert_eq!(c.mlp_hidden(), 60);
        c.embed_dim = 10;
        c.mlp_ratio = 1.15; // 11.499999999999998 in f64: int() gives 11
        assert_eq!(c.mlp_hidden(), 11);
    }
}
