//! Host matrices in, host matrices out, on the GPU when one is usable and on the CPU oracle
//! otherwise: the one place that dispatches between the two. Both paths validate with the same
//! `ops::<op>::check*` functions (each op's `mod.rs`), then run `ops::<op>::gpu` or
//! `ops::<op>::cpu`.

use cudarc::driver::CudaSlice;

use crate::dtype::FloatElement;
use crate::error::{CudaContext as _, Error, Result};
use crate::f16;
use crate::gpu::{DeviceMatrix, Gpu};
use crate::matrix::Matrix;
use crate::ops::contrastive::gpu::{upload_slice, DeviceLossBuffers, SavedForward, Upstream};
use crate::ops::contrastive::{
    check_inputs, check_upstream_len, ContrastiveLoss, ForwardResult, Gradients, KeyRows, LossInputs, PrototypeColumns, Reduction,
};
use crate::ops::kmeans::{KMeans, KMeansOptions};
use crate::ops::mlp::cpu::AdamState;
use crate::ops::mlp::gpu::GpuMlp;
use crate::ops::mlp::{AdamW, MlpConfig, MlpParams};
use crate::ops::similarity::SimilarityOptions;
use crate::ops::topk::{TopK, TopKOptions};
use crate::ops::{contrastive, kmeans, mlp, normalize, similarity, topk};

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
        normalize::check_forward(x.rows(), x.cols())?;
        match self {
            Backend::Cpu => {
                let (z, norms) = normalize::cpu::l2_normalize(x);
                Ok((z.cast(), norms.into_iter().map(|v| v as f32).collect()))
            }
            Backend::Gpu(gpu) => {
                let dx = DeviceMatrix::upload(gpu, x)?;
                let (z, norms) = normalize::gpu::l2_normalize::<TX, TZ>(gpu, &dx)?;
                let norms = gpu.stream().clone_dtoh(&norms).during("device-to-host copy")?;
                Ok((z.download(gpu)?, norms[..x.rows()].to_vec()))
            }
        }
    }

    /// dX (in `TX`) given X and the upstream gradient dZ.
    pub fn l2_normalize_backward<TX: FloatElement, TZ: FloatElement>(&self, x: &Matrix<TX>, dz: &Matrix<TZ>) -> Result<Matrix<TX>> {
        normalize::check_backward((x.rows(), x.cols()), (dz.rows(), dz.cols()))?;
        match self {
            Backend::Cpu => Ok(normalize::cpu::l2_normalize_backward(x, dz).cast()),
            Backend::Gpu(gpu) => {
                let (dx_x, dx_dz) = (DeviceMatrix::upload(gpu, x)?, DeviceMatrix::upload(gpu, dz)?);
                normalize::gpu::l2_normalize_backward(gpu, &dx_x, &dx_dz)?.download(gpu)
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
        similarity::check((a.rows(), a.cols()), (b.rows(), b.cols()), opts)?;
        match self {
            Backend::Cpu => Ok(similarity::cpu::similarity(a, b, opts).cast()),
            Backend::Gpu(gpu) => {
                let (da, db) = (DeviceMatrix::upload(gpu, a)?, DeviceMatrix::upload(gpu, b)?);
                similarity::gpu::similarity::<T, TOut>(gpu, &da, &db, opts)?.download(gpu)
            }
        }
    }

    /// The k nearest bank rows of each query (cosine similarity), sorted, ties to the smaller
    /// index, NaN similarities last. CPU: the f64 oracle, values rounded to f32.
    pub fn topk<T: FloatElement>(&self, queries: &Matrix<T>, bank: &Matrix<T>, opts: &TopKOptions) -> Result<TopK<f32>> {
        topk::check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
        match self {
            Backend::Cpu => {
                let t = topk::cpu::topk(queries, bank, opts)?;
                Ok(TopK { rows: t.rows, k: t.k, values: t.values.iter().map(|&v| v as f32).collect(), indices: t.indices })
            }
            Backend::Gpu(gpu) => {
                let (dq, db) = (DeviceMatrix::upload(gpu, queries)?, DeviceMatrix::upload(gpu, bank)?);
                topk::gpu::topk(gpu, &dq, &db, opts)?.download(gpu)
            }
        }
    }

    /// k-means of the rows of `x` (spherical by default; see [`kmeans`] for the rules).
    pub fn kmeans<T: FloatElement>(&self, x: &Matrix<T>, opts: &KMeansOptions) -> Result<KMeans<T>> {
        kmeans::check(x.rows(), x.cols(), opts)?;
        match self {
            Backend::Cpu => kmeans::cpu::kmeans(x, opts),
            Backend::Gpu(gpu) => kmeans::gpu::kmeans(gpu, &DeviceMatrix::upload(gpu, x)?, opts),
        }
    }

    /// The contrastive loss of `inputs` (and per-anchor losses, LSE, positive counts), plus the
    /// context its backward needs. On the GPU: the fused kernels (f16 / bf16 on tensor cores, f32
    /// by FFMA); on the CPU: the f64 oracle, results rounded to f32.
    pub fn contrastive_forward<T: FloatElement>(
        &self,
        loss: &ContrastiveLoss,
        inputs: &LossInputs<'_, T>,
    ) -> Result<(ForwardResult, LossContext<T>)> {
        check_inputs(loss, inputs)?;
        match self {
            Backend::Cpu => {
                let f = contrastive::cpu::forward(loss, inputs)?;
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
                let out = contrastive::gpu::forward(gpu, loss, &uploaded.view())?;
                let n = inputs.features.rows();
                let result = ForwardResult {
                    loss: out.loss,
                    per_anchor: download(gpu, &out.per_anchor, n)?,
                    lse: download(gpu, &out.saved.lse, n)?,
                    positives: download(gpu, &out.saved.positives, n)?,
                };
                Ok((result, LossContext { inner: Saved::Gpu { uploaded: Box::new(uploaded), saved: out.saved } }))
            }
        }
    }

    /// Gradients of the contrastive loss with respect to the raw inputs, given the forward's
    /// context and the upstream gradient: one value (dLoss) for `Mean` / `Sum`, one per feature row
    /// for `PerAnchor`. `inputs` must be the ones given to [`Self::contrastive_forward`].
    pub fn contrastive_backward<T: FloatElement>(
        &self,
        loss: &ContrastiveLoss,
        inputs: &LossInputs<'_, T>,
        context: LossContext<T>,
        upstream: &[f32],
    ) -> Result<Gradients<T>> {
        check_inputs(loss, inputs)?;
        let per_row = loss.reduction == Reduction::PerAnchor;
        let n = inputs.features.rows();
        check_upstream_len(loss, n, upstream.len())?;
        match (self, context.inner) {
            (Backend::Cpu, Saved::Cpu) => {
                let upstream: Vec<f64> = upstream.iter().map(|&v| v as f64).collect();
                let g = contrastive::cpu::backward(loss, inputs, &upstream)?;
                Ok(Gradients { features: g.features.cast(), keys: g.keys.map(|k| k.cast()), prototypes: g.prototypes.map(|p| p.cast()) })
            }
            (Backend::Gpu(gpu), Saved::Gpu { uploaded, saved }) => {
                let view = uploaded.view();
                if view.features.rows() != n || view.features.cols() != inputs.features.cols() {
                    return Err(Error::invalid("context", "comes from a forward over other inputs"));
                }
                let per_row_buf;
                let up = if per_row {
                    per_row_buf = upload_slice(gpu, upstream)?;
                    Upstream::PerRow(&per_row_buf)
                } else {
                    Upstream::Value(upstream[0])
                };
                let g = contrastive::gpu::backward(gpu, loss, &view, saved, up)?;
                Ok(Gradients {
                    features: g.features.download(gpu)?,
                    keys: g.keys.map(|k| k.download(gpu)).transpose()?,
                    prototypes: g.prototypes.map(|p| p.download(gpu)).transpose()?,
                })
            }
            _ => Err(Error::invalid("context", "comes from a forward on another backend")),
        }
    }

    /// The loss value and the features' gradient for f64 inputs with dLoss = 1 (`Mean` / `Sum`;
    /// the detector's training step): on the CPU the f64 oracle on the inputs as given, on the GPU
    /// the fused kernels on the inputs rounded to f32.
    pub fn contrastive_loss_and_gradient(&self, loss: &ContrastiveLoss, inputs: &LossInputs<'_, f64>) -> Result<(f64, Matrix<f64>)> {
        match self {
            Backend::Cpu => {
                let value = contrastive::cpu::forward(loss, inputs)?.loss;
                let grads = contrastive::cpu::backward(loss, inputs, &[1.0])?;
                Ok((value, grads.features))
            }
            Backend::Gpu(_) => {
                let features: Matrix<f32> = inputs.features.cast();
                let keys: Option<Matrix<f32>> = inputs.keys.as_ref().map(|k| k.features.cast());
                let centers: Option<Matrix<f32>> = inputs.prototypes.as_ref().map(|p| p.centers.cast());
                let inputs32 = LossInputs {
                    features: &features,
                    instance: inputs.instance,
                    label: inputs.label,
                    role: inputs.role,
                    weight: inputs.weight,
                    keys: inputs.keys.as_ref().zip(keys.as_ref()).map(|(k, features)| KeyRows {
                        features,
                        instance: k.instance,
                        label: k.label,
                    }),
                    prototypes: inputs
                        .prototypes
                        .as_ref()
                        .zip(centers.as_ref())
                        .map(|(p, centers)| PrototypeColumns { centers, proto_of: p.proto_of }),
                    anchor_rows: inputs.anchor_rows,
                };
                let (out, context) = self.contrastive_forward(loss, &inputs32)?;
                let grads = self.contrastive_backward(loss, &inputs32, context, &[1.0])?;
                Ok((out.loss as f64, grads.features.cast()))
            }
        }
    }

    /// A freshly initialised MLP (He-uniform from `seed`) to train on this backend: f64 oracle on
    /// the CPU; f16 compute with f32 master weights on the GPU.
    pub fn mlp(&self, config: &MlpConfig, seed: u64) -> Result<MlpTrainer> {
        let params = MlpParams::<f32>::init(config, seed)?;
        Ok(MlpTrainer {
            inner: match self {
                Backend::Cpu => TrainerState::Cpu { state: AdamState::new(&params), params },
                Backend::Gpu(gpu) => TrainerState::Gpu(Box::new(GpuMlp::new(gpu, &params)?)),
            },
        })
    }
}

/// What [`Backend::contrastive_forward`] keeps for [`Backend::contrastive_backward`]: on the GPU
/// the uploaded inputs and the O(n) statistics; on the CPU nothing (the oracle recomputes).
pub struct LossContext<T> {
    inner: Saved<T>,
}

enum Saved<T> {
    Cpu,
    Gpu { uploaded: Box<DeviceLossBuffers<T>>, saved: SavedForward },
}

fn download<E: cudarc::driver::DeviceRepr>(gpu: &Gpu, s: &CudaSlice<E>, len: usize) -> Result<Vec<E>> {
    let mut v = gpu.stream().clone_dtoh(s).during("device-to-host copy")?;
    v.truncate(len);
    Ok(v)
}

/// An MLP under training on host matrices, made by [`Backend::mlp`]: on the CPU the f64 oracle
/// (f32 parameters, AdamW state on the host), on the GPU f16 compute (the kernels' first-class
/// dtype; bf16 works the same way) with the parameters and AdamW state on the device.
pub struct MlpTrainer {
    inner: TrainerState,
}

enum TrainerState {
    Cpu { params: MlpParams<f32>, state: AdamState },
    Gpu(Box<GpuMlp<f16>>),
}

impl MlpTrainer {
    pub fn config(&self) -> &MlpConfig {
        match &self.inner {
            TrainerState::Cpu { params, .. } => &params.config,
            TrainerState::Gpu(mlp) => mlp.config(),
        }
    }

    /// One step: forward, `loss` (value and gradient with respect to the MLP's output), backward,
    /// AdamW. Returns the loss value.
    pub fn train_step(
        &mut self,
        x: &Matrix<f32>,
        hp: &AdamW,
        loss: impl FnOnce(&Matrix<f64>) -> Result<(f64, Matrix<f64>)>,
    ) -> Result<f64> {
        match &mut self.inner {
            TrainerState::Cpu { params, state } => {
                let fwd = mlp::cpu::forward(params, x)?;
                let (value, d_out) = loss(fwd.output())?;
                let grads = mlp::cpu::backward(params, &fwd, &d_out)?;
                mlp::cpu::adamw_step(params, &grads, state, hp)?;
                Ok(value)
            }
            TrainerState::Gpu(mlp) => {
                let gpu = mlp.gpu().clone();
                let xd = DeviceMatrix::upload(&gpu, &x.cast::<f16>())?;
                let outputs = mlp.forward(&xd)?;
                let z = outputs.last().expect("at least one layer").download(&gpu)?.cast::<f64>();
                let (value, d_out) = loss(&z)?;
                mlp.backward(&xd, &outputs, &DeviceMatrix::upload(&gpu, &d_out.cast::<f16>())?)?;
                mlp.adamw_step(hp)?;
                Ok(value)
            }
        }
    }

    /// Layer `layer`'s output (1..=L) for `x`.
    pub fn layer_output(&self, x: &Matrix<f32>, layer: usize) -> Result<Matrix<f32>> {
        if !(1..=self.config().layers()).contains(&layer) {
            return Err(Error::invalid("layer", format!("must be in 1..={}, got {layer}", self.config().layers())));
        }
        match &self.inner {
            TrainerState::Cpu { params, .. } => Ok(mlp::cpu::forward(params, x)?.layer(layer).cast()),
            TrainerState::Gpu(mlp) => {
                let gpu = mlp.gpu().clone();
                let outputs = mlp.forward(&DeviceMatrix::upload(&gpu, &x.cast::<f16>())?)?;
                Ok(outputs[layer - 1].download(&gpu)?.cast())
            }
        }
    }
}
