//! The GPU launches of the encoder (`kernels/mlp.cu`): the `*_raw` functions on caller memory and
//! any stream, and [`GpuMlp`] on this crate's buffers.

use cudarc::driver::{sys::CUdeviceptr, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use super::{check_input, AdamW, Linear, MlpConfig, MlpParams};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::mlp::{
    AdamwParams, ColumnSumsParams, ConvertParams, LinearBackwardDataParams, LinearBackwardWeightParams, LinearForwardParams, COLSUM_X,
    COLSUM_Y, ELEMENTWISE_THREADS, GEMM_THREADS, TILE,
};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::matrix::Matrix;
use crate::ops::{check_features, check_same_shape};

const MODULE: &str = "mlp";

fn check_compute_dtype(arg: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::invalid(arg, format!("the encoder kernels compute in f16 or bf16, got {other} (use the CPU backend for f32)"))),
    }
}

fn check_same_dtype(arg: &'static str, of: &str, want: DType, got: DType) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(Error::invalid(arg, format!("must have the dtype of {of} ({want}), got {got}")))
    }
}

fn gemm_grid(rows: usize, cols: usize, arg: &'static str) -> Result<LaunchConfig> {
    if rows.div_ceil(TILE) > 65_535 {
        return Err(Error::shape(arg, format!("at most {} rows", 65_535 * TILE), format!("{rows} rows")));
    }
    Ok(LaunchConfig {
        grid_dim: (cols.div_ceil(TILE) as u32, rows.div_ceil(TILE) as u32, 1),
        block_dim: (GEMM_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn elementwise_grid(count: usize) -> LaunchConfig {
    // Grid-stride loops: a bounded grid is enough.
    let blocks = count.div_ceil(ELEMENTWISE_THREADS).clamp(1, 4096) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEMENTWISE_THREADS as u32, 1, 1), shared_mem_bytes: 0 }
}

fn suffix(aligned: bool) -> &'static str {
    if aligned {
        ""
    } else {
        "_unaligned"
    }
}

/// Y = X W^T (+ bias) (then ReLU): `x` m x k, `w` n x k, `y` m x n, all f16 or all bf16; `bias`
/// n f32 values or none.
///
/// # Safety
/// Every pointer must be valid device memory of this GPU's context for the shape and dtype it is
/// described with (`bias`: n f32), and stay valid until the stream has run the kernel.
pub unsafe fn linear_forward_raw(
    gpu: &Gpu,
    stream: &CudaStream,
    x: RawMatrix,
    w: RawMatrix,
    bias: Option<CUdeviceptr>,
    y: RawMatrix,
    relu: bool,
) -> Result<()> {
    check_compute_dtype("x", x.dtype)?;
    check_same_dtype("w", "x", x.dtype, w.dtype)?;
    check_same_dtype("y", "x", x.dtype, y.dtype)?;
    check_features("x", x.rows, x.cols)?;
    check_features("w", w.rows, w.cols)?;
    if w.cols != x.cols {
        return Err(Error::shape("w", format!("{} columns (the k of x)", x.cols), format!("{} x {}", w.rows, w.cols)));
    }
    check_same_shape("y", (x.rows, w.rows), (y.rows, y.cols))?;
    x.check_pointer("x")?;
    w.check_pointer("w")?;
    y.check_pointer("y")?;
    if let Some(b) = bias {
        RawMatrix::new(b, w.rows, 1, DType::F32).check_pointer("bias")?;
    }
    let cfg = gemm_grid(x.rows, w.rows, "x")?;
    if x.rows == 0 {
        return Ok(());
    }
    let aligned = x.cols % 8 == 0 && x.ptr % 16 == 0 && w.ptr % 16 == 0;
    let name = format!("linear_forward_{}{}", x.dtype, suffix(aligned));
    let params = LinearForwardParams {
        x: x.ptr,
        w: w.ptr,
        bias: bias.unwrap_or(0),
        y: y.ptr,
        m: dim_i32("x.rows", x.rows)?,
        n: dim_i32("w.rows", w.rows)?,
        k: dim_i32("x.cols", x.cols)?,
        relu: relu as i32,
    };
    gpu.launch(stream, MODULE, &name, cfg, &params)
}

/// dX = dZ W, masked to where `relu_of` > 0 when given (the previous layer's ReLU'): `dz` m x n,
/// `w` n x k, `relu_of` and `dx` m x k; one dtype (f16 or bf16).
///
/// # Safety
/// As [`linear_forward_raw`].
pub unsafe fn linear_backward_data_raw(
    gpu: &Gpu,
    stream: &CudaStream,
    dz: RawMatrix,
    w: RawMatrix,
    relu_of: Option<RawMatrix>,
    dx: RawMatrix,
) -> Result<()> {
    check_compute_dtype("dz", dz.dtype)?;
    check_same_dtype("w", "dz", dz.dtype, w.dtype)?;
    check_same_dtype("dx", "dz", dz.dtype, dx.dtype)?;
    check_features("dz", dz.rows, dz.cols)?;
    check_features("w", w.rows, w.cols)?;
    if w.rows != dz.cols {
        return Err(Error::shape("w", format!("{} rows (the n of dz)", dz.cols), format!("{} x {}", w.rows, w.cols)));
    }
    check_same_shape("dx", (dz.rows, w.cols), (dx.rows, dx.cols))?;
    if let Some(mask) = relu_of {
        check_same_dtype("relu_of", "dz", dz.dtype, mask.dtype)?;
        check_same_shape("relu_of", (dz.rows, w.cols), (mask.rows, mask.cols))?;
        mask.check_pointer("relu_of")?;
    }
    dz.check_pointer("dz")?;
    w.check_pointer("w")?;
    dx.check_pointer("dx")?;
    let cfg = gemm_grid(dz.rows, w.cols, "dz")?;
    if dz.rows == 0 {
        return Ok(());
    }
    let aligned = dz.cols % 8 == 0 && w.cols % 8 == 0 && dz.ptr % 16 == 0 && w.ptr % 16 == 0;
    let name = format!("linear_backward_data_{}{}", dz.dtype, suffix(aligned));
    let params = LinearBackwardDataParams {
        dz: dz.ptr,
        w: w.ptr,
        mask: relu_of.map_or(0, |r| r.ptr),
        dx: dx.ptr,
        m: dim_i32("dz.rows", dz.rows)?,
        n: dim_i32("dz.cols", dz.cols)?,
        k: dim_i32("w.cols", w.cols)?,
    };
    gpu.launch(stream, MODULE, &name, cfg, &params)
}

/// dW = dZ^T X (f32, n x k): `dz` m x n and `x` m x k in one dtype (f16 or bf16). With m = 0
/// (an empty batch) dW is zeros.
///
/// # Safety
/// As [`linear_forward_raw`].
pub unsafe fn linear_backward_weight_raw(gpu: &Gpu, stream: &CudaStream, dz: RawMatrix, x: RawMatrix, dw: RawMatrix) -> Result<()> {
    check_compute_dtype("dz", dz.dtype)?;
    check_same_dtype("x", "dz", dz.dtype, x.dtype)?;
    check_same_dtype("dw", "f32 gradients", DType::F32, dw.dtype)?;
    check_features("dz", dz.rows, dz.cols)?;
    check_features("x", x.rows, x.cols)?;
    if x.rows != dz.rows {
        return Err(Error::shape("x", format!("{} rows (the batch of dz)", dz.rows), format!("{} x {}", x.rows, x.cols)));
    }
    check_same_shape("dw", (dz.cols, x.cols), (dw.rows, dw.cols))?;
    dz.check_pointer("dz")?;
    x.check_pointer("x")?;
    dw.check_pointer("dw")?;
    let cfg = gemm_grid(dz.cols, x.cols, "dz")?;
    let aligned = dz.cols % 8 == 0 && x.cols % 8 == 0 && dz.ptr % 16 == 0 && x.ptr % 16 == 0;
    let name = format!("linear_backward_weight_{}{}", dz.dtype, suffix(aligned));
    let params = LinearBackwardWeightParams {
        dz: dz.ptr,
        x: x.ptr,
        dw: dw.ptr,
        m: dim_i32("dz.rows", dz.rows)?,
        n: dim_i32("dz.cols", dz.cols)?,
        k: dim_i32("x.cols", x.cols)?,
    };
    gpu.launch(stream, MODULE, &name, cfg, &params)
}

/// db = column sums of `dz` (m x n, f16 or bf16) into `out` (n f32), in a fixed order.
///
/// # Safety
/// As [`linear_forward_raw`] (`out`: n f32).
pub unsafe fn column_sums_raw(gpu: &Gpu, stream: &CudaStream, dz: RawMatrix, out: CUdeviceptr) -> Result<()> {
    check_compute_dtype("dz", dz.dtype)?;
    check_features("dz", dz.rows, dz.cols)?;
    dz.check_pointer("dz")?;
    RawMatrix::new(out, dz.cols, 1, DType::F32).check_pointer("out")?;
    let (m, n) = (dim_i32("dz.rows", dz.rows)?, dim_i32("dz.cols", dz.cols)?);
    let cfg = LaunchConfig {
        grid_dim: (dz.cols.div_ceil(COLSUM_X) as u32, 1, 1),
        block_dim: (COLSUM_X as u32, COLSUM_Y as u32, 1),
        shared_mem_bytes: 0,
    };
    gpu.launch(stream, MODULE, &format!("column_sums_{}", dz.dtype), cfg, &ColumnSumsParams { dz: dz.ptr, out, m, n })
}

/// One AdamW update of `count` f32 parameters `p` with gradients `g` and moments `m`, `v` (all
/// f32), at step `step` (1-based), writing the compute copy `compute` (count elements of
/// `compute_dtype`, f16 or bf16) when given.
///
/// # Safety
/// As [`linear_forward_raw`]: each pointer valid for `count` elements of its type.
#[allow(clippy::too_many_arguments)]
pub unsafe fn adamw_raw(
    gpu: &Gpu,
    stream: &CudaStream,
    p: CUdeviceptr,
    g: CUdeviceptr,
    m: CUdeviceptr,
    v: CUdeviceptr,
    compute: Option<CUdeviceptr>,
    compute_dtype: DType,
    count: usize,
    hp: &AdamW,
    weight_decay: f32,
    step: u64,
) -> Result<()> {
    hp.validate()?;
    check_compute_dtype("compute_dtype", compute_dtype)?;
    if step == 0 {
        return Err(Error::invalid("step", "steps count from 1"));
    }
    if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
        return Err(Error::invalid("weight_decay", format!("must be finite and >= 0, got {weight_decay}")));
    }
    for (arg, ptr) in [("p", p), ("g", g), ("m", m), ("v", v)] {
        RawMatrix::new(ptr, count, 1, DType::F32).check_pointer(arg)?;
    }
    if let Some(c) = compute {
        RawMatrix::new(c, count, 1, compute_dtype).check_pointer("compute")?;
    }
    if count == 0 {
        return Ok(());
    }
    let (c1, c2) = hp.bias_corrections(step);
    let (c1, c2) = (c1 as f32, c2 as f32);
    let params = AdamwParams {
        p,
        g,
        m_state: m,
        v_state: v,
        p_compute: compute.unwrap_or(0),
        count: dim_i32("count", count)?,
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay,
        c1,
        c2,
    };
    gpu.launch(stream, MODULE, &format!("adamw_{compute_dtype}"), elementwise_grid(count), &params)
}

/// `dst` (count elements of `dst_dtype`, f16 or bf16) = `src` (count f32), rounded to nearest.
///
/// # Safety
/// As [`linear_forward_raw`].
pub(crate) unsafe fn convert_f32_raw(
    gpu: &Gpu,
    stream: &CudaStream,
    src: CUdeviceptr,
    dst: CUdeviceptr,
    dst_dtype: DType,
    count: usize,
) -> Result<()> {
    check_compute_dtype("dst_dtype", dst_dtype)?;
    RawMatrix::new(src, count, 1, DType::F32).check_pointer("src")?;
    RawMatrix::new(dst, count, 1, dst_dtype).check_pointer("dst")?;
    if count == 0 {
        return Ok(());
    }
    let params = ConvertParams { src, dst, count: dim_i32("count", count)? };
    gpu.launch(stream, MODULE, &format!("convert_f32_{dst_dtype}"), elementwise_grid(count), &params)
}

/// The raw view of a matrix the kernel writes (all launches are on the one stream, so the
/// guard's event bookkeeping is not needed past the call).
fn raw_mut<T: FloatElement>(m: &mut DeviceMatrix<T>, stream: &CudaStream) -> RawMatrix {
    let (rows, cols) = (m.rows(), m.cols());
    RawMatrix::new(m.slice_mut().device_ptr_mut(stream).0, rows, cols, T::DTYPE)
}

/// One layer's device state: f32 master weights and biases with their AdamW moments and
/// gradients, and the T compute copy of the weights.
struct GpuLinear<T> {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    weight_compute: DeviceMatrix<T>,
    d_weight: CudaSlice<f32>,
    d_bias: CudaSlice<f32>,
    m_weight: CudaSlice<f32>,
    v_weight: CudaSlice<f32>,
    m_bias: CudaSlice<f32>,
    v_bias: CudaSlice<f32>,
}

/// The MLP on the GPU: forward, backward into its gradient buffers, AdamW. T = f16 or bf16.
pub struct GpuMlp<T> {
    gpu: Gpu,
    config: MlpConfig,
    layers: Vec<GpuLinear<T>>,
    step: u64,
}

impl<T: FloatElement> GpuMlp<T> {
    /// Uploads `params` (the f32 master weights) and writes the compute copy.
    pub fn new(gpu: &Gpu, params: &MlpParams<f32>) -> Result<Self> {
        check_compute_dtype("T", T::DTYPE)?;
        params.validate()?;
        let stream = gpu.stream();
        let upload = |v: &[f32]| stream.clone_htod(v).during("host-to-device copy");
        let zeros = |len: usize| stream.alloc_zeros::<f32>(len.max(1)).during("device allocation");
        let mut layers = Vec::with_capacity(params.layers.len());
        for layer in &params.layers {
            let (out, inp) = (layer.weight.rows(), layer.weight.cols());
            let weight = upload(layer.weight.data())?;
            let mut weight_compute = DeviceMatrix::<T>::zeros(gpu, out, inp)?;
            {
                let (src, dst) = (weight.device_ptr(stream).0, weight_compute.slice_mut().device_ptr_mut(stream).0);
                // SAFETY: both buffers hold out * inp elements of their types.
                unsafe { convert_f32_raw(gpu, stream, src, dst, T::DTYPE, out * inp)? };
            }
            layers.push(GpuLinear {
                weight,
                bias: upload(&layer.bias)?,
                weight_compute,
                d_weight: zeros(out * inp)?,
                d_bias: zeros(out)?,
                m_weight: zeros(out * inp)?,
                v_weight: zeros(out * inp)?,
                m_bias: zeros(out)?,
                v_bias: zeros(out)?,
            });
        }
        Ok(GpuMlp { gpu: gpu.clone(), config: params.config.clone(), layers, step: 0 })
    }

    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// AdamW steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Every layer's output for the batch `x` (batch x input): outputs[l - 1] of layer l.
    pub fn forward(&self, x: &DeviceMatrix<T>) -> Result<Vec<DeviceMatrix<T>>> {
        check_input(&self.config, x.rows(), x.cols())?;
        let (gpu, stream) = (&self.gpu, self.gpu.stream());
        let mut outputs: Vec<DeviceMatrix<T>> = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let mut y = DeviceMatrix::<T>::zeros(gpu, x.rows(), self.config.widths[l + 1])?;
            let input = if l == 0 { x } else { &outputs[l - 1] };
            let x_raw = input.raw(stream).0;
            let w_raw = layer.weight_compute.raw(stream).0;
            let bias = layer.bias.device_ptr(stream).0;
            let y_raw = raw_mut(&mut y, stream);
            // SAFETY: live buffers of the described shapes; everything runs on the one stream.
            unsafe { linear_forward_raw(gpu, stream, x_raw, w_raw, Some(bias), y_raw, self.config.relu(l + 1))? };
            outputs.push(y);
        }
        Ok(outputs)
    }

    /// Backward from the gradient of the MLP's output (`d_output`, batch x output) given the
    /// batch `x` and the `outputs` of [`Self::forward`]: fills the weight and bias gradients and
    /// returns dX.
    pub fn backward(&mut self, x: &DeviceMatrix<T>, outputs: &[DeviceMatrix<T>], d_output: &DeviceMatrix<T>) -> Result<DeviceMatrix<T>> {
        check_input(&self.config, x.rows(), x.cols())?;
        if outputs.len() != self.layers.len() {
            return Err(Error::shape("outputs", format!("{} layer outputs", self.layers.len()), format!("{}", outputs.len())));
        }
        check_same_shape("d_output", (x.rows(), self.config.output()), (d_output.rows(), d_output.cols()))?;
        let (gpu, stream) = (&self.gpu, self.gpu.stream());
        let batch = x.rows();
        let mut owned_dz: Option<DeviceMatrix<T>> = None;
        for l in (1..=self.layers.len()).rev() {
            let input = if l == 1 { x } else { &outputs[l - 2] };
            let dz = owned_dz.as_ref().unwrap_or(d_output);
            let layer = &mut self.layers[l - 1];
            let dz_raw = dz.raw(stream).0;
            let x_raw = input.raw(stream).0;
            let dw_raw = RawMatrix::new(
                layer.d_weight.device_ptr_mut(stream).0,
                layer.weight_compute.rows(),
                layer.weight_compute.cols(),
                DType::F32,
            );
            let db = layer.d_bias.device_ptr_mut(stream).0;
            // SAFETY: live buffers of the described shapes on the one stream.
            unsafe {
                linear_backward_weight_raw(gpu, stream, dz_raw, x_raw, dw_raw)?;
                column_sums_raw(gpu, stream, dz_raw, db)?;
            }
            let mut dx = DeviceMatrix::<T>::zeros(gpu, batch, self.config.widths[l - 1])?;
            let dx_raw = raw_mut(&mut dx, stream);
            let mask = (l > 1 && self.config.relu(l - 1)).then_some(x_raw);
            let w_raw = layer.weight_compute.raw(stream).0;
            // SAFETY: as above.
            unsafe { linear_backward_data_raw(gpu, stream, dz_raw, w_raw, mask, dx_raw)? };
            owned_dz = Some(dx);
        }
        Ok(owned_dz.expect("at least one layer"))
    }

    /// One AdamW step from the gradients of the last [`Self::backward`] (weights decayed, biases not).
    pub fn adamw_step(&mut self, hp: &AdamW) -> Result<()> {
        hp.validate()?;
        self.step += 1;
        let (gpu, stream) = (&self.gpu, self.gpu.stream());
        for layer in &mut self.layers {
            let count_w = layer.weight_compute.rows() * layer.weight_compute.cols();
            let count_b = layer.weight_compute.rows();
            let compute = layer.weight_compute.slice_mut().device_ptr_mut(stream).0;
            // SAFETY: every buffer holds count_w (weights) or count_b (biases) elements.
            unsafe {
                adamw_raw(
                    gpu,
                    stream,
                    layer.weight.device_ptr_mut(stream).0,
                    layer.d_weight.device_ptr(stream).0,
                    layer.m_weight.device_ptr_mut(stream).0,
                    layer.v_weight.device_ptr_mut(stream).0,
                    Some(compute),
                    T::DTYPE,
                    count_w,
                    hp,
                    hp.weight_decay,
                    self.step,
                )?;
                adamw_raw(
                    gpu,
                    stream,
                    layer.bias.device_ptr_mut(stream).0,
                    layer.d_bias.device_ptr(stream).0,
                    layer.m_bias.device_ptr_mut(stream).0,
                    layer.v_bias.device_ptr_mut(stream).0,
                    None,
                    T::DTYPE,
                    count_b,
                    hp,
                    0.0,
                    self.step,
                )?;
            }
        }
        Ok(())
    }

    fn download_f32(&self, s: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>> {
        let mut v = self.gpu.stream().clone_dtoh(s).during("device-to-host copy")?;
        v.truncate(len);
        Ok(v)
    }

    /// The f32 master weights.
    pub fn params(&self) -> Result<MlpParams<f32>> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let (out, inp) = (l.weight_compute.rows(), l.weight_compute.cols());
                Ok(Linear {
                    weight: Matrix::new(out, inp, self.download_f32(&l.weight, out * inp)?)?,
                    bias: self.download_f32(&l.bias, out)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MlpParams { config: self.config.clone(), layers })
    }

    /// The gradients of the last backward (f32), layer by layer.
    pub fn gradients(&self) -> Result<Vec<Linear<f32>>> {
        self.layers
            .iter()
            .map(|l| {
                let (out, inp) = (l.weight_compute.rows(), l.weight_compute.cols());
                Ok(Linear {
                    weight: Matrix::new(out, inp, self.download_f32(&l.d_weight, out * inp)?)?,
                    bias: self.download_f32(&l.d_bias, out)?,
                })
            })
            .collect()
    }
}
