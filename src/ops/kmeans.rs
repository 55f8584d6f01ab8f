//! k-means for the cluster-aware loss (its prototypes), on the GPU: assignment by the top-1 of
//! [`crate::ops::topk`] against the centroids, centroid update by a segmented mean
//! (`kernels/kmeans.cu`). Oracle: [`crate::cpu::kmeans`], which shares this module's host rules.
//!
//! * Spherical (default): similarity = cosine; a centroid is the normalized mean of its points'
//!   unit vectors; D^2 = 2 - 2 cos. Euclidean: similarity = <x, c> - |c|^2 / 2 (the top-1 with a
//!   bias, on raw vectors), a centroid is the plain mean; D^2 = |x|^2 - 2 (<x, c> - |c|^2 / 2).
//! * Seeding: k-means++ from `seed` (SplitMix64): the first centre uniform over the rows, each
//!   next one drawn with probability proportional to D^2 to the nearest chosen centre (summed in
//!   index order); if every D^2 is 0, the first row not yet chosen.
//! * Lloyd iterations: assign; stop when no assignment changed (or after `max_iterations`
//!   updates); else update. The returned assignment is always against the returned centroids.
//! * Empty clusters: before an update, each empty cluster (in increasing order) is re-seeded at
//!   the point with the largest D^2 to its assigned centroid (ties to the smaller index), a
//!   different point for each; that point then is the cluster's centroid (normalized for
//!   spherical) and moves there at the next assignment.
//! * Centroids are stored in the input dtype (the top-k kernel reads them as bank rows).
//! * A row holding NaN or inf is an error naming `x`.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::kmeans::{KmeansMeanParams, MEAN_THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::matrix::Matrix;
use crate::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KMeansMetric {
    #[default]
    Spherical,
    Euclidean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KMeansOptions {
    pub clusters: usize,
    /// Most centroid updates (>= 1).
    pub max_iterations: usize,
    pub seed: u64,
    pub metric: KMeansMetric,
}

impl KMeansOptions {
    pub fn new(clusters: usize) -> Self {
        KMeansOptions { clusters, max_iterations: 50, seed: 0, metric: KMeansMetric::Spherical }
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn max_iterations(mut self, n: usize) -> Self {
        self.max_iterations = n;
        self
    }
    pub fn metric(mut self, metric: KMeansMetric) -> Self {
        self.metric = metric;
        self
    }
}

/// The result: centroids (clusters x d, input dtype), each point's cluster and D^2 to it.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans<T> {
    pub centroids: Matrix<T>,
    pub assignment: Vec<i32>,
    pub distance2: Vec<f64>,
    /// Sum of distance2.
    pub objective: f64,
    /// Centroid updates run.
    pub iterations: usize,
    /// Whether the last assignment repeated the previous one.
    pub converged: bool,
    /// Empty clusters re-seeded over the run.
    pub reseeded: usize,
}

/// Validation shared by every backend.
pub fn check(rows: usize, cols: usize, opts: &KMeansOptions) -> Result<()> {
    super::check_features("x", rows, cols)?;
    if opts.clusters == 0 || opts.clusters > rows {
        return Err(Error::invalid("clusters", format!("must be in 1..={rows} (the rows of x), got {}", opts.clusters)));
    }
    if opts.clusters > 65_535 {
        return Err(Error::invalid("clusters", format!("at most 65535, got {}", opts.clusters)));
    }
    if opts.max_iterations == 0 {
        return Err(Error::invalid("max_iterations", "must be at least 1"));
    }
    Ok(())
}

pub(crate) fn check_finite_norms(norms: impl IntoIterator<Item = f64>) -> Result<()> {
    match norms.into_iter().position(|n| !n.is_finite()) {
        Some(i) => Err(Error::invalid("x", format!("row {i} holds NaN or inf"))),
        None => Ok(()),
    }
}

/// D^2 of a point from its similarity to a centre (clamped at 0 against rounding).
pub(crate) fn distance2(metric: KMeansMetric, norm: f64, sim: f64) -> f64 {
    match metric {
        KMeansMetric::Spherical => (2.0 - 2.0 * sim).max(0.0),
        KMeansMetric::Euclidean => (norm * norm - 2.0 * sim).max(0.0),
    }
}

/// k-means++: the next centre given every point's D^2 to the chosen ones.
pub(crate) fn next_seed(rng: &mut SplitMix64, d2: &[f64], chosen: &[usize]) -> usize {
    let total: f64 = d2.iter().sum();
    if total > 0.0 {
        let u = rng.uniform() * total;
        let mut acc = 0.0;
        for (i, &v) in d2.iter().enumerate() {
            acc += v;
            if acc > u && v > 0.0 {
                return i;
            }
        }
        // Rounding left u at the very end: the last point with mass.
        if let Some(i) = d2.iter().rposition(|&v| v > 0.0) {
            return i;
        }
    }
    (0..d2.len()).find(|i| !chosen.contains(i)).unwrap_or(0)
}

/// The update's segments: each cluster's points in index order, or for an empty cluster the
/// re-seed point (largest D^2, ties to the smaller index, distinct). Returns (perm, offsets, reseeded).
pub(crate) fn segments(assignment: &[i32], d2: &[f64], clusters: usize) -> (Vec<i32>, Vec<i32>, usize) {
    let mut members: Vec<Vec<i32>> = vec![Vec::new(); clusters];
    for (i, &c) in assignment.iter().enumerate() {
        members[c as usize].push(i as i32);
    }
    let mut taken: Vec<usize> = Vec::new();
    let mut reseeded = 0;
    for m in members.iter_mut() {
        if m.is_empty() {
            let pick = (0..d2.len())
                .filter(|i| !taken.contains(i))
                .fold(None, |best: Option<usize>, i| match best {
                    Some(b) if d2[b] >= d2[i] => Some(b),
                    _ => Some(i),
                })
                .expect("clusters <= rows");
            taken.push(pick);
            m.push(pick as i32);
            reseeded += 1;
        }
    }
    let mut perm = Vec::with_capacity(assignment.len() + reseeded);
    let mut offsets = vec![0i32];
    for m in &members {
        perm.extend_from_slice(m);
        offsets.push(perm.len() as i32);
    }
    (perm, offsets, reseeded)
}

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
    unsafe { super::normalize::l2_normalize_raw(gpu, stream, xr, None, Some(norms_p))? };
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
            unsafe { super::normalize::l2_normalize_raw(gpu, stream, bank, None, Some(cent_norms_p))? };
            let cn = stream.clone_dtoh(&cent_norms).during("device-to-host copy")?;
            let b: Vec<f32> = cn[..rows].iter().map(|&v| -0.5 * v * v).collect();
            // SAFETY: bias holds k >= rows floats.
            unsafe { cudarc::driver::result::memcpy_htod_async(bias_p, &b, stream.cu_stream()) }.during("host-to-device copy")?;
            stream.synchronize().during("stream synchronize")?; // `b` is a pageable temporary
            bias_p
        };
        // SAFETY: x, the centroid rows, values and indices are live and sized for n x 1.
        unsafe { super::topk::top1_biased_raw(gpu, stream, xr, bank, bias_arg, !spherical, values_p, indices_p)? };
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
            unsafe { super::normalize::l2_normalize_raw(gpu, stream, mean, Some(cent), None)? };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_the_empty_cluster_rule() {
        // Cluster 1 and 3 are empty: re-seeded at the largest D^2 (point 4), then the next
        // largest not taken (points 0 and 2 tie at 0.5: the smaller index, 0).
        let (perm, offsets, reseeded) = segments(&[0, 2, 0, 2, 2], &[0.5, 0.1, 0.5, 0.0, 0.9], 4);
        assert_eq!(perm, vec![0, 2, 4, 1, 3, 4, 0]);
        assert_eq!(offsets, vec![0, 2, 3, 6, 7]);
        assert_eq!(reseeded, 2);
    }

    #[test]
    fn seeding_draws_by_mass_and_falls_back_in_index_order() {
        let mut rng = SplitMix64::new(1);
        // All the mass on point 2.
        assert_eq!(next_seed(&mut rng, &[0.0, 0.0, 3.0, 0.0], &[0]), 2);
        // No mass anywhere: the first point not chosen yet.
        assert_eq!(next_seed(&mut rng, &[0.0, 0.0, 0.0], &[0, 1]), 2);
        // Mass 1 : 3: over many draws point 3 wins about three times in four.
        let wins = (0..4000).filter(|_| next_seed(&mut rng, &[1.0, 0.0, 0.0, 3.0], &[1]) == 3).count();
        assert!((2800..3200).contains(&wins), "{wins}");
        assert_eq!(distance2(KMeansMetric::Spherical, 7.0, 1.0 + 1e-7), 0.0, "clamped at 0");
        assert_eq!(distance2(KMeansMetric::Euclidean, 3.0, 2.0), 5.0);
    }
}
