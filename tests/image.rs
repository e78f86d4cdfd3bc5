//! Tests of `patchgraph::image`: patchify layout (worked by hand, and against a strided conv),
//! resize / crop / normalise on hand-worked values, loading the bundled photos, typed errors.

use std::path::PathBuf;

use image::{DynamicImage, GenericImageView};
use patchgraph::Error;
use patchgraph::Matrix;
use patchgraph::image::*;
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/images").join(name)
}

/// A file in the system temp dir, unique to this process and test.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("patchgraph-image-test-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("temp dir is writable");
    path
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "at {i}: got {g}, want {w}");
    }
}

// ---------------------------------------------------------------- patchify, worked by hand

#[test]
fn patchify_hand_worked_1x4x4_p2() {
    // The image, values written out (row y, column x holds 4y + x):
    //   0  1 |  2  3
    //   4  5 |  6  7
    //  ------+------
    //   8  9 | 10 11
    //  12 13 | 14 15
    let img = ChwImage::new(1, 4, 4, (0..16).map(|v| v as f32).collect()).unwrap();
    let p = patchify(&img, 2).unwrap();
    assert_eq!(p.shape(), (4, 4));
    // Rows in patch-grid row-major order (0,0), (0,1), (1,0), (1,1); inside, row-major pixels.
    assert_eq!(p.row(0), &[0., 1., 4., 5.]);
    assert_eq!(p.row(1), &[2., 3., 6., 7.]);
    assert_eq!(p.row(2), &[8., 9., 12., 13.]);
    assert_eq!(p.row(3), &[10., 11., 14., 15.]);
    assert_eq!(unpatchify(&p, 1, 2, 2, 2).unwrap(), img);
}

#[test]
fn patchify_hand_worked_channels_then_rows() {
    // Two channels of a single 2 x 2 patch: channel 0 = [1 2; 3 4], channel 1 = [5 6; 7 8].
    // The row is the conv-weight flattening [c][dy][dx]: all of channel 0, then channel 1.
    let img = ChwImage::new(2, 2, 2, vec![1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
    assert_eq!(patchify(&img, 2).unwrap().as_slice(), &[1., 2., 3., 4., 5., 6., 7., 8.]);

    // Non-square 1 x 2 x 6 (rows 0..6 and 6..12) with P = 2: a 1 x 3 grid.
    let img = ChwImage::new(1, 2, 6, (0..12).map(|v| v as f32).collect()).unwrap();
    let p = patchify(&img, 2).unwrap();
    assert_eq!(p.shape(), (3, 4));
    assert_eq!(p.as_slice(), &[0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
}

#[test]
fn patch_policies_hand_worked() {
    // 1 x 3 x 5, value 10y + x, P = 2.
    let img = ChwImage::from_fn(1, 3, 5, |_, y, x| (10 * y + x) as f32).unwrap();
    assert!(matches!(patchify(&img, 2), Err(Error::Image { .. })));
    // CropCentre keeps 2 x 4: margins 1 (rows) and 1 (columns) round half to even -> 0, so rows
    // 0..2 and columns 0..4.
    let c = patchify_with(&img, 2, PatchPolicy::CropCentre).unwrap();
    assert_eq!(c.as_slice(), &[0., 1., 10., 11., 2., 3., 12., 13.]);
    // PadZero: 4 x 6, a 2 x 3 grid; the last patch holds pixel (2, 4) = 24 and three zeros.
    let z = patchify_with(&img, 2, PatchPolicy::PadZero).unwrap();
    assert_eq!(z.shape(), (6, 4));
    assert_eq!(z.row(2), &[4., 0., 14., 0.]);
    assert_eq!(z.row(5), &[24., 0., 0., 0.]);
    assert_eq!(PatchPolicy::PadZero.grid(3, 5, 2).unwrap(), (2, 3));
    assert_eq!(PatchPolicy::CropCentre.grid(3, 5, 2).unwrap(), (1, 2));
}

// ---------------------------------------------------------------- patchify, properties

fn image_strategy() -> impl Strategy<Value = (ChwImage, usize, usize, usize)> {
    (prop_oneof![Just(1usize), Just(3usize), 1usize..5], 1usize..6, 1usize..5, 1usize..5).prop_flat_map(
        |(c, p, gh, gw)| {
            prop::collection::vec(-1.0f32..1.0, c * gh * p * gw * p)
                .prop_map(move |data| (ChwImage::new(c, gh * p, gw * p, data).unwrap(), p, gh, gw))
        },
    )
}

proptest! {
    #[test]
    fn patchify_round_trip((img, p, gh, gw) in image_strategy()) {
        let (c, h, w) = img.shape();
        prop_assert_eq!(patch_grid(h, w, p).unwrap(), (gh, gw));
        let patches = patchify(&img, p).unwrap();
        prop_assert_eq!(patches.shape(), (gh * gw, c * p * p));
        // The documented index formula, element by element.
        for r in 0..gh {
            for q in 0..gw {
                for k in 0..c {
                    for dy in 0..p {
                        for dx in 0..p {
                            prop_assert_eq!(
                                patches.get(r * gw + q, k * p * p + dy * p + dx),
                                img.get(k, r * p + dy, q * p + dx)
                            );
                        }
                    }
                }
            }
        }
        prop_assert_eq!(unpatchify(&patches, c, p, gh, gw).unwrap(), img);
    }

    /// timm's patch embedding is a stride-P conv; on patchified rows it is a matrix product.
    #[test]
    fn patchify_makes_strided_conv_a_matmul(
        (img, p, gh, gw) in image_strategy(),
        d in 1usize..6,
        seed in any::<u64>(),
    ) {
        let c = img.channels();
        // A random conv weight [D, C, P, P] from a small LCG (proptest already shrinks the image).
        let mut state = seed | 1;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let weight: Vec<f32> = (0..d * c * p * p).map(|_| next()).collect();
        let w_at = |o: usize, k: usize, dy: usize, dx: usize| {
            weight[((o * c + k) * p + dy) * p + dx]
        };

        // conv2d(img, weight, stride = P, no padding) by plain loops: [D x gh x gw].
        let mut conv = vec![0.0f32; d * gh * gw];
        for o in 0..d {
            for r in 0..gh {
                for q in 0..gw {
                    let mut s = 0.0;
                    for k in 0..c {
                        for dy in 0..p {
                            for dx in 0..p {
                                s += w_at(o, k, dy, dx) * img.get(k, r * p + dy, q * p + dx);
                            }
                        }
                    }
                    conv[(o * gh + r) * gw + q] = s;
                }
            }
        }

        // patchify(img) x weight_flat^T: [gh*gw x C*P*P] x [C*P*P x D].
        let patches = patchify(&img, p).unwrap();
        let w_flat = Matrix::from_vec(d, c * p * p, weight.clone()).unwrap();
        for r in 0..gh {
            for q in 0..gw {
                for o in 0..d {
                    let row = patches.row(r * gw + q);
                    let dot: f32 = row.iter().zip(w_flat.row(o)).map(|(a, b)| a * b).sum();
                    let want = conv[(o * gh + r) * gw + q];
                    prop_assert!(
                        (dot - want).abs() <= 1e-5,
                        "d {} patch ({}, {}): {} vs {}", o, r, q, dot, want
                    );
                }
            }
        }
    }

    /// Whatever the sizes and policy: a grid as the policy says, or a typed error; never a panic.
    #[test]
    fn patchify_with_any_size_never_panics(
        c in 1usize..4, h in 1usize..20, w in 1usize..20, p in 0usize..8, policy_ix in 0usize..3,
    ) {
        let policy = [PatchPolicy::Exact, PatchPolicy::CropCentre, PatchPolicy::PadZero][policy_ix];
        let img = ChwImage::filled(c, h, w, 1.0).unwrap();
        match (patchify_with(&img, p, policy), policy.grid(h, w, p)) {
            (Ok(m), Ok((gh, gw))) => prop_assert_eq!(m.shape(), (gh * gw, c * p * p)),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(
                false,
                "patchify {:?} disagrees with grid {:?}", a.map(|m| m.shape()), b
            ),
        }
        if p == 0 {
            let invalid = matches!(patchify_with(&img, p, policy), Err(Error::Invalid { .. }));
            prop_assert!(invalid, "p = 0 must be Error::Invalid");
        } else if h < p || w < p {
            let image_err = matches!(patchify_with(&img, p, policy), Err(Error::Image { .. }));
            prop_assert!(image_err, "smaller than a patch must be Error::Image");
        }
    }

    #[test]
    fn resize_of_a_constant_stays_constant(
        c in 1usize..4, h in 1usize..24, w in 1usize..24, nh in 1usize..24, nw in 1usize..24,
        v in -2.0f32..2.0, bicubic in any::<bool>(),
    ) {
        let f = if bicubic { Interpolation::Bicubic } else { Interpolation::Bilinear };
        let img = ChwImage::filled(c, h, w, v).unwrap();
        let r = resize_exact(&img, nw, nh, f).unwrap();
        prop_assert_eq!(r.shape(), (c, nh, nw));
        for &x in r.as_slice() {
            prop_assert!((x - v).abs() <= 1e-5, "{} vs {}", x, v);
        }
    }

    #[test]
    fn resize_to_the_same_size_is_identity(
        (img, _p, _gh, _gw) in image_strategy(),
        bicubic in any::<bool>(),
    ) {
        let f = if bicubic { Interpolation::Bicubic } else { Interpolation::Bilinear };
        let (_, h, w) = img.shape();
        prop_assert_eq!(resize_exact(&img, w, h, f).unwrap(), img);
    }
}

#[test]
fn resize_same_size_in_one_direction_only_touches_the_other() {
    // 1 x 2 x 2 -> 1 x 2 x 4: rows are resampled independently, so each row is the 1-D result.
    let img = ChwImage::new(1, 2, 2, vec![0., 1., 2., 4.]).unwrap();
    let r = resize_exact(&img, 4, 2, Interpolation::Bilinear).unwrap();
    // Row [a, b] upsampled x2 with half-pixel centres: [a, (3a + b) / 4, (a + 3b) / 4, b].
    assert_close(r.as_slice(), &[0., 0.25, 0.75, 1., 2., 2.5, 3.5, 4.], 1e-6);
}

// ---------------------------------------------------------------- resize, worked by hand

#[test]
fn bilinear_upsample_hand_worked() {
    // [0, 1] -> 4 pixels. Output centres 0.25, 0.75, 1.25, 1.75 (input pixel centres 0.5, 1.5).
    // Output 0: distance to pixel 0 is 0.25 (weight 0.75), to pixel 1 is 1.25 (weight 0):
    // only pixel 0 -> 0. Output 1: weights 0.75, 0.25 -> 0.25. Symmetric for 2 and 3.
    let img = ChwImage::new(1, 1, 2, vec![0., 1.]).unwrap();
    let r = resize_exact(&img, 4, 1, Interpolation::Bilinear).unwrap();
    assert_close(r.as_slice(), &[0., 0.25, 0.75, 1.], 1e-7);
}

#[test]
fn bicubic_upsample_hand_worked() {
    // Keys' cubic, a = -0.5: k(x) = 1.5|x|^3 - 2.5|x|^2 + 1 on [0, 1),
    // -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 on [1, 2).
    // Output 0 (centre 0.25): pixel 0 at distance 0.25, k = 0.8671875 = 111/128;
    // pixel 1 at 1.25, k = -0.0703125 = -9/128. Normalised: (0 * 111 - 1 * 9) / 102 = -3/34.
    // Output 1 (centre 0.75): distances 0.25 and 0.75, k = 111/128 and 29/128:
    // 29 / 140. Outputs 2 and 3 mirror them: 1 - 29/140 = 111/140 and 1 + 3/34 = 37/34.
    let img = ChwImage::new(1, 1, 2, vec![0., 1.]).unwrap();
    let r = resize_exact(&img, 4, 1, Interpolation::Bicubic).unwrap();
    assert_close(r.as_slice(), &[-3. / 34., 29. / 140., 111. / 140., 37. / 34.], 1e-6);

    // The pipeline clamps the overshoot back into [0, 1] (Pillow's u8 clip).
    let t = ImageTransform {
        resize: Some(ResizeTo::Exact { height: 1, width: 4 }),
        crop: None,
        normalize: None,
        ..ImageTransform::default()
    };
    let clamped = t.apply_chw(img).unwrap();
    assert_close(clamped.as_slice(), &[0., 29. / 140., 111. / 140., 1.], 1e-6);
}

#[test]
fn bilinear_downsample_hand_worked() {
    // 1 x 1 x 6 -> 3 (scale 2): the triangle stretches to support 2 (antialiasing). Output 1 is
    // centred at 3.0; pixel centres 1.5, 2.5, 3.5, 4.5 at distances 1.5, 0.5, 0.5, 1.5 weigh
    // 1 - d/2 = 1/4, 3/4, 3/4, 1/4 (sum 2): (1 * 1 + 3 * 2 + 3 * 3 + 1 * 4) / 8 = 20/8 = 2.5.
    // Output 0 (centre 1.0) has no pixel -1: pixels 0, 1, 2 weigh 3/4, 3/4, 1/4 (sum 7/4):
    // (0 + 3 + 2) / 7 = 5/7. Output 2 mirrors it: 5 - 5/7 = 30/7.
    let img = ChwImage::new(1, 1, 6, vec![0., 1., 2., 3., 4., 5.]).unwrap();
    let r = resize_exact(&img, 3, 1, Interpolation::Bilinear).unwrap();
    assert_close(r.as_slice(), &[5. / 7., 2.5, 30. / 7.], 1e-6);
}

#[test]
fn resize_shorter_side_shapes() {
    let img = ChwImage::filled(1, 300, 451, 0.0).unwrap();
    // 256 * 451 / 300 = 384.85 -> 384; the shorter side becomes 256.
    assert_eq!(resize_shorter_side(&img, 256, Interpolation::Bicubic).unwrap().shape(), (1, 256, 384));
    let tall = ChwImage::filled(2, 10, 4, 0.0).unwrap();
    // 6 * 10 / 4 = 15.
    assert_eq!(resize_shorter_side(&tall, 6, Interpolation::Bilinear).unwrap().shape(), (2, 15, 6));
    assert!(matches!(resize_shorter_side(&tall, 0, Interpolation::Bilinear), Err(Error::Image { .. })));
    assert!(matches!(resize_exact(&tall, 0, 3, Interpolation::Bilinear), Err(Error::Image { .. })));
}

// ---------------------------------------------------------------- crop, normalise

#[test]
fn center_crop_coordinates() {
    // 1 x 5 x 6 holding 10y + x.
    let img = ChwImage::from_fn(1, 5, 6, |_, y, x| (10 * y + x) as f32).unwrap();
    // 3 x 4: margins 2 and 2 -> top 1, left 1.
    let c = center_crop(&img, 3, 4).unwrap();
    assert_eq!(c.as_slice(), &[11., 12., 13., 14., 21., 22., 23., 24., 31., 32., 33., 34.]);
    // 2 x 3: margins 3 and 3; torchvision's round(1.5) = 2 (half to even) -> top 2, left 2.
    let c = center_crop(&img, 2, 3).unwrap();
    assert_eq!(c.as_slice(), &[22., 23., 24., 32., 33., 34.]);
    // 4 x 5: margins 1 and 1; round(0.5) = 0 -> top 0, left 0.
    assert_eq!(center_crop_offsets(5, 6, 4, 5).unwrap(), (0, 0));
    // margin 5: round(2.5) = 2.
    assert_eq!(center_crop_offsets(7, 7, 2, 2).unwrap(), (2, 2));
    assert_eq!(center_crop(&img, 5, 6).unwrap(), img);
}

#[test]
fn crop_larger_than_image_is_an_error() {
    let img = ChwImage::filled(3, 4, 6, 0.0).unwrap();
    assert!(matches!(center_crop(&img, 5, 2), Err(Error::Image { .. })));
    assert!(matches!(center_crop(&img, 2, 7), Err(Error::Image { .. })));
    assert!(matches!(center_crop(&img, 0, 2), Err(Error::Image { .. })));
    // Through the pipeline too: crop 224 of a 10 x 10 image with no resize.
    let t = ImageTransform { resize: None, ..ImageTransform::default() };
    assert!(matches!(t.apply(&DynamicImage::new_rgb8(10, 10)), Err(Error::Image { .. })));
}

#[test]
fn normalize_known_values() {
    // Pixel 0 = mean + (1, 0, -2) * std = (0.714, 0.456, -0.044) -> (1, 0, -2).
    // Pixel 1 = black -> -mean / std = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225)
    //                               = (-2.117903, -2.035714, -1.804444).
    let img = ChwImage::new(3, 1, 2, vec![0.714, 0.0, 0.456, 0.0, -0.044, 0.0]).unwrap();
    let n = normalize(&img, &IMAGENET_MEAN, &IMAGENET_STD).unwrap();
    assert_close(n.as_slice(), &[1.0, -2.117903, 0.0, -2.035714, -2.0, -1.804444], 1e-5);
    assert_close(denormalize(&n, &IMAGENET_MEAN, &IMAGENET_STD).unwrap().as_slice(), img.as_slice(), 1e-6);
    // Inception constants map [0, 1] to [-1, 1]: 0.25 -> -0.5.
    let g = ChwImage::new(3, 1, 1, vec![0.25, 1.0, 0.0]).unwrap();
    assert_eq!(Normalization::inception().apply(&g).unwrap().as_slice(), &[-0.5, 1.0, -1.0]);
    // One channel, MNIST's constants: (0.5 - 0.1) / 0.25 = 1.6.
    let one = ChwImage::new(1, 1, 1, vec![0.5]).unwrap();
    assert_close(normalize(&one, &[0.1], &[0.25]).unwrap().as_slice(), &[1.6], 1e-6);
}

#[test]
fn normalize_errors() {
    let img = ChwImage::filled(3, 2, 2, 0.5).unwrap();
    let err = normalize(&img, &[0.0, 0.0, 0.0], &[1.0, 0.0, 1.0]).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(matches!(normalize(&img, &[0.5], &[0.5]), Err(Error::Shape { .. })));
    assert!(matches!(normalize(&img, &IMAGENET_MEAN, &[0.5, 0.5]), Err(Error::Shape { .. })));
    assert!(matches!(normalize(&img, &[f32::NAN, 0., 0.], &IMAGENET_STD), Err(Error::NonFinite { .. })));
    let gray = ChwImage::filled(1, 2, 2, 0.5).unwrap();
    assert!(matches!(normalize(&gray, &IMAGENET_MEAN, &IMAGENET_STD), Err(Error::Shape { .. })));
    // In place leaves the image untouched on error.
    let mut m = img.clone();
    assert!(normalize_in_place(&mut m, &[0.0; 3], &[0.0; 3]).is_err());
    assert_eq!(m, img);
}

// ---------------------------------------------------------------- loading the bundled photos

#[test]
fn load_chelsea() {
    let img = load_image(data("chelsea.png")).unwrap();
    assert_eq!(img.shape(), (3, 300, 451));
    assert!(img.as_slice().iter().all(|v| (0.0..=1.0).contains(v)));
    let (lo, hi) = img.as_slice().iter().fold((1.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(hi - lo > 0.5, "a photo, not a flat image: range {lo}..{hi}");
    // Pixel (x, y) channel c is the 8-bit sample / 255, decoded independently here.
    let reference = image::open(data("chelsea.png")).unwrap();
    for (x, y) in [(0, 0), (450, 299), (200, 123)] {
        let px = reference.get_pixel(x, y);
        for c in 0..3 {
            assert_eq!(img.get(c, y as usize, x as usize), px[c] as f32 / 255.0);
        }
    }
    let gray = load_image_with(data("chelsea.png"), Channels::Gray).unwrap();
    assert_eq!(gray.shape(), (1, 300, 451));
    // Pillow's convert("L") on the 8-bit samples: (19595 R + 38470 G + 7471 B + 2^15) >> 16.
    for (x, y) in [(0, 0), (450, 299), (200, 123)] {
        let px = reference.get_pixel(x, y);
        let [r, g, b] = [0, 1, 2].map(|c| u32::from(px[c]));
        let luma = (19595 * r + 38470 * g + 7471 * b + (1 << 15)) >> 16;
        assert_eq!(gray.get(0, y as usize, x as usize), luma as f32 / 255.0);
    }
}

#[test]
fn load_every_bundled_photo() {
    for (name, h, w) in [("coffee.png", 400, 600), ("astronaut.png", 512, 512), ("rocket.jpg", 427, 640)] {
        let img = load_image(data(name)).unwrap();
        assert_eq!(img.shape(), (3, h, w), "{name}");
        assert!(img.as_slice().iter().all(|v| (0.0..=1.0).contains(v)), "{name}");
    }
}

#[test]
fn transform_pipeline_on_chelsea() {
    // Default: 300 x 451 -> shorter side 256 (256 x 384) -> centre 224 -> ImageNet mean / std.
    let t = ImageTransform::default();
    let out = t.apply_path(data("chelsea.png")).unwrap();
    assert_eq!(out.shape(), (3, 224, 224));
    // The same steps by hand.
    let img = load_image(data("chelsea.png")).unwrap();
    let mut r = resize_shorter_side(&img, 256, Interpolation::Bicubic).unwrap();
    assert_eq!(r.shape(), (3, 256, 384));
    r.clamp_in_place(0.0, 1.0);
    // Margins 32 and 160: top 16, left 80.
    assert_eq!(center_crop_offsets(256, 384, 224, 224).unwrap(), (16, 80));
    let want = normalize(&crop(&r, 16, 80, 224, 224).unwrap(), &IMAGENET_MEAN, &IMAGENET_STD).unwrap();
    assert_eq!(out, want);
    // Inception normalisation keeps [0, 1] inputs in [-1, 1]; from a decoded image too.
    let dynimg = image::open(data("chelsea.png")).unwrap();
    let v = ImageTransform::timm_eval(224, 0.9, Normalization::inception()).apply(&dynimg).unwrap();
    assert_eq!(v.shape(), (3, 224, 224));
    assert!(v.as_slice().iter().all(|x| (-1.0..=1.0).contains(x)));
    // And the nodes of a ViT-B/16: 196 patches of 768.
    assert_eq!(patchify(&v, 16).unwrap().shape(), (196, 768));
}

// ---------------------------------------------------------------- typed errors, never panics

#[test]
fn missing_file_is_an_io_error() {
    let err = load_image(data("no-such-photo.png")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(matches!(ImageTransform::default().apply_path("/nonexistent/dir/x.jpg"), Err(Error::Io { .. })));
}

#[test]
fn garbage_bytes_are_a_codec_error() {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for name in ["garbage.png", "garbage.jpg", "garbage"] {
        let path = temp_file(name, &garbage);
        let err = load_image(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, Error::Codec { .. }), "{name}: {err}");
    }
    // An empty file and a truncated PNG.
    let empty = temp_file("empty.png", &[]);
    let err = load_image(&empty).unwrap_err();
    std::fs::remove_file(&empty).ok();
    assert!(matches!(err, Error::Codec { .. }), "{err}");
    let png = std::fs::read(data("chelsea.png")).unwrap();
    let cut = temp_file("truncated.png", &png[..png.len() / 3]);
    let err = load_image(&cut).unwrap_err();
    std::fs::remove_file(&cut).ok();
    assert!(matches!(err, Error::Codec { .. }), "{err}");
}

#[test]
fn zero_sized_image_is_an_image_error() {
    for img in [DynamicImage::new_rgb8(0, 0), DynamicImage::new_rgb8(5, 0), DynamicImage::new_luma8(0, 3)] {
        let err = from_dynamic_image(&img, Channels::Rgb).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{err}");
        assert!(matches!(ImageTransform::default().apply(&img), Err(Error::Image { .. })));
    }
    assert!(matches!(ChwImage::new(3, 0, 4, vec![]), Err(Error::Image { .. })));
    assert!(matches!(ChwImage::new(1, 2, 2, vec![0.0; 3]), Err(Error::Shape { .. })));
}

#[test]
fn image_smaller_than_the_patch_is_an_image_error() {
    let img = ChwImage::filled(3, 8, 20, 0.0).unwrap();
    for policy in [PatchPolicy::Exact, PatchPolicy::CropCentre, PatchPolicy::PadZero] {
        let err = patchify_with(&img, 16, policy).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{policy:?}: {err}");
    }
    assert!(matches!(patchify(&img, 0), Err(Error::Invalid { .. })));
}

#[test]
fn non_divisible_size_with_exact_policy_is_an_image_error() {
    let img = ChwImage::filled(3, 32, 40, 0.0).unwrap();
    let err = patchify(&img, 16).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(matches!(patch_grid(32, 40, 16), Err(Error::Image { .. })));
    assert_eq!(patch_grid(32, 48, 16).unwrap(), (2, 3));
}

#[test]
fn unpatchify_errors() {
    let m = Matrix::zeros(6, 12);
    assert_eq!(unpatchify(&m, 3, 2, 2, 3).unwrap().shape(), (3, 4, 6));
    assert!(matches!(unpatchify(&m, 3, 2, 3, 3), Err(Error::Shape { .. })));
    assert!(matches!(unpatchify(&m, 2, 2, 2, 3), Err(Error::Shape { .. })));
    assert!(matches!(unpatchify(&m, 3, 0, 2, 3), Err(Error::Invalid { .. })));
    assert!(matches!(unpatchify(&m, 3, 2, usize::MAX, 3), Err(Error::Invalid { .. })));
}

/// timm's eval transform, up to ToTensor, as Pillow computes it (`scripts/make_fixtures.py`
/// wrote the 8-bit result as PNG): our f32 resize and crop of the same photo, in 8-bit units.
/// Pillow rounds to 8 bits after each of its two separable passes and we do not, so single
/// pixels may differ by about one unit; on average they must agree far closer.
#[test]
fn timm_eval_transform_matches_pillow() {
    let dir = env!("CARGO_MANIFEST_DIR");
    for (interpolation, file) in [
        (Interpolation::Bicubic, "chelsea_timm_eval_bicubic.png"),
        (Interpolation::Bilinear, "chelsea_timm_eval_bilinear.png"),
    ] {
        let transform = ImageTransform {
            interpolation,
            normalize: None,
            ..ImageTransform::timm_eval(224, 0.875, Normalization::imagenet())
        };
        let ours = transform.apply_path(format!("{dir}/data/images/chelsea.png")).unwrap();
        let pillow = load_image(format!("{dir}/tests/fixtures/{file}")).unwrap();
        assert_eq!(ours.shape(), pillow.shape());
        let diffs: Vec<f32> =
            ours.as_slice().iter().zip(pillow.as_slice()).map(|(a, b)| (a - b).abs() * 255.0).collect();
        let max = diffs.iter().cloned().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(max <= 1.5, "{file}: max difference {max} (8-bit units)");
        assert!(mean <= 0.5, "{file}: mean difference {mean} (8-bit units)");
    }
}
