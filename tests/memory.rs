//! Dense attention streams key/value tiles: its extra memory is O(N d), not O(N^2).
//!
//! N = 12,545 tokens (patch size 2 on 224 pixels, plus a class token): one head's score matrix
//! alone would be 12,545^2 floats = 600 MiB, two heads 1.2 GiB. The whole test process (its
//! own binary: this file holds one test) must peak far below that. Measured as the process's
//! resident high-water mark (`VmHWM` in `/proc/self/status`), so transient reservations that
//! are never touched (faer's GEMM reserves a packing buffer sized by the cache blocking, up to
//! 64 MiB per call) do not count, and everything the kernel writes does.

use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::nn::Init;
use patchgraph::{Graph, Matrix};

/// The process's peak resident set, in MiB (Linux).
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
fn dense_attention_at_n_12545_needs_o_n_d_memory() {
    let (n, heads, d) = (12_545, 2, 32);
    let mut init = Init::new(0);
    let mut random = || Matrix::from_vec(n, heads * d, init.normal(n * heads * d, 1.0)).unwrap();
    let (q, k, v) = (random(), random(), random());
    let graph = Graph::complete(n, true);
    let out = attend(&graph, &Score::Dot { scale: 0.2 }, &AttentionInputs::new(&q, &k, &v, heads), Path::Dense, false)
        .unwrap();
    assert!(out.out.as_slice().iter().all(|x| x.is_finite()));
    assert_eq!(out.log_sum_exp.len(), n * heads);
    let Some(peak) = peak_resident_mib() else {
        eprintln!("no /proc/self/status here: memory not measured");
        return;
    };
    // Inputs and output: 4 x 3.1 MiB; the binary, the test harness and the thread stacks: tens
    // of MiB. The N^2 scores of the two heads would add 1.2 GiB.
    eprintln!("peak resident memory: {peak:.1} MiB");
    assert!(peak < 256.0, "the process peaked at {peak:.0} MiB resident");
}
