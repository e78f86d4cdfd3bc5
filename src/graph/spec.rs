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
//! | `performer:M:SEED`, `linformer:K[:SHARING]`, `nystrom:L[:CONV]` | not graphs: low-rank approximations of `complete` ([`LowRank`]); `build` gives the complete graph |
//! | `bigbird:W:R:SEED` | BigBird: the centred `W x W` window (odd `W`, clipped) plus `R` random patches outside it (`R` defaults to 3, `SEED` to 0); the class token is its global token |
//! | `longformer:W:G` | Vision Longformer: the centred `W x W` window plus `G` global patches (default 0) |
//! | `swin:M` | Swin: `M x M` windows, shift 0 in even layers and `M / 2` in odd ones ([`GraphSpec::for_layer`]) |
//! | `swin:M:S` | Swin windows with the fixed shift `S` in every layer |
//! | `gridattn:G` | MaxViT grid attention: `G x G` groups with stride `(rows / G, cols / G)` |
//! | `lsh:B:ROUNDS:SEED[:CHUNK]` | Reformer: angular LSH of the node features into `B` buckets, sorted and cut into chunks of `CHUNK` nodes (`ROUNDS` defaults to 1, `SEED` to 0, `CHUNK` to `ceil(N / B)`) |
//! | `global:G` | `G` global patches (default 1) linked both ways to every patch, and one self-loop per node |
//! | `edges:FILE` | the PyG `edge_index` `[2, E]` (sources, then targets) of patch ids `0 .. rows*cols` in an integer `.npy` file, or the `edge_index` entry of an `.npz`; read exactly as integers |
//! | `A+B+...` | the edge union of the parts (e.g. `window:7+global+random:3`, `nat:3+lsh:8:2:1`) |
//!
//! Aliases: `grid:4` and `grid:8` are `grid4:1` and `grid8:1`; `knn-feature:K:dilation=D` is
//! `fknn:K:D`. [`GraphSpec`]'s `Display` writes the canonical form (every number spelled out).
//!
//! `edges:FILE` takes the rest of the string as the path (colons included); in a union, a path
//! may not hold a `+` followed by a letter.
//!
//! A union splits on each `+` that is followed by a letter (a `+` before a digit stays part of
//! the number, as `knn:+3` always parsed); each part is a spec of the table, a union inside a
//! union is flattened, and `complete` in a union makes the whole union complete. The global
//! patches of `longformer` and `global` are [`global_patches`](super::global_patches).
//!
//! With a class token, [`GraphSpec::build`] prepends it as node 0 linked both ways to every
//! patch (with its self-loop), as in timm's token order; `complete` stays one complete graph. A
//! union gets the token once, after the union of its parts' patch graphs.
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
//! // A union: Swin windows of 2, alternating shifts, plus patch 8 (the middle id) made global.
//! let spec: GraphSpec = "swin:2+global".parse().unwrap();
//! assert_eq!(spec.to_string(), "swin:2+global:1");
//! let layer1 = spec.for_layer(1);
//! assert_eq!(layer1.to_string(), "swin:2:1+global:1");
//! let g = layer1.build(4, 4, None, true).unwrap();
//! assert_eq!(g.num_nodes(), 17); // the class token and 16 patches
//! assert_eq!(g.in_degree(1), 1 + 2); // patch (0, 0): the token, itself, global patch 8
//! ```

use super::{Graph, KnnOptions, LshOptions, Metric, Neighbourhood, WindowKind, check_edges};
use crate::attention::low_rank::LowRank;
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
    /// BigBird: centred window plus random sources outside it ([`Graph::bigbird`]).
    BigBird {
        /// Window side (odd).
        window: usize,
        /// Random sources per patch.
        random: usize,
        /// Seed.
        seed: u64,
    },
    /// Vision Longformer: centred window plus global patches ([`Graph::longformer`]).
    Longformer {
        /// Window side (odd).
        window: usize,
        /// Global patches.
        globals: usize,
    },
    /// Swin's (shifted) windows ([`Graph::shifted_window`]).
    Swin {
        /// Window side `M`.
        size: usize,
        /// The shift in every layer, or `None` for Swin's alternation (0 in even layers,
        /// `M / 2` in odd ones; see [`GraphSpec::for_layer`]).
        shift: Option<usize>,
    },
    /// MaxViT grid attention ([`Graph::grid_attention`]).
    GridAttention {
        /// Grid size `G`.
        grid: usize,
    },
    /// Reformer's LSH buckets of the node features ([`Graph::lsh`]).
    Lsh {
        /// Buckets (even).
        buckets: usize,
        /// Hashing rounds.
        rounds: usize,
        /// Seed of the rotations.
        seed: u64,
        /// Chunk size of the sorted order (`None`: `ceil(N / buckets)`).
        chunk: Option<usize>,
    },
    /// Global patches linked both ways to every patch, plus one self-loop per node
    /// (`Graph::longformer(rows, cols, 1, globals)`).
    Global {
        /// Global patches.
        globals: usize,
    },
    /// The user's own edges: a PyG `edge_index` over the patches, read from a file when built.
    Edges {
        /// An integer `.npy` `[2, E]`, or an `.npz` holding `edge_index`.
        path: String,
    },
    /// The edge union of the parts ([`Graph::union`]), the class token added once.
    Union(Vec<GraphSpec>),
    /// Not a graph: a low-rank approximation of the complete graph (Performer, Linformer,
    /// Nyström). [`GraphSpec::build`] gives the complete graph it approximates; a ViT block runs
    /// the method instead of the softmax on it. Not allowed inside a union.
    LowRank(LowRank),
}

fn parse_num<T: FromStr<Err: fmt::Display>>(spec: &str, field: Option<&str>, default: Option<T>) -> Result<T> {
    match (field, default) {
        // The parser's own message tells "not a number" from "too large" (`knn:99999999999999999999`).
        (Some(f), _) => f
            .parse()
            .map_err(|e: T::Err| Error::invalid("graph spec", format!("`{spec}`: `{f}` is not a valid number ({e})"))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(Error::invalid("graph spec", format!("`{spec}` needs a number after `:`"))),
    }
}

/// Splits a spec at each `+` followed by a letter (a spec name); a `+` before anything else
/// stays in its part (`knn:+3` is one spec, as the number parser reads `+3`).
fn union_parts(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, _) in s.match_indices('+') {
        if s[at + 1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            parts.push(&s[start..at]);
            start = at + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

impl FromStr for GraphSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<GraphSpec> {
        let parts = union_parts(s);
        if parts.len() == 1 {
            return parse_one(s);
        }
        let mut specs = Vec::with_capacity(parts.len());
        for part in parts {
            match parse_one(part).map_err(|e| match e {
                Error::Invalid { reason, .. } => Error::invalid("graph spec", format!("in the union `{s}`: {reason}")),
                other => other,
            })? {
                GraphSpec::Union(inner) => specs.extend(inner),
                GraphSpec::LowRank(m) => {
                    return Err(Error::invalid(
                        "graph spec",
                        format!("in the union `{s}`: `{m}` is not a graph (a low-rank method); it cannot be united"),
                    ));
                }
                one => specs.push(one),
            }
        }
        Ok(GraphSpec::Union(specs))
    }
}

/// Parses one spec of the module table (no `+`).
fn parse_one(s: &str) -> Result<GraphSpec> {
    if LowRank::is_name(s.split(':').next().unwrap_or_default()) {
        return Ok(GraphSpec::LowRank(s.parse()?));
    }
    if let Some(path) = s.strip_prefix("edges:") {
        if path.is_empty() {
            return Err(Error::invalid("graph spec", format!("`{s}` needs a file after `edges:`")));
        }
        return Ok(GraphSpec::Edges { path: path.to_string() });
    }
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or_default();
    let (a, b, c, d) = (parts.next(), parts.next(), parts.next(), parts.next());
    // Only `bigbird` and `lsh` take a third field, only `lsh` a fourth.
    if parts.next().is_some() || (c.is_some() && !matches!(name, "bigbird" | "lsh")) || (d.is_some() && name != "lsh") {
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
        "bigbird" => GraphSpec::BigBird {
            window: parse_num(s, a, None)?,
            random: parse_num(s, b, Some(3))?,
            seed: parse_num(s, c, Some(0))?,
        },
        "longformer" => GraphSpec::Longformer { window: parse_num(s, a, None)?, globals: parse_num(s, b, Some(0))? },
        "swin" => {
            GraphSpec::Swin { size: parse_num(s, a, None)?, shift: b.map(|f| parse_num(s, Some(f), None)).transpose()? }
        }
        "gridattn" => GraphSpec::GridAttention { grid: parse_num(s, a, None)? },
        "lsh" => GraphSpec::Lsh {
            buckets: parse_num(s, a, None)?,
            rounds: parse_num(s, b, Some(1))?,
            seed: parse_num(s, c, Some(0))?,
            chunk: d.map(|f| parse_num(s, Some(f), None)).transpose()?,
        },
        "global" => GraphSpec::Global { globals: parse_num(s, a, Some(1))? },
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
                    "unknown `{s}`: expected complete, grid4:R, grid8:R, window:S, nat:S, knn:K, fknn:K:D, \
                     fknn-cos:K:D, random:K:SEED, bigbird:W:R:SEED, longformer:W:G, swin:M, swin:M:S, \
                     gridattn:G, lsh:BUCKETS:ROUNDS:SEED[:CHUNK], global:G, edges:FILE, or a union A+B+..."
                ),
            ));
        }
    };
    let takes_b = matches!(
        spec,
        GraphSpec::FeatureKnn { .. }
            | GraphSpec::Random { .. }
            | GraphSpec::BigBird { .. }
            | GraphSpec::Longformer { .. }
            | GraphSpec::Swin { .. }
            | GraphSpec::Lsh { .. }
    ) && name != "grid";
    if (matches!(spec, GraphSpec::Complete) && a.is_some()) || (!takes_b && b.is_some()) {
        return Err(Error::invalid("graph spec", format!("`{s}` has too many `:` fields")));
    }
    Ok(spec)
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
            GraphSpec::LowRank(m) => write!(f, "{m}"),
            GraphSpec::Grid { neighbourhood: Neighbourhood::Four, radius } => write!(f, "grid4:{radius}"),
            GraphSpec::Grid { neighbourhood: Neighbourhood::Eight, radius } => write!(f, "grid8:{radius}"),
            GraphSpec::Window { kind: WindowKind::Partition, size } => write!(f, "window:{size}"),
            GraphSpec::Window { kind: WindowKind::Sliding, size } => write!(f, "nat:{size}"),
            GraphSpec::SpatialKnn { k } => write!(f, "knn:{k}"),
            GraphSpec::FeatureKnn { k, dilation, metric: Metric::L2 } => write!(f, "fknn:{k}:{dilation}"),
            GraphSpec::FeatureKnn { k, dilation, metric: Metric::Cosine } => write!(f, "fknn-cos:{k}:{dilation}"),
            GraphSpec::Random { degree, seed } => write!(f, "random:{degree}:{seed}"),
            GraphSpec::BigBird { window, random, seed } => write!(f, "bigbird:{window}:{random}:{seed}"),
            GraphSpec::Longformer { window, globals } => write!(f, "longformer:{window}:{globals}"),
            GraphSpec::Swin { size, shift: None } => write!(f, "swin:{size}"),
            GraphSpec::Swin { size, shift: Some(shift) } => write!(f, "swin:{size}:{shift}"),
            GraphSpec::GridAttention { grid } => write!(f, "gridattn:{grid}"),
            GraphSpec::Lsh { buckets, rounds, seed, chunk: None } => write!(f, "lsh:{buckets}:{rounds}:{seed}"),
            GraphSpec::Lsh { buckets, rounds, seed, chunk: Some(c) } => write!(f, "lsh:{buckets}:{rounds}:{seed}:{c}"),
            GraphSpec::Global { globals } => write!(f, "global:{globals}"),
            GraphSpec::Edges { path } => write!(f, "edges:{path}"),
            GraphSpec::Union(parts) => {
                for (k, part) in parts.iter().enumerate() {
                    if k > 0 {
                        f.write_str("+")?;
                    }
                    write!(f, "{part}")?;
                }
                Ok(())
            }
        }
    }
}

/// The `[2, E]` integer `edge_index` of an `edges:FILE` spec: the array of an `.npy`, or the
/// `edge_index` entry of an `.npz`.
fn read_edge_index(path: &str) -> Result<(Vec<usize>, Vec<i64>)> {
    let file = std::path::Path::new(path);
    let bytes = std::fs::read(file).map_err(|source| Error::Io { path: file.to_path_buf(), source })?;
    if path.ends_with(".npz") {
        let mut map = crate::checkpoint::TensorMap::from_npz_bytes(&bytes, path)?;
        map.take_ints("edge_index").map_err(|_| Error::Format {
            path: path.to_string(),
            reason: "no integer array `edge_index` in the archive (np.savez(path, edge_index=...))".into(),
        })
    } else {
        crate::checkpoint::read_npy_ints(&bytes, path)
    }
}

impl GraphSpec {
    /// Builds the graph over a `rows x cols` patch grid. `features` `[rows*cols x D]` (patch
    /// nodes only, no class token) are required by feature k-NN and LSH
    /// ([`GraphSpec::needs_features`]). With `class_token`, node 0 is the class token linked both
    /// ways to every patch.
    ///
    /// A union builds each part's patch graph (all from the same `features`), takes their
    /// [`Graph::union`], then adds the class token once; a union holding `complete` is the
    /// complete graph. An unresolved `swin:M` builds layer 0's graph (shift 0): call
    /// [`GraphSpec::for_layer`] first for Swin's alternation.
    ///
    /// Errors ([`Error::Invalid`]) where the builder's do, when features are needed and absent
    /// (naming the spec), and for a graph whose edges would exceed [`crate::limits::MAX_EDGES`]
    /// or whose sizes overflow, checked before allocating (a `complete` graph on a 2^16 x 2^16
    /// grid would have 2^64 edges).
    pub fn build(&self, rows: usize, cols: usize, features: Option<&Matrix>, class_token: bool) -> Result<Graph> {
        let n = rows.checked_mul(cols).ok_or_else(|| {
            Error::invalid("graph spec", format!("`{self}` on a {rows} x {cols} grid: the node count overflows"))
        })?;
        if self.is_complete() {
            let nodes = n.checked_add(usize::from(class_token));
            let nodes = nodes.ok_or_else(|| Error::invalid("graph spec", "the node count overflows"))?;
            return Graph::try_complete(nodes, true);
        }
        if self.needs_features() && features.is_none() {
            return Err(Error::invalid("graph spec", format!("`{self}` needs node features")));
        }
        let patches = self.patch_graph(rows, cols, n, features)?;
        if !class_token {
            return Ok(patches);
        }
        // The token adds `2 n + 1` edges: its self-loop and one each way per patch.
        let edges = n.checked_mul(2).and_then(|e| e.checked_add(patches.num_edges() + 1));
        check_edges(&format!("`{self}` with a class token"), edges)?;
        Ok(patches.with_global_node(true))
    }

    /// [`GraphSpec::build`] with `prefix` global tokens (a class token and register tokens:
    /// timm's prefix tokens) in front of the patches, each linked both ways to every token
    /// (and to itself); `prefix` 0 and 1 are `build` without and with a class token.
    ///
    /// ```
    /// use patchgraph::graph::GraphSpec;
    /// let spec: GraphSpec = "grid4:1".parse().unwrap();
    /// let g = spec.build_with_prefix(3, 3, None, 3).unwrap();
    /// assert_eq!(g.num_nodes(), 12);
    /// assert_eq!(g.in_degree(0), 12);                    // a global token reads every token
    /// assert_eq!(g.in_degree(3 + 4), 3 + 5);             // the centre patch: 3 globals, itself, 4 neighbours
    /// assert!(GraphSpec::Complete.build_with_prefix(3, 3, None, 3).unwrap().is_complete());
    /// ```
    pub fn build_with_prefix(
        &self,
        rows: usize,
        cols: usize,
        features: Option<&Matrix>,
        prefix: usize,
    ) -> Result<Graph> {
        if prefix <= 1 {
            return self.build(rows, cols, features, prefix == 1);
        }
        let n = rows.checked_mul(cols).and_then(|n| n.checked_add(prefix)).ok_or_else(|| {
            Error::invalid("graph spec", format!("`{self}` on a {rows} x {cols} grid: the node count overflows"))
        })?;
        if self.is_complete() {
            return Graph::try_complete(n, true);
        }
        let patches = self.build(rows, cols, features, false)?;
        // Each global adds `2 n` edges at most (both ways with every token).
        let edges = n.checked_mul(2 * prefix).and_then(|e| e.checked_add(patches.num_edges()));
        check_edges(&format!("`{self}` with {prefix} prefix tokens"), edges)?;
        Ok(patches.with_global_nodes(prefix))
    }

    /// The graph over the `n = rows * cols` patches alone (no class token).
    fn patch_graph(&self, rows: usize, cols: usize, n: usize, features: Option<&Matrix>) -> Result<Graph> {
        let needs = |what: &str| -> Result<&Matrix> {
            let x = features.ok_or_else(|| Error::invalid("graph spec", format!("`{self}` needs node features")))?;
            x.expect_shape(what, n, x.cols())?;
            Ok(x)
        };
        Ok(match self {
            GraphSpec::Complete | GraphSpec::LowRank(_) => Graph::try_complete(n, true)?,
            &GraphSpec::Grid { neighbourhood, radius } => Graph::grid(rows, cols, neighbourhood, radius, true)?,
            &GraphSpec::Window { kind, size } => Graph::window(rows, cols, kind, size)?,
            &GraphSpec::SpatialKnn { k } => Graph::spatial_knn(rows, cols, k, true)?,
            &GraphSpec::FeatureKnn { k, dilation, metric } => {
                let x = needs("feature k-NN features (patch nodes)")?;
                Graph::feature_knn(x, &KnnOptions { k, dilation, metric, include_self: true })?
            }
            &GraphSpec::Random { degree, seed } => Graph::random(n, degree, seed, false)?,
            &GraphSpec::BigBird { window, random, seed } => Graph::bigbird(rows, cols, window, random, seed)?,
            &GraphSpec::Longformer { window, globals } => Graph::longformer(rows, cols, window, globals)?,
            &GraphSpec::Swin { size, shift } => Graph::shifted_window(rows, cols, size, shift.unwrap_or(0))?,
            &GraphSpec::GridAttention { grid } => Graph::grid_attention(rows, cols, grid)?,
            &GraphSpec::Lsh { buckets, rounds, seed, chunk } => {
                let x = needs("LSH features (patch nodes)")?;
                Graph::lsh(x, &LshOptions { buckets, rounds, seed, chunk })?
            }
            &GraphSpec::Global { globals } => Graph::longformer(rows, cols, 1, globals)?,
            GraphSpec::Edges { path } => {
                let (shape, data) = read_edge_index(path)?;
                Graph::from_edge_index_tensor(n, &shape, &data).map_err(|e| match e {
                    Error::Invalid { what, reason } => {
                        Error::invalid(format!("{what} in {path}"), format!("{reason} (the grid has {n} patches)"))
                    }
                    Error::NodeOutOfRange { what, index, num_nodes } => {
                        Error::NodeOutOfRange { what: format!("{what} in {path}"), index, num_nodes }
                    }
                    Error::Shape { what, expected, got } => {
                        Error::Shape { what: format!("{what} in {path}"), expected, got }
                    }
                    other => other,
                })?
            }
            GraphSpec::Union(parts) => {
                let graphs =
                    parts.iter().map(|p| p.patch_graph(rows, cols, n, features)).collect::<Result<Vec<_>>>()?;
                Graph::union(&graphs)?
            }
        })
    }

    /// Whether the spec is `complete` or a union holding it (then the graph is complete).
    fn is_complete(&self) -> bool {
        match self {
            GraphSpec::Complete | GraphSpec::LowRank(_) => true,
            GraphSpec::Union(parts) => parts.iter().any(GraphSpec::is_complete),
            _ => false,
        }
    }

    /// Whether [`GraphSpec::build`] needs node features: feature k-NN (`fknn`, `fknn-cos`), LSH,
    /// and unions holding one of them.
    ///
    /// ```
    /// use patchgraph::graph::GraphSpec;
    /// assert!("nat:3+lsh:8:2:1".parse::<GraphSpec>().unwrap().needs_features());
    /// assert!(!"window:7+global".parse::<GraphSpec>().unwrap().needs_features());
    /// ```
    pub fn needs_features(&self) -> bool {
        match self {
            GraphSpec::FeatureKnn { .. } | GraphSpec::Lsh { .. } => true,
            GraphSpec::Union(parts) => parts.iter().any(GraphSpec::needs_features),
            _ => false,
        }
    }

    /// The spec of layer `layer` (0-based): Swin's alternation `swin:M` resolved to
    /// `Swin { size: M, shift: Some(0) }` in even layers and `Some(M / 2)` in odd ones (timm's
    /// `shift_size = 0 if (i % 2 == 0) else window_size // 2`), inside unions too; every other
    /// spec (a fixed `swin:M:S` included) is returned unchanged.
    ///
    /// ```
    /// use patchgraph::graph::GraphSpec;
    /// let swin: GraphSpec = "swin:4".parse().unwrap();
    /// assert_eq!(swin.for_layer(0), GraphSpec::Swin { size: 4, shift: Some(0) });
    /// assert_eq!(swin.for_layer(3).to_string(), "swin:4:2");
    /// ```
    pub fn for_layer(&self, layer: usize) -> GraphSpec {
        match self {
            &GraphSpec::Swin { size, shift: None } => {
                GraphSpec::Swin { size, shift: Some(if layer % 2 == 0 { 0 } else { size / 2 }) }
            }
            GraphSpec::Union(parts) => GraphSpec::Union(parts.iter().map(|p| p.for_layer(layer)).collect()),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_EDGES;

    fn invalid(r: Result<Graph>) -> String {
        match r {
            Err(e @ Error::Invalid { .. }) => e.to_string(),
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    /// `np.save` bytes of a little-endian array (NPY 1.0, header padded to 64 as numpy pads it).
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let len = (10 + header.len() + 1).div_ceil(64) * 64 - 10;
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((len as u16).to_le_bytes());
        out.extend(format!("{header:<w$}\n", w = len - 1).bytes());
        out.extend(data);
        out
    }

    /// `edges:FILE` reads a PyG `edge_index` from an integer `.npy` (or an `.npz` entry)
    /// exactly, keeps the file's edges (sources, then targets), adds the class token as every
    /// other spec does, and names the file in every error: an index out of range, a negative
    /// one, a float array, a wrong shape, a missing file or entry.
    #[test]
    fn edges_spec_reads_pyg_edge_index_files() {
        let dir = std::env::temp_dir().join(format!("pg-edges-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let path = |name: &str| dir.join(name).display().to_string();
        // 0 -> 1, 2 -> 1, 3 -> 0 on a 2 x 2 grid.
        std::fs::write(path("e.npy"), npy("<i8", "(2, 3)", &i64s(&[0, 2, 3, 1, 1, 0]))).unwrap();
        let spec: GraphSpec = format!("edges:{}", path("e.npy")).parse().unwrap();
        assert_eq!(spec.to_string(), format!("edges:{}", path("e.npy")));
        let g = spec.build(2, 2, None, false).unwrap();
        let sources = |g: &Graph, i: usize| g.incoming(i).collect::<Vec<_>>();
        assert_eq!(
            (sources(&g, 0), sources(&g, 1), sources(&g, 2), sources(&g, 3)),
            (vec![3], vec![0, 2], vec![], vec![])
        );
        let t = spec.build(2, 2, None, true).unwrap();
        assert_eq!((t.num_nodes(), sources(&t, 2)), (5, vec![0, 1, 3]));
        // int32 works too; so does the `edge_index` entry of an .npz.
        let i32s: Vec<u8> = [0i32, 2, 3, 1, 1, 0].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path("e32.npy"), npy("<i4", "(2, 3)", &i32s)).unwrap();
        let g32 = format!("edges:{}", path("e32.npy")).parse::<GraphSpec>().unwrap().build(2, 2, None, false).unwrap();
        assert_eq!(g32, g);
        let mut map = crate::checkpoint::TensorMap::default();
        map.insert_ints("edge_index", vec![2, 3], vec![0, 2, 3, 1, 1, 0]).unwrap();
        map.save_npz(path("e.npz")).unwrap();
        let gz = format!("edges:{}", path("e.npz")).parse::<GraphSpec>().unwrap().build(2, 2, None, false).unwrap();
        assert_eq!(gz, g);
        // Errors name the file.
        let err =
            |spec: String, rows: usize| spec.parse::<GraphSpec>().unwrap().build(rows, 2, None, false).unwrap_err();
        let e = err(format!("edges:{}", path("e.npy")), 1); // a 1 x 2 grid: sources 2 and 3 are out of range
        assert!(matches!(e, Error::NodeOutOfRange { index: 2, num_nodes: 2, .. }), "{e}");
        assert!(e.to_string().contains("edge_index[0][1] in") && e.to_string().contains("e.npy"), "{e}");
        std::fs::write(path("neg.npy"), npy("<i8", "(2, 1)", &i64s(&[-1, 0]))).unwrap();
        let e = err(format!("edges:{}", path("neg.npy")), 2).to_string();
        assert!(e.contains("neg.npy") && e.contains("-1"), "{e}");
        let f32s: Vec<u8> = [0f32, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path("f.npy"), npy("<f4", "(2, 1)", &f32s)).unwrap();
        let e = err(format!("edges:{}", path("f.npy")), 2);
        assert!(matches!(e, Error::DType { .. }) && e.to_string().contains("f.npy"), "{e}");
        std::fs::write(path("flat.npy"), npy("<i8", "(3,)", &i64s(&[0, 1, 2]))).unwrap();
        let e = err(format!("edges:{}", path("flat.npy")), 2);
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("flat.npy"), "{e}");
        let e = err(format!("edges:{}", path("absent.npy")), 2);
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("absent.npy"), "{e}");
        let mut other = crate::checkpoint::TensorMap::default();
        other.insert_ints("edges", vec![2, 1], vec![0, 1]).unwrap();
        other.save_npz(path("other.npz")).unwrap();
        let e = err(format!("edges:{}", path("other.npz")), 2).to_string();
        assert!(e.contains("other.npz") && e.contains("edge_index"), "{e}");
        assert!("edges:".parse::<GraphSpec>().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Numbers beyond their type are typed errors that say so, not panics.
    #[test]
    fn huge_numbers_in_specs_are_errors() {
        for s in ["knn:99999999999999999999", "random:1:18446744073709551616", "grid4:-1", "window:1e3"] {
            let err = s.parse::<GraphSpec>().unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{s}: {err}");
            assert!(err.to_string().contains(s), "{s}: {err}");
        }
        let msg = "knn:99999999999999999999".parse::<GraphSpec>().unwrap_err().to_string();
        assert!(msg.contains("too large"), "{msg}");
        // Parsed, then refused by the builder on a 4 x 4 grid.
        for s in ["random:4294967296:1", "knn:4294967296", "fknn:4294967296:4294967296", "nat:4294967297"] {
            let spec: GraphSpec = s.parse().unwrap();
            let x = Matrix::zeros(16, 2);
            for token in [false, true] {
                let msg = invalid(spec.build(4, 4, Some(&x), token));
                assert!(!msg.is_empty(), "{s}");
            }
        }
        // Radius and window sizes far past the grid are clipped, not multiplied out.
        let g = "grid8:18446744073709551615".parse::<GraphSpec>().unwrap().build(3, 3, None, true).unwrap();
        assert_eq!(g.num_edges(), 9 * 9 + 2 * 9 + 1);
        let g = "window:18446744073709551615".parse::<GraphSpec>().unwrap().build(3, 2, None, false).unwrap();
        assert_eq!(g.num_edges(), 36);
    }

    /// Graphs past `MAX_EDGES` (2^31) are refused before allocating: `complete` on a 2^16 x 2^16
    /// grid (2^64 edges) used to be returned as if it could run; a grid size whose product
    /// overflows used to panic.
    #[test]
    fn edge_counts_beyond_the_limit_are_refused() {
        let complete = GraphSpec::Complete;
        let msg = invalid(complete.build(1 << 16, 1 << 16, None, false));
        assert!(msg.contains("limit") || msg.contains("u32"), "{msg}");
        // 46,340^2 < 2^31 < 46,341^2: the limit is exact, the class token counted.
        assert!(complete.build(46_340, 1, None, false).is_ok());
        const { assert!(46_341 * 46_341 > MAX_EDGES && 46_340 * 46_340 <= MAX_EDGES) };
        assert!(complete.build(46_341, 1, None, false).is_err());
        assert!(complete.build(46_340, 1, None, true).is_err()); // 46,341 nodes with the token
        assert!(invalid(complete.build(usize::MAX, 2, None, false)).contains("overflows"));
        assert!(invalid(Graph::try_complete(usize::MAX, false)).contains("u32"));

        // Each builder checks its count (or its documented bound) first. These would need tens
        // of GiB for the sources alone, so refusing them is all a test can exercise.
        let grid = "grid8:1".parse::<GraphSpec>().unwrap();
        assert!(invalid(grid.build(60_000, 60_000, None, false)).contains("2^31"));
        let window = "window:1000".parse::<GraphSpec>().unwrap();
        assert!(invalid(window.build(50_000, 50_000, None, false)).contains("2^31"));
        assert!(invalid(Graph::window(50_000, 50_000, WindowKind::Sliding, 3)).contains("2^31"));
        assert!(invalid(Graph::spatial_knn(50_000, 50_000, 2, true)).contains("2^31"));
        assert!(invalid(Graph::random(1 << 31, 2, 0, false)).contains("2^31"));
        // The exact partition count at a size that fits: 5 x 3 in windows of 2 is row lengths
        // 2, 2, 1 by column lengths 2, 1: (4 + 4 + 1) (4 + 1) = 45.
        assert_eq!(Graph::window(5, 3, WindowKind::Partition, 2).unwrap().num_edges(), 45);
        // A batch that would store an implicit complete part edge by edge.
        let parts = [Graph::complete(1 << 16, true), Graph::from_edge_index(2, &[0], &[1]).unwrap()];
        assert!(invalid(Graph::disjoint_union(&parts)).contains("2^31"));
    }

    /// The raw constructors: wrapped sizes, negative and out-of-range indices, length
    /// mismatches are typed errors (the wrapped `2 * E`, `N * k` and `N + 1` used to panic or
    /// slip through).
    #[test]
    fn raw_constructors_refuse_bad_input() {
        let half = (usize::MAX >> 1) + 1;
        assert!(matches!(Graph::from_edge_index_tensor(3, &[2, half], &[]), Err(Error::Shape { .. })));
        assert!(matches!(Graph::from_edge_index_tensor(3, &[2, 1], &[0, -1]), Err(Error::Invalid { .. })));
        assert!(matches!(
            Graph::from_edge_index_tensor(3, &[2, 2], &[0, 1, 2, 3]),
            Err(Error::NodeOutOfRange { index: 3, num_nodes: 3, .. })
        ));
        assert!(matches!(Graph::from_edge_index_tensor(3, &[2, 2, 1], &[0, 1, 2, 0]), Err(Error::Shape { .. })));
        assert!(matches!(Graph::from_edge_index(3, &[0, 1], &[1]), Err(Error::Shape { .. })));
        assert!(matches!(Graph::from_edge_index(0, &[0], &[0]), Err(Error::NodeOutOfRange { .. })));
        assert!(Graph::from_neighbor_table(half, 2, vec![]).is_err());
        assert!(Graph::from_neighbor_table(1 << 33, 0, vec![]).is_err());
        assert!(Graph::from_csr(usize::MAX, vec![], vec![]).is_err());
        assert!(Graph::from_csr(2, vec![0, 1, 1], vec![2]).is_err());
        let g = Graph::from_edge_index_tensor(3, &[2, 2], &[0, 2, 1, 1]).unwrap();
        assert_eq!(g.incoming(1).collect::<Vec<_>>(), [0, 2]);
    }
}
