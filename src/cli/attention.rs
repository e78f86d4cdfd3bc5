//! `patchgraph attention`: where a ViT attends. One query patch's attention (or the class
//! token's), per head or averaged over heads, or the attention rollout (Abnar and Zuidema,
//! 2020) through the layers, as a heat map over the image, on any patch graph.
//!
//! The report holds the values over the patches (`grid x grid`, row-major) and the patch
//! where they peak; the picture goes to `--out`.

use super::{Common, model_config, parse_graphs, parse_norm, wrote};
use crate::attention_map::{self, Heads, layer_matrix, patch_values};
use crate::data::{Split, load_dataset};
use crate::error::{Error, Result};
use crate::infer::{PreparedVit, top_k};
use crate::nn::VitOptions;
use crate::viz::draw_attention_map;
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph attention`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Checkpoint (`patchgraph train` output, timm safetensors or Google .npz).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Image file; or take a test image of a dataset with --data and --index.
    pub image: Option<PathBuf>,
    /// Dataset directory (as for train) to take the image from.
    #[arg(long, conflicts_with = "image")]
    pub data: Option<PathBuf>,
    /// Index of the test image in --data.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Model config JSON (for checkpoints that do not carry one).
    #[arg(long, conflicts_with = "arch")]
    pub config: Option<PathBuf>,
    /// Architecture name (for checkpoints that do not carry a config).
    #[arg(long)]
    pub arch: Option<String>,
    /// Normalisation for checkpoints without a training config: inception or imagenet.
    #[arg(long, default_value = "inception")]
    pub norm: String,
    /// Layer (0-based; default the last). With --rollout, the rollout runs up to it.
    #[arg(long)]
    pub layer: Option<usize>,
    /// One head (default: the mean over heads).
    #[arg(long, conflicts_with = "mean")]
    pub head: Option<usize>,
    /// The mean over heads (the default).
    #[arg(long)]
    pub mean: bool,
    /// Query patch, row-major (default: the class token, or the centre patch without one).
    #[arg(long)]
    pub query: Option<usize>,
    /// Attention rollout (Abnar and Zuidema, 2020) through the layers instead of one layer.
    #[arg(long)]
    pub rollout: bool,
    /// Attention graph, one spec or one per layer (default complete).
    #[arg(long, default_value = "complete")]
    pub graph: String,
    /// Output picture (.png or .svg).
    #[arg(long)]
    pub out: PathBuf,
}

/// What `patchgraph attention` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The image, or "test image I of DIR (label L)".
    pub input: String,
    /// The model's top-1 class for it.
    pub predicted_class: usize,
    /// The layer shown (the last of the rollout).
    pub layer: usize,
    /// One head, or `None` for the mean over heads.
    pub head: Option<usize>,
    /// The query patch, or `None` for the class token.
    pub query: Option<usize>,
    /// Whether the values are the rollout.
    pub rollout: bool,
    /// Patch rows and columns.
    pub grid: (usize, usize),
    /// The attention (or rollout) of the query over the patches, `rows x cols` row-major.
    pub values: Vec<f32>,
    /// The patch with the largest value, and that value.
    pub peak: (usize, f32),
    /// The picture.
    pub wrote: Vec<PathBuf>,
}

/// Runs the model on the image and draws the map into `--out`.
///
/// Errors: neither an image nor `--data`; `--layer`, `--head` or `--query` beyond the model;
/// the checkpoint's, image's and graph spec's errors.
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    let model = PreparedVit::load_with(
        &args.checkpoint,
        model_config(args.config.as_deref(), args.arch.as_deref())?,
        parse_norm(&args.norm)?,
        common.allow_nonfinite,
    )?;
    let (display, input, name) = match (&args.image, &args.data) {
        (Some(path), _) => {
            let (d, i) = model.prepare_path(path)?;
            (d, i, path.display().to_string())
        }
        (None, Some(dir)) => {
            let test = load_dataset(dir, Split::Test, None, None)?;
            let (img, label) = test.get(args.index)?;
            let (d, i) = model.prepare(img)?;
            (d, i, format!("test image {} of {} (label {label})", args.index, dir.display()))
        }
        (None, None) => return Err(Error::invalid("attention", "give an IMAGE or --data DIR --index I")),
    };
    let graphs = parse_graphs(&args.graph)?;
    let vit = &model.vit;
    let cfg = vit.config().clone();
    let output = vit.forward_with(&[input], &VitOptions { graphs, weights: true, ..Default::default() })?;
    let layer = args.layer.unwrap_or(cfg.depth.saturating_sub(1));
    if layer >= output.weights.len() {
        return Err(Error::invalid("--layer", format!("{layer} is not below the model's {} layers", cfg.depth)));
    }
    let heads = match args.head {
        Some(h) => Heads::One(h),
        None => Heads::Mean,
    };
    let (t, prefix, (gh, gw)) = (cfg.num_tokens(), cfg.prefix_tokens(), cfg.grid_size());
    let m = if args.rollout {
        attention_map::rollout(&output.weights[..=layer], 0, t, heads)?
    } else {
        layer_matrix(&output.weights[layer], 0, t, heads)?
    };
    let centre = (gh / 2) * gw + gw / 2;
    let (query_token, highlight) = match args.query {
        Some(q) if q >= gh * gw => {
            return Err(Error::invalid("--query", format!("patch {q} is not below {} patches", gh * gw)));
        }
        Some(q) => (prefix + q, Some(q)),
        None if cfg.class_token => (0, None),
        None => (prefix + centre, Some(centre)),
    };
    let values = patch_values(&m, query_token, prefix)?;
    draw_attention_map(&display, (gh, gw), &values, highlight, &args.out)?;
    let peak = values.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    let predicted_class = top_k(output.logits.row(0), 1).first().map_or(0, |t| t.0);
    Ok(Report {
        input: name,
        predicted_class,
        layer,
        head: args.head,
        query: highlight,
        rollout: args.rollout,
        grid: (gh, gw),
        values,
        peak,
        wrote: vec![args.out.clone()],
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.rollout { "rollout" } else { "attention" };
        let of = match self.query {
            Some(q) => format!("patch {q}"),
            None => "the class token".to_string(),
        };
        let heads = match self.head {
            Some(h) => format!(", head {h}"),
            None => ", mean over heads".to_string(),
        };
        let (p, v) = self.peak;
        let g = self.grid.1.max(1);
        writeln!(
            f,
            "{}: predicted class {}; {what} of {of} at layer {}{heads}: largest on patch {p} (row {}, column {}), {v:.3}",
            self.input,
            self.predicted_class,
            self.layer,
            p / g,
            p % g
        )?;
        wrote(f, &self.wrote)
    }
}
