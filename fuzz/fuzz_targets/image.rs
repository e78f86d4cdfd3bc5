//! Image bytes through the decoder (`image` guesses the format): never a panic; a decoded
//! image is non-empty and within the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use patchgraph::image::{Channels, load_image_with};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("pg-fuzz-image-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(img) = load_image_with(&path, Channels::Rgb) {
        let (c, h, w) = img.shape();
        assert!(c == 3 && h > 0 && w > 0);
        assert!(patchgraph::limits::check_image_size("fuzz", h, w).is_ok());
    }
});
