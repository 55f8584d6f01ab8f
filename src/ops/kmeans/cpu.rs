//! Oracle of `kmeans`: the same rules as [`crate::ops::kmeans`] (seeding, stopping, empty
//! clusters: the host code is shared), with f64 similarities and means; centroids are rounded
//! to the input dtype after each update, as the GPU stores them.

use super::{check, check_finite_norms, distance2, next_seed, segments, KMeans, KMeansMetric, KMeansOptions};
use crate::dtype::Float;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::ops::normalize::{cpu::row_norms, norm_denominator};
use crate::rng::SplitMix64;

/// Similarity of row i of x to centroid c: cosine (spherical) or <x, c> - |c|^2 / 2 (euclidean).
fn similarity<T: Float>(metric: KMeansMetric, x: &[T], x_norm: f64, c: &[T]) -> f64 {
    let dot: f64 = x.iter().zip(c).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
    let c2: f64 = c.iter().map(|v| v.to_f64() * v.to_f64()).sum();
    match metric {
        KMeansMetric::Spherical => dot / (norm_denominator(x_norm) * norm_denominator(c2.sqrt())),
        KMeansMetric::Euclidean => dot - c2 / 2.0,
    }
}

/// Top-1 with the kernels' order: the larger similarity, ties to the smaller index, NaN last.
fn assign<T: Float>(metric: KMeansMetric, x: &Matrix<T>, norms: &[f64], centroids: &Matrix<T>) -> (Vec<f64>, Vec<i32>) {
    (0..x.rows())
        .map(|i| {
            let mut best = (f64::NAN, -1i32);
            for c in 0..centroids.rows() {
                let s = similarity(metric, x.row(i), norms[i], centroids.row(c));
                if best.1 < 0 || crate::ops::topk::cpu::result_order(s, c, best.0, best.1 as usize) == std::cmp::Ordering::Less {
                    best = (s, c as i32);
                }
            }
            best
        })
        .unzip()
}

pub fn kmeans<T: Float>(x: &Matrix<T>, opts: &KMeansOptions) -> Result<KMeans<T>> {
    check(x.rows(), x.cols(), opts)?;
    let (n, d, k) = (x.rows(), x.cols(), opts.clusters);
    let norms = row_norms(x);
    check_finite_norms(norms.iter().copied())?;
    let mut centroids = Matrix::from_fn(k, d, |_, _| T::from_f64(0.0));
    let set_row = |m: &mut Matrix<T>, c: usize, v: &[T]| m.data_mut()[c * d..(c + 1) * d].copy_from_slice(v);

    let mut rng = SplitMix64::new(opts.seed);
    let mut chosen = vec![rng.below(n)];
    set_row(&mut centroids, 0, x.row(chosen[0]));
    let mut d2: Vec<f64> =
        (0..n).map(|i| distance2(opts.metric, norms[i], similarity(opts.metric, x.row(i), norms[i], centroids.row(0)))).collect();
    for j in 1..k {
        let next = next_seed(&mut rng, &d2, &chosen);
        chosen.push(next);
        set_row(&mut centroids, j, x.row(next));
        for i in 0..n {
            d2[i] = d2[i].min(distance2(opts.metric, norms[i], similarity(opts.metric, x.row(i), norms[i], centroids.row(j))));
        }
    }

    let mut previous: Option<Vec<i32>> = None;
    let (mut iterations, mut reseeded, mut converged) = (0, 0, false);
    let (assignment, d2) = loop {
        let (s, a) = assign(opts.metric, x, &norms, &centroids);
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
        for c in 0..k {
            let members = &perm[offsets[c] as usize..offsets[c + 1] as usize];
            let mut mean = vec![0.0f64; d];
            for &i in members {
                let w = if opts.metric == KMeansMetric::Spherical { 1.0 / norm_denominator(norms[i as usize]) } else { 1.0 };
                for (m, v) in mean.iter_mut().zip(x.row(i as usize)) {
                    *m += w * v.to_f64();
                }
            }
            let count = members.len() as f64;
            mean.iter_mut().for_each(|m| *m /= count);
            if opts.metric == KMeansMetric::Spherical {
                let len = norm_denominator(mean.iter().map(|v| v * v).sum::<f64>().sqrt());
                mean.iter_mut().for_each(|m| *m /= len);
            }
            let rounded: Vec<T> = mean.iter().map(|&v| T::from_f64(v)).collect();
            set_row(&mut centroids, c, &rounded);
        }
        previous = Some(a);
        iterations += 1;
    };
    Ok(KMeans { centroids, assignment, objective: d2.iter().sum(), distance2: d2, iterations, converged, reseeded })
}
