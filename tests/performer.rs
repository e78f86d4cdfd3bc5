//! Performer (FAVOR+) attention: the fast kernel (`kernels::favor`) against
//!
//! - (a) the kernel attention materialised pair by pair in f64 (`performer_reference`), over
//!   sizes around the SIMD widths and the 256-row tiles, batches of blocks, several heads and
//!   feature counts, with the same bits on 1, 2 and 3 threads;
//! - (b) exact softmax attention: the FAVOR+ error falls as `m` grows, like `1 / sqrt(m)`;
//! - (c) performer-pytorch itself (`FastAttention`, forward and autograd) on a fixture;
//! - (d) central finite differences of an f64 forward written here (stabilisers held fixed, as
//!   the peer's `.detach()`), and the f64 backward reference.

use patchgraph::attention::performer::{
    default_features, orthogonal_random_features, performer_backward_reference, performer_reference,
};
use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::checkpoint::TensorMap;
use patchgraph::kernels::favor::{FavorCache, favor_backward, favor_forward};
use patchgraph::nn::Init;
use patchgraph::{Error, Graph, Matrix};
use proptest::prelude::*;

/// `[rows x cols]` of `N(0, std^2)`, seeded.
fn gaussian(rows: usize, cols: usize, std: f32, seed: u64) -> Matrix {
    Matrix::from_vec(rows, cols, Init::new(seed).normal(rows * cols, std)).unwrap()
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// `max |ours - theirs| <= tol * max |theirs|`, with a non-zero reference.
fn assert_close(what: &str, ours: &Matrix, theirs: &Matrix, tol: f32) {
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let scale = theirs.max_abs();
    assert!(scale > 0.0, "{what}: the reference is all zeros, the test would be blind");
    let diff = ours.max_abs_diff(theirs);
    assert!(diff <= tol * scale, "{what}: max diff {diff:e} > {tol:e} * scale {scale:e}");
}

fn offsets(sizes: &[usize]) -> Vec<usize> {
    let mut b = vec![0];
    for s in sizes {
        b.push(b.last().unwrap() + s);
    }
    b
}

// ---------------------------------------------------------------------------------------------
// (a) the linear form equals the materialised kernel attention

#[test]
fn fast_forward_equals_the_materialised_kernel_attention() {
    let features = [1usize, 7, 16, 44];
    let mut case = 0u64;
    for (ni, &n) in [1usize, 15, 16, 17, 63, 64, 65, 300].iter().enumerate() {
        for (mi, &m) in features.iter().enumerate() {
            case += 1;
            // One image, or a batch of 2 or 3 images of different sizes.
            let sizes = match (ni + mi) % 3 {
                0 => vec![n],
                1 => vec![n, 1 + n / 3],
                _ => vec![5, n, 2 * n / 3 + 2],
            };
            let blocks = offsets(&sizes);
            let total = *blocks.last().unwrap();
            let heads = 1 + (ni + 2 * mi) % 3;
            let d = [4, 8, 5, 16][(ni + mi) % 4];
            let dv = if mi % 2 == 0 { d } else { d + 3 };
            // Small and large inputs: at std 1.5 many key features fall far below eps.
            let std = if case % 3 == 0 { 1.5 } else { 0.5 };
            let q = gaussian(total, heads * d, std, 10 * case);
            let k = gaussian(total, heads * d, std, 10 * case + 1);
            let v = gaussian(total, heads * dv, 1.0, 10 * case + 2);
            let w = orthogonal_random_features(m, d, case).unwrap();
            let inputs = AttentionInputs::new(&q, &k, &v, heads);
            let what = format!("N = {n}, blocks {sizes:?}, H = {heads}, d = {d}, dv = {dv}, m = {m}, std {std}");
            let oracle = performer_reference(&inputs, &blocks, &w).unwrap();
            let runs: Vec<Matrix> =
                (1..=3).map(|t| on_threads(t, || favor_forward(&inputs, &blocks, &w).unwrap().0)).collect();
            assert_close(&what, &runs[0], &oracle, 1e-5);
            assert_eq!(runs[0], runs[1], "{what}: 1 vs 2 threads");
            assert_eq!(runs[0], runs[2], "{what}: 1 vs 3 threads");
        }
    }
}

/// q, k, v as column blocks of one fused `[N x (q | k | v)]` projection give the bits of
/// separate matrices.
#[test]
fn column_blocks_of_a_fused_projection_read_in_place() {
    let (n, heads, d) = (40, 3, 8);
    let qkv = gaussian(n, 3 * heads * d, 0.5, 5);
    let w = orthogonal_random_features(default_features(d), d, 2).unwrap();
    let c = heads * d;
    let blocks = [0, 25, 40];
    let fused = AttentionInputs::new(
        qkv.column_block(0, c).unwrap(),
        qkv.column_block(c, c).unwrap(),
        qkv.column_block(2 * c, c).unwrap(),
        heads,
    );
    let (q, k, v) = (qkv.columns(0, c), qkv.columns(c, c), qkv.columns(2 * c, c));
    let split = AttentionInputs::new(&q, &k, &v, heads);
    let (a, cache) = favor_forward(&fused, &blocks, &w).unwrap();
    assert_eq!(a, favor_forward(&split, &blocks, &w).unwrap().0);
    let dout = gaussian(n, c, 1.0, 6);
    assert_eq!(
        favor_backward(&fused, &blocks, &w, &cache, &dout).unwrap(),
        favor_backward(&split, &blocks, &w, &cache, &dout).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) against exact softmax attention

/// `||ours - exact||_F / ||exact||_F`.
fn relative_error(ours: &Matrix, exact: &Matrix) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in ours.as_slice().iter().zip(exact.as_slice()) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den).sqrt()
}

/// The constant of the `C / sqrt(m)` bound, measured once (proptest, 64 seeds, 4 projections
/// each; `cargo test --test performer -- --ignored measure --nocapture`): the largest
/// `err(m) sqrt(m)` seen was 2.0 (m = 16: mean errors 0.34 / 0.17 / 0.080 / 0.040 at
/// m = 16 / 64 / 256 / 1024 for one typical seed). The bound allows 1.5 times that.
const ERROR_CONSTANT: f64 = 3.0;

/// The mean relative error of FAVOR+ against exact softmax attention on `Graph::complete(64,
/// true)`, `Score::Dot { scale: 1/sqrt(d) }`, for one input seed, over 4 projection seeds.
fn favor_errors(seed: u64, features: &[usize]) -> Vec<f64> {
    let (n, d) = (64, 16);
    let q = gaussian(n, d, QK_STD, seed.wrapping_mul(3));
    let k = gaussian(n, d, QK_STD, seed.wrapping_mul(3).wrapping_add(1));
    let v = gaussian(n, d, 0.3, seed.wrapping_mul(3).wrapping_add(2));
    let inputs = AttentionInputs::new(&q, &k, &v, 1);
    let exact =
        attend(&Graph::complete(n, true), &Score::Dot { scale: 1.0 / (d as f32).sqrt() }, &inputs, Path::Auto, false)
            .unwrap()
            .out;
    features
        .iter()
        .map(|&m| {
            let draws = DRAWS;
            (0..draws)
                .map(|p| {
                    let w =
                        orthogonal_random_features(m, d, seed ^ (p + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
                    relative_error(&favor_forward(&inputs, &[0, n], &w).unwrap().0, &exact)
                })
                .sum::<f64>()
                / draws as f64
        })
        .collect()
}

/// The standard deviation of the query and key entries.
const QK_STD: f32 = 0.3;

const FEATURES: [usize; 4] = [16, 64, 256, 1024];

/// Projections averaged per input and `m`. With 4 the ratio `err(16) / err(1024)` (about 5.5
/// on average: orthogonal rows help most when all `m <= d` rows are one block) spread from
/// 3.6 to 10 over 64 inputs, so `err(1024) < err(16) / 4` failed for 2 of them; 32 draws cut
/// that spread by sqrt(8).
const DRAWS: u64 = 32;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn favor_error_falls_like_one_over_sqrt_m(seed in any::<u64>()) {
        let err = favor_errors(seed, &FEATURES);
        for (m, e) in FEATURES.iter().zip(&err) {
            prop_assert!(*e <= ERROR_CONSTANT / (*m as f64).sqrt(), "m = {}: error {} > {} / sqrt(m); all {:?}", m, e, ERROR_CONSTANT, err);
        }
        prop_assert!(err[3] < err[0] / 4.0, "error(1024) = {} is not below error(16) / 4 = {}", err[3], err[0] / 4.0);
    }
}

/// How `ERROR_CONSTANT` was measured (not run by default).
#[test]
#[ignore]
fn measure_error_constant() {
    let (mut worst, mut lowest_ratio) = (0.0f64, f64::INFINITY);
    for seed in 0..64u64 {
        let err = favor_errors(seed.wrapping_mul(0x5851_f42d_4c95_7f2d), &FEATURES);
        let c = FEATURES.iter().zip(&err).map(|(m, e)| e * (*m as f64).sqrt()).fold(0.0, f64::max);
        worst = worst.max(c);
        lowest_ratio = lowest_ratio.min(err[0] / err[3]);
        println!("seed {seed}: errors {err:?}, max err sqrt(m) {c:.3}, ratio 16/1024 {:.2}", err[0] / err[3]);
    }
    println!("worst err sqrt(m): {worst:.3}, lowest err(16) / err(1024): {lowest_ratio:.2}");
}

// ---------------------------------------------------------------------------------------------
// (c) performer-pytorch's FastAttention, forward and autograd

/// A `[.., C]` tensor as a `[rows x C]` matrix.
fn fixture_matrix(map: &TensorMap, name: &str) -> Matrix {
    let t = map.get(name).unwrap_or_else(|e| panic!("{e}"));
    let c = *t.shape.last().unwrap();
    Matrix::from_vec(t.data.len() / c, c, t.data.clone()).unwrap()
}

#[test]
fn matches_performer_pytorch() {
    let path = format!("{}/tests/fixtures/efficient/performer.safetensors", env!("CARGO_MANIFEST_DIR"));
    let map = TensorMap::load_safetensors(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases: serde_json::Value = serde_json::from_str(&map.metadata()["cases"]).expect("`cases` metadata is JSON");
    let cases = cases.as_array().expect("`cases` is a list");
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        let num = |key: &str| c[key].as_u64().unwrap_or_else(|| panic!("case {i} has no integer {key}")) as usize;
        let (n, heads, d, m) = (num("n"), num("heads"), num("dim_head"), num("features"));
        let get = |t: &str| fixture_matrix(&map, &format!("c{i}.{t}"));
        let (q, k, v, w) = (get("q"), get("k"), get("v"), get("projection"));
        assert_eq!(q.shape(), (n, heads * d), "case {i}: q");
        assert_eq!(w.shape(), (m, d), "case {i}: projection");
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let (out, cache) = favor_forward(&inputs, &[0, n], &w).unwrap();
        let what = format!("case {i} (N = {n}, H = {heads}, d = {d}, m = {m})");
        assert_close(&format!("{what}: out"), &out, &get("out"), 1e-5);
        let (dq, dk, dv) = favor_backward(&inputs, &[0, n], &w, &cache, &get("dout")).unwrap();
        assert_close(&format!("{what}: dq"), &dq, &get("dq"), 1e-4);
        assert_close(&format!("{what}: dk"), &dk, &get("dk"), 1e-4);
        assert_close(&format!("{what}: dv"), &dv, &get("dv"), 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// (d) the backward

/// An f64 forward written from the formula, with the stabilisers given (held fixed):
/// `mq[i * H + h]` per query row and head, `mk[b * H + h]` per block and head.
struct F64Forward<'a> {
    blocks: &'a [usize],
    heads: usize,
    d: usize,
    dv: usize,
    w: &'a Matrix,
    mq: Vec<f64>,
    mk: Vec<f64>,
}

impl F64Forward<'_> {
    /// `w_r . x'` of a row `x` (head width `d`).
    fn dash(&self, x: &[f64], r: usize) -> f64 {
        let alpha = (self.d as f64).powf(-0.25);
        (0..self.d).map(|c| alpha * x[c] * self.w.get(r, c) as f64).sum()
    }

    fn phi(&self, x: &[f64], stabiliser: f64) -> Vec<f64> {
        let m = self.w.rows();
        let alpha2 = (self.d as f64).powf(-0.5);
        let diag = 0.5 * alpha2 * x.iter().map(|v| v * v).sum::<f64>();
        (0..m).map(|r| (m as f64).powf(-0.5) * ((self.dash(x, r) - diag - stabiliser).exp() + 1e-4)).collect()
    }

    /// The stabilisers at `(q, k)`: the peer's amax over features (queries) and over the block
    /// and features (keys).
    fn stabilise(&mut self, q: &[f64], k: &[f64]) {
        let (h_count, d, m) = (self.heads, self.d, self.w.rows());
        let cols = h_count * d;
        let n = *self.blocks.last().unwrap();
        self.mq = vec![0.0; n * h_count];
        self.mk = vec![f64::NEG_INFINITY; (self.blocks.len() - 1) * h_count];
        for b in 0..self.blocks.len() - 1 {
            for i in self.blocks[b]..self.blocks[b + 1] {
                for h in 0..h_count {
                    let qi = &q[i * cols + h * d..i * cols + (h + 1) * d];
                    let ki = &k[i * cols + h * d..i * cols + (h + 1) * d];
                    self.mq[i * h_count + h] = (0..m).map(|r| self.dash(qi, r)).fold(f64::NEG_INFINITY, f64::max);
                    let km = (0..m).map(|r| self.dash(ki, r)).fold(f64::NEG_INFINITY, f64::max);
                    self.mk[b * h_count + h] = self.mk[b * h_count + h].max(km);
                }
            }
        }
    }

    /// `sum(out * dout)`, out in the linear form.
    fn loss(&self, q: &[f64], k: &[f64], v: &[f64], dout: &[f64]) -> f64 {
        let (h_count, d, dv, m) = (self.heads, self.d, self.dv, self.w.rows());
        let (cols, vcols) = (h_count * d, h_count * dv);
        let mut loss = 0.0;
        for b in 0..self.blocks.len() - 1 {
            let rows = self.blocks[b]..self.blocks[b + 1];
            for h in 0..h_count {
                let mut ctx = vec![0.0f64; m * dv];
                let mut s = vec![0.0f64; m];
                for j in rows.clone() {
                    let pk = self.phi(&k[j * cols + h * d..j * cols + (h + 1) * d], self.mk[b * h_count + h]);
                    for r in 0..m {
                        s[r] += pk[r];
                        for c in 0..dv {
                            ctx[r * dv + c] += pk[r] * v[j * vcols + h * dv + c];
                        }
                    }
                }
                for i in rows.clone() {
                    let pq = self.phi(&q[i * cols + h * d..i * cols + (h + 1) * d], self.mq[i * h_count + h]);
                    let den: f64 = (0..m).map(|r| pq[r] * s[r]).sum();
                    for c in 0..dv {
                        let num: f64 = (0..m).map(|r| pq[r] * ctx[r * dv + c]).sum();
                        loss += num / den * dout[i * vcols + h * dv + c];
                    }
                }
            }
        }
        loss
    }
}

fn to_f64(m: &Matrix) -> Vec<f64> {
    m.as_slice().iter().map(|&v| v as f64).collect()
}

/// Central differences of `F64Forward::loss` at `entries` of input `which` (0 = q, 1 = k, 2 = v).
fn finite_differences(
    f: &F64Forward<'_>,
    qkv: [&Matrix; 3],
    dout: &Matrix,
    which: usize,
    entries: &[usize],
) -> Vec<(usize, f64)> {
    let mut x = [to_f64(qkv[0]), to_f64(qkv[1]), to_f64(qkv[2])];
    let g = to_f64(dout);
    let step = 1e-5;
    entries
        .iter()
        .map(|&e| {
            let x0 = x[which][e];
            x[which][e] = x0 + step;
            let up = f.loss(&x[0], &x[1], &x[2], &g);
            x[which][e] = x0 - step;
            let down = f.loss(&x[0], &x[1], &x[2], &g);
            x[which][e] = x0;
            (e, (up - down) / (2.0 * step))
        })
        .collect()
}

/// The fast backward against finite differences (every entry for the small shapes, a fixed
/// sample at N = 300) and against the f64 backward reference; same bits on 1, 2 and 3 threads.
#[test]
fn backward_matches_finite_differences_and_the_reference() {
    // (block sizes, heads, d, dv, m): one block, batches, m = 1, dv != d, and N = 300 (two tiles).
    let shapes: [(&[usize], usize, usize, usize, usize); 5] = [
        (&[5], 1, 3, 2, 4),
        (&[7, 3], 2, 4, 3, 7),
        (&[3, 17], 2, 2, 2, 1),
        (&[16, 1, 9], 3, 5, 4, 16),
        (&[300, 20], 1, 4, 3, 12),
    ];
    for (s, &(sizes, heads, d, dv, m)) in shapes.iter().enumerate() {
        let s = s as u64;
        let blocks = offsets(sizes);
        let n = *blocks.last().unwrap();
        let q = gaussian(n, heads * d, 0.7, 100 + s);
        let k = gaussian(n, heads * d, 0.7, 200 + s);
        let v = gaussian(n, heads * dv, 1.0, 300 + s);
        let dout = gaussian(n, heads * dv, 1.0, 400 + s);
        let w = orthogonal_random_features(m, d, s).unwrap();
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let what = format!("blocks {sizes:?}, H = {heads}, d = {d}, dv = {dv}, m = {m}");
        let (_, cache): (Matrix, FavorCache) = favor_forward(&inputs, &blocks, &w).unwrap();
        let runs: Vec<(Matrix, Matrix, Matrix)> =
            (1..=3).map(|t| on_threads(t, || favor_backward(&inputs, &blocks, &w, &cache, &dout).unwrap())).collect();
        assert_eq!(runs[0], runs[1], "{what}: 1 vs 2 threads");
        assert_eq!(runs[0], runs[2], "{what}: 1 vs 3 threads");
        let (dq, dk, dvm) = &runs[0];

        let (rq, rk, rv) = performer_backward_reference(&inputs, &blocks, &w, &dout).unwrap();
        // Each gradient is compared at its own scale, floored at a tenth of the largest of the
        // three: with m = 1, out_i = C / s does not depend on q, so dq is exactly 0 and only the
        // rounding noise of a cancellation (C dnum_i + s dden_i = 0) is left, ~1e-7 of the scale.
        let overall = rq.max_abs().max(rk.max_abs()).max(rv.max_abs());
        assert!(overall > 0.0, "{what}: all gradients zero, the test would be blind");
        if m == 1 {
            assert!(dq.max_abs() <= 1e-5 * overall, "{what}: m = 1, yet dq = {:e}", dq.max_abs());
        }
        for (name, ours, theirs) in [("dq", dq, &rq), ("dk", dk, &rk), ("dv", dvm, &rv)] {
            let diff = ours.max_abs_diff(theirs);
            let scale = theirs.max_abs().max(0.1 * overall);
            assert!(diff <= 1e-5 * scale, "{what}: {name} vs reference: max diff {diff:e} > 1e-5 * {scale:e}");
        }

        let mut f = F64Forward { blocks: &blocks, heads, d, dv, w: &w, mq: Vec::new(), mk: Vec::new() };
        f.stabilise(&to_f64(&q), &to_f64(&k));
        for (which, (name, grad, reference)) in
            [("dq", dq, &rq), ("dk", dk, &rk), ("dv", dvm, &rv)].into_iter().enumerate()
        {
            let len = grad.as_slice().len();
            let entries: Vec<usize> =
                if n > 100 { (0..len).step_by(len / 97 + 1).collect() } else { (0..len).collect() };
            let scale = reference.max_abs().max(0.1 * overall) as f64;
            for (e, fd) in finite_differences(&f, [&q, &k, &v], &dout, which, &entries) {
                let (fast, oracle) = (grad.as_slice()[e] as f64, reference.as_slice()[e] as f64);
                assert!((oracle - fd).abs() <= 1e-6 * scale, "{what}: {name}[{e}] reference {oracle} vs fd {fd}");
                assert!((fast - fd).abs() <= 2e-5 * scale, "{what}: {name}[{e}] fast {fast} vs fd {fd}");
            }
        }
    }
}

/// The stabilisers are held fixed (the peer's `.detach()`): a query row's gradient is that of
/// the function with M constant, not of one where M moves with q. Shifting M by a constant
/// changes only the weight of `eps`, so the difference is small but not zero; here the test
/// makes sure the FD with M recomputed at every step is *not* what the kernel returns when eps
/// matters (large inputs), so the detach is really what is tested.
#[test]
fn stabilisers_are_detached() {
    let (n, d, m) = (6, 2, 3);
    let q = gaussian(n, d, 2.5, 1);
    let k = gaussian(n, d, 2.5, 2);
    let v = gaussian(n, d, 1.0, 3);
    let dout = gaussian(n, d, 1.0, 4);
    let w = orthogonal_random_features(m, d, 9).unwrap();
    let inputs = AttentionInputs::new(&q, &k, &v, 1);
    let (_, cache) = favor_forward(&inputs, &[0, n], &w).unwrap();
    let (dq, dk, _) = favor_backward(&inputs, &[0, n], &w, &cache, &dout).unwrap();
    let mut f = F64Forward { blocks: &[0, n], heads: 1, d, dv: d, w: &w, mq: Vec::new(), mk: Vec::new() };
    let (qf, kf, vf, g) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&dout));
    let step = 1e-5;
    let mut moving = Vec::new();
    for (x, which) in [(&qf, 0), (&kf, 1)] {
        for e in 0..n * d {
            let mut xs = [qf.clone(), kf.clone()];
            let mut at = |delta: f64| {
                xs[which][e] = x[e] + delta;
                f.stabilise(&xs[0], &xs[1]); // M recomputed: not detached
                f.loss(&xs[0], &xs[1], &vf, &g)
            };
            moving.push((at(step) - at(-step)) / (2.0 * step));
        }
    }
    let ours: Vec<f64> = dq.as_slice().iter().chain(dk.as_slice()).map(|&v| v as f64).collect();
    let gap = ours.iter().zip(&moving).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = ours.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    assert!(
        gap > 1e-4 * scale,
        "the gradient with moving stabilisers is indistinguishable ({gap:e}): the test is blind"
    );
}

#[test]
fn non_finite_inputs_and_zero_features_are_typed_errors() {
    let (n, heads, d) = (9, 2, 4);
    let q = gaussian(n, heads * d, 0.5, 1);
    let w = orthogonal_random_features(5, d, 0).unwrap();
    for (which, bad_value) in [(0, f32::NAN), (1, f32::INFINITY), (2, f32::NEG_INFINITY)] {
        let mut bad = q.clone();
        bad.row_mut(4)[3] = bad_value;
        let mats = [
            if which == 0 { &bad } else { &q },
            if which == 1 { &bad } else { &q },
            if which == 2 { &bad } else { &q },
        ];
        let inputs = AttentionInputs::new(mats[0], mats[1], mats[2], heads);
        let err = favor_forward(&inputs, &[0, n], &w).unwrap_err();
        let Error::NonFinite { position, .. } = err else { panic!("input {which}: {err:?}") };
        assert_eq!(position, 4 * heads * d + 3);
        assert!(matches!(performer_reference(&inputs, &[0, n], &w), Err(Error::NonFinite { .. })));
    }
    let mut bad_w = w.clone();
    bad_w.row_mut(1)[0] = f32::NAN;
    let inputs = AttentionInputs::new(&q, &q, &q, heads);
    assert!(matches!(favor_forward(&inputs, &[0, n], &bad_w), Err(Error::NonFinite { .. })));
    let (_, cache) = favor_forward(&inputs, &[0, n], &w).unwrap();
    let mut bad_dout = q.clone();
    bad_dout.row_mut(0)[0] = f32::NAN;
    assert!(matches!(favor_backward(&inputs, &[0, n], &w, &cache, &bad_dout), Err(Error::NonFinite { .. })));
    assert!(matches!(performer_backward_reference(&inputs, &[0, n], &w, &bad_dout), Err(Error::NonFinite { .. })));

    // m = 0: from the constructor and as a projection with no rows, both naming `features`.
    for err in [
        orthogonal_random_features(0, d, 0).unwrap_err(),
        favor_forward(&inputs, &[0, n], &Matrix::zeros(0, d)).unwrap_err(),
    ] {
        let Error::Invalid { what, .. } = err else { panic!("{err:?}") };
        assert_eq!(what, "features");
    }
    // A projection for another head width, or blocks that do not cover N.
    assert!(matches!(favor_forward(&inputs, &[0, n], &Matrix::zeros(5, d + 1)), Err(Error::Shape { .. })));
    assert!(matches!(favor_forward(&inputs, &[0, 4, n - 1], &w), Err(Error::Shape { .. })));
    // A cache from another call.
    let (_, other) = favor_forward(&inputs, &[0, 4, n], &w).unwrap();
    assert!(matches!(favor_backward(&inputs, &[0, n], &w, &other, &q), Err(Error::Invalid { .. })));
}
