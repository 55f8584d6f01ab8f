//! k-means: the oracle on hand-solvable cases, its rules (seeding, empty clusters, errors), and
//! the GPU against the oracle on separated clusters.

mod common;

use common::{gpu_or_skip, m};
use contrastive_kernels::ops::kmeans::cpu::kmeans as oracle;
use contrastive_kernels::ops::kmeans::{KMeans, KMeansMetric, KMeansOptions};
use contrastive_kernels::{bf16, f16, rng::SplitMix64, Backend, Error, Float, FloatElement, Matrix};

#[test]
fn spherical_by_hand() {
    let x = m(4, 2, &[1.0, 0.0, 0.9, 0.1, 0.0, 2.0, 0.1, 0.9]);
    let r = oracle(&x, &KMeansOptions::new(2).seed(3)).unwrap();
    assert!(r.converged);
    assert_eq!(r.assignment[0], r.assignment[1]);
    assert_eq!(r.assignment[2], r.assignment[3]);
    assert_ne!(r.assignment[0], r.assignment[2]);
    // Centroid of {0, 1}: the normalized mean of the unit vectors (1, 0) and (0.9, 0.1) / |.|.
    let n1 = (0.81f64 + 0.01).sqrt();
    let (mx, my) = ((1.0 + 0.9 / n1) / 2.0, (0.1 / n1) / 2.0);
    let len = (mx * mx + my * my).sqrt();
    let c = r.centroids.row(r.assignment[0] as usize);
    assert!((c[0] - mx / len).abs() < 1e-15 && (c[1] - my / len).abs() < 1e-15, "{c:?}");
    // D^2 = 2 - 2 cos to the own centroid.
    let cos0 = (mx / len) * 1.0;
    assert!((r.distance2[0] - (2.0 - 2.0 * cos0)).abs() < 1e-14);
}

#[test]
fn euclidean_by_hand() {
    let x = m(4, 1, &[0.0, 1.0, 10.0, 11.0]);
    for seed in 0..5 {
        let r = oracle(&x, &KMeansOptions::new(2).seed(seed).metric(KMeansMetric::Euclidean)).unwrap();
        let mut c: Vec<f64> = r.centroids.data().to_vec();
        c.sort_by(f64::total_cmp);
        assert_eq!(c, vec![0.5, 10.5], "seed {seed}");
        assert_eq!(r.objective, 4.0 * 0.25);
        assert!(r.converged);
    }
}

#[test]
fn empty_clusters_are_reseeded_and_errors_are_named() {
    // Three identical points and one other, three clusters: seeding runs out of mass and picks a
    // duplicate, whose cluster loses every tie (smaller index wins) and is re-seeded.
    let x = m(4, 2, &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    let r = oracle(&x, &KMeansOptions::new(3).seed(0)).unwrap();
    assert!(r.reseeded >= 1, "{r:?}");
    assert!(r.assignment.iter().all(|&a| (0..3).contains(&a)));
    assert_eq!(r.objective, 0.0);

    let arg = |e: Error| match e {
        Error::InvalidArgument { arg, .. } | Error::Shape { arg, .. } => arg,
        other => panic!("{other}"),
    };
    assert_eq!(arg(oracle(&x, &KMeansOptions::new(0)).unwrap_err()), "clusters");
    assert_eq!(arg(oracle(&x, &KMeansOptions::new(5)).unwrap_err()), "clusters");
    assert_eq!(arg(oracle(&x, &KMeansOptions::new(2).max_iterations(0)).unwrap_err()), "max_iterations");
    let nan = m(2, 2, &[1.0, f64::NAN, 0.0, 1.0]);
    let e = oracle(&nan, &KMeansOptions::new(1)).unwrap_err();
    assert!(arg(e).contains('x'));
}

/// `clusters` blobs around random directions, `per` points each, well separated.
fn blobs<T: Float>(clusters: usize, per: usize, d: usize, seed: u64, offset: f64) -> Matrix<T> {
    let mut rng = SplitMix64::new(seed);
    let centres: Vec<Vec<f64>> = (0..clusters).map(|_| (0..d).map(|_| rng.normal() * 4.0).collect()).collect();
    let mut data = Vec::new();
    for i in 0..clusters * per {
        let c = &centres[(i * 7) % clusters]; // interleaved, so clusters are not index ranges
        data.extend(c.iter().map(|&v| T::from_f64(v + offset + 0.05 * rng.normal())));
    }
    Matrix::new(clusters * per, d, data).unwrap()
}

/// Partitions equal up to relabelling, and centroids close under that relabelling.
fn same_clustering<T: Float>(a: &KMeans<T>, b: &KMeans<T>, tol: f64, what: &str) {
    let k = a.centroids.rows();
    let mut map = vec![-1i32; k];
    for (&x, &y) in a.assignment.iter().zip(&b.assignment) {
        assert!(map[x as usize] == -1 || map[x as usize] == y, "{what}: partitions differ");
        map[x as usize] = y;
    }
    for (c, &mc) in map.iter().enumerate() {
        if mc < 0 {
            continue;
        }
        for (u, v) in a.centroids.row(c).iter().zip(b.centroids.row(mc as usize)) {
            assert!((u.to_f64() - v.to_f64()).abs() <= tol, "{what}: centroid {c}: {} vs {}", u.to_f64(), v.to_f64());
        }
    }
    assert!((a.objective - b.objective).abs() <= tol * a.objective.max(1.0) * 10.0, "{what}: objective {} vs {}", a.objective, b.objective);
}

#[test]
fn seeds_are_deterministic() {
    let x: Matrix<f32> = blobs(5, 40, 16, 1, 0.0);
    let a = Backend::Cpu.kmeans(&x, &KMeansOptions::new(5).seed(9)).unwrap();
    let b = Backend::Cpu.kmeans(&x, &KMeansOptions::new(5).seed(9)).unwrap();
    assert_eq!(a, b);
    assert!(a.converged);
    // Separated blobs: every seed finds the same partition.
    let c = Backend::Cpu.kmeans(&x, &KMeansOptions::new(5).seed(10)).unwrap();
    same_clustering(&a, &c, 1e-6, "seed 9 vs 10");
}

fn gpu_vs_cpu<T: FloatElement>(gpu: &contrastive_kernels::Gpu, tol: f64) {
    for metric in [KMeansMetric::Spherical, KMeansMetric::Euclidean] {
        let x: Matrix<T> = blobs(8, 60, 40, 2, if metric == KMeansMetric::Euclidean { 1.0 } else { 0.0 });
        let opts = KMeansOptions::new(8).seed(4).metric(metric);
        let want = Backend::Cpu.kmeans(&x, &opts).unwrap();
        let got = Backend::Gpu(gpu.clone()).kmeans(&x, &opts).unwrap();
        let what = format!("{} {metric:?}", T::DTYPE);
        assert!(got.converged, "{what}");
        same_clustering(&want, &got, tol, &what);
        assert_eq!(got, Backend::Gpu(gpu.clone()).kmeans(&x, &opts).unwrap(), "{what}: not deterministic");
    }
}

#[test]
fn gpu_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_matches_oracle") else { return };
    gpu_vs_cpu::<f32>(&gpu, 1e-4);
    gpu_vs_cpu::<f16>(&gpu, 4e-3);
    gpu_vs_cpu::<bf16>(&gpu, 3e-2);
}
