//! ViT config JSON: never a panic; a config that validates implies sizes within the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::nn::VitConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<VitConfig>(data) {
        if config.validate().is_ok() {
            assert!(config.num_tokens() <= patchgraph::limits::MAX_TOKENS);
        }
    }
});
