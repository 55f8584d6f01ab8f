//! Detection metrics against values computed by hand (ties included), and their argument errors.

use contrastive_kernels::metrics::{aupr, auroc, fpr_at_tpr, report};
use contrastive_kernels::Error;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

#[test]
fn no_ties() {
    // Sorted: 0.35 out, 0.3 in, 0.25 out, 0.2 in, 0.1 in.
    let (inl, out) = ([0.1, 0.2, 0.3], [0.25, 0.35]);
    // 5 of the 6 (outlier, inlier) pairs are ordered (0.25 < 0.3 is the one that is not).
    assert!(close(auroc(&inl, &out).unwrap(), 5.0 / 6.0));
    // Recall 1/2 at precision 1 (t = 0.35), recall 1 at precision 2/3 (t = 0.25).
    assert!(close(aupr(&inl, &out).unwrap(), 0.5 * 1.0 + 0.5 * 2.0 / 3.0));
    // TPR >= 95% first at t = 0.25, where one inlier of three is above.
    assert!(close(fpr_at_tpr(&inl, &out, 0.95).unwrap(), 1.0 / 3.0));
}

#[test]
fn ties_count_half_and_move_together() {
    // 0.9 out | 0.5 out, 0.5 in, 0.5 in | 0.1 in
    let (inl, out) = ([0.5, 0.5, 0.1], [0.5, 0.9]);
    // 0.9 beats 3 inliers; 0.5 ties two (2 x 1/2) and beats one: (3 + 1 + 1) / 6.
    assert!(close(auroc(&inl, &out).unwrap(), 5.0 / 6.0));
    // t = 0.9: recall 1/2, precision 1; t = 0.5 (the tie block at once): recall 1, precision 2/4.
    assert!(close(aupr(&inl, &out).unwrap(), 0.5 + 0.5 * 0.5));
    // Both outliers flagged only at t = 0.5, which also flags both tied inliers.
    assert!(close(fpr_at_tpr(&inl, &out, 0.95).unwrap(), 2.0 / 3.0));
    // -0 and +0 are one threshold.
    assert!(close(auroc(&[0.0], &[-0.0]).unwrap(), 0.5));
}

#[test]
fn extremes_and_rounding_of_the_tpr() {
    let r = report(&[0.0, 0.1], &[0.5, 0.7, 0.9]).unwrap();
    assert_eq!((r.auroc, r.aupr, r.fpr_at_95_tpr), (1.0, 1.0, 0.0));
    let r = report(&[0.5, 0.7], &[0.0, 0.1]).unwrap();
    assert_eq!(r.auroc, 0.0);
    assert_eq!(r.fpr_at_95_tpr, 1.0);
    assert!(close(r.aupr, 0.5 * 1.0 / 3.0 + 0.5 * 2.0 / 4.0), "{}", r.aupr);
    // 20 outliers: 95% TPR is 19 of them, not 20 (0.95 * 20 must not round up to 20).
    let out: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(fpr_at_tpr(&[1.5], &out, 0.95).unwrap(), 0.0);
    assert_eq!(fpr_at_tpr(&[1.5], &out, 1.0).unwrap(), 1.0);
}

#[test]
fn errors_name_the_argument() {
    let arg = |e: Error| match e {
        Error::InvalidArgument { arg, .. } => arg,
        other => panic!("{other}"),
    };
    assert_eq!(arg(auroc(&[], &[1.0]).unwrap_err()), "inlier_scores");
    assert_eq!(arg(aupr(&[1.0], &[]).unwrap_err()), "outlier_scores");
    assert_eq!(arg(report(&[1.0, f64::NAN], &[1.0]).unwrap_err()), "inlier_scores");
    assert_eq!(arg(fpr_at_tpr(&[1.0], &[2.0], 0.0).unwrap_err()), "tpr");
    assert_eq!(arg(fpr_at_tpr(&[1.0], &[2.0], 1.5).unwrap_err()), "tpr");
}
