//! The small-patch experiment: the same ViT on the bundled digits at patch 7, 4, 2 and 1 (16, 49,
//! 196 and 784 patches plus the class token), with its attention on the complete graph, on
//! sparse patch graphs (a sliding window, BigBird, Reformer's LSH buckets) and replaced by the
//! low-rank methods (Performer, Linformer, Nyström): test accuracy, seconds per epoch, peak
//! memory and attention FLOPs per image, one table and one plot.
//!
//! ```text
//! cargo run --release --example small_patches             # the default run, about 12 minutes on 2 cores
//! cargo run --release --example small_patches -- --long   # the full table of notes/experiments.md
//! cargo run --release --example small_patches -- --patches 7 --methods complete,performer  # a part
//! cargo run --release --example small_patches -- --json rows.json --plot small_patches.png
//! cargo run --release --example small_patches -- --from rows.json --plot again.png  # plot, no training
//! ```
//!
//! The model: width 32, depth 2, 2 heads of 16, average pooling, the recipe of the topology
//! experiment (AdamW 2e-3, warm-up + cosine, label smoothing 0.1, random crops, seed 0). The
//! default run trains fewer images for fewer epochs as the patches shrink, so that all 28 rows
//! fit in about 12 minutes on 2 cores (stated in the table): 4,000 images x 30 epochs at patch
//! 7, 4,000 x 20 at patch 4, 2,000 x 8 at patch 2, 1,000 x 4 at patch 1, tested on all 1,000
//! test digits (500 at patch 1). `--long` (about an hour): 4,000 x 60 at patch 7 and 4,
//! 4,000 x 20 at patch 2, 4,000 x 8 at patch 1, all on the 1,000 test digits.
//!
//! | method | spec | attention per layer and image |
//! |---|---|---|
//! | complete | `complete` | every token reads every token: `E = T^2` |
//! | window | `nat:3` | the 3 x 3 neighbourhood of each patch, plus the class token both ways |
//! | BigBird | `bigbird:3:2:0` | that window, 2 random patches per patch, the class token as the global token |
//! | LSH | `lsh:B:2:0` | Reformer's buckets of the layer's features, `B = 2 round(T / 32)` (at least 2), 2 rounds |
//! | Performer | `performer` | FAVOR+ with `m = int(d ln d) = 44` features |
//! | Linformer | `linformer:K` | keys and values projected to `K = min(32, T)` rows |
//! | Nyström | `nystrom:L` | `L = 4` landmarks (2 x 2 patch blocks) at patch 7, 16 (4 x 4) below, plus the class token |
//!
//! Attention FLOPs per image count the forward's attention only (projections and MLP aside),
//! summed over the layers: `4 E D` on a graph of `E` edges (`q . k` and `p v`; LSH's `E` is
//! measured on the first layer of the trained model); Performer `4 T m D + 4 T m D` (features
//! of q and k, then `phi(K)^T V` and `phi(Q) C`); Linformer `4 T K D` (the projections) `+
//! 4 T K D` (attention); Nyström `8 T L D + 2 T L^2 H + 8 L^3 H` per pinv iteration... (see
//! `flops`). Peak memory is the peak of live heap bytes during the row's training beyond what
//! was live before it (a counting global allocator).

use patchgraph::Result;
use patchgraph::attention::low_rank::{LowRank, NYSTROM_PINV_ITERATIONS};
use patchgraph::bench::{CountingAllocator, HeapProbe, MemoryProbe};
use patchgraph::data::{ImageDataset, Split, load_mnist};
use patchgraph::graph::GraphSpec;
use patchgraph::nn::{GlobalPool, Init, Vit, VitConfig, VitOptions};
use patchgraph::train::{AdamW, TrainConfig, train};
use patchgraph::viz::{Scale, ScalingPanel, ScalingPoint, plot_scaling};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const DIM: usize = 32;
const DEPTH: usize = 2;
const HEADS: usize = 2;

/// One table row (also the records of `--json` and `--from`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    patch: usize,
    tokens: usize,
    method: String,
    spec: String,
    train_images: usize,
    test_images: usize,
    epochs: usize,
    accuracy: f32,
    seconds_per_epoch: f64,
    peak_mib: f64,
    flops: f64,
}

/// The first `n` images of `set`.
fn subset(set: &ImageDataset, n: usize) -> Result<ImageDataset> {
    let n = n.min(set.len());
    let (c, h, w) = set.shape();
    let mut pixels = Vec::with_capacity(n * c * h * w);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let (img, label) = set.get(i)?;
        pixels.extend_from_slice(img.as_slice());
        labels.push(label);
    }
    ImageDataset::new(pixels, labels, (c, h, w), set.classes)
}

/// The spec of `method` on a `grid x grid` patch grid (`t` tokens).
fn spec_for(method: &str, grid: usize, t: usize) -> Result<String> {
    Ok(match method {
        "complete" => "complete".into(),
        "window" => "nat:3".into(),
        "bigbird" => "bigbird:3:2:0".into(),
        "lsh" => format!("lsh:{}:2:0", (2 * ((t as f64 / 32.0).round() as usize)).max(2)),
        "performer" => "performer".into(),
        "linformer" => format!("linformer:{}", 32.min(t)),
        "nystrom" => format!("nystrom:{}", if grid <= 4 { 4 } else { 16 }),
        other => {
            return Err(patchgraph::Error::invalid(
                "--methods",
                format!(
                    "unknown method `{other}`: expected complete, window, bigbird, lsh, performer, linformer or nystrom"
                ),
            ));
        }
    })
}

/// Forward attention FLOPs per image and layer (see the module docs).
fn flops(spec: &GraphSpec, vit: &Vit, test: &ImageDataset) -> Result<f64> {
    let cfg = vit.config();
    let ((g, _), t, d, h) = (cfg.grid_size(), cfg.num_tokens(), cfg.embed_dim as f64, cfg.num_heads as f64);
    let hd = cfg.head_dim();
    let tf = t as f64;
    Ok(match spec {
        GraphSpec::LowRank(LowRank::Performer { features, .. }) => {
            let m = if *features == 0 { patchgraph::attention::performer::default_features(hd) } else { *features };
            8.0 * tf * m as f64 * d
        }
        GraphSpec::LowRank(LowRank::Linformer { k, .. }) => 8.0 * tf * *k as f64 * d,
        GraphSpec::LowRank(LowRank::Nystrom { landmarks, .. }) => {
            let l = (*landmarks + cfg.prefix_tokens()) as f64;
            8.0 * tf * l * d + 2.0 * tf * l * l * h + 8.0 * l * l * l * h * NYSTROM_PINV_ITERATIONS as f64
        }
        _ if spec.needs_features() => {
            let (img, _) = test.get(0)?;
            let x = vit.layer_features(&[img], 0, &VitOptions::default())?;
            4.0 * spec.build(g, g, Some(&x), cfg.class_token)?.num_edges() as f64 * d
        }
        _ => 4.0 * spec.build(g, g, None, cfg.class_token)?.num_edges() as f64 * d,
    } * DEPTH as f64)
}

/// Train and test every (patch, method) row.
fn run_rows(patches: &[usize], methods: &[String], long: bool) -> Result<Vec<Row>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
    let (train_all, test_all) = (load_mnist(dir, Split::Train)?, load_mnist(dir, Split::Test)?);
    let probe = HeapProbe::default();
    let mut rows = Vec::new();
    for &patch in patches {
        // (training images, epochs, test images)
        let (n_train, epochs, n_test) = match (patch, long) {
            (7, false) => (4000, 30, 1000),
            (4, false) => (4000, 20, 1000),
            (2, false) => (2000, 8, 1000),
            (_, false) => (1000, 4, 500),
            (7 | 4, true) => (4000, 60, 1000),
            (2, true) => (4000, 20, 1000),
            (_, true) => (4000, 8, 1000),
        };
        let (train_set, test_set) = (subset(&train_all, n_train)?, subset(&test_all, n_test)?);
        let grid = 28 / patch;
        let mut config = VitConfig::tiny(28, patch, 10);
        (config.in_chans, config.embed_dim, config.depth, config.num_heads) = (1, DIM, DEPTH, HEADS);
        config.global_pool = GlobalPool::Avg;
        let t = config.num_tokens();
        for method in methods {
            let spec: GraphSpec = spec_for(method, grid, t)?.parse()?;
            let mut c = config.clone();
            if let GraphSpec::LowRank(m) = &spec {
                c.attention = Some(m.clone());
            }
            let mut vit = Vit::new(c, &mut Init::new(0))?;
            let train_config = TrainConfig { epochs, lr: 2e-3, graphs: vec![spec.clone()], ..TrainConfig::mnist() };
            let mut opt = AdamW::new(train_config.lr, train_config.weight_decay);
            probe.reset();
            let started = std::time::Instant::now();
            let metrics =
                train(&mut vit, &mut opt, &train_set, &test_set, &train_config, 0, &mut |_| {}, &mut |_, _, _| Ok(()))?;
            let seconds = started.elapsed().as_secs_f64();
            let peak_mib = probe.peak_extra_bytes() as f64 / (1 << 20) as f64;
            let row = Row {
                patch,
                tokens: t,
                method: method.clone(),
                spec: spec.to_string(),
                train_images: train_set.len(),
                test_images: test_set.len(),
                epochs,
                accuracy: metrics.last().map_or(0.0, |m| m.test_accuracy),
                seconds_per_epoch: seconds / epochs as f64,
                peak_mib,
                flops: flops(&spec, &vit, &test_set)?,
            };
            println!(
                "patch {patch} ({t} tokens) {:<10} {:<16} accuracy {:.1}%  {:.1} s/epoch  peak {:.0} MiB",
                row.method,
                row.spec,
                100.0 * row.accuracy,
                row.seconds_per_epoch,
                row.peak_mib
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    patchgraph::train::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "cargo run --release --example small_patches -- [--long] [--patches 7,4,2,1] \
                         [--methods complete,window,...] [--json FILE] [--plot FILE.png] [--from FILE.json]";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    // `--long` stands alone; every other flag takes one value; anything else is an error.
    let mut at = 0;
    while at < args.len() {
        let flag = args[at].as_str();
        let takes_value = ["--patches", "--methods", "--json", "--plot", "--from"].contains(&flag);
        if !(flag == "--long" || takes_value && at + 1 < args.len()) {
            return Err(patchgraph::Error::invalid(
                "small_patches arguments",
                format!("`{flag}` is not a flag (or lacks its value); usage: {USAGE}"),
            ));
        }
        at += if takes_value { 2 } else { 1 };
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let long = args.iter().any(|a| a == "--long");
    let patches: Vec<usize> = value("--patches")
        .map(|p| p.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![7, 4, 2, 1]);
    let methods: Vec<String> =
        value("--methods").map(|m| m.split(',').map(String::from).collect()).unwrap_or_else(|| {
            ["complete", "window", "bigbird", "lsh", "performer", "linformer", "nystrom"].map(String::from).to_vec()
        });
    let rows: Vec<Row> = match value("--from") {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| patchgraph::Error::Io { path: file.clone().into(), source })?;
            serde_json::from_str(&text).map_err(|e| patchgraph::Error::Format { path: file, reason: e.to_string() })?
        }
        None => run_rows(&patches, &methods, long)?,
    };
    println!(
        "\n| patch | tokens | method | spec | train images x epochs | test images | test accuracy | s / epoch | peak memory (MiB) | attention MFLOPs / image |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | `{}` | {} x {} | {} | {:.1}% | {:.1} | {:.0} | {:.2} |",
            r.patch,
            r.tokens,
            r.method,
            r.spec,
            r.train_images,
            r.epochs,
            r.test_images,
            100.0 * r.accuracy,
            r.seconds_per_epoch,
            r.peak_mib,
            r.flops / 1e6
        );
    }
    if let Some(path) = value("--json") {
        patchgraph::atomic_file::write_atomically(
            std::path::Path::new(&path),
            serde_json::to_string_pretty(&rows).unwrap_or_default().as_bytes(),
        )?;
    }
    if let Some(path) = value("--plot") {
        // Three panels against tokens, one line per method: training time per image and epoch,
        // test accuracy and peak memory.
        let panel = |caption: &str, value: &str, scale, f: &dyn Fn(&Row) -> f64| ScalingPanel {
            caption: caption.into(),
            value: value.into(),
            scale,
            points: rows.iter().map(|r| ScalingPoint { method: r.method.clone(), n: r.tokens, value: f(r) }).collect(),
        };
        let panels = [
            panel("training time", "ms per image and epoch", Scale::Log, &|r| {
                1e3 * r.seconds_per_epoch / r.train_images as f64
            }),
            panel("test accuracy", "test accuracy (%)", Scale::Linear, &|r| 100.0 * r.accuracy as f64),
            panel("peak memory", "peak extra heap while training (MiB)", Scale::Log, &|r| r.peak_mib.max(0.1)),
        ];
        let title = format!("ViT on MNIST-5k, patch 7 to 1{}", if long { " (--long)" } else { "" });
        plot_scaling(&title, &panels, std::path::Path::new(&path))?;
        println!("plot: {path}");
    }
    Ok(())
}
