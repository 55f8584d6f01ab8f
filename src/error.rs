//! The crate's error type: every failure says what went wrong and, for bad input, which argument
//! and what was expected.

use std::fmt;

use cudarc::driver::DriverError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The crate was built without nvcc, so no kernel is embedded.
    KernelsNotCompiled(String),
    /// libcuda (the NVIDIA driver) could not be loaded.
    NoDriver(String),
    /// The driver loaded but there is no usable device (or not the requested ordinal).
    NoDevice(String),
    /// An argument has the wrong shape or length.
    Shape { arg: &'static str, expected: String, got: String },
    /// An argument is out of its valid range (a temperature <= 0, a misaligned pointer, ...).
    InvalidArgument { arg: &'static str, reason: String },
    /// A CUDA driver call failed; `op` names the kernel or operation.
    Cuda { op: String, source: DriverError },
    /// A cuBLAS call failed (the unfused baseline); `op` names it.
    Blas { op: String, message: String },
}

impl Error {
    pub(crate) fn shape(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape { arg, expected: expected.into(), got: got.into() }
    }
    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { arg, reason: reason.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KernelsNotCompiled(why) => write!(f, "built without CUDA kernels: {why}"),
            Error::NoDriver(why) => write!(f, "no CUDA driver: {why}"),
            Error::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            Error::Shape { arg, expected, got } => write!(f, "`{arg}`: expected {expected}, got {got}"),
            Error::InvalidArgument { arg, reason } => write!(f, "`{arg}`: {reason}"),
            Error::Cuda { op, source } => write!(f, "CUDA error in {op}: {source}"),
            Error::Blas { op, message } => write!(f, "cuBLAS error in {op}: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cuda { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attaches the name of the kernel or operation to a driver error.
pub(crate) trait CudaContext<T> {
    fn during(self, op: impl fmt::Display) -> Result<T>;
}

impl<T> CudaContext<T> for std::result::Result<T, DriverError> {
    fn during(self, op: impl fmt::Display) -> Result<T> {
        self.map_err(|source| Error::Cuda { op: op.to_string(), source })
    }
}
