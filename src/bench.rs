//! Measurement helpers shared by `benches/losses.rs` and the `ckbench` CLI: the loss benches'
//! inputs and calls, CUDA-event timing, and the device's peak figures (DESIGN.md section 6), so the
//! two report the same numbers the same way.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};

use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceMatrix, Gpu};
use crate::matrix::Matrix;
use crate::ops::contrastive::gpu::{backward as backward_device, forward as forward_device, DeviceLossInputs, Upstream};
use crate::ops::contrastive::{unfused, ContrastiveLoss};
use crate::rng::SplitMix64;

/// The losses the benches compare (self geometry, 2B rows = two views per sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchLoss {
    NtXent,
    SupCon,
    Firm,
}

impl BenchLoss {
    pub const ALL: [BenchLoss; 3] = [BenchLoss::NtXent, BenchLoss::SupCon, BenchLoss::Firm];

    pub fn name(self) -> &'static str {
        match self {
            BenchLoss::NtXent => "nt_xent",
            BenchLoss::SupCon => "supcon",
            BenchLoss::Firm => "firm",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        BenchLoss::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| Error::invalid("loss", format!("one of nt_xent, supcon, firm; got `{s}`")))
    }

    /// The reference configurations: SimCLR's tau 0.5, SupContrast's 0.1 / 0.07, FIRM's 0.2.
    pub fn loss(self) -> ContrastiveLoss {
        match self {
            BenchLoss::NtXent => ContrastiveLoss::nt_xent(0.5),
            BenchLoss::SupCon => ContrastiveLoss::supcon(0.1, 0.07),
            BenchLoss::Firm => ContrastiveLoss::firm(0.2),
        }
    }
}

/// Forward only, or forward then backward (a training step's loss work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Fwd,
    FwdBwd,
}

impl Pass {
    pub const ALL: [Pass; 2] = [Pass::Fwd, Pass::FwdBwd];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::FwdBwd => "fwd_bwd",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Pass::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| Error::invalid("pass", format!("fwd or fwd_bwd; got `{s}`")))
    }

    /// GEMM-equivalents of 2 n^2 d, as issue 3 counts them: forward 1; forward+backward 4
    /// (2 forward-and-recompute, 2 for dZ).
    pub fn gemm_equivalents(self) -> f64 {
        match self {
            Pass::Fwd => 1.0,
            Pass::FwdBwd => 4.0,
        }
    }

    /// Exponentials the maths needs per logit: one for the forward's LSE, one more for the
    /// backward's softmax (the fused self-geometry backward evaluates two, G_ij and G_ji).
    pub fn exps_per_logit(self) -> f64 {
        match self {
            Pass::Fwd => 1.0,
            Pass::FwdBwd => 2.0,
        }
    }
}

/// One batch on the device: n = 2B rows, row i a view of sample i mod B; SupCon's labels are 100
/// classes, FIRM's the same with every tenth sample an outlier (-1). Seeded by the shape.
pub struct BenchInputs<T> {
    pub features: DeviceMatrix<T>,
    pub instance: CudaSlice<i32>,
    pub label: Option<CudaSlice<i32>>,
}

impl<T: FloatElement> BenchInputs<T> {
    pub fn new(gpu: &Gpu, loss: BenchLoss, n: usize, d: usize) -> Result<Self> {
        let mut rng = SplitMix64::new(0x1055_0000 + (n * d) as u64);
        let x = Matrix::from_fn(n, d, |_, _| T::from_f64(rng.normal()));
        let b = (n / 2).max(1);
        let instance: Vec<i32> = (0..n).map(|i| (i % b) as i32).collect();
        let label: Option<Vec<i32>> = match loss {
            BenchLoss::NtXent => None,
            BenchLoss::SupCon => Some((0..n).map(|i| ((i % b) % 100) as i32).collect()),
            BenchLoss::Firm => Some((0..n).map(|i| if (i % b) % 10 == 9 { -1 } else { ((i % b) % 100) as i32 }).collect()),
        };
        let stream = gpu.stream();
        Ok(BenchInputs {
            features: DeviceMatrix::upload(gpu, &x)?,
            instance: stream.clone_htod(&instance).during("host-to-device copy")?,
            label: label.map(|l| stream.clone_htod(&l)).transpose().during("host-to-device copy")?,
        })
    }

    pub fn view(&self) -> DeviceLossInputs<'_, T> {
        DeviceLossInputs { label: self.label.as_ref(), ..DeviceLossInputs::new(&self.features, &self.instance) }
    }
}

/// One fused call of the device-buffer API (the forward reads back its checks and the loss, as a
/// training step would).
pub fn fused_call<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>, pass: Pass) -> Result<f32> {
    let out = forward_device(gpu, loss, inputs)?;
    if pass == Pass::FwdBwd {
        backward_device(gpu, loss, inputs, out.saved, Upstream::Value(1.0))?;
    }
    Ok(out.loss)
}

/// The same through the unfused path.
pub fn unfused_call<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>, pass: Pass) -> Result<f32> {
    let out = unfused::forward(gpu, loss, inputs)?;
    if pass == Pass::FwdBwd {
        unfused::backward(gpu, loss, inputs, out.saved, Upstream::Value(1.0))?;
    }
    Ok(out.loss)
}

/// The unfused path's verdict for a self-geometry shape: its peak extra bytes if they fit the free
/// device memory with `headroom` to spare, or why not.
pub fn unfused_fits(gpu: &Gpu, n: usize, d: usize, dtype: DType, headroom: usize) -> std::result::Result<usize, String> {
    let peak = unfused::extra_bytes(n, None, 0, d, dtype).peak();
    gpu.context().bind_to_thread().map_err(|e| e.to_string())?;
    let (free, _) = cudarc::driver::result::mem_get_info().map_err(|e| e.to_string())?;
    if peak.saturating_add(headroom) > free {
        return Err(format!("does not fit: needs {:.2} GiB, {:.2} GiB free", gib(peak), gib(free)));
    }
    Ok(peak)
}

pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// An event with timing enabled (`None` flags would disable it).
pub fn timing_event(stream: &Arc<CudaStream>) -> Result<CudaEvent> {
    stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("cuEventRecord")
}

/// GPU milliseconds of `iters` calls, between two events on the stream.
pub fn calls_ms<R>(stream: &Arc<CudaStream>, iters: u64, mut call: impl FnMut() -> Result<R>) -> Result<f32> {
    let start = timing_event(stream)?;
    for _ in 0..iters {
        call()?;
    }
    let end = timing_event(stream)?;
    start.elapsed_ms(&end).during("cuEventElapsedTime")
}

/// The median of `runs` single-call timings in microseconds, after `warmup` untimed calls.
pub fn median_call_us<R>(stream: &Arc<CudaStream>, warmup: usize, runs: usize, mut call: impl FnMut() -> Result<R>) -> Result<f64> {
    for _ in 0..warmup {
        call()?;
    }
    let mut us = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        us.push(f64::from(calls_ms(stream, 1, &mut call)?) * 1e3);
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

/// The limits a result is compared with (DESIGN.md section 6), known for the H100 and H200.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePeaks {
    pub device: String,
    /// Dense f16 / bf16 tensor-core TFLOP/s.
    pub tensor_tflops: Option<f64>,
    /// MUFU ex2 throughput, exponentials per second.
    pub exps_per_second: Option<f64>,
}

impl DevicePeaks {
    pub fn of(gpu: &Gpu) -> Self {
        let device = gpu.describe();
        let hopper = device.contains("H100") || device.contains("H200");
        DevicePeaks { tensor_tflops: hopper.then_some(989.0), exps_per_second: hopper.then_some(3.9e12), device }
    }
}
