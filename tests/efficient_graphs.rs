//! Invariants of the efficient-attention patch graphs (BigBird, Vision Longformer, Swin shifted
//! windows, MaxViT grid attention, Reformer LSH), their union and their specs. Every expected
//! edge set is rebuilt here by brute force from the papers' rules (for Swin: by simulating the
//! cyclic shift and the attention mask), never read back from the code under test.

use patchgraph::graph::{
    Graph, GraphSpec, LshOptions, Neighbourhood, Topology, WindowKind, global_patches, relative_position_index,
};
use patchgraph::{Error, Matrix};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

fn sources(g: &Graph, i: usize) -> Vec<usize> {
    g.incoming(i).collect()
}

/// All edges `(j, i)` as a set.
fn edge_set(g: &Graph) -> BTreeSet<(usize, usize)> {
    (0..g.num_nodes()).flat_map(|i| g.incoming(i).map(move |j| (j, i))).collect()
}

/// The graph whose edges are `j -> i` for every pair with `rule(j, i)`, as a set.
fn rule_set(n: usize, rule: impl Fn(usize, usize) -> bool) -> BTreeSet<(usize, usize)> {
    (0..n).flat_map(|i| (0..n).map(move |j| (j, i))).filter(|&(j, i)| rule(j, i)).collect()
}

/// Sources strictly ascending per destination (so no duplicates) and every self-loop present.
fn check_ascending_with_self_loops(g: &Graph, what: &str) {
    for i in 0..g.num_nodes() {
        let s = sources(g, i);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{what}: node {i} sources not strictly ascending: {s:?}");
        assert!(s.contains(&i), "{what}: node {i} has no self-loop");
    }
}

fn is_symmetric(g: &Graph) -> bool {
    (0..g.num_nodes()).all(|i| g.incoming(i).all(|j| g.has_edge(i, j)))
}

/// An `Error::Invalid` whose message names `option`.
fn invalid_naming<T: std::fmt::Debug>(r: patchgraph::Result<T>, option: &str) {
    match r {
        Err(e @ Error::Invalid { .. }) => assert!(e.to_string().contains(option), "`{e}` does not name `{option}`"),
        other => panic!("expected Error::Invalid naming {option}, got {other:?}"),
    }
}

fn random_features(n: usize, d: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Matrix::from_fn(n, d, |_, _| rng.random::<f32>() * 2.0 - 1.0)
}

fn chebyshev(j: usize, i: usize, cols: usize) -> usize {
    (i / cols).abs_diff(j / cols).max((i % cols).abs_diff(j % cols))
}

fn in_threads<T: Send>(t: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(f)
}

/// `spec` built with a class token: node 0 reads every node (itself too), every patch reads
/// node 0 first, and the rest is the patch graph shifted by one.
fn check_class_token(spec: &str, rows: usize, cols: usize, features: Option<&Matrix>) {
    let spec: GraphSpec = spec.parse().unwrap();
    let patches = spec.build(rows, cols, features, false).unwrap();
    let g = spec.build(rows, cols, features, true).unwrap();
    let n = rows * cols;
    assert_eq!(g.num_nodes(), n + 1, "{spec}");
    assert_eq!(sources(&g, 0), (0..=n).collect::<Vec<_>>(), "{spec}: the token reads all");
    for i in 0..n {
        let mut want = vec![0];
        want.extend(patches.incoming(i).map(|j| j + 1));
        assert_eq!(sources(&g, i + 1), want, "{spec}: patch {i}");
    }
    assert_eq!(g.num_edges(), patches.num_edges() + 2 * n + 1, "{spec}");
}

// ---------------------------------------------------------------------------------------------
// BigBird

#[test]
fn bigbird_is_the_clipped_window_plus_random_outside_it() {
    for (rows, cols, window, random) in
        [(6, 6, 3, 3), (5, 7, 3, 2), (4, 4, 5, 0), (1, 9, 3, 4), (7, 3, 1, 5), (8, 8, 5, 7)]
    {
        let g = Graph::bigbird(rows, cols, window, random, 11).unwrap();
        let (n, h) = (rows * cols, (window - 1) / 2);
        let what = format!("bigbird {rows} x {cols}, window {window}, random {random}");
        check_ascending_with_self_loops(&g, &what);
        for i in 0..n {
            let in_window: Vec<usize> = (0..n).filter(|&j| chebyshev(j, i, cols) <= h).collect();
            let s = sources(&g, i);
            assert_eq!(s.len(), in_window.len() + random, "{what}: node {i}");
            assert!(in_window.iter().all(|j| s.contains(j)), "{what}: node {i} misses window patches");
            assert_eq!(s.iter().filter(|&&j| chebyshev(j, i, cols) > h).count(), random, "{what}: node {i}");
        }
        assert_eq!(g.topology(), &Topology::BigBird { rows, cols, window, random, seed: 11 });
        // The window part alone: symmetric, and the Chebyshev grid with self-loops.
        let w = Graph::bigbird(rows, cols, window, 0, 11).unwrap();
        assert!(is_symmetric(&w), "{what}");
        let want = rule_set(n, |j, i| chebyshev(j, i, cols) <= h);
        assert_eq!(edge_set(&w), want, "{what}");
        if h > 0 {
            assert_eq!(w.csr(), Graph::grid(rows, cols, Neighbourhood::Eight, h, true).unwrap().csr(), "{what}");
        }
    }
    // Random sources make it asymmetric (somewhere) on a roomy grid.
    assert!(!is_symmetric(&Graph::bigbird(8, 8, 3, 3, 0).unwrap()));
}

#[test]
fn bigbird_seeds_reproduce_and_differ_and_every_outside_patch_gets_drawn() {
    let a = Graph::bigbird(8, 8, 3, 3, 5).unwrap();
    assert_eq!(a, Graph::bigbird(8, 8, 3, 3, 5).unwrap());
    assert_ne!(edge_set(&a), edge_set(&Graph::bigbird(8, 8, 3, 3, 6).unwrap()));
    // Over many seeds, each of the 21 patches outside the corner's 2 x 2 window of a 5 x 5 grid
    // is drawn for the corner (a sampler stuck on part of the range would fail).
    let mut seen = BTreeSet::new();
    for seed in 0..200 {
        let g = Graph::bigbird(5, 5, 3, 2, seed).unwrap();
        seen.extend(g.incoming(0).filter(|&j| chebyshev(j, 0, 5) > 1));
    }
    assert_eq!(seen.len(), 21);
}

#[test]
fn bigbird_refuses_bad_options() {
    invalid_naming(Graph::bigbird(4, 4, 0, 1, 0), "bigbird window");
    invalid_naming(Graph::bigbird(4, 4, 2, 1, 0), "bigbird window");
    // 4 x 4, window 3: the interior windows hold 9, so 7 patches lie outside them.
    assert!(Graph::bigbird(4, 4, 3, 7, 0).is_ok());
    invalid_naming(Graph::bigbird(4, 4, 3, 8, 0), "bigbird random");
    invalid_naming(Graph::bigbird(3, 3, 9, 1, 0), "bigbird random"); // the window is the grid
    assert!(matches!(Graph::bigbird(0, 4, 3, 0, 0), Err(Error::Invalid { .. })));
    invalid_naming(Graph::bigbird(60_000, 60_000, 3, 0, 0), "2^31");
}

// ---------------------------------------------------------------------------------------------
// Vision Longformer

#[test]
fn global_patches_follow_their_formula() {
    assert_eq!(global_patches(36, 2), vec![9, 27]);
    assert_eq!(global_patches(10, 4), vec![1, 3, 6, 8]); // 1.25, 3.75, 6.25, 8.75
    assert_eq!(global_patches(196, 1), vec![98]);
    assert_eq!(global_patches(5, 5), vec![0, 1, 2, 3, 4]);
    assert!(global_patches(7, 0).is_empty());
    for n in 1..40 {
        for g in 0..=n {
            let p = global_patches(n, g);
            assert_eq!(p.len(), g);
            assert!(p.windows(2).all(|w| w[0] < w[1]), "{n}, {g}: {p:?}");
            for (k, &v) in p.iter().enumerate() {
                // v = floor((2k + 1) n / 2g)  <=>  2g v <= (2k + 1) n < 2g (v + 1).
                assert!(2 * g * v <= (2 * k + 1) * n && (2 * k + 1) * n < 2 * g * (v + 1), "{n}, {g}, {k}");
            }
        }
    }
}

#[test]
fn longformer_is_the_window_plus_globals_both_ways() {
    for (rows, cols, window, globals) in [(6, 6, 3, 2), (4, 5, 3, 1), (5, 5, 1, 3), (3, 7, 5, 0), (2, 2, 3, 4)] {
        let g = Graph::longformer(rows, cols, window, globals).unwrap();
        let (n, h) = (rows * cols, (window - 1) / 2);
        let what = format!("longformer {rows} x {cols}, window {window}, globals {globals}");
        // Globals by hand: evenly spread ids.
        let global: Vec<usize> = (0..globals).map(|k| (2 * k + 1) * n / (2 * globals)).collect();
        let want = rule_set(n, |j, i| chebyshev(j, i, cols) <= h || global.contains(&j) || global.contains(&i));
        assert_eq!(edge_set(&g), want, "{what}");
        check_ascending_with_self_loops(&g, &what);
        assert!(is_symmetric(&g), "{what}");
        for i in 0..n {
            let deg = if global.contains(&i) {
                n
            } else {
                (0..n).filter(|&j| chebyshev(j, i, cols) <= h || global.contains(&j)).count()
            };
            assert_eq!(g.in_degree(i), deg, "{what}: node {i}");
        }
        assert_eq!(g.topology(), &Topology::Longformer { rows, cols, window, globals });
    }
    // No globals: BigBird's window alone.
    assert_eq!(Graph::longformer(5, 6, 3, 0).unwrap().csr(), Graph::bigbird(5, 6, 3, 0, 0).unwrap().csr());
}

#[test]
fn longformer_refuses_bad_options() {
    invalid_naming(Graph::longformer(4, 4, 0, 1), "longformer window");
    invalid_naming(Graph::longformer(4, 4, 4, 1), "longformer window");
    assert!(Graph::longformer(4, 4, 3, 16).is_ok());
    invalid_naming(Graph::longformer(4, 4, 3, 17), "longformer globals");
}

// ---------------------------------------------------------------------------------------------
// Swin shifted windows

/// Swin's construction simulated: roll by `-s`, partition into `M` windows, mask by the three
/// regions `[0, len - M), [len - M, len - s), [len - s, len)` of the rolled axis. Returns the
/// (window, region) group of original coordinate `x` (`len` a multiple of `M`, `len > M`).
fn swin_group(x: usize, len: usize, m: usize, s: usize) -> (usize, usize) {
    let p = (x + len - s) % len; // position after torch.roll(shifts = -s)
    let region = if p < len - m {
        0
    } else if p < len - s {
        1
    } else {
        2
    };
    (p / m, if s == 0 { 0 } else { region })
}

#[test]
fn shifted_windows_are_what_cyclic_shift_and_mask_produce() {
    for (rows, cols, m, s) in [(6, 6, 3, 1), (8, 8, 4, 2), (8, 12, 4, 2), (14, 14, 7, 3), (6, 9, 3, 2), (8, 8, 4, 0)] {
        let g = Graph::shifted_window(rows, cols, m, s).unwrap();
        let n = rows * cols;
        let want = rule_set(n, |j, i| {
            swin_group(i / cols, rows, m, s) == swin_group(j / cols, rows, m, s)
                && swin_group(i % cols, cols, m, s) == swin_group(j % cols, cols, m, s)
        });
        let what = format!("swin {rows} x {cols}, M {m}, s {s}");
        assert_eq!(edge_set(&g), want, "{what}");
        check_ascending_with_self_loops(&g, &what);
        assert!(is_symmetric(&g), "{what}");
        assert_eq!(g.topology(), &Topology::ShiftedWindow { rows, cols, size: m, shift: s });
    }
}

#[test]
fn shifted_windows_clip_the_last_segment_and_degrees_are_segment_products() {
    // Segments [0, s), [s, s + M), ... clipped at the end; the id of x by hand.
    let seg = |x: usize, m: usize, s: usize| if x < s { 0 } else { 1 + (x - s) / m };
    for (rows, cols, m, s) in [(7, 5, 3, 1), (5, 10, 4, 3), (9, 9, 4, 2), (10, 7, 6, 5)] {
        let g = Graph::shifted_window(rows, cols, m, s).unwrap();
        let n = rows * cols;
        let same = |j: usize, i: usize| {
            seg(i / cols, m, s) == seg(j / cols, m, s) && seg(i % cols, m, s) == seg(j % cols, m, s)
        };
        assert_eq!(edge_set(&g), rule_set(n, same), "{rows} x {cols}, M {m}, s {s}");
        for i in 0..n {
            let r_len = (0..rows).filter(|&r| seg(r, m, s) == seg(i / cols, m, s)).count();
            let c_len = (0..cols).filter(|&c| seg(c, m, s) == seg(i % cols, m, s)).count();
            assert_eq!(g.in_degree(i), r_len * c_len);
        }
    }
}

#[test]
fn no_shift_is_the_partition_window_edge_for_edge() {
    for (rows, cols, m) in [(4, 4, 2), (6, 6, 3), (5, 7, 2), (14, 14, 7), (3, 8, 3), (5, 5, 1), (4, 6, 9)] {
        let a = Graph::shifted_window(rows, cols, m, 0).unwrap();
        let b = Graph::window(rows, cols, WindowKind::Partition, m).unwrap();
        assert_eq!(a.csr(), b.csr(), "{rows} x {cols}, M {m}");
        assert!(a.csr().is_some());
    }
}

#[test]
fn small_grids_get_one_unshifted_window_per_axis() {
    // M >= rows and M >= cols: one window (complete with self-loops), whatever the shift.
    for s in 0..7 {
        let g = Graph::shifted_window(4, 6, 7, s).unwrap();
        assert_eq!(edge_set(&g), rule_set(24, |_, _| true), "shift {s}");
    }
    // timm axis by axis: rows 3 <= M = 4 is one row segment; columns 8 > 4 keep the shift 2:
    // [0, 2), [2, 6), [6, 8).
    let g = Graph::shifted_window(3, 8, 4, 2).unwrap();
    assert_eq!(sources(&g, 0), vec![0, 1, 8, 9, 16, 17]);
    assert_eq!(g.in_degree(3), 3 * 4);
    assert_eq!(g.in_degree(23), 3 * 2);
}

#[test]
fn shifted_window_refuses_bad_options() {
    invalid_naming(Graph::shifted_window(4, 4, 0, 0), "shifted window size");
    invalid_naming(Graph::shifted_window(8, 8, 4, 4), "shifted window shift");
    invalid_naming(Graph::shifted_window(8, 8, 4, 9), "shifted window shift");
    invalid_naming(Graph::shifted_window(2, 2, 4, 4), "shifted window shift"); // even when clipped
}

/// Swin's `relative_position_index`, written out as in its `WindowAttention.__init__`.
fn swin_relative_position_index(m: usize) -> Vec<Vec<usize>> {
    // coords = stack(meshgrid(arange(M), arange(M), indexing = "ij")); flatten -> [2, M*M].
    let coords: Vec<[isize; 2]> = (0..m).flat_map(|h| (0..m).map(move |w| [h as isize, w as isize])).collect();
    let mm = m as isize;
    coords
        .iter()
        .map(|ci| {
            coords
                .iter()
                .map(|cj| {
                    // relative_coords = coords[:, :, None] - coords[:, None, :], permuted to [.., .., 2]
                    let mut rel = [ci[0] - cj[0], ci[1] - cj[1]];
                    rel[0] += mm - 1; // shift to start from 0
                    rel[1] += mm - 1;
                    rel[0] *= 2 * mm - 1;
                    (rel[0] + rel[1]) as usize // relative_coords.sum(-1)
                })
                .collect()
        })
        .collect()
}

#[test]
fn relative_position_index_matches_swins_construction() {
    for m in [2usize, 3, 7] {
        let table = swin_relative_position_index(m);
        let mut used = BTreeSet::new();
        for (i, row) in table.iter().enumerate() {
            for (j, &want) in row.iter().enumerate() {
                let dy = (i / m) as isize - (j / m) as isize;
                let dx = (i % m) as isize - (j % m) as isize;
                assert_eq!(relative_position_index(dy, dx, m), Some(want), "M {m}, ({i}, {j})");
                used.insert(want);
            }
        }
        // Every row of the (2M - 1)^2 bias table is used.
        assert_eq!(used, (0..(2 * m - 1).pow(2)).collect::<BTreeSet<_>>());
        let mi = m as isize;
        for (dy, dx) in [(mi, 0), (0, mi), (-mi, 0), (0, -mi), (mi + 3, mi)] {
            assert_eq!(relative_position_index(dy, dx, m), None, "M {m}, ({dy}, {dx})");
        }
    }
    assert_eq!(relative_position_index(0, 0, 0), None);
    assert_eq!(relative_position_index(0, 0, 1), Some(0));
}

// ---------------------------------------------------------------------------------------------
// MaxViT grid attention

#[test]
fn grid_attention_groups_patches_with_the_same_offset_in_their_cell() {
    for (rows, cols, grid) in [(6, 6, 2), (4, 6, 2), (6, 6, 3), (8, 4, 4), (5, 5, 1), (3, 3, 3), (12, 9, 3)] {
        let g = Graph::grid_attention(rows, cols, grid).unwrap();
        let (n, sr, sc) = (rows * cols, rows / grid, cols / grid);
        let want = rule_set(n, |j, i| (i / cols) % sr == (j / cols) % sr && (i % cols) % sc == (j % cols) % sc);
        let what = format!("grid attention {rows} x {cols}, G {grid}");
        assert_eq!(edge_set(&g), want, "{what}");
        assert!((0..n).all(|i| g.in_degree(i) == grid * grid), "{what}");
        check_ascending_with_self_loops(&g, &what);
        assert!(is_symmetric(&g), "{what}");
        assert_eq!(g.topology(), &Topology::GridAttention { rows, cols, grid });
    }
    // G = rows = cols is the complete graph; G = 1 self-loops only.
    assert_eq!(Graph::grid_attention(3, 3, 3).unwrap().num_edges(), 81);
    assert_eq!(Graph::grid_attention(4, 6, 1).unwrap().num_edges(), 24);
}

#[test]
fn grid_attention_refuses_bad_options() {
    invalid_naming(Graph::grid_attention(6, 6, 0), "grid attention size");
    invalid_naming(Graph::grid_attention(6, 6, 4), "grid attention size");
    invalid_naming(Graph::grid_attention(6, 8, 3), "grid attention size");
    invalid_naming(Graph::grid_attention(4, 4, 8), "grid attention size");
}

// ---------------------------------------------------------------------------------------------
// Reformer LSH

#[test]
fn lsh_equals_its_reference_on_1_and_3_threads() {
    for n in [15, 16, 17, 63, 64, 65] {
        for (d, buckets, rounds, chunk) in [
            (8, 2, 1, None),
            (5, 4, 2, None),
            (16, 8, 3, None),
            (3, 6, 1, None),
            (8, 2, 1, Some(3)),
            (5, 4, 2, Some(1)),
            (16, 8, 3, Some(200)),
        ] {
            let mut x = random_features(n, d, (n * 31 + d) as u64);
            x.row_mut(n / 2).iter_mut().for_each(|v| *v = 0.0); // a zero row: bucket 0
            let opts = LshOptions { buckets, rounds, seed: n as u64, chunk };
            let want = Graph::lsh_reference(&x, &opts).unwrap();
            for t in [1, 3] {
                let got = in_threads(t, || Graph::lsh(&x, &opts).unwrap());
                assert_eq!(got, want, "N {n}, D {d}, {opts:?}, {t} threads");
            }
        }
    }
}

#[test]
fn lsh_degrees_are_bounded_and_sources_ascending() {
    for n in [15, 16, 17, 64, 65] {
        for (buckets, rounds) in [(2, 1), (4, 2), (8, 3), (16, 2)] {
            if buckets > n {
                continue;
            }
            let x = random_features(n, 6, n as u64);
            let g = Graph::lsh(&x, &LshOptions { buckets, rounds, seed: 3, chunk: None }).unwrap();
            let c = n.div_ceil(buckets);
            let what = format!("N {n}, {buckets} buckets, {rounds} rounds");
            check_ascending_with_self_loops(&g, &what);
            assert!((0..n).all(|i| g.in_degree(i) <= rounds * 2 * c), "{what}");
            assert_eq!(g.topology(), &Topology::Lsh(LshOptions { buckets, rounds, seed: 3, chunk: None }));
        }
    }
}

#[test]
fn lsh_chunks_one_bucket_by_hand() {
    // Positive multiples of one vector hash alike in every round: one bucket holding all 8
    // nodes in id order; buckets = 2 gives c = 4, chunks {0..3} and {4..7}. A node of chunk 0
    // reads chunk 0; a node of chunk 1 reads both.
    let x = Matrix::from_fn(8, 3, |i, d| (i + 1) as f32 * [0.3, -1.0, 2.0][d]);
    for rounds in [1, 3] {
        let g = Graph::lsh(&x, &LshOptions { buckets: 2, rounds, seed: 9, chunk: None }).unwrap();
        for i in 0..4 {
            assert_eq!(sources(&g, i), vec![0, 1, 2, 3]);
        }
        for i in 4..8 {
            assert_eq!(sources(&g, i), (0..8).collect::<Vec<_>>());
        }
        assert!(!is_symmetric(&g)); // 0 -> 5 but not 5 -> 0
    }
    // All-zero features: the argmax of zeros is index 0 for everyone, the same picture.
    let g = Graph::lsh(&Matrix::zeros(8, 3), &LshOptions { buckets: 2, rounds: 1, seed: 0, chunk: None }).unwrap();
    assert_eq!(sources(&g, 2), vec![0, 1, 2, 3]);
    assert_eq!(sources(&g, 7), (0..8).collect::<Vec<_>>());
}

#[test]
fn lsh_fixed_chunk_bounds_degree_whatever_n() {
    // Fixed buckets and chunk: the in-degree bound rounds 2c does not grow with N, and the
    // by-hand picture holds: one bucket of 8 nodes cut into chunks of 3 -> {0,1,2} {3,4,5} {6,7}.
    let x = Matrix::from_fn(8, 3, |i, d| (i + 1) as f32 * [0.3, -1.0, 2.0][d]);
    let g = Graph::lsh(&x, &LshOptions { buckets: 2, rounds: 1, seed: 9, chunk: Some(3) }).unwrap();
    assert_eq!(sources(&g, 1), vec![0, 1, 2]);
    assert_eq!(sources(&g, 4), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(sources(&g, 7), vec![3, 4, 5, 6, 7]);
    for n in [64, 256, 1024] {
        let x = random_features(n, 6, n as u64);
        let opts = LshOptions { buckets: 4, rounds: 2, seed: 1, chunk: Some(8) };
        let g = Graph::lsh(&x, &opts).unwrap();
        assert!((0..n).all(|i| g.in_degree(i) <= 2 * 2 * 8), "N {n}");
        check_ascending_with_self_loops(&g, &format!("N {n}"));
    }
    invalid_naming(Graph::lsh(&x, &LshOptions { buckets: 2, rounds: 1, seed: 0, chunk: Some(0) }), "LSH chunk");
    assert_eq!("lsh:8:2:1:16".parse::<GraphSpec>().unwrap().to_string(), "lsh:8:2:1:16");
    assert!("bigbird:3:2:0:1".parse::<GraphSpec>().is_err());
}

#[test]
fn lsh_visits_nodes_in_its_first_round_order() {
    // The visiting order is round 0's (bucket, node) order: nodes of one bucket are adjacent.
    let x = random_features(64, 8, 2);
    let g = Graph::lsh(&x, &LshOptions { buckets: 8, rounds: 2, seed: 4, chunk: None }).unwrap();
    let order = g.visit_order().expect("LSH graphs carry a visiting order").to_vec();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..64).collect::<Vec<u32>>());
    // Consecutive nodes of the order share sources far more often than consecutive ids do.
    let shared = |a: usize, b: usize| sources(&g, a).iter().filter(|s| sources(&g, b).contains(s)).count();
    let by_order: usize = order.windows(2).map(|w| shared(w[0] as usize, w[1] as usize)).sum();
    let by_id: usize = (0..63).map(|i| shared(i, i + 1)).sum();
    assert!(by_order > 2 * by_id, "{by_order} vs {by_id}");
    // With the class token: node 0 first, the patches shifted by one.
    let spec: GraphSpec = "lsh:8:2:4".parse().unwrap();
    let with_cls = spec.build(8, 8, Some(&x), true).unwrap();
    let o = with_cls.visit_order().unwrap();
    assert_eq!(o[0], 0);
    assert!(o[1..].iter().zip(&order).all(|(&a, &b)| a == b + 1));
}

#[test]
fn lsh_seeds_reproduce_and_differ() {
    let x = random_features(64, 8, 1);
    let opts = LshOptions { buckets: 8, rounds: 1, seed: 4, chunk: None };
    let a = Graph::lsh(&x, &opts).unwrap();
    assert_eq!(a, Graph::lsh(&x, &opts).unwrap());
    let b = Graph::lsh(&x, &LshOptions { seed: 5, ..opts }).unwrap();
    assert_ne!(edge_set(&a), edge_set(&b));
    // More rounds only add edges (round 0 is the same rotation).
    let c = Graph::lsh(&x, &LshOptions { rounds: 2, ..opts }).unwrap();
    assert!(edge_set(&a).is_subset(&edge_set(&c)));
}

#[test]
fn lsh_refuses_bad_options() {
    let x = random_features(16, 4, 0);
    let opts = |buckets, rounds| LshOptions { buckets, rounds, seed: 0, chunk: None };
    invalid_naming(Graph::lsh(&x, &opts(3, 1)), "LSH buckets");
    invalid_naming(Graph::lsh(&x, &opts(0, 1)), "LSH buckets");
    invalid_naming(Graph::lsh(&x, &opts(1, 1)), "LSH buckets");
    invalid_naming(Graph::lsh(&x, &opts(18, 1)), "buckets larger than N");
    assert!(Graph::lsh(&x, &opts(16, 1)).is_ok());
    invalid_naming(Graph::lsh(&x, &opts(4, 0)), "LSH rounds");
    invalid_naming(Graph::lsh_reference(&x, &opts(4, 0)), "LSH rounds");
    let mut bad = x.clone();
    bad.row_mut(5)[2] = f32::NAN;
    assert!(matches!(Graph::lsh(&bad, &opts(4, 1)), Err(Error::NonFinite { position: 22, .. })));
    bad.row_mut(5)[2] = f32::INFINITY;
    assert!(matches!(Graph::lsh_reference(&bad, &opts(4, 1)), Err(Error::NonFinite { .. })));
}

// ---------------------------------------------------------------------------------------------
// Union

#[test]
fn union_is_the_set_union_of_the_parts() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for n in [1usize, 5, 17] {
        for parts in 1..4 {
            // Random edge lists with duplicates and arbitrary order, and an implicit complete part.
            let mut graphs: Vec<Graph> = (0..parts)
                .map(|_| {
                    let e = rng.random_range(0..3 * n);
                    let src: Vec<usize> = (0..e).map(|_| rng.random_range(0..n)).collect();
                    let dst: Vec<usize> = (0..e).map(|_| rng.random_range(0..n)).collect();
                    Graph::from_edge_index(n, &src, &dst).unwrap()
                })
                .collect();
            if parts == 3 {
                graphs[1] = Graph::complete(n, false);
            }
            let u = Graph::union(&graphs).unwrap();
            let want: BTreeSet<_> = graphs.iter().flat_map(edge_set).collect();
            assert_eq!(edge_set(&u), want, "N {n}, {parts} parts");
            assert_eq!(u.num_edges(), want.len(), "N {n}: duplicates kept");
            for i in 0..n {
                assert!(sources(&u, i).windows(2).all(|w| w[0] < w[1]));
            }
            let tags: Vec<Topology> = graphs.iter().map(|g| g.topology().clone()).collect();
            assert_eq!(u.topology(), &Topology::Union(tags));
        }
    }
}

#[test]
fn union_keeps_shared_blocks_and_refuses_other_node_sets() {
    let a = Graph::disjoint_union(&[Graph::complete(2, true), Graph::complete(3, true)]).unwrap();
    let b = Graph::disjoint_union(&[Graph::random(2, 1, 0, false).unwrap(), Graph::complete(3, false)]).unwrap();
    assert_eq!(Graph::union(&[a.clone(), b.clone()]).unwrap().blocks(), &[0, 2, 5]);
    let c = Graph::random(5, 2, 0, true).unwrap();
    assert_eq!(Graph::union(&[a, c]).unwrap().blocks(), &[0, 5]);
    invalid_naming(Graph::union(&[b, Graph::complete(4, true)]), "graph union");
    invalid_naming(Graph::union(&[]), "graph union");
}

// ---------------------------------------------------------------------------------------------
// Specs

#[test]
fn new_specs_round_trip_through_display() {
    for (s, canonical) in [
        ("bigbird:7", "bigbird:7:3:0"),
        ("bigbird:7:2", "bigbird:7:2:0"),
        ("bigbird:7:2:5", "bigbird:7:2:5"),
        ("longformer:3", "longformer:3:0"),
        ("longformer:3:2", "longformer:3:2"),
        ("gridattn:7", "gridattn:7"),
        ("lsh:8", "lsh:8:1:0"),
        ("lsh:8:2", "lsh:8:2:0"),
        ("lsh:8:2:1", "lsh:8:2:1"),
        ("swin:7", "swin:7"),
        ("swin:7:3", "swin:7:3"),
        ("swin:7:0", "swin:7:0"),
        ("global", "global:1"),
        ("global:4", "global:4"),
        ("window:7+global+random:3", "window:7+global:1+random:3:0"),
        ("nat:3+lsh:8:2:1", "nat:3+lsh:8:2:1"),
        ("complete+window:2", "complete+window:2"),
        ("knn:+3+grid:8", "knn:3+grid8:1"),
    ] {
        let spec: GraphSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), canonical, "{s}");
        let back: GraphSpec = canonical.parse().unwrap();
        assert_eq!(back, spec, "{s}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, format!("\"{canonical}\""));
        assert_eq!(serde_json::from_str::<GraphSpec>(&json).unwrap(), spec);
    }
    assert_eq!("bigbird:7".parse::<GraphSpec>().unwrap(), GraphSpec::BigBird { window: 7, random: 3, seed: 0 });
    assert_eq!("swin:4".parse::<GraphSpec>().unwrap(), GraphSpec::Swin { size: 4, shift: None });
    assert_eq!(
        "window:7+global+random:3".parse::<GraphSpec>().unwrap(),
        GraphSpec::Union(vec![
            GraphSpec::Window { kind: WindowKind::Partition, size: 7 },
            GraphSpec::Global { globals: 1 },
            GraphSpec::Random { degree: 3, seed: 0 },
        ])
    );
    // A leading `+` on a number is still the number, as before unions existed.
    assert_eq!("knn:+3".parse::<GraphSpec>().unwrap(), GraphSpec::SpatialKnn { k: 3 });
}

#[test]
fn bad_new_specs_are_typed_errors() {
    for s in [
        "bigbird",
        "bigbird:7:1:2:3",
        "longformer:3:1:1",
        "gridattn",
        "gridattn:2:2",
        "lsh",
        "lsh:8:1:1:1:1",
        "lsh:8:1:1:x",
        "swin",
        "swin:4:1:1",
        "global:x",
        "global:1:2",
        "window:7+",
        "+window:7",
        "window:7+foo",
        "window:7+complete:1",
        "random:3:1:1",
    ] {
        assert!(matches!(s.parse::<GraphSpec>(), Err(Error::Invalid { .. })), "{s}");
    }
    let msg = "foo".parse::<GraphSpec>().unwrap_err().to_string();
    for name in ["bigbird", "longformer", "swin", "gridattn", "lsh", "global", "A+B"] {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn for_layer_alternates_swin_shifts() {
    let swin: GraphSpec = "swin:4".parse().unwrap();
    let shifts: Vec<Option<usize>> = (0..4)
        .map(|l| match swin.for_layer(l) {
            GraphSpec::Swin { size: 4, shift } => shift,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(shifts, [Some(0), Some(2), Some(0), Some(2)]);
    // Layer 1 builds the shifted graph, layer 0 (and the unresolved spec) the regular one.
    let g1 = swin.for_layer(1).build(8, 8, None, false).unwrap();
    assert_eq!(edge_set(&g1), edge_set(&Graph::shifted_window(8, 8, 4, 2).unwrap()));
    assert_eq!(swin.build(8, 8, None, false).unwrap(), swin.for_layer(0).build(8, 8, None, false).unwrap());
    // Inside unions; fixed shifts and other specs unchanged.
    let u: GraphSpec = "swin:6+global+swin:3:1".parse().unwrap();
    assert_eq!(u.for_layer(1).to_string(), "swin:6:3+global:1+swin:3:1");
    assert_eq!(u.for_layer(2).to_string(), "swin:6:0+global:1+swin:3:1");
    for s in ["swin:4:1", "window:7", "bigbird:3:1:2", "lsh:4:2:1"] {
        let spec: GraphSpec = s.parse().unwrap();
        assert_eq!(spec.for_layer(1), spec, "{s}");
    }
}

#[test]
fn needs_features_and_its_error() {
    for (s, needs) in [
        ("fknn:3", true),
        ("fknn-cos:3:2", true),
        ("lsh:4", true),
        ("nat:3+lsh:8:2:1", true),
        ("window:2+fknn:2", true),
        ("window:7+global+random:3", false),
        ("bigbird:3", false),
        ("swin:4", false),
        ("complete", false),
    ] {
        let spec: GraphSpec = s.parse().unwrap();
        assert_eq!(spec.needs_features(), needs, "{s}");
        if needs {
            let err = spec.build(4, 4, None, false).unwrap_err().to_string();
            assert!(err.contains(&spec.to_string()) && err.contains("features"), "{s}: {err}");
        }
    }
    // Features of the wrong height are a shape error.
    let spec: GraphSpec = "lsh:4".parse().unwrap();
    assert!(matches!(spec.build(4, 4, Some(&Matrix::zeros(15, 2)), false), Err(Error::Shape { .. })));
}

#[test]
fn new_specs_build_their_builders_graphs() {
    let x = random_features(36, 5, 2);
    let cases: [(&str, Graph); 8] = [
        ("bigbird:3:2:9", Graph::bigbird(6, 6, 3, 2, 9).unwrap()),
        ("longformer:3:2", Graph::longformer(6, 6, 3, 2).unwrap()),
        ("swin:4:2", Graph::shifted_window(6, 6, 4, 2).unwrap()),
        ("swin:4", Graph::shifted_window(6, 6, 4, 0).unwrap()),
        ("gridattn:3", Graph::grid_attention(6, 6, 3).unwrap()),
        ("lsh:6:2:1", Graph::lsh(&x, &LshOptions { buckets: 6, rounds: 2, seed: 1, chunk: None }).unwrap()),
        ("global:2", Graph::longformer(6, 6, 1, 2).unwrap()),
        ("window:3+global", {
            let parts =
                [Graph::window(6, 6, WindowKind::Partition, 3).unwrap(), Graph::longformer(6, 6, 1, 1).unwrap()];
            Graph::union(&parts).unwrap()
        }),
    ];
    for (s, want) in cases {
        let spec: GraphSpec = s.parse().unwrap();
        assert_eq!(spec.build(6, 6, Some(&x), false).unwrap(), want, "{s}");
        check_class_token(s, 6, 6, Some(&x));
    }
}

#[test]
fn global_spec_is_globals_both_ways_and_self_loops() {
    let g = "global:2".parse::<GraphSpec>().unwrap().build(4, 5, None, false).unwrap();
    let global = [5, 15]; // floor(20 / 4), floor(3 * 20 / 4)
    assert_eq!(global_patches(20, 2), global);
    let want = rule_set(20, |j, i| j == i || global.contains(&j) || global.contains(&i));
    assert_eq!(edge_set(&g), want);
    assert!(is_symmetric(&g));
    invalid_naming("global:21".parse::<GraphSpec>().unwrap().build(4, 5, None, false), "longformer globals");
}

#[test]
fn union_specs_are_the_union_of_their_parts_with_one_class_token() {
    let x = random_features(64, 4, 3);
    for s in ["window:4+global+random:3", "nat:3+lsh:8:2:1", "swin:4:2+gridattn:2+bigbird:3:1:7", "grid4:1+knn:3"] {
        let spec: GraphSpec = s.parse().unwrap();
        let GraphSpec::Union(parts) = &spec else { panic!("{s} is not a union") };
        let g = spec.build(8, 8, Some(&x), false).unwrap();
        let want: BTreeSet<_> = parts.iter().flat_map(|p| edge_set(&p.build(8, 8, Some(&x), false).unwrap())).collect();
        assert_eq!(edge_set(&g), want, "{s}");
        check_ascending_with_self_loops(&g, s);
        check_class_token(s, 8, 8, Some(&x));
    }
    // `complete` anywhere in a union makes it the (implicit) complete graph, token included.
    let g = "window:2+complete".parse::<GraphSpec>().unwrap().build(4, 4, None, true).unwrap();
    assert_eq!(g, Graph::complete(17, true));
}

#[test]
fn existing_specs_are_unchanged() {
    for (s, want) in [
        ("complete", Graph::complete(16, true)),
        ("grid8:1", Graph::grid(4, 4, Neighbourhood::Eight, 1, true).unwrap()),
        ("window:2", Graph::window(4, 4, WindowKind::Partition, 2).unwrap()),
        ("nat:3", Graph::window(4, 4, WindowKind::Sliding, 3).unwrap()),
        ("knn:5", Graph::spatial_knn(4, 4, 5, true).unwrap()),
        ("random:3:2", Graph::random(16, 3, 2, false).unwrap()),
    ] {
        let spec: GraphSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
        assert_eq!(spec.build(4, 4, None, false).unwrap(), want, "{s}");
        assert!(!spec.needs_features());
    }
}

/// Every new spec with every few-field combination of awkward numbers, on small and odd grids,
/// with and without features and token: a typed error or a valid graph, never a panic; what
/// parses round-trips.
#[test]
fn new_specs_never_panic() {
    let names = ["bigbird", "longformer", "swin", "gridattn", "lsh", "global", "window:2+lsh", "nat:1+global"];
    let fields = ["0", "1", "2", "3", "4", "7", "18446744073709551615", "x"];
    let mut specs = Vec::new();
    for name in names {
        specs.push(name.to_string());
        for a in fields {
            specs.push(format!("{name}:{a}"));
            for b in fields {
                specs.push(format!("{name}:{a}:{b}"));
                for c in ["0", "5", "18446744073709551615"] {
                    specs.push(format!("{name}:{a}:{b}:{c}"));
                }
            }
        }
    }
    let (mut built, mut refused) = (0, 0);
    for s in &specs {
        let Ok(spec) = s.parse::<GraphSpec>() else { continue };
        assert_eq!(spec.to_string().parse::<GraphSpec>().unwrap(), spec, "{s}");
        for (rows, cols) in [(1, 1), (2, 3), (4, 4), (3, 5), (6, 6)] {
            let x = random_features(rows * cols, 3, 1);
            for (features, token) in [(Some(&x), false), (Some(&x), true), (None, false)] {
                match spec.build(rows, cols, features, token) {
                    Ok(g) => {
                        built += 1;
                        assert_eq!(g.num_nodes(), rows * cols + usize::from(token), "{s}");
                        for i in 0..g.num_nodes() {
                            let src = sources(&g, i);
                            assert!(src.windows(2).all(|w| w[0] < w[1]) && src.contains(&i), "{s}: node {i}");
                        }
                    }
                    Err(Error::Invalid { .. } | Error::Shape { .. }) => refused += 1,
                    Err(e) => panic!("{s}: unexpected error {e:?}"),
                }
            }
        }
    }
    assert!(built > 1000 && refused > 1000, "{built} built, {refused} refused");
}

/// Absurd round counts are refused up front (they used to size a `Vec` of rounds from the range
/// and abort on a capacity overflow).
#[test]
fn lsh_refuses_absurd_rounds() {
    let x = random_features(16, 2, 0);
    invalid_naming(Graph::lsh(&x, &LshOptions { buckets: 2, rounds: usize::MAX, seed: 0, chunk: None }), "LSH rounds");
    invalid_naming(
        Graph::lsh(&x, &LshOptions { buckets: 2, rounds: (1 << 31) / 16 + 1, seed: 0, chunk: None }),
        "LSH rounds",
    );
    invalid_naming(
        Graph::lsh_reference(&x, &LshOptions { buckets: 2, rounds: usize::MAX, seed: 0, chunk: None }),
        "LSH rounds",
    );
}
