//! Max-relative aggregation: ViG's `MRConv` message passing (Han et al. 2022, after
//! DeepGCNs): each node takes the channel-wise maximum of its neighbours' differences from it.
//!
//! ```text
//! x [N x D], graph with incoming edges j -> i
//! m[i, c] = max_{j in N(i)} (x[j, c] - x[i, c])      [N x D]     (0 for a node with no incoming edge)
//! ```
//!
//! The maximum picks one edge per `(i, c)`, the first in the node's edge order among equals;
//! the backward sends `dm[i, c]` to that source and takes it from `i`:
//!
//! ```text
//! dx[j*, c] += dm[i, c] ;  dx[i, c] -= dm[i, c]          j* = argmax of m[i, c]
//! ```
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::nn::MaxRelative;
//! let x = Matrix::from_vec(3, 2, vec![0., 5., 1., 1., 3., 0.]).unwrap();
//! let g = Graph::from_edge_index(3, &[1, 2], &[0, 0]).unwrap(); // 1 -> 0, 2 -> 0
//! let m = MaxRelative::forward(&g, &x).unwrap();
//! assert_eq!(m.out.row(0), &[3., -4.]); // max(1 - 0, 3 - 0), max(1 - 5, 0 - 5)
//! assert_eq!(m.out.row(1), &[0., 0.]); // no incoming edge
//! ```

use crate::error::Result;
use crate::graph::Graph;
use crate::tensor::Matrix;
use rayon::prelude::*;

/// No incoming edge: nothing to send gradient to.
const NONE: u32 = u32::MAX;

/// Output of [`MaxRelative::forward`]: the aggregate and, per `(i, c)`, the winning source.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxRelative {
    /// `[N x D]`.
    pub out: Matrix,
    /// `[N x D]` source node of each maximum (`u32::MAX` where the node has no incoming edge).
    pub argmax: Vec<u32>,
}

impl MaxRelative {
    /// `m[i, c] = max_j (x[j, c] - x[i, c])` over the incoming edges of every node (rows in
    /// parallel; each row's result is independent of the thread count).
    pub fn forward(graph: &Graph, x: &Matrix) -> Result<MaxRelative> {
        let (n, d) = (graph.num_nodes(), x.cols());
        x.expect_shape("max-relative input", n, d)?;
        let mut out = Matrix::zeros(n, d);
        let mut argmax = vec![NONE; n * d];
        out.as_mut_slice().par_chunks_mut(d.max(1)).zip(argmax.par_chunks_mut(d.max(1))).enumerate().for_each(
            |(i, (row, arg))| {
                let xi = x.row(i);
                for j in graph.incoming(i) {
                    let xj = x.row(j);
                    for c in 0..d {
                        let v = xj[c] - xi[c];
                        // A NaN difference wins and stays (nothing compares above it), so a
                        // NaN input reaches the output instead of being skipped by `>`.
                        if arg[c] == NONE || v > row[c] || (v.is_nan() && !row[c].is_nan()) {
                            row[c] = v;
                            arg[c] = j as u32;
                        }
                    }
                }
            },
        );
        Ok(MaxRelative { out, argmax })
    }

    /// Backward: `dx` `[N x D]` from `dm` `[N x D]` (sequential scatter, a fixed order).
    pub fn backward(&self, dm: &Matrix) -> Result<Matrix> {
        let (n, d) = self.out.shape();
        dm.expect_shape("max-relative dm", n, d)?;
        let mut dx = Matrix::zeros(n, d);
        for i in 0..n {
            for c in 0..d {
                let j = self.argmax[i * d + c];
                if j != NONE {
                    let g = dm.get(i, c);
                    dx.row_mut(j as usize)[c] += g; // m[i, c] = x[j*, c] - x[i, c]
                    dx.row_mut(i)[c] -= g;
                }
            }
        }
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward is the gradient of `sum(r * m)`: finite differences in f64 on a random graph
    /// with distinct values (no ties, so the maximum is differentiable), one node with no edges.
    #[test]
    fn backward_is_the_gradient() {
        let (n, d) = (6, 5);
        let x = Matrix::from_fn(n, d, |i, c| ((i * 7 + c * 13) as f32 * 0.37).sin() * 2.0 + i as f32 * 1e-3);
        let (src, dst) = (vec![1, 2, 3, 0, 4, 5, 2, 3], vec![0, 0, 0, 1, 1, 2, 4, 4]);
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let r = Matrix::from_fn(n, d, |i, c| ((i + 2 * c) as f32 * 0.71).cos());
        let m = MaxRelative::forward(&g, &x).unwrap();
        let dx = m.backward(&r).unwrap();
        let loss = |x: &[f64]| -> f64 {
            let mut s = 0.0;
            for i in 0..n {
                for c in 0..d {
                    let best = (0..src.len())
                        .filter(|&e| dst[e] == i)
                        .map(|e| x[src[e] * d + c] - x[i * d + c])
                        .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))));
                    s += best.unwrap_or(0.0) * r.get(i, c) as f64;
                }
            }
            s
        };
        let base: Vec<f64> = x.as_slice().iter().map(|&v| v as f64).collect();
        for k in 0..n * d {
            let mut p = base.clone();
            p[k] += 1e-6;
            let up = loss(&p);
            p[k] -= 2e-6;
            let fd = (up - loss(&p)) / 2e-6;
            assert!((dx.as_slice()[k] as f64 - fd).abs() < 1e-4, "dx[{k}]: {} vs {fd}", dx.as_slice()[k]);
        }
        assert_eq!(m.out.row(3), &[0.0; 5]); // node 3 has no incoming edge
        assert_eq!(m.out.row(5), &[0.0; 5]);
    }

    /// Among equal values the first edge wins, and the result does not depend on the thread count.
    #[test]
    fn ties_and_threads() {
        let x = Matrix::from_vec(3, 1, vec![0.0, 2.0, 2.0]).unwrap();
        let g = Graph::from_edge_index(3, &[2, 1], &[0, 0]).unwrap();
        let m = MaxRelative::forward(&g, &x).unwrap();
        assert_eq!(m.argmax[0], 2);
        let big = Matrix::from_fn(300, 17, |i, c| ((i * 31 + c) as f32 * 0.11).sin());
        let gb = Graph::complete(300, true);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let a = one.install(|| MaxRelative::forward(&gb, &big)).unwrap();
        let b = two.install(|| MaxRelative::forward(&gb, &big)).unwrap();
        assert_eq!(a, b);
    }
}
