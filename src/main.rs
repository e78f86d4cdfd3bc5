//! The `patchgraph` command.
//!
//! ```text
//! patchgraph graph IMAGE [--patch 16] [--graph grid8:1] [--class-token] [--dot FILE]
//! ```
//! `graph` turns a photo into its patch graph (timm's eval transform, then `P x P` patches) and
//! prints the graph's size and degrees; `--dot` writes it for Graphviz.

use clap::{Parser, Subcommand};
use patchgraph::graph::GraphSpec;
use patchgraph::image::{ImageTransform, patch_grid, patchify};
use patchgraph::{Error, Graph, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "patchgraph", version, about = "Vision Transformers and graph attention networks on patch graphs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Topology: complete, grid4:R, grid8:R, window:S, nat:S, knn:K, fknn:K:D, fknn-cos:K:D, random:K:SEED.
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
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Graph { image, patch, graph, size, class_token, dot } => {
            let transform = ImageTransform::timm_eval(size, 0.875, patchgraph::image::Normalization::imagenet());
            let img = transform.apply_path(&image)?;
            let (_, h, w) = img.shape();
            let (rows, cols) = patch_grid(h, w, patch)?;
            let patches = patchify(&img, patch)?;
            let g = graph.build(rows, cols, Some(&patches), class_token)?;
            print_stats(&image, &graph, rows, cols, &g);
            if let Some(path) = dot {
                write_atomically(&path, g.to_dot().as_bytes())?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
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

/// Writes `bytes` to a temporary file beside `path`, then renames it: nothing half-written.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
