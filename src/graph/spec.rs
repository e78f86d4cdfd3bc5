//! `GraphSpec`: a patch-graph topology named by a short string, for the command line, configs
//! and experiments that compare topologies.
//!
//! | spec | graph over an `rows x cols` patch grid |
//! |---|---|
//! | `complete` | every pair, with self-loops (ViT) |
//! | `grid4:R`, `grid8:R` | cells within Manhattan / Chebyshev radius `R`, with self-loops (`R` defaults to 1) |
//! | `window:S` | Swin: non-overlapping `S x S` windows |
//! | `nat:S` | NAT: the `S x S` neighbourhood around each patch (odd `S`) |
//! | `knn:K` | the `K` nearest patches by grid position, self included |
//! | `fknn:K:D`, `fknn-cos:K:D` | ViG: feature k-NN (L2 / cosine) with dilation `D` (default 1), self included |
//! | `random:K:SEED` | `K` random sources per patch (seed defaults to 0) |
//!
//! Aliases: `grid:4` and `grid:8` are `grid4:1` and `grid8:1`; `knn-feature:K:dilation=D` is
//! `fknn:K:D`. [`GraphSpec`]'s `Display` writes the canonical form.
//!
//! With a class token, [`GraphSpec::build`] prepends it as node 0 linked both ways to every
//! patch (with its self-loop), as in timm's token order; `complete` stays one complete graph.
//!
//! ```
//! use patchgraph::graph::GraphSpec;
//! let spec: GraphSpec = "grid8:1".parse().unwrap();
//! let g = spec.build(4, 4, None, false).unwrap();
//! assert_eq!(g.in_degree(0), 4); // a corner: itself and 3 neighbours
//! assert_eq!(spec.to_string(), "grid8:1");
//! assert!("grid9".parse::<GraphSpec>().is_err());
//! assert_eq!("grid:8".parse::<GraphSpec>().unwrap().to_string(), "grid8:1");
//! assert_eq!("knn-feature:9:dilation=2".parse::<GraphSpec>().unwrap().to_string(), "fknn:9:2");
//! assert!("grid:5".parse::<GraphSpec>().is_err());
//! ```

use super::{Graph, KnnOptions, Metric, Neighbourhood, WindowKind};
use crate::error::{Error, Result};
use crate::tensor::Matrix;
use std::fmt;
use std::str::FromStr;

/// A named patch-graph topology (see the module table).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GraphSpec {
    /// Every pair, with self-loops.
    Complete,
    /// Grid neighbourhood with self-loops.
    Grid {
        /// 4 or 8 neighbourhood.
        neighbourhood: Neighbourhood,
        /// Radius in patches.
        radius: usize,
    },
    /// Local windows.
    Window {
        /// Swin partition or NAT sliding.
        kind: WindowKind,
        /// Side in patches.
        size: usize,
    },
    /// Spatial k-NN.
    SpatialKnn {
        /// Neighbours.
        k: usize,
    },
    /// Feature k-NN over the node features.
    FeatureKnn {
        /// Neighbours.
        k: usize,
        /// ViG dilation.
        dilation: usize,
        /// Distance.
        metric: Metric,
    },
    /// Random sources.
    Random {
        /// Sources per node.
        degree: usize,
        /// Seed.
        seed: u64,
    },
}

fn parse_num<T: FromStr>(spec: &str, field: Option<&str>, default: Option<T>) -> Result<T> {
    match (field, default) {
        (Some(f), _) => f.parse().map_err(|_| Error::invalid("graph spec", format!("`{spec}`: `{f}` is not a number"))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(Error::invalid("graph spec", format!("`{spec}` needs a number after `:`"))),
    }
}

impl FromStr for GraphSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<GraphSpec> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let (a, b) = (parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(Error::invalid("graph spec", format!("`{s}` has too many `:` fields")));
        }
        let spec = match name {
            "complete" => GraphSpec::Complete,
            "grid4" | "grid8" => GraphSpec::Grid {
                neighbourhood: if name == "grid4" { Neighbourhood::Four } else { Neighbourhood::Eight },
                radius: parse_num(s, a, Some(1))?,
            },
            "window" => GraphSpec::Window { kind: WindowKind::Partition, size: parse_num(s, a, None)? },
            "nat" => GraphSpec::Window { kind: WindowKind::Sliding, size: parse_num(s, a, None)? },
            "knn" => GraphSpec::SpatialKnn { k: parse_num(s, a, None)? },
            "fknn" | "fknn-cos" => GraphSpec::FeatureKnn {
                k: parse_num(s, a, None)?,
                dilation: parse_num(s, b, Some(1))?,
                metric: if name == "fknn" { Metric::L2 } else { Metric::Cosine },
            },
            "random" => GraphSpec::Random { degree: parse_num(s, a, None)?, seed: parse_num(s, b, Some(0))? },
            // Aliases: `grid:4` / `grid:8` (radius 1) and `knn-feature:K[:dilation=D]`.
            "grid" => match a {
                Some("4") => GraphSpec::Grid { neighbourhood: Neighbourhood::Four, radius: 1 },
                Some("8") => GraphSpec::Grid { neighbourhood: Neighbourhood::Eight, radius: 1 },
                _ => return Err(Error::invalid("graph spec", format!("`{s}`: expected grid:4 or grid:8"))),
            },
            "knn-feature" => GraphSpec::FeatureKnn {
                k: parse_num(s, a, None)?,
                dilation: parse_num(s, b.map(|d| d.strip_prefix("dilation=").unwrap_or(d)), Some(1))?,
                metric: Metric::L2,
            },
            _ => {
                return Err(Error::invalid(
                    "graph spec",
                    format!(
                        "unknown `{s}`: expected complete, grid4:R, grid8:R, window:S, nat:S, knn:K, fknn:K:D, fknn-cos:K:D or random:K:SEED"
                    ),
                ));
            }
        };
        let takes_b = matches!(spec, GraphSpec::FeatureKnn { .. } | GraphSpec::Random { .. }) && name != "grid";
        if (matches!(spec, GraphSpec::Complete) && a.is_some()) || (!takes_b && b.is_some()) {
            return Err(Error::invalid("graph spec", format!("`{s}` has too many `:` fields")));
        }
        Ok(spec)
    }
}

impl TryFrom<String> for GraphSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<GraphSpec> {
        s.parse()
    }
}

impl From<GraphSpec> for String {
    fn from(s: GraphSpec) -> String {
        s.to_string()
    }
}

impl fmt::Display for GraphSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphSpec::Complete => write!(f, "complete"),
            GraphSpec::Grid { neighbourhood: Neighbourhood::Four, radius } => write!(f, "grid4:{radius}"),
            GraphSpec::Grid { neighbourhood: Neighbourhood::Eight, radius } => write!(f, "grid8:{radius}"),
            GraphSpec::Window { kind: WindowKind::Partition, size } => write!(f, "window:{size}"),
            GraphSpec::Window { kind: WindowKind::Sliding, size } => write!(f, "nat:{size}"),
            GraphSpec::SpatialKnn { k } => write!(f, "knn:{k}"),
            GraphSpec::FeatureKnn { k, dilation, metric: Metric::L2 } => write!(f, "fknn:{k}:{dilation}"),
            GraphSpec::FeatureKnn { k, dilation, metric: Metric::Cosine } => write!(f, "fknn-cos:{k}:{dilation}"),
            GraphSpec::Random { degree, seed } => write!(f, "random:{degree}:{seed}"),
        }
    }
}

impl GraphSpec {
    /// Builds the graph over a `rows x cols` patch grid. `features` `[rows*cols x D]` (patch
    /// nodes only, no class token) are required by feature k-NN. With `class_token`, node 0 is
    /// the class token linked both ways to every patch.
    pub fn build(&self, rows: usize, cols: usize, features: Option<&Matrix>, class_token: bool) -> Result<Graph> {
        let n = rows * cols;
        let patches = match *self {
            GraphSpec::Complete => return Ok(Graph::complete(n + class_token as usize, true)),
            GraphSpec::Grid { neighbourhood, radius } => Graph::grid(rows, cols, neighbourhood, radius, true)?,
            GraphSpec::Window { kind, size } => Graph::window(rows, cols, kind, size)?,
            GraphSpec::SpatialKnn { k } => Graph::spatial_knn(rows, cols, k, true)?,
            GraphSpec::FeatureKnn { k, dilation, metric } => {
                let x =
                    features.ok_or_else(|| Error::invalid("graph spec", format!("`{self}` needs node features")))?;
                x.expect_shape("feature k-NN features (patch nodes)", n, x.cols())?;
                Graph::feature_knn(x, &KnnOptions { k, dilation, metric, include_self: true })?
            }
            GraphSpec::Random { degree, seed } => Graph::random(n, degree, seed, false)?,
        };
        Ok(if class_token { patches.with_global_node(true) } else { patches })
    }
}
