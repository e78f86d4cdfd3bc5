//! Pictures: patch graphs over photos, attention heat maps, benchmark and training plots.
//!
//! Everything is drawn with plotters (its bitmap backend for PNG, its SVG backend for SVG); the
//! output format is chosen by the file's extension (`.png` or `.svg`, anything else is an
//! error, see [`OutputFormat`]). Text uses the bundled DejaVu Sans font
//! ([`register_bundled_font`]), never the system's, and the same inputs give byte-identical
//! files. Each picture also has a `render_*` function that returns its RGB pixels (the PNG's
//! content) for tests and further processing.
//!
//! - [`draw_patch_graph`] / [`render_patch_graph`]: a [`Graph`](crate::Graph) over its photo:
//!   the patch grid, every edge or only the edges into one node ([`EdgeSelection`]), the class
//!   token as a marker above the photo; [`OverlayOptions`], [`overlay_layout`].
//! - [`draw_attention_map`] / [`render_attention_map`]: one value per patch as a colour-mapped
//!   overlay ([`Colormap`]), the query patch outlined, a colour bar; [`HeatmapOptions`],
//!   [`heatmap_layout`].
//! - [`plot_bench`] / [`render_bench_plot`]: time against `N` and against `k`, log-log, with the
//!   dense/sparse crossover; from [`load_patchgraph_bench`] and [`load_peer_bench`].
//! - [`plot_training`] / [`render_training_plot`]: loss and accuracy per epoch, several runs
//!   overlaid; from [`load_training_metrics`].
//!
//! Small photos are scaled up by an integer factor (nearest neighbour) so that patches are
//! visible: by default until the longer side is at least 448 px ([`PatchLayout`]).
//!
//! ```
//! use patchgraph::graph::{Graph, Neighbourhood};
//! use patchgraph::image::ChwImage;
//! use patchgraph::viz::{EdgeSelection, draw_attention_map, draw_patch_graph};
//! let dir = std::env::temp_dir();
//! // A 28 x 28 digit, 7 x 7 patches: a 4 x 4 grid graph with a class token.
//! let digit = ChwImage::from_fn(1, 28, 28, |_, y, x| if (8..20).contains(&y) && (12..16).contains(&x) { 1.0 } else { 0.0 }).unwrap();
//! let graph = Graph::grid(4, 4, Neighbourhood::Four, 1, false).unwrap().with_global_node(false);
//! draw_patch_graph(&digit, 7, &graph, true, EdgeSelection::Into(6), &dir.join("patchgraph-doc-graph.png")).unwrap();
//! draw_patch_graph(&digit, 7, &graph, true, EdgeSelection::All, &dir.join("patchgraph-doc-graph.svg")).unwrap();
//! // Attention of patch 5 over the 16 patches.
//! let attention: Vec<f32> = (0..16).map(|k| if k == 5 { 0.5 } else { 0.5 / 15.0 }).collect();
//! draw_attention_map(&digit, (4, 4), &attention, Some(5), &dir.join("patchgraph-doc-attention.png")).unwrap();
//! ```

mod bench_load;
mod bench_plot;
mod canvas;
mod chart;
mod colormap;
mod font;
mod graph_overlay;
mod heatmap;
mod layout;
mod output;
mod scaling_plot;
mod text;
mod training_plot;

pub use bench_load::{Crossover, PatchgraphBench, load_patchgraph_bench, load_peer_bench};
pub use bench_plot::{BENCH_PLOT_SIZE, BenchPoint, plot_bench, render_bench_plot};
pub use chart::series_colour;
pub use colormap::Colormap;
pub use font::{FONT_FAMILY, register_bundled_font};
pub use graph_overlay::{
    EdgeSelection, OverlayOptions, draw_patch_graph, draw_patch_graph_with, overlay_layout, render_patch_graph,
};
pub use heatmap::{
    COLOUR_BAR_WIDTH, HeatmapOptions, draw_attention_map, draw_attention_map_with, heatmap_layout, render_attention_map,
};
pub use layout::PatchLayout;
pub use output::{MAX_SIDE, OutputFormat};
pub use scaling_plot::{
    SCALING_PANEL_WIDTH, SCALING_PLOT_HEIGHT, Scale, ScalingPanel, ScalingPoint, plot_scaling, render_scaling_plot,
};
pub use text::format_number;
pub use training_plot::{
    TRAINING_PLOT_SIZE, TrainingPoint, load_training_metrics, plot_training, render_training_plot,
};
