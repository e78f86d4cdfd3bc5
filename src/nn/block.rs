//! `Block`: timm's pre-LN transformer block, with its attention on any [`Graph`].
//!
//! ```text
//! x [N x D]
//! x = x + ls1 * attn(norm1(x))      attn: GraphAttention on `graph` (complete = ViT)
//! x = x + ls2 * mlp(norm2(x))       ls1, ls2: LayerScale [D], or 1 when absent
//! ```
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::nn::{Block, BlockConfig, Init};
//! let block = Block::new(&BlockConfig::vit(16, 2), &mut Init::new(1)).unwrap();
//! let x = Matrix::from_fn(5, 16, |i, j| ((i + 2 * j) as f32).cos());
//! let y = block.forward(&Graph::complete(5, true), &x).unwrap();
//! assert_eq!(y.shape(), (5, 16));
//! ```

use super::{
    Activation, AttentionCache, AttentionConfig, AttentionGrads, AttentionWeights, ForwardOptions, GraphAttention,
    Init, LayerNorm, LayerNormGrads, LowRankAttention, LowRankGrads, Mlp, MlpGrads, MlpOptions, RelativePositionBias,
};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::Matrix;

/// Shape of a [`Block`] (timm's `Block(dim, num_heads, mlp_ratio, qkv_bias, init_values)` with
/// `norm_layer = LayerNorm(eps)`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockConfig {
    /// Width `D`.
    pub dim: usize,
    /// Heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
    /// Whether `qkv` has a bias.
    pub qkv_bias: bool,
    /// LayerNorm epsilon (timm ViTs: 1e-6).
    pub eps: f32,
    /// LayerScale (`ls1.gamma`, `ls2.gamma`), initialised to this value when present.
    pub layer_scale: Option<f32>,
    /// timm's `qk_norm`: LayerNorm of each head's query and key.
    #[serde(default)]
    pub qk_norm: bool,
    /// timm's `scale_attn_norm`: LayerNorm of the attended values before `attn.proj`.
    #[serde(default)]
    pub scale_attn_norm: bool,
    /// timm's `scale_mlp_norm`: LayerNorm of the MLP's hidden activations.
    #[serde(default)]
    pub scale_mlp_norm: bool,
    /// timm's `proj_bias`: biases of `attn.proj`, `mlp.fc1`, `mlp.fc2` (default true).
    #[serde(default = "yes")]
    pub proj_bias: bool,
    /// The MLP's activation.
    #[serde(default)]
    pub act: Activation,
}

fn yes() -> bool {
    true
}

impl BlockConfig {
    /// timm's ViT block: MLP ratio 4, qkv bias, eps 1e-6, no LayerScale.
    pub fn vit(dim: usize, heads: usize) -> Self {
        BlockConfig {
            dim,
            heads,
            mlp_hidden: 4 * dim,
            qkv_bias: true,
            eps: 1e-6,
            layer_scale: None,
            qk_norm: false,
            scale_attn_norm: false,
            scale_mlp_norm: false,
            proj_bias: true,
            act: Activation::Gelu,
        }
    }

    fn mlp_options(&self) -> MlpOptions {
        MlpOptions { act: self.act, bias: self.proj_bias, norm_eps: self.scale_mlp_norm.then_some(self.eps) }
    }

    fn attention(&self) -> AttentionConfig {
        AttentionConfig::Timm {
            dim: self.dim,
            heads: self.heads,
            qkv_bias: self.qkv_bias,
            qk_norm: self.qk_norm,
            scale_norm: self.scale_attn_norm,
            proj_bias: self.proj_bias,
            norm_eps: self.eps,
        }
    }
}

/// A pre-LN transformer block.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Before attention.
    pub norm1: LayerNorm,
    /// Multi-head attention over the graph.
    pub attn: GraphAttention,
    /// LayerScale after attention `[D]`.
    pub ls1: Option<Vec<f32>>,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// LayerScale after the MLP `[D]`.
    pub ls2: Option<Vec<f32>>,
    /// A low-rank method replacing the softmax (saved under `attn.`; see [`LowRankAttention`]).
    /// Used only when the caller passes it in [`ForwardOptions::low_rank`].
    pub low_rank: Option<LowRankAttention>,
    /// Swin's relative position bias table (`attn.relative_position_bias_table`); the caller
    /// turns it into the edge bias of its graph ([`RelativePositionBias::edge_bias`]).
    pub relative_position: Option<RelativePositionBias>,
}

impl Block {
    /// A freshly initialised block (timm's init: trunc-normal weights, zero biases, unit norms).
    pub fn new(config: &BlockConfig, init: &mut Init) -> Result<Block> {
        if config.mlp_hidden == 0 {
            return Err(Error::invalid("block mlp_hidden", "must be positive"));
        }
        let d = config.dim;
        let attn = GraphAttention::new(config.attention(), init)?;
        let mut mlp = Mlp::with_options(init, d, config.mlp_hidden, &config.mlp_options());
        for lin in [&mut mlp.fc1, &mut mlp.fc2] {
            let (o, i) = lin.weight.shape();
            lin.weight = Matrix::from_vec(o, i, init.trunc_normal(o * i, 0.02))?;
            lin.bias = config.proj_bias.then(|| vec![0.0; o]);
        }
        Ok(Block {
            norm1: LayerNorm::new(d, config.eps),
            attn,
            ls1: config.layer_scale.map(|v| vec![v; d]),
            norm2: LayerNorm::new(d, config.eps),
            mlp,
            ls2: config.layer_scale.map(|v| vec![v; d]),
            low_rank: None,
            relative_position: None,
        })
    }

    /// Loads timm's names under `prefix` (e.g. `"blocks.3."`): `norm1.*`, `attn.qkv.*`,
    /// `attn.proj.*`, `ls1.gamma`, `norm2.*`, `mlp.fc1.*`, `mlp.fc2.*`, `ls2.gamma`.
    pub fn load(config: &BlockConfig, map: &mut TensorMap, prefix: &str) -> Result<Block> {
        let d = config.dim;
        let p = |name: &str| format!("{prefix}{name}");
        let gamma = |map: &mut TensorMap, name: &str| -> Result<Option<Vec<f32>>> {
            if config.layer_scale.is_some() { map.take(&p(name), &[d]).map(Some) } else { Ok(None) }
        };
        Ok(Block {
            norm1: LayerNorm::load(map, &p("norm1"), d, config.eps)?,
            attn: GraphAttention::load(config.attention(), map, &p("attn."))?,
            ls1: gamma(map, "ls1.gamma")?,
            norm2: LayerNorm::load(map, &p("norm2"), d, config.eps)?,
            mlp: Mlp::load_with(map, &p("mlp"), d, config.mlp_hidden, &config.mlp_options())?,
            ls2: gamma(map, "ls2.gamma")?,
            low_rank: None,
            relative_position: None,
        })
    }

    /// Writes the block's tensors under timm's names.
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        let p = |name: &str| format!("{prefix}{name}");
        self.norm1.save(map, &p("norm1"))?;
        self.attn.save(map, &p("attn."))?;
        self.norm2.save(map, &p("norm2"))?;
        self.mlp.save(map, &p("mlp"))?;
        for (name, g) in [("ls1.gamma", &self.ls1), ("ls2.gamma", &self.ls2)] {
            if let Some(g) = g {
                map.insert(p(name), vec![g.len()], g.clone())?;
            }
        }
        if let Some(lr) = &self.low_rank {
            lr.save(map, &p("attn."))?;
        }
        if let Some(rp) = &self.relative_position {
            rp.save(map, &p("attn."))?;
        }
        Ok(())
    }

    /// `x [N x D] -> [N x D]`, attention over `graph`.
    pub fn forward(&self, graph: &Graph, x: &Matrix) -> Result<Matrix> {
        self.forward_with(graph, x, &ForwardOptions::default())
    }

    /// Forward with attention options (edge bias, path).
    pub fn forward_with(&self, graph: &Graph, x: &Matrix, options: &ForwardOptions<'_>) -> Result<Matrix> {
        Ok(self.forward_returning_weights(graph, x, options)?.0)
    }

    /// Forward, also returning the attention weights when `options.weights` asks for them.
    pub fn forward_returning_weights(
        &self,
        graph: &Graph,
        x: &Matrix,
        options: &ForwardOptions<'_>,
    ) -> Result<(Matrix, Option<AttentionWeights>)> {
        let mut x = x.clone();
        let weights = self.forward_in_place(graph, &mut x, options)?;
        Ok((x, weights))
    }

    /// Forward updating `x` in place (no copy of the residual stream); returns the attention
    /// weights when `options.weights` asks for them.
    pub fn forward_in_place(
        &self,
        graph: &Graph,
        x: &mut Matrix,
        options: &ForwardOptions<'_>,
    ) -> Result<Option<AttentionWeights>> {
        let a = self.attn.forward_with(graph, &self.norm1.forward(x)?, options)?;
        residual(x, &a.out, self.ls1.as_deref());
        let m = self.mlp.forward(&self.norm2.forward(x)?)?;
        residual(x, &m, self.ls2.as_deref());
        Ok(a.weights)
    }
}

/// Gradients of a [`Block`]'s parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGrads {
    /// Of `norm1`.
    pub norm1: LayerNormGrads,
    /// Of `attn`.
    pub attn: AttentionGrads,
    /// Of `ls1` (when present).
    pub ls1: Option<Vec<f32>>,
    /// Of `norm2`.
    pub norm2: LayerNormGrads,
    /// Of `mlp`.
    pub mlp: MlpGrads,
    /// Of `ls2` (when present).
    pub ls2: Option<Vec<f32>>,
    /// Of the relative position bias table `[(2M-1)^2 x H]` (when present).
    pub relative_position: Option<Vec<f32>>,
    /// Of the low-rank method's trained parameters (when it has any).
    pub low_rank: Option<LowRankGrads>,
}

impl Block {
    /// Zero gradients shaped like this block's parameters.
    pub fn zero_grads(&self) -> BlockGrads {
        let d = self.norm1.weight.len();
        BlockGrads {
            norm1: LayerNormGrads::zeros(d),
            attn: self.attn.zero_grads(),
            ls1: self.ls1.as_ref().map(|_| vec![0.0; d]),
            norm2: LayerNormGrads::zeros(d),
            mlp: MlpGrads::zeros(&self.mlp),
            ls2: self.ls2.as_ref().map(|_| vec![0.0; d]),
            relative_position: self.relative_position.as_ref().map(|r| vec![0.0; r.table.as_slice().len()]),
            low_rank: self.low_rank.as_ref().map(|l| l.zero_grads()),
        }
    }

    /// Backward of [`Block::forward`], recomputing its intermediates from the block input `x`
    /// (see [`Block::backward_cached`] for the formulas).
    pub fn backward(&self, graph: &Graph, x: &Matrix, dy: &Matrix, grads: &mut BlockGrads) -> Result<Matrix> {
        let (_, cache) = self.forward_cached(graph, x)?;
        self.backward_cached(graph, x, &cache, dy, grads)
    }

    /// Forward keeping the intermediates the backward needs: `x [N x D] -> (y, cache)`.
    pub fn forward_cached(&self, graph: &Graph, x: &Matrix) -> Result<(Matrix, BlockCache)> {
        self.forward_cached_with(graph, x, &ForwardOptions::default())
    }

    /// [`Block::forward_cached`] with the attention's edge bias or low-rank method.
    pub fn forward_cached_with(
        &self,
        graph: &Graph,
        x: &Matrix,
        options: &ForwardOptions<'_>,
    ) -> Result<(Matrix, BlockCache)> {
        let h1 = self.norm1.forward(x)?; // h1 = norm1(x)
        let (a, attn) = self.attn.forward_cached_with(graph, &h1, options)?; // a = attn(h1)
        let x1 = residual_sum(x, &a, self.ls1.as_deref()); // x1 = x + ls1 a
        let h2 = self.norm2.forward(&x1)?; // h2 = norm2(x1)
        let (m, mlp_h, mlp_a) = self.mlp.forward_cached(&h2)?; // m = mlp(h2)
        let y = residual_sum(&x1, &m, self.ls2.as_deref()); // y = x1 + ls2 m
        Ok((y, BlockCache { h1, attn, a, x1, h2, m, mlp_h, mlp_a }))
    }

    /// Backward from [`Block::forward_cached`]'s cache:
    ///
    /// ```text
    /// h1 = norm1(x); a = attn(h1); x1 = x + ls1 a      dx  = dx1 + norm1.backward(x, attn.backward(h1, ls1 dx1))
    /// h2 = norm2(x1); m = mlp(h2); y = x1 + ls2 m      dx1 = dy + norm2.backward(x1, mlp.backward(h2, ls2 dy))
    ///                                                  dls1 = sum dx1 a,  dls2 = sum dy m
    /// ```
    pub fn backward_cached(
        &self,
        graph: &Graph,
        x: &Matrix,
        cache: &BlockCache,
        dy: &Matrix,
        grads: &mut BlockGrads,
    ) -> Result<Matrix> {
        self.backward_cached_with(graph, x, cache, dy, grads, &ForwardOptions::default(), None, None)
    }

    /// Backward from [`Block::forward_cached_with`]'s cache with the same `options`.
    /// `rel_index` is the table row of every edge ([`RelativePositionBias::edge_index`]) when
    /// the edge bias came from this block's relative position table (its gradient goes to
    /// `grads.relative_position`); a low-rank method's parameter gradients go to
    /// `low_rank_grads` (block 0's for a layerwise-shared Linformer), else to `grads.low_rank`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_cached_with(
        &self,
        graph: &Graph,
        x: &Matrix,
        cache: &BlockCache,
        dy: &Matrix,
        grads: &mut BlockGrads,
        options: &ForwardOptions<'_>,
        rel_index: Option<&[u32]>,
        low_rank_grads: Option<&mut LowRankGrads>,
    ) -> Result<Matrix> {
        // y = x1 + ls2 m
        if let Some(g) = grads.ls2.as_mut() {
            column_dot_add(g, dy, &cache.m);
        }
        let dm = scaled(dy, self.ls2.as_deref());
        let dh2 = self.mlp.backward_cached(&cache.h2, &cache.mlp_h, &cache.mlp_a, &dm, &mut grads.mlp)?; // m = mlp(h2)
        let mut dx1 = self.norm2.backward(&cache.x1, &dh2, &mut grads.norm2)?; // h2 = norm2(x1)
        add_into(&mut dx1, dy);
        // x1 = x + ls1 a
        if let Some(g) = grads.ls1.as_mut() {
            column_dot_add(g, &dx1, &cache.a);
        }
        let da = scaled(&dx1, self.ls1.as_deref());
        let lr_grads = match low_rank_grads {
            Some(g) => Some(g),
            None => grads.low_rank.as_mut(),
        };
        // a = attn(h1)
        let (dh1, dbias) =
            self.attn.backward_cached_with(graph, &cache.h1, &cache.attn, &da, &mut grads.attn, options, lr_grads)?;
        // bias = table[rel_index]
        if let (Some(rp), Some(index), Some(g)) = (&self.relative_position, rel_index, grads.relative_position.as_mut())
        {
            rp.backward(index, &dbias, g);
        }
        let mut dx = self.norm1.backward(x, &dh1, &mut grads.norm1)?; // h1 = norm1(x)
        add_into(&mut dx, &dx1);
        Ok(dx)
    }
}

/// The intermediates of one block's forward that its backward reads.
#[derive(Clone, Debug)]
pub struct BlockCache {
    h1: Matrix,
    attn: AttentionCache,
    a: Matrix,
    x1: Matrix,
    h2: Matrix,
    m: Matrix,
    mlp_h: Matrix,
    mlp_a: Matrix,
}

/// `gamma * y` row by row (`y` itself, not a copy, when `gamma` is absent).
fn scaled<'a>(y: &'a Matrix, gamma: Option<&[f32]>) -> std::borrow::Cow<'a, Matrix> {
    match gamma {
        Some(g) => {
            let mut out = y.clone();
            let d = y.cols();
            for (i, v) in out.as_mut_slice().iter_mut().enumerate() {
                *v *= g[i % d];
            }
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(y),
    }
}

/// `g[c] += sum_n a[n, c] b[n, c]`.
fn column_dot_add(g: &mut [f32], a: &Matrix, b: &Matrix) {
    for n in 0..a.rows() {
        for ((gc, x), y) in g.iter_mut().zip(a.row(n)).zip(b.row(n)) {
            *gc += x * y;
        }
    }
}

/// `x += y`.
fn add_into(x: &mut Matrix, y: &Matrix) {
    for (a, b) in x.as_mut_slice().iter_mut().zip(y.as_slice()) {
        *a += b;
    }
}

/// `x + gamma * y` row by row (`gamma` = 1 when absent) into a new matrix: the arithmetic of
/// [`residual`] in one pass, without copying `x` first.
fn residual_sum(x: &Matrix, y: &Matrix, gamma: Option<&[f32]>) -> Matrix {
    let d = x.cols().max(1);
    let data: Vec<f32> = match gamma {
        None => x.as_slice().iter().zip(y.as_slice()).map(|(a, b)| a + b).collect(),
        Some(g) => x
            .as_slice()
            .chunks_exact(d)
            .zip(y.as_slice().chunks_exact(d))
            .flat_map(|(xr, yr)| xr.iter().zip(yr).zip(g).map(|((a, b), g)| a + g * b))
            .collect(),
    };
    Matrix::from_vec(x.rows(), x.cols(), data).unwrap_or_else(|_| unreachable!("same shape as x"))
}

/// `x += gamma * y` row by row (`gamma` = 1 when absent).
fn residual(x: &mut Matrix, y: &Matrix, gamma: Option<&[f32]>) {
    let d = x.cols();
    for (i, (xv, yv)) in x.as_mut_slice().iter_mut().zip(y.as_slice()).enumerate() {
        *xv += gamma.map_or(1.0, |g| g[i % d]) * yv;
    }
}
