//! Text on pictures: the label style (the bundled font, black) and how numbers are written.
//!
//! Numbers get three significant digits in plain notation between 0.001 and 10 000 and
//! scientific notation outside, without trailing zeros:
//!
//! ```
//! use patchgraph::viz::format_number;
//! assert_eq!(format_number(0.7342), "0.734");
//! assert_eq!(format_number(12.5), "12.5");
//! assert_eq!(format_number(3137.0), "3137");
//! assert_eq!(format_number(50.0), "50");
//! assert_eq!(format_number(0.0), "0");
//! assert_eq!(format_number(0.000123), "1.23e-4");
//! assert_eq!(format_number(2.5e6), "2.5e6");
//! ```

use plotters::prelude::{BLACK, IntoFont};
use plotters::style::TextStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::FONT_FAMILY;

/// Black text of `size` px in the bundled font, anchored at `(h, v)`.
pub(crate) fn label_style(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, f64::from(size)).into_font()).color(&BLACK).pos(Pos::new(h, v))
}

/// `v` with three significant digits (see the module docs); `"NaN"`, `"inf"`, `"-inf"` for
/// non-finite values.
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-3..4).contains(&magnitude) {
        let text = format!("{v:.2e}");
        // "1.23e-4", "2.50e6" -> "2.5e6".
        return match text.split_once('e') {
            Some((mantissa, exponent)) => format!("{}e{exponent}", trim_zeros(mantissa)),
            None => text,
        };
    }
    let decimals = (2 - magnitude).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

/// `"2.50"` -> `"2.5"`, `"3.00"` -> `"3"`, `"3137"` unchanged.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_to_three_significant_digits() {
        assert_eq!(format_number(1.0), "1");
        assert_eq!(format_number(0.001), "0.001");
        assert_eq!(format_number(9999.4), "9999");
        assert_eq!(format_number(-0.0456), "-0.0456");
        assert_eq!(format_number(123456.0), "1.23e5");
        assert_eq!(format_number(f64::NAN), "NaN");
    }
}
