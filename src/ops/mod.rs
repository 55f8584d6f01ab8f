//! The public operations, one folder per kernel file (`kernels/<name>.cu`):
//!
//! * `ops/<op>/mod.rs`: the op's options, result types and `check*` functions, shared by both
//!   backends;
//! * `ops/<op>/gpu.rs`: the launches: a safe entry point on [`crate::DeviceMatrix`] that runs on
//!   the [`crate::Gpu`]'s default stream, and an `unsafe` `*_raw` one on [`crate::RawMatrix`]
//!   (caller-owned device pointers) and any stream (see [`crate::Gpu::borrow_stream`]), for
//!   frameworks that own their memory; `contrastive/unfused.rs` is the unfused GPU baseline;
//! * `ops/<op>/cpu.rs`: the oracle in plain Rust (f64 accumulation); it imports the op's
//!   `mod.rs`, never its `gpu.rs`.
//!
//! [`crate::Backend`] is the host-matrix form of every op, on the GPU or the CPU oracle. All of
//! them validate with the same `check*` functions, so bad input gets the same `Err` whichever
//! backend runs.

pub mod augment;
pub mod contrastive;
pub mod kmeans;
pub mod mlp;
pub mod normalize;
pub mod similarity;
pub mod topk;

use crate::dtype::DType;
use crate::error::{Error, Result};

pub(crate) fn check_float(arg: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::invalid(arg, format!("expected an f32, f16 or bf16 matrix, got {dtype}")))
    }
}

/// Rows and columns the kernels can index (i32 sizes, d >= 1).
pub(crate) fn check_features(arg: &'static str, rows: usize, cols: usize) -> Result<()> {
    if cols == 0 {
        return Err(Error::shape(arg, "at least one feature column (d >= 1)", format!("{rows} x 0")));
    }
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return Err(Error::shape(arg, "rows and columns below 2^31", format!("{rows} x {cols}")));
    }
    Ok(())
}

pub(crate) fn check_same_shape(arg: &'static str, expected: (usize, usize), got: (usize, usize)) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::shape(arg, format!("{} x {}", expected.0, expected.1), format!("{} x {}", got.0, got.1)))
    }
}
