//! Device matrices: this crate's own (`DeviceMatrix`) and a caller's (`RawMatrix`).

use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr};

use super::Gpu;
use crate::dtype::{DType, Element};
use crate::error::{CudaContext as _, Error, Result};
use crate::matrix::Matrix;

/// A row-major rows x cols matrix in device memory owned by this crate.
pub struct DeviceMatrix<T> {
    rows: usize,
    cols: usize,
    buf: CudaSlice<T>,
}

impl<T: Element> DeviceMatrix<T> {
    pub fn from_slice(buf: CudaSlice<T>, rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(buf.len()) {
            return Err(Error::shape("buf", format!("{rows} x {cols} elements"), format!("{} elements", buf.len())));
        }
        Ok(DeviceMatrix { rows, cols, buf })
    }

    pub fn zeros(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        let len = rows.checked_mul(cols).ok_or_else(|| Error::invalid("rows * cols", "overflows usize"))?;
        let buf = gpu.stream().alloc_zeros::<T>(len.max(1)).during("device allocation")?;
        // alloc of 0 bytes is not allowed by the driver: keep one element, expose none.
        Ok(DeviceMatrix { rows, cols, buf })
    }

    pub fn upload(gpu: &Gpu, host: &Matrix<T>) -> Result<Self> {
        let buf = if host.data().is_empty() {
            gpu.stream().alloc_zeros::<T>(1).during("device allocation")?
        } else {
            gpu.stream().clone_htod(host.data()).during("host-to-device copy")?
        };
        Ok(DeviceMatrix { rows: host.rows(), cols: host.cols(), buf })
    }

    pub fn download(&self, gpu: &Gpu) -> Result<Matrix<T>> {
        let mut data = gpu.stream().clone_dtoh(&self.buf).during("device-to-host copy")?;
        data.truncate(self.rows * self.cols);
        Matrix::new(self.rows, self.cols, data)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.buf
    }
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.buf
    }
    pub fn into_slice(self) -> CudaSlice<T> {
        self.buf
    }

    /// The raw view the launch functions take. The returned guard records the use on `stream`
    /// when dropped: keep it alive until the launch has been queued.
    pub(crate) fn raw<'a>(&'a self, stream: &'a CudaStream) -> (RawMatrix, impl Drop + 'a) {
        let (ptr, guard) = self.buf.device_ptr(stream);
        (RawMatrix { ptr, rows: self.rows, cols: self.cols, dtype: T::DTYPE }, guard)
    }
}

/// A row-major rows x cols matrix in device memory the caller owns: a raw device pointer
/// (`CUdeviceptr`), its shape and its element type. Rows are contiguous (row stride = cols).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMatrix {
    pub ptr: sys::CUdeviceptr,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
}

impl RawMatrix {
    pub fn new(ptr: sys::CUdeviceptr, rows: usize, cols: usize, dtype: DType) -> Self {
        RawMatrix { ptr, rows, cols, dtype }
    }

    /// Checks what a kernel may assume of any pointer: non-null when it holds elements, and
    /// aligned to its element size.
    pub(crate) fn check_pointer(&self, arg: &'static str) -> Result<()> {
        if self.rows * self.cols > 0 && self.ptr == 0 {
            return Err(Error::invalid(arg, "null device pointer"));
        }
        if self.ptr % self.dtype.size_bytes() as u64 != 0 {
            return Err(Error::invalid(
                arg,
                format!("device pointer {:#x} is not aligned to its {}-byte {} elements", self.ptr, self.dtype.size_bytes(), self.dtype),
            ));
        }
        Ok(())
    }
}
