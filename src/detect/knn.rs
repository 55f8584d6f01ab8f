//! The kNN anomaly score of DESIGN.md section 5 (deep nearest neighbours, Sun et al. 2022): the
//! k-th largest cosine similarity s_(k) of a query against a bank of training features, returned
//! as the anomaly score -s_(k) (higher = more anomalous; the same order as the distance form
//! 2 - 2 s_(k)).
//!
//! This is the exact CPU scorer. The fused GPU top-k (kernels/topk.cu, another issue) replaces
//! [`knn_scores`] behind the same signature; the detector calls nothing else.

use crate::cpu::norm_denominator;
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Unit rows in f64 (a zero row stays zero: its cosines are 0, as the kernels' eps rule gives).
fn unit_rows(x: &Matrix<f32>) -> Vec<f64> {
    let d = x.cols();
    let mut out = Vec::with_capacity(x.rows() * d);
    for i in 0..x.rows() {
        let row = x.row(i);
        let norm = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
        let inv = 1.0 / norm_denominator(norm);
        out.extend(row.iter().map(|v| *v as f64 * inv));
    }
    out
}

/// Anomaly scores -s_(k) of every query row against the bank (both n x d), k in 1..=bank rows.
pub fn knn_scores(bank: &Matrix<f32>, queries: &Matrix<f32>, k: usize) -> Result<Vec<f64>> {
    if bank.rows() == 0 {
        return Err(Error::shape("bank", "at least one row", "0 rows"));
    }
    if queries.cols() != bank.cols() {
        return Err(Error::shape("queries", format!("{} columns (the d of bank)", bank.cols()), format!("{} x {}", queries.rows(), queries.cols())));
    }
    if k == 0 || k > bank.rows() {
        return Err(Error::invalid("k", format!("must be in 1..={} (the bank's rows), got {k}", bank.rows())));
    }
    if let Some(i) = bank.data().iter().chain(queries.data()).position(|v| !v.is_finite()) {
        return Err(Error::invalid(if i < bank.data().len() { "bank" } else { "queries" }, "holds a non-finite value"));
    }
    let d = bank.cols();
    let (b, q) = (unit_rows(bank), unit_rows(queries));
    let mut sims = vec![0.0f64; bank.rows()];
    Ok((0..queries.rows())
        .map(|i| {
            let qi = &q[i * d..(i + 1) * d];
            for (j, s) in sims.iter_mut().enumerate() {
                *s = qi.iter().zip(&b[j * d..(j + 1) * d]).map(|(x, y)| x * y).sum();
            }
            // The k-th largest: select_nth on the descending order.
            let (_, kth, _) = sims.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            -*kth
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // Bank: e1, e2, (1, 1). Query (1, 0): cosines 1, 0, 1/sqrt 2 -> s_(1) = 1, s_(2) = 0.7071.
        let bank = Matrix::new(3, 2, vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0]).unwrap();
        let q = Matrix::new(2, 2, vec![3.0, 0.0, 0.0, 0.0]).unwrap();
        let s1 = knn_scores(&bank, &q, 1).unwrap();
        assert_eq!(s1[0], -1.0);
        let s2 = knn_scores(&bank, &q, 2).unwrap();
        assert!((s2[0] + 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(knn_scores(&bank, &q, 3).unwrap()[0], 0.0);
        // The zero query has cosine 0 with everything.
        assert_eq!(s1[1], 0.0);
    }

    #[test]
    fn errors_name_the_argument() {
        let bank = Matrix::new(2, 2, vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(knn_scores(&bank, &bank, 3), Err(Error::InvalidArgument { arg: "k", .. })));
        assert!(matches!(knn_scores(&bank, &bank, 0), Err(Error::InvalidArgument { arg: "k", .. })));
        let q = Matrix::new(1, 3, vec![1.0f32, 0.0, 0.0]).unwrap();
        assert!(matches!(knn_scores(&bank, &q, 1), Err(Error::Shape { arg: "queries", .. })));
        let nan = Matrix::new(1, 2, vec![f32::NAN, 0.0]).unwrap();
        assert!(matches!(knn_scores(&bank, &nan, 1), Err(Error::InvalidArgument { arg: "queries", .. })));
        let empty = Matrix::<f32>::new(0, 2, vec![]).unwrap();
        assert!(matches!(knn_scores(&empty, &q, 1), Err(Error::Shape { arg: "bank", .. })));
    }
}
