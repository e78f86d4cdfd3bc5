//! `patchgraph infer`: classify images (timm's eval transform) or prepared tensors (`.npy`,
//! `.safetensors`) with a timm safetensors or Google `.npz` ViT checkpoint, on the complete
//! graph or any other; `--compare` reports top-1 agreement, KL divergence and speed-up against
//! the complete graph. The report carries every input's logits, and its top-k.

use super::{Common, ModelArgs, parse_graphs, parse_norm};
use crate::error::{Error, Result};
use crate::image::Interpolation;
use crate::infer::{Comparison, Preprocess, compare, load_inputs, load_labels, predict_logits, softmax_rows, top_k};
use crate::nn::{VitConfig, VitOptions};
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph infer`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The checkpoint and its config.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images (any format `image` reads), or prepared tensors (`.npy`, `.safetensors`) [C,H,W],
    /// [B,C,H,W], or [H,W] / [B,H,W] for a one-channel model.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Classes to print per input.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Class names, one per line (default: the bundled ImageNet-1k names for 1000 classes).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Attention graph: one spec for every layer, or one per layer, comma-separated
    /// (complete, grid8:1, grid:8, window:7, nat:7, knn:16, fknn:9:2, knn-feature:9:dilation=2,
    /// bigbird:7:3:0, swin:7, lsh:16:2:0, a union A+B, or performer:M:SEED / nystrom:L with the
    /// same weights, ...).
    #[arg(long, default_value = "complete")]
    pub graph: String,
    /// Also run the complete graph and report top-1 agreement, KL divergence and speed-up.
    #[arg(long)]
    pub compare: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Model input side (default: the config's); the position embedding is resampled to it.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Resize the shorter side to img_size / crop_pct before the centre crop.
    #[arg(long, default_value_t = 0.875)]
    pub crop_pct: f64,
    /// Normalisation: inception (mean = std = 0.5, Google's and timm's augreg ViTs), imagenet, or clip
    /// (OpenAI CLIP's mean and std; use --crop-pct 1.0 for CLIP towers).
    #[arg(long, default_value = "inception")]
    pub norm: String,
    /// Timed forwards per graph for --compare (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One class of a top-k list.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Class {
    /// Class index.
    pub class: usize,
    /// Its name (empty without labels).
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// One input's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    /// The file (and index within a batch tensor).
    pub input: String,
    /// The `k` most likely classes.
    pub top: Vec<Class>,
    /// Every class's logit (before the softmax).
    pub logits: Vec<f32>,
}

/// What `patchgraph infer` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The checkpoint.
    pub checkpoint: String,
    /// The model's config (after `--img-size`).
    pub config: VitConfig,
    /// What was adapted while loading.
    pub adapted: Vec<String>,
    /// The graph specs, comma-separated.
    pub graph: String,
    /// Median seconds per forward of the whole batch on the graph.
    pub seconds_per_forward: f64,
    /// One per input.
    pub results: Vec<Prediction>,
    /// Against the complete graph, with `--compare`.
    pub compare: Option<Comparison>,
    /// Print as JSON (the command's `--json`).
    #[serde(skip)]
    pub json: bool,
}

/// Loads the model and the inputs and classifies them.
///
/// Errors: neither `--config` nor `--arch`; `--crop-pct` outside (0, 1]; the checkpoint's,
/// inputs' and graph specs' errors.
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    let mut config = args.model.config(None)?;
    if let Some(size) = args.img_size {
        config.img_size = crate::nn::Size2::square(size);
    }
    // timm's crop_pct: the crop is that fraction of the resized shorter side.
    if !(args.crop_pct.is_finite() && args.crop_pct > 0.0 && args.crop_pct <= 1.0) {
        return Err(Error::invalid(
            "--crop-pct",
            format!("{}: must be in (0, 1] (timm's default 0.875)", args.crop_pct),
        ));
    }
    let (vit, adapted) = args.model.load(config, common)?;
    let cfg = vit.config().clone();
    let preprocess = Preprocess {
        img_size: cfg.img_size,
        in_chans: cfg.in_chans,
        crop_pct: args.crop_pct,
        interpolation: Interpolation::Bicubic,
        normalization: parse_norm(&args.norm)?,
    };
    let inputs = load_inputs(&args.inputs, &preprocess)?;
    let images: Vec<_> = inputs.iter().map(|i| i.image.clone()).collect();
    let graphs = parse_graphs(&args.graph)?;
    let labels = load_labels(args.labels.as_deref(), cfg.num_classes)?;
    let options = VitOptions { graphs: graphs.clone(), ..Default::default() };
    let runs = if args.compare { args.runs } else { 1 };
    let (logits, seconds) = predict_logits(&vit, &images, &options, runs)?;
    let probs = softmax_rows(&logits);
    let comparison = if args.compare {
        let (complete, complete_seconds) = predict_logits(&vit, &images, &VitOptions::default(), args.runs)?;
        Some(compare(&softmax_rows(&complete), &probs, complete_seconds, seconds))
    } else {
        None
    };
    let label = |c: usize| labels.as_ref().map_or(String::new(), |l| l[c].clone());
    let results = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| Prediction {
            input: input.name.clone(),
            top: top_k(probs.row(i), args.topk)
                .into_iter()
                .map(|(class, probability)| Class { class, label: label(class), probability })
                .collect(),
            logits: logits.row(i).to_vec(),
        })
        .collect();
    Ok(Report {
        checkpoint: args.model.checkpoint.display().to_string(),
        config: cfg,
        adapted,
        graph: graphs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","),
        seconds_per_forward: seconds,
        results,
        compare: comparison,
        json: args.json,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json {
            let text = serde_json::to_string_pretty(self).map_err(|_| fmt::Error)?;
            return writeln!(f, "{text}");
        }
        super::write_model(f, &self.config, ("classes", self.config.num_classes), &self.graph)?;
        for n in &self.adapted {
            writeln!(f, "adapted: {n}")?;
        }
        for r in &self.results {
            writeln!(f, "{}", r.input)?;
            for (rank, t) in r.top.iter().enumerate() {
                writeln!(f, "  {:>2}. {:.4}  {:>5}  {}", rank + 1, t.probability, t.class, t.label)?;
            }
        }
        if let Some(c) = &self.compare {
            writeln!(
                f,
                "against the complete graph: top-1 agreement {:.1}%, mean KL(complete || {}) {:.4} nats, \
                 {:.1} ms vs {:.1} ms per forward (speed-up {:.2}x)",
                100.0 * c.top1_agreement,
                self.graph,
                c.mean_kl,
                1e3 * c.complete_seconds,
                1e3 * c.sparse_seconds,
                c.speedup
            )?;
        }
        Ok(())
    }
}
