//! Dense attention streams key/value tiles: its extra memory is O(N d), not O(N^2).
//!
//! N = 12,545 tokens (patch size 2 on 224 pixels, plus a class token): the score matrix alone
//! would be 12,545^2 floats = 600 MiB per head. The kernel must stay far below that. Measured
//! with a counting global allocator (this test binary only).

use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::nn::Init;
use patchgraph::{Graph, Matrix};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counters are statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn dense_attention_at_n_12545_needs_o_n_d_memory() {
    let (n, heads, d) = (12_545, 2, 32);
    let mut init = Init::new(0);
    let mut random = || Matrix::from_vec(n, heads * d, init.normal(n * heads * d, 1.0)).unwrap();
    let (q, k, v) = (random(), random(), random());
    let graph = Graph::complete(n, true);
    // Warm up on a small problem first: faer's GEMM allocates its per-thread packing workspace
    // once (about 128 MiB here, whatever the problem size); that is not the kernel's memory.
    let small = Matrix::zeros(300, heads * d);
    attend(
        &Graph::complete(300, true),
        &Score::Dot { scale: 0.2 },
        &AttentionInputs::new(&small, &small, &small, heads),
        Path::Dense,
        false,
    )
    .unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = attend(&graph, &Score::Dot { scale: 0.2 }, &AttentionInputs::new(&q, &k, &v, heads), Path::Dense, false)
        .unwrap();
    let extra = PEAK.load(Ordering::Relaxed) - before;
    let inputs_bytes = 3 * n * heads * d * 4;
    assert!(out.out.as_slice().iter().all(|x| x.is_finite()));
    // Output + lse (n * heads * (d + 1) floats) plus per-thread tiles: a few MiB; the N^2
    // score matrix of one head would be 600 MiB.
    assert!(extra < 64 << 20, "dense attention used {} MiB extra (inputs: {} MiB)", extra >> 20, inputs_bytes >> 20);
}
