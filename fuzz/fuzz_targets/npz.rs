//! `.npz` bytes through `TensorMap::from_npz_bytes`: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::checkpoint::TensorMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = TensorMap::from_npz_bytes(data, "fuzz") {
        for (name, shape) in map.shapes() {
            assert_eq!(map.get(name).expect("listed tensor").data.len(), shape.iter().product::<usize>());
        }
    }
});
