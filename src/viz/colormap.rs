//! Colour maps for heat maps: matplotlib's `inferno` and `viridis` as small tables with linear
//! interpolation.
//!
//! Each map is matplotlib's 256-entry table sampled at 17 evenly spaced positions (entries
//! `round(255 i / 16)`, `i = 0..=16`, as 8-bit RGB) and interpolated linearly in RGB between
//! them: within one 8-bit step of the full table, and dependency-free. Both maps are
//! perceptually uniform and their lightness grows with the value, so a brighter colour always
//! means a larger value (also in grey print).
//!
//! ```
//! use patchgraph::viz::Colormap;
//! assert_eq!(Colormap::Inferno.rgb(0.0), [0, 0, 4]); // near black
//! assert_eq!(Colormap::Inferno.rgb(1.0), [252, 255, 164]); // pale yellow
//! assert_eq!(Colormap::Viridis.rgb(0.5), [33, 145, 140]); // teal
//! // Out-of-range values are clamped, NaN maps to the low end.
//! assert_eq!(Colormap::Viridis.rgb(7.0), Colormap::Viridis.rgb(1.0));
//! assert_eq!(Colormap::Viridis.rgb(f32::NAN), Colormap::Viridis.rgb(0.0));
//! ```

/// matplotlib's `inferno`, sampled at `i / 16`.
const INFERNO: [[u8; 3]; 17] = [
    [0, 0, 4],
    [11, 7, 36],
    [33, 12, 74],
    [61, 9, 101],
    [87, 16, 110],
    [113, 25, 110],
    [138, 34, 106],
    [163, 44, 97],
    [188, 55, 84],
    [208, 69, 69],
    [227, 89, 51],
    [241, 113, 31],
    [249, 140, 10],
    [252, 170, 15],
    [249, 201, 50],
    [242, 232, 101],
    [252, 255, 164],
];

/// matplotlib's `viridis`, sampled at `i / 16`.
const VIRIDIS: [[u8; 3]; 17] = [
    [68, 1, 84],
    [72, 24, 106],
    [71, 45, 123],
    [66, 64, 134],
    [59, 82, 139],
    [51, 99, 141],
    [44, 114, 142],
    [38, 130, 142],
    [33, 145, 140],
    [31, 159, 136],
    [39, 173, 129],
    [61, 188, 116],
    [92, 200, 99],
    [129, 211, 77],
    [170, 220, 50],
    [213, 226, 26],
    [253, 231, 37],
];

/// A colour map from `[0, 1]` to RGB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Colormap {
    /// matplotlib's `inferno`: black, purple, red, orange, pale yellow.
    #[default]
    Inferno,
    /// matplotlib's `viridis`: dark purple, blue, teal, green, yellow.
    Viridis,
}

impl Colormap {
    fn table(self) -> &'static [[u8; 3]; 17] {
        match self {
            Colormap::Inferno => &INFERNO,
            Colormap::Viridis => &VIRIDIS,
        }
    }

    /// The colour of `t`, clamped into `[0, 1]` (NaN counts as 0): the two neighbouring table
    /// entries mixed linearly, each channel rounded to the nearest integer.
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let table = self.table();
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let x = t * 16.0;
        let i = (x.floor() as usize).min(15);
        let f = x - i as f32;
        let (a, b) = (table[i], table[i + 1]);
        std::array::from_fn(|c| (f32::from(a[c]) + f * (f32::from(b[c]) - f32::from(a[c]))).round() as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luma([r, g, b]: [u8; 3]) -> f32 {
        0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
    }

    #[test]
    fn table_entries_are_hit_exactly_and_midpoints_interpolate() {
        for map in [Colormap::Inferno, Colormap::Viridis] {
            for (i, &entry) in map.table().iter().enumerate() {
                assert_eq!(map.rgb(i as f32 / 16.0), entry, "{map:?} entry {i}");
            }
        }
        // Halfway between [0, 0, 4] and [11, 7, 36]: [5.5, 3.5, 20] rounds to [6, 4, 20].
        assert_eq!(Colormap::Inferno.rgb(1.0 / 32.0), [6, 4, 20]);
    }

    #[test]
    fn lightness_grows_with_the_value() {
        for map in [Colormap::Inferno, Colormap::Viridis] {
            let lumas: Vec<f32> = (0..=64).map(|i| luma(map.rgb(i as f32 / 64.0))).collect();
            assert!(lumas.windows(2).all(|w| w[1] >= w[0] - 1.0), "{map:?}: {lumas:?}");
            assert!(lumas[64] > lumas[0] + 150.0, "{map:?}");
        }
    }
}
