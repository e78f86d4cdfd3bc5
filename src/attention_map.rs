//! Where a ViT looks: one query token's attention over the patches of its image, per head or
//! averaged over heads, and attention rollout across layers (Abnar and Zuidema, 2020,
//! "Quantifying Attention Flow in Transformers"). Works on any graph: the weights come from
//! [`crate::nn::Vit::forward_with`] with `weights: true`, each layer's `[E x H]` values in its
//! own (batch) graph's edge order; a token with no edge from another gets zero weight from it.
//!
//! ```text
//! A_l [T x T]   A_l[i, j] = weight of edge j -> i in layer l, of head h or averaged over heads
//! rollout       R = Â_L ... Â_2 Â_1,   Â_l = rownorm(0.5 A_l + 0.5 I)   (the residual stream)
//! map           R[q, prefix..T] (or A_l[q, prefix..T]): one value per patch, row-major grid
//! ```
//!
//! ```
//! use patchgraph::attention_map::{Heads, layer_matrix, rollout};
//! use patchgraph::nn::AttentionWeights;
//! use patchgraph::Graph;
//! // One image of 2 tokens, complete graph with self-loops, one head.
//! let g = Graph::complete(2, true);
//! let w = AttentionWeights { graph: g, values: vec![0.5, 0.5, 0.25, 0.75] };
//! let a = layer_matrix(&w, 0, 2, Heads::Mean).unwrap();
//! assert_eq!(a.row(1), &[0.25, 0.75]);
//! let r = rollout(&[w.clone(), w], 0, 2, Heads::Mean).unwrap();
//! assert!((r.row(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

use crate::error::{Error, Result};
use crate::nn::AttentionWeights;
use crate::tensor::Matrix;

/// Which heads a map shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heads {
    /// One head.
    One(usize),
    /// The mean over heads.
    Mean,
}

/// The `[T x T]` attention matrix of image `image` (tokens `image*T .. (image+1)*T` of the
/// batch graph) in one layer: `A[i, j]` is the weight of the edge `j -> i` (0 without one).
pub fn layer_matrix(w: &AttentionWeights, image: usize, tokens: usize, heads: Heads) -> Result<Matrix> {
    let g = &w.graph;
    let e = g.num_edges();
    if e == 0 || w.values.len() % e != 0 {
        return Err(Error::shape("attention weights", format!("a multiple of {e} edges"), w.values.len().to_string()));
    }
    let h = w.values.len() / e;
    if let Heads::One(head) = heads {
        if head >= h {
            return Err(Error::invalid("attention head", format!("{head} is not below {h} heads")));
        }
    }
    let start = image * tokens;
    if start + tokens > g.num_nodes() {
        return Err(Error::invalid(
            "attention image",
            format!("image {image} of {tokens} tokens is beyond the graph's {} nodes", g.num_nodes()),
        ));
    }
    let mut a = Matrix::zeros(tokens, tokens);
    for i in 0..tokens {
        for (edge, j) in g.edge_range(start + i).zip(g.incoming(start + i)) {
            if j < start || j >= start + tokens {
                return Err(Error::invalid(
                    "attention graph",
                    format!("edge {j} -> {} leaves image {image}", start + i),
                ));
            }
            let row = &w.values[edge * h..(edge + 1) * h];
            a.row_mut(i)[j - start] += match heads {
                Heads::One(head) => row[head],
                Heads::Mean => row.iter().sum::<f32>() / h as f32,
            };
        }
    }
    Ok(a)
}

/// Attention rollout over `layers` (first to last) for image `image`: `R = Â_L ... Â_1` with
/// `Â = rownorm(0.5 A + 0.5 I)` (f64 products, returned as f32).
pub fn rollout(layers: &[AttentionWeights], image: usize, tokens: usize, heads: Heads) -> Result<Matrix> {
    if layers.is_empty() {
        return Err(Error::invalid("attention rollout", "no layers"));
    }
    let t = tokens;
    let mut r = vec![0.0f64; t * t];
    (0..t).for_each(|i| r[i * t + i] = 1.0);
    for w in layers {
        let a = layer_matrix(w, image, t, heads)?;
        let mut hat = vec![0.0f64; t * t];
        for i in 0..t {
            let row = &mut hat[i * t..(i + 1) * t];
            for (j, v) in row.iter_mut().enumerate() {
                *v = 0.5 * a.get(i, j) as f64 + if i == j { 0.5 } else { 0.0 };
            }
            let s: f64 = row.iter().sum();
            if s > 0.0 {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        // R <- Â R
        let mut next = vec![0.0f64; t * t];
        for i in 0..t {
            for k in 0..t {
                let h = hat[i * t + k];
                if h != 0.0 {
                    for j in 0..t {
                        next[i * t + j] += h * r[k * t + j];
                    }
                }
            }
        }
        r = next;
    }
    Matrix::from_vec(t, t, r.into_iter().map(|v| v as f32).collect())
}

/// Row `query` of a `[T x T]` matrix restricted to the patch tokens `prefix..T`: one value per
/// patch, in the grid's row-major order.
pub fn patch_values(m: &Matrix, query: usize, prefix: usize) -> Result<Vec<f32>> {
    if query >= m.rows() {
        return Err(Error::invalid("attention query", format!("token {query} is not below {} tokens", m.rows())));
    }
    Ok(m.row(query)[prefix..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Graph;

    /// Rollout on two layers equals the product written out by hand.
    #[test]
    fn rollout_by_hand() {
        // 2 tokens; layer 1: row 0 = [1, 0], row 1 = [0.5, 0.5]; layer 2: row 0 = [0, 1], row 1 = [1, 0]
        let g = Graph::complete(2, true);
        let l1 = AttentionWeights { graph: g.clone(), values: vec![1.0, 0.0, 0.5, 0.5] };
        let l2 = AttentionWeights { graph: g, values: vec![0.0, 1.0, 1.0, 0.0] };
        // Â1 = [[1, 0], [0.25, 0.75]]; Â2 = [[0.5, 0.5], [0.5, 0.5]]; R = Â2 Â1 = [[0.625, 0.375], [0.625, 0.375]]
        let r = rollout(&[l1, l2], 0, 2, Heads::Mean).unwrap();
        for (got, want) in r.as_slice().iter().zip([0.625, 0.375, 0.625, 0.375]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    /// Sparse graphs: missing edges are zeros; the second image of a batch reads its own block;
    /// heads are picked or averaged.
    #[test]
    fn sparse_batches_and_heads() {
        // batch of two images of 3 tokens; image 1 has edges 3 -> 4 and 5 -> 4 only
        let g = Graph::from_edge_index(6, &[0, 3, 5], &[1, 4, 4]).unwrap();
        let w = AttentionWeights { graph: g, values: vec![1.0, 1.0, 0.2, 0.6, 0.8, 0.4] };
        let a = layer_matrix(&w, 1, 3, Heads::One(1)).unwrap();
        assert_eq!(a.row(1), &[0.6, 0.0, 0.4]);
        assert_eq!(a.row(0), &[0.0, 0.0, 0.0]);
        let m = layer_matrix(&w, 1, 3, Heads::Mean).unwrap();
        assert!((m.get(1, 0) - 0.4).abs() < 1e-7 && (m.get(1, 2) - 0.6).abs() < 1e-7);
        assert!(layer_matrix(&w, 1, 3, Heads::One(2)).is_err());
        assert!(layer_matrix(&w, 2, 3, Heads::Mean).is_err());
        assert_eq!(patch_values(&m, 1, 1).unwrap(), vec![0.0, m.get(1, 2)]);
    }
}
