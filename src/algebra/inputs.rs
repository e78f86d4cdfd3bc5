//! `AttentionInputs` and `AttentionOutput`: what every implementation of the algebra reads and
//! writes, and the one place their shapes are checked.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{AttentionInputs, Score};
//! let x = Matrix::zeros(3, 4);
//! let inputs = AttentionInputs::new(&x, &x, &x, 2);
//! let dims = inputs.validate(&Graph::complete(3, true), &Score::Dot { scale: 0.5 }).unwrap();
//! assert_eq!((dims.nodes, dims.heads, dims.key_dim, dims.value_dim, dims.edges), (3, 2, 2, 2, 9));
//! ```

use super::Score;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::{ColumnBlock, Matrix};

/// Per-node inputs of one attention call, all with one row per node:
/// `query` `[N x H*dk]`, `key` `[N x H*dk]`, `value` `[N x H*dv]` (head h owns columns
/// `h*d .. (h+1)*d`), and an optional per-edge bias `[E x H]` in the graph's edge order.
///
/// For [`Score::Gat`], `dk = 1`: `query` holds `a_dst . W h_i` and `key` `a_src . W h_j`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionInputs<'a> {
    /// Destination-side rows `[N x H*dk]`.
    pub query: ColumnBlock<'a>,
    /// Source-side rows `[N x H*dk]`.
    pub key: ColumnBlock<'a>,
    /// Messages `[N x H*dv]`.
    pub value: ColumnBlock<'a>,
    /// Number of heads `H`.
    pub heads: usize,
    /// Optional additive bias `[E x H]` (edge-major). `-inf` masks an edge; NaN and `+inf` are errors.
    pub bias: Option<&'a [f32]>,
    /// Whether the kernels refuse a NaN or infinite `query`, `key` or `value` (and the backward's
    /// `dout`) with [`crate::Error::NonFinite`], checked inside their tasks
    /// ([`crate::kernels::finite_check`]); see [`AttentionInputs::checked`]. Off by default:
    /// inputs computed from checked data (a model's layers) skip it.
    pub check_finite: bool,
}

/// The sizes of one attention call, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// `N`.
    pub nodes: usize,
    /// `H`.
    pub heads: usize,
    /// Query/key width per head.
    pub key_dim: usize,
    /// Value width per head.
    pub value_dim: usize,
    /// `E`.
    pub edges: usize,
}

/// Result of one attention call.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOutput {
    /// `out_i = sum_j a_ij v_j` per head, `[N x H*dv]` (heads concatenated).
    pub out: Matrix,
    /// Attention weights `[E x H]` in the graph's edge order, when asked for.
    pub weights: Option<Vec<f32>>,
    /// `lse_i = ln sum_j exp(s_ij)` per node and head, `[N x H]` (`-inf` for a node with no
    /// incoming edge): what a backward pass needs to recompute the weights `exp(s_ij - lse_i)`.
    pub log_sum_exp: Vec<f32>,
}

impl<'a> AttentionInputs<'a> {
    /// Inputs without an edge bias. Each of `query`, `key`, `value` is a `&Matrix` or a
    /// [`ColumnBlock`] of one (e.g. the `q`, `k`, `v` columns of a fused projection).
    pub fn new(
        query: impl Into<ColumnBlock<'a>>,
        key: impl Into<ColumnBlock<'a>>,
        value: impl Into<ColumnBlock<'a>>,
        heads: usize,
    ) -> Self {
        AttentionInputs {
            query: query.into(),
            key: key.into(),
            value: value.into(),
            heads,
            bias: None,
            check_finite: false,
        }
    }

    /// The same inputs, checked: [`crate::attention::attend`] and
    /// [`crate::attention::attend_backward`] return [`crate::Error::NonFinite`] naming the first
    /// NaN or infinity of `q`, `k`, `v` (then `dout`) as `q[row, column]`, never a NaN result.
    /// The check runs inside the kernels' parallel tasks, each on a share of the rows
    /// ([`crate::kernels::finite_check`]), so it costs far less than a pass before the call.
    pub fn checked(self) -> Self {
        AttentionInputs { check_finite: true, ..self }
    }

    /// The same inputs with an edge bias `[E x H]`.
    pub fn with_bias(self, bias: &'a [f32]) -> Self {
        AttentionInputs { bias: Some(bias), ..self }
    }

    /// Checks every shape against `graph` and `score`; returns the sizes.
    pub fn validate(&self, graph: &Graph, score: &Score) -> Result<Dims> {
        let n = graph.num_nodes();
        let h = self.heads;
        if h == 0 {
            return Err(Error::invalid("heads", "must be at least 1"));
        }
        for (name, m) in [("query", self.query), ("key", self.key), ("value", self.value)] {
            if m.rows() != n {
                return Err(Error::shape(
                    format!("attention {name}"),
                    format!("{n} rows (one per node)"),
                    format!("{} rows", m.rows()),
                ));
            }
            if m.cols() % h != 0 {
                return Err(Error::shape(
                    format!("attention {name}"),
                    format!("a multiple of {h} heads columns"),
                    format!("{} columns", m.cols()),
                ));
            }
        }
        if self.key.cols() != self.query.cols() {
            return Err(Error::shape(
                "attention key",
                format!("{} columns like the query", self.query.cols()),
                format!("{} columns", self.key.cols()),
            ));
        }
        let dk = self.query.cols() / h;
        match score {
            Score::Gat { .. } if dk != 1 => {
                return Err(Error::shape(
                    "GAT query/key (a . W h per node and head)",
                    format!("[N x {h}]"),
                    format!("[N x {}]", self.query.cols()),
                ));
            }
            Score::GatV2 { attention, .. } if attention.len() != self.query.cols() => {
                return Err(Error::shape(
                    "GATv2 attention vector",
                    format!("{} values (H * d)", self.query.cols()),
                    format!("{} values", attention.len()),
                ));
            }
            _ => {}
        }
        let e = graph.num_edges();
        if let Some(bias) = self.bias {
            if bias.len() != e * h {
                return Err(Error::shape(
                    "edge bias",
                    format!("[{e} edges x {h} heads]"),
                    format!("{} values", bias.len()),
                ));
            }
            if let Some(p) = bias.iter().position(|b| b.is_nan() || *b == f32::INFINITY) {
                return Err(Error::NonFinite {
                    what: "edge bias (only -inf may mask)".into(),
                    position: p,
                    value: bias[p],
                });
            }
        }
        Ok(Dims { nodes: n, heads: h, key_dim: dk, value_dim: self.value.cols() / h, edges: e })
    }
}
