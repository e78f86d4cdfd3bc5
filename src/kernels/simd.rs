//! Placeholder scalar versions (replaced by the pulp SIMD module on merge).

/// max
pub fn max(x: &[f32]) -> f32 {
    x.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

/// exp(x - m) in place, returns sum
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mut s = 0.0;
    for v in x {
        *v = (*v - m).exp();
        s += *v;
    }
    s
}

/// x *= a
pub fn scale(x: &mut [f32], a: f32) {
    for v in x {
        *v *= a;
    }
}

/// a . b
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// y += a x
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (u, v) in y.iter_mut().zip(x) {
        *u += a * v;
    }
}
