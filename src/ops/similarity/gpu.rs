//! The GPU launches of `similarity` (`kernels/similarity.cu`).

use cudarc::driver::{CudaStream, DevicePtrMut, LaunchConfig};

use super::{check, SimilarityOptions};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::similarity::{SimilarityParams, FMA_TILE, MMA_TILE, THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::ops::{check_float, check_same_shape};

const MODULE: &str = "similarity";

/// S (m x n, in `TOut`) on the GPU's default stream. Pass the same matrix twice for self-similarity.
pub fn similarity<T: FloatElement, TOut: FloatElement>(
    gpu: &Gpu,
    a: &DeviceMatrix<T>,
    b: &DeviceMatrix<T>,
    opts: &SimilarityOptions,
) -> Result<DeviceMatrix<TOut>> {
    check((a.rows(), a.cols()), (b.rows(), b.cols()), opts)?;
    let stream = gpu.stream();
    let mut s = DeviceMatrix::<TOut>::zeros(gpu, a.rows(), b.rows())?;
    let (a_raw, _a_guard) = a.raw(stream);
    let (b_raw, _b_guard) = b.raw(stream);
    let (s_ptr, _s_guard) = s.slice_mut().device_ptr_mut(stream);
    let s_raw = RawMatrix::new(s_ptr, a.rows(), b.rows(), TOut::DTYPE);
    // SAFETY: live allocations of the described shapes, guarded until the launches are queued.
    unsafe { similarity_raw(gpu, stream, a_raw, b_raw, s_raw, opts)? };
    drop((_a_guard, _b_guard, _s_guard));
    Ok(s)
}

/// S on caller memory, queued on `stream`. `a` and `b` share a float dtype; `s` is m x n of any
/// float dtype. Needs (m + n) * 4 bytes of scratch for the norms, allocated stream-ordered on
/// `stream` (m * 4 when `a` and `b` are the same matrix).
///
/// # Safety
/// Every pointer must be valid device memory of this GPU's context for the shape and dtype it
/// is described with, and stay valid until the stream has run the kernels.
pub unsafe fn similarity_raw(
    gpu: &Gpu,
    stream: &std::sync::Arc<CudaStream>,
    a: RawMatrix,
    b: RawMatrix,
    s: RawMatrix,
    opts: &SimilarityOptions,
) -> Result<()> {
    check_float("a", a.dtype)?;
    if b.dtype != a.dtype {
        return Err(Error::invalid("b", format!("must have the dtype of a ({}), got {}", a.dtype, b.dtype)));
    }
    check_float("s", s.dtype)?;
    check((a.rows, a.cols), (b.rows, b.cols), opts)?;
    check_same_shape("s", (a.rows, b.rows), (s.rows, s.cols))?;
    a.check_pointer("a")?;
    b.check_pointer("b")?;
    s.check_pointer("s")?;
    if a.rows == 0 || b.rows == 0 {
        return Ok(());
    }

    // Norm prologue: O(m + n) floats, the only extra memory.
    let self_similarity = a == b;
    let norm_count = if self_similarity { a.rows } else { a.rows + b.rows };
    // SAFETY: uninitialised is fine, the norm kernel writes every entry before it is read.
    let mut norms = unsafe { stream.alloc::<f32>(norm_count) }.during("similarity norm scratch")?;
    let (norms_a, _guard) = norms.device_ptr_mut(stream);
    let norms_b = if self_similarity { norms_a } else { norms_a + 4 * a.rows as u64 };
    crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, a, None, Some(norms_a))?;
    if !self_similarity {
        crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, b, None, Some(norms_b))?;
    }

    let tensor_cores = a.dtype != DType::F32;
    let aligned = a.cols % 8 == 0 && a.ptr % 16 == 0 && b.ptr % 16 == 0;
    let name = match (tensor_cores, aligned) {
        (true, true) => format!("similarity_{}_{}", a.dtype, s.dtype),
        (true, false) => format!("similarity_{}_{}_unaligned", a.dtype, s.dtype),
        (false, _) => format!("similarity_{}_{}", a.dtype, s.dtype),
    };
    let tile = if tensor_cores { MMA_TILE } else { FMA_TILE };
    let cfg = LaunchConfig {
        grid_dim: (b.rows.div_ceil(tile) as u32, a.rows.div_ceil(tile) as u32, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let params = SimilarityParams {
        a: a.ptr,
        b: b.ptr,
        norms_a,
        norms_b,
        s: s.ptr,
        m: dim_i32("a.rows", a.rows)?,
        n: dim_i32("b.rows", b.rows)?,
        d: dim_i32("a.cols", a.cols)?,
        scale: opts.scale,
        mask_diagonal: opts.mask_diagonal.is_some() as i32,
        diagonal_value: opts.mask_diagonal.unwrap_or(0.0),
    };
    gpu.launch(stream, MODULE, &name, cfg, &params)
}
