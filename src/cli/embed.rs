//! `patchgraph embed`: the image embeddings of a folder of images (or a list of files) on any
//! attention graph, written as `.npy` or `.safetensors`; `--compare` also runs the complete graph
//! with the same weights and reports each image's cosine similarity between the two embeddings.
//!
//! ```text
//! inputs: files as given, a directory -> its image files (png, jpg, jpeg, bmp, gif, webp, tif,
//!         tiff; by name, not recursive)
//! -> timm's eval transform (bicubic resize of the shorter side to img_size / crop_pct, centre
//!    crop, normalise) -> ViT forward on --graph, --batch images at a time
//! -> the model's output [N x E]: a CLIP tower's `proj` (the image embedding), a classifier's
//!    logits, or a headless model's pooled features
//! -> .npy: float32 [N, E] (rows L2-normalised with --normalize)
//!    .safetensors: `embedding` [N, E], `embedding_normalized` [N, E], metadata `files` (JSON list)
//! ```
//!
//! The file is written (atomically) only after every image went through; the extension of
//! `--out` is checked before any work.

use super::{Common, ModelArgs, parse_graphs, parse_norm};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::image::Interpolation;
use crate::infer::{Preprocess, load_inputs};
use crate::nn::{Vit, VitConfig, VitOptions};
use crate::tensor::Matrix;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The image extensions a directory is searched for (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// The flags of `patchgraph embed`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The checkpoint and its config.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files, or directories: a directory means every image file directly in it
    /// (png, jpg, jpeg, bmp, gif, webp, tif, tiff), sorted by name.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Attention graph: one spec for every layer, or one per layer, comma-separated
    /// (complete, grid8:1, grid:8, window:7, nat:7, knn:16, fknn:9:2, knn-feature:9:dilation=2,
    /// bigbird:7:3:0, swin:7, lsh:16:2:0, a union A+B, or performer:M:SEED / nystrom:L with the
    /// same weights, ...).
    #[arg(long, default_value = "complete")]
    pub graph: String,
    /// Output: `.npy` (float32 [N, E]) or `.safetensors` (`embedding` and
    /// `embedding_normalized` [N, E], the file names in order as a JSON list under the metadata
    /// key `files`).
    #[arg(long)]
    pub out: PathBuf,
    /// L2-normalise the rows of the `.npy` output (the safetensors file has both).
    #[arg(long)]
    pub normalize: bool,
    /// Also run the complete graph with the same weights and report the cosine similarity per
    /// image between the two embeddings, their mean and minimum, and both timings.
    #[arg(long)]
    pub compare: bool,
    /// Images per forward.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Model input side (default: the config's); the position embedding is resampled to it.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Resize the shorter side (bicubic) to img_size / crop_pct before the centre crop. CLIP
    /// resizes the shorter side to img_size and crops: use 1.0 for CLIP towers.
    #[arg(long, default_value_t = 0.875)]
    pub crop_pct: f64,
    /// Normalisation: inception (mean = std = 0.5, Google's and timm's augreg ViTs), imagenet,
    /// or clip (OpenAI's mean and std; use it for CLIP towers, with --crop-pct 1.0).
    #[arg(long, default_value = "inception")]
    pub norm: String,
    /// Print JSON instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// The `--graph` embeddings against the complete graph's, with `--compare`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EmbedComparison {
    /// Per image (in the order of [`Report::files`]), the cosine similarity between the
    /// `--graph` embedding and the complete-graph embedding.
    pub cosine: Vec<f64>,
    /// Their mean.
    pub mean_cosine: f64,
    /// Their minimum.
    pub min_cosine: f64,
    /// Seconds of forwards on the complete graph, all batches together (after one untimed
    /// forward of the first image on each graph).
    pub complete_seconds: f64,
    /// `complete_seconds / seconds` of the `--graph` forwards.
    pub speedup: f64,
}

/// What `patchgraph embed` wrote.
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
    /// The images, one per row of the output, in order.
    pub files: Vec<String>,
    /// The embedding width `E` (the model's output: classes, CLIP's projection, or `embed_dim`
    /// for a headless model).
    pub embedding_width: usize,
    /// The file written.
    pub out: PathBuf,
    /// Whether the `.npy` rows are L2-normalised (`--normalize`).
    pub normalized: bool,
    /// Seconds of forwards on `--graph`, all batches together (decoding not included).
    pub seconds: f64,
    /// Against the complete graph, with `--compare`.
    pub compare: Option<EmbedComparison>,
    /// Print as JSON (the command's `--json`).
    #[serde(skip)]
    pub json: bool,
}

/// The output's format, from the extension of `--out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Npy,
    Safetensors,
}

fn output_format(out: &Path) -> Result<Format> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "npy" => Ok(Format::Npy),
        "safetensors" => Ok(Format::Safetensors),
        _ => Err(Error::invalid("--out", format!("{}: expected a .npy or .safetensors file", out.display()))),
    }
}

/// The image files of `inputs`: a file as it is, a directory as its image files (by
/// [`IMAGE_EXTENSIONS`], sorted by name, not recursive). A directory without images is an
/// [`Error::Invalid`] naming it; a path that cannot be read an [`Error::Io`].
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let io = |source| Error::Io { path: input.clone(), source };
        if !std::fs::metadata(input).map_err(io)?.is_dir() {
            files.push(input.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(input).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
            if IMAGE_EXTENSIONS.contains(&ext.as_str()) && path.is_file() {
                found.push(path);
            }
        }
        if found.is_empty() {
            return Err(Error::invalid(
                "input directory",
                format!("{} holds no image files ({})", input.display(), IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.extend(found);
    }
    Ok(files)
}

/// `row / |row|` per row (a zero row stays zero).
pub fn normalize_rows(m: &Matrix) -> Matrix {
    let mut out = m.clone();
    for i in 0..out.rows() {
        let row = out.row_mut(i);
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    }
    out
}

/// The cosine similarity of two vectors in f64 (1 for two zero vectors, 0 when only one is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na > 0.0, nb > 0.0) {
        (true, true) => (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0),
        (false, false) => 1.0,
        _ => 0.0,
    }
}

/// A float32 `.npy` (version 1.0, C order) of `m`.
fn npy_bytes(m: &Matrix) -> Vec<u8> {
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", m.rows(), m.cols());
    // magic (6) + version (2) + header length (2) + dict + '\n', padded to 64 bytes as numpy does
    let unpadded = 10 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', (64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out.extend(m.as_slice().iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Runs the command with a progress bar on stderr (hidden when stderr is not a terminal, or with
/// `--json`).
///
/// Errors: neither `--config` nor `--arch`; an `--out` that is neither `.npy` nor
/// `.safetensors`, `--crop-pct` outside (0, 1], `--batch 0`, a bad `--graph` or `--norm`, or a
/// directory without images (all before the model is loaded); then the checkpoint's and each
/// image's errors (naming the file). Nothing is written unless every image went through.
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    run_with(args, common, !args.json)
}

/// [`run`], with `progress_bar` saying whether a bar may be drawn on stderr (never when stderr is
/// not a terminal); a library caller may want none.
pub fn run_with(args: &Args, common: &Common, progress_bar: bool) -> Result<Report> {
    // Every check that needs no model first, so that a mistake costs nothing.
    let format = output_format(&args.out)?;
    if !(args.crop_pct.is_finite() && args.crop_pct > 0.0 && args.crop_pct <= 1.0) {
        return Err(Error::invalid(
            "--crop-pct",
            format!("{}: must be in (0, 1] (timm's default 0.875; 1.0 for CLIP)", args.crop_pct),
        ));
    }
    if args.batch == 0 {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let graphs = parse_graphs(&args.graph)?;
    let normalization = parse_norm(&args.norm)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Error::Io {
            path: args.out.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the output's directory does not exist"),
        });
    }
    let files = image_files(&args.inputs)?;
    let mut config = args.model.config(None)?;
    if let Some(size) = args.img_size {
        config.img_size = crate::nn::Size2::square(size);
    }

    let (vit, adapted) = args.model.load(config, common)?;
    let cfg = vit.config().clone();
    let preprocess = Preprocess {
        img_size: cfg.img_size,
        in_chans: cfg.in_chans,
        crop_pct: args.crop_pct,
        interpolation: Interpolation::Bicubic,
        normalization,
    };
    let options = VitOptions { graphs: graphs.clone(), ..Default::default() };

    let bar =
        if progress_bar { indicatif::ProgressBar::new(files.len() as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("embed [{bar:30}] {pos}/{len} images {msg}")
            .map_err(|e| Error::invalid("progress bar", e.to_string()))?
            .progress_chars("=> "),
    );
    let embedded = embed_all(&vit, &files, &preprocess, &options, args.batch, args.compare, &bar);
    bar.finish_and_clear();
    let Embedded { names, rows, complete_rows, seconds, complete_seconds } = embedded?;

    let width = rows.first().map_or(0, Vec::len);
    let n = rows.len();
    let embedding = Matrix::from_vec(n, width, rows.concat())?;
    let normalized = normalize_rows(&embedding);
    match format {
        Format::Npy => {
            let m = if args.normalize { &normalized } else { &embedding };
            crate::atomic_file::write_atomically(&args.out, &npy_bytes(m))?;
        }
        Format::Safetensors => {
            let mut map = TensorMap::default();
            map.insert("embedding", vec![n, width], embedding.as_slice().to_vec())?;
            map.insert("embedding_normalized", vec![n, width], normalized.as_slice().to_vec())?;
            map.set_metadata(
                "files",
                serde_json::to_string(&names).map_err(|e| Error::invalid("files", e.to_string()))?,
            );
            map.set_metadata("graph", args.graph.clone());
            map.set_metadata("checkpoint", args.model.checkpoint.display().to_string());
            map.save_safetensors(&args.out)?;
        }
    }

    let compare = complete_rows.map(|complete| {
        let cosine: Vec<f64> = (0..n).map(|i| cosine(embedding.row(i), &complete[i])).collect();
        EmbedComparison {
            mean_cosine: cosine.iter().sum::<f64>() / n.max(1) as f64,
            min_cosine: cosine.iter().copied().fold(f64::INFINITY, f64::min),
            cosine,
            complete_seconds,
            speedup: complete_seconds / seconds.max(f64::MIN_POSITIVE),
        }
    });
    Ok(Report {
        checkpoint: args.model.checkpoint.display().to_string(),
        config: cfg,
        adapted,
        graph: graphs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","),
        files: names,
        embedding_width: width,
        out: args.out.clone(),
        normalized: args.normalize && format == Format::Npy,
        seconds,
        compare,
        json: args.json,
    })
}

/// The embeddings of every image, and with `compare` the complete graph's too.
struct Embedded {
    names: Vec<String>,
    rows: Vec<Vec<f32>>,
    complete_rows: Option<Vec<Vec<f32>>>,
    seconds: f64,
    complete_seconds: f64,
}

fn embed_all(
    vit: &Vit,
    files: &[PathBuf],
    preprocess: &Preprocess,
    options: &VitOptions,
    batch: usize,
    compare: bool,
    bar: &indicatif::ProgressBar,
) -> Result<Embedded> {
    let mut out = Embedded {
        names: Vec::with_capacity(files.len()),
        rows: Vec::with_capacity(files.len()),
        complete_rows: compare.then(|| Vec::with_capacity(files.len())),
        seconds: 0.0,
        complete_seconds: 0.0,
    };
    if compare && let Some(first) = files.first() {
        // One untimed forward of the first image on each graph, so that neither graph's time
        // pays for the first use of the threads and the allocator.
        let warm: Vec<_> = load_inputs(std::slice::from_ref(first), preprocess)?.into_iter().map(|i| i.image).collect();
        vit.forward_with(&warm, options)?;
        vit.forward_with(&warm, &VitOptions::default())?;
    }
    for chunk in files.chunks(batch) {
        let inputs = load_inputs(chunk, preprocess)?;
        let images: Vec<_> = inputs.iter().map(|i| i.image.clone()).collect();
        let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
        // An error of the forward (a NaN reaching a block) names the batch's files.
        let in_batch = |e: Error| match e {
            Error::NonFinite { what, position, value } => {
                Error::NonFinite { what: format!("{} ({what})", names.join(", ")), position, value }
            }
            Error::Invalid { what, reason } => {
                Error::Invalid { what: format!("{} ({what})", names.join(", ")), reason }
            }
            other => other,
        };
        let t = Instant::now();
        let logits = vit.forward_with(&images, options).map_err(in_batch)?.logits;
        out.seconds += t.elapsed().as_secs_f64();
        out.rows.extend((0..logits.rows()).map(|i| logits.row(i).to_vec()));
        if let Some(complete_rows) = out.complete_rows.as_mut() {
            let t = Instant::now();
            let complete = vit.forward_with(&images, &VitOptions::default()).map_err(in_batch)?.logits;
            out.complete_seconds += t.elapsed().as_secs_f64();
            complete_rows.extend((0..complete.rows()).map(|i| complete.row(i).to_vec()));
        }
        out.names.extend(names);
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json {
            let text = serde_json::to_string_pretty(self).map_err(|_| fmt::Error)?;
            return writeln!(f, "{text}");
        }
        super::write_model(f, &self.config, ("outputs", self.embedding_width), &self.graph)?;
        for n in &self.adapted {
            writeln!(f, "adapted: {n}")?;
        }
        let n = self.files.len();
        writeln!(
            f,
            "embedded {n} images -> [{n}, {}]{} in {:.1} ms of forwards on {} ({:.1} images/s)",
            self.embedding_width,
            if self.normalized { " (L2-normalised)" } else { "" },
            1e3 * self.seconds,
            self.graph,
            n as f64 / self.seconds.max(f64::MIN_POSITIVE)
        )?;
        if let Some(c) = &self.compare {
            writeln!(f, "cosine similarity to the complete graph's embedding:")?;
            for (file, cos) in self.files.iter().zip(&c.cosine) {
                writeln!(f, "  {cos:.6}  {file}")?;
            }
            writeln!(
                f,
                "mean {:.6}, min {:.6}; {:.1} ms on the complete graph vs {:.1} ms on {} (speed-up {:.2}x)",
                c.mean_cosine,
                c.min_cosine,
                1e3 * c.complete_seconds,
                1e3 * self.seconds,
                self.graph,
                c.speedup
            )?;
        }
        super::wrote(f, std::slice::from_ref(&self.out))
    }
}
