//! similarity: the CPU oracle against hand-computed values, argument errors, and the GPU kernels
//! (tensor-core f16/bf16, FFMA f32, aligned and unaligned loaders) against the oracle.

mod common;

use common::{first_violation, gpu_or_skip, m, random_matrix, rounded_to};
use contrastive_kernels::dtype::unit_roundoff;
use contrastive_kernels::ops::similarity::cpu::similarity;
use contrastive_kernels::ops::similarity::gpu::similarity_raw;
use contrastive_kernels::{bf16, f16, Backend, DType, DeviceMatrix, Error, FloatElement, Matrix, RawMatrix, SimilarityOptions};

#[test]
fn oracle_hand_computed() {
    let a = m(3, 2, &[1.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
    let b = m(2, 2, &[3.0, 4.0, -1.0, 0.0]);
    let s = similarity(&a, &b, &SimilarityOptions::cosine());
    assert_eq!(s.data(), &[0.6, -1.0, 0.8, 0.0, 0.0, 0.0], "the zero row of a gives zeros");
    let s = similarity(&a, &b, &SimilarityOptions::with_temperature(0.5).unwrap());
    assert_eq!(s.row(0), &[1.2, -2.0]);
    let s = similarity(&a, &a, &SimilarityOptions::cosine().mask_diagonal(f32::NEG_INFINITY));
    assert_eq!(s.row(0), &[f64::NEG_INFINITY, 0.0, 0.0]);
    assert_eq!(s.row(1), &[0.0, f64::NEG_INFINITY, 0.0]);
    let nan = m(1, 2, &[f64::NAN, 1.0]);
    assert!(similarity(&nan, &b, &SimilarityOptions::cosine()).data().iter().all(|v| v.is_nan()));
}

#[test]
fn argument_errors() {
    let cpu = Backend::Cpu;
    let a: Matrix<f32> = random_matrix(4, 8, 1);
    let b: Matrix<f32> = random_matrix(5, 7, 2);
    let err = cpu.similarity::<f32, f32>(&a, &b, &SimilarityOptions::cosine()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "b", .. }), "{err}");
    assert!(err.to_string().contains("8 columns"), "{err}");
    for tau in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = SimilarityOptions::with_temperature(tau).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "temperature", .. }), "{err}");
    }
    let opts = SimilarityOptions { scale: f32::NAN, mask_diagonal: None };
    assert!(matches!(cpu.similarity::<f32, f32>(&a, &a, &opts), Err(Error::InvalidArgument { arg: "scale", .. })));
    let no_d = Matrix::<f32>::new(2, 0, vec![]).unwrap();
    assert!(matches!(cpu.similarity::<f32, f32>(&no_d, &no_d, &SimilarityOptions::cosine()), Err(Error::Shape { arg: "a", .. })));
    let empty = Matrix::<f32>::new(0, 8, vec![]).unwrap();
    let s = cpu.similarity::<f32, f32>(&empty, &a, &SimilarityOptions::cosine()).unwrap();
    assert_eq!((s.rows(), s.cols()), (0, 4));
}

/// (m, n, d): single elements, tails in m and n (not multiples of 128 or 64), d not a multiple of 8
/// (unaligned loader) or of the 32-wide k stage, long rows.
const SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1), (1, 5, 3), (3, 2, 13), (130, 257, 200), (256, 128, 128), (77, 1000, 64), (300, 129, 512), (65, 66, 100), (20, 30, 2048)];

/// Bound on |S - S_ref| for inputs of dtype `input` written as `output`, at `scale`: the products
/// are exact (tensor cores: exact f16/bf16 products, f32 accumulation; f32: FFMA), so what is left
/// is f32 accumulation over d terms of unit vectors plus rounding the output.
fn bound(input: DType, output: DType, scale: f64) -> impl Fn(f64) -> f64 {
    let accumulation = match input {
        DType::F32 => 2e-5,
        _ => 2e-4, // tensor-core f32 accumulation is not IEEE-exact per add
    };
    let u_out = unit_roundoff(output);
    move |w: f64| scale * accumulation + 2.0 * u_out * w.abs()
}

fn check_pair<T: FloatElement, TOut: FloatElement>(backend: &Backend) {
    for (s, &(rows_a, rows_b, d)) in SHAPES.iter().enumerate() {
        let a: Matrix<T> = random_matrix(rows_a, d, 100 + s as u64);
        let b: Matrix<T> = random_matrix(rows_b, d, 200 + s as u64);
        for opts in [SimilarityOptions::cosine(), SimilarityOptions::with_temperature(0.07).unwrap()] {
            let want = rounded_to::<TOut>(similarity(&a, &b, &opts).data());
            let got = backend.similarity::<T, TOut>(&a, &b, &opts).unwrap();
            if let Some((i, g, w)) = first_violation(got.data(), &want, bound(T::DTYPE, TOut::DTYPE, opts.scale as f64)) {
                panic!(
                    "similarity {}->{} {rows_a}x{rows_b}x{d} scale {}: S[{}][{}] = {g}, oracle {w}",
                    T::DTYPE,
                    TOut::DTYPE,
                    opts.scale,
                    i / rows_b,
                    i % rows_b
                );
            }
        }
    }
    // Self-similarity with the diagonal masked, zero and NaN rows planted.
    let mut x: Matrix<T> = random_matrix(150, 40, 7);
    for j in 0..40 {
        x.data_mut()[3 * 40 + j] = T::from_f64(0.0);
    }
    x.data_mut()[5 * 40 + 1] = T::from_f64(f64::NAN);
    let opts = SimilarityOptions::with_temperature(0.5).unwrap().mask_diagonal(-1e4);
    let want = rounded_to::<TOut>(similarity(&x, &x, &opts).data());
    let got = backend.similarity::<T, TOut>(&x, &x, &opts).unwrap();
    if let Some((i, g, w)) = first_violation(got.data(), &want, bound(T::DTYPE, TOut::DTYPE, 2.0)) {
        panic!("self-similarity {}->{}: S[{}][{}] = {g}, oracle {w}", T::DTYPE, TOut::DTYPE, i / 150, i % 150);
    }
}

macro_rules! for_each_pair {
    ($backend:expr) => {{
        let backend = $backend;
        check_pair::<f32, f32>(backend);
        check_pair::<f32, f16>(backend);
        check_pair::<f32, bf16>(backend);
        check_pair::<f16, f32>(backend);
        check_pair::<f16, f16>(backend);
        check_pair::<f16, bf16>(backend);
        check_pair::<bf16, f32>(backend);
        check_pair::<bf16, f16>(backend);
        check_pair::<bf16, bf16>(backend);
    }};
}

/// The CPU backend rounds the oracle: checks the harness and that the bounds admit exact answers.
#[test]
fn cpu_backend_within_bounds() {
    for_each_pair!(&Backend::Cpu);
}

#[test]
fn gpu_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_matches_oracle") else { return };
    let backend = Backend::Gpu(gpu);
    for_each_pair!(&backend);
}

/// A caller's pointers that are only 2-byte aligned must take the unaligned loader and still be right;
/// null and misaligned-for-dtype pointers are rejected.
#[test]
fn gpu_raw_pointers() {
    let Some(gpu) = gpu_or_skip("gpu_raw_pointers") else { return };
    let (rows, d) = (70, 64);
    let a: Matrix<f16> = random_matrix(rows, d, 9);
    let mut shifted = vec![f16::from_f64(0.0)];
    shifted.extend_from_slice(a.data());
    let dev = DeviceMatrix::upload(&gpu, &Matrix::new(1, shifted.len(), shifted).unwrap()).unwrap();
    let out = DeviceMatrix::<f32>::zeros(&gpu, rows, rows).unwrap();
    let stream = gpu.stream();
    let base = { cudarc::driver::DevicePtr::device_ptr(dev.slice(), stream).0 };
    let s_ptr = { cudarc::driver::DevicePtr::device_ptr(out.slice(), stream).0 };
    let a_raw = RawMatrix::new(base + 2, rows, d, DType::F16); // 2-byte aligned, not 16
    let s_raw = RawMatrix::new(s_ptr, rows, rows, DType::F32);
    let opts = SimilarityOptions::cosine();
    unsafe { similarity_raw(&gpu, stream, a_raw, a_raw, s_raw, &opts) }.unwrap();
    let got = out.download(&gpu).unwrap();
    let want = similarity(&a, &a, &opts);
    if let Some((i, g, w)) = first_violation(got.data(), want.data(), bound(DType::F16, DType::F32, 1.0)) {
        panic!("unaligned raw similarity: S[{}][{}] = {g}, oracle {w}", i / rows, i % rows);
    }
    let null = RawMatrix::new(0, rows, d, DType::F16);
    let err = unsafe { similarity_raw(&gpu, stream, null, a_raw, s_raw, &opts) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "a", .. }), "{err}");
    let odd = RawMatrix::new(base + 1, rows, d, DType::F16);
    let err = unsafe { similarity_raw(&gpu, stream, odd, odd, s_raw, &opts) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "a", .. }), "{err}");
    let wrong_out = RawMatrix::new(s_ptr, rows, rows + 1, DType::F32);
    assert!(matches!(unsafe { similarity_raw(&gpu, stream, a_raw, a_raw, wrong_out, &opts) }, Err(Error::Shape { arg: "s", .. })));
}
