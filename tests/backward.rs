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
    assert_eq!(ours.len(), fd.len(), "{what}: length");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(fd).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 2e-4 * scale + 1e-6,
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
        close("dx", dx.as_slice(), &fd(&x, |x| dot(&layer_norm64(x, d, &w, &b, 1e-5), &r)));
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
