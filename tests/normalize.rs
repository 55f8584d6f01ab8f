//! l2_normalize: the CPU oracle against hand-computed values and finite differences, the shape
//! errors, and the GPU kernels against the oracle for every (input, output) dtype pair.

mod common;

use common::{first_violation, gpu_or_skip, m, max_abs, random_matrix, rounded_to};
use contrastive_kernels::dtype::unit_roundoff;
use contrastive_kernels::ops::normalize::cpu::{l2_normalize, l2_normalize_backward};
use contrastive_kernels::{bf16, f16, Backend, Error, FloatElement, Matrix};

#[test]
fn oracle_hand_computed() {
    // 3-4-5 row, a d = 1 negative row, a zero row (eps clamp: stays zero), a NaN row.
    let x = m(4, 2, &[3.0, 4.0, -2.0, 0.0, 0.0, 0.0, 1.0, f64::NAN]);
    let (z, norms) = l2_normalize(&x);
    assert_eq!(z.row(0), &[0.6, 0.8]);
    assert_eq!(z.row(1), &[-1.0, 0.0]);
    assert_eq!(z.row(2), &[0.0, 0.0]);
    assert!(z.row(3).iter().all(|v| v.is_nan()), "a NaN row normalizes to all NaN (as torch)");
    assert_eq!(&norms[..3], &[5.0, 2.0, 0.0]);
    assert!(norms[3].is_nan());

    let x1 = m(1, 1, &[-0.25]);
    assert_eq!(l2_normalize(&x1).0.data(), &[-1.0]);
}

#[test]
fn oracle_backward_hand_computed() {
    // x = (3, 4): z = (0.6, 0.8); dz = (1, 0): <z, dz> = 0.6, dx = ((1, 0) - 0.6 (0.6, 0.8)) / 5.
    let dx = l2_normalize_backward(&m(1, 2, &[3.0, 4.0]), &m(1, 2, &[1.0, 0.0]));
    let want = [(1.0 - 0.36) / 5.0, (-0.48) / 5.0];
    for (g, w) in dx.data().iter().zip(want) {
        assert!((g - w).abs() < 1e-15, "{g} vs {w}");
    }
}

/// L(x) = sum_ij w_ij z_ij(x), so dL/dx is the backward of dz = w; compare with central differences.
#[test]
fn oracle_backward_matches_finite_differences() {
    for &(rows, cols, seed) in &[(3usize, 5usize, 1u64), (2, 1, 2), (4, 64, 3)] {
        let x: Matrix<f64> = random_matrix(rows, cols, seed);
        let w: Matrix<f64> = random_matrix(rows, cols, seed + 100);
        let loss = |x: &Matrix<f64>| -> f64 { l2_normalize(x).0.data().iter().zip(w.data()).map(|(a, b)| a * b).sum() };
        let dx = l2_normalize_backward(&x, &w);
        let h = 1e-6;
        for k in 0..x.data().len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data_mut()[k] += h;
            xm.data_mut()[k] -= h;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
            assert!((fd - dx.data()[k]).abs() < 1e-6 * (1.0 + fd.abs()), "{rows}x{cols} entry {k}: fd {fd} vs {}", dx.data()[k]);
        }
    }
}

/// Below eps the denominator is the constant eps, so dx = dz / eps exactly: checked by differences
/// small enough to stay below eps.
#[test]
fn oracle_backward_of_zero_row_is_dz_over_eps() {
    let x = m(1, 3, &[0.0, 0.0, 0.0]);
    let w = m(1, 3, &[0.5, -1.0, 2.0]);
    let dx = l2_normalize_backward(&x, &w);
    let loss = |x: &Matrix<f64>| -> f64 { l2_normalize(x).0.data().iter().zip(w.data()).map(|(a, b)| a * b).sum() };
    let h = 1e-16;
    for k in 0..3 {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp.data_mut()[k] += h;
        xm.data_mut()[k] -= h;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
        assert!((fd - dx.data()[k]).abs() <= 1e-9 * fd.abs(), "entry {k}: fd {fd} vs {}", dx.data()[k]);
        assert_eq!(dx.data()[k], w.data()[k] / 1e-12);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let cpu = Backend::Cpu;
    let empty_d = Matrix::<f32>::new(4, 0, vec![]).unwrap();
    match cpu.l2_normalize::<f32, f32>(&empty_d) {
        Err(Error::Shape { arg: "x", .. }) => {}
        other => panic!("d = 0 must be a shape error naming x, got {other:?}"),
    }
    let x: Matrix<f32> = random_matrix(3, 4, 1);
    let dz: Matrix<f32> = random_matrix(3, 5, 2);
    let err = cpu.l2_normalize_backward(&x, &dz).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "dz", .. }), "{err}");
    assert!(err.to_string().contains("3 x 4"), "the message states the expected shape: {err}");
    // Zero rows is a valid, empty batch.
    let none = Matrix::<f32>::new(0, 8, vec![]).unwrap();
    let (z, norms) = cpu.l2_normalize::<f32, f32>(&none).unwrap();
    assert_eq!((z.rows(), z.cols(), norms.len()), (0, 8, 0));
}

/// Shapes that hit every path: 1 row, d = 1, d not a multiple of 8 or 32, long rows, many rows.
const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 3), (37, 1), (129, 200), (1000, 64), (33, 2048), (5, 13)];

/// Inputs with a zero row and (optionally) a NaN row planted.
fn planted_input<T: FloatElement>(rows: usize, cols: usize, seed: u64) -> Matrix<T> {
    let mut x: Matrix<T> = random_matrix(rows, cols, seed);
    if rows >= 3 {
        for j in 0..cols {
            x.data_mut()[cols + j] = T::from_f64(0.0);
        }
        x.data_mut()[2 * cols] = T::from_f64(f64::NAN);
    }
    x
}

fn check_forward_pair<TX: FloatElement, TZ: FloatElement>(backend: &Backend) {
    let u_out = unit_roundoff(TZ::DTYPE);
    for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
        let x: Matrix<TX> = planted_input(rows, cols, 10 + s as u64);
        let (z_ref, norms_ref) = l2_normalize(&x);
        let (z, norms) = backend.l2_normalize::<TX, TZ>(&x).unwrap();
        let what = format!("l2_normalize {}->{} {rows}x{cols}", TX::DTYPE, TZ::DTYPE);
        // |z| <= 1: output rounding (2u) plus f32 accumulation of the norm.
        if let Some((i, g, w)) = first_violation(z.data(), z_ref.data(), |w| 2.0 * u_out * w.abs() + 2e-6) {
            panic!("{what}: z[{i}] = {g}, oracle {w}");
        }
        if let Some((i, g, w)) = first_violation(&norms, &norms_ref, |w| 1e-5 * w.abs() + 1e-30) {
            panic!("{what}: norm[{i}] = {g}, oracle {w}");
        }
    }
}

fn check_backward_pair<TX: FloatElement, TZ: FloatElement>(backend: &Backend) {
    let u_x = unit_roundoff(TX::DTYPE);
    for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
        let x: Matrix<TX> = planted_input(rows, cols, 20 + s as u64);
        let dz: Matrix<TZ> = random_matrix(rows, cols, 30 + s as u64);
        let dx_ref = l2_normalize_backward(&x, &dz);
        let dx = backend.l2_normalize_backward(&x, &dz).unwrap();
        // Row by row, relative to the row's natural size max|dz| / max(|x|, eps): the zero row's dx is
        // dz / eps (huge), and a d = 1 row's exact dx is 0 (the oracle leaves ~1e-16 of cancellation).
        let x_norms = contrastive_kernels::ops::normalize::cpu::row_norms(&x);
        for (i, &x_norm) in x_norms.iter().enumerate() {
            // A zero row's dz / eps overflows f16 to inf, as it does in torch: compare with the rounded oracle.
            let want = &rounded_to::<TX>(&dx_ref.data()[i * cols..(i + 1) * cols]);
            let dz_row: Vec<f64> = dz.row(i).iter().map(|v| v.to_f64()).collect();
            let scale = max_abs(&dz_row) / contrastive_kernels::ops::normalize::norm_denominator(x_norm);
            if let Some((j, g, w)) = first_violation(dx.row(i), want, |w| 2.0 * u_x * w.abs() + 1e-5 * scale) {
                panic!("l2_normalize_backward {}->{} {rows}x{cols}: dx[{i}][{j}] = {g}, oracle {w}", TX::DTYPE, TZ::DTYPE);
            }
        }
    }
}

macro_rules! for_each_pair {
    ($f:ident, $backend:expr) => {{
        let backend = $backend;
        $f::<f32, f32>(backend);
        $f::<f32, f16>(backend);
        $f::<f32, bf16>(backend);
        $f::<f16, f32>(backend);
        $f::<f16, f16>(backend);
        $f::<f16, bf16>(backend);
        $f::<bf16, f32>(backend);
        $f::<bf16, f16>(backend);
        $f::<bf16, bf16>(backend);
    }};
}

/// The CPU backend rounds the oracle: this checks the harness and the bounds themselves.
#[test]
fn cpu_backend_within_bounds() {
    for_each_pair!(check_forward_pair, &Backend::Cpu);
    for_each_pair!(check_backward_pair, &Backend::Cpu);
}

#[test]
fn gpu_forward_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_forward_matches_oracle") else { return };
    let backend = Backend::Gpu(gpu);
    for_each_pair!(check_forward_pair, &backend);
}

#[test]
fn gpu_backward_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_backward_matches_oracle") else { return };
    let backend = Backend::Gpu(gpu);
    for_each_pair!(check_backward_pair, &backend);
}

#[test]
fn gpu_bad_shapes_are_errors() {
    let Some(gpu) = gpu_or_skip("gpu_bad_shapes_are_errors") else { return };
    let backend = Backend::Gpu(gpu);
    let x: Matrix<f16> = random_matrix(3, 4, 1);
    let dz: Matrix<f16> = random_matrix(4, 4, 2);
    assert!(matches!(backend.l2_normalize_backward(&x, &dz), Err(Error::Shape { arg: "dz", .. })));
    let none = Matrix::<f16>::new(0, 8, vec![]).unwrap();
    assert_eq!(backend.l2_normalize::<f16, f32>(&none).unwrap().0.rows(), 0);
}
