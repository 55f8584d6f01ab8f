//! The CPU oracle: every op of the library in plain Rust with f64 accumulation, written to be
//! obviously right rather than fast. GPU results are tested against it, and the [`crate::Backend`]
//! falls back to it on machines without a GPU.

pub mod contrastive;
pub mod kmeans;
pub mod mlp;
pub mod normalize;
mod select_model;
pub mod similarity;
pub mod topk;

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
