//! Argument conversion and checks shared by every entry point: dtype codes, sizes (i64 -> usize,
//! with the byte count of a matrix checked for overflow), device matrix descriptions, and host
//! arrays (null, alignment and size checked before a slice is formed; copies reserved fallibly, so
//! a huge size is an error, never an abort).

use std::ffi::c_void;

use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::gpu::RawMatrix;
use crate::matrix::Matrix;

pub const CK_F32: i32 = 0;
pub const CK_F16: i32 = 1;
pub const CK_BF16: i32 = 2;

pub(crate) fn dtype(arg: &'static str, code: i32) -> Result<DType> {
    match code {
        CK_F32 => Ok(DType::F32),
        CK_F16 => Ok(DType::F16),
        CK_BF16 => Ok(DType::BF16),
        _ => Err(Error::invalid(arg, format!("dtype codes are CK_F32 (0), CK_F16 (1), CK_BF16 (2); got {code}"))),
    }
}

pub(crate) fn size(arg: &'static str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid(arg, format!("must be >= 0, got {v}")))
}

/// rows x cols elements of `elem` bytes: the element count, if the byte count fits an `isize`
/// (what any allocation or slice can hold). Kernels further need rows and cols below 2^31
/// (`ops::check_features`), which the ops check themselves.
pub(crate) fn elements(arg: &'static str, rows: usize, cols: usize, elem: usize) -> Result<usize> {
    rows.checked_mul(cols).filter(|&len| len.checked_mul(elem).is_some_and(|bytes| bytes <= isize::MAX as usize)).ok_or_else(|| {
        Error::shape(arg, format!("at most {} bytes in all", isize::MAX), format!("{rows} x {cols} elements of {elem} bytes"))
    })
}

pub(crate) fn matrix(p: *const c_void, rows: usize, cols: usize, dtype: DType) -> RawMatrix {
    RawMatrix::new(p as u64, rows, cols, dtype)
}

/// A device matrix description, its size and pointer checked (null when it holds elements,
/// alignment): what every device entry point checks before it touches the driver.
pub(crate) fn device_matrix(arg: &'static str, p: *const c_void, rows: usize, cols: usize, dtype: DType) -> Result<RawMatrix> {
    crate::ops::check_features(arg, rows, cols)?;
    elements(arg, rows, cols, dtype.size_bytes())?;
    let m = matrix(p, rows, cols, dtype);
    m.check_pointer(arg)?;
    Ok(m)
}

/// A device output array of `len` elements of `elem` bytes: non-null when `required` and
/// non-empty, aligned when given.
pub(crate) fn device_array(arg: &'static str, p: *const c_void, len: usize, elem: usize, required: bool) -> Result<()> {
    if p.is_null() {
        return if required && len > 0 { Err(Error::invalid(arg, "null pointer")) } else { Ok(()) };
    }
    elements(arg, len, 1, elem)?;
    if (p as usize) % elem != 0 {
        return Err(Error::invalid(arg, format!("pointer {p:p} is not aligned to its {elem}-byte elements")));
    }
    Ok(())
}

/// `len` host elements at `p` as a slice: NULL is allowed only when `len` is 0; the pointer must be
/// aligned and the byte count must fit an `isize` (`slice::from_raw_parts`' own requirements).
///
/// # Safety
/// `p` is NULL or valid for reading `len` elements (the C contract).
pub(crate) unsafe fn host_slice<'a, E>(arg: &'static str, p: *const E, len: usize) -> Result<&'a [E]> {
    if p.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(Error::invalid(arg, "null pointer")) };
    }
    let elem = std::mem::size_of::<E>();
    elements(arg, len, 1, elem)?;
    if (p as usize) % std::mem::align_of::<E>() != 0 {
        return Err(Error::invalid(arg, format!("pointer {p:p} is not aligned to its {elem}-byte elements")));
    }
    // SAFETY: the C contract: `p` holds `len` elements; alignment and size checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// As `host_slice`, for writing.
///
/// # Safety
/// `p` is NULL or valid for writing `len` elements.
pub(crate) unsafe fn host_slice_mut<'a, E>(arg: &'static str, p: *mut E, len: usize) -> Result<&'a mut [E]> {
    let read = unsafe { host_slice(arg, p, len)? };
    // SAFETY: as above; the caller gave a writable pointer.
    Ok(unsafe { std::slice::from_raw_parts_mut(read.as_ptr() as *mut E, read.len()) })
}

/// A fallible copy of a host slice: an allocation the system refuses is an error, not an abort.
pub(crate) fn try_to_vec<E: Clone>(arg: &'static str, s: &[E]) -> Result<Vec<E>> {
    let mut v = Vec::new();
    v.try_reserve_exact(s.len())
        .map_err(|_| Error::invalid(arg, format!("cannot allocate a host copy of {} bytes", std::mem::size_of_val(s))))?;
    v.extend_from_slice(s);
    Ok(v)
}

/// A rows x cols host matrix of `T` read from `p` (copied).
///
/// # Safety
/// `p` is NULL (then rows x cols must be 0) or valid for reading rows x cols elements.
pub(crate) unsafe fn host_matrix<T: Float>(arg: &'static str, p: *const c_void, rows: usize, cols: usize) -> Result<Matrix<T>> {
    let len = elements(arg, rows, cols, std::mem::size_of::<T>())?;
    let data = try_to_vec(arg, unsafe { host_slice(arg, p as *const T, len)? })?;
    Matrix::new(rows, cols, data)
}

/// Fails (instead of aborting later) when the system will not lend `bytes` of working memory: a
/// reservation that is released at once (on Linux nothing is touched, so this costs nothing).
pub(crate) fn check_working_memory(what: &'static str, bytes: Option<usize>) -> Result<()> {
    let ok = bytes.filter(|&b| b <= isize::MAX as usize).is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok());
    if ok {
        Ok(())
    } else {
        let size = bytes.map_or("more than 2^64".into(), |b| format!("{b}"));
        Err(Error::invalid(what, format!("the host computation needs {size} bytes of working memory, which cannot be allocated")))
    }
}
