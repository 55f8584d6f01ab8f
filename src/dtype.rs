//! Element types: f32, f16, bf16 (features) and i32 (ids), on the host and the device.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
}

impl DType {
    /// The suffix of kernel names (`similarity_f16_f32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A type that lives in device buffers.
pub trait Element: DeviceRepr + ValidAsZeroBits + bytemuck::Pod + Default + Send + Sync + 'static {
    const DTYPE: DType;
}

/// A real number type of the host side (f64 included: the oracle's type).
pub trait Float: Copy + Default + PartialOrd + std::fmt::Debug + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    /// Rounds to nearest (ties to even), as the kernels' conversions do.
    fn from_f64(v: f64) -> Self;
}

/// A floating element type of the kernels: f32, f16 or bf16.
pub trait FloatElement: Element + Float {}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}
impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Float for f16 {
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}
impl Float for bf16 {
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

impl FloatElement for f32 {}
impl FloatElement for f16 {}
impl FloatElement for bf16 {}

/// The unit roundoff of a dtype (half the gap between 1 and the next number): tests scale their
/// error bounds by it.
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::EPSILON as f64 / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        DType::I32 => 0.0,
    }
}
