//! safetensors bytes through `TensorMap`: never a panic; a load is of consistent tensors.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::checkpoint::TensorMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = TensorMap::from_safetensors_bytes(data, "fuzz") {
        for (name, shape) in map.shapes() {
            let t = map.get(name).expect("listed tensor");
            assert_eq!(t.data.len(), shape.iter().product::<usize>());
        }
    }
});
