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
//!
//! ```text
//! patchgraph embed --checkpoint FILE (--config FILE | --arch NAME) (IMAGE | DIR)... --out FILE.npy|.safetensors
//!                  [--graph SPEC] [--compare] [--normalize] [--batch 16] [--norm clip --crop-pct 1.0]
//! ```
//! `embed` writes the model's output per image (a CLIP tower's image embedding, a headless
//! model's pooled features) on any graph; `--compare` reports each image's cosine similarity to
//! the complete graph's embedding.
//!
//! Each command's work is a library call in [`patchgraph::cli`]: this file only parses the flags,
//! runs the command on a pool of `--threads` threads and prints its report.

use clap::{Parser, Subcommand};
use patchgraph::bench::CountingAllocator;
use patchgraph::cli::{self, Common};
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
    /// tensor and index): graph --checkpoint, attention, infer, embed, convert, train --resume.
    #[arg(long, global = true)]
    allow_nonfinite: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Build a patch graph over an image and print its statistics.
    Graph(cli::graph::Args),
    /// Draw where a ViT attends: one query patch's (or the class token's) attention, per head
    /// or averaged, or the attention rollout, as a heat map over the image.
    Attention(cli::attention::Args),
    /// Plot benchmark records (time against N and against k, log scales, crossover marked) or
    /// training curves (loss and accuracy per epoch, several runs overlaid).
    Plot(cli::plot::Args),
    /// Time dense against sparse attention (ViT-B shapes by default) and find the crossover.
    Bench(cli::bench::Args),
    /// Train a ViT, a GAT on patches or a ViG on MNIST-format, CIFAR-10 or image-folder data.
    Train(cli::train::Args),
    /// Convert a ViT checkpoint (timm, Google .npz, PyTorch .pth incl. DeiT/DINO/MAE/CLIP) to timm, CLIP or Google names.
    Convert(cli::convert::Args),
    /// Classify images with a ViT checkpoint (timm safetensors or Google .npz).
    Infer(cli::infer::Args),
    /// Image embeddings of a folder of images (or files) on any graph, as .npy or .safetensors;
    /// --compare gives each image's cosine to the complete graph's embedding.
    Embed(cli::embed::Args),
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    // Training steps free and reallocate their activations every step: keep them in the heap.
    patchgraph::train::keep_freed_memory();
    let cli = Cli::parse();
    let common = Common { threads: cli.threads, allow_nonfinite: cli.allow_nonfinite };
    let mut print = |line: &str| println!("{line}");
    let report = common.install(|| -> patchgraph::Result<String> {
        Ok(match &cli.command {
            Command::Graph(a) => cli::graph::run(a, &common)?.to_string(),
            Command::Attention(a) => cli::attention::run(a, &common)?.to_string(),
            Command::Plot(a) => cli::plot::run(a)?.to_string(),
            Command::Bench(a) => cli::bench::run(a, &mut print)?.to_string(),
            Command::Train(a) => cli::train::run(a, &common, &mut print, true)?.to_string(),
            Command::Convert(a) => cli::convert::run(a, &common)?.to_string(),
            Command::Infer(a) => cli::infer::run(a, &common)?.to_string(),
            Command::Embed(a) => cli::embed::run(a, &common)?.to_string(),
        })
    });
    match report {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
