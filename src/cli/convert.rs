//! `patchgraph convert`: a ViT checkpoint in any format and layout patchgraph reads (timm
//! safetensors, Google `.npz`, PyTorch `.pth` / `.pt` of timm, DeiT, DINO, MAE, OpenAI CLIP /
//! open_clip towers, TorchScript) written under the names the other side needs:
//!
//! | `--to` | names | loads with |
//! |---|---|---|
//! | `timm` (default) | timm's `VisionTransformer` | `timm.create_model(...).load_state_dict(safetensors.torch.load_file(OUT))` |
//! | `clip` | OpenAI CLIP's vision tower (`conv1`, `ln_pre`, `transformer.resblocks.N...`, `proj`) | `model.visual.load_state_dict(...)` in open_clip or OpenAI's `clip` |
//! | `google` | Google's `Transformer/encoderblock_N/...` (`.npz`) | big_vision / timm's `_load_weights` |
//!
//! Where the models differ it refuses and says how, instead of writing something that loads but
//! means nothing: a Google classifier ViT is not a CLIP tower (no `ln_pre`, a classifier head
//! instead of `proj`, ...). The output is `.safetensors`, `.npz` or `.pth` (`torch.save`'s zip
//! format) by its extension; nothing is written when anything is refused.

use super::{Common, ModelArgs};
use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph convert`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The checkpoint and its config.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Resample the position embedding to this input side.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Whose names to write: timm, clip (OpenAI CLIP / open_clip vision tower) or google.
    #[arg(long, default_value = "timm")]
    pub to: String,
    /// The file to write: `.safetensors`, `.npz`, or `.pth` / `.pt` / `.bin` (what
    /// `torch.save(state_dict)` writes; `torch.load(weights_only=True)` reads it).
    #[arg(long)]
    pub out: PathBuf,
}

/// What `patchgraph convert` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// What was chosen or adapted on the way (nested state dict, prefixes, resampled position
    /// embedding, class count, ...).
    pub adapted: Vec<String>,
    /// The names written (timm, clip or google).
    pub to: String,
    /// The file written.
    pub wrote: Vec<PathBuf>,
}

/// Reads, checks and writes (nothing is written when any tensor is missing, misshapen or
/// non-finite, or when the model is not what `--to` names).
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    let ext = args.out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "safetensors" | "npz" | "pth" | "pt" | "bin") {
        return Err(Error::invalid("--out", format!("{}: write .safetensors, .npz or .pth", args.out.display())));
    }
    if !matches!(args.to.as_str(), "timm" | "clip" | "google") {
        return Err(Error::invalid("--to", format!("`{}`: expected timm, clip or google", args.to)));
    }
    let config = args.model.config(args.img_size)?;
    let heads = config.num_heads;
    let (vit, adapted) = args.model.load(config, common)?;
    let mut map = match args.to.as_str() {
        "clip" => vit.clip_state_dict()?,
        "google" => crate::checkpoint::timm_vit_to_google(
            &vit.state_dict()?,
            heads,
            &args.model.checkpoint.display().to_string(),
        )?,
        _ => {
            let mut m = vit.state_dict()?;
            m.set_metadata("patchgraph_vit_config", serde_json::to_string(vit.config()).unwrap_or_default());
            m
        }
    };
    if ext == "npz" {
        map.save_npz(&args.out)?;
    } else if matches!(ext, "pth" | "pt" | "bin") {
        map.save_pth(&args.out)?;
    } else {
        map.set_metadata("format", "pt");
        map.save_safetensors(&args.out)?;
    }
    Ok(Report { adapted, to: args.to.clone(), wrote: vec![args.out.clone()] })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.adapted {
            writeln!(f, "adapted: {n}")?;
        }
        for p in &self.wrote {
            writeln!(f, "wrote {} ({} names)", p.display(), self.to)?;
        }
        Ok(())
    }
}
