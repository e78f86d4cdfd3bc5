//! `bench`: the sweep behind `patchgraph bench` — dense versus sparse attention over sizes,
//! graphs and scores, timed as medians, with GFLOP/s, peak extra memory and the measured
//! dense/sparse crossover density.
//!
//! Shapes follow ViT-B and `scripts/bench_peers.py`: `N = 1 + g*g` tokens (a class token and a
//! `g x g` patch grid), sparse graphs are spatial k-NN over the grid with the class token linked
//! both ways to every patch.
//!
//! ```
//! use patchgraph::bench::{Case, GraphKind, NoMemoryProbe, run_case};
//! let case = Case { score: "dot".into(), batch: 1, grid: 3, graph: GraphKind::Knn(4), heads: 2, head_dim: 8 };
//! let record = run_case(&case, 3, &NoMemoryProbe).unwrap();
//! assert_eq!(record.nodes, 10);
//! // 9 patches x 4 neighbours, plus the class token: 9 edges in, 9 out, its self-loop.
//! assert_eq!(record.edges, 9 * 4 + 2 * 9 + 1);
//! assert!(record.median_ms >= 0.0);
//! ```

use crate::attention::{AttentionInputs, Path, Score, attend};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::nn::Init;
use crate::tensor::Matrix;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Which graph a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GraphKind {
    /// The complete graph with self-loops (the dense kernel).
    Complete,
    /// Spatial k-NN over the patch grid plus the class token (the sparse kernel).
    Knn(usize),
    /// `k` random sources per node (seeded; the sparse kernel), for the crossover.
    Random(usize),
}

/// One benchmark case.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Case {
    /// `dot`, `gat` or `gatv2`.
    pub score: String,
    /// Images per batch (a disjoint union).
    pub batch: usize,
    /// Patch-grid side `g`: `N = g*g + 1` tokens per image.
    pub grid: usize,
    /// The graph.
    pub graph: GraphKind,
    /// Heads `H`.
    pub heads: usize,
    /// Width per head `d`.
    pub head_dim: usize,
}

/// One measured case.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The case.
    pub case: Case,
    /// `dense` or `sparse`.
    pub path: String,
    /// Nodes of the whole batch.
    pub nodes: usize,
    /// Edges of the whole batch.
    pub edges: usize,
    /// Median wall time of one attention call, ms.
    pub median_ms: f64,
    /// Useful GFLOP/s (dot score: `4 E H d`; GAT: `2 E H d`; GATv2: `5 E H d`).
    pub gflops: f64,
    /// Peak bytes allocated during one call beyond what was live before it, MiB. Allocation
    /// counts, not resident memory: when faer's GEMM reserves its packing buffer (sized by the
    /// cache blocking, up to 64 MiB, mostly untouched) during the call, it is included.
    pub peak_extra_mib: f64,
}

/// Reports the peak heap use around a call (the binary counts with a global allocator).
pub trait MemoryProbe {
    /// Starts a measurement.
    fn reset(&self);
    /// Peak bytes allocated since `reset` beyond what was live then.
    fn peak_extra_bytes(&self) -> usize;
}

/// A probe that measures nothing (reports 0).
pub struct NoMemoryProbe;

impl MemoryProbe for NoMemoryProbe {
    fn reset(&self) {}
    fn peak_extra_bytes(&self) -> usize {
        0
    }
}

fn score_of(name: &str, heads: usize, d: usize, init: &mut Init) -> Result<Score> {
    match name {
        "dot" => Ok(Score::Dot { scale: 1.0 / (d as f32).sqrt() }),
        "gat" => Ok(Score::Gat { negative_slope: 0.2 }),
        "gatv2" => Ok(Score::GatV2 { attention: init.normal(heads * d, 0.1), negative_slope: 0.2 }),
        other => Err(Error::invalid("bench score", format!("`{other}`: expected dot, gat or gatv2"))),
    }
}

/// The graph of one image of the case.
pub fn case_graph(case: &Case) -> Result<Graph> {
    let g = case.grid;
    let n = g * g + 1;
    Ok(match case.graph {
        GraphKind::Complete => Graph::complete(n, true),
        GraphKind::Knn(k) => Graph::spatial_knn(g, g, k, true)?.with_global_node(true),
        GraphKind::Random(k) => Graph::random(n, k.min(n), 7, true)?,
    })
}

/// Runs one case `runs` times after a warm-up call; returns the median and the peak memory.
pub fn run_case(case: &Case, runs: usize, memory: &dyn MemoryProbe) -> Result<Record> {
    let one = case_graph(case)?;
    let graph = Graph::disjoint_union(&vec![one; case.batch.max(1)])?;
    let (n, h, d) = (graph.num_nodes(), case.heads, case.head_dim);
    let mut init = Init::new(n as u64);
    let score = score_of(&case.score, h, d, &mut init)?;
    let qk_width = if case.score == "gat" { h } else { h * d };
    let random = |init: &mut Init, cols: usize| Matrix::from_vec(n, cols, init.normal(n * cols, 1.0));
    let (q, k, v) = (random(&mut init, qk_width)?, random(&mut init, qk_width)?, random(&mut init, h * d)?);
    let inputs = AttentionInputs::new(&q, &k, &v, h);
    let path = if graph.is_complete() { Path::Dense } else { Path::Sparse };
    // The measurement is the second call, after a warm-up.
    attend(&graph, &score, &inputs, path, false)?;
    memory.reset();
    attend(&graph, &score, &inputs, path, false)?;
    let peak = memory.peak_extra_bytes();
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        std::hint::black_box(attend(&graph, &score, &inputs, path, false)?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median_ms = times[times.len() / 2];
    let e = graph.num_edges();
    let flops_per_edge_head = match case.score.as_str() {
        "dot" => 4 * d,
        "gat" => 2 * d,
        _ => 5 * d,
    };
    Ok(Record {
        case: case.clone(),
        path: if path == Path::Dense { "dense" } else { "sparse" }.into(),
        nodes: n,
        edges: e,
        median_ms,
        gflops: (e * h * flops_per_edge_head) as f64 / (median_ms * 1e-3) / 1e9,
        peak_extra_mib: peak as f64 / (1024.0 * 1024.0),
    })
}

/// The measured crossover for one size: the smallest edge density `E / N^2` at which the
/// sparse kernel on a random graph is no faster than the dense kernel on the complete graph
/// (dot score, batch 1). `None` if sparse stays faster up to the complete degree.
pub fn crossover(grid: usize, heads: usize, head_dim: usize, runs: usize) -> Result<Option<(usize, f64)>> {
    let n = grid * grid + 1;
    let dense = run_case(
        &Case { score: "dot".into(), batch: 1, grid, graph: GraphKind::Complete, heads, head_dim },
        runs,
        &NoMemoryProbe,
    )?;
    let mut k = 4;
    while k < n {
        let case = Case { score: "dot".into(), batch: 1, grid, graph: GraphKind::Random(k), heads, head_dim };
        let sparse = run_case(&case, runs, &NoMemoryProbe)?;
        if sparse.median_ms >= dense.median_ms {
            return Ok(Some((k, k as f64 / n as f64)));
        }
        k = (k * 3).div_ceil(2);
    }
    Ok(None)
}

/// Counts live heap bytes and their peak, for peak-extra-memory columns. Install it in a binary:
/// `#[global_allocator] static A: CountingAllocator = CountingAllocator;`, then measure with
/// [`HeapProbe`].
pub struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// statistics (relaxed atomics), never used to decide anything about memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's: a valid, non-zero-sized layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was returned by `System.alloc` with this `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Peak heap use since `reset`, beyond what was live at `reset` (counted by
/// [`CountingAllocator`], which the binary must install as its global allocator).
#[derive(Debug, Default)]
pub struct HeapProbe {
    base: AtomicUsize,
}

impl MemoryProbe for HeapProbe {
    fn reset(&self) {
        let live = LIVE.load(Ordering::Relaxed);
        self.base.store(live, Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
    }
    fn peak_extra_bytes(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base.load(Ordering::Relaxed))
    }
}
