//! Pooling the tokens into the head's input, as timm's `global_pool_nlc`, forward and backward.
//!
//! ```text
//! x [B*T x D], the tokens of B images, T = prefix + patches
//! token:   pooled_b = x[b T]                                    (the class token)
//! avg:     pooled_b = mean_{t in S} x[b T + t]                 S = prefix..T, or 0..T with pool_include_prefix
//! max:     pooled_b[c] = max_{t in S} x[b T + t, c]             (gradient to the first arg-max)
//! avgmax:  pooled_b = (max + avg) / 2
//! '':      no pooling: pooled = x, one row per token
//! ```
//!
//! ```
//! use patchgraph::Matrix;
//! use patchgraph::nn::{GlobalPool, VitConfig};
//! let mut c = VitConfig::tiny(8, 4, 2); // 4 patches and a class token: T = 5
//! c.global_pool = GlobalPool::Max;
//! let x = Matrix::from_fn(5, 2, |t, j| if j == 0 { t as f32 } else { -(t as f32) });
//! let (pooled, _) = patchgraph::nn::vit_pool(&c, &x, 1).unwrap();
//! assert_eq!(pooled.row(0), &[4.0, -1.0]); // over the patches 1..5, not the class token
//! ```

use super::{GlobalPool, VitConfig};
use crate::error::{Error, Result};
use crate::tensor::Matrix;

/// What the backward of [`pool`] needs: the arg-max token of every (image, channel) for
/// `max` and `avgmax`.
#[derive(Clone, Debug, Default)]
pub struct PoolCache {
    argmax: Vec<u32>,
}

/// The pooled features `[B x D]` (`[B*T x D]` without pooling) of the tokens `x [B*T x D]`.
pub fn pool(cfg: &VitConfig, x: &Matrix, b: usize) -> Result<(Matrix, PoolCache)> {
    let (t, d) = (cfg.num_tokens(), x.cols());
    x.expect_shape("pooling input", b * t, d)?;
    let from = if cfg.pool_include_prefix { 0 } else { cfg.prefix_tokens() };
    let n = (t - from).max(1) as f32;
    let mean = |i: usize| -> Vec<f32> {
        let mut m = vec![0.0f32; d];
        for r in from..t {
            for (acc, v) in m.iter_mut().zip(x.row(i * t + r)) {
                *acc += v;
            }
        }
        m.iter_mut().for_each(|v| *v /= n);
        m
    };
    let mut cache = PoolCache::default();
    let mut max = |i: usize| -> Vec<f32> {
        let mut m = vec![f32::NEG_INFINITY; d];
        let mut at = vec![from as u32; d];
        for r in from..t {
            for (c, &v) in x.row(i * t + r).iter().enumerate() {
                if v > m[c] || v.is_nan() && !m[c].is_nan() {
                    (m[c], at[c]) = (v, r as u32);
                }
            }
        }
        cache.argmax.extend(at);
        m
    };
    let out = match cfg.global_pool {
        GlobalPool::Token => Matrix::from_fn(b, d, |i, c| x.get(i * t, c)),
        GlobalPool::None => x.clone(),
        GlobalPool::Avg => Matrix::from_vec(b, d, (0..b).flat_map(mean).collect())?,
        GlobalPool::Max => Matrix::from_vec(b, d, (0..b).flat_map(&mut max).collect())?,
        GlobalPool::AvgMax => {
            let data: Vec<f32> = (0..b)
                .flat_map(|i| max(i).into_iter().zip(mean(i)).map(|(m, a)| 0.5 * (m + a)).collect::<Vec<_>>())
                .collect();
            Matrix::from_vec(b, d, data)?
        }
        GlobalPool::Map | GlobalPool::Prr => {
            return Err(Error::invalid("global_pool", "attention pooling is not implemented"));
        }
    };
    Ok((out, cache))
}

/// The backward of [`pool`]: `dx [B*T x D]` from `dpooled`.
pub fn pool_backward(cfg: &VitConfig, cache: &PoolCache, dpooled: &Matrix, b: usize) -> Result<Matrix> {
    let (t, d) = (cfg.num_tokens(), dpooled.cols());
    let from = if cfg.pool_include_prefix { 0 } else { cfg.prefix_tokens() };
    let inv = 1.0 / (t - from).max(1) as f32;
    let mut dx = Matrix::zeros(b * t, d);
    // pooled = mean of rows from..t: every row gets dpooled / n
    let avg = |dx: &mut Matrix, i: usize, w: f32| {
        for r in from..t {
            for (o, v) in dx.row_mut(i * t + r).iter_mut().zip(dpooled.row(i)) {
                *o += w * v * inv;
            }
        }
    };
    // pooled[c] = x[argmax c, c]: the gradient goes to the arg-max row
    let max = |dx: &mut Matrix, i: usize, w: f32| {
        for c in 0..d {
            let r = cache.argmax[i * d + c] as usize;
            dx.row_mut(i * t + r)[c] += w * dpooled.get(i, c);
        }
    };
    match cfg.global_pool {
        GlobalPool::Token => {
            for i in 0..b {
                dx.row_mut(i * t).copy_from_slice(dpooled.row(i)); // pooled = x[row 0]
            }
        }
        GlobalPool::None => dx = dpooled.clone(),
        GlobalPool::Avg => (0..b).for_each(|i| avg(&mut dx, i, 1.0)),
        GlobalPool::Max => (0..b).for_each(|i| max(&mut dx, i, 1.0)),
        GlobalPool::AvgMax => {
            for i in 0..b {
                avg(&mut dx, i, 0.5); // pooled = (max + avg) / 2
                max(&mut dx, i, 0.5);
            }
        }
        GlobalPool::Map | GlobalPool::Prr => {
            return Err(Error::invalid("global_pool", "attention pooling is not implemented"));
        }
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pooling's backward against central differences of its forward (the loss
    /// `sum w . pooled`), with and without the prefix tokens.
    #[test]
    fn backward_is_the_derivative() {
        for pool_kind in [GlobalPool::Token, GlobalPool::Avg, GlobalPool::Max, GlobalPool::AvgMax, GlobalPool::None] {
            for include in [false, true] {
                let mut c = VitConfig::tiny(8, 4, 2);
                (c.global_pool, c.pool_include_prefix, c.reg_tokens) = (pool_kind, include, 1);
                let (b, t, d) = (2, c.num_tokens(), 3);
                let x = Matrix::from_fn(b * t, d, |r, j| ((r * 7 + j * 3) as f32 * 0.37).sin());
                let (p, cache) = pool(&c, &x, b).unwrap();
                let w = Matrix::from_fn(p.rows(), d, |r, j| ((r + 2 * j) as f32 * 0.7).cos());
                let dx = pool_backward(&c, &cache, &w, b).unwrap();
                let loss = |x: &Matrix| -> f64 {
                    let (p, _) = pool(&c, x, b).unwrap();
                    p.as_slice().iter().zip(w.as_slice()).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
                };
                for k in 0..x.as_slice().len() {
                    let (mut up, mut down) = (x.clone(), x.clone());
                    up.as_mut_slice()[k] += 1e-3;
                    down.as_mut_slice()[k] -= 1e-3;
                    let fd = (loss(&up) - loss(&down)) / 2e-3;
                    assert!((fd - dx.as_slice()[k] as f64).abs() < 1e-3, "{pool_kind:?} include {include} [{k}]");
                }
            }
        }
    }
}
