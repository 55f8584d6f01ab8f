//! The CUDA driver API subset that cudarc calls for contrastive-kernels, over the host's memory.
//!
//! One device ("CPU emulator", compute capability 9.0, 132 SMs, 227 KiB opt-in shared memory per
//! block, 64 K registers, warp size 32). Device memory is host memory: a `CUdeviceptr` is a host
//! address, so kernels, copies and the cuBLAS stand-in use it directly. Streams and events are in
//! order and synchronous: every call has finished when it returns. Misuse a real driver rejects
//! (a copy past the end of an allocation, freeing what was not allocated, a launch over the device's
//! limits) is rejected too, with a line on stderr saying what was wrong.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::native::{self, Kernel};
use crate::{log, CUresult};

pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUfunction = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
pub const CUDA_ERROR_LAUNCH_FAILED: CUresult = 719;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;

/// The name the device reports (what `Gpu::describe` prints).
pub const DEVICE_NAME: &str = "CPU emulator (contrastive-kernels ckemu)";
const DRIVER_VERSION: c_int = 13000;
const SM_COUNT: c_int = 132;
const MAX_SHARED_PER_BLOCK: c_int = 48 * 1024;
const MAX_SHARED_PER_BLOCK_OPTIN: c_int = 227 * 1024;
const MAX_SHARED_PER_SM: c_int = 228 * 1024;

// ---------------------------------------------------------------------------------------------
// Device, context

#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    if version.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = DRIVER_VERSION;
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    if count.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *count = 1;
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    if device.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ordinal != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *device = 0;
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    if name.is_null() || len <= 0 {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if dev != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    let bytes = DEVICE_NAME.as_bytes();
    let n = bytes.len().min(len as usize - 1);
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
    *name.add(n) = 0;
    CUDA_SUCCESS
}

/// CU_DEVICE_ATTRIBUTE_* values of an sm_90 device (cuda.h numbering).
fn attribute(attrib: c_int) -> Option<c_int> {
    Some(match attrib {
        1 => 1024,                        // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                    // MAX_BLOCK_DIM_X, _Y
        4 => 64,                          // MAX_BLOCK_DIM_Z
        5 => i32::MAX,                    // MAX_GRID_DIM_X
        6 | 7 => 65535,                   // MAX_GRID_DIM_Y, _Z
        8 => MAX_SHARED_PER_BLOCK,        // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 65536,                       // TOTAL_CONSTANT_MEMORY
        10 => 32,                         // WARP_SIZE
        11 => i32::MAX,                   // MAX_PITCH
        12 => 65536,                      // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,                  // CLOCK_RATE (kHz)
        14 => 512,                        // TEXTURE_ALIGNMENT
        15 => 1,                          // GPU_OVERLAP
        16 => SM_COUNT,                   // MULTIPROCESSOR_COUNT
        17 => 0,                          // KERNEL_EXEC_TIMEOUT
        18 => 0,                          // INTEGRATED
        19 => 1,                          // CAN_MAP_HOST_MEMORY
        20 => 0,                          // COMPUTE_MODE (default)
        31 => 1,                          // CONCURRENT_KERNELS
        32 => 0,                          // ECC_ENABLED
        33 | 34 | 50 => 0,                // PCI bus / device / domain id
        35 => 0,                          // TCC_DRIVER
        36 => 2_619_000,                  // MEMORY_CLOCK_RATE (kHz)
        37 => 5120,                       // GLOBAL_MEMORY_BUS_WIDTH
        38 => 50 * 1024 * 1024,           // L2_CACHE_SIZE
        39 => 2048,                       // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 2,                          // ASYNC_ENGINE_COUNT
        41 => 1,                          // UNIFIED_ADDRESSING
        75 => 9,                          // COMPUTE_CAPABILITY_MAJOR
        76 => 0,                          // COMPUTE_CAPABILITY_MINOR
        81 => MAX_SHARED_PER_SM,          // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,                      // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 1,                          // MANAGED_MEMORY
        84 => 0,                          // MULTI_GPU_BOARD
        95 => 1,                          // COOPERATIVE_LAUNCH
        97 => MAX_SHARED_PER_BLOCK_OPTIN, // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        106 => 32,                        // MAX_BLOCKS_PER_MULTIPROCESSOR
        111 => 1024,                      // RESERVED_SHARED_MEMORY_PER_BLOCK
        115 => 0,                         // MEMORY_POOLS_SUPPORTED: cudarc then uses cuMemAlloc / cuMemFree
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice) -> CUresult {
    if value.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if dev != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    match attribute(attrib) {
        Some(v) => {
            *value = v;
            CUDA_SUCCESS
        }
        None => {
            log(&format!("cuDeviceGetAttribute: attribute {attrib} is not emulated"));
            CUDA_ERROR_INVALID_VALUE
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    if bytes.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if dev != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *bytes = host_memory().0;
    CUDA_SUCCESS
}

/// The one context: a fixed non-null address.
static CONTEXT: u8 = 0;
fn the_context() -> CUcontext {
    &CONTEXT as *const u8 as CUcontext
}

thread_local! {
    static CURRENT: std::cell::Cell<CUcontext> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    if ctx.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if dev != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *ctx = the_context();
    CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    if dev != 0 {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    if !ctx.is_null() && ctx != the_context() {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    CURRENT.with(|c| c.set(ctx));
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult {
    if ctx.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *ctx = CURRENT.with(|c| c.get());
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    cuCtxSetCurrent(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(ctx: *mut CUcontext) -> CUresult {
    if !ctx.is_null() {
        *ctx = CURRENT.with(|c| c.get());
    }
    CURRENT.with(|c| c.set(std::ptr::null_mut()));
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    if dev.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *dev = 0;
    CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxDestroy_v2(_ctx: CUcontext) -> CUresult {
    CUDA_SUCCESS
}

fn error_text(error: CUresult) -> Option<(&'static CStr, &'static CStr)> {
    Some(match error {
        0 => (c"CUDA_SUCCESS", c"no error"),
        1 => (c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
        2 => (c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
        3 => (c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
        100 => (c"CUDA_ERROR_NO_DEVICE", c"no CUDA-capable device is detected"),
        101 => (c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
        200 => (c"CUDA_ERROR_INVALID_IMAGE", c"device kernel image is invalid"),
        201 => (c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
        400 => (c"CUDA_ERROR_INVALID_HANDLE", c"invalid resource handle"),
        500 => (c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
        600 => (c"CUDA_ERROR_NOT_READY", c"device not ready"),
        700 => (c"CUDA_ERROR_ILLEGAL_ADDRESS", c"an illegal memory access was encountered"),
        701 => (c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", c"too many resources requested for launch"),
        719 => (c"CUDA_ERROR_LAUNCH_FAILED", c"unspecified launch failure (the CPU emulator printed the cause on stderr)"),
        801 => (c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported (not implemented by the CPU emulator)"),
        999 => (c"CUDA_ERROR_UNKNOWN", c"unknown error"),
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, s: *mut *const c_char) -> CUresult {
    if s.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    match error_text(error) {
        Some((_, text)) => {
            *s = text.as_ptr();
            CUDA_SUCCESS
        }
        None => {
            *s = std::ptr::null();
            CUDA_ERROR_INVALID_VALUE
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, s: *mut *const c_char) -> CUresult {
    if s.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    match error_text(error) {
        Some((name, _)) => {
            *s = name.as_ptr();
            CUDA_SUCCESS
        }
        None => {
            *s = std::ptr::null();
            CUDA_ERROR_INVALID_VALUE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: live allocations by base address, so copies and frees can be checked.

struct Allocation {
    size: usize,
    pinned: bool,
}

fn allocations() -> &'static Mutex<BTreeMap<u64, Allocation>> {
    static A: OnceLock<Mutex<BTreeMap<u64, Allocation>>> = OnceLock::new();
    A.get_or_init(|| Mutex::new(BTreeMap::new()))
}

const ALIGN: usize = 256; // cudaMalloc's alignment
/// Fresh device memory is filled with 0xff (NaN in every float type, -1 in every integer type), so
/// a read of memory no one wrote shows up in the results instead of reading as zeros.
const UNINITIALIZED: u8 = 0xff;

/// (total, free) bytes of the host, from /proc/meminfo.
fn host_memory() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<usize>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:").unwrap_or(16 << 30);
    (total, field("MemAvailable:").unwrap_or(total / 2))
}

fn allocate(bytes: usize, pinned: bool, what: &str) -> Result<*mut u8, CUresult> {
    if bytes == 0 {
        log(&format!("{what}: 0 bytes requested (a real driver returns CUDA_ERROR_INVALID_VALUE too)"));
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let layout = std::alloc::Layout::from_size_align(bytes, ALIGN).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
    // The system allocator (malloc): under AddressSanitizer every allocation gets redzones, so a
    // kernel reading past the end of a buffer is reported.
    let p = unsafe { std::alloc::System.alloc(layout) };
    if p.is_null() {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    if !pinned {
        unsafe { std::ptr::write_bytes(p, UNINITIALIZED, bytes) };
    }
    allocations().lock().unwrap_or_else(|e| e.into_inner()).insert(p as u64, Allocation { size: bytes, pinned });
    Ok(p)
}

fn release(ptr: u64, pinned: bool, what: &str) -> CUresult {
    let mut map = allocations().lock().unwrap_or_else(|e| e.into_inner());
    match map.get(&ptr) {
        Some(a) if a.pinned == pinned => {
            let size = a.size;
            map.remove(&ptr);
            drop(map);
            unsafe { std::alloc::System.dealloc(ptr as *mut u8, std::alloc::Layout::from_size_align(size, ALIGN).unwrap()) };
            CUDA_SUCCESS
        }
        _ => {
            if ptr == 0 {
                return CUDA_SUCCESS;
            }
            log(&format!("{what}: {ptr:#x} is not the start of a live {} allocation", if pinned { "pinned host" } else { "device" }));
            CUDA_ERROR_INVALID_VALUE
        }
    }
}

use std::alloc::GlobalAlloc;

/// Checks that [ptr, ptr + bytes) lies inside one live allocation (device or pinned host memory).
pub(crate) fn check_range(ptr: u64, bytes: usize, what: &str, side: &str) -> Result<(), CUresult> {
    if bytes == 0 {
        return Ok(());
    }
    let map = allocations().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((&base, a)) = map.range(..=ptr).next_back() {
        if ptr + bytes as u64 <= base + a.size as u64 {
            return Ok(());
        }
        if ptr < base + a.size as u64 {
            log(&format!(
                "{what}: the {side} range [{ptr:#x}, +{bytes}) runs {} bytes past the end of its allocation ({base:#x}, {} bytes)",
                ptr + bytes as u64 - (base + a.size as u64),
                a.size
            ));
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    log(&format!("{what}: the {side} address {ptr:#x} ({bytes} bytes) is not in any live device allocation"));
    Err(CUDA_ERROR_INVALID_VALUE)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    if dptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    match allocate(bytes, false, "cuMemAlloc") {
        Ok(p) => {
            *dptr = p as u64;
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, _stream: CUstream) -> CUresult {
    cuMemAlloc_v2(dptr, bytes)
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    release(dptr, false, "cuMemFree")
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, _stream: CUstream) -> CUresult {
    release(dptr, false, "cuMemFreeAsync")
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    if free.is_null() || total.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let (t, f) = host_memory();
    *total = t;
    *free = f;
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, _flags: c_uint) -> CUresult {
    if pp.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    match allocate(bytes, true, "cuMemHostAlloc") {
        Ok(p) => {
            *pp = p as *mut c_void;
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) -> CUresult {
    cuMemHostAlloc(pp, bytes, 0)
}

#[no_mangle]
pub extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    release(p as u64, true, "cuMemFreeHost")
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(dptr: *mut CUdeviceptr, p: *mut c_void, _flags: c_uint) -> CUresult {
    if dptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *dptr = p as u64; // mapped pinned memory: the same address
    CUDA_SUCCESS
}

unsafe fn memset(dst: CUdeviceptr, value: u8, count: usize, what: &str) -> CUresult {
    if let Err(e) = check_range(dst, count, what, "destination") {
        return e;
    }
    std::ptr::write_bytes(dst as *mut u8, value, count);
    CUDA_SUCCESS
}

unsafe fn memset_wide<T: Copy>(dst: CUdeviceptr, value: T, count: usize, what: &str) -> CUresult {
    let bytes = count * std::mem::size_of::<T>();
    if let Err(e) = check_range(dst, bytes, what, "destination") {
        return e;
    }
    if dst as usize % std::mem::align_of::<T>() != 0 {
        log(&format!("{what}: destination {dst:#x} is misaligned"));
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::slice::from_raw_parts_mut(dst as *mut T, count).fill(value);
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, count: usize) -> CUresult {
    memset(dst, value, count, "cuMemsetD8")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, value: u8, count: usize, _s: CUstream) -> CUresult {
    memset(dst, value, count, "cuMemsetD8Async")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(dst: CUdeviceptr, value: u16, count: usize) -> CUresult {
    memset_wide(dst, value, count, "cuMemsetD16")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(dst: CUdeviceptr, value: u16, count: usize, _s: CUstream) -> CUresult {
    memset_wide(dst, value, count, "cuMemsetD16Async")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: u32, count: usize) -> CUresult {
    memset_wide(dst, value, count, "cuMemsetD32")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(dst: CUdeviceptr, value: u32, count: usize, _s: CUstream) -> CUresult {
    memset_wide(dst, value, count, "cuMemsetD32Async")
}

/// Host pointers are not checked (they are the caller's own memory); device sides must lie inside
/// one live allocation.
unsafe fn copy(dst: u64, src: u64, bytes: usize, dst_device: bool, src_device: bool, what: &str) -> CUresult {
    if bytes == 0 {
        return CUDA_SUCCESS;
    }
    if dst == 0 || src == 0 {
        log(&format!("{what}: null pointer"));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if dst_device {
        if let Err(e) = check_range(dst, bytes, what, "destination") {
            return e;
        }
    }
    if src_device {
        if let Err(e) = check_range(src, bytes, what, "source") {
            return e;
        }
    }
    std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize) -> CUresult {
    copy(dst, src as u64, bytes, true, false, "cuMemcpyHtoD")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize, _s: CUstream) -> CUresult {
    copy(dst, src as u64, bytes, true, false, "cuMemcpyHtoDAsync")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize) -> CUresult {
    copy(dst as u64, src, bytes, false, true, "cuMemcpyDtoH")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize, _s: CUstream) -> CUresult {
    copy(dst as u64, src, bytes, false, true, "cuMemcpyDtoHAsync")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresult {
    copy(dst, src, bytes, true, true, "cuMemcpyDtoD")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, _s: CUstream) -> CUresult {
    copy(dst, src, bytes, true, true, "cuMemcpyDtoDAsync")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresult {
    copy(dst, src, bytes, false, false, "cuMemcpy")
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, _s: CUstream) -> CUresult {
    copy(dst, src, bytes, false, false, "cuMemcpyAsync")
}

// ---------------------------------------------------------------------------------------------
// Streams and events: in order and synchronous.

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut CUstream, _flags: c_uint) -> CUresult {
    if stream.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *stream = Box::into_raw(Box::new(0u64)) as CUstream;
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(stream: *mut CUstream, flags: c_uint, _priority: c_int) -> CUresult {
    cuStreamCreate(stream, flags)
}
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    if !stream.is_null() {
        drop(Box::from_raw(stream as *mut u64));
    }
    CUDA_SUCCESS
}
#[no_mangle]
pub extern "C" fn cuStreamSynchronize(_stream: CUstream) -> CUresult {
    CUDA_SUCCESS
}
#[no_mangle]
pub extern "C" fn cuStreamQuery(_stream: CUstream) -> CUresult {
    CUDA_SUCCESS
}
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(_stream: CUstream, _event: CUevent, _flags: c_uint) -> CUresult {
    CUDA_SUCCESS
}

const CU_EVENT_DISABLE_TIMING: c_uint = 2;

struct Event {
    flags: c_uint,
    recorded: Mutex<Option<Instant>>,
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut CUevent, flags: c_uint) -> CUresult {
    if event.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *event = Box::into_raw(Box::new(Event { flags, recorded: Mutex::new(None) })) as CUevent;
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(event as *mut Event));
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, _stream: CUstream) -> CUresult {
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    *(*(event as *const Event)).recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(event: CUevent, stream: CUstream, _flags: c_uint) -> CUresult {
    cuEventRecord(event, stream)
}
#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    CUDA_SUCCESS
}
/// Wall-clock milliseconds of the emulation between the two records.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    if ms.is_null() || start.is_null() || end.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let (s, e) = (&*(start as *const Event), &*(end as *const Event));
    if (s.flags | e.flags) & CU_EVENT_DISABLE_TIMING != 0 {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let (s, e) = (*s.recorded.lock().unwrap_or_else(|x| x.into_inner()), *e.recorded.lock().unwrap_or_else(|x| x.into_inner()));
    match (s, e) {
        (Some(s), Some(e)) => {
            *ms = if e >= s { (e - s).as_secs_f64() as f32 * 1e3 } else { -((s - e).as_secs_f64() as f32 * 1e3) };
            CUDA_SUCCESS
        }
        _ => CUDA_ERROR_INVALID_HANDLE,
    }
}
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    cuEventElapsedTime(ms, start, end)
}

// ---------------------------------------------------------------------------------------------
// Modules and kernels. The image (nvcc's fatbin) is not read: every kernel compiled into the
// emulator resolves by its C name from any module.

struct Module;

/// One handle per kernel, created at its first lookup and kept for the process.
struct Function {
    kernel: Kernel,
    max_dynamic_shared: AtomicU32,
}

fn functions() -> &'static Mutex<Vec<&'static Function>> {
    static F: OnceLock<Mutex<Vec<&'static Function>>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(Vec::new()))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    if module.is_null() || image.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *module = Box::into_raw(Box::new(Module)) as CUmodule;
    CUDA_SUCCESS
}
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut CUmodule,
    image: *const c_void,
    _n: c_uint,
    _options: *mut c_void,
    _values: *mut *mut c_void,
) -> CUresult {
    cuModuleLoadData(module, image)
}
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadFatBinary(module: *mut CUmodule, image: *const c_void) -> CUresult {
    cuModuleLoadData(module, image)
}
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: CUmodule) -> CUresult {
    if module.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(module as *mut Module));
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(f: *mut CUfunction, module: CUmodule, name: *const c_char) -> CUresult {
    if f.is_null() || name.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if module.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let name = CStr::from_ptr(name);
    let mut table = functions().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(func) = table.iter().find(|func| func.kernel.name() == name) {
        *f = *func as *const Function as CUfunction;
        return CUDA_SUCCESS;
    }
    match native::find(name) {
        Some(kernel) => {
            let func: &'static Function =
                Box::leak(Box::new(Function { kernel, max_dynamic_shared: AtomicU32::new(MAX_SHARED_PER_BLOCK as u32) }));
            table.push(func);
            *f = func as *const Function as CUfunction;
            CUDA_SUCCESS
        }
        None => {
            log(&format!("cuModuleGetFunction: kernel `{}` is not compiled into the emulator", name.to_string_lossy()));
            CUDA_ERROR_NOT_FOUND
        }
    }
}

const CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: c_int = 0;
const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
const CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: c_int = 9;

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(f: CUfunction, attrib: c_int, value: c_int) -> CUresult {
    if f.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let func = &*(f as *const Function);
    match attrib {
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            if !(0..=MAX_SHARED_PER_BLOCK_OPTIN).contains(&value) {
                log(&format!(
                    "cuFuncSetAttribute(`{}`, MAX_DYNAMIC_SHARED_SIZE_BYTES, {value}): the device allows at most {MAX_SHARED_PER_BLOCK_OPTIN}",
                    func.kernel.name().to_string_lossy()
                ));
                return CUDA_ERROR_INVALID_VALUE;
            }
            func.max_dynamic_shared.store(value as u32, Ordering::Relaxed);
            CUDA_SUCCESS
        }
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => CUDA_SUCCESS,
        _ => {
            log(&format!("cuFuncSetAttribute: attribute {attrib} is not emulated"));
            CUDA_ERROR_NOT_SUPPORTED
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(value: *mut c_int, attrib: c_int, f: CUfunction) -> CUresult {
    if value.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if f.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let func = &*(f as *const Function);
    *value = match attrib {
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => func.kernel.max_threads(),
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => func.max_dynamic_shared.load(Ordering::Relaxed) as c_int,
        5 | 6 => 90, // PTX_VERSION, BINARY_VERSION
        _ => {
            log(&format!(
                "cuFuncGetAttribute: attribute {attrib} is not emulated (registers, local memory and static shared sizes exist \
                 only in the real binary: read ptxas' report)"
            ));
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    };
    CUDA_SUCCESS
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_bytes: c_uint,
    _stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    if f.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let func = &*(f as *const Function);
    let name = func.kernel.name().to_string_lossy();
    if !extra.is_null() {
        log(&format!("cuLaunchKernel(`{name}`): the `extra` parameter form is not emulated"));
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    let threads = block_x as u64 * block_y as u64 * block_z as u64;
    let invalid = |why: String| {
        log(&format!(
            "cuLaunchKernel(`{name}`, grid ({grid_x},{grid_y},{grid_z}), block ({block_x},{block_y},{block_z}), {shared_bytes} B dynamic shared): {why}"
        ));
        CUDA_ERROR_INVALID_VALUE
    };
    if grid_x == 0 || grid_y == 0 || grid_z == 0 || threads == 0 {
        return invalid("a zero grid or block dimension".into());
    }
    if grid_x > i32::MAX as c_uint || grid_y > 65535 || grid_z > 65535 {
        return invalid("the grid exceeds (2^31 - 1, 65535, 65535)".into());
    }
    if block_x > 1024 || block_y > 1024 || block_z > 64 || threads > 1024 {
        return invalid("the block exceeds (1024, 1024, 64) or 1024 threads".into());
    }
    if threads > func.kernel.max_threads() as u64 {
        log(&format!(
            "cuLaunchKernel(`{name}`): {threads} threads per block, more than its __launch_bounds__ ({})",
            func.kernel.max_threads()
        ));
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    let max_dyn = func.max_dynamic_shared.load(Ordering::Relaxed);
    if shared_bytes > max_dyn {
        return invalid(format!(
            "{shared_bytes} B of dynamic shared memory, more than the function's limit of {max_dyn} B \
             (raise it with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES), at most {MAX_SHARED_PER_BLOCK_OPTIN})"
        ));
    }
    native::launch(&func.kernel, [grid_x, grid_y, grid_z], [block_x, block_y, block_z], shared_bytes, max_dyn, params)
}
