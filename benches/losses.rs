//! Bench: the fused contrastive loss against the unfused path (what PyTorch does: normalize, a GEMM
//! writing the n x n logits, masked log-softmax, backward through the materialized matrix), side by
//! side in one run: InfoNCE / NT-Xent, SupCon and FIRM (self geometry, 2B rows = two views per
//! sample), N in {1024, 4096, 8192, 32768}, D in {128, 512}, f16 and bf16, forward and
//! forward+backward. Criterion ids: `losses/<loss>/<fused|unfused>/<fwd|fwd_bwd>/n<N>_d<D>_<dtype>`,
//! and `losses/nt_xent/fused_rowsweep/fwd/...`: the fused forward without the self geometry's
//! symmetry (every tile computed, as in the pairwise geometry), so one run measures what the
//! symmetric kernel gains (the summary's `sym x` column, every loss: row-sweep time / symmetric
//! time); and `losses/nt_xent/fused_share4/<fwd|fwd_bwd>/...`: one rank's share of the batch split
//! over four processes (`anchor_rows` = N / 4: its rows first, only they anchors), what
//! `distributed.gather_loss` runs on each rank (the summary's `1/4 x` column: share time / whole
//! time; the logit work predicts about 0.25 forward and 0.44 backward, 2 m N - m^2 of N^2).
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
//! libcublas it benches the fused path alone. The full grid is 240 criterion functions: give
//! scripts/gpu-run.sh a larger CK_BENCH_TIMEOUT, or pass a filter (e.g. `losses/nt_xent`).

use std::sync::Arc;
use std::time::Duration;

use contrastive_kernels::bench::{
    calls_ms, fused_call, gib, median_call_us, mib, unfused_call, unfused_fits, BenchInputs, BenchLoss, DevicePeaks, Pass,
};
use contrastive_kernels::cudarc::driver::CudaStream;
use contrastive_kernels::ops::contrastive::gpu::{
    extra_bytes as fused_extra_bytes, forward as forward_device, forward_tuned, DeviceLossInputs, ForwardTuning,
};
use contrastive_kernels::ops::contrastive::unfused;
use contrastive_kernels::{bf16, f16, DType, Error, FloatElement, Gpu};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

type BoxError = Box<dyn std::error::Error>;

const SIZES: [usize; 4] = [1024, 4096, 8192, 32768];
const DIMS: [usize; 2] = [128, 512];
const SUMMARY_RUNS: usize = 10;
const WARMUP_CALLS: usize = 2;
/// Left free when deciding whether the unfused path fits.
const HEADROOM_BYTES: usize = 256 << 20;
/// Issue 3's memory target shape.
const TARGET_N: usize = 65536;
const TARGET_D: usize = 128;

fn main() {
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("losses bench skipped: {e}");
            print_memory_target();
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        eprintln!("losses bench FAILED: {e}");
        std::process::exit(1);
    }
}

struct SummaryRow {
    id: String,
    flops: f64,
    fused_us: f64,
    unfused_us: Option<f64>,
    /// The forward without the symmetric kernel (fwd rows only).
    rowsweep_us: Option<f64>,
    /// One rank's share of four (`anchor_rows` = n / 4; NT-Xent rows only).
    share_us: Option<f64>,
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
            for kind in BenchLoss::ALL {
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

fn bench_case<T: FloatElement>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    kind: BenchLoss,
    n: usize,
    d: usize,
    blas_missing: &mut Option<String>,
    rows: &mut Vec<SummaryRow>,
) -> Result<(), BoxError> {
    let inputs = BenchInputs::<T>::new(gpu, kind, n, d)?;
    let view = inputs.view();
    let loss = kind.loss();
    let stream = gpu.stream();
    let shape = format!("n{n}_d{d}_{}", T::DTYPE);
    let mut unfused_ok = match (&blas_missing, unfused_fits(gpu, n, d, T::DTYPE, HEADROOM_BYTES)) {
        (Some(why), _) => Err(format!("no cuBLAS: {why}")),
        (None, fits) => fits,
    };
    // One checked call: the paths must agree before they are timed.
    let fused_loss = forward_device(gpu, &loss, &view)?.loss;
    if unfused_ok.is_ok() {
        match unfused::forward(gpu, &loss, &view) {
            Ok(out) => {
                let rel = ((out.loss - fused_loss) / out.loss.abs().max(1e-3)).abs();
                if rel.is_nan() || rel > 1e-2 {
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
    let fused_bytes = fused_extra_bytes(n, None, 0, d, T::DTYPE);
    let unfused_bytes = unfused::extra_bytes(n, None, 0, d, T::DTYPE);
    for pass in Pass::ALL {
        let flops = pass.gemm_equivalents() * 2.0 * (n * n * d) as f64;
        group.throughput(Throughput::Elements(flops as u64));
        let id = |path: &str| format!("{}/{path}/{}/{shape}", kind.name(), pass.name());
        group.bench_function(id("fused"), |bencher| {
            bencher.iter_custom(|iters| time_calls(stream, iters, || fused_call(gpu, &loss, &view, pass)))
        });
        let row_sweep = ForwardTuning { symmetric: Some(false), ..ForwardTuning::default() };
        let rowsweep_call = || forward_tuned(gpu, &loss, &view, row_sweep).map(|out| out.loss);
        if pass == Pass::Fwd && kind == BenchLoss::NtXent {
            group.bench_function(id("fused_rowsweep"), |bencher| bencher.iter_custom(|iters| time_calls(stream, iters, rowsweep_call)));
        }
        let share_view = DeviceLossInputs { anchor_rows: Some((n / 4).max(1)), ..view };
        let share_call = || fused_call(gpu, &loss, &share_view, pass);
        if kind == BenchLoss::NtXent {
            group.bench_function(id("fused_share4"), |bencher| bencher.iter_custom(|iters| time_calls(stream, iters, share_call)));
        }
        if unfused_ok.is_ok() {
            group.bench_function(id("unfused"), |bencher| {
                bencher.iter_custom(|iters| time_calls(stream, iters, || unfused_call(gpu, &loss, &view, pass)))
            });
        }
        if is_timing_run() {
            let fused_us = median_call_us(stream, WARMUP_CALLS, SUMMARY_RUNS, || fused_call(gpu, &loss, &view, pass))?;
            let unfused_us = match unfused_ok {
                Ok(_) => Some(median_call_us(stream, WARMUP_CALLS, SUMMARY_RUNS, || unfused_call(gpu, &loss, &view, pass))?),
                Err(_) => None,
            };
            let (fused_peak, unfused_peak) = match pass {
                Pass::Fwd => (fused_bytes.forward, unfused_bytes.forward),
                Pass::FwdBwd => (fused_bytes.peak(), unfused_bytes.peak()),
            };
            let rowsweep_us =
                if pass == Pass::Fwd { Some(median_call_us(stream, WARMUP_CALLS, SUMMARY_RUNS, rowsweep_call)?) } else { None };
            let share_us =
                if kind == BenchLoss::NtXent { Some(median_call_us(stream, WARMUP_CALLS, SUMMARY_RUNS, share_call)?) } else { None };
            let unfused = unfused_ok.clone().map(|_| unfused_peak);
            rows.push(SummaryRow { id: id("*"), flops, fused_us, unfused_us, rowsweep_us, share_us, fused_bytes: fused_peak, unfused });
        }
    }
    gpu.synchronize()?;
    Ok(())
}

/// criterion's routine: GPU time of `iters` calls. It cannot return an error, so a failed call
/// ends the bench loudly.
fn time_calls(stream: &Arc<CudaStream>, iters: u64, call: impl FnMut() -> contrastive_kernels::Result<f32>) -> Duration {
    let ms = calls_ms(stream, iters, call).unwrap_or_else(|e| panic!("losses bench: timed calls failed: {e}"));
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
}

fn print_summary(gpu: &Gpu, rows: &[SummaryRow]) {
    let peaks = DevicePeaks::of(gpu);
    let peak = peaks.tensor_tflops.unwrap_or(989.0);
    println!();
    println!(
        "losses summary on {}: median of {SUMMARY_RUNS} single-call CUDA-event timings after {WARMUP_CALLS} warm-up calls",
        peaks.device
    );
    println!("TFLOP/s convention (issue 3): 2*N*N*D per GEMM-equivalent; fwd = 1 GEMM-equivalent, fwd_bwd = 4 (2 forward-and-recompute, 2 for dZ)");
    println!("%peak: of {peak} TFLOP/s dense f16/bf16 (H100 SXM, DESIGN.md section 6); ratio = unfused time / fused time");
    println!("MiB: peak extra device memory beyond inputs and gradients (fused: O(n d); unfused: S f32 + G in T + O(n d))");
    println!("sym x: the fused forward without the self geometry's symmetry (every tile) / with it (tiles on and above the diagonal)");
    println!("1/4 x: one rank's share of four (anchor_rows = N / 4, distributed.gather_loss) / the whole batch; logit work: about 0.25 fwd, 0.44 bwd");
    if peaks.tensor_tflops.is_none() {
        println!("note: this device is not an H100/H200; %peak is still relative to the H100's figure");
    }
    println!(
        "{:<36} {:>10} {:>11} {:>7} {:>8} {:>7} {:>8} {:>7} {:>9} {:>11} {:>6} {:>6}",
        "case", "fused us", "unfused us", "ratio", "fused TF", "%peak", "unf. TF", "%peak", "fused MiB", "unfused MiB", "sym x", "1/4 x"
    );
    for row in rows {
        let tf = |us: f64| row.flops / (us * 1e-6) / 1e12;
        let (unf_us, ratio, unf_tf, unf_pct) = match row.unfused_us {
            Some(us) => (
                format!("{us:.1}"),
                format!("{:.2}", us / row.fused_us),
                format!("{:.1}", tf(us)),
                format!("{:.1}%", 100.0 * tf(us) / peak),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let unf_mem = match &row.unfused {
            Ok(b) => format!("{:.1}", mib(*b)),
            Err(why) => format!("({why})"),
        };
        let sym = row.rowsweep_us.map_or("-".into(), |us| format!("{:.2}", us / row.fused_us));
        let share = row.share_us.map_or("-".into(), |us| format!("{:.2}", us / row.fused_us));
        println!(
            "{:<36} {:>10.1} {:>11} {:>7} {:>8.1} {:>7} {:>8} {:>7} {:>9.1} {:>11} {:>6} {:>6}",
            row.id,
            row.fused_us,
            unf_us,
            ratio,
            tf(row.fused_us),
            format!("{:.1}%", 100.0 * tf(row.fused_us) / peak),
            unf_tf,
            unf_pct,
            mib(row.fused_bytes),
            unf_mem,
            sym,
            share
        );
    }
}

/// Computed, not run: what each path allocates at the reference shape.
fn print_memory_target() {
    for dtype in [DType::BF16, DType::F16] {
        let fused = fused_extra_bytes(TARGET_N, None, 0, TARGET_D, dtype).peak();
        let plain = unfused::extra_bytes(TARGET_N, None, 0, TARGET_D, dtype).peak();
        println!(
            "memory target (issue 3): N = {TARGET_N}, D = {TARGET_D}, {dtype}, forward+backward extra device memory: fused {:.1} MiB ({} 64 MiB target), unfused {:.2} GiB (computed from the allocations, not run)",
            mib(fused),
            if fused < 64 << 20 { "meets the" } else { "MISSES the" },
            gib(plain)
        );
    }
}
