//! `.npy` bytes through `read_npy`: never a panic; shape and data agree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = patchgraph::checkpoint::read_npy(data, "fuzz") {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
    }
});
