//! Host-only scoring: detection metrics and anomaly scores from top-k results or raw features.

use super::args::{elements, host_slice, size, try_to_vec};
use super::status::guard;
use crate::error::{Error, Result};

/// AUROC, AUPR and FPR at 95% TPR (anomalies positive, higher score = more anomalous; ties
/// handled exactly, `src/metrics.rs`) of host score arrays. Needs no GPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CkDetectionReport {
    pub auroc: f64,
    pub aupr: f64,
    pub fpr_at_95_tpr: f64,
}

/// Fills `out` from `n_inliers` inlier and `n_outliers` outlier scores (host memory).
///
/// # Safety
/// The arrays hold their counts of doubles; `out` is valid to write.
#[no_mangle]
pub unsafe extern "C" fn ck_detection_report(
    inlier_scores: *const f64,
    n_inliers: i64,
    outlier_scores: *const f64,
    n_outliers: i64,
    out: *mut CkDetectionReport,
) -> i32 {
    guard(|| {
        // SAFETY: the C contract above.
        let slice = |arg: &'static str, p: *const f64, n: i64| -> Result<&[f64]> { unsafe { host_slice(arg, p, size(arg, n)?) } };
        if out.is_null() {
            return Err(Error::invalid("out", "null pointer"));
        }
        let r = crate::metrics::report(
            slice("inlier_scores", inlier_scores, n_inliers)?,
            slice("outlier_scores", outlier_scores, n_outliers)?,
        )?;
        out.write(CkDetectionReport { auroc: r.auroc, aupr: r.aupr, fpr_at_95_tpr: r.fpr_at_95_tpr });
        Ok(())
    })
}

pub const CK_SCORE_KNN_DISTANCE: i32 = 0;
pub const CK_SCORE_MEAN_TOPK: i32 = 1;
pub const CK_SCORE_NORM_WEIGHTED_MEAN_TOPK: i32 = 2;
pub const CK_SCORE_CSI: i32 = 3;

/// A rows x cols f32 host matrix (copied; sizes checked first).
unsafe fn score_matrix(arg: &'static str, p: *const f32, rows: i64, cols: i64) -> Result<crate::Matrix<f32>> {
    let (rows, cols) = (size(arg, rows)?, size(arg, cols)?);
    unsafe { super::args::host_matrix(arg, p as *const std::ffi::c_void, rows, cols) }
}

/// `out`, `len` doubles, writable.
unsafe fn out_slice<'a>(out: *mut f64, len: usize) -> Result<&'a mut [f64]> {
    if out.is_null() {
        return Err(Error::invalid("out", "null pointer"));
    }
    unsafe { super::args::host_slice_mut("out", out, len) }
}

/// An anomaly score per query from `ck_topk`'s values copied to the host (`values`: rows x k f32,
/// descending), DESIGN.md section 5: `CK_SCORE_KNN_DISTANCE` (2 - 2 s_(kth), higher = more
/// anomalous), `CK_SCORE_MEAN_TOPK` (mean of the first kth, FIRM's cos_k; higher = more normal),
/// `CK_SCORE_NORM_WEIGHTED_MEAN_TOPK` (that times the query's norm from `norms`), `CK_SCORE_CSI`
/// (max cosine times the norm). `norms` (rows f32) may be NULL for the first two. Host only.
///
/// # Safety
/// The host arrays hold their sizes; `out` holds `rows` doubles.
#[no_mangle]
pub unsafe extern "C" fn ck_topk_score(
    kind: i32,
    values: *const f32,
    rows: i64,
    k: i64,
    kth: i64,
    norms: *const f32,
    out: *mut f64,
) -> i32 {
    guard(|| {
        let (rows, k, kth) = (size("rows", rows)?, size("k", k)?, size("kth", kth)?);
        let len = elements("values", rows, k, 8)?; // 8: the copy of values and the unused indices
        let out = unsafe { out_slice(out, rows)? };
        let mut indices = Vec::new();
        indices.try_reserve_exact(len).map_err(|_| Error::invalid("values", format!("cannot allocate {len} host indices")))?;
        indices.resize(len, 0);
        let topk =
            crate::ops::topk::TopK { rows, k, values: try_to_vec("values", unsafe { host_slice("values", values, len)? })?, indices };
        let norms = || unsafe { host_slice("norms", norms, rows) };
        let scores = match kind {
            CK_SCORE_KNN_DISTANCE => crate::scores::knn_distance(&topk, kth)?,
            CK_SCORE_MEAN_TOPK => crate::scores::mean_topk_similarity(&topk, kth)?,
            CK_SCORE_NORM_WEIGHTED_MEAN_TOPK => crate::scores::norm_weighted_mean_topk(&topk, kth, norms()?)?,
            CK_SCORE_CSI => crate::scores::csi_score(&topk, norms()?)?,
            _ => return Err(Error::invalid("kind", format!("CK_SCORE_KNN_DISTANCE (0) .. CK_SCORE_CSI (3); got {kind}"))),
        };
        out.copy_from_slice(&scores);
        Ok(())
    })
}

/// OECL's norm score (||x|| of each row; higher = more normal) of n x d host features.
///
/// # Safety
/// `features` holds n x d floats, `out` n doubles.
#[no_mangle]
pub unsafe extern "C" fn ck_norm_score(features: *const f32, n: i64, d: i64, out: *mut f64) -> i32 {
    guard(|| {
        let out = unsafe { out_slice(out, size("n", n)?)? };
        let x = unsafe { score_matrix("features", features, n, d)? };
        out.copy_from_slice(&crate::scores::norm_score(&x));
        Ok(())
    })
}

/// MCOD's memory score ||h - M^T softmax(M h / temperature)||^2 (higher = more anomalous) of n x d
/// host features `h` against `k` x d memory items. Host only.
///
/// # Safety
/// The arrays hold their sizes; `out` holds n doubles.
#[no_mangle]
pub unsafe extern "C" fn ck_mcod_score(h: *const f32, n: i64, d: i64, memory: *const f32, k: i64, temperature: f64, out: *mut f64) -> i32 {
    guard(|| {
        let out = unsafe { out_slice(out, size("n", n)?)? };
        let h = unsafe { score_matrix("h", h, n, d)? };
        let memory = unsafe { score_matrix("memory", memory, k, d)? };
        out.copy_from_slice(&crate::scores::mcod_memory_score(&h, &memory, temperature)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::status::tests::message;
    use crate::ffi::status::{CK_ERR_INVALID_ARGUMENT, CK_OK};

    #[test]
    fn detection_report_without_a_gpu() {
        let (inl, out) = ([0.1, 0.2, 0.3], [0.25, 0.9]);
        let mut r = CkDetectionReport { auroc: 0.0, aupr: 0.0, fpr_at_95_tpr: 0.0 };
        // SAFETY: valid arrays and output.
        assert_eq!(unsafe { ck_detection_report(inl.as_ptr(), 3, out.as_ptr(), 2, &mut r) }, CK_OK);
        // Pairs (outlier > inlier): 0.25 beats 0.1, 0.2; 0.9 beats all three: 5 of 6.
        assert!((r.auroc - 5.0 / 6.0).abs() < 1e-12, "{r:?}");
        assert_eq!(unsafe { ck_detection_report(std::ptr::null(), 3, out.as_ptr(), 2, &mut r) }, CK_ERR_INVALID_ARGUMENT);
        assert!(message().contains("inlier_scores"));
    }

    #[test]
    fn scores_without_a_gpu() {
        // Two queries, k = 2: values (0.9, 0.5) and (0.2, -0.4).
        let values = [0.9f32, 0.5, 0.2, -0.4];
        let norms = [2.0f32, 0.5];
        let mut out = [0.0f64; 2];
        let run = |kind, kth, norms: *const f32, out: &mut [f64; 2]| unsafe {
            ck_topk_score(kind, values.as_ptr(), 2, 2, kth, norms, out.as_mut_ptr())
        };
        assert_eq!(run(CK_SCORE_KNN_DISTANCE, 2, std::ptr::null(), &mut out), CK_OK);
        assert!((out[0] - 1.0).abs() < 1e-6 && (out[1] - 2.8).abs() < 1e-6, "{out:?}");
        assert_eq!(run(CK_SCORE_CSI, 1, norms.as_ptr(), &mut out), CK_OK);
        assert!((out[0] - 1.8).abs() < 1e-6 && (out[1] - 0.1).abs() < 1e-6, "{out:?}");
        assert_eq!(run(CK_SCORE_CSI, 1, std::ptr::null(), &mut out), CK_ERR_INVALID_ARGUMENT);
        assert!(message().contains("norms"));
        assert_eq!(run(9, 1, std::ptr::null(), &mut out), CK_ERR_INVALID_ARGUMENT);
        let x = [3.0f32, 4.0];
        let mut n = [0.0f64];
        assert_eq!(unsafe { ck_norm_score(x.as_ptr(), 1, 2, n.as_mut_ptr()) }, CK_OK);
        assert_eq!(n[0], 5.0);
    }
}
