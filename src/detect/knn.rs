//! The kNN anomaly score of DESIGN.md section 5 (deep nearest neighbours, Sun et al. 2022): the
//! k-th largest cosine similarity s_(k) of a query against a bank of training features, returned
//! as the anomaly score -s_(k) (higher = more anomalous; the same order as the distance form
//! 2 - 2 s_(k) of [`crate::scores::knn_distance`]).
//!
//! The neighbours come from [`Backend::topk`]: the fused top-k kernel on a GPU, its exact f64
//! oracle on the CPU.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::ops::topk::TopKOptions;

/// Anomaly scores -s_(k) of every query row against the bank (both n x d), k in 1..=bank rows.
pub fn knn_scores(backend: &Backend, bank: &Matrix<f32>, queries: &Matrix<f32>, k: usize) -> Result<Vec<f64>> {
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
    let neighbours = backend.topk(queries, bank, &TopKOptions::new(k))?;
    Ok((0..queries.rows()).map(|i| -(neighbours.row_values(i)[k - 1] as f64)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // Bank: e1, e2, (1, 1). Query (1, 0): cosines 1, 0, 1/sqrt 2 -> s_(1) = 1, s_(2) = 0.7071.
        let bank = Matrix::new(3, 2, vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0]).unwrap();
        let q = Matrix::new(2, 2, vec![3.0, 0.0, 0.0, 0.0]).unwrap();
        let s1 = knn_scores(&Backend::Cpu, &bank, &q, 1).unwrap();
        assert_eq!(s1[0], -1.0);
        let s2 = knn_scores(&Backend::Cpu, &bank, &q, 2).unwrap();
        assert!((s2[0] + 0.5f64.sqrt()).abs() < 1e-7); // Backend::topk returns f32 similarities
        assert_eq!(knn_scores(&Backend::Cpu, &bank, &q, 3).unwrap()[0], 0.0);
        // The zero query has cosine 0 with everything.
        assert_eq!(s1[1], 0.0);
    }

    #[test]
    fn errors_name_the_argument() {
        let bank = Matrix::new(2, 2, vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &bank, 3), Err(Error::InvalidArgument { arg: "k", .. })));
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &bank, 0), Err(Error::InvalidArgument { arg: "k", .. })));
        let q = Matrix::new(1, 3, vec![1.0f32, 0.0, 0.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &q, 1), Err(Error::Shape { arg: "queries", .. })));
        let nan = Matrix::new(1, 2, vec![f32::NAN, 0.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &nan, 1), Err(Error::InvalidArgument { arg: "queries", .. })));
        let empty = Matrix::<f32>::new(0, 2, vec![]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &empty, &q, 1), Err(Error::Shape { arg: "bank", .. })));
    }
}
