//! The driver stand-in's surface: the device it reports, the misuse it rejects like a real driver
//! (copies past an allocation, double frees, zero-byte allocations, launches over the device's or
//! the kernel's limits), and the entry points it does not implement.

use std::ffi::{c_int, c_void, CStr, CString};

use ckemu::driver::*;

mod common;
use common::{function, launch_fn as launch};

#[test]
fn the_device_is_an_sm90_like_cpu_emulator() {
    let attr = |a: c_int| {
        let mut v = 0;
        assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, a, 0) }, CUDA_SUCCESS, "attribute {a}");
        v
    };
    // cuda.h's CU_DEVICE_ATTRIBUTE_* numbers.
    assert_eq!((attr(75), attr(76)), (9, 0), "compute capability");
    assert_eq!(attr(16), 132, "SMs");
    assert_eq!(attr(97), 227 * 1024, "opt-in shared memory per block");
    assert_eq!(attr(8), 48 * 1024, "shared memory per block");
    assert_eq!(attr(12), 65536, "registers per block");
    assert_eq!(attr(10), 32, "warp size");
    assert_eq!(attr(115), 0, "no memory pools: cudarc uses cuMemAlloc / cuMemFree");
    let mut v = 0;
    assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, 100_000, 0) }, CUDA_ERROR_INVALID_VALUE);
    let mut name = [0 as std::ffi::c_char; 64];
    assert_eq!(unsafe { cuDeviceGetName(name.as_mut_ptr(), 64, 0) }, CUDA_SUCCESS);
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap();
    assert!(name.starts_with("CPU emulator"), "{name}");
    let (mut count, mut dev) = (0, 0);
    unsafe {
        assert_eq!(cuDeviceGetCount(&mut count), CUDA_SUCCESS);
        assert_eq!(cuDeviceGet(&mut dev, 1), CUDA_ERROR_INVALID_DEVICE);
    }
    assert_eq!(count, 1);
}

#[test]
fn memory_misuse_is_rejected() {
    unsafe {
        let mut p = 0;
        assert_eq!(cuMemAlloc_v2(&mut p, 0), CUDA_ERROR_INVALID_VALUE, "0 bytes, as a real driver");
        assert_eq!(cuMemAlloc_v2(&mut p, 16), CUDA_SUCCESS);
        assert_eq!(p % 256, 0, "cudaMalloc's alignment");
        let mut fresh = [0u8; 16];
        assert_eq!(cuMemcpyDtoH_v2(fresh.as_mut_ptr() as *mut c_void, p, 16), CUDA_SUCCESS);
        assert_eq!(fresh, [0xff; 16], "fresh device memory reads as NaN / -1, not zeros");
        let host = [1u8; 32];
        assert_eq!(cuMemcpyHtoD_v2(p, host.as_ptr() as *const c_void, 32), CUDA_ERROR_INVALID_VALUE, "past the end");
        assert_eq!(cuMemcpyHtoD_v2(p + 8, host.as_ptr() as *const c_void, 8), CUDA_SUCCESS, "inside, at an offset");
        assert_eq!(cuMemsetD8_v2(p + 4, 0, 13), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemcpyDtoD_v2(p, 0x1234, 4), CUDA_ERROR_INVALID_VALUE, "not an allocation");
        assert_eq!(cuMemFree_v2(p + 8), CUDA_ERROR_INVALID_VALUE, "not the start of an allocation");
        assert_eq!(cuMemFree_v2(p), CUDA_SUCCESS);
        assert_eq!(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE, "double free");
        let (mut free, mut total) = (0usize, 0usize);
        assert_eq!(cuMemGetInfo_v2(&mut free, &mut total), CUDA_SUCCESS);
        assert!(free > 0 && free <= total);
    }
}

#[test]
fn launches_over_the_limits_are_rejected() {
    // topk_merge: __launch_bounds__(kMergeWarps * 32 = 128); topk_sort_rows: dynamic shared memory.
    let merge = function("topk_merge");
    let mut max_threads = 0;
    assert_eq!(unsafe { cuFuncGetAttribute(&mut max_threads, 0, merge) }, CUDA_SUCCESS);
    assert_eq!(max_threads, 128, "from the kernel's __launch_bounds__");
    assert_eq!(launch(merge, 256, 0, &mut []), CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "over the launch bounds");
    assert_eq!(launch(merge, 2048, 0, &mut []), CUDA_ERROR_INVALID_VALUE, "over 1024 threads");
    let f = function("topk_sort_rows");
    assert_eq!(launch(f, 512, 64 * 1024, &mut []), CUDA_ERROR_INVALID_VALUE, "64 KiB dynamic without the attribute");
    assert_eq!(unsafe { cuFuncSetAttribute(f, 8, 300 * 1024) }, CUDA_ERROR_INVALID_VALUE, "over 227 KiB");
    assert_eq!(unsafe { cuFuncSetAttribute(f, 8, 64 * 1024) }, CUDA_SUCCESS);
    // Now allowed: sort one row of 4 keys in shared memory (k = kpad = 4).
    let keys: [u64; 4] = [3 << 32, 9 << 32, 1 << 32, 7 << 32];
    unsafe {
        let (mut dk, mut dv, mut di) = (0u64, 0u64, 0u64);
        assert_eq!(cuMemAlloc_v2(&mut dk, 32), CUDA_SUCCESS);
        assert_eq!(cuMemAlloc_v2(&mut dv, 16), CUDA_SUCCESS);
        assert_eq!(cuMemAlloc_v2(&mut di, 16), CUDA_SUCCESS);
        assert_eq!(cuMemcpyHtoD_v2(dk, keys.as_ptr() as *const c_void, 32), CUDA_SUCCESS);
        // The kernel's one argument, CkTopkSortParams of kernels/params/topk.h (this crate does not
        // see the generated Rust of the main crate; the layout is plain: 3 pointers, 3 ints).
        #[repr(C)]
        struct SortParams {
            keys: u64,
            values: u64,
            indices: u64,
            k: c_int,
            kpad: c_int,
            use_smem: c_int,
        }
        let mut params = SortParams { keys: dk, values: dv, indices: di, k: 4, kpad: 4, use_smem: 1 };
        let args = &mut [&mut params as *mut SortParams as *mut c_void];
        assert_eq!(launch(f, 512, 64 * 1024, args), CUDA_SUCCESS);
        let mut idx = [0i32; 4];
        assert_eq!(cuMemcpyDtoH_v2(idx.as_mut_ptr() as *mut c_void, di, 16), CUDA_SUCCESS);
        assert_eq!(idx, [-1; 4], "keys with a zero low word decode to index ~0 = -1, sorted descending");
        for p in [dk, dv, di] {
            assert_eq!(cuMemFree_v2(p), CUDA_SUCCESS);
        }
    }
    let mut missing = std::ptr::null_mut();
    let mut module = std::ptr::null_mut();
    let name = CString::new("no_such_kernel").unwrap();
    unsafe {
        assert_eq!(cuModuleLoadData(&mut module, &0u8 as *const u8 as *const c_void), CUDA_SUCCESS);
        assert_eq!(cuModuleGetFunction(&mut missing, module, name.as_ptr()), CUDA_ERROR_NOT_FOUND);
    }
}

#[test]
fn unimplemented_entry_points_return_not_supported() {
    // Stubs generated from src/api/*.txt: an error code (and one log line), never a missing symbol.
    assert_eq!(ckemu::cuMemPrefetchAsync(), CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(ckemu::cuGraphCreate(), CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(ckemu::cublasSgemm_v2(), ckemu::cublas::CUBLAS_STATUS_NOT_SUPPORTED);
}
