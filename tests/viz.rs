//! Tests of `patchgraph::viz`: the pictures themselves (sizes, which pixels an edge or a heat
//! map changes and which it leaves alone), byte-identical output on repeat for PNG and SVG,
//! the loaders on the real files in notes/data/, and typed errors for bad inputs.

use std::path::{Path, PathBuf};

use image::RgbImage;
use patchgraph::Error;
use patchgraph::graph::{Graph, Neighbourhood};
use patchgraph::image::ChwImage;
use patchgraph::train::EpochMetrics;
use patchgraph::viz::*;

const GREY: [u8; 3] = [128, 128, 128];

/// A path in the system temp dir, unique to this process and test.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("patchgraph-viz-test-{}-{name}", std::process::id()))
}

fn notes_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("notes/data").join(name)
}

/// A uniform grey 28 x 28 digit-sized image (0.5 -> 128 in 8 bits).
fn grey_digit() -> ChwImage {
    ChwImage::filled(1, 28, 28, 0.5).unwrap()
}

fn overlay(graph: &Graph, class_token: bool, edges: EdgeSelection) -> RgbImage {
    render_patch_graph(&grey_digit(), 7, graph, class_token, edges, &OverlayOptions::default()).unwrap()
}

/// The integer points of the segment `a -> b` between `from` and `to` (fractions of its length).
fn along(a: (i32, i32), b: (i32, i32), from: f64, to: f64) -> Vec<(u32, u32)> {
    (0..=40)
        .map(|i| from + (to - from) * f64::from(i) / 40.0)
        .map(|t| {
            let x = f64::from(a.0) + t * f64::from(b.0 - a.0);
            let y = f64::from(a.1) + t * f64::from(b.1 - a.1);
            (x.round() as u32, y.round() as u32)
        })
        .collect()
}

/// Whether canvas pixel `(x, y)` is within `margin` px of a patch-grid line of `layout`.
fn near_grid(layout: &PatchLayout, (x, y): (u32, u32), margin: i32) -> bool {
    let (step_x, step_y) =
        ((layout.patch.1 as i32) * layout.scale as i32, (layout.patch.0 as i32) * layout.scale as i32);
    let (dx, dy) = (x as i32 - layout.origin.0, y as i32 - layout.origin.1);
    let off = |d: i32, step: i32| {
        let r = d.rem_euclid(step);
        r.min(step - r)
    };
    off(dx, step_x) <= margin || off(dy, step_y) <= margin
}

/// The pixels of patch `(row, col)` at least `inset` px inside its square.
fn patch_pixels(layout: &PatchLayout, row: usize, col: usize, inset: i32) -> Vec<(u32, u32)> {
    let ((x0, y0), (x1, y1)) = layout.patch_rect(row, col);
    let mut out = Vec::new();
    for y in y0 + inset..y1 - inset {
        for x in x0 + inset..x1 - inset {
            out.push((x as u32, y as u32));
        }
    }
    out
}

fn luma(p: &image::Rgb<u8>) -> f64 {
    0.299 * f64::from(p.0[0]) + 0.587 * f64::from(p.0[1]) + 0.114 * f64::from(p.0[2])
}

// ---------------------------------------------------------------- graph overlay

#[test]
fn overlay_sizes_are_as_documented() {
    let g16 = Graph::from_edge_index(16, &[], &[]).unwrap();
    let g17 = Graph::from_edge_index(17, &[], &[]).unwrap();
    // 28 px scaled by 16 = 448, 8 px padding each side, a 48 px token strip.
    assert_eq!(overlay(&g16, false, EdgeSelection::All).dimensions(), (464, 464));
    assert_eq!(overlay(&g17, true, EdgeSelection::All).dimensions(), (464, 512));
    let options = OverlayOptions { scale: Some(3), padding: 0, ..Default::default() };
    let small = render_patch_graph(&grey_digit(), 7, &g16, false, EdgeSelection::All, &options).unwrap();
    assert_eq!(small.dimensions(), (84, 84));
    // A 224 x 224 photo: scale 2.
    let photo = ChwImage::filled(3, 224, 224, 0.2).unwrap();
    let grid = Graph::grid(14, 14, Neighbourhood::Four, 1, false).unwrap();
    let layout = overlay_layout(&photo, 16, false, &OverlayOptions::default()).unwrap();
    assert_eq!((layout.scale, layout.size), (2, (464, 464)));
    let pixels = render_patch_graph(&photo, 16, &grid, false, EdgeSelection::All, &OverlayOptions::default()).unwrap();
    assert_eq!(pixels.dimensions(), layout.size);
}

#[test]
fn one_edge_changes_the_pixels_on_its_segment_and_nothing_far_from_it() {
    let empty = Graph::from_edge_index(16, &[], &[]).unwrap();
    let one = Graph::from_edge_index(16, &[0], &[15]).unwrap(); // patch (0, 0) -> patch (3, 3)
    let layout = overlay_layout(&grey_digit(), 7, false, &OverlayOptions::default()).unwrap();
    let (without, with) = (overlay(&empty, false, EdgeSelection::All), overlay(&one, false, EdgeSelection::All));
    let (a, b) = (layout.node_centre(0).unwrap(), layout.node_centre(15).unwrap());
    let mut checked = 0;
    for p in along(a, b, 0.0, 1.0) {
        if near_grid(&layout, p, 2) {
            continue; // where the segment crosses a grid line (drawn in both)
        }
        assert_ne!(with.get_pixel(p.0, p.1), without.get_pixel(p.0, p.1), "the edge is not drawn at {p:?}");
        assert_eq!(without.get_pixel(p.0, p.1).0, GREY, "the edgeless picture shows the photo at {p:?}");
        checked += 1;
    }
    assert!(checked > 25, "only {checked} points checked");
    // Patches (0, 3) and (3, 0), away from the diagonal: the photo, untouched.
    for (row, col) in [(0, 3), (3, 0), (0, 2), (2, 0)] {
        for (x, y) in patch_pixels(&layout, row, col, 2) {
            assert_eq!(with.get_pixel(x, y).0, GREY, "patch ({row}, {col}) changed at ({x}, {y})");
        }
    }
    // Everything that is not near the segment is identical to the edgeless picture.
    let (ax, ay, bx, by) = (f64::from(a.0), f64::from(a.1), f64::from(b.0), f64::from(b.1));
    let len = ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt();
    for (x, y, p) in with.enumerate_pixels() {
        let distance = ((by - ay) * f64::from(x) - (bx - ax) * f64::from(y) + bx * ay - by * ax).abs() / len;
        if distance > 4.0 {
            assert_eq!(p, without.get_pixel(x, y), "pixel ({x}, {y}) {distance:.1} px from the edge changed");
        }
    }
}

#[test]
fn into_draws_only_the_edges_into_that_node() {
    // Two edges far apart: 0 -> 5 (top left) and 15 -> 10 (bottom right).
    let graph = Graph::from_edge_index(16, &[0, 15], &[5, 10]).unwrap();
    let empty = Graph::from_edge_index(16, &[], &[]).unwrap();
    let layout = overlay_layout(&grey_digit(), 7, false, &OverlayOptions::default()).unwrap();
    let centre = |n| layout.node_centre(n).unwrap();
    for (into, drawn, not_drawn) in [(5, (0, 5), (15, 10)), (10, (15, 10), (0, 5))] {
        let with = overlay(&graph, false, EdgeSelection::Into(into));
        let without = overlay(&empty, false, EdgeSelection::Into(into)); // same outline
        let (mut changed, mut same) = (0, 0);
        // Stay away from both ends: the chosen node's outline is drawn in both pictures.
        for p in along(centre(drawn.0), centre(drawn.1), 0.05, 0.45) {
            if !near_grid(&layout, p, 4) {
                assert_ne!(with.get_pixel(p.0, p.1), without.get_pixel(p.0, p.1), "edge {drawn:?} missing at {p:?}");
                changed += 1;
            }
        }
        for p in along(centre(not_drawn.0), centre(not_drawn.1), 0.0, 1.0) {
            assert_eq!(with.get_pixel(p.0, p.1), without.get_pixel(p.0, p.1), "edge {not_drawn:?} drawn at {p:?}");
            same += 1;
        }
        assert!(changed > 5 && same > 30, "{changed} {same}");
        // The chosen patch is outlined in the highlight colour.
        let ((x0, y0), _) = layout.patch_rect(into / 4, into % 4);
        assert_eq!(with.get_pixel(x0 as u32 + 1, y0 as u32 + 20).0, OverlayOptions::default().highlight_colour);
    }
}

#[test]
fn the_class_token_is_a_marker_above_the_photo_with_its_edges() {
    let patches = Graph::from_edge_index(16, &[], &[]).unwrap();
    let graph = patches.with_global_node(false);
    let layout = overlay_layout(&grey_digit(), 7, true, &OverlayOptions::default()).unwrap();
    let token = layout.token.unwrap();
    assert!(token.1 < layout.origin.1, "the token is above the photo");
    let only_token = overlay(&graph, true, EdgeSelection::Into(0));
    let nothing = overlay(&Graph::from_edge_index(17, &[], &[]).unwrap(), true, EdgeSelection::Into(0));
    // The marker is filled with the edge colour.
    assert_eq!(only_token.get_pixel(token.0 as u32, token.1 as u32).0, OverlayOptions::default().edge_colour);
    // The edge from the far corner patch (node 16 = patch (3, 3)) runs up to it.
    let corner = layout.node_centre(16).unwrap();
    for p in along(corner, token, 0.1, 0.6) {
        if !near_grid(&layout, p, 2) {
            assert_ne!(only_token.get_pixel(p.0, p.1), nothing.get_pixel(p.0, p.1), "{p:?}");
        }
    }
}

#[test]
fn self_loops_are_circles_or_left_out() {
    let looped = Graph::from_edge_index(16, &[5], &[5]).unwrap();
    let empty = Graph::from_edge_index(16, &[], &[]).unwrap();
    let with = overlay(&looped, false, EdgeSelection::All);
    assert_ne!(with, overlay(&empty, false, EdgeSelection::All));
    let off = OverlayOptions { self_loops: false, ..Default::default() };
    let render = |g: &Graph| render_patch_graph(&grey_digit(), 7, g, false, EdgeSelection::All, &off).unwrap();
    assert_eq!(render(&looped), render(&empty));
}

#[test]
fn overlay_errors_are_typed() {
    let digit = grey_digit();
    let opts = OverlayOptions::default();
    let g16 = Graph::grid(4, 4, Neighbourhood::Four, 1, false).unwrap();
    // Node out of range.
    let err = render_patch_graph(&digit, 7, &g16, false, EdgeSelection::Into(16), &opts).unwrap_err();
    assert!(matches!(err, Error::NodeOutOfRange { index: 16, num_nodes: 16, .. }), "{err}");
    // 16 nodes but the grid with a class token needs 17.
    let err = render_patch_graph(&digit, 7, &g16, true, EdgeSelection::All, &opts).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // A 5 px patch does not divide 28.
    let err = render_patch_graph(&digit, 5, &g16, false, EdgeSelection::All, &opts).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(render_patch_graph(&digit, 0, &g16, false, EdgeSelection::All, &opts).is_err());
    // Two channels are neither grey nor RGB.
    let two = ChwImage::filled(2, 28, 28, 0.5).unwrap();
    let err = render_patch_graph(&two, 7, &g16, false, EdgeSelection::All, &opts).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    // Options out of their domain.
    let bad = OverlayOptions { edge_opacity: 1.5, ..Default::default() };
    assert!(render_patch_graph(&digit, 7, &g16, false, EdgeSelection::All, &bad).is_err());
    let bad = OverlayOptions { scale: Some(0), ..Default::default() };
    assert!(render_patch_graph(&digit, 7, &g16, false, EdgeSelection::All, &bad).is_err());
    let huge = OverlayOptions { scale: Some(1000), ..Default::default() };
    assert!(render_patch_graph(&digit, 7, &g16, false, EdgeSelection::All, &huge).is_err());
    // An unknown extension: an error, and no file.
    let path = temp("graph.bmp");
    let err = draw_patch_graph(&digit, 7, &g16, false, EdgeSelection::All, &path).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(!path.exists());
}

// ---------------------------------------------------------------- attention heat map

#[test]
fn the_most_attended_patch_is_the_brightest() {
    let black = ChwImage::filled(3, 32, 32, 0.0).unwrap();
    let values: Vec<f32> = (0..16).map(|k| ((k * 7) % 16) as f32 / 100.0).collect(); // a permutation of 0..0.15
    let brightest = values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let options = HeatmapOptions::default();
    let pixels = render_attention_map(&black, (4, 4), &values, None, &options).unwrap();
    let layout = heatmap_layout(&black, (4, 4), &options).unwrap();
    assert_eq!(pixels.dimensions(), layout.size);
    assert_eq!(layout.size, (448 + 16 + COLOUR_BAR_WIDTH, 448 + 16));
    let mean_luma: Vec<f64> = (0..16)
        .map(|k| {
            let px = patch_pixels(&layout, k / 4, k % 4, 1);
            px.iter().map(|&(x, y)| luma(pixels.get_pixel(x, y))).sum::<f64>() / px.len() as f64
        })
        .collect();
    let most = mean_luma.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(most, brightest, "{mean_luma:?}");
    // Brightness follows the values: ranks agree.
    let mut by_value: Vec<usize> = (0..16).collect();
    by_value.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    assert!(by_value.windows(2).all(|w| mean_luma[w[0]] <= mean_luma[w[1]]), "{mean_luma:?}");
    // The zero patch shows the photo (black), the top one 0.7 of the map's top colour.
    let zero = values.iter().position(|&v| v == 0.0).unwrap();
    assert!(patch_pixels(&layout, zero / 4, zero % 4, 0).iter().all(|&(x, y)| pixels.get_pixel(x, y).0 == [0, 0, 0]));
    let top = Colormap::Inferno.rgb(1.0).map(|c| (0.7 * f32::from(c)).round() as u8);
    let (x, y) = layout.patch_centre(brightest / 4, brightest % 4);
    assert_eq!(pixels.get_pixel(x as u32, y as u32).0, top);
}

#[test]
fn heat_map_highlight_colour_bar_and_zero_values() {
    let grey = ChwImage::filled(1, 28, 28, 0.5).unwrap();
    let options = HeatmapOptions { colour_bar: false, ..Default::default() };
    let layout = heatmap_layout(&grey, (4, 4), &options).unwrap();
    assert_eq!(layout.size, (464, 464));
    // All zero: no overlay, the photo as is (no highlight, no bar).
    let plain = render_attention_map(&grey, (4, 4), &[0.0; 16], None, &options).unwrap();
    let ((x0, y0), (x1, y1)) = layout.photo_rect();
    for y in y0..y1 {
        for x in x0..x1 {
            assert_eq!(plain.get_pixel(x as u32, y as u32).0, GREY);
        }
    }
    // The highlighted patch is framed in cyan; the others are not.
    let framed = render_attention_map(&grey, (4, 4), &[0.0; 16], Some(6), &options).unwrap();
    let ((fx, fy), _) = layout.patch_rect(1, 2);
    assert_eq!(framed.get_pixel(fx as u32 + 1, fy as u32 + 30).0, [0, 255, 255]);
    let ((ox, oy), _) = layout.patch_rect(2, 2);
    assert_eq!(framed.get_pixel(ox as u32 + 1, oy as u32 + 30).0, GREY);
    // The colour bar: the map's top colour near its top, its bottom colour near its bottom.
    let with_bar = render_attention_map(&grey, (4, 4), &[1.0; 16], None, &HeatmapOptions::default()).unwrap();
    let bar_x = (x1 + 16 + 10) as u32;
    let top = with_bar.get_pixel(bar_x, y0 as u32 + 1).0;
    let bottom = with_bar.get_pixel(bar_x, y1 as u32 - 2).0;
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 3);
    assert!(close(top, Colormap::Inferno.rgb(1.0)), "{top:?}");
    assert!(close(bottom, Colormap::Inferno.rgb(0.0)), "{bottom:?}");
}

#[test]
fn heat_map_errors_are_typed() {
    let grey = ChwImage::filled(1, 28, 28, 0.5).unwrap();
    let opts = HeatmapOptions::default();
    let mut values = vec![0.1f32; 16];
    values[3] = f32::NAN;
    let err = render_attention_map(&grey, (4, 4), &values, None, &opts).unwrap_err();
    assert!(matches!(err, Error::NonFinite { position: 3, .. }), "{err}");
    let err = render_attention_map(&grey, (4, 4), &[0.1; 15], None, &opts).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = render_attention_map(&grey, (4, 4), &[0.1; 16], Some(16), &opts).unwrap_err();
    assert!(matches!(err, Error::NodeOutOfRange { index: 16, .. }), "{err}");
    let err = render_attention_map(&grey, (3, 4), &[0.1; 12], None, &opts).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    let bad = HeatmapOptions { opacity: -0.1, ..Default::default() };
    assert!(render_attention_map(&grey, (4, 4), &[0.1; 16], None, &bad).is_err());
    let err = draw_attention_map(&grey, (4, 4), &[0.1; 16], None, &temp("attention.jpeg")).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

// ---------------------------------------------------------------- determinism

/// Writes the same picture twice under `name` and checks the files are byte-identical.
fn same_bytes_twice(name: &str, draw: impl Fn(&Path) -> patchgraph::Result<()>) -> Vec<u8> {
    let (a, b) = (temp(&format!("a-{name}")), temp(&format!("b-{name}")));
    draw(&a).unwrap();
    draw(&b).unwrap();
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!x.is_empty());
    assert!(x == y, "{name}: two runs wrote different bytes");
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    x
}

#[test]
fn the_same_inputs_give_byte_identical_png_and_svg_files() {
    let digit = ChwImage::from_fn(1, 28, 28, |_, y, x| ((x * 7 + y * 3) % 10) as f32 / 10.0).unwrap();
    let graph = Graph::grid(4, 4, Neighbourhood::Eight, 1, true).unwrap().with_global_node(true);
    let values: Vec<f32> = (0..16).map(|k| k as f32).collect();
    for ext in ["png", "svg"] {
        let overlay = same_bytes_twice(&format!("overlay.{ext}"), |p| {
            draw_patch_graph(&digit, 7, &graph, true, EdgeSelection::All, p)
        });
        let heat =
            same_bytes_twice(&format!("heat.{ext}"), |p| draw_attention_map(&digit, (4, 4), &values, Some(5), p));
        if ext == "png" {
            // A real PNG of the documented size, holding exactly what render_* returns.
            let decoded = image::load_from_memory(&overlay).unwrap().to_rgb8();
            assert_eq!(decoded.dimensions(), (464, 512));
            let rendered =
                render_patch_graph(&digit, 7, &graph, true, EdgeSelection::All, &OverlayOptions::default()).unwrap();
            assert!(decoded == rendered);
            let decoded = image::load_from_memory(&heat).unwrap().to_rgb8();
            assert!(
                decoded == render_attention_map(&digit, (4, 4), &values, Some(5), &HeatmapOptions::default()).unwrap()
            );
        } else {
            let text = String::from_utf8(overlay).unwrap();
            assert!(text.starts_with("<svg width=\"464\" height=\"512\""), "{}", &text[..80]);
            assert!(text.contains("data:image/png;base64,") && text.contains("class token"));
            assert!(text.trim_end().ends_with("</svg>"));
        }
    }
}

// ---------------------------------------------------------------- plots

/// Count of non-white pixels in the rectangle `x0..x1, y0..y1`.
fn inked(image: &RgbImage, (x0, y0): (u32, u32), (x1, y1): (u32, u32)) -> usize {
    (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| image.get_pixel(x, y).0 != [255; 3]).count()
}

fn real_bench_points() -> (Vec<BenchPoint>, Option<f64>) {
    let ours = load_patchgraph_bench(&notes_data("bench-2026-11-26-patchgraph.json")).unwrap();
    let mut points = ours.points.clone();
    points.extend(load_peer_bench(&notes_data("bench-2026-11-26-peers.json")).unwrap());
    (points, ours.crossover_density())
}

#[test]
fn loaders_read_the_real_bench_files() {
    let ours = load_patchgraph_bench(&notes_data("bench-2026-11-26-patchgraph.json")).unwrap();
    assert_eq!(ours.points.len(), 60);
    assert_eq!(ours.crossovers.len(), 4);
    assert_eq!(ours.crossovers[3], Crossover { nodes: 3137, k: Some(365), density: Some(0.11635320369780044) });
    assert_eq!(ours.crossover_density(), Some(0.11635320369780044));
    // The first record: dense dot, batch 1, grid 7 (N = 50), 0.077626 ms.
    assert_eq!(ours.points[0], BenchPoint { label: "dense dot".into(), n: 50, k: None, ms: 0.077626 });
    let labels: std::collections::BTreeSet<&str> = ours.points.iter().map(|p| p.label.as_str()).collect();
    for label in ["dense dot", "dense dot B=8", "sparse dot", "dense gat", "sparse gatv2"] {
        assert!(labels.contains(label), "{label} missing from {labels:?}");
    }
    let ks: std::collections::BTreeSet<usize> = ours.points.iter().filter_map(|p| p.k).collect();
    assert_eq!(ks.into_iter().collect::<Vec<_>>(), vec![8, 16, 32]);

    let peers = load_peer_bench(&notes_data("bench-2026-11-26-peers.json")).unwrap();
    assert_eq!(peers.len(), 53, "every record but the torch_mm_2048 calibration");
    let sdpa = peers.iter().find(|p| p.label == "PyTorch SDPA" && p.n == 197).unwrap();
    assert!((sdpa.ms - 1.2602599995261698).abs() < 1e-12 && sdpa.k.is_none());
    assert!(peers.iter().any(|p| p.label == "PyTorch SDPA B=8"));
    let gat16 = peers.iter().find(|p| p.label == "PyG GATConv" && p.k == Some(16) && p.n == 785).unwrap();
    assert!(gat16.ms > 0.0);
    assert!(peers.iter().any(|p| p.label == "PyG TransformerConv" && p.k.is_none()));
    // Other result files hold no attention records for the peer loader.
    assert!(load_peer_bench(&notes_data("bench-2026-11-27-vit-timm.json")).unwrap().is_empty());
}

#[test]
fn loaders_are_tolerant_of_missing_optional_fields_and_strict_about_bad_json() {
    // Only the required fields; no crossovers; a bare array works too.
    let minimal = r#"{"records": [{"case": {"score": "dot", "grid": 3, "graph": {"Knn": 4}}, "median_ms": 0.5}]}"#;
    let path = temp("minimal-bench.json");
    std::fs::write(&path, minimal).unwrap();
    let bench = load_patchgraph_bench(&path).unwrap();
    assert_eq!(bench.points, vec![BenchPoint { label: "sparse dot".into(), n: 10, k: Some(4), ms: 0.5 }]);
    assert!(bench.crossovers.is_empty() && bench.crossover_density().is_none());
    std::fs::write(&path, r#"[{"case": {"score": "gat", "batch": 8, "grid": 2, "graph": "Complete"}, "path": "dense", "median_ms": 2.0}]"#).unwrap();
    assert_eq!(load_patchgraph_bench(&path).unwrap().points[0].label, "dense gat B=8");

    let peers = r#"[{"peer": "pyg", "op": "GATv2Conv_knn8", "N": 50, "k": 8, "median_ms": 1.5},
                    {"peer": "torch", "op": "torch_mm_2048", "median_ms": 90.0}]"#;
    std::fs::write(&path, peers).unwrap();
    assert_eq!(
        load_peer_bench(&path).unwrap(),
        vec![BenchPoint { label: "PyG GATv2Conv".into(), n: 50, k: Some(8), ms: 1.5 }]
    );

    // Malformed: not JSON, the wrong shape, a kept record without its time. Each names the file.
    for (text, loader) in [
        ("{\"records\": [", 0),
        ("{\"recs\": []}", 0),
        (r#"{"records": [{"case": {"score": "dot"}, "median_ms": 1.0}]}"#, 0),
        ("[1, 2", 1),
        (r#"[{"peer": "torch", "op": "sdpa", "N": 50}]"#, 1),
        (r#"{"peer": "torch"}"#, 1),
    ] {
        std::fs::write(&path, text).unwrap();
        let err =
            if loader == 0 { load_patchgraph_bench(&path).unwrap_err() } else { load_peer_bench(&path).unwrap_err() };
        assert!(matches!(err, Error::Format { .. }), "{text}: {err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
    let err = load_peer_bench(&temp("no-such-file.json")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bench_plot_renders_both_panels_and_repeats_byte_for_byte() {
    let (points, crossover) = real_bench_points();
    let pixels = render_bench_plot(&points, crossover).unwrap();
    assert_eq!(pixels.dimensions(), BENCH_PLOT_SIZE);
    let (w, _) = BENCH_PLOT_SIZE;
    // Ink in the left panel, the right panel and the legend.
    assert!(inked(&pixels, (100, 60), (w / 2 - 20, 560)) > 5000);
    assert!(inked(&pixels, (w / 2 + 100, 60), (w - 20, 560)) > 5000);
    assert!(inked(&pixels, (0, 650), (w, 790)) > 2000);
    // The crossover line is black and dashed; the rest of the plot has colour.
    let colours: std::collections::BTreeSet<[u8; 3]> = pixels.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50);
    let png = same_bytes_twice("bench.png", |p| plot_bench(&points, crossover, p));
    assert!(image::load_from_memory(&png).unwrap().to_rgb8() == pixels);
    let svg = same_bytes_twice("bench.svg", |p| plot_bench(&points, crossover, p));
    assert!(String::from_utf8(svg).unwrap().contains("crossover k = 365"));
    // Without several k at any N, the right panel says so instead.
    let two = &points[..2];
    assert_eq!(render_bench_plot(two, None).unwrap().dimensions(), BENCH_PLOT_SIZE);
}

#[test]
fn bench_plot_errors_are_typed() {
    let p = |ms: f64, n: usize, k: Option<usize>| BenchPoint { label: "x".into(), n, k, ms };
    for bad in
        [vec![], vec![p(f64::NAN, 50, None)], vec![p(-1.0, 50, None)], vec![p(1.0, 0, None)], vec![p(1.0, 50, Some(0))]]
    {
        let err = render_bench_plot(&bad, None).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }
    assert!(render_bench_plot(&[p(1.0, 50, None)], Some(f64::INFINITY)).is_err());
    assert!(plot_bench(&[p(1.0, 50, None)], None, &temp("bench.gif")).is_err());
}

#[test]
fn training_plot_from_a_metrics_json_overlays_runs() {
    // A metrics.json as `patchgraph train` writes it, with a NaN (stored as null) in one epoch.
    let epoch = |e: usize, loss: f32, acc: f32| EpochMetrics {
        epoch: e,
        train_loss: loss,
        train_accuracy: acc,
        test_loss: loss * 1.1,
        test_accuracy: acc - 0.02,
        lr: 1e-3,
        images_per_second: 900.0,
        seconds: 6.5,
    };
    let run: Vec<EpochMetrics> = (1..=6).map(|e| epoch(e, 2.0 / e as f32, 1.0 - 0.4 / e as f32)).collect();
    let mut diverged = run.clone();
    diverged[3].test_loss = f32::NAN;
    let path = temp("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&diverged).unwrap()).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("\"test_loss\": null"));
    let points = load_training_metrics(&path).unwrap();
    assert_eq!(points.len(), 6);
    assert_eq!(points[0].epoch, 1);
    assert!((points[1].train_loss - 1.0).abs() < 1e-6 && (points[1].test_accuracy - 0.78).abs() < 1e-6);
    assert!(points[3].test_loss.is_nan() && points[3].train_loss.is_finite());

    let runs = vec![
        ("complete".to_string(), points.clone()),
        ("grid8".to_string(), points.iter().map(|p| TrainingPoint { train_loss: p.train_loss * 1.2, ..*p }).collect()),
    ];
    let pixels = render_training_plot(&runs, "ViT on MNIST").unwrap();
    assert_eq!(pixels.dimensions(), TRAINING_PLOT_SIZE);
    let (w, _) = TRAINING_PLOT_SIZE;
    assert!(inked(&pixels, (100, 90), (w / 2 - 20, 480)) > 3000, "loss panel");
    assert!(inked(&pixels, (w / 2 + 100, 90), (w - 20, 480)) > 3000, "accuracy panel");
    // Both runs' colours are on the picture.
    for i in 0..2 {
        assert!(pixels.pixels().any(|p| p.0 == series_colour(i)), "run {i}");
    }
    let png = same_bytes_twice("training.png", |p| plot_training(&runs, "ViT on MNIST", p));
    assert!(image::load_from_memory(&png).unwrap().to_rgb8() == pixels);
    same_bytes_twice("training.svg", |p| plot_training(&runs, "ViT on MNIST", p));

    // Errors: nothing to plot, malformed metrics files (naming the file), a missing file.
    assert!(render_training_plot(&[("empty".to_string(), vec![])], "t").is_err());
    for text in
        ["[{\"epoch\": 1, \"train_loss\": 0.5", "{\"epoch\": 1}", "[{\"train_loss\": 0.5}]", "[{\"epoch\": -1}]"]
    {
        std::fs::write(&path, text).unwrap();
        let err = load_training_metrics(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }) && err.to_string().contains("metrics.json"), "{text}: {err}");
    }
    let _ = std::fs::remove_file(&path);
    assert!(matches!(load_training_metrics(&temp("missing.json")).unwrap_err(), Error::Io { .. }));
}

#[test]
fn output_format_follows_the_extension() {
    assert_eq!(OutputFormat::from_path(Path::new("a/b.Svg")).unwrap(), OutputFormat::Svg);
    assert_eq!(OutputFormat::from_path(Path::new("x.png")).unwrap(), OutputFormat::Png);
    for bad in ["x.jpg", "x", "x.png.txt", ".png"] {
        assert!(OutputFormat::from_path(Path::new(bad)).is_err(), "{bad}");
    }
}
