//! `patchgraph bench`: dense (complete graph) against sparse (k-NN graph) attention, time,
//! GFLOP/s and peak extra memory per case, and the measured crossover density; with `--vit`
//! whole ViT forwards at each batch size; with `--train` training steps of the small MNIST ViT.
//! The rows print as they are measured ([`super::Log`]); the report holds every record.

use super::Log;
use crate::bench::{Case, GraphKind, HeapProbe, Record, crossover, run_case};
use crate::error::{Error, Result};
use crate::image::ChwImage;
use crate::nn::{Init, Vit, VitConfig, VitOptions};
use crate::train::AdamW;
use std::fmt;
use std::path::PathBuf;

/// The flags of `patchgraph bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Patch-grid sides g (N = g*g + 1 tokens).
    #[arg(long, value_delimiter = ',', default_value = "7,14,28,56")]
    pub sizes: Vec<usize>,
    /// k of the k-NN graphs.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub ks: Vec<usize>,
    /// Batch sizes for the dense cases.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Scores: dot, gat, gatv2.
    #[arg(long, value_delimiter = ',', default_value = "dot,gat,gatv2")]
    pub scores: Vec<String>,
    /// Heads.
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Width per head.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Timed runs per case (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Skip the crossover search.
    #[arg(long)]
    pub no_crossover: bool,
    /// Also write every record as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time whole ViT forwards of these architectures instead (e.g. vit_tiny_patch16_224).
    #[arg(long, value_delimiter = ',')]
    pub vit: Vec<String>,
    /// Plot the sweep (time against N and k, crossover marked) into this file (.png or
    /// .svg); the records also go to --json, or to this file's name with .json.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A `scripts/bench_peers.py --json` file whose timings the plot shows beside ours.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Time training steps (forward, backward, clipping, AdamW) of the small MNIST ViT
    /// (28 x 28, patch 4, D 64, depth 4, heads 4) at each of --batches instead.
    #[arg(long)]
    pub train: bool,
}

/// Every record of one `patchgraph bench` run (the JSON it writes with `--json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The records: attention cases, ViT forwards or training steps.
    pub records: serde_json::Value,
    /// The crossovers found (attention sweep without `--no-crossover`).
    pub crossovers: Vec<serde_json::Value>,
    /// Files written.
    pub wrote: Vec<PathBuf>,
}

/// Runs the sweep asked for, printing each row through `log` as it is measured.
pub fn run(args: &Args, log: &mut Log<'_>) -> Result<Report> {
    if args.train {
        let records = bench_train(&args.batches, args.runs, log)?;
        return Ok(Report { records, crossovers: Vec::new(), wrote: Vec::new() });
    }
    if !args.vit.is_empty() {
        let records = bench_vit(&args.vit, &args.batches, args.runs, log)?;
        let mut wrote = Vec::new();
        if let Some(path) = &args.json {
            write_json(path, &serde_json::json!({ "records": records }))?;
            wrote.push(path.clone());
        }
        return Ok(Report { records, crossovers: Vec::new(), wrote });
    }
    let json = args.json.clone().or_else(|| args.plot.as_ref().map(|p| p.with_extension("json")));
    let (records, crossovers) = bench_attention(args, log)?;
    let mut wrote = Vec::new();
    if let Some(path) = &json {
        write_json(path, &serde_json::json!({ "records": records, "crossovers": crossovers }))?;
        wrote.push(path.clone());
        if let Some(plot) = &args.plot {
            super::plot::bench_files(path, args.peers.as_deref(), plot)?;
            wrote.push(plot.clone());
        }
    }
    let records = serde_json::to_value(&records).map_err(|e| Error::invalid("bench records", e.to_string()))?;
    Ok(Report { records, crossovers, wrote })
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::invalid("bench JSON", e.to_string()))?;
    crate::atomic_file::write_atomically(path, text.as_bytes())
}

/// The attention sweep: dense and sparse cases, then the crossovers.
fn bench_attention(args: &Args, log: &mut Log<'_>) -> Result<(Vec<Record>, Vec<serde_json::Value>)> {
    let (heads, head_dim, runs) = (args.heads, args.head_dim, args.runs);
    let probe = HeapProbe::default();
    log(&format!(
        "patchgraph bench: H = {heads}, d = {head_dim}, {} rayon threads, median of {runs} runs",
        rayon::current_num_threads()
    ));
    log(&format!(
        "{:<7} {:<6} {:>2} {:>6} {:>9} {:>10} {:>11} {:>9} {:>11}",
        "path", "score", "B", "N", "graph", "edges", "time (ms)", "GFLOP/s", "extra MiB"
    ));
    let mut records: Vec<Record> = Vec::new();
    let mut cases = Vec::new();
    for score in &args.scores {
        for &grid in &args.sizes {
            for &batch in &args.batches {
                cases.push(Case { score: score.clone(), batch, grid, graph: GraphKind::Complete, heads, head_dim });
            }
            for &k in args.ks.iter().filter(|&&k| k <= grid * grid) {
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
        log(&format!(
            "{:<7} {:<6} {:>2} {:>6} {:>9} {:>10} {:>11.3} {:>9.1} {:>11.2}",
            r.path, case.score, case.batch, r.nodes, graph, r.edges, r.median_ms, r.gflops, r.peak_extra_mib
        ));
        records.push(r);
    }
    let mut crossovers = Vec::new();
    if !args.no_crossover {
        log(
            "\ncrossover (dot score, B = 1): smallest degree k of a random graph at which sparse is no faster than dense",
        );
        for &grid in &args.sizes {
            let n = grid * grid + 1;
            let found = crossover(grid, heads, head_dim, runs)?;
            log(&match found {
                Some((k, density)) => format!("  N = {n:>5}: k = {k:>5}, density E/N^2 = {density:.3}"),
                None => format!("  N = {n:>5}: sparse stays faster up to the complete graph"),
            });
            crossovers.push(serde_json::json!({ "nodes": n, "k": found.map(|f| f.0), "density": found.map(|f| f.1) }));
        }
    }
    Ok((records, crossovers))
}

/// Times training steps of the small MNIST ViT on random digits-shaped inputs.
fn bench_train(batches: &[usize], runs: usize, log: &mut Log<'_>) -> Result<serde_json::Value> {
    log(&format!(
        "patchgraph bench --train: {} rayon threads, median of {runs} steps after 2 warm-ups",
        rayon::current_num_threads()
    ));
    let mut c = VitConfig::tiny(28, 4, 10);
    (c.in_chans, c.embed_dim, c.depth, c.num_heads) = (1, 64, 4, 4);
    let mut records = Vec::new();
    for &b in batches {
        let mut vit = Vit::new(c.clone(), &mut Init::new(0))?;
        let mut opt = AdamW::new(1e-3, 0.05);
        let mut init = Init::new(1);
        let images = (0..b).map(|_| ChwImage::new(1, 28, 28, init.normal(784, 1.0))).collect::<Result<Vec<_>>>()?;
        let targets: Vec<usize> = (0..b).map(|i| i % 10).collect();
        let mut step = || -> Result<f64> {
            let t = std::time::Instant::now();
            let (_, mut grads) = vit.loss_and_grads(&images, &targets, 0.1, &VitOptions::default())?;
            crate::train::clip_grad_norm(&mut grads.slices_mut(), 1.0);
            opt.begin_step();
            vit.visit_params_mut(&grads, &mut |slot, p, g, decay| opt.update(slot, p, g, decay));
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        step()?;
        step()?;
        let mut times = (0..runs.max(1)).map(|_| step()).collect::<Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        log(&format!("train_vit_mnist B={b}: {ms:.2} ms/step, {:.1} images/s", 1e3 * b as f64 / ms));
        records.push(serde_json::json!({ "batch": b, "median_ms": ms, "images_per_s": 1e3 * b as f64 / ms }));
    }
    Ok(serde_json::Value::Array(records))
}

/// Times whole ViT forwards (seeded random weights, random normal images) per arch and batch.
fn bench_vit(archs: &[String], batches: &[usize], runs: usize, log: &mut Log<'_>) -> Result<serde_json::Value> {
    log(&format!("patchgraph bench --vit: {} rayon threads, median of {runs} runs", rayon::current_num_threads()));
    log(&format!("{:<24} {:>3} {:>12} {:>12} {:>10}", "model", "B", "ms/batch", "ms/image", "images/s"));
    let mut records = Vec::new();
    for arch in archs {
        let config = VitConfig::arch(arch)?;
        let vit = Vit::new(config.clone(), &mut Init::new(0))?;
        for &b in batches {
            let mut init = Init::new(1);
            let (h, w) = (config.img_size.h, config.img_size.w);
            let images =
                (0..b).map(|_| ChwImage::new(3, h, w, init.normal(3 * h * w, 1.0))).collect::<Result<Vec<_>>>()?;
            vit.forward(&images)?; // warm-up
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    vit.forward(&images).map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            let ms = times[times.len() / 2];
            log(&format!("{arch:<24} {b:>3} {ms:>12.2} {:>12.2} {:>10.2}", ms / b as f64, 1e3 * b as f64 / ms));
            records.push(serde_json::json!({
                "model": arch, "batch": b, "median_ms": ms, "ms_per_image": ms / b as f64,
                "images_per_s": 1e3 * b as f64 / ms, "runs": runs, "threads": rayon::current_num_threads(),
            }));
        }
    }
    Ok(serde_json::Value::Array(records))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::wrote(f, &self.wrote)
    }
}
