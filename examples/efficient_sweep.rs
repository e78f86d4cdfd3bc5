//! The scale sweep of efficient attention: one attention layer at ViT-B widths (12 heads of 64)
//! from N = 197 to N = 50,177 tokens (a class token and a g x g patch grid, g = 14 ... 224:
//! patch 16 down to patch 1 at 224 px), for every method, forward and forward + backward, the
//! median time and the peak extra heap memory. Writes a table, a JSON file of the records and a
//! log-log plot.
//!
//! ```text
//! cargo run --release --example efficient_sweep -- [--grids 14,28,56,112,224] [--budget 60]
//!     [--runs 3] [--methods complete,window,...] [--json FILE] [--plot FILE.png] [--peers efficient_peers.json]
//!     [--from FILE.json (plot an earlier run's records instead of measuring)]
//! ```
//!
//! What is timed (q, k, v `[N x 768]` given, as the peers' SDPA and FastAttention take them):
//!
//! | method | ours |
//! |---|---|
//! | complete | `attend` on `Graph::complete(N, true)`: the dense kernel (tiled online softmax) |
//! | window | `nat:7` with the class token: the sparse kernel (50 edges per patch) |
//! | bigbird | `bigbird:7:3:0` with the class token (53 edges per patch) |
//! | lsh | `lsh:16:1:0:32` on the layer input `[N x 768]`: 16 buckets, one round, chunks of 32 (in-degree at most 64: 57 per node on average at N = 3137, 64 at 50,177); the graph is built inside the timed call (Reformer hashes every forward) |
//! | performer | FAVOR+ with m = int(64 ln 64) = 266 features |
//! | linformer | k = 256 |
//! | nystrom | 256 landmarks as 16 x 16 patch blocks (7 x 7 at g = 14) plus the class token, 6 pinv iterations, the depthwise residual conv of kernel 33 (the peer's default) |
//!
//! Forward + backward: the forward keeping what the backward needs, then the backward for a
//! fixed `dout`. A case is skipped ("over budget") when the previous grid's time times the
//! method's growth (N^2 for complete, N otherwise) predicts more than `--budget` seconds.
//!
//! First, the machine's GEMM peak in the same sitting: faer's `2048 x 2048 x 2048` product on
//! all threads (median of 5 after a warm-up), printed and recorded as op `faer_mm_2048`.
//! `--export-graphs DIR` also writes each static graph it times (`window_N.npz`, `bigbird_N.npz`:
//! `edge_index` `[2, E]`, sources then targets, as f32, exact below 2^24) for
//! `scripts/bench_peers.py --graphs DIR`, so that the peers attend over the very same edges.

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use patchgraph::Result;
use patchgraph::attention::{AttentionInputs, Path, Score, attend, attend_backward};
use patchgraph::bench::{CountingAllocator, HeapProbe, MemoryProbe};
use patchgraph::checkpoint::TensorMap;
use patchgraph::graph::GraphSpec;
use patchgraph::nn::{Init, LowRankAttention, TokenGrid};
use patchgraph::tensor::Matrix;
use patchgraph::viz::{Scale, ScalingPanel, ScalingPoint, plot_scaling};
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const HEADS: usize = 12;
const HEAD_DIM: usize = 64;

/// Median seconds of `runs` calls of `f` (after one warm-up call), and the peak extra memory
/// of the warm-up call in MiB.
fn time(runs: usize, probe: &HeapProbe, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    probe.reset();
    f()?;
    let peak = probe.peak_extra_bytes() as f64 / (1 << 20) as f64;
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], peak))
}

/// GFLOP/s of faer's `2048^3` product on all of rayon's threads, median of 5 after a warm-up.
fn gemm_peak() -> f64 {
    let n = 2048;
    let a = Matrix::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let b = Matrix::from_fn(n, n, |i, j| ((i * 5 + j * 2) % 13) as f32 - 6.0);
    let mut c = Matrix::zeros(n, n);
    let mut times: Vec<f64> = (0..6)
        .map(|_| {
            let s = Instant::now();
            matmul(c.as_faer_mut(), Accum::Replace, a.as_faer(), b.as_faer(), 1.0, Par::rayon(0));
            s.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e9
}

/// Runs the sweep (see the module docs) and returns its records.
fn measure(value: &dyn Fn(&str) -> Option<String>) -> Result<Vec<serde_json::Value>> {
    let grids: Vec<usize> = value("--grids")
        .map(|g| g.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![14, 28, 56, 112, 224]);
    let budget: f64 = value("--budget").and_then(|b| b.parse().ok()).unwrap_or(60.0);
    let runs: usize = value("--runs").and_then(|b| b.parse().ok()).unwrap_or(3);
    let probe = HeapProbe::default();
    let d = HEADS * HEAD_DIM;
    let export = value("--export-graphs").map(std::path::PathBuf::from);
    let mut records = Vec::new();
    let peak = gemm_peak();
    println!("GEMM peak (faer 2048^3, {} threads): {peak:.1} GFLOP/s", rayon::current_num_threads());
    records.push(serde_json::json!({
        "peer": "patchgraph", "op": "faer_mm_2048", "N": 2048, "gflops": peak,
        "threads": rayon::current_num_threads(),
    }));
    let all = ["complete", "window", "bigbird", "lsh", "performer", "linformer", "nystrom"];
    let methods: Vec<&str> = match value("--methods") {
        Some(list) => {
            let wanted: Vec<&str> = list.split(',').collect();
            if let Some(bad) = wanted.iter().find(|m| !all.contains(m)) {
                return Err(patchgraph::Error::invalid(
                    "--methods",
                    format!("unknown method `{bad}`; expected some of {all:?}"),
                ));
            }
            all.into_iter().filter(|m| wanted.contains(m)).collect()
        }
        None => all.to_vec(),
    };
    let mut last: std::collections::HashMap<(String, bool), (usize, f64)> = Default::default();
    println!("| method | N | forward (ms) | fwd+bwd (ms) | forward peak extra (MiB) | fwd+bwd peak extra (MiB) |");
    println!("|---|---|---|---|---|---|");
    for &g in &grids {
        let n = g * g + 1;
        let mut init = Init::new(g as u64);
        let q = Matrix::from_vec(n, d, init.normal(n * d, 1.0))?;
        let k = Matrix::from_vec(n, d, init.normal(n * d, 1.0))?;
        let v = Matrix::from_vec(n, d, init.normal(n * d, 1.0))?;
        let dout = Matrix::from_vec(n, d, init.normal(n * d, 1.0))?;
        let inputs = AttentionInputs::new(&q, &k, &v, HEADS);
        // LSH hashes the patch tokens' features (the class token is linked to every patch).
        let patch_features = Matrix::from_fn(g * g, d, |r, c| q.get(r + 1, c));
        let score = Score::Dot { scale: 1.0 / (HEAD_DIM as f32).sqrt() };
        let grid = TokenGrid { rows: g, cols: g, prefix: 1 };
        for &method in &methods {
            let spec: GraphSpec = match method {
                "complete" => "complete".into(),
                "window" => "nat:7".into(),
                "bigbird" => "bigbird:7:3:0".into(),
                "lsh" => "lsh:16:1:0:32".into(),
                "performer" => "performer:266:0".into(),
                "linformer" => "linformer:256".into(),
                _ => format!("nystrom:{}:33", if g >= 16 { 256 } else { 49 }),
            }
            .parse()?;
            let mut row = [None, None];
            let mut peaks = [0.0, 0.0];
            for (slot, backward) in [false, true].into_iter().enumerate() {
                let growth = if method == "complete" { 2.0 } else { 1.0 };
                if let Some(&(n0, t0)) = last.get(&(method.to_string(), backward)) {
                    if t0 * (n as f64 / n0 as f64).powf(growth) > budget {
                        continue;
                    }
                }
                let (secs, peak) = match &spec {
                    GraphSpec::LowRank(m) => {
                        let lr = LowRankAttention::new(m, grid, HEADS, HEAD_DIM, 0, &mut Init::new(1))?;
                        time(runs, &probe, || {
                            let (_, cache) = lr.forward(&inputs, None)?;
                            if backward {
                                let mut grads = lr.zero_grads();
                                lr.backward(&inputs, None, &cache, &dout, &mut grads)?;
                            }
                            Ok(())
                        })?
                    }
                    _ => {
                        // Static graphs are built once (a ViT builds them once per forward for all
                        // layers); LSH hashes the layer's features inside every call.
                        let fixed = if spec.needs_features() { None } else { Some(spec.build(g, g, None, true)?) };
                        if let (Some(dir), Some(graph)) = (&export, &fixed) {
                            let (src, dst) = graph.edge_index();
                            let mut map = TensorMap::default();
                            let data = src.iter().chain(&dst).map(|&i| i as f32).collect();
                            map.insert("edge_index", vec![2, src.len()], data)?;
                            map.save_npz(dir.join(format!("{method}_{n}.npz")))?;
                        }
                        time(runs, &probe, || {
                            let hashed;
                            let graph = match &fixed {
                                Some(graph) => graph,
                                None => {
                                    hashed = spec.build(g, g, Some(&patch_features), true)?;
                                    &hashed
                                }
                            };
                            let out = attend(graph, &score, &inputs, Path::Auto, false)?;
                            if backward {
                                attend_backward(graph, &score, &inputs, &out.log_sum_exp, &dout)?;
                            }
                            Ok(())
                        })?
                    }
                };
                last.insert((method.to_string(), backward), (n, secs));
                row[slot] = Some(secs);
                peaks[slot] = peak;
                records.push(serde_json::json!({
                    "peer": "patchgraph", "op": format!("efficient_{method}_{}", if backward { "fwdbwd" } else { "fwd" }),
                    "B": 1, "N": n, "H": HEADS, "d": HEAD_DIM, "median_ms": secs * 1e3, "peak_extra_mib": peak,
                    "spec": spec.to_string(), "threads": rayon::current_num_threads(),
                }));
            }
            let ms = |t: Option<f64>| t.map_or("over budget".to_string(), |t| format!("{:.2}", t * 1e3));
            println!("| {method} | {n} | {} | {} | {:.1} | {:.1} |", ms(row[0]), ms(row[1]), peaks[0], peaks[1]);
        }
    }
    Ok(records)
}

fn main() -> Result<()> {
    patchgraph::train::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "cargo run --release --example efficient_sweep -- [--grids 14,28,56,112,224] [--budget 60] \
                         [--runs 3] [--methods complete,window,...] [--json FILE] [--plot FILE.png] \
                         [--peers PEERS.json] [--from FILE.json] [--export-graphs DIR]";
    const FLAGS: [&str; 9] =
        ["--grids", "--budget", "--runs", "--methods", "--json", "--plot", "--peers", "--from", "--export-graphs"];
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    // Every flag takes one value; anything else is an error, not silently a full sweep.
    for pair in args.chunks(2) {
        if !FLAGS.contains(&pair[0].as_str()) || pair.len() < 2 {
            return Err(patchgraph::Error::invalid(
                "efficient_sweep arguments",
                format!("`{}` is not a flag with a value; usage: {USAGE}", pair[0]),
            ));
        }
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    // Measure, or (`--from FILE.json`) read the records of an earlier run to plot them.
    let records = match value("--from") {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| patchgraph::Error::Io { path: file.clone().into(), source })?;
            serde_json::from_str(&text).map_err(|e| patchgraph::Error::Format { path: file, reason: e.to_string() })?
        }
        None => measure(&value)?,
    };
    if let Some(path) = value("--json") {
        patchgraph::atomic_file::write_atomically(
            std::path::Path::new(&path),
            serde_json::to_string_pretty(&records).unwrap_or_default().as_bytes(),
        )?;
    }
    if let Some(path) = value("--plot") {
        // Forward and forward + backward time against N, ours and (with --peers) the peers', and
        // our peak extra memory: one line per method.
        let mut time = [Vec::new(), Vec::new()];
        let mut memory = Vec::new();
        for r in &records {
            let (Some(op), Some(ms), Some(n)) = (r["op"].as_str(), r["median_ms"].as_f64(), r["N"].as_u64()) else {
                continue;
            };
            let Some(rest) = op.strip_prefix("efficient_") else { continue };
            let (method, slot) = match rest.strip_suffix("_fwdbwd") {
                Some(m) => (m, 1),
                None => (rest.trim_end_matches("_fwd"), 0),
            };
            time[slot].push(ScalingPoint { method: method.into(), n: n as usize, value: ms });
            if slot == 0 {
                let mib = r["peak_extra_mib"].as_f64().unwrap_or(0.0).max(0.1);
                memory.push(ScalingPoint { method: method.into(), n: n as usize, value: mib });
            }
        }
        // The peers' times from `scripts/bench_peers.py --only efficient --json FILE`.
        if let Some(peers) = value("--peers") {
            let text = std::fs::read_to_string(&peers)
                .map_err(|source| patchgraph::Error::Io { path: peers.clone().into(), source })?;
            let list: Vec<serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| patchgraph::Error::Format { path: peers.clone(), reason: e.to_string() })?;
            for r in list {
                let (Some(op), Some(ms), Some(n)) = (r["op"].as_str(), r["median_ms"].as_f64(), r["N"].as_u64()) else {
                    continue;
                };
                let Some(rest) = op.strip_prefix("efficient_") else { continue };
                let (core, slot) = match rest.strip_suffix("_fwdbwd") {
                    Some(m) => (m, 1),
                    None => (rest.trim_end_matches("_fwd"), 0),
                };
                let peer = r["peer"].as_str().unwrap_or("peer");
                let method = format!("PyTorch {peer} ({core})");
                time[slot].push(ScalingPoint { method, n: n as usize, value: ms });
            }
        }
        let [forward, both] = time;
        let panel = |caption: &str, value: &str, points| ScalingPanel {
            caption: caption.into(),
            value: value.into(),
            scale: Scale::Log,
            points,
        };
        let panels = [
            panel("forward", "median time (ms)", forward),
            panel("forward + backward", "median time (ms)", both),
            panel("peak extra memory, forward (ours)", "MiB", memory),
        ];
        let title = "one attention layer, 12 heads of 64: every method against N";
        plot_scaling(title, &panels, std::path::Path::new(&path))?;
    }
    Ok(())
}
