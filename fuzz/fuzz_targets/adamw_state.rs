//! An optimiser state (safetensors bytes) through `AdamW::load_state`: never a panic or an
//! unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::checkpoint::TensorMap;
use patchgraph::train::AdamW;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = TensorMap::from_safetensors_bytes(data, "fuzz") {
        let _ = AdamW::new(1e-3, 0.0).load_state(map, "fuzz");
    }
});
