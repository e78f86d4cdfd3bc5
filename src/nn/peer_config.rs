//! Layer configs written as the peer writes them: the class name and its constructor
//! arguments, every other argument at the peer's default.
//!
//! | `kind` | peer | required | defaults |
//! |---|---|---|---|
//! | `GATConv` | PyG `GATConv` | `in_channels`, `out_channels` | `heads=1, concat=True, negative_slope=0.2, dropout=0.0, add_self_loops=True, edge_dim=None, fill_value='mean', bias=True, residual=False` |
//! | `GATv2Conv` | PyG `GATv2Conv` | `in_channels`, `out_channels` | as `GATConv`, and `share_weights=False` |
//! | `TransformerConv` | PyG `TransformerConv` | `in_channels`, `out_channels` | `heads=1, concat=True, beta=False, dropout=0.0, edge_dim=None, bias=True, root_weight=True` |
//! | `Attention` | timm `Attention` | `dim` | `num_heads=8, qkv_bias=False, qk_norm=False, scale_norm=False, proj_bias=True, attn_drop=0.0, proj_drop=0.0, norm_layer=None` (`"torch.nn.LayerNorm"`: eps 1e-5, `"timm.layers.LayerNorm"`: eps 1e-6; patchgraph's `norm_eps` sets it directly) |
//!
//! Dropout rates (`dropout`, `attn_drop`, `proj_drop`) act only in training and are accepted
//! whatever their value (patchgraph's layers run as in `eval()`). Arguments that would change
//! the computation in a way patchgraph does not implement (`edge_dim`, `residual=True`,
//! a `(source, target)` pair of `in_channels`, another `aggr`) are refused by name, and so is
//! any argument the peer does not have.
//!
//! ```
//! use patchgraph::nn::AttentionConfig;
//! let c = AttentionConfig::from_json(r#"{"kind": "GATConv", "in_channels": 20, "out_channels": 7, "heads": 3}"#).unwrap();
//! assert_eq!(c, AttentionConfig::gat(20, 7, 3));
//! let t = AttentionConfig::from_json(r#"{"kind": "Attention", "dim": 64}"#).unwrap();
//! assert_eq!((t.heads(), t.in_dim()), (8, 64)); // timm's default num_heads
//! let err = AttentionConfig::from_json(r#"{"kind": "GATConv", "in_channels": 4, "out_channels": 2, "edge_dim": 3}"#);
//! assert!(err.unwrap_err().to_string().contains("edge_dim"));
//! ```

use super::AttentionConfig;
use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The arguments of one peer call, read one by one; what is left at the end is unknown.
struct PeerArgs<'a> {
    kind: &'a str,
    args: Map<String, Value>,
}

impl PeerArgs<'_> {
    fn bad(&self, arg: &str, reason: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{} argument `{arg}`", self.kind), reason.to_string())
    }

    fn take(&mut self, arg: &str) -> Option<Value> {
        self.args.remove(arg).filter(|v| !v.is_null())
    }

    fn usize(&mut self, arg: &str, default: Option<usize>) -> Result<usize> {
        match self.take(arg) {
            None => default.ok_or_else(|| self.bad(arg, "is required")),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0) as usize),
            Some(Value::Array(_)) if arg == "in_channels" => Err(self.bad(
                arg,
                "a (source, target) pair is a bipartite layer; patchgraph's layers read one node set (give an int)",
            )),
            Some(v) => Err(self.bad(arg, format!("{v} is not a non-negative integer"))),
        }
    }

    fn bool(&mut self, arg: &str, default: bool) -> Result<bool> {
        match self.take(arg) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(self.bad(arg, format!("{v} is not true or false"))),
        }
    }

    fn f32(&mut self, arg: &str, default: f32) -> Result<f32> {
        match self.take(arg) {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_f64().map(|x| x as f32).ok_or_else(|| self.bad(arg, "is not a number")),
            Some(v) => Err(self.bad(arg, format!("{v} is not a number"))),
        }
    }

    /// A training-only rate: any value in `[0, 1)` is accepted and has no effect here.
    fn dropout(&mut self, arg: &str) -> Result<()> {
        let p = self.f32(arg, 0.0)?;
        if !(0.0..1.0).contains(&p) {
            return Err(self.bad(arg, format!("{p} is not a probability in [0, 1)")));
        }
        Ok(())
    }

    /// An argument patchgraph implements only at this value (`None`: absent or null).
    fn only(&mut self, arg: &str, allowed: &[Value], why: &str) -> Result<()> {
        if let Some(v) = self.take(arg) {
            if !allowed.contains(&v) {
                return Err(self.bad(arg, format!("{v}: {why}")));
            }
        }
        Ok(())
    }

    /// Errors naming the first argument nobody took.
    fn finish(self) -> Result<()> {
        match self.args.keys().next() {
            Some(arg) => Err(self.bad(arg, format!("is not an argument of {} that patchgraph knows", self.kind))),
            None => Ok(()),
        }
    }
}

impl AttentionConfig {
    /// A config from JSON: the peer's form (`{"kind": "GATConv", ...}`, see the module table)
    /// or patchgraph's own (`{"kind": "gat", ...}` with every field).
    pub fn from_json(text: &str) -> Result<AttentionConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Format { path: "layer config".into(), reason: e.to_string() })?;
        AttentionConfig::from_value(value)
    }

    /// [`AttentionConfig::from_json`] of a parsed JSON value.
    pub fn from_value(value: Value) -> Result<AttentionConfig> {
        let Value::Object(mut args) = value else {
            return Err(Error::invalid("layer config", "expected an object with a `kind`"));
        };
        let kind = match args.remove("kind") {
            Some(Value::String(k)) => k,
            _ => {
                return Err(Error::invalid(
                    "layer config",
                    "needs a string `kind` (GATConv, GATv2Conv, TransformerConv, Attention)",
                ));
            }
        };
        if matches!(kind.as_str(), "GATConv" | "GATv2Conv" | "TransformerConv" | "Attention") {
            return AttentionConfig::from_peer(&kind, args);
        }
        args.insert("kind".into(), Value::String(kind.clone()));
        let config: AttentionConfig = serde_json::from_value(Value::Object(args)).map_err(|e| {
            Error::invalid(
                "layer config",
                format!("`{kind}`: {e} (peer classes: GATConv, GATv2Conv, TransformerConv, Attention)"),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// A config from a peer class name and its constructor arguments (see the module table).
    pub fn from_peer(kind: &str, args: Map<String, Value>) -> Result<AttentionConfig> {
        let mut a = PeerArgs { kind, args };
        let no_edges = "edge features are not supported: patchgraph's layers take an additive per-edge bias \
                        (`bias=` of attend) instead of edge_attr";
        let config = match kind {
            "GATConv" | "GATv2Conv" => {
                let in_channels = a.usize("in_channels", None)?;
                let out_channels = a.usize("out_channels", None)?;
                let heads = a.usize("heads", Some(1))?;
                let concat = a.bool("concat", true)?;
                let negative_slope = a.f32("negative_slope", 0.2)?;
                a.dropout("dropout")?;
                let add_self_loops = a.bool("add_self_loops", true)?;
                a.only("edge_dim", &[], no_edges)?;
                // fill_value only fills the self-loops' edge features: without edge_dim it is unused.
                a.take("fill_value");
                let bias = a.bool("bias", true)?;
                let share_weights = if kind == "GATv2Conv" { a.bool("share_weights", false)? } else { false };
                a.only("residual", &[Value::Bool(false)], "the residual projection is not implemented")?;
                a.only("aggr", &[Value::String("add".into())], "GAT layers sum their messages")?;
                if kind == "GATConv" {
                    AttentionConfig::Gat {
                        in_channels,
                        out_channels,
                        heads,
                        concat,
                        negative_slope,
                        add_self_loops,
                        bias,
                    }
                } else {
                    AttentionConfig::GatV2 {
                        in_channels,
                        out_channels,
                        heads,
                        concat,
                        negative_slope,
                        add_self_loops,
                        bias,
                        share_weights,
                    }
                }
            }
            "TransformerConv" => {
                let in_channels = a.usize("in_channels", None)?;
                let out_channels = a.usize("out_channels", None)?;
                let heads = a.usize("heads", Some(1))?;
                let concat = a.bool("concat", true)?;
                let beta = a.bool("beta", false)?;
                a.dropout("dropout")?;
                a.only("edge_dim", &[], no_edges)?;
                let bias = a.bool("bias", true)?;
                let root_weight = a.bool("root_weight", true)?;
                a.only("aggr", &[Value::String("add".into())], "TransformerConv sums its messages")?;
                AttentionConfig::Transformer { in_channels, out_channels, heads, concat, beta, root_weight, bias }
            }
            "Attention" => {
                let dim = a.usize("dim", None)?;
                let heads = a.usize("num_heads", Some(8))?;
                let qkv_bias = a.bool("qkv_bias", false)?;
                let qk_norm = a.bool("qk_norm", false)?;
                let scale_norm = a.bool("scale_norm", false)?;
                let proj_bias = a.bool("proj_bias", true)?;
                a.dropout("attn_drop")?;
                a.dropout("proj_drop")?;
                // timm asserts a norm_layer when qk_norm or scale_norm; its eps decides the norms'.
                let norm_eps = match a.take("norm_layer") {
                    None if qk_norm || scale_norm => {
                        return Err(a.bad("norm_layer", "qk_norm and scale_norm need one (as timm asserts)"));
                    }
                    None => 1e-6,
                    Some(Value::String(n))
                        if matches!(n.as_str(), "LayerNorm" | "nn.LayerNorm" | "torch.nn.LayerNorm") =>
                    {
                        1e-5
                    }
                    Some(Value::String(n))
                        if matches!(n.as_str(), "timm.layers.LayerNorm" | "timm.layers.norm.LayerNorm") =>
                    {
                        1e-6
                    }
                    Some(v) => {
                        return Err(a.bad(
                            "norm_layer",
                            format!(
                                "{v}: torch.nn.LayerNorm (eps 1e-5) or timm.layers.LayerNorm (eps 1e-6) normalise here"
                            ),
                        ));
                    }
                };
                let norm_eps = a.f32("norm_eps", norm_eps)?;
                AttentionConfig::Timm { dim, heads, qkv_bias, qk_norm, scale_norm, proj_bias, norm_eps }
            }
            other => {
                return Err(Error::invalid(
                    "layer config",
                    format!("unknown kind `{other}`: expected GATConv, GATv2Conv, TransformerConv or Attention"),
                ));
            }
        };
        a.finish()?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AttentionConfig> {
        AttentionConfig::from_json(s)
    }

    #[test]
    fn peer_defaults_fill_every_other_argument() {
        assert_eq!(
            parse(r#"{"kind": "GATv2Conv", "in_channels": 8, "out_channels": 4}"#).unwrap(),
            AttentionConfig::gatv2(8, 4, 1)
        );
        assert_eq!(
            parse(r#"{"kind": "TransformerConv", "in_channels": 8, "out_channels": 4, "heads": 2, "beta": true}"#)
                .unwrap(),
            AttentionConfig::Transformer {
                in_channels: 8,
                out_channels: 4,
                heads: 2,
                concat: true,
                beta: true,
                root_weight: true,
                bias: true
            }
        );
        let t =
            parse(r#"{"kind": "Attention", "dim": 48, "num_heads": 3, "qkv_bias": true, "attn_drop": 0.1}"#).unwrap();
        assert_eq!(t, AttentionConfig::timm(48, 3));
        // patchgraph's own form still reads
        assert_eq!(
            parse(&serde_json::to_string(&AttentionConfig::gat(3, 2, 1)).unwrap()).unwrap(),
            AttentionConfig::gat(3, 2, 1)
        );
    }

    #[test]
    fn what_is_not_implemented_or_unknown_is_refused_by_name() {
        for (json, word) in [
            (r#"{"kind": "GATConv", "in_channels": 4, "out_channels": 2, "residual": true}"#, "residual"),
            (r#"{"kind": "GATConv", "in_channels": [4, 5], "out_channels": 2}"#, "in_channels"),
            (r#"{"kind": "GATConv", "out_channels": 2}"#, "in_channels"),
            (r#"{"kind": "GATConv", "in_channels": 4, "out_channels": 2, "dropot": 0.1}"#, "dropot"),
            (r#"{"kind": "TransformerConv", "in_channels": 4, "out_channels": 2, "edge_dim": 1}"#, "edge_dim"),
            (r#"{"kind": "GATConv", "in_channels": 4, "out_channels": 2, "dropout": 1.5}"#, "dropout"),
            (r#"{"kind": "Attention", "dim": 10, "num_heads": 3}"#, "multiple"),
            (r#"{"kind": "Attention", "dim": 8, "norm_layer": "RmsNorm"}"#, "norm_layer"),
            (r#"{"kind": "Attention", "dim": 8, "qk_norm": true}"#, "norm_layer"),
            (r#"{"kind": "SAGEConv", "in_channels": 4}"#, "SAGEConv"),
            (r#"[1, 2]"#, "object"),
        ] {
            let msg = parse(json).unwrap_err().to_string();
            assert!(msg.contains(word), "{json}: {msg}");
        }
    }
}
