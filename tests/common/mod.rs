//! What the whole-model tests against timm share: a fixture's input batch as images, a named
//! output as a matrix, and the scale-relative comparison (`tests/vit.rs`, `tests/vit_timm.rs`).

use patchgraph::Matrix;
use patchgraph::checkpoint::TensorMap;
use patchgraph::image::ChwImage;

/// The input batch `input [B, C, H, W]` of `DIR/NAME.io.safetensors` as images, and the rest
/// of the file (the reference outputs).
#[allow(dead_code)] // tests/pth.rs names its files otherwise
pub fn io(dir: &str, name: &str) -> (Vec<ChwImage>, TensorMap) {
    io_file(&format!("{dir}/{name}.io.safetensors"))
}

/// [`io`] of the safetensors file at `path`.
pub fn io_file(path: &str) -> (Vec<ChwImage>, TensorMap) {
    let mut map = TensorMap::load_safetensors(path).unwrap();
    let input = map.take_any("input").unwrap();
    let [b, c, h, w] = input.shape[..] else { panic!("input is not [B, C, H, W]") };
    let images = (0..b)
        .map(|i| ChwImage::new(c, h, w, input.data[i * c * h * w..(i + 1) * c * h * w].to_vec()).unwrap())
        .collect();
    (images, map)
}

/// Tensor `name` of `map` as a matrix of its last dimension's width.
pub fn matrix(map: &TensorMap, name: &str) -> Matrix {
    let t = map.get(name).unwrap();
    let d = *t.shape.last().unwrap();
    Matrix::from_vec(t.data.len() / d, d, t.data.clone()).unwrap()
}

/// `max |ours - theirs| <= tol * max |theirs|`, and the reference not all zeros.
pub fn assert_close(what: &str, ours: &Matrix, theirs: &Matrix, tol: f32) {
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let scale = theirs.max_abs();
    let diff = ours.max_abs_diff(theirs);
    assert!(scale > 0.0, "{what}: reference is all zeros, the test would be blind");
    assert!(diff <= tol * scale, "{what}: max diff {diff:e} > {tol:e} * scale {scale:e}");
}
