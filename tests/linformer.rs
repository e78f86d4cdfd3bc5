//! Linformer attention: the fast kernels against the f64 references, against exact attention
//! (k = n, E = F = I), against the peer (lucidrains' `linformer`, fixture written by
//! `scripts/make_efficient_fixtures.py`), the backward against central finite differences of an
//! f64 forward written here, determinism across thread counts, and the typed errors.

use patchgraph::attention::linformer::{
    LinformerGrads, linformer_backward, linformer_backward_reference, linformer_forward, linformer_init,
    linformer_reference,
};
use patchgraph::attention::{AttentionInputs, Path, Score, attend, attend_backward};
use patchgraph::checkpoint::TensorMap;
use patchgraph::nn::Init;
use patchgraph::{Error, Graph, Matrix};
use serde_json::Value;

fn randn(rows: usize, cols: usize, seed: u64, std: f32) -> Matrix {
    Matrix::from_vec(rows, cols, Init::new(seed).normal(rows * cols, std)).unwrap()
}

fn offsets(blocks: usize, n: usize) -> Vec<usize> {
    (0..=blocks).map(|b| b * n).collect()
}

/// `max |ours - want| <= tol * max |want|`, with a reference that is not all zeros.
fn rel_close(what: &str, ours: &Matrix, want: &Matrix, tol: f32) {
    assert_eq!(ours.shape(), want.shape(), "{what}: shape");
    let scale = want.max_abs();
    assert!(scale > 0.0, "{what}: reference is all zeros, the test would be blind");
    let diff = ours.max_abs_diff(want);
    assert!(diff <= tol * scale, "{what}: max diff {diff:e} > {tol:e} * scale {scale:e}");
}

/// [`rel_close`] for a gradient; with a single projected key (`k = 1`) the softmax is the
/// constant 1, so the gradients of q, k and E vanish exactly: then ours must be (nearly) zero.
fn grad_close(what: &str, ours: &Matrix, want: &Matrix, single_key: bool) {
    if single_key && want.max_abs() == 0.0 {
        assert!(ours.max_abs() <= 1e-6, "{what}: k = 1 has no gradient through the softmax, got {}", ours.max_abs());
    } else {
        rel_close(what, ours, want, 1e-4);
    }
}

fn bits(m: &Matrix) -> Vec<u32> {
    m.as_slice().iter().map(|x| x.to_bits()).collect()
}

fn grads_bits(g: &LinformerGrads) -> Vec<Vec<u32>> {
    [&g.query, &g.key, &g.value, &g.e, &g.f].iter().map(|m| bits(m)).collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

/// (a) The fast forward and backward equal the f64 references over token counts around the
/// SIMD widths and the query tile, every k, 1-3 heads, batches of 2-3 blocks, `dv != d` in some
/// cases; and give the same bits on 1, 2 and 3 threads.
#[test]
fn fast_matches_the_f64_reference_and_is_deterministic() {
    let mut seed = 0u64;
    let mut narrow_values = 0;
    for (a, &n) in [1usize, 15, 16, 17, 63, 64, 65, 197].iter().enumerate() {
        for (b, &k) in [1usize, 8, 16, 64].iter().enumerate() {
            seed += 10;
            let heads = 1 + (a + b) % 3;
            let blocks = 2 + (a + 2 * b) % 2;
            let d = [4, 8, 16][(a + b) % 3];
            let dv = if (a + b) % 4 == 1 { d + 3 } else { d };
            narrow_values += usize::from(dv != d);
            let rows = blocks * n;
            let (q, kk, v) = (
                randn(rows, heads * d, seed, 1.0),
                randn(rows, heads * d, seed + 1, 1.0),
                randn(rows, heads * dv, seed + 2, 1.0),
            );
            let (e, f) = (linformer_init(n, k, seed + 3).unwrap(), linformer_init(n, k, seed + 4).unwrap());
            let dout = randn(rows, heads * dv, seed + 5, 1.0);
            let inputs = AttentionInputs::new(&q, &kk, &v, heads);
            let bl = offsets(blocks, n);
            let what = format!("n={n} k={k} H={heads} d={d} dv={dv} B={blocks}");

            let runs: Vec<(Matrix, LinformerGrads)> = [1, 2, 3]
                .iter()
                .map(|&t| {
                    pool(t).install(|| {
                        let (out, cache) = linformer_forward(&inputs, &bl, &e, &f).unwrap();
                        let g = linformer_backward(&inputs, &bl, &e, &f, &cache, &dout).unwrap();
                        (out, g)
                    })
                })
                .collect();
            for (t, (out, g)) in runs.iter().enumerate().skip(1) {
                assert_eq!(bits(out), bits(&runs[0].0), "{what}: forward differs on {} threads", t + 1);
                assert_eq!(grads_bits(g), grads_bits(&runs[0].1), "{what}: backward differs on {} threads", t + 1);
            }

            let (out, g) = &runs[0];
            let want = linformer_reference(&inputs, &bl, &e, &f).unwrap();
            rel_close(&format!("{what}: out"), out, &want, 1e-5);
            let wg = linformer_backward_reference(&inputs, &bl, &e, &f, &dout).unwrap();
            grad_close(&format!("{what}: dq"), &g.query, &wg.query, k == 1);
            grad_close(&format!("{what}: dk"), &g.key, &wg.key, k == 1);
            grad_close(&format!("{what}: dv"), &g.value, &wg.value, k == 1);
            grad_close(&format!("{what}: dE"), &g.e, &wg.e, k == 1);
            grad_close(&format!("{what}: dF"), &g.f, &wg.f, k == 1);
        }
    }
    assert!(narrow_values > 0);
}

/// Several query tiles per block (n = 300: three tiles of 100 rows) and many blocks: the
/// partial dK', dV' of the tiles and the dE, dF sums over blocks reduce in a fixed order.
#[test]
fn several_query_tiles_are_deterministic_and_exact() {
    let (n, k, heads, d, blocks) = (300, 24, 2, 8, 3);
    let rows = blocks * n;
    let (q, kk, v) = (randn(rows, heads * d, 1, 1.0), randn(rows, heads * d, 2, 1.0), randn(rows, heads * d, 3, 1.0));
    let (e, f) = (linformer_init(n, k, 4).unwrap(), linformer_init(n, k, 5).unwrap());
    let dout = randn(rows, heads * d, 6, 1.0);
    let inputs = AttentionInputs::new(&q, &kk, &v, heads);
    let bl = offsets(blocks, n);
    let runs: Vec<(Matrix, LinformerGrads)> = [1, 2, 3]
        .iter()
        .map(|&t| {
            pool(t).install(|| {
                let (out, cache) = linformer_forward(&inputs, &bl, &e, &f).unwrap();
                (out, linformer_backward(&inputs, &bl, &e, &f, &cache, &dout).unwrap())
            })
        })
        .collect();
    for (out, g) in &runs[1..] {
        assert_eq!(bits(out), bits(&runs[0].0));
        assert_eq!(grads_bits(g), grads_bits(&runs[0].1));
    }
    let want = linformer_reference(&inputs, &bl, &e, &f).unwrap();
    rel_close("out", &runs[0].0, &want, 1e-5);
    let wg = linformer_backward_reference(&inputs, &bl, &e, &f, &dout).unwrap();
    for (name, ours, theirs) in [
        ("dq", &runs[0].1.query, &wg.query),
        ("dk", &runs[0].1.key, &wg.key),
        ("dv", &runs[0].1.value, &wg.value),
        ("dE", &runs[0].1.e, &wg.e),
        ("dF", &runs[0].1.f, &wg.f),
    ] {
        rel_close(name, ours, theirs, 1e-4);
    }
}

/// (b) With k = n and E = F = I the projection is the identity, and Linformer is exact softmax
/// attention on the complete graph with self-loops (dot score, scale 1/sqrt(d)): forward and
/// gradients of q, k, v. The projection is the only approximation.
#[test]
fn identity_projection_is_exact_attention() {
    for (n, heads, d, blocks) in [(1, 1, 4, 1), (16, 2, 8, 1), (17, 3, 4, 2), (65, 2, 16, 3), (197, 3, 8, 1)] {
        let rows = blocks * n;
        let (q, kk, v) =
            (randn(rows, heads * d, 7, 1.0), randn(rows, heads * d, 8, 1.0), randn(rows, heads * d, 9, 1.0));
        let eye = Matrix::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 });
        let inputs = AttentionInputs::new(&q, &kk, &v, heads);
        let bl = offsets(blocks, n);
        let (out, cache) = linformer_forward(&inputs, &bl, &eye, &eye).unwrap();
        let graph = Graph::disjoint_union(&vec![Graph::complete(n, true); blocks]).unwrap();
        let score = Score::Dot { scale: 1.0 / (d as f32).sqrt() };
        let exact = attend(&graph, &score, &inputs, Path::Reference, false).unwrap();
        let what = format!("n={n} H={heads} d={d} B={blocks}");
        rel_close(&format!("{what}: out"), &out, &exact.out, 1e-5);
        for (a, b) in cache.log_sum_exp().iter().zip(&exact.log_sum_exp) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: lse {a} vs {b}");
        }
        let dout = randn(rows, heads * d, 10, 1.0);
        let g = linformer_backward(&inputs, &bl, &eye, &eye, &cache, &dout).unwrap();
        let ge = attend_backward(&graph, &score, &inputs, &exact.log_sum_exp, &dout).unwrap();
        grad_close(&format!("{what}: dq"), &g.query, &ge.query, n == 1);
        grad_close(&format!("{what}: dk"), &g.key, &ge.key, n == 1);
        rel_close(&format!("{what}: dv"), &g.value, &ge.value, 1e-4);
    }
}

fn fixture_matrix(map: &TensorMap, name: &str) -> Matrix {
    let t = map.get(name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.shape.len(), 2, "{name}: {:?}", t.shape);
    Matrix::from_vec(t.shape[0], t.shape[1], t.data.clone()).unwrap()
}

/// (c) The peer: lucidrains' `LinformerSelfAttention` (its output before `to_out`, and autograd
/// gradients of `(out * dout).sum()`), one case without and one with `share_kv` (then `v = k`,
/// `dk`/`dv` are the two uses of the shared input, `dkv` their sum and `dproj_k` the total
/// gradient of the shared projection).
#[test]
fn matches_the_peer_fixture() {
    let path = format!("{}/tests/fixtures/efficient/linformer.safetensors", env!("CARGO_MANIFEST_DIR"));
    let map = TensorMap::load_safetensors(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases: Value = serde_json::from_str(&map.metadata()["cases"]).expect("cases metadata is JSON");
    let cases = cases.as_array().expect("cases is a list");
    assert!(cases.iter().any(|c| c["share_kv"] == true) && cases.iter().any(|c| c["share_kv"] == false));
    for (i, c) in cases.iter().enumerate() {
        let num = |key: &str| c[key].as_u64().unwrap_or_else(|| panic!("case {i} has no {key}")) as usize;
        let (n, heads, d, k) = (num("n"), num("heads"), num("dim_head"), num("k"));
        let share = c["share_kv"].as_bool().unwrap();
        let m = |name: &str| fixture_matrix(&map, &format!("c{i}.{name}"));
        let (q, kk, v, e, dout) = (m("q"), m("k"), m("v"), m("proj_k"), m("dout"));
        assert_eq!((q.shape(), e.shape()), ((n, heads * d), (n, k)), "case {i}");
        let f = if share { e.clone() } else { m("proj_v") };
        let inputs = AttentionInputs::new(&q, &kk, &v, heads);
        let (out, cache) = linformer_forward(&inputs, &[0, n], &e, &f).unwrap();
        rel_close(&format!("c{i} out"), &out, &m("out"), 1e-5);
        let g = linformer_backward(&inputs, &[0, n], &e, &f, &cache, &dout).unwrap();
        rel_close(&format!("c{i} dq"), &g.query, &m("dq"), 1e-4);
        rel_close(&format!("c{i} dk"), &g.key, &m("dk"), 1e-4);
        rel_close(&format!("c{i} dv"), &g.value, &m("dv"), 1e-4);
        if share {
            let de_total = Matrix::from_fn(n, k, |a, b| g.e.get(a, b) + g.f.get(a, b));
            rel_close(&format!("c{i} dproj_k (shared: dE + dF)"), &de_total, &m("dproj_k"), 1e-4);
            let dkv = Matrix::from_fn(n, heads * d, |a, b| g.key.get(a, b) + g.value.get(a, b));
            rel_close(&format!("c{i} dkv (shared input: dk + dv)"), &dkv, &m("dkv"), 1e-4);
        } else {
            rel_close(&format!("c{i} dproj_k"), &g.e, &m("dproj_k"), 1e-4);
            rel_close(&format!("c{i} dproj_v"), &g.f, &m("dproj_v"), 1e-4);
        }
    }
}

// ----- (d) finite differences of an f64 forward written here ------------------------------

struct Shape {
    blocks: usize,
    n: usize,
    k: usize,
    heads: usize,
    d: usize,
    dv: usize,
}

/// `L = sum(out * r)` for Linformer in f64, straight from the paper's formulas:
/// `out_bh = softmax(Q_bh (E^T K_b)_h^T / sqrt(d)) (F^T V_b)_h`.
fn loss64(s: &Shape, q: &[f64], k: &[f64], v: &[f64], e: &[f64], f: &[f64], r: &[f64]) -> f64 {
    let (hd, hdv) = (s.heads * s.d, s.heads * s.dv);
    let mut loss = 0.0;
    for b in 0..s.blocks {
        let row = |i: usize| b * s.n + i;
        // K'[j][c] = sum_i E[i][j] K[i][c],  V'[j][c] = sum_i F[i][j] V[i][c]
        let kp: Vec<f64> =
            (0..s.k * hd).map(|x| (0..s.n).map(|i| e[i * s.k + x / hd] * k[row(i) * hd + x % hd]).sum()).collect();
        let vp: Vec<f64> =
            (0..s.k * hdv).map(|x| (0..s.n).map(|i| f[i * s.k + x / hdv] * v[row(i) * hdv + x % hdv]).sum()).collect();
        for i in 0..s.n {
            for h in 0..s.heads {
                let scores: Vec<f64> = (0..s.k)
                    .map(|j| {
                        (0..s.d).map(|c| q[row(i) * hd + h * s.d + c] * kp[j * hd + h * s.d + c]).sum::<f64>()
                            / (s.d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                for c in 0..s.dv {
                    let o: f64 = (0..s.k).map(|j| (scores[j] - m).exp() / z * vp[j * hdv + h * s.dv + c]).sum();
                    loss += o * r[row(i) * hdv + h * s.dv + c];
                }
            }
        }
    }
    loss
}

fn f64s(m: &Matrix) -> Vec<f64> {
    m.as_slice().iter().map(|&x| x as f64).collect()
}

/// Central differences of `loss` in every element of `x`.
fn fd(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += H;
            let up = loss(&p);
            p[i] -= 2.0 * H;
            (up - loss(&p)) / (2.0 * H)
        })
        .collect()
}

fn fd_close(what: &str, ours: &Matrix, fd: &[f64]) {
    assert_eq!(ours.as_slice().len(), fd.len(), "{what}: length");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "{what}: gradient is ~0, the test would be blind");
    for (i, (a, b)) in ours.as_slice().iter().zip(fd).enumerate() {
        assert!((*a as f64 - b).abs() <= 2e-4 * scale + 1e-6, "{what}[{i}]: ours {a}, finite differences {b}");
    }
}

/// (d) The fast backward against central finite differences of [`loss64`], for q, k, v, E and
/// F, with and without key-value sharing (then the shared projection's gradient is dE + dF).
#[test]
fn backward_matches_finite_differences() {
    for (s, share) in [
        (Shape { blocks: 2, n: 5, k: 3, heads: 2, d: 3, dv: 2 }, false),
        (Shape { blocks: 1, n: 7, k: 7, heads: 1, d: 4, dv: 4 }, false),
        (Shape { blocks: 3, n: 4, k: 2, heads: 3, d: 2, dv: 3 }, true),
    ] {
        let rows = s.blocks * s.n;
        let (q, k, v) = (
            randn(rows, s.heads * s.d, 20, 1.0),
            randn(rows, s.heads * s.d, 21, 1.0),
            randn(rows, s.heads * s.dv, 22, 1.0),
        );
        let e = linformer_init(s.n, s.k, 23).unwrap();
        let f = if share { e.clone() } else { linformer_init(s.n, s.k, 24).unwrap() };
        let r = randn(rows, s.heads * s.dv, 25, 1.0);
        let inputs = AttentionInputs::new(&q, &k, &v, s.heads);
        let bl = offsets(s.blocks, s.n);
        let (_, cache) = linformer_forward(&inputs, &bl, &e, &f).unwrap();
        let g = linformer_backward(&inputs, &bl, &e, &f, &cache, &r).unwrap();
        let (q6, k6, v6, e6, f6, r6) = (f64s(&q), f64s(&k), f64s(&v), f64s(&e), f64s(&f), f64s(&r));
        let what = format!("B={} n={} k={} H={} share={share}", s.blocks, s.n, s.k, s.heads);
        fd_close(&format!("{what} dq"), &g.query, &fd(&q6, |x| loss64(&s, x, &k6, &v6, &e6, &f6, &r6)));
        fd_close(&format!("{what} dk"), &g.key, &fd(&k6, |x| loss64(&s, &q6, x, &v6, &e6, &f6, &r6)));
        fd_close(&format!("{what} dv"), &g.value, &fd(&v6, |x| loss64(&s, &q6, &k6, x, &e6, &f6, &r6)));
        if share {
            let total = Matrix::from_fn(s.n, s.k, |a, b| g.e.get(a, b) + g.f.get(a, b));
            fd_close(&format!("{what} dE+dF"), &total, &fd(&e6, |x| loss64(&s, &q6, &k6, &v6, x, x, &r6)));
        } else {
            fd_close(&format!("{what} dE"), &g.e, &fd(&e6, |x| loss64(&s, &q6, &k6, &v6, x, &f6, &r6)));
            fd_close(&format!("{what} dF"), &g.f, &fd(&f6, |x| loss64(&s, &q6, &k6, &v6, &e6, x, &r6)));
        }
    }
}

/// The initialisation is the peer's `U(-1/sqrt(k), 1/sqrt(k))`, seeded and reproducible, and
/// the cache holds `B k H (d + dv) + N H` floats.
#[test]
fn init_is_seeded_uniform_and_cache_is_small() {
    let (n, k) = (197, 64);
    let a = linformer_init(n, k, 3).unwrap();
    assert_eq!(a, linformer_init(n, k, 3).unwrap());
    assert_ne!(a, linformer_init(n, k, 4).unwrap());
    let bound = 1.0 / 8.0;
    assert!(a.as_slice().iter().all(|x| x.abs() <= bound));
    // U(-b, b): mean 0, variance b^2 / 3, and both ends reached.
    let m = a.as_slice().len() as f64;
    let mean = a.as_slice().iter().map(|&x| x as f64).sum::<f64>() / m;
    let var = a.as_slice().iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / m;
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((var / (bound as f64 * bound as f64 / 3.0) - 1.0).abs() < 0.05, "variance {var}");
    assert!(a.max_abs() > 0.99 * bound);

    let (blocks, heads, d, dv, kk) = (2, 3, 8, 5, 16);
    let x = randn(blocks * n, heads * d, 1, 1.0);
    let y = randn(blocks * n, heads * dv, 2, 1.0);
    let e = linformer_init(n, kk, 5).unwrap();
    let (out, cache) =
        linformer_forward(&AttentionInputs::new(&x, &x, &y, heads), &offsets(blocks, n), &e, &e).unwrap();
    assert_eq!(out.shape(), (blocks * n, heads * dv));
    assert_eq!(cache.floats(), blocks * kk * heads * (d + dv) + blocks * n * heads);
}

/// (e) Typed errors, before any work: another token count (naming seq_len and both counts),
/// k = 0, E and F of different shapes, NaN inputs, and the other misuses.
#[test]
fn misuse_is_a_typed_error() {
    let (n, k, heads, d) = (16, 4, 2, 4);
    let x = randn(2 * n, heads * d, 1, 1.0);
    let e = linformer_init(n, k, 2).unwrap();
    let good = AttentionInputs::new(&x, &x, &x, heads);
    let bl = offsets(2, n);
    assert!(linformer_forward(&good, &bl, &e, &e).is_ok());

    // Another token count: 17 tokens for a projection built for 16.
    let x17 = randn(17, heads * d, 3, 1.0);
    let err = linformer_forward(&AttentionInputs::new(&x17, &x17, &x17, heads), &[0, 17], &e, &e).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid { .. }), "{msg}");
    assert!(msg.contains("Linformer was built for n = 16 tokens") && msg.contains("got 17"), "{msg}");
    assert!(msg.contains("seq_len"), "{msg}");
    assert!(linformer_reference(&AttentionInputs::new(&x17, &x17, &x17, heads), &[0, 17], &e, &e).is_err());
    // A batch whose second block is short.
    let x31 = randn(31, heads * d, 3, 1.0);
    let err = linformer_forward(&AttentionInputs::new(&x31, &x31, &x31, heads), &[0, 16, 31], &e, &e).unwrap_err();
    assert!(err.to_string().contains("got 15"), "{err}");
    // Offsets that do not cover the rows.
    assert!(matches!(linformer_forward(&good, &[0, 16], &e, &e), Err(Error::Invalid { .. })));

    // k = 0.
    let e0 = Matrix::zeros(n, 0);
    let err = linformer_forward(&good, &bl, &e0, &e0).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains('k'), "{err}");
    assert!(matches!(linformer_init(n, 0, 0), Err(Error::Invalid { .. })));
    assert!(matches!(linformer_init(0, k, 0), Err(Error::Invalid { .. })));

    // E and F of different shapes.
    let f5 = linformer_init(n, k + 1, 3).unwrap();
    let err = linformer_forward(&good, &bl, &e, &f5).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(matches!(linformer_backward_reference(&good, &bl, &e, &f5, &x), Err(Error::Shape { .. })));

    // NaN in an input, in E, in dout.
    let mut bad = x.clone();
    bad.as_mut_slice()[37] = f32::NAN;
    let err = linformer_forward(&AttentionInputs::new(&x, &bad, &x, heads), &bl, &e, &e).unwrap_err();
    assert!(matches!(err, Error::NonFinite { position: 37, .. }), "{err}");
    let err = linformer_forward(&AttentionInputs::new(&bad, &x, &x, heads), &bl, &e, &e).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    let mut e_bad = e.clone();
    e_bad.as_mut_slice()[5] = f32::INFINITY;
    assert!(matches!(linformer_forward(&good, &bl, &e_bad, &e), Err(Error::NonFinite { position: 5, .. })));
    let (_, cache) = linformer_forward(&good, &bl, &e, &e).unwrap();
    assert!(matches!(linformer_backward(&good, &bl, &e, &e, &cache, &bad), Err(Error::NonFinite { .. })));

    // A NaN inside a column block is reported at its position in the block.
    let wide = Matrix::from_fn(2 * n, 3 * heads * d, |i, j| if (i, j) == (2, 9) { f32::NAN } else { 0.5 });
    let (qb, kb, vb) = (
        wide.column_block(0, heads * d).unwrap(),
        wide.column_block(heads * d, heads * d).unwrap(),
        wide.column_block(2 * heads * d, heads * d).unwrap(),
    );
    let err = linformer_forward(&AttentionInputs::new(qb, kb, vb, heads), &bl, &e, &e).unwrap_err();
    assert!(matches!(err, Error::NonFinite { position, .. } if position == 2 * heads * d + 1), "{err}");

    // Other misuses: zero heads, an edge bias, mismatched key width, wrong dout, a foreign cache.
    assert!(linformer_forward(&AttentionInputs::new(&x, &x, &x, 0), &bl, &e, &e).is_err());
    let bias = vec![0.0f32; 4];
    assert!(linformer_forward(&good.with_bias(&bias), &bl, &e, &e).is_err());
    let narrow = randn(2 * n, heads * 2, 4, 1.0);
    assert!(matches!(
        linformer_forward(&AttentionInputs::new(&x, &narrow, &x, heads), &bl, &e, &e),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(linformer_backward(&good, &bl, &e, &e, &cache, &narrow), Err(Error::Shape { .. })));
    let y = randn(2 * n, heads * d, 5, 1.0);
    let (_, other) = linformer_forward(&AttentionInputs::new(&y, &y, &narrow, heads), &bl, &e, &e).unwrap();
    assert!(matches!(linformer_backward(&good, &bl, &e, &e, &other, &x), Err(Error::Shape { .. })));
}
