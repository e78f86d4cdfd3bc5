"""Type stubs of ``patchgraph._core``, the Rust extension (see ``python/src/lib.rs``)."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
_Path = Union[str, "PathLike[str]"]

__version__: str

class Graph:
    """A directed graph over N nodes, stored by destination; immutable."""

    @staticmethod
    def complete(n: int, self_loops: bool = True) -> Graph: ...
    @staticmethod
    def grid(rows: int, cols: int, neighbourhood: int = 8, radius: int = 1, self_loops: bool = True) -> Graph: ...
    @staticmethod
    def window(rows: int, cols: int, size: int, kind: str = "partition") -> Graph: ...
    @staticmethod
    def spatial_knn(rows: int, cols: int, k: int, include_self: bool = True) -> Graph: ...
    @staticmethod
    def feature_knn(x: F32, k: int, dilation: int = 1, metric: str = "l2", include_self: bool = True) -> Graph: ...
    @staticmethod
    def random(n: int, degree: int, seed: int = 0, self_loops: bool = True) -> Graph: ...
    @staticmethod
    def bigbird(rows: int, cols: int, window: int, random: int = 3, seed: int = 0) -> Graph: ...
    @staticmethod
    def longformer(rows: int, cols: int, window: int, globals: int = 0) -> Graph: ...
    @staticmethod
    def shifted_window(rows: int, cols: int, size: int, shift: int) -> Graph: ...
    @staticmethod
    def grid_attention(rows: int, cols: int, grid: int) -> Graph: ...
    @staticmethod
    def lsh(x: F32, buckets: int, rounds: int = 1, seed: int = 0, chunk: Optional[int] = None) -> Graph: ...
    @staticmethod
    def from_spec(
        spec: str, rows: int, cols: int, features: Optional[F32] = None, class_token: bool = False,
        prefix_tokens: Optional[int] = None,
    ) -> Graph: ...
    @staticmethod
    def spec_needs_features(spec: str) -> bool: ...
    @staticmethod
    def from_edge_index(edge_index: I64, num_nodes: Optional[int] = None) -> Graph: ...
    @staticmethod
    def disjoint_union(graphs: Sequence[Graph]) -> Graph: ...
    @staticmethod
    def union(graphs: Sequence[Graph]) -> Graph: ...
    def with_global_node(self, self_loop: bool = True) -> Graph: ...
    def with_global_nodes(self, count: int) -> Graph: ...
    def edge_index(self) -> I64:
        """int64 [2, E], PyG's source-to-target order; a graph from ``from_edge_index`` keeps its order."""
    def in_degrees(self) -> I64: ...
    @property
    def num_nodes(self) -> int: ...
    @property
    def num_edges(self) -> int: ...
    @property
    def is_complete(self) -> bool: ...
    @property
    def blocks(self) -> List[int]: ...
    def to_dot(self) -> str: ...

def attend(
    graph: Graph,
    q: F32,
    k: F32,
    v: F32,
    heads: int,
    score: str = "dot",
    scale: Optional[float] = None,
    attention: Optional[F32] = None,
    negative_slope: float = 0.2,
    bias: Optional[F32] = None,
    return_weights: bool = False,
    path: str = "auto",
) -> Tuple[F32, F32, Optional[F32]]:
    """(out [N, H*dv], lse [N, H], weights [E, H] or None); edge data in the graph's edge order."""

def attend_backward(
    graph: Graph,
    q: F32,
    k: F32,
    v: F32,
    heads: int,
    lse: F32,
    dout: F32,
    score: str = "dot",
    scale: Optional[float] = None,
    attention: Optional[F32] = None,
    negative_slope: float = 0.2,
    bias: Optional[F32] = None,
) -> Tuple[F32, F32, F32, Optional[F32], Optional[F32]]:
    """(dq, dk, dv, dbias or None, dattention or None)."""

def attend64(
    graph: Graph,
    q: F64,
    k: F64,
    v: F64,
    heads: int,
    score: str = "dot",
    scale: Optional[float] = None,
    attention: Optional[F64] = None,
    negative_slope: float = 0.2,
    bias: Optional[F64] = None,
) -> Tuple[F64, F64]: ...
def attend_backward64(
    graph: Graph,
    q: F64,
    k: F64,
    v: F64,
    heads: int,
    lse: F64,
    dout: F64,
    score: str = "dot",
    scale: Optional[float] = None,
    attention: Optional[F64] = None,
    negative_slope: float = 0.2,
    bias: Optional[F64] = None,
) -> Tuple[F64, F64, F64, Optional[F64], Optional[F64]]: ...

def _time_attend(graph: Graph, q: F32, k: F32, v: F32, heads: int, runs: int, backward: bool = False, checked: bool = False, warmup: bool = True) -> List[float]:
    """Seconds per call of attend (then attend_backward), timed inside Rust, with or without the kernels' NaN/inf check (for the boundary benchmark)."""

class Layer:
    """GATConv, GATv2Conv, TransformerConv or timm Attention with the peer's parameter names."""

    @staticmethod
    def from_state_dict(config: Union[Dict[str, Any], str], state_dict: Dict[str, F32]) -> Layer: ...
    @staticmethod
    def from_config(config: Union[Dict[str, Any], str], seed: int = 0) -> Layer: ...
    def forward(self, graph: Graph, x: F32, return_attention_weights: bool = False) -> Union[F32, Tuple[F32, Tuple[I64, F32]]]: ...
    def backward(self, graph: Graph, x: F32, dy: F32) -> Tuple[F32, Dict[str, F32]]: ...
    def state_dict(self) -> Dict[str, F32]: ...
    @property
    def config(self) -> Dict[str, Any]: ...

class Vit:
    """timm's VisionTransformer, each block's attention on any patch graph."""

    @staticmethod
    def from_config(config: Union[Dict[str, Any], str], seed: int = 0) -> Vit: ...
    @staticmethod
    def from_state_dict(config: Union[Dict[str, Any], str], state_dict: Dict[str, F32]) -> Vit: ...
    @staticmethod
    def load(path: _Path, config: Union[Dict[str, Any], str, None] = None, allow_nonfinite: bool = False) -> Tuple[Vit, List[str]]: ...
    def forward(self, images: F32, graph: Union[str, Sequence[str], None] = None) -> F32: ...
    def forward_features(self, images: F32, graph: Union[str, Sequence[str], None] = None) -> F32: ...
    def state_dict(self) -> Dict[str, F32]: ...
    def save(self, path: _Path) -> None: ...
    @property
    def config(self) -> Dict[str, Any]: ...

def run_command(
    name: str, argv: List[str], threads: Optional[int] = None, allow_nonfinite: bool = False, verbose: bool = True
) -> Tuple[str, Optional[Graph]]: ...
def load_dataset(
    path: _Path, split: str = "train", image_size: Optional[int] = None, channels: Optional[int] = None
) -> Tuple[F32, I64, int]: ...
def init_threads(threads: int) -> bool: ...
def num_threads() -> int: ...
