//! The GPU side of k-means: assignment by the top-1 kernel of `kernels/topk.cu`, update by
//! `kernels/kmeans.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Result};
use crate::gpu::params::kmeans::{KmeansMeanParams, MEAN_THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::matrix::Matrix;
use crate::rng::SplitMix64;

use super::{check, check_finite_norms, distance2, next_seed, segments, KMeans, KMeansMetric, KMeansOptions};

const MODULE: &str = "kmeans";

/// k-means of the rows of `x` on the GPU (default stream). Deterministic for a given seed.
pub fn kmeans<T: FloatElement>(gpu: &Gpu, x: &DeviceMatrix<T>, opts: &KMeansOptions) -> Result<KMeans<T>> {
    check(x.rows(), x.cols(), opts)?;
    let stream = gpu.stream();
    let (n, d, k) = (x.rows(), x.cols(), opts.clusters);
    let xr = x.raw(stream).0;
    let spherical = opts.metric == KMeansMetric::Spherical;

    let mut norms_dev = stream.alloc_zeros::<f32>(n).during("device allocation")?;
    let norms_p = norms_dev.device_ptr_mut(stream).0;
    // SAFETY: x is a live n x d matrix; norms_p holds n floats.
    unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, xr, None, Some(norms_p))? };
    let norms: Vec<f64> = stream.clone_dtoh(&norms_dev).during("device-to-host copy")?.iter().map(|&v| v as f64).collect();
    check_finite_norms(norms.iter().copied())?;

    let elem = T::DTYPE.size_bytes();
    let mut centroids = stream.alloc_zeros::<T>(k * d).during("centroid allocation")?;
    let cent_p = centroids.device_ptr_mut(stream).0;
    let mut values = stream.alloc_zeros::<f32>(n).during("device allocation")?;
    let mut indices = stream.alloc_zeros::<i32>(n).during("device allocation")?;
    let (values_p, indices_p) = (values.device_ptr_mut(stream).0, indices.device_ptr_mut(stream).0);
    let mut bias = stream.alloc_zeros::<f32>(k).during("device allocation")?;
    let bias_p = bias.device_ptr_mut(stream).0;
    let mut cent_norms = stream.alloc_zeros::<f32>(k).during("device allocation")?;
    let cent_norms_p = cent_norms.device_ptr_mut(stream).0;

    // Top-1 of every point against centroids [0, rows): similarity and index.
    let top1 = |rows: usize, first: usize| -> Result<(Vec<f64>, Vec<i32>)> {
        let bank = RawMatrix::new(cent_p + (first * d * elem) as u64, rows, d, T::DTYPE);
        let bias_arg = if spherical {
            0
        } else {
            // -|c|^2 / 2 from the centroids' f32 norms.
            // SAFETY: bank rows are live; cent_norms holds k floats.
            unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, bank, None, Some(cent_norms_p))? };
            let cn = stream.clone_dtoh(&cent_norms).during("device-to-host copy")?;
            let b: Vec<f32> = cn[..rows].iter().map(|&v| -0.5 * v * v).collect();
            // SAFETY: bias holds k >= rows floats.
            unsafe { cudarc::driver::result::memcpy_htod_async(bias_p, &b, stream.cu_stream()) }.during("host-to-device copy")?;
            stream.synchronize().during("stream synchronize")?; // `b` is a pageable temporary
            bias_p
        };
        // SAFETY: x, the centroid rows, values and indices are live and sized for n x 1.
        unsafe { crate::ops::topk::gpu::top1_biased_raw(gpu, stream, xr, bank, bias_arg, !spherical, values_p, indices_p)? };
        let v = stream.clone_dtoh(&values).during("device-to-host copy")?;
        let i = stream.clone_dtoh(&indices).during("device-to-host copy")?;
        Ok((v.iter().map(|&s| s as f64).collect(), i.into_iter().map(|c| c + first as i32).collect()))
    };
    let copy_row = |src: usize, dst: usize| -> Result<()> {
        // SAFETY: both rows are inside their live allocations.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                cent_p + (dst * d * elem) as u64,
                xr.ptr + (src * d * elem) as u64,
                d * elem,
                stream.cu_stream(),
            )
        }
        .during("device-to-device copy")
    };

    // k-means++.
    let mut rng = SplitMix64::new(opts.seed);
    let mut chosen = vec![rng.below(n)];
    copy_row(chosen[0], 0)?;
    let mut d2: Vec<f64> = top1(1, 0)?.0.iter().zip(&norms).map(|(&s, &nm)| distance2(opts.metric, nm, s)).collect();
    for j in 1..k {
        let next = next_seed(&mut rng, &d2, &chosen);
        chosen.push(next);
        copy_row(next, j)?;
        let (s, _) = top1(1, j)?;
        for i in 0..n {
            d2[i] = d2[i].min(distance2(opts.metric, norms[i], s[i]));
        }
    }

    let d_i = dim_i32("x.cols", d)?;
    let mut mean_f32 = if spherical { Some(stream.alloc_zeros::<f32>(k * d).during("device allocation")?) } else { None };
    let mean_p = mean_f32.as_mut().map_or(0, |m| m.device_ptr_mut(stream).0);
    let mut previous: Option<Vec<i32>> = None;
    let (mut iterations, mut reseeded, mut converged) = (0, 0, false);
    let (assignment, d2) = loop {
        let (s, a) = top1(k, 0)?;
        let d2: Vec<f64> = (0..n).map(|i| distance2(opts.metric, norms[i], s[i])).collect();
        if previous.as_ref() == Some(&a) {
            converged = true;
            break (a, d2);
        }
        if iterations == opts.max_iterations {
            break (a, d2);
        }
        let (perm, offsets, r) = segments(&a, &d2, k);
        reseeded += r;
        let perm_dev = stream.clone_htod(&perm).during("host-to-device copy")?;
        let off_dev = stream.clone_htod(&offsets).during("host-to-device copy")?;
        let (perm_p, off_p) = (perm_dev.device_ptr(stream).0, off_dev.device_ptr(stream).0);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(MEAN_THREADS) as u32, k as u32, 1),
            block_dim: (MEAN_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        if spherical {
            let name = format!("kmeans_mean_{}_f32", T::DTYPE);
            // SAFETY: x (n x d), norms (n), perm / offsets as built, mean (k x d f32).
            let params = KmeansMeanParams { x: xr.ptr, norms: norms_p, perm: perm_p, offsets: off_p, out: mean_p, d: d_i };
            unsafe { gpu.launch(stream, MODULE, &name, cfg, &params)? };
            let mean = RawMatrix::new(mean_p, k, d, DType::F32);
            let cent = RawMatrix::new(cent_p, k, d, T::DTYPE);
            // SAFETY: both k x d, live.
            unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, mean, Some(cent), None)? };
        } else {
            let name = format!("kmeans_mean_{}_{}", T::DTYPE, T::DTYPE);
            // No weights; writing the centroids (k x d, T) directly.
            let params = KmeansMeanParams { x: xr.ptr, norms: 0, perm: perm_p, offsets: off_p, out: cent_p, d: d_i };
            // SAFETY: as above.
            unsafe { gpu.launch(stream, MODULE, &name, cfg, &params)? };
        }
        gpu.synchronize()?; // perm / offsets are freed at the end of this iteration
        drop((perm_dev, off_dev));
        previous = Some(a);
        iterations += 1;
    };
    let host = stream.clone_dtoh(&centroids).during("device-to-host copy")?;
    drop((norms_dev, values, indices, bias, cent_norms, mean_f32));
    Ok(KMeans {
        centroids: Matrix::new(k, d, host)?,
        assignment,
        objective: d2.iter().sum(),
        distance2: d2,
        iterations,
        converged,
        reseeded,
    })
}
