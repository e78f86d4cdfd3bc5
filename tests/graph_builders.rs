//! Invariants of the graph builders, with expected values worked by hand from the definitions.

use patchgraph::graph::{Graph, KnnOptions, Metric, Neighbourhood, Topology, WindowKind};
use patchgraph::{Error, Matrix};
use petgraph::stable_graph::StableGraph;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn sources(g: &Graph, i: usize) -> Vec<usize> {
    g.incoming(i).collect()
}

fn sorted_sources(g: &Graph, i: usize) -> Vec<usize> {
    let mut s = sources(g, i);
    s.sort_unstable();
    s
}

fn has_duplicates(g: &Graph) -> bool {
    (0..g.num_nodes()).any(|i| sorted_sources(g, i).windows(2).any(|w| w[0] == w[1]))
}

fn is_symmetric(g: &Graph) -> bool {
    (0..g.num_nodes()).all(|i| g.incoming(i).all(|j| g.has_edge(i, j)))
}

fn is_invalid<T: std::fmt::Debug>(r: patchgraph::Result<T>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

fn random_features(n: usize, d: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Matrix::from_fn(n, d, |_, _| rng.random::<f32>() * 2.0 - 1.0)
}

// ---------------------------------------------------------------------------------------------
// Grid

#[test]
fn four_grid_degrees_and_lists() {
    // 4 rows x 5 cols; node = r * 5 + c.
    let g = Graph::grid(4, 5, Neighbourhood::Four, 1, false).unwrap();
    assert_eq!(g.num_nodes(), 20);
    assert_eq!(sources(&g, 0), vec![1, 5]); // corner (0, 0)
    assert_eq!(sources(&g, 4), vec![3, 9]); // corner (0, 4)
    assert_eq!(sources(&g, 2), vec![1, 3, 7]); // top edge (0, 2)
    assert_eq!(sources(&g, 7), vec![2, 6, 8, 12]); // interior (1, 2)
    assert_eq!(sources(&g, 19), vec![14, 18]); // corner (3, 4)
    // Edges: horizontal 4 * 4, vertical 3 * 5, each both ways.
    assert_eq!(g.num_edges(), 2 * (16 + 15));
    assert_eq!(
        g.topology(),
        &Topology::Grid { rows: 4, cols: 5, neighbourhood: Neighbourhood::Four, radius: 1, self_loops: false }
    );
}

#[test]
fn eight_grid_degrees_and_lists() {
    let g = Graph::grid(3, 3, Neighbourhood::Eight, 1, false).unwrap();
    assert_eq!(sources(&g, 4), vec![0, 1, 2, 3, 5, 6, 7, 8]);
    assert_eq!(sources(&g, 0), vec![1, 3, 4]);
    assert_eq!(sources(&g, 1), vec![0, 2, 3, 4, 5]);
    let with_self = Graph::grid(3, 3, Neighbourhood::Eight, 1, true).unwrap();
    assert_eq!(sources(&with_self, 0), vec![0, 1, 3, 4]);
    assert_eq!(with_self.num_edges(), g.num_edges() + 9);
}

#[test]
fn grid_radius_two_interior_degrees() {
    // Centre (3, 3) of a 7 x 7 grid: Manhattan ball of radius 2 has 13 cells, Chebyshev 25.
    let four = Graph::grid(7, 7, Neighbourhood::Four, 2, false).unwrap();
    assert_eq!(four.in_degree(24), 12);
    assert_eq!(sorted_sources(&four, 24), vec![10, 16, 17, 18, 22, 23, 25, 26, 30, 31, 32, 38]);
    let eight = Graph::grid(7, 7, Neighbourhood::Eight, 2, false).unwrap();
    assert_eq!(eight.in_degree(24), 24);
    // Corner (0, 0), Manhattan 2: (0,1) (0,2) (1,0) (1,1) (2,0).
    assert_eq!(sources(&four, 0), vec![1, 2, 7, 8, 14]);
}

#[test]
fn grid_bad_inputs_are_errors() {
    assert!(is_invalid(Graph::grid(0, 3, Neighbourhood::Four, 1, false)));
    assert!(is_invalid(Graph::grid(3, 0, Neighbourhood::Eight, 1, false)));
    assert!(is_invalid(Graph::grid(3, 3, Neighbourhood::Four, 0, false)));
    assert!(is_invalid(Graph::grid(usize::MAX, 2, Neighbourhood::Four, 1, false)));
    assert!(is_invalid(Graph::grid(1 << 20, 1 << 20, Neighbourhood::Four, 1, false)));
}

#[test]
fn one_cell_grid_and_huge_radius() {
    let g = Graph::grid(1, 1, Neighbourhood::Eight, usize::MAX, true).unwrap();
    assert_eq!(sources(&g, 0), vec![0]);
    let g = Graph::grid(2, 3, Neighbourhood::Four, usize::MAX, false).unwrap();
    assert!((0..6).all(|i| g.in_degree(i) == 5));
}

proptest! {
    #[test]
    fn grid_matches_its_definition(rows in 1usize..7, cols in 1usize..7, radius in 1usize..4, eight in any::<bool>(), self_loops in any::<bool>()) {
        let nb = if eight { Neighbourhood::Eight } else { Neighbourhood::Four };
        let g = Graph::grid(rows, cols, nb, radius, self_loops).unwrap();
        prop_assert!(!has_duplicates(&g));
        prop_assert!(is_symmetric(&g));
        for i in 0..rows * cols {
            for j in 0..rows * cols {
                let (dr, dc) = ((i / cols).abs_diff(j / cols), (i % cols).abs_diff(j % cols));
                let near = if eight { dr.max(dc) <= radius } else { dr + dc <= radius };
                prop_assert_eq!(g.has_edge(j, i), near && (i != j || self_loops));
            }
            let s = sources(&g, i);
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]), "sources ascending");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Windows

#[test]
fn partition_windows_by_hand() {
    let g = Graph::window(4, 4, WindowKind::Partition, 2).unwrap();
    assert_eq!(sources(&g, 0), vec![0, 1, 4, 5]);
    assert_eq!(sources(&g, 10), vec![10, 11, 14, 15]);
    assert_eq!(sources(&g, 7), vec![2, 3, 6, 7]);
    assert_eq!(g.num_edges(), 4 * 16);
    // 5 x 5 in 2 x 2: the last row/column of windows is 1 cell thick.
    let g = Graph::window(5, 5, WindowKind::Partition, 2).unwrap();
    assert_eq!(sources(&g, 24), vec![24]);
    assert_eq!(sources(&g, 20), vec![20, 21]);
    assert_eq!(sources(&g, 9), vec![4, 9]); // (1, 4): rows 0..2, column 4 only
    assert_eq!(sources(&g, 14), vec![14, 19]); // (2, 4): rows 2..4, column 4 only
    assert_eq!(sources(&g, 18), vec![12, 13, 17, 18]); // (3, 3): rows 2..4, columns 2..4
    // Window cell counts 4,4,2 / 4,4,2 / 2,2,1: edges 4*16 + 4*4 + 1.
    assert_eq!(g.num_edges(), 81);
    assert!(is_symmetric(&g));
    assert!(!has_duplicates(&g));
}

#[test]
fn partition_is_a_union_of_complete_blocks() {
    let (rows, cols, s) = (5usize, 7usize, 3usize);
    let g = Graph::window(rows, cols, WindowKind::Partition, s).unwrap();
    // Renumber cells window by window (windows row-major, cells row-major inside).
    let (wr, wc) = (rows.div_ceil(s), cols.div_ceil(s));
    let mut perm = vec![0; rows * cols];
    let mut sizes = Vec::new();
    let mut next = 0;
    for a in 0..wr {
        for b in 0..wc {
            let cells: Vec<usize> = (a * s..((a + 1) * s).min(rows))
                .flat_map(|r| (b * s..((b + 1) * s).min(cols)).map(move |c| r * cols + c))
                .collect();
            sizes.push(cells.len());
            for c in cells {
                perm[c] = next;
                next += 1;
            }
        }
    }
    assert_eq!(sizes, vec![9, 9, 3, 6, 6, 2]);
    let blocks: Vec<Graph> = sizes.iter().map(|&m| Graph::complete(m, true)).collect();
    let union = Graph::disjoint_union(&blocks).unwrap();
    let relabelled = g.permute(&perm).unwrap();
    for i in 0..rows * cols {
        assert_eq!(sorted_sources(&relabelled, i), sorted_sources(&union, i), "node {i}");
    }
}

#[test]
fn sliding_windows_by_hand() {
    let g = Graph::window(4, 4, WindowKind::Sliding, 3).unwrap();
    assert_eq!(sources(&g, 0), vec![0, 1, 2, 4, 5, 6, 8, 9, 10]);
    assert_eq!(sources(&g, 5), vec![0, 1, 2, 4, 5, 6, 8, 9, 10]);
    assert_eq!(sources(&g, 15), vec![5, 6, 7, 9, 10, 11, 13, 14, 15]);
    // (0, 2): rows 0..3, columns clamp(2 - 1, 0, 1) = 1 .. 4.
    assert_eq!(sources(&g, 2), vec![1, 2, 3, 5, 6, 7, 9, 10, 11]);
    let g = Graph::window(5, 5, WindowKind::Sliding, 3).unwrap();
    assert_eq!(sources(&g, 12), vec![6, 7, 8, 11, 12, 13, 16, 17, 18]);
    // Not symmetric at the border: 0 reads 10 (cell (2, 0)), 10's window (rows 1..4) lacks 0.
    assert!(g.has_edge(10, 0) && !g.has_edge(0, 10));
    // A window as large as the grid is the complete graph with self-loops.
    let g = Graph::window(3, 3, WindowKind::Sliding, 3).unwrap();
    assert!((0..9).all(|i| sources(&g, i) == (0..9).collect::<Vec<_>>()));
}

#[test]
fn window_bad_inputs_are_errors() {
    assert!(is_invalid(Graph::window(4, 4, WindowKind::Partition, 0)));
    assert!(is_invalid(Graph::window(0, 4, WindowKind::Partition, 2)));
    assert!(is_invalid(Graph::window(4, 4, WindowKind::Sliding, 0)));
    assert!(is_invalid(Graph::window(4, 4, WindowKind::Sliding, 2)));
    assert!(is_invalid(Graph::window(4, 6, WindowKind::Sliding, 5)));
    assert!(is_invalid(Graph::window(6, 4, WindowKind::Sliding, 5)));
    // A partition window larger than the grid is clipped: one window.
    let g = Graph::window(2, 3, WindowKind::Partition, usize::MAX).unwrap();
    assert!((0..6).all(|i| g.in_degree(i) == 6));
}

proptest! {
    #[test]
    fn sliding_degree_is_size_squared(rows in 1usize..9, cols in 1usize..9, half in 0usize..4) {
        let size = 2 * half + 1;
        let r = Graph::window(rows, cols, WindowKind::Sliding, size);
        if size > rows || size > cols {
            prop_assert!(is_invalid(r));
        } else {
            let g = r.unwrap();
            prop_assert!(!has_duplicates(&g));
            for i in 0..rows * cols {
                prop_assert_eq!(g.in_degree(i), size * size);
                prop_assert!(g.has_edge(i, i));
                // Every source is within the window half-width after the inward shift: at most
                // size - 1 away on each axis.
                for j in g.incoming(i) {
                    prop_assert!((i / cols).abs_diff(j / cols) < size && (i % cols).abs_diff(j % cols) < size);
                }
            }
        }
    }

    #[test]
    fn partition_windows_are_equivalence_classes(rows in 1usize..9, cols in 1usize..9, size in 1usize..5) {
        let g = Graph::window(rows, cols, WindowKind::Partition, size).unwrap();
        prop_assert!(!has_duplicates(&g));
        for i in 0..rows * cols {
            for j in 0..rows * cols {
                let same = (i / cols / size, i % cols / size) == (j / cols / size, j % cols / size);
                prop_assert_eq!(g.has_edge(j, i), same);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spatial k-NN

#[test]
fn spatial_knn_by_hand() {
    let g = Graph::spatial_knn(3, 3, 4, false).unwrap();
    assert_eq!(sources(&g, 4), vec![1, 3, 5, 7]);
    // Corner 0: 1 and 3 at 1, 4 at sqrt 2, then 2 and 6 tie at 2: the lower index.
    assert_eq!(sources(&g, 0), vec![1, 3, 4, 2]);
    // Cell 5 = (1, 2): 2, 4, 8 at 1, then 1 and 7 at sqrt 2 -> 1.
    assert_eq!(sources(&g, 5), vec![2, 4, 8, 1]);
    let g = Graph::spatial_knn(3, 3, 5, true).unwrap();
    assert_eq!(sources(&g, 4), vec![4, 1, 3, 5, 7]);
    // A 1 x 20 line needs the search square to widen several times.
    let g = Graph::spatial_knn(1, 20, 5, false).unwrap();
    assert_eq!(sources(&g, 0), vec![1, 2, 3, 4, 5]);
    assert_eq!(sources(&g, 19), vec![18, 17, 16, 15, 14]);
    assert_eq!(sources(&g, 10), vec![9, 11, 8, 12, 7]);
    // Every other cell: k = N - 1.
    let g = Graph::spatial_knn(2, 2, 3, false).unwrap();
    assert_eq!(sources(&g, 0), vec![1, 2, 3]);
}

#[test]
fn spatial_knn_bad_inputs_are_errors() {
    assert!(is_invalid(Graph::spatial_knn(3, 3, 0, false)));
    assert!(is_invalid(Graph::spatial_knn(3, 3, 9, false)));
    assert!(Graph::spatial_knn(3, 3, 9, true).is_ok());
    assert!(is_invalid(Graph::spatial_knn(3, 3, 10, true)));
    assert!(is_invalid(Graph::spatial_knn(1, 1, 1, false)));
    assert!(is_invalid(Graph::spatial_knn(0, 1, 1, true)));
}

proptest! {
    #[test]
    fn spatial_knn_matches_its_definition(rows in 1usize..8, cols in 1usize..8, k in 1usize..20, include_self in any::<bool>()) {
        let n = rows * cols;
        let available = if include_self { n } else { n - 1 };
        let r = Graph::spatial_knn(rows, cols, k, include_self);
        if k > available {
            prop_assert!(is_invalid(r));
            return Ok(());
        }
        let g = r.unwrap();
        prop_assert!(!has_duplicates(&g));
        for i in 0..n {
            let mut ranked: Vec<(usize, usize)> = (0..n).filter(|&j| j != i || include_self).map(|j| {
                let (dr, dc) = ((i / cols).abs_diff(j / cols), (i % cols).abs_diff(j % cols));
                (dr * dr + dc * dc, j)
            }).collect();
            ranked.sort();
            let want: Vec<usize> = ranked[..k].iter().map(|&(_, j)| j).collect();
            prop_assert_eq!(sources(&g, i), want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Feature k-NN

fn line_points() -> Matrix {
    // Five points on a line at 0, 1, 3, 6, 10.
    Matrix::from_vec(5, 1, vec![0., 1., 3., 6., 10.]).unwrap()
}

#[test]
fn dilation_picks_every_dth_rank() {
    let x = line_points();
    // Rankings with self (squared distances in brackets):
    // R_0 = 0, 1 [1], 2 [9], 3 [36], 4 [100]
    // R_1 = 1, 0 [1], 2 [4], 3 [25], 4 [81]
    // R_2 = 2, 1 [4], 0 [9], 3 [9] (tie: lower index first), 4 [49]
    // R_3 = 3, 2 [9], 4 [16], 1 [25], 0 [36]
    // R_4 = 4, 3 [16], 2 [49], 1 [81], 0 [100]
    let opts = KnnOptions { k: 2, dilation: 2, metric: Metric::L2, include_self: true };
    let want = [vec![0, 2], vec![1, 2], vec![2, 0], vec![3, 4], vec![4, 2]];
    for graph in [Graph::feature_knn(&x, &opts).unwrap(), Graph::feature_knn_reference(&x, &opts).unwrap()] {
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&sources(&graph, i), w, "node {i}");
        }
        assert_eq!(graph.topology(), &Topology::FeatureKnn(opts));
    }
    // Without self, ranks 0 and 2 of R_i minus i.
    let opts = KnnOptions { include_self: false, ..opts };
    let want = [vec![1, 3], vec![0, 3], vec![1, 3], vec![2, 1], vec![3, 1]];
    let g = Graph::feature_knn(&x, &opts).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&sources(&g, i), w, "node {i}");
    }
    // Dilation 1, k = 3, with self: the three nearest in rank order.
    let opts = KnnOptions { k: 3, dilation: 1, metric: Metric::L2, include_self: true };
    let g = Graph::feature_knn(&x, &opts).unwrap();
    assert_eq!(sources(&g, 2), vec![2, 1, 0]);
    assert_eq!(sources(&g, 4), vec![4, 3, 2]);
}

#[test]
fn cosine_ranks_by_angle_with_exact_ties() {
    // Angles 0, 45, 90, 180 degrees, and 0 again (twice as long).
    let x = Matrix::from_vec(5, 2, vec![1., 0., 1., 1., 0., 1., -1., 0., 2., 0.]).unwrap();
    let opts = KnnOptions { k: 3, dilation: 1, metric: Metric::Cosine, include_self: false };
    for g in [Graph::feature_knn(&x, &opts).unwrap(), Graph::feature_knn_reference(&x, &opts).unwrap()] {
        // Node 0: 4 [0], 1 [1 - 1/sqrt 2], 2 [1], 3 [2].
        assert_eq!(sources(&g, 0), vec![4, 1, 2]);
        assert_eq!(sources(&g, 4), vec![0, 1, 2]);
        // Node 2 (90 degrees): 1 [0.29], then 0, 3, 4 all at exactly 1: by index.
        assert_eq!(sources(&g, 2), vec![1, 0, 3]);
        // Node 3 (180 degrees): 2 [1], then 1 [1.71], then 0 and 4 at 2: 0.
        assert_eq!(sources(&g, 3), vec![2, 1, 0]);
    }
}

#[test]
fn cosine_with_a_zero_row() {
    // Row 2 is zero: its cosine with anything is 0, its distance 1.
    let x = Matrix::from_vec(4, 2, vec![1., 0., -1., 0., 0., 0., 1., 1.]).unwrap();
    let opts = KnnOptions { k: 3, dilation: 1, metric: Metric::Cosine, include_self: false };
    for g in [Graph::feature_knn(&x, &opts).unwrap(), Graph::feature_knn_reference(&x, &opts).unwrap()] {
        assert_eq!(sources(&g, 2), vec![0, 1, 3]);
        // Node 0: 3 [0.29], 2 [1], 1 [2].
        assert_eq!(sources(&g, 0), vec![3, 2, 1]);
    }
}

#[test]
fn feature_knn_bad_inputs_are_errors() {
    let x = line_points();
    let base = KnnOptions { k: 2, dilation: 1, metric: Metric::L2, include_self: false };
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { k: 0, ..base })));
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { dilation: 0, ..base })));
    // 2 * 3 = 6 > 4 others.
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { dilation: 3, ..base })));
    assert!(Graph::feature_knn(&x, &KnnOptions { k: 4, ..base }).is_ok());
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { k: 5, ..base })));
    assert!(Graph::feature_knn(&x, &KnnOptions { k: 5, include_self: true, ..base }).is_ok());
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { k: 3, dilation: 2, include_self: true, ..base })));
    assert!(is_invalid(Graph::feature_knn(&x, &KnnOptions { k: usize::MAX, dilation: 2, ..base })));
    assert!(is_invalid(Graph::feature_knn(&Matrix::zeros(0, 3), &base)));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let x = Matrix::from_vec(3, 2, vec![0., 1., 2., bad, 4., 5.]).unwrap();
        let err = Graph::feature_knn(&x, &KnnOptions { k: 1, ..base }).unwrap_err();
        assert!(matches!(err, Error::NonFinite { position: 3, .. }), "{err:?}");
        assert!(matches!(Graph::feature_knn_reference(&x, &KnnOptions { k: 1, ..base }), Err(Error::NonFinite { .. })));
    }
}

#[test]
fn feature_knn_with_no_feature_columns_ranks_by_index() {
    // D = 0: every distance is 0, so ties decide: the lowest indices.
    let x = Matrix::zeros(4, 0);
    let opts = KnnOptions { k: 2, dilation: 1, metric: Metric::L2, include_self: false };
    let g = Graph::feature_knn(&x, &opts).unwrap();
    assert_eq!(sources(&g, 0), vec![1, 2]);
    assert_eq!(sources(&g, 3), vec![0, 1]);
}

/// The fast path agrees with the f64 oracle around the SIMD and tile widths, for 1 and 3 threads.
#[test]
fn feature_knn_matches_the_reference() {
    let sizes = [15usize, 16, 17, 63, 64, 65];
    let pools: Vec<rayon::ThreadPool> =
        [1, 3].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
    let mut seed = 0;
    for &n in &sizes {
        for &d in &sizes {
            seed += 1;
            let x = random_features(n, d, seed);
            for metric in [Metric::L2, Metric::Cosine] {
                for (k, dilation, include_self) in [(9, 1, true), (4, 3, false), (1, 1, false), (3, 2, true)] {
                    let opts = KnnOptions { k, dilation, metric, include_self };
                    let want = Graph::feature_knn_reference(&x, &opts).unwrap();
                    for pool in &pools {
                        let got = pool.install(|| Graph::feature_knn(&x, &opts)).unwrap();
                        assert_eq!(got, want, "N {n}, D {d}, {opts:?}, {} threads", pool.current_num_threads());
                    }
                }
            }
        }
    }
}

#[test]
fn feature_knn_large_n_spans_many_tiles_and_is_thread_independent() {
    let x = random_features(300, 96, 77);
    let opts = KnnOptions { k: 9, dilation: 2, metric: Metric::L2, include_self: true };
    let want = Graph::feature_knn_reference(&x, &opts).unwrap();
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let g = pool.install(|| Graph::feature_knn(&x, &opts)).unwrap();
        assert_eq!(g, want, "{threads} threads");
        assert!((0..300).all(|i| g.in_degree(i) == 9));
        assert!(!has_duplicates(&g));
    }
}

// ---------------------------------------------------------------------------------------------
// Global node

#[test]
fn global_node_by_hand() {
    // 2 x 2 four-grid: 0-1, 0-2, 1-3, 2-3.
    let g = Graph::grid(2, 2, Neighbourhood::Four, 1, false).unwrap().with_global_node(false);
    assert_eq!(g.num_nodes(), 5);
    assert_eq!(sources(&g, 0), vec![1, 2, 3, 4]);
    assert_eq!(sources(&g, 1), vec![0, 2, 3]); // old 0 read 1, 2
    assert_eq!(sources(&g, 4), vec![0, 2, 3]); // old 3 read 1, 2
    assert_eq!(g.num_edges(), 8 + 2 * 4);
    assert!(is_symmetric(&g));
    assert!(!g.has_edge(0, 0));
    assert!(matches!(g.topology(), Topology::WithGlobal(inner) if matches!(**inner, Topology::Grid { .. })));
    let g = Graph::grid(2, 2, Neighbourhood::Four, 1, false).unwrap().with_global_node(true);
    assert_eq!(sources(&g, 0), vec![0, 1, 2, 3, 4]);
    assert_eq!(g.num_edges(), 8 + 2 * 4 + 1);
}

#[test]
fn vit_graph_stays_dense_with_the_class_token() {
    let g = Graph::complete(196, true).with_global_node(true);
    assert_eq!(g.complete_self_loops(), Some(true));
    assert_eq!(g.num_nodes(), 197);
    assert_eq!(g.num_edges(), 197 * 197);
    assert_eq!(g.blocks(), &[0, 197]);
    // Policy mismatch: stored, the token without a self-loop, the patches with theirs.
    let g = Graph::complete(3, true).with_global_node(false);
    assert!(!g.is_complete());
    assert_eq!(sources(&g, 0), vec![1, 2, 3]);
    assert_eq!(sources(&g, 2), vec![0, 1, 2, 3]);
    // A batch gets one token joining everything: one block.
    let batch = Graph::disjoint_union(&[Graph::complete(2, false), Graph::complete(2, false)]).unwrap();
    let g = batch.with_global_node(false);
    assert!(!g.is_complete());
    assert_eq!(g.blocks(), &[0, 5]);
    assert_eq!(sources(&g, 3), vec![0, 4]);
}

// ---------------------------------------------------------------------------------------------
// Random

#[test]
fn random_graph_invariants() {
    for (n, degree, self_loops) in
        [(10, 3, false), (10, 9, false), (10, 10, true), (1, 1, true), (1, 0, false), (0, 0, false), (50, 7, true)]
    {
        let g = Graph::random(n, degree, 7, self_loops).unwrap();
        assert_eq!(g, Graph::random(n, degree, 7, self_loops).unwrap());
        assert_eq!(g.num_nodes(), n);
        for i in 0..n {
            let s = sources(&g, i);
            assert_eq!(s.len(), degree);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "distinct and ascending");
            assert!(s.iter().all(|&j| j < n));
            if !self_loops {
                assert!(!s.contains(&i));
            }
        }
    }
    // Taking every candidate gives every candidate.
    let g = Graph::random(6, 5, 1, false).unwrap();
    assert_eq!(sources(&g, 2), vec![0, 1, 3, 4, 5]);
    assert_ne!(Graph::random(40, 3, 1, false).unwrap(), Graph::random(40, 3, 2, false).unwrap());
    assert!(is_invalid(Graph::random(5, 5, 0, false)));
    assert!(is_invalid(Graph::random(5, 6, 0, true)));
    assert!(is_invalid(Graph::random(0, 1, 0, true)));
}

#[test]
fn random_graph_is_roughly_uniform() {
    // 20 nodes, 4 of the 19 others per destination, over 200 seeds: each (j, i) pair is drawn
    // 200 * 4 / 19 = 42.1 times on average (standard deviation about 5.8).
    let mut counts = vec![0usize; 400];
    for seed in 0..200 {
        let g = Graph::random(20, 4, seed, false).unwrap();
        for i in 0..20 {
            for j in g.incoming(i) {
                counts[i * 20 + j] += 1;
            }
        }
    }
    for i in 0..20 {
        for j in 0..20 {
            let c = counts[i * 20 + j];
            if i == j {
                assert_eq!(c, 0);
            } else {
                assert!((20..=70).contains(&c), "{j} -> {i} drawn {c} times");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Self-loops

#[test]
fn self_loops_follow_pyg() {
    // Into 0: 1, 0, 2, 0. Into 1: nothing. Into 2: 2, 1.
    let g = Graph::from_edge_index(3, &[1, 0, 2, 0, 2, 1], &[0, 0, 0, 0, 2, 2]).unwrap();
    let added = g.add_self_loops();
    assert_eq!(sources(&added, 0), vec![1, 2, 0]);
    assert_eq!(sources(&added, 1), vec![1]);
    assert_eq!(sources(&added, 2), vec![1, 2]);
    assert_eq!(added.num_edges(), 3 + 1 + 2);
    let removed = g.remove_self_loops();
    assert_eq!(sources(&removed, 0), vec![1, 2]);
    assert_eq!(sources(&removed, 1), Vec::<usize>::new());
    assert_eq!(sources(&removed, 2), vec![1]);
    assert_eq!(removed.topology(), &Topology::Custom);
}

#[test]
fn self_loops_keep_blocks_and_implicit_complete_graphs() {
    assert_eq!(Graph::complete(3, false).add_self_loops(), Graph::complete(3, true));
    assert_eq!(Graph::complete(3, true).remove_self_loops(), Graph::complete(3, false));
    let batch = Graph::disjoint_union(&[Graph::complete(2, false), Graph::complete(3, false)]).unwrap();
    let with = batch.add_self_loops();
    assert_eq!(with.complete_self_loops(), Some(true));
    assert_eq!(with.blocks(), &[0, 2, 5]);
    assert_eq!(sources(&with, 3), vec![2, 3, 4]);
    let grids = [
        Graph::grid(2, 2, Neighbourhood::Four, 1, false).unwrap(),
        Graph::grid(1, 3, Neighbourhood::Four, 1, false).unwrap(),
    ];
    let batch = Graph::disjoint_union(&grids).unwrap();
    let with = batch.add_self_loops();
    assert_eq!(with.blocks(), &[0, 4, 7]);
    assert_eq!(sources(&with, 5), vec![4, 6, 5]);
    assert_eq!(with.remove_self_loops().edge_index(), batch.edge_index());
}

proptest! {
    #[test]
    fn self_loop_edits_on_random_edge_lists(n in 1usize..8, edges in proptest::collection::vec((0usize..8, 0usize..8), 0..30)) {
        let (src, dst): (Vec<usize>, Vec<usize>) = edges.iter().map(|&(a, b)| (a % n, b % n)).unzip();
        let g = Graph::from_edge_index(n, &src, &dst).unwrap();
        let added = g.add_self_loops();
        let removed = g.remove_self_loops();
        for i in 0..n {
            let others: Vec<usize> = g.incoming(i).filter(|&j| j != i).collect();
            prop_assert_eq!(sources(&removed, i), others.clone());
            let mut with_self = others;
            with_self.push(i);
            prop_assert_eq!(sources(&added, i), with_self);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge lists, batches

#[test]
fn edge_index_out_of_range_is_a_typed_error() {
    let err = Graph::from_edge_index(3, &[0, 3], &[1, 2]).unwrap_err();
    assert!(
        matches!(err, Error::NodeOutOfRange { index: 3, num_nodes: 3, ref what } if what == "edge_index[0][1]"),
        "{err:?}"
    );
    let err = Graph::from_edge_index(3, &[0, 1], &[1, 7]).unwrap_err();
    assert!(
        matches!(err, Error::NodeOutOfRange { index: 7, num_nodes: 3, ref what } if what == "edge_index[1][1]"),
        "{err:?}"
    );
    assert!(matches!(Graph::from_edge_index(3, &[0, 1], &[1]), Err(Error::Shape { .. })));
    assert!(matches!(Graph::from_csr(2, vec![0, 1, 2], vec![0, 2]), Err(Error::NodeOutOfRange { index: 2, .. })));
}

#[test]
fn disjoint_union_offsets_blocks() {
    let a = Graph::grid(2, 2, Neighbourhood::Four, 1, false).unwrap();
    let b = Graph::grid(1, 3, Neighbourhood::Four, 1, false).unwrap();
    let u = Graph::disjoint_union(&[a, b]).unwrap();
    assert_eq!(u.blocks(), &[0, 4, 7]);
    assert_eq!(u.num_edges(), 8 + 4);
    assert_eq!(sources(&u, 0), vec![1, 2]);
    assert_eq!(sources(&u, 4), vec![5]);
    assert_eq!(sources(&u, 5), vec![4, 6]);
    assert_eq!(u.block_of(5), 1);
}

// ---------------------------------------------------------------------------------------------
// petgraph and DOT

#[test]
fn petgraph_round_trips() {
    let graphs = [
        Graph::grid(3, 4, Neighbourhood::Eight, 1, true).unwrap(),
        Graph::window(5, 5, WindowKind::Sliding, 3).unwrap(),
        Graph::random(30, 4, 3, false).unwrap().with_global_node(true),
        Graph::feature_knn(
            &random_features(20, 5, 1),
            &KnnOptions { k: 3, dilation: 2, metric: Metric::L2, include_self: false },
        )
        .unwrap(),
        Graph::complete(4, false),
        Graph::from_edge_index(5, &[1, 1, 0], &[0, 0, 3]).unwrap(), // a parallel edge, isolated node 4
    ];
    for g in &graphs {
        let pg = g.to_petgraph().unwrap();
        assert_eq!((pg.node_count(), pg.edge_count()), (g.num_nodes(), g.num_edges()));
        assert_eq!(Graph::from_petgraph(&pg).unwrap().edge_index(), g.edge_index());
        let sg = g.to_stable_graph().unwrap();
        assert_eq!(Graph::from_stable_graph(&sg).unwrap().edge_index(), g.edge_index());
    }
    // petgraph's Csr keeps edges sorted by source: the round trip gives ascending sources.
    for g in &graphs[..5] {
        let back = Graph::from_petgraph_csr(&g.to_petgraph_csr().unwrap()).unwrap();
        assert_eq!(back.num_nodes(), g.num_nodes());
        for i in 0..g.num_nodes() {
            assert_eq!(sources(&back, i), sorted_sources(g, i));
        }
    }
    assert!(is_invalid(graphs[5].to_petgraph_csr()));
    let isolated = Graph::from_edge_index(4, &[0], &[1]).unwrap();
    assert_eq!(isolated.to_petgraph_csr().unwrap().node_count(), 4);
}

#[test]
fn petgraph_undirected_and_stable_graphs() {
    // Undirected {0, 1} and the self-loop {1, 1}: 0 -> 1, 1 -> 0, 1 -> 1.
    let mut ug = petgraph::graph::UnGraph::<(), ()>::new_undirected();
    let (a, b, _c) = (ug.add_node(()), ug.add_node(()), ug.add_node(()));
    ug.add_edge(a, b, ());
    ug.add_edge(b, b, ());
    let g = Graph::from_petgraph(&ug).unwrap();
    assert_eq!(g.num_nodes(), 3);
    assert_eq!(g.num_edges(), 3);
    assert_eq!(sources(&g, 0), vec![1]);
    assert_eq!(sources(&g, 1), vec![0, 1]);
    // Undirected Csr stores both directions already.
    let mut csr = petgraph::csr::Csr::<(), (), petgraph::Undirected>::with_nodes(3);
    csr.add_edge(0, 1, ());
    csr.add_edge(2, 2, ());
    let g = Graph::from_petgraph_csr(&csr).unwrap();
    assert_eq!(g.num_edges(), 3);
    assert_eq!(sources(&g, 1), vec![0]);
    assert_eq!(sources(&g, 0), vec![1]);
    assert_eq!(sources(&g, 2), vec![2]);
    // StableGraph with a removed node: a, b, d renumbered 0, 1, 2; c's edges go with it.
    let mut sg = StableGraph::<&str, ()>::new();
    let (a, b, c, d) = (sg.add_node("a"), sg.add_node("b"), sg.add_node("c"), sg.add_node("d"));
    sg.add_edge(a, b, ());
    sg.add_edge(c, d, ());
    sg.add_edge(b, d, ());
    sg.add_edge(d, a, ());
    sg.remove_node(c);
    let g = Graph::from_stable_graph(&sg).unwrap();
    assert_eq!(g.num_nodes(), 3);
    assert_eq!(g.num_edges(), 3);
    assert_eq!(sources(&g, 1), vec![0]);
    assert_eq!(sources(&g, 2), vec![1]);
    assert_eq!(sources(&g, 0), vec![2]);
}

#[test]
fn dot_output() {
    let g = Graph::grid(1, 3, Neighbourhood::Four, 1, false).unwrap();
    let want = "digraph {\n  // Grid { rows: 1, cols: 3, neighbourhood: Four, radius: 1, self_loops: false }\n  0;\n  1;\n  2;\n  1 -> 0;\n  0 -> 1;\n  2 -> 1;\n  1 -> 2;\n}\n";
    assert_eq!(g.to_dot(), want);
    let g = Graph::from_edge_index(2, &[0], &[1]).unwrap();
    let dot = g.to_dot_labelled(|i| ["say \"hi\"", "back\\slash"][i].to_string());
    assert_eq!(
        dot,
        "digraph {\n  // Custom\n  0 [label=\"say \\\"hi\\\"\"];\n  1 [label=\"back\\\\slash\"];\n  0 -> 1;\n}\n"
    );
}

// ---------------------------------------------------------------------------------------------
// No panics on any small input

proptest! {
    #[test]
    fn builders_never_panic(rows in 0usize..6, cols in 0usize..6, p in 0usize..12, q in 0usize..4, flag in any::<bool>(), seed in any::<u64>()) {
        let _ = Graph::grid(rows, cols, Neighbourhood::Four, p, flag);
        let _ = Graph::grid(rows, cols, Neighbourhood::Eight, p, flag);
        let _ = Graph::window(rows, cols, WindowKind::Partition, p);
        let _ = Graph::window(rows, cols, WindowKind::Sliding, p);
        let _ = Graph::spatial_knn(rows, cols, p, flag);
        let _ = Graph::random(rows * cols, p, seed, flag);
        let x = random_features(rows * 2, cols, seed);
        for metric in [Metric::L2, Metric::Cosine] {
            let opts = KnnOptions { k: p, dilation: q, metric, include_self: flag };
            let fast = Graph::feature_knn(&x, &opts);
            let slow = Graph::feature_knn_reference(&x, &opts);
            prop_assert_eq!(fast.is_ok(), slow.is_ok());
            if let Ok(g) = fast {
                prop_assert!((0..g.num_nodes()).all(|i| g.in_degree(i) == p));
            }
        }
    }
}
