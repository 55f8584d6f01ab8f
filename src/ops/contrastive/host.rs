//! The loss on host matrices through a [`Backend`]: the fused GPU kernels, or the f64 oracle on
//! the CPU, behind one forward / backward pair with a saved context.

use cudarc::driver::CudaSlice;

use super::fused::{self, DeviceKeyRows, DeviceLossInputs, DevicePrototypeColumns, SavedForward, Upstream};
use super::{check_inputs, ContrastiveLoss, ForwardResult, LossInputs, Reduction};
use crate::backend::Backend;
use crate::cpu;
use crate::dtype::FloatElement;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceMatrix, Gpu};
use crate::matrix::Matrix;

/// Gradients with respect to the raw inputs, in their dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    pub features: Matrix<T>,
    /// Pairwise geometry: the keys' gradient.
    pub keys: Option<Matrix<T>>,
    pub prototypes: Option<Matrix<T>>,
}

/// What [`ContrastiveLoss::forward`] keeps for [`ContrastiveLoss::backward`]: on the GPU the
/// uploaded inputs and the O(n) statistics; on the CPU nothing (the oracle recomputes).
pub struct LossContext<T> {
    inner: Saved<T>,
}

enum Saved<T> {
    Cpu,
    Gpu { uploaded: DeviceLossBuffers<T>, saved: SavedForward },
}

/// Host [`LossInputs`] copied to the device and owned; [`Self::view`] is their
/// [`DeviceLossInputs`].
pub struct DeviceLossBuffers<T> {
    features: DeviceMatrix<T>,
    instance: CudaSlice<i32>,
    label: Option<CudaSlice<i32>>,
    role: Option<CudaSlice<u8>>,
    weight: Option<CudaSlice<f32>>,
    keys: Option<(DeviceMatrix<T>, CudaSlice<i32>, Option<CudaSlice<i32>>)>,
    prototypes: Option<(DeviceMatrix<T>, CudaSlice<i32>)>,
}

fn upload<E: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(gpu: &Gpu, v: &[E]) -> Result<CudaSlice<E>> {
    if v.is_empty() {
        gpu.stream().alloc_zeros::<E>(1).during("device allocation")
    } else {
        gpu.stream().clone_htod(v).during("host-to-device copy")
    }
}

impl<T: FloatElement> DeviceLossBuffers<T> {
    pub fn upload(gpu: &Gpu, inputs: &LossInputs<'_, T>) -> Result<Self> {
        Ok(DeviceLossBuffers {
            features: DeviceMatrix::upload(gpu, inputs.features)?,
            instance: upload(gpu, inputs.instance)?,
            label: inputs.label.map(|l| upload(gpu, l)).transpose()?,
            role: inputs.role.map(|r| upload(gpu, &r.iter().map(|&r| r as u8).collect::<Vec<u8>>())).transpose()?,
            weight: inputs.weight.map(|w| upload(gpu, w)).transpose()?,
            keys: match &inputs.keys {
                Some(k) => {
                    Some((DeviceMatrix::upload(gpu, k.features)?, upload(gpu, k.instance)?, k.label.map(|l| upload(gpu, l)).transpose()?))
                }
                None => None,
            },
            prototypes: match &inputs.prototypes {
                Some(p) => Some((DeviceMatrix::upload(gpu, p.centers)?, upload(gpu, p.proto_of)?)),
                None => None,
            },
        })
    }

    pub fn view(&self) -> DeviceLossInputs<'_, T> {
        DeviceLossInputs {
            features: &self.features,
            instance: &self.instance,
            label: self.label.as_ref(),
            role: self.role.as_ref(),
            weight: self.weight.as_ref(),
            keys: self.keys.as_ref().map(|(features, instance, label)| DeviceKeyRows { features, instance, label: label.as_ref() }),
            prototypes: self.prototypes.as_ref().map(|(centers, proto_of)| DevicePrototypeColumns { centers, proto_of }),
        }
    }
}

fn download<E: cudarc::driver::DeviceRepr>(gpu: &Gpu, s: &CudaSlice<E>, len: usize) -> Result<Vec<E>> {
    let mut v = gpu.stream().clone_dtoh(s).during("device-to-host copy")?;
    v.truncate(len);
    Ok(v)
}

impl ContrastiveLoss {
    /// The loss of `inputs` (and per-anchor losses, LSE, positive counts), plus the context its
    /// backward needs. On the GPU: the fused kernels (f16 / bf16 on tensor cores, f32 by FFMA).
    pub fn forward<T: FloatElement>(&self, backend: &Backend, inputs: &LossInputs<'_, T>) -> Result<(ForwardResult, LossContext<T>)> {
        check_inputs(self, inputs)?;
        match backend {
            Backend::Cpu => {
                let f = cpu::contrastive::forward(self, inputs)?;
                let result = ForwardResult {
                    loss: f.loss as f32,
                    per_anchor: f.per_anchor.iter().map(|&v| v as f32).collect(),
                    lse: f.lse.iter().map(|&v| v as f32).collect(),
                    positives: f.positive_count.iter().map(|&c| c as i32).collect(),
                };
                Ok((result, LossContext { inner: Saved::Cpu }))
            }
            Backend::Gpu(gpu) => {
                let uploaded = DeviceLossBuffers::upload(gpu, inputs)?;
                let out = fused::forward(gpu, self, &uploaded.view())?;
                let n = inputs.features.rows();
                let result = ForwardResult {
                    loss: out.loss,
                    per_anchor: download(gpu, &out.per_anchor, n)?,
                    lse: download(gpu, &out.saved.lse, n)?,
                    positives: download(gpu, &out.saved.positives, n)?,
                };
                Ok((result, LossContext { inner: Saved::Gpu { uploaded, saved: out.saved } }))
            }
        }
    }

    /// Gradients of the loss with respect to the raw inputs, given the forward's context and the
    /// upstream gradient: one value (dLoss) for `Mean` / `Sum`, one per feature row for `PerAnchor`.
    /// `inputs` must be the ones given to the forward.
    pub fn backward<T: FloatElement>(
        &self,
        backend: &Backend,
        inputs: &LossInputs<'_, T>,
        context: LossContext<T>,
        upstream: &[f32],
    ) -> Result<Gradients<T>> {
        check_inputs(self, inputs)?;
        let per_row = self.reduction == Reduction::PerAnchor;
        let n = inputs.features.rows();
        let expected = if per_row { n } else { 1 };
        if upstream.len() != expected {
            return Err(Error::shape(
                "upstream",
                format!("{expected} value(s) ({})", if per_row { "one per feature row" } else { "dLoss" }),
                format!("{}", upstream.len()),
            ));
        }
        match (backend, context.inner) {
            (Backend::Cpu, Saved::Cpu) => {
                let upstream: Vec<f64> = upstream.iter().map(|&v| v as f64).collect();
                let g = cpu::contrastive::backward(self, inputs, &upstream)?;
                Ok(Gradients { features: g.features.cast(), keys: g.keys.map(|k| k.cast()), prototypes: g.prototypes.map(|p| p.cast()) })
            }
            (Backend::Gpu(gpu), Saved::Gpu { uploaded, saved }) => {
                if uploaded.features.rows() != n || uploaded.features.cols() != inputs.features.cols() {
                    return Err(Error::invalid("context", "comes from a forward over other inputs"));
                }
                let per_row_buf;
                let up = if per_row {
                    per_row_buf = upload(gpu, upstream)?;
                    Upstream::PerRow(&per_row_buf)
                } else {
                    Upstream::Value(upstream[0])
                };
                let g = fused::backward(gpu, self, &uploaded.view(), saved, up)?;
                Ok(Gradients {
                    features: g.features.download(gpu)?,
                    keys: g.keys.map(|k| k.download(gpu)).transpose()?,
                    prototypes: g.prototypes.map(|p| p.download(gpu)).transpose()?,
                })
            }
            _ => Err(Error::invalid("context", "comes from a forward on another backend")),
        }
    }
}
