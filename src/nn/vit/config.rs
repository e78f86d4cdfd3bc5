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
//! assert_eq!((c.embed_dim, c.depth, c.num_heads, c.grid()), (768, 12, 12, 14));
//! assert_eq!(c.num_tokens(), 197);
//! let json = r#"{"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 48,
//!                "depth": 2, "num_heads": 3, "global_pool": "avg"}"#;
//! let c: VitConfig = serde_json::from_str(json).unwrap();
//! assert_eq!((c.global_pool, c.uses_fc_norm(), c.eps), (GlobalPool::Avg, true, 1e-6));
//! assert!(serde_json::from_str::<VitConfig>(r#"{"img_size": 32, "patch_sise": 8}"#).is_err());
//! ```

use crate::attention::low_rank::LowRank;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the token sequence becomes one vector per image before the head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPool {
    /// The class token's final state (timm `global_pool='token'`).
    #[default]
    Token,
    /// The mean over the patch tokens, class token excluded (timm `global_pool='avg'`).
    Avg,
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

/// A Vision Transformer's shape, as timm's `VisionTransformer(**kwargs)` (JSON with these names;
/// unknown fields are an error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input side in pixels (square images).
    pub img_size: usize,
    /// Patch side `P` in pixels.
    pub patch_size: usize,
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
    /// Whether there is a class token (default true).
    #[serde(default = "default_true")]
    pub class_token: bool,
    /// Pooling before the head (default `token`).
    #[serde(default)]
    pub global_pool: GlobalPool,
    /// Position embedding for the patches only, the class token added without one (default false).
    #[serde(default)]
    pub no_embed_class: bool,
    /// LayerNorm after pooling instead of before it; `None` = timm's rule (`global_pool == avg`).
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// LayerScale initial value (`ls1.gamma`, `ls2.gamma`), if any.
    #[serde(default)]
    pub init_values: Option<f32>,
    /// LayerNorm epsilon (timm and the JAX originals: 1e-6; Hugging Face: 1e-12).
    #[serde(default = "default_eps")]
    pub eps: f32,
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
}

impl VitConfig {
    /// A timm-style ViT with 1000 classes: `vit_{tiny,small,base,large}_patch{16,32}_{224,384}`,
    /// or Google's `ViT-{Ti,S,B,L}_{16,32}[-384]`.
    pub fn arch(name: &str) -> Result<VitConfig> {
        let unknown = || {
            Error::invalid(
                "architecture",
                format!(
                    "unknown `{name}`: expected vit_{{tiny,small,base,large}}_patch{{16,32}}_{{224,384}} or ViT-{{Ti,S,B,L}}_{{16,32}}[-384]"
                ),
            )
        };
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
        Ok(VitConfig {
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            ..VitConfig::tiny(img_size, patch_size, 1000)
        })
    }

    /// A small custom ViT with timm's defaults otherwise (D = 192, 12 blocks, 3 heads = ViT-Ti).
    pub fn tiny(img_size: usize, patch_size: usize, num_classes: usize) -> VitConfig {
        VitConfig {
            img_size,
            patch_size,
            in_chans: 3,
            num_classes,
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            mlp_ratio: 4.0,
            qkv_bias: true,
            class_token: true,
            global_pool: GlobalPool::Token,
            no_embed_class: false,
            fc_norm: None,
            init_values: None,
            eps: 1e-6,
            attention: None,
            relative_position_bias: None,
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
        if self.patch_size == 0 || self.img_size < self.patch_size || self.img_size % self.patch_size != 0 {
            return bad(
                "img_size",
                format!("{} must be a positive multiple of patch_size {}", self.img_size, self.patch_size),
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
        if self.eps.is_nan() || self.eps <= 0.0 {
            return bad("eps", format!("{} must be positive", self.eps));
        }
        if self.relative_position_bias == Some(0) {
            return bad("relative_position_bias", "the window side must be at least 1".into());
        }
        if self.relative_position_bias.is_some_and(|m| m > self.grid().max(1)) {
            return bad(
                "relative_position_bias",
                format!(
                    "a window of {:?} patches is larger than the {} x {} grid",
                    self.relative_position_bias,
                    self.grid(),
                    self.grid()
                ),
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

    /// The sizes a config implies, checked against [`crate::limits`] before anything is
    /// allocated (a config read from a file, or `--img-size`, can say anything): tokens per
    /// image, each parameter tensor, and all parameters together.
    fn check_sizes(&self) -> Result<()> {
        use crate::limits::{MAX_PARAMETERS, MAX_TOKENS, check_elements};
        let bad = |what: &str, reason: String| Err(Error::invalid(format!("ViT config `{what}`"), reason));
        let grid = self.grid();
        let tokens = grid.checked_mul(grid).and_then(|p| p.checked_add(self.prefix_tokens()));
        if tokens.is_none_or(|t| t > MAX_TOKENS) {
            return bad(
                "img_size",
                format!(
                    "{} px in patches of {} is a {grid} x {grid} grid: more than the limit of {MAX_TOKENS} (2^20) tokens",
                    self.img_size, self.patch_size
                ),
            );
        }
        let (d, hidden, c, p) = (self.embed_dim, self.mlp_hidden(), self.in_chans, self.patch_size);
        let per_block = [
            ("blocks.N.attn.qkv.weight", vec![3, d, d]),
            ("blocks.N.mlp.fc1.weight", vec![hidden, d]),
            ("patch_embed.proj.weight", vec![d, c, p, p]),
            ("pos_embed", vec![self.pos_tokens(), d]),
            ("head.weight", vec![self.num_classes, d]),
        ];
        for (name, shape) in &per_block {
            check_elements(&format!("ViT config: parameter `{name}`"), shape)?;
        }
        // Each block holds about 4 D^2 (attention) + 2 D hidden (MLP) values.
        let block = 4 * d * d + 2 * d * hidden + 9 * d + hidden;
        let stem = d * c * p * p + self.pos_tokens() * d + self.num_classes * d + 4 * d;
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

    /// Patches per side `img_size / patch_size`.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// Prefix tokens (the class token, if any).
    pub fn prefix_tokens(&self) -> usize {
        self.class_token as usize
    }

    /// Tokens per image: the patches and the class token.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + self.prefix_tokens()
    }

    /// Rows of `pos_embed`: the tokens, less the class token with `no_embed_class`.
    pub fn pos_tokens(&self) -> usize {
        if self.no_embed_class { self.grid() * self.grid() } else { self.num_tokens() }
    }

    /// MLP hidden width, `int(embed_dim * mlp_ratio)` as timm computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Whether the final LayerNorm comes after pooling (`fc_norm`) rather than before it (`norm`).
    pub fn uses_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(self.global_pool == GlobalPool::Avg)
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
    fn arch_names_give_timm_shapes() {
        let l = VitConfig::arch("vit_large_patch32_384").unwrap();
        assert_eq!((l.embed_dim, l.depth, l.num_heads, l.patch_size, l.img_size), (1024, 24, 16, 32, 384));
        assert_eq!(l.grid(), 12);
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
        c.img_size = 30;
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
            ("img_size", |c| c.img_size = 16 * 62_500), // 1,000,000 px
            ("img_size", |c| (c.img_size, c.patch_size) = (usize::MAX - usize::MAX % 2, 2)),
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
