//! `LowRankAttention`: a [`LowRank`] method with its parameters, as one ViT block's attention
//! (the block's `qkv` and `proj` stay as they are: only `softmax(Q K^T / sqrt(d)) V` is
//! replaced).
//!
//! ```text
//! q, k, v [B*T x H*d]  (columns of the block's qkv output; a batch is B blocks of T tokens)
//! performer:  out = favor(q, k, v; projection [m x d])                  kernels::favor
//! linformer:  out = softmax(q (E^T k)^T / sqrt(d)) (F^T v); E, F [T x k] kernels::linformer
//! nystrom:    out = nystrom(q, k, v; landmarks, 6 pinv iterations, res_conv [H x K]?)  kernels::nystrom
//! ```
//!
//! Parameters, under the peers' names inside the block's `attn.` prefix (no tensor transposed):
//!
//! | method | tensor | shape | trained |
//! |---|---|---|---|
//! | Performer | `projection_matrix` (performer-pytorch's buffer) | `[m, d]` | no: drawn from the seed, saved so that inference uses the same features |
//! | Linformer | `proj_k`, `proj_v` (the `linformer` package's) | `[T, k]` each (`proj_v` absent with `kv` or `layerwise` sharing; with `layerwise`, only block 0 holds them) | yes |
//! | Nyström | `res_conv.weight` (nystrom-attention's depthwise conv) | `[H, 1, K, 1]` | yes, when `K > 0` |
//!
//! Layer `l`'s Performer projection is drawn from `seed + l`, so layers differ and a model
//! rebuilt from the same spec draws the same features.
//!
//! ```
//! use patchgraph::attention::low_rank::LowRank;
//! use patchgraph::nn::{Init, LowRankAttention, TokenGrid};
//! let grid = TokenGrid { rows: 4, cols: 4, prefix: 1 };
//! let method: LowRank = "linformer:8".parse().unwrap();
//! let lr = LowRankAttention::new(&method, grid, 2, 8, 0, &mut Init::new(0)).unwrap();
//! assert_eq!(lr.tokens(), 17);
//! assert!(LowRankAttention::new(&"nystrom:5".parse().unwrap(), grid, 2, 8, 0, &mut Init::new(0)).is_err()); // not a square
//! ```

use super::Init;
use crate::attention::AttentionInputs;
use crate::attention::low_rank::{LinformerSharing, LowRank, NYSTROM_PINV_ITERATIONS};
use crate::attention::nystrom::Landmarks;
use crate::attention::performer;
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::kernels::favor::{FavorCache, favor_backward, favor_forward};
use crate::kernels::linformer::{LinformerCache, linformer_backward, linformer_forward};
use crate::kernels::nystrom::{NystromCache, nystrom_backward, nystrom_forward};
use crate::tensor::Matrix;

/// The token layout of one image: a `rows x cols` patch grid after `prefix` leading tokens
/// (the class token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenGrid {
    /// Patch rows.
    pub rows: usize,
    /// Patch columns.
    pub cols: usize,
    /// Tokens before the patches (the class token).
    pub prefix: usize,
}

impl TokenGrid {
    /// Tokens per image.
    pub fn tokens(&self) -> usize {
        self.prefix + self.rows * self.cols
    }
}

/// A method's parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum LowRankParams {
    /// The random features `[m x d]`.
    Performer {
        /// `projection_matrix`.
        projection: Matrix,
    },
    /// The sequence projections `[T x k]`; absent in the blocks that use block 0's
    /// (`layerwise`).
    Linformer {
        /// `proj_k` (`E`).
        e: Option<Matrix>,
        /// `proj_v` (`F`), absent when `F = E`.
        f: Option<Matrix>,
    },
    /// The depthwise residual conv `[H x K]` (`res_conv.weight [H, 1, K, 1]`), if any.
    Nystrom {
        /// `res_conv.weight`.
        res_conv: Option<Matrix>,
    },
}

/// Gradients of a [`LowRankAttention`]'s trained parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum LowRankGrads {
    /// Performer has none.
    None,
    /// Of `proj_k`, `proj_v`.
    Linformer {
        /// Of `E` (all of it with `F = E`).
        e: Matrix,
        /// Of `F`, when it is its own matrix.
        f: Option<Matrix>,
    },
    /// Of `res_conv.weight` `[H x K]`.
    Nystrom {
        /// Of the conv.
        res_conv: Matrix,
    },
}

impl LowRankGrads {
    /// Every gradient tensor, mutable (for clipping).
    pub fn push_slices<'a>(&'a mut self, out: &mut Vec<&'a mut [f32]>) {
        match self {
            LowRankGrads::None => {}
            LowRankGrads::Linformer { e, f } => {
                out.push(e.as_mut_slice());
                if let Some(f) = f {
                    out.push(f.as_mut_slice());
                }
            }
            LowRankGrads::Nystrom { res_conv } => out.push(res_conv.as_mut_slice()),
        }
    }
}

/// What a method's backward needs from its forward.
#[derive(Clone, Debug)]
pub enum LowRankCache {
    /// FAVOR+'s per-(block, head) context and key sums.
    Performer(FavorCache),
    /// Linformer's projected keys and values.
    Linformer(LinformerCache),
    /// Nyström's landmarks and pseudo-inverse iterates.
    Nystrom(NystromCache),
}

/// A low-rank method with its parameters (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankAttention {
    method: LowRank,
    grid: TokenGrid,
    heads: usize,
    head_dim: usize,
    /// The parameters.
    pub params: LowRankParams,
    landmarks: Option<Landmarks>,
}

/// `nystrom:L` on a patch grid: `sqrt(L) x sqrt(L)` blocks.
fn landmark_side(landmarks: usize, grid: TokenGrid) -> Result<usize> {
    let side = (landmarks as f64).sqrt().round() as usize;
    if side * side != landmarks {
        return Err(Error::invalid(
            "nystrom landmarks",
            format!("{landmarks} is not a square: landmarks are the means of sqrt(L) x sqrt(L) blocks of patches"),
        ));
    }
    if side > grid.rows || side > grid.cols {
        return Err(Error::invalid(
            "nystrom landmarks",
            format!("{side} x {side} blocks do not fit the {} x {} patch grid", grid.rows, grid.cols),
        ));
    }
    Ok(side)
}

impl LowRankAttention {
    /// A freshly initialised method for layer `layer` of a model with `heads` heads of width
    /// `head_dim` on images of `grid` tokens: Performer's projection drawn from `seed + layer`,
    /// Linformer's `E`, `F` uniform in `+-1/sqrt(k)` (the `linformer` package's init), Nyström's
    /// conv as PyTorch's `Conv2d` default (uniform in `+-1/sqrt(K)`), from `init`.
    pub fn new(
        method: &LowRank,
        grid: TokenGrid,
        heads: usize,
        head_dim: usize,
        layer: usize,
        init: &mut Init,
    ) -> Result<LowRankAttention> {
        let t = grid.tokens();
        let (params, landmarks) = match *method {
            LowRank::Performer { features, seed } => {
                let m = if features == 0 { performer::default_features(head_dim) } else { features };
                let projection = performer::orthogonal_random_features(m, head_dim, seed.wrapping_add(layer as u64))?;
                (LowRankParams::Performer { projection }, None)
            }
            LowRank::Linformer { k, sharing } => {
                let bound = 1.0 / (k as f32).sqrt();
                let mut draw = || Matrix::from_vec(t, k, init.uniform(t * k, -bound, bound));
                let holds = sharing != LinformerSharing::Layerwise || layer == 0;
                let e = if holds { Some(draw()?) } else { None };
                let f = if sharing == LinformerSharing::Headwise { Some(draw()?) } else { None };
                (LowRankParams::Linformer { e, f }, None)
            }
            LowRank::Nystrom { landmarks, residual_kernel } => {
                let side = landmark_side(landmarks, grid)?;
                let marks = Landmarks::grid(grid.rows, grid.cols, side, side, grid.prefix)?;
                let bound = 1.0 / (residual_kernel.max(1) as f32).sqrt();
                let res_conv = (residual_kernel > 0)
                    .then(|| {
                        Matrix::from_vec(heads, residual_kernel, init.uniform(heads * residual_kernel, -bound, bound))
                    })
                    .transpose()?;
                (LowRankParams::Nystrom { res_conv }, Some(marks))
            }
        };
        Ok(LowRankAttention { method: method.clone(), grid, heads, head_dim, params, landmarks })
    }

    /// A method without trained parameters (Performer, Nyström without the conv) for layer
    /// `layer`, to run a model trained with softmax attention with the same weights. Linformer
    /// and Nyström's conv need the model's own trained tensors: an error naming the option.
    pub fn parameter_free(
        method: &LowRank,
        grid: TokenGrid,
        heads: usize,
        head_dim: usize,
        layer: usize,
    ) -> Result<LowRankAttention> {
        if method.has_learned_parameters() {
            return Err(Error::invalid(
                "low-rank attention",
                format!(
                    "`{method}` has learned parameters (Linformer's E and F, Nyström's residual conv) that this model \
                     does not hold: build or train the model with it (the ViT config's `attention`, `train --graph {method}`)"
                ),
            ));
        }
        Self::new(method, grid, heads, head_dim, layer, &mut Init::new(0))
    }

    /// The method.
    pub fn method(&self) -> &LowRank {
        &self.method
    }

    /// Tokens per image this attention is built for.
    pub fn tokens(&self) -> usize {
        self.grid.tokens()
    }

    /// Redraws Performer's random features from `seed` (the same seed, the same features; the
    /// peer's `redraw_projection_matrix`). Other methods have none: an error.
    pub fn redraw(&mut self, seed: u64) -> Result<()> {
        match &mut self.params {
            LowRankParams::Performer { projection } => {
                *projection = performer::orthogonal_random_features(projection.rows(), self.head_dim, seed)?;
                Ok(())
            }
            _ => Err(Error::invalid("redraw", format!("`{}` has no random features", self.method))),
        }
    }

    /// The blocks of a batch of `images` images, checked against the token count.
    fn blocks(&self, inputs: &AttentionInputs<'_>) -> Result<Vec<usize>> {
        let t = self.tokens();
        let n = inputs.query.rows();
        if inputs.heads != self.heads || inputs.query.cols() != self.heads * self.head_dim {
            return Err(Error::invalid(
                "low-rank attention",
                format!(
                    "`{}` was built for {} heads of width {}; got {} heads and {} query columns",
                    self.method,
                    self.heads,
                    self.head_dim,
                    inputs.heads,
                    inputs.query.cols()
                ),
            ));
        }
        if t == 0 || n % t != 0 {
            return Err(Error::invalid(
                "low-rank attention",
                format!("`{}` was built for {t} tokens per image; got {n} rows, not a multiple", self.method),
            ));
        }
        Ok((0..=n / t).map(|b| b * t).collect())
    }

    fn linformer_matrices<'a>(&'a self, shared: Option<&'a LowRankAttention>) -> Result<(&'a Matrix, &'a Matrix)> {
        let own = match (&self.params, shared.map(|s| &s.params)) {
            (LowRankParams::Linformer { e: Some(e), f }, _) => (e, f.as_ref().unwrap_or(e)),
            (LowRankParams::Linformer { e: None, .. }, Some(LowRankParams::Linformer { e: Some(e), .. })) => (e, e),
            _ => {
                return Err(Error::invalid(
                    "linformer",
                    "a layerwise-shared layer needs block 0's projections (pass them as `shared`)",
                ));
            }
        };
        Ok(own)
    }

    /// `out [B*T x H*dv]` of q, k, v (the block's `qkv` columns). `shared` is the layer that
    /// holds a layerwise Linformer's `E` (block 0), when this one does not.
    pub fn forward(
        &self,
        inputs: &AttentionInputs<'_>,
        shared: Option<&LowRankAttention>,
    ) -> Result<(Matrix, LowRankCache)> {
        let blocks = self.blocks(inputs)?;
        match &self.params {
            LowRankParams::Performer { projection } => {
                let (out, c) = favor_forward(inputs, &blocks, projection)?;
                Ok((out, LowRankCache::Performer(c)))
            }
            LowRankParams::Linformer { .. } => {
                let (e, f) = self.linformer_matrices(shared)?;
                let (out, c) = linformer_forward(inputs, &blocks, e, f)?;
                Ok((out, LowRankCache::Linformer(c)))
            }
            LowRankParams::Nystrom { res_conv } => {
                let marks = self.landmarks.as_ref().ok_or_else(|| Error::invalid("nystrom", "no landmarks"))?;
                let (out, c) = nystrom_forward(inputs, &blocks, marks, NYSTROM_PINV_ITERATIONS, res_conv.as_ref())?;
                Ok((out, LowRankCache::Nystrom(c)))
            }
        }
    }

    /// Backward of [`LowRankAttention::forward`]: `(dq, dk, dv)`, adding the parameters'
    /// gradients into `grads` (from [`LowRankAttention::zero_grads`] of the layer that holds
    /// them: block 0's for a layerwise Linformer).
    pub fn backward(
        &self,
        inputs: &AttentionInputs<'_>,
        shared: Option<&LowRankAttention>,
        cache: &LowRankCache,
        dout: &Matrix,
        grads: &mut LowRankGrads,
    ) -> Result<(Matrix, Matrix, Matrix)> {
        let blocks = self.blocks(inputs)?;
        let mismatch = || Error::invalid("low-rank backward", "the cache or gradients belong to another method");
        match (&self.params, cache) {
            (LowRankParams::Performer { projection }, LowRankCache::Performer(c)) => {
                favor_backward(inputs, &blocks, projection, c, dout)
            }
            (LowRankParams::Linformer { .. }, LowRankCache::Linformer(c)) => {
                let (e, f) = self.linformer_matrices(shared)?;
                let g = linformer_backward(inputs, &blocks, e, f, c, dout)?;
                let LowRankGrads::Linformer { e: ge, f: gf } = grads else { return Err(mismatch()) };
                // With F = E the matrix is used twice: its gradient is the sum.
                add(ge, &g.e);
                match gf {
                    Some(gf) => add(gf, &g.f),
                    None => add(ge, &g.f),
                }
                Ok((g.query, g.key, g.value))
            }
            (LowRankParams::Nystrom { res_conv }, LowRankCache::Nystrom(c)) => {
                let marks = self.landmarks.as_ref().ok_or_else(|| Error::invalid("nystrom", "no landmarks"))?;
                let g = nystrom_backward(inputs, &blocks, marks, NYSTROM_PINV_ITERATIONS, res_conv.as_ref(), c, dout)?;
                if let (LowRankGrads::Nystrom { res_conv: gc }, Some(d)) = (grads, g.res_conv.as_ref()) {
                    add(gc, d);
                }
                Ok((g.query, g.key, g.value))
            }
            _ => Err(mismatch()),
        }
    }

    /// Zero gradients for the trained parameters this layer holds.
    pub fn zero_grads(&self) -> LowRankGrads {
        match &self.params {
            LowRankParams::Performer { .. } => LowRankGrads::None,
            LowRankParams::Linformer { e, f } => match e {
                Some(e) => LowRankGrads::Linformer {
                    e: Matrix::zeros(e.rows(), e.cols()),
                    f: f.as_ref().map(|f| Matrix::zeros(f.rows(), f.cols())),
                },
                None => LowRankGrads::None,
            },
            LowRankParams::Nystrom { res_conv: Some(c) } => {
                LowRankGrads::Nystrom { res_conv: Matrix::zeros(c.rows(), c.cols()) }
            }
            LowRankParams::Nystrom { res_conv: None } => LowRankGrads::None,
        }
    }

    /// Calls `f(slot, parameter, gradient, decay)` for each trained tensor: slots `base` and
    /// `base + 1` (two for every method, so later slot numbers do not depend on it). Linformer's
    /// projections are weight matrices (decayed), Nyström's conv too (PyTorch decays every
    /// parameter; timm's rule exempts only 1-D tensors).
    pub fn visit_params(&mut self, grads: &LowRankGrads, base: usize, f: &mut super::ParamVisitor<'_>) {
        match (&mut self.params, grads) {
            (LowRankParams::Linformer { e, f: fp }, LowRankGrads::Linformer { e: ge, f: gf }) => {
                if let Some(e) = e {
                    f(base, e.as_mut_slice(), ge.as_slice(), true);
                }
                if let (Some(p), Some(g)) = (fp, gf) {
                    f(base + 1, p.as_mut_slice(), g.as_slice(), true);
                }
            }
            (LowRankParams::Nystrom { res_conv: Some(c) }, LowRankGrads::Nystrom { res_conv: g }) => {
                f(base, c.as_mut_slice(), g.as_slice(), true);
            }
            _ => {}
        }
    }

    /// Loads the layer's tensors under `prefix` (`blocks.3.attn.`), checking shapes (the map
    /// records problems as [`TensorMap::take`] does).
    pub fn load(
        method: &LowRank,
        grid: TokenGrid,
        heads: usize,
        head_dim: usize,
        layer: usize,
        map: &mut TensorMap,
        prefix: &str,
    ) -> Result<LowRankAttention> {
        let mut lr = Self::new(method, grid, heads, head_dim, layer, &mut Init::new(0))?;
        let p = |name: &str| format!("{prefix}{name}");
        match &mut lr.params {
            LowRankParams::Performer { projection } => {
                let (m, d) = projection.shape();
                *projection = Matrix::from_vec(m, d, map.take(&p("projection_matrix"), &[m, d])?)?;
            }
            LowRankParams::Linformer { e, f } => {
                for (slot, name) in [(e, "proj_k"), (f, "proj_v")] {
                    if let Some(m) = slot {
                        let (r, c) = m.shape();
                        *m = Matrix::from_vec(r, c, map.take(&p(name), &[r, c])?)?;
                    }
                }
            }
            LowRankParams::Nystrom { res_conv: Some(c) } => {
                let (h, k) = c.shape();
                *c = Matrix::from_vec(h, k, map.take(&p("res_conv.weight"), &[h, 1, k, 1])?)?;
            }
            LowRankParams::Nystrom { res_conv: None } => {}
        }
        Ok(lr)
    }

    /// Writes the layer's tensors under `prefix` (the inverse of [`LowRankAttention::load`]).
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        let p = |name: &str| format!("{prefix}{name}");
        match &self.params {
            LowRankParams::Performer { projection } => map.insert(
                p("projection_matrix"),
                vec![projection.rows(), projection.cols()],
                projection.as_slice().to_vec(),
            ),
            LowRankParams::Linformer { e, f } => {
                for (m, name) in [(e, "proj_k"), (f, "proj_v")] {
                    if let Some(m) = m {
                        map.insert(p(name), vec![m.rows(), m.cols()], m.as_slice().to_vec())?;
                    }
                }
                Ok(())
            }
            LowRankParams::Nystrom { res_conv: Some(c) } => {
                map.insert(p("res_conv.weight"), vec![c.rows(), 1, c.cols(), 1], c.as_slice().to_vec())
            }
            LowRankParams::Nystrom { res_conv: None } => Ok(()),
        }
    }
}

/// `a += b`.
fn add(a: &mut Matrix, b: &Matrix) {
    for (x, y) in a.as_mut_slice().iter_mut().zip(b.as_slice()) {
        *x += y;
    }
}
