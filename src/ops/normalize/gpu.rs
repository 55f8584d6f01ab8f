//! The GPU launches of `l2_normalize` (`kernels/normalize.cu`).

use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtrMut, LaunchConfig};

use super::{check_backward, check_forward};
use crate::dtype::FloatElement;
use crate::error::{CudaContext as _, Result};
use crate::gpu::params::normalize::{NormalizeBackwardParams, NormalizeForwardParams, ROWS_PER_BLOCK, THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::ops::{check_float, check_same_shape};

const MODULE: &str = "normalize";

fn config(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1), block_dim: (THREADS as u32, 1, 1), shared_mem_bytes: 0 }
}

/// Z (in `TZ`) and the row norms of `x`, on the GPU's default stream.
pub fn l2_normalize<TX: FloatElement, TZ: FloatElement>(gpu: &Gpu, x: &DeviceMatrix<TX>) -> Result<(DeviceMatrix<TZ>, CudaSlice<f32>)> {
    check_forward(x.rows(), x.cols())?;
    let stream = gpu.stream();
    let mut z = DeviceMatrix::<TZ>::zeros(gpu, x.rows(), x.cols())?;
    let mut norms = stream.alloc_zeros::<f32>(x.rows().max(1)).during("device allocation")?;
    let (x_raw, _x_guard) = x.raw(stream);
    let (z_ptr, _z_guard) = z.slice_mut().device_ptr_mut(stream);
    let (norms_ptr, _n_guard) = norms.device_ptr_mut(stream);
    let z_raw = RawMatrix::new(z_ptr, x.rows(), x.cols(), TZ::DTYPE);
    // SAFETY: the pointers come from live allocations of the right sizes, guarded until queued.
    unsafe { l2_normalize_raw(gpu, stream, x_raw, Some(z_raw), Some(norms_ptr))? };
    drop((_x_guard, _z_guard, _n_guard));
    Ok((z, norms))
}

/// dX (in `TX`) from X and the upstream gradient dZ, on the GPU's default stream.
pub fn l2_normalize_backward<TX: FloatElement, TZ: FloatElement>(
    gpu: &Gpu,
    x: &DeviceMatrix<TX>,
    dz: &DeviceMatrix<TZ>,
) -> Result<DeviceMatrix<TX>> {
    check_backward((x.rows(), x.cols()), (dz.rows(), dz.cols()))?;
    let stream = gpu.stream();
    let mut dx = DeviceMatrix::<TX>::zeros(gpu, x.rows(), x.cols())?;
    let (x_raw, _x_guard) = x.raw(stream);
    let (dz_raw, _dz_guard) = dz.raw(stream);
    let (dx_ptr, _dx_guard) = dx.slice_mut().device_ptr_mut(stream);
    let dx_raw = RawMatrix::new(dx_ptr, x.rows(), x.cols(), TX::DTYPE);
    // SAFETY: as above.
    unsafe { l2_normalize_backward_raw(gpu, stream, x_raw, dz_raw, dx_raw)? };
    drop((_x_guard, _dz_guard, _dx_guard));
    Ok(dx)
}

/// Forward on caller memory: writes Z into `z` (any float dtype, shape of `x`) when given, and
/// the f32 row norms into `norms` (n floats) when given. Queued on `stream`; returns at once.
///
/// # Safety
/// Every pointer must be valid device memory of this GPU's context for the shape and dtype it
/// is described with, and stay valid until the stream has run the kernel.
pub unsafe fn l2_normalize_raw(
    gpu: &Gpu,
    stream: &CudaStream,
    x: RawMatrix,
    z: Option<RawMatrix>,
    norms: Option<sys::CUdeviceptr>,
) -> Result<()> {
    check_float("x", x.dtype)?;
    check_forward(x.rows, x.cols)?;
    x.check_pointer("x")?;
    let z_dtype = match z {
        Some(z) => {
            check_float("z", z.dtype)?;
            check_same_shape("z", (x.rows, x.cols), (z.rows, z.cols))?;
            z.check_pointer("z")?;
            z.dtype
        }
        None => x.dtype,
    };
    if let Some(p) = norms {
        RawMatrix::new(p, x.rows, 1, crate::DType::F32).check_pointer("norms")?;
    }
    if x.rows == 0 {
        return Ok(());
    }
    let name = format!("l2_normalize_forward_{}_{}", x.dtype, z_dtype);
    let params = NormalizeForwardParams {
        x: x.ptr,
        z: z.map_or(0, |z| z.ptr),
        norms: norms.unwrap_or(0),
        n: dim_i32("x.rows", x.rows)?,
        d: dim_i32("x.cols", x.cols)?,
    };
    gpu.launch(stream, MODULE, &name, config(x.rows), &params)
}

/// Backward on caller memory: dx (dtype of `x`) from `x` and `dz` (any float dtype).
///
/// # Safety
/// As [`l2_normalize_raw`].
pub unsafe fn l2_normalize_backward_raw(gpu: &Gpu, stream: &CudaStream, x: RawMatrix, dz: RawMatrix, dx: RawMatrix) -> Result<()> {
    check_float("x", x.dtype)?;
    check_float("dz", dz.dtype)?;
    check_backward((x.rows, x.cols), (dz.rows, dz.cols))?;
    check_same_shape("dx", (x.rows, x.cols), (dx.rows, dx.cols))?;
    if dx.dtype != x.dtype {
        return Err(crate::Error::invalid("dx", format!("must have the dtype of x ({}), got {}", x.dtype, dx.dtype)));
    }
    x.check_pointer("x")?;
    dz.check_pointer("dz")?;
    dx.check_pointer("dx")?;
    if x.rows == 0 {
        return Ok(());
    }
    let name = format!("l2_normalize_backward_{}_{}", x.dtype, dz.dtype);
    let params = NormalizeBackwardParams { x: x.ptr, dz: dz.ptr, dx: dx.ptr, n: dim_i32("x.rows", x.rows)?, d: dim_i32("x.cols", x.cols)? };
    gpu.launch(stream, MODULE, &name, config(x.rows), &params)
}
