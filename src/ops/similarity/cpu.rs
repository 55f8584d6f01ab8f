//! Oracle of `similarity`: S = scale * normalize(A) normalize(B)^T, optional diagonal fill.

use super::SimilarityOptions;
use crate::dtype::Float;
use crate::matrix::Matrix;
use crate::ops::normalize::{cpu::row_norms, norm_denominator};

/// S (m x n) in f64, computed as the kernels define it: scale * <a_i, b_j> / (max(|a_i|, eps) max(|b_j|, eps)).
pub fn similarity<T: Float>(a: &Matrix<T>, b: &Matrix<T>, opts: &SimilarityOptions) -> Matrix<f64> {
    let (na, nb) = (row_norms(a), row_norms(b));
    let scale = opts.scale as f64;
    Matrix::from_fn(a.rows(), b.rows(), |i, j| {
        if let Some(fill) = opts.mask_diagonal {
            if i == j {
                return fill as f64;
            }
        }
        let dot: f64 = a.row(i).iter().zip(b.row(j)).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
        scale * dot / (norm_denominator(na[i]) * norm_denominator(nb[j]))
    })
}
