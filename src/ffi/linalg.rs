//! Row normalization and the similarity matrix on device memory.

use std::ffi::c_void;

use super::args::{device_array, device_matrix, dtype, size};
use super::memory::{device, stream_of};
use super::status::guard;
use crate::ops::similarity::SimilarityOptions;

/// Unit rows `z` (n x d, `z_dtype`; NULL: none) and f32 row norms `norms` (n; NULL: none) of `x`.
///
/// # Safety
/// Pointers are device memory of `device` for the shapes given, valid until `stream` has run the work.
#[no_mangle]
pub unsafe extern "C" fn ck_l2_normalize(
    device: i32,
    stream: *mut c_void,
    x_dtype: i32,
    x: *const c_void,
    n: i64,
    d: i64,
    z_dtype: i32,
    z: *mut c_void,
    norms: *mut f32,
) -> i32 {
    guard(|| {
        let (n, d) = (size("n", n)?, size("d", d)?);
        let x = device_matrix("x", x, n, d, dtype("x_dtype", x_dtype)?)?;
        let z = if z.is_null() { None } else { Some(device_matrix("z", z, n, d, dtype("z_dtype", z_dtype)?)?) };
        device_array("norms", norms as *const c_void, n, 4, false)?;
        let norms = (!norms.is_null()).then_some(norms as u64);
        let gpu = self::device(device)?;
        crate::ops::normalize::gpu::l2_normalize_raw(&gpu, &stream_of(&gpu, stream), x, z, norms)
    })
}

/// dx (n x d, dtype of x) from x and the upstream dz (n x d, `dz_dtype`).
///
/// # Safety
/// As `ck_l2_normalize`.
#[no_mangle]
pub unsafe extern "C" fn ck_l2_normalize_backward(
    device: i32,
    stream: *mut c_void,
    x_dtype: i32,
    x: *const c_void,
    dz_dtype: i32,
    dz: *const c_void,
    dx: *mut c_void,
    n: i64,
    d: i64,
) -> i32 {
    guard(|| {
        let (n, d) = (size("n", n)?, size("d", d)?);
        let x_dtype = dtype("x_dtype", x_dtype)?;
        let xm = device_matrix("x", x, n, d, x_dtype)?;
        let dzm = device_matrix("dz", dz, n, d, dtype("dz_dtype", dz_dtype)?)?;
        let dxm = device_matrix("dx", dx, n, d, x_dtype)?;
        let gpu = self::device(device)?;
        crate::ops::normalize::gpu::l2_normalize_backward_raw(&gpu, &stream_of(&gpu, stream), xm, dzm, dxm)
    })
}

/// S (m x n, `s_dtype`) = scale * normalize(A) normalize(B)^T, A m x d and B n x d of `in_dtype`;
/// `mask_diagonal` nonzero writes `diagonal_value` on S's diagonal.
///
/// # Safety
/// As `ck_l2_normalize`.
#[no_mangle]
pub unsafe extern "C" fn ck_similarity(
    device: i32,
    stream: *mut c_void,
    in_dtype: i32,
    a: *const c_void,
    m: i64,
    b: *const c_void,
    n: i64,
    d: i64,
    s_dtype: i32,
    s: *mut c_void,
    scale: f32,
    mask_diagonal: i32,
    diagonal_value: f32,
) -> i32 {
    guard(|| {
        let (m, n, d) = (size("m", m)?, size("n", n)?, size("d", d)?);
        let t = dtype("in_dtype", in_dtype)?;
        let mut opts = SimilarityOptions { scale, ..SimilarityOptions::cosine() };
        if mask_diagonal != 0 {
            opts = opts.mask_diagonal(diagonal_value);
        }
        let (a, b) = (device_matrix("a", a, m, d, t)?, device_matrix("b", b, n, d, t)?);
        crate::ops::similarity::check((m, d), (n, d), &opts)?;
        // S is m x n: its element count is checked like any matrix's (n is its column count here).
        let s_dtype = dtype("s_dtype", s_dtype)?;
        super::args::elements("s", m, n, s_dtype.size_bytes())?;
        let s = super::args::matrix(s, m, n, s_dtype);
        s.check_pointer("s")?;
        let gpu = self::device(device)?;
        crate::ops::similarity::gpu::similarity_raw(&gpu, &stream_of(&gpu, stream), a, b, s, &opts)
    })
}
