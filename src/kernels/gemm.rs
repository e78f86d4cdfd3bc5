//! `xwt_into`: the GEMM of every linear layer, `y (+)= x w^T` (PyTorch's `[out, in]` weight),
//! parallel over fixed tiles of output rows and columns.
//!
//! ```text
//! y [m x n] (row-major) (+)= x [m x k] w[n x k]^T      tasks: rows r0 .. r0 + 512 x columns n0 .. n0 + 96, one faer GEMM each
//! ```
//!
//! ```
//! use faer::{Accum, MatRef};
//! use patchgraph::kernels::gemm::xwt_into;
//! let x = [1.0, 2.0, 3.0, 4.0]; // [2 x 2]
//! let w = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0]; // [3 x 2]
//! let mut y = [0.0; 6];
//! xwt_into(&mut y, Accum::Replace, MatRef::from_row_major_slice(&x, 2, 2), MatRef::from_row_major_slice(&w, 3, 2));
//! assert_eq!(y, [1.0, 3.0, 4.0, 3.0, 7.0, 8.0]);
//! ```

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// GEMMs below this many multiply-adds run on one thread (rayon's overhead dominates).
const PARALLEL_FLOPS: usize = 1 << 20;

/// Output columns per task of a split GEMM: one 96-wide micro-kernel panel of faer's AVX-512 f32
/// GEMM (6 x 16 lanes), so no task runs the slower narrow edge kernels when the width is a
/// multiple of 96 (every ViT width is: 192, 384, 576, 768, 1152, ..., 3072, 4096).
const COLUMN_BLOCK: usize = 96;

/// Rows per task of a split GEMM: a product with a narrow output (the ViT's `D = 64` columns,
/// one column block) is split along its rows instead, so that it runs on every thread.
const ROW_BLOCK: usize = 512;

/// Products with at least this many column blocks are not split along rows: each extra row
/// tile packs the same weight panel again (ViT-B at batch 8, `[1576 x 768] x [768 x 768]`:
/// 1735 ms per batch with column blocks only, 1925 ms with 512-row tiles as well).
const ROW_SPLIT_BELOW_COLUMN_BLOCKS: usize = 4;

/// `y (+)= x w^T` with `y [m x n]` a row-major slice, `x [m x k]`, `w [n x k]`.
///
/// Large products are split into tiles of [`COLUMN_BLOCK`] output columns (and, when there
/// are fewer than [`ROW_SPLIT_BELOW_COLUMN_BLOCKS`] of those, of [`ROW_BLOCK`] rows), one rayon task per tile, each a sequential faer GEMM: no spin barrier inside the
/// GEMM (faer's parallel GEMM synchronises its threads at every packed panel, which costs most
/// of a small product and stalls when the machine is shared), and the tiles of a narrow product
/// (`n <= 96`: every `[6400 x 64]` output of a small ViT) still give every thread work. The
/// tiles depend only on the shape, never on the thread count, so the bits do not either.
pub fn xwt_into(y: &mut [f32], accum: Accum, x: MatRef<'_, f32>, w: MatRef<'_, f32>) {
    xwt_tiles(y, Start::Accum(accum), x, w)
}

/// What a tile of `y` starts from.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Its current values (`Accum::Add`) or nothing (`Accum::Replace`).
    Accum(Accum),
    /// The bias row broadcast.
    Bias(&'a [f32]),
}

/// `y = x w^T + b` (the bias broadcast to every row) in a new row-major `[m x n]` buffer,
/// which is never zeroed first: each tile writes its part of the bias and accumulates its GEMM
/// onto it while it is in cache, on the tile's own thread (no serial broadcast pass over `y`).
///
/// # Panics
/// If the shapes disagree (as [`xwt_into`]) or `b.len() != n`.
pub fn xwt_bias(x: MatRef<'_, f32>, w: MatRef<'_, f32>, b: &[f32]) -> Vec<f32> {
    assert_eq!(b.len(), w.nrows(), "xwt_bias: {} biases for {} outputs", b.len(), w.nrows());
    assert_eq!(
        w.ncols(),
        x.ncols(),
        "xwt_bias: x is [{} x {}], w is [{} x {}]",
        x.nrows(),
        x.ncols(),
        w.nrows(),
        w.ncols()
    );
    let len = x.nrows() * w.nrows();
    let mut y: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: `y` owns `len` floats of capacity; with `Start::Bias` every tile writes its whole
    // `rows x width` block (the bias rows) through raw pointers before the GEMM reads it, and the
    // tiles cover `[m x n]` exactly, so after the call all `len` floats are initialised.
    unsafe {
        xwt_tiles_raw(y.as_mut_ptr(), len, Start::Bias(b), x, w);
        y.set_len(len);
    }
    y
}

fn xwt_tiles(y: &mut [f32], start: Start<'_>, x: MatRef<'_, f32>, w: MatRef<'_, f32>) {
    let (m, n) = (x.nrows(), w.nrows());
    assert_eq!(y.len(), m * n, "xwt_into: y holds {} values, not {m} x {n}", y.len());
    // SAFETY: `y` is a live, initialised, exclusively borrowed buffer of `m * n` floats.
    unsafe { xwt_tiles_raw(y.as_mut_ptr(), y.len(), start, x, w) }
}

/// The tiled product into the `len = m * n` floats at `y`.
///
/// # Safety
/// `y` must be valid for writes of `len` floats and not accessed elsewhere during the call; with
/// `Start::Accum(Accum::Add)` they must be initialised (with `Start::Bias` or
/// `Start::Accum(Accum::Replace)` every float is written before it is read).
unsafe fn xwt_tiles_raw(y: *mut f32, len: usize, start: Start<'_>, x: MatRef<'_, f32>, w: MatRef<'_, f32>) {
    use rayon::prelude::*;
    let (m, k, n) = (x.nrows(), x.ncols(), w.nrows());
    assert_eq!(w.ncols(), k, "xwt_into: x is [{m} x {k}], w is [{} x {}]", w.nrows(), w.ncols());
    assert_eq!(len, m * n, "xwt_into: y holds {len} values, not {m} x {n}");
    let col_blocks = n.div_ceil(COLUMN_BLOCK);
    let small = m * k * n < PARALLEL_FLOPS;
    let row_block = if small || col_blocks >= ROW_SPLIT_BELOW_COLUMN_BLOCKS { m.max(1) } else { ROW_BLOCK };
    let row_blocks = m.div_ceil(row_block);
    let tiles = row_blocks * col_blocks;
    let y_ptr = SendPtr(y);
    let tile = |t: usize| {
        let (r0, n0) = ((t / col_blocks) * row_block, (t % col_blocks) * COLUMN_BLOCK);
        let (rows, width) = (row_block.min(m - r0), COLUMN_BLOCK.min(n - n0));
        let y_ptr = &y_ptr;
        let accum = match start {
            Start::Accum(accum) => accum,
            Start::Bias(b) => {
                let src = &b[n0..n0 + width];
                for r in r0..r0 + rows {
                    // SAFETY: row `r` of this tile, `y[r * n + n0 .. r * n + n0 + width]`: inside
                    // the `[m x n]` buffer (r < m, n0 + width <= n), written by this tile only,
                    // through a raw copy (the floats may not be initialised yet), before the
                    // tile's view is made below.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), y_ptr.0.add(r * n + n0), width) };
                }
                Accum::Add
            }
        };
        // SAFETY: `y` is a live row-major `[m x n]` buffer borrowed mutably for this whole
        // call; tile `t` writes only rows `r0 .. r0 + rows` x columns `n0 .. n0 + width` of it,
        // disjoint from every other tile, and the view's strides (row stride `n`, column
        // stride 1) stay inside the buffer: its last element is `(r0 + rows - 1) * n + n0 +
        // width - 1 < m * n`.
        let yb = unsafe { MatMut::from_raw_parts_mut(y_ptr.0.add(r0 * n + n0), rows, width, n as isize, 1) };
        matmul(yb, accum, x.subrows(r0, rows), w.subrows(n0, width).transpose(), 1.0, Par::Seq);
    };
    if small || tiles <= 1 || rayon::current_num_threads() == 1 {
        // The same tiles in sequence (identical arithmetic per tile).
        (0..tiles).for_each(tile);
    } else {
        (0..tiles).into_par_iter().for_each(tile);
    }
}

/// A raw pointer that rayon tasks may share (each writes a disjoint tile; see `xwt_into`).
struct SendPtr(*mut f32);
// SAFETY: the pointer is only dereferenced through disjoint tiles (see `xwt_into`).
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `xwt_bias` (a buffer never zeroed) equals the f64 product plus the bias and gives the
    /// bits of broadcasting the bias first and accumulating with `xwt_into`, for shapes with
    /// partial tiles and for empty ones.
    #[test]
    fn bias_tiles_equal_the_broadcast_then_accumulate() {
        for (m, k, n) in [(0, 3, 4), (5, 3, 0), (5, 0, 4), (5, 3, 4), (200, 64, 97), (1100, 64, 64), (197, 192, 576)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 3.0).collect();
            let (xm, wm) = (MatRef::from_row_major_slice(&x, m, k), MatRef::from_row_major_slice(&w, n, k));
            let got = xwt_bias(xm, wm, &b);
            let mut want: Vec<f32> = (0..m * n).map(|e| b[e % n]).collect();
            xwt_into(&mut want, Accum::Add, xm, wm);
            assert_eq!(got, want, "{m}x{k}x{n}");
            for (e, g) in got.iter().enumerate() {
                let exact = (0..k).map(|c| x[(e / n) * k + c] as f64 * w[(e % n) * k + c] as f64).sum::<f64>()
                    + b[e % n] as f64;
                assert!((*g as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0), "{m}x{k}x{n} at {e}");
            }
        }
    }

    /// The tiles (several column blocks and row blocks, partial last ones) on 1 and 2 threads equal a plain
    /// f64 triple loop, with the same bits on both thread counts; `Accum::Add` adds onto `y`.
    #[test]
    fn blocks_match_the_triple_loop_on_any_thread_count() {
        for (m, k, n) in
            [(5, 3, 4), (200, 64, 97), (300, 65, 200), (64, 96, 576), (1100, 64, 64), (1030, 33, 200), (1100, 64, 400)]
        {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|e| (0..k).map(|c| x[(e / n) * k + c] as f64 * w[(e % n) * k + c] as f64).sum::<f64>() + 1.0)
                .collect();
            let outs: Vec<Vec<f32>> = [1, 2]
                .iter()
                .map(|&t| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                    let mut y = vec![1.0f32; m * n];
                    pool.install(|| {
                        xwt_into(
                            &mut y,
                            Accum::Add,
                            MatRef::from_row_major_slice(&x, m, k),
                            MatRef::from_row_major_slice(&w, n, k),
                        )
                    });
                    y
                })
                .collect();
            for (got, want) in outs[0].iter().zip(&want) {
                assert!((*got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "{m}x{k}x{n}: {got} vs {want}");
            }
            assert_eq!(outs[0], outs[1], "{m}x{k}x{n}: depends on the thread count");
        }
    }
}
