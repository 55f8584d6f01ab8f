//! The GPU launches of `topk` (`kernels/topk.cu`; its header explains the selection).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result::gemm_ex, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUdevice_attribute, CUdeviceptr, CUfunction_attribute};
use cudarc::driver::{result as driver, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use super::{check, Exclusion, TopK, TopKOptions};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::topk::{
    self as params, TopkDenseParams, TopkMergeParams, TopkRadixCollectParams, TopkRadixHistParams, TopkRadixRow, TopkRadixStepParams,
    TopkSortParams, TopkSweep, TopkTilesParams, DENSE_THREADS, HIST_DYN_SMEM, MERGE_WARPS, POOL_DYN_SMEM, RADIX_BINS, RADIX_LEVELS,
    SORT_THREADS, STEP_WARPS, TILE, TILE_THREADS,
};
use crate::gpu::params::KernelParams;
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};
use crate::matrix::Matrix;
use crate::ops::check_float;

// ------------------------------------------------------------------------------------------------
// The launches. Tile sizes, threads and shared memory come from kernels/params/topk.h.

const MODULE: &str = "topk";
/// The largest k of the fused strategy (topk_merge's buffers).
pub const MAX_FUSED_K: usize = params::MAX_FUSED_K;
/// Sorting in shared memory up to this many keys (dynamic, no opt-in needed below 48 KB).
const SORT_SMEM_KEYS: usize = 4096;
/// Per-query pools are global scratch; queries are processed in batches to bound it.
const POOL_BUDGET_BYTES: usize = 512 << 20;
/// Most bank slices per query block (each adds a k-key list to the merge).
const MAX_SLICES: usize = 64;

/// Capacity of a query's pool: k kept keys plus room for at least two tile rows of survivors.
pub(crate) fn pool_capacity(k: usize) -> usize {
    k + k.max(2 * TILE)
}

/// The result on the device: `values` / `indices` are rows x k, row-major.
pub struct DeviceTopK {
    pub rows: usize,
    pub k: usize,
    pub values: CudaSlice<f32>,
    pub indices: CudaSlice<i32>,
}

impl DeviceTopK {
    fn alloc(gpu: &Gpu, rows: usize, k: usize) -> Result<Self> {
        let stream = gpu.stream();
        let len = (rows * k).max(1);
        Ok(DeviceTopK {
            rows,
            k,
            values: stream.alloc_zeros::<f32>(len).during("device allocation")?,
            indices: stream.alloc_zeros::<i32>(len).during("device allocation")?,
        })
    }

    pub fn download(&self, gpu: &Gpu) -> Result<TopK<f32>> {
        let stream = gpu.stream();
        let mut values = stream.clone_dtoh(&self.values).during("device-to-host copy")?;
        let mut indices = stream.clone_dtoh(&self.indices).during("device-to-host copy")?;
        values.truncate(self.rows * self.k);
        indices.truncate(self.rows * self.k);
        Ok(TopK { rows: self.rows, k: self.k, values, indices })
    }
}

/// Top k of each query against a bank in device memory, on the GPU's default stream.
pub fn topk<T: FloatElement>(gpu: &Gpu, queries: &DeviceMatrix<T>, bank: &DeviceMatrix<T>, opts: &TopKOptions) -> Result<DeviceTopK> {
    check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
    let stream = gpu.stream();
    let mut out = DeviceTopK::alloc(gpu, queries.rows(), opts.k)?;
    let (q, _qg) = queries.raw(stream);
    let (b, _bg) = bank.raw(stream);
    let (values, _vg) = out.values.device_ptr_mut(stream);
    let (indices, _ig) = out.indices.device_ptr_mut(stream);
    // SAFETY: live allocations of the described shapes, guarded until the work is queued.
    unsafe { topk_raw(gpu, stream, q, b, values, indices, opts)? };
    drop((_qg, _bg, _vg, _ig));
    Ok(out)
}

/// Top k of each query against a bank in host memory, streamed to the device `chunk_rows` bank
/// rows at a time: each chunk is staged in pinned memory and copied on a second stream while the
/// previous chunk is searched; per-chunk results are merged exactly (the result equals
/// [`topk`]'s bit for bit). Device memory: two chunks plus O(nq k). For k > 1024 every radix pass
/// streams the bank again.
pub fn topk_host_bank<T: FloatElement>(
    gpu: &Gpu,
    queries: &DeviceMatrix<T>,
    bank: &Matrix<T>,
    chunk_rows: usize,
    opts: &TopKOptions,
) -> Result<DeviceTopK> {
    check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
    if chunk_rows == 0 {
        return Err(Error::invalid("chunk_rows", "must be at least 1"));
    }
    let stream = gpu.stream();
    let mut out = DeviceTopK::alloc(gpu, queries.rows(), opts.k)?;
    if queries.rows() == 0 {
        return Ok(out);
    }
    let (q, _qg) = queries.raw(stream);
    let values = out.values.device_ptr_mut(stream).0;
    let indices = out.indices.device_ptr_mut(stream).0;
    let mut source = HostBank::new(gpu, bank, chunk_rows.min(bank.rows()))?;
    // SAFETY: as in `topk`; the host bank outlives the call, which waits for its copies.
    unsafe { run(gpu, stream, q, &mut source, opts, 0, values, indices)? };
    source.finish()?;
    drop(_qg);
    Ok(out)
}

/// Top k on caller memory, queued on `stream`: `queries` and `bank` share a float dtype and d;
/// `values` (f32) and `indices` (i32) are queries.rows x k. Scratch (norms, pools) is allocated
/// stream-ordered on `stream`. For k > 1024 the call synchronizes `stream` once per radix pass.
///
/// # Safety
/// Every pointer must be valid device memory of this GPU's context for the shape and dtype it
/// is described with, and stay valid until the stream has run the kernels.
pub unsafe fn topk_raw(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    queries: RawMatrix,
    bank: RawMatrix,
    values: CUdeviceptr,
    indices: CUdeviceptr,
    opts: &TopKOptions,
) -> Result<()> {
    check_raw(queries, bank, values, indices, opts)?;
    if queries.rows == 0 {
        return Ok(());
    }
    let mut source = DeviceBank { bank, norms: None };
    run(gpu, stream, queries, &mut source, opts, 0, values, indices)
}

fn check_raw(queries: RawMatrix, bank: RawMatrix, values: CUdeviceptr, indices: CUdeviceptr, opts: &TopKOptions) -> Result<()> {
    check_float("queries", queries.dtype)?;
    if bank.dtype != queries.dtype {
        return Err(Error::invalid("bank", format!("must have the dtype of queries ({}), got {}", queries.dtype, bank.dtype)));
    }
    check((queries.rows, queries.cols), (bank.rows, bank.cols), opts)?;
    queries.check_pointer("queries")?;
    bank.check_pointer("bank")?;
    RawMatrix::new(values, queries.rows, opts.k, DType::F32).check_pointer("values")?;
    RawMatrix::new(indices, queries.rows, opts.k, DType::I32).check_pointer("indices")?;
    Ok(())
}

/// Top-1 with a per-bank-row bias added to the similarity (k-means' euclidean assignment:
/// raw dot products, bias -|c|^2 / 2). Crate-internal.
///
/// # Safety
/// As [`topk_raw`]; `bias` holds bank.rows f32.
#[allow(clippy::too_many_arguments)] // the raw entry point takes the C ABI's device pointers one by one
pub(crate) unsafe fn top1_biased_raw(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    queries: RawMatrix,
    bank: RawMatrix,
    bias: CUdeviceptr,
    normalized: bool,
    values: CUdeviceptr,
    indices: CUdeviceptr,
) -> Result<()> {
    let opts = TopKOptions::new(1).normalized(normalized);
    check_raw(queries, bank, values, indices, &opts)?;
    if queries.rows == 0 {
        return Ok(());
    }
    let mut source = DeviceBank { bank, norms: None };
    run(gpu, stream, queries, &mut source, &opts, bias, values, indices)
}

// ------------------------------------------------------------------------------------------------
// Bank sources: the whole bank on the device, or host chunks streamed through pinned buffers.

/// One piece of the bank as the kernels see it.
#[derive(Clone, Copy)]
struct Chunk {
    x: RawMatrix,
    /// f32 row norms of this chunk, or 0 when the rows are taken as normalized.
    norms: CUdeviceptr,
    /// Global index of the chunk's first row.
    base: usize,
    last: bool,
}

trait BankSource {
    fn rows(&self) -> usize;
    fn chunks(&self) -> usize;
    /// Calls `f` for every chunk in order, with the chunk resident on the device for the work
    /// `f` queues on `stream`.
    fn for_each_chunk(
        &mut self,
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        normalized: bool,
        f: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()>;
}

struct DeviceBank {
    bank: RawMatrix,
    norms: Option<CudaSlice<f32>>,
}

impl BankSource for DeviceBank {
    fn rows(&self) -> usize {
        self.bank.rows
    }
    fn chunks(&self) -> usize {
        1
    }
    fn for_each_chunk(
        &mut self,
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        normalized: bool,
        f: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let norms = if normalized {
            0
        } else {
            if self.norms.is_none() {
                // SAFETY: written by the norm kernel before any read.
                let mut n = unsafe { stream.alloc::<f32>(self.bank.rows.max(1)) }.during("bank norm scratch")?;
                let p = n.device_ptr_mut(stream).0;
                // SAFETY: the bank is valid per the caller's contract; p holds bank.rows floats.
                unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, self.bank, None, Some(p))? };
                self.norms = Some(n);
            }
            self.norms.as_ref().map(|n| n.device_ptr(stream).0).unwrap_or(0)
        };
        f(Chunk { x: self.bank, norms, base: 0, last: true })
    }
}

struct HostBank<'a, T: FloatElement> {
    data: &'a [T],
    rows: usize,
    d: usize,
    chunk_rows: usize,
    copy: Arc<CudaStream>,
    staging: Vec<cudarc::driver::PinnedHostSlice<T>>,
    device: Vec<CudaSlice<T>>,
    norms: Vec<CudaSlice<f32>>,
    /// Per buffer: the compute stream is done reading it / the copy out of its staging is done.
    freed: Vec<Option<cudarc::driver::CudaEvent>>,
    staged: Vec<Option<cudarc::driver::CudaEvent>>,
}

impl<'a, T: FloatElement> HostBank<'a, T> {
    fn new(gpu: &Gpu, bank: &'a Matrix<T>, chunk_rows: usize) -> Result<Self> {
        let (d, chunk_rows) = (bank.cols(), chunk_rows.max(1));
        let ctx = gpu.context();
        let stream = gpu.stream();
        let copy = ctx.new_stream().during("creating the copy stream")?;
        let mut staging = Vec::new();
        let mut device = Vec::new();
        let mut norms = Vec::new();
        for _ in 0..2 {
            // SAFETY: pinned memory is written by the host before each copy reads it.
            staging.push(unsafe { ctx.alloc_pinned::<T>(chunk_rows * d) }.during("pinned staging allocation")?);
            device.push(stream.alloc_zeros::<T>(chunk_rows * d).during("bank chunk allocation")?);
            norms.push(stream.alloc_zeros::<f32>(chunk_rows).during("bank chunk norms")?);
        }
        // The copy stream may only write the buffers once their allocation has run.
        let mut freed = Vec::new();
        for _ in 0..2 {
            freed.push(Some(stream.record_event(None).during("recording an event")?));
        }
        Ok(HostBank { data: bank.data(), rows: bank.rows(), d, chunk_rows, copy, staging, device, norms, freed, staged: vec![None, None] })
    }

    /// Waits for the copies (the pinned buffers must outlive them).
    fn finish(&self) -> Result<()> {
        self.copy.synchronize().during("copy stream synchronize")
    }
}

impl<T: FloatElement> Drop for HostBank<'_, T> {
    /// Also on an error path: the pinned buffers must outlive the copies reading them.
    fn drop(&mut self) {
        let _ = self.copy.synchronize();
    }
}

impl<T: FloatElement> BankSource for HostBank<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn chunks(&self) -> usize {
        self.rows.div_ceil(self.chunk_rows)
    }
    fn for_each_chunk(
        &mut self,
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        normalized: bool,
        f: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let chunks = self.chunks();
        for c in 0..chunks {
            let b = c % 2;
            let start = c * self.chunk_rows;
            let len = self.chunk_rows.min(self.rows - start);
            let elems = len * self.d;
            // Host: refill staging[b] once its previous copy has finished.
            if let Some(ev) = self.staged[b].take() {
                ev.synchronize().during("waiting for a staging copy")?;
            }
            let host = self.staging[b].as_mut_slice().during("pinned staging")?;
            host[..elems].copy_from_slice(&self.data[start * self.d..start * self.d + elems]);
            // Copy stream: device[b] once the compute stream is done with its previous chunk.
            if let Some(ev) = self.freed[b].take() {
                self.copy.wait(&ev).during("copy stream wait")?;
            }
            let dst = self.device[b].device_ptr_mut(&self.copy).0;
            // SAFETY: dst holds chunk_rows * d elements; the pinned source stays untouched until
            // `staged[b]` has completed (checked above before the next refill, and in finish()).
            unsafe { driver::memcpy_htod_async(dst, &host[..elems], self.copy.cu_stream()) }.during("bank chunk host-to-device copy")?;
            self.staged[b] = Some(self.copy.record_event(None).during("recording an event")?);
            stream.wait(self.staged[b].as_ref().unwrap()).during("compute stream wait")?;

            let x = RawMatrix::new(self.device[b].device_ptr(stream).0, len, self.d, T::DTYPE);
            let norms = if normalized {
                0
            } else {
                let p = self.norms[b].device_ptr_mut(stream).0;
                // SAFETY: x is the chunk just copied; p holds chunk_rows floats.
                unsafe { crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, x, None, Some(p))? };
                p
            };
            f(Chunk { x, norms, base: start, last: c + 1 == chunks })?;
            self.freed[b] = Some(stream.record_event(None).during("recording an event")?);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// The two strategies.

/// Query-side state shared by every launch.
struct Queries {
    x: RawMatrix,
    norms: CUdeviceptr,
    exclude: CUdeviceptr,
    diag_offset: i64,
}

impl Queries {
    /// The rows [start, start + len) as their own matrix, with their norms and exclusions.
    fn batch(&self, start: usize, len: usize) -> (RawMatrix, CUdeviceptr, CUdeviceptr, i32) {
        let x = RawMatrix::new(self.x.ptr + (start * self.x.cols * self.x.dtype.size_bytes()) as u64, len, self.x.cols, self.x.dtype);
        let norms = if self.norms == 0 { 0 } else { self.norms + 4 * start as u64 };
        let exclude = if self.exclude == 0 { 0 } else { self.exclude + 4 * start as u64 };
        let diag = if self.diag_offset >= 0 { (self.diag_offset + start as i64) as i32 } else { -1 };
        (x, norms, exclude, diag)
    }
}

fn multiprocessors(gpu: &Gpu) -> usize {
    gpu.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_or(132, |n| n.max(1) as usize)
}

/// The most bank slices per query block: enough blocks for about two per SM, at most MAX_SLICES.
fn max_slices(sms: usize, query_rows: usize) -> usize {
    (2 * sms).div_ceil(query_rows.div_ceil(TILE).max(1)).clamp(1, MAX_SLICES)
}

/// (slices, tiles per slice) for a bank of `bank_rows`: at most `max_slices`, none empty.
fn slices_for(sms: usize, query_rows: usize, bank_rows: usize) -> (usize, usize) {
    let col_tiles = bank_rows.div_ceil(TILE).max(1);
    let want = max_slices(sms, query_rows).min(col_tiles);
    let per_slice = col_tiles.div_ceil(want);
    (col_tiles.div_ceil(per_slice), per_slice)
}

fn sweep_kernel(prefix: &str, dtype: DType, aligned: bool) -> String {
    match dtype {
        DType::F32 => format!("{prefix}_f32"),
        _ => format!("{prefix}_{dtype}{}", if aligned { "" } else { "_unaligned" }),
    }
}

fn aligned(q: &RawMatrix, b: &RawMatrix) -> bool {
    q.cols % 8 == 0 && q.ptr % 16 == 0 && b.ptr % 16 == 0
}

/// Launches a kernel that needs more than the default 48 KB of shared memory in total.
unsafe fn launch_with_smem<P: KernelParams>(gpu: &Gpu, stream: &CudaStream, name: &str, cfg: LaunchConfig, params: &P) -> Result<()> {
    gpu.function(MODULE, name)?
        .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_mem_bytes as i32)
        .during(format_args!("kernel `{name}` shared memory size"))?;
    gpu.launch(stream, MODULE, name, cfg, params)
}

#[allow(clippy::too_many_arguments)]
unsafe fn run(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    q: RawMatrix,
    bank: &mut dyn BankSource,
    opts: &TopKOptions,
    bias: CUdeviceptr,
    values: CUdeviceptr,
    indices: CUdeviceptr,
) -> Result<()> {
    let nq = q.rows;
    dim_i32("bank.rows", bank.rows())?;
    let q_norms = if opts.normalized {
        None
    } else {
        let mut n = stream.alloc::<f32>(nq).during("query norm scratch")?;
        let p = n.device_ptr_mut(stream).0;
        crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, q, None, Some(p))?;
        Some(n)
    };
    let (exclude_dev, diag_offset) = match &opts.exclude {
        Exclusion::None => (None, -1i64),
        Exclusion::Diagonal { offset } => (None, *offset as i64),
        Exclusion::Indices(v) => (Some(stream.clone_htod(v).during("host-to-device copy")?), -1),
    };
    if diag_offset > i32::MAX as i64 - nq as i64 {
        return Err(Error::invalid("exclude", "the diagonal offset exceeds the kernels' i32 index range"));
    }
    let queries = Queries {
        x: q,
        norms: q_norms.as_ref().map_or(0, |n| n.device_ptr(stream).0),
        exclude: exclude_dev.as_ref().map_or(0, |e| e.device_ptr(stream).0),
        diag_offset,
    };
    if opts.k <= MAX_FUSED_K {
        fused(gpu, stream, &queries, bank, opts, bias, values, indices)
    } else {
        radix(gpu, stream, &queries, bank, opts, bias, values, indices)
    }
}

/// Strategy 1 (k <= 1024): topk_tiles per chunk and query batch, then topk_merge.
#[allow(clippy::too_many_arguments)]
unsafe fn fused(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    queries: &Queries,
    bank: &mut dyn BankSource,
    opts: &TopKOptions,
    bias: CUdeviceptr,
    values: CUdeviceptr,
    indices: CUdeviceptr,
) -> Result<()> {
    let (nq, k) = (queries.x.rows, opts.k);
    let cap = pool_capacity(k);
    let sms = multiprocessors(gpu);
    // Every chunk's slice count is at most max_slices (a smaller chunk may have more slices
    // than a larger one, never more than this).
    let slice_bound = max_slices(sms, nq);
    let per_batch_row = slice_bound * cap * 8;
    let batch_rows = ((POOL_BUDGET_BYTES / per_batch_row) / TILE * TILE).max(TILE).min(nq);
    let mut pools = stream.alloc::<u64>(batch_rows * slice_bound * cap).during("top-k pool scratch")?;
    let pools_p = pools.device_ptr_mut(stream).0;
    // Several chunks: a running top k per query, merged in place after each chunk.
    let mut running = if bank.chunks() > 1 { Some(stream.alloc_zeros::<u64>(nq * k).during("running top-k")?) } else { None };
    let running_p = running.as_mut().map_or(0, |r| r.device_ptr_mut(stream).0);
    let (k_i, cap_i) = (k as i32, cap as i32);

    bank.for_each_chunk(gpu, stream, opts.normalized, &mut |chunk: Chunk| {
        let (slices, per_slice) = slices_for(sms, nq, chunk.x.rows);
        let bias_p = if bias == 0 { 0 } else { bias + 4 * chunk.base as u64 };
        let mut start = 0;
        while start < nq {
            let len = batch_rows.min(nq - start);
            let (qx, qn, ex, diag) = queries.batch(start, len);
            let name = sweep_kernel("topk_tiles", qx.dtype, aligned(&qx, &chunk.x));
            let cfg = LaunchConfig {
                grid_dim: (len.div_ceil(TILE) as u32, slices as u32, 1),
                block_dim: (TILE_THREADS as u32, 1, 1),
                shared_mem_bytes: POOL_DYN_SMEM as u32,
            };
            let nq_i = len as i32;
            let params = TopkTilesParams {
                sweep: TopkSweep {
                    q: qx.ptr,
                    b: chunk.x.ptr,
                    q_norms: qn,
                    b_norms: chunk.norms,
                    col_bias: bias_p,
                    exclude: ex,
                    diag_offset: diag,
                    nq: nq_i,
                    nb: dim_i32("bank.rows", chunk.x.rows)?,
                    d: dim_i32("queries.cols", chunk.x.cols)?,
                    col_base: dim_i32("bank.rows", chunk.base)?,
                    tiles_per_slice: per_slice as i32,
                },
                pools: pools_p,
                k: k_i,
                cap: cap_i,
            };
            launch_with_smem(gpu, stream, &name, cfg, &params)?;

            let run_p = if running_p == 0 { 0 } else { running_p + (start * k * 8) as u64 };
            let (vals, idx) = if chunk.last { (values + (start * k * 4) as u64, indices + (start * k * 4) as u64) } else { (0, 0) };
            let cfg = LaunchConfig {
                grid_dim: (len.div_ceil(MERGE_WARPS) as u32, 1, 1),
                block_dim: (32 * MERGE_WARPS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let params = TopkMergeParams {
                pools: pools_p,
                slices: slices as i32,
                cap: cap_i,
                running: run_p,
                nq: nq_i,
                k: k_i,
                keys_out: run_p,
                values: vals,
                indices: idx,
            };
            gpu.launch(stream, MODULE, "topk_merge", cfg, &params)?;
            start += len;
        }
        Ok(())
    })?;
    drop((pools, running));
    Ok(())
}

/// Strategy 2 (any k): radix passes over recomputed tiles, collect, sort.
#[allow(clippy::too_many_arguments)]
unsafe fn radix(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    queries: &Queries,
    bank: &mut dyn BankSource,
    opts: &TopKOptions,
    bias: CUdeviceptr,
    values: CUdeviceptr,
    indices: CUdeviceptr,
) -> Result<()> {
    let (nq, k) = (queries.x.rows, opts.k);
    let nq_i = dim_i32("queries.rows", nq)?;
    let sms = multiprocessors(gpu);
    let state_host = vec![TopkRadixRow { prefix: 0, mask: 0, want: k as u32, done: 0 }; nq];
    let mut state = stream.clone_htod(&state_host).during("host-to-device copy")?;
    let mut hist = stream.alloc_zeros::<u32>(nq * RADIX_BINS).during("radix histograms")?;
    let mut unfinished = stream.alloc_zeros::<i32>(1).during("device allocation")?;
    let (state_p, hist_p) = (state.device_ptr_mut(stream).0, hist.device_ptr_mut(stream).0);
    let unfinished_p = unfinished.device_ptr_mut(stream).0;

    // One sweep of every chunk: `launch(kernel name, launch config, the chunk's sweep parameters)`.
    let sweep =
        |bank: &mut dyn BankSource, prefix: &str, launch: &mut dyn FnMut(&str, LaunchConfig, TopkSweep) -> Result<()>| -> Result<()> {
            bank.for_each_chunk(gpu, stream, opts.normalized, &mut |chunk: Chunk| {
                let (slices, per_slice) = slices_for(sms, nq, chunk.x.rows);
                let (qx, qn, ex, diag) = queries.batch(0, nq);
                let name = sweep_kernel(prefix, qx.dtype, aligned(&qx, &chunk.x));
                let dyn_smem = if prefix == "topk_radix_hist" { HIST_DYN_SMEM } else { 0 };
                let cfg = LaunchConfig {
                    grid_dim: (nq.div_ceil(TILE) as u32, slices as u32, 1),
                    block_dim: (TILE_THREADS as u32, 1, 1),
                    shared_mem_bytes: dyn_smem as u32,
                };
                let sweep = TopkSweep {
                    q: qx.ptr,
                    b: chunk.x.ptr,
                    q_norms: qn,
                    b_norms: chunk.norms,
                    col_bias: if bias == 0 { 0 } else { bias + 4 * chunk.base as u64 },
                    exclude: ex,
                    diag_offset: diag,
                    nq: nq_i,
                    nb: dim_i32("bank.rows", chunk.x.rows)?,
                    d: dim_i32("queries.cols", chunk.x.cols)?,
                    col_base: dim_i32("bank.rows", chunk.base)?,
                    tiles_per_slice: per_slice as i32,
                };
                launch(&name, cfg, sweep)
            })
        };

    for level in 0..RADIX_LEVELS {
        let level_i = level as i32;
        sweep(bank, "topk_radix_hist", &mut |name, cfg, sweep| {
            launch_with_smem(gpu, stream, name, cfg, &TopkRadixHistParams { sweep, state: state_p, hist: hist_p, level: level_i })
        })?;
        driver::memset_d8_async(unfinished_p, 0, 4, stream.cu_stream()).during("memset")?;
        let cfg = LaunchConfig {
            grid_dim: (nq.div_ceil(STEP_WARPS) as u32, 1, 1),
            block_dim: (32 * STEP_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let params = TopkRadixStepParams { state: state_p, hist: hist_p, unfinished: unfinished_p, nq: nq_i, level: level_i };
        gpu.launch(stream, MODULE, "topk_radix_step", cfg, &params)?;
        if stream.clone_dtoh(&unfinished).during("device-to-host copy")?[0] == 0 {
            break;
        }
    }

    let kpad = k.next_power_of_two();
    let (k_i, kpad_i) = (dim_i32("k", k)?, dim_i32("k", kpad)?);
    let mut keys = stream.alloc_zeros::<u64>(nq * kpad).during("top-k key buffer")?;
    let mut counts = stream.alloc_zeros::<i32>(nq).during("device allocation")?;
    let (keys_p, counts_p) = (keys.device_ptr_mut(stream).0, counts.device_ptr_mut(stream).0);
    sweep(bank, "topk_radix_collect", &mut |name, cfg, sweep| {
        let params = TopkRadixCollectParams { sweep, state: state_p, keys: keys_p, counts: counts_p, k: k_i, key_stride: kpad_i };
        launch_with_smem(gpu, stream, name, cfg, &params)
    })?;
    let use_smem = (kpad <= SORT_SMEM_KEYS) as i32;
    let cfg = LaunchConfig {
        grid_dim: (nq as u32, 1, 1),
        block_dim: (SORT_THREADS as u32, 1, 1),
        shared_mem_bytes: if use_smem == 1 { (kpad * 8) as u32 } else { 0 },
    };
    let params = TopkSortParams { keys: keys_p, values, indices, k: k_i, kpad: kpad_i, use_smem };
    gpu.launch(stream, MODULE, "topk_sort_rows", cfg, &params)?;
    drop((state, hist, unfinished, keys, counts));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The unfused baseline.

/// The baseline the fused kernel is measured against, and a second oracle: norms, then per block
/// of query rows a cuBLAS GEMM writing the raw f32 dot products (rows x nb) to global memory, then
/// a plain top-k over each row (block radix select, `topk_dense_rows`), normalization applied
/// there. `blas` must be bound to the GPU's default stream. Same order and tie rule as [`topk`];
/// values differ from the fused kernel's by f32 accumulation order only.
pub fn topk_unfused<T: FloatElement>(
    gpu: &Gpu,
    blas: &CudaBlas,
    queries: &DeviceMatrix<T>,
    bank: &DeviceMatrix<T>,
    opts: &TopKOptions,
) -> Result<DeviceTopK> {
    check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
    let stream = gpu.stream();
    let (nq, nb, d, k) = (queries.rows(), bank.rows(), queries.cols(), opts.k);
    let mut out = DeviceTopK::alloc(gpu, nq, k)?;
    if nq == 0 {
        return Ok(out);
    }
    let (q, b) = (queries.raw(stream).0, bank.raw(stream).0);
    let mut norms = stream.alloc_zeros::<f32>(nq + nb).during("norm scratch")?;
    let (qn, bn) = if opts.normalized {
        (0, 0)
    } else {
        let p = norms.device_ptr_mut(stream).0;
        // SAFETY: live allocations of the described shapes.
        unsafe {
            crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, q, None, Some(p))?;
            crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, b, None, Some(p + 4 * nq as u64))?;
        }
        (p, p + 4 * nq as u64)
    };
    let exclude = match &opts.exclude {
        Exclusion::Indices(v) => Some(stream.clone_htod(v).during("host-to-device copy")?),
        _ => None,
    };
    let diag: i64 = match opts.exclude {
        Exclusion::Diagonal { offset } => offset as i64,
        _ => -1,
    };
    let block_rows = ((1usize << 30) / (nb * 4)).clamp(1, nq);
    let mut s = stream.alloc_zeros::<f32>(block_rows * nb).during("similarity block")?;
    let kpad = k.next_power_of_two();
    let use_smem = (kpad <= SORT_SMEM_KEYS) as i32;
    let mut scratch = stream.alloc_zeros::<u64>(if use_smem == 1 { 1 } else { block_rows * kpad }).during("top-k scratch")?;
    let (s_p, scratch_p) = (s.device_ptr_mut(stream).0, scratch.device_ptr_mut(stream).0);
    let ex_p = exclude.as_ref().map_or(0, |e| e.device_ptr(stream).0);
    let (values, indices) = (out.values.device_ptr_mut(stream).0, out.indices.device_ptr_mut(stream).0);
    let in_type = match T::DTYPE {
        DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        _ => blas_sys::cudaDataType::CUDA_R_32F,
    };
    let (nb_i, d_i, k_i, kpad_i) = (dim_i32("bank.rows", nb)?, dim_i32("queries.cols", d)?, dim_i32("k", k)?, dim_i32("k", kpad)?);
    let elem = T::DTYPE.size_bytes() as u64;
    let mut r0 = 0;
    while r0 < nq {
        let rows = block_rows.min(nq - r0);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major S (rows x nb) is column-major S^T = B Q^T (see benches/similarity.rs).
        // SAFETY: buffers sized for these shapes; the handle is on `stream`.
        unsafe {
            gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                nb_i,
                rows as i32,
                d_i,
                &alpha as *const f32 as *const c_void,
                b.ptr as *const c_void,
                in_type,
                d_i,
                (q.ptr + r0 as u64 * d as u64 * elem) as *const c_void,
                in_type,
                d_i,
                &beta as *const f32 as *const c_void,
                s_p as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                nb_i,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Blas { op: "gemm_ex (unfused top-k baseline)".into(), reason: format!("{e:?}") })?;
        let qn_r = if qn == 0 { 0 } else { qn + 4 * r0 as u64 };
        let ex_r = if ex_p == 0 { 0 } else { ex_p + 4 * r0 as u64 };
        let diag_r = if diag >= 0 { dim_i32("exclude", diag as usize + r0)? } else { -1 };
        let (vals_r, idx_r) = (values + (r0 * k * 4) as u64, indices + (r0 * k * 4) as u64);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (DENSE_THREADS as u32, 1, 1),
            shared_mem_bytes: if use_smem == 1 { (kpad * 8) as u32 } else { 0 },
        };
        let params = TopkDenseParams {
            s: s_p,
            n: nb_i,
            q_norms: qn_r,
            b_norms: bn,
            exclude: ex_r,
            diag_offset: diag_r,
            k: k_i,
            kpad: kpad_i,
            scratch: scratch_p,
            use_smem,
            values: vals_r,
            indices: idx_r,
        };
        // SAFETY: as above.
        unsafe { gpu.launch(stream, MODULE, "topk_dense_rows", cfg, &params)? };
        r0 += rows;
    }
    gpu.synchronize()?;
    drop((norms, s, scratch, exclude));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_covers_every_tile_within_the_pool_bound() {
        for sms in [1, 7, 108, 132] {
            for nq in [1, 128, 129, 1000, 10_000, 1 << 20] {
                let bound = max_slices(sms, nq);
                for bank_rows in (1..3000).step_by(37).chain([127, 128, 129, 896, 1_000_000]) {
                    let (slices, per) = slices_for(sms, nq, bank_rows);
                    let tiles = bank_rows.div_ceil(TILE);
                    assert!(slices >= 1 && slices <= bound, "sms {sms} nq {nq} nb {bank_rows}: {slices} > {bound}");
                    assert!(slices * per >= tiles && (slices - 1) * per < tiles, "no tile missed, no empty slice");
                }
            }
        }
        // The case that once overflowed the pools: 7 tiles -> 4 slices, 6 tiles -> 6 slices.
        assert_eq!(slices_for(3, 128, 7 * 128), (4, 2));
        assert_eq!(slices_for(3, 128, 6 * 128), (6, 1));
        assert_eq!(max_slices(3, 128), 6);
    }

    #[test]
    fn pool_room_for_a_tile_row_after_compaction() {
        for k in [1, 2, 50, 255, 256, 257, 1000, MAX_FUSED_K] {
            assert!(pool_capacity(k) >= k + 2 * TILE, "k {k}");
        }
    }
}
