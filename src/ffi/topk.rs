//! Exact top-k cosine search: the fused device call and its host twin (the oracle).

use std::ffi::c_void;

use super::args::{device_matrix, dtype, elements, host_matrix, host_slice_mut, size};
use super::losses::check_host_size;
use super::memory::{device, stream_of};
use super::status::guard;
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::gpu::RawMatrix;
use crate::ops::topk::{Exclusion, TopKOptions};

/// The arguments both calls share, converted and checked (nothing read yet).
struct TopKArgs {
    t: DType,
    nq: usize,
    nb: usize,
    d: usize,
    opts: TopKOptions,
}

fn topk_args(dtype_code: i32, nq: i64, nb: i64, d: i64, k: i64, normalized: i32, exclude_offset: i64) -> Result<TopKArgs> {
    let t = dtype("dtype", dtype_code)?;
    let (nq, nb, d, k) = (size("nq", nq)?, size("nb", nb)?, size("d", d)?, size("k", k)?);
    let exclude = match exclude_offset {
        -1 => Exclusion::None,
        o if o >= 0 => Exclusion::Diagonal { offset: o as usize },
        o => return Err(Error::invalid("exclude_offset", format!("-1 (none) or an offset >= 0, got {o}"))),
    };
    let opts = TopKOptions::new(k).normalized(normalized != 0).exclude(exclude);
    crate::ops::topk::check((nq, d), (nb, d), &opts)?;
    elements("queries", nq, d, t.size_bytes())?;
    elements("bank", nb, d, t.size_bytes())?;
    elements("values", nq, k, 4)?;
    Ok(TopKArgs { t, nq, nb, d, opts })
}

/// The k most similar bank rows of each query by cosine similarity, exact: `values` (nq x k f32,
/// descending) and `indices` (nq x k i32, ties to the smaller index), on device memory. Queries and
/// bank share `dtype` and d. `normalized` nonzero: the rows are unit already (no norm prologue).
/// `exclude_offset` >= 0: query i skips bank row i + exclude_offset (leave-one-out scoring of the
/// bank itself, offset 0); -1: no exclusion. For k > 1024 the call waits for `stream` once per
/// radix pass.
///
/// # Safety
/// As `ck_l2_normalize`.
#[no_mangle]
pub unsafe extern "C" fn ck_topk(
    device: i32,
    stream: *mut c_void,
    dtype: i32,
    queries: *const c_void,
    nq: i64,
    bank: *const c_void,
    nb: i64,
    d: i64,
    k: i64,
    normalized: i32,
    exclude_offset: i64,
    values: *mut f32,
    indices: *mut i32,
) -> i32 {
    guard(|| {
        let TopKArgs { t, nq, nb, d, opts } = topk_args(dtype, nq, nb, d, k, normalized, exclude_offset)?;
        let (queries, bank) = (device_matrix("queries", queries, nq, d, t)?, device_matrix("bank", bank, nb, d, t)?);
        RawMatrix::new(values as u64, nq, opts.k, DType::F32).check_pointer("values")?;
        RawMatrix::new(indices as u64, nq, opts.k, DType::I32).check_pointer("indices")?;
        let gpu = self::device(device)?;
        crate::ops::topk::gpu::topk_raw(&gpu, &stream_of(&gpu, stream), queries, bank, values as u64, indices as u64, &opts)
    })
}

/// As `ck_topk`, on host memory, computed by the oracle (f64 similarities, exact selection, ties to
/// the smaller index, NaN similarities last; values rounded to f32). Same checks and errors as the
/// device call. Needs no GPU or driver; O(nq nb d) time (working memory above 64 GiB is refused).
///
/// # Safety
/// `queries` (nq x d), `bank` (nb x d) of `dtype`, `values` (nq x k f32) and `indices` (nq x k i32)
/// are host memory valid for their shapes.
#[no_mangle]
pub unsafe extern "C" fn ck_topk_host(
    dtype: i32,
    queries: *const c_void,
    nq: i64,
    bank: *const c_void,
    nb: i64,
    d: i64,
    k: i64,
    normalized: i32,
    exclude_offset: i64,
    values: *mut f32,
    indices: *mut i32,
) -> i32 {
    guard(|| {
        let a = topk_args(dtype, nq, nb, d, k, normalized, exclude_offset)?;
        // Null / misaligned pointers first, as the device call (the matrices are read below).
        for (arg, p, rows) in [("queries", queries, a.nq), ("bank", bank, a.nb)] {
            RawMatrix::new(p as u64, rows, a.d, a.t).check_pointer(arg)?;
        }
        let out_len = a.nq * a.opts.k;
        let values = host_slice_mut("values", values, out_len)?;
        let indices = host_slice_mut("indices", indices, out_len)?;
        // The oracle's nq x nb similarity table dominates its memory.
        let bytes =
            a.nq.checked_mul(a.nb)
                .and_then(|s| s.checked_mul(8))
                .and_then(|s| s.checked_add(a.nq.checked_add(a.nb)?.checked_mul(a.d)?.checked_mul(16)?));
        check_host_size("nb", bytes)?;
        fn run<T: Float>(a: &TopKArgs, queries: *const c_void, bank: *const c_void, values: &mut [f32], indices: &mut [i32]) -> Result<()> {
            // SAFETY: the C contract; shapes, nulls and alignment checked by the caller and host_matrix.
            let (q, b) = unsafe { (host_matrix::<T>("queries", queries, a.nq, a.d)?, host_matrix::<T>("bank", bank, a.nb, a.d)?) };
            let top = crate::ops::topk::cpu::topk(&q, &b, &a.opts)?;
            for (o, v) in values.iter_mut().zip(&top.values) {
                *o = *v as f32;
            }
            indices.copy_from_slice(&top.indices);
            Ok(())
        }
        match a.t {
            DType::F32 => run::<f32>(&a, queries, bank, values, indices),
            DType::F16 => run::<half::f16>(&a, queries, bank, values, indices),
            _ => run::<half::bf16>(&a, queries, bank, values, indices),
        }
    })
}
