//! Oracle of `l2_normalize`: u = x / max(||x||, eps), and its backward.

use super::norm_denominator;
use crate::dtype::Float;
use crate::matrix::Matrix;

/// ||x_i|| of each row, in f64.
pub fn row_norms<T: Float>(x: &Matrix<T>) -> Vec<f64> {
    (0..x.rows()).map(|i| x.row(i).iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt()).collect()
}

/// The unit rows (f64) and the row norms. A row holding NaN gives a NaN norm and an all-NaN row;
/// a zero row gives a zero row (the eps clamp).
pub fn l2_normalize<T: Float>(x: &Matrix<T>) -> (Matrix<f64>, Vec<f64>) {
    let norms = row_norms(x);
    let z = Matrix::from_fn(x.rows(), x.cols(), |i, j| x.get(i, j).to_f64() / norm_denominator(norms[i]));
    (z, norms)
}

/// dx = (dz - z <z, dz>) / ||x|| where ||x|| > eps; dx = dz / eps where the clamp is active
/// (the denominator is then the constant eps: the exact derivative of the forward, and torch's).
pub fn l2_normalize_backward<T: Float, U: Float>(x: &Matrix<T>, dz: &Matrix<U>) -> Matrix<f64> {
    let norms = row_norms(x);
    let mut dx = Matrix::from_fn(x.rows(), x.cols(), |_, _| 0.0);
    let d = x.cols();
    for (i, &norm) in norms.iter().enumerate() {
        let xr = x.row(i);
        let dzr = dz.row(i);
        let out = &mut dx.data_mut()[i * d..(i + 1) * d];
        if norm <= super::NORM_EPS {
            for j in 0..d {
                out[j] = dzr[j].to_f64() / super::NORM_EPS;
            }
        } else {
            let x_dot_dz: f64 = xr.iter().zip(dzr).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            let proj = x_dot_dz / (norm * norm);
            for j in 0..d {
                out[j] = (dzr[j].to_f64() - xr[j].to_f64() * proj) / norm;
            }
        }
    }
    dx
}
