//! `similarity`: S = scale * normalize(A) normalize(B)^T for A (m x d) and B (n x d), with the
//! normalization fused (no normalized copy of A or B is written) and an optional diagonal fill
//! for self-similarity. Kernels: `kernels/similarity.cu`; oracle: [`cpu`].
//!
//! * f16 / bf16 inputs: tensor cores (mma.sync m16n8k16), f32 accumulation.
//! * f32 inputs: exact f32 FFMA (no TF32), so results keep f32 accuracy.
//! * Output: f32, f16 or bf16. Any m, n, d >= 1; d % 8 != 0 (or a 16-byte-misaligned operand)
//!   is handled by a slower element-wise loader, not rejected.
//! * NaN in a row of A (B) makes that row (column) of S NaN; a zero row gives zeros.

pub mod cpu;
pub mod gpu;

use super::check_features;
use crate::error::{Error, Result};
use crate::gpu::params::similarity::{FMA_TILE, MMA_TILE};

/// Parameters of [`gpu::similarity`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimilarityOptions {
    /// Multiplies every similarity: 1 / temperature for logits. Must be finite.
    pub scale: f32,
    /// `Some(v)`: `S[i][i] = v` for every i < min(m, n) (e.g. f32::NEG_INFINITY to drop self-pairs).
    pub mask_diagonal: Option<f32>,
}

impl Default for SimilarityOptions {
    fn default() -> Self {
        SimilarityOptions { scale: 1.0, mask_diagonal: None }
    }
}

impl SimilarityOptions {
    /// Plain cosine similarities.
    pub fn cosine() -> Self {
        Self::default()
    }

    /// Logits at temperature `tau` (scale = 1 / tau); `tau` must be finite and > 0.
    pub fn with_temperature(tau: f32) -> Result<Self> {
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(Error::invalid("temperature", format!("must be finite and > 0, got {tau}")));
        }
        Ok(SimilarityOptions { scale: 1.0 / tau, mask_diagonal: None })
    }

    pub fn mask_diagonal(mut self, fill: f32) -> Self {
        self.mask_diagonal = Some(fill);
        self
    }
}

/// Validation shared by every backend.
pub fn check(a: (usize, usize), b: (usize, usize), opts: &SimilarityOptions) -> Result<()> {
    check_features("a", a.0, a.1)?;
    check_features("b", b.0, b.1)?;
    if a.1 != b.1 {
        return Err(Error::shape("b", format!("{} columns (the d of a)", a.1), format!("{} x {}", b.0, b.1)));
    }
    if !opts.scale.is_finite() {
        return Err(Error::invalid("scale", format!("must be finite, got {}", opts.scale)));
    }
    let tile = MMA_TILE.min(FMA_TILE);
    if a.0.div_ceil(tile) > 65_535 {
        return Err(Error::shape("a", format!("at most {} rows", 65_535 * tile), format!("{} rows", a.0)));
    }
    Ok(())
}
