//! `GraphAttention`: one multi-head attention layer over any [`Graph`], configured as timm's
//! ViT `Attention` or as PyG's `GATConv`, `GATv2Conv` or `TransformerConv`, with parameter
//! names and shapes that map one-to-one to the peers'.
//!
//! | config | peer | parameters (peer names, shapes) | score | value |
//! |---|---|---|---|---|
//! | [`AttentionConfig::Timm`] | timm `Attention(D, H, qkv_bias)` | `qkv.weight [3D, D]`, `qkv.bias [3D]`, `proj.weight [D, D]`, `proj.bias [D]` | `q.k/sqrt(d)` | `v`, then `proj` |
//! | [`AttentionConfig::Gat`] | PyG `GATConv` | `lin.weight [H*C, F]`, `att_src [1, H, C]`, `att_dst [1, H, C]`, `bias [H*C]` or `[C]` | `LeakyReLU(a_dst.Wh_i + a_src.Wh_j)` | `W h_j` |
//! | [`AttentionConfig::GatV2`] | PyG `GATv2Conv` | `lin_l.* [H*C, F]`, `lin_r.*`, `att [1, H, C]`, `bias` | `a.LeakyReLU(W_r h_i + W_l h_j)` | `W_l h_j` |
//! | [`AttentionConfig::Transformer`] | PyG `TransformerConv` | `lin_query.*`, `lin_key.*`, `lin_value.*` `[H*C, F]`, `lin_skip.*`, `lin_beta.weight [1, 3H*C]` | `q.k/sqrt(C)` | `v`, plus skip |
//!
//! No tensor is transposed on import: all weights keep PyTorch's `[out, in]` layout. With
//! timm's `qkv`, columns `0..D` of its output are `q`, `D..2D` are `k`, `2D..3D` are `v`, and
//! head `h` owns columns `h*d .. (h+1)*d` of each (timm's `reshape(B, N, 3, H, d)`).
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::nn::{AttentionConfig, GraphAttention, Init};
//! let layer = GraphAttention::new(AttentionConfig::gat(8, 4, 2), &mut Init::new(0)).unwrap();
//! let x = Matrix::from_fn(5, 8, |i, j| (i * j) as f32 / 10.0);
//! let g = Graph::from_edge_index(5, &[0, 1, 2], &[1, 2, 3]).unwrap();
//! let y = layer.forward(&g, &x).unwrap();
//! assert_eq!(y.shape(), (5, 8)); // 2 heads x 4 channels, concatenated
//! ```

use super::{Init, LayerNorm, LayerNormGrads, Linear, LinearGrads, LowRankAttention, LowRankCache, LowRankGrads};
use crate::attention::{AttentionInputs, Path, Score, attend};
use crate::checkpoint::TensorMap;
use crate::error::{Error, Result, ensure_finite};
use crate::graph::Graph;
use crate::tensor::{ColumnBlock, Matrix};
use std::borrow::Cow;

/// Which peer layer, with its constructor arguments (serde: `{"kind": "gat", ...}`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttentionConfig {
    /// timm `Attention(dim, num_heads, qkv_bias, qk_norm, scale_norm, proj_bias)`: dot-product
    /// score with `scale = d^-1/2`.
    Timm {
        /// Model width `D` (input and output).
        dim: usize,
        /// Heads `H`; `D` must be a multiple.
        heads: usize,
        /// Whether `qkv` has a bias.
        qkv_bias: bool,
        /// LayerNorm of every head's query and key (`q_norm`, `k_norm` `[d]`) before the score.
        #[serde(default)]
        qk_norm: bool,
        /// LayerNorm of the attended values before `proj` (`norm` `[D]`).
        #[serde(default)]
        scale_norm: bool,
        /// Whether `proj` has a bias (default true).
        #[serde(default = "default_true")]
        proj_bias: bool,
        /// Epsilon of those LayerNorms (timm's `LayerNorm`: 1e-6; `torch.nn.LayerNorm`: 1e-5).
        #[serde(default = "default_norm_eps")]
        norm_eps: f32,
    },
    /// PyG `GATConv(in_channels, out_channels, heads, concat, negative_slope, add_self_loops, bias)`.
    Gat {
        /// Input width `F`.
        in_channels: usize,
        /// Channels per head `C`.
        out_channels: usize,
        /// Heads `H`.
        heads: usize,
        /// Concatenate heads (`[N x H*C]`) or average them (`[N x C]`).
        concat: bool,
        /// LeakyReLU slope.
        negative_slope: f32,
        /// Replace the graph's self-loops by one per node (PyG default: true).
        add_self_loops: bool,
        /// Whether the output has a bias.
        bias: bool,
    },
    /// PyG `GATv2Conv(in_channels, out_channels, heads, concat, negative_slope, add_self_loops, bias, share_weights)`.
    GatV2 {
        /// Input width `F`.
        in_channels: usize,
        /// Channels per head `C`.
        out_channels: usize,
        /// Heads `H`.
        heads: usize,
        /// Concatenate or average heads.
        concat: bool,
        /// LeakyReLU slope.
        negative_slope: f32,
        /// Replace the graph's self-loops by one per node.
        add_self_loops: bool,
        /// Whether `lin_l`, `lin_r` and the output have biases.
        bias: bool,
        /// `lin_r` is `lin_l` (no `lin_r` tensors).
        share_weights: bool,
    },
    /// PyG `TransformerConv(in_channels, out_channels, heads, concat, beta, root_weight, bias)`.
    Transformer {
        /// Input width `F`.
        in_channels: usize,
        /// Channels per head `C`.
        out_channels: usize,
        /// Heads `H`.
        heads: usize,
        /// Concatenate or average heads.
        concat: bool,
        /// Gated skip `beta = sigmoid(lin_beta([out, x_r, out - x_r]))` (needs `root_weight`).
        beta: bool,
        /// Add the skip connection `lin_skip(x)`.
        root_weight: bool,
        /// Whether the linear layers have biases.
        bias: bool,
    },
}

fn default_true() -> bool {
    true
}

fn default_norm_eps() -> f32 {
    1e-6
}

impl AttentionConfig {
    /// timm's `Attention(dim, heads, qkv_bias=True)`, as in every ViT.
    pub fn timm(dim: usize, heads: usize) -> Self {
        AttentionConfig::Timm {
            dim,
            heads,
            qkv_bias: true,
            qk_norm: false,
            scale_norm: false,
            proj_bias: true,
            norm_eps: default_norm_eps(),
        }
    }

    /// `GATConv(in, out, heads)` with PyG's defaults (concat, slope 0.2, self-loops, bias).
    pub fn gat(in_channels: usize, out_channels: usize, heads: usize) -> Self {
        AttentionConfig::Gat {
            in_channels,
            out_channels,
            heads,
            concat: true,
            negative_slope: 0.2,
            add_self_loops: true,
            bias: true,
        }
    }

    /// `GATv2Conv(in, out, heads)` with PyG's defaults.
    pub fn gatv2(in_channels: usize, out_channels: usize, heads: usize) -> Self {
        AttentionConfig::GatV2 {
            in_channels,
            out_channels,
            heads,
            concat: true,
            negative_slope: 0.2,
            add_self_loops: true,
            bias: true,
            share_weights: false,
        }
    }

    /// `TransformerConv(in, out, heads)` with PyG's defaults (concat, no beta, root weight, bias).
    pub fn transformer(in_channels: usize, out_channels: usize, heads: usize) -> Self {
        AttentionConfig::Transformer {
            in_channels,
            out_channels,
            heads,
            concat: true,
            beta: false,
            root_weight: true,
            bias: true,
        }
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        match *self {
            AttentionConfig::Timm { heads, .. }
            | AttentionConfig::Gat { heads, .. }
            | AttentionConfig::GatV2 { heads, .. }
            | AttentionConfig::Transformer { heads, .. } => heads,
        }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        match *self {
            AttentionConfig::Timm { dim, .. } => dim,
            AttentionConfig::Gat { in_channels, .. }
            | AttentionConfig::GatV2 { in_channels, .. }
            | AttentionConfig::Transformer { in_channels, .. } => in_channels,
        }
    }

    /// Width per head of the attended values.
    pub fn head_dim(&self) -> usize {
        match *self {
            AttentionConfig::Timm { dim, heads, .. } => dim / heads.max(1),
            AttentionConfig::Gat { out_channels, .. }
            | AttentionConfig::GatV2 { out_channels, .. }
            | AttentionConfig::Transformer { out_channels, .. } => out_channels,
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match *self {
            AttentionConfig::Timm { dim, .. } => dim,
            AttentionConfig::Gat { out_channels, heads, concat, .. }
            | AttentionConfig::GatV2 { out_channels, heads, concat, .. }
            | AttentionConfig::Transformer { out_channels, heads, concat, .. } => {
                if concat {
                    heads * out_channels
                } else {
                    out_channels
                }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let heads = self.heads();
        if heads == 0 {
            return Err(Error::invalid("attention heads", "must be at least 1"));
        }
        if self.in_dim() == 0 || self.head_dim() == 0 {
            return Err(Error::invalid(
                "attention widths",
                format!("input {} and per-head {} must be positive", self.in_dim(), self.head_dim()),
            ));
        }
        if let AttentionConfig::Timm { dim, heads, norm_eps, .. } = *self {
            if dim % heads != 0 {
                return Err(Error::invalid("timm attention", format!("dim {dim} is not a multiple of {heads} heads")));
            }
            if norm_eps.is_nan() || norm_eps <= 0.0 {
                return Err(Error::invalid("timm attention norm_eps", format!("{norm_eps} must be positive")));
            }
        }
        Ok(())
    }
}

/// The parameters, by peer.
#[derive(Clone, Debug, PartialEq)]
enum Params {
    Timm {
        qkv: Linear,
        /// `q_norm`, `k_norm` over a head's `d` channels (timm's `qk_norm`).
        qk_norm: Option<(LayerNorm, LayerNorm)>,
        /// `norm` over the attended `D` channels before `proj` (timm's `scale_norm`).
        norm: Option<LayerNorm>,
        proj: Linear,
    },
    Gat {
        lin: Linear,
        att_src: Vec<f32>,
        att_dst: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    GatV2 {
        lin_l: Linear,
        lin_r: Option<Linear>,
        att: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    /// `qkvs` stacks PyG's `lin_query | lin_key | lin_value | lin_skip` (one GEMM for all four).
    Transformer {
        qkvs: Linear,
        lin_beta: Option<Linear>,
    },
}

/// An optimiser's view of one parameter tensor: `f(slot, parameter, gradient, decay)`.
pub type ParamVisitor<'f> = dyn FnMut(usize, &mut [f32], &[f32], bool) + 'f;

/// What the timm layer's backward needs from its forward ([`GraphAttention::forward_cached`]).
#[derive(Clone, Debug)]
pub struct AttentionCache {
    /// `x Wqkv^T + b` `[N x 3D]`.
    pub qkv: Matrix,
    /// With `qk_norm`: `[q_norm(q) | k_norm(k) | v]` `[N x 3D]`, what attention scored.
    pub qk_normed: Option<Matrix>,
    /// The attended values before `proj` (and before `norm`) `[N x D]`.
    pub attended: Matrix,
    /// With `scale_norm`: `norm(attended)`, what `proj` read.
    pub attended_normed: Option<Matrix>,
    /// `[N x H]` (empty with low-rank attention).
    pub log_sum_exp: Vec<f32>,
    /// The low-rank method's own cache, when it ran instead of the softmax on the graph.
    pub low_rank: Option<LowRankCache>,
}

/// Gradients of a [`GraphAttention`]'s parameters (see [`GraphAttention::backward`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionGrads {
    /// timm's `qkv`, `q_norm` / `k_norm`, `norm` and `proj`.
    Timm {
        /// Of `qkv`.
        qkv: LinearGrads,
        /// Of `q_norm` and `k_norm`, with `qk_norm`.
        qk_norm: Option<(LayerNormGrads, LayerNormGrads)>,
        /// Of `norm`, with `scale_norm`.
        norm: Option<LayerNormGrads>,
        /// Of `proj`.
        proj: LinearGrads,
    },
    /// PyG `GATConv`'s `lin`, `att_src`, `att_dst`, `bias`.
    Gat {
        /// Of `lin`.
        lin: LinearGrads,
        /// Of `att_src` `[H*C]`.
        att_src: Vec<f32>,
        /// Of `att_dst` `[H*C]`.
        att_dst: Vec<f32>,
        /// Of `bias`, if any.
        bias: Option<Vec<f32>>,
    },
    /// PyG `GATv2Conv`'s `lin_l`, `lin_r` (absent with `share_weights`), `att`, `bias`.
    GatV2 {
        /// Of `lin_l`.
        lin_l: LinearGrads,
        /// Of `lin_r`.
        lin_r: Option<LinearGrads>,
        /// Of `att` `[H*C]`.
        att: Vec<f32>,
        /// Of `bias`, if any.
        bias: Option<Vec<f32>>,
    },
    /// PyG `TransformerConv`'s stacked `lin_query | lin_key | lin_value | lin_skip` and `lin_beta`.
    Transformer {
        /// Of `qkvs` `[3*H*C + skip, F]` (the `lin_skip` rows stay zero without `root_weight`).
        qkvs: LinearGrads,
        /// Of `lin_beta` `[1, 3*out]`, with `beta` (no bias, as PyG).
        lin_beta: Option<LinearGrads>,
    },
}

/// Options of [`GraphAttention::forward_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions<'a> {
    /// Additive edge bias `[E x H]` in the edge order of the graph attention runs on (after
    /// self-loops are added, for GAT/GATv2 with `add_self_loops`).
    pub edge_bias: Option<&'a [f32]>,
    /// Return the attention weights.
    pub weights: bool,
    /// Force an implementation (default: dense for complete graphs, sparse otherwise).
    pub path: Path,
    /// Replace the softmax on the graph by a low-rank approximation of the complete graph
    /// (timm configuration only; the graph must then be complete with self-loops).
    pub low_rank: Option<&'a LowRankAttention>,
    /// The layer holding a layerwise-shared Linformer's projections, when `low_rank` does not.
    pub low_rank_shared: Option<&'a LowRankAttention>,
}

/// Attention weights with the graph they refer to.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionWeights {
    /// The graph attention ran on (the input graph, or it with PyG's self-loops).
    pub graph: Graph,
    /// `[E x H]`, in `graph`'s edge order.
    pub values: Vec<f32>,
}

/// Output of [`GraphAttention::forward_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerOutput {
    /// `[N x out_dim]`.
    pub out: Matrix,
    /// The attention weights, if asked for.
    pub weights: Option<AttentionWeights>,
}

/// A multi-head graph attention layer (see the module table).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphAttention {
    config: AttentionConfig,
    params: Params,
}

/// Reads an attention vector `[1, H, C]` as `[H*C]`.
fn take_att(map: &mut TensorMap, name: &str, heads: usize, c: usize) -> Result<Vec<f32>> {
    map.take(name, &[1, heads, c])
}

fn take_out_bias(map: &mut TensorMap, name: &str, bias: bool, width: usize) -> Result<Option<Vec<f32>>> {
    if bias { map.take(name, &[width]).map(Some) } else { Ok(None) }
}

impl GraphAttention {
    /// A layer with the peer's initialisation from a seeded generator: timm's `trunc_normal(0.02)`
    /// weights and zero biases for [`AttentionConfig::Timm`]; PyG's Glorot weights and zero biases
    /// for the graph layers (PyTorch's default `Linear` init for `TransformerConv`).
    pub fn new(config: AttentionConfig, init: &mut Init) -> Result<GraphAttention> {
        config.validate()?;
        let (f, c, h) = (config.in_dim(), config.head_dim(), config.heads());
        let params = match config {
            AttentionConfig::Timm { dim, qkv_bias, qk_norm, scale_norm, proj_bias, norm_eps, .. } => {
                let timm_linear = |init: &mut Init, i: usize, o: usize, b: bool| Linear {
                    weight: Matrix::from_vec(o, i, init.trunc_normal(o * i, 0.02)).unwrap_or_default(),
                    bias: b.then(|| vec![0.0; o]),
                };
                Params::Timm {
                    qkv: timm_linear(init, dim, 3 * dim, qkv_bias),
                    qk_norm: qk_norm.then(|| (LayerNorm::new(c, norm_eps), LayerNorm::new(c, norm_eps))),
                    norm: scale_norm.then(|| LayerNorm::new(dim, norm_eps)),
                    proj: timm_linear(init, dim, dim, proj_bias),
                }
            }
            AttentionConfig::Gat { bias, .. } => Params::Gat {
                lin: Linear::glorot_init(init, f, h * c, false),
                att_src: init.glorot(h, c),
                att_dst: init.glorot(h, c),
                bias: bias.then(|| vec![0.0; config.out_dim()]),
            },
            AttentionConfig::GatV2 { bias, share_weights, .. } => Params::GatV2 {
                lin_l: Linear::glorot_init(init, f, h * c, bias),
                lin_r: (!share_weights).then(|| Linear::glorot_init(init, f, h * c, bias)),
                att: init.glorot(h, c),
                bias: bias.then(|| vec![0.0; config.out_dim()]),
            },
            AttentionConfig::Transformer { bias, beta, root_weight, concat, .. } => {
                let lin_query = Linear::torch_init(init, f, h * c, bias);
                let lin_key = Linear::torch_init(init, f, h * c, bias);
                let lin_value = Linear::torch_init(init, f, h * c, bias);
                let lin_skip = Linear::torch_init(init, f, if concat { h * c } else { c }, bias);
                Params::Transformer {
                    qkvs: Linear::stack(&[&lin_query, &lin_key, &lin_value, &lin_skip])?,
                    lin_beta: (beta && root_weight).then(|| Linear::torch_init(init, 3 * config.out_dim(), 1, false)),
                }
            }
        };
        Ok(GraphAttention { config, params })
    }

    /// Loads the layer's tensors from `map` under the peer's names, prefixed by `prefix`
    /// (`""` or e.g. `"blocks.0.attn."`), checking every shape. Taken tensors are removed from
    /// `map`; call [`TensorMap::finish`] afterwards to reject unknown keys.
    pub fn load(config: AttentionConfig, map: &mut TensorMap, prefix: &str) -> Result<GraphAttention> {
        config.validate()?;
        let (f, c, h) = (config.in_dim(), config.head_dim(), config.heads());
        let p = |name: &str| format!("{prefix}{name}");
        let params = match config {
            AttentionConfig::Timm { dim, qkv_bias, qk_norm, scale_norm, proj_bias, norm_eps, .. } => Params::Timm {
                qkv: Linear::load(map, &p("qkv"), dim, 3 * dim, qkv_bias)?,
                qk_norm: if qk_norm {
                    Some((
                        LayerNorm::load(map, &p("q_norm"), c, norm_eps)?,
                        LayerNorm::load(map, &p("k_norm"), c, norm_eps)?,
                    ))
                } else {
                    None
                },
                norm: if scale_norm { Some(LayerNorm::load(map, &p("norm"), dim, norm_eps)?) } else { None },
                proj: Linear::load(map, &p("proj"), dim, dim, proj_bias)?,
            },
            AttentionConfig::Gat { bias, .. } => Params::Gat {
                lin: Linear::load(map, &p("lin"), f, h * c, false)?,
                att_src: take_att(map, &p("att_src"), h, c)?,
                att_dst: take_att(map, &p("att_dst"), h, c)?,
                bias: take_out_bias(map, &p("bias"), bias, config.out_dim())?,
            },
            AttentionConfig::GatV2 { bias, share_weights, .. } => {
                let lin_l = Linear::load(map, &p("lin_l"), f, h * c, bias)?;
                let lin_r = if share_weights {
                    // PyG registers the shared module under both names, so its state_dict holds
                    // `lin_r.*` equal to `lin_l.*`: accepted when equal, refused when not.
                    if map.contains(&format!("{}.weight", p("lin_r"))) {
                        let r = Linear::load(map, &p("lin_r"), f, h * c, bias)?;
                        if r != lin_l {
                            return Err(Error::invalid(
                                p("lin_r"),
                                "share_weights is true, but the checkpoint's lin_r differs from lin_l",
                            ));
                        }
                    }
                    None
                } else {
                    Some(Linear::load(map, &p("lin_r"), f, h * c, bias)?)
                };
                Params::GatV2 {
                    lin_l,
                    lin_r,
                    att: take_att(map, &p("att"), h, c)?,
                    bias: take_out_bias(map, &p("bias"), bias, config.out_dim())?,
                }
            }
            AttentionConfig::Transformer { bias, beta, root_weight, concat, .. } => {
                let lin_key = Linear::load(map, &p("lin_key"), f, h * c, bias)?;
                let lin_query = Linear::load(map, &p("lin_query"), f, h * c, bias)?;
                let lin_value = Linear::load(map, &p("lin_value"), f, h * c, bias)?;
                // PyG always creates lin_skip, and uses it only when root_weight.
                let lin_skip = Linear::load(map, &p("lin_skip"), f, if concat { h * c } else { c }, bias)?;
                Params::Transformer {
                    qkvs: Linear::stack(&[&lin_query, &lin_key, &lin_value, &lin_skip])?,
                    lin_beta: if beta && root_weight {
                        Some(Linear::load(map, &p("lin_beta"), 3 * config.out_dim(), 1, false)?)
                    } else {
                        None
                    },
                }
            }
        };
        Ok(GraphAttention { config, params })
    }

    /// Writes the layer's tensors under the peer's names (the inverse of [`GraphAttention::load`]).
    pub fn save(&self, map: &mut TensorMap, prefix: &str) -> Result<()> {
        let (c, h) = (self.config.head_dim(), self.config.heads());
        let p = |name: &str| format!("{prefix}{name}");
        match &self.params {
            Params::Timm { qkv, qk_norm, norm, proj } => {
                qkv.save(map, &p("qkv"))?;
                if let Some((qn, kn)) = qk_norm {
                    qn.save(map, &p("q_norm"))?;
                    kn.save(map, &p("k_norm"))?;
                }
                if let Some(n) = norm {
                    n.save(map, &p("norm"))?;
                }
                proj.save(map, &p("proj"))
            }
            Params::Gat { lin, att_src, att_dst, bias } => {
                lin.save(map, &p("lin"))?;
                map.insert(p("att_src"), vec![1, h, c], att_src.clone())?;
                map.insert(p("att_dst"), vec![1, h, c], att_dst.clone())?;
                bias.iter().try_for_each(|b| map.insert(p("bias"), vec![b.len()], b.clone()))
            }
            Params::GatV2 { lin_l, lin_r, att, bias } => {
                lin_l.save(map, &p("lin_l"))?;
                // Shared weights are saved under both names, as PyG's state_dict has them.
                lin_r.as_ref().unwrap_or(lin_l).save(map, &p("lin_r"))?;
                map.insert(p("att"), vec![1, h, c], att.clone())?;
                bias.iter().try_for_each(|b| map.insert(p("bias"), vec![b.len()], b.clone()))
            }
            Params::Transformer { qkvs, lin_beta } => {
                let hc = h * c;
                let parts = qkvs.unstack(&[hc, hc, hc, qkvs.out_dim() - 3 * hc])?;
                for (part, name) in parts.iter().zip(["lin_query", "lin_key", "lin_value", "lin_skip"]) {
                    part.save(map, &p(name))?;
                }
                lin_beta.iter().try_for_each(|l| l.save(map, &p("lin_beta")))
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.config
    }

    /// The score this layer uses.
    pub fn score(&self) -> Score {
        match (&self.config, &self.params) {
            (AttentionConfig::Gat { negative_slope, .. }, _) => Score::Gat { negative_slope: *negative_slope },
            (AttentionConfig::GatV2 { negative_slope, .. }, Params::GatV2 { att, .. }) => {
                Score::GatV2 { attention: att.clone(), negative_slope: *negative_slope }
            }
            _ => Score::Dot { scale: 1.0 / (self.config.head_dim() as f32).sqrt() },
        }
    }

    /// The graph attention runs on: `graph` itself, or (GAT/GATv2 with `add_self_loops`) with
    /// its self-loops replaced by one per node, as PyG does.
    pub fn attention_graph<'g>(&self, graph: &'g Graph) -> Cow<'g, Graph> {
        match self.config {
            AttentionConfig::Gat { add_self_loops: true, .. } | AttentionConfig::GatV2 { add_self_loops: true, .. } => {
                Cow::Owned(graph.add_self_loops())
            }
            _ => Cow::Borrowed(graph),
        }
    }

    /// `x [N x in_dim] -> [N x out_dim]` over `graph`.
    pub fn forward(&self, graph: &Graph, x: &Matrix) -> Result<Matrix> {
        Ok(self.forward_with(graph, x, &ForwardOptions::default())?.out)
    }

    /// Forward with an edge bias, a forced path, or the attention weights returned.
    pub fn forward_with(&self, graph: &Graph, x: &Matrix, options: &ForwardOptions<'_>) -> Result<LayerOutput> {
        x.expect_shape("attention input x", graph.num_nodes(), self.config.in_dim())?;
        ensure_finite("attention input x", x.as_slice())?;
        let heads = self.config.heads();
        let score = self.score();
        let g = self.attention_graph(graph);
        let run = |q: ColumnBlock<'_>, k: ColumnBlock<'_>, v: ColumnBlock<'_>| {
            let mut inputs = AttentionInputs::new(q, k, v, heads);
            inputs.bias = options.edge_bias;
            attend(&g, &score, &inputs, options.path, options.weights)
        };
        if options.low_rank.is_some() && !matches!(self.params, Params::Timm { .. }) {
            return Err(Error::invalid(
                "low-rank attention",
                format!("replaces a ViT block's softmax attention (timm configuration); not {:?}", self.config),
            ));
        }
        let (attended, out) = match &self.params {
            Params::Timm { qkv, qk_norm, norm, proj } => {
                // qkv [N x 3D]: q = columns 0..D, k = D..2D, v = 2D..3D (q, k normalised per head
                // with qk_norm).
                let d = self.config.in_dim();
                let mut qkv = qkv.forward(x)?;
                if let Some((qn, kn)) = qk_norm {
                    qkv = normalize_qk(&qkv, qn, kn, heads)?;
                }
                let (q, k, v) = (column_block(&qkv, 0, d)?, column_block(&qkv, d, d)?, column_block(&qkv, 2 * d, d)?);
                let a = match options.low_rank {
                    Some(lr) => {
                        self.check_low_rank(graph, options)?;
                        let (out, _) = lr.forward(&AttentionInputs::new(q, k, v, heads), options.low_rank_shared)?;
                        crate::attention::AttentionOutput { out, log_sum_exp: Vec::new(), weights: None }
                    }
                    None => run(q, k, v)?,
                };
                let out = match norm {
                    Some(n) => proj.forward(&n.forward(&a.out)?)?, // y = norm(a) Wproj^T + b
                    None => proj.forward(&a.out)?,
                };
                (a, out)
            }
            Params::Gat { lin, att_src, att_dst, bias } => {
                let wh = lin.forward(x)?; // [N x H*C]
                let (alpha_src, alpha_dst) = (per_head_dot(&wh, att_src, heads), per_head_dot(&wh, att_dst, heads));
                let mut a = run((&alpha_dst).into(), (&alpha_src).into(), (&wh).into())?;
                let out = self.combine_heads(std::mem::take(&mut a.out), bias.as_deref());
                (a, out)
            }
            Params::GatV2 { lin_l, lin_r, bias, .. } => {
                let xl = lin_l.forward(x)?; // sources: messages and key side
                let xr = match lin_r {
                    Some(l) => l.forward(x)?,
                    None => xl.clone(),
                };
                let mut a = run((&xr).into(), (&xl).into(), (&xl).into())?;
                let out = self.combine_heads(std::mem::take(&mut a.out), bias.as_deref());
                (a, out)
            }
            Params::Transformer { qkvs, lin_beta } => {
                // One GEMM: [N x (q | k | v | skip)], the skip columns only when they are used.
                let hc = heads * self.config.head_dim();
                let root_weight = matches!(self.config, AttentionConfig::Transformer { root_weight: true, .. });
                let y = qkvs.forward_leading(x, if root_weight { qkvs.out_dim() } else { 3 * hc })?;
                let (q, k, v) = (column_block(&y, 0, hc)?, column_block(&y, hc, hc)?, column_block(&y, 2 * hc, hc)?);
                let mut a = run(q, k, v)?;
                let mut out = self.combine_heads(std::mem::take(&mut a.out), None);
                if root_weight {
                    let xr = column_block(&y, 3 * hc, qkvs.out_dim() - 3 * hc)?;
                    match lin_beta {
                        // beta = sigmoid(lin_beta([out, x_r, out - x_r])); out = beta x_r + (1 - beta) out
                        Some(lb) => {
                            let w = out.cols();
                            let cat = Matrix::from_fn(out.rows(), 3 * w, |n, j| match j / w {
                                0 => out.get(n, j),
                                1 => xr.get(n, j - w),
                                _ => out.get(n, j - 2 * w) - xr.get(n, j - 2 * w),
                            });
                            let beta = lb.forward(&cat)?;
                            for n in 0..out.rows() {
                                let b = 1.0 / (1.0 + (-beta.get(n, 0)).exp());
                                for (o, r) in out.row_mut(n).iter_mut().zip(xr.row(n)) {
                                    *o = b * r + (1.0 - b) * *o;
                                }
                            }
                        }
                        None => {
                            for n in 0..out.rows() {
                                for (o, r) in out.row_mut(n).iter_mut().zip(xr.row(n)) {
                                    *o += r;
                                }
                            }
                        }
                    }
                }
                (a, out)
            }
        };
        let weights = attended.weights.map(|values| AttentionWeights { graph: g.into_owned(), values });
        Ok(LayerOutput { out, weights })
    }

    /// Backward of [`GraphAttention::forward`] for the timm configuration (the ViT layer),
    /// recomputing the forward (`qkv`, attention with its log-sum-exp) from `x`:
    ///
    /// ```text
    /// qkv = x Wqkv^T + b           dx   = qkv.backward(x, [dq | dk | dv])
    /// a   = attend(q, k, v)         dq, dk, dv = attend_backward(.., da)
    /// y   = a Wproj^T + b          da   = proj.backward(a, dy)
    /// ```
    ///
    /// GATConv goes to [`GraphAttention::backward_gat`], GATv2Conv to
    /// [`GraphAttention::backward_gatv2`], TransformerConv to
    /// [`GraphAttention::backward_transformer`]. `grads` must come from this layer's
    /// [`GraphAttention::zero_grads`].
    pub fn backward(&self, graph: &Graph, x: &Matrix, dy: &Matrix, grads: &mut AttentionGrads) -> Result<Matrix> {
        match self.params {
            Params::Gat { .. } => return self.backward_gat(graph, x, dy, grads),
            Params::GatV2 { .. } => return self.backward_gatv2(graph, x, dy, grads),
            Params::Transformer { .. } => return self.backward_transformer(graph, x, dy, grads),
            Params::Timm { .. } => {}
        }
        let (_, cache) = self.forward_cached(graph, x)?;
        self.backward_cached(graph, x, &cache, dy, grads)
    }

    /// The timm layer's forward, keeping what its backward needs (`qkv` output, attended
    /// values, log-sum-exp): `x [N x D] -> ([N x D], cache)`.
    pub fn forward_cached(&self, graph: &Graph, x: &Matrix) -> Result<(Matrix, AttentionCache)> {
        self.forward_cached_with(graph, x, &ForwardOptions::default())
    }

    /// [`GraphAttention::forward_cached`] with an edge bias or a low-rank method (`options.path`
    /// and `options.weights` are not used: the backward needs the automatic path's log-sum-exp).
    pub fn forward_cached_with(
        &self,
        graph: &Graph,
        x: &Matrix,
        options: &ForwardOptions<'_>,
    ) -> Result<(Matrix, AttentionCache)> {
        x.expect_shape("attention input x", graph.num_nodes(), self.config.in_dim())?;
        let Params::Timm { qkv, qk_norm, norm, proj } = &self.params else {
            return Err(self.no_layer_backward());
        };
        let (d, heads) = (self.config.in_dim(), self.config.heads());
        let qkv_out = qkv.forward(x)?; // qkv = x Wqkv^T + b
        let normed = match qk_norm {
            Some((qn, kn)) => Some(normalize_qk(&qkv_out, qn, kn, heads)?), // q' = q_norm(q), k' = k_norm(k)
            None => None,
        };
        let scored = normed.as_ref().unwrap_or(&qkv_out);
        let mut inputs = AttentionInputs::new(
            column_block(scored, 0, d)?,
            column_block(scored, d, d)?,
            column_block(scored, 2 * d, d)?,
            heads,
        );
        inputs.bias = options.edge_bias;
        let (attended, log_sum_exp, low_rank) = match options.low_rank {
            Some(lr) => {
                self.check_low_rank(graph, options)?;
                let (out, c) = lr.forward(&inputs, options.low_rank_shared)?; // a = low_rank(q, k, v)
                (out, Vec::new(), Some(c))
            }
            None => {
                let a = attend(graph, &self.score(), &inputs, Path::Auto, false)?; // a = attend(q, k, v)
                (a.out, a.log_sum_exp, None)
            }
        };
        let attended_normed = norm.as_ref().map(|n| n.forward(&attended)).transpose()?; // a' = norm(a)
        let y = proj.forward(attended_normed.as_ref().unwrap_or(&attended))?; // y = a' Wproj^T + b
        Ok((y, AttentionCache { qkv: qkv_out, qk_normed: normed, attended, attended_normed, log_sum_exp, low_rank }))
    }

    /// Backward from [`GraphAttention::forward_cached`]'s cache (no recomputation).
    pub fn backward_cached(
        &self,
        graph: &Graph,
        x: &Matrix,
        cache: &AttentionCache,
        dy: &Matrix,
        grads: &mut AttentionGrads,
    ) -> Result<Matrix> {
        Ok(self.backward_cached_with(graph, x, cache, dy, grads, &ForwardOptions::default(), None)?.0)
    }

    /// Backward from [`GraphAttention::forward_cached_with`]'s cache, with the same `options`:
    /// returns `dx` and, when the forward had an edge bias, its gradient `[E x H]` (empty
    /// otherwise); a low-rank method's parameter gradients are added into `low_rank_grads`.
    ///
    /// ```text
    /// qkv = x Wqkv^T + b           dx   = qkv.backward(x, [dq | dk | dv])
    /// a   = attend(q, k, v; bias)   dq, dk, dv, dbias = attend_backward(.., da)     (or the low-rank backward)
    /// y   = a Wproj^T + b          da   = proj.backward(a, dy)
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_cached_with(
        &self,
        graph: &Graph,
        x: &Matrix,
        cache: &AttentionCache,
        dy: &Matrix,
        grads: &mut AttentionGrads,
        options: &ForwardOptions<'_>,
        low_rank_grads: Option<&mut LowRankGrads>,
    ) -> Result<(Matrix, Vec<f32>)> {
        // x [N x D], dy [N x D]
        x.expect_shape("attention backward x", graph.num_nodes(), self.config.in_dim())?;
        let (
            Params::Timm { qkv, qk_norm, norm, proj },
            AttentionGrads::Timm { qkv: g_qkv, proj: g_proj, qk_norm: g_qk, norm: g_norm },
        ) = (&self.params, grads)
        else {
            return Err(self.no_layer_backward());
        };
        let (d, heads) = (self.config.in_dim(), self.config.heads());
        let scored = cache.qk_normed.as_ref().unwrap_or(&cache.qkv);
        let mut inputs = AttentionInputs::new(
            column_block(scored, 0, d)?,
            column_block(scored, d, d)?,
            column_block(scored, 2 * d, d)?,
            heads,
        );
        inputs.bias = options.edge_bias;
        let da = proj.backward(cache.attended_normed.as_ref().unwrap_or(&cache.attended), dy, g_proj)?; // y = a' Wproj^T + b
        let da = match (norm, g_norm) {
            (Some(n), Some(g)) => n.backward(&cache.attended, &da, g)?, // a' = norm(a)
            (None, None) => da,
            _ => return Err(self.no_layer_backward()),
        };
        // dq | dk | dv side by side, as the q | k | v columns of qkv = x Wqkv^T + b
        let side_by_side = |dq: &Matrix, dk: &Matrix, dv: &Matrix| {
            let mut dqkv = Matrix::zeros(dq.rows(), 3 * d);
            for i in 0..dq.rows() {
                let row = dqkv.row_mut(i);
                row[..d].copy_from_slice(dq.row(i));
                row[d..2 * d].copy_from_slice(dk.row(i));
                row[2 * d..].copy_from_slice(dv.row(i));
            }
            dqkv
        };
        let (dqkv, dbias) = match (options.low_rank, &cache.low_rank) {
            (Some(lr), Some(c)) => {
                let mut none = LowRankGrads::None;
                let g = low_rank_grads.unwrap_or(&mut none);
                // a = low_rank(q, k, v)
                let (dq, dk, dv) = lr.backward(&inputs, options.low_rank_shared, c, &da, g)?;
                (side_by_side(&dq, &dk, &dv), Vec::new())
            }
            (None, None) if options.edge_bias.is_some() => {
                // a = attend(q, k, v; bias)
                let g = crate::attention::attend_backward(graph, &self.score(), &inputs, &cache.log_sum_exp, &da)?;
                (side_by_side(&g.query, &g.key, &g.value), g.bias)
            }
            (None, None) => {
                let dqkv = // a = attend(q, k, v)
                    crate::attention::attend_backward_qkv(graph, &self.score(), &inputs, &cache.log_sum_exp, &da)?;
                (dqkv, Vec::new())
            }
            _ => {
                return Err(Error::invalid(
                    "GraphAttention backward",
                    "the cache's attention (low-rank or softmax) differs from the options'",
                ));
            }
        };
        let dqkv = match (qk_norm, g_qk) {
            // q' = q_norm(q), k' = k_norm(k): the gradients of the raw q, k columns
            (Some((qn, kn)), Some((gq, gk))) => normalize_qk_backward(&cache.qkv, dqkv, (qn, kn), (gq, gk), heads)?,
            (None, None) => dqkv,
            _ => return Err(self.no_layer_backward()),
        };
        Ok((qkv.backward(x, &dqkv, g_qkv)?, dbias))
    }

    /// Low-rank attention replaces the complete graph: any other graph, an edge bias or a
    /// request for per-edge weights is an error naming the method.
    fn check_low_rank(&self, graph: &Graph, options: &ForwardOptions<'_>) -> Result<()> {
        let Some(lr) = options.low_rank else { return Ok(()) };
        let what = format!("`{}`", lr.method());
        if graph.complete_self_loops() != Some(true) {
            return Err(Error::invalid(
                "low-rank attention",
                format!("{what} approximates the complete graph with self-loops; got a {:?} graph", graph.topology()),
            ));
        }
        let t = lr.tokens();
        if graph.blocks().windows(2).any(|b| b[1] - b[0] != t) {
            return Err(Error::invalid(
                "low-rank attention",
                format!("{what} was built for images of {t} tokens; the graph's blocks are {:?}", graph.blocks()),
            ));
        }
        if options.edge_bias.is_some() || options.weights {
            return Err(Error::invalid(
                "low-rank attention",
                format!("{what} has no per-edge scores: an edge bias or attention weights need a graph"),
            ));
        }
        Ok(())
    }

    fn no_layer_backward(&self) -> Error {
        Error::invalid(
            "GraphAttention backward",
            format!(
                "forward_cached / backward_cached are for the timm configuration only, and every backward needs \
                 gradients from this layer's zero_grads; got {:?}",
                self.config
            ),
        )
    }

    /// Zero gradients shaped like this layer's parameters.
    pub fn zero_grads(&self) -> AttentionGrads {
        match &self.params {
            Params::Timm { qkv, qk_norm, norm, proj } => AttentionGrads::Timm {
                qkv: LinearGrads::zeros(qkv),
                qk_norm: qk_norm
                    .as_ref()
                    .map(|(q, k)| (LayerNormGrads::zeros(q.dim()), LayerNormGrads::zeros(k.dim()))),
                norm: norm.as_ref().map(|n| LayerNormGrads::zeros(n.dim())),
                proj: LinearGrads::zeros(proj),
            },
            Params::Gat { lin, att_src, att_dst, bias } => AttentionGrads::Gat {
                lin: LinearGrads::zeros(lin),
                att_src: vec![0.0; att_src.len()],
                att_dst: vec![0.0; att_dst.len()],
                bias: bias.as_ref().map(|b| vec![0.0; b.len()]),
            },
            Params::GatV2 { lin_l, lin_r, att, bias } => AttentionGrads::GatV2 {
                lin_l: LinearGrads::zeros(lin_l),
                lin_r: lin_r.as_ref().map(LinearGrads::zeros),
                att: vec![0.0; att.len()],
                bias: bias.as_ref().map(|b| vec![0.0; b.len()]),
            },
            Params::Transformer { qkvs, lin_beta } => AttentionGrads::Transformer {
                qkvs: LinearGrads::zeros(qkvs),
                lin_beta: lin_beta.as_ref().map(LinearGrads::zeros),
            },
        }
    }

    /// Backward of the TransformerConv configuration (recomputing its forward from `x`); `w` is
    /// the output width (`H*C` concatenated, `C` averaged), `s = x_r`:
    ///
    /// ```text
    /// qkvs = x [Wq|Wk|Wv|Ws]^T + b  [N x 3HC (+w)]     dx = qkvs.backward(x, [dq | dk | dv | ds]) (ds = 0 without root_weight)
    /// a = attend(graph, q, k, v)    [N x HC]          dq, dk, dv = attend_backward(.., da)
    /// o = concat(a) | mean_h(a)     [N x w]           da = do | do / H broadcast
    /// root_weight, no beta:
    ///   out = o + s                                    do = dout, ds = dout
    /// root_weight, beta:
    ///   z = lin_beta([o, s, o - s])  [N x 1]           dcat = lin_beta.backward(cat, dz)
    ///   b = sigmoid(z)                                 dz = db b (1 - b)
    ///   out = b s + (1 - b) o                          db = sum_j dout (s - o)
    ///                                                  do = (1 - b) dout + dcat_o + dcat_diff
    ///                                                  ds = b dout + dcat_s - dcat_diff
    /// no root_weight: out = o                          do = dout
    /// ```
    pub fn backward_transformer(
        &self,
        graph: &Graph,
        x: &Matrix,
        dy: &Matrix,
        grads: &mut AttentionGrads,
    ) -> Result<Matrix> {
        let (Params::Transformer { qkvs, lin_beta }, AttentionGrads::Transformer { qkvs: g_qkvs, lin_beta: g_beta }) =
            (&self.params, grads)
        else {
            return Err(self.no_layer_backward());
        };
        let AttentionConfig::Transformer { concat, root_weight, .. } = self.config else {
            return Err(self.no_layer_backward());
        };
        // x [N x F], dy [N x w]
        x.expect_shape("attention backward x", graph.num_nodes(), self.config.in_dim())?;
        dy.expect_shape("attention backward dy", graph.num_nodes(), self.config.out_dim())?;
        let (heads, c, w) = (self.config.heads(), self.config.head_dim(), self.config.out_dim());
        let hc = heads * c;
        // qkvs = x [Wq|Wk|Wv|Ws]^T + b, the skip columns only with root_weight
        let y = qkvs.forward_leading(x, if root_weight { qkvs.out_dim() } else { 3 * hc })?;
        let score = self.score();
        let inputs = AttentionInputs::new(
            column_block(&y, 0, hc)?,
            column_block(&y, hc, hc)?,
            column_block(&y, 2 * hc, hc)?,
            heads,
        );
        let a = attend(graph, &score, &inputs, Path::Auto, false)?; // a = attend(graph, q, k, v)
        let mut dqkvs = Matrix::zeros(x.rows(), qkvs.out_dim()); // [N x 3HC + w]: dq | dk | dv | ds
        let d_o = match (root_weight, lin_beta, g_beta.as_mut()) {
            (true, Some(lb), Some(gb)) => {
                let o = self.combine_heads(a.out, None); // o = concat(a) | mean_h(a)
                let s = column_block(&y, 3 * hc, w)?;
                // cat = [o, s, o - s] [N x 3w]
                let cat = Matrix::from_fn(o.rows(), 3 * w, |n, j| match j / w {
                    0 => o.get(n, j),
                    1 => s.get(n, j - w),
                    _ => o.get(n, j - 2 * w) - s.get(n, j - 2 * w),
                });
                let z = lb.forward(&cat)?; // z = lin_beta([o, s, o - s])
                let mut dz = Matrix::zeros(o.rows(), 1);
                for n in 0..o.rows() {
                    let b = 1.0 / (1.0 + (-z.get(n, 0)).exp()); // b = sigmoid(z)
                    // out = b s + (1 - b) o:  db = sum_j dout (s - o)
                    let db: f32 = dy.row(n).iter().zip(s.row(n)).zip(o.row(n)).map(|((d, s), o)| d * (s - o)).sum();
                    dz.row_mut(n)[0] = db * b * (1.0 - b); // b = sigmoid(z)
                }
                let dcat = lb.backward(&cat, &dz, gb)?; // z = lin_beta([o, s, o - s])
                let mut d_o = Matrix::zeros(o.rows(), w);
                for n in 0..o.rows() {
                    let b = 1.0 / (1.0 + (-z.get(n, 0)).exp());
                    let (dc, dout) = (dcat.row(n), dy.row(n));
                    let ds = &mut dqkvs.row_mut(n)[3 * hc..];
                    for j in 0..w {
                        // out = b s + (1 - b) o;  cat = [o, s, o - s]
                        ds[j] = b * dout[j] + dc[w + j] - dc[2 * w + j];
                    }
                    for (j, g) in d_o.row_mut(n).iter_mut().enumerate() {
                        *g = (1.0 - b) * dout[j] + dc[j] + dc[2 * w + j];
                    }
                }
                d_o
            }
            (true, None, _) => {
                for n in 0..dy.rows() {
                    dqkvs.row_mut(n)[3 * hc..].copy_from_slice(dy.row(n)); // out = o + s
                }
                dy.clone()
            }
            (false, None, _) => dy.clone(), // out = o
            _ => return Err(self.no_layer_backward()),
        };
        // o = concat(a) | mean_h(a)
        let d_a = if concat { d_o } else { Matrix::from_fn(dy.rows(), hc, |n, j| d_o.get(n, j % c) / heads as f32) };
        let ga = crate::attention::attend_backward(graph, &score, &inputs, &a.log_sum_exp, &d_a)?;
        for n in 0..x.rows() {
            let row = dqkvs.row_mut(n);
            row[..hc].copy_from_slice(ga.query.row(n));
            row[hc..2 * hc].copy_from_slice(ga.key.row(n));
            row[2 * hc..3 * hc].copy_from_slice(ga.value.row(n));
        }
        qkvs.backward(x, &dqkvs, g_qkvs) // qkvs = x [Wq|Wk|Wv|Ws]^T + b
    }

    /// Backward of the GATv2Conv configuration (recomputing its forward from `x`):
    ///
    /// ```text
    /// xl = lin_l(x), xr = lin_r(x) (or xl)      dx = lin_l.backward(x, dxl) + lin_r.backward(x, dxr)
    /// o = attend(graph + self-loops, q = xr, k = xl, v = xl, a)    dxr = dq, dxl = dk + dv, da
    /// y = concat(o) | mean_h(o), + bias                            do = dy | dy / H broadcast; dbias = sum dy
    /// ```
    pub fn backward_gatv2(&self, graph: &Graph, x: &Matrix, dy: &Matrix, grads: &mut AttentionGrads) -> Result<Matrix> {
        let (
            Params::GatV2 { lin_l, lin_r, bias, .. },
            AttentionGrads::GatV2 { lin_l: g_l, lin_r: g_r, att: g_att, bias: g_bias },
        ) = (&self.params, grads)
        else {
            return Err(self.no_layer_backward());
        };
        x.expect_shape("attention backward x", graph.num_nodes(), self.config.in_dim())?;
        dy.expect_shape("attention backward dy", graph.num_nodes(), self.config.out_dim())?;
        let (heads, c) = (self.config.heads(), self.config.head_dim());
        let g = self.attention_graph(graph);
        let xl = lin_l.forward(x)?;
        let xr = match lin_r {
            Some(l) => l.forward(x)?,
            None => xl.clone(),
        };
        let score = self.score();
        let inputs = AttentionInputs::new(&xr, &xl, &xl, heads);
        let a = attend(&g, &score, &inputs, Path::Auto, false)?;
        if let (Some(gb), Some(_)) = (g_bias.as_mut(), bias.as_ref()) {
            for n in 0..dy.rows() {
                for (acc, v) in gb.iter_mut().zip(dy.row(n)) {
                    *acc += v;
                }
            }
        }
        let concat = matches!(self.config, AttentionConfig::GatV2 { concat: true, .. });
        let d_out = if concat {
            dy.clone()
        } else {
            Matrix::from_fn(dy.rows(), heads * c, |n, j| dy.get(n, j % c) / heads as f32)
        };
        let ga = crate::attention::attend_backward(&g, &score, &inputs, &a.log_sum_exp, &d_out)?;
        for (acc, v) in g_att.iter_mut().zip(&ga.attention) {
            *acc += v;
        }
        let mut dxl = ga.key;
        for (k, v) in dxl.as_mut_slice().iter_mut().zip(ga.value.as_slice()) {
            *k += v;
        }
        match (lin_r, g_r) {
            (Some(l), Some(gr)) => {
                let mut dx = lin_l.backward(x, &dxl, g_l)?;
                let dxr = l.backward(x, &ga.query, gr)?;
                for (a, b) in dx.as_mut_slice().iter_mut().zip(dxr.as_slice()) {
                    *a += b;
                }
                Ok(dx)
            }
            _ => {
                for (k, q) in dxl.as_mut_slice().iter_mut().zip(ga.query.as_slice()) {
                    *k += q; // shared weights: xr = xl
                }
                lin_l.backward(x, &dxl, g_l)
            }
        }
    }

    /// Backward of the GATConv configuration (recomputing its forward from `x`):
    ///
    /// ```text
    /// wh = x W^T                     dx = lin.backward(x, dwh)
    /// s_i = a_src . wh_i (per head)  dwh += ds_i a_src,  da_src += sum_i ds_i wh_i    (same for dst)
    /// o = attend(graph + self-loops, q = d_i, k = s_j, v = wh)    dq, dk, dv = attend_backward(.., do)
    /// y = concat(o) | mean_h(o), + bias                            do = dy | dy / H broadcast; dbias = sum dy
    /// ```
    pub fn backward_gat(&self, graph: &Graph, x: &Matrix, dy: &Matrix, grads: &mut AttentionGrads) -> Result<Matrix> {
        let (
            Params::Gat { lin, att_src, att_dst, bias },
            AttentionGrads::Gat { lin: g_lin, att_src: g_src, att_dst: g_dst, bias: g_bias },
        ) = (&self.params, grads)
        else {
            return Err(self.no_layer_backward());
        };
        x.expect_shape("attention backward x", graph.num_nodes(), self.config.in_dim())?;
        dy.expect_shape("attention backward dy", graph.num_nodes(), self.config.out_dim())?;
        let (heads, c) = (self.config.heads(), self.config.head_dim());
        let g = self.attention_graph(graph);
        let wh = lin.forward(x)?; // wh = x W^T
        let (alpha_src, alpha_dst) = (per_head_dot(&wh, att_src, heads), per_head_dot(&wh, att_dst, heads));
        let inputs = AttentionInputs::new(&alpha_dst, &alpha_src, &wh, heads);
        let a = attend(&g, &self.score(), &inputs, Path::Auto, false)?;
        // y = concat(o) | mean_h(o), + bias
        if let (Some(gb), Some(_)) = (g_bias.as_mut(), bias.as_ref()) {
            for n in 0..dy.rows() {
                for (acc, v) in gb.iter_mut().zip(dy.row(n)) {
                    *acc += v;
                }
            }
        }
        let concat = matches!(self.config, AttentionConfig::Gat { concat: true, .. });
        let d_out = if concat {
            dy.clone()
        } else {
            Matrix::from_fn(dy.rows(), heads * c, |n, j| dy.get(n, j % c) / heads as f32)
        };
        let ga = crate::attention::attend_backward(&g, &self.score(), &inputs, &a.log_sum_exp, &d_out)?;
        let mut dwh = ga.value;
        for n in 0..wh.rows() {
            for h in 0..heads {
                let (ds, dd) = (ga.key.get(n, h), ga.query.get(n, h)); // d alpha_src, d alpha_dst
                for j in h * c..(h + 1) * c {
                    let w = wh.get(n, j);
                    dwh.row_mut(n)[j] += ds * att_src[j] + dd * att_dst[j];
                    g_src[j] += ds * w;
                    g_dst[j] += dd * w;
                }
            }
        }
        lin.backward(x, &dwh, g_lin) // wh = x W^T
    }

    /// Calls `f(slot, parameter, gradient, decay)` for every parameter tensor in a fixed order
    /// (timm: slots 0 `qkv.weight`, 1 `qkv.bias`, 2 `proj.weight`, 3 `proj.bias`; GAT: 0
    /// `lin.weight`, 1 `att_src`, 2 `att_dst`, 3 `bias`; GATv2: 0/1 `lin_l`, 2/3 `lin_r`, 4
    /// `att`, 5 `bias`; TransformerConv: 0 `qkvs.weight` (`lin_query | lin_key | lin_value |
    /// lin_skip` rows), 1 `qkvs.bias`, 2 `lin_beta.weight`; `decay` for the weight matrices
    /// only), for optimisers.
    pub fn visit_params(&mut self, grads: &AttentionGrads, f: &mut ParamVisitor<'_>) {
        if let (Params::Transformer { qkvs, lin_beta }, AttentionGrads::Transformer { qkvs: gq, lin_beta: gb }) =
            (&mut self.params, grads)
        {
            f(0, qkvs.weight.as_mut_slice(), gq.weight.as_slice(), true);
            if let (Some(b), Some(g)) = (qkvs.bias.as_mut(), gq.bias.as_ref()) {
                f(1, b, g, false);
            }
            if let (Some(l), Some(g)) = (lin_beta.as_mut(), gb.as_ref()) {
                f(2, l.weight.as_mut_slice(), g.weight.as_slice(), true);
            }
            return;
        }
        if let (
            Params::Gat { lin, att_src, att_dst, bias },
            AttentionGrads::Gat { lin: gl, att_src: gs, att_dst: gd, bias: gb },
        ) = (&mut self.params, grads)
        {
            f(0, lin.weight.as_mut_slice(), gl.weight.as_slice(), true);
            f(1, att_src, gs, false);
            f(2, att_dst, gd, false);
            if let (Some(b), Some(g)) = (bias.as_mut(), gb.as_ref()) {
                f(3, b, g, false);
            }
            return;
        }
        if let (
            Params::GatV2 { lin_l, lin_r, att, bias },
            AttentionGrads::GatV2 { lin_l: gl, lin_r: gr, att: ga, bias: gb },
        ) = (&mut self.params, grads)
        {
            let linears = [(Some(lin_l), Some(gl)), (lin_r.as_mut(), gr.as_ref())];
            for (i, (l, g)) in linears.into_iter().enumerate() {
                if let (Some(l), Some(g)) = (l, g) {
                    f(2 * i, l.weight.as_mut_slice(), g.weight.as_slice(), true);
                    if let (Some(b), Some(gbias)) = (l.bias.as_mut(), g.bias.as_ref()) {
                        f(2 * i + 1, b, gbias, false);
                    }
                }
            }
            f(4, att, ga, false);
            if let (Some(b), Some(g)) = (bias.as_mut(), gb.as_ref()) {
                f(5, b, g, false);
            }
            return;
        }
        if let (Params::Timm { qkv, proj, .. }, AttentionGrads::Timm { qkv: gq, proj: gp, .. }) =
            (&mut self.params, grads)
        {
            for (slot, (l, g)) in [(qkv, gq), (proj, gp)].into_iter().enumerate() {
                f(2 * slot, l.weight.as_mut_slice(), g.weight.as_slice(), true);
                if let (Some(b), Some(gb)) = (l.bias.as_mut(), g.bias.as_ref()) {
                    f(2 * slot + 1, b, gb, false);
                }
            }
        }
    }

    /// The timm layer's optional norms (`q_norm`, `k_norm`, `norm`: weight then bias each), at
    /// slots `slot ..`, `slot` advanced by 6 whether they exist or not (a model keeps its slot
    /// numbers whatever its options). [`GraphAttention::visit_params`] visits the rest.
    pub fn visit_norm_params(&mut self, grads: &AttentionGrads, slot: &mut usize, f: &mut ParamVisitor<'_>) {
        let start = *slot;
        if let (Params::Timm { qk_norm, norm, .. }, AttentionGrads::Timm { qk_norm: gqk, norm: gn, .. }) =
            (&mut self.params, grads)
        {
            if let (Some((qn, kn)), Some((gq, gk))) = (qk_norm.as_mut(), gqk.as_ref()) {
                let mut s = start;
                qn.visit_params(gq, &mut s, f);
                kn.visit_params(gk, &mut s, f);
            }
            if let (Some(n), Some(g)) = (norm.as_mut(), gn.as_ref()) {
                let mut s = start + 4;
                n.visit_params(g, &mut s, f);
            }
        }
        *slot = start + 6;
    }

    /// Gradients under the peer's parameter names (as `named_parameters()` of the peer layer).
    pub fn grads_state_dict(&self, grads: &AttentionGrads) -> Result<TensorMap> {
        let (c, h) = (self.config.head_dim(), self.config.heads());
        let mut map = TensorMap::default();
        let lin = |map: &mut TensorMap, name: &str, g: &LinearGrads| -> Result<()> {
            map.insert(format!("{name}.weight"), vec![g.weight.rows(), g.weight.cols()], g.weight.as_slice().to_vec())?;
            g.bias.iter().try_for_each(|b| map.insert(format!("{name}.bias"), vec![b.len()], b.clone()))
        };
        let ln = |map: &mut TensorMap, name: &str, g: &LayerNormGrads| -> Result<()> {
            map.insert(format!("{name}.weight"), vec![g.weight.len()], g.weight.clone())?;
            map.insert(format!("{name}.bias"), vec![g.bias.len()], g.bias.clone())
        };
        let att = |map: &mut TensorMap, name: &str, g: &[f32]| map.insert(name, vec![1, h, c], g.to_vec());
        let vector = |map: &mut TensorMap, name: &str, g: &Option<Vec<f32>>| {
            g.iter().try_for_each(|b| map.insert(name, vec![b.len()], b.clone()))
        };
        match grads {
            AttentionGrads::Timm { qkv, qk_norm, norm, proj } => {
                lin(&mut map, "qkv", qkv)?;
                if let Some((q, k)) = qk_norm {
                    ln(&mut map, "q_norm", q)?;
                    ln(&mut map, "k_norm", k)?;
                }
                if let Some(n) = norm {
                    ln(&mut map, "norm", n)?;
                }
                lin(&mut map, "proj", proj)?;
            }
            AttentionGrads::Gat { lin: l, att_src, att_dst, bias } => {
                lin(&mut map, "lin", l)?;
                att(&mut map, "att_src", att_src)?;
                att(&mut map, "att_dst", att_dst)?;
                vector(&mut map, "bias", bias)?;
            }
            AttentionGrads::GatV2 { lin_l, lin_r, att: a, bias } => {
                lin(&mut map, "lin_l", lin_l)?;
                if let Some(r) = lin_r {
                    lin(&mut map, "lin_r", r)?;
                }
                att(&mut map, "att", a)?;
                vector(&mut map, "bias", bias)?;
            }
            AttentionGrads::Transformer { qkvs, lin_beta } => {
                let hc = h * c;
                let rows = [hc, hc, hc, qkvs.weight.rows() - 3 * hc];
                let mut r0 = 0;
                for (name, rows) in ["lin_query", "lin_key", "lin_value", "lin_skip"].into_iter().zip(rows) {
                    let cols = qkvs.weight.cols();
                    let w = qkvs.weight.as_slice()[r0 * cols..(r0 + rows) * cols].to_vec();
                    map.insert(format!("{name}.weight"), vec![rows, cols], w)?;
                    if let Some(b) = &qkvs.bias {
                        map.insert(format!("{name}.bias"), vec![rows], b[r0..r0 + rows].to_vec())?;
                    }
                    r0 += rows;
                }
                if let Some(l) = lin_beta {
                    lin(&mut map, "lin_beta", l)?;
                }
            }
        }
        Ok(map)
    }

    /// Concatenated heads `[N x H*C]` -> `[N x H*C]` (concat) or their mean `[N x C]`, plus bias.
    fn combine_heads(&self, x: Matrix, bias: Option<&[f32]>) -> Matrix {
        let (h, c) = (self.config.heads(), self.config.head_dim());
        let concat = matches!(
            self.config,
            AttentionConfig::Gat { concat: true, .. }
                | AttentionConfig::GatV2 { concat: true, .. }
                | AttentionConfig::Transformer { concat: true, .. }
        );
        let mut out = if concat {
            x
        } else {
            Matrix::from_fn(x.rows(), c, |n, j| (0..h).map(|hh| x.get(n, hh * c + j)).sum::<f32>() / h as f32)
        };
        if let Some(b) = bias {
            for n in 0..out.rows() {
                for (o, bb) in out.row_mut(n).iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
        out
    }
}

/// Columns `start .. start + width` of a projection's output, in place.
fn column_block(m: &Matrix, start: usize, width: usize) -> Result<ColumnBlock<'_>> {
    m.column_block(start, width).ok_or_else(|| {
        Error::shape("projection columns", format!("at least {} columns", start + width), format!("{}", m.cols()))
    })
}

/// `[N x H*C]` rows dotted with a per-head vector `a [H*C]`: `out[n, h] = x[n, h*C..] . a[h*C..]`.
fn per_head_dot(x: &Matrix, a: &[f32], heads: usize) -> Matrix {
    let c = x.cols() / heads;
    Matrix::from_fn(x.rows(), heads, |n, h| {
        crate::kernels::simd::dot(&x.row(n)[h * c..(h + 1) * c], &a[h * c..(h + 1) * c])
    })
}

/// `qkv [N x 3D]` with each head's query and key normalised: `[q_norm(q) | k_norm(k) | v]`.
/// A head's `d` channels are contiguous, so `q` read as `[N*H x d]` rows is one LayerNorm call.
fn normalize_qk(qkv: &Matrix, q_norm: &LayerNorm, k_norm: &LayerNorm, heads: usize) -> Result<Matrix> {
    let (n, d3) = qkv.shape();
    let d = d3 / 3;
    let c = d / heads.max(1);
    let mut out = qkv.clone();
    for (part, norm) in [(0, q_norm), (1, k_norm)] {
        let rows = Matrix::from_fn(n * heads, c, |r, j| qkv.get(r / heads, part * d + (r % heads) * c + j));
        let normed = norm.forward(&rows)?;
        for r in 0..n * heads {
            let (i, h) = (r / heads, r % heads);
            out.row_mut(i)[part * d + h * c..part * d + (h + 1) * c].copy_from_slice(normed.row(r));
        }
    }
    Ok(out)
}

/// The backward of [`normalize_qk`]: `dqkv` holds `[dq' | dk' | dv]`; returns `[dq | dk | dv]`
/// (`q' = q_norm(q)`, `k' = k_norm(k)`), the norms' gradients added into `grads`.
fn normalize_qk_backward(
    qkv: &Matrix,
    mut dqkv: Matrix,
    norms: (&LayerNorm, &LayerNorm),
    grads: (&mut LayerNormGrads, &mut LayerNormGrads),
    heads: usize,
) -> Result<Matrix> {
    let (n, d3) = qkv.shape();
    let d = d3 / 3;
    let c = d / heads.max(1);
    let (norms, grads) = ([norms.0, norms.1], [grads.0, grads.1]);
    for (part, (norm, g)) in norms.into_iter().zip(grads).enumerate() {
        let rows = |m: &Matrix| Matrix::from_fn(n * heads, c, |r, j| m.get(r / heads, part * d + (r % heads) * c + j));
        let dx = norm.backward(&rows(qkv), &rows(&dqkv), g)?; // q' = q_norm(q)
        for r in 0..n * heads {
            let (i, h) = (r / heads, r % heads);
            dqkv.row_mut(i)[part * d + h * c..part * d + (h + 1) * c].copy_from_slice(dx.row(r));
        }
    }
    Ok(dqkv)
}
