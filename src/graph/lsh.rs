//! Reformer's LSH attention as a graph: angular hashing of node features, sorted, chunked.
//!
//! Reformer (Kitaev et al. 2020) hashes each (shared query/key) vector with a random rotation,
//! `bucket(x) = argmax [xR, -xR]`, sorts the tokens by bucket, cuts the sorted order into
//! chunks of `c` tokens and lets every token attend within its own chunk and the previous one,
//! to the tokens of its own bucket. Several rounds of hashing are united. One round on 8 nodes,
//! `buckets = 4`, so `c = ceil(8 / 4) = 2`:
//!
//! ```text
//! sorted position:  0  1 | 2  3 | 4  5 | 6  7
//! node:             3  6 | 0  2 | 5  7 | 1  4
//! bucket:           0  0 | 1  1 | 1  1 | 3  3
//! chunk:              0  |   1  |   2  |   3
//!
//! node 5 (chunk 2, bucket 1): own chunk {5, 7} and previous chunk {0, 2}, same bucket -> 0, 2, 5, 7
//! node 0 (chunk 1, bucket 1): own chunk {0, 2}; the previous chunk holds bucket 0   -> 0, 2
//! ```
//!
//! Built by [`Graph::lsh`] (fast; documents the exact rule) and [`Graph::lsh_reference`] (the
//! plain oracle).
//!
//! ```
//! use patchgraph::graph::{Graph, LshOptions};
//! use patchgraph::Matrix;
//! // Two copies of a vector and two of its negation: xR and -xR swap, so the pairs land in
//! // the two buckets of `buckets = 2`, one chunk (c = 2) each, whatever the rotation.
//! let x = Matrix::from_vec(4, 2, vec![1., 2., 1., 2., -1., -2., -1., -2.]).unwrap();
//! let opts = LshOptions { buckets: 2, rounds: 1, seed: 0, chunk: None };
//! let g = Graph::lsh(&x, &opts).unwrap();
//! assert_eq!(g.incoming(0).collect::<Vec<_>>(), vec![0, 1]);
//! assert_eq!(g.incoming(3).collect::<Vec<_>>(), vec![2, 3]);
//! assert_eq!(g, Graph::lsh_reference(&x, &opts).unwrap());
//! ```

use super::{Graph, Topology, check_edges, ensure_u32_nodes};
use crate::error::{Error, Result, ensure_finite};
use crate::limits::MAX_EDGES;
use crate::tensor::Matrix;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Options of [`Graph::lsh`](super::Graph::lsh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LshOptions {
    /// Hash buckets `b` (even, `2 <= b <= N`): the rotation has `b / 2` columns.
    pub buckets: usize,
    /// Hashing rounds, united.
    pub rounds: usize,
    /// Seed of the rotations.
    pub seed: u64,
    /// Chunk size `c` of the sorted order (Reformer's `chunk_length`): `None` for
    /// `ceil(N / buckets)`, the average bucket size. A fixed `c` bounds the in-degree by
    /// `rounds 2c` whatever `N`, so a graph over more nodes costs proportionally more.
    #[serde(default)]
    pub chunk: Option<usize>,
}

impl LshOptions {
    /// Checks the options against the features `x` (one node per row).
    fn validate(&self, x: &Matrix) -> Result<()> {
        let n = x.rows();
        ensure_u32_nodes("LSH graph", n)?;
        if self.buckets < 2 || self.buckets % 2 != 0 {
            return Err(Error::invalid(
                "LSH buckets",
                format!("{} must be even and at least 2 (the hash is an argmax over [xR, -xR])", self.buckets),
            ));
        }
        if self.buckets > n {
            return Err(Error::invalid("LSH buckets", format!("{} buckets larger than N = {n} nodes", self.buckets)));
        }
        if self.rounds == 0 {
            return Err(Error::invalid("LSH rounds", "must be at least 1"));
        }
        if self.chunk == Some(0) {
            return Err(Error::invalid("LSH chunk", "must be at least 1 node"));
        }
        // Each round keeps N sorted hashes: bounded like the edges they lead to.
        if self.rounds.checked_mul(n).is_none_or(|entries| entries > MAX_EDGES) {
            return Err(Error::invalid(
                "LSH rounds",
                format!("{} rounds of {n} hashes exceed the limit of {MAX_EDGES} (2^31) stored hashes", self.rounds),
            ));
        }
        // At most min(N, rounds 2c) sources per node (see `Graph::lsh`): that bound is checked.
        let per_node = self.rounds.checked_mul(2 * chunk_size(n, self).min(n)).map_or(n, |d| d.min(n));
        check_edges(&format!("LSH graph on {n} nodes, {} rounds", self.rounds), n.checked_mul(per_node))?;
        ensure_finite("LSH features", x.as_slice())
    }
}

/// One standard normal from two uniforms, Box-Muller as [`crate::nn::Init::normal_one`] (kept in
/// f64): `u1 = 1 - U` in `(0, 1]`, `u2 = U`, `z = sqrt(-2 ln u1) cos(2 pi u2)`.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The rotation `R_r` of round `round`, `[D x b/2]` row-major in f64: entry `(d, k)` is draw
/// `d (b/2) + k` of `ChaCha8Rng::seed_from_u64(seed)` switched to stream `round`.
fn rotation(seed: u64, round: usize, dim: usize, half: usize) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(round as u64);
    (0..dim * half).map(|_| normal(&mut rng)).collect()
}

/// Rows per hashing task (one `[rows x D] x [D x b/2]` GEMM).
const HASH_TILE: usize = 256;

/// The bucket of one row's projections `p = x R` (`b/2` values): the argmax of `[p, -p]`, the
/// first index on ties (the positive half comes first).
fn bucket_of(p: &[f32]) -> u32 {
    let half = p.len();
    let (mut pos, mut pos_at, mut neg, mut neg_at) = (f32::NEG_INFINITY, 0, f32::NEG_INFINITY, 0);
    for (k, &v) in p.iter().enumerate() {
        if v > pos {
            (pos, pos_at) = (v, k);
        }
        if -v > neg {
            (neg, neg_at) = (-v, k);
        }
    }
    if neg > pos { (half + neg_at) as u32 } else { pos_at as u32 }
}

/// The chunk size `c`: the option, or `ceil(N / buckets)`.
fn chunk_size(n: usize, opts: &LshOptions) -> usize {
    opts.chunk.unwrap_or_else(|| n.div_ceil(opts.buckets))
}

/// One round's hashing, sorted: `order` lists the nodes by `(bucket, node)`, `position[i]` is
/// node `i`'s place in it, `runs[b] .. runs[b + 1]` are the positions of bucket `b`.
struct Round {
    order: Vec<u32>,
    position: Vec<u32>,
    runs: Vec<usize>,
    bucket: Vec<u32>,
}

impl Round {
    /// Sorts the nodes by `(bucket, node)`: a stable counting sort.
    fn sort(bucket: Vec<u32>, buckets: usize) -> Round {
        let n = bucket.len();
        let mut runs = vec![0usize; buckets + 1];
        for &b in &bucket {
            runs[b as usize + 1] += 1;
        }
        for b in 0..buckets {
            runs[b + 1] += runs[b];
        }
        let mut cursor = runs.clone();
        let (mut order, mut position) = (vec![0u32; n], vec![0u32; n]);
        for (i, &b) in bucket.iter().enumerate() {
            let p = cursor[b as usize];
            order[p] = i as u32;
            position[i] = p as u32;
            cursor[b as usize] += 1;
        }
        Round { order, position, runs, bucket }
    }

    /// The sources of node `i` in this round: the nodes of its bucket in its chunk and the
    /// previous one, a contiguous slice of `order`, ascending node ids.
    fn sources(&self, i: usize, chunk: usize) -> &[u32] {
        let b = self.bucket[i] as usize;
        let k = self.position[i] as usize / chunk;
        let lo = self.runs[b].max(k.saturating_sub(1) * chunk);
        let hi = self.runs[b + 1].min((k + 1) * chunk);
        &self.order[lo..hi]
    }
}

impl Graph {
    /// Reformer's LSH-attention graph of the rows of `features` (`[N x D]`, one node per row).
    ///
    /// Per round `r = 0 .. rounds`, with `h = buckets / 2`:
    ///
    /// ```text
    /// R_r    [D x h]   Gaussian: entry (d, k) = draw d h + k of ChaCha8Rng::seed_from_u64(seed)
    ///                  after set_stream(r), each draw one Box-Muller normal (Init::normal_one)
    /// x_i    [D]       the row scaled to unit L2 norm (a zero row stays zero)
    /// bucket_r(i)      = argmax of [x_i R_r, -x_i R_r]  (2h = buckets entries; first index on ties)
    /// ```
    ///
    /// Chunking (Reformer): sort the nodes by `(bucket_r, node id)`; with the chunk size
    /// `c` (the `chunk` option, by default `ceil(N / buckets)`) the sorted order is cut into chunks of `c` consecutive positions,
    /// `chunk_r(i) = position_r(i) / c`. Then `j -> i` iff `j == i` or, in some round,
    ///
    /// ```text
    /// bucket_r(j) == bucket_r(i)   and   chunk_r(j) in {chunk_r(i) - 1, chunk_r(i)}
    /// ```
    ///
    /// (the previous chunk of chunk 0 is none: no wrap-around). Rounds are united, duplicates
    /// removed, sources ascending. Each round adds at most the `2c` nodes of two chunks, so
    /// `in_degree(i) <= min(N, rounds * 2c)`. Not symmetric in general (a node reads the previous
    /// chunk, not the next).
    ///
    /// This function computes the projections in f32 (faer GEMMs over fixed row tiles), tiles in
    /// parallel with rayon; the result does not depend on the thread count.
    /// [`Graph::lsh_reference`] is the plain oracle in f64, and normalises as written above
    /// (Reformer's shared-QK attention hashes unit vectors). This function hashes the rows as
    /// they are: scaling a row by a positive number scales its projections and moves no argmax
    /// (a zero row stays in bucket 0), and it spares an `[N x D]` copy.
    ///
    /// ```
    /// use patchgraph::graph::{Graph, LshOptions};
    /// use patchgraph::Matrix;
    /// let x = Matrix::from_fn(16, 4, |i, d| ((i * 7 + d * 3) % 5) as f32 - 2.0);
    /// let opts = LshOptions { buckets: 4, rounds: 2, seed: 1, chunk: None };
    /// let g = Graph::lsh(&x, &opts).unwrap();
    /// // c = ceil(16 / 4) = 4: at most 2 rounds x 2 chunks x 4 = 16 sources, self included.
    /// assert!((0..16).all(|i| g.in_degree(i) <= 16 && g.has_edge(i, i)));
    /// assert_eq!(g, Graph::lsh_reference(&x, &opts).unwrap());
    /// ```
    ///
    /// Errors: `buckets` odd or below 2, or larger than `N` (named `LSH buckets`); `chunk` zero
    /// (named `LSH chunk`); `rounds` zero, or `rounds N` beyond 2^31 stored hashes (named `LSH rounds`); a non-finite feature
    /// ([`Error::NonFinite`], `LSH features`); `N` beyond the `u32` range; the bound
    /// `N min(N, rounds 2c)` on the edges beyond [`crate::limits::MAX_EDGES`].
    pub fn lsh(features: &Matrix, options: &LshOptions) -> Result<Graph> {
        options.validate(features)?;
        let (n, dim) = features.shape();
        let half = options.buckets / 2;
        let x = features;
        let rounds: Vec<Round> = (0..options.rounds)
            .map(|r| {
                let rot: Vec<f32> = rotation(options.seed, r, dim, half).into_iter().map(|v| v as f32).collect();
                let rot = MatRef::from_row_major_slice(&rot, dim, half);
                let mut bucket = vec![0u32; n];
                // P = X R by row tiles of HASH_TILE rows, one sequential GEMM each (the tiles
                // depend on N only, so the bits do not depend on the thread count); O(N D b)
                // multiply-adds at GEMM speed, O(tile b) scratch per task.
                bucket.par_chunks_mut(HASH_TILE).enumerate().for_each_init(
                    || vec![0.0f32; HASH_TILE * half],
                    |proj, (t, out)| {
                        let (r0, rows) = (t * HASH_TILE, out.len());
                        let dst = MatMut::from_row_major_slice_mut(&mut proj[..rows * half], rows, half);
                        matmul(dst, Accum::Replace, x.as_faer().subrows(r0, rows), rot, 1.0, Par::Seq);
                        for (b, p) in out.iter_mut().zip(proj.chunks_exact(half.max(1))) {
                            *b = bucket_of(p);
                        }
                    },
                );
                Round::sort(bucket, options.buckets)
            })
            .collect();
        let chunk = chunk_size(n, options);
        // At most min(N, rounds 2c) sources per node (the rounds are bounded by `validate`).
        let mut scratch: Vec<u32> = Vec::with_capacity(options.rounds.saturating_mul(2).saturating_mul(chunk).min(n));
        let graph = Graph::from_fn_unchecked(n, Topology::Lsh(*options), |i, out| {
            if let [one] = rounds.as_slice() {
                // One round: already ascending and distinct, self included.
                out.extend_from_slice(one.sources(i, chunk));
                return;
            }
            scratch.clear();
            for round in &rounds {
                scratch.extend_from_slice(round.sources(i, chunk));
            }
            scratch.sort_unstable();
            scratch.dedup();
            out.extend_from_slice(&scratch);
        });
        // The kernels visit the nodes in the first round's sorted order: the nodes of one chunk
        // read the same sources, which then stay in cache (Reformer attends in that order too).
        let order = rounds.into_iter().next().map(|r| r.order).unwrap_or_default();
        Ok(graph.with_builder_visit_order(order))
    }

    /// The same graph as [`Graph::lsh`] by plain loops in f64: projections computed as their
    /// definition reads, the argmax taken over the concatenated `[xR, -xR]`, and the edge rule
    /// applied literally to every pair `(j, i)`. The oracle for tests; `O(N^2 rounds)`. Same
    /// errors.
    pub fn lsh_reference(features: &Matrix, options: &LshOptions) -> Result<Graph> {
        options.validate(features)?;
        let (n, dim) = features.shape();
        let half = options.buckets / 2;
        let chunk = chunk_size(n, options);
        // (bucket, chunk) of every node, per round.
        let mut hashed: Vec<Vec<(usize, usize)>> = Vec::with_capacity(options.rounds);
        for r in 0..options.rounds {
            let rot = rotation(options.seed, r, dim, half);
            let mut bucket = vec![0usize; n];
            for (i, b) in bucket.iter_mut().enumerate() {
                let row: Vec<f64> = features.row(i).iter().map(|&v| f64::from(v)).collect();
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                let unit: Vec<f64> = row.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }).collect();
                let proj: Vec<f64> = (0..half).map(|k| (0..dim).map(|d| unit[d] * rot[d * half + k]).sum()).collect();
                let both: Vec<f64> = proj.iter().copied().chain(proj.iter().map(|p| -p)).collect();
                let mut best = 0;
                for k in 1..both.len() {
                    if both[k] > both[best] {
                        best = k;
                    }
                }
                *b = best;
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (bucket[i], i));
            let mut round = vec![(0, 0); n];
            for (p, &i) in order.iter().enumerate() {
                round[i] = (bucket[i], p / chunk);
            }
            hashed.push(round);
        }
        let linked = |j: usize, i: usize| {
            j == i
                || hashed.iter().any(|h| {
                    let ((bj, kj), (bi, ki)) = (h[j], h[i]);
                    bj == bi && kj <= ki && ki - kj <= 1
                })
        };
        let lists: Vec<Vec<u32>> =
            (0..n).map(|i| (0..n).filter(|&j| linked(j, i)).map(|j| j as u32).collect()).collect();
        Ok(Graph::from_lists_unchecked(&lists, Topology::Lsh(*options)))
    }
}
