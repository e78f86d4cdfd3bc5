//! The `patchgraph` command.
//!
//! ```text
//! patchgraph graph IMAGE [--patch 16] [--graph grid8:1] [--class-token] [--dot FILE]
//!                  [--out FILE.png|svg [--node I | --all]] [--checkpoint FILE --layer L]
//! ```
//! `graph` turns a photo into its patch graph (timm's eval transform, then `P x P` patches) and
//! prints the graph's size and degrees; `--dot` writes it for Graphviz; `--out` draws it over the
//! photo (every edge, or those into one node); `--checkpoint` builds feature k-NN from a ViT's
//! layer features instead of raw patch pixels.
//!
//! ```text
//! patchgraph attention --checkpoint FILE (IMAGE | --data DIR --index I) [--layer L]
//!                      [--head H | --mean] [--query I] [--rollout] [--graph SPEC] --out FILE.png
//! patchgraph plot (--bench FILE.json [--peers FILE.json] | --metrics RUN/metrics.json ...) --out FILE.png
//! patchgraph train --data DIR --model vit|gat|gatv2|vig [--graph SPEC] [...] [--out DIR [--resume]]
//! ```
//! `attention` draws one query's attention (or the rollout) as a heat map over the image; `plot`
//! draws benchmark records against the peers' or training curves; `train` trains one of the
//! three model families (see its `--help`).
//!
//! ```text
//! patchgraph bench [--sizes 7,14,28,56] [--ks 8,16,32] [--batches 1,8] [--scores dot,gat,gatv2]
//!                  [--heads 12] [--head-dim 64] [--runs 10] [--threads T] [--json FILE]
//!                  [--plot FILE.png [--peers FILE.json]]
//! ```
//! `bench` times dense (complete graph) against sparse (k-NN graph) attention, prints time,
//! GFLOP/s and peak extra memory per case and the measured crossover density. With
//! `--vit vit_tiny_patch16_224,...` it times whole ViT forwards (seeded random weights) instead,
//! at each batch size: ms per batch, ms per image, images/s.
//!
//! ```text
//! patchgraph infer --checkpoint FILE (--config FILE | --arch NAME) INPUT... [--topk 5]
//!                  [--labels FILE] [--graph SPEC[,SPEC...]] [--compare] [--json]
//! ```
//! `patchgraph convert --checkpoint FILE (--config FILE | --arch NAME) --out FILE.safetensors`
//! writes a Google `.npz` (or a resampled timm checkpoint) as a timm-named safetensors file.
//!
//! `infer` classifies images (timm's eval transform) or prepared tensors (`.npy`,
//! `.safetensors`) with a timm safetensors or Google `.npz` ViT checkpoint, on the complete graph
//! or any other; `--compare` reports top-1 agreement, KL divergence and speed-up against the
//! complete graph.

use clap::{Parser, Subcommand};
use patchgraph::atomic_file::{write_all_atomically, write_atomically};
use patchgraph::attention_map::{self, Heads, layer_matrix, patch_values};
use patchgraph::bench::{Case, CountingAllocator, GraphKind, HeapProbe, Record, crossover, run_case};
use patchgraph::checkpoint::TensorMap;
use patchgraph::data::{ImageDataset, Split, load_dataset};
use patchgraph::graph::GraphSpec;
use patchgraph::image::{ChwImage, ImageTransform, Interpolation, Normalization, patch_grid, patchify};
use patchgraph::infer::{PreparedVit, Preprocess, compare, load_inputs, load_labels, load_vit_with, predict, top_k};
use patchgraph::nn::{
    Classifier, GlobalPool, Init, PatchGat, PatchGatConfig, Vig, VigConfig, Vit, VitConfig, VitOptions,
};
use patchgraph::train::{AdamW, BatchProgress, EpochMetrics, TrainConfig, train};
use patchgraph::viz::{
    EdgeSelection, draw_attention_map, draw_patch_graph, load_patchgraph_bench, load_peer_bench, load_training_metrics,
    plot_bench, plot_training,
};
use patchgraph::{Error, Graph, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "patchgraph", version, about = "Vision Transformers and graph attention networks on patch graphs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// rayon threads for any command (default: rayon's, all cores). Same seed, same numbers,
    /// whatever the count.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Load checkpoints that hold NaN or infinities (by default each is an error naming the
    /// tensor and index): graph --checkpoint, attention, infer, convert, train --resume.
    #[arg(long, global = true)]
    allow_nonfinite: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Build a patch graph over an image and print its statistics.
    Graph {
        /// Any image the `image` crate reads.
        image: PathBuf,
        /// Patch side in pixels.
        #[arg(long, default_value_t = 16)]
        patch: usize,
        /// Topology: complete, grid4:R, grid8:R, window:S, nat:S, knn:K, fknn:K:D, fknn-cos:K:D, random:K:SEED,
        /// bigbird:W:R:SEED, longformer:W:G, swin:M[:S], gridattn:G, lsh:B:R:SEED[:CHUNK], global:G, or a union A+B.
        #[arg(long, default_value = "grid8:1")]
        graph: GraphSpec,
        /// Image side after timm's eval transform (shorter side to size/0.875, centre crop).
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Prepend a class-token node linked both ways to every patch.
        #[arg(long)]
        class_token: bool,
        /// Write the graph as Graphviz DOT to this file.
        #[arg(long)]
        dot: Option<PathBuf>,
        /// Draw the graph over the image into this file (.png or .svg): the patch grid and the
        /// edges as lines between patch centres.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Draw only the edges into this node (0-based; with --class-token node 0 is the class
        /// token and patch r is node r + 1).
        #[arg(long, conflicts_with = "all")]
        node: Option<usize>,
        /// Draw every edge (the default without --node).
        #[arg(long)]
        all: bool,
        /// Feature k-NN on a ViT checkpoint's layer features (its `norm1` output at --layer)
        /// instead of raw patch pixels; the image is prepared for that model (its size and patch).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The checkpoint's layer whose features build the feature k-NN.
        #[arg(long, default_value_t = 0)]
        layer: usize,
        /// Model config JSON (for checkpoints that do not carry one).
        #[arg(long, conflicts_with = "arch")]
        config: Option<PathBuf>,
        /// Architecture name (for checkpoints that do not carry a config).
        #[arg(long)]
        arch: Option<String>,
    },
    /// Draw where a ViT attends: one query patch's (or the class token's) attention, per head
    /// or averaged, or the attention rollout, as a heat map over the image.
    Attention {
        /// Checkpoint (`patchgraph train` output, timm safetensors or Google .npz).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Image file; or take a test image of a dataset with --data and --index.
        image: Option<PathBuf>,
        /// Dataset directory (as for train) to take the image from.
        #[arg(long, conflicts_with = "image")]
        data: Option<PathBuf>,
        /// Index of the test image in --data.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Model config JSON (for checkpoints that do not carry one).
        #[arg(long, conflicts_with = "arch")]
        config: Option<PathBuf>,
        /// Architecture name (for checkpoints that do not carry a config).
        #[arg(long)]
        arch: Option<String>,
        /// Normalisation for checkpoints without a training config: inception or imagenet.
        #[arg(long, default_value = "inception")]
        norm: String,
        /// Layer (0-based; default the last). With --rollout, the rollout runs up to it.
        #[arg(long)]
        layer: Option<usize>,
        /// One head (default: the mean over heads).
        #[arg(long, conflicts_with = "mean")]
        head: Option<usize>,
        /// The mean over heads (the default).
        #[arg(long)]
        mean: bool,
        /// Query patch, row-major (default: the class token, or the centre patch without one).
        #[arg(long)]
        query: Option<usize>,
        /// Attention rollout (Abnar and Zuidema, 2020) through the layers instead of one layer.
        #[arg(long)]
        rollout: bool,
        /// Attention graph, one spec or one per layer (default complete).
        #[arg(long, default_value = "complete")]
        graph: String,
        /// Output picture (.png or .svg).
        #[arg(long)]
        out: PathBuf,
    },
    /// Plot benchmark records (time against N and against k, log scales, crossover marked) or
    /// training curves (loss and accuracy per epoch, several runs overlaid).
    Plot {
        /// A `patchgraph bench --json` file.
        #[arg(long)]
        bench: Option<PathBuf>,
        /// A `scripts/bench_peers.py --json` file to plot beside it.
        #[arg(long)]
        peers: Option<PathBuf>,
        /// `metrics.json` files of training runs (repeat the flag; each run is labelled by its directory).
        #[arg(long)]
        metrics: Vec<PathBuf>,
        /// Title of a training plot.
        #[arg(long, default_value = "training")]
        title: String,
        /// Output picture (.png or .svg).
        #[arg(long)]
        out: PathBuf,
    },
    /// Time dense against sparse attention (ViT-B shapes by default) and find the crossover.
    Bench {
        /// Patch-grid sides g (N = g*g + 1 tokens).
        #[arg(long, value_delimiter = ',', default_value = "7,14,28,56")]
        sizes: Vec<usize>,
        /// k of the k-NN graphs.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
        ks: Vec<usize>,
        /// Batch sizes for the dense cases.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// Scores: dot, gat, gatv2.
        #[arg(long, value_delimiter = ',', default_value = "dot,gat,gatv2")]
        scores: Vec<String>,
        /// Heads.
        #[arg(long, default_value_t = 12)]
        heads: usize,
        /// Width per head.
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Timed runs per case (the median is reported).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Skip the crossover search.
        #[arg(long)]
        no_crossover: bool,
        /// Also write every record as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Time whole ViT forwards of these architectures instead (e.g. vit_tiny_patch16_224).
        #[arg(long, value_delimiter = ',')]
        vit: Vec<String>,
        /// Plot the sweep (time against N and k, crossover marked) into this file (.png or
        /// .svg); the records also go to --json, or to this file's name with .json.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// A `scripts/bench_peers.py --json` file whose timings the plot shows beside ours.
        #[arg(long)]
        peers: Option<PathBuf>,
        /// Time training steps (forward, backward, clipping, AdamW) of the small MNIST ViT
        /// (28 x 28, patch 4, D 64, depth 4, heads 4) at each of --batches instead.
        #[arg(long)]
        train: bool,
    },
    /// Train a ViT, a GAT on patches or a ViG on MNIST-format, CIFAR-10 or image-folder data.
    Train {
        /// Dataset directory: IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (MNIST,
        /// Fashion-MNIST), CIFAR-10 binary batches (cifar-10-batches-bin), or an image folder with
        /// train/ and test/ (or val/) sub-folders of one folder per class.
        #[arg(long)]
        data: PathBuf,
        /// Image folders: resize every image to SIZE x SIZE (default 32).
        #[arg(long)]
        image_size: Option<usize>,
        /// Image folders: 1 (gray) or 3 (RGB, default) channels.
        #[arg(long)]
        channels: Option<usize>,
        /// Model family: vit (timm's ViT, attention on --graph), gat / gatv2 (GAT layers on the
        /// patch graph, mean-pooled) or vig (Grapher with feature k-NN and max-relative messages).
        #[arg(long, default_value = "vit")]
        model: String,
        /// Graph, one spec or one per layer, comma-separated (complete, grid8:1, window:7, knn:8,
        /// fknn:8:1, bigbird:3:2:0, swin:7, lsh:8:2:0, window:7+global+random:3 ...), or for vit a
        /// low-rank method in every layer, trained with the model (performer:M:SEED, linformer:K,
        /// nystrom:L). swin:M also gives the ViT Swin's relative position bias. Default: complete for vit, grid8:1 for gat, dilated cosine feature
        /// k-NN (k = --k) for vig.
        #[arg(long)]
        graph: Option<String>,
        /// ViG: neighbours per node of its default feature k-NN graphs.
        #[arg(long, default_value_t = 6)]
        k: usize,
        /// ViG: largest dilation of its default graphs (reached in the last layers).
        #[arg(long, default_value_t = 2)]
        max_dilation: usize,
        /// Patch side in pixels.
        #[arg(long, default_value_t = 4)]
        patch: usize,
        /// Width D.
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Blocks.
        #[arg(long, default_value_t = 4)]
        depth: usize,
        /// Attention heads.
        #[arg(long, default_value_t = 4)]
        heads: usize,
        /// Epochs.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Peak learning rate (AdamW, warm-up 1 epoch, cosine to 1e-5).
        #[arg(long, default_value_t = 1e-3)]
        lr: f32,
        /// Weight decay (weight matrices only).
        #[arg(long, default_value_t = 0.05)]
        weight_decay: f32,
        /// Label smoothing.
        #[arg(long, default_value_t = 0.1)]
        smoothing: f32,
        /// Seed of the initialisation, shuffling and augmentation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Pooling before the head: token (class token) or avg (mean of the patch tokens).
        #[arg(long, default_value = "token")]
        pool: String,
        /// Random-crop augmentation: zero padding in pixels (0: none).
        #[arg(long, default_value_t = 2)]
        pad_crop: usize,
        /// Random horizontal flips (off for digits).
        #[arg(long)]
        flip: bool,
        /// Warm-up length in epochs.
        #[arg(long, default_value_t = 1.0)]
        warmup: f32,
        /// Use only the first N training images.
        #[arg(long)]
        limit: Option<usize>,
        /// Output directory: metrics.csv, metrics.json, checkpoint.safetensors (timm names), optimizer.safetensors.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the checkpoint and optimiser state in --out (give the same arguments, with
        /// the same --epochs: the schedule spans them).
        #[arg(long)]
        resume: bool,
    },
    /// Convert a ViT checkpoint (Google .npz or timm safetensors) to a timm-named safetensors file.
    Convert {
        /// Checkpoint to read: a Google ViT `.npz` or a timm `.safetensors`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Model config as JSON (timm's argument names).
        #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
        config: Option<PathBuf>,
        /// Architecture name (vit_base_patch16_224, ViT-B_16, ...).
        #[arg(long)]
        arch: Option<String>,
        /// Resample the position embedding to this input side.
        #[arg(long)]
        img_size: Option<usize>,
        /// The safetensors file to write (timm's names; `timm.create_model(...)` + `load_state_dict` reads it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Classify images with a ViT checkpoint (timm safetensors or Google .npz).
    Infer {
        /// Checkpoint: a timm-named `.safetensors` state dict, or a Google ViT `.npz`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Model config as JSON, with timm's `VisionTransformer` argument names.
        #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
        config: Option<PathBuf>,
        /// Architecture: vit_{tiny,small,base,large}_patch{16,32}_{224,384}, or ViT-B_16 and the like.
        #[arg(long)]
        arch: Option<String>,
        /// Images (any format `image` reads), or prepared tensors (`.npy`, `.safetensors`) [C,H,W] or [B,C,H,W].
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Classes to print per input.
        #[arg(long, default_value_t = 5)]
        topk: usize,
        /// Class names, one per line (default: the bundled ImageNet-1k names for 1000 classes).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Attention graph: one spec for every layer, or one per layer, comma-separated
        /// (complete, grid8:1, grid:8, window:7, nat:7, knn:16, fknn:9:2, knn-feature:9:dilation=2,
        /// bigbird:7:3:0, swin:7, lsh:16:2:0, a union A+B, or performer:M:SEED / nystrom:L with the
        /// same weights, ...).
        #[arg(long, default_value = "complete")]
        graph: String,
        /// Also run the complete graph and report top-1 agreement, KL divergence and speed-up.
        #[arg(long)]
        compare: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Model input side (default: the config's); the position embedding is resampled to it.
        #[arg(long)]
        img_size: Option<usize>,
        /// Resize the shorter side to img_size / crop_pct before the centre crop.
        #[arg(long, default_value_t = 0.875)]
        crop_pct: f64,
        /// Normalisation: inception (mean = std = 0.5, Google's and timm's augreg ViTs) or imagenet.
        #[arg(long, default_value = "inception")]
        norm: String,
        /// Timed forwards per graph for --compare (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    // Training steps free and reallocate their activations every step: keep them in the heap.
    patchgraph::train::keep_freed_memory();
    let cli = Cli::parse();
    let done = thread_pool(cli.threads).and_then(|pool| pool.install(|| run(cli.command, cli.allow_nonfinite)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, allow_nonfinite: bool) -> Result<()> {
    match command {
        Command::Graph {
            image,
            patch,
            graph,
            size,
            class_token,
            dot,
            out,
            node,
            all: _,
            checkpoint,
            layer,
            config,
            arch,
        } => {
            // (display image in [0, 1], patch side, node features of the patches)
            let (display, patch, features) = match &checkpoint {
                None => {
                    let mut transform = ImageTransform::timm_eval(size, 0.875, Normalization::imagenet());
                    let input = transform.apply_path(&image)?;
                    transform.normalize = None;
                    let display = transform.apply_path(&image)?;
                    let (_, h, w) = input.shape();
                    patch_grid(h, w, patch)?;
                    (display, patch, patchify(&input, patch)?)
                }
                Some(ckpt) => {
                    let model = PreparedVit::load_with(
                        ckpt,
                        model_config(&config, &arch)?,
                        Normalization::inception(),
                        allow_nonfinite,
                    )?;
                    let (display, input) = model.prepare_path(&image)?;
                    let features = model.vit.layer_features(&[input], layer, &VitOptions::default())?;
                    println!(
                        "features: layer {layer} of {} ({} x {} patches of {} px)",
                        ckpt.display(),
                        model.vit.config().grid(),
                        model.vit.config().grid(),
                        model.vit.config().patch_size
                    );
                    (display, model.vit.config().patch_size, features)
                }
            };
            let (_, h, w) = display.shape();
            let (rows, cols) = patch_grid(h, w, patch)?;
            let g = graph.build(rows, cols, Some(&features), class_token)?;
            print_stats(&image, &graph, rows, cols, &g);
            if let Some(path) = dot {
                write_atomically(&path, g.to_dot().as_bytes())?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = out {
                let edges = match node {
                    Some(i) => EdgeSelection::Into(i),
                    None => EdgeSelection::All,
                };
                draw_patch_graph(&display, patch, &g, class_token, edges, &path)?;
                println!("wrote {}", path.display());
            } else if node.is_some() {
                return Err(Error::invalid("--node", "draws into --out FILE: give one"));
            }
            Ok(())
        }
        Command::Attention {
            checkpoint,
            image,
            data,
            index,
            config,
            arch,
            norm,
            layer,
            head,
            mean: _,
            query,
            rollout,
            graph,
            out,
        } => {
            let model = PreparedVit::load_with(
                &checkpoint,
                model_config(&config, &arch)?,
                parse_norm(&norm)?,
                allow_nonfinite,
            )?;
            let (display, input, name) = match (&image, &data) {
                (Some(path), _) => {
                    let (d, i) = model.prepare_path(path)?;
                    (d, i, path.display().to_string())
                }
                (None, Some(dir)) => {
                    let test = load_dataset(dir, Split::Test, None, None)?;
                    let (img, label) = test.get(index)?;
                    let (d, i) = model.prepare(img)?;
                    (d, i, format!("test image {index} of {} (label {label})", dir.display()))
                }
                (None, None) => return Err(Error::invalid("attention", "give an IMAGE or --data DIR --index I")),
            };
            let graphs = graph.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<GraphSpec>>>()?;
            let vit = &model.vit;
            let cfg = vit.config().clone();
            let output = vit.forward_with(&[input], &VitOptions { graphs, weights: true, ..Default::default() })?;
            let layer = layer.unwrap_or(cfg.depth.saturating_sub(1));
            if layer >= output.weights.len() {
                return Err(Error::invalid(
                    "--layer",
                    format!("{layer} is not below the model's {} layers", cfg.depth),
                ));
            }
            let heads = match head {
                Some(h) => Heads::One(h),
                None => Heads::Mean,
            };
            let (t, prefix, g) = (cfg.num_tokens(), cfg.prefix_tokens(), cfg.grid());
            let m = if rollout {
                attention_map::rollout(&output.weights[..=layer], 0, t, heads)?
            } else {
                layer_matrix(&output.weights[layer], 0, t, heads)?
            };
            let (query_token, highlight) = match query {
                Some(q) if q >= g * g => {
                    return Err(Error::invalid("--query", format!("patch {q} is not below {} patches", g * g)));
                }
                Some(q) => (prefix + q, Some(q)),
                None if cfg.class_token => (0, None),
                None => (prefix + (g / 2) * g + g / 2, Some((g / 2) * g + g / 2)),
            };
            let values = patch_values(&m, query_token, prefix)?;
            draw_attention_map(&display, (g, g), &values, highlight, &out)?;
            let best = values.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            let top = top_k(output.logits.row(0), 1);
            println!(
                "{name}: predicted class {}; {} of {} at layer {layer}{}: largest on patch {} (row {}, column {}), {:.3}",
                top.first().map_or(0, |t| t.0),
                if rollout { "rollout" } else { "attention" },
                match highlight {
                    Some(q) => format!("patch {q}"),
                    None => "the class token".to_string(),
                },
                match heads {
                    Heads::One(h) => format!(", head {h}"),
                    Heads::Mean => ", mean over heads".to_string(),
                },
                best.0,
                best.0 / g,
                best.0 % g,
                best.1
            );
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Plot { bench, peers, metrics, title, out } => match (bench, metrics.is_empty()) {
            (Some(bench), true) => plot_bench_files(&bench, peers.as_deref(), &out),
            (None, false) => {
                let runs = metrics
                    .iter()
                    .map(|m| {
                        let label = m
                            .parent()
                            .and_then(|d| d.file_name())
                            .map_or_else(|| m.display().to_string(), |n| n.to_string_lossy().into_owned());
                        Ok((label, load_training_metrics(m)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                plot_training(&runs, &title, &out)?;
                println!("wrote {}", out.display());
                Ok(())
            }
            _ => Err(Error::invalid("plot", "give --bench FILE (with --peers FILE) or one or more --metrics FILE")),
        },
        Command::Bench {
            sizes,
            ks,
            batches,
            scores,
            heads,
            head_dim,
            runs,
            no_crossover,
            json,
            plot,
            peers,
            vit,
            train,
        } => {
            if train {
                bench_train(&batches, runs)
            } else if vit.is_empty() {
                let json = json.or_else(|| plot.as_ref().map(|p| p.with_extension("json")));
                bench(&sizes, &ks, &batches, &scores, heads, head_dim, runs, !no_crossover, json.as_deref())?;
                match (plot, json) {
                    (Some(plot), Some(json)) => plot_bench_files(&json, peers.as_deref(), &plot),
                    _ => Ok(()),
                }
            } else {
                bench_vit(&vit, &batches, runs, json.as_deref())
            }
        }
        Command::Train {
            data,
            image_size,
            channels,
            model,
            graph,
            k,
            max_dilation,
            patch,
            dim,
            depth,
            heads,
            epochs,
            batch,
            lr,
            weight_decay,
            smoothing,
            seed,
            pool,
            pad_crop,
            flip,
            warmup,
            limit,
            out,
            resume,
        } => {
            let graphs = match &graph {
                Some(g) => g.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<GraphSpec>>>()?,
                None => Vec::new(),
            };
            let size = image_size.map(|s| (s, s));
            let train_set = load_dataset(&data, Split::Train, size, channels)?;
            let test_set = load_dataset(&data, Split::Test, size, channels)?;
            let (c, h, w) = train_set.shape();
            if test_set.shape() != (c, h, w) {
                return Err(Error::shape(
                    "test images",
                    format!("{:?} like the training images", (c, h, w)),
                    format!("{:?}", test_set.shape()),
                ));
            }
            // one channel: MNIST's statistics (Fashion-MNIST's are close); otherwise the training set's own
            let (mean, std) = if c == 1 { (vec![0.1307], vec![0.3081]) } else { channel_stats(&train_set) };
            let classes = train_set.classes.max(test_set.classes);
            let family = match model.as_str() {
                "vit" => {
                    if h != w {
                        return Err(Error::invalid(
                            "--model vit",
                            format!("needs square images, the data are {h} x {w}"),
                        ));
                    }
                    let mut vit_config = VitConfig::tiny(h, patch, classes);
                    (vit_config.in_chans, vit_config.embed_dim, vit_config.depth, vit_config.num_heads) =
                        (c, dim, depth, heads);
                    vit_config.global_pool = match pool.as_str() {
                        "token" => GlobalPool::Token,
                        "avg" => GlobalPool::Avg,
                        other => return Err(Error::invalid("--pool", format!("`{other}`: expected token or avg"))),
                    };
                    // A low-rank method's parameters (Linformer's E, F; Nyström's conv; Performer's
                    // projection) and Swin's relative position table are part of the model.
                    let lows: Vec<_> = graphs
                        .iter()
                        .filter_map(|g| match g {
                            GraphSpec::LowRank(m) => Some(m.clone()),
                            _ => None,
                        })
                        .collect();
                    if let Some(m) = lows.first() {
                        if lows.len() != graphs.len() || lows.iter().any(|x| x != m) {
                            return Err(Error::invalid(
                                "--graph",
                                format!(
                                    "a ViT trains one low-rank method in every layer; got `{}`",
                                    graph.as_deref().unwrap_or("")
                                ),
                            ));
                        }
                        vit_config.attention = Some(m.clone());
                    }
                    if let Some(GraphSpec::Swin { size, .. }) = graphs.first() {
                        vit_config.relative_position_bias = Some((*size).min(vit_config.grid()));
                    }
                    Family::Vit(vit_config)
                }
                "gat" | "gatv2" => Family::Gat(PatchGatConfig {
                    image: (c, h, w),
                    patch,
                    dim,
                    depth,
                    heads,
                    num_classes: classes,
                    v2: model == "gatv2",
                    ..PatchGatConfig::mnist()
                }),
                "vig" => Family::Vig(VigConfig {
                    image: (c, h, w),
                    patch,
                    dim,
                    depth,
                    num_classes: classes,
                    k,
                    max_dilation,
                    ..VigConfig::mnist()
                }),
                other => return Err(Error::invalid("--model", format!("`{other}`: expected vit, gat, gatv2 or vig"))),
            };
            let config = TrainConfig {
                epochs,
                batch_size: batch,
                lr,
                weight_decay,
                smoothing,
                seed,
                limit,
                graphs,
                pad_crop,
                flip,
                warmup_epochs: warmup,
                mean,
                std,
                ..TrainConfig::mnist()
            };
            // Every flag is checked before anything is written.
            config.validate()?;
            let out = out.as_deref();
            let job = TrainJob { config, train_set: &train_set, test_set: &test_set, out, resume, allow_nonfinite };
            match family {
                Family::Vit(vc) => {
                    vc.validate()?;
                    let model = Vit::new(vc, &mut Init::new(job.config.seed))?;
                    let text = format!("ViT D={dim} depth={depth} heads={heads} patch={patch}");
                    job.run(model, &text, "patchgraph_vit_config", Vit::load)
                }
                Family::Gat(gc) => {
                    let model = PatchGat::new(gc, &mut Init::new(job.config.seed))?;
                    let name = if model.config().v2 { "GATv2" } else { "GAT" };
                    let text = format!("{name} D={dim} depth={depth} heads={heads} patch={patch}");
                    job.run(model, &text, "patchgraph_patch_gat_config", PatchGat::load)
                }
                Family::Vig(vc) => {
                    let model = Vig::new(vc, &mut Init::new(job.config.seed))?;
                    let text = format!("ViG D={dim} depth={depth} patch={patch} k={k} max dilation {max_dilation}");
                    job.run(model, &text, "patchgraph_vig_config", Vig::load)
                }
            }
        }
        Command::Convert { checkpoint, config, arch, img_size, out } => {
            let mut config = model_config(&config, &arch)?
                .ok_or_else(|| Error::invalid("convert", "give --config FILE or --arch NAME"))?;
            if let Some(size) = img_size {
                config.img_size = size;
            }
            let (vit, notes) = load_vit_with(&checkpoint, config, allow_nonfinite)?;
            notes.iter().for_each(|n| println!("adapted: {n}"));
            vit.save_safetensors(&out)?;
            println!("wrote {} (timm names; config in its metadata)", out.display());
            Ok(())
        }
        Command::Infer {
            checkpoint,
            config,
            arch,
            inputs,
            topk,
            labels,
            graph,
            compare,
            json,
            img_size,
            crop_pct,
            norm,
            runs,
        } => {
            let args = InferArgs {
                checkpoint,
                config,
                arch,
                inputs,
                topk,
                labels,
                graph,
                compare,
                json,
                img_size,
                crop_pct,
                norm,
                runs,
                allow_nonfinite,
            };
            infer(&args)
        }
    }
}

fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::invalid("--threads", e.to_string()))
}

struct InferArgs {
    checkpoint: PathBuf,
    config: Option<PathBuf>,
    arch: Option<String>,
    inputs: Vec<PathBuf>,
    topk: usize,
    labels: Option<PathBuf>,
    graph: String,
    compare: bool,
    json: bool,
    img_size: Option<usize>,
    crop_pct: f64,
    norm: String,
    runs: usize,
    allow_nonfinite: bool,
}

fn infer(a: &InferArgs) -> Result<()> {
    let mut config = model_config(&a.config, &a.arch)?
        .ok_or_else(|| Error::invalid("infer", "give --config FILE or --arch NAME"))?;
    if let Some(size) = a.img_size {
        config.img_size = size;
    }
    // timm's crop_pct: the crop is that fraction of the resized shorter side.
    if !(a.crop_pct.is_finite() && a.crop_pct > 0.0 && a.crop_pct <= 1.0) {
        return Err(Error::invalid("--crop-pct", format!("{}: must be in (0, 1] (timm's default 0.875)", a.crop_pct)));
    }
    let (vit, notes) = load_vit_with(&a.checkpoint, config, a.allow_nonfinite)?;
    let cfg = vit.config().clone();
    let normalization = parse_norm(&a.norm)?;
    let preprocess = Preprocess {
        img_size: cfg.img_size,
        crop_pct: a.crop_pct,
        interpolation: Interpolation::Bicubic,
        normalization,
    };
    let inputs = load_inputs(&a.inputs, &preprocess)?;
    let images: Vec<_> = inputs.iter().map(|i| i.image.clone()).collect();
    let graphs = a.graph.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<GraphSpec>>>()?;
    let labels = load_labels(a.labels.as_deref(), cfg.num_classes)?;
    let options = VitOptions { graphs: graphs.clone(), ..Default::default() };
    let (probs, seconds) = predict(&vit, &images, &options, if a.compare { a.runs } else { 1 })?;
    let comparison = if a.compare {
        let (complete, complete_seconds) = predict(&vit, &images, &VitOptions::default(), a.runs)?;
        Some(compare(&complete, &probs, complete_seconds, seconds))
    } else {
        None
    };
    let label = |c: usize| labels.as_ref().map_or(String::new(), |l| l[c].clone());
    let graph_text = graphs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
    if a.json {
        let results: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let top: Vec<_> = top_k(probs.row(i), a.topk)
                    .into_iter()
                    .map(|(c, p)| serde_json::json!({ "class": c, "label": label(c), "probability": p }))
                    .collect();
                serde_json::json!({ "input": input.name, "top": top })
            })
            .collect();
        let out = serde_json::json!({
            "checkpoint": a.checkpoint.display().to_string(),
            "config": cfg,
            "adapted": notes,
            "graph": graph_text,
            "seconds_per_forward": seconds,
            "results": results,
            "compare": comparison,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::invalid("JSON", e.to_string()))?);
        return Ok(());
    }
    println!(
        "model: ViT D={} depth={} heads={} patch={} img={} classes={}, graph: {graph_text}",
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.num_classes
    );
    for n in &notes {
        println!("adapted: {n}");
    }
    for (i, input) in inputs.iter().enumerate() {
        println!("{}", input.name);
        for (rank, (c, p)) in top_k(probs.row(i), a.topk).into_iter().enumerate() {
            println!("  {:>2}. {p:.4}  {c:>5}  {}", rank + 1, label(c));
        }
    }
    if let Some(c) = comparison {
        println!(
            "against the complete graph: top-1 agreement {:.1}%, mean KL(complete || {graph_text}) {:.4} nats, \
             {:.1} ms vs {:.1} ms per forward (speed-up {:.2}x)",
            100.0 * c.top1_agreement,
            c.mean_kl,
            1e3 * c.complete_seconds,
            1e3 * c.sparse_seconds,
            c.speedup
        );
    }
    Ok(())
}

/// The model config from --config FILE or --arch NAME, if given.
fn model_config(config: &Option<PathBuf>, arch: &Option<String>) -> Result<Option<VitConfig>> {
    match (config, arch) {
        (Some(path), _) => VitConfig::from_json_file(path).map(Some),
        (None, Some(name)) => VitConfig::arch(name).map(Some),
        (None, None) => Ok(None),
    }
}

fn parse_norm(norm: &str) -> Result<Normalization> {
    match norm {
        "inception" => Ok(Normalization::inception()),
        "imagenet" => Ok(Normalization::imagenet()),
        other => Err(Error::invalid("--norm", format!("`{other}`: expected inception or imagenet"))),
    }
}

/// `patchgraph plot --bench`: our sweep and, if given, the peers' timings, in one picture.
fn plot_bench_files(bench: &Path, peers: Option<&Path>, out: &Path) -> Result<()> {
    let ours = load_patchgraph_bench(bench)?;
    let mut points = ours.points.clone();
    if let Some(p) = peers {
        points.extend(load_peer_bench(p)?);
    }
    plot_bench(&points, ours.crossover_density(), out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Per-channel mean and standard deviation of a dataset's pixels (f64 sums).
fn channel_stats(data: &ImageDataset) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = data.shape();
    let (mut sum, mut sq) = (vec![0.0f64; c], vec![0.0f64; c]);
    for i in 0..data.len() {
        if let Ok((image, _)) = data.get(i) {
            for (ch, plane) in image.as_slice().chunks(h * w).enumerate() {
                for &v in plane {
                    sum[ch] += v as f64;
                    sq[ch] += (v as f64) * (v as f64);
                }
            }
        }
    }
    let n = (data.len() * h * w).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum.iter().zip(&sq).map(|(s, q)| ((q / n - (s / n).powi(2)).max(1e-12).sqrt()) as f32).collect();
    (mean, std)
}

/// The model family `patchgraph train` builds.
enum Family {
    Vit(VitConfig),
    Gat(PatchGatConfig),
    Vig(VigConfig),
}

/// The model config stored under `key` in a checkpoint's metadata.
fn saved_config<C: serde::de::DeserializeOwned>(map: &TensorMap, key: &str, what: &str) -> Result<C> {
    map.metadata().get(key).and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| Error::Format {
        path: what.to_string(),
        reason: format!("no `{key}` model config in its metadata (was it written by another --model?)"),
    })
}

/// What `patchgraph train` runs on, whatever the model.
struct TrainJob<'a> {
    config: TrainConfig,
    train_set: &'a ImageDataset,
    test_set: &'a ImageDataset,
    out: Option<&'a Path>,
    resume: bool,
    allow_nonfinite: bool,
}

impl TrainJob<'_> {
    /// The loop with a progress bar, metrics files and checkpoints: the checkpoint holds the
    /// model config under `config_key`, read back and given to `load` on `--resume`.
    fn run<M: Classifier, C: serde::de::DeserializeOwned>(
        self,
        model: M,
        describe: &str,
        config_key: &str,
        load: fn(C, TensorMap, &str) -> Result<M>,
    ) -> Result<()> {
        run_training(model, describe, self, config_key, &|map, what| {
            load(saved_config(&map, config_key, what)?, map, what)
        })
    }
}

/// The metadata key of the epoch count a checkpoint and an optimiser state were saved after.
const EPOCH_KEY: &str = "patchgraph_epoch";

/// The epoch count saved in `map`'s metadata (`fallback` for files written before it was).
fn saved_epoch(map: &TensorMap, fallback: usize, what: &str) -> Result<usize> {
    match map.metadata().get(EPOCH_KEY) {
        None => Ok(fallback),
        Some(v) => v.parse().map_err(|_| Error::Format {
            path: what.to_string(),
            reason: format!("`{EPOCH_KEY}` metadata `{v}` is not an epoch count"),
        }),
    }
}

/// `patchgraph train` (see [`TrainJob::run`]).
///
/// With `--out`, every epoch ends by writing `metrics.json`, `metrics.csv` and `curves.png`,
/// then the optimiser state and the checkpoint together (both written to temporary files,
/// then renamed): a run killed at any point leaves whole files of the last finished epoch,
/// and `--resume` continues from the checkpoint's epoch (metrics of a later epoch, written
/// before a kill, are dropped and recomputed).
fn run_training<M: Classifier>(
    mut model: M,
    describe: &str,
    job: TrainJob<'_>,
    config_key: &str,
    load: &dyn Fn(TensorMap, &str) -> Result<M>,
) -> Result<()> {
    let TrainJob { config, train_set, test_set, out, resume, allow_nonfinite } = job;
    let mut opt = AdamW::new(config.lr, config.weight_decay);
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        if resume {
            let metrics = dir.join("metrics.json");
            let text =
                std::fs::read_to_string(&metrics).map_err(|source| Error::Io { path: metrics.clone(), source })?;
            history = serde_json::from_str(&text)
                .map_err(|e| Error::Format { path: metrics.display().to_string(), reason: e.to_string() })?;
            let ckpt = dir.join("checkpoint.safetensors");
            let what = ckpt.display().to_string();
            let mut map = TensorMap::load_safetensors(&ckpt)?;
            map.set_allow_nonfinite(allow_nonfinite);
            let epoch = saved_epoch(&map, history.len(), &what)?;
            model = load(map, &what)?;
            let opt_path = dir.join("optimizer.safetensors");
            let opt_what = opt_path.display().to_string();
            let mut state = TensorMap::load_safetensors(&opt_path)?;
            state.set_allow_nonfinite(allow_nonfinite);
            let opt_epoch = saved_epoch(&state, history.len(), &opt_what)?;
            if opt_epoch != epoch {
                return Err(Error::invalid(
                    "--resume",
                    format!(
                        "{what} is from epoch {epoch} but {opt_what} from epoch {opt_epoch}: they are not one run's"
                    ),
                ));
            }
            if history.len() < epoch {
                return Err(Error::invalid(
                    "--resume",
                    format!("{} holds {} epochs, the checkpoint {epoch}", metrics.display(), history.len()),
                ));
            }
            history.truncate(epoch);
            opt.load_state(state, &opt_what)?;
            println!("resuming after epoch {epoch} (step {})", opt.steps());
        }
    }
    let start_epoch = history.len();
    println!(
        "train: {describe} on {} images ({} test), graph {}, {} rayon threads",
        config.limit.map_or(train_set.len(), |l| l.min(train_set.len())),
        test_set.len(),
        if config.graphs.is_empty() {
            "the model's default".to_string()
        } else {
            config.graphs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        },
        rayon::current_num_threads()
    );
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| Error::invalid("progress bar", e.to_string()))?
            .progress_chars("=> "),
    );
    let mut on_batch = |p: BatchProgress| {
        bar.set_length(p.batches as u64);
        bar.set_prefix(p.epoch.to_string());
        bar.set_position(p.batch as u64);
        bar.set_message(format!("loss {:.4} acc {:.3} {:.0} img/s", p.loss, p.accuracy, p.images_per_second));
    };
    let train_config = serde_json::to_string(&config).map_err(|e| Error::invalid("train config", e.to_string()))?;
    let mut on_epoch = |m: &EpochMetrics, model: &M, opt: &AdamW| -> Result<()> {
        bar.suspend(|| {
            println!(
                "epoch {:>3}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | lr {:.2e} | {:.0} img/s, {:.1} s",
                m.epoch, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy, m.lr, m.images_per_second, m.seconds
            )
        });
        let Some(dir) = out else { return Ok(()) };
        history.push(serde_json::to_value(m).map_err(|e| Error::invalid("metrics", e.to_string()))?);
        write_metrics(dir, &history)?;
        // loss and accuracy curves so far, redrawn every epoch
        let points = load_training_metrics(&dir.join("metrics.json"))?;
        plot_training(&[(describe.to_string(), points)], describe, &dir.join("curves.png"))?;
        let mut map = model.state_dict()?;
        map.set_metadata("format", "pt");
        // the data handling (normalisation, graphs) so that other commands can prepare inputs alike
        map.set_metadata("patchgraph_train_config", train_config.clone());
        map.set_metadata(EPOCH_KEY, m.epoch.to_string());
        if !map.metadata().contains_key(config_key) {
            return Err(Error::invalid("checkpoint", format!("the model did not record `{config_key}`")));
        }
        let mut state = opt.state_dict()?;
        state.set_metadata(EPOCH_KEY, m.epoch.to_string());
        let (ckpt, opt_bytes) = (map.to_safetensors_bytes()?, state.to_safetensors_bytes()?);
        write_all_atomically(&[
            (&dir.join("optimizer.safetensors"), &opt_bytes),
            (&dir.join("checkpoint.safetensors"), &ckpt),
        ])
    };
    let metrics = train(&mut model, &mut opt, train_set, test_set, &config, start_epoch, &mut on_batch, &mut on_epoch)?;
    bar.finish_and_clear();
    if let Some(dir) = out {
        println!(
            "wrote {}/{{metrics.csv, metrics.json, curves.png, checkpoint.safetensors, optimizer.safetensors}}",
            dir.display()
        );
    }
    if let Some(last) = metrics.last() {
        println!(
            "test accuracy {:.4} ({} of {} images)",
            last.test_accuracy,
            (last.test_accuracy * test_set.len() as f32).round(),
            test_set.len()
        );
    }
    Ok(())
}

/// metrics.json (every epoch) and metrics.csv, each written whole through a rename.
fn write_metrics(dir: &Path, history: &[serde_json::Value]) -> Result<()> {
    let json = serde_json::to_string_pretty(history).map_err(|e| Error::invalid("metrics", e.to_string()))?;
    write_atomically(&dir.join("metrics.json"), json.as_bytes())?;
    let cols =
        ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "images_per_second", "seconds"];
    let mut csv = cols.join(",") + "\n";
    for row in history {
        csv += &cols.iter().map(|c| row[c].to_string()).collect::<Vec<_>>().join(",");
        csv += "\n";
    }
    write_atomically(&dir.join("metrics.csv"), csv.as_bytes())
}

/// Times training steps of the small MNIST ViT on random digits-shaped inputs.
fn bench_train(batches: &[usize], runs: usize) -> Result<()> {
    println!(
        "patchgraph bench --train: {} rayon threads, median of {runs} steps after 2 warm-ups",
        rayon::current_num_threads()
    );
    let mut c = VitConfig::tiny(28, 4, 10);
    (c.in_chans, c.embed_dim, c.depth, c.num_heads) = (1, 64, 4, 4);
    for &b in batches {
        let mut vit = Vit::new(c.clone(), &mut Init::new(0))?;
        let mut opt = AdamW::new(1e-3, 0.05);
        let mut init = Init::new(1);
        let images = (0..b).map(|_| ChwImage::new(1, 28, 28, init.normal(784, 1.0))).collect::<Result<Vec<_>>>()?;
        let targets: Vec<usize> = (0..b).map(|i| i % 10).collect();
        let mut step = || -> Result<f64> {
            let t = std::time::Instant::now();
            let (_, mut grads) = vit.loss_and_grads(&images, &targets, 0.1, &VitOptions::default())?;
            patchgraph::train::clip_grad_norm(&mut grads.slices_mut(), 1.0);
            opt.begin_step();
            vit.visit_params_mut(&grads, &mut |slot, p, g, decay| opt.update(slot, p, g, decay));
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        step()?;
        step()?;
        let mut times = (0..runs.max(1)).map(|_| step()).collect::<Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        println!("train_vit_mnist B={b}: {ms:.2} ms/step, {:.1} images/s", 1e3 * b as f64 / ms);
    }
    Ok(())
}

/// Times whole ViT forwards (seeded random weights, random normal images) per arch and batch.
fn bench_vit(archs: &[String], batches: &[usize], runs: usize, json: Option<&Path>) -> Result<()> {
    println!("patchgraph bench --vit: {} rayon threads, median of {runs} runs", rayon::current_num_threads());
    println!("{:<24} {:>3} {:>12} {:>12} {:>10}", "model", "B", "ms/batch", "ms/image", "images/s");
    let mut records = Vec::new();
    for arch in archs {
        let config = VitConfig::arch(arch)?;
        let vit = Vit::new(config.clone(), &mut Init::new(0))?;
        for &b in batches {
            let mut init = Init::new(1);
            let side = config.img_size;
            let images = (0..b)
                .map(|_| ChwImage::new(3, side, side, init.normal(3 * side * side, 1.0)))
                .collect::<Result<Vec<_>>>()?;
            vit.forward(&images)?; // warm-up
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    vit.forward(&images).map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            let ms = times[times.len() / 2];
            println!("{arch:<24} {b:>3} {ms:>12.2} {:>12.2} {:>10.2}", ms / b as f64, 1e3 * b as f64 / ms);
            records.push(serde_json::json!({
                "model": arch, "batch": b, "median_ms": ms, "ms_per_image": ms / b as f64,
                "images_per_s": 1e3 * b as f64 / ms, "runs": runs, "threads": rayon::current_num_threads(),
            }));
        }
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "records": records }))
            .map_err(|e| Error::invalid("bench JSON", e.to_string()))?;
        write_atomically(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench(
    sizes: &[usize],
    ks: &[usize],
    batches: &[usize],
    scores: &[String],
    heads: usize,
    head_dim: usize,
    runs: usize,
    find_crossover: bool,
    json: Option<&Path>,
) -> Result<()> {
    let probe = HeapProbe::default();
    println!(
        "patchgraph bench: H = {heads}, d = {head_dim}, {} rayon threads, median of {runs} runs",
        rayon::current_num_threads()
    );
    println!(
        "{:<7} {:<6} {:>2} {:>6} {:>9} {:>10} {:>11} {:>9} {:>11}",
        "path", "score", "B", "N", "graph", "edges", "time (ms)", "GFLOP/s", "extra MiB"
    );
    let mut records: Vec<Record> = Vec::new();
    let mut cases = Vec::new();
    for score in scores {
        for &grid in sizes {
            for &batch in batches {
                cases.push(Case { score: score.clone(), batch, grid, graph: GraphKind::Complete, heads, head_dim });
            }
            for &k in ks.iter().filter(|&&k| k <= grid * grid) {
                cases.push(Case { score: score.clone(), batch: 1, grid, graph: GraphKind::Knn(k), heads, head_dim });
            }
        }
    }
    for case in cases {
        let r = run_case(&case, runs, &probe)?;
        let graph = match case.graph {
            GraphKind::Complete => "complete".to_string(),
            GraphKind::Knn(k) => format!("knn{k}"),
            GraphKind::Random(k) => format!("random{k}"),
        };
        println!(
            "{:<7} {:<6} {:>2} {:>6} {:>9} {:>10} {:>11.3} {:>9.1} {:>11.2}",
            r.path, case.score, case.batch, r.nodes, graph, r.edges, r.median_ms, r.gflops, r.peak_extra_mib
        );
        records.push(r);
    }
    let mut crossovers = Vec::new();
    if find_crossover {
        println!(
            "\ncrossover (dot score, B = 1): smallest degree k of a random graph at which sparse is no faster than dense"
        );
        for &grid in sizes {
            let n = grid * grid + 1;
            let found = crossover(grid, heads, head_dim, runs)?;
            match found {
                Some((k, density)) => println!("  N = {n:>5}: k = {k:>5}, density E/N^2 = {density:.3}"),
                None => println!("  N = {n:>5}: sparse stays faster up to the complete graph"),
            }
            crossovers.push(serde_json::json!({ "nodes": n, "k": found.map(|f| f.0), "density": found.map(|f| f.1) }));
        }
    }
    if let Some(path) = json {
        let all = serde_json::json!({ "records": records, "crossovers": crossovers });
        let text = serde_json::to_string_pretty(&all).map_err(|e| Error::invalid("bench JSON", e.to_string()))?;
        write_atomically(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_stats(image: &Path, spec: &GraphSpec, rows: usize, cols: usize, g: &Graph) {
    let degrees: Vec<usize> = (0..g.num_nodes()).map(|i| g.in_degree(i)).collect();
    let (min, max) = (degrees.iter().min().copied().unwrap_or(0), degrees.iter().max().copied().unwrap_or(0));
    let self_loops = (0..g.num_nodes()).filter(|&i| g.incoming(i).any(|j| j == i)).count();
    println!("image       {}", image.display());
    println!("patch grid  {rows} x {cols}");
    println!(
        "graph       {spec} ({})",
        if g.is_complete() { "complete: dense kernels" } else { "sparse: CSR kernels" }
    );
    println!("nodes       {}", g.num_nodes());
    println!("edges       {}", g.num_edges());
    println!(
        "in-degree   min {min}, mean {:.2}, max {max}",
        if g.num_nodes() == 0 { 0.0 } else { g.num_edges() as f64 / g.num_nodes() as f64 }
    );
    println!("self-loops  {self_loops}");
}
