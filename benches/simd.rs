//! SIMD primitives bench: `simd::exp_sub_sum` (the softmax inner loop: `x = exp(x - m)`, sum)
//! against a plain `f32::exp` loop (`simd::exp_sub_sum_scalar`), on rows of N = 197, 3137 and
//! 4096 floats (ViT-B/16 at 224 px and 448 px, and a power of two). Scores uniform in [-8, 8]
//! from a fixed seed, `m` their max; each sample starts from a fresh copy of the row (the copy
//! is not timed). Time / N is the cost per element.
//!
//! `all_finite` (the NaN/inf fold behind every input check: the OR of `x - x`) against
//! `all_finite_scalar`, on ViT-B's q, k and v at N = 197 (453,888 floats) and at N = 3137.
//!
//! Run: `cargo bench --bench simd` (sample size 20: under a minute).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use patchgraph::kernels::simd;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

fn exp_sub_sum(c: &mut Criterion) {
    eprintln!("simd level on this machine: {}", simd::level().name());
    let mut group = c.benchmark_group("exp_sub_sum");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in [197usize, 3137, 4096] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let row: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 16.0 - 8.0).collect();
        let m = simd::max(&row);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("simd", n), &row, |b, row| {
            b.iter_batched_ref(|| row.clone(), |x| simd::exp_sub_sum(black_box(x), black_box(m)), BatchSize::SmallInput)
        });
        group.bench_with_input(BenchmarkId::new("scalar_f32_exp", n), &row, |b, row| {
            b.iter_batched_ref(
                || row.clone(),
                |x| simd::exp_sub_sum_scalar(black_box(x), black_box(m)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn all_finite(c: &mut Criterion) {
    let mut group = c.benchmark_group("all_finite");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in [197usize, 3137] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let x: Vec<f32> = (0..3 * n * 768).map(|_| rng.random::<f32>() * 16.0 - 8.0).collect();
        group.throughput(Throughput::Elements(x.len() as u64));
        group.bench_with_input(BenchmarkId::new("simd", n), &x, |b, x| b.iter(|| simd::all_finite(black_box(x))));
        group.bench_with_input(BenchmarkId::new("scalar", n), &x, |b, x| {
            b.iter(|| simd::all_finite_scalar(black_box(x)))
        });
    }
    group.finish();
}

criterion_group!(benches, exp_sub_sum, all_finite);
criterion_main!(benches);
