//! `l2_normalize`: rows of X (n x d) to unit rows Z = X / max(||x||, 1e-12) plus the row norms
//! (f32), and the backward dX. Kernels: `kernels/normalize.cu`; oracle: [`cpu`].
//!
//! NaN: a row holding a NaN gets a NaN norm and an all-NaN output row, in both directions (as
//! torch.nn.functional.normalize). A zero row gives a zero row (norm 0 <= eps).

pub mod cpu;
pub mod gpu;

use super::{check_features, check_same_shape};
use crate::error::Result;

/// torch.nn.functional.normalize's eps, applied to the norm.
pub const NORM_EPS: f64 = 1e-12;

/// max(norm, eps) with NaN kept (torch's clamp_min propagates NaN).
pub fn norm_denominator(norm: f64) -> f64 {
    if norm <= NORM_EPS {
        NORM_EPS
    } else {
        norm
    }
}

/// Validation shared by every backend: `x` is n x d with d >= 1.
pub fn check_forward(x_rows: usize, x_cols: usize) -> Result<()> {
    check_features("x", x_rows, x_cols)
}

/// Validation shared by every backend: `dz` has the shape of `x`.
pub fn check_backward(x: (usize, usize), dz: (usize, usize)) -> Result<()> {
    check_features("x", x.0, x.1)?;
    check_same_shape("dz", x, dz)
}
