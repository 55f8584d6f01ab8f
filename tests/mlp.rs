//! The encoder's GPU kernels (kernels/mlp.cu) against the f64 oracle (src/ops/mlp/cpu.rs): each kernel
//! on its own over aligned and unaligned shapes, AdamW, and one whole forward / backward / update
//! of a GpuMlp. Without a GPU these tests print why and pass; the oracle's own tests (hand values,
//! finite differences) are in src/ops/mlp/cpu.rs.

mod common;

use common::{first_violation, gpu_or_skip, random_matrix};
use contrastive_kernels::cudarc::driver::{DevicePtr, DevicePtrMut};
use contrastive_kernels::dtype::unit_roundoff;
use contrastive_kernels::ops::mlp::cpu as oracle;
use contrastive_kernels::ops::mlp::gpu::{
    adamw_raw, column_sums_raw, linear_backward_data_raw, linear_backward_weight_raw, linear_forward_raw, GpuMlp,
};
use contrastive_kernels::ops::mlp::{AdamW, MlpConfig, MlpParams};
use contrastive_kernels::{bf16, f16, DType, DeviceMatrix, Error, FloatElement, Gpu, Matrix, RawMatrix};

/// (m, n, k) = (batch, out, in): single elements, tails of the 128 x 128 tile and of the 32-wide k
/// stage, dimensions not a multiple of 8 (the `_unaligned` kernels), a long reduction.
const SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1), (5, 3, 13), (130, 257, 200), (256, 128, 64), (77, 64, 100), (300, 129, 512), (64, 72, 40)];

fn abs(m: &Matrix<f64>) -> Matrix<f64> {
    m.map(|v| v.abs())
}

/// |got - want| <= 2 u_out |want| + 1e-4 * sum_k |a_k b_k| (f32 accumulation of exact products
/// over at most 512 terms is far inside 1e-4 of the absolute sum; the first term is the output's
/// rounding).
fn check<T: contrastive_kernels::Float>(what: &str, got: &[T], want: &[f64], abs_sum: &[f64], out: DType) {
    let u = unit_roundoff(out);
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let bound = 2.0 * u * want[i].abs() + 1e-4 * abs_sum[i];
        // One element at a time through the shared rule (NaN-aware, equal values pass).
        let violation = first_violation(&got[i..=i], &want[i..=i], |_| bound);
        assert!(violation.is_none(), "{what}: element {i}: got {}, want {} (bound {bound:.3e})", got[i].to_f64(), want[i]);
    }
}

fn raw<T: FloatElement>(m: &mut DeviceMatrix<T>, gpu: &Gpu) -> RawMatrix {
    let (rows, cols) = (m.rows(), m.cols());
    RawMatrix::new(m.slice_mut().device_ptr_mut(gpu.stream()).0, rows, cols, T::DTYPE)
}

fn kernels_match<T: FloatElement>(gpu: &Gpu) {
    let stream = gpu.stream();
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let seed = 1000 * s as u64;
        let x: Matrix<T> = random_matrix(m, k, seed + 1);
        let w: Matrix<T> = random_matrix(n, k, seed + 2);
        let dz: Matrix<T> = random_matrix(m, n, seed + 3);
        let bias: Vec<f32> = random_matrix::<f32>(1, n, seed + 4).into_vec();
        let (xd, wd, dzd) =
            (DeviceMatrix::upload(gpu, &x).unwrap(), DeviceMatrix::upload(gpu, &w).unwrap(), DeviceMatrix::upload(gpu, &dz).unwrap());
        let bias_d = stream.clone_htod(&bias).unwrap();
        let (mut xd, mut wd, mut dzd) = (xd, wd, dzd);
        let (xr, wr, dzr) = (raw(&mut xd, gpu), raw(&mut wd, gpu), raw(&mut dzd, gpu));

        for relu in [false, true] {
            let mut y = DeviceMatrix::<T>::zeros(gpu, m, n).unwrap();
            let yr = raw(&mut y, gpu);
            unsafe { linear_forward_raw(gpu, stream, xr, wr, Some(bias_d.device_ptr(stream).0), yr, relu).unwrap() };
            let want = oracle::linear_forward(&x, &w, &bias, relu);
            let abs_sum = oracle::linear_forward(&abs(&x.cast()), &abs(&w.cast()), &vec![0.0f64; n], false);
            check(
                &format!("linear_forward {} {m}x{n}x{k} relu={relu}", T::DTYPE),
                y.download(gpu).unwrap().data(),
                want.data(),
                abs_sum.data(),
                T::DTYPE,
            );
        }

        for masked in [false, true] {
            let mut dx = DeviceMatrix::<T>::zeros(gpu, m, k).unwrap();
            let dxr = raw(&mut dx, gpu);
            unsafe { linear_backward_data_raw(gpu, stream, dzr, wr, masked.then_some(xr), dxr).unwrap() };
            let want = oracle::linear_backward_data(&dz, &w, masked.then_some(&x));
            let abs_sum = oracle::linear_backward_data(&abs(&dz.cast()), &abs(&w.cast()), None::<&Matrix<f64>>);
            check(
                &format!("linear_backward_data {} {m}x{n}x{k} masked={masked}", T::DTYPE),
                dx.download(gpu).unwrap().data(),
                want.data(),
                abs_sum.data(),
                T::DTYPE,
            );
        }

        let mut dw = DeviceMatrix::<f32>::zeros(gpu, n, k).unwrap();
        let dwr = raw(&mut dw, gpu);
        unsafe { linear_backward_weight_raw(gpu, stream, dzr, xr, dwr).unwrap() };
        let want = oracle::linear_backward_weight(&dz, &x);
        let abs_sum = oracle::linear_backward_weight(&abs(&dz.cast()), &abs(&x.cast()));
        check(
            &format!("linear_backward_weight {} {m}x{n}x{k}", T::DTYPE),
            dw.download(gpu).unwrap().data(),
            want.data(),
            abs_sum.data(),
            DType::F32,
        );

        let mut db = stream.alloc_zeros::<f32>(n).unwrap();
        unsafe { column_sums_raw(gpu, stream, dzr, db.device_ptr_mut(stream).0).unwrap() };
        let want = oracle::column_sums(&dz);
        let abs_sum = oracle::column_sums(&abs(&dz.cast()));
        check(&format!("column_sums {} {m}x{n}", T::DTYPE), &stream.clone_dtoh(&db).unwrap(), &want, &abs_sum, DType::F32);
    }
}

#[test]
fn gpu_linear_kernels_match_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_linear_kernels_match_oracle") else { return };
    kernels_match::<f16>(&gpu);
    kernels_match::<bf16>(&gpu);
}

#[test]
fn gpu_adamw_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_adamw_matches_oracle") else { return };
    let stream = gpu.stream();
    let count = 1000;
    let hp = AdamW { lr: 1e-2, weight_decay: 0.1, ..AdamW::default() };
    let mut p = random_matrix::<f32>(1, count, 1).into_vec();
    let g = random_matrix::<f32>(1, count, 2).into_vec();
    let (mut m, mut v) = (
        random_matrix::<f32>(1, count, 3).into_vec(),
        random_matrix::<f32>(1, count, 4).into_vec().iter().map(|x| x.abs()).collect::<Vec<_>>(),
    );
    let (mut pd, gd, mut md, mut vd) =
        (stream.clone_htod(&p).unwrap(), stream.clone_htod(&g).unwrap(), stream.clone_htod(&m).unwrap(), stream.clone_htod(&v).unwrap());
    let mut compute = stream.alloc_zeros::<bf16>(count).unwrap();
    for step in 1..=3u64 {
        unsafe {
            adamw_raw(
                &gpu,
                stream,
                pd.device_ptr_mut(stream).0,
                gd.device_ptr(stream).0,
                md.device_ptr_mut(stream).0,
                vd.device_ptr_mut(stream).0,
                Some(compute.device_ptr_mut(stream).0),
                DType::BF16,
                count,
                &hp,
                hp.weight_decay,
                step,
            )
            .unwrap()
        };
        oracle::adamw_update(&mut p, &g, &mut m, &mut v, &hp, hp.weight_decay, hp.bias_corrections(step));
    }
    // f32 arithmetic against f64 rounded to f32: a few ulps of the values.
    for (name, got, want) in [
        ("p", stream.clone_dtoh(&pd).unwrap(), p.clone()),
        ("m", stream.clone_dtoh(&md).unwrap(), m),
        ("v", stream.clone_dtoh(&vd).unwrap(), v),
    ] {
        for i in 0..count {
            assert!((got[i] - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs()), "{name}[{i}]: got {}, want {}", got[i], want[i]);
        }
    }
    let (compute, master) = (stream.clone_dtoh(&compute).unwrap(), stream.clone_dtoh(&pd).unwrap());
    for (i, (c, p)) in compute.iter().zip(&master).enumerate() {
        assert_eq!(*c, bf16::from_f32(*p), "compute copy [{i}] is the master weight rounded to bf16");
    }
    let err = unsafe { adamw_raw(&gpu, stream, 0, 0, 0, 0, None, DType::F32, 0, &hp, 0.0, 1) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "compute_dtype", .. }), "{err}");
    let err = unsafe { adamw_raw(&gpu, stream, 0, 0, 0, 0, None, DType::F16, 0, &hp, 0.0, 0) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "step", .. }), "{err}");
}

fn mlp_step<T: FloatElement>(gpu: &Gpu, rel_tol: f64) {
    let config = MlpConfig::new(64, &[96], 48, &[40, 24]).unwrap();
    let params = MlpParams::<f32>::init(&config, 9).unwrap();
    let x: Matrix<T> = random_matrix(200, 64, 10);
    let d_out: Matrix<T> = random_matrix(200, 24, 11);
    let mut mlp = GpuMlp::<T>::new(gpu, &params).unwrap();
    let xd = DeviceMatrix::upload(gpu, &x).unwrap();
    let outputs = mlp.forward(&xd).unwrap();
    let dx = mlp.backward(&xd, &outputs, &DeviceMatrix::upload(gpu, &d_out).unwrap()).unwrap();

    // The oracle on the weights as the kernels see them (rounded to T).
    let rounded = MlpParams {
        config: config.clone(),
        layers: params
            .layers
            .iter()
            .map(|l| contrastive_kernels::ops::mlp::Linear { weight: l.weight.cast::<T>().cast::<f32>(), bias: l.bias.clone() })
            .collect(),
    };
    let fwd = oracle::forward(&rounded, &x).unwrap();
    // The backward's oracle runs on the activations the kernels produced (rounded to T): a ReLU
    // whose pre-activation lies within rounding of 0 may switch either way, and one switched mask
    // moves a whole row of the next dW by far more than the tolerance (the CPU emulator found
    // three such flips in this batch). The forward is checked against the oracle's own above.
    let gpu_fwd = oracle::MlpForward { input: x.cast(), outputs: outputs.iter().map(|o| o.download(gpu).unwrap().cast::<f64>()).collect() };
    let grads = oracle::backward(&rounded, &gpu_fwd, &d_out.cast()).unwrap();
    // Activations are rounded to T between layers, so the chain is compared relative to the
    // largest value of each tensor.
    let close = |what: &str, got: &[f64], want: &[f64]| {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        assert!(err <= rel_tol * scale, "{what} ({}): max error {err:.3e} > {rel_tol} x {scale:.3e}", T::DTYPE);
    };
    for (l, out) in outputs.iter().enumerate() {
        close(&format!("output of layer {}", l + 1), out.download(gpu).unwrap().cast::<f64>().data(), fwd.outputs[l].data());
    }
    for (l, g) in mlp.gradients().unwrap().iter().enumerate() {
        close(&format!("dW{}", l + 1), g.weight.cast::<f64>().data(), grads.layers[l].weight.data());
        close(&format!("db{}", l + 1), &g.bias.iter().map(|&v| v as f64).collect::<Vec<_>>(), &grads.layers[l].bias);
    }
    close("dX", dx.download(gpu).unwrap().cast::<f64>().data(), grads.input.data());
    mlp.adamw_step(&AdamW::default()).unwrap();
    assert_eq!(mlp.step(), 1);
    let after = mlp.params().unwrap();
    // Every weight moved by at most lr (1 + wd) (Adam's first step is lr * g / (|g| + eps)).
    for (a, b) in after.layers.iter().zip(&params.layers) {
        for (x1, x0) in a.weight.data().iter().zip(b.weight.data()) {
            assert!((x1 - x0).abs() <= 1e-3 * 1.01 + 1e-6, "weight moved {x0} -> {x1}");
        }
    }
    assert_ne!(after, params, "the step changed the weights");
}

#[test]
fn gpu_mlp_step_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_mlp_step_matches_oracle") else { return };
    mlp_step::<f16>(&gpu, 1e-2);
    mlp_step::<bf16>(&gpu, 4e-2);
}

#[test]
fn gpu_argument_errors() {
    let Some(gpu) = gpu_or_skip("gpu_argument_errors") else { return };
    let stream = gpu.stream();
    let mut x = DeviceMatrix::<f16>::zeros(&gpu, 4, 8).unwrap();
    let mut w = DeviceMatrix::<f16>::zeros(&gpu, 3, 7).unwrap();
    let mut y = DeviceMatrix::<f16>::zeros(&gpu, 4, 3).unwrap();
    let (xr, wr, yr) = (raw(&mut x, &gpu), raw(&mut w, &gpu), raw(&mut y, &gpu));
    let err = unsafe { linear_forward_raw(&gpu, stream, xr, wr, None, yr, true) }.unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "w", .. }), "{err}");
    let mut xf = DeviceMatrix::<f32>::zeros(&gpu, 4, 8).unwrap();
    let err = unsafe { linear_forward_raw(&gpu, stream, raw(&mut xf, &gpu), wr, None, yr, true) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "x", .. }), "{err}");
    let err = unsafe { linear_backward_weight_raw(&gpu, stream, yr, xr, yr) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { arg: "dw", .. }), "{err}");
    let params = MlpParams::<f32>::init(&MlpConfig::new(8, &[], 3, &[]).unwrap(), 1).unwrap();
    let mlp = GpuMlp::<f16>::new(&gpu, &params).unwrap();
    assert!(matches!(mlp.forward(&DeviceMatrix::zeros(&gpu, 2, 9).unwrap()), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(GpuMlp::<f32>::new(&gpu, &params), Err(Error::InvalidArgument { arg: "T", .. })));
}

/// Regression, found by the CPU emulator: dW = dZ^T X over an empty batch (m = 0) left a
/// committed cp.async group that no wait retired (the k-loop ran zero times after issuing its first
/// stage). The k-loop now issues nothing for an empty reduction; dW is zeros.
#[test]
fn gpu_linear_backward_weight_of_an_empty_batch() {
    let Some(gpu) = gpu_or_skip("gpu_linear_backward_weight_of_an_empty_batch") else { return };
    for (n, k) in [(16, 24), (5, 3)] {
        let mut dz = DeviceMatrix::<f16>::zeros(&gpu, 0, n).unwrap();
        let mut x = DeviceMatrix::<f16>::zeros(&gpu, 0, k).unwrap();
        let mut dw = DeviceMatrix::<f32>::upload(&gpu, &Matrix::from_fn(n, k, |_, _| 7.0f32)).unwrap();
        let (dzr, xr, dwr) = (raw(&mut dz, &gpu), raw(&mut x, &gpu), raw(&mut dw, &gpu));
        unsafe { linear_backward_weight_raw(&gpu, gpu.stream(), dzr, xr, dwr).unwrap() };
        assert!(dw.download(&gpu).unwrap().data().iter().all(|&v| v == 0.0), "{n} x {k}: dW of no rows is zero");
    }
}
