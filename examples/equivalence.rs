//! ViT attention is graph attention on the complete graph: shown on a real photo.
//!
//! 1. A photo (default `data/images/chelsea.png`) goes through timm's eval transform and is cut
//!    into 16 x 16 patches: 196 nodes of 768 pixel features.
//! 2. A ViT-Ti-sized stem (patch embedding, class token, position embedding; seeded random
//!    weights: this example is about the algebra, not a trained model) makes 197 tokens of width 192.
//! 3. One set of attention weights (timm's `qkv`/`proj` layout, 3 heads) runs three ways:
//!    as matrix self-attention `softmax(QK^T/sqrt(d))V` written out with faer, as GAT on the
//!    materialised complete graph (the sparse kernel, edge by edge), and on the dense kernel.
//!    The largest differences are printed.
//! 4. The same weights run on sparse patch graphs (grid, windows, k-NN; the class token linked
//!    to every patch), printing edges and time for each.
//!
//! Run: `cargo run --release --example equivalence [IMAGE]`

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use patchgraph::checkpoint::TensorMap;
use patchgraph::graph::GraphSpec;
use patchgraph::image::{ImageTransform, patch_grid, patchify};
use patchgraph::nn::{AttentionConfig, ForwardOptions, GraphAttention, Init, Linear};
use patchgraph::{Graph, Matrix};
use std::time::Instant;

const PATCH: usize = 16;
const DIM: usize = 192;
const HEADS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/data/images/chelsea.png").to_string();
    let path = std::env::args().nth(1).unwrap_or(default);

    // 1. Photo -> patch nodes.
    let image = ImageTransform::default().apply_path(&path)?;
    let (_, h, w) = image.shape();
    let (rows, cols) = patch_grid(h, w, PATCH)?;
    let patches = patchify(&image, PATCH)?; // [196 x 768]
    println!("{path}: {w} x {h} after timm's eval transform -> {rows} x {cols} patches of {} features", patches.cols());

    // 2. ViT stem: tokens = [cls; patches W^T + b] + pos   [197 x 192]
    let mut init = Init::new(0);
    let embed = Linear::torch_init(&mut init, patches.cols(), DIM, true);
    let cls = init.trunc_normal(DIM, 0.02);
    let pos = init.trunc_normal((rows * cols + 1) * DIM, 0.02);
    let embedded = embed.forward(&patches)?;
    let tokens = Matrix::from_fn(rows * cols + 1, DIM, |i, j| {
        pos[i * DIM + j] + if i == 0 { cls[j] } else { embedded.get(i - 1, j) }
    });
    let n = tokens.rows();

    // 3. One set of attention weights, three ways.
    let attn = GraphAttention::new(AttentionConfig::timm(DIM, HEADS), &mut init)?;
    let matrices = matrix_self_attention(&attn, &tokens)?;
    let complete = Graph::complete(n, true);
    let as_gat = attn.forward_with(&complete.materialize(), &tokens, &ForwardOptions::default())?.out;
    let dense = attn.forward(&complete, &tokens)?;
    let scale = matrices.max_abs();
    println!("\nViT attention = GAT on the complete graph ({n} nodes, {} edges):", complete.num_edges());
    println!(
        "  max |GAT (sparse kernel) - matrix self-attention| = {:.2e}   (output scale {scale:.2e})",
        as_gat.max_abs_diff(&matrices)
    );
    println!("  max |dense kernel        - matrix self-attention| = {:.2e}", dense.max_abs_diff(&matrices));

    // 4. The same weights on sparse patch graphs (class token = global node).
    // "change" = max |out - out on the complete graph| / max |out on the complete graph|
    println!("\n{:<12} {:>8} {:>10} {:>11} {:>8}  path", "graph", "edges", "mean deg", "time (ms)", "change");
    for spec in [
        "complete",
        "grid4:1",
        "grid8:1",
        "grid8:2",
        "window:7",
        "nat:7",
        "knn:9",
        "fknn:9:1",
        "fknn-cos:9:2",
        "random:9:0",
    ] {
        let spec: GraphSpec = spec.parse()?;
        let graph = spec.build(rows, cols, Some(&embedded), true)?;
        let ms = median_ms(9, || attn.forward(&graph, &tokens).map(|_| ()))?;
        let out = attn.forward(&graph, &tokens)?;
        let path = if graph.is_complete() { "dense" } else { "sparse" };
        println!(
            "{:<12} {:>8} {:>10.1} {:>11.3} {:>8.3}  {path}",
            spec.to_string(),
            graph.num_edges(),
            graph.num_edges() as f64 / n as f64,
            ms,
            out.max_abs_diff(&dense) / scale
        );
    }
    Ok(())
}

/// `softmax(Q K^T / sqrt(d)) V` per head, then `proj`, written as matrices with faer, from the
/// layer's own tensors under timm's names (`qkv.weight [3D, D]`, `qkv.bias`, `proj.*`).
fn matrix_self_attention(attn: &GraphAttention, x: &Matrix) -> patchgraph::Result<Matrix> {
    let mut tensors = TensorMap::default();
    attn.save(&mut tensors, "")?;
    let qkv = Linear::load(&mut tensors, "qkv", DIM, 3 * DIM, true)?.forward(x)?; // [N x 3D]
    let proj = Linear::load(&mut tensors, "proj", DIM, DIM, true)?;
    let (n, d) = (x.rows(), DIM / HEADS);
    let mut heads_out = Matrix::zeros(n, DIM);
    for h in 0..HEADS {
        let q = qkv.as_faer().submatrix(0, h * d, n, d);
        let k = qkv.as_faer().submatrix(0, DIM + h * d, n, d);
        let v = qkv.as_faer().submatrix(0, 2 * DIM + h * d, n, d);
        let mut s = Mat::<f32>::zeros(n, n);
        matmul(s.as_mut(), Accum::Replace, q, k.transpose(), 1.0 / (d as f32).sqrt(), Par::Seq);
        for i in 0..n {
            let m = (0..n).map(|j| s[(i, j)]).fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = (0..n).map(|j| (s[(i, j)] - m).exp()).sum();
            for j in 0..n {
                s[(i, j)] = (s[(i, j)] - m).exp() / z;
            }
        }
        let mut o = Mat::<f32>::zeros(n, d);
        matmul(o.as_mut(), Accum::Replace, s.as_ref(), v, 1.0, Par::Seq);
        for i in 0..n {
            for c in 0..d {
                heads_out.row_mut(i)[h * d + c] = o[(i, c)];
            }
        }
    }
    proj.forward(&heads_out)
}

/// Median wall time of `runs` calls, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut() -> patchgraph::Result<()>) -> patchgraph::Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}
