//! `patchgraph convert`: a Google `.npz` ViT (or a timm checkpoint, resampled with
//! `--img-size`) written as a timm-named safetensors file that
//! `timm.create_model(...).load_state_dict(safetensors.torch.load_file(...))` loads strictly.

use super::{Common, model_config};
use crate::error::{Error, Result};
use crate::infer::load_vit_with;
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph convert`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Checkpoint to read: a Google ViT `.npz` or a timm `.safetensors`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model config as JSON (timm's argument names).
    #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
    pub config: Option<PathBuf>,
    /// Architecture name (vit_base_patch16_224, ViT-B_16, ...).
    #[arg(long)]
    pub arch: Option<String>,
    /// Resample the position embedding to this input side.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// The safetensors file to write (timm's names; `timm.create_model(...)` + `load_state_dict` reads it).
    #[arg(long)]
    pub out: PathBuf,
}

/// What `patchgraph convert` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// What was adapted on the way (resampled position embedding, class count, ...).
    pub adapted: Vec<String>,
    /// The file written.
    pub wrote: Vec<PathBuf>,
}

/// Reads, checks and writes (nothing is written when any tensor is missing, misshapen or
/// non-finite).
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    let mut config = model_config(args.config.as_deref(), args.arch.as_deref())?
        .ok_or_else(|| Error::invalid("convert", "give --config FILE or --arch NAME"))?;
    if let Some(size) = args.img_size {
        config.img_size = crate::nn::Size2::square(size);
    }
    let (vit, adapted) = load_vit_with(&args.checkpoint, config, common.allow_nonfinite)?;
    vit.save_safetensors(&args.out)?;
    Ok(Report { adapted, wrote: vec![args.out.clone()] })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.adapted {
            writeln!(f, "adapted: {n}")?;
        }
        for p in &self.wrote {
            writeln!(f, "wrote {} (timm names; config in its metadata)", p.display())?;
        }
        Ok(())
    }
}
