//! The `patchgraph` command's work as library calls: one module per command, each an `Args`
//! (the command's flags, parsed by clap in `main.rs` or built by a caller) and a `run` that
//! returns what the command found as data, a report that prints itself as the command does.
//! `main.rs` only parses and dispatches; the Python package calls the same functions.
//!
//! | command | module | report |
//! |---|---|---|
//! | `patchgraph graph IMAGE` | [`graph`] | the patch graph and its statistics |
//! | `patchgraph attention` | [`attention`] | one query's attention (or the rollout) over the patches |
//! | `patchgraph plot` | [`plot`] | the picture written |
//! | `patchgraph bench` | [`bench`] | every timing record |
//! | `patchgraph train` | [`train`] | the metrics of every epoch |
//! | `patchgraph convert` | [`convert`] | what was adapted, the file written |
//! | `patchgraph infer` | [`infer`] | logits, top-k and (with `--compare`) the comparison |
//! | `patchgraph embed` | [`embed`] | the file of embeddings written and (with `--compare`) each image's cosine to the complete graph's |
//!
//! ```
//! use clap::Parser;
//! use patchgraph::cli::{Common, convert};
//! // The flags as the command line writes them; an unknown architecture is the same typed
//! // error from Rust, the command line and Python.
//! #[derive(Parser)]
//! struct Cmd {
//!     #[command(flatten)]
//!     args: convert::Args,
//! }
//! let cmd = Cmd::try_parse_from(["convert", "--checkpoint", "x.npz", "--arch", "vit_huge_patch14_224", "--out", "y.safetensors"]).unwrap();
//! let err = convert::run(&cmd.args, &Common::default()).unwrap_err();
//! assert!(err.to_string().contains("vit_huge_patch14_224"));
//! ```

pub mod attention;
pub mod bench;
pub mod convert;
pub mod embed;
pub mod graph;
pub mod infer;
pub mod plot;
pub mod train;

use crate::error::{Error, Result};
use crate::graph::GraphSpec;
use crate::image::Normalization;
use crate::nn::VitConfig;
use std::path::Path;

/// What every command shares: the rayon threads and whether checkpoints may hold NaN or
/// infinities (the command line's global `--threads` and `--allow-nonfinite`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Common {
    /// rayon threads (`None`: rayon's default, all cores). Same seed, same numbers, whatever
    /// the count.
    pub threads: Option<usize>,
    /// Load checkpoints that hold NaN or infinities (by default each is an error naming the
    /// tensor and index).
    pub allow_nonfinite: bool,
}

impl Common {
    /// Runs `work` on a rayon pool of [`Common::threads`] threads.
    pub fn install<T: Send>(&self, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.unwrap_or(0))
            .build()
            .map_err(|e| Error::invalid("--threads", e.to_string()))?
            .install(work)
    }
}

/// A line of progress: the command line prints it; a library caller may keep or drop it.
pub type Log<'a> = dyn FnMut(&str) + 'a;

/// The model `infer`, `embed` and `convert` run: a checkpoint and its config, the same three
/// flags in each (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Checkpoint: timm `.safetensors`, Google ViT `.npz`, or PyTorch `.pth` / `.pt` / `.bin` (timm,
    /// DeiT, DINO, MAE, OpenAI CLIP / open_clip towers, TorchScript; read without running code).
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Model config as JSON, with timm's `VisionTransformer` argument names.
    #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
    pub config: Option<std::path::PathBuf>,
    /// Architecture: vit_{tiny,small,base,large}_patch{16,32}_{224,384}, Google's ViT-B_16 and the
    /// like, or a CLIP tower ViT-{B-32,B-16,L-14,L-14-336,H-14}[-quickgelu].
    #[arg(long)]
    pub arch: Option<String>,
}

impl ModelArgs {
    /// The config of `--config` or `--arch` (one is required), with the input side `img_size`
    /// when given (the position embedding is then resampled on loading).
    pub fn config(&self, img_size: Option<usize>) -> Result<VitConfig> {
        let mut config = model_config(self.config.as_deref(), self.arch.as_deref())?
            .ok_or_else(|| Error::invalid("model", "give --config FILE or --arch NAME"))?;
        if let Some(size) = img_size {
            config.img_size = crate::nn::Size2::square(size);
        }
        Ok(config)
    }

    /// Loads the ViT of [`ModelArgs::config`] from the checkpoint, with what loading chose and
    /// adapted (one line each).
    pub fn load(&self, config: VitConfig, common: &Common) -> Result<(crate::nn::Vit, Vec<String>)> {
        crate::infer::load_vit_with(&self.checkpoint, config, common.allow_nonfinite)
    }
}

/// The model config from `--config FILE` or `--arch NAME`, if given.
pub fn model_config(config: Option<&Path>, arch: Option<&str>) -> Result<Option<VitConfig>> {
    match (config, arch) {
        (Some(path), _) => VitConfig::from_json_file(path).map(Some),
        (None, Some(name)) => VitConfig::arch(name).map(Some),
        (None, None) => Ok(None),
    }
}

/// `--norm`: `inception` (mean = std = 0.5), `imagenet`, or `clip` (OpenAI CLIP's mean
/// (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711)).
pub fn parse_norm(norm: &str) -> Result<Normalization> {
    match norm {
        "inception" => Ok(Normalization::inception()),
        "imagenet" => Ok(Normalization::imagenet()),
        "clip" => Ok(Normalization {
            mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
        }),
        other => Err(Error::invalid("--norm", format!("`{other}`: expected inception, imagenet or clip"))),
    }
}

/// `--graph`: one spec for every layer, or one per layer, comma-separated.
pub fn parse_graphs(spec: &str) -> Result<Vec<GraphSpec>> {
    spec.split(',').map(|s| s.trim().parse()).collect()
}

/// The `model: ...` line of a report: the ViT's shape, its output width (`what=` and the count)
/// and the graph.
fn write_model(
    f: &mut std::fmt::Formatter<'_>,
    c: &VitConfig,
    outputs: (&str, usize),
    graph: &str,
) -> std::fmt::Result {
    writeln!(
        f,
        "model: ViT D={} depth={} heads={} patch={} img={} {}={}, graph: {}",
        c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, outputs.0, outputs.1, graph
    )
}

/// "wrote PATH" lines of a report.
fn wrote(f: &mut std::fmt::Formatter<'_>, paths: &[std::path::PathBuf]) -> std::fmt::Result {
    for p in paths {
        writeln!(f, "wrote {}", p.display())?;
    }
    Ok(())
}
