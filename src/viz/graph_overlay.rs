//! A patch graph drawn over its photo: the patch grid, one line per edge between patch centres,
//! the class token as a marker above the photo.
//!
//! [`draw_patch_graph`] writes the picture (PNG or SVG by the extension), [`render_patch_graph`]
//! returns its pixels, [`overlay_layout`] says where everything lands. What is drawn, bottom to
//! top:
//!
//! 1. the photo (1 channel: grey, 3: RGB; values in `[0, 1]`, clamped), scaled up by an integer
//!    factor (see [`PatchLayout`]: by default so that the longer side is at least 448 px);
//! 2. the patch grid: 1 px lines on the patch boundaries and around the photo, in
//!    [`OverlayOptions::grid_colour`];
//! 3. the edges: each edge `j -> i` of the selection a straight line from the centre of `j` to
//!    the centre of `i`, [`OverlayOptions::edge_width`] px, in [`OverlayOptions::edge_colour`]
//!    at [`OverlayOptions::edge_opacity`] (overlapping edges darken where they cross). The
//!    direction is not drawn: `j -> i` and `i -> j` are the same segment, so a symmetric edge
//!    is drawn twice, one on top of the other. A self-loop `i -> i` is a small circle around
//!    the centre of `i` (radius a sixth of the patch, at least 4 px), or nothing when
//!    [`OverlayOptions::self_loops`] is off;
//! 4. with [`EdgeSelection::Into`], the chosen node outlined in
//!    [`OverlayOptions::highlight_colour`] (a patch: a frame inside its square; the token: a
//!    ring around its marker);
//! 5. with a class token, its marker: a filled circle centred above the photo, in a strip of
//!    [`OverlayOptions::token_strip`] px, labelled "class token". Its edges run from there.
//!
//! With [`EdgeSelection::All`] a dense graph covers the photo (a complete graph on 197 nodes
//! draws 38 809 lines); [`EdgeSelection::Into`] shows one node's neighbourhood at any density.
//!
//! Nodes are numbered as everywhere in the crate: patch `(r, c)` of the `rows x cols` grid is
//! node `r * cols + c`, plus one when a class token is node 0 (see
//! [`Graph::with_global_node`]).
//!
//! ```
//! use patchgraph::graph::{Graph, Neighbourhood};
//! use patchgraph::image::ChwImage;
//! use patchgraph::viz::{EdgeSelection, OverlayOptions, draw_patch_graph, render_patch_graph};
//! // A 28 x 28 digit in 7 x 7 patches: a 4 x 4 grid with 8-neighbourhoods and a class token.
//! let digit = ChwImage::from_fn(1, 28, 28, |_, y, x| if (10..18).contains(&x) && y > 4 { 1.0 } else { 0.0 }).unwrap();
//! let graph = Graph::grid(4, 4, Neighbourhood::Eight, 1, false).unwrap().with_global_node(false);
//! // The edges into patch (1, 1) (node 6): its 8 neighbours and the token.
//! let pixels = render_patch_graph(&digit, 7, &graph, true, EdgeSelection::Into(6), &OverlayOptions::default()).unwrap();
//! assert_eq!(pixels.dimensions(), (464, 512)); // 448 px photo, 8 px padding, 48 px token strip
//! let path = std::env::temp_dir().join("patchgraph-doc-overlay.png");
//! draw_patch_graph(&digit, 7, &graph, true, EdgeSelection::All, &path).unwrap();
//! // Node 17 does not exist (16 patches + the token), and .jpg is not an output format.
//! assert!(render_patch_graph(&digit, 7, &graph, true, EdgeSelection::Into(17), &OverlayOptions::default()).is_err());
//! assert!(draw_patch_graph(&digit, 7, &graph, true, EdgeSelection::All, "graph.jpg".as_ref()).is_err());
//! ```

use std::path::Path;

use ::image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::{BLACK, Circle, Color, DrawingArea, DrawingBackend, PathElement, RGBColor, Rectangle};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::Canvas;
use super::layout::{PatchLayout, canvas_side, choose_scale, photo_rgb};
use super::output::{OutputFormat, Picture, Raster, draw_error, render_rgb, save};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::image::{ChwImage, patch_grid};

/// Which edges to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeSelection {
    /// Every edge of the graph.
    All,
    /// Only the edges into this node (its incoming edges `j -> node`), with the node outlined.
    Into(usize),
}

/// How a patch graph is drawn. `OverlayOptions::default()` gives the documented defaults;
/// override fields with `OverlayOptions { scale: Some(4), ..Default::default() }`.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayOptions {
    /// Canvas pixels per photo pixel; `None` (default): the smallest integer that makes the
    /// photo's longer side at least [`min_side`](Self::min_side) px.
    pub scale: Option<u32>,
    /// The longer side the automatic scale reaches, in px (default 448).
    pub min_side: u32,
    /// Blank margin around the picture, in px (default 8).
    pub padding: u32,
    /// Height of the strip above the photo that holds the class token, in px (default 48; only
    /// with a class token).
    pub token_strip: u32,
    /// Patch grid colour (default `[0, 170, 255]`, a light blue).
    pub grid_colour: [u8; 3],
    /// Patch grid opacity in `[0, 1]` (default 0.6).
    pub grid_opacity: f64,
    /// Edge colour (default `[255, 140, 0]`, orange).
    pub edge_colour: [u8; 3],
    /// Edge opacity in `[0, 1]` (default 0.8).
    pub edge_opacity: f64,
    /// Edge line width in px, at least 1 (default 2).
    pub edge_width: u32,
    /// Outline colour of the chosen node (default `[255, 0, 90]`, a magenta red).
    pub highlight_colour: [u8; 3],
    /// Outline width in px, at least 1 (default 3).
    pub highlight_width: u32,
    /// Draw self-loops as small circles (default `true`); `false` leaves them out.
    pub self_loops: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            scale: None,
            min_side: 448,
            padding: 8,
            token_strip: 48,
            grid_colour: [0, 170, 255],
            grid_opacity: 0.6,
            edge_colour: [255, 140, 0],
            edge_opacity: 0.8,
            edge_width: 2,
            highlight_colour: [255, 0, 90],
            highlight_width: 3,
            self_loops: true,
        }
    }
}

impl OverlayOptions {
    fn validate(&self) -> Result<()> {
        for (what, v) in [("grid_opacity", self.grid_opacity), ("edge_opacity", self.edge_opacity)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::invalid(format!("OverlayOptions::{what}"), format!("{v} is not in [0, 1]")));
            }
        }
        for (what, v) in [("edge_width", self.edge_width), ("highlight_width", self.highlight_width)] {
            if v == 0 {
                return Err(Error::invalid(format!("OverlayOptions::{what}"), "must be at least 1 px"));
            }
        }
        Ok(())
    }
}

/// Where the photo, its patches and the class token land for these inputs (see
/// [`PatchLayout`] and the module docs).
///
/// Canvas size: `(W s + 2 padding, H s + 2 padding + token_strip)`, the strip only with a
/// class token, whose marker is centred in it horizontally and vertically.
///
/// Errors: `patch` zero ([`Error::Invalid`]); `patch` not dividing `H` and `W`, or larger than
/// the image ([`Error::Image`]; an empty image cannot reach here: a [`ChwImage`] is never empty); a zero scale or a canvas side over
/// [`MAX_SIDE`](super::MAX_SIDE) ([`Error::Invalid`]).
pub fn overlay_layout(
    image: &ChwImage,
    patch: usize,
    class_token: bool,
    options: &OverlayOptions,
) -> Result<PatchLayout> {
    let (_, h, w) = image.shape();
    let (rows, cols) = patch_grid(h, w, patch)?;
    let scale = choose_scale(h, w, options.scale, options.min_side)?;
    let strip = if class_token { options.token_strip } else { 0 };
    let pad = options.padding;
    let extra_w = pad.checked_mul(2);
    let extra_h = extra_w.and_then(|e| e.checked_add(strip));
    let too_big = || Error::invalid("OverlayOptions", "padding and token strip overflow a canvas side");
    let width = canvas_side("overlay width", w, scale, extra_w.ok_or_else(too_big)?)?;
    let height = canvas_side("overlay height", h, scale, extra_h.ok_or_else(too_big)?)?;
    // Both fit in MAX_SIDE, hence in i32.
    let origin = (pad as i32, (pad + strip) as i32);
    let token = class_token.then(|| ((width / 2) as i32, (pad + strip / 2) as i32));
    Ok(PatchLayout { rows, cols, patch: (patch, patch), scale, origin, size: (width, height), token })
}

/// Draws `graph` over `image` cut in `patch x patch` patches into `path` (`.png` or `.svg`),
/// with the default [`OverlayOptions`]. See [`render_patch_graph`] for the inputs and errors.
pub fn draw_patch_graph(
    image: &ChwImage,
    patch: usize,
    graph: &Graph,
    class_token: bool,
    edges: EdgeSelection,
    path: &Path,
) -> Result<()> {
    draw_patch_graph_with(image, patch, graph, class_token, edges, &OverlayOptions::default(), path)
}

/// [`draw_patch_graph`] with explicit options.
pub fn draw_patch_graph_with(
    image: &ChwImage,
    patch: usize,
    graph: &Graph,
    class_token: bool,
    edges: EdgeSelection,
    options: &OverlayOptions,
    path: &Path,
) -> Result<()> {
    OutputFormat::from_path(path)?;
    save(&OverlayPicture::new(image, patch, graph, class_token, edges, options)?, path)
}

/// The pixels of the picture [`draw_patch_graph_with`] writes to a `.png` (size:
/// [`overlay_layout`]).
///
/// `graph` must have one node per patch, `(H / patch) * (W / patch)`, plus one for the class
/// token (node 0) when `class_token`.
///
/// Errors: those of [`overlay_layout`]; a graph whose node count does not match the patch grid
/// ([`Error::Shape`]); an [`EdgeSelection::Into`] node out of range
/// ([`Error::NodeOutOfRange`]); an image with other than 1 or 3 channels ([`Error::Image`]);
/// an opacity outside `[0, 1]` or a zero width in `options` ([`Error::Invalid`]).
pub fn render_patch_graph(
    image: &ChwImage,
    patch: usize,
    graph: &Graph,
    class_token: bool,
    edges: EdgeSelection,
    options: &OverlayOptions,
) -> Result<RgbImage> {
    render_rgb(&OverlayPicture::new(image, patch, graph, class_token, edges, options)?)
}

/// A validated overlay, ready to draw.
struct OverlayPicture<'a> {
    layout: PatchLayout,
    raster: Raster,
    graph: &'a Graph,
    edges: EdgeSelection,
    options: &'a OverlayOptions,
}

impl<'a> OverlayPicture<'a> {
    fn new(
        image: &ChwImage,
        patch: usize,
        graph: &'a Graph,
        class_token: bool,
        edges: EdgeSelection,
        options: &'a OverlayOptions,
    ) -> Result<Self> {
        options.validate()?;
        let layout = overlay_layout(image, patch, class_token, options)?;
        let expected = layout.rows * layout.cols + usize::from(class_token);
        if graph.num_nodes() != expected {
            return Err(Error::shape(
                "patch graph",
                format!(
                    "{expected} nodes ({} x {} patches of {patch} px{})",
                    layout.rows,
                    layout.cols,
                    if class_token { " + the class token" } else { "" }
                ),
                format!("{} nodes", graph.num_nodes()),
            ));
        }
        if let EdgeSelection::Into(node) = edges {
            if node >= expected {
                return Err(Error::NodeOutOfRange {
                    what: "EdgeSelection::Into".into(),
                    index: node,
                    num_nodes: expected,
                });
            }
        }
        let raster = Raster { origin: layout.origin, scale: layout.scale, pixels: photo_rgb(image)? };
        Ok(OverlayPicture { layout, raster, graph, edges, options })
    }

    fn draw_grid<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let l = &self.layout;
        let [r, g, b] = self.options.grid_colour;
        let style = RGBColor(r, g, b).mix(self.options.grid_opacity).stroke_width(1);
        let ((x0, y0), (x1, y1)) = l.photo_rect();
        for c in 1..l.cols {
            let x = l.patch_rect(0, c).0.0;
            root.draw(&PathElement::new(vec![(x, y0), (x, y1 - 1)], style)).map_err(draw_error)?;
        }
        for row in 1..l.rows {
            let y = l.patch_rect(row, 0).0.1;
            root.draw(&PathElement::new(vec![(x0, y), (x1 - 1, y)], style)).map_err(draw_error)?;
        }
        root.draw(&Rectangle::new([(x0, y0), (x1 - 1, y1 - 1)], style)).map_err(draw_error)
    }

    fn draw_edges<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (l, o) = (&self.layout, self.options);
        let [r, g, b] = o.edge_colour;
        let style = RGBColor(r, g, b).mix(o.edge_opacity).stroke_width(o.edge_width);
        let loop_radius = ((l.patch.0.min(l.patch.1) as u64 * u64::from(l.scale)) / 6).max(4) as u32;
        let destinations = match self.edges {
            EdgeSelection::All => 0..self.graph.num_nodes(),
            EdgeSelection::Into(i) => i..i + 1,
        };
        for i in destinations {
            // Every node is in range: the node count was checked against the layout.
            let Some(to) = l.node_centre(i) else { continue };
            for j in self.graph.incoming(i) {
                let Some(from) = l.node_centre(j) else { continue };
                if j == i {
                    if o.self_loops {
                        root.draw(&Circle::new(to, loop_radius, style)).map_err(draw_error)?;
                    }
                } else {
                    root.draw(&PathElement::new(vec![from, to], style)).map_err(draw_error)?;
                }
            }
        }
        Ok(())
    }

    fn draw_highlight<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let EdgeSelection::Into(node) = self.edges else { return Ok(()) };
        let (l, o) = (&self.layout, self.options);
        let [r, g, b] = o.highlight_colour;
        let colour = RGBColor(r, g, b);
        if let Some((row, col)) = l.patch_of(node) {
            let ((x0, y0), (x1, y1)) = l.patch_rect(row, col);
            for k in 0..o.highlight_width as i32 {
                let rect = Rectangle::new([(x0 + k, y0 + k), (x1 - 1 - k, y1 - 1 - k)], colour.stroke_width(1));
                root.draw(&rect).map_err(draw_error)?;
            }
        } else if let Some(centre) = l.token {
            let ring = Circle::new(
                centre,
                self.token_radius() + 3 + o.highlight_width / 2,
                colour.stroke_width(o.highlight_width),
            );
            root.draw(&ring).map_err(draw_error)?;
        }
        Ok(())
    }

    fn token_radius(&self) -> u32 {
        (self.options.token_strip / 5).max(5)
    }

    fn draw_token<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        let root = canvas.root;
        let Some(centre) = self.layout.token else { return Ok(()) };
        let [r, g, b] = self.options.edge_colour;
        let radius = self.token_radius();
        root.draw(&Circle::new(centre, radius, RGBColor(r, g, b).filled())).map_err(draw_error)?;
        root.draw(&Circle::new(centre, radius, BLACK.stroke_width(1))).map_err(draw_error)?;
        canvas.text("class token", (centre.0 + radius as i32 + 10, centre.1), 14, HPos::Left, VPos::Center)
    }
}

impl Picture for OverlayPicture<'_> {
    fn size(&self) -> (u32, u32) {
        self.layout.size
    }

    fn raster(&self) -> Option<&Raster> {
        Some(&self.raster)
    }

    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        self.draw_grid(canvas.root)?;
        self.draw_edges(canvas.root)?;
        self.draw_highlight(canvas.root)?;
        self.draw_token(canvas)
    }
}
