//! The topology experiment on the bundled MNIST-5k: the same small ViT trained with its
//! attention on different patch graphs, one table: test accuracy, training time, attention
//! edges and attention FLOPs per image.
//!
//! ```text
//! cargo run --release --example topologies            # 30 epochs per graph (about 6 minutes on 2 cores)
//! cargo run --release --example topologies -- --long  # 100 epochs per graph
//! cargo run --release --example topologies -- --epochs 3 --limit 1000   # a smoke run
//! ```
//!
//! Model: ViT D 64, depth 4, 4 heads, patch 7 (a 4 x 4 grid of patches and a class token),
//! average pooling; the recipe of `notes/experiments.md` (AdamW 2e-3, cosine, label smoothing,
//! random crops). Graphs: complete (ViT), grid8:1, window:2 (Swin-style 2 x 2 windows), spatial
//! k-NN (k = 6) and feature k-NN (ViG-style, k = 6, rebuilt per layer), each with the class
//! token linked both ways to every patch. The GAT and ViG model families of issue #5 are not
//! built yet, so they are not in the table.

use patchgraph::data::{Split, load_mnist};
use patchgraph::graph::GraphSpec;
use patchgraph::nn::{GlobalPool, Init, Vit, VitConfig};
use patchgraph::train::{AdamW, TrainConfig, train_vit};

fn main() -> patchgraph::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let value = |name: &str| flag(name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<usize>().ok());
    let epochs = value("--epochs").unwrap_or(if flag("--long").is_some() { 100 } else { 30 });
    let limit = value("--limit");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
    let (train, test) = (load_mnist(dir, Split::Train)?, load_mnist(dir, Split::Test)?);
    let mut config = VitConfig::tiny(28, 7, 10);
    (config.in_chans, config.embed_dim, config.depth, config.num_heads) = (1, 64, 4, 4);
    config.global_pool = GlobalPool::Avg;
    let specs = ["complete", "grid8:1", "window:2", "knn:6", "fknn:6:1"];
    println!(
        "ViT D {} depth {} heads {} patch {} on {} training digits ({} test), {epochs} epochs per graph",
        config.embed_dim,
        config.depth,
        config.num_heads,
        config.patch_size,
        limit.unwrap_or(train.len()),
        test.len()
    );
    let mut rows = Vec::new();
    for spec in specs {
        let graph: GraphSpec = spec.parse()?;
        let g = config.grid();
        let edges = match graph {
            GraphSpec::FeatureKnn { .. } => {
                GraphSpec::SpatialKnn { k: 6 }.build(g, g, None, config.class_token)?.num_edges() // same degree
            }
            _ => graph.build(g, g, None, config.class_token)?.num_edges(),
        };
        let flops = config.depth * edges * 4 * config.embed_dim; // q.k and p v per edge, all heads
        let train_config = TrainConfig { epochs, lr: 2e-3, limit, graphs: vec![graph], ..TrainConfig::mnist() };
        let mut vit = Vit::new(config.clone(), &mut Init::new(0))?;
        let mut opt = AdamW::new(train_config.lr, train_config.weight_decay);
        let started = std::time::Instant::now();
        let metrics = train_vit(&mut vit, &mut opt, &train, &test, &train_config, 0, &mut |_| {}, &mut |m| {
            if m.epoch % 10 == 0 || m.epoch == epochs {
                println!("  {spec:<9} epoch {:>3}: test accuracy {:.4}", m.epoch, m.test_accuracy);
            }
            Ok(())
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let last = metrics.last().map_or(0.0, |m| m.test_accuracy);
        let best = metrics.iter().fold(0.0f32, |b, m| b.max(m.test_accuracy));
        rows.push((spec, last, best, seconds, edges, flops));
    }
    println!(
        "\n| graph | test accuracy (last) | best | training time (s) | attention edges / image | attention FLOPs / image |"
    );
    println!("|---|---|---|---|---|---|");
    for (spec, last, best, seconds, edges, flops) in rows {
        println!(
            "| {spec} | {:.1}% | {:.1}% | {seconds:.0} | {edges} | {:.2} M |",
            100.0 * last,
            100.0 * best,
            flops as f64 / 1e6
        );
    }
    Ok(())
}
