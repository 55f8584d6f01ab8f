//! Detection metrics over anomaly scores (higher = more anomalous), DESIGN.md section 5:
//! AUROC, AUPR with the anomalies as the positive class, and FPR at 95 % TPR.

use crate::error::{Error, Result};

fn check(scores: &[f64], is_anomaly: &[bool]) -> Result<(usize, usize)> {
    if scores.len() != is_anomaly.len() {
        return Err(Error::shape("is_anomaly", format!("{} entries (one per score)", scores.len()), format!("{}", is_anomaly.len())));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::invalid("scores", format!("score {i} is NaN")));
    }
    let anomalies = is_anomaly.iter().filter(|a| **a).count();
    let normals = scores.len() - anomalies;
    if anomalies == 0 || normals == 0 {
        return Err(Error::invalid("is_anomaly", format!("needs both classes, got {normals} normal and {anomalies} anomalous")));
    }
    Ok((normals, anomalies))
}

/// Indices sorted by score, descending (most anomalous first); ties keep index order.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Area under the ROC curve: P(score of a random anomaly > score of a random normal), ties
/// counting one half (the Mann-Whitney U statistic with mid-ranks).
pub fn auroc(scores: &[f64], is_anomaly: &[bool]) -> Result<f64> {
    let (normals, anomalies) = check(scores, is_anomaly)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks (1-based) over tied groups.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| is_anomaly[k]).count() as f64 * mid;
        i = j + 1;
    }
    let u = rank_sum - (anomalies * (anomalies + 1)) as f64 / 2.0;
    Ok(u / (anomalies as f64 * normals as f64))
}

/// Area under the precision-recall curve of the anomalies, as average precision
/// (sum over thresholds of precision x recall increment, sklearn's `average_precision_score`;
/// tied scores form one threshold).
pub fn aupr(scores: &[f64], is_anomaly: &[bool]) -> Result<f64> {
    let (_, anomalies) = check(scores, is_anomaly)?;
    let order = descending(scores);
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if is_anomaly[order[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / anomalies as f64;
        ap += (recall - last_recall) * tp as f64 / (tp + fp) as f64;
        last_recall = recall;
        i = j;
    }
    Ok(ap)
}

/// FPR at 95 % TPR, the out-of-distribution convention (ODIN, Liang et al. 2018): with the
/// threshold that accepts 95 % of the normal samples as normal (the lowest threshold t such that
/// at least 95 % have score <= t), the fraction of anomalies also accepted (score <= t).
/// Lower is better.
pub fn fpr_at_95_tpr(scores: &[f64], is_anomaly: &[bool]) -> Result<f64> {
    let (normals, anomalies) = check(scores, is_anomaly)?;
    let mut normal_scores: Vec<f64> = scores.iter().zip(is_anomaly).filter(|(_, a)| !**a).map(|(s, _)| *s).collect();
    normal_scores.sort_by(|a, b| a.total_cmp(b));
    let needed = (0.95 * normals as f64).ceil() as usize;
    let threshold = normal_scores[needed.clamp(1, normals) - 1];
    let accepted = scores.iter().zip(is_anomaly).filter(|(s, a)| **a && **s <= threshold).count();
    Ok(accepted as f64 / anomalies as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_inverted_and_hand_computed() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &labels).unwrap(), 0.0);
        assert_eq!(aupr(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0);
        assert_eq!(fpr_at_95_tpr(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 0.0);
        assert_eq!(fpr_at_95_tpr(&[0.9, 0.8, 0.2, 0.1], &labels).unwrap(), 1.0);
        // Anomalies at 0.35 and 0.8, normals at 0.1, 0.4, 0.5: pairs (a > n): 0.35 beats 0.1;
        // 0.8 beats all three: 4 of 6.
        let scores = [0.1, 0.35, 0.4, 0.5, 0.8];
        let labels = [false, true, false, false, true];
        assert!((auroc(&scores, &labels).unwrap() - 4.0 / 6.0).abs() < 1e-15);
        // Ranked: 0.8 (a) p=1 r=.5; 0.5 (n); 0.4 (n); 0.35 (a) p=2/4 r=1: AP = .5 * 1 + .5 * .5.
        assert!((aupr(&scores, &labels).unwrap() - 0.75).abs() < 1e-15);
        // 95 % of 3 normals needs all 3: threshold 0.5, anomaly 0.35 accepted: FPR 1/2.
        assert_eq!(fpr_at_95_tpr(&scores, &labels).unwrap(), 0.5);
    }

    #[test]
    fn ties_count_half() {
        assert_eq!(auroc(&[1.0, 1.0], &[false, true]).unwrap(), 0.5);
        assert_eq!(auroc(&[0.0, 1.0, 1.0, 2.0], &[false, true, false, true]).unwrap(), 0.875);
        // One threshold holding everything: precision 1/2 at recall 1.
        assert_eq!(aupr(&[3.0, 3.0], &[false, true]).unwrap(), 0.5);
    }

    #[test]
    fn errors_name_the_argument() {
        assert!(matches!(auroc(&[0.0], &[true, false]), Err(Error::Shape { arg: "is_anomaly", .. })));
        assert!(matches!(auroc(&[0.0, 1.0], &[true, true]), Err(Error::InvalidArgument { arg: "is_anomaly", .. })));
        assert!(matches!(aupr(&[f64::NAN, 1.0], &[true, false]), Err(Error::InvalidArgument { arg: "scores", .. })));
    }
}
