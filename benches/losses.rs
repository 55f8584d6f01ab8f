//! Bench: the fused contrastive loss against the unfused path (what PyTorch does: normalize, a GEMM
//! writing the n x n logits, masked log-softmax, backward through the materialized matrix), side by
//! side in one run: InfoNCE / NT-Xent, SupCon and FIRM (self geometry, 2B rows = two views per
//! sample), N in {1024, 4096, 8192, 32768}, D in {128, 512}, f16 and bf16, forward and
//! forward+backward. Criterion ids: `losses/<loss>/<fused|unfused>/<fwd|fwd_bwd>/n<N>_d<D>_<dtype>`.
//!
//! Timing: CUDA events around whole calls of the device-buffer API (the forward reads back its
//! input checks and the loss, as a training step would). A summary table follows the criterion
//! output: medians, the unfused / fused ratio, achieved TFLOP/s counting 2 N^2 D per
//! GEMM-equivalent (forward 1, forward+backward 4: 2 forward-and-recompute, 2 for dZ, as issue 3
//! counts them), the fraction of the H100's dense f16/bf16 peak (DESIGN.md section 6), and each
//! path's peak extra device memory. When the unfused path does not fit, the bench says so and the
//! fused path still runs.
//!
//! Without a usable GPU the bench prints one `losses bench skipped: ...` line and exits 0. Without
//! libcublas it benches the fused path alone. The full grid is 192 criterion functions: give
//! scripts/gpu-run.sh a larger CK_BENCH_TIMEOUT, or pass a filter (e.g. `losses/nt_xent`).

use std::sync::Arc;
use std::time::Duration;

use contrastive_kernels::cudarc::driver::sys::CUevent_flags;
use contrastive_kernels::cudarc::driver::{CudaSlice, CudaStream};
use contrastive_kernels::ops::contrastive::{backward_device, forward_device, unfused, ContrastiveLoss, DeviceLossInputs, Upstream};
use contrastive_kernels::rng::SplitMix64;
use contrastive_kernels::{bf16, f16, DType, DeviceMatrix, Error, FloatElement, Gpu, Matrix};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

type BoxError = Box<dyn std::error::Error>;

const SIZES: [usize; 4] = [1024, 4096, 8192, 32768];
const DIMS: [usize; 2] = [128, 512];
/// H100 SXM dense f16/bf16 tensor-core peak (DESIGN.md section 6; the H200 has the same compute).
const PEAK_TFLOPS: f64 = 989.0;
const SUMMARY_RUNS: usize = 10;
const WARMUP_CALLS: usize = 2;
/// Left free beyond the unfused plan before trying it (cuBLAS workspace, driver).
const HEADROOM_BYTES: usize = 256 << 20;
/// The memory target: fused extra memory at this shape under 64 MiB.
const TARGET_N: usize = 65536;
const TARGET_D: usize = 128;

fn main() {
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("losses bench skipped: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        eprintln!("losses bench FAILED: {e}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    NtXent,
    SupCon,
    Firm,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::NtXent => "nt_xent",
            Kind::SupCon => "supcon",
            Kind::Firm => "firm",
        }
    }
    fn loss(self) -> ContrastiveLoss {
        match self {
            Kind::NtXent => ContrastiveLoss::nt_xent(0.5),
            Kind::SupCon => ContrastiveLoss::supcon(0.1, 0.07),
            Kind::Firm => ContrastiveLoss::firm(0.2),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fwd,
    FwdBwd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fwd => "fwd",
            Mode::FwdBwd => "fwd_bwd",
        }
    }
    /// GEMM-equivalents of 2 N^2 D (issue 3's convention).
    fn gemms(self) -> f64 {
        match self {
            Mode::Fwd => 1.0,
            Mode::FwdBwd => 4.0,
        }
    }
}

struct SummaryRow {
    id: String,
    flops: f64,
    fused_us: f64,
    unfused_us: Option<f64>,
    fused_bytes: usize,
    /// Peak extra bytes, or why the unfused path did not run.
    unfused: Result<usize, String>,
}

fn run(gpu: &Gpu) -> Result<(), BoxError> {
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("losses");
    let mut rows = Vec::new();
    let mut blas_missing = None;
    for n in SIZES {
        for d in DIMS {
            for kind in [Kind::NtXent, Kind::SupCon, Kind::Firm] {
                bench_case::<f16>(&mut group, gpu, kind, n, d, &mut blas_missing, &mut rows)?;
                bench_case::<bf16>(&mut group, gpu, kind, n, d, &mut blas_missing, &mut rows)?;
            }
        }
    }
    group.finish();
    criterion.final_summary();
    if let Some(why) = &blas_missing {
        println!("losses bench: unfused path unavailable ({why}); fused path only");
    }
    if is_timing_run() {
        print_summary(gpu, &rows);
    }
    print_memory_target();
    Ok(())
}

/// Criterion's own mode test: `--bench` without `--test` / `--list`.
fn is_timing_run() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

/// One batch: 2B = n rows, row i a view of sample i mod B; SupCon labels are 100 classes, FIRM's
/// are the same with every tenth sample an outlier (-1).
struct Inputs<T> {
    features: DeviceMatrix<T>,
    instance: CudaSlice<i32>,
    label: Option<CudaSlice<i32>>,
}

impl<T: FloatElement> Inputs<T> {
    fn new(gpu: &Gpu, kind: Kind, n: usize, d: usize) -> Result<Self, BoxError> {
        let mut rng = SplitMix64::new(0x1055_0000 + (n * d) as u64);
        let x = Matrix::from_fn(n, d, |_, _| T::from_f64(rng.normal()));
        let b = (n / 2).max(1);
        let instance: Vec<i32> = (0..n).map(|i| (i % b) as i32).collect();
        let label: Option<Vec<i32>> = match kind {
            Kind::NtXent => None,
            Kind::SupCon => Some((0..n).map(|i| ((i % b) % 100) as i32).collect()),
            Kind::Firm => Some((0..n).map(|i| if (i % b) % 10 == 9 { -1 } else { ((i % b) % 100) as i32 }).collect()),
        };
        Ok(Inputs {
            features: DeviceMatrix::upload(gpu, &x)?,
            instance: gpu.stream().clone_htod(&instance)?,
            label: label.map(|l| gpu.stream().clone_htod(&l)).transpose()?,
        })
    }
    fn view(&self) -> DeviceLossInputs<'_, T> {
        DeviceLossInputs { label: self.label.as_ref(), ..DeviceLossInputs::new(&self.features, &self.instance) }
    }
}

fn fused_call<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>, mode: Mode) -> Result<(), BoxError> {
    let out = forward_device(gpu, loss, inputs)?;
    if mode == Mode::FwdBwd {
        backward_device(gpu, loss, inputs, out.saved, Upstream::Value(1.0))?;
    }
    Ok(())
}

fn unfused_call<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>, mode: Mode) -> Result<(), BoxError> {
    let out = unfused::forward(gpu, loss, inputs)?;
    if mode == Mode::FwdBwd {
        unfused::backward(gpu, loss, inputs, out.saved, Upstream::Value(1.0))?;
    }
    Ok(())
}

/// Extra device bytes of the fused path in the self geometry (no keys, no prototypes), mirroring
/// the allocations of src/ops/contrastive/fused.rs: forward 4-byte O(n) buffers (norms, key norms,
/// center norms, per-anchor, LSE, |P|, loss, first-empty, 8 flags); backward the packed unit rows
/// (n x round8(d) of T), coef_a / coef_b, 2 scalars, the f32 gradient scratch (n x d), the upstream.
fn fused_extra_bytes(n: usize, d: usize, dtype: DType) -> usize {
    let forward = 4 * (n + n + 1 + n + n + n + 1 + 1 + 8);
    let dp = d.div_ceil(8) * 8;
    let backward = n * dp * dtype.size_bytes() + 4 * (n + n + 2) + 4 * n * d + 4;
    forward + backward
}

/// The unfused path's verdict for this shape: its peak bytes if it fits the free memory, or why not.
fn unfused_fits(gpu: &Gpu, n: usize, d: usize, dtype: DType) -> Result<usize, String> {
    let peak = unfused::extra_bytes(n, None, 0, d, dtype).peak();
    gpu.context().bind_to_thread().map_err(|e| e.to_string())?;
    let (free, _) = contrastive_kernels::cudarc::driver::result::mem_get_info().map_err(|e| e.to_string())?;
    if peak + HEADROOM_BYTES > free {
        return Err(format!("does not fit: needs {:.2} GiB, {:.2} GiB free", gib(peak), gib(free)));
    }
    Ok(peak)
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn bench_case<T: FloatElement>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    kind: Kind,
    n: usize,
    d: usize,
    blas_missing: &mut Option<String>,
    rows: &mut Vec<SummaryRow>,
) -> Result<(), BoxError> {
    let inputs = Inputs::<T>::new(gpu, kind, n, d)?;
    let view = inputs.view();
    let loss = kind.loss();
    let stream = gpu.stream();
    let shape = format!("n{n}_d{d}_{}", T::DTYPE);
    let mut unfused_ok = match (&blas_missing, unfused_fits(gpu, n, d, T::DTYPE)) {
        (Some(why), _) => Err(format!("no cuBLAS: {why}")),
        (None, fits) => fits,
    };
    // One checked call: the paths must agree before they are timed.
    let fused_loss = forward_device(gpu, &loss, &view)?.loss;
    if unfused_ok.is_ok() {
        match unfused::forward(gpu, &loss, &view) {
            Ok(out) => {
                let rel = ((out.loss - fused_loss) / out.loss.abs().max(1e-3)).abs();
                if !(rel <= 1e-2) {
                    println!("WARNING: losses {}/{shape}: fused loss {fused_loss} vs unfused {} (rel {rel:.2e})", kind.name(), out.loss);
                }
            }
            Err(Error::Blas { op, reason }) => {
                *blas_missing = Some(format!("{op}: {reason}"));
                unfused_ok = Err("no cuBLAS".into());
            }
            Err(e) => unfused_ok = Err(e.to_string()),
        }
    }
    if let Err(why) = &unfused_ok {
        println!("losses {}/unfused/{shape}: not run ({why}); the fused path runs", kind.name());
    }
    for mode in [Mode::Fwd, Mode::FwdBwd] {
        let flops = mode.gemms() * 2.0 * (n * n * d) as f64;
        group.throughput(Throughput::Elements(flops as u64));
        let id = |path: &str| format!("{}/{path}/{}/{shape}", kind.name(), mode.name());
        group.bench_function(id("fused"), |bencher| bencher.iter_custom(|iters| time_calls(stream, iters, || fused_call(gpu, &loss, &view, mode))));
        if unfused_ok.is_ok() {
            group.bench_function(id("unfused"), |bencher| bencher.iter_custom(|iters| time_calls(stream, iters, || unfused_call(gpu, &loss, &view, mode))));
        }
        if is_timing_run() {
            let fused_us = median_call_us(stream, || fused_call(gpu, &loss, &view, mode))?;
            let unfused_us = match unfused_ok {
                Ok(_) => Some(median_call_us(stream, || unfused_call(gpu, &loss, &view, mode))?),
                Err(_) => None,
            };
            let fwd_only = |b: usize| if mode == Mode::Fwd { Some(b) } else { None };
            let fused_bytes = if mode == Mode::Fwd { 4 * (5 * n + 11) } else { fused_extra_bytes(n, d, T::DTYPE) };
            let unfused_bytes = unfused_ok.clone().map(|peak| fwd_only(unfused::extra_bytes(n, None, 0, d, T::DTYPE).forward).unwrap_or(peak));
            rows.push(SummaryRow { id: id("*"), flops, fused_us, unfused_us, fused_bytes, unfused: unfused_bytes });
        }
    }
    gpu.synchronize()?;
    Ok(())
}

fn timing_event(stream: &Arc<CudaStream>) -> Result<contrastive_kernels::cudarc::driver::CudaEvent, BoxError> {
    // CU_EVENT_DEFAULT: `None` would create the event with timing disabled.
    Ok(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

/// criterion's routine: GPU time of `iters` calls. It cannot return an error, so a failed call
/// ends the bench loudly.
fn time_calls(stream: &Arc<CudaStream>, iters: u64, call: impl FnMut() -> Result<(), BoxError>) -> Duration {
    let ms = calls_ms(stream, iters, call).unwrap_or_else(|e| panic!("losses bench: timed calls failed: {e}"));
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
}

fn calls_ms(stream: &Arc<CudaStream>, iters: u64, mut call: impl FnMut() -> Result<(), BoxError>) -> Result<f32, BoxError> {
    let start = timing_event(stream)?;
    for _ in 0..iters {
        call()?;
    }
    let end = timing_event(stream)?;
    Ok(start.elapsed_ms(&end)?)
}

fn median_call_us(stream: &Arc<CudaStream>, mut call: impl FnMut() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    for _ in 0..WARMUP_CALLS {
        call()?;
    }
    let mut us = Vec::with_capacity(SUMMARY_RUNS);
    for _ in 0..SUMMARY_RUNS {
        us.push(f64::from(calls_ms(stream, 1, &mut call)?) * 1e3);
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

fn print_summary(gpu: &Gpu, rows: &[SummaryRow]) {
    let device = gpu.describe();
    println!();
    println!("losses summary on {device}: median of {SUMMARY_RUNS} single-call CUDA-event timings after {WARMUP_CALLS} warm-up calls");
    println!("TFLOP/s convention (issue 3): 2*N*N*D per GEMM-equivalent; fwd = 1 GEMM-equivalent, fwd_bwd = 4 (2 forward-and-recompute, 2 for dZ)");
    println!("%peak: of {PEAK_TFLOPS} TFLOP/s dense f16/bf16 (H100 SXM, DESIGN.md section 6); ratio = unfused time / fused time");
    println!("MiB: peak extra device memory beyond inputs and gradients (fused: O(n d); unfused: S f32 + G in T + O(n d))");
    if !device.contains("H100") && !device.contains("H200") {
        println!("note: this device is not an H100/H200; %peak is still relative to the H100's figure");
    }
    println!(
        "{:<36} {:>10} {:>11} {:>7} {:>8} {:>7} {:>8} {:>7} {:>9} {:>11}",
        "case", "fused us", "unfused us", "ratio", "fused TF", "%peak", "unf. TF", "%peak", "fused MiB", "unfused MiB"
    );
    for row in rows {
        let tf = |us: f64| row.flops / (us * 1e-6) / 1e12;
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let (unf_us, ratio, unf_tf, unf_pct) = match row.unfused_us {
            Some(us) => (format!("{us:.1}"), format!("{:.2}", us / row.fused_us), format!("{:.1}", tf(us)), format!("{:.1}%", 100.0 * tf(us) / PEAK_TFLOPS)),
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let unf_mem = match &row.unfused {
            Ok(b) => format!("{:.1}", mib(*b)),
            Err(why) => format!("({why})"),
        };
        println!(
            "{:<36} {:>10.1} {:>11} {:>7} {:>8.1} {:>7} {:>8} {:>7} {:>9.1} {:>11}",
            row.id,
            row.fused_us,
            unf_us,
            ratio,
            tf(row.fused_us),
            format!("{:.1}%", 100.0 * tf(row.fused_us) / PEAK_TFLOPS),
            unf_tf,
            unf_pct,
            mib(row.fused_bytes),
            unf_mem
        );
    }
}

/// Computed, not run: what each path allocates at the reference shape.
fn print_memory_target() {
    for dtype in [DType::BF16, DType::F16] {
        let fused = fused_extra_bytes(TARGET_N, TARGET_D, dtype);
        let plain = unfused::extra_bytes(TARGET_N, None, 0, TARGET_D, dtype).peak();
        println!(
            "memory target (issue 3): N = {TARGET_N}, D = {TARGET_D}, {dtype}, forward+backward extra device memory: fused {:.1} MiB ({} 64 MiB target), unfused {:.2} GiB (computed from the allocations, not run)",
            fused as f64 / (1u64 << 20) as f64,
            if fused < 64 << 20 { "meets the" } else { "MISSES the" },
            gib(plain)
        );
    }
}
