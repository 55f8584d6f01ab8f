//! Bench: the fused cosine-similarity kernel against a bare cuBLAS GEMM of the same shape.
//!
//! S = normalize(A) normalize(B)^T for A (m x d), B (n x d), m = n = 8192, d in {128, 512}, inputs
//! f16 / bf16, output f32 (the library default) and f16. Criterion reports FLOP/s
//! (`Throughput::Elements(2 m n d)`), timed with CUDA events; a summary table (CUDA-event medians,
//! fraction of the H100 peaks) follows the criterion output.
//!
//! Without a usable GPU the bench prints one `similarity bench skipped: ...` line and exits 0.
//! Without libcublas it benches the fused kernel alone (no baseline, no correctness check).

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use contrastive_kernels::cudarc::cublas::{result::gemm_ex, sys as blas_sys, CudaBlas};
use contrastive_kernels::cudarc::driver::sys::CUevent_flags;
use contrastive_kernels::cudarc::driver::{sys::CUdeviceptr, CudaStream, DevicePtr, DevicePtrMut};
use contrastive_kernels::ops::similarity::gpu::similarity_raw;
use contrastive_kernels::rng::SplitMix64;
use contrastive_kernels::{bf16, f16, DType, DeviceMatrix, FloatElement, Gpu, Matrix, RawMatrix, SimilarityOptions};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

type BoxError = Box<dyn std::error::Error>;

const M: usize = 8192;
const N: usize = 8192;
const DIMS: [usize; 2] = [128, 512];

/// H100 SXM figures from DESIGN.md section 6 (the H200 has the same compute, 4.8 TB/s).
const PEAK_TFLOPS: f64 = 989.0;
const PEAK_HBM_TBPS: f64 = 3.35;

/// Summary timing: medians of this many single-launch CUDA-event timings, after the warm-up.
const SUMMARY_RUNS: usize = 20;
const WARMUP_LAUNCHES: usize = 3;
/// Rows of S compared against cuBLAS (every column of each), and the tolerance of that check.
const CHECK_ROWS: usize = 8;
const CHECK_TOLERANCE: f64 = 1e-2;

fn main() {
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("similarity bench skipped: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        eprintln!("similarity bench FAILED: {e}");
        std::process::exit(1);
    }
}

fn run(gpu: &Gpu) -> Result<(), BoxError> {
    let blas = open_cublas(gpu)?;
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("similarity");
    let mut rows = Vec::new();
    for d in DIMS {
        rows.push(bench_case::<f16, f32>(&mut group, gpu, blas.as_ref(), d)?);
        rows.push(bench_case::<bf16, f32>(&mut group, gpu, blas.as_ref(), d)?);
        rows.push(bench_case::<f16, f16>(&mut group, gpu, blas.as_ref(), d)?);
    }
    group.finish();
    criterion.final_summary();
    if is_timing_run() {
        print_summary(gpu, &rows);
    }
    Ok(())
}

/// cuBLAS on the GPU's stream, or None (with a note) when libcublas cannot be loaded: cudarc's
/// dynamic loading would panic on first use instead of returning an error.
fn open_cublas(gpu: &Gpu) -> Result<Option<CudaBlas>, BoxError> {
    if !unsafe { blas_sys::is_culib_present() } {
        println!("similarity bench: libcublas not found (LD_LIBRARY_PATH?); fused kernel only, no baseline, no check");
        return Ok(None);
    }
    Ok(Some(CudaBlas::new(gpu.stream().clone())?))
}

/// Criterion's own mode test (lib.rs, configure_from_args): `--bench` without `--test` / `--list`.
/// `cargo test --benches` runs each bench once; the summary timings would only slow it down.
fn is_timing_run() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

/// One shape and dtype pair: device inputs, one output for each implementation, and the raw
/// pointers the launches take (taken once: this bench owns every buffer and uses one stream).
struct Case<T, TOut> {
    m: usize,
    n: usize,
    d: usize,
    a: DeviceMatrix<T>,
    b: DeviceMatrix<T>,
    s_fused: DeviceMatrix<TOut>,
    s_blas: DeviceMatrix<TOut>,
    ptrs: CasePointers,
    /// Host f64 row norms of the (rounded) inputs, for checking fused against cuBLAS.
    norms_a: Vec<f64>,
    norms_b: Vec<f64>,
}

#[derive(Clone, Copy)]
struct CasePointers {
    a: CUdeviceptr,
    b: CUdeviceptr,
    s_fused: CUdeviceptr,
    s_blas: CUdeviceptr,
}

/// One line of the summary table.
struct SummaryRow {
    id: String,
    flops: f64,
    out_bytes: f64,
    fused_us: f64,
    blas_us: Option<f64>,
}

fn case_id<T: FloatElement, TOut: FloatElement>(m: usize, n: usize, d: usize) -> String {
    format!("{}->{}/m{m}_n{n}_d{d}", T::DTYPE, TOut::DTYPE)
}

/// Builds one case, checks fused against cuBLAS once, benches both, and times the summary row.
fn bench_case<T: FloatElement, TOut: FloatElement>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    blas: Option<&CudaBlas>,
    d: usize,
) -> Result<SummaryRow, BoxError> {
    let case = Case::<T, TOut>::new(gpu, M, N, d)?;
    let id = case_id::<T, TOut>(M, N, d);
    let stream = gpu.stream();

    if let Some(blas) = blas {
        let err = case.max_error_vs_cublas(gpu, blas)?;
        if err > CHECK_TOLERANCE {
            println!("WARNING: similarity {id}: fused differs from cuBLAS / row norms by {err:.3e} (> {CHECK_TOLERANCE:.0e})");
        }
    }

    group.throughput(Throughput::Elements((2 * M * N * d) as u64));
    group.bench_function(format!("fused/{id}"), |bencher| {
        bencher.iter_custom(|iters| time_launches(stream, iters, || case.launch_fused(gpu)))
    });
    if let Some(blas) = blas {
        group.bench_function(format!("cublas/{id}"), |bencher| {
            bencher.iter_custom(|iters| time_launches(stream, iters, || case.launch_cublas(blas)))
        });
    }

    let fused_us = median_launch_us(stream, || case.launch_fused(gpu))?;
    let blas_us = match blas {
        Some(blas) => Some(median_launch_us(stream, || case.launch_cublas(blas))?),
        None => None,
    };
    let out_bytes = (M * N * TOut::DTYPE.size_bytes()) as f64;
    case.release(gpu)?;
    Ok(SummaryRow { id, flops: (2 * M * N * d) as f64, out_bytes, fused_us, blas_us })
}

impl<T: FloatElement, TOut: FloatElement> Case<T, TOut> {
    /// Random normal inputs (never zeros: a zero row would take a shortcut), uploaded; outputs
    /// allocated. Everything here happens before any timing.
    fn new(gpu: &Gpu, m: usize, n: usize, d: usize) -> Result<Self, BoxError> {
        let mut rng = SplitMix64::new(0x5EED_0000 + d as u64);
        let host_a = Matrix::from_fn(m, d, |_, _| T::from_f64(rng.normal()));
        let host_b = Matrix::from_fn(n, d, |_, _| T::from_f64(rng.normal()));
        let a = DeviceMatrix::upload(gpu, &host_a)?;
        let b = DeviceMatrix::upload(gpu, &host_b)?;
        let mut s_fused = DeviceMatrix::<TOut>::zeros(gpu, m, n)?;
        let mut s_blas = DeviceMatrix::<TOut>::zeros(gpu, m, n)?;

        let stream = gpu.stream();
        let ptrs = CasePointers {
            a: a.slice().device_ptr(stream).0,
            b: b.slice().device_ptr(stream).0,
            s_fused: s_fused.slice_mut().device_ptr_mut(stream).0,
            s_blas: s_blas.slice_mut().device_ptr_mut(stream).0,
        };
        Ok(Case {
            m,
            n,
            d,
            a,
            b,
            s_fused,
            s_blas,
            ptrs,
            norms_a: contrastive_kernels::ops::normalize::cpu::row_norms(&host_a),
            norms_b: contrastive_kernels::ops::normalize::cpu::row_norms(&host_b),
        })
    }

    /// The library's fused kernel on the preallocated output. Its per-call cost includes what
    /// `similarity_raw` always does: the stream-ordered (m + n) * 4-byte norm scratch and the norm
    /// prologue kernels.
    fn launch_fused(&self, gpu: &Gpu) -> Result<(), BoxError> {
        let a = RawMatrix::new(self.ptrs.a, self.m, self.d, T::DTYPE);
        let b = RawMatrix::new(self.ptrs.b, self.n, self.d, T::DTYPE);
        let s = RawMatrix::new(self.ptrs.s_fused, self.m, self.n, TOut::DTYPE);
        // SAFETY: the pointers are live allocations of `self` with exactly these shapes and dtypes,
        // and `self` outlives every launch (the stream is synchronized before it is dropped).
        unsafe { similarity_raw(gpu, gpu.stream(), a, b, s, &SimilarityOptions::cosine())? };
        Ok(())
    }

    /// The baseline: the bare GEMM S_raw = A B^T with the same operand and output dtypes, f32
    /// accumulation and cuBLAS's default algorithm. It does NOT normalize (no norm prologue, no
    /// scaling), so it is the lower bound the fused kernel is compared with, not the same result.
    ///
    /// Row-major S (m x n) is column-major S^T (n x m) = B A^T: B's buffer read column-major is
    /// B^T (d x n, ld d), used transposed; A's buffer is A^T (d x m, ld d), used as is.
    fn launch_cublas(&self, blas: &CudaBlas) -> Result<(), BoxError> {
        let (alpha, beta) = (1.0f32, 0.0f32); // f32 scalars: CUBLAS_COMPUTE_32F wants them
        let (in_type, out_type) = (blas_type(T::DTYPE), blas_type(TOut::DTYPE));
        let (m, n, d) = (self.m as i32, self.n as i32, self.d as i32);
        // SAFETY: buffers sized for these shapes, alive until the stream has run the GEMM; the
        // handle is bound to the same stream as every other launch of this bench.
        unsafe {
            gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n, // rows of S^T
                m, // columns of S^T
                d, // k
                &alpha as *const f32 as *const c_void,
                self.ptrs.b as *const c_void,
                in_type,
                d,
                self.ptrs.a as *const c_void,
                in_type,
                d,
                &beta as *const f32 as *const c_void,
                self.ptrs.s_blas as *mut c_void,
                out_type,
                n,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?
        };
        Ok(())
    }

    /// Runs both once and compares CHECK_ROWS random rows of S: fused vs cuBLAS / (|a_i| |b_j|).
    fn max_error_vs_cublas(&self, gpu: &Gpu, blas: &CudaBlas) -> Result<f64, BoxError> {
        self.launch_fused(gpu)?;
        self.launch_cublas(blas)?;
        let stream = gpu.stream();
        let mut rng = SplitMix64::new(0xC0FFEE);
        let mut max_err = 0.0f64;
        for _ in 0..CHECK_ROWS {
            let i = rng.below(self.m);
            let row = i * self.n..(i + 1) * self.n;
            let fused = stream.clone_dtoh(&self.s_fused.slice().slice(row.clone()))?;
            let gemm = stream.clone_dtoh(&self.s_blas.slice().slice(row))?;
            for (j, (f, g)) in fused.iter().zip(&gemm).enumerate() {
                let expected = g.to_f64() / (self.norms_a[i] * self.norms_b[j]);
                let err = (f.to_f64() - expected).abs();
                // A NaN must fail the check, and f64::max would drop it.
                max_err = max_err.max(if err.is_nan() { f64::INFINITY } else { err });
            }
        }
        Ok(max_err)
    }

    /// Frees the buffers only after the stream has run everything queued on them.
    fn release(self, gpu: &Gpu) -> Result<(), BoxError> {
        gpu.synchronize()?;
        drop((self.a, self.b, self.s_fused, self.s_blas));
        Ok(())
    }
}

fn blas_type(dtype: DType) -> blas_sys::cudaDataType {
    match dtype {
        DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        DType::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        DType::I32 => unreachable!("similarity has no integer operands"),
    }
}

fn timing_event(stream: &Arc<CudaStream>) -> Result<contrastive_kernels::cudarc::driver::CudaEvent, BoxError> {
    // CU_EVENT_DEFAULT: `None` would create the event with timing disabled.
    Ok(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

/// criterion's routine: GPU time of `iters` back-to-back launches. It cannot return an error,
/// so a failed launch ends the bench loudly.
fn time_launches(stream: &Arc<CudaStream>, iters: u64, launch: impl FnMut() -> Result<(), BoxError>) -> Duration {
    let ms = launches_ms(stream, iters, launch).unwrap_or_else(|e| panic!("similarity bench: timed launches failed: {e}"));
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
}

/// Milliseconds between two CUDA events around `iters` launches on the stream: host launch
/// overhead overlaps the queued work instead of being counted.
fn launches_ms(stream: &Arc<CudaStream>, iters: u64, mut launch: impl FnMut() -> Result<(), BoxError>) -> Result<f32, BoxError> {
    let start = timing_event(stream)?;
    for _ in 0..iters {
        launch()?;
    }
    let end = timing_event(stream)?;
    Ok(start.elapsed_ms(&end)?) // waits for `end`
}

/// Median of SUMMARY_RUNS single-launch timings, in microseconds, after a warm-up.
fn median_launch_us(stream: &Arc<CudaStream>, mut launch: impl FnMut() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    for _ in 0..WARMUP_LAUNCHES {
        launch()?;
    }
    let mut us = Vec::with_capacity(SUMMARY_RUNS);
    for _ in 0..SUMMARY_RUNS {
        us.push(f64::from(launches_ms(stream, 1, &mut launch)?) * 1e3);
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

fn print_summary(gpu: &Gpu, rows: &[SummaryRow]) {
    let device = gpu.describe();
    println!();
    println!("similarity summary on {device}: median of {SUMMARY_RUNS} single-launch CUDA-event timings after {WARMUP_LAUNCHES} warm-up launches");
    println!("peaks are H100 SXM figures from DESIGN.md section 6: {PEAK_TFLOPS} TFLOP/s dense f16/bf16, {PEAK_HBM_TBPS} TB/s HBM");
    if !device.contains("H100") && !device.contains("H200") {
        println!("note: this device is not an H100/H200; the % columns are still relative to the H100's peaks");
    } else if device.contains("H200") {
        println!("note: H200 has the same compute peak but 4.8 TB/s HBM; the write % is relative to the H100's 3.35 TB/s");
    }
    println!("fused = normalize + GEMM + write S; cuBLAS = bare GEMM, no normalization (lower bound)");
    println!("S-write = m*n*sizeof(out) / time as % of HBM peak (at d = 128 writing S is the bound)");
    println!(
        "{:<28} {:>10} {:>10} {:>7} {:>9} {:>7} {:>9} {:>7} {:>9} {:>9}",
        "case", "fused us", "cuBLAS us", "ratio", "fused TF", "%peak", "cuBLAS TF", "%peak", "fused wr", "cuBLAS wr"
    );
    for row in rows {
        let tflops = |us: f64| row.flops / (us * 1e-6) / 1e12;
        let write_pct = |us: f64| 100.0 * row.out_bytes / (us * 1e-6) / (PEAK_HBM_TBPS * 1e12);
        let fused_tf = tflops(row.fused_us);
        let (blas_us, ratio, blas_tf, blas_pct, blas_wr) = match row.blas_us {
            Some(us) => (
                format!("{us:.1}"),
                format!("{:.2}", row.fused_us / us),
                format!("{:.1}", tflops(us)),
                format!("{:.1}%", 100.0 * tflops(us) / PEAK_TFLOPS),
                format!("{:.1}%", write_pct(us)),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "{:<28} {:>10.1} {:>10} {:>7} {:>9.1} {:>7} {:>9} {:>7} {:>9} {:>9}",
            row.id,
            row.fused_us,
            blas_us,
            ratio,
            fused_tf,
            format!("{:.1}%", 100.0 * fused_tf / PEAK_TFLOPS),
            blas_tf,
            blas_pct,
            format!("{:.1}%", write_pct(row.fused_us)),
            blas_wr,
        );
    }
}
