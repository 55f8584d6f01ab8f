//! k-means on device memory, results on the host.

use std::ffi::c_void;

use super::args::{device_array, device_matrix, dtype, size};
use super::memory::{device, stream_of};
use super::status::guard;
use crate::dtype::DType;
use crate::error::{CudaContext as _, Result};
use crate::gpu::{Gpu, RawMatrix};
use crate::ops::kmeans::{KMeansMetric, KMeansOptions};

/// k-means of the n x d rows of `x` (device memory, `dtype`): spherical (`spherical` nonzero, the
/// default of the Rust API) or Euclidean, k-means++ seeding from `seed`, at most `max_iterations`
/// Lloyd steps. Results go to host memory: `centroids` (clusters x d of `dtype`, may be NULL),
/// `assignment` (n i32, may be NULL), `objective` (sum of squared distances, may be NULL).
/// Waits for `stream` first, then runs on the library's own stream and waits for it (the result
/// is on the host).
///
/// # Safety
/// As `ck_l2_normalize`; the host pointers are valid for their sizes.
#[no_mangle]
pub unsafe extern "C" fn ck_kmeans(
    device: i32,
    stream: *mut c_void,
    dtype: i32,
    x: *const c_void,
    n: i64,
    d: i64,
    clusters: i64,
    max_iterations: i64,
    seed: u64,
    spherical: i32,
    centroids: *mut c_void,
    assignment: *mut i32,
    objective: *mut f64,
) -> i32 {
    guard(|| {
        let t = self::dtype("dtype", dtype)?;
        let (n, d) = (size("n", n)?, size("d", d)?);
        let opts = KMeansOptions::new(size("clusters", clusters)?)
            .max_iterations(size("max_iterations", max_iterations)?)
            .seed(seed)
            .metric(if spherical != 0 { KMeansMetric::Spherical } else { KMeansMetric::Euclidean });
        crate::ops::kmeans::check(n, d, &opts)?;
        let raw = device_matrix("x", x, n, d, t)?;
        // Host outputs: alignment and sizes now, before any device work.
        device_array("centroids", centroids, opts.clusters.saturating_mul(d), t.size_bytes(), false)?;
        device_array("assignment", assignment as *const c_void, n, 4, false)?;
        device_array("objective", objective as *const c_void, 1, 8, false)?;
        let gpu = self::device(device)?;
        stream_of(&gpu, stream).synchronize().during("stream synchronize")?;
        fn run<T: crate::FloatElement>(
            gpu: &Gpu,
            raw: RawMatrix,
            opts: &KMeansOptions,
            centroids: *mut c_void,
            assignment: *mut i32,
            objective: *mut f64,
        ) -> Result<()> {
            let mut copy = crate::gpu::DeviceMatrix::<T>::zeros(gpu, raw.rows, raw.cols)?;
            let bytes = raw.rows * raw.cols * std::mem::size_of::<T>();
            if bytes > 0 {
                let dst = cudarc::driver::DevicePtrMut::device_ptr_mut(copy.slice_mut(), gpu.stream()).0;
                gpu.synchronize()?;
                // SAFETY: both are live device buffers of `bytes` bytes.
                unsafe { cudarc::driver::result::memcpy_dtod_sync(dst, raw.ptr, bytes) }.during("cuMemcpyDtoD")?;
            }
            let result = crate::ops::kmeans::gpu::kmeans(gpu, &copy, opts)?;
            // SAFETY: the C contract: the host pointers are NULL or valid for their sizes.
            unsafe {
                if !centroids.is_null() {
                    std::ptr::copy_nonoverlapping(result.centroids.data().as_ptr(), centroids as *mut T, result.centroids.data().len());
                }
                if !assignment.is_null() {
                    std::ptr::copy_nonoverlapping(result.assignment.as_ptr(), assignment, result.assignment.len());
                }
                if !objective.is_null() {
                    objective.write(result.objective);
                }
            }
            Ok(())
        }
        match t {
            DType::F32 => run::<f32>(&gpu, raw, &opts, centroids, assignment, objective),
            DType::F16 => run::<half::f16>(&gpu, raw, &opts, centroids, assignment, objective),
            _ => run::<half::bf16>(&gpu, raw, &opts, centroids, assignment, objective),
        }
    })
}
