//! contrastive-kernels: hand-written CUDA kernels for contrastive anomaly / out-of-distribution
//! detection, launched from Rust through cudarc, with a plain-Rust CPU backend that is both the
//! oracle every kernel is tested against and the fallback on machines without a GPU.
//!
//! Layers (data flows one way):
//! * [`ops`]: one folder per op, `ops::<op>`: its options and checks (shared by both backends),
//!   `ops::<op>::gpu` (the kernel launches on device memory: this crate's [`DeviceMatrix`] on the
//!   [`Gpu`]'s stream or, through the `*_raw` functions, a caller's raw device pointers on a
//!   caller's stream) and `ops::<op>::cpu` (the oracle, f64 accumulation).
//! * [`Backend`]: host matrices in, host matrices out, on the GPU when there is one and on the CPU
//!   otherwise; the one CPU / GPU dispatch, what the examples and the detector use.
//! * [`gpu`]: the runtime (context, stream, embedded kernel modules, launches).
//! * [`ffi`]: the C ABI over the `*_raw` functions (`include/contrastive_kernels.h`).
//!
//! See `DESIGN.md` for the maths and README.md for the status of each kernel.
//!
//! ```
//! use contrastive_kernels::{Backend, Matrix, SimilarityOptions};
//!
//! // The CPU backend runs anywhere; `Backend::auto()` picks the GPU when one is usable.
//! let x = Matrix::new(2, 2, vec![3.0f32, 4.0, 0.0, -2.0])?;
//! let (z, norms) = Backend::Cpu.l2_normalize::<f32, f32>(&x)?;
//! assert_eq!(z.row(0), &[0.6, 0.8]);
//! assert_eq!(norms, vec![5.0, 2.0]);
//!
//! let logits = Backend::Cpu.similarity::<f32, f32>(&x, &x, &SimilarityOptions::with_temperature(0.5)?)?;
//! assert!((logits.get(0, 1) - (-1.6)).abs() < 1e-6); // <(0.6, 0.8), (0, -1)> / 0.5
//! # Ok::<(), contrastive_kernels::Error>(())
//! ```

pub mod backend;
/// Measurement helpers for the crate's own benches (`benches/`) and `ckbench` (`src/bin/`); not
/// part of the API.
#[doc(hidden)]
pub mod bench;
/// What build.rs embedded, for the crate's own tests (`tests/kernels_build.rs`); not part of the
/// API.
#[doc(hidden)]
pub mod build_info;
pub mod data;
pub mod detect;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod gpu;
pub mod matrix;
pub mod metrics;
pub mod ops;
pub mod rng;
pub mod scores;

pub use backend::{Backend, LossContext, MlpTrainer};
pub use dtype::{DType, Element, Float, FloatElement};
pub use error::{Error, Result};
pub use gpu::{DeviceMatrix, Gpu, RawMatrix};
pub use matrix::Matrix;
pub use ops::similarity::SimilarityOptions;
pub use ops::topk::{Exclusion, TopK, TopKOptions};

/// Re-exported so callers can name streams, events and device pointers without a direct dependency.
pub use cudarc;
/// Re-exported half-precision types (the f16 / bf16 host element types).
pub use half::{bf16, f16};
