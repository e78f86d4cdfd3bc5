//! Loading benchmark results into [`BenchPoint`]s: `patchgraph bench --json` files and
//! `scripts/bench_peers.py --json` files.
//!
//! **`patchgraph bench --json`** writes `{"records": [...], "crossovers": [...]}`, one record
//! per case ([`crate::bench::Record`]): `case.{score, batch, grid, graph}`, `path`,
//! `median_ms`, ... Each record becomes
//!
//! ```text
//! label = "{path} {score}"  (+ " random" for a random graph, + " B={batch}" when batch > 1)
//! n     = grid^2 + 1        (tokens per image: the patch grid and the class token)
//! k     = the k of {"Knn": k} or {"Random": k}, none for "Complete"
//! ms    = median_ms
//! ```
//!
//! e.g. `"dense dot"`, `"sparse gat"` with `k = 16`, `"dense dot B=8"`. `path` may be missing
//! (then `dense` for a complete graph, `sparse` otherwise), as may `batch` (1), the crossovers
//! and every other field; a bare array of records is accepted too.
//!
//! **`scripts/bench_peers.py --json`** writes an array of records `{"peer", "op", "B", "N",
//! "k", "median_ms", ...}`. Attention records become points, the rest are skipped:
//!
//! ```text
//! peer "torch", op "sdpa"          -> "PyTorch SDPA"
//! peer "pyg",   op "GATConv_knn16" -> "PyG GATConv" (k from the record: 16; none for "_complete")
//! (+ " B={B}" when B > 1; n = N; ms = median_ms)
//! skipped: torch_mm_2048 (a GEMM calibration), timm models and training runs (whole models)
//! ```
//!
//! Both loaders are strict about the file: unreadable ([`Error::Io`]), not JSON or a kept
//! record without its required fields ([`Error::Format`], naming the file and the record).
//!
//! ```
//! use patchgraph::viz::{load_patchgraph_bench, load_peer_bench};
//! let data = concat!(env!("CARGO_MANIFEST_DIR"), "/notes/data/");
//! let ours = load_patchgraph_bench(format!("{data}bench-2026-11-26-patchgraph.json").as_ref()).unwrap();
//! let sparse = ours.points.iter().find(|p| p.label == "sparse dot" && p.k == Some(16) && p.n == 197).unwrap();
//! assert!(sparse.ms > 0.0);
//! // The measured crossover at the largest N: density 0.116 at N = 3137 (k = 365).
//! assert!((ours.crossover_density().unwrap() - 0.1164).abs() < 1e-3);
//! let peers = load_peer_bench(format!("{data}bench-2026-11-26-peers.json").as_ref()).unwrap();
//! assert!(peers.iter().any(|p| p.label == "PyG GATConv" && p.k == Some(8)));
//! ```

use std::path::Path;

use serde::Deserialize;

use super::bench_plot::BenchPoint;
use crate::bench::GraphKind;
use crate::error::{Error, Result};

/// What a `patchgraph bench --json` file holds, as plot points.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchgraphBench {
    /// One point per record, in file order.
    pub points: Vec<BenchPoint>,
    /// The measured crossovers, one per size (empty if the file has none).
    pub crossovers: Vec<Crossover>,
}

/// One measured dense/sparse crossover (`patchgraph bench` without `--no-crossover`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Crossover {
    /// Tokens `N`.
    pub nodes: usize,
    /// The smallest random-graph degree at which sparse is no faster than dense (`None`: sparse
    /// stayed faster).
    #[serde(default)]
    pub k: Option<usize>,
    /// `k / N`, the edge density `E / N^2` of that graph.
    #[serde(default)]
    pub density: Option<f64>,
}

impl PatchgraphBench {
    /// The crossover density at the largest `N` that has one: what
    /// [`plot_bench`](super::plot_bench) marks on its time-against-`k` panel.
    pub fn crossover_density(&self) -> Option<f64> {
        self.crossovers.iter().filter(|c| c.density.is_some()).max_by_key(|c| c.nodes).and_then(|c| c.density)
    }
}

#[derive(Deserialize)]
struct OurRecord {
    case: OurCase,
    #[serde(default)]
    path: Option<String>,
    median_ms: f64,
}

#[derive(Deserialize)]
struct OurCase {
    score: String,
    #[serde(default = "one")]
    batch: usize,
    grid: usize,
    graph: GraphKind,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
struct PeerRecord {
    peer: String,
    op: String,
    #[serde(rename = "B", default)]
    batch: Option<usize>,
    #[serde(rename = "N", default)]
    n: Option<usize>,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    median_ms: Option<f64>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn malformed(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format { path: path.display().to_string(), reason: reason.into() }
}

fn batch_suffix(batch: usize) -> String {
    if batch > 1 { format!(" B={batch}") } else { String::new() }
}

/// Reads a `patchgraph bench --json` file (see the module docs for the mapping).
pub fn load_patchgraph_bench(path: &Path) -> Result<PatchgraphBench> {
    let text = read(path)?;
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(path, format!("not JSON: {e}")))?;
    let (records, crossovers) = match file {
        serde_json::Value::Object(mut object) => {
            let records = match object.remove("records") {
                Some(serde_json::Value::Array(records)) => records,
                _ => return Err(malformed(path, "not a patchgraph bench file: no \"records\" array")),
            };
            let crossovers = match object.remove("crossovers") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(value) => {
                    serde_json::from_value(value).map_err(|e| malformed(path, format!("crossovers: {e}")))?
                }
            };
            (records, crossovers)
        }
        serde_json::Value::Array(records) => (records, Vec::new()),
        _ => return Err(malformed(path, "not a patchgraph bench file: neither {\"records\": [...]} nor [...]")),
    };
    let mut points = Vec::with_capacity(records.len());
    for (i, value) in records.into_iter().enumerate() {
        let r: OurRecord = serde_json::from_value(value).map_err(|e| malformed(path, format!("records[{i}]: {e}")))?;
        let k = match r.case.graph {
            GraphKind::Complete => None,
            GraphKind::Knn(k) | GraphKind::Random(k) => Some(k),
        };
        let kernel = r.path.unwrap_or_else(|| if k.is_some() { "sparse" } else { "dense" }.into());
        let random = if matches!(r.case.graph, GraphKind::Random(_)) { " random" } else { "" };
        let n = r
            .case
            .grid
            .checked_mul(r.case.grid)
            .and_then(|g| g.checked_add(1))
            .ok_or_else(|| malformed(path, format!("records[{i}]: grid {} overflows", r.case.grid)))?;
        points.push(BenchPoint {
            label: format!("{kernel} {}{random}{}", r.case.score, batch_suffix(r.case.batch)),
            n,
            k,
            ms: r.median_ms,
        });
    }
    Ok(PatchgraphBench { points, crossovers })
}

/// Reads a `scripts/bench_peers.py --json` file (see the module docs for the mapping and
/// which records are kept).
pub fn load_peer_bench(path: &Path) -> Result<Vec<BenchPoint>> {
    let text = read(path)?;
    let records: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| malformed(path, format!("not a bench_peers.py file (a JSON array of records): {e}")))?;
    let mut points = Vec::new();
    for (i, value) in records.into_iter().enumerate() {
        let r: PeerRecord = serde_json::from_value(value).map_err(|e| malformed(path, format!("record {i}: {e}")))?;
        let label = match (r.peer.as_str(), r.op.as_str()) {
            ("torch", "sdpa") => "PyTorch SDPA".to_string(),
            ("pyg", op) => format!("PyG {}", op.split('_').next().unwrap_or(op)),
            _ => continue,
        };
        let missing = |field: &str| malformed(path, format!("record {i} ({} {}): no `{field}`", r.peer, r.op));
        let n = r.n.ok_or_else(|| missing("N"))?;
        let ms = r.median_ms.ok_or_else(|| missing("median_ms"))?;
        points.push(BenchPoint { label: format!("{label}{}", batch_suffix(r.batch.unwrap_or(1))), n, k: r.k, ms });
    }
    Ok(points)
}
