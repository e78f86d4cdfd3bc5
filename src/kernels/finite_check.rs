//! `FiniteCheck`: the NaN/inf check of an attention call's inputs, run inside the kernels'
//! own parallel tasks instead of as a separate pass before them.
//!
//! An API boundary (the Python package) must refuse NaN and infinite inputs with an error that
//! names the value, never return NaN. A separate pass over `q`, `k`, `v` before the kernel reads
//! 1.8 MB at ViT-B's N = 197 on one thread while rayon's threads wait: about 4% of the dense
//! kernel's time; splitting that pass across rayon, or running it beside the kernel, measured
//! slower on 2 cores (`notes/benchmarks.md`, issue 13). Here the kernels' own tasks, already
//! running in parallel, each check a share of the rows before their GEMMs:
//!
//! ```text
//! dense forward    task (block, head h of H, query rows r0..r1): part h of H of rows r0..r1
//! dense backward   task (block, head h of H):                    part h of H of the block's rows
//! sparse forward   task (destinations a..b, or a stretch of the visiting order): their rows
//! sparse backward  pass-1 task (destinations):                   their rows
//! ```
//!
//! Always whole rows of `q`, `k`, `v` (and the backward's `dout`): long contiguous runs (a
//! head's 64 columns per row measured twice as costly, per-row overhead). The tasks of a
//! kernel partition the rows, and every array has one row per node, so each value is checked
//! exactly once, whether or not the graph reads it (a node nobody attends to, a `-inf` key
//! entry that would only mask edges). Each task folds its values into SIMD accumulators (the
//! OR of `x - x`, clear exactly when all are finite: [`super::simd::all_finite`]) and raises
//! a shared flag if they are not clear. The kernel still runs to its end (it propagates NaN
//! and never panics on it); then [`FiniteCheck::finish`] turns a raised flag into
//! [`Error::NonFinite`], located by a plain scan in the order q, k, v (, dout), row-major, and
//! the result is dropped. Nothing is checked unless the caller asked
//! ([`AttentionInputs::checked`]).
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::attention::{attend, AttentionInputs, Path, Score};
//! let g = Graph::complete(3, true);
//! let mut q = Matrix::zeros(3, 4);
//! q.row_mut(2)[1] = f32::NAN;
//! let x = Matrix::zeros(3, 4);
//! let inputs = AttentionInputs::new(&q, &x, &x, 2).checked();
//! let err = attend(&g, &Score::Dot { scale: 1.0 }, &inputs, Path::Auto, false).unwrap_err();
//! assert!(err.to_string().contains("q[2, 1]"), "{err}");
//! ```

use super::simd::{finite_fold, finite_fold_is_clear};
use crate::algebra::AttentionInputs;
use crate::error::{Error, Result, ensure_finite_block};
use crate::tensor::ColumnBlock;
use pulp::{Simd, WithSimd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The arrays of one call to check (named as the error will name them) and whether a task has
/// seen a non-finite value.
pub struct FiniteCheck<'a> {
    arrays: Vec<(&'static str, ColumnBlock<'a>)>,
    seen: AtomicBool,
}

impl<'a> FiniteCheck<'a> {
    /// The check of `inputs`' `q`, `k` and `v`, if the caller asked for one
    /// ([`AttentionInputs::checked`]); `None` otherwise. The edge bias is not part of it (it is
    /// per edge, not per node; `-inf` there masks an edge).
    pub fn of(inputs: &AttentionInputs<'a>) -> Option<Self> {
        inputs.check_finite.then(|| FiniteCheck {
            arrays: vec![("q", inputs.query), ("k", inputs.key), ("v", inputs.value)],
            seen: AtomicBool::new(false),
        })
    }

    /// The same check with one more `[N x H*d]` array (the backward's `dout`).
    pub fn and(mut self, name: &'static str, block: ColumnBlock<'a>) -> Self {
        self.arrays.push((name, block));
        self
    }

    /// Checks the whole rows of every array that fall to part `part` of `parts` tasks sharing
    /// rows `rows` ([`share`]): a dense task (one head of a query tile) checks its share of
    /// the tile's rows at every head's columns, so that each row is one long contiguous run.
    pub fn share(&self, rows: std::ops::Range<usize>, part: usize, parts: usize) {
        self.rows(share(rows, part, parts));
    }

    /// Checks whole rows `rows` of every array (a sparse task's destinations), inside the
    /// caller's SIMD dispatch.
    #[inline(always)]
    pub fn rows_within<S: Simd>(&self, simd: S, rows: impl Iterator<Item = usize> + Clone) {
        Rows { check: self, rows }.with_simd(simd)
    }

    /// [`Self::rows_within`] with its own dispatch.
    pub fn rows(&self, rows: impl Iterator<Item = usize> + Clone) {
        pulp::Arch::new().dispatch(Rows { check: self, rows });
    }

    /// `Ok` if no task saw a non-finite value; else the first one, located by [`locate`].
    pub fn finish(self) -> Result<()> {
        if self.seen.load(Ordering::Relaxed) { locate(&self.arrays) } else { Ok(()) }
    }
}

/// The first NaN or infinity of `arrays`, in their order, each row-major, as
/// [`Error::NonFinite`] naming it `name[row, column]` (`position` flat within the array).
pub fn locate(arrays: &[(&str, ColumnBlock<'_>)]) -> Result<()> {
    for &(name, block) in arrays {
        if let Err(Error::NonFinite { position, value, .. }) = ensure_finite_block(name, block) {
            let (r, c) = (position / block.cols(), position % block.cols());
            return Err(Error::NonFinite { what: format!("{name}[{r}, {c}]"), position, value });
        }
    }
    Ok(())
}

/// Part `part` of `parts` consecutive, near-equal parts of `rows` (some empty when there are
/// more parts than rows); the parts cover `rows` exactly once.
///
/// ```
/// use patchgraph::kernels::finite_check::share;
/// let parts: Vec<_> = (0..4).map(|p| share(10..17, p, 4)).collect();
/// assert_eq!(parts, [10..11, 11..13, 13..15, 15..17]);
/// assert_eq!(share(0..2, 0, 3), 0..0);
/// ```
pub fn share(rows: std::ops::Range<usize>, part: usize, parts: usize) -> std::ops::Range<usize> {
    let (len, parts) = (rows.len(), parts.max(1));
    rows.start + len * part / parts..rows.start + len * (part + 1) / parts
}

/// One task's share: whole rows `rows` of every array, folded into one set of accumulators.
struct Rows<'c, 'a, I> {
    check: &'c FiniteCheck<'a>,
    rows: I,
}

impl<I: Iterator<Item = usize> + Clone> WithSimd for Rows<'_, '_, I> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Rows { check, rows } = self;
        let mut acc = [simd.splat_f32s(0.0); 2];
        for (_, block) in &check.arrays {
            for r in rows.clone() {
                finite_fold(simd, block.row(r), &mut acc);
            }
        }
        if !finite_fold_is_clear(simd, acc) {
            check.seen.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{Path, Score, attend, attend_backward, auto_path};
    use crate::graph::Graph;
    use crate::kernels::sparse::attend_sparse_with;
    use crate::tensor::Matrix;

    const N: usize = 17;
    const HEADS: usize = 2;
    const D: usize = 3;

    /// q, k, v `[17 x 2*3]`, finite.
    fn inputs() -> [Matrix; 3] {
        [1, 2, 3].map(|s| Matrix::from_fn(N, HEADS * D, |i, j| (((i * 7 + j * 3 + s) % 11) as f32 - 5.0) * 0.1))
    }

    /// Every kind of graph the kernels split differently, with the path `Auto` takes for it:
    /// a complete graph (dense tiles), a batch of two complete blocks, a dense-enough graph run
    /// as a mask over the complete graph, a sparse graph with a node nobody reads and a node
    /// that reads nobody (destination ranges), the same with a visiting order.
    fn graphs() -> Vec<(&'static str, Graph)> {
        let batch = Graph::disjoint_union(&[Graph::complete(7, true), Graph::complete(10, true)]).unwrap();
        assert!(batch.complete_self_loops().is_some(), "a batch of complete blocks");
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for i in 0..N {
            for j in 0..N {
                if (i + 2 * j) % 3 != 0 {
                    src.push(j);
                    dst.push(i);
                }
            }
        }
        let masked = Graph::from_edge_index(N, &src, &dst).unwrap();
        assert_eq!(auto_path(&masked, false, false), Path::Dense, "runs as a mask");
        // Nodes 1..=15 read i - 1 and i + 2 (sources up to 15 only): node 0 and node 16 read
        // nobody, and nobody reads node 16.
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for i in 1..N - 1 {
            for j in [i - 1, i + 2] {
                if j < N - 1 {
                    src.push(j);
                    dst.push(i);
                }
            }
        }
        let sparse = Graph::from_edge_index(N, &src, &dst).unwrap();
        assert_eq!(sparse.in_degree(0), 0, "node 0 reads nobody");
        assert!((0..N).all(|i| !sparse.incoming(i).any(|j| j == N - 1)), "node 16 is read by nobody");
        let order: Vec<u32> = (0..N as u32).rev().collect();
        let ordered = sparse.clone().with_visit_order(order).unwrap();
        vec![
            ("complete", Graph::complete(N, true)),
            ("batch", batch),
            ("masked", masked),
            ("sparse", sparse),
            ("ordered", ordered),
        ]
    }

    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    /// The error must be `NonFinite` naming exactly `name[r, c]` and carrying `bad`.
    fn assert_names(err: Error, name: &str, r: usize, c: usize, bad: f32, context: &str) {
        match err {
            Error::NonFinite { what, position, value } => {
                assert_eq!(what, format!("{name}[{r}, {c}]"), "{context}");
                assert_eq!(position, r * HEADS * D + c, "{context}");
                assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()), "{context}: {value}");
            }
            other => panic!("{context}: {other}"),
        }
    }

    /// One NaN, +inf or -inf at every position of q, k and v, on every kind of graph, on one
    /// and on three threads: the checked forward refuses each, naming it. A -inf key entry whose
    /// products only mask edges and a value nobody reads (node 16 of the sparse graphs) are
    /// refused as well: the check reads every row, not only what the kernel uses.
    #[test]
    fn checked_forward_names_every_bad_value() {
        let score = Score::Dot { scale: 0.5 };
        for threads in [1, 3] {
            for (name, g) in graphs() {
                for (a, array) in ["q", "k", "v"].into_iter().enumerate() {
                    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                        for r in 0..N {
                            for c in 0..HEADS * D {
                                let mut x = inputs();
                                x[a].row_mut(r)[c] = bad;
                                let inputs = AttentionInputs::new(&x[0], &x[1], &x[2], HEADS).checked();
                                let err = on_threads(threads, || attend(&g, &score, &inputs, Path::Auto, false))
                                    .expect_err("refused");
                                let context = format!("{name}, {threads} threads, {array}[{r}, {c}] = {bad}");
                                assert_names(err, array, r, c, bad, &context);
                            }
                        }
                    }
                }
            }
        }
    }

    /// More heads than rows in a tile (3 nodes, 4 heads of width 1: some tasks' shares are
    /// empty): every value is still checked, forward and backward.
    #[test]
    fn checked_with_more_heads_than_rows() {
        let g = Graph::complete(3, true);
        let score = Score::Dot { scale: 1.0 };
        let clean = Matrix::from_fn(3, 4, |i, j| (i + j) as f32 * 0.25);
        let fwd = attend(&g, &score, &AttentionInputs::new(&clean, &clean, &clean, 4), Path::Auto, false).unwrap();
        for (a, array) in ["q", "k", "v"].into_iter().enumerate() {
            for r in 0..3 {
                for c in 0..4 {
                    let mut x = [clean.clone(), clean.clone(), clean.clone()];
                    x[a].row_mut(r)[c] = f32::INFINITY;
                    let inputs = AttentionInputs::new(&x[0], &x[1], &x[2], 4).checked();
                    let what = format!("{array}[{r}, {c}]");
                    match attend(&g, &score, &inputs, Path::Auto, false) {
                        Err(Error::NonFinite { what: w, .. }) => assert_eq!(w, what),
                        other => panic!("forward, {what}: {other:?}"),
                    }
                    match attend_backward(&g, &score, &inputs, &fwd.log_sum_exp, &clean) {
                        Err(Error::NonFinite { what: w, .. }) => assert_eq!(w, what),
                        other => panic!("backward, {what}: {other:?}"),
                    }
                }
            }
        }
    }

    /// The hub kernel's rows (in-degree at least the hub threshold, reduced by `hub`) are
    /// checked by the destination ranges that hold them.
    #[test]
    fn checked_forward_covers_hub_rows() {
        let g = Graph::complete(N, true);
        let score = Score::Dot { scale: 0.5 };
        for (a, array) in ["q", "k", "v"].into_iter().enumerate() {
            for r in 0..N {
                let mut x = inputs();
                x[a].row_mut(r)[4] = f32::NAN;
                let inputs = AttentionInputs::new(&x[0], &x[1], &x[2], HEADS).checked();
                let err = attend_sparse_with(&g, &score, &inputs, false, 4, 5).expect_err("refused");
                assert_names(err, array, r, 4, f32::NAN, &format!("hubs, {array}[{r}, 4]"));
            }
        }
    }

    /// The same for the backward, `dout` included: the dense backward (complete graphs with
    /// self-loops, dot score) and the edge passes (every other graph, and GAT's score).
    #[test]
    fn checked_backward_names_every_bad_value() {
        for threads in [1, 3] {
            for (name, g) in graphs() {
                for score in
                    [Score::Dot { scale: 0.5 }, Score::GatV2 { attention: vec![0.3; HEADS * D], negative_slope: 0.2 }]
                {
                    let clean = inputs();
                    let fwd = attend(
                        &g,
                        &score,
                        &AttentionInputs::new(&clean[0], &clean[1], &clean[2], HEADS),
                        Path::Auto,
                        false,
                    )
                    .unwrap();
                    let dout = Matrix::from_fn(N, HEADS * D, |i, j| ((i + j) % 5) as f32 - 2.0);
                    for (a, array) in ["q", "k", "v", "dout"].into_iter().enumerate() {
                        for bad in [f32::NAN, f32::NEG_INFINITY] {
                            for r in 0..N {
                                for c in 0..HEADS * D {
                                    let (mut x, mut g_out) = (inputs(), dout.clone());
                                    if a == 3 {
                                        g_out.row_mut(r)[c] = bad
                                    } else {
                                        x[a].row_mut(r)[c] = bad
                                    }
                                    let inputs = AttentionInputs::new(&x[0], &x[1], &x[2], HEADS).checked();
                                    let err = on_threads(threads, || {
                                        attend_backward(&g, &score, &inputs, &fwd.log_sum_exp, &g_out)
                                    })
                                    .expect_err("refused");
                                    let context =
                                        format!("{name}, {score:?}, {threads} threads, {array}[{r}, {c}] = {bad}");
                                    assert_names(err, array, r, c, bad, &context);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// On finite inputs the check changes nothing: the same bits as unchecked, forward and
    /// backward, on every graph and every path.
    #[test]
    fn checked_finite_inputs_give_the_same_bits() {
        let x = inputs();
        let score = Score::Dot { scale: 0.5 };
        let dout = Matrix::from_fn(N, HEADS * D, |i, j| ((i * 3 + j) % 5) as f32 - 2.0);
        for (name, g) in graphs() {
            let plain = AttentionInputs::new(&x[0], &x[1], &x[2], HEADS);
            let checked = plain.checked();
            for path in [Path::Auto, Path::Sparse, Path::Reference] {
                let a = attend(&g, &score, &plain, path, false).unwrap();
                let b = attend(&g, &score, &checked, path, false).unwrap();
                assert_eq!(a, b, "{name}, {path:?}");
            }
            let fwd = attend(&g, &score, &plain, Path::Auto, false).unwrap();
            let a = attend_backward(&g, &score, &plain, &fwd.log_sum_exp, &dout).unwrap();
            let b = attend_backward(&g, &score, &checked, &fwd.log_sum_exp, &dout).unwrap();
            assert_eq!(a, b, "{name}, backward");
        }
    }

    /// Unchecked inputs are not scanned (the check is the caller's choice): NaN in, no error.
    /// The reference path checks before its loops when asked.
    #[test]
    fn the_check_is_opt_in_and_the_reference_path_has_it_too() {
        let mut x = inputs();
        x[1].row_mut(5)[2] = f32::NAN;
        let g = Graph::complete(N, true);
        let score = Score::Dot { scale: 0.5 };
        let plain = AttentionInputs::new(&x[0], &x[1], &x[2], HEADS);
        assert!(attend(&g, &score, &plain, Path::Auto, false).is_ok());
        let err = attend(&g, &score, &plain.checked(), Path::Reference, false).unwrap_err();
        assert_names(err, "k", 5, 2, f32::NAN, "reference");
    }
}
