//! Bench: fused top-k scoring against the unfused baseline and the bare GEMM, in one run.
//!
//! The shapes: nq = 10,000 queries, nb in {50,000, 1,000,000} bank rows, d in {128, 512},
//! k in {1, 50, 1000}, f16. For each case:
//! * fused   = `topk_raw` (norm prologue, fused similarity + selection, merge), cosine;
//! * unfused = `topk_unfused` (norms, cuBLAS GEMM writing f32 similarity blocks, plain top-k);
//! * GEMM    = the same GEMM alone (cuBLAS, f16 output, same row blocks), no normalization and no
//!   selection: the lower bound the fused kernel is measured against.
//!
//! Criterion measures the fused kernel (for regression baselines); the summary table (medians of
//! single-run CUDA-event timings) prints all three, the speedup over unfused, and the fused time
//! as a multiple of the GEMM time (targets: k = 50 at most 1.5x, k = 1000 at most 3x, and at least
//! 3x faster than unfused, at nb = 1,000,000, d = 512). It also checks fused against unfused on a
//! few queries.
//!
//! Without a usable GPU it prints one `topk bench skipped: ...` line and exits 0; without
//! libcublas it times the fused kernel alone.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use contrastive_kernels::cudarc::cublas::{result::gemm_ex, sys as blas_sys, CudaBlas};
use contrastive_kernels::cudarc::driver::sys::CUevent_flags;
use contrastive_kernels::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use contrastive_kernels::ops::topk::gpu::{topk_raw, topk_unfused};
use contrastive_kernels::rng::SplitMix64;
use contrastive_kernels::{f16, DType, DeviceMatrix, Gpu, Matrix, RawMatrix, TopKOptions};
use criterion::{Criterion, Throughput};

type BoxError = Box<dyn std::error::Error>;

const NQ: usize = 10_000;
const BANKS: [usize; 2] = [50_000, 1_000_000];
const DIMS: [usize; 2] = [128, 512];
const KS: [usize; 3] = [1, 50, 1000];
const SUMMARY_RUNS: usize = 5;
/// Rows of the GEMM-only reference's output block (the baseline's own blocking is 1 GiB of f32).
const GEMM_BLOCK_BYTES: usize = 1 << 30;
/// Queries compared between fused and unfused.
const CHECK_QUERIES: usize = 16;

fn main() {
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("topk bench skipped: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        eprintln!("topk bench FAILED: {e}");
        std::process::exit(1);
    }
}

fn is_timing_run() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

struct Row {
    id: String,
    fused_us: f64,
    unfused_us: Option<f64>,
    gemm_us: Option<f64>,
    mismatches: Option<(usize, usize)>,
}

fn run(gpu: &Gpu) -> Result<(), BoxError> {
    let blas = if unsafe { blas_sys::is_culib_present() } {
        Some(CudaBlas::new(gpu.stream().clone())?)
    } else {
        println!("topk bench: libcublas not found (LD_LIBRARY_PATH?); fused kernel only");
        None
    };
    let timing = is_timing_run();
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("topk");
    group.sample_size(10);
    let stream = gpu.stream().clone();
    let mut rows = Vec::new();
    for &nb in &BANKS {
        for &d in &DIMS {
            let q = DeviceMatrix::upload(gpu, &random_f16(NQ, d, 10 + d as u64))?;
            let bank = DeviceMatrix::upload(gpu, &random_f16(nb, d, 20 + d as u64 + nb as u64))?;
            for &k in &KS {
                let id = format!("f16/nq{NQ}_nb{nb}_d{d}_k{k}");
                let opts = TopKOptions::new(k);
                let mut values = stream.alloc_zeros::<f32>(NQ * k)?;
                let mut indices = stream.alloc_zeros::<i32>(NQ * k)?;
                let (vp, ip) = (values.device_ptr_mut(&stream).0, indices.device_ptr_mut(&stream).0);
                let (qp, bp) = (q.slice().device_ptr(&stream).0, bank.slice().device_ptr(&stream).0);
                let fused = || -> Result<(), BoxError> {
                    let (qr, br) = (RawMatrix::new(qp, NQ, d, DType::F16), RawMatrix::new(bp, nb, d, DType::F16));
                    // SAFETY: live buffers of these shapes, owned by this function until synchronized.
                    unsafe { topk_raw(gpu, &stream, qr, br, vp, ip, &opts)? };
                    Ok(())
                };
                group.throughput(Throughput::Elements((NQ * nb) as u64)); // similarities per second
                group.bench_function(format!("fused/{id}"), |b| b.iter_custom(|iters| time(&stream, iters, &fused)));
                if !timing {
                    continue;
                }
                let fused_us = median_us(&stream, &fused)?;
                let (unfused_us, gemm_us, mismatches) = match &blas {
                    Some(blas) => {
                        let unfused = || -> Result<(), BoxError> {
                            topk_unfused(gpu, blas, &q, &bank, &opts)?;
                            Ok(())
                        };
                        let mut gemm_out = stream.alloc_zeros::<f16>((GEMM_BLOCK_BYTES / 2).min(NQ * nb))?;
                        let gp = gemm_out.device_ptr_mut(&stream).0;
                        let gemm = || gemm_only(blas, qp, bp, gp, nb, d);
                        let check = compare(gpu, blas, &q, &bank, &values, &indices, &opts)?;
                        let r = (Some(median_us(&stream, &unfused)?), Some(median_us(&stream, &gemm)?), Some(check));
                        gpu.synchronize()?;
                        drop(gemm_out);
                        r
                    }
                    None => (None, None, None),
                };
                rows.push(Row { id, fused_us, unfused_us, gemm_us, mismatches });
                gpu.synchronize()?;
                drop((values, indices));
            }
            gpu.synchronize()?;
            drop((q, bank));
        }
    }
    group.finish();
    criterion.final_summary();
    if timing {
        summary(gpu, &rows);
    }
    Ok(())
}

/// Uniform entries in [-1, 1) (fast to generate for 512M values, never all zeros).
fn random_f16(rows: usize, cols: usize, seed: u64) -> Matrix<f16> {
    let mut rng = SplitMix64::new(seed);
    let data = (0..rows * cols).map(|_| f16::from_f32((rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)).collect();
    Matrix::new(rows, cols, data).unwrap()
}

/// The bare GEMM of the same shape, f16 output, over query blocks writing one reused buffer.
fn gemm_only(blas: &CudaBlas, q: u64, b: u64, out: u64, nb: usize, d: usize) -> Result<(), BoxError> {
    let block = (GEMM_BLOCK_BYTES / (2 * nb)).clamp(1, NQ);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let mut r0 = 0;
    while r0 < NQ {
        let rows = block.min(NQ - r0);
        // SAFETY: q (NQ x d), b (nb x d), out (>= rows x nb) are live f16 buffers on the handle's stream.
        unsafe {
            gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                nb as i32,
                rows as i32,
                d as i32,
                &alpha as *const f32 as *const c_void,
                b as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16F,
                d as i32,
                (q + (r0 * d * 2) as u64) as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16F,
                d as i32,
                &beta as *const f32 as *const c_void,
                out as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_16F,
                nb as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?
        };
        r0 += rows;
    }
    Ok(())
}

/// Fused vs unfused on CHECK_QUERIES queries: (slots whose index differs, slots compared).
/// Differences are expected only where similarities tie within f32 accumulation error.
fn compare(
    gpu: &Gpu,
    blas: &CudaBlas,
    q: &DeviceMatrix<f16>,
    bank: &DeviceMatrix<f16>,
    values: &CudaSlice<f32>,
    indices: &CudaSlice<i32>,
    opts: &TopKOptions,
) -> Result<(usize, usize), BoxError> {
    let unfused = topk_unfused(gpu, blas, q, bank, opts)?.download(gpu)?;
    let stream = gpu.stream();
    let (fv, fi) = (stream.clone_dtoh(values)?, stream.clone_dtoh(indices)?);
    let k = opts.k;
    let (mut differ, mut total) = (0, 0);
    for i in (0..NQ).step_by(NQ / CHECK_QUERIES) {
        for j in 0..k {
            total += 1;
            let (a, b) = (fi[i * k + j], unfused.indices[i * k + j]);
            if a != b && (fv[i * k + j] - unfused.values[i * k + j]).abs() > 1e-3 {
                differ += 1;
            }
        }
    }
    Ok((differ, total))
}

fn event(stream: &Arc<CudaStream>) -> Result<contrastive_kernels::cudarc::driver::CudaEvent, BoxError> {
    Ok(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

fn launches_ms(stream: &Arc<CudaStream>, iters: u64, f: &dyn Fn() -> Result<(), BoxError>) -> Result<f32, BoxError> {
    let start = event(stream)?;
    for _ in 0..iters {
        f()?;
    }
    let end = event(stream)?;
    Ok(start.elapsed_ms(&end)?)
}

fn time(stream: &Arc<CudaStream>, iters: u64, f: &dyn Fn() -> Result<(), BoxError>) -> Duration {
    let ms = launches_ms(stream, iters, f).unwrap_or_else(|e| panic!("topk bench: timed launches failed: {e}"));
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
}

/// Median of SUMMARY_RUNS single-run timings after one warm-up run, in microseconds.
fn median_us(stream: &Arc<CudaStream>, f: &dyn Fn() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    f()?;
    let mut us: Vec<f64> = (0..SUMMARY_RUNS).map(|_| launches_ms(stream, 1, f).map(|ms| f64::from(ms) * 1e3)).collect::<Result<_, _>>()?;
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

fn summary(gpu: &Gpu, rows: &[Row]) {
    println!();
    println!("topk summary on {}: median of {SUMMARY_RUNS} single-run CUDA-event timings after a warm-up", gpu.describe());
    println!("fused = norms + fused similarity/selection + merge; unfused = norms + cuBLAS GEMM (f32 blocks) + plain top-k;");
    println!("GEMM = the same cuBLAS GEMM alone (f16 out, no norms, no selection). Targets at nb = 1M, d = 512:");
    println!("k = 50: unfused/fused >= 3 and fused/GEMM <= 1.5; k = 1000: fused/GEMM <= 3.");
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>13} {:>10} {:>12}",
        "case", "fused ms", "unfused ms", "GEMM ms", "unfused/fused", "fused/GEMM", "idx differ"
    );
    let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |us| format!("{:.2}", us / 1e3));
    for r in rows {
        let speedup = r.unfused_us.map_or("n/a".to_string(), |u| format!("{:.2}x", u / r.fused_us));
        let over = r.gemm_us.map_or("n/a".to_string(), |g| format!("{:.2}x", r.fused_us / g));
        let differ = r.mismatches.map_or("n/a".to_string(), |(d, t)| format!("{d}/{t}"));
        println!(
            "{:<34} {:>11.2} {:>11} {:>11} {:>13} {:>10} {:>12}",
            r.id,
            r.fused_us / 1e3,
            ms(r.unfused_us),
            ms(r.gemm_us),
            speedup,
            over,
            differ
        );
    }
}
