//! IDX bytes (raw or gzipped) through `read_idx_bytes`: never a panic; dims and data agree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = patchgraph::data::read_idx_bytes(data, "fuzz") {
        assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
    }
});
