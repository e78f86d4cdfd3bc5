//! The topology experiment on the bundled MNIST-5k, the project's main job: the same small ViT
//! trained with its attention on different patch graphs, plus a GAT network and a ViG on the
//! same patches, one table: test accuracy, training time, attention edges and attention FLOPs
//! per image.
//!
//! ```text
//! cargo run --release --example topologies            # 30 epochs per row (about 9 minutes on 2 cores)
//! cargo run --release --example topologies -- --long  # 100 epochs per row
//! cargo run --release --example topologies -- --epochs 3 --limit 1000   # a smoke run
//! ```
//!
//! Every model: width 64, depth 4, patch 7 (a 4 x 4 grid of 16 patch nodes), the recipe of
//! `notes/experiments.md` (AdamW 2e-3, warm-up 1 epoch + cosine, label smoothing 0.1, random
//! crops, seed 0).
//!
//! - ViT (4 heads, average pooling) with attention on: complete (timm's ViT), grid8:1, window:2
//!   (Swin-style 2 x 2 windows), spatial k-NN (k = 6) and feature k-NN (ViG-style, k = 6,
//!   rebuilt per layer); each graph also links the class token both ways to every patch.
//! - GAT: four GATConv layers of 4 heads on grid8:1 (PyG's self-loops), ELU and skips,
//!   mean-pooled ([`patchgraph::nn::PatchGat`]).
//! - ViG: four Grapher + FFN blocks, cosine feature k-NN with k = 6 rebuilt per layer, dilation
//!   1, 1, 2, 2, max-relative messages ([`patchgraph::nn::Vig`]).
//!
//! Attention FLOPs per image count the message passing only (projections and MLPs aside), per
//! edge and layer: `4D` for dot-product attention (`q . k` and `p v` over all heads), `2D + 3H`
//! for GAT (the weighted message; a score is `LeakyReLU(s_i + t_j)` per head, plus its exp),
//! `2D` for max-relative (a difference and a max per channel).

use patchgraph::data::{ImageDataset, Split, load_mnist};
use patchgraph::graph::GraphSpec;
use patchgraph::nn::{Classifier, GlobalPool, Init, PatchGat, PatchGatConfig, Vig, VigConfig, Vit, VitConfig};
use patchgraph::train::{AdamW, TrainConfig, train};

/// One table row.
struct Row {
    name: String,
    last: f32,
    best: f32,
    seconds: f64,
    edges: usize,
    flops: usize,
}

/// Trains `model` on `graphs` and returns its row.
fn run<M: Classifier>(
    name: &str,
    mut model: M,
    graphs: Vec<GraphSpec>,
    base: &TrainConfig,
    data: (&ImageDataset, &ImageDataset),
    edges: usize,
    flops_per_edge: usize,
) -> patchgraph::Result<Row> {
    let config = TrainConfig { graphs, ..base.clone() };
    let mut opt = AdamW::new(config.lr, config.weight_decay);
    let started = std::time::Instant::now();
    let epochs = config.epochs;
    let metrics = train(&mut model, &mut opt, data.0, data.1, &config, 0, &mut |_| {}, &mut |m, _, _| {
        if m.epoch % 10 == 0 || m.epoch == epochs {
            println!("  {name:<14} epoch {:>3}: test accuracy {:.4}", m.epoch, m.test_accuracy);
        }
        Ok(())
    })?;
    Ok(Row {
        name: name.to_string(),
        last: metrics.last().map_or(0.0, |m| m.test_accuracy),
        best: metrics.iter().fold(0.0f32, |b, m| b.max(m.test_accuracy)),
        seconds: started.elapsed().as_secs_f64(),
        edges,
        flops: 4 * edges * flops_per_edge, // four layers
    })
}

fn main() -> patchgraph::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let value = |name: &str| flag(name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<usize>().ok());
    let epochs = value("--epochs").unwrap_or(if flag("--long").is_some() { 100 } else { 30 });
    let limit = value("--limit");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
    let (train_set, test_set) = (load_mnist(dir, Split::Train)?, load_mnist(dir, Split::Test)?);
    let data = (&train_set, &test_set);
    let (dim, heads, grid) = (64, 4, 4);
    let base = TrainConfig { epochs, lr: 2e-3, limit, ..TrainConfig::mnist() };
    println!(
        "width {dim}, depth 4, patch 7 (16 patch nodes) on {} training digits ({} test), {epochs} epochs per row",
        limit.unwrap_or(train_set.len()),
        test_set.len()
    );
    let mut rows = Vec::new();
    // the ViT on five graphs
    let mut vit_config = VitConfig::tiny(28, 7, 10);
    (vit_config.in_chans, vit_config.embed_dim, vit_config.depth, vit_config.num_heads) = (1, dim, 4, heads);
    vit_config.global_pool = GlobalPool::Avg;
    for spec in ["complete", "grid8:1", "window:2", "knn:6", "fknn:6:1"] {
        let graph: GraphSpec = spec.parse()?;
        let edges = match graph {
            // k = 6 sources per patch, like spatial k-NN: the same count whatever the features
            GraphSpec::FeatureKnn { k, .. } => GraphSpec::SpatialKnn { k }.build(grid, grid, None, true)?.num_edges(),
            _ => graph.build(grid, grid, None, true)?.num_edges(),
        };
        let vit = Vit::new(vit_config.clone(), &mut Init::new(0))?;
        rows.push(run(&format!("ViT {spec}"), vit, vec![graph], &base, data, edges, 4 * dim)?);
    }
    // GAT on grid8:1 (self-loops included, as PyG's GATConv adds them)
    let gat_config = PatchGatConfig { dim, depth: 4, heads, ..PatchGatConfig::mnist() };
    let gat = PatchGat::new(gat_config, &mut Init::new(0))?;
    let edges = PatchGat::default_graph().build(grid, grid, None, false)?.num_edges();
    rows.push(run("GAT grid8:1", gat, Vec::new(), &base, data, edges, 2 * dim + 3 * heads)?);
    // ViG with its dilated feature k-NN
    let vig_config = VigConfig { dim, depth: 4, k: 6, max_dilation: 2, ..VigConfig::mnist() };
    let vig = Vig::new(vig_config, &mut Init::new(0))?;
    rows.push(run("ViG fknn-cos:6", vig, Vec::new(), &base, data, 6 * grid * grid, 2 * dim)?);

    println!(
        "\n| model, graph | test accuracy (last) | best | training time (s) | attention edges / image / layer | attention FLOPs / image |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1}% | {:.1}% | {:.0} | {} | {:.2} M |",
            r.name,
            100.0 * r.last,
            100.0 * r.best,
            r.seconds,
            r.edges,
            r.flops as f64 / 1e6
        );
    }
    Ok(())
}
