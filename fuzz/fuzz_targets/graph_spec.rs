//! Graph spec strings, parsed and built on a 5 x 6 grid (with and without a class token):
//! never a panic; every built edge is in range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::Matrix;
use patchgraph::graph::GraphSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = text.parse::<GraphSpec>() else { return };
    let features = Matrix::from_fn(30, 4, |i, j| ((i * 7 + j * 3) % 11) as f32);
    for class_token in [false, true] {
        if let Ok(g) = spec.build(5, 6, Some(&features), class_token) {
            let n = g.num_nodes();
            for i in 0..n {
                assert!(g.incoming(i).all(|j| j < n));
            }
        }
    }
});
