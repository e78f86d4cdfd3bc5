//! Nyström attention: the fast kernel against the crate's f64 reference, against exact softmax
//! attention when every token is its own landmark, against the `nystrom-attention` peer's
//! fixture, and its backward against central differences of an f64 forward written here (a
//! literal transcription of the peer: the front padding materialised, the pinv's maxima taken
//! over all heads of the one image).
//!
//! Tolerances: forward `max |fast - oracle| <= 1e-5 * max |oracle|`, gradients `1e-4` of their
//! scale; finite differences `2e-4 * max |fd| + 1e-6` (h = 1e-5 in f64).

use patchgraph::attention::nystrom::{Landmarks, NystromOptions, nystrom_backward_reference, nystrom_reference};
use patchgraph::attention::{AttentionInputs, Path, Score, attend};
use patchgraph::checkpoint::TensorMap;
use patchgraph::kernels::nystrom::{NystromGrads, nystrom_backward, nystrom_forward};
use patchgraph::{Error, Graph, Matrix};

// ----- helpers -------------------------------------------------------------------------------

/// SplitMix64: a small seeded generator, values uniform in `[-amp, amp)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize, amp: f32) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| amp * self.next())
    }
}

fn scale_of(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `max |ours - theirs| <= rel * max |theirs|` (plus a floor far below it).
fn assert_rel(what: &str, ours: &[f32], theirs: &[f32], rel: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let scale = scale_of(theirs);
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let e = (a - b).abs();
        if e > worst || e.is_nan() {
            (worst, at) = (e, i);
        }
    }
    assert!(
        worst <= rel * scale + 1e-9,
        "{what}: max error {worst} at {at} (ours {}, theirs {}), scale {scale}, tolerance {rel} of it",
        ours[at],
        theirs[at]
    );
}

fn assert_grads_rel(what: &str, ours: &NystromGrads, theirs: &NystromGrads, rel: f32) {
    assert_rel(&format!("{what} dq"), ours.query.as_slice(), theirs.query.as_slice(), rel);
    assert_rel(&format!("{what} dk"), ours.key.as_slice(), theirs.key.as_slice(), rel);
    assert_rel(&format!("{what} dv"), ours.value.as_slice(), theirs.value.as_slice(), rel);
    match (&ours.res_conv, &theirs.res_conv) {
        (Some(a), Some(b)) => assert_rel(&format!("{what} dres_conv"), a.as_slice(), b.as_slice(), rel),
        (None, None) => {}
        _ => panic!("{what}: res_conv gradient present on one side only"),
    }
}

fn bits(m: &Matrix) -> Vec<u32> {
    m.as_slice().iter().map(|v| v.to_bits()).collect()
}

fn grad_bits(g: &NystromGrads) -> Vec<u32> {
    let mut b = bits(&g.query);
    b.extend(bits(&g.key));
    b.extend(bits(&g.value));
    if let Some(c) = &g.res_conv {
        b.extend(bits(c));
    }
    b
}

fn offsets(blocks: usize, n: usize) -> Vec<usize> {
    (0..=blocks).map(|b| b * n).collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

// ----- (a) fast == f64 reference, bit-identical on 1/2/3 threads -------------------------------

/// One sweep case: the layout, heads, widths, blocks, conv width (0: none).
struct Case {
    n: usize,
    landmarks: Landmarks,
    name: String,
    heads: usize,
    d: usize,
    dv: usize,
    blocks: usize,
    kernel: usize,
}

/// `(rows, cols, side_rows, side_cols, prefix)` of [`Landmarks::grid`].
type GridSpec = (usize, usize, usize, usize, usize);

fn sweep_cases() -> Vec<Case> {
    // (n, segments m, grid (rows, cols, side_rows, side_cols, prefix)) with rows * cols + prefix = n.
    let table: [(usize, usize, GridSpec); 7] = [
        (15, 4, (3, 5, 2, 2, 0)),     // m does not divide n: 1 padded token
        (16, 4, (4, 4, 2, 2, 0)),     // divides
        (17, 5, (4, 4, 2, 2, 1)),     // class token + 4 x 4; segments pad 3
        (63, 8, (7, 9, 3, 3, 0)),     // uneven bands (2, 2, 3 rows; 3, 3, 3 columns)
        (64, 8, (7, 9, 2, 4, 1)),     // class token + 7 x 9
        (65, 8, (8, 8, 3, 3, 1)),     // segments: l = 9, 7 padded tokens
        (197, 14, (14, 14, 4, 4, 1)), // ViT-like: class token + 14 x 14, 16 blocks of 3 or 4 rows
    ];
    let mut cases = Vec::new();
    for (c, &(n, m, (rows, cols, sr, sc, prefix))) in table.iter().enumerate() {
        let grid = Landmarks::grid(rows, cols, sr, sc, prefix).unwrap();
        assert_eq!(grid.n(), n);
        for (v, (landmarks, name)) in [
            (Landmarks::segments(n, m).unwrap(), format!("segments({n}, {m})")),
            (grid, format!("grid({rows}, {cols}, {sr}, {sc}, {prefix})")),
        ]
        .into_iter()
        .enumerate()
        {
            let k = c * 2 + v;
            let heads = 1 + k % 3;
            let (d, dv) = if k % 5 == 4 { (5, 7) } else { (8, 8) };
            let kernel = [0, 3, 5, 33][k % 4];
            cases.push(Case { n, landmarks, name, heads, d, dv, blocks: 2 + k % 2, kernel });
        }
    }
    cases
}

#[test]
fn fast_matches_the_f64_reference_on_every_thread_count() {
    let mut rng = Rng(7);
    for case in sweep_cases() {
        let rows = case.blocks * case.n;
        let q = rng.matrix(rows, case.heads * case.d, 1.5);
        let k = rng.matrix(rows, case.heads * case.d, 1.5);
        let v = rng.matrix(rows, case.heads * case.dv, 1.0);
        let conv = (case.kernel > 0).then(|| rng.matrix(case.heads, case.kernel, 0.3));
        let dout = rng.matrix(rows, case.heads * case.dv, 1.0);
        let inputs = AttentionInputs::new(&q, &k, &v, case.heads);
        let blocks = offsets(case.blocks, case.n);
        let it = NystromOptions::default().iterations;
        let what = format!("{} H{} d{} dv{} B{} K{}", case.name, case.heads, case.d, case.dv, case.blocks, case.kernel);

        let oracle = nystrom_reference(&inputs, &blocks, &case.landmarks, it, conv.as_ref()).unwrap();
        let oracle_grads =
            nystrom_backward_reference(&inputs, &blocks, &case.landmarks, it, conv.as_ref(), &dout).unwrap();
        let mut first: Option<(Vec<u32>, Vec<u32>)> = None;
        for threads in 1..=3 {
            let (out, grads) = pool(threads).install(|| {
                let (out, cache) = nystrom_forward(&inputs, &blocks, &case.landmarks, it, conv.as_ref()).unwrap();
                let grads =
                    nystrom_backward(&inputs, &blocks, &case.landmarks, it, conv.as_ref(), &cache, &dout).unwrap();
                (out, grads)
            });
            if threads == 1 {
                assert_rel(&format!("{what} out"), out.as_slice(), oracle.as_slice(), 1e-5);
                assert_grads_rel(&what, &grads, &oracle_grads, 1e-4);
            }
            let b = (bits(&out), grad_bits(&grads));
            match &first {
                None => first = Some(b),
                Some(f) => assert!(*f == b, "{what}: bits differ on {threads} threads"),
            }
        }
    }
}

#[test]
fn blocks_of_a_batch_are_independent() {
    // Our pinv maxima are per block (the peer's are per batch): a batch's output is the
    // concatenation of its images' outputs, bit for bit.
    let (n, heads, d) = (17, 2, 4);
    let lm = Landmarks::grid(4, 4, 2, 2, 1).unwrap();
    let mut rng = Rng(11);
    let x: Vec<Matrix> = (0..3).map(|_| rng.matrix(2 * n, heads * d, 1.5)).collect();
    let conv = rng.matrix(heads, 3, 0.3);
    let batch = AttentionInputs::new(&x[0], &x[1], &x[2], heads);
    let (out, _) = nystrom_forward(&batch, &[0, n, 2 * n], &lm, 6, Some(&conv)).unwrap();
    for b in 0..2 {
        let part: Vec<Matrix> = x.iter().map(|m| Matrix::from_fn(n, heads * d, |i, j| m.get(b * n + i, j))).collect();
        let one = AttentionInputs::new(&part[0], &part[1], &part[2], heads);
        let (o, _) = nystrom_forward(&one, &[0, n], &lm, 6, Some(&conv)).unwrap();
        let rows: Vec<f32> = out.as_slice()[b * n * heads * d..(b + 1) * n * heads * d].to_vec();
        assert_eq!(rows, o.as_slice().to_vec(), "block {b}");
    }
}

// ----- (b) every token its own landmark: exact softmax attention --------------------------------

/// `||P||_inf ||P^-1||_inf` of each head's `P = softmax(q k^T / sqrt(d))` of block `b` (Gauss-Jordan in f64).
fn softmax_condition(q: &Matrix, k: &Matrix, heads: usize, n: usize, b: usize) -> Vec<f64> {
    let d = q.cols() / heads;
    (0..heads)
        .map(|h| {
            let mut p = vec![0.0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    p[i * n + j] = (0..d)
                        .map(|c| q.get(b * n + i, h * d + c) as f64 * k.get(b * n + j, h * d + c) as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt();
                }
                let row = &mut p[i * n..(i + 1) * n];
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|x| (x - mx).exp()).sum();
                row.iter_mut().for_each(|x| *x = (*x - mx).exp() / z);
            }
            let norm = |a: &[f64]| {
                (0..n).map(|i| a[i * n..(i + 1) * n].iter().map(|x| x.abs()).sum::<f64>()).fold(0.0, f64::max)
            };
            let np = norm(&p);
            // [P | I] -> [I | P^-1] with partial pivoting.
            let mut a = p.clone();
            let mut inv: Vec<f64> = (0..n * n).map(|e| if e / n == e % n { 1.0 } else { 0.0 }).collect();
            for c in 0..n {
                let piv = (c..n).max_by(|&x, &y| a[x * n + c].abs().total_cmp(&a[y * n + c].abs())).unwrap();
                for j in 0..n {
                    a.swap(c * n + j, piv * n + j);
                    inv.swap(c * n + j, piv * n + j);
                }
                let dgl = a[c * n + c];
                for j in 0..n {
                    a[c * n + j] /= dgl;
                    inv[c * n + j] /= dgl;
                }
                for r in 0..n {
                    if r != c {
                        let f = a[r * n + c];
                        for j in 0..n {
                            a[r * n + j] -= f * a[c * n + j];
                            inv[r * n + j] -= f * inv[c * n + j];
                        }
                    }
                }
            }
            np * norm(&inv)
        })
        .collect()
}

#[test]
fn one_landmark_per_token_is_exact_softmax_attention() {
    // Ql = Q, Kl = K, so A1 = A2 = A3 = P = softmax(Q K^T / sqrt(d)) and out = P Z P V with
    // Z -> P^+ = P^-1: out = P V. After 30 iterations the f64 reference equals exact attention
    // to 1e-6 of the output's scale: the landmarks are the only approximation. The f32 kernel
    // inverts P in f32, which costs about cond(P) ulps: measured 0.025 - 0.06 eps cond_inf(P)
    // of the scale on these cases (cond_inf from 600 to 5.7e5); allowed 2e-5 + eps cond_inf(P).
    let mut rng = Rng(3);
    for (n, heads, d, blocks) in
        [(15, 2, 8, 2), (16, 1, 8, 3), (17, 3, 4, 2), (64, 2, 16, 1), (17, 3, 8, 2), (64, 2, 8, 1)]
    {
        let rows = blocks * n;
        let q = rng.matrix(rows, heads * d, 1.5);
        let k = rng.matrix(rows, heads * d, 1.5);
        let v = rng.matrix(rows, heads * d, 1.0);
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let lm = Landmarks::segments(n, n).unwrap();
        assert_eq!(lm.padding(), 0);
        let blocks_at = offsets(blocks, n);
        let graph = Graph::disjoint_union(&vec![Graph::complete(n, true); blocks]).unwrap();
        let exact = attend(&graph, &Score::Dot { scale: 1.0 / (d as f32).sqrt() }, &inputs, Path::Auto, false).unwrap();
        let what = format!("n {n} H {heads} d {d} B {blocks}");
        let reference = nystrom_reference(&inputs, &blocks_at, &lm, 30, None).unwrap();
        assert_rel(&format!("{what} reference"), reference.as_slice(), exact.out.as_slice(), 1e-6);
        let cond = (0..blocks).flat_map(|b| softmax_condition(&q, &k, heads, n, b)).fold(0.0f64, f64::max);
        let (out, _) = nystrom_forward(&inputs, &blocks_at, &lm, 30, None).unwrap();
        let tol = 2e-5 + f32::EPSILON * cond as f32;
        assert_rel(&format!("{what} fast (cond {cond:.0})"), out.as_slice(), exact.out.as_slice(), tol);
        // One iteration is far from converged: the comparisons above can fail.
        let (one, _) = nystrom_forward(&inputs, &blocks_at, &lm, 1, None).unwrap();
        assert!(one.max_abs_diff(&exact.out) > 1e-3 * exact.out.max_abs(), "one iteration is not converged");
    }
}

// ----- (c) the peer's fixture ------------------------------------------------------------------

fn take_matrix(map: &mut TensorMap, name: &str, rows: usize, cols: usize) -> Matrix {
    Matrix::from_vec(rows, cols, map.take(name, &[rows, cols]).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap()
}

#[test]
fn matches_the_nystrom_attention_peer() {
    let path = format!("{}/tests/fixtures/efficient/nystrom.safetensors", env!("CARGO_MANIFEST_DIR"));
    let mut map = TensorMap::load_safetensors(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases: serde_json::Value = serde_json::from_str(&map.metadata()["cases"]).expect("cases metadata is JSON");
    let cases = cases.as_array().expect("a list of cases");
    assert!(cases.len() >= 2);
    let mut padded = false;
    for (i, c) in cases.iter().enumerate() {
        let get = |key: &str| c[key].as_u64().unwrap_or_else(|| panic!("case {i}: {key}")) as usize;
        let (n, heads, d, m, iters, kernel) =
            (get("n"), get("heads"), get("dim_head"), get("landmarks"), get("iters"), get("residual_kernel"));
        padded |= n % m != 0;
        let hd = heads * d;
        let q = take_matrix(&mut map, &format!("c{i}.q"), n, hd);
        let k = take_matrix(&mut map, &format!("c{i}.k"), n, hd);
        let v = take_matrix(&mut map, &format!("c{i}.v"), n, hd);
        let expected = take_matrix(&mut map, &format!("c{i}.out"), n, hd);
        let dout = take_matrix(&mut map, &format!("c{i}.dout"), n, hd);
        let (dq, dk, dv) = (
            take_matrix(&mut map, &format!("c{i}.dq"), n, hd),
            take_matrix(&mut map, &format!("c{i}.dk"), n, hd),
            take_matrix(&mut map, &format!("c{i}.dv"), n, hd),
        );
        // [H, 1, K, 1] is [H x K] row-major.
        let conv = (kernel > 0).then(|| {
            Matrix::from_vec(heads, kernel, map.take(&format!("c{i}.res_conv"), &[heads, 1, kernel, 1]).unwrap())
                .unwrap()
        });
        let dconv = (kernel > 0).then(|| {
            Matrix::from_vec(heads, kernel, map.take(&format!("c{i}.dres_conv"), &[heads, 1, kernel, 1]).unwrap())
                .unwrap()
        });
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let lm = Landmarks::segments(n, m).unwrap();
        let what = format!("case {i} (n {n}, H {heads}, d {d}, m {m}, K {kernel})");
        let (out, cache) = nystrom_forward(&inputs, &[0, n], &lm, iters, conv.as_ref()).unwrap();
        assert_rel(&format!("{what} out"), out.as_slice(), expected.as_slice(), 1e-5);
        let grads = nystrom_backward(&inputs, &[0, n], &lm, iters, conv.as_ref(), &cache, &dout).unwrap();
        let peer = NystromGrads { query: dq, key: dk, value: dv, res_conv: dconv };
        assert_grads_rel(&what, &grads, &peer, 1e-4);
        // The f64 reference agrees with the peer too.
        let reference = nystrom_reference(&inputs, &[0, n], &lm, iters, conv.as_ref()).unwrap();
        assert_rel(&format!("{what} reference out"), reference.as_slice(), expected.as_slice(), 1e-5);
    }
    assert!(padded, "the fixture has a case whose n the landmarks do not divide");
    map.finish().expect("every fixture tensor was checked");
}

// ----- (d) central differences of an independent f64 forward -----------------------------------

/// The landmark layouts, as the test computes them itself.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// The peer's: front padding, consecutive segments of `l = ceil(n / m)`.
    Segments { m: usize },
    /// Class tokens, then blocks of the patch grid.
    Grid { rows: usize, cols: usize, sr: usize, sc: usize, prefix: usize },
}

impl Layout {
    /// `(padding, members of each landmark as positions in the padded sequence, divisors)`.
    fn groups(self, n: usize) -> (usize, Vec<Vec<usize>>, Vec<f64>) {
        match self {
            Layout::Segments { m } => {
                let p = (m - n % m) % m;
                let l = (n + p) / m;
                ((p), (0..m).map(|j| (j * l..(j + 1) * l).collect()).collect(), vec![l as f64; m])
            }
            Layout::Grid { rows, cols, sr, sc, prefix } => {
                assert_eq!(prefix + rows * cols, n);
                // Band of a patch row: the r with floor(r rows / sr) <= i < floor((r + 1) rows / sr).
                let band = |i: usize, len: usize, sides: usize| {
                    (0..sides).find(|&r| r * len / sides <= i && i < (r + 1) * len / sides).unwrap()
                };
                let mut groups: Vec<Vec<usize>> = (0..prefix).map(|t| vec![t]).collect();
                groups.resize(prefix + sr * sc, Vec::new());
                for i in 0..rows {
                    for j in 0..cols {
                        groups[prefix + band(i, rows, sr) * sc + band(j, cols, sc)].push(prefix + i * cols + j);
                    }
                }
                let div = groups.iter().map(|g| g.len() as f64).collect();
                (0, groups, div)
            }
        }
    }
}

fn matmul64(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = (0..k).map(|t| a[i * k + t] * b[t * c + j]).sum();
        }
    }
    out
}

/// `softmax(a b^T)` row by row, `a [r x d]`, `b [c x d]`.
fn softmax_scores(a: &[f64], b: &[f64], r: usize, c: usize, d: usize) -> Vec<f64> {
    let mut s = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            s[i * c + j] = (0..d).map(|t| a[i * d + t] * b[j * d + t]).sum();
        }
        let row = &mut s[i * c..(i + 1) * c];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|x| (x - mx).exp()).sum();
        for x in row.iter_mut() {
            *x = (*x - mx).exp() / z;
        }
    }
    s
}

/// The peer's forward for one image (padding materialised, maxima over its heads), for every
/// block of `blocks` images of `n` tokens. `q`, `k` `[N x H d]`, `v` `[N x H dv]`, `conv`
/// `[H x K]`; returns `[N x H dv]`.
#[allow(clippy::too_many_arguments)]
fn peer64(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    conv: Option<(&[f64], usize)>,
    (heads, d, dv): (usize, usize, usize),
    n: usize,
    blocks: usize,
    layout: Layout,
    iters: usize,
) -> Vec<f64> {
    let (p, groups, div) = layout.groups(n);
    let (np, m) = (n + p, groups.len());
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; blocks * n * heads * dv];
    for b in 0..blocks {
        // x = F.pad(x, (0, 0, p, 0)) then q, k, v per head, q * scale.
        let padded = |x: &[f64], w: usize, h: usize, s: f64| -> Vec<f64> {
            let mut y = vec![0.0; np * w];
            for t in 0..n {
                for c in 0..w {
                    y[(p + t) * w + c] = s * x[(b * n + t) * heads * w + h * w + c];
                }
            }
            y
        };
        let mean = |x: &[f64], w: usize| -> Vec<f64> {
            let mut y = vec![0.0; m * w];
            for (j, g) in groups.iter().enumerate() {
                for &r in g {
                    for c in 0..w {
                        y[j * w + c] += x[r * w + c];
                    }
                }
                for c in 0..w {
                    y[j * w + c] /= div[j];
                }
            }
            y
        };
        let mut per_head = Vec::new();
        for h in 0..heads {
            let (qh, kh, vh) = (padded(q, d, h, scale), padded(k, d, h, 1.0), padded(v, dv, h, 1.0));
            let (ql, kl) = (mean(&qh, d), mean(&kh, d));
            let a1 = softmax_scores(&qh, &kl, np, m, d);
            let a2 = softmax_scores(&ql, &kl, m, m, d);
            let a3 = softmax_scores(&ql, &kh, m, np, d);
            per_head.push((vh, a1, a2, a3));
        }
        // torch.max(col) * torch.max(row) over every head of this image.
        let mut col_max = f64::NEG_INFINITY;
        let mut row_max = f64::NEG_INFINITY;
        for (_, _, a2, _) in &per_head {
            for i in 0..m {
                col_max = col_max.max((0..m).map(|j| a2[i * m + j].abs()).sum());
                row_max = row_max.max((0..m).map(|j| a2[j * m + i].abs()).sum());
            }
        }
        for (h, (vh, a1, a2, a3)) in per_head.iter().enumerate() {
            let mut z: Vec<f64> = (0..m * m).map(|e| a2[(e % m) * m + e / m] / (col_max * row_max)).collect();
            let eye = |s: f64, x: &[f64]| -> Vec<f64> {
                (0..m * m).map(|e| if e / m == e % m { s } else { 0.0 } - x[e]).collect()
            };
            for _ in 0..iters {
                let xz = matmul64(a2, &z, m, m, m);
                let inner = matmul64(&xz, &eye(7.0, &xz), m, m, m);
                let mid = matmul64(&xz, &eye(15.0, &inner), m, m, m);
                z = matmul64(&z, &eye(13.0, &mid), m, m, m).iter().map(|x| 0.25 * x).collect();
            }
            // out = (attn1 @ attn2_inv) @ (attn3 @ v)
            let o = matmul64(&matmul64(a1, &z, np, m, m), &matmul64(a3, vh, m, np, dv), np, m, dv);
            for t in 0..n {
                for c in 0..dv {
                    let mut x = o[(p + t) * dv + c];
                    if let Some((w, kk)) = conv {
                        // Conv2d (K, 1), padding K // 2, on the padded sequence.
                        for i in 0..kk {
                            let src = (p + t + i) as isize - (kk / 2) as isize;
                            if src >= 0 && (src as usize) < np {
                                x += w[h * kk + i] * vh[src as usize * dv + c];
                            }
                        }
                    }
                    out[(b * n + t) * heads * dv + h * dv + c] = x;
                }
            }
        }
    }
    out
}

const FD_H: f64 = 1e-5;

fn fd_grad(x: &[f32], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let base: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    (0..x.len())
        .map(|i| {
            let mut p = base.clone();
            p[i] += FD_H;
            let up = loss(&p);
            p[i] -= 2.0 * FD_H;
            (up - loss(&p)) / (2.0 * FD_H)
        })
        .collect()
}

fn assert_fd(what: &str, ours: &[f32], fd: &[f64]) {
    assert_eq!(ours.len(), fd.len(), "{what}: length");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "{what}: a vanishing gradient checks nothing ({scale})");
    for (i, (a, b)) in ours.iter().zip(fd).enumerate() {
        assert!((*a as f64 - b).abs() <= 2e-4 * scale + 1e-6, "{what}[{i}]: ours {a}, fd {b} (scale {scale})");
    }
}

#[test]
fn backward_matches_central_differences() {
    let cases = [
        (7, Layout::Segments { m: 3 }, 2, 3, 2, 2, 3), // n, layout, heads, d, dv, blocks, K: l = 3, 2 padded
        (8, Layout::Segments { m: 4 }, 1, 2, 3, 1, 0),
        (7, Layout::Grid { rows: 2, cols: 3, sr: 1, sc: 2, prefix: 1 }, 2, 2, 2, 2, 5),
        (9, Layout::Grid { rows: 3, cols: 3, sr: 2, sc: 2, prefix: 0 }, 3, 2, 2, 1, 1),
    ];
    let mut rng = Rng(5);
    for (n, layout, heads, d, dv, blocks, kernel) in cases {
        let lm = match layout {
            Layout::Segments { m } => Landmarks::segments(n, m).unwrap(),
            Layout::Grid { rows, cols, sr, sc, prefix } => Landmarks::grid(rows, cols, sr, sc, prefix).unwrap(),
        };
        let rows = blocks * n;
        let q = rng.matrix(rows, heads * d, 1.5);
        let k = rng.matrix(rows, heads * d, 1.5);
        let v = rng.matrix(rows, heads * dv, 1.0);
        let w = (kernel > 0).then(|| rng.matrix(heads, kernel, 0.5));
        let r = rng.matrix(rows, heads * dv, 1.0);
        let iters = 6;
        let inputs = AttentionInputs::new(&q, &k, &v, heads);
        let off = offsets(blocks, n);
        let what = format!("{layout:?} n {n} H {heads} d {d} dv {dv} B {blocks} K {kernel}");

        // The test's forward reproduces the crate's (an independent transcription of the peer).
        let f64s = |m: &Matrix| m.as_slice().iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (qf, kf, vf) = (f64s(&q), f64s(&k), f64s(&v));
        let wf = w.as_ref().map(f64s);
        let ours = peer64(&qf, &kf, &vf, wf.as_deref().map(|w| (w, kernel)), (heads, d, dv), n, blocks, layout, iters);
        let ours32: Vec<f32> = ours.iter().map(|&x| x as f32).collect();
        let (fast, cache) = nystrom_forward(&inputs, &off, &lm, iters, w.as_ref()).unwrap();
        assert_rel(&format!("{what} forward vs the test's peer transcription"), fast.as_slice(), &ours32, 1e-5);

        let loss = |q: &[f64], k: &[f64], v: &[f64], w: Option<&[f64]>| -> f64 {
            let out = peer64(q, k, v, w.map(|w| (w, kernel)), (heads, d, dv), n, blocks, layout, iters);
            out.iter().zip(r.as_slice()).map(|(o, r)| o * *r as f64).sum()
        };
        let wr = wf.as_deref();
        let fd_q = fd_grad(q.as_slice(), |x| loss(x, &kf, &vf, wr));
        let fd_k = fd_grad(k.as_slice(), |x| loss(&qf, x, &vf, wr));
        let fd_v = fd_grad(v.as_slice(), |x| loss(&qf, &kf, x, wr));
        let grads = nystrom_backward(&inputs, &off, &lm, iters, w.as_ref(), &cache, &r).unwrap();
        let reference = nystrom_backward_reference(&inputs, &off, &lm, iters, w.as_ref(), &r).unwrap();
        for (name, g) in [("fast", &grads), ("reference", &reference)] {
            assert_fd(&format!("{what} {name} dq"), g.query.as_slice(), &fd_q);
            assert_fd(&format!("{what} {name} dk"), g.key.as_slice(), &fd_k);
            assert_fd(&format!("{what} {name} dv"), g.value.as_slice(), &fd_v);
            if let Some(w) = &w {
                let fd_w = fd_grad(w.as_slice(), |x| loss(&qf, &kf, &vf, Some(x)));
                assert_fd(&format!("{what} {name} dres_conv"), g.res_conv.as_ref().unwrap().as_slice(), &fd_w);
            } else {
                assert!(g.res_conv.is_none());
            }
        }
    }
}

// ----- landmark layouts and memory ---------------------------------------------------------------

#[test]
fn landmark_layouts_worked_by_hand() {
    // n = 5, m = 4: l = 2, 3 padded tokens: [0 0 | 0 t0 | t1 t2 | t3 t4]; landmark 0 is all padding.
    let lm = Landmarks::segments(5, 4).unwrap();
    assert_eq!(lm.assignment(), &[1, 2, 2, 3, 3]);
    assert_eq!((lm.padding(), lm.divisor(0), lm.divisor(3)), (3, 2, 2));
    let lm = Landmarks::segments(6, 3).unwrap();
    assert_eq!((lm.assignment(), lm.padding()), (&[0, 0, 1, 1, 2, 2][..], 0));
    // 5 x 5 grid in 2 x 2 blocks: bands 0..2 and 2..5 in both directions.
    let lm = Landmarks::grid(5, 5, 2, 2, 0).unwrap();
    let expected: Vec<u32> = (0..25).map(|t| (2 * usize::from(t / 5 >= 2) + usize::from(t % 5 >= 2)) as u32).collect();
    assert_eq!(lm.assignment(), &expected[..]);
    assert_eq!([lm.divisor(0), lm.divisor(1), lm.divisor(2), lm.divisor(3)], [4, 6, 6, 9]);
    // Two class tokens, each its own landmark; a 1 x 1 side is one mean of every patch.
    let lm = Landmarks::grid(3, 4, 1, 1, 2).unwrap();
    assert_eq!(lm.count(), 3);
    assert_eq!(lm.assignment()[..3], [0, 1, 2]);
    assert_eq!(lm.divisor(2), 12);
    // Sides equal to the grid: every patch its own landmark.
    let lm = Landmarks::grid(2, 3, 2, 3, 1).unwrap();
    assert_eq!(lm.assignment(), &[0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn cache_is_linear_in_tokens() {
    let (n, m, heads, d) = (1024, 16, 2, 8);
    let x = Rng(9).matrix(n, heads * d, 1.0);
    let inputs = AttentionInputs::new(&x, &x, &x, heads);
    let (_, cache) = nystrom_forward(&inputs, &[0, n], &Landmarks::segments(n, m).unwrap(), 6, None).unwrap();
    // Per head: 2 n m + (4 iters + 2) m^2 + 2 m (d + dv) floats (A1, A3; A2, Z_0..=Z_6 and
    // A_t, C_t, D_t of the 6 iterations; Ql, Kl, W, U).
    let per_head = 2 * n * m + 26 * m * m + 2 * m * (d + d);
    assert_eq!(cache.bytes(), heads * per_head * 4);
    assert!(cache.bytes() < n * n * 4 / 10, "far below one [n x n] score matrix");
}

// ----- (e) typed errors ------------------------------------------------------------------------

fn invalid_what(e: Error) -> String {
    match e {
        Error::Invalid { what, .. } => what,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn typed_errors() {
    assert_eq!(invalid_what(Landmarks::segments(5, 0).unwrap_err()), "landmarks");
    assert_eq!(invalid_what(Landmarks::segments(3, 5).unwrap_err()), "landmarks");
    assert_eq!(invalid_what(Landmarks::grid(4, 4, 0, 2, 1).unwrap_err()), "landmarks");
    assert_eq!(invalid_what(Landmarks::grid(4, 4, 2, 5, 1).unwrap_err()), "landmarks");
    assert_eq!(invalid_what(Landmarks::grid(0, 4, 1, 1, 1).unwrap_err()), "landmarks");
    assert_eq!(invalid_what(Landmarks::from_assignment(vec![0, 2, 2], 3).unwrap_err()), "landmarks"); // 1 empty
    assert_eq!(invalid_what(Landmarks::from_assignment(vec![0, 3], 2).unwrap_err()), "landmarks");

    let (n, heads, d) = (6, 2, 2);
    let x = Rng(1).matrix(2 * n, heads * d, 1.0);
    let inputs = AttentionInputs::new(&x, &x, &x, heads);
    let lm = Landmarks::segments(n, 3).unwrap();
    let blocks = [0, n, 2 * n];
    // res_conv: even K, wrong head count.
    for bad in [Matrix::zeros(heads, 4), Matrix::zeros(heads + 1, 3)] {
        let err = nystrom_forward(&inputs, &blocks, &lm, 6, Some(&bad)).unwrap_err();
        assert!(matches!(err, Error::Shape { ref what, .. } if what == "nystrom res_conv"), "{err:?}");
        let err = nystrom_reference(&inputs, &blocks, &lm, 6, Some(&bad)).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    }
    // Blocks of another size than the landmarks', or not covering the rows.
    for bad in [&[0, 5, 12][..], &[0, n][..], &[0, 12, 12][..]] {
        assert!(matches!(nystrom_forward(&inputs, bad, &lm, 6, None).unwrap_err(), Error::Shape { .. }));
    }
    // NaN in the query (position = flat position in the block), in res_conv and in dout.
    let mut nan = x.clone();
    nan.row_mut(7)[3] = f32::NAN;
    let bad_inputs = AttentionInputs::new(&nan, &x, &x, heads);
    match nystrom_forward(&bad_inputs, &blocks, &lm, 6, None).unwrap_err() {
        Error::NonFinite { what, position, .. } => assert_eq!((what.as_str(), position), ("nystrom query", 7 * 4 + 3)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(nystrom_reference(&bad_inputs, &blocks, &lm, 6, None).unwrap_err(), Error::NonFinite { .. }));
    let mut conv = Matrix::zeros(heads, 3);
    conv.row_mut(1)[0] = f32::INFINITY;
    assert!(matches!(nystrom_forward(&inputs, &blocks, &lm, 6, Some(&conv)).unwrap_err(), Error::NonFinite { .. }));
    let (_, cache) = nystrom_forward(&inputs, &blocks, &lm, 6, None).unwrap();
    let mut dout = Matrix::zeros(2 * n, heads * d);
    dout.row_mut(0)[0] = f32::NAN;
    let err = nystrom_backward(&inputs, &blocks, &lm, 6, None, &cache, &dout).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    // A dout of the wrong shape; a cache from another call.
    let err = nystrom_backward(&inputs, &blocks, &lm, 6, None, &cache, &Matrix::zeros(2 * n, 3)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    let ok_dout = Matrix::zeros(2 * n, heads * d);
    assert_eq!(
        invalid_what(nystrom_backward(&inputs, &blocks, &lm, 5, None, &cache, &ok_dout).unwrap_err()),
        "nystrom cache"
    );
    let lm2 = Landmarks::segments(n, 2).unwrap();
    assert_eq!(
        invalid_what(nystrom_backward(&inputs, &blocks, &lm2, 6, None, &cache, &ok_dout).unwrap_err()),
        "nystrom cache"
    );
    // Zero heads; an edge bias.
    let zero = AttentionInputs::new(&x, &x, &x, 0);
    assert_eq!(invalid_what(nystrom_forward(&zero, &blocks, &lm, 6, None).unwrap_err()), "heads");
    let bias = vec![0.0f32; 4];
    let biased = AttentionInputs::new(&x, &x, &x, heads).with_bias(&bias);
    assert!(matches!(nystrom_forward(&biased, &blocks, &lm, 6, None).unwrap_err(), Error::Invalid { .. }));
}
