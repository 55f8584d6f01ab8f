//! The cuBLAS calls of the unfused baselines (`ops/contrastive/unfused.rs`, `ops/topk/gpu.rs`): handle,
//! stream, pointer mode and `cublasGemmEx` with f16 / bf16 / f32 inputs, f32 output and 32F compute,
//! by a plain host GEMM (f64 sums, one rounding to f32). Column-major, as cuBLAS.

use std::ffi::{c_int, c_void};

use crate::driver::{check_range, CUstream};
use crate::log;

pub type CublasStatus = c_int;
pub const CUBLAS_STATUS_SUCCESS: CublasStatus = 0;
pub const CUBLAS_STATUS_NOT_INITIALIZED: CublasStatus = 1;
pub const CUBLAS_STATUS_INVALID_VALUE: CublasStatus = 7;
pub const CUBLAS_STATUS_NOT_SUPPORTED: CublasStatus = 15;

struct Handle {
    stream: CUstream,
    pointer_mode: c_int,
}

pub type CublasHandle = *mut c_void;

#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(handle: *mut CublasHandle) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *handle = Box::into_raw(Box::new(Handle { stream: std::ptr::null_mut(), pointer_mode: 0 })) as CublasHandle;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasDestroy_v2(handle: CublasHandle) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    drop(Box::from_raw(handle as *mut Handle));
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetStream_v2(handle: CublasHandle, stream: CUstream) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    (*(handle as *mut Handle)).stream = stream;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetStream_v2(handle: CublasHandle, stream: *mut CUstream) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if stream.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *stream = (*(handle as *mut Handle)).stream;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetPointerMode_v2(handle: CublasHandle, mode: c_int) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if !(0..=1).contains(&mode) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    (*(handle as *mut Handle)).pointer_mode = mode;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetPointerMode_v2(handle: CublasHandle, mode: *mut c_int) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if mode.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *mode = (*(handle as *mut Handle)).pointer_mode;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetMathMode(handle: CublasHandle, _mode: c_int) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    CUBLAS_STATUS_SUCCESS
}

const CUDA_R_32F: c_int = 0;
const CUDA_R_16F: c_int = 2;
const CUDA_R_16BF: c_int = 14;
const CUBLAS_COMPUTE_32F: c_int = 68;

/// Element i of a buffer of type `ty` as f32.
unsafe fn load(ptr: *const c_void, ty: c_int, i: usize) -> f32 {
    match ty {
        CUDA_R_32F => *(ptr as *const f32).add(i),
        CUDA_R_16F => half_to_f32(*(ptr as *const u16).add(i)),
        _ => f32::from_bits((*(ptr as *const u16).add(i) as u32) << 16),
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h >> 15 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f32;
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 => {
            if h & 0x3ff == 0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn elem_size(ty: c_int) -> Option<usize> {
    match ty {
        CUDA_R_32F => Some(4),
        CUDA_R_16F | CUDA_R_16BF => Some(2),
        _ => None,
    }
}

/// C = alpha op(A) op(B) + beta C, column-major; op(A) is m x k, op(B) is k x n.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasGemmEx(
    handle: CublasHandle,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    compute_type: c_int,
    _algo: c_int,
) -> CublasStatus {
    if handle.is_null() {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    let fail = |why: String| {
        log(&format!("cublasGemmEx(m {m}, n {n}, k {k}, lda {lda}, ldb {ldb}, ldc {ldc}): {why}"));
        CUBLAS_STATUS_INVALID_VALUE
    };
    if c_type != CUDA_R_32F
        || compute_type != CUBLAS_COMPUTE_32F
        || elem_size(a_type).is_none()
        || elem_size(b_type).is_none()
        || a_type != b_type
    {
        log(&format!(
            "cublasGemmEx: types A {a_type}, B {b_type}, C {c_type}, compute {compute_type} are not emulated \
             (only f16 / bf16 / f32 inputs of one type, f32 output, CUBLAS_COMPUTE_32F)"
        ));
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if !(0..=2).contains(&transa) || !(0..=2).contains(&transb) {
        return fail("an operation other than N, T, C".into());
    }
    if m < 0 || n < 0 || k < 0 {
        return fail("a negative dimension".into());
    }
    let (ta, tb) = (transa != 0, transb != 0);
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
    if (lda as i64) < a_rows.max(1) as i64 || (ldb as i64) < b_rows.max(1) as i64 || (ldc as i64) < m.max(1) as i64 {
        return fail("a leading dimension smaller than its matrix's rows".into());
    }
    if m == 0 || n == 0 {
        return CUBLAS_STATUS_SUCCESS;
    }
    if alpha.is_null() || beta.is_null() || c.is_null() || (k > 0 && (a.is_null() || b.is_null())) {
        return fail("a null pointer".into());
    }
    let (lda, ldb, ldc) = (lda as usize, ldb as usize, ldc as usize);
    let es = elem_size(a_type).unwrap();
    let span = |ld: usize, rows: usize, cols: usize| if cols == 0 { 0 } else { ld * (cols - 1) + rows };
    if k > 0
        && (check_range(a as u64, span(lda, a_rows, a_cols) * es, "cublasGemmEx", "A").is_err()
            || check_range(b as u64, span(ldb, b_rows, b_cols) * es, "cublasGemmEx", "B").is_err())
    {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if check_range(c as u64, span(ldc, m, n) * 4, "cublasGemmEx", "C").is_err() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    let (alpha, beta) = (*(alpha as *const f32), *(beta as *const f32));

    // op(A) as m rows of k, op(B)^T as n rows of k: every output is a dot product of two rows.
    let mut ar = vec![0f32; m * k];
    for i in 0..m {
        for l in 0..k {
            ar[i * k + l] = load(a, a_type, if ta { l + i * lda } else { i + l * lda });
        }
    }
    let mut br = vec![0f32; n * k];
    for j in 0..n {
        for l in 0..k {
            br[j * k + l] = load(b, b_type, if tb { j + l * ldb } else { l + j * ldb });
        }
    }
    let c_addr = c as usize;
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(n).max(1);
    let columns_per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (ar, br) = (&ar, &br);
            scope.spawn(move || {
                let c = c_addr as *mut f32;
                for j in t * columns_per..((t + 1) * columns_per).min(n) {
                    let bj = &br[j * k..(j + 1) * k];
                    for i in 0..m {
                        let ai = &ar[i * k..(i + 1) * k];
                        let dot: f64 = ai.iter().zip(bj).map(|(&x, &y)| x as f64 * y as f64).sum();
                        let out = c.add(i + j * ldc);
                        // beta = 0 does not read C (it may hold NaN), as in cuBLAS.
                        let prior = if beta == 0.0 { 0.0 } else { beta as f64 * *out as f64 };
                        *out = (alpha as f64 * dot + prior) as f32;
                    }
                }
            });
        }
    });
    CUBLAS_STATUS_SUCCESS
}
