//! `patchgraph._core`: patchgraph's library on NumPy arrays (PyO3, abi3 for CPython >= 3.10).
//! The pure-Python package `patchgraph` (`python/patchgraph/`) re-exports it and adds the torch
//! integration; its `.pyi` stubs describe every function.
//!
//! | Python | Rust |
//! |---|---|
//! | `Graph.*` builders, `Graph.from_spec`, `Graph.from_edge_index`, `.edge_index()` | `patchgraph::graph` |
//! | `attend`, `attend_backward` (float32, the fast kernels) | `patchgraph::attention` |
//! | `attend64`, `attend_backward64` (float64, plain loops, for gradcheck) | `patchgraph::algebra::float64` |
//! | `Layer` (GATConv, GATv2Conv, TransformerConv, timm Attention from state dicts) | `patchgraph::nn::GraphAttention` |
//! | `Vit` (timm configs, safetensors / npz files) | `patchgraph::nn::Vit` |
//! | `run_command(name, argv)` | `patchgraph::cli` |
//! | `load_dataset` | `patchgraph::data` |
//!
//! Arrays come in read in place (C-contiguous, the dtype each function names: never converted
//! behind the caller's back) and go out as new arrays that own the Rust buffers (no copy).
//! The GIL is released around every kernel call. A Rust error becomes `FileNotFoundError`
//! (a missing file), `OSError` (other I/O), `TypeError` (a wrong dtype or type) or
//! `ValueError` (everything else), with the same message.

use numpy::ndarray::{Array1, Array2, Array4};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArray4, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use patchgraph::algebra::float64::{Score64, attend_backward64, attend64};
use patchgraph::attention::{AttentionInputs, Path, Score, attend, attend_backward};
use patchgraph::checkpoint::TensorMap;
use patchgraph::cli::{self, Common};
use patchgraph::graph::{GraphSpec, KnnOptions, LshOptions, Metric, Neighbourhood, WindowKind};
use patchgraph::image::ChwImage;
use patchgraph::kernels::finite_check::locate;
use patchgraph::nn::{AttentionConfig, ForwardOptions, GraphAttention, Init, Vit, VitConfig, VitOptions};
use patchgraph::{ColumnBlock, Error, Graph, Matrix};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

// ----- errors ----------------------------------------------------------------------------------

/// A Rust error as the Python exception a user of NumPy or PyTorch expects, same message.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::DType { .. } => PyTypeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for patchgraph::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

// ----- arrays in -------------------------------------------------------------------------------

/// `obj` as a C-contiguous array of element type `T` and `ndim` dimensions (any, if `None`),
/// read in place; otherwise a `TypeError` (not an array, another dtype) or `ValueError`
/// (dimensions, layout) naming `name`.
fn array_in<'py, T: numpy::Element>(
    name: &str,
    obj: &Bound<'py, PyAny>,
    ndim: Option<usize>,
    dtype_name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{name}: expected a numpy array of {dtype_name}, got {ty}"))
    })?;
    if !untyped.dtype().is_equiv_to(&numpy::dtype::<T>(py)) {
        let got = untyped.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        return Err(PyTypeError::new_err(format!(
            "{name}: expected {dtype_name}, got {got} (convert with .astype(numpy.{dtype_name}))"
        )));
    }
    if let Some(n) = ndim {
        if untyped.ndim() != n {
            return Err(PyValueError::new_err(format!(
                "{name}: expected {n} dimensions, got shape {:?}",
                untyped.shape()
            )));
        }
    }
    if !untyped.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name}: the array of shape {:?} is not C-contiguous (numpy.ascontiguousarray makes a contiguous copy)",
            untyped.shape()
        )));
    }
    let typed = untyped.cast::<PyArrayDyn<T>>().map_err(|e| PyTypeError::new_err(format!("{name}: {e}")))?;
    typed.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// A read-only float32 matrix `[rows x cols]` borrowed from NumPy.
struct F32In<'py> {
    array: PyReadonlyArrayDyn<'py, f32>,
    rows: usize,
    cols: usize,
}

impl<'py> F32In<'py> {
    fn new(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = array_in::<f32>(name, obj, Some(2), "float32")?;
        let (rows, cols) = (array.shape()[0], array.shape()[1]);
        Ok(F32In { array, rows, cols })
    }

    fn slice(&self) -> &[f32] {
        self.array.as_slice().unwrap_or(&[])
    }

    fn block(&self) -> PyResult<ColumnBlock<'_>> {
        ColumnBlock::from_slice(self.slice(), self.rows, self.cols).py()
    }

    fn to_matrix(&self) -> PyResult<Matrix> {
        Matrix::from_vec(self.rows, self.cols, self.slice().to_vec()).py()
    }
}

/// A read-only float64 array borrowed from NumPy, flattened.
fn f64_in<'py>(name: &str, obj: &Bound<'py, PyAny>, ndim: usize) -> PyResult<PyReadonlyArrayDyn<'py, f64>> {
    array_in::<f64>(name, obj, Some(ndim), "float64")
}

// ----- arrays out ------------------------------------------------------------------------------

fn matrix_out<'py>(py: Python<'py>, m: Matrix) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (r, c) = m.shape();
    let a = Array2::from_shape_vec((r, c), m.into_vec()).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

fn vec2_out<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

// ----- graphs ----------------------------------------------------------------------------------

/// A directed graph over `N` nodes (incoming edges per destination), immutable. Built from a
/// spec, a builder or PyG's `edge_index`; an `edge_index` keeps its edge order: edge data
/// (biases, attention weights) go in and out in that order.
#[pyclass(name = "Graph", module = "patchgraph", frozen)]
#[derive(Clone)]
struct PyGraph {
    graph: Arc<Graph>,
    /// For a graph from `edge_index`: the CSR edge id of each of the caller's edges.
    caller_order: Option<Arc<Vec<usize>>>,
}

impl PyGraph {
    fn new(graph: Graph) -> Self {
        PyGraph { graph: Arc::new(graph), caller_order: None }
    }

    /// `name`'s `[E x width]` rows (per-edge data: a bias) given in the caller's edge order, put
    /// in the graph's CSR order; a `ValueError` naming `name` when they are not `E x width`.
    fn to_csr_rows<T: Copy + Default>(&self, name: &str, rows: &[T], width: usize) -> PyResult<Vec<T>> {
        let e = self.graph.num_edges();
        if rows.len() != e * width {
            return Err(PyValueError::new_err(format!(
                "{name}: expected [{e} edges x {width} heads] ({} values), got {} values",
                e * width,
                rows.len()
            )));
        }
        Ok(match &self.caller_order {
            None => rows.to_vec(),
            Some(order) => {
                let mut out = vec![T::default(); rows.len()];
                for (e, &id) in order.iter().enumerate() {
                    out[id * width..(id + 1) * width].copy_from_slice(&rows[e * width..(e + 1) * width]);
                }
                out
            }
        })
    }

    /// `[E x H]` rows in CSR order, put in the caller's edge order.
    fn to_caller_rows<T: Copy + Default>(&self, rows: Vec<T>, width: usize) -> Vec<T> {
        match &self.caller_order {
            None => rows,
            Some(order) => {
                let mut out = vec![T::default(); rows.len()];
                for (e, &id) in order.iter().enumerate() {
                    out[e * width..(e + 1) * width].copy_from_slice(&rows[id * width..(id + 1) * width]);
                }
                out
            }
        }
    }
}

/// For edges listed by destination `targets` (in the caller's order), the id each gets in a CSR
/// graph whose destinations hold their edges in that same relative order: `offsets[t]` plus
/// the edge's rank among the edges into `t`.
fn ranks_in_csr(targets: impl Iterator<Item = usize>, graph: &Graph) -> Vec<usize> {
    let n = graph.num_nodes();
    let mut next: Vec<usize> = (0..n).map(|i| graph.edge_range(i).start).collect();
    targets
        .map(|t| {
            let id = next[t];
            next[t] += 1;
            id
        })
        .collect()
}

fn neighbourhood(n: usize) -> PyResult<Neighbourhood> {
    match n {
        4 => Ok(Neighbourhood::Four),
        8 => Ok(Neighbourhood::Eight),
        other => Err(PyValueError::new_err(format!("neighbourhood: {other} (expected 4 or 8)"))),
    }
}

#[pymethods]
impl PyGraph {
    /// The complete graph on `n` nodes (implicit: the dense kernels take it).
    #[staticmethod]
    #[pyo3(signature = (n, self_loops = true))]
    fn complete(n: usize, self_loops: bool) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::try_complete(n, self_loops).py()?))
    }

    /// The radius graph on a `rows x cols` patch grid (4 or 8 neighbourhood).
    #[staticmethod]
    #[pyo3(signature = (rows, cols, neighbourhood = 8, radius = 1, self_loops = true))]
    fn grid(rows: usize, cols: usize, neighbourhood: usize, radius: usize, self_loops: bool) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::grid(rows, cols, self::neighbourhood(neighbourhood)?, radius, self_loops).py()?))
    }

    /// Local windows: `kind="partition"` (Swin) or `"sliding"` (NAT).
    #[staticmethod]
    #[pyo3(signature = (rows, cols, size, kind = "partition"))]
    fn window(rows: usize, cols: usize, size: usize, kind: &str) -> PyResult<Self> {
        let kind = match kind {
            "partition" => WindowKind::Partition,
            "sliding" => WindowKind::Sliding,
            other => return Err(PyValueError::new_err(format!("kind: `{other}` (expected partition or sliding)"))),
        };
        Ok(PyGraph::new(Graph::window(rows, cols, kind, size).py()?))
    }

    /// Each patch's `k` nearest patches on the grid.
    #[staticmethod]
    #[pyo3(signature = (rows, cols, k, include_self = true))]
    fn spatial_knn(rows: usize, cols: usize, k: usize, include_self: bool) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::spatial_knn(rows, cols, k, include_self).py()?))
    }

    /// ViG's feature k-NN of the rows of `x` (float32 `[N, D]`), dilated, `metric` "l2" or "cosine".
    #[staticmethod]
    #[pyo3(signature = (x, k, dilation = 1, metric = "l2", include_self = true))]
    fn feature_knn(
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        k: usize,
        dilation: usize,
        metric: &str,
        include_self: bool,
    ) -> PyResult<Self> {
        let metric = match metric {
            "l2" => Metric::L2,
            "cosine" => Metric::Cosine,
            other => return Err(PyValueError::new_err(format!("metric: `{other}` (expected l2 or cosine)"))),
        };
        let x = F32In::new("x", x)?.to_matrix()?;
        let opts = KnnOptions { k, dilation, metric, include_self };
        Ok(PyGraph::new(py.detach(|| Graph::feature_knn(&x, &opts)).py()?))
    }

    /// `degree` random sources per node (seeded).
    #[staticmethod]
    #[pyo3(signature = (n, degree, seed = 0, self_loops = true))]
    fn random(n: usize, degree: usize, seed: u64, self_loops: bool) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::random(n, degree, seed, self_loops).py()?))
    }

    /// BigBird: a `window` x `window` neighbourhood plus `random` random sources per patch.
    #[staticmethod]
    #[pyo3(signature = (rows, cols, window, random = 3, seed = 0))]
    fn bigbird(rows: usize, cols: usize, window: usize, random: usize, seed: u64) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::bigbird(rows, cols, window, random, seed).py()?))
    }

    /// Vision Longformer: a centred window plus `globals` global patches.
    #[staticmethod]
    #[pyo3(signature = (rows, cols, window, globals = 0))]
    fn longformer(rows: usize, cols: usize, window: usize, globals: usize) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::longformer(rows, cols, window, globals).py()?))
    }

    /// Swin's shifted windows of side `size`, shifted by `shift`.
    #[staticmethod]
    fn shifted_window(rows: usize, cols: usize, size: usize, shift: usize) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::shifted_window(rows, cols, size, shift).py()?))
    }

    /// MaxViT grid attention with grid size `grid`.
    #[staticmethod]
    fn grid_attention(rows: usize, cols: usize, grid: usize) -> PyResult<Self> {
        Ok(PyGraph::new(Graph::grid_attention(rows, cols, grid).py()?))
    }

    /// Reformer's LSH graph of the rows of `x` (float32 `[N, D]`).
    #[staticmethod]
    #[pyo3(signature = (x, buckets, rounds = 1, seed = 0, chunk = None))]
    fn lsh(
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        buckets: usize,
        rounds: usize,
        seed: u64,
        chunk: Option<usize>,
    ) -> PyResult<Self> {
        let x = F32In::new("x", x)?.to_matrix()?;
        let opts = LshOptions { buckets, rounds, seed, chunk };
        Ok(PyGraph::new(py.detach(|| Graph::lsh(&x, &opts)).py()?))
    }

    /// A graph spec (`"complete"`, `"grid8:1"`, `"fknn:9:2"`, `"window:7+global"`,
    /// `"edges:FILE.npy"`, ...) on a `rows x cols` patch grid; `features` (float32
    /// `[rows*cols, D]`, the patches only) for the specs that need them
    /// ([`Graph.spec_needs_features`]); `class_token` prepends a node linked both ways to every
    /// patch; `prefix_tokens` (overrides `class_token`) prepends that many such nodes (timm's
    /// class and register tokens).
    #[staticmethod]
    #[pyo3(signature = (spec, rows, cols, features = None, class_token = false, prefix_tokens = None))]
    fn from_spec(
        py: Python<'_>,
        spec: &str,
        rows: usize,
        cols: usize,
        features: Option<&Bound<'_, PyAny>>,
        class_token: bool,
        prefix_tokens: Option<usize>,
    ) -> PyResult<Self> {
        let spec: GraphSpec = spec.parse().py()?;
        let features = features.map(|f| F32In::new("features", f).and_then(|f| f.to_matrix())).transpose()?;
        let prefix = prefix_tokens.unwrap_or(usize::from(class_token));
        Ok(PyGraph::new(py.detach(|| spec.build_with_prefix(rows, cols, features.as_ref(), prefix)).py()?))
    }

    /// Whether the spec is built from node features (feature k-NN, LSH, unions holding one).
    #[staticmethod]
    fn spec_needs_features(spec: &str) -> PyResult<bool> {
        Ok(spec.parse::<GraphSpec>().py()?.needs_features())
    }

    /// A graph from PyG's `edge_index` (int64 `[2, E]`, sources then targets), `num_nodes`
    /// defaulting to the largest index plus one. Edge data go in and out in this edge order.
    #[staticmethod]
    #[pyo3(signature = (edge_index, num_nodes = None))]
    fn from_edge_index(edge_index: &Bound<'_, PyAny>, num_nodes: Option<usize>) -> PyResult<Self> {
        let arr = array_in::<i64>("edge_index", edge_index, Some(2), "int64")?;
        let shape = arr.shape().to_vec();
        let data = arr.as_slice().unwrap_or(&[]);
        let n = match num_nodes {
            Some(n) => n,
            None => data.iter().copied().max().map_or(0, |m| (m.max(-1) + 1) as usize),
        };
        let graph = Graph::from_edge_index_tensor(n, &shape, data).py()?;
        let e = shape.get(1).copied().unwrap_or(0);
        let order = ranks_in_csr(data[e..].iter().map(|&t| t as usize), &graph);
        Ok(PyGraph { graph: Arc::new(graph), caller_order: Some(Arc::new(order)) })
    }

    /// The disjoint union (a batch) of `graphs`, node ids offset graph by graph.
    #[staticmethod]
    fn disjoint_union(graphs: Vec<PyRef<'_, PyGraph>>) -> PyResult<Self> {
        let parts: Vec<Graph> = graphs.iter().map(|g| (*g.graph).clone()).collect();
        Ok(PyGraph::new(Graph::disjoint_union(&parts).py()?))
    }

    /// The edge union of `graphs` on the same nodes.
    #[staticmethod]
    fn union(graphs: Vec<PyRef<'_, PyGraph>>) -> PyResult<Self> {
        let parts: Vec<Graph> = graphs.iter().map(|g| (*g.graph).clone()).collect();
        Ok(PyGraph::new(Graph::union(&parts).py()?))
    }

    /// This graph with a node 0 prepended, linked both ways to every node (a class token).
    #[pyo3(signature = (self_loop = true))]
    fn with_global_node(&self, self_loop: bool) -> Self {
        PyGraph::new(self.graph.with_global_node(self_loop))
    }

    /// This graph with `count` nodes prepended, each linked both ways to every node and to
    /// itself (timm's prefix tokens: a class token and register tokens).
    fn with_global_nodes(&self, count: usize) -> Self {
        PyGraph::new(self.graph.with_global_nodes(count))
    }

    /// PyG's `edge_index`: int64 `[2, E]`, sources then targets, in the order the graph was
    /// given (for `from_edge_index`) or grouped by destination (for every builder).
    fn edge_index<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let (src, dst) = self.graph.edge_index();
        let e = src.len();
        let mut data: Vec<i64> = src.iter().chain(&dst).map(|&i| i as i64).collect();
        if let Some(order) = &self.caller_order {
            let csr = data.clone();
            for (k, &id) in order.iter().enumerate() {
                data[k] = csr[id];
                data[e + k] = csr[e + id];
            }
        }
        vec2_out(py, data, 2, e)
    }

    /// In-degree of every node, int64 `[N]`.
    fn in_degrees<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let d: Vec<i64> = (0..self.graph.num_nodes()).map(|i| self.graph.in_degree(i) as i64).collect();
        Array1::from(d).into_pyarray(py)
    }

    /// Number of nodes.
    #[getter]
    fn num_nodes(&self) -> usize {
        self.graph.num_nodes()
    }

    /// Number of edges.
    #[getter]
    fn num_edges(&self) -> usize {
        self.graph.num_edges()
    }

    /// Whether every block is complete (the dense kernels run it).
    #[getter]
    fn is_complete(&self) -> bool {
        self.graph.is_complete()
    }

    /// Node offsets of the disjoint-union blocks.
    #[getter]
    fn blocks(&self) -> Vec<usize> {
        self.graph.blocks().to_vec()
    }

    /// Graphviz DOT.
    fn to_dot(&self) -> String {
        self.graph.to_dot()
    }

    fn __eq__(&self, other: &PyGraph) -> bool {
        *self.graph == *other.graph
    }

    fn __repr__(&self) -> String {
        format!(
            "Graph(num_nodes={}, num_edges={}, topology={:?})",
            self.graph.num_nodes(),
            self.graph.num_edges(),
            self.graph.topology()
        )
    }
}

// ----- attention -------------------------------------------------------------------------------

/// The score from its Python description.
fn score_of(
    name: &str,
    scale: Option<f32>,
    attention: Option<&Bound<'_, PyAny>>,
    negative_slope: f32,
    dk: usize,
) -> PyResult<Score> {
    match name {
        "dot" => Ok(Score::Dot { scale: scale.unwrap_or(1.0 / (dk.max(1) as f32).sqrt()) }),
        "gat" => Ok(Score::Gat { negative_slope }),
        "gatv2" => {
            let a =
                attention.ok_or_else(|| PyValueError::new_err("score=\"gatv2\" needs attention= (float32 [H*d])"))?;
            let a = array_in::<f32>("attention", a, Some(1), "float32")?;
            Ok(Score::GatV2 { attention: a.as_slice().unwrap_or(&[]).to_vec(), negative_slope })
        }
        other => Err(PyValueError::new_err(format!("score: `{other}` (expected dot, gat or gatv2)"))),
    }
}

fn path_of(path: &str) -> PyResult<Path> {
    match path {
        "auto" => Ok(Path::Auto),
        "dense" => Ok(Path::Dense),
        "sparse" => Ok(Path::Sparse),
        "reference" => Ok(Path::Reference),
        other => Err(PyValueError::new_err(format!("path: `{other}` (expected auto, dense, sparse or reference)"))),
    }
}

/// `(out, lse)` of [`py_attend64`].
type Attended64<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>);

/// `(images [N, C, H, W], labels [N], classes)` of [`load_dataset`].
type Dataset<'py> = (Bound<'py, PyArray4<f32>>, Bound<'py, PyArray1<i64>>, usize);

type Attended<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray2<f32>>>);

/// The algebra over `graph`: `out [N, H*dv]`, `lse [N, H]` and (with `return_weights`) the
/// weights `[E, H]` in the graph's edge order. `q`, `k` `[N, H*dk]`, `v` `[N, H*dv]`
/// float32, read in place; `bias` float32 `[E, H]` in the graph's edge order.
#[pyfunction(name = "attend")]
#[pyo3(signature = (graph, q, k, v, heads, score = "dot", scale = None, attention = None, negative_slope = 0.2, bias = None, return_weights = false, path = "auto"))]
#[allow(clippy::too_many_arguments)]
fn py_attend<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    heads: usize,
    score: &str,
    scale: Option<f32>,
    attention: Option<&Bound<'py, PyAny>>,
    negative_slope: f32,
    bias: Option<&Bound<'py, PyAny>>,
    return_weights: bool,
    path: &str,
) -> PyResult<Attended<'py>> {
    let (q, k, v) = (F32In::new("q", q)?, F32In::new("k", k)?, F32In::new("v", v)?);
    let score = score_of(score, scale, attention, negative_slope, q.cols / heads.max(1))?;
    let bias = bias.map(|b| F32In::new("bias", b)).transpose()?;
    let bias_csr = bias.as_ref().map(|b| graph.to_csr_rows("bias", b.slice(), heads)).transpose()?;
    let path = path_of(path)?;
    let g = graph.graph.clone();
    let (qb, kb, vb) = (q.block()?, k.block()?, v.block()?);
    // q, k and v are checked inside the kernels' tasks (`.checked()`), the bias here, named
    // `bias[edge, head]` by the same `locate`.
    let bias_block = bias.as_ref().map(|b| b.block()).transpose()?;
    let out = py
        .detach(|| {
            if let Some(b) = bias_block {
                locate(&[("bias", b)])?;
            }
            let mut inputs = AttentionInputs::new(qb, kb, vb, heads).checked();
            if let Some(b) = &bias_csr {
                inputs = inputs.with_bias(b);
            }
            attend(&g, &score, &inputs, path, return_weights)
        })
        .py()?;
    let n = out.out.rows();
    let lse = vec2_out(py, out.log_sum_exp, n, heads)?;
    let weights = match out.weights {
        Some(w) => {
            let e = g.num_edges();
            Some(vec2_out(py, graph.to_caller_rows(w, heads), e, heads)?)
        }
        None => None,
    };
    Ok((matrix_out(py, out.out)?, lse, weights))
}

type Gradients<'py, T> = (
    Bound<'py, PyArray2<T>>,
    Bound<'py, PyArray2<T>>,
    Bound<'py, PyArray2<T>>,
    Option<Bound<'py, PyArray2<T>>>,
    Option<Bound<'py, PyArray1<T>>>,
);

/// The backward of [`py_attend`]: `(dq, dk, dv, dbias, dattention)` for `dout [N, H*dv]`, given
/// the forward's `lse`; `dbias` (with a bias, the graph's edge order) and `dattention` (GATv2)
/// or `None`.
#[pyfunction(name = "attend_backward")]
#[pyo3(signature = (graph, q, k, v, heads, lse, dout, score = "dot", scale = None, attention = None, negative_slope = 0.2, bias = None))]
#[allow(clippy::too_many_arguments)]
fn py_attend_backward<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    heads: usize,
    lse: &Bound<'py, PyAny>,
    dout: &Bound<'py, PyAny>,
    score: &str,
    scale: Option<f32>,
    attention: Option<&Bound<'py, PyAny>>,
    negative_slope: f32,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Gradients<'py, f32>> {
    let (q, k, v) = (F32In::new("q", q)?, F32In::new("k", k)?, F32In::new("v", v)?);
    let score = score_of(score, scale, attention, negative_slope, q.cols / heads.max(1))?;
    let lse = F32In::new("lse", lse)?;
    let dout_in = F32In::new("dout", dout)?;
    let bias = bias.map(|b| F32In::new("bias", b)).transpose()?;
    let bias_csr = bias.as_ref().map(|b| graph.to_csr_rows("bias", b.slice(), heads)).transpose()?;
    let g = graph.graph.clone();
    let (qb, kb, vb, l) = (q.block()?, k.block()?, v.block()?, lse.slice());
    // q, k, v and dout are checked inside the backward's tasks (`.checked()`), the bias here;
    // `lse` is not checked: -inf is its value for a node without incoming edges.
    if let Some(b) = bias.as_ref().map(|b| b.block()).transpose()? {
        py.detach(|| locate(&[("bias", b)])).py()?;
    }
    let dout = dout_in.block()?; // read in place, like q, k and v
    let grads = py
        .detach(|| {
            let mut inputs = AttentionInputs::new(qb, kb, vb, heads).checked();
            if let Some(b) = &bias_csr {
                inputs = inputs.with_bias(b);
            }
            attend_backward(&g, &score, &inputs, l, dout)
        })
        .py()?;
    let dbias = if bias.is_some() {
        Some(vec2_out(py, graph.to_caller_rows(grads.bias, heads), g.num_edges(), heads)?)
    } else {
        None
    };
    let da = (!grads.attention.is_empty()).then(|| Array1::from(grads.attention).into_pyarray(py));
    Ok((matrix_out(py, grads.query)?, matrix_out(py, grads.key)?, matrix_out(py, grads.value)?, dbias, da))
}

/// Seconds per call of [`attend`] (and, with `backward`, of [`attend`] then
/// [`attend_backward`]) on these inputs, timed inside Rust: `runs` calls (after one untimed
/// warm-up call unless `warmup` is false), the GIL released; `checked` runs the kernels with their NaN/inf check of the inputs (what
/// [`py_attend`] asks for). What a Python caller pays beyond the unchecked kernels is the
/// boundary (that check, argument checks, array views, result arrays);
/// `scripts/bench_python.py` measures it.
#[pyfunction(name = "_time_attend")]
#[pyo3(signature = (graph, q, k, v, heads, runs, backward = false, checked = false, warmup = true))]
#[allow(clippy::too_many_arguments)]
fn py_time_attend<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    heads: usize,
    runs: usize,
    backward: bool,
    checked: bool,
    warmup: bool,
) -> PyResult<Vec<f64>> {
    let (q, k, v) = (F32In::new("q", q)?, F32In::new("k", k)?, F32In::new("v", v)?);
    let score = score_of("dot", None, None, 0.2, q.cols / heads.max(1))?;
    let g = graph.graph.clone();
    let (qb, kb, vb) = (q.block()?, k.block()?, v.block()?);
    let dout = Matrix::from_fn(q.rows, v.cols, |i, j| ((i + j) % 7) as f32 - 3.0);
    py.detach(|| {
        let inputs = AttentionInputs { check_finite: checked, ..AttentionInputs::new(qb, kb, vb, heads) };
        let once = || -> patchgraph::Result<()> {
            // Only the lse is kept for the backward, as a Python caller does (`_, lse, _ =
            // attend(...)`): the output's memory is free again when the backward allocates.
            let lse = attend(&g, &score, &inputs, Path::Auto, false)?.log_sum_exp;
            if backward {
                attend_backward(&g, &score, &inputs, &lse, &dout)?;
            }
            Ok(())
        };
        if warmup {
            once()?;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = std::time::Instant::now();
            once()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(times)
    })
    .py()
}

/// The score in f64.
fn score64_of(
    name: &str,
    scale: Option<f64>,
    attention: Option<&Bound<'_, PyAny>>,
    negative_slope: f64,
    dk: usize,
) -> PyResult<Score64> {
    match name {
        "dot" => Ok(Score64::Dot { scale: scale.unwrap_or(1.0 / (dk.max(1) as f64).sqrt()) }),
        "gat" => Ok(Score64::Gat { negative_slope }),
        "gatv2" => {
            let a =
                attention.ok_or_else(|| PyValueError::new_err("score=\"gatv2\" needs attention= (float64 [H*d])"))?;
            let a = f64_in("attention", a, 1)?;
            Ok(Score64::GatV2 { attention: a.as_slice().unwrap_or(&[]).to_vec(), negative_slope })
        }
        other => Err(PyValueError::new_err(format!("score: `{other}` (expected dot, gat or gatv2)"))),
    }
}

/// [`py_attend`] on float64 inputs by plain loops (for `torch.autograd.gradcheck`): `(out, lse)`.
#[pyfunction(name = "attend64")]
#[pyo3(signature = (graph, q, k, v, heads, score = "dot", scale = None, attention = None, negative_slope = 0.2, bias = None))]
#[allow(clippy::too_many_arguments)]
fn py_attend64<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    heads: usize,
    score: &str,
    scale: Option<f64>,
    attention: Option<&Bound<'py, PyAny>>,
    negative_slope: f64,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Attended64<'py>> {
    let (q, k, v) = (f64_in("q", q, 2)?, f64_in("k", k, 2)?, f64_in("v", v, 2)?);
    let n = graph.graph.num_nodes();
    let dk = q.shape()[1] / heads.max(1);
    let score = score64_of(score, scale, attention, negative_slope, dk)?;
    let bias = bias.map(|b| f64_in("bias", b, 2)).transpose()?;
    let bias_csr = bias.as_ref().map(|b| graph.to_csr_rows("bias", b.as_slice().unwrap_or(&[]), heads)).transpose()?;
    let (out, lse) = attend64(
        &graph.graph,
        &score,
        q.as_slice().unwrap_or(&[]),
        k.as_slice().unwrap_or(&[]),
        v.as_slice().unwrap_or(&[]),
        heads,
        bias_csr.as_deref(),
    )
    .py()?;
    let cols = out.len() / n.max(1);
    Ok((vec2_out(py, out, n, cols)?, vec2_out(py, lse, n, heads)?))
}

/// [`py_attend_backward`] on float64 inputs by plain loops.
#[pyfunction(name = "attend_backward64")]
#[pyo3(signature = (graph, q, k, v, heads, lse, dout, score = "dot", scale = None, attention = None, negative_slope = 0.2, bias = None))]
#[allow(clippy::too_many_arguments)]
fn py_attend_backward64<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    heads: usize,
    lse: &Bound<'py, PyAny>,
    dout: &Bound<'py, PyAny>,
    score: &str,
    scale: Option<f64>,
    attention: Option<&Bound<'py, PyAny>>,
    negative_slope: f64,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Gradients<'py, f64>> {
    let (q, k, v) = (f64_in("q", q, 2)?, f64_in("k", k, 2)?, f64_in("v", v, 2)?);
    let (lse, dout) = (f64_in("lse", lse, 2)?, f64_in("dout", dout, 2)?);
    let (n, dk) = (graph.graph.num_nodes(), q.shape()[1] / heads.max(1));
    let score = score64_of(score, scale, attention, negative_slope, dk)?;
    let bias = bias.map(|b| f64_in("bias", b, 2)).transpose()?;
    let bias_csr = bias.as_ref().map(|b| graph.to_csr_rows("bias", b.as_slice().unwrap_or(&[]), heads)).transpose()?;
    let s = |a: &PyReadonlyArrayDyn<'_, f64>| a.as_slice().unwrap_or(&[]).to_vec();
    let g = attend_backward64(
        &graph.graph,
        &score,
        &s(&q),
        &s(&k),
        &s(&v),
        heads,
        bias_csr.as_deref(),
        &s(&lse),
        &s(&dout),
    )
    .py()?;
    let (cq, cv) = (q.shape()[1], v.shape()[1]);
    let e = graph.graph.num_edges();
    let dbias = g.bias.map(|b| vec2_out(py, graph.to_caller_rows(b, heads), e, heads)).transpose()?;
    let da = g.attention.map(|a| Array1::from(a).into_pyarray(py));
    Ok((vec2_out(py, g.query, n, cq)?, vec2_out(py, g.key, n, cq)?, vec2_out(py, g.value, n, cv)?, dbias, da))
}

// ----- layers ----------------------------------------------------------------------------------

/// A `TensorMap` from a dict of float32 arrays (name -> array of any shape).
fn tensor_map(state: &Bound<'_, PyDict>) -> PyResult<TensorMap> {
    let mut map = TensorMap::default();
    for (key, value) in state.iter() {
        let name: String = key.extract().map_err(|_| PyTypeError::new_err("state dict keys must be strings"))?;
        let arr = array_in::<f32>(&name, &value, None, "float32")?;
        map.insert(name.clone(), arr.shape().to_vec(), arr.as_slice().unwrap_or(&[]).to_vec()).py()?;
    }
    Ok(map)
}

/// A `TensorMap` as a dict of float32 arrays with their shapes.
fn dict_of<'py>(py: Python<'py>, map: &TensorMap) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (name, shape) in map.shapes() {
        let t = map.get(name).py()?;
        let arr = numpy::ndarray::ArrayD::from_shape_vec(shape.to_vec(), t.data.clone())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        out.set_item(name, arr.into_pyarray(py))?;
    }
    Ok(out)
}

/// A JSON value from a Python dict (through `json.dumps`) or a JSON string.
fn json_of(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text: String = match obj.extract::<String>() {
        Ok(s) => s,
        Err(_) => obj.py().import("json")?.call_method1("dumps", (obj,))?.extract()?,
    };
    serde_json::from_str(&text).map_err(|e| PyValueError::new_err(format!("config: {e}")))
}

/// A Python object from a JSON value (through `json.loads`).
fn py_of<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// One attention layer with the peer's parameters and names: PyG's `GATConv`, `GATv2Conv`,
/// `TransformerConv` or timm's `Attention`.
#[pyclass(name = "Layer", module = "patchgraph")]
struct PyLayer {
    layer: GraphAttention,
}

#[pymethods]
impl PyLayer {
    /// A layer from its config (the peer's class name and arguments, e.g. `{"kind": "GATConv",
    /// "in_channels": 20, "out_channels": 7, "heads": 3}`, dict or JSON) and the peer's state
    /// dict (names -> float32 arrays). Every missing, misshapen or unknown tensor is an error.
    #[staticmethod]
    fn from_state_dict(config: &Bound<'_, PyAny>, state_dict: &Bound<'_, PyDict>) -> PyResult<Self> {
        let config = AttentionConfig::from_value(json_of(config)?).py()?;
        let mut map = tensor_map(state_dict)?;
        let layer = GraphAttention::load(config, &mut map, "").py()?;
        map.finish().py()?;
        Ok(PyLayer { layer })
    }

    /// A freshly initialised layer (the peer's initialisation, seeded).
    #[staticmethod]
    #[pyo3(signature = (config, seed = 0))]
    fn from_config(config: &Bound<'_, PyAny>, seed: u64) -> PyResult<Self> {
        let config = AttentionConfig::from_value(json_of(config)?).py()?;
        Ok(PyLayer { layer: GraphAttention::new(config, &mut Init::new(seed)).py()? })
    }

    /// `x [N, in] -> [N, out]` over `graph`; with `return_attention_weights`, also
    /// `(edge_index, alpha)` as PyG returns them (self-loops PyG adds listed after the given
    /// edges, in node order; `alpha` `[E', H]` in that order).
    #[pyo3(signature = (graph, x, return_attention_weights = false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        graph: &PyGraph,
        x: &Bound<'py, PyAny>,
        return_attention_weights: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = F32In::new("x", x)?.to_matrix()?;
        let g = graph.graph.clone();
        let options = ForwardOptions { weights: return_attention_weights, ..Default::default() };
        let out = py.detach(|| self.layer.forward_with(&g, &x, &options)).py()?;
        let y = matrix_out(py, out.out)?;
        let Some(w) = out.weights else { return Ok(y.into_any()) };
        let heads = self.layer.config().heads();
        let (edge_index, alpha) = weights_in_caller_order(graph, &w.graph, w.values, heads);
        let e = alpha.len() / heads.max(1);
        let edge_index = vec2_out(py, edge_index, 2, e)?;
        let alpha = vec2_out(py, alpha, e, heads)?;
        Ok((y, (edge_index, alpha)).into_pyobject(py)?.into_any())
    }

    /// The backward of [`PyLayer::forward`] for `dy`: `(dx, grads)`, `grads` a dict under the
    /// peer's parameter names.
    fn backward<'py>(
        &self,
        py: Python<'py>,
        graph: &PyGraph,
        x: &Bound<'py, PyAny>,
        dy: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyDict>)> {
        let x = F32In::new("x", x)?.to_matrix()?;
        let dy = F32In::new("dy", dy)?.to_matrix()?;
        let g = graph.graph.clone();
        let (dx, grads) = py
            .detach(|| {
                let mut grads = self.layer.zero_grads();
                self.layer.backward(&g, &x, &dy, &mut grads).map(|dx| (dx, grads))
            })
            .py()?;
        let map = self.layer.grads_state_dict(&grads).py()?;
        Ok((matrix_out(py, dx)?, dict_of(py, &map)?))
    }

    /// The parameters under the peer's names.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut map = TensorMap::default();
        self.layer.save(&mut map, "").py()?;
        dict_of(py, &map)
    }

    /// The config (patchgraph's own form, every field).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py_of(py, self.layer.config())
    }
}

/// The weights of the graph attention ran on (`attention_graph`, CSR order) as PyG returns
/// them: for a graph from `edge_index`, the caller's edges in their order (self-loops removed
/// and one per node appended, when the layer added self-loops); otherwise the attention
/// graph's edges in CSR order. Returns `(edge_index [2 x E'] flat, alpha [E' x H] flat)`.
fn weights_in_caller_order(graph: &PyGraph, attended: &Graph, values: Vec<f32>, heads: usize) -> (Vec<i64>, Vec<f32>) {
    let (csr_src, csr_dst) = attended.edge_index();
    let Some(_) = &graph.caller_order else {
        let edge_index = csr_src.iter().chain(&csr_dst).map(|&i| i as i64).collect();
        return (edge_index, values);
    };
    // The caller's edges, in their order.
    let (src, dst): (Vec<usize>, Vec<usize>) = {
        let (s, d) = graph.graph.edge_index();
        let order = graph.caller_order.as_deref().map(|o| o.as_slice()).unwrap_or(&[]);
        order.iter().map(|&id| (s[id], d[id])).unzip()
    };
    let loops_added = attended.num_edges() != graph.graph.num_edges() || *attended != *graph.graph;
    let (src, dst): (Vec<usize>, Vec<usize>) = if loops_added {
        let n = attended.num_nodes();
        src.iter().zip(&dst).filter(|(s, d)| s != d).map(|(&s, &d)| (s, d)).chain((0..n).map(|i| (i, i))).unzip()
    } else {
        (src, dst)
    };
    let ids = ranks_in_csr(dst.iter().copied(), attended);
    let mut alpha = vec![0.0; ids.len() * heads];
    for (k, &id) in ids.iter().enumerate() {
        alpha[k * heads..(k + 1) * heads].copy_from_slice(&values[id * heads..(id + 1) * heads]);
    }
    let edge_index = src.iter().chain(&dst).map(|&i| i as i64).collect();
    (edge_index, alpha)
}

// ----- ViT -------------------------------------------------------------------------------------

/// timm's `VisionTransformer` with each block's attention on any patch graph.
#[pyclass(name = "Vit", module = "patchgraph")]
struct PyVit {
    vit: Vit,
}

/// A `VitConfig` from a dict / JSON string of timm's arguments, or an architecture name.
fn vit_config(obj: &Bound<'_, PyAny>) -> PyResult<VitConfig> {
    if let Ok(name) = obj.extract::<String>() {
        if !name.trim_start().starts_with('{') {
            return VitConfig::arch(&name).py();
        }
    }
    let config: VitConfig =
        serde_json::from_value(json_of(obj)?).map_err(|e| PyValueError::new_err(format!("ViT config: {e}")))?;
    config.validate().py()?;
    Ok(config)
}

/// Graph specs from `None`, one spec string (every layer, or comma-separated per layer), or a
/// list of per-layer specs.
fn graph_specs(graph: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<GraphSpec>> {
    let Some(g) = graph else { return Ok(Vec::new()) };
    if let Ok(s) = g.extract::<String>() {
        return cli::parse_graphs(&s).py();
    }
    let list: Vec<String> = g.extract().map_err(|_| PyTypeError::new_err("graph: a spec string or a list of them"))?;
    list.iter().map(|s| s.parse().py()).collect()
}

/// Images from a float32 `[B, C, H, W]` array.
fn images_of(images: &Bound<'_, PyAny>) -> PyResult<Vec<ChwImage>> {
    let arr = array_in::<f32>("images", images, Some(4), "float32")?;
    let s = arr.shape().to_vec();
    let (b, per) = (s[0], s[1] * s[2] * s[3]);
    let data = arr.as_slice().unwrap_or(&[]);
    (0..b).map(|i| ChwImage::new(s[1], s[2], s[3], data[i * per..(i + 1) * per].to_vec()).py()).collect()
}

#[pymethods]
impl PyVit {
    /// A freshly initialised ViT (timm's initialisation, seeded) from a timm config (dict of
    /// `VisionTransformer` arguments, or an architecture name such as `vit_tiny_patch16_224`).
    #[staticmethod]
    #[pyo3(signature = (config, seed = 0))]
    fn from_config(config: &Bound<'_, PyAny>, seed: u64) -> PyResult<Self> {
        Ok(PyVit { vit: Vit::new(vit_config(config)?, &mut Init::new(seed)).py()? })
    }

    /// A ViT from a timm state dict (names -> float32 arrays), loaded strictly.
    #[staticmethod]
    fn from_state_dict(config: &Bound<'_, PyAny>, state_dict: &Bound<'_, PyDict>) -> PyResult<Self> {
        let config = vit_config(config)?;
        Ok(PyVit { vit: Vit::load(config, tensor_map(state_dict)?, "state dict").py()? })
    }

    /// A ViT from a file: timm safetensors (with or without patchgraph's config in its
    /// metadata) or a Google `.npz`; `config` a dict or architecture name when the file carries
    /// none. Returns the model and what was adapted (class count, resampled position embedding).
    #[staticmethod]
    #[pyo3(signature = (path, config = None, allow_nonfinite = false))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        config: Option<&Bound<'_, PyAny>>,
        allow_nonfinite: bool,
    ) -> PyResult<(Self, Vec<String>)> {
        let config = config.map(vit_config).transpose()?;
        let prepared = py
            .detach(|| {
                patchgraph::infer::PreparedVit::load_with(
                    &path,
                    config,
                    patchgraph::image::Normalization::inception(),
                    allow_nonfinite,
                )
            })
            .py()?;
        Ok((PyVit { vit: prepared.vit }, prepared.adapted))
    }

    /// Logits `[B, K]` of float32 images `[B, C, H, W]` (already normalised), with each
    /// block's attention on `graph` (None: the complete graph, i.e. timm's ViT).
    #[pyo3(signature = (images, graph = None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        graph: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let images = images_of(images)?;
        let options = VitOptions { graphs: graph_specs(graph)?, ..Default::default() };
        let out = py.detach(|| self.vit.forward_with(&images, &options)).py()?;
        matrix_out(py, out.logits)
    }

    /// The pooled, normalised features before the head `[B, D]`.
    #[pyo3(signature = (images, graph = None))]
    fn forward_features<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        graph: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let images = images_of(images)?;
        let options = VitOptions { graphs: graph_specs(graph)?, ..Default::default() };
        let out = py.detach(|| self.vit.forward_with(&images, &options)).py()?;
        matrix_out(py, out.pre_logits)
    }

    /// The parameters under timm's names.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, &self.vit.state_dict().py()?)
    }

    /// Writes a timm-named safetensors file (config in its metadata).
    fn save(&self, path: std::path::PathBuf) -> PyResult<()> {
        self.vit.save_safetensors(path).py()
    }

    /// The config as a dict of timm's argument names.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py_of(py, self.vit.config())
    }
}

// ----- commands and data -----------------------------------------------------------------------

/// Runs a command (`graph`, `attention`, `plot`, `bench`, `train`, `convert`, `infer`,
/// `embed`) with its command-line flags `argv` (without the command name) and returns its report
/// as a JSON string, and for `graph` the graph. Progress lines (train, bench) print when `verbose`.
#[pyfunction]
#[pyo3(signature = (name, argv, threads = None, allow_nonfinite = false, verbose = true))]
fn run_command(
    py: Python<'_>,
    name: &str,
    argv: Vec<String>,
    threads: Option<usize>,
    allow_nonfinite: bool,
    verbose: bool,
) -> PyResult<(String, Option<PyGraph>)> {
    use clap::Parser;
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct Flags<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    fn parse<A: clap::Args>(name: &str, argv: &[String]) -> PyResult<A> {
        Flags::<A>::try_parse_from(argv)
            .map(|f| f.args)
            .map_err(|e| PyValueError::new_err(format!("patchgraph {name}: {}", e.render())))
    }
    let common = Common { threads, allow_nonfinite };
    let json = |r: &dyn erased::Json| r.json();
    let mut graph = None;
    let text = match name {
        "graph" => {
            let a: cli::graph::Args = parse(name, &argv)?;
            let r = py.detach(|| common.install(|| cli::graph::run(&a, &common))).py()?;
            let t = json(&r)?;
            graph = Some(PyGraph::new(r.graph));
            t
        }
        "attention" => {
            let a: cli::attention::Args = parse(name, &argv)?;
            json(&py.detach(|| common.install(|| cli::attention::run(&a, &common))).py()?)?
        }
        "plot" => {
            let a: cli::plot::Args = parse(name, &argv)?;
            json(&py.detach(|| common.install(|| cli::plot::run(&a))).py()?)?
        }
        "bench" => {
            let a: cli::bench::Args = parse(name, &argv)?;
            let r = py.detach(|| {
                common.install(|| {
                    let mut log = |line: &str| {
                        if verbose {
                            println!("{line}");
                        }
                    };
                    cli::bench::run(&a, &mut log)
                })
            });
            json(&r.py()?)?
        }
        "train" => {
            let a: cli::train::Args = parse(name, &argv)?;
            let r = py.detach(|| {
                common.install(|| {
                    let mut log = |line: &str| {
                        if verbose {
                            println!("{line}");
                        }
                    };
                    cli::train::run(&a, &common, &mut log, false)
                })
            });
            json(&r.py()?)?
        }
        "convert" => {
            let a: cli::convert::Args = parse(name, &argv)?;
            json(&py.detach(|| common.install(|| cli::convert::run(&a, &common))).py()?)?
        }
        "infer" => {
            let a: cli::infer::Args = parse(name, &argv)?;
            json(&py.detach(|| common.install(|| cli::infer::run(&a, &common))).py()?)?
        }
        "embed" => {
            let a: cli::embed::Args = parse(name, &argv)?;
            json(&py.detach(|| common.install(|| cli::embed::run_with(&a, &common, false))).py()?)?
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown command `{other}`: expected graph, attention, plot, bench, train, convert, infer or embed"
            )));
        }
    };
    Ok((text, graph))
}

/// Reports as JSON text.
mod erased {
    pub trait Json {
        fn json(&self) -> pyo3::PyResult<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> pyo3::PyResult<String> {
            serde_json::to_string(self).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
        }
    }
}

/// A dataset directory (MNIST IDX, CIFAR-10 binary batches, an image folder) as float32
/// images `[N, C, H, W]` in [0, 1] and int64 labels `[N]`, and the class count.
#[pyfunction]
#[pyo3(signature = (path, split = "train", image_size = None, channels = None))]
fn load_dataset<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    split: &str,
    image_size: Option<usize>,
    channels: Option<usize>,
) -> PyResult<Dataset<'py>> {
    let split = match split {
        "train" => patchgraph::data::Split::Train,
        "test" => patchgraph::data::Split::Test,
        other => return Err(PyValueError::new_err(format!("split: `{other}` (expected train or test)"))),
    };
    let set = py.detach(|| patchgraph::data::load_dataset(&path, split, image_size.map(|s| (s, s)), channels)).py()?;
    let (c, h, w) = set.shape();
    let mut pixels = Vec::with_capacity(set.len() * c * h * w);
    let mut labels = Vec::with_capacity(set.len());
    for i in 0..set.len() {
        let (img, label) = set.get(i).py()?;
        pixels.extend_from_slice(img.as_slice());
        labels.push(label as i64);
    }
    let images =
        Array4::from_shape_vec((set.len(), c, h, w), pixels).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((images.into_pyarray(py), Array1::from(labels).into_pyarray(py), set.classes))
}

/// Builds rayon's global pool with `threads` threads (call before any other patchgraph call;
/// `RAYON_NUM_THREADS` does the same from the environment). Returns False when the pool was
/// already built (its size then stays).
#[pyfunction]
fn init_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_ok()
}

/// The number of threads patchgraph's kernels run on.
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGraph>()?;
    m.add_class::<PyLayer>()?;
    m.add_class::<PyVit>()?;
    m.add_function(wrap_pyfunction!(py_attend, m)?)?;
    m.add_function(wrap_pyfunction!(py_attend_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py_attend64, m)?)?;
    m.add_function(wrap_pyfunction!(py_attend_backward64, m)?)?;
    m.add_function(wrap_pyfunction!(py_time_attend, m)?)?;
    m.add_function(wrap_pyfunction!(run_command, m)?)?;
    m.add_function(wrap_pyfunction!(load_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(init_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
