//! The native half (src/runtime.cpp and the host-compiled kernels) seen from Rust.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use crate::CUresult;

#[repr(C)]
struct RawKernel {
    name: *const c_char,
    module: *const c_char,
    invoke: unsafe extern "C" fn(*mut *mut c_void),
    max_threads: c_int,
}

extern "C" {
    fn ckemu_kernel_count() -> usize;
    fn ckemu_kernel_at(i: usize) -> *const RawKernel;
    fn ckemu_kernel_find(name: *const c_char) -> *const RawKernel;
    fn ckemu_launch(
        kernel: *const RawKernel,
        grid: *const c_uint,
        block: *const c_uint,
        dynamic_shared_bytes: c_uint,
        max_dynamic_shared_bytes: c_uint,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn ckemu_build_info() -> *const c_char;
}

/// A kernel compiled into the emulator (its table entry lives for the process).
#[derive(Clone, Copy)]
pub struct Kernel(&'static RawKernel);

// SAFETY: the table entries are immutable statics of the native library.
unsafe impl Send for Kernel {}
unsafe impl Sync for Kernel {}

impl Kernel {
    pub fn name(&self) -> &'static CStr {
        unsafe { CStr::from_ptr(self.0.name) }
    }
    /// The `kernels/<module>.cu` it comes from.
    pub fn module(&self) -> &'static CStr {
        unsafe { CStr::from_ptr(self.0.module) }
    }
    /// `__launch_bounds__`' maximum block size, or 1024.
    pub fn max_threads(&self) -> c_int {
        self.0.max_threads
    }
}

pub fn find(name: &CStr) -> Option<Kernel> {
    let p = unsafe { ckemu_kernel_find(name.as_ptr()) };
    (!p.is_null()).then(|| Kernel(unsafe { &*p }))
}

/// Every kernel compiled into the emulator.
pub fn kernels() -> Vec<Kernel> {
    (0..unsafe { ckemu_kernel_count() }).map(|i| Kernel(unsafe { &*ckemu_kernel_at(i) })).collect()
}

/// "x86-64 fibers" (and whether the kernels carry AddressSanitizer).
pub fn build_info() -> &'static str {
    unsafe { CStr::from_ptr(ckemu_build_info()) }.to_str().unwrap_or("?")
}

/// Runs every block; the runtime prints a kernel fault's cause on stderr.
///
/// # Safety
/// `params` must hold pointers to arguments matching the kernel's parameters.
pub unsafe fn launch(
    kernel: &Kernel,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    max_shared: c_uint,
    params: *mut *mut c_void,
) -> CUresult {
    ckemu_launch(kernel.0, grid.as_ptr(), block.as_ptr(), shared, max_shared, params, std::ptr::null_mut(), 0)
}
