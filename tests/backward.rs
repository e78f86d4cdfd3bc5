//! Every backward against central finite differences of an independent f64 forward.
//!
//! For a layer `y = f(x; theta)` and a random projection `r`, the scalar `L = sum(r * y)` has
//! `dL/dy = r`; the layer's backward, given `dy = r`, must return `dL/dx` and accumulate
//! `dL/dtheta`. The oracle evaluates `L` with plain f64 loops written here (not the crate's code)
//! at `theta +- h` (h = 1e-5, so the difference quotient is exact to about 1e-9) for every
//! coordinate. Tolerance: `|ours - fd| <= 2e-4 * max|fd| + 1e-6` (our backward runs in f32).

use patchgraph::Matrix;
use patchgraph::nn::{
    CrossEntropy, Init, LayerNorm, LayerNormGrads, Linear, LinearGrads, Mlp, MlpGrads, gelu_backward,
};
use proptest::prelude::*;

const H: f64 = 1e-5;

fn close(what: &str, ours: &[f32], fd: &[f64]) {
    close_abs(what, ours, fd, 1e-6);
}

/// As [`close`] with an absolute floor `abs` (for gradients that are a small difference of
/// larger f32 terms, such as LayerNorm's `dx` on a row of nearly equal values).
fn close_abs(what: &str, ours: &[f32], fd: &[f64], abs: f64) {
    assert_eq!(ours.len(), fd.len(), "{what}: length");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(fd).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 2e-4 * scale + abs,
            "{what}[{i}]: ours {a}, finite differences {b} (scale {scale})"
        );
    }
}

/// Central differences of `loss` with respect to every element of `v`.
fn fd(v: &[f32], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let base: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    (0..v.len())
        .map(|i| {
            let mut p = base.clone();
            p[i] += H;
            let up = loss(&p);
            p[i] -= 2.0 * H;
            (up - loss(&p)) / (2.0 * H)
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ----- f64 oracles: row-major [n x in] inputs, PyTorch layouts ------------------------------

fn linear64(x: &[f64], n: usize, w: &[f64], b: Option<&[f64]>, out: usize) -> Vec<f64> {
    let i_dim = x.len() / n;
    (0..n * out)
        .map(|e| {
            let (r, o) = (e / out, e % out);
            (0..i_dim).map(|c| x[r * i_dim + c] * w[o * i_dim + c]).sum::<f64>() + b.map_or(0.0, |b| b[o])
        })
        .collect()
}

fn layer_norm64(x: &[f64], d: usize, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter().enumerate().map(move |(j, v)| (v - mean) * inv * w[j] + b[j]).collect::<Vec<_>>()
        })
        .collect()
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn dot(a: &[f64], r: &[f32]) -> f64 {
    a.iter().zip(r).map(|(a, r)| a * *r as f64).sum()
}

fn random(init: &mut Init, n: usize, scale: f32) -> Vec<f32> {
    init.normal(n, scale)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Linear: dx, dW, db (and that grads accumulate: a second backward doubles them).
    #[test]
    fn linear_backward(n in 1usize..6, i_dim in prop::sample::select(vec![1usize, 3, 15, 16, 17]), out in 1usize..20, bias in any::<bool>(), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let lin = Linear::torch_init(&mut init, i_dim, out, bias);
        let x = random(&mut init, n * i_dim, 1.0);
        let r = random(&mut init, n * out, 1.0);
        let xm = Matrix::from_vec(n, i_dim, x.clone()).unwrap();
        let mut grads = LinearGrads::zeros(&lin);
        let dx = lin.backward(&xm, &Matrix::from_vec(n, out, r.clone()).unwrap(), &mut grads).unwrap();
        let (w, b) = (f64s(lin.weight.as_slice()), lin.bias.as_ref().map(|b| f64s(b)));
        close("dx", dx.as_slice(), &fd(&x, |x| dot(&linear64(x, n, &w, b.as_deref(), out), &r)));
        close("dW", grads.weight.as_slice(), &fd(lin.weight.as_slice(), |w| dot(&linear64(&f64s(&x), n, w, b.as_deref(), out), &r)));
        if let Some(bias) = &lin.bias {
            close("db", grads.bias.as_ref().unwrap(), &fd(bias, |b| dot(&linear64(&f64s(&x), n, &w, Some(b), out), &r)));
        }
        let once = grads.clone();
        lin.backward(&xm, &Matrix::from_vec(n, out, r.clone()).unwrap(), &mut grads).unwrap();
        for (twice, once) in grads.weight.as_slice().iter().zip(once.weight.as_slice()) {
            prop_assert!((twice - 2.0 * once).abs() <= 1e-5 * once.abs().max(1.0), "{} vs 2 x {}", twice, once);
        }
    }

    /// LayerNorm: dx, dweight, dbias.
    #[test]
    fn layer_norm_backward(n in 1usize..5, d in prop::sample::select(vec![2usize, 3, 15, 16, 17, 33]), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let mut ln = LayerNorm::new(d, 1e-5);
        ln.weight = random(&mut init, d, 1.0);
        ln.bias = random(&mut init, d, 1.0);
        let x = random(&mut init, n * d, 2.0);
        let r = random(&mut init, n * d, 1.0);
        let mut grads = LayerNormGrads::zeros(d);
        let dx = ln.backward(&Matrix::from_vec(n, d, x.clone()).unwrap(), &Matrix::from_vec(n, d, r.clone()).unwrap(), &mut grads).unwrap();
        let (w, b) = (f64s(&ln.weight), f64s(&ln.bias));
        // dx = inv * (g - mean(g) - xhat mean(g xhat)) is a small difference of terms of size |g|
        // (g = dy * w) when a row's values are close together: xhat = (x - mean) inv carries a
        // relative error of about ulp(|x|) / |x - mean| = 1.2e-7 |x| inv, which the difference
        // keeps and inv multiplies again. That is f32's conditioning (PyTorch's f32 kernel has
        // it too), so the floor scales with it; well-spread rows are held to about 1e-6.
        let inv_max = x
            .chunks(d)
            .map(|row| {
                let row = f64s(row);
                let mean = row.iter().sum::<f64>() / d as f64;
                1.0 / (row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64 + 1e-5).sqrt()
            })
            .fold(0.0f64, f64::max);
        let x_max = x.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
        let g_max = r.iter().zip(ln.weight.iter().cycle()).fold(0.0f64, |m, (r, w)| m.max((r * w).abs() as f64));
        let floor = 1e-6 + 4.0 * 1.2e-7 * d as f64 * inv_max * inv_max * x_max * g_max;
        close_abs("dx", dx.as_slice(), &fd(&x, |x| dot(&layer_norm64(x, d, &w, &b, 1e-5), &r)), floor);
        close("dweight", &grads.weight, &fd(&ln.weight, |w| dot(&layer_norm64(&f64s(&x), d, w, &b, 1e-5), &r)));
        close("dbias", &grads.bias, &fd(&ln.bias, |b| dot(&layer_norm64(&f64s(&x), d, &w, b, 1e-5), &r)));
    }

    /// GELU: dx on values spread over [-6, 6].
    #[test]
    fn gelu_backward_matches(n in 1usize..40, seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let x = random(&mut init, n, 3.0);
        let r = random(&mut init, n, 1.0);
        let dx = gelu_backward(&x, &r);
        close("dx", &dx, &fd(&x, |x| x.iter().zip(&r).map(|(x, r)| gelu64(*x) * *r as f64).sum()));
    }

    /// Mlp: dx and the gradients of both linear layers.
    #[test]
    fn mlp_backward(n in 1usize..4, d in 1usize..9, hidden in prop::sample::select(vec![4usize, 15, 16, 17]), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let mlp = Mlp::new(&mut init, d, hidden);
        let x = random(&mut init, n * d, 1.0);
        let r = random(&mut init, n * d, 1.0);
        let mut grads = MlpGrads::zeros(&mlp);
        let dx = mlp.backward(&Matrix::from_vec(n, d, x.clone()).unwrap(), &Matrix::from_vec(n, d, r.clone()).unwrap(), &mut grads).unwrap();
        let (w1, b1) = (f64s(mlp.fc1.weight.as_slice()), f64s(mlp.fc1.bias.as_ref().unwrap()));
        let (w2, b2) = (f64s(mlp.fc2.weight.as_slice()), f64s(mlp.fc2.bias.as_ref().unwrap()));
        let forward = |x: &[f64], w1: &[f64], w2: &[f64]| {
            let h: Vec<f64> = linear64(x, n, w1, Some(&b1), hidden).into_iter().map(gelu64).collect();
            dot(&linear64(&h, n, w2, Some(&b2), d), &r)
        };
        close("dx", dx.as_slice(), &fd(&x, |x| forward(x, &w1, &w2)));
        close("dW1", grads.fc1.weight.as_slice(), &fd(mlp.fc1.weight.as_slice(), |w| forward(&f64s(&x), w, &w2)));
        close("dW2", grads.fc2.weight.as_slice(), &fd(mlp.fc2.weight.as_slice(), |w| forward(&f64s(&x), &w1, w)));
    }

    /// Cross-entropy with label smoothing: the loss against an f64 oracle and dlogits against
    /// finite differences of it.
    #[test]
    fn cross_entropy_backward(b in 1usize..5, k in 2usize..12, smoothing in prop::sample::select(vec![0.0f32, 0.1, 0.3]), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let logits = random(&mut init, b * k, 3.0);
        let targets: Vec<usize> = (0..b).map(|i| (i * 7 + seed as usize) % k).collect();
        let loss64 = |l: &[f64]| -> f64 {
            l.chunks(k).zip(&targets).map(|(row, &t)| {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                let lz = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                row.iter().enumerate().map(|(c, v)| {
                    let q = smoothing as f64 / k as f64 + if c == t { 1.0 - smoothing as f64 } else { 0.0 };
                    -q * (v - lz)
                }).sum::<f64>()
            }).sum::<f64>() / b as f64
        };
        let (loss, grad) = CrossEntropy { smoothing }.forward_backward(&Matrix::from_vec(b, k, logits.clone()).unwrap(), &targets).unwrap();
        prop_assert!((loss as f64 - loss64(&f64s(&logits))).abs() <= 1e-5 * loss64(&f64s(&logits)).abs().max(1.0));
        close("dlogits", grad.as_slice(), &fd(&logits, loss64));
    }
}

#[test]
fn bad_shapes_and_targets_are_errors() {
    let lin = Linear::torch_init(&mut Init::new(0), 3, 2, true);
    let mut g = LinearGrads::zeros(&lin);
    assert!(lin.backward(&Matrix::zeros(4, 3), &Matrix::zeros(4, 3), &mut g).is_err());
    let ce = CrossEntropy { smoothing: 0.1 };
    assert!(ce.forward_backward(&Matrix::zeros(2, 3), &[0]).is_err());
    assert!(ce.forward_backward(&Matrix::zeros(2, 3), &[0, 3]).unwrap_err().to_string().contains("target[1] = 3"));
    assert!(CrossEntropy { smoothing: 1.0 }.forward_backward(&Matrix::zeros(1, 3), &[0]).is_err());
    let mut nan = Matrix::zeros(1, 3);
    nan.as_mut_slice()[1] = f32::NAN;
    assert!(ce.forward_backward(&nan, &[0]).is_err());
}

// ----- attention ---------------------------------------------------------------------------

use patchgraph::Graph;
use patchgraph::attention::{
    AttentionInputs, Score, attend_backward, attend_backward_qkv, attend_backward_reference, attend_reference,
};

/// The algebra in f64 with plain loops over the graph's incoming lists: `sum(r * out)`.
#[allow(clippy::too_many_arguments)]
fn attention_loss64(
    g: &Graph,
    kind: u8,
    heads: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: Option<&[f64]>,
    att: &[f64],
    r: &[f32],
) -> f64 {
    let n = g.num_nodes();
    let (dk, dv) = (q.len() / n / heads, v.len() / n / heads);
    let lrelu = |z: f64| if z >= 0.0 { z } else { 0.2 * z };
    let mut loss = 0.0;
    for i in 0..n {
        for h in 0..heads {
            let s: Vec<f64> = g
                .edge_range(i)
                .zip(g.incoming(i))
                .map(|(e, j)| {
                    let (qi, kj) = (&q[(i * heads + h) * dk..][..dk], &k[(j * heads + h) * dk..][..dk]);
                    bias.map_or(0.0, |b| b[e * heads + h])
                        + match kind {
                            0 => 0.5 * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>(),
                            1 => lrelu(qi[0] + kj[0]),
                            _ => (0..dk).map(|c| att[h * dk + c] * lrelu(qi[c] + kj[c])).sum(),
                        }
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (t, j) in g.incoming(i).enumerate() {
                let p = (s[t] - m).exp() / z;
                for c in 0..dv {
                    loss += p * v[(j * heads + h) * dv + c] * r[(i * heads + h) * dv + c] as f64;
                }
            }
        }
    }
    loss
}

fn score_of(kind: u8, heads: usize, dk: usize, init: &mut Init) -> Score {
    match kind {
        0 => Score::Dot { scale: 0.5 },
        1 => Score::Gat { negative_slope: 0.2 },
        _ => Score::GatV2 { attention: init.normal(heads * dk, 1.0), negative_slope: 0.2 },
    }
}

fn arb_graph() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (1usize..7).prop_flat_map(|n| (Just(n), proptest::collection::vec((0..n, 0..n), 0..(3 * n))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The f64 reference backward against central differences of the f64 forward, for every
    /// input (q, k, v, bias, GATv2's a), on random graphs with duplicate edges, nodes without
    /// incoming edges and a masked (-inf) edge.
    #[test]
    fn attention_reference_backward_is_the_gradient(
        (n, edges) in arb_graph(), kind in 0u8..3, heads in 1usize..3, d in 1usize..4, seed in 0u64..1000,
    ) {
        let mut init = Init::new(seed);
        let dk = if kind == 1 { 1 } else { d };
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().cloned().unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let score = score_of(kind, heads, dk, &mut init);
        let q = random(&mut init, n * heads * dk, 1.0);
        let k = random(&mut init, n * heads * dk, 1.0);
        let v = random(&mut init, n * heads * d, 1.0);
        let mut b = random(&mut init, g.num_edges() * heads, 1.0);
        if b.len() > heads {
            b[heads] = f32::NEG_INFINITY; // edge 1, head 0 masked
        }
        let r = random(&mut init, n * heads * d, 1.0);
        let (qm, km, vm) = (
            Matrix::from_vec(n, heads * dk, q.clone()).unwrap(),
            Matrix::from_vec(n, heads * dk, k.clone()).unwrap(),
            Matrix::from_vec(n, heads * d, v.clone()).unwrap(),
        );
        let inputs = AttentionInputs::new(&qm, &km, &vm, heads).with_bias(&b);
        let grads = attend_backward_reference(&g, &score, &inputs, &Matrix::from_vec(n, heads * d, r.clone()).unwrap()).unwrap();
        let att: Vec<f64> = if let Score::GatV2 { attention, .. } = &score { f64s(attention) } else { vec![] };
        let (q64, k64, v64, b64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&b));
        let loss = |q: &[f64], k: &[f64], v: &[f64], b: &[f64], a: &[f64]| attention_loss64(&g, kind, heads, q, k, v, Some(b), a, &r);
        close("dq", grads.query.as_slice(), &fd(&q, |x| loss(x, &k64, &v64, &b64, &att)));
        close("dk", grads.key.as_slice(), &fd(&k, |x| loss(&q64, x, &v64, &b64, &att)));
        close("dv", grads.value.as_slice(), &fd(&v, |x| loss(&q64, &k64, x, &b64, &att)));
        // the masked edge's bias has no finite neighbourhood: skip it, check the others
        let finite: Vec<usize> = (0..b.len()).filter(|&e| b[e].is_finite()).collect();
        let fd_b = fd(&b, |x| loss(&q64, &k64, &v64, x, &att));
        let (ours_b, fd_b): (Vec<f32>, Vec<f64>) = finite.iter().map(|&e| (grads.bias[e], fd_b[e])).unzip();
        close("dbias", &ours_b, &fd_b);
        if let Score::GatV2 { attention, .. } = &score {
            close("da", &grads.attention, &fd(attention, |x| loss(&q64, &k64, &v64, &b64, x)));
        }
    }

    /// The fast two-pass backward equals the f64 reference (1e-4 of max(scale, 0.1)) and gives the
    /// same bits on 1 and 2 threads; widths around the SIMD lanes.
    #[test]
    fn attention_fast_backward_matches_reference(
        (n, edges) in arb_graph(), kind in 0u8..3, heads in 1usize..4,
        d in prop::sample::select(vec![1usize, 7, 15, 16, 17]), with_bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let mut init = Init::new(seed);
        let dk = if kind == 1 { 1 } else { d };
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().cloned().unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let score = score_of(kind, heads, dk, &mut init);
        let qm = Matrix::from_vec(n, heads * dk, random(&mut init, n * heads * dk, 1.0)).unwrap();
        let km = Matrix::from_vec(n, heads * dk, random(&mut init, n * heads * dk, 1.0)).unwrap();
        let vm = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let b = random(&mut init, g.num_edges() * heads, 1.0);
        let dout = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let mut inputs = AttentionInputs::new(&qm, &km, &vm, heads);
        if with_bias {
            inputs = inputs.with_bias(&b);
        }
        let lse = attend_reference(&g, &score, &inputs, false).unwrap().log_sum_exp;
        let reference = attend_backward_reference(&g, &score, &inputs, &dout).unwrap();
        let runs: Vec<_> = [1, 2].iter().map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| attend_backward(&g, &score, &inputs, &lse, &dout).unwrap())
        }).collect();
        let ours = &runs[0];
        for (what, a, b) in [("dq", &ours.query, &reference.query), ("dk", &ours.key, &reference.key), ("dv", &ours.value, &reference.value)] {
            let scale = b.max_abs().max(0.1);
            prop_assert!(a.max_abs_diff(b) <= 1e-4 * scale, "{}: {} vs scale {}", what, a.max_abs_diff(b), scale);
        }
        prop_assert_eq!(ours.bias.len(), reference.bias.len());
        let bias_scale = reference.bias.iter().fold(0.1f32, |m, v| m.max(v.abs()));
        for (x, y) in ours.bias.iter().zip(&reference.bias) {
            prop_assert!((x - y).abs() <= 1e-4 * bias_scale);
        }
        for (x, y) in ours.attention.iter().zip(&reference.attention) {
            prop_assert!((x - y).abs() <= 1e-4 * reference.attention.iter().fold(0.1f32, |m, v| m.max(v.abs())));
        }
        prop_assert_eq!(&runs[0], &runs[1]);
        let qkv = attend_backward_qkv(&g, &score, &inputs, &lse, &dout).unwrap();
        for i in 0..n {
            prop_assert_eq!(qkv.row(i), [ours.query.row(i), ours.key.row(i), ours.value.row(i)].concat());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The dense backward (a batch of complete graphs with self-loops, dot score) equals the f64
    /// reference, with the same bits on 1 and 2 threads; block sizes and widths around the SIMD
    /// lanes.
    #[test]
    fn dense_attention_backward_matches_reference(
        sizes in proptest::collection::vec(prop::sample::select(vec![1usize, 2, 15, 16, 17, 33]), 1..=3),
        heads in 1usize..=3, d in prop::sample::select(vec![1usize, 8, 15, 16, 17]), seed in 0u64..1000,
    ) {
        let mut init = Init::new(seed);
        let g = Graph::disjoint_union(&sizes.iter().map(|&m| Graph::complete(m, true)).collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(g.complete_self_loops(), Some(true));
        let n = g.num_nodes();
        let qm = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let km = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let vm = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let dout = Matrix::from_vec(n, heads * d, random(&mut init, n * heads * d, 1.0)).unwrap();
        let score = Score::Dot { scale: 1.0 / (d as f32).sqrt() };
        let inputs = AttentionInputs::new(&qm, &km, &vm, heads);
        let lse = patchgraph::attention::attend(&g, &score, &inputs, patchgraph::attention::Path::Dense, false).unwrap().log_sum_exp;
        let reference = attend_backward_reference(&g, &score, &inputs, &dout).unwrap();
        let runs: Vec<_> = [1, 2].iter().map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| attend_backward(&g, &score, &inputs, &lse, &dout).unwrap())
        }).collect();
        for (what, a, b) in [("dq", &runs[0].query, &reference.query), ("dk", &runs[0].key, &reference.key), ("dv", &runs[0].value, &reference.value)] {
            let scale = b.max_abs().max(0.1);
            prop_assert!(a.max_abs_diff(b) <= 1e-4 * scale, "{}: {} vs scale {}", what, a.max_abs_diff(b), scale);
        }
        prop_assert!(runs[0].bias.is_empty() && reference.bias.is_empty());
        prop_assert_eq!(&runs[0], &runs[1]);
        // [dq | dk | dv] side by side (written straight into one buffer): the same bits
        for t in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let qkv = pool.install(|| attend_backward_qkv(&g, &score, &inputs, &lse, &dout).unwrap());
            for i in 0..n {
                prop_assert_eq!(qkv.row(i), [runs[0].query.row(i), runs[0].key.row(i), runs[0].value.row(i)].concat());
            }
        }
    }
}

// ----- GATConv layer ----------------------------------------------------------------------

use patchgraph::nn::{AttentionConfig, AttentionGrads, GraphAttention};

/// `sum(r * y)` of PyG's GATConv in f64: `wh = x W^T`, per-head `s = a . wh`, softmax of
/// `LeakyReLU(d_i + s_j)` over `graph` (already with its self-loops), heads concatenated or
/// averaged, plus bias.
#[allow(clippy::too_many_arguments)]
fn gat_loss64(
    g: &Graph,
    x: &[f64],
    w: &[f64],
    a_src: &[f64],
    a_dst: &[f64],
    bias: &[f64],
    heads: usize,
    c: usize,
    concat: bool,
    r: &[f32],
) -> f64 {
    let n = g.num_nodes();
    let wh = linear64(x, n, w, None, heads * c);
    let dotp =
        |a: &[f64], i: usize, h: usize| (0..c).map(|k| wh[i * heads * c + h * c + k] * a[h * c + k]).sum::<f64>();
    let lrelu = |z: f64| if z >= 0.0 { z } else { 0.2 * z };
    let width = if concat { heads * c } else { c };
    let mut loss = 0.0;
    for i in 0..n {
        let mut y = vec![0.0f64; width];
        for h in 0..heads {
            let s: Vec<f64> = g.incoming(i).map(|j| lrelu(dotp(a_dst, i, h) + dotp(a_src, j, h))).collect();
            if s.is_empty() {
                continue;
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for (t, j) in g.incoming(i).enumerate() {
                let p = (s[t] - m).exp() / z;
                for k in 0..c {
                    let v = p * wh[j * heads * c + h * c + k];
                    if concat { y[h * c + k] += v } else { y[k] += v / heads as f64 }
                }
            }
        }
        for k in 0..width {
            loss += (y[k] + bias[k]) * r[i * width + k] as f64;
        }
    }
    loss
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// GATConv's layer backward (lin, att_src, att_dst, bias and dx) against central differences
    /// of the f64 layer, concatenated and averaged heads, on random graphs (PyG's self-loops).
    #[test]
    fn gat_layer_backward((n, edges) in arb_graph(), heads in 1usize..3, c in 1usize..4, f in 1usize..5, concat in any::<bool>(), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().cloned().unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let config = AttentionConfig::Gat { in_channels: f, out_channels: c, heads, concat, negative_slope: 0.2, add_self_loops: true, bias: true };
        let mut layer = GraphAttention::new(config, &mut init).unwrap();
        // non-zero bias and attention vectors
        let mut grads = layer.zero_grads();
        let mut k = 0;
        layer.visit_params(&grads.clone(), &mut |_, p, _, _| { for v in p.iter_mut() { k += 1; *v += 0.3 * ((k * 7 % 11) as f32 - 5.0) / 5.0; } });
        let x = random(&mut init, n * f, 1.0);
        let width = if concat { heads * c } else { c };
        let r = random(&mut init, n * width, 1.0);
        let xm = Matrix::from_vec(n, f, x.clone()).unwrap();
        let dx = layer.backward(&g, &xm, &Matrix::from_vec(n, width, r.clone()).unwrap(), &mut grads).unwrap();
        // the layer's parameters, read back through the visitor in slot order
        let mut params: Vec<Vec<f32>> = vec![Vec::new(); 4];
        layer.visit_params(&grads, &mut |slot, p, _, _| params[slot] = p.to_vec());
        let AttentionGrads::Gat { lin, att_src, att_dst, bias } = &grads else { panic!("GAT grads") };
        let gs = layer.attention_graph(&g).into_owned();
        let (w, a_s, a_d, b) = (f64s(&params[0]), f64s(&params[1]), f64s(&params[2]), f64s(&params[3]));
        let x64 = f64s(&x);
        let loss = |x: &[f64], w: &[f64], a_s: &[f64], a_d: &[f64], b: &[f64]| gat_loss64(&gs, x, w, a_s, a_d, b, heads, c, concat, &r);
        close("dx", dx.as_slice(), &fd(&x, |v| loss(v, &w, &a_s, &a_d, &b)));
        close("dW", lin.weight.as_slice(), &fd(&params[0], |v| loss(&x64, v, &a_s, &a_d, &b)));
        // att_dst's gradient is exactly zero where every destination has one incoming edge
        // (a softmax over one score is 1 whatever the score); ours is then f32 rounding of the
        // terms that cancel, so the absolute floor is 1e-5 of the layer's largest gradient.
        let fd_w = fd(&params[0], |v| loss(&x64, v, &a_s, &a_d, &b));
        let floor = 1e-5 * fd_w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        close_abs("datt_src", att_src, &fd(&params[1], |v| loss(&x64, &w, v, &a_d, &b)), floor);
        close_abs("datt_dst", att_dst, &fd(&params[2], |v| loss(&x64, &w, &a_s, v, &b)), floor);
        close("dbias", bias.as_ref().unwrap(), &fd(&params[3], |v| loss(&x64, &w, &a_s, &a_d, v)));
    }
}

/// `sum(r * y)` of PyG's GATv2Conv in f64: `xl = x Wl^T + bl`, `xr = x Wr^T + br` (or `xl`),
/// softmax over `graph` of `a . LeakyReLU(xr_i + xl_j)` per head, values `xl_j`, concatenated or
/// averaged, plus bias.
#[allow(clippy::too_many_arguments)]
fn gatv2_loss64(
    g: &Graph,
    x: &[f64],
    lin: [(&[f64], &[f64]); 2],
    share: bool,
    att: &[f64],
    bias: &[f64],
    heads: usize,
    c: usize,
    concat: bool,
    r: &[f32],
) -> f64 {
    let n = g.num_nodes();
    let xl = linear64(x, n, lin[0].0, Some(lin[0].1), heads * c);
    let xr = if share { xl.clone() } else { linear64(x, n, lin[1].0, Some(lin[1].1), heads * c) };
    let lrelu = |z: f64| if z >= 0.0 { z } else { 0.2 * z };
    let width = if concat { heads * c } else { c };
    let mut loss = 0.0;
    for i in 0..n {
        let mut y = vec![0.0f64; width];
        for h in 0..heads {
            let s: Vec<f64> = g
                .incoming(i)
                .map(|j| {
                    (0..c)
                        .map(|k| att[h * c + k] * lrelu(xr[(i * heads + h) * c + k] + xl[(j * heads + h) * c + k]))
                        .sum()
                })
                .collect();
            if s.is_empty() {
                continue;
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for (t, j) in g.incoming(i).enumerate() {
                let p = (s[t] - m).exp() / z;
                for k in 0..c {
                    let v = p * xl[(j * heads + h) * c + k];
                    if concat { y[h * c + k] += v } else { y[k] += v / heads as f64 }
                }
            }
        }
        for k in 0..width {
            loss += (y[k] + bias[k]) * r[i * width + k] as f64;
        }
    }
    loss
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// GATv2Conv's layer backward (lin_l, lin_r or shared, att, bias, dx) against central
    /// differences of the f64 layer.
    #[test]
    fn gatv2_layer_backward((n, edges) in arb_graph(), heads in 1usize..3, c in 1usize..4, f in 1usize..5, concat in any::<bool>(), share in any::<bool>(), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().cloned().unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let config = AttentionConfig::GatV2 { in_channels: f, out_channels: c, heads, concat, negative_slope: 0.2, add_self_loops: true, bias: true, share_weights: share };
        let mut layer = GraphAttention::new(config, &mut init).unwrap();
        let mut grads = layer.zero_grads();
        let mut k = 0;
        layer.visit_params(&grads.clone(), &mut |_, p, _, _| { for v in p.iter_mut() { k += 1; *v += 0.3 * ((k * 7 % 11) as f32 - 5.0) / 5.0; } });
        let x = random(&mut init, n * f, 1.0);
        let width = if concat { heads * c } else { c };
        let r = random(&mut init, n * width, 1.0);
        let dx = layer.backward(&g, &Matrix::from_vec(n, f, x.clone()).unwrap(), &Matrix::from_vec(n, width, r.clone()).unwrap(), &mut grads).unwrap();
        let mut params: Vec<Vec<f32>> = vec![Vec::new(); 6];
        layer.visit_params(&grads, &mut |slot, p, _, _| params[slot] = p.to_vec());
        let AttentionGrads::GatV2 { lin_l, lin_r, att, bias } = &grads else { panic!("GATv2 grads") };
        let gs = layer.attention_graph(&g).into_owned();
        let p64: Vec<Vec<f64>> = params.iter().map(|p| f64s(p)).collect();
        let x64 = f64s(&x);
        let loss = |x: &[f64], p: &[Vec<f64>]| gatv2_loss64(&gs, x, [(&p[0], &p[1]), (&p[2], &p[3])], share, &p[4], &p[5], heads, c, concat, &r);
        let with = |slot: usize, v: &[f64]| { let mut p = p64.clone(); p[slot] = v.to_vec(); loss(&x64, &p) };
        close("dx", dx.as_slice(), &fd(&x, |v| loss(v, &p64)));
        close("dWl", lin_l.weight.as_slice(), &fd(&params[0], |v| with(0, v)));
        close("dbl", lin_l.bias.as_ref().unwrap(), &fd(&params[1], |v| with(1, v)));
        if let Some(lr) = lin_r {
            close("dWr", lr.weight.as_slice(), &fd(&params[2], |v| with(2, v)));
            close("dbr", lr.bias.as_ref().unwrap(), &fd(&params[3], |v| with(3, v)));
        }
        // As for GAT: att's gradient is a small difference of f32 terms where most destinations
        // have one incoming edge (exactly zero there), so its absolute floor is 1e-5 of the
        // layer's largest gradient (a case of one edge besides the self-loops measured 3e-6
        // against a gradient of 4e-4).
        let fd_wl = fd(&params[0], |v| with(0, v));
        let floor = 1e-5 * fd_wl.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        close_abs("datt", att, &fd(&params[4], |v| with(4, v)), floor);
        close("dbias", bias.as_ref().unwrap(), &fd(&params[5], |v| with(5, v)));
    }
}

// ----- TransformerConv layer --------------------------------------------------------------

/// The layer's switches, for the f64 oracle.
#[derive(Clone, Copy)]
struct TransformerFlags {
    heads: usize,
    c: usize,
    concat: bool,
    beta: bool,
    root_weight: bool,
}

/// `sum(r * y)` of PyG's TransformerConv in f64 (no self-loops added): `[q | k | v | s] = x W^T
/// + b` (the four linears stacked), softmax over `graph` of `q_i . k_j / sqrt(C)` per head,
/// values `v_j` (zero at a node with no incoming edge), heads concatenated or averaged into `o`;
/// with `root_weight`, `out = o + s`, or with `beta`, `b = sigmoid(w_beta . [o, s, o - s])`,
/// `out = b s + (1 - b) o`.
fn transformer_loss64(
    g: &Graph,
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    w_beta: &[f64],
    t: TransformerFlags,
    r: &[f32],
) -> f64 {
    let (n, heads, c) = (g.num_nodes(), t.heads, t.c);
    let hc = heads * c;
    let width = if t.concat { hc } else { c };
    let cols = 3 * hc + width;
    let y = linear64(x, n, w, b, cols);
    let (q, k, v, s) = (
        |i: usize, j: usize| y[i * cols + j],
        |i: usize, j: usize| y[i * cols + hc + j],
        |i: usize, j: usize| y[i * cols + 2 * hc + j],
        |i: usize, j: usize| y[i * cols + 3 * hc + j],
    );
    let mut loss = 0.0;
    for i in 0..n {
        let mut o = vec![0.0f64; width];
        for h in 0..heads {
            let sc: Vec<f64> = g
                .incoming(i)
                .map(|j| (0..c).map(|e| q(i, h * c + e) * k(j, h * c + e)).sum::<f64>() / (c as f64).sqrt())
                .collect();
            if sc.is_empty() {
                continue;
            }
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
            for (tt, j) in g.incoming(i).enumerate() {
                let p = (sc[tt] - m).exp() / z;
                for e in 0..c {
                    let val = p * v(j, h * c + e);
                    if t.concat { o[h * c + e] += val } else { o[e] += val / heads as f64 }
                }
            }
        }
        let out: Vec<f64> = if !t.root_weight {
            o
        } else if t.beta {
            let zb: f64 = (0..width)
                .map(|e| w_beta[e] * o[e] + w_beta[width + e] * s(i, e) + w_beta[2 * width + e] * (o[e] - s(i, e)))
                .sum();
            let bb = 1.0 / (1.0 + (-zb).exp());
            (0..width).map(|e| bb * s(i, e) + (1.0 - bb) * o[e]).collect()
        } else {
            (0..width).map(|e| o[e] + s(i, e)).collect()
        };
        loss += dot(&out, &r[i * width..(i + 1) * width]);
    }
    loss
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// TransformerConv's layer backward (the stacked lin_query | lin_key | lin_value | lin_skip,
    /// lin_beta, dx) against central differences of the f64 layer, concatenated and averaged
    /// heads, with and without root weight, beta and biases, on random graphs (no self-loops
    /// added: nodes without incoming edges attend to nothing).
    #[test]
    fn transformer_layer_backward((n, edges) in arb_graph(), heads in 1usize..3, c in 1usize..4, f in 1usize..5, concat in any::<bool>(), beta in any::<bool>(), root_weight in any::<bool>(), bias in any::<bool>(), seed in 0u64..1000) {
        let mut init = Init::new(seed);
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().cloned().unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let config = AttentionConfig::Transformer { in_channels: f, out_channels: c, heads, concat, beta, root_weight, bias };
        let mut layer = GraphAttention::new(config, &mut init).unwrap();
        let mut grads = layer.zero_grads();
        let mut k = 0;
        layer.visit_params(&grads.clone(), &mut |_, p, _, _| { for v in p.iter_mut() { k += 1; *v += 0.3 * ((k * 7 % 11) as f32 - 5.0) / 5.0; } });
        let x = random(&mut init, n * f, 1.0);
        let width = if concat { heads * c } else { c };
        let r = random(&mut init, n * width, 1.0);
        let dx = layer.backward(&g, &Matrix::from_vec(n, f, x.clone()).unwrap(), &Matrix::from_vec(n, width, r.clone()).unwrap(), &mut grads).unwrap();
        let mut params: Vec<Vec<f32>> = vec![Vec::new(); 3];
        layer.visit_params(&grads, &mut |slot, p, _, _| params[slot] = p.to_vec());
        let AttentionGrads::Transformer { qkvs, lin_beta } = &grads else { panic!("TransformerConv grads") };
        prop_assert_eq!(qkvs.bias.is_some(), bias);
        prop_assert_eq!(lin_beta.is_some(), beta && root_weight);
        let t = TransformerFlags { heads, c, concat, beta, root_weight };
        let p64: Vec<Vec<f64>> = params.iter().map(|p| f64s(p)).collect();
        let x64 = f64s(&x);
        let loss = |x: &[f64], p: &[Vec<f64>]| transformer_loss64(&g, x, &p[0], bias.then_some(&p[1][..]), &p[2], t, &r);
        let with = |slot: usize, v: &[f64]| { let mut p = p64.clone(); p[slot] = v.to_vec(); loss(&x64, &p) };
        close("dx", dx.as_slice(), &fd(&x, |v| loss(v, &p64)));
        close("dW (q | k | v | skip)", qkvs.weight.as_slice(), &fd(&params[0], |v| with(0, v)));
        if let Some(db) = &qkvs.bias {
            close("db (q | k | v | skip)", db, &fd(&params[1], |v| with(1, v)));
        }
        if let Some(lb) = lin_beta {
            close("dW_beta", lb.weight.as_slice(), &fd(&params[2], |v| with(2, v)));
        }
    }
}
