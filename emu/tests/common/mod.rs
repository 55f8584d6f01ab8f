//! Driver helpers shared by the emulator's tests: buffers, kernel lookup and one-block launches,
//! through the driver stand-in's own entry points.
#![allow(dead_code)]

use std::ffi::{c_void, CString};

use ckemu::driver::*;
use ckemu::CUresult;

pub fn check(what: &str, r: CUresult) {
    assert_eq!(r, CUDA_SUCCESS, "{what} returned {r}");
}

/// A device buffer holding a copy of `data`, freed on drop.
pub struct Buf {
    pub ptr: CUdeviceptr,
    bytes: usize,
}

impl Buf {
    pub fn new<T: Copy>(data: &[T]) -> Buf {
        let bytes = std::mem::size_of_val(data);
        let mut ptr = 0;
        unsafe {
            check("cuMemAlloc", cuMemAlloc_v2(&mut ptr, bytes));
            check("cuMemcpyHtoD", cuMemcpyHtoD_v2(ptr, data.as_ptr() as *const c_void, bytes));
        }
        Buf { ptr, bytes }
    }
    pub fn read<T: Copy + Default>(&self) -> Vec<T> {
        let mut v = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        unsafe { check("cuMemcpyDtoH", cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, self.ptr, self.bytes)) };
        v
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        check("cuMemFree", cuMemFree_v2(self.ptr));
    }
}

/// Kernel `name`, from a module loaded for the purpose (the emulator resolves kernels by name from
/// any non-null image).
pub fn function(name: &str) -> CUfunction {
    static IMAGE: u8 = 0;
    let cname = CString::new(name).unwrap();
    let (mut module, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
    unsafe {
        check("cuInit", cuInit(0));
        check("cuModuleLoadData", cuModuleLoadData(&mut module, &IMAGE as *const u8 as *const c_void));
        check(&format!("cuModuleGetFunction({name})"), cuModuleGetFunction(&mut f, module, cname.as_ptr()));
    }
    f
}

/// Launches `f` on one block of `threads` threads with `shared` bytes of dynamic shared memory;
/// `args` are pointers to the argument values.
pub fn launch_fn(f: CUfunction, threads: u32, shared: u32, args: &mut [*mut c_void]) -> CUresult {
    unsafe { cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, shared, std::ptr::null_mut(), args.as_mut_ptr(), std::ptr::null_mut()) }
}

/// Launches kernel `name` on one block of `threads` threads.
pub fn launch(name: &str, threads: u32, args: &mut [*mut c_void]) -> CUresult {
    launch_fn(function(name), threads, 0, args)
}

pub fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}
