//! The library's device functions (kernels/common/*.cuh) on edge cases, through the emulator
//! (kernels: emu/kernels/units.cu). Expected values follow the functions' documented contracts.

use std::ffi::{c_int, c_void, CString};

use ckemu::driver::*;

fn alloc<T: Copy>(data: &[T]) -> CUdeviceptr {
    let mut p = 0;
    unsafe {
        assert_eq!(cuMemAlloc_v2(&mut p, std::mem::size_of_val(data)), CUDA_SUCCESS);
        assert_eq!(cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, std::mem::size_of_val(data)), CUDA_SUCCESS);
    }
    p
}

fn read<T: Copy + Default>(p: CUdeviceptr, n: usize) -> Vec<T> {
    let mut v = vec![T::default(); n];
    unsafe {
        assert_eq!(cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, p, n * std::mem::size_of::<T>()), CUDA_SUCCESS);
        assert_eq!(cuMemFree_v2(p), CUDA_SUCCESS);
    }
    v
}

fn launch(name: &str, args: &mut [*mut c_void]) {
    static IMAGE: u8 = 0;
    let cname = CString::new(name).unwrap();
    let (mut module, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        assert_eq!(cuModuleLoadData(&mut module, &IMAGE as *const u8 as *const c_void), CUDA_SUCCESS);
        assert_eq!(cuModuleGetFunction(&mut f, module, cname.as_ptr()), CUDA_SUCCESS);
        let r = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, std::ptr::null_mut(), args.as_mut_ptr(), std::ptr::null_mut());
        assert_eq!(r, CUDA_SUCCESS, "{name}");
        cuModuleUnload(module);
    }
}

fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}

fn find_bucket(hist: &[u32; 256], want: u32) -> (i32, u32, u32) {
    let (mut h, mut out, mut w) = (alloc(hist), alloc(&[0i32; 3]), want);
    launch("ckemu_unit_find_bucket", &mut [arg(&mut h), arg(&mut w), arg(&mut out)]);
    unsafe { cuMemFree_v2(h) };
    let v: Vec<i32> = read(out, 3);
    (v[0], v[1] as u32, v[2] as u32)
}

/// The bin holding rank `want` (1 = the largest key), scanning from digit 255 down; `want` clamped
/// to [1, total], and (0, 0, 0) for an empty histogram.
fn expected_bucket(hist: &[u32; 256], want: u32) -> (i32, u32, u32) {
    let total: u32 = hist.iter().sum();
    if total == 0 {
        return (0, 0, 0);
    }
    let want = want.clamp(1, total);
    let mut above = 0;
    for digit in (0..256).rev() {
        if above < want && want <= above + hist[digit] {
            return (digit as i32, above, hist[digit]);
        }
        above += hist[digit];
    }
    unreachable!()
}

/// Regression: find_bucket returned digit -1 when `want` exceeded the keys of the histogram (or
/// was 0), which the radix select then shifted into its prefix as 0xff... Now the rank is clamped.
#[test]
fn find_bucket_inside_and_past_the_keys() {
    let mut hist = [0u32; 256];
    for (digit, count) in [(250, 4), (130, 1), (129, 7), (3, 2), (0, 5)] {
        hist[digit] = count;
    }
    for want in [1, 4, 5, 6, 12, 13, 19, 20, 21, 1000, 0] {
        assert_eq!(find_bucket(&hist, want), expected_bucket(&hist, want), "want {want}");
    }
    assert_eq!(find_bucket(&hist, 1000).0, 0, "past the last key: the smallest key's bin");
    assert_eq!(find_bucket(&[0u32; 256], 3), (0, 0, 0), "no keys");
}

/// warp_select_kth with k beyond the keys selects all of them: theta is the smallest key.
#[test]
fn select_kth_with_k_past_n() {
    let keys: Vec<u64> = vec![(9 << 32) | 5, (3 << 32) | 1, (7 << 32) | 2, (3 << 32) | 4];
    for (k, want) in [(1, keys[0]), (2, keys[2]), (4, keys[1]), (5, keys[1]), (40, keys[1])] {
        let (mut kp, mut out) = (alloc(&keys), alloc(&[0u64]));
        let (mut n, mut kk) = (keys.len() as c_int, k as c_int);
        launch("ckemu_unit_select_kth", &mut [arg(&mut kp), arg(&mut n), arg(&mut kk), arg(&mut out)]);
        unsafe { cuMemFree_v2(kp) };
        assert_eq!(read::<u64>(out, 1)[0], want, "k {k}");
    }
}
