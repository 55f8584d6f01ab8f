//! `similarity`: S = scale * normalize(A) normalize(B)^T for A (m x d) and B (n x d), with the
//! normalization fused (no normalized copy of A or B is written) and an optional diagonal fill
//! for self-similarity. Kernels: `kernels/similarity.cu`; oracle: [`crate::cpu::similarity`].
//!
//! * f16 / bf16 inputs: tensor cores (mma.sync m16n8k16), f32 accumulation.
//! * f32 inputs: exact f32 FFMA (no TF32), so results keep f32 accuracy.
//! * Output: f32, f16 or bf16. Any m, n, d >= 1; d % 8 != 0 (or a 16-byte-misaligned operand)
//!   is handled by a slower element-wise loader, not rejected.
//! * NaN in a row of A (B) makes that row (column) of S NaN; a zero row gives zeros.

use cudarc::driver::{CudaStream, DevicePtrMut, LaunchConfig};

use super::{check_features, check_float, check_same_shape};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::similarity::{SimilarityParams, FMA_TILE, MMA_TILE, THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};

const MODULE: &str = "similarity";

/// Parameters of [`similarity`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimilarityOptions {
    /// Multiplies every similarity: 1 / temperature for logits. Must be finite.
    pub scale: f32,
    /// `Some(v)`: S[i][i] = v for every i < min(m, n) (e.g. f32::NEG_INFINITY to drop self-pairs).
    pub mask_diagonal: Option<f32>,
}

impl Default for SimilarityOptions {
    fn default() -> Self {
        SimilarityOptions { scale: 1.0, mask_diagonal: None }
    }
}

impl SimilarityOptions {
    /// Plain cosine similarities.
    pub fn cosine() -> Self {
        Self::default()
    }

    /// Logits at temperature `tau` (scale = 1 / tau); `tau` must be finite and > 0.
    pub fn with_temperature(tau: f32) -> Result<Self> {
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(Error::invalid("temperature", format!("must be finite and > 0, got {tau}")));
        }
        Ok(SimilarityOptions { scale: 1.0 / tau, mask_diagonal: None })
    }

    pub fn mask_diagonal(mut self, fill: f32) -> Self {
        self.mask_diagonal = Some(fill);
        self
    }
}

/// Validation shared by every backend.
pub fn check(a: (usize, usize), b: (usize, usize), opts: &SimilarityOptions) -> Result<()> {
    check_features("a", a.0, a.1)?;
    check_features("b", b.0, b.1)?;
    if a.1 != b.1 {
        return Err(Error::shape("b", format!("{} columns (the d of a)", a.1), format!("{} x {}", b.0, b.1)));
    }
    if !opts.scale.is_finite() {
        return Err(Error::invalid("scale", format!("must be finite, got {}", opts.scale)));
    }
    let tile = MMA_TILE.min(FMA_TILE);
    if a.0.div_ceil(tile) > 65_535 {
        return Err(Error::shape("a", format!("at most {} rows", 65_535 * tile), format!("{} rows", a.0)));
    }
    Ok(())
}

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
    super::normalize::l2_normalize_raw(gpu, stream, a, None, Some(norms_a))?;
    if !self_similarity {
        super::normalize::l2_normalize_raw(gpu, stream, b, None, Some(norms_b))?;
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
