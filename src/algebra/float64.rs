//! The algebra on `f64` inputs, forward and backward, by plain loops: for gradient checks
//! that perturb inputs by `1e-6` (PyTorch's `gradcheck` on float64 tensors), which `f32`
//! inputs cannot carry. The kernels and [`super::attend_reference`] take `f32` inputs; this is
//! the same definition with every number in `f64`.
//!
//! ```text
//! s_e  = score(q_i, k_j) + b_e            e = (j -> i), per head
//! p_e  = exp(s_e - lse_i),  lse_i = log sum_e exp(s_e)      (no edge: out_i = 0, lse_i = -inf)
//! out_i = sum_e p_e v_j
//! dv_j += p_e dout_i;  ds_e = p_e (dout_i . v_j - sum_e' p_e' dout_i . v_j');  db_e = ds_e
//! Dot:   dq_i += scale ds_e k_j,  dk_j += scale ds_e q_i
//! GAT:   g = ds_e lrelu'(q_i + k_j), dq_i += g, dk_j += g
//! GATv2: z = q_i + k_j, g = ds_e a lrelu'(z), dq_i += g, dk_j += g, da += ds_e lrelu(z)
//! ```
//!
//! ```
//! use patchgraph::Graph;
//! use patchgraph::algebra::float64::{Score64, attend64, attend_backward64};
//! let g = Graph::from_edge_index(2, &[0, 1], &[1, 1]).unwrap();
//! let (q, v) = ([1.0, 2.0], [3.0, 5.0]);
//! let (out, lse) = attend64(&g, &Score64::Dot { scale: 1.0 }, &q, &q, &v, 1, None).unwrap();
//! let p0 = 1.0 / (1.0 + (2.0f64 * 2.0 - 2.0 * 1.0).exp()); // weight of 0 -> 1
//! assert!((out[1] - (p0 * 3.0 + (1.0 - p0) * 5.0)).abs() < 1e-12);
//! let grads = attend_backward64(&g, &Score64::Dot { scale: 1.0 }, &q, &q, &v, 1, None, &lse, &[0.0, 1.0]).unwrap();
//! assert!((grads.value[0] + grads.value[1] - 1.0).abs() < 1e-12); // the weights sum to one
//! ```

use crate::error::{Error, Result};
use crate::graph::Graph;

/// [`super::Score`] with its numbers in `f64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Score64 {
    /// `scale q_i . k_j`.
    Dot {
        /// Multiplies the dot product.
        scale: f64,
    },
    /// `LeakyReLU(q_i + k_j)`, one value per node and head.
    Gat {
        /// LeakyReLU slope.
        negative_slope: f64,
    },
    /// `a_h . LeakyReLU(q_i + k_j)`.
    GatV2 {
        /// `a` `[H x d]`.
        attention: Vec<f64>,
        /// LeakyReLU slope.
        negative_slope: f64,
    },
}

/// Gradients of [`attend64`].
#[derive(Clone, Debug, PartialEq)]
pub struct Grads64 {
    /// `[N x H*dk]`.
    pub query: Vec<f64>,
    /// `[N x H*dk]`.
    pub key: Vec<f64>,
    /// `[N x H*dv]`.
    pub value: Vec<f64>,
    /// `[E x H]` when there was a bias.
    pub bias: Option<Vec<f64>>,
    /// `[H x d]` for GATv2.
    pub attention: Option<Vec<f64>>,
}

/// The checked sizes `(N, H, dk, dv)`.
fn dims(
    graph: &Graph,
    score: &Score64,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: usize,
    bias: Option<&[f64]>,
) -> Result<(usize, usize, usize)> {
    let n = graph.num_nodes();
    if heads == 0 {
        return Err(Error::invalid("heads", "must be at least 1"));
    }
    for (name, x) in [("query", q), ("key", k), ("value", v)] {
        if n == 0 || x.len() % (n * heads) != 0 {
            return Err(Error::shape(
                name,
                format!("{n} rows of a multiple of {heads} heads"),
                format!("{} values", x.len()),
            ));
        }
    }
    let (dk, dv) = (q.len() / (n * heads), v.len() / (n * heads));
    if k.len() != q.len() {
        return Err(Error::shape("key", format!("{} values like the query", q.len()), format!("{}", k.len())));
    }
    if matches!(score, Score64::Gat { .. }) && dk != 1 {
        return Err(Error::shape("GAT query", format!("{n} x {heads} (one value per head)"), format!("{dk} per head")));
    }
    if let Score64::GatV2 { attention, .. } = score {
        if attention.len() != heads * dk {
            return Err(Error::shape(
                "GATv2 attention",
                format!("{} values", heads * dk),
                format!("{}", attention.len()),
            ));
        }
    }
    if let Some(b) = bias {
        if b.len() != graph.num_edges() * heads {
            return Err(Error::shape(
                "edge bias",
                format!("[{} x {heads}]", graph.num_edges()),
                format!("{} values", b.len()),
            ));
        }
    }
    Ok((n, dk, dv))
}

fn lrelu(z: f64, slope: f64) -> f64 {
    if z >= 0.0 { z } else { slope * z }
}

/// The scores of destination `i`'s edges for head `h`.
#[allow(clippy::too_many_arguments)]
fn scores(
    graph: &Graph,
    score: &Score64,
    q: &[f64],
    k: &[f64],
    heads: usize,
    dk: usize,
    bias: Option<&[f64]>,
    i: usize,
    h: usize,
) -> Vec<f64> {
    let qi = &q[(i * heads + h) * dk..(i * heads + h + 1) * dk];
    graph
        .edge_range(i)
        .zip(graph.incoming(i))
        .map(|(e, j)| {
            let kj = &k[(j * heads + h) * dk..(j * heads + h + 1) * dk];
            let b = bias.map_or(0.0, |b| b[e * heads + h]);
            b + match score {
                Score64::Dot { scale } => scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>(),
                Score64::Gat { negative_slope } => lrelu(qi[0] + kj[0], *negative_slope),
                Score64::GatV2 { attention, negative_slope } => {
                    (0..dk).map(|c| attention[h * dk + c] * lrelu(qi[c] + kj[c], *negative_slope)).sum()
                }
            }
        })
        .collect()
}

/// The forward: `out [N x H*dv]` and the log-sum-exp `[N x H]` (row-major `f64`).
pub fn attend64(
    graph: &Graph,
    score: &Score64,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: usize,
    bias: Option<&[f64]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, dk, dv) = dims(graph, score, q, k, v, heads, bias)?;
    let mut out = vec![0.0; n * heads * dv];
    let mut lse = vec![f64::NEG_INFINITY; n * heads];
    for i in 0..n {
        for h in 0..heads {
            let s = scores(graph, score, q, k, heads, dk, bias, i, h);
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[i * heads + h] = m + z.ln();
            for (t, j) in graph.incoming(i).enumerate() {
                let p = (s[t] - m).exp() / z;
                for c in 0..dv {
                    out[(i * heads + h) * dv + c] += p * v[(j * heads + h) * dv + c];
                }
            }
        }
    }
    Ok((out, lse))
}

/// The backward of [`attend64`] for `dout [N x H*dv]`, given its log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn attend_backward64(
    graph: &Graph,
    score: &Score64,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: usize,
    bias: Option<&[f64]>,
    lse: &[f64],
    dout: &[f64],
) -> Result<Grads64> {
    let (n, dk, dv) = dims(graph, score, q, k, v, heads, bias)?;
    if lse.len() != n * heads || dout.len() != n * heads * dv {
        return Err(Error::shape(
            "lse / dout",
            format!("[{n} x {heads}] and [{n} x {}]", heads * dv),
            format!("{} and {} values", lse.len(), dout.len()),
        ));
    }
    let mut g = Grads64 {
        query: vec![0.0; q.len()],
        key: vec![0.0; k.len()],
        value: vec![0.0; v.len()],
        bias: bias.map(|b| vec![0.0; b.len()]),
        attention: match score {
            Score64::GatV2 { attention, .. } => Some(vec![0.0; attention.len()]),
            _ => None,
        },
    };
    for i in 0..n {
        for h in 0..heads {
            let l = lse[i * heads + h];
            if l == f64::NEG_INFINITY {
                continue;
            }
            let s = scores(graph, score, q, k, heads, dk, bias, i, h);
            let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
            let gi = &dout[(i * heads + h) * dv..(i * heads + h + 1) * dv];
            let sources: Vec<usize> = graph.incoming(i).collect();
            // out_i = sum_e p_e v_j:  dv_j += p_e dout_i,  dp_e = dout_i . v_j
            let dp: Vec<f64> = sources
                .iter()
                .map(|&j| gi.iter().zip(&v[(j * heads + h) * dv..(j * heads + h + 1) * dv]).map(|(a, b)| a * b).sum())
                .collect();
            let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (t, (&j, e)) in sources.iter().zip(graph.edge_range(i)).enumerate() {
                let gv = &mut g.value[(j * heads + h) * dv..(j * heads + h + 1) * dv];
                for (acc, &d) in gv.iter_mut().zip(gi) {
                    *acc += p[t] * d;
                }
                // p = softmax(s):  ds_e = p_e (dp_e - sum p dp)
                let ds = p[t] * (dp[t] - dsum);
                if let Some(db) = g.bias.as_mut() {
                    db[e * heads + h] = ds;
                }
                let (qi, kj) = ((i * heads + h) * dk, (j * heads + h) * dk);
                for c in 0..dk {
                    let (gq, gk) = match score {
                        Score64::Dot { scale } => (scale * ds * k[kj + c], scale * ds * q[qi + c]),
                        Score64::Gat { negative_slope } => {
                            let d = if q[qi] + k[kj] >= 0.0 { ds } else { negative_slope * ds };
                            (d, d)
                        }
                        Score64::GatV2 { attention, negative_slope } => {
                            let z = q[qi + c] + k[kj + c];
                            if let Some(da) = g.attention.as_mut() {
                                da[h * dk + c] += ds * lrelu(z, *negative_slope);
                            }
                            let d = ds * attention[h * dk + c] * if z >= 0.0 { 1.0 } else { *negative_slope };
                            (d, d)
                        }
                    };
                    g.query[qi + c] += gq;
                    g.key[kj + c] += gk;
                }
            }
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algebra::{AttentionInputs, Score, attend_reference};
    use crate::tensor::Matrix;

    /// The f64 forward equals the f32-input reference on f32-representable inputs, and its
    /// backward equals central differences of its forward.
    #[test]
    fn forward_matches_the_reference_and_backward_the_differences() {
        let g = Graph::from_edge_index(4, &[0, 1, 2, 3, 1, 0], &[1, 1, 2, 2, 3, 0]).unwrap();
        let heads = 2;
        let val = |i: usize, s: f64| ((i as f64) * 0.37 + s).sin().mul_add(0.5, 0.0) as f32 as f64;
        let q: Vec<f64> = (0..4 * heads * 3).map(|i| val(i, 0.1)).collect();
        let k: Vec<f64> = (0..4 * heads * 3).map(|i| val(i, 0.7)).collect();
        let v: Vec<f64> = (0..4 * heads * 2).map(|i| val(i, 1.3)).collect();
        let bias: Vec<f64> = (0..g.num_edges() * heads).map(|i| val(i, 2.1)).collect();
        for score in [
            Score64::Dot { scale: 0.6 },
            Score64::GatV2 { attention: (0..6).map(|i| val(i, 3.0)).collect(), negative_slope: 0.2 },
        ] {
            let (out, lse) = attend64(&g, &score, &q, &k, &v, heads, Some(&bias)).unwrap();
            let s32 = match &score {
                Score64::Dot { scale } => Score::Dot { scale: *scale as f32 },
                Score64::GatV2 { attention, negative_slope } => Score::GatV2 {
                    attention: attention.iter().map(|&a| a as f32).collect(),
                    negative_slope: *negative_slope as f32,
                },
                Score64::Gat { .. } => unreachable!(),
            };
            let m = |x: &[f64], c: usize| Matrix::from_vec(4, c, x.iter().map(|&a| a as f32).collect()).unwrap();
            let (qm, km, vm) = (m(&q, 6), m(&k, 6), m(&v, 4));
            let b32: Vec<f32> = bias.iter().map(|&b| b as f32).collect();
            let reference =
                attend_reference(&g, &s32, &AttentionInputs::new(&qm, &km, &vm, heads).with_bias(&b32), false).unwrap();
            for (a, b) in out.iter().zip(reference.out.as_slice()) {
                assert!((a - *b as f64).abs() < 1e-6, "{a} vs {b}");
            }
            let dout: Vec<f64> = (0..out.len()).map(|i| val(i, 4.2)).collect();
            let grads = attend_backward64(&g, &score, &q, &k, &v, heads, Some(&bias), &lse, &dout).unwrap();
            let loss = |q: &[f64], k: &[f64], v: &[f64], b: &[f64]| -> f64 {
                let (o, _) = attend64(&g, &score, q, k, v, heads, Some(b)).unwrap();
                o.iter().zip(&dout).map(|(a, b)| a * b).sum()
            };
            let eps = 1e-6;
            let check = |x: &[f64], analytic: &[f64], which: usize| {
                for t in 0..x.len() {
                    let (mut up, mut down) = (x.to_vec(), x.to_vec());
                    up[t] += eps;
                    down[t] -= eps;
                    let args = |y: &[f64]| match which {
                        0 => loss(y, &k, &v, &bias),
                        1 => loss(&q, y, &v, &bias),
                        2 => loss(&q, &k, y, &bias),
                        _ => loss(&q, &k, &v, y),
                    };
                    let fd = (args(&up) - args(&down)) / (2.0 * eps);
                    assert!((fd - analytic[t]).abs() < 1e-7, "input {which}[{t}]: {fd} vs {}", analytic[t]);
                }
            };
            check(&q, &grads.query, 0);
            check(&k, &grads.key, 1);
            check(&v, &grads.value, 2);
            check(&bias, grads.bias.as_ref().unwrap(), 3);
        }
        assert!(attend64(&g, &Score64::Dot { scale: 1.0 }, &q, &k[1..], &v, heads, None).is_err());
    }
}
