//! A row-major host matrix: the CPU backend's input and output, and what is uploaded to the GPU.

use crate::dtype::Float;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T> Matrix<T> {
    /// `data` holds `rows * cols` elements, row by row.
    pub fn new(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        match rows.checked_mul(cols) {
            Some(len) if len == data.len() => Ok(Matrix { rows, cols, data }),
            _ => Err(Error::shape(
                "data",
                format!("{rows} x {cols} = {} elements", rows.saturating_mul(cols)),
                format!("{} elements", data.len()),
            )),
        }
    }

    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Matrix { rows, cols, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn data(&self) -> &[T] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    pub fn get(&self, i: usize, j: usize) -> &T {
        &self.data[i * self.cols + j]
    }

    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Matrix<U> {
        Matrix { rows: self.rows, cols: self.cols, data: self.data.iter().map(f).collect() }
    }
}

impl<T: Float> Matrix<T> {
    /// Converts element-wise through f64 (round to nearest in the target type).
    pub fn cast<U: Float>(&self) -> Matrix<U> {
        self.map(|v| U::from_f64(v.to_f64()))
    }
}
