//! SIMD primitives of the attention kernels, with runtime dispatch (AVX-512 / AVX2+FMA / scalar).
//!
//! Every public function detects the best instruction set at run time through [`pulp`] and runs
//! a body compiled for it; the choice depends only on the CPU, never on the data, so a given
//! input gives the same bits on every call on a given machine. Each one has a plain scalar
//! reference right beside it (`*_scalar`), which the tests compare it with.
//!
//! The hottest of them is [`exp_sub_sum`], the inner loop of a softmax: a vectorised polynomial
//! `exp` (Cephes range reduction, `2^n` built from exponent bits, no float-to-int conversion).
//!
//! ```
//! use patchgraph::kernels::simd;
//!
//! // A numerically stable softmax of one row.
//! let mut row = [1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
//! let m = simd::max(&row);
//! let sum = simd::exp_sub_sum(&mut row, m);
//! simd::scale(&mut row, 1.0 / sum);
//! assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! assert_eq!(row[3], 0.0);
//! assert!((row[2] - 0.665_240_9).abs() < 1e-6);
//! ```

use pulp::{Simd, WithSimd};

/// The instruction set a dispatched call runs with on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// No SIMD level of pulp available: one lane at a time (LLVM may still vectorise).
    Scalar,
    /// x86-64-v3: AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// x86-64-v4: AVX-512 F/BW/CD/DQ/VL, 16 f32 lanes.
    Avx512,
    /// Another architecture's SIMD level chosen by pulp.
    Other,
}

impl Level {
    /// A short name: `"avx512"`, `"avx2+fma"`, `"scalar"` or `"other"`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2+fma",
            Level::Avx512 => "avx512",
            Level::Other => "other",
        }
    }
}

/// The level every function of this module dispatches to on this machine.
pub fn level() -> Level {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        match pulp::Arch::new() {
            pulp::Arch::V4(_) => Level::Avx512,
            pulp::Arch::V3(_) => Level::Avx2,
            pulp::Arch::Scalar => Level::Scalar,
            #[allow(unreachable_patterns)]
            _ => Level::Other,
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        Level::Other
    }
}

#[inline(always)]
pub(crate) fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

/// `0, 1, .., 15`: lane indices, to mask the lanes of a partial tail vector.
static IOTA: [f32; 16] = [0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.];

/// The mask of the first `len` lanes (`len < S::F32_LANES <= 16`).
#[inline(always)]
fn first_lanes<S: Simd>(simd: S, len: usize) -> S::m32s {
    let iota = S::as_simd_f32s(&IOTA[..S::F32_LANES]).0[0];
    simd.less_than_f32s(iota, simd.splat_f32s(len as f32))
}

// ---------------------------------------------------------------------------------------------
// max

/// `max_i x[i]`; `-inf` for an empty slice. With NaN in `x` the result is unspecified (but the
/// same on every call).
pub fn max(x: &[f32]) -> f32 {
    dispatch(Max(x))
}

/// Scalar reference of [`max`]: a left fold of `f32::max` from `-inf`.
pub fn max_scalar(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

struct Max<'a>(&'a [f32]);

impl WithSimd for Max<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let (head, tail) = S::as_simd_f32s(self.0);
        let ninf = simd.splat_f32s(f32::NEG_INFINITY);
        let mut acc = [ninf; 4];
        let mut quads = head.chunks_exact(4);
        for q in &mut quads {
            for k in 0..4 {
                acc[k] = simd.max_f32s(acc[k], q[k]);
            }
        }
        for (k, &v) in quads.remainder().iter().enumerate() {
            acc[k] = simd.max_f32s(acc[k], v);
        }
        if !tail.is_empty() {
            let v = simd.select_f32s(first_lanes(simd, tail.len()), simd.partial_load_f32s(tail), ninf);
            acc[0] = simd.max_f32s(acc[0], v);
        }
        let acc = simd.max_f32s(simd.max_f32s(acc[0], acc[1]), simd.max_f32s(acc[2], acc[3]));
        simd.reduce_max_f32s(acc)
    }
}

/// Whether every value of `x` is finite (no NaN, no infinity): `x - x` is `+0` (all bits
/// clear) exactly for a finite `x` and NaN otherwise, so the bitwise OR of all the differences
/// is `+0` exactly when they all are. At memory speed (no dependent FMA chain: a subtraction
/// and an OR per vector), for checking inputs at an API boundary.
pub fn all_finite(x: &[f32]) -> bool {
    dispatch(AllFinite(x))
}

/// Scalar reference of [`all_finite`].
pub fn all_finite_scalar(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

struct AllFinite<'a>(&'a [f32]);

impl WithSimd for AllFinite<'_> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> bool {
        let mut acc = [simd.splat_f32s(0.0); 2];
        finite_fold(simd, self.0, &mut acc);
        finite_fold_is_clear(simd, acc)
    }
}

/// ORs `x_i - x_i` into two lane-wise accumulators: their bits stay clear exactly while every
/// `x_i` is finite (the body of [`all_finite`], for callers that fold many slices into the
/// same accumulators inside their own dispatch, then ask [`finite_fold_is_clear`] once).
#[inline(always)]
pub(crate) fn finite_fold<S: Simd>(simd: S, x: &[f32], acc: &mut [S::f32s; 2]) {
    let (head, tail) = S::as_simd_f32s(x);
    let mut pairs = head.chunks_exact(2);
    for p in &mut pairs {
        acc[0] = simd.or_f32s(acc[0], simd.sub_f32s(p[0], p[0]));
        acc[1] = simd.or_f32s(acc[1], simd.sub_f32s(p[1], p[1]));
    }
    if let [v] = pairs.remainder() {
        acc[0] = simd.or_f32s(acc[0], simd.sub_f32s(*v, *v));
    }
    if !tail.is_empty() {
        // Lanes past the tail count as 0 (finite).
        let zero = simd.splat_f32s(0.0);
        let v = simd.select_f32s(first_lanes(simd, tail.len()), simd.partial_load_f32s(tail), zero);
        acc[1] = simd.or_f32s(acc[1], simd.sub_f32s(v, v));
    }
}

/// Whether the accumulators of [`finite_fold`] say "every value was finite": each lane is `+0`
/// or NaN, so their sum is `0` exactly when no lane is NaN.
#[inline(always)]
pub(crate) fn finite_fold_is_clear<S: Simd>(simd: S, acc: [S::f32s; 2]) -> bool {
    simd.reduce_sum_f32s(simd.or_f32s(acc[0], acc[1])) == 0.0
}

// ---------------------------------------------------------------------------------------------
// exp

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `1.5 * 2^23 + 127`: adding it rounds to an integer `n` and leaves `n + 127` in the low
/// mantissa bits, so `bits << 23` is the IEEE exponent field of `2^n`.
const MAGIC: f32 = 12_583_039.0;
/// Cephes split of `ln 2 = LN2_HI + LN2_LO`; `LN2_HI` has 9 significant bits, so `n * LN2_HI`
/// is exact for `|n| < 2^15` even without FMA.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial: `exp(r) ~ 1 + r + r^2 P(r)` on `|r| <= ln2 / 2`.
const P0: f32 = 1.987_569_2e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
/// Cephes' `5.0000001201e-1` rounds to exactly 0.5 in f32.
const P5: f32 = 0.5;
/// Below this the result is flushed to 0 (the true value is under `6.9e-39`, subnormal).
/// Between it and `ln(f32::MIN_POSITIVE) = -87.337` the result is a correctly scaled subnormal.
const EXP_LO: f32 = -87.6;
/// Above this `2^n` would overflow the exponent field: the result is `+inf`. (The true overflow
/// threshold is `88.7228`; nothing in a softmax comes near it, since its inputs are `<= 0`.)
const EXP_HI: f32 = 88.376_26;

/// `exp(v)` lane-wise: `v = n ln2 + r`, `n = round(v log2 e)`, `exp(v) = 2^n (1 + r + r^2 P(r))`.
/// `v < EXP_LO` (including `-inf`) gives exactly 0, `v > EXP_HI` gives `+inf`, NaN stays NaN.
#[inline(always)]
fn exp_v<S: Simd>(simd: S, v: S::f32s) -> S::f32s {
    let s = |c: f32| simd.splat_f32s(c);
    // `t = round(v log2e) + MAGIC` exactly: the fused multiply-add rounds once, at integer
    // granularity since MAGIC is in [2^23, 2^24).
    let t = simd.mul_add_e_f32s(v, s(LOG2E), s(MAGIC));
    let n = simd.sub_f32s(t, s(MAGIC));
    let r = simd.mul_add_e_f32s(n, s(-LN2_HI), v);
    let r = simd.mul_add_e_f32s(n, s(-LN2_LO), r);
    let mut p = s(P0);
    p = simd.mul_add_e_f32s(p, r, s(P1));
    p = simd.mul_add_e_f32s(p, r, s(P2));
    p = simd.mul_add_e_f32s(p, r, s(P3));
    p = simd.mul_add_e_f32s(p, r, s(P4));
    p = simd.mul_add_e_f32s(p, r, s(P5));
    let r2 = simd.mul_f32s(r, r);
    let y = simd.add_f32s(simd.mul_add_e_f32s(p, r2, r), s(1.0));
    // The bits of `t` are `0x4B40_0000 + n + 127`; shifted left by 23 the constant part leaves
    // the word and `(n + 127) << 23` is `2^n` (a normal float for -126 <= n <= 127).
    let pow2n = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(simd.transmute_u32s_f32s(t), simd.splat_u32s(23)));
    let e = simd.mul_f32s(y, pow2n);
    let e = simd.select_f32s(simd.less_than_f32s(v, s(EXP_LO)), s(0.0), e);
    simd.select_f32s(simd.greater_than_f32s(v, s(EXP_HI)), s(f32::INFINITY), e)
}

/// `x[i] = exp(x[i] - m)` for every `i`, and returns `sum_i x[i]` (the new values).
///
/// The softmax inner loop. `x[i] - m = -inf` (or below -87.6) gives exactly 0; the relative
/// error of each `exp` against f64 is below 2e-7 on `[-87, 0]`. The sum is accumulated in f32
/// over `2 * lanes` partial sums, in a fixed order.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    dispatch(ExpSubSum { x, m })
}

/// Scalar reference of [`exp_sub_sum`]: `f32::exp` and a sequential f32 sum.
pub fn exp_sub_sum_scalar(x: &mut [f32], m: f32) -> f32 {
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    sum
}

struct ExpSubSum<'a> {
    x: &'a mut [f32],
    m: f32,
}

impl WithSimd for ExpSubSum<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let m = simd.splat_f32s(self.m);
        let (head, tail) = S::as_mut_simd_f32s(self.x);
        let mut acc = [simd.splat_f32s(0.0); 2];
        let mut pairs = head.chunks_exact_mut(2);
        for p in &mut pairs {
            for k in 0..2 {
                p[k] = exp_v(simd, simd.sub_f32s(p[k], m));
                acc[k] = simd.add_f32s(acc[k], p[k]);
            }
        }
        for v in pairs.into_remainder() {
            *v = exp_v(simd, simd.sub_f32s(*v, m));
            acc[0] = simd.add_f32s(acc[0], *v);
        }
        if !tail.is_empty() {
            let e = exp_v(simd, simd.sub_f32s(simd.partial_load_f32s(tail), m));
            simd.partial_store_f32s(tail, e);
            let e = simd.select_f32s(first_lanes(simd, tail.len()), e, simd.splat_f32s(0.0));
            acc[1] = simd.add_f32s(acc[1], e);
        }
        simd.reduce_sum_f32s(simd.add_f32s(acc[0], acc[1]))
    }
}

/// `x[i] = exp(x[i])` for every `i`, with the polynomial of [`exp_sub_sum`]: relative error
/// below 2e-7 on `[-87, 0]` (and on `[0, 88]`), 0 below -87.6 and for `-inf`, `+inf` above
/// 88.376, NaN stays NaN.
pub fn exp_inplace(x: &mut [f32]) {
    dispatch(ExpInplace(x))
}

/// Scalar reference of [`exp_inplace`]: `f32::exp`.
pub fn exp_inplace_scalar(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

struct ExpInplace<'a>(&'a mut [f32]);

impl WithSimd for ExpInplace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (head, tail) = S::as_mut_simd_f32s(self.0);
        for v in head {
            *v = exp_v(simd, *v);
        }
        if !tail.is_empty() {
            let e = exp_v(simd, simd.partial_load_f32s(tail));
            simd.partial_store_f32s(tail, e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gelu

/// `erf(x)` lane-wise as a rational function `x P(x^2) / Q(x^2)` on `[-4, 4]` (outside it erf is
/// `+-1` in f32): the minimax coefficients Eigen and XLA use for f32 erf.
#[inline(always)]
fn erf_v<S: Simd>(simd: S, v: S::f32s) -> S::f32s {
    let s = |c: f32| simd.splat_f32s(c);
    let x = simd.min_f32s(simd.max_f32s(v, s(-4.0)), s(4.0));
    let x2 = simd.mul_f32s(x, x);
    let mut p = s(-2.726_142_3e-10);
    p = simd.mul_add_e_f32s(x2, p, s(2.770_681_4e-8));
    p = simd.mul_add_e_f32s(x2, p, s(-2.101_024e-6));
    p = simd.mul_add_e_f32s(x2, p, s(-5.692_506_4e-5));
    p = simd.mul_add_e_f32s(x2, p, s(-7.349_906_3e-4));
    p = simd.mul_add_e_f32s(x2, p, s(-2.954_6e-3));
    p = simd.mul_add_e_f32s(x2, p, s(-1.609_603_3e-2));
    let p = simd.mul_f32s(x, p);
    let mut q = s(-1.456_607_2e-5);
    q = simd.mul_add_e_f32s(x2, q, s(-2.133_740_6e-4));
    q = simd.mul_add_e_f32s(x2, q, s(-1.682_827e-3));
    q = simd.mul_add_e_f32s(x2, q, s(-7.373_329e-3));
    q = simd.mul_add_e_f32s(x2, q, s(-1.426_474e-2));
    simd.div_f32s(p, q)
}

/// `x[i] = gelu(x[i]) = x/2 (1 + erf(x / sqrt 2))`, the exact (erf) GELU, in place. Absolute
/// error against the f64 GELU below `4e-7 * max(1, |x|)`.
pub fn gelu_inplace(x: &mut [f32]) {
    dispatch(GeluInplace(x))
}

/// Scalar reference of [`gelu_inplace`]: `libm::erff`.
pub fn gelu_inplace_scalar(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

struct GeluInplace<'a>(&'a mut [f32]);

#[inline(always)]
fn gelu_v<S: Simd>(simd: S, v: S::f32s) -> S::f32s {
    let e = erf_v(simd, simd.mul_f32s(v, simd.splat_f32s(std::f32::consts::FRAC_1_SQRT_2)));
    simd.mul_f32s(simd.mul_f32s(v, simd.splat_f32s(0.5)), simd.add_f32s(e, simd.splat_f32s(1.0)))
}

impl WithSimd for GeluInplace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (head, tail) = S::as_mut_simd_f32s(self.0);
        for v in head {
            *v = gelu_v(simd, *v);
        }
        if !tail.is_empty() {
            let g = gelu_v(simd, simd.partial_load_f32s(tail));
            simd.partial_store_f32s(tail, g);
        }
    }
}

/// `out[i] = gelu(x[i])`: [`gelu_inplace`] out of place (the same bits), so that a caller who
/// keeps the pre-activation needs no copy of it first. Both slices have the same length.
pub fn gelu_into(x: &[f32], out: &mut [f32]) {
    dispatch(GeluInto { x, out })
}

struct GeluInto<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for GeluInto<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let n = self.out.len().min(self.x.len());
        let (xh, xt) = S::as_simd_f32s(&self.x[..n]);
        let (oh, ot) = S::as_mut_simd_f32s(&mut self.out[..n]);
        for (o, x) in oh.iter_mut().zip(xh) {
            *o = gelu_v(simd, *x);
        }
        if !ot.is_empty() {
            simd.partial_store_f32s(ot, gelu_v(simd, simd.partial_load_f32s(xt)));
        }
    }
}

/// `dy[i] = dy[i] * gelu'(x[i])`: [`gelu_backward`] in place (the same bits), so that the
/// gradient needs no second buffer. Both slices have the same length.
pub fn gelu_backward_inplace(x: &[f32], dy: &mut [f32]) {
    dispatch(GeluBackwardInplace { x, dy })
}

struct GeluBackwardInplace<'a> {
    x: &'a [f32],
    dy: &'a mut [f32],
}

impl WithSimd for GeluBackwardInplace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let n = self.dy.len().min(self.x.len());
        let (xh, xt) = S::as_simd_f32s(&self.x[..n]);
        let (dh, dt) = S::as_mut_simd_f32s(&mut self.dy[..n]);
        for (d, x) in dh.iter_mut().zip(xh) {
            *d = gelu_grad_v(simd, *x, *d);
        }
        if !dt.is_empty() {
            let g = gelu_grad_v(simd, simd.partial_load_f32s(xt), simd.partial_load_f32s(dt));
            simd.partial_store_f32s(dt, g);
        }
    }
}

/// `out[i] = dy[i] * gelu'(x[i])`, `gelu'(x) = (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)`:
/// the backward of [`gelu_inplace`]. All three slices have the same length.
pub fn gelu_backward(x: &[f32], dy: &[f32], out: &mut [f32]) {
    dispatch(GeluBackward { x, dy, out })
}

/// Scalar reference of [`gelu_backward`]: `libm::erff` and `f32::exp`.
pub fn gelu_backward_scalar(x: &[f32], dy: &[f32], out: &mut [f32]) {
    for ((o, &x), &d) in out.iter_mut().zip(x).zip(dy) {
        let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
        *o = d * (cdf + x * (-0.5 * x * x).exp() * INV_SQRT_2PI);
    }
}

/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

struct GeluBackward<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    out: &'a mut [f32],
}

#[inline(always)]
fn gelu_grad_v<S: Simd>(simd: S, x: S::f32s, dy: S::f32s) -> S::f32s {
    let s = |c: f32| simd.splat_f32s(c);
    let cdf =
        simd.mul_f32s(s(0.5), simd.add_f32s(s(1.0), erf_v(simd, simd.mul_f32s(x, s(std::f32::consts::FRAC_1_SQRT_2)))));
    let pdf = simd.mul_f32s(exp_v(simd, simd.mul_f32s(s(-0.5), simd.mul_f32s(x, x))), s(INV_SQRT_2PI));
    simd.mul_f32s(dy, simd.mul_add_e_f32s(x, pdf, cdf))
}

impl WithSimd for GeluBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let n = self.out.len().min(self.x.len()).min(self.dy.len());
        let (xh, xt) = S::as_simd_f32s(&self.x[..n]);
        let (dh, dt) = S::as_simd_f32s(&self.dy[..n]);
        let (oh, ot) = S::as_mut_simd_f32s(&mut self.out[..n]);
        for ((o, x), d) in oh.iter_mut().zip(xh).zip(dh) {
            *o = gelu_grad_v(simd, *x, *d);
        }
        if !ot.is_empty() {
            let g = gelu_grad_v(simd, simd.partial_load_f32s(xt), simd.partial_load_f32s(dt));
            simd.partial_store_f32s(ot, g);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scale, dot, axpy

/// `x[i] = a * x[i]`.
pub fn scale(x: &mut [f32], a: f32) {
    dispatch(Scale(x, a))
}

/// Scalar reference of [`scale`].
pub fn scale_scalar(x: &mut [f32], a: f32) {
    for v in x.iter_mut() {
        *v *= a;
    }
}

struct Scale<'a>(&'a mut [f32], f32);

impl WithSimd for Scale<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let a = simd.splat_f32s(self.1);
        let (head, tail) = S::as_mut_simd_f32s(self.0);
        for v in head {
            *v = simd.mul_f32s(*v, a);
        }
        if !tail.is_empty() {
            simd.partial_store_f32s(tail, simd.mul_f32s(simd.partial_load_f32s(tail), a));
        }
    }
}

/// `sum_i a[i] * b[i]`, over `4 * lanes` partial sums in a fixed order.
///
/// # Panics
/// If `a.len() != b.len()`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    dispatch(Dot(a, b))
}

/// Scalar reference of [`dot`]: a sequential f32 sum.
///
/// # Panics
/// If `a.len() != b.len()`.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b).fold(0.0, |s, (&x, &y)| s + x * y)
}

struct Dot<'a>(&'a [f32], &'a [f32]);

/// `sum_i a[i] * b[i]` for equal lengths (a body to inline into a dispatched op).
#[inline(always)]
fn dot_body<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (ah, at) = S::as_simd_f32s(a);
    let (bh, bt) = S::as_simd_f32s(b);
    let mut acc = [simd.splat_f32s(0.0); 4];
    let mut aq = ah.chunks_exact(4);
    let mut bq = bh.chunks_exact(4);
    for (x, y) in (&mut aq).zip(&mut bq) {
        for k in 0..4 {
            acc[k] = simd.mul_add_e_f32s(x[k], y[k], acc[k]);
        }
    }
    for (k, (&x, &y)) in aq.remainder().iter().zip(bq.remainder()).enumerate() {
        acc[k] = simd.mul_add_e_f32s(x, y, acc[k]);
    }
    if !at.is_empty() {
        // Missing lanes load as 0 and add 0 * 0.
        acc[3] = simd.mul_add_e_f32s(simd.partial_load_f32s(at), simd.partial_load_f32s(bt), acc[3]);
    }
    let acc = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    simd.reduce_sum_f32s(acc)
}

impl WithSimd for Dot<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        dot_body(simd, self.0, self.1)
    }
}

/// `y[i] += a * x[i]` (fused multiply-add where the level has FMA).
///
/// # Panics
/// If `y.len() != x.len()`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    dispatch(Axpy(y, a, x))
}

/// Scalar reference of [`axpy`]: `y[i] += a * x[i]`, unfused.
///
/// # Panics
/// If `y.len() != x.len()`.
pub fn axpy_scalar(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    for (v, &u) in y.iter_mut().zip(x) {
        *v += a * u;
    }
}

struct Axpy<'a>(&'a mut [f32], f32, &'a [f32]);

impl WithSimd for Axpy<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let a = simd.splat_f32s(self.1);
        let (yh, yt) = S::as_mut_simd_f32s(self.0);
        let (xh, xt) = S::as_simd_f32s(self.2);
        for (y, &x) in yh.iter_mut().zip(xh) {
            *y = simd.mul_add_e_f32s(a, x, *y);
        }
        if !yt.is_empty() {
            let y = simd.mul_add_e_f32s(a, simd.partial_load_f32s(xt), simd.partial_load_f32s(yt));
            simd.partial_store_f32s(yt, y);
        }
    }
}

/// `out = sum_t p[t] * rows[t]`: a weighted sum of equal-length rows (the SpMM of one
/// destination and head), accumulated in row order with fused multiply-adds. Blocks of four
/// vectors of `out` stay in registers while every row streams past them, so `out` is written
/// once instead of once per row; the bits equal a sequence of [`axpy`]s into a zeroed `out`.
///
/// # Panics
/// If `p.len() != rows.len()` or a row's length differs from `out`'s.
pub fn weighted_sum(out: &mut [f32], p: &[f32], rows: &[&[f32]]) {
    assert_eq!(p.len(), rows.len(), "weighted_sum: {} weights for {} rows", p.len(), rows.len());
    assert!(rows.iter().all(|r| r.len() == out.len()), "weighted_sum: a row's length differs from out's");
    dispatch(WeightedSum { out, p, row: |t: usize| rows[t] })
}

/// Scalar reference of [`weighted_sum`]: `out = 0`, then `out += p[t] * rows[t]` row by row.
///
/// # Panics
/// As [`weighted_sum`].
pub fn weighted_sum_scalar(out: &mut [f32], p: &[f32], rows: &[&[f32]]) {
    assert_eq!(p.len(), rows.len(), "weighted_sum: {} weights for {} rows", p.len(), rows.len());
    out.fill(0.0);
    for (&a, row) in p.iter().zip(rows) {
        axpy_scalar(out, a, row);
    }
}

/// [`weighted_sum`] over rows produced by `row(t)` for `t < p.len()`, each `out.len()` long.
struct WeightedSum<'a, R> {
    out: &'a mut [f32],
    p: &'a [f32],
    row: R,
}

impl<'r, R: Fn(usize) -> &'r [f32]> WithSimd for WeightedSum<'_, R> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let WeightedSum { out, p, row } = self;
        let n = out.len();
        let (oh, ot) = S::as_mut_simd_f32s(out);
        let full = oh.len();
        let zero = simd.splat_f32s(0.0);
        // Four vectors at a time in registers (four named accumulators, so they are not
        // spilled), then single vectors.
        let mut c = 0;
        while c + 4 <= full {
            let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
            for (t, &a) in p.iter().enumerate() {
                let x = &S::as_simd_f32s(&row(t)[..n]).0[c..c + 4];
                let a = simd.splat_f32s(a);
                a0 = simd.mul_add_e_f32s(a, x[0], a0);
                a1 = simd.mul_add_e_f32s(a, x[1], a1);
                a2 = simd.mul_add_e_f32s(a, x[2], a2);
                a3 = simd.mul_add_e_f32s(a, x[3], a3);
            }
            oh[c..c + 4].copy_from_slice(&[a0, a1, a2, a3]);
            c += 4;
        }
        while c < full {
            let mut acc = zero;
            for (t, &a) in p.iter().enumerate() {
                let x = S::as_simd_f32s(&row(t)[..n]).0[c];
                acc = simd.mul_add_e_f32s(simd.splat_f32s(a), x, acc);
            }
            oh[c] = acc;
            c += 1;
        }
        if !ot.is_empty() {
            let mut acc = zero;
            for (t, &a) in p.iter().enumerate() {
                let (_, xt) = S::as_simd_f32s(&row(t)[..n]);
                acc = simd.mul_add_e_f32s(simd.splat_f32s(a), simd.partial_load_f32s(xt), acc);
            }
            simd.partial_store_f32s(ot, acc);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inside a dispatch

/// The same primitives for code that already runs inside one `pulp` dispatch (a kernel's whole
/// inner loop): no per-call dispatch, and the bodies inline into the caller's loop. Each is the
/// body of the public function of the same name, so the public tests cover them.
pub(crate) mod within {
    use super::{Dot, ExpSubSum, Gatv2Row, Max, Scale, WeightedSum};
    use pulp::{Simd, WithSimd};

    /// [`super::max`].
    #[inline(always)]
    pub fn max<S: Simd>(simd: S, x: &[f32]) -> f32 {
        Max(x).with_simd(simd)
    }

    /// [`super::exp_sub_sum`].
    #[inline(always)]
    pub fn exp_sub_sum<S: Simd>(simd: S, x: &mut [f32], m: f32) -> f32 {
        ExpSubSum { x, m }.with_simd(simd)
    }

    /// [`super::scale`].
    #[inline(always)]
    pub fn scale<S: Simd>(simd: S, x: &mut [f32], a: f32) {
        Scale(x, a).with_simd(simd)
    }

    /// [`super::dot`] (lengths must match).
    #[inline(always)]
    pub fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        Dot(a, b).with_simd(simd)
    }

    /// [`super::gatv2_row`] (`keys` is `[out.len() x q.len()]`, `att` as long as `q`).
    #[inline(always)]
    pub fn gatv2_row<S: Simd>(simd: S, out: &mut [f32], q: &[f32], keys: &[f32], att: &[f32], slope: f32) {
        debug_assert_eq!(keys.len(), out.len() * q.len());
        Gatv2Row { out, q, keys, att, slope }.with_simd(simd)
    }

    /// [`super::weighted_sum`] with row `t` given by `row(t)` (at least `out.len()` long; its
    /// first `out.len()` values are used).
    #[inline(always)]
    pub fn weighted_sum<'r, S: Simd>(simd: S, out: &mut [f32], p: &[f32], row: impl Fn(usize) -> &'r [f32]) {
        WeightedSum { out, p, row }.with_simd(simd)
    }
}

// ---------------------------------------------------------------------------------------------
// GAT / GATv2 scores

/// `LeakyReLU(v) = v if v > 0 else slope * v`, lane-wise.
#[inline(always)]
fn leaky_v<S: Simd>(simd: S, v: S::f32s, slope: S::f32s) -> S::f32s {
    simd.select_f32s(simd.greater_than_f32s(v, simd.splat_f32s(0.0)), v, simd.mul_f32s(v, slope))
}

/// `out[j] = LeakyReLU(s + t[j])`, `LeakyReLU(v) = v if v > 0 else slope * v`: GAT's score row
/// `LeakyReLU(a_dst . W h_i + a_src . W h_j)` from its two rank-one halves. Bit-identical to
/// [`leaky_relu_add_scalar`].
///
/// # Panics
/// If `out.len() != t.len()`.
pub fn leaky_relu_add(out: &mut [f32], s: f32, t: &[f32], slope: f32) {
    assert_eq!(out.len(), t.len(), "leaky_relu_add: lengths differ");
    dispatch(LeakyReluAdd { out, s, t, slope })
}

/// Scalar reference of [`leaky_relu_add`].
///
/// # Panics
/// If `out.len() != t.len()`.
pub fn leaky_relu_add_scalar(out: &mut [f32], s: f32, t: &[f32], slope: f32) {
    assert_eq!(out.len(), t.len(), "leaky_relu_add: lengths differ");
    for (o, &u) in out.iter_mut().zip(t) {
        let v = s + u;
        *o = if v > 0.0 { v } else { slope * v };
    }
}

struct LeakyReluAdd<'a> {
    out: &'a mut [f32],
    s: f32,
    t: &'a [f32],
    slope: f32,
}

impl WithSimd for LeakyReluAdd<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let s = simd.splat_f32s(self.s);
        let slope = simd.splat_f32s(self.slope);
        let (oh, ot) = S::as_mut_simd_f32s(self.out);
        let (th, tt) = S::as_simd_f32s(self.t);
        for (o, &t) in oh.iter_mut().zip(th) {
            *o = leaky_v(simd, simd.add_f32s(s, t), slope);
        }
        if !ot.is_empty() {
            simd.partial_store_f32s(ot, leaky_v(simd, simd.add_f32s(s, simd.partial_load_f32s(tt)), slope));
        }
    }
}

/// `out[j] = sum_c att[c] * LeakyReLU(q[c] + keys[j*d + c])`, `d = q.len()`: a GATv2 score row
/// (`a . LeakyReLU(W_dst h_i + W_src h_j)`), `keys` row-major `[out.len() x d]`. Vectorised over
/// `c`, so best when `d` is a multiple of the lane count (16 with AVX-512, 8 with AVX2).
///
/// # Panics
/// If `att.len() != q.len()` or `keys.len() != out.len() * q.len()`.
pub fn gatv2_row(out: &mut [f32], q: &[f32], keys: &[f32], att: &[f32], slope: f32) {
    assert_eq!(att.len(), q.len(), "gatv2_row: att and q lengths differ");
    assert_eq!(keys.len(), out.len() * q.len(), "gatv2_row: keys is not [out.len() x q.len()]");
    dispatch(Gatv2Row { out, q, keys, att, slope })
}

/// Scalar reference of [`gatv2_row`]: sequential f32 sums.
///
/// # Panics
/// If `att.len() != q.len()` or `keys.len() != out.len() * q.len()`.
pub fn gatv2_row_scalar(out: &mut [f32], q: &[f32], keys: &[f32], att: &[f32], slope: f32) {
    assert_eq!(att.len(), q.len(), "gatv2_row: att and q lengths differ");
    assert_eq!(keys.len(), out.len() * q.len(), "gatv2_row: keys is not [out.len() x q.len()]");
    let d = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for c in 0..d {
            let v = q[c] + keys[j * d + c];
            acc += att[c] * if v > 0.0 { v } else { slope * v };
        }
        *o = acc;
    }
}

struct Gatv2Row<'a> {
    out: &'a mut [f32],
    q: &'a [f32],
    keys: &'a [f32],
    att: &'a [f32],
    slope: f32,
}

impl WithSimd for Gatv2Row<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let d = self.q.len();
        if d == 0 {
            self.out.fill(0.0);
            return;
        }
        let slope = simd.splat_f32s(self.slope);
        let (qh, qt) = S::as_simd_f32s(self.q);
        let (ah, at) = S::as_simd_f32s(self.att);
        for (o, row) in self.out.iter_mut().zip(self.keys.chunks_exact(d)) {
            let (kh, kt) = S::as_simd_f32s(row);
            let mut acc = [simd.splat_f32s(0.0); 2];
            for (i, ((&q, &k), &a)) in qh.iter().zip(kh).zip(ah).enumerate() {
                acc[i & 1] = simd.mul_add_e_f32s(a, leaky_v(simd, simd.add_f32s(q, k), slope), acc[i & 1]);
            }
            if !kt.is_empty() {
                // Missing lanes load as 0: att = 0 times LeakyReLU(0) = 0 adds 0.
                let v = simd.add_f32s(simd.partial_load_f32s(qt), simd.partial_load_f32s(kt));
                acc[1] = simd.mul_add_e_f32s(simd.partial_load_f32s(at), leaky_v(simd, v, slope), acc[1]);
            }
            *o = simd.reduce_sum_f32s(simd.add_f32s(acc[0], acc[1]));
        }
    }
}

#[cfg(test)]
mod tests {

    /// `all_finite` against its scalar reference around the SIMD widths, with one NaN, +inf
    /// or -inf at every position (the tail lanes included) and huge finite values.
    #[test]
    fn all_finite_finds_every_non_finite_value() {
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100] {
            let x: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { f32::MAX } else { -(i as f32) * 0.5 }).collect();
            assert!(all_finite(&x) && all_finite_scalar(&x), "n {n}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in 0..n {
                    let mut y = x.clone();
                    y[at] = bad;
                    assert!(!all_finite(&y) && !all_finite_scalar(&y), "n {n}, {bad} at {at}");
                }
            }
        }
    }

    use super::*;

    const LENS: [usize; 18] = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000];

    /// Runs `op` at a forced level; `None` where this CPU lacks it.
    fn run_at<Op: WithSimd>(level: Level, op: Op) -> Option<Op::Output> {
        match level {
            Level::Scalar => Some(Simd::vectorize(pulp::Scalar::new(), op)),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx2 => pulp::x86::V3::try_new().map(|s| Simd::vectorize(s, op)),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx512 => pulp::x86::V4::try_new().map(|s| Simd::vectorize(s, op)),
            _ => None,
        }
    }

    /// Every level this CPU can run, plus the dispatched one (`None`).
    fn levels() -> Vec<Option<Level>> {
        let mut out = vec![None, Some(Level::Scalar)];
        for l in [Level::Avx2, Level::Avx512] {
            if run_at(l, || ()).is_some() {
                out.push(Some(l));
            }
        }
        out
    }

    /// A deterministic pseudo-random f32 in `[lo, hi)` (SplitMix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, lo: f32, hi: f32) -> f32 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        }
        /// `n + 1` values; tests use `[1..]`, a slice offset by one float from the allocation.
        fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..=n).map(|_| self.next(lo, hi)).collect()
        }
    }

    fn rel_err(got: f32, want: f64) -> f64 {
        if want == 0.0 { (got as f64).abs() } else { ((got as f64 - want) / want).abs() }
    }

    /// The level's exp, element by element.
    fn exp_at(level: Option<Level>, x: &mut [f32]) {
        match level {
            None => exp_inplace(x),
            Some(l) => run_at(l, ExpInplace(x)).unwrap(),
        }
    }

    /// The exact GELU in f64 (`erf` from libm, double precision).
    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    /// Every level's GELU, and the scalar reference, against the f64 GELU on a dense sweep of
    /// `[-10, 10]` and at the edges of the clamp (`|x| / sqrt 2 = 4`).
    #[test]
    fn gelu_accuracy_dense_sweep() {
        let mut xs: Vec<f32> = (-(10 << 12)..=(10 << 12)).map(|i| i as f32 / 4096.0).collect();
        xs.extend([5.656_854, 5.656_855, -5.656_854, -5.656_855, 1e-30, -1e-30, 0.0, 30.0, -30.0]);
        for level in levels() {
            let mut g = xs.clone();
            match level {
                None => gelu_inplace(&mut g),
                Some(l) => run_at(l, GeluInplace(&mut g)).unwrap(),
            }
            for (x, got) in xs.iter().zip(&g) {
                let want = gelu_f64(*x as f64);
                let err = (*got as f64 - want).abs();
                assert!(err <= 4e-7 * (x.abs() as f64).max(1.0), "{level:?}: gelu({x}) = {got}, want {want}");
            }
        }
        let mut r = xs.clone();
        gelu_inplace_scalar(&mut r);
        for (x, got) in xs.iter().zip(&r) {
            assert!((*got as f64 - gelu_f64(*x as f64)).abs() <= 4e-7 * (x.abs() as f64).max(1.0), "scalar {x}");
        }
    }

    /// Lengths around the vector widths: the tail lanes are computed like the body lanes.
    #[test]
    fn gelu_matches_scalar_around_widths() {
        let mut rng = Rng(11);
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
            let x = rng.vec(n, -6.0, 6.0);
            let (mut a, mut b) = (x.clone(), x.clone());
            gelu_inplace(&mut a);
            gelu_inplace_scalar(&mut b);
            for ((u, v), x) in a.iter().zip(&b).zip(&x) {
                assert!((u - v).abs() <= 6e-7 * x.abs().max(1.0), "n = {n}: {u} vs {v} at {x}");
            }
        }
    }

    /// The SIMD GELU derivative against the scalar reference (libm erf, f32 exp) at lengths
    /// around the widths and on a sweep of [-10, 10], on every level.
    /// The out-of-place GELU and the in-place GELU backward give the bits of [`gelu_inplace`]
    /// and [`gelu_backward`] (themselves checked against the scalar references), around the
    /// lane widths.
    #[test]
    fn gelu_into_and_backward_inplace_equal_their_twins() {
        for n in [0usize, 1, 7, 15, 16, 17, 31, 33, 100] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 5.0).collect();
            let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.317).cos()).collect();
            let mut want = x.clone();
            gelu_inplace(&mut want);
            let mut got = vec![0.0; n];
            gelu_into(&x, &mut got);
            assert_eq!(got, want, "gelu_into, n = {n}");
            let mut want_dx = vec![0.0; n];
            gelu_backward(&x, &dy, &mut want_dx);
            let mut got_dx = dy.clone();
            gelu_backward_inplace(&x, &mut got_dx);
            assert_eq!(got_dx, want_dx, "gelu_backward_inplace, n = {n}");
            let mut scalar = vec![0.0; n];
            gelu_backward_scalar(&x, &dy, &mut scalar);
            for (a, b) in got_dx.iter().zip(&scalar) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "n = {n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gelu_backward_matches_scalar() {
        let mut rng = Rng(5);
        let mut cases: Vec<Vec<f32>> =
            [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65].iter().map(|&n| rng.vec(n, -6.0, 6.0)).collect();
        cases.push((-(10 << 8)..=(10 << 8)).map(|i| i as f32 / 256.0).collect());
        for x in cases {
            let dy: Vec<f32> = (0..x.len()).map(|i| 1.0 - (i % 7) as f32 * 0.3).collect();
            let mut want = vec![0.0; x.len()];
            gelu_backward_scalar(&x, &dy, &mut want);
            for level in levels() {
                let mut got = vec![0.0; x.len()];
                match level {
                    None => gelu_backward(&x, &dy, &mut got),
                    Some(l) => run_at(l, GeluBackward { x: &x, dy: &dy, out: &mut got }).unwrap(),
                }
                for ((g, w), (xi, di)) in got.iter().zip(&want).zip(x.iter().zip(&dy)) {
                    assert!((g - w).abs() <= 1e-6 * di.abs().max(1.0), "{level:?}: x = {xi}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn level_is_detected() {
        let l = level();
        assert!(!l.name().is_empty());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512cd")
        {
            assert_eq!(l, Level::Avx512);
        }
    }

    #[test]
    fn exp_accuracy_dense_sweep() {
        // Every 2^-14 over [-87, 0] (1.4 M points) and a coarser grid over (0, 88].
        let mut xs: Vec<f32> = (0..=(87 << 14)).map(|i| -(i as f32) / 16384.0).collect();
        xs.extend((1..=88 * 256).map(|i| i as f32 / 256.0));
        for level in levels() {
            let mut e = xs.clone();
            exp_at(level, &mut e);
            let mut worst = (0.0f64, 0.0f32);
            for (&x, &got) in xs.iter().zip(&e) {
                let err = rel_err(got, (x as f64).exp());
                if err > worst.0 {
                    worst = (err, x);
                }
            }
            eprintln!("exp {level:?}: max relative error {:.3e} at x = {}", worst.0, worst.1);
            assert!(worst.0 < 2e-7, "{level:?}: relative error {:.3e} at x = {}", worst.0, worst.1);
        }
    }

    #[test]
    fn exp_accuracy_bit_patterns() {
        // Every 997th f32 bit pattern in [-87, -0] (1.1 M points, dense near 0).
        let lo = (-87.0f32).to_bits();
        let xs: Vec<f32> = (0x8000_0000u32..=lo).step_by(997).map(f32::from_bits).collect();
        for level in levels() {
            let mut e = xs.clone();
            exp_at(level, &mut e);
            let worst = xs.iter().zip(&e).map(|(&x, &g)| rel_err(g, (x as f64).exp())).fold(0.0, f64::max);
            assert!(worst < 2e-7, "{level:?}: relative error {worst:.3e}");
        }
    }

    #[test]
    fn exp_special_values() {
        let xs = [
            f32::NEG_INFINITY,
            -1e30,
            -1000.0,
            -104.0,
            -88.0,
            -87.7,
            -87.5,
            -87.34,
            -0.0,
            0.0,
            1.0,
            88.0,
            88.5,
            89.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for level in levels() {
            // Repeat so the values go through the full vectors and the tail.
            let mut e: Vec<f32> = xs.iter().cycle().take(xs.len() * 3 + 5).copied().collect();
            let x = e.clone();
            exp_at(level, &mut e);
            for (&x, &got) in x.iter().zip(&e) {
                if x.is_nan() {
                    assert!(got.is_nan(), "{level:?}: exp(NaN) = {got}");
                } else if x < -87.6 {
                    assert_eq!(got, 0.0, "{level:?}: exp({x}) = {got}");
                } else if x < -87.33 {
                    assert!((0.0..f32::MIN_POSITIVE).contains(&got), "{level:?}: exp({x}) = {got}");
                    assert!(rel_err(got, (x as f64).exp()) < 1e-3, "{level:?}: exp({x}) = {got}");
                } else if x > 88.4 {
                    assert_eq!(got, f32::INFINITY, "{level:?}: exp({x}) = {got}");
                } else {
                    assert!(rel_err(got, (x as f64).exp()) < 2e-7, "{level:?}: exp({x}) = {got}");
                }
            }
            assert!(e.iter().zip(&x).all(|(g, x)| !g.is_nan() || x.is_nan()));
        }
    }

    #[test]
    fn exp_sub_sum_matches_scalar() {
        let mut rng = Rng(1);
        for level in levels() {
            for n in LENS {
                let base = rng.vec(n, -20.0, 5.0);
                let m = 5.0;
                let mut want = base.clone();
                let want_sum = exp_sub_sum_scalar(&mut want[1..], m);
                let mut got = base.clone();
                let got_sum = match level {
                    None => exp_sub_sum(&mut got[1..], m),
                    Some(l) => run_at(l, ExpSubSum { x: &mut got[1..], m }).unwrap(),
                };
                assert_eq!(got[0], base[0], "wrote before the slice");
                let exact: f64 = base[1..].iter().map(|&v| (v as f64 - m as f64).exp()).sum();
                for i in 1..=n {
                    assert!(rel_err(got[i], want[i] as f64) < 4e-7, "{level:?} n={n} i={i}");
                }
                let tol = 1e-6 * want_sum.abs().max(f32::MIN_POSITIVE);
                assert!((got_sum - want_sum).abs() <= tol, "{level:?} n={n}: {got_sum} vs {want_sum}");
                if n > 0 {
                    assert!(rel_err(got_sum, exact) < 1e-6, "{level:?} n={n}: {got_sum} vs {exact}");
                } else {
                    assert_eq!(got_sum, 0.0);
                }
            }
        }
    }

    #[test]
    fn exp_sub_sum_neg_inf_gives_zero() {
        for level in levels() {
            for n in LENS {
                // A causal/masked row: every other entry -inf.
                let mut x: Vec<f32> =
                    (0..n).map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { -(i as f32) }).collect();
                let m = max_scalar(&x);
                let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let sum = match level {
                    None => exp_sub_sum(&mut x, m),
                    Some(l) => run_at(l, ExpSubSum { x: &mut x, m }).unwrap(),
                };
                assert!(x.iter().step_by(2).all(|&v| v == 0.0 && v.is_sign_positive()));
                assert!(x.iter().all(|v| !v.is_nan()) && !sum.is_nan());
                assert_eq!(sum == 0.0, n < 2, "n={n}: sum {sum}");
            }
        }
    }

    #[test]
    fn max_matches_scalar() {
        let mut rng = Rng(2);
        for level in levels() {
            for n in LENS {
                // All negative, so a zero-padded tail would show.
                let x = rng.vec(n, -100.0, -1.0);
                let got = match level {
                    None => max(&x[1..]),
                    Some(l) => run_at(l, Max(&x[1..])).unwrap(),
                };
                assert_eq!(got, max_scalar(&x[1..]), "{level:?} n={n}");
            }
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    }

    #[test]
    fn scale_matches_scalar() {
        let mut rng = Rng(3);
        for level in levels() {
            for n in LENS {
                let base = rng.vec(n, -3.0, 3.0);
                let mut want = base.clone();
                scale_scalar(&mut want[1..], 0.37);
                let mut got = base.clone();
                match level {
                    None => scale(&mut got[1..], 0.37),
                    Some(l) => run_at(l, Scale(&mut got[1..], 0.37)).unwrap(),
                }
                assert_eq!(got, want, "{level:?} n={n}");
            }
        }
    }

    #[test]
    fn dot_matches_scalar() {
        let mut rng = Rng(4);
        for level in levels() {
            for n in LENS {
                let a = rng.vec(n, -1.0, 1.0);
                let b = rng.vec(n, -1.0, 1.0);
                let got = match level {
                    None => dot(&a[1..], &b[1..]),
                    Some(l) => run_at(l, Dot(&a[1..], &b[1..])).unwrap(),
                };
                let want = dot_scalar(&a[1..], &b[1..]);
                let scale: f32 = a[1..].iter().zip(&b[1..]).map(|(x, y)| (x * y).abs()).sum();
                assert!((got - want).abs() <= 1e-6 * scale.max(1.0), "{level:?} n={n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn axpy_matches_scalar() {
        let mut rng = Rng(5);
        for level in levels() {
            for n in LENS {
                let x = rng.vec(n, -1.0, 1.0);
                let base = rng.vec(n, -1.0, 1.0);
                let mut want = base.clone();
                axpy_scalar(&mut want[1..], -0.7, &x[1..]);
                let mut got = base.clone();
                match level {
                    None => axpy(&mut got[1..], -0.7, &x[1..]),
                    Some(l) => run_at(l, Axpy(&mut got[1..], -0.7, &x[1..])).unwrap(),
                }
                assert_eq!(got[0], base[0]);
                for i in 1..=n {
                    assert!((got[i] - want[i]).abs() <= 2.5e-7, "{level:?} n={n} i={i}");
                }
            }
        }
    }

    /// Every level equals the scalar reference around the vector widths (blocks of four
    /// vectors, single vectors, a partial tail), for 0, 1 and 17 rows, and equals a sequence
    /// of the level's own axpys into zeros bit for bit.
    #[test]
    fn weighted_sum_matches_scalar_and_axpys() {
        let mut rng = Rng(12);
        for level in levels() {
            for n in LENS {
                for m in [0usize, 1, 17] {
                    let data: Vec<Vec<f32>> = (0..m).map(|_| rng.vec(n, -1.0, 1.0)).collect();
                    let rows: Vec<&[f32]> = data.iter().map(|r| &r[1..]).collect();
                    let p = rng.vec(m, 0.0, 1.0);
                    let p = &p[1..];
                    let mut want = vec![0.0; n];
                    weighted_sum_scalar(&mut want, p, &rows);
                    let mut got = rng.vec(n, 5.0, 6.0); // overwritten, not added to
                    let mut by_axpy = vec![0.0; n + 1];
                    match level {
                        None => {
                            weighted_sum(&mut got[1..], p, &rows);
                            for (t, r) in rows.iter().enumerate() {
                                axpy(&mut by_axpy[1..], p[t], r);
                            }
                        }
                        Some(l) => {
                            run_at(l, WeightedSum { out: &mut got[1..], p, row: |t: usize| rows[t] }).unwrap();
                            for (t, r) in rows.iter().enumerate() {
                                run_at(l, Axpy(&mut by_axpy[1..], p[t], r)).unwrap();
                            }
                        }
                    }
                    for i in 0..n {
                        assert!((got[i + 1] - want[i]).abs() <= 1e-6 * m as f32, "{level:?} n={n} m={m} i={i}");
                    }
                    assert_eq!(got[1..], by_axpy[1..], "{level:?} n={n} m={m}: not the axpy bits");
                }
            }
        }
    }

    #[test]
    fn leaky_relu_add_matches_scalar() {
        let mut rng = Rng(6);
        for level in levels() {
            for n in LENS {
                let t = rng.vec(n, -2.0, 2.0);
                let mut want = vec![7.0; n + 1];
                leaky_relu_add_scalar(&mut want[1..], 0.3, &t[1..], 0.2);
                let mut got = vec![7.0; n + 1];
                match level {
                    None => leaky_relu_add(&mut got[1..], 0.3, &t[1..], 0.2),
                    Some(l) => run_at(l, LeakyReluAdd { out: &mut got[1..], s: 0.3, t: &t[1..], slope: 0.2 }).unwrap(),
                }
                assert_eq!(got, want, "{level:?} n={n}");
            }
        }
    }

    #[test]
    fn gatv2_row_matches_scalar() {
        let mut rng = Rng(7);
        for level in levels() {
            for d in LENS {
                for n in [0, 1, 5, 17] {
                    let q = rng.vec(d, -1.0, 1.0);
                    let att = rng.vec(d, -1.0, 1.0);
                    let keys = rng.vec(n * d, -1.0, 1.0);
                    let mut want = vec![7.0; n + 1];
                    gatv2_row_scalar(&mut want[1..], &q[1..], &keys[1..], &att[1..], 0.2);
                    let mut got = vec![7.0; n + 1];
                    let (q, keys, att) = (&q[1..], &keys[1..], &att[1..]);
                    match level {
                        None => gatv2_row(&mut got[1..], q, keys, att, 0.2),
                        Some(l) => run_at(l, Gatv2Row { out: &mut got[1..], q, keys, att, slope: 0.2 }).unwrap(),
                    }
                    assert_eq!(got[0], 7.0);
                    for j in 0..n {
                        let scale: f32 = (0..d).map(|c| (att[c] * (q[c] + keys[j * d + c])).abs()).sum();
                        let (g, w) = (got[j + 1], want[j + 1]);
                        assert!((g - w).abs() <= 1e-6 * scale.max(1.0), "{level:?} d={d} n={n} j={j}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn dot_rejects_mismatched_lengths() {
        dot(&[1.0; 3], &[1.0; 4]);
    }

    #[test]
    fn same_bits_on_every_call() {
        let mut rng = Rng(8);
        let base = rng.vec(3137, -30.0, 0.0);
        let (mut a, mut b) = (base.clone(), base.clone());
        let (sa, sb) = (exp_sub_sum(&mut a, 0.0), exp_sub_sum(&mut b, 0.0));
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert_eq!(a, b);
        assert_eq!(dot(&base, &a).to_bits(), dot(&base, &b).to_bits());
    }
}
