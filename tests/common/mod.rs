//! Helpers shared by the integration tests: the GPU-or-skip rule, random inputs, error measures.
#![allow(dead_code)]

use contrastive_kernels::{rng::SplitMix64, Float, Gpu, Matrix};

/// The GPU, or `None` after printing one line saying why the GPU half of a test is skipped.
/// With CONTRASTIVE_KERNELS_REQUIRE_GPU=1 (set by scripts/gpu-run.sh) a missing GPU is a failure.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::first() {
        Ok(gpu) => Some(gpu),
        Err(why) => {
            if std::env::var("CONTRASTIVE_KERNELS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: a GPU is required (CONTRASTIVE_KERNELS_REQUIRE_GPU=1) but: {why}");
            }
            report_gpu_skip(test, why);
            None
        }
    }
}

/// Prints `TEST: GPU part skipped: WHY`, the line scripts/test.sh counts, on stderr past the test
/// harness's output capture (`println!` in a passing test is hidden), so that every skipped GPU
/// half shows in `cargo test`'s output. One write per line: lines of parallel tests do not mix.
pub fn report_gpu_skip(test: &str, why: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("{test}: GPU part skipped: {why}\n").as_bytes());
}

/// Whether `gpu` is the CPU emulator of the CUDA driver (emu/, crate ckemu: device name "CPU
/// emulator (contrastive-kernels ckemu)"), which runs the real kernels on the host, far slower than
/// a GPU. Production code never special-cases the emulator; only tests use this, to choose smaller
/// shapes that keep every code path they cover (strategies, tails, unaligned loaders, dtypes), so
/// that the whole suite fits a 2-core CI machine. The large shapes stay for a real GPU.
pub fn on_emulator(gpu: &Gpu) -> bool {
    gpu.describe().contains("CPU emulator")
}

/// A literal f64 matrix for hand-computed cases.
pub fn m(rows: usize, cols: usize, data: &[f64]) -> Matrix<f64> {
    Matrix::new(rows, cols, data.to_vec()).unwrap()
}

/// Standard-normal entries, rounded to T.
pub fn random_matrix<T: Float>(rows: usize, cols: usize, seed: u64) -> Matrix<T> {
    let mut rng = SplitMix64::new(seed);
    Matrix::from_fn(rows, cols, |_, _| T::from_f64(rng.normal()))
}

/// max |got - want| over all entries, NaN-aware: a NaN where the other side has none is infinite error.
pub fn max_abs_err<T: Float>(got: &[T], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let g = g.to_f64();
            match (g.is_nan(), w.is_nan()) {
                (true, true) => 0.0,
                (false, false) => (g - w).abs(),
                _ => f64::INFINITY,
            }
        })
        .fold(0.0, f64::max)
}

/// Index and values of the first entry exceeding `bound(want)`, for failure messages. Equal values
/// (infinities included) always pass.
pub fn first_violation<T: Float>(got: &[T], want: &[f64], bound: impl Fn(f64) -> f64) -> Option<(usize, f64, f64)> {
    got.iter().zip(want).enumerate().find_map(|(i, (g, &w))| {
        let g = g.to_f64();
        let ok = if w.is_nan() { g.is_nan() } else { g == w || (g - w).abs() <= bound(w) };
        (!ok).then_some((i, g, w))
    })
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().filter(|x| x.is_finite()).fold(0.0, |m, x| m.max(x.abs()))
}

/// The oracle's values as the output dtype can hold them (overflow to +-inf included).
pub fn rounded_to<T: Float>(want: &[f64]) -> Vec<f64> {
    want.iter().map(|&w| T::from_f64(w).to_f64()).collect()
}
pub mod contrastive_harness;
