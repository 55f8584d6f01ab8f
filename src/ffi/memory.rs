//! Devices, streams and the device-memory helpers for callers without a CUDA runtime of their own.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaStream};

use super::status::guard;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;

/// One `Gpu` per device ordinal, opened on first use (module loading is not free).
pub(crate) fn device(ordinal: i32) -> Result<Gpu> {
    static DEVICES: OnceLock<Mutex<HashMap<i32, Gpu>>> = OnceLock::new();
    if ordinal < 0 {
        return Err(Error::invalid("device", format!("ordinals are >= 0, got {ordinal}")));
    }
    let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(gpu) = devices.get(&ordinal) {
        return Ok(gpu.clone());
    }
    let gpu = Gpu::new(ordinal as usize)?;
    devices.insert(ordinal, gpu.clone());
    Ok(gpu)
}

pub(crate) fn stream_of(gpu: &Gpu, stream: *mut c_void) -> Arc<CudaStream> {
    // SAFETY: the C contract: `stream` is NULL or a live stream of this device's primary context.
    unsafe { gpu.borrow_stream(stream as sys::CUstream) }
}

fn check_bytes(arg: &'static str, bytes: usize) -> Result<()> {
    if bytes > isize::MAX as usize {
        return Err(Error::invalid(arg, format!("at most {} bytes, got {bytes}", isize::MAX)));
    }
    Ok(())
}

/// `CK_OK` when `device` can run the kernels; otherwise why not (`CK_ERR_NO_DRIVER`,
/// `CK_ERR_NO_DEVICE`, `CK_ERR_NOT_COMPILED`).
#[no_mangle]
pub extern "C" fn ck_device_check(device: i32) -> i32 {
    guard(|| self::device(device).map(|_| ()))
}

/// Allocates `bytes` of device memory on `device` (synchronous; for C programs and tests that have
/// no CUDA runtime of their own). Free it with `ck_device_free`.
///
/// # Safety
/// `out` is a valid place to write a pointer.
#[no_mangle]
pub unsafe extern "C" fn ck_device_malloc(device: i32, bytes: usize, out: *mut *mut c_void) -> i32 {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out", "null pointer"));
        }
        check_bytes("bytes", bytes)?;
        let gpu = self::device(device)?;
        gpu.context().bind_to_thread().during("binding the CUDA context")?;
        let p = cudarc::driver::result::malloc_sync(bytes.max(1)).during("cuMemAlloc")?;
        out.write(p as *mut c_void);
        Ok(())
    })
}

/// Frees memory from `ck_device_malloc` (NULL is a no-op).
///
/// # Safety
/// `ptr` comes from `ck_device_malloc` on `device` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ck_device_free(device: i32, ptr: *mut c_void) -> i32 {
    guard(|| {
        if ptr.is_null() {
            return Ok(());
        }
        let gpu = self::device(device)?;
        gpu.context().bind_to_thread().during("binding the CUDA context")?;
        cudarc::driver::result::free_sync(ptr as sys::CUdeviceptr).during("cuMemFree")
    })
}

/// Copies `bytes` host -> device (`to_device` nonzero) or device -> host, synchronously.
///
/// # Safety
/// `dst` and `src` are valid for `bytes` on their sides.
#[no_mangle]
pub unsafe extern "C" fn ck_memcpy(device: i32, dst: *mut c_void, src: *const c_void, bytes: usize, to_device: i32) -> i32 {
    guard(|| {
        if bytes == 0 {
            return Ok(());
        }
        if dst.is_null() || src.is_null() {
            return Err(Error::invalid(if dst.is_null() { "dst" } else { "src" }, "null pointer"));
        }
        check_bytes("bytes", bytes)?;
        let gpu = self::device(device)?;
        gpu.context().bind_to_thread().during("binding the CUDA context")?;
        let r = if to_device != 0 {
            sys::cuMemcpyHtoD_v2(dst as sys::CUdeviceptr, src, bytes)
        } else {
            sys::cuMemcpyDtoH_v2(dst, src as sys::CUdeviceptr, bytes)
        };
        r.result().during("cuMemcpy")
    })
}

/// Waits for `stream` (NULL: the legacy default stream).
///
/// # Safety
/// `stream` is NULL or a live stream of `device`.
#[no_mangle]
pub unsafe extern "C" fn ck_stream_synchronize(device: i32, stream: *mut c_void) -> i32 {
    guard(|| {
        let gpu = self::device(device)?;
        stream_of(&gpu, stream).synchronize().during("stream synchronize")
    })
}
