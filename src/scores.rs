//! Anomaly scores of DESIGN.md section 5, on top of the neighbours from [`crate::ops::topk`] (or
//! its oracle) and the queries' raw (pre-normalization) norms. Host code: O(queries x k).
//!
//! Each function states its orientation. [`Score`] names them for [`detect`], which goes from
//! features to a [`DetectionReport`] in one call, turning every score into "higher = more
//! anomalous" first.

use crate::backend::Backend;
use crate::dtype::{Float, FloatElement};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::metrics::{self, DetectionReport};
use crate::ops::normalize::cpu::row_norms;
use crate::ops::topk::TopK;
use crate::ops::topk::TopKOptions;

fn check_kth<V>(topk: &TopK<V>, k: usize) -> Result<()> {
    if k == 0 || k > topk.k {
        return Err(Error::invalid("k", format!("must be in 1..={} (the neighbours computed), got {k}", topk.k)));
    }
    Ok(())
}

fn check_norms<N>(topk_rows: usize, norms: &[N]) -> Result<()> {
    if norms.len() != topk_rows {
        return Err(Error::shape("norms", format!("{topk_rows} norms (one per query)"), format!("{}", norms.len())));
    }
    Ok(())
}

/// Deep nearest neighbours (Sun et al. 2022): the squared distance to the k-th neighbour on unit
/// vectors, 2 - 2 s_(k). Higher = more anomalous.
pub fn knn_distance<V: Float>(topk: &TopK<V>, k: usize) -> Result<Vec<f64>> {
    check_kth(topk, k)?;
    Ok((0..topk.rows).map(|i| 2.0 - 2.0 * topk.row_values(i)[k - 1].to_f64()).collect())
}

/// Mean of the k largest cosine similarities (FIRM's cos_k). Higher = more normal.
pub fn mean_topk_similarity<V: Float>(topk: &TopK<V>, k: usize) -> Result<Vec<f64>> {
    check_kth(topk, k)?;
    Ok((0..topk.rows).map(|i| topk.row_values(i)[..k].iter().map(|v| v.to_f64()).sum::<f64>() / k as f64).collect())
}

/// cos_k x ||x|| (CSI-style norm weighting of the mean top-k similarity). Higher = more normal.
pub fn norm_weighted_mean_topk<V: Float, N: Float>(topk: &TopK<V>, k: usize, norms: &[N]) -> Result<Vec<f64>> {
    check_norms(topk.rows, norms)?;
    Ok(mean_topk_similarity(topk, k)?.into_iter().zip(norms).map(|(m, n)| m * n.to_f64()).collect())
}

/// CSI's SimCLR score: max_m <z, u_m> with z unnormalized = (max cosine) x ||z||. Higher = more normal.
pub fn csi_score<V: Float, N: Float>(topk: &TopK<V>, norms: &[N]) -> Result<Vec<f64>> {
    norm_weighted_mean_topk(topk, 1, norms)
}

/// OECL's norm score: ||x|| of the raw head output. Higher = more normal.
pub fn norm_score<T: Float>(features: &Matrix<T>) -> Vec<f64> {
    row_norms(features)
}

/// MCOD's memory score: ||h - M^T softmax(w)||^2 against K memory items M (K x d). DESIGN.md gives
/// the form, not w; we read it as an attention read of the memory, w = M h / temperature (the
/// usual memory-module addressing), on the raw vectors. Higher = more anomalous.
pub fn mcod_memory_score<T: Float>(h: &Matrix<T>, memory: &Matrix<T>, temperature: f64) -> Result<Vec<f64>> {
    if memory.rows() == 0 || memory.cols() != h.cols() {
        return Err(Error::shape(
            "memory",
            format!("K >= 1 rows of {} columns (the d of h)", h.cols()),
            format!("{} x {}", memory.rows(), memory.cols()),
        ));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::invalid("temperature", format!("must be finite and > 0, got {temperature}")));
    }
    let d = h.cols();
    Ok((0..h.rows())
        .map(|i| {
            let x: Vec<f64> = h.row(i).iter().map(|v| v.to_f64()).collect();
            let w: Vec<f64> =
                (0..memory.rows()).map(|m| memory.row(m).iter().zip(&x).map(|(a, b)| a.to_f64() * b).sum::<f64>() / temperature).collect();
            let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = w.iter().map(|v| (v - max).exp()).collect();
            let z: f64 = e.iter().sum();
            (0..d)
                .map(|j| {
                    let read: f64 = (0..memory.rows()).map(|m| e[m] / z * memory.get(m, j).to_f64()).sum();
                    (x[j] - read).powi(2)
                })
                .sum()
        })
        .collect())
}

/// A score computed from the bank neighbours of the queries (and their norms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// 2 - 2 s_(k): higher = more anomalous.
    KnnDistance { k: usize },
    /// cos_k: higher = more normal.
    MeanTopK { k: usize },
    /// cos_k x ||x||: higher = more normal.
    NormWeightedMeanTopK { k: usize },
    /// max cosine x ||x||: higher = more normal.
    CsiMaxTimesNorm,
    /// ||x||: higher = more normal (needs no bank).
    FeatureNorm,
}

impl Score {
    /// How many neighbours the score reads.
    pub fn neighbours(&self) -> usize {
        match *self {
            Score::KnnDistance { k } | Score::MeanTopK { k } | Score::NormWeightedMeanTopK { k } => k,
            Score::CsiMaxTimesNorm => 1,
            Score::FeatureNorm => 0,
        }
    }

    /// The score turned so that higher = more anomalous (negated where higher = more normal).
    pub fn anomaly_scores<V: Float, N: Float>(&self, topk: Option<&TopK<V>>, norms: &[N]) -> Result<Vec<f64>> {
        let need = || topk.ok_or_else(|| Error::invalid("topk", "this score needs the queries' neighbours"));
        let negate = |v: Vec<f64>| v.into_iter().map(|x| -x).collect();
        Ok(match *self {
            Score::KnnDistance { k } => knn_distance(need()?, k)?,
            Score::MeanTopK { k } => negate(mean_topk_similarity(need()?, k)?),
            Score::NormWeightedMeanTopK { k } => negate(norm_weighted_mean_topk(need()?, k, norms)?),
            Score::CsiMaxTimesNorm => negate(csi_score(need()?, norms)?),
            Score::FeatureNorm => norms.iter().map(|n| -n.to_f64()).collect(),
        })
    }
}

/// From features to a detection report in one call: neighbours of the inlier and outlier test
/// features in `bank` (on `backend`), the score, then AUROC / AUPR / FPR@95%TPR (outliers positive).
pub fn detect<T: FloatElement>(
    backend: &Backend,
    bank: &Matrix<T>,
    inliers: &Matrix<T>,
    outliers: &Matrix<T>,
    score: Score,
) -> Result<DetectionReport> {
    let scores_of = |x: &Matrix<T>| -> Result<Vec<f64>> {
        let norms = row_norms(x);
        let k = score.neighbours();
        let topk = if k > 0 { Some(backend.topk(x, bank, &TopKOptions::new(k))?) } else { None };
        score.anomaly_scores(topk.as_ref(), &norms)
    };
    metrics::report(&scores_of(inliers)?, &scores_of(outliers)?)
}
