//! The unfused GPU path: what PyTorch does (F.normalize, a GEMM writing the whole logit matrix,
//! masked log-softmax, autograd through the materialized matrix). It is the honest baseline of
//! `benches/losses.rs` and a second GPU oracle for the fused kernels; it computes the same
//! quantities as [`super::gpu::forward`] / [`super::gpu::backward`] (same masks, same reduction
//! kernels, same saved LSE and |P(i)|), over the same [`DeviceLossInputs`].
//!
//! Forward: `l2_normalize` (unit rows in T) -> cuBLAS GEMM S = U_rows [U_cols; C]^T / tau
//! (n x (n_cols + n_centers), f32, prototypes as a second GEMM into the same rows) ->
//! `contrastive_unfused_softmax` -> `contrastive_reduce`. Backward: `contrastive_backward_prepare`
//! -> `contrastive_unfused_grad_*` (dS = G in T, scaled by a power of two like the fused path) ->
//! cuBLAS GEMMs dU_rows = G U_cols / tau, dU_cols = G^T U_rows / tau (added to dU_rows in the self
//! geometry), dC = G_protos^T U_rows / tau -> `l2_normalize_backward` -> the OECL penalty.
//!
//! Memory is O(n^2): S (4 bytes per entry) lives from the forward to the end of the backward, G
//! (sizeof T per entry) during the backward. [`extra_bytes`] gives the exact figure before
//! anything is allocated; both directions refuse with an `Err` naming the shape when the device
//! has less free memory than that. Features of the fused path's dtypes (the shared input check
//! decides; the kernels here and the GEMMs also handle f32, as plain FP32 without TF32).
//! cuBLAS is opened at run time (one handle per context, kept for the process).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use cudarc::cublas::{result::gemm_ex, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig};

use super::gpu::{
    check_device_inputs, opt_ptr, ptr, rows_config, upstream_on_device, CHECK_NAMES, ROWS_PER_ROW_BLOCK, ROW_KERNEL_THREADS,
    SINGLE_BLOCK_THREADS,
};
use super::gpu::{DeviceGradients, DeviceLossInputs, Upstream};
use super::{empty_positive_error, ContrastiveLoss, EmptyPositives, Geometry, Reduction};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::contrastive::{BackwardPrepareParams, CheckInputsParams, NormPenaltyBackwardParams, ReduceParams};
use crate::gpu::params::contrastive_unfused::{UnfusedGradParams, UnfusedSoftmaxParams, THREADS as ROW_THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};

const MODULE: &str = "contrastive_unfused";

// Kernels of kernels/contrastive.cu this path shares with the fused one (contrastive_check_inputs,
// contrastive_reduce, contrastive_backward_prepare, contrastive_norm_penalty_backward_*), launched
// with gpu.rs's constants and helpers so that their parameter lists change in one place.
const CONTRASTIVE_MODULE: &str = "contrastive";

fn raw<T: FloatElement>(m: &DeviceMatrix<T>, stream: &CudaStream) -> RawMatrix {
    m.raw(stream).0
}

/// Left free beyond [`extra_bytes`]: cuBLAS's workspace and the driver's own allocations.
const HEADROOM_BYTES: usize = 64 << 20;

/// Device memory the unfused path allocates beyond its inputs and the returned gradients, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnfusedBytes {
    /// Allocated by the forward; what it saves (S, the unit rows, the statistics) stays allocated
    /// until the backward returns.
    pub forward: usize,
    /// Allocated by the backward on top of that (G, the f32 dU, coefficients).
    pub backward: usize,
}

impl UnfusedBytes {
    /// Peak extra memory of a forward followed by its backward.
    pub fn peak(&self) -> usize {
        self.forward + self.backward
    }
}

/// The exact allocations of [`forward`] and [`backward`] for n feature rows, `keys` key rows
/// (pairwise; `None` in the self geometry), `centers` prototypes, d features of `dtype`, and an
/// upstream given as a value (`Upstream::Value`: 4 bytes more in the backward).
pub fn extra_bytes(n: usize, keys: Option<usize>, centers: usize, d: usize, dtype: DType) -> UnfusedBytes {
    let (t, f) = (dtype.size_bytes(), 4usize);
    let buf = |elems: usize, size: usize| elems.max(1).saturating_mul(size);
    let n_cols = keys.unwrap_or(n);
    let m = n_cols + centers;
    let mut forward = buf(n * d, t) + buf(n, f); // unit rows + norms
    if let Some(k) = keys {
        forward += buf(k * d, t) + buf(k, f);
    }
    if centers > 0 {
        forward += buf(centers * d, t) + buf(centers, f);
    }
    forward += buf(n.saturating_mul(m), f); // S
    forward += 3 * buf(n, f) + f + f + CHECK_NAMES.len() * f; // per_anchor, lse, positives, loss, first_empty, flags
    let mut backward = f + 2 * buf(n, f) + 2 * f + 3 * f; // upstream, coef_a, coef_b, scalars, gemm_scalars
    backward += buf(n.saturating_mul(m), t); // G
    backward += buf(n * d, f); // dU rows
    if let Some(k) = keys {
        backward += buf(k * d, f);
    }
    if centers > 0 {
        backward += buf(centers * d, f);
    }
    UnfusedBytes { forward, backward }
}

/// The forward's result on the device (the twin of [`super::gpu::DeviceForward`]).
pub struct UnfusedForward<T> {
    /// The reduced loss, downloaded (the input checks are read back anyway).
    pub loss: f32,
    pub loss_device: CudaSlice<f32>,
    /// L_i per feature row (0 for non-anchors and anchors without positives).
    pub per_anchor: CudaSlice<f32>,
    pub saved: UnfusedSaved<T>,
    /// Device bytes this forward allocated beyond its inputs (equals `extra_bytes(..).forward`).
    pub bytes_allocated: usize,
}

/// What the unfused backward needs: the logit matrix, the unit rows, the LSE and |P(i)|.
pub struct UnfusedSaved<T> {
    /// S = U_rows [U_cols; C]^T / tau, n x (n_cols + n_centers), row-major f32.
    pub logits: CudaSlice<f32>,
    pub lse: CudaSlice<f32>,
    pub positives: CudaSlice<i32>,
    u_rows: CudaSlice<T>,
    u_keys: Option<CudaSlice<T>>,
    u_centers: Option<CudaSlice<T>>,
    /// Everything above plus the forward's scratch, in bytes (what stays allocated until the
    /// backward returns).
    bytes: usize,
    shape: (usize, usize, usize, usize),
    features_ptr: u64,
}

fn blas_error(op: &str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error + '_ {
    move |e| Error::Blas { op: op.to_owned(), reason: e.to_string() }
}

/// Runs `f` with this context's cuBLAS handle (created on first use, bound to the GPU's stream).
/// The lock also serializes the handle's pointer-mode changes.
fn with_blas<R>(gpu: &Gpu, f: impl FnOnce(&CudaBlas) -> Result<R>) -> Result<R> {
    // cudarc's dynamic loading panics on first use when the library is absent: ask first.
    if !unsafe { blas_sys::is_culib_present() } {
        return Err(Error::Blas {
            op: "loading libcublas".into(),
            reason: "libcublas.so could not be loaded (LD_LIBRARY_PATH?); the unfused path needs cuBLAS".into(),
        });
    }
    static HANDLES: OnceLock<Mutex<HashMap<usize, CudaBlas>>> = OnceLock::new();
    let mut handles = HANDLES.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = gpu.context().cu_ctx() as usize;
    if let std::collections::hash_map::Entry::Vacant(slot) = handles.entry(key) {
        slot.insert(CudaBlas::new(gpu.stream().clone()).map_err(blas_error("cublasCreate"))?);
    }
    f(&handles[&key])
}

fn blas_type(dtype: DType) -> blas_sys::cudaDataType {
    match dtype {
        DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        _ => blas_sys::cudaDataType::CUDA_R_32F,
    }
}

/// One column-major cuBLAS GEMM C (m x n, ldc) = alpha op(A) op(B) + beta C, A and B of `in_type`,
/// C f32, f32 accumulation. Row-major buffers are read as their column-major transposes.
struct Gemm {
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    a_trans: bool,
    lda: usize,
    b: u64,
    ldb: usize,
    c: u64,
    ldc: usize,
}

/// # Safety
/// The buffers hold the shapes described, live until the stream has run the GEMM; `alpha` and
/// `beta` are host pointers in host pointer mode, device pointers in device pointer mode.
unsafe fn gemm(blas: &CudaBlas, in_type: DType, g: Gemm, alpha: *const f32, beta: *const f32) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.k == 0 {
        return Ok(());
    }
    let op = |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
    let (m, n, k) = (dim_i32("gemm m", g.m)?, dim_i32("gemm n", g.n)?, dim_i32("gemm k", g.k)?);
    let (lda, ldb, ldc) = (dim_i32("gemm lda", g.lda)?, dim_i32("gemm ldb", g.ldb)?, dim_i32("gemm ldc", g.ldc)?);
    gemm_ex(
        *blas.handle(),
        op(g.a_trans),
        op(g.trans_b),
        m,
        n,
        k,
        alpha as *const c_void,
        g.a as *const c_void,
        blas_type(in_type),
        lda,
        g.b as *const c_void,
        blas_type(in_type),
        ldb,
        beta as *const c_void,
        g.c as *mut c_void,
        blas_sys::cudaDataType::CUDA_R_32F,
        ldc,
        // 32F compute: f16 / bf16 on tensor cores with f32 accumulation; f32 stays FP32 (the
        // handle's default math mode does not allow TF32).
        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    )
    .map_err(blas_error("cublasGemmEx"))
}

/// An `Err` naming the shape when the device has less free memory than `need` (plus headroom).
fn check_fits(gpu: &Gpu, need: usize, n: usize, m: usize, what: &str) -> Result<()> {
    gpu.context().bind_to_thread().during("binding the CUDA context")?;
    let (free, total) = cudarc::driver::result::mem_get_info().during("cuMemGetInfo")?;
    if need.saturating_add(HEADROOM_BYTES) > free {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        return Err(Error::invalid(
            "features",
            format!(
                "the unfused {what} materializes the {n} x {m} logit matrix and needs {:.0} MiB of device memory (+{:.0} MiB headroom); {:.0} MiB of {:.0} MiB are free. Use the fused path (ops::contrastive::gpu::forward / backward), whose memory is O(n d)",
                mib(need),
                mib(HEADROOM_BYTES),
                mib(free),
                mib(total)
            ),
        ));
    }
    Ok(())
}

/// A device buffer of `len` (at least 1) elements, its size added to `tally`.
fn alloc<E: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    len: usize,
    tally: &mut usize,
) -> Result<CudaSlice<E>> {
    *tally += len.max(1) * std::mem::size_of::<E>();
    gpu.stream().alloc_zeros::<E>(len.max(1)).during("device allocation")
}

/// Unit rows (in T) and f32 norms of `m`.
fn normalize<T: FloatElement>(gpu: &Gpu, m: RawMatrix, tally: &mut usize) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
    let stream = gpu.stream();
    let u = alloc::<T>(gpu, m.rows * m.cols, tally)?;
    let norms = alloc::<f32>(gpu, m.rows, tally)?;
    let u_raw = RawMatrix::new(ptr(&u, stream), m.rows, m.cols, T::DTYPE);
    // SAFETY: `m` is a live matrix of the inputs; `u` and `norms` were sized for it just above.
    unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, m, Some(u_raw), Some(ptr(&norms, stream)))? };
    Ok((u, norms))
}

/// The baseline materializes the whole n x n matrix: a restriction of the anchors to the first
/// rows is the fused path's (it computes only their block).
fn check_every_row_anchors<T: FloatElement>(inputs: &DeviceLossInputs<'_, T>) -> Result<()> {
    match inputs.anchor_rows {
        Some(m) if m != inputs.features.rows() => {
            Err(Error::invalid("anchor_rows", "the unfused baseline takes every row as an anchor (None); anchor_rows is the fused path's"))
        }
        _ => Ok(()),
    }
}

/// The unfused forward on the GPU's default stream: same results as [`super::gpu::forward`].
pub fn forward<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>) -> Result<UnfusedForward<T>> {
    check_device_inputs(loss, inputs)?;
    check_every_row_anchors(inputs)?;
    let stream = gpu.stream();
    let x = raw(inputs.features, stream);
    let (n, d) = (x.rows, x.cols);
    let keys = inputs.keys.as_ref().map(|k| raw(k.features, stream));
    let protos = inputs.prototypes.as_ref().map(|p| raw(p.centers, stream));
    let n_cols = keys.map_or(n, |k| k.rows);
    let n_centers = protos.map_or(0, |p| p.rows);
    let m = n_cols + n_centers;
    let plan = extra_bytes(n, keys.map(|k| k.rows), n_centers, d, T::DTYPE);
    check_fits(gpu, plan.forward, n, m, "forward")?;
    let (n_i, nc_i, ncent_i, m_i) =
        (dim_i32("features.rows", n)?, dim_i32("keys.rows", n_cols)?, dim_i32("prototypes.rows", n_centers)?, dim_i32("logit columns", m)?);

    let mut tally = 0usize;
    let (u_rows, norms) = normalize::<T>(gpu, x, &mut tally)?;
    let (u_keys, key_norms) = keys.map(|k| normalize::<T>(gpu, k, &mut tally)).transpose()?.unzip();
    let (u_centers, center_norms) = protos.map(|c| normalize::<T>(gpu, c, &mut tally)).transpose()?.unzip();
    let logits = alloc::<f32>(gpu, n * m, &mut tally)?;
    let per_anchor = alloc::<f32>(gpu, n, &mut tally)?;
    let lse = alloc::<f32>(gpu, n, &mut tally)?;
    let positives = alloc::<i32>(gpu, n, &mut tally)?;
    let total = alloc::<f32>(gpu, 1, &mut tally)?;
    let first_empty = alloc::<i32>(gpu, 1, &mut tally)?;
    tally += CHECK_NAMES.len() * 4; // the flags buffer below
    let flags = stream.clone_htod(&[i32::MAX; CHECK_NAMES.len()]).during("host-to-device copy")?;

    let norms_p = ptr(&norms, stream);
    let (key_norms_p, center_norms_p) = (opt_ptr(key_norms.as_ref(), stream), opt_ptr(center_norms.as_ref(), stream));
    let instance_p = ptr(inputs.instance, stream);
    let label_p = opt_ptr(inputs.label.filter(|_| loss.use_labels), stream);
    let role_p = opt_ptr(inputs.role, stream);
    let weight_p = opt_ptr(inputs.weight, stream);
    let proto_of_p = opt_ptr(inputs.prototypes.as_ref().map(|p| p.proto_of), stream);
    let key_label_p = opt_ptr(inputs.keys.as_ref().and_then(|k| k.label).filter(|_| loss.use_labels), stream);
    let (cols_u, cols_inst, cols_label, cols_role) = match (&inputs.keys, &u_keys) {
        (Some(k), Some(u)) => (ptr(u, stream), ptr(k.instance, stream), key_label_p, 0u64),
        _ => (ptr(&u_rows, stream), instance_p, label_p, role_p),
    };
    let (u_rows_p, logits_p) = (ptr(&u_rows, stream), ptr(&logits, stream));
    let (per_anchor_p, lse_p, positives_p) = (ptr(&per_anchor, stream), ptr(&lse, stream), ptr(&positives, stream));
    // SAFETY: every pointer is a live allocation of this GPU sized for the shape passed with it
    // (checked above), and every argument list matches its kernel's signature.
    unsafe {
        let flags_p = ptr(&flags, stream);
        let checked = n.max(n_cols).max(n_centers);
        let cfg = LaunchConfig {
            grid_dim: (
                checked.div_ceil(crate::gpu::params::contrastive::CHECK_THREADS).clamp(1, crate::gpu::params::contrastive::CHECK_MAX_BLOCKS)
                    as u32,
                1,
                1,
            ),
            block_dim: (crate::gpu::params::contrastive::CHECK_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let has_penalty = (loss.norm_penalty > 0.0) as i32;
        let params = CheckInputsParams {
            norms: norms_p,
            label: label_p,
            role: role_p,
            weight: weight_p,
            proto_of: proto_of_p,
            key_norms: key_norms_p,
            key_label: key_label_p,
            center_norms: center_norms_p,
            flags: flags_p,
            n: n_i,
            n_keys: nc_i,
            n_centers: ncent_i,
            has_penalty,
        };
        gpu.launch(stream, CONTRASTIVE_MODULE, "contrastive_check_inputs", cfg, &params)?;

        // Row-major S (n x m) is column-major S^T (m x n, ld m): S^T = U_cols U_rows^T, where a
        // row-major unit-row buffer read column-major is U^T (d x rows, ld d).
        let (alpha, beta) = (1.0f32 / loss.temperature, 0.0f32);
        with_blas(gpu, |blas| {
            blas.set_pointer_mode(blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST).map_err(blas_error("cublasSetPointerMode"))?;
            let g = |m_: usize, a: u64, c: u64| Gemm {
                trans_b: false,
                m: m_,
                n,
                k: d,
                a,
                a_trans: true,
                lda: d,
                b: u_rows_p,
                ldb: d,
                c,
                ldc: m,
            };
            gemm(blas, T::DTYPE, g(n_cols, cols_u, logits_p), &alpha, &beta)?;
            if let Some(u) = &u_centers {
                gemm(blas, T::DTYPE, g(n_centers, ptr(u, stream), logits_p + 4 * n_cols as u64), &alpha, &beta)?;
            }
            Ok(())
        })?;

        let exclude_self = (loss.geometry == Geometry::SelfSimilarity) as i32;
        if n > 0 {
            let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (ROW_THREADS as u32, 1, 1), shared_mem_bytes: 0 };
            let params = UnfusedSoftmaxParams {
                s: logits_p,
                ld: m_i,
                instance: instance_p,
                label: label_p,
                role: role_p,
                proto_of: proto_of_p,
                col_instance: cols_inst,
                col_label: cols_label,
                col_role: cols_role,
                n_cols: nc_i,
                n_centers: ncent_i,
                exclude_self,
                scale: loss.scale,
                per_anchor: per_anchor_p,
                lse: lse_p,
                positives: positives_p,
            };
            gpu.launch(stream, MODULE, "contrastive_unfused_softmax", cfg, &params)?;
        }
        let mean = (loss.reduction == Reduction::Mean) as i32;
        let (total_p, first_empty_p) = (ptr(&total, stream), ptr(&first_empty, stream));
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SINGLE_BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        let params = ReduceParams {
            per_anchor: per_anchor_p,
            weight: weight_p,
            role: role_p,
            positives: positives_p,
            lse: lse_p,
            norms: norms_p,
            out: total_p,
            first_empty: first_empty_p,
            n: n_i,
            mean,
            penalty: loss.norm_penalty,
            anchor_rows: n_i,
        };
        gpu.launch(stream, CONTRASTIVE_MODULE, "contrastive_reduce", cfg, &params)?;
    }

    // The same failures as the fused forward, in the same order.
    let flags = stream.clone_dtoh(&flags).during("device-to-host copy")?;
    if let Some((k, row)) = flags.iter().enumerate().find(|(_, &row)| row != i32::MAX) {
        let (arg, what) = CHECK_NAMES[k];
        return Err(Error::invalid(arg, format!("row {row} {what}")));
    }
    let first_empty = stream.clone_dtoh(&first_empty).during("device-to-host copy")?[0];
    if first_empty >= 0 && loss.empty_positives == EmptyPositives::Error {
        return Err(empty_positive_error(first_empty as usize));
    }
    let loss_value = stream.clone_dtoh(&total).during("device-to-host copy")?[0];
    // The norms and flags are freed when this returns; `saved` accounts for the whole forward
    // tally (an upper bound by O(n) bytes).
    Ok(UnfusedForward {
        loss: loss_value,
        loss_device: total,
        per_anchor,
        saved: UnfusedSaved {
            logits,
            lse,
            positives,
            u_rows,
            u_keys,
            u_centers,
            bytes: tally,
            shape: (n, n_cols, n_centers, d),
            features_ptr: x.ptr,
        },
        bytes_allocated: tally,
    })
}

/// The unfused backward: same gradients as [`super::gpu::backward`], in the input dtype.
pub fn backward<T: FloatElement>(
    gpu: &Gpu,
    loss: &ContrastiveLoss,
    inputs: &DeviceLossInputs<'_, T>,
    saved: UnfusedSaved<T>,
    upstream: Upstream<'_>,
) -> Result<DeviceGradients<T>> {
    backward_measured(gpu, loss, inputs, saved, upstream).map(|(g, _)| g)
}

/// [`backward`], also returning the peak extra device bytes of the forward and backward together
/// (the forward's saved allocations plus the backward's own; equals `extra_bytes(..).peak()` for an
/// `Upstream::Value`).
pub fn backward_measured<T: FloatElement>(
    gpu: &Gpu,
    loss: &ContrastiveLoss,
    inputs: &DeviceLossInputs<'_, T>,
    saved: UnfusedSaved<T>,
    upstream: Upstream<'_>,
) -> Result<(DeviceGradients<T>, usize)> {
    check_device_inputs(loss, inputs)?;
    check_every_row_anchors(inputs)?;
    let stream = gpu.stream();
    let x = raw(inputs.features, stream);
    let (n, d) = (x.rows, x.cols);
    let keys = inputs.keys.as_ref().map(|k| raw(k.features, stream));
    let protos = inputs.prototypes.as_ref().map(|p| raw(p.centers, stream));
    let n_cols = keys.map_or(n, |k| k.rows);
    let n_centers = protos.map_or(0, |p| p.rows);
    let m = n_cols + n_centers;
    if saved.shape != (n, n_cols, n_centers, d) || saved.features_ptr != x.ptr {
        return Err(Error::invalid("saved", "comes from a forward over other inputs (backward takes the forward's own inputs)"));
    }
    let per_row = loss.reduction == Reduction::PerAnchor;
    let mut tally = saved.bytes;
    let mut upstream_buf = None;
    let upstream_slice = upstream_on_device(stream, loss, upstream, n, &mut upstream_buf)?;
    if matches!(upstream, Upstream::Value(_)) {
        tally += 4; // the uploaded dLoss
    }
    let plan = extra_bytes(n, keys.map(|k| k.rows), n_centers, d, T::DTYPE);
    check_fits(gpu, plan.backward, n, m, "backward")?;

    let (n_i, d_i, nc_i, ncent_i, m_i) = (
        dim_i32("features.rows", n)?,
        dim_i32("features.cols", d)?,
        dim_i32("keys.rows", n_cols)?,
        dim_i32("prototypes.rows", n_centers)?,
        dim_i32("logit columns", m)?,
    );
    let coef_a = alloc::<f32>(gpu, n, &mut tally)?;
    let coef_b = alloc::<f32>(gpu, n, &mut tally)?;
    let scalars = alloc::<f32>(gpu, 2, &mut tally)?;
    let gemm_scalars = alloc::<f32>(gpu, 3, &mut tally)?;
    let g = alloc::<T>(gpu, n * m, &mut tally)?;
    let du_rows = alloc::<f32>(gpu, n * d, &mut tally)?;
    let du_keys = keys.map(|k| alloc::<f32>(gpu, k.rows * d, &mut tally)).transpose()?;
    let du_protos = protos.map(|c| alloc::<f32>(gpu, c.rows * d, &mut tally)).transpose()?;

    let role_p = opt_ptr(inputs.role, stream);
    let label_p = opt_ptr(inputs.label.filter(|_| loss.use_labels), stream);
    let instance_p = ptr(inputs.instance, stream);
    let proto_of_p = opt_ptr(inputs.prototypes.as_ref().map(|p| p.proto_of), stream);
    let (cols_inst, cols_label, cols_role) = match &inputs.keys {
        Some(k) => (ptr(k.instance, stream), opt_ptr(k.label.filter(|_| loss.use_labels), stream), 0u64),
        None => (instance_p, label_p, role_p),
    };
    let (scalars_p, upstream_p, gemm_scalars_p) = (ptr(&scalars, stream), ptr(upstream_slice, stream), ptr(&gemm_scalars, stream));
    let (coef_a_p, coef_b_p, g_p) = (ptr(&coef_a, stream), ptr(&coef_b, stream), ptr(&g, stream));
    let (logits_p, lse_p) = (ptr(&saved.logits, stream), ptr(&saved.lse, stream));
    let inv_tau = 1.0f32 / loss.temperature;
    let exclude_self = (loss.geometry == Geometry::SelfSimilarity) as i32;
    // SAFETY: as in the forward; `saved` holds this input's S, unit rows and statistics (checked).
    unsafe {
        let mean = (loss.reduction == Reduction::Mean) as i32;
        let (per_row_i, positives_p) = (per_row as i32, ptr(&saved.positives, stream));
        let weight_p = opt_ptr(inputs.weight, stream);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SINGLE_BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        let params = BackwardPrepareParams {
            role: role_p,
            weight: weight_p,
            positives: positives_p,
            upstream: upstream_p,
            coef_a: coef_a_p,
            coef_b: coef_b_p,
            scalars: scalars_p,
            per_row: per_row_i,
            mean,
            n: n_i,
            scale: loss.scale,
            anchor_rows: n_i,
            reserved: 0,
        };
        gpu.launch(stream, CONTRASTIVE_MODULE, "contrastive_backward_prepare", cfg, &params)?;
        // Grid at least 1: block 0 also writes gemm_scalars.
        let cfg = LaunchConfig { grid_dim: (n.max(1) as u32, 1, 1), block_dim: (ROW_THREADS as u32, 1, 1), shared_mem_bytes: 0 };
        let rows = if n == 0 { 0 } else { m_i };
        let params = UnfusedGradParams {
            s: logits_p,
            lse: lse_p,
            coef_a: coef_a_p,
            coef_b: coef_b_p,
            instance: instance_p,
            label: label_p,
            proto_of: proto_of_p,
            col_instance: cols_inst,
            col_label: cols_label,
            col_role: cols_role,
            scalars: scalars_p,
            g: g_p,
            gemm_scalars: gemm_scalars_p,
            ld: rows,
            n_cols: if n == 0 { 0 } else { nc_i },
            n_centers: if n == 0 { 0 } else { ncent_i },
            exclude_self,
            inv_tau,
        };
        gpu.launch(stream, MODULE, &format!("contrastive_unfused_grad_{}", T::DTYPE), cfg, &params)?;

        // Column-major views as in the forward: G (row-major n x m) read column-major is G^T
        // (m x n, ld m); its first n_cols rows are the key columns, the rest the prototypes.
        // alpha = 1 / (sigma tau) and the betas are read from gemm_scalars on the device.
        let u_rows_p = ptr(&saved.u_rows, stream);
        let u_cols_p = saved.u_keys.as_ref().map_or(u_rows_p, |u| ptr(u, stream));
        let du_rows_p = ptr(&du_rows, stream);
        let (alpha, zero, one) = (gemm_scalars_p as *const f32, (gemm_scalars_p + 4) as *const f32, (gemm_scalars_p + 8) as *const f32);
        let g_protos_p = g_p + (n_cols * T::DTYPE.size_bytes()) as u64;
        with_blas(gpu, |blas| {
            blas.set_pointer_mode(blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE).map_err(blas_error("cublasSetPointerMode"))?;
            let run = || -> Result<()> {
                // dU_rows^T (d x n) = U_cols^T (d x n_cols) G_cols^T (n_cols x n).
                let rows_part = |k: usize, a: u64, b: u64| Gemm {
                    trans_b: false,
                    m: d,
                    n,
                    k,
                    a,
                    a_trans: false,
                    lda: d,
                    b,
                    ldb: m,
                    c: du_rows_p,
                    ldc: d,
                };
                // dU_cols^T (d x cols) = U_rows^T (d x n) G_cols (n x cols).
                let cols_part = |cols: usize, b: u64, c: u64| Gemm {
                    trans_b: true,
                    m: d,
                    n: cols,
                    k: n,
                    a: u_rows_p,
                    a_trans: false,
                    lda: d,
                    b,
                    ldb: m,
                    c,
                    ldc: d,
                };
                gemm(blas, T::DTYPE, rows_part(n_cols, u_cols_p, g_p), alpha, zero)?;
                match &du_keys {
                    // Self geometry: rows and columns are the same rows, both roles add up.
                    None => gemm(blas, T::DTYPE, cols_part(n_cols, g_p, du_rows_p), alpha, one)?,
                    Some(du) => gemm(blas, T::DTYPE, cols_part(n_cols, g_p, ptr(du, stream)), alpha, zero)?,
                }
                if let (Some(u), Some(du)) = (&saved.u_centers, &du_protos) {
                    gemm(blas, T::DTYPE, rows_part(n_centers, ptr(u, stream), g_protos_p), alpha, one)?;
                    gemm(blas, T::DTYPE, cols_part(n_centers, g_protos_p, ptr(du, stream)), alpha, zero)?;
                }
                Ok(())
            };
            let result = run();
            // The handle is shared: leave it in cuBLAS's default (host) mode.
            blas.set_pointer_mode(blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST).map_err(blas_error("cublasSetPointerMode"))?;
            result
        })?;
    }

    // Normalization backward, then OECL's penalty on its rows.
    let to_dx = |m: RawMatrix, du: &CudaSlice<f32>| -> Result<DeviceMatrix<T>> {
        let mut dx = DeviceMatrix::<T>::zeros(gpu, m.rows, m.cols)?;
        let dz = RawMatrix::new(ptr(du, stream), m.rows, m.cols, DType::F32);
        let dx_raw = RawMatrix::new(ptr(dx.slice_mut(), stream), m.rows, m.cols, T::DTYPE);
        // SAFETY: x, dz and dx are live m.rows x m.cols matrices of their dtypes.
        unsafe { crate::ops::normalize::gpu::l2_normalize_backward_raw(gpu, stream, m, dz, dx_raw)? };
        Ok(dx)
    };
    let mut features = to_dx(x, &du_rows)?;
    if loss.norm_penalty > 0.0 && inputs.role.is_some() && n > 0 {
        let dx_p = ptr(features.slice_mut(), stream);
        // SAFETY: as above; the kernel writes only NormPenaltyOnly rows of dx.
        unsafe {
            let params = NormPenaltyBackwardParams {
                x: x.ptr,
                role: role_p,
                upstream: upstream_p,
                scalars: scalars_p,
                dx: dx_p,
                n: n_i,
                d: d_i,
                per_row: per_row as i32,
                alpha: loss.norm_penalty,
            };
            let cfg = rows_config(n, ROWS_PER_ROW_BLOCK, ROW_KERNEL_THREADS);
            gpu.launch(stream, CONTRASTIVE_MODULE, &format!("contrastive_norm_penalty_backward_{}", T::DTYPE), cfg, &params)?;
        }
    }
    let keys_grad = match (keys, &du_keys) {
        (Some(k), Some(du)) => Some(to_dx(k, du)?),
        _ => None,
    };
    let protos_grad = match (protos, &du_protos) {
        (Some(c), Some(du)) => Some(to_dx(c, du)?),
        _ => None,
    };
    drop(saved);
    Ok((DeviceGradients { features, keys: keys_grad, prototypes: protos_grad }, tally))
}
