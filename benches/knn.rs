//! Feature k-NN bench: `Graph::feature_knn` at ViG's settings (k = 9, dilation 1, L2) on
//! D = 768 features for N = 197, 785, 3137 (ViT-B/16 at 224 px, 112 px / 8 px patches, and
//! 448 px), uniform random features from a fixed seed.
//!
//! Run: `cargo bench --bench knn` (sample size 10: a minute or two).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use patchgraph::Matrix;
use patchgraph::graph::{Graph, KnnOptions, Metric};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn feature_knn(c: &mut Criterion) {
    let dim = 768;
    let opts = KnnOptions { k: 9, dilation: 1, metric: Metric::L2, include_self: true };
    let mut group = c.benchmark_group("feature_knn_d768_k9");
    group.sample_size(10);
    for n in [197usize, 785, 3137] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let x = Matrix::from_fn(n, dim, |_, _| rng.random::<f32>() * 2.0 - 1.0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &x, |b, x| {
            b.iter(|| Graph::feature_knn(black_box(x), &opts))
        });
    }
    group.finish();
}

criterion_group!(benches, feature_knn);
criterion_main!(benches);
