//! Bench: one full contrastive training step on the GPU, device-resident from end to end: encoder
//! forward (MLP on the tensor-core kernels), loss forward + backward (fused, or the unfused
//! PyTorch-style path), encoder backward, AdamW; at batch 1024 and 4096 images (two views each:
//! 2048 / 8192 loss rows). The summary gives each phase's median time and the share of the step
//! spent in the loss, fused vs unfused (issue 5, item 7).
//!
//! Encoder: 784 -> 1024 -> 512 (feature) -> 128 (projection, the loss features), f16 compute with
//! f32 master weights; loss NT-Xent at tau 0.5 over the projections. Criterion ids:
//! `train_step/<fused|unfused>/b<batch>`. Without a usable GPU it prints one skip line and exits 0.

use std::time::Duration;

use contrastive_kernels::bench::{calls_ms, median_call_us};
use contrastive_kernels::ops::contrastive::gpu::{backward as backward_device, forward as forward_device, DeviceLossInputs, Upstream};
use contrastive_kernels::ops::contrastive::{unfused, ContrastiveLoss};
use contrastive_kernels::ops::mlp::gpu::GpuMlp;
use contrastive_kernels::ops::mlp::{AdamW, MlpConfig, MlpParams};
use contrastive_kernels::rng::SplitMix64;
use contrastive_kernels::{f16, DeviceMatrix, Gpu, Matrix, Result};
use criterion::Criterion;

type BoxError = Box<dyn std::error::Error>;

const BATCHES: [usize; 2] = [1024, 4096];
const RUNS: usize = 10;
const WARMUP: usize = 2;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fused,
    Unfused,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Fused => "fused",
            Path::Unfused => "unfused",
        }
    }
}

fn main() {
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("train_step bench skipped: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        eprintln!("train_step bench FAILED: {e}");
        std::process::exit(1);
    }
}

struct Setup {
    mlp: GpuMlp<f16>,
    x: DeviceMatrix<f16>,
    instance: contrastive_kernels::cudarc::driver::CudaSlice<i32>,
}

fn setup(gpu: &Gpu, batch: usize) -> std::result::Result<Setup, BoxError> {
    let config = MlpConfig::new(784, &[1024], 512, &[128])?;
    let mlp = GpuMlp::<f16>::new(gpu, &MlpParams::init(&config, 7)?)?;
    let rows = 2 * batch; // two views of every image
    let mut rng = SplitMix64::new(batch as u64);
    let x = DeviceMatrix::upload(gpu, &Matrix::from_fn(rows, 784, |_, _| f16::from_f64(rng.uniform())))?;
    let instance: Vec<i32> = (0..rows).map(|i| (i % batch) as i32).collect();
    Ok(Setup { mlp, x, instance: gpu.stream().clone_htod(&instance)? })
}

/// The loss forward + backward on the encoder's output; returns dLoss/dOutput.
fn loss_step(
    gpu: &Gpu,
    path: Path,
    z: &DeviceMatrix<f16>,
    instance: &contrastive_kernels::cudarc::driver::CudaSlice<i32>,
) -> Result<DeviceMatrix<f16>> {
    let loss = ContrastiveLoss::nt_xent(0.5);
    let inputs = DeviceLossInputs::new(z, instance);
    let grads = match path {
        Path::Fused => {
            let out = forward_device(gpu, &loss, &inputs)?;
            backward_device(gpu, &loss, &inputs, out.saved, Upstream::Value(1.0))?
        }
        Path::Unfused => {
            let out = unfused::forward(gpu, &loss, &inputs)?;
            unfused::backward(gpu, &loss, &inputs, out.saved, Upstream::Value(1.0))?
        }
    };
    Ok(grads.features)
}

fn full_step(gpu: &Gpu, s: &mut Setup, path: Path) -> Result<()> {
    let outputs = s.mlp.forward(&s.x)?;
    let d_out = loss_step(gpu, path, outputs.last().expect("layers"), &s.instance)?;
    s.mlp.backward(&s.x, &outputs, &d_out)?;
    s.mlp.adamw_step(&AdamW::default())
}

fn run(gpu: &Gpu) -> std::result::Result<(), BoxError> {
    let mut criterion = Criterion::default().configure_from_args();
    let timing = std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test" || a == "--list");
    let mut lines = Vec::new();
    for batch in BATCHES {
        let mut s = setup(gpu, batch)?;
        let stream = gpu.stream().clone();
        for path in [Path::Fused, Path::Unfused] {
            if let Err(e) = full_step(gpu, &mut s, path) {
                lines.push(format!("b{batch} {}: not run ({e})", path.name()));
                continue;
            }
            let mut group = criterion.benchmark_group("train_step");
            group.bench_function(format!("{}/b{batch}", path.name()), |bencher| {
                bencher.iter_custom(|iters| {
                    let ms = calls_ms(&stream, iters, || full_step(gpu, &mut s, path)).unwrap_or_else(|e| panic!("train_step: {e}"));
                    Duration::from_secs_f64(f64::from(ms) * 1e-3)
                })
            });
            group.finish();
            if timing {
                let step_us = median_call_us(&stream, WARMUP, RUNS, || full_step(gpu, &mut s, path))?;
                let outputs = s.mlp.forward(&s.x)?;
                let z = outputs.last().expect("layers");
                let loss_us = median_call_us(&stream, WARMUP, RUNS, || loss_step(gpu, path, z, &s.instance))?;
                lines.push(format!(
                    "b{batch:<5} ({:>5} loss rows) {:<8} step {:>9.1} us   loss fwd+bwd {:>9.1} us   loss share {:>5.1}%",
                    2 * batch,
                    path.name(),
                    step_us,
                    loss_us,
                    100.0 * loss_us / step_us
                ));
            }
        }
    }
    criterion.final_summary();
    if timing {
        println!();
        println!("train_step summary on {}: medians of {RUNS} single-step CUDA-event timings after {WARMUP} warm-up steps", gpu.describe());
        println!("encoder 784 -> 1024 -> 512 -> 128 (f16), NT-Xent tau 0.5 over 2 views per image, AdamW");
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
