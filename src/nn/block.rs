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

use super::{AttentionConfig, AttentionWeights, ForwardOptions, GraphAttention, Init, LayerNorm, Mlp};
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
}

impl BlockConfig {
    /// timm's ViT block: MLP ratio 4, qkv bias, eps 1e-6, no LayerScale.
    pub fn vit(dim: usize, heads: usize) -> Self {
        BlockConfig { dim, heads, mlp_hidden: 4 * dim, qkv_bias: true, eps: 1e-6, layer_scale: None }
    }

    fn attention(&self) -> AttentionConfig {
        AttentionConfig::Timm { dim: self.dim, heads: self.heads, qkv_bias: self.qkv_bias }
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
}

impl Block {
    /// A freshly initialised block (timm's init: trunc-normal weights, zero biases, unit norms).
    pub fn new(config: &BlockConfig, init: &mut Init) -> Result<Block> {
        if config.mlp_hidden == 0 {
            return Err(Error::invalid("block mlp_hidden", "must be positive"));
        }
        let d = config.dim;
        let attn = GraphAttention::new(config.attention(), init)?;
        let mut mlp = Mlp::new(init, d, config.mlp_hidden);
        for lin in [&mut mlp.fc1, &mut mlp.fc2] {
            let (o, i) = lin.weight.shape();
            lin.weight = Matrix::from_vec(o, i, init.trunc_normal(o * i, 0.02))?;
            lin.bias = Some(vec![0.0; o]);
        }
        Ok(Block {
            norm1: LayerNorm::new(d, config.eps),
            attn,
            ls1: config.layer_scale.map(|v| vec![v; d]),
            norm2: LayerNorm::new(d, config.eps),
            mlp,
            ls2: config.layer_scale.map(|v| vec![v; d]),
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
            mlp: Mlp::load(map, &p("mlp"), d, config.mlp_hidden)?,
            ls2: gamma(map, "ls2.gamma")?,
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

/// `x += gamma * y` row by row (`gamma` = 1 when absent).
fn residual(x: &mut Matrix, y: &Matrix, gamma: Option<&[f32]>) {
    let d = x.cols();
    for (i, (xv, yv)) in x.as_mut_slice().iter_mut().zip(y.as_slice()).enumerate() {
        *xv += gamma.map_or(1.0, |g| g[i % d]) * yv;
    }
}
