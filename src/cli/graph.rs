//! `patchgraph graph IMAGE`: a photo's patch graph (timm's eval transform, then `P x P`
//! patches), its size and degrees; `--dot` writes it for Graphviz, `--out` draws it over the
//! photo (every edge, or those into one node), `--checkpoint` builds feature k-NN from a ViT's
//! layer features instead of raw patch pixels.
//!
//! ```
//! use patchgraph::cli::{Common, graph};
//! let args = graph::Args {
//!     image: concat!(env!("CARGO_MANIFEST_DIR"), "/data/images/chelsea.png").into(),
//!     graph: "knn:4".parse().unwrap(),
//!     class_token: true,
//!     ..graph::Args::default()
//! };
//! let report = graph::run(&args, &Common::default()).unwrap();
//! assert_eq!((report.rows, report.cols, report.nodes), (14, 14, 197));
//! assert_eq!(report.graph.num_edges(), 196 * 4 + 2 * 196 + 1); // 4-NN, class token both ways
//! ```

use super::{Common, model_config, wrote};
use crate::error::{Error, Result};
use crate::graph::{Graph, GraphSpec};
use crate::image::{ImageTransform, Normalization, patch_grid, patchify};
use crate::infer::PreparedVit;
use crate::nn::VitOptions;
use crate::viz::{EdgeSelection, draw_patch_graph};
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph graph`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Any image the `image` crate reads.
    pub image: PathBuf,
    /// Patch side in pixels.
    #[arg(long, default_value_t = 16)]
    pub patch: usize,
    /// Topology: complete, grid4:R, grid8:R, window:S, nat:S, knn:K, fknn:K:D, fknn-cos:K:D, random:K:SEED,
    /// bigbird:W:R:SEED, longformer:W:G, swin:M[:S], gridattn:G, lsh:B:R:SEED[:CHUNK], global:G, or a union A+B.
    #[arg(long, default_value = "grid8:1")]
    pub graph: GraphSpec,
    /// Image side after timm's eval transform (shorter side to size/0.875, centre crop).
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Prepend a class-token node linked both ways to every patch.
    #[arg(long)]
    pub class_token: bool,
    /// Write the graph as Graphviz DOT to this file.
    #[arg(long)]
    pub dot: Option<PathBuf>,
    /// Draw the graph over the image into this file (.png or .svg): the patch grid and the
    /// edges as lines between patch centres.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw only the edges into this node (0-based; with --class-token node 0 is the class
    /// token and patch r is node r + 1).
    #[arg(long, conflicts_with = "all")]
    pub node: Option<usize>,
    /// Draw every edge (the default without --node).
    #[arg(long)]
    pub all: bool,
    /// Feature k-NN on a ViT checkpoint's layer features (its `norm1` output at --layer)
    /// instead of raw patch pixels; the image is prepared for that model (its size and patch).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint's layer whose features build the feature k-NN.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Model config JSON (for checkpoints that do not carry one).
    #[arg(long, conflicts_with = "arch")]
    pub config: Option<PathBuf>,
    /// Architecture name (for checkpoints that do not carry a config).
    #[arg(long)]
    pub arch: Option<String>,
}

impl Default for Args {
    /// The command line's defaults, with an empty image path.
    fn default() -> Self {
        Args {
            image: PathBuf::new(),
            patch: 16,
            graph: GraphSpec::Grid { neighbourhood: crate::graph::Neighbourhood::Eight, radius: 1 },
            size: 224,
            class_token: false,
            dot: None,
            out: None,
            node: None,
            all: false,
            checkpoint: None,
            layer: 0,
            config: None,
            arch: None,
        }
    }
}

/// What `patchgraph graph` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The image.
    pub image: PathBuf,
    /// The spec, as written.
    pub spec: String,
    /// Patch rows and columns.
    pub rows: usize,
    /// Patch columns.
    pub cols: usize,
    /// Nodes (patches, and the class token if asked).
    pub nodes: usize,
    /// Edges.
    pub edges: usize,
    /// Smallest, mean and largest in-degree.
    pub degree: (usize, f64, usize),
    /// Nodes with a self-loop.
    pub self_loops: usize,
    /// Whether the graph is complete (the dense kernels run it).
    pub complete: bool,
    /// "layer L of CHECKPOINT (g x g patches of P px)", when the features came from a ViT.
    pub features: Option<String>,
    /// Files written.
    pub wrote: Vec<PathBuf>,
    /// The graph itself.
    #[serde(skip)]
    pub graph: Graph,
}

/// Builds the graph and writes what was asked (`--dot`, `--out`).
///
/// Errors: the image cannot be read or is smaller than one patch; the spec needs what is not
/// there; `--node` without `--out` or beyond the nodes; the checkpoint's errors.
pub fn run(args: &Args, common: &Common) -> Result<Report> {
    // (display image in [0, 1], patch side, node features of the patches, where they came from)
    let (display, patch, features, from) = match &args.checkpoint {
        None => {
            let mut transform = ImageTransform::timm_eval(args.size, 0.875, Normalization::imagenet());
            let input = transform.apply_path(&args.image)?;
            transform.normalize = None;
            let display = transform.apply_path(&args.image)?;
            let (_, h, w) = input.shape();
            patch_grid(h, w, args.patch)?;
            (display, args.patch, patchify(&input, args.patch)?, None)
        }
        Some(ckpt) => {
            let model = PreparedVit::load_with(
                ckpt,
                model_config(args.config.as_deref(), args.arch.as_deref())?,
                Normalization::inception(),
                common.allow_nonfinite,
            )?;
            let (display, input) = model.prepare_path(&args.image)?;
            let features = model.vit.layer_features(&[input], args.layer, &VitOptions::default())?;
            let c = model.vit.config();
            let (gh, gw) = c.grid_size();
            if c.patch_size.h != c.patch_size.w {
                return Err(Error::invalid(
                    "graph --checkpoint",
                    format!("patches of {} x {} px: the picture draws square patches", c.patch_size.h, c.patch_size.w),
                ));
            }
            let from =
                format!("layer {} of {} ({gh} x {gw} patches of {} px)", args.layer, ckpt.display(), c.patch_size.h);
            (display, c.patch_size.h, features, Some(from))
        }
    };
    let (_, h, w) = display.shape();
    let (rows, cols) = patch_grid(h, w, patch)?;
    let g = args.graph.build(rows, cols, Some(&features), args.class_token)?;
    if args.out.is_none() && args.node.is_some() {
        return Err(Error::invalid("--node", "draws into --out FILE: give one"));
    }
    let mut written = Vec::new();
    if let Some(path) = &args.dot {
        crate::atomic_file::write_atomically(path, g.to_dot().as_bytes())?;
        written.push(path.clone());
    }
    if let Some(path) = &args.out {
        let edges = match args.node {
            Some(i) => EdgeSelection::Into(i),
            None => EdgeSelection::All,
        };
        draw_patch_graph(&display, patch, &g, args.class_token, edges, path)?;
        written.push(path.clone());
    }
    let degrees: Vec<usize> = (0..g.num_nodes()).map(|i| g.in_degree(i)).collect();
    let mean = if g.num_nodes() == 0 { 0.0 } else { g.num_edges() as f64 / g.num_nodes() as f64 };
    Ok(Report {
        image: args.image.clone(),
        spec: args.graph.to_string(),
        rows,
        cols,
        nodes: g.num_nodes(),
        edges: g.num_edges(),
        degree: (degrees.iter().copied().min().unwrap_or(0), mean, degrees.iter().copied().max().unwrap_or(0)),
        self_loops: (0..g.num_nodes()).filter(|&i| g.incoming(i).any(|j| j == i)).count(),
        complete: g.is_complete(),
        features: from,
        wrote: written,
        graph: g,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(from) = &self.features {
            writeln!(f, "features: {from}")?;
        }
        writeln!(f, "image       {}", self.image.display())?;
        writeln!(f, "patch grid  {} x {}", self.rows, self.cols)?;
        let kind = if self.complete { "complete: dense kernels" } else { "sparse: CSR kernels" };
        writeln!(f, "graph       {} ({kind})", self.spec)?;
        writeln!(f, "nodes       {}", self.nodes)?;
        writeln!(f, "edges       {}", self.edges)?;
        let (min, mean, max) = self.degree;
        writeln!(f, "in-degree   min {min}, mean {mean:.2}, max {max}")?;
        writeln!(f, "self-loops  {}", self.self_loops)?;
        wrote(f, &self.wrote)
    }
}
