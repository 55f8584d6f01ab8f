//! Anomaly scores on hand-made neighbours, MCOD against hand values, and the one-call detection
//! report on the CPU backend (and on the GPU when there is one).

mod common;

use common::{gpu_or_skip, m};
use contrastive_kernels::scores::{
    csi_score, detect, knn_distance, mcod_memory_score, mean_topk_similarity, norm_score, norm_weighted_mean_topk, Score,
};
use contrastive_kernels::{rng::SplitMix64, Backend, Error, Matrix, TopK};

fn neighbours() -> TopK<f32> {
    TopK { rows: 2, k: 3, values: vec![0.5, 0.25, -0.5, 1.0, 1.0, 0.0], indices: vec![4, 1, 0, 2, 3, 9] }
}

#[test]
fn scores_by_hand() {
    let t = neighbours();
    assert_eq!(knn_distance(&t, 1).unwrap(), vec![1.0, 0.0]);
    assert_eq!(knn_distance(&t, 3).unwrap(), vec![3.0, 2.0]);
    assert_eq!(mean_topk_similarity(&t, 2).unwrap(), vec![0.375, 1.0]);
    assert_eq!(mean_topk_similarity(&t, 3).unwrap(), vec![0.25 / 3.0, 2.0 / 3.0]);
    assert_eq!(norm_weighted_mean_topk(&t, 2, &[2.0f32, 0.5]).unwrap(), vec![0.75, 0.5]);
    assert_eq!(csi_score(&t, &[2.0f64, 3.0]).unwrap(), vec![1.0, 3.0]);
    assert_eq!(norm_score(&m(2, 2, &[3.0, 4.0, 0.0, -2.0])), vec![5.0, 2.0]);
    // Orientation: every anomaly score is higher for the more anomalous row (row 0 here).
    for score in [Score::KnnDistance { k: 2 }, Score::MeanTopK { k: 2 }, Score::NormWeightedMeanTopK { k: 1 }, Score::CsiMaxTimesNorm] {
        let s = score.anomaly_scores(Some(&t), &[1.0f32, 1.0]).unwrap();
        assert!(s[0] > s[1], "{score:?}: {s:?}");
    }
    assert_eq!(Score::FeatureNorm.anomaly_scores::<f32, f64>(None, &[1.0, 4.0]).unwrap(), vec![-1.0, -4.0]);
}

#[test]
fn score_errors() {
    let t = neighbours();
    assert!(matches!(knn_distance(&t, 0), Err(Error::InvalidArgument { arg: "k", .. })));
    assert!(matches!(mean_topk_similarity(&t, 4), Err(Error::InvalidArgument { arg: "k", .. })));
    assert!(matches!(csi_score(&t, &[1.0f32]), Err(Error::Shape { arg: "norms", .. })));
    assert!(matches!(Score::KnnDistance { k: 1 }.anomaly_scores::<f32, f32>(None, &[]), Err(Error::InvalidArgument { arg: "topk", .. })));
    let h = m(1, 2, &[1.0, 0.0]);
    assert!(matches!(mcod_memory_score(&h, &m(1, 3, &[1.0, 0.0, 0.0]), 1.0), Err(Error::Shape { arg: "memory", .. })));
    assert!(matches!(mcod_memory_score(&h, &h, 0.0), Err(Error::InvalidArgument { arg: "temperature", .. })));
}

#[test]
fn mcod_by_hand() {
    // One memory item: softmax is 1, the score is |h - m|^2.
    assert_eq!(mcod_memory_score(&m(1, 2, &[2.0, 0.0]), &m(1, 2, &[1.0, 0.0]), 1.0).unwrap(), vec![1.0]);
    // h orthogonal to both items: equal weights, the read is their mean (0, 0).
    assert_eq!(mcod_memory_score(&m(1, 2, &[1.0, 0.0]), &m(2, 2, &[0.0, 1.0, 0.0, -1.0]), 1.0).unwrap(), vec![1.0]);
    // h = (1, 0), items (1, 0) and (0, 1): w = (1, 0) / tau; softmax (e, 1) / (e + 1);
    // read = (e, 1) / (e + 1); |h - read|^2 = 2 / (e + 1)^2.
    let e = std::f64::consts::E;
    let got = mcod_memory_score(&m(1, 2, &[1.0, 0.0]), &m(2, 2, &[1.0, 0.0, 0.0, 1.0]), 1.0).unwrap()[0];
    assert!((got - 2.0 / (e + 1.0).powi(2)).abs() < 1e-15, "{got}");
}

/// Inliers near the bank's directions, outliers elsewhere: every neighbour score separates them.
fn blobs(seed: u64) -> (Matrix<f32>, Matrix<f32>, Matrix<f32>) {
    let mut rng = SplitMix64::new(seed);
    let d = 8;
    let mut around = |rows: usize, axis: usize| -> Vec<f32> {
        (0..rows)
            .flat_map(|_| (0..d).map(|j| (if j == axis { 3.0 } else { 0.0 } + 0.3 * rng.normal()) as f32).collect::<Vec<_>>())
            .collect()
    };
    let mut bank = around(200, 0);
    bank.extend(around(200, 1));
    let mut inl = around(30, 0);
    inl.extend(around(30, 1));
    let out = around(40, 5);
    (Matrix::new(400, d, bank).unwrap(), Matrix::new(60, d, inl).unwrap(), Matrix::new(40, d, out).unwrap())
}

fn detect_on(backend: &Backend) {
    let (bank, inl, out) = blobs(3);
    for score in [
        Score::KnnDistance { k: 1 },
        Score::KnnDistance { k: 50 },
        Score::MeanTopK { k: 5 },
        Score::NormWeightedMeanTopK { k: 5 },
        Score::CsiMaxTimesNorm,
    ] {
        let r = detect(backend, &bank, &inl, &out, score).unwrap();
        assert_eq!((r.auroc, r.aupr, r.fpr_at_95_tpr), (1.0, 1.0, 0.0), "{score:?} on {}", backend.describe());
    }
    // The norms carry no signal here: a valid report, not a perfect one.
    let r = detect(backend, &bank, &inl, &out, Score::FeatureNorm).unwrap();
    assert!(r.auroc > 0.0 && r.auroc < 1.0, "{r:?}");
}

#[test]
fn detect_cpu() {
    detect_on(&Backend::Cpu);
}

#[test]
fn detect_gpu() {
    let Some(gpu) = gpu_or_skip("detect_gpu") else { return };
    detect_on(&Backend::Gpu(gpu));
}
