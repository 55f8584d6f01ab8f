//! Out-of-distribution detection metrics on the host. Anomalies (outliers) are the positive class
//! and a higher score means "more anomalous" (turn a "higher = more normal" score around first,
//! as [`crate::scores::Score::anomaly_scores`] does).
//!
//! Ties are handled exactly: AUROC counts a tied (inlier, outlier) pair as 1/2 (Mann-Whitney with
//! mid-ranks); AUPR and FPR@95%TPR move the threshold over distinct score values only, so tied
//! samples are always classified together (as scikit-learn's `average_precision_score` and
//! `roc_curve` do).

use crate::error::{Error, Result};

/// The three numbers of a detection report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionReport {
    pub auroc: f64,
    /// Average precision with outliers as positives (AUPR-Out).
    pub aupr: f64,
    /// The false-positive rate (inliers flagged) at the highest threshold whose true-positive
    /// rate (outliers flagged) is at least 95%.
    pub fpr_at_95_tpr: f64,
}

fn check_scores(inliers: &[f64], outliers: &[f64]) -> Result<()> {
    for (arg, v) in [("inlier_scores", inliers), ("outlier_scores", outliers)] {
        if v.is_empty() {
            return Err(Error::invalid(arg, "needs at least one score"));
        }
        if let Some(i) = v.iter().position(|x| x.is_nan()) {
            return Err(Error::invalid(arg, format!("score {i} is NaN")));
        }
    }
    Ok(())
}

/// Distinct thresholds from the highest down, with (outliers, inliers) at or above each.
fn sweep(inliers: &[f64], outliers: &[f64]) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, bool)> = inliers.iter().map(|&s| (s, false)).chain(outliers.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0, 0);
    let mut points = Vec::new();
    for (i, &(s, positive)) in all.iter().enumerate() {
        if positive {
            tp += 1;
        } else {
            fp += 1;
        }
        // total_cmp separates -0 and +0; they are one threshold.
        if i + 1 == all.len() || all[i + 1].0 != s {
            points.push((tp, fp));
        }
    }
    points
}

/// Area under the ROC curve: P(outlier score > inlier score) + P(equal) / 2.
pub fn auroc(inlier_scores: &[f64], outlier_scores: &[f64]) -> Result<f64> {
    check_scores(inlier_scores, outlier_scores)?;
    let (p, n) = (outlier_scores.len() as f64, inlier_scores.len() as f64);
    // Trapezoids between consecutive ROC points: a tie block is one diagonal step (counts 1/2).
    let (mut area, mut prev) = (0.0, (0usize, 0usize));
    for (tp, fp) in sweep(inlier_scores, outlier_scores) {
        area += (fp - prev.1) as f64 * (tp + prev.0) as f64 / 2.0;
        prev = (tp, fp);
    }
    Ok(area / (p * n))
}

/// Average precision, outliers positive: sum over thresholds of (recall step) x precision.
pub fn aupr(inlier_scores: &[f64], outlier_scores: &[f64]) -> Result<f64> {
    check_scores(inlier_scores, outlier_scores)?;
    let p = outlier_scores.len() as f64;
    let (mut sum, mut prev_tp) = (0.0, 0usize);
    for (tp, fp) in sweep(inlier_scores, outlier_scores) {
        sum += (tp - prev_tp) as f64 * (tp as f64 / (tp + fp) as f64);
        prev_tp = tp;
    }
    Ok(sum / p) // one division: a perfect ranking gives exactly 1
}

/// FPR at the highest threshold with TPR >= `tpr` (0 < tpr <= 1).
pub fn fpr_at_tpr(inlier_scores: &[f64], outlier_scores: &[f64], tpr: f64) -> Result<f64> {
    check_scores(inlier_scores, outlier_scores)?;
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(Error::invalid("tpr", format!("must be in (0, 1], got {tpr}")));
    }
    // The outliers needed, rounded up; the small slack keeps 0.95 * 20 = 19 from becoming 20.
    let needed = ((tpr * outlier_scores.len() as f64) - 1e-9).ceil().max(1.0) as usize;
    let n = inlier_scores.len() as f64;
    let (_, fp) =
        sweep(inlier_scores, outlier_scores).into_iter().find(|&(tp, _)| tp >= needed).expect("the last threshold flags every outlier");
    Ok(fp as f64 / n)
}

/// AUROC, AUPR and FPR@95%TPR of the scores (higher = more anomalous).
pub fn report(inlier_scores: &[f64], outlier_scores: &[f64]) -> Result<DetectionReport> {
    Ok(DetectionReport {
        auroc: auroc(inlier_scores, outlier_scores)?,
        aupr: aupr(inlier_scores, outlier_scores)?,
        fpr_at_95_tpr: fpr_at_tpr(inlier_scores, outlier_scores, 0.95)?,
    })
}
