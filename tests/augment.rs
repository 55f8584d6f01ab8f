//! The GPU views (kernels/augment.cu) and their CPU oracle: the seeded form of the view transform
//! equals `Augment::apply` where their draws coincide, its noise has the requested statistics,
//! the kernel's jump-ahead noise formula (modelled here in u64 arithmetic) reproduces the sequential
//! generator, and on a GPU the kernels match the oracle.

mod common;

use common::gpu_or_skip;
use contrastive_kernels::data::ImageShape;
use contrastive_kernels::ops::augment::cpu::rotated;
use contrastive_kernels::ops::augment::Augment;
use contrastive_kernels::rng::SplitMix64;
use contrastive_kernels::{DeviceMatrix, Matrix};

fn images(n: usize, shape: ImageShape, seed: u64) -> Matrix<f32> {
    let mut rng = SplitMix64::new(seed);
    Matrix::from_fn(n, shape.len(), |_, _| rng.uniform() as f32)
}

/// Without noise the seeded form draws shifts, flip and gain exactly as `apply` does.
#[test]
fn seeded_views_without_noise_are_apply() {
    let shape = ImageShape::new(3, 8, 8);
    let x = images(5, shape, 1);
    let augment = Augment { max_shift: 2, horizontal_flip: true, noise_std: 0.0, intensity_jitter: 0.3 };
    for (row, seed) in [(0usize, 11u64), (3, 12), (4, 13)] {
        let (seeded, _) = augment.views_seeded(shape, &x, &[row], &mut SplitMix64::new(seed)).unwrap();
        let mut want = vec![0.0f32; shape.len()];
        augment.apply(shape, x.row(row), &mut want, &mut SplitMix64::new(seed));
        assert_eq!(seeded.row(0), &want[..], "row {row}");
    }
}

/// The noise of a flat gray image: mean 0.5, standard deviation noise_std (no clamping at 0.5 +- 6 sigma).
#[test]
fn seeded_noise_statistics() {
    let shape = ImageShape::new(1, 16, 16);
    let gray = Matrix::from_fn(1, shape.len(), |_, _| 0.5f32);
    let augment = Augment { max_shift: 0, horizontal_flip: false, noise_std: 0.05, intensity_jitter: 0.0 };
    let (v, draws) = augment.views_seeded(shape, &gray, &[0; 200], &mut SplitMix64::new(3)).unwrap();
    let n = v.data().len() as f64;
    let mean = v.data().iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.data().iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((mean - 0.5).abs() < 1e-3, "mean {mean}");
    assert!((std - 0.05).abs() < 2e-3, "std {std}");
    // Every view has its own noise seed.
    let mut seeds: Vec<u64> = draws.iter().map(|d| d.noise_seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 200);
}

/// kernels/augment.cu's nth_normal, in u64 arithmetic: draws 2p + 1 and 2p + 2 of SplitMix64(seed).
fn nth_normal(seed: u64, p: u64) -> f64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let out = |state: u64| {
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let z1 = out(seed.wrapping_add((2 * p + 1).wrapping_mul(GOLDEN)));
    let z2 = out(seed.wrapping_add((2 * p + 2).wrapping_mul(GOLDEN)));
    let u1 = 1.0 - (z1 >> 11) as f64 * (1.0 / 9007199254740992.0);
    let u2 = (z2 >> 11) as f64 * (1.0 / 9007199254740992.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[test]
fn jump_ahead_noise_is_the_sequential_stream() {
    for seed in [0u64, 7, u64::MAX - 3] {
        let mut g = SplitMix64::new(seed);
        for p in 0..1000 {
            assert_eq!(nth_normal(seed, p), g.normal(), "seed {seed}, pixel {p}");
        }
    }
}

#[test]
fn gpu_views_and_rotations_match_the_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_views_and_rotations_match_the_oracle") else { return };
    let shape = ImageShape::new(3, 9, 9);
    let x = images(7, shape, 2);
    let dx = DeviceMatrix::upload(&gpu, &x).unwrap();
    let rows = [6usize, 0, 3, 3, 1];
    for augment in [Augment::cifar(), Augment::digits(), Augment::identity()] {
        let (want, want_draws) = augment.views_seeded(shape, &x, &rows, &mut SplitMix64::new(9)).unwrap();
        let (got, draws) =
            contrastive_kernels::ops::augment::gpu::views(&gpu, &augment, shape, &dx, &rows, &mut SplitMix64::new(9)).unwrap();
        assert_eq!(draws, want_draws);
        let got = got.download(&gpu).unwrap();
        for (k, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
            // The same double-precision Box-Muller; the GPU's log / cos may differ in the last ulp.
            assert!((g - w).abs() <= 1e-6, "{augment:?} [{k}]: {g} vs {w}");
        }
    }
    let turns = [1u32, 2, 3, 0, 5];
    let want = rotated(shape, &x, &rows, &turns).unwrap();
    let got = contrastive_kernels::ops::augment::gpu::rotated(&gpu, shape, &dx, &rows, &turns).unwrap().download(&gpu).unwrap();
    assert_eq!(got.data(), want.data());
}
