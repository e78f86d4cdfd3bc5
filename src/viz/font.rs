//! The bundled font: DejaVu Sans, compiled in and registered once with plotters' `ab_glyph`
//! text renderer, so that labels never depend on the system's fonts.
//!
//! `assets/DejaVuSans.ttf` (Bitstream Vera / DejaVu license; provenance in `assets/README.md`)
//! is included with `include_bytes!` and registered under the family name [`FONT_FAMILY`]
//! the first time a picture is drawn. The PNG backend rasterises its glyphs; the SVG backend
//! only measures text with it and writes `font-family="sans-serif"`, leaving the glyphs to the
//! viewer.
//!
//! ```
//! use patchgraph::viz::{FONT_FAMILY, register_bundled_font};
//! register_bundled_font().unwrap(); // idempotent: later calls do nothing
//! register_bundled_font().unwrap();
//! assert_eq!(FONT_FAMILY, "sans-serif");
//! ```

use std::sync::OnceLock;

use plotters::style::FontStyle;

use crate::error::{Error, Result};

/// The family name the bundled font is registered under: plotters' default family, so that
/// every text style (`("sans-serif", size)`) finds it.
pub const FONT_FAMILY: &str = "sans-serif";

/// DejaVu Sans 2.37 (regular), the bytes of `assets/DejaVuSans.ttf`.
pub(crate) static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the bundled font with plotters (once per process; later calls return the first
/// call's outcome).
///
/// Errors ([`Error::Draw`]) only if the bundled bytes were not a font `ab_glyph` can read.
pub fn register_bundled_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Draw {
            what: "the bundled font assets/DejaVuSans.ttf".into(),
            reason: "ab_glyph could not parse it".into(),
        })
    }
}
