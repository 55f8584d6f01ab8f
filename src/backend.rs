//! Host matrices in, host matrices out, on the GPU when one is usable and on the CPU oracle
//! otherwise. Both paths validate with the same `ops::*::check*` functions.

use crate::cpu;
use crate::cpu::topk::TopK;
use crate::dtype::FloatElement;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceMatrix, Gpu};
use crate::matrix::Matrix;
use crate::ops::{
    self,
    kmeans::{KMeans, KMeansOptions},
    similarity::SimilarityOptions,
    topk::TopKOptions,
};

#[derive(Clone, Debug)]
pub enum Backend {
    /// The CPU oracle (f64 accumulation, results rounded to the requested dtype).
    Cpu,
    Gpu(Gpu),
}

impl Backend {
    /// The first GPU if it is usable, else the CPU together with the reason the GPU is not used.
    pub fn auto() -> (Backend, Option<Error>) {
        match Gpu::first() {
            Ok(gpu) => (Backend::Gpu(gpu), None),
            Err(why) => (Backend::Cpu, Some(why)),
        }
    }

    /// "GPU: NVIDIA H100 ... (sm_90)" or "CPU (oracle)".
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "CPU (f64 oracle)".into(),
            Backend::Gpu(gpu) => format!("GPU: {}", gpu.describe()),
        }
    }

    /// Unit rows of `x` (in `TZ`) and the row norms.
    pub fn l2_normalize<TX: FloatElement, TZ: FloatElement>(&self, x: &Matrix<TX>) -> Result<(Matrix<TZ>, Vec<f32>)> {
        ops::normalize::check_forward(x.rows(), x.cols())?;
        match self {
            Backend::Cpu => {
                let (z, norms) = cpu::normalize::l2_normalize(x);
                Ok((z.cast(), norms.into_iter().map(|v| v as f32).collect()))
            }
            Backend::Gpu(gpu) => {
                let dx = DeviceMatrix::upload(gpu, x)?;
                let (z, norms) = ops::normalize::l2_normalize::<TX, TZ>(gpu, &dx)?;
                let norms = gpu.stream().clone_dtoh(&norms).during("device-to-host copy")?;
                Ok((z.download(gpu)?, norms[..x.rows()].to_vec()))
            }
        }
    }

    /// dX (in `TX`) given X and the upstream gradient dZ.
    pub fn l2_normalize_backward<TX: FloatElement, TZ: FloatElement>(&self, x: &Matrix<TX>, dz: &Matrix<TZ>) -> Result<Matrix<TX>> {
        ops::normalize::check_backward((x.rows(), x.cols()), (dz.rows(), dz.cols()))?;
        match self {
            Backend::Cpu => Ok(cpu::normalize::l2_normalize_backward(x, dz).cast()),
            Backend::Gpu(gpu) => {
                let (dx_x, dx_dz) = (DeviceMatrix::upload(gpu, x)?, DeviceMatrix::upload(gpu, dz)?);
                ops::normalize::l2_normalize_backward(gpu, &dx_x, &dx_dz)?.download(gpu)
            }
        }
    }

    /// S = scale * normalize(A) normalize(B)^T (in `TOut`).
    pub fn similarity<T: FloatElement, TOut: FloatElement>(
        &self,
        a: &Matrix<T>,
        b: &Matrix<T>,
        opts: &SimilarityOptions,
    ) -> Result<Matrix<TOut>> {
        ops::similarity::check((a.rows(), a.cols()), (b.rows(), b.cols()), opts)?;
        match self {
            Backend::Cpu => Ok(cpu::similarity::similarity(a, b, opts).cast()),
            Backend::Gpu(gpu) => {
                let (da, db) = (DeviceMatrix::upload(gpu, a)?, DeviceMatrix::upload(gpu, b)?);
                ops::similarity::similarity::<T, TOut>(gpu, &da, &db, opts)?.download(gpu)
            }
        }
    }

    /// The k nearest bank rows of each query (cosine similarity), sorted, ties to the smaller
    /// index, NaN similarities last. CPU: the f64 oracle, values rounded to f32.
    pub fn topk<T: FloatElement>(&self, queries: &Matrix<T>, bank: &Matrix<T>, opts: &TopKOptions) -> Result<TopK<f32>> {
        ops::topk::check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
        match self {
            Backend::Cpu => {
                let t = cpu::topk::topk(queries, bank, opts)?;
                Ok(TopK { rows: t.rows, k: t.k, values: t.values.iter().map(|&v| v as f32).collect(), indices: t.indices })
            }
            Backend::Gpu(gpu) => {
                let (dq, db) = (DeviceMatrix::upload(gpu, queries)?, DeviceMatrix::upload(gpu, bank)?);
                ops::topk::topk(gpu, &dq, &db, opts)?.download(gpu)
            }
        }
    }

    /// k-means of the rows of `x` (spherical by default; see [`ops::kmeans`] for the rules).
    pub fn kmeans<T: FloatElement>(&self, x: &Matrix<T>, opts: &KMeansOptions) -> Result<KMeans<T>> {
        ops::kmeans::check(x.rows(), x.cols(), opts)?;
        match self {
            Backend::Cpu => cpu::kmeans::kmeans(x, opts),
            Backend::Gpu(gpu) => ops::kmeans::kmeans(gpu, &DeviceMatrix::upload(gpu, x)?, opts),
        }
    }
}
