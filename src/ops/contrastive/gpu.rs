//! The fused GPU path over device buffers: the forward (a base-2 log-sum-exp over column tiles, its
//! sweep split across blocks where the grid is short of whole waves, O(n) saved statistics) and the
//! backward ((G + G^T) U from recomputed logit tiles), both in `kernels/contrastive.cu`. Device
//! memory beyond the inputs and the gradients: the norms and per-row statistics (O(n)); in the
//! forward the prepared column tiles (20 bytes per column; the symmetric kernel's row records, 16
//! bytes per row) and the split partials (16 bytes per row and split, at most `MAX_SPLITS`, none
//! where the row blocks fill the waves; the symmetric kernel's group slots, within
//! `FORWARD_SYM_PARTIAL_BYTES`); in the backward a packed copy of the rows scaled by powers of two
//! (n x d in the input dtype, whole tiles of rows), the prepared column tiles (32 bytes per column)
//! plus an f32 gradient scratch (n x d, times the column splits of a small grid, see
//! `backward_splits`): about 51 MiB at n = 65536, d = 128 bf16 ([`extra_bytes`]); never O(n^2).
//!
//! f16 and bf16 features run on the tensor cores (f32 accumulation); f32 features run the same
//! kernels with exact FFMA in place of the MMA (same fragment layout), for f32 accuracy.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig};

use super::{empty_positive_error, ContrastiveLoss, Geometry, LossInputs, Reduction};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::contrastive::{
    self as params, BackwardColumnsParams, BackwardMergeParams, BackwardPrepareParams, CheckInputsParams, ContrastiveBackwardParams,
    ContrastiveColumnsParams, ContrastiveForwardMergeParams, ContrastiveForwardParams, ContrastivePackParams, GradSide,
    NormPenaltyBackwardParams, ReduceParams, RowSet, BACKWARD_ROWS, BACKWARD_THREADS, FORWARD_ROWS, FORWARD_THREADS,
};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu, RawMatrix};

const MODULE: &str = "contrastive";
/// The backward kernel for d (BackwardTraits in contrastive.cu, params/contrastive.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackwardShape {
    /// d-groups of 4 warps: the smallest of 1, 2, 4 whose G x WARP_D covers d, at most 4 for f16 /
    /// bf16 and 2 for f32; where none covers d, CHUNKED_GROUPS_* (4 / 2) and grid.y covers d by
    /// chunks (`chunked`: the f16 / bf16 G = 1, 2, 4 kernels keep S's rows resident for one chunk,
    /// so chunks take their own kernel, `_g4_chunked`).
    groups: usize,
    /// d columns per block.
    chunk: usize,
    chunked: bool,
    /// Dynamic shared memory bytes.
    smem: usize,
    /// Columns of the other side per logit tile (BackwardTraits::BN): WIDE_COLS for f16 / bf16 at
    /// G = 1, BACKWARD_ROWS otherwise.
    cols: usize,
    /// Threads per block (BackwardTraits::THREADS): 4 G warps, but WARPS_HALF_G4 for f16 / bf16 at
    /// G = 4.
    threads: usize,
}

impl BackwardShape {
    /// The same whatever the alignment of the caller's rows: f16 / bf16 multiply S from the packed
    /// rows, always aligned, and f32 loads element-wise.
    fn of(dtype: DType, d: usize) -> Self {
        let f32 = dtype == DType::F32;
        let warp_d = if f32 { params::BACKWARD_WARP_D_F32 } else { params::BACKWARD_WARP_D_HALF };
        let max_groups = if f32 { params::BACKWARD_MAX_GROUPS_F32 } else { params::BACKWARD_MAX_GROUPS_HALF };
        let fits = [1, 2, 4].into_iter().find(|&g| g <= max_groups && g * warp_d >= d);
        let chunked = fits.is_none();
        let groups = fits.unwrap_or(if f32 { params::BACKWARD_CHUNKED_GROUPS_F32 } else { params::BACKWARD_CHUNKED_GROUPS_HALF });
        let smem = match (f32, groups, chunked) {
            (false, 1, _) => params::BACKWARD_SMEM_HALF_G1,
            (false, 2, _) => params::BACKWARD_SMEM_HALF_G2,
            (false, _, false) => params::BACKWARD_SMEM_HALF_G4,
            (false, _, true) => params::BACKWARD_SMEM_HALF_G4_CHUNKED,
            (true, 1, _) => params::BACKWARD_SMEM_F32_G1,
            (true, _, _) => params::BACKWARD_SMEM_F32_G2,
        };
        let cols = if !f32 && groups == 1 { params::BACKWARD_WIDE_COLS } else { BACKWARD_ROWS };
        let threads = if !f32 && groups == 4 { params::BACKWARD_WARPS_HALF_G4 * 32 } else { BACKWARD_THREADS * groups };
        BackwardShape { groups, chunk: groups * warp_d, chunked, smem, cols, threads }
    }
    /// The kernel's name.
    fn kernel(&self, dtype: DType) -> String {
        // f32's G = 2 takes chunks in the same kernel (its stages serve both).
        let suffix = if self.chunked && dtype != DType::F32 { "_chunked" } else { "" };
        format!("contrastive_backward_{dtype}_g{}{suffix}", self.groups)
    }
}
/// Column splits of one backward pass (params/contrastive.h): as many as keep its row blocks x d
/// chunks x splits within SPLIT_TARGET_CTAS / G (one wave: rounding up would start a second,
/// mostly idle one), at most MAX_SPLITS and one column tile (of the kernel's width) per split;
/// none for G = 4. A function of the shapes alone, so the result's bits do not depend on the device.
fn backward_splits(dtype: DType, d: usize, own_rows: usize, other_rows: usize) -> usize {
    let BackwardShape { groups, chunk, cols, .. } = BackwardShape::of(dtype, d);
    let blocks = own_rows.div_ceil(BACKWARD_ROWS) * d.div_ceil(chunk).max(1);
    let tiles = other_rows.div_ceil(cols);
    if groups == 4 || blocks == 0 || tiles == 0 {
        return 1;
    }
    (params::BACKWARD_SPLIT_TARGET_CTAS / groups / blocks).min(params::BACKWARD_MAX_SPLITS).min(tiles).max(1)
}
/// One warp per row: pack, norm penalty backward.
pub(super) const ROW_KERNEL_THREADS: u32 = params::ROW_THREADS as u32;
pub(super) const ROWS_PER_ROW_BLOCK: usize = params::ROWS_PER_ROW_BLOCK;
/// contrastive_reduce, contrastive_backward_prepare.
pub(super) const SINGLE_BLOCK_THREADS: u32 = params::SINGLE_BLOCK_THREADS as u32;

/// The rows of one loss evaluation in device memory (the device twin of [`super::LossInputs`]).
/// Id and weight slices hold one entry per row.
#[derive(Clone, Copy)]
pub struct DeviceLossInputs<'a, T> {
    pub features: &'a DeviceMatrix<T>,
    pub instance: &'a CudaSlice<i32>,
    pub label: Option<&'a CudaSlice<i32>>,
    /// [`super::RowRole`] as u8 (0 anchor, 1 negative-only, 2 norm-penalty-only).
    pub role: Option<&'a CudaSlice<u8>>,
    pub weight: Option<&'a CudaSlice<f32>>,
    pub keys: Option<DeviceKeyRows<'a, T>>,
    pub prototypes: Option<DevicePrototypeColumns<'a, T>>,
    /// As [`super::LossInputs::anchor_rows`]: self geometry, only the first m rows are anchors.
    pub anchor_rows: Option<usize>,
}

#[derive(Clone, Copy)]
pub struct DeviceKeyRows<'a, T> {
    pub features: &'a DeviceMatrix<T>,
    pub instance: &'a CudaSlice<i32>,
    pub label: Option<&'a CudaSlice<i32>>,
}

#[derive(Clone, Copy)]
pub struct DevicePrototypeColumns<'a, T> {
    pub centers: &'a DeviceMatrix<T>,
    pub proto_of: &'a CudaSlice<i32>,
}

impl<'a, T: FloatElement> DeviceLossInputs<'a, T> {
    /// Self geometry over `features` with instance ids only.
    pub fn new(features: &'a DeviceMatrix<T>, instance: &'a CudaSlice<i32>) -> Self {
        DeviceLossInputs { features, instance, label: None, role: None, weight: None, keys: None, prototypes: None, anchor_rows: None }
    }
}

/// The forward's result on the device.
pub struct DeviceForward {
    /// The reduced loss (also on the device as `loss_device`), downloaded: the forward reads back
    /// its input checks and the empty-positive flag anyway.
    pub loss: f32,
    pub loss_device: CudaSlice<f32>,
    /// L_i per feature row (0 for non-anchors and anchors without positives).
    pub per_anchor: CudaSlice<f32>,
    /// What the backward needs.
    pub saved: SavedForward,
}

/// The forward's O(n) statistics, consumed by [`backward`]: the LSE and |P(i)| of every row.
pub struct SavedForward {
    pub lse: CudaSlice<f32>,
    pub positives: CudaSlice<i32>,
    /// (n, n_keys, n_centers, d) and the features' device address: the backward checks it is
    /// given the same inputs.
    shape: (usize, usize, usize, usize),
    features_ptr: u64,
}

/// The upstream gradient of the backward.
#[derive(Clone, Copy)]
pub enum Upstream<'a> {
    /// dLoss, for `Mean` and `Sum`.
    Value(f32),
    /// dLoss as one f32 in device memory (a framework's grad_output), for `Mean` and `Sum`.
    Device(&'a CudaSlice<f32>),
    /// dL_i, one per feature row, for `PerAnchor` (the norm penalty then takes 1).
    PerRow(&'a CudaSlice<f32>),
}

/// Gradients with respect to the raw inputs, in their dtype.
pub struct DeviceGradients<T> {
    pub features: DeviceMatrix<T>,
    /// Pairwise geometry: the keys' gradient.
    pub keys: Option<DeviceMatrix<T>>,
    pub prototypes: Option<DeviceMatrix<T>>,
}

pub(super) fn check_slice<E>(arg: &'static str, s: &CudaSlice<E>, rows: usize, of: &str) -> Result<()> {
    // A zero-row input still holds one element (the driver allocates no empty buffers).
    if s.len() == rows || (rows == 0 && s.len() <= 1) {
        Ok(())
    } else {
        Err(Error::shape(arg, format!("{rows} entries (one per {of})"), format!("{}", s.len())))
    }
}

/// Shapes, lengths, dtypes and the geometry; id ranges and finiteness are checked on the device
/// by the forward (contrastive_check_inputs).
pub(crate) fn check_device_inputs<T: FloatElement>(loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>) -> Result<()> {
    loss.validate()?;
    let x = inputs.features;
    let (n, d) = (x.rows(), x.cols());
    crate::ops::check_features("features", n, d)?;
    check_slice("instance", inputs.instance, n, "feature row")?;
    match (loss.use_labels, inputs.label) {
        (_, Some(l)) => check_slice("label", l, n, "feature row")?,
        (true, None) => return Err(Error::invalid("label", "required by this loss (it makes positives from labels)")),
        (false, None) => {}
    }
    if let Some(r) = inputs.role {
        check_slice("role", r, n, "feature row")?;
    }
    if let Some(w) = inputs.weight {
        check_slice("weight", w, n, "feature row")?;
    }
    match (loss.geometry, &inputs.keys) {
        (Geometry::Pairwise, None) => return Err(Error::invalid("keys", "required by the pairwise geometry")),
        (Geometry::SelfSimilarity, Some(_)) => {
            return Err(Error::invalid("keys", "only the pairwise geometry takes keys; the self geometry's columns are its rows"))
        }
        (Geometry::Pairwise, Some(k)) => {
            if k.features.cols() != d {
                return Err(Error::shape(
                    "keys.features",
                    format!("{d} columns (the d of features)"),
                    format!("{} x {}", k.features.rows(), k.features.cols()),
                ));
            }
            crate::ops::check_features("keys.features", k.features.rows(), d)?;
            check_slice("keys.instance", k.instance, k.features.rows(), "key row")?;
            match (loss.use_labels, k.label) {
                (_, Some(l)) => check_slice("keys.label", l, k.features.rows(), "key row")?,
                (true, None) => return Err(Error::invalid("keys.label", "required by this loss")),
                (false, None) => {}
            }
        }
        (Geometry::SelfSimilarity, None) => {}
    }
    if let Some(p) = &inputs.prototypes {
        if p.centers.cols() != d {
            return Err(Error::shape(
                "prototypes.centers",
                format!("{d} columns (the d of features)"),
                format!("{} x {}", p.centers.rows(), p.centers.cols()),
            ));
        }
        crate::ops::check_features("prototypes.centers", p.centers.rows(), d)?;
        check_slice("prototypes.proto_of", p.proto_of, n, "feature row")?;
    }
    super::check_anchor_rows(loss, inputs.anchor_rows, n)
}

pub(super) fn ptr<E>(s: &CudaSlice<E>, stream: &CudaStream) -> u64 {
    // Everything here runs on one stream, so the read/write events cudarc records are not needed
    // beyond the launch: the guard may drop at once.
    s.device_ptr(stream).0
}

pub(super) fn opt_ptr<E>(s: Option<&CudaSlice<E>>, stream: &CudaStream) -> u64 {
    s.map_or(0, |s| ptr(s, stream))
}

fn alloc_f32(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<f32>> {
    stream.alloc_zeros::<f32>(len.max(1)).during("device allocation")
}

pub(super) fn rows_config(rows: usize, rows_per_block: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(rows_per_block).max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

const SINGLE_BLOCK: LaunchConfig = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SINGLE_BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };

/// The argument and the message of each check of contrastive_check_inputs, by its code.
pub(super) const CHECK_NAMES: [(&str, &str); params::CHECK_COUNT] = {
    let mut names = [("", ""); params::CHECK_COUNT];
    names[params::CHECK_FEATURES] = ("features", "holds a non-finite value");
    names[params::CHECK_LABEL] = ("label", "has an id below -1 (ids are >= 0, or -1 for none)");
    names[params::CHECK_ROLE] = ("role", "has a role above 2 (0 anchor, 1 negative-only, 2 norm-penalty-only)");
    names[params::CHECK_WEIGHT] = ("weight", "has a weight that is negative or not finite");
    names[params::CHECK_PROTO_OF] = ("prototypes.proto_of", "has an index outside -1..number of prototypes");
    names[params::CHECK_KEYS] = ("keys.features", "holds a non-finite value");
    names[params::CHECK_KEY_LABEL] = ("keys.label", "has an id below -1");
    names[params::CHECK_CENTERS] = ("prototypes.centers", "holds a non-finite value");
    names[params::CHECK_PENALTY_ROLE] = ("role", "is NormPenaltyOnly, which needs a loss with norm_penalty > 0 (ContrastiveLoss::oecl)");
    names
};

/// One loss evaluation in caller-owned device memory: the form the C ABI and frameworks use.
/// Pointers are `CUdeviceptr`s; 0 means absent (only `features` and `instance` are required, and
/// `keys` / `key_instance` in the pairwise geometry). Ids are i32, roles u8, weights f32, one per
/// row of their side; features, keys and prototypes are row-major with `d` columns of `dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawLossInputs {
    pub dtype: DType,
    pub n: usize,
    pub d: usize,
    pub features: u64,
    pub instance: u64,
    pub label: u64,
    pub role: u64,
    pub weight: u64,
    pub n_keys: usize,
    pub keys: u64,
    pub key_instance: u64,
    pub key_label: u64,
    pub n_centers: usize,
    pub centers: u64,
    pub proto_of: u64,
    /// As [`super::LossInputs::anchor_rows`] (None: every row).
    pub anchor_rows: Option<usize>,
}

impl RawLossInputs {
    /// The rows that may be anchors (the forward's row sweep).
    fn anchor_row_count(&self) -> usize {
        self.anchor_rows.unwrap_or(self.n)
    }
    fn features(&self) -> RawMatrix {
        RawMatrix::new(self.features, self.n, self.d, self.dtype)
    }
    fn keys(&self) -> Option<RawMatrix> {
        (self.keys != 0 || self.n_keys > 0).then(|| RawMatrix::new(self.keys, self.n_keys, self.d, self.dtype))
    }
    fn centers(&self) -> Option<RawMatrix> {
        (self.centers != 0 || self.n_centers > 0).then(|| RawMatrix::new(self.centers, self.n_centers, self.d, self.dtype))
    }
    /// The column count of the self geometry's rows or the pairwise keys.
    fn columns(&self) -> usize {
        self.keys().map_or(self.n, |k| k.rows)
    }
}

fn check_array(arg: &'static str, p: u64, rows: usize, align: u64, required: bool) -> Result<()> {
    if p == 0 {
        if required && rows > 0 {
            return Err(Error::invalid(arg, "null device pointer"));
        }
        return Ok(());
    }
    if p % align != 0 {
        return Err(Error::invalid(arg, format!("device pointer {p:#x} is not aligned to its {align}-byte elements")));
    }
    Ok(())
}

/// The checks a raw description allows on the host: dtypes, shapes, geometry, null and misaligned
/// pointers. Ids and finiteness are checked on the device by the forward.
pub(crate) fn check_raw_inputs(loss: &ContrastiveLoss, r: &RawLossInputs) -> Result<()> {
    loss.validate()?;
    crate::ops::check_float("features", r.dtype)?;
    crate::ops::check_features("features", r.n, r.d)?;
    r.features().check_pointer("features")?;
    check_array("instance", r.instance, r.n, 4, true)?;
    if loss.use_labels {
        check_array("label", r.label, r.n, 4, true)?;
    }
    check_array("role", r.role, r.n, 1, false)?;
    check_array("weight", r.weight, r.n, 4, false)?;
    match (loss.geometry, r.keys()) {
        (Geometry::Pairwise, None) => return Err(Error::invalid("keys", "required by the pairwise geometry")),
        (Geometry::SelfSimilarity, Some(_)) => {
            return Err(Error::invalid("keys", "only the pairwise geometry takes keys; the self geometry's columns are its rows"))
        }
        (Geometry::Pairwise, Some(k)) => {
            crate::ops::check_features("keys", k.rows, r.d)?;
            k.check_pointer("keys")?;
            check_array("keys.instance", r.key_instance, k.rows, 4, true)?;
            if loss.use_labels {
                check_array("keys.label", r.key_label, k.rows, 4, true)?;
            }
        }
        (Geometry::SelfSimilarity, None) => {}
    }
    if let Some(c) = r.centers() {
        crate::ops::check_features("prototypes.centers", c.rows, r.d)?;
        c.check_pointer("prototypes.centers")?;
        check_array("prototypes.proto_of", r.proto_of, r.n, 4, true)?;
    }
    super::check_anchor_rows(loss, r.anchor_rows, r.n)
}

/// Where the forward writes: `loss` (1 f32), `per_anchor`, `lse` (n f32 each) and `positives`
/// (n i32). `lse` and `positives` are what the backward needs; `per_anchor` may be 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawForwardOutputs {
    pub loss: u64,
    pub per_anchor: u64,
    pub lse: u64,
    pub positives: u64,
}

/// The largest 1 / tau for which the forward uses the fixed exponent offset m = 1 / tau for every
/// row (DESIGN.md section 6): logits of unit rows lie in [-1/tau, 1/tau], so exp(s - 1/tau) >=
/// exp(-2/tau) >= exp(-80) = 1.8e-35 stays a normal f32 (above 1.2e-38, which ex2.approx.ftz would
/// flush). Below tau = 1/40 the per-row online max is used instead.
pub const FIXED_OFFSET_MAX_INV_TAU: f32 = 40.0;

/// The most columns (keys or feature rows, plus prototypes) of the fused forward: it counts each
/// row's positives in f32, exact up to 2^24.
pub const MAX_COLUMNS: usize = 1 << 24;

/// The SM count [`extra_bytes`] assumes (H100 SXM / H200): the forward's column split, and so its
/// scratch, depends on the GPU's SM count.
pub const REFERENCE_SMS: usize = 132;

/// How many CTAs (grid.y) share one row block's column sweep, for `row_blocks` row blocks,
/// `tiles` column tiles (columns, then prototypes) and `sms` SMs of `blocks_per_sm` resident
/// blocks: the fewest splits whose estimated efficiency, useful tile work / (waves x wave slots x
/// tiles per CTA), reaches 90 %; where none does, the count that minimizes waves x tiles per CTA
/// (fewer on ties). At most `MAX_SPLITS` and `tiles`. More splits than needed only add partials
/// (16 bytes per row and split) and their merge.
pub fn forward_splits(row_blocks: usize, tiles: usize, sms: usize, blocks_per_sm: usize) -> usize {
    let wave = (sms * blocks_per_sm).max(1);
    let (row_blocks, tiles) = (row_blocks.max(1), tiles.max(1));
    let most = tiles.min(params::FORWARD_MAX_SPLITS);
    let cost = |s: usize| (row_blocks * s).div_ceil(wave) * tiles.div_ceil(s);
    if let Some(s) = (1..=most).find(|&s| 10 * row_blocks * tiles >= 9 * cost(s) * wave) {
        return s;
    }
    (1..=most).min_by_key(|&s| (cost(s), s)).unwrap_or(1)
}

/// The symmetric forward's groups (contrastive_forward_sym_*, self geometry): `(S, Q)`, Q groups of
/// S row blocks each (the last may be short), for `row_blocks` row blocks of n rows and `centers`
/// prototypes. Its partials take (Q + 1 with prototypes) x n x 16 bytes: the fewest row blocks
/// per group that keep them within SYM_PARTIAL_BYTES, but never fewer than 23 groups (276 pairs of
/// groups, a wave of 132 SMs x 2 blocks) where there are that many row blocks: above about
/// n = 90,000 the partials grow past SYM_PARTIAL_BYTES (16 x 24 bytes per row) instead of the
/// grid shrinking below a wave. One group per row block up to n = 16384.
pub fn forward_sym_groups(n: usize, centers: usize) -> (usize, usize) {
    const MIN_GROUPS: usize = 23;
    let row_blocks = n.div_ceil(FORWARD_ROWS).max(1);
    let by_memory = (params::FORWARD_SYM_PARTIAL_BYTES / (16 * n.max(1))).saturating_sub((centers > 0) as usize);
    let groups = by_memory.max(MIN_GROUPS).clamp(1, row_blocks);
    let per_group = row_blocks.div_ceil(groups);
    (per_group, row_blocks.div_ceil(per_group))
}

/// Row blocks and column tiles (columns, then prototypes) of the forward's grid.
fn forward_grid(n: usize, columns: usize, centers: usize) -> (usize, usize) {
    (n.div_ceil(FORWARD_ROWS).max(1), columns.div_ceil(params::FORWARD_COLS) + centers.div_ceil(params::FORWARD_COLS))
}

/// Blocks per SM of the forward kernel that runs: 2 for the fixed-offset f16 / bf16 ones.
fn forward_blocks_per_sm(dtype: DType, fixed: bool) -> usize {
    if dtype != DType::F32 && fixed {
        params::FORWARD_BLOCKS_PER_SM
    } else {
        params::FORWARD_BLOCKS_PER_SM_SLOW
    }
}

/// Overrides of the forward's launch choices, for tests that compare them (the results must agree
/// within the tolerances, and each be bitwise repeatable).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardTuning {
    /// Splits of the column sweep (clamped to 1..=min(tiles, MAX_SPLITS)); `None`: [`forward_splits`].
    pub splits: Option<usize>,
    /// Use the online-max kernel even where the fixed offset is allowed.
    pub online_max: bool,
    /// The self geometry's symmetric kernel where it applies (self geometry, fixed offset): `None`
    /// wherever there are two row blocks or more, `Some(false)` never (the row sweep).
    pub symmetric: Option<bool>,
    /// Row blocks per group of the symmetric kernel (clamped to 1..=row blocks);
    /// `None`: [`forward_sym_groups`].
    pub sym_group: Option<usize>,
}

/// The forward on caller memory and stream. Returns the loss value: it waits for the stream once,
/// to read the device-side input checks and the empty-positive flag back.
///
/// # Safety
/// Every pointer must be device memory of this GPU's context, valid for the shape described, and
/// stay valid until the stream has run the work queued here.
pub unsafe fn forward_raw(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    loss: &ContrastiveLoss,
    r: &RawLossInputs,
    out: &RawForwardOutputs,
) -> Result<f32> {
    forward_raw_tuned(gpu, stream, loss, r, out, ForwardTuning::default())
}

/// [`forward_raw`] with its launch choices overridden.
///
/// # Safety
/// As [`forward_raw`].
#[doc(hidden)]
pub unsafe fn forward_raw_tuned(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    loss: &ContrastiveLoss,
    r: &RawLossInputs,
    out: &RawForwardOutputs,
    tuning: ForwardTuning,
) -> Result<f32> {
    check_raw_inputs(loss, r)?;
    check_array("loss", out.loss, 1, 4, true)?;
    check_array("per_anchor", out.per_anchor, r.n, 4, false)?;
    check_array("lse", out.lse, r.n, 4, true)?;
    check_array("positives", out.positives, r.n, 4, true)?;
    let (n, d, n_keys, n_centers) = (r.n, r.d, r.columns(), r.centers().map_or(0, |c| c.rows));
    if n_keys + n_centers > MAX_COLUMNS {
        return Err(Error::shape(
            if r.keys().is_some() { "keys" } else { "features" },
            "at most 2^24 columns (keys or feature rows, plus prototypes) in the fused forward",
            format!("{} columns", n_keys + n_centers),
        ));
    }
    let norms = alloc_f32(stream, n)?;
    let key_norms = alloc_f32(stream, n_keys)?;
    let center_norms = alloc_f32(stream, n_centers)?;
    let per_anchor_scratch = if out.per_anchor == 0 { Some(alloc_f32(stream, n)?) } else { None };
    let first_empty = stream.alloc_zeros::<i32>(1).during("device allocation")?;
    let flags = stream.clone_htod(&[i32::MAX; CHECK_NAMES.len()]).during("host-to-device copy")?;

    let (norms_p, key_norms_p, center_norms_p) = (ptr(&norms, stream), ptr(&key_norms, stream), ptr(&center_norms, stream));
    let label_p = if loss.use_labels { r.label } else { 0 };
    let key_label_p = if loss.use_labels { r.key_label } else { 0 };
    let (n_i, nk_i, nc_i) = (dim_i32("features.rows", n)?, dim_i32("keys.rows", n_keys)?, dim_i32("prototypes.rows", n_centers)?);
    dim_i32("features.cols", d)?;
    crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, r.features(), None, Some(norms_p))?;
    if let Some(k) = r.keys() {
        crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, k, None, Some(key_norms_p))?;
    }
    if let Some(c) = r.centers() {
        crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, c, None, Some(center_norms_p))?;
    }
    let pairwise = r.keys().is_some();
    let key_norms_arg = if pairwise { key_norms_p } else { 0 };
    let key_label_arg = if pairwise { key_label_p } else { 0 };
    let has_penalty = (loss.norm_penalty > 0.0) as i32;
    let flags_p = ptr(&flags, stream);
    let checked = n.max(n_keys).max(n_centers);
    let cfg = LaunchConfig {
        grid_dim: (checked.div_ceil(params::CHECK_THREADS).clamp(1, params::CHECK_MAX_BLOCKS) as u32, 1, 1),
        block_dim: (params::CHECK_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let params = CheckInputsParams {
        norms: norms_p,
        label: label_p,
        role: r.role,
        weight: r.weight,
        proto_of: r.proto_of,
        key_norms: key_norms_arg,
        key_label: key_label_arg,
        center_norms: center_norms_p,
        flags: flags_p,
        n: n_i,
        n_keys: nk_i,
        n_centers: nc_i,
        has_penalty,
    };
    gpu.launch(stream, MODULE, "contrastive_check_inputs", cfg, &params)?;

    let (cols_x, cols_norms, cols_inst, cols_label, cols_role) = if pairwise {
        (r.keys, key_norms_p, r.key_instance, key_label_p, 0u64)
    } else {
        (r.features, norms_p, r.instance, label_p, r.role)
    };
    // f16 / bf16 rows that 16-byte copies cannot read (d % 8 != 0 or a base not 16-byte aligned)
    // are copied once into rows of dp elements, zero padded (contrastive_pad_*): the one aligned
    // kernel serves them, the zero columns adding exact zeros to every product. f32 loads
    // element-wise whatever the alignment (one kernel).
    let pad = r.dtype != DType::F32 && !(d % 8 == 0 && r.features % 16 == 0 && cols_x % 16 == 0 && r.centers % 16 == 0);
    let dp = if pad { d.div_ceil(8) * 8 } else { d };
    let padded = |m: Option<RawMatrix>| -> Result<Option<CudaSlice<u8>>> {
        match m {
            Some(m) if pad => Ok(Some(pad_rows(gpu, stream, m, dp)?)),
            _ => Ok(None),
        }
    };
    let (rows_pad, keys_pad, centers_pad) = (padded(Some(r.features()))?, padded(r.keys())?, padded(r.centers())?);
    let x_of = |copy: &Option<CudaSlice<u8>>, raw: u64| copy.as_ref().map_or(raw, |c| ptr(c, stream));
    let (rows_x, centers_x) = (x_of(&rows_pad, r.features), x_of(&centers_pad, r.centers));
    let cols_x = if pairwise { x_of(&keys_pad, r.keys) } else { rows_x };
    let dp_i = dim_i32("features.cols", dp)?;
    let inv_tau = 1.0f32 / loss.temperature;
    let fixed = inv_tau <= FIXED_OFFSET_MAX_INV_TAU && !tuning.online_max;
    let name = format!("contrastive_forward_{}{}", r.dtype, if fixed { "" } else { "_online" });
    let per_anchor_p = per_anchor_scratch.as_ref().map_or(out.per_anchor, |s| ptr(s, stream));
    // The row sweep's rows: the first m (anchor_rows), against every column.
    let m = r.anchor_row_count();
    let m_i = dim_i32("anchor_rows", m)?;
    if m > 0 {
        let (row_blocks, tiles) = forward_grid(m, n_keys, n_centers);
        // The self geometry's symmetric kernel (fixed offset only): tiles on and above the diagonal,
        // of a square matrix (not under anchor_rows < n).
        let symmetric = !pairwise && fixed && m == n && tuning.symmetric.unwrap_or(row_blocks >= 2);
        let (sym_group, sym_groups) = match tuning.sym_group {
            Some(s) => {
                let s = s.clamp(1, row_blocks);
                (s, row_blocks.div_ceil(s))
            }
            None => forward_sym_groups(n, n_centers),
        };
        let splits = if symmetric {
            sym_groups + (n_centers > 0) as usize // one slot per group (and the prototypes')
        } else {
            match tuning.splits {
                Some(s) => s.clamp(1, tiles.clamp(1, params::FORWARD_MAX_SPLITS)),
                None => forward_splits(row_blocks, tiles, multiprocessors(gpu), forward_blocks_per_sm(r.dtype, fixed)),
            }
        };
        let name = if symmetric { format!("contrastive_forward_sym_{}", r.dtype) } else { name };
        // [splits][n] x (m2, sum, pos_sum, count): at most MAX_SPLITS x 16 bytes per row (the
        // symmetric kernel: one slot per group, forward_sym_groups).
        let partials = if splits > 1 || symmetric { Some(alloc_f32(stream, 4 * splits * m)?) } else { None };
        let partials_p = partials.as_ref().map_or(0, |s| ptr(s, stream));
        // Every column tile's staged data, prepared once (COLUMN_TILE_BYTES per tile).
        let columns = alloc_f32(stream, tiles * params::FORWARD_COLUMN_TILE_BYTES / 4)?;
        let columns_p = ptr(&columns, stream);
        let col_tiles = n_keys.div_ceil(params::FORWARD_COLS);
        // The symmetric kernel's rows (the self geometry's columns), prepared with them: one record
        // per row of every column tile.
        let row_keys = if symmetric {
            Some(alloc_f32(stream, col_tiles * params::FORWARD_COLS * params::FORWARD_ROW_RECORD_BYTES / 4)?)
        } else {
            None
        };
        let row_keys_p = row_keys.as_ref().map_or(0, |s| ptr(s, stream));
        if tiles > 0 {
            let params = ContrastiveColumnsParams {
                cols: RowSet { x: cols_x, norms: cols_norms, instance: cols_inst, label: cols_label, role: cols_role, count: nk_i },
                protos: RowSet { x: centers_x, norms: center_norms_p, count: nc_i, ..RowSet::default() },
                out: columns_p,
                row_keys: row_keys_p,
                inv_tau,
                fixed_offset: fixed as i32,
                col_tiles: col_tiles as i32,
                reserved: 0,
            };
            let cfg = LaunchConfig { grid_dim: (tiles as u32, 1, 1), block_dim: (params::FORWARD_COLS as u32, 1, 1), shared_mem_bytes: 0 };
            gpu.launch(stream, MODULE, "contrastive_forward_columns", cfg, &params)?;
        }
        let params = ContrastiveForwardParams {
            rows: RowSet { x: rows_x, norms: norms_p, instance: r.instance, label: label_p, role: r.role, count: m_i },
            cols: RowSet { x: cols_x, norms: cols_norms, instance: cols_inst, label: cols_label, role: cols_role, count: nk_i },
            protos: RowSet { x: centers_x, norms: center_norms_p, count: nc_i, ..RowSet::default() },
            proto_of: r.proto_of,
            d: dp_i,
            exclude_self: (!pairwise) as i32,
            inv_tau,
            scale: loss.scale,
            per_anchor: per_anchor_p,
            lse: out.lse,
            positives: out.positives,
            partials: partials_p,
            columns: columns_p,
            row_keys: row_keys_p,
            sym_group: if symmetric { sym_group as i32 } else { 0 },
            sym_groups: if symmetric { sym_groups as i32 } else { 0 },
        };
        // The symmetric kernel: one block per pair of groups, then one per row block for the
        // prototype tiles.
        let pairs = sym_groups * (sym_groups + 1) / 2 + if n_centers > 0 { row_blocks } else { 0 };
        let cfg = LaunchConfig {
            grid_dim: if symmetric { (pairs as u32, 1, 1) } else { (row_blocks as u32, splits as u32, 1) },
            block_dim: (FORWARD_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        gpu.launch(stream, MODULE, &name, cfg, &params)?;
        if splits > 1 || symmetric {
            let params = ContrastiveForwardMergeParams {
                partials: partials_p,
                role: r.role,
                per_anchor: per_anchor_p,
                lse: out.lse,
                positives: out.positives,
                n: m_i,
                splits: splits as i32,
                scale: loss.scale,
                reserved: 0,
            };
            gpu.launch(
                stream,
                MODULE,
                "contrastive_forward_merge",
                rows_config(m, params::MERGE_THREADS, params::MERGE_THREADS as u32),
                &params,
            )?;
        }
    }
    // Also writes the outputs of the rows past anchor_rows.
    let params = ReduceParams {
        per_anchor: per_anchor_p,
        weight: r.weight,
        role: r.role,
        positives: out.positives,
        lse: out.lse,
        norms: norms_p,
        out: out.loss,
        first_empty: ptr(&first_empty, stream),
        n: n_i,
        mean: (loss.reduction == Reduction::Mean) as i32,
        penalty: loss.norm_penalty,
        anchor_rows: m_i,
    };
    gpu.launch(stream, MODULE, "contrastive_reduce", SINGLE_BLOCK, &params)?;

    let flags = stream.clone_dtoh(&flags).during("device-to-host copy")?;
    if let Some((k, row)) = flags.iter().enumerate().find(|(_, &row)| row != i32::MAX) {
        let (arg, what) = CHECK_NAMES[k];
        return Err(Error::invalid(arg, format!("row {row} {what}")));
    }
    let first_empty = stream.clone_dtoh(&first_empty).during("device-to-host copy")?[0];
    if first_empty >= 0 && loss.empty_positives == super::EmptyPositives::Error {
        return Err(empty_positive_error(first_empty as usize));
    }
    let mut value = [0f32];
    cudarc::driver::result::memcpy_dtoh_async(&mut value, out.loss, stream.cu_stream()).during("device-to-host copy")?;
    stream.synchronize().during("stream synchronize")?;
    Ok(value[0])
}

/// The upstream gradient on the device: one f32 (dLoss, `Mean` / `Sum`) or n (dL_i, `PerAnchor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawUpstream {
    pub ptr: u64,
    pub per_row: bool,
}

/// Where the backward writes the gradients, in the input dtype, shaped as their inputs (`keys`
/// for the pairwise geometry, `prototypes` when there are prototypes; 0 otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawGradOutputs {
    pub features: u64,
    pub keys: u64,
    pub prototypes: u64,
}

/// Rows x / 2^e (2^e = the power of two at or below max(||x||, eps): exact, norm in [1, 2)) in the
/// input dtype, padded with zeros to `dp` (a multiple of 8) and to a multiple of WIDE_COLS rows,
/// the widest column tile (the backward copies tiles without row checks), as raw bytes: the
/// backward's H U operand (contrastive.cu's backward comment says why not rounded unit rows).
unsafe fn pack(gpu: &Gpu, stream: &Arc<CudaStream>, m: RawMatrix, dp: usize) -> Result<CudaSlice<u8>> {
    copy_rows(gpu, stream, m, dp, "pack", packed_bytes(m.rows, dp, m.dtype))
}

/// Rows of `m` copied as they are into rows of dp elements, zero padded (contrastive_pad_*): the
/// forward's f16 / bf16 operand where 16-byte copies cannot read the caller's rows.
unsafe fn pad_rows(gpu: &Gpu, stream: &Arc<CudaStream>, m: RawMatrix, dp: usize) -> Result<CudaSlice<u8>> {
    copy_rows(gpu, stream, m, dp, "pad", padded_bytes(m.rows, dp, m.dtype))
}

/// A zeroed buffer of `bytes` filled by contrastive_{kind}_{dtype} (pack or pad: one warp per row
/// of `m`, rows of dp elements).
unsafe fn copy_rows(gpu: &Gpu, stream: &Arc<CudaStream>, m: RawMatrix, dp: usize, kind: &str, bytes: usize) -> Result<CudaSlice<u8>> {
    let out = stream.alloc_zeros::<u8>(bytes).during("device allocation")?;
    if m.rows > 0 {
        let params = ContrastivePackParams {
            x: m.ptr,
            u: ptr(&out, stream),
            n: dim_i32("rows", m.rows)?,
            d: dim_i32("cols", m.cols)?,
            dp: dim_i32("cols", dp)?,
        };
        let cfg = rows_config(m.rows, ROWS_PER_ROW_BLOCK, ROW_KERNEL_THREADS);
        gpu.launch(stream, MODULE, &format!("contrastive_{kind}_{}", m.dtype), cfg, &params)?;
    }
    Ok(out)
}

/// Bytes of [`pad_rows`]' buffer (at least 16).
fn padded_bytes(rows: usize, dp: usize, dtype: DType) -> usize {
    (rows * dp * dtype.size_bytes()).max(16)
}

/// Bytes of [`pack`]'s buffer: a multiple of WIDE_COLS rows of dp elements (at least 16).
fn packed_bytes(rows: usize, dp: usize, dtype: DType) -> usize {
    (backward_padded_rows(rows) * dp * dtype.size_bytes()).max(16)
}

/// Rows rounded up to a multiple of WIDE_COLS (the widest column tile a backward kernel sweeps,
/// params/contrastive.h): the packed rows and the prepared column data hold whole tiles.
fn backward_padded_rows(rows: usize) -> usize {
    rows.div_ceil(params::BACKWARD_WIDE_COLS) * params::BACKWARD_WIDE_COLS
}

/// The backward on caller memory and stream: consumes the forward's `lse` and `positives` (same
/// inputs) and writes the gradients. Queues work and returns (no host synchronization).
///
/// # Safety
/// As [`forward_raw`]; `lse` and `positives` are the forward's outputs for these inputs.
#[allow(clippy::too_many_arguments)] // the raw entry point takes the C ABI's device pointers one by one
pub unsafe fn backward_raw(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    loss: &ContrastiveLoss,
    r: &RawLossInputs,
    lse: u64,
    positives: u64,
    upstream: RawUpstream,
    out: &RawGradOutputs,
) -> Result<()> {
    check_raw_inputs(loss, r)?;
    check_array("lse", lse, r.n, 4, true)?;
    check_array("positives", positives, r.n, 4, true)?;
    let per_row = loss.reduction == Reduction::PerAnchor;
    if upstream.per_row != per_row {
        return Err(Error::invalid(
            "upstream",
            if per_row { "Reduction::PerAnchor takes one dL_i per feature row" } else { "Mean and Sum take one dLoss" },
        ));
    }
    check_array("upstream", upstream.ptr, 1, 4, true)?;
    let (n, d) = (r.n, r.d);
    let keys = r.keys();
    let centers = r.centers();
    let grad = |arg: &'static str, p: u64, rows: usize| -> Result<RawMatrix> {
        let m = RawMatrix::new(p, rows, d, r.dtype);
        if p == 0 && rows > 0 {
            return Err(Error::invalid(arg, "null device pointer (this input has a gradient)"));
        }
        m.check_pointer(arg)?;
        Ok(m)
    };
    let dx = grad("grad.features", out.features, n)?;
    let dk = keys.map(|k| grad("grad.keys", out.keys, k.rows)).transpose()?;
    let dc = centers.map(|c| grad("grad.prototypes", out.prototypes, c.rows)).transpose()?;

    let dp = d.div_ceil(8) * 8;
    let u_rows = pack(gpu, stream, r.features(), dp)?;
    let u_keys = keys.map(|k| pack(gpu, stream, k, dp)).transpose()?;
    let u_protos = centers.map(|c| pack(gpu, stream, c, dp)).transpose()?;
    // The backward recomputes the forward's logits from the raw rows: with the forward's norms,
    // from the same kernel on the same rows (so the same bits).
    let norms_of = |m: RawMatrix| -> Result<CudaSlice<f32>> {
        let norms = alloc_f32(stream, m.rows)?;
        crate::ops::normalize::gpu::l2_normalize_raw(gpu, stream, m, None, Some(ptr(&norms, stream)))?;
        Ok(norms)
    };
    let norms_rows = norms_of(r.features())?;
    let norms_keys = keys.map(norms_of).transpose()?;
    let norms_protos = centers.map(norms_of).transpose()?;
    let coef_a = alloc_f32(stream, n)?;
    let coef_b = alloc_f32(stream, n)?;
    let scalars = alloc_f32(stream, 2)?;
    let (n_i, d_i, dp_i) = (dim_i32("features.rows", n)?, dim_i32("features.cols", d)?, dim_i32("features.cols", dp)?);
    let label_p = if loss.use_labels { r.label } else { 0 };
    let scalars_p = ptr(&scalars, stream);
    let rows_side = GradSide {
        x: r.features,
        norms: ptr(&norms_rows, stream),
        u: ptr(&u_rows, stream),
        instance: r.instance,
        label: label_p,
        role: r.role,
        proto_of: r.proto_of,
        lse,
        coef_a: ptr(&coef_a, stream),
        coef_b: ptr(&coef_b, stream),
        count: n_i,
        anchors: dim_i32("anchor_rows", r.anchor_row_count())?,
    };
    // Keys and prototypes are only ever columns of the anchors' logits: no anchor terms of their own.
    let keys_side = match (keys, &u_keys, &norms_keys) {
        (Some(k), Some(u), Some(norms)) => Some(GradSide {
            x: r.keys,
            norms: ptr(norms, stream),
            u: ptr(u, stream),
            instance: r.key_instance,
            label: if loss.use_labels { r.key_label } else { 0 },
            count: dim_i32("keys.rows", k.rows)?,
            ..GradSide::default()
        }),
        _ => None,
    };
    let protos_side = match (centers, &u_protos, &norms_protos) {
        (Some(c), Some(u), Some(norms)) => GradSide {
            x: r.centers,
            norms: ptr(norms, stream),
            u: ptr(u, stream),
            count: dim_i32("prototypes.rows", c.rows)?,
            ..GradSide::default()
        },
        _ => GradSide::default(),
    };

    // Each pass's split partials (splits x count x d f32); the first count x d is the merged dU.
    let other_of_rows = keys.map_or(n, |k| k.rows);
    let splits_rows = backward_splits(r.dtype, d, n, other_of_rows);
    let splits_keys = keys.map_or(1, |k| backward_splits(r.dtype, d, k.rows, n));
    let splits_protos = centers.map_or(1, |c| backward_splits(r.dtype, d, c.rows, n));
    let du_rows = alloc_f32(stream, splits_rows * n * d)?;
    let du_keys = keys.map(|k| alloc_f32(stream, splits_keys * k.rows * d)).transpose()?;
    let du_protos = centers.map(|c| alloc_f32(stream, splits_protos * c.rows * d)).transpose()?;
    let inv_tau = 1.0f32 / loss.temperature;
    // One kernel per dtype and G (and chunking), whatever the rows' alignment.
    let shape = BackwardShape::of(r.dtype, d);
    let (chunk, smem, threads) = (shape.chunk, shape.smem, shape.threads);
    let name = shape.kernel(r.dtype);
    // Over 48 KB of shared memory needs the kernel's opt-in (set once per launch; cheap).
    gpu.function(MODULE, &name)?
        .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
        .during(format_args!("kernel `{name}` shared memory size"))?;
    // f16 / bf16 multiply S from the packed rows: their per-column data carries the packing's
    // powers of two (contrastive_backward_columns' `packed`).
    let packed = r.dtype != DType::F32;
    // Every column tile's per-column data for a sweep of `own` over `other` (COLUMN_TILE_BYTES per
    // tile of BACKWARD_ROWS columns, whole multiples of WIDE_COLS columns: a G = 1 kernel stages
    // two such tiles at once), prepared once per pass instead of in every block per tile.
    let columns = |own: GradSide, other: GradSide| -> Result<Option<CudaSlice<f32>>> {
        if other.count == 0 {
            return Ok(None);
        }
        let tiles = backward_padded_rows(other.count as usize) / BACKWARD_ROWS;
        let out = alloc_f32(stream, tiles * params::BACKWARD_COLUMN_TILE_BYTES / 4)?;
        let params =
            BackwardColumnsParams { own, other, out: ptr(&out, stream), inv_tau, packed: packed as i32, tiles: tiles as i32, reserved: 0 };
        let cfg = LaunchConfig { grid_dim: (tiles as u32, 1, 1), block_dim: (BACKWARD_ROWS as u32, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: both sides' arrays are live and sized by their counts; `out` holds tiles x BACKWARD_ROWS Columns.
        unsafe { gpu.launch(stream, MODULE, "contrastive_backward_columns", cfg, &params)? };
        Ok(Some(out))
    };
    let pass = |own: GradSide, other: GradSide, extra: GradSide, exclude_self: i32, du: &CudaSlice<f32>, splits: usize| -> Result<()> {
        if own.count == 0 {
            return Ok(());
        }
        let other_columns = columns(own, other)?;
        let extra_columns = columns(own, extra)?;
        let cfg = LaunchConfig {
            grid_dim: ((own.count as usize).div_ceil(BACKWARD_ROWS) as u32, d.div_ceil(chunk) as u32, splits as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let params = ContrastiveBackwardParams {
            own,
            other,
            protos: extra,
            scalars: scalars_p,
            du: ptr(du, stream),
            columns: other_columns.as_ref().map_or(0, |c| ptr(c, stream)),
            proto_columns: extra_columns.as_ref().map_or(0, |c| ptr(c, stream)),
            dp: dp_i,
            d: d_i,
            exclude_self,
            inv_tau,
            splits: splits as i32,
            reserved: 0,
        };
        // SAFETY: every side's pointers are live buffers sized by its count (raw rows: count x d,
        // packed rows: count x dp, norms: count), and `du` holds count x d floats.
        unsafe { gpu.launch(stream, MODULE, &name, cfg, &params)? };
        if splits > 1 {
            let elems = own.count as usize * d;
            let params = BackwardMergeParams { du: ptr(du, stream), elems: elems as i64, splits: splits as i32, reserved: 0 };
            let cfg = LaunchConfig {
                grid_dim: (elems.div_ceil(params::MERGE_THREADS).clamp(1, params::MERGE_MAX_BLOCKS) as u32, 1, 1),
                block_dim: (params::MERGE_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: `du` holds splits x elems floats.
            unsafe { gpu.launch(stream, MODULE, "contrastive_backward_merge", cfg, &params)? };
        }
        Ok(())
    };

    let per_row_i = per_row as i32;
    let params = BackwardPrepareParams {
        role: r.role,
        weight: r.weight,
        positives,
        upstream: upstream.ptr,
        coef_a: rows_side.coef_a,
        coef_b: rows_side.coef_b,
        scalars: scalars_p,
        per_row: per_row_i,
        mean: (loss.reduction == Reduction::Mean) as i32,
        n: n_i,
        scale: loss.scale,
        anchor_rows: rows_side.anchors,
        reserved: 0,
    };
    gpu.launch(stream, MODULE, "contrastive_backward_prepare", SINGLE_BLOCK, &params)?;
    match keys_side {
        None => pass(rows_side, rows_side, protos_side, 1, &du_rows, splits_rows)?,
        Some(keys_side) => {
            pass(rows_side, keys_side, protos_side, 0, &du_rows, splits_rows)?;
            pass(keys_side, rows_side, GradSide::default(), 0, du_keys.as_ref().expect("keys"), splits_keys)?;
        }
    }
    if let Some(du) = &du_protos {
        // Prototypes are columns of the anchor rows only (never anchors, never of each other).
        pass(protos_side, rows_side, GradSide::default(), 0, du, splits_protos)?;
    }

    // Normalization backward, then OECL's penalty on its rows (whose matrix gradient is 0).
    let to_dx = |m: RawMatrix, du: &CudaSlice<f32>, dx: RawMatrix| -> Result<()> {
        let dz = RawMatrix::new(ptr(du, stream), m.rows, m.cols, DType::F32);
        // SAFETY: x, dz and dx are live m.rows x m.cols matrices of their dtypes.
        unsafe { crate::ops::normalize::gpu::l2_normalize_backward_raw(gpu, stream, m, dz, dx) }
    };
    to_dx(r.features(), &du_rows, dx)?;
    if loss.norm_penalty > 0.0 && r.role != 0 && n > 0 {
        let params = NormPenaltyBackwardParams {
            x: r.features,
            role: r.role,
            upstream: upstream.ptr,
            scalars: scalars_p,
            dx: dx.ptr,
            n: n_i,
            d: d_i,
            per_row: per_row_i,
            alpha: loss.norm_penalty,
        };
        let cfg = rows_config(n, ROWS_PER_ROW_BLOCK, ROW_KERNEL_THREADS);
        gpu.launch(stream, MODULE, &format!("contrastive_norm_penalty_backward_{}", r.dtype), cfg, &params)?;
    }
    if let (Some(k), Some(du), Some(dk)) = (keys, &du_keys, dk) {
        to_dx(k, du, dk)?;
    }
    if let (Some(c), Some(du), Some(dc)) = (centers, &du_protos, dc) {
        to_dx(c, du, dc)?;
    }
    Ok(())
}

/// Device memory the fused path allocates beyond its inputs and the returned gradients, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedBytes {
    /// Allocated by [`forward`]: its outputs (loss, per-anchor, LSE, |P|; the last two are the
    /// saved statistics) and its scratch (norms, flags, split partials, column tiles; f16 / bf16 rows
    /// with d % 8 != 0 padded to a multiple of 8), freed on return.
    pub forward: usize,
    /// What stays allocated between the two calls: the saved statistics and the per-anchor losses.
    pub saved: usize,
    /// Allocated by [`backward`] on top of `saved`: the packed unit rows (input dtype, d rounded up
    /// to 8), the row norms, the f32 gradient scratch, the per-row coefficients and the upstream.
    pub backward: usize,
}

impl FusedBytes {
    /// Peak extra memory of a forward followed by its backward.
    pub fn peak(&self) -> usize {
        self.forward.max(self.saved + self.backward)
    }
}

/// The exact allocations of [`forward`] and [`backward`] (the safe API, `Upstream::Value`) for n
/// feature rows, `keys` key rows (pairwise; `None` in the self geometry), `centers` prototypes and
/// d features of `dtype`. O(n d), never O(n^2). The forward's split partials (n x 16 bytes per
/// split, at most MAX_SPLITS splits) depend on the GPU, the kernel and the temperature: counted
/// here as the largest of the row sweep's one- and two-blocks-per-SM choices on [`REFERENCE_SMS`]
/// SMs and, in the self geometry, the symmetric kernel's slots ([`forward_sym_groups`]), so at
/// most what runs there.
pub fn extra_bytes(n: usize, keys: Option<usize>, centers: usize, d: usize, dtype: DType) -> FusedBytes {
    let f = 4usize;
    let buf = |elems: usize, size: usize| elems.max(1).saturating_mul(size);
    let cols = keys.unwrap_or(n);
    let saved = buf(1, f) + 3 * buf(n, f); // loss, per_anchor, lse, positives
    let (row_blocks, tiles) = forward_grid(n, cols, centers);
    let splits = [params::FORWARD_BLOCKS_PER_SM, params::FORWARD_BLOCKS_PER_SM_SLOW]
        .iter()
        .map(|&b| forward_splits(row_blocks, tiles, REFERENCE_SMS, b))
        .max()
        .unwrap_or(1);
    let mut partials = if splits > 1 && n > 0 { 4 * f * splits * n } else { 0 };
    if keys.is_none() && n > 0 {
        let slots = forward_sym_groups(n, centers).1 + (centers > 0) as usize;
        partials = partials.max(4 * f * slots * n);
    }
    let mut columns = buf(tiles * params::FORWARD_COLUMN_TILE_BYTES / 4, f);
    if keys.is_none() && n > 0 {
        // the symmetric kernel's row records
        columns += n.div_ceil(params::FORWARD_COLS) * params::FORWARD_COLS * params::FORWARD_ROW_RECORD_BYTES;
    }
    let dp = d.div_ceil(8) * 8;
    // f16 / bf16 rows whose d is not a multiple of 8, padded for the forward's 16-byte copies
    // (pad_rows; the safe API's buffers are 16-byte aligned, so d alone decides)
    let pads = if dtype != DType::F32 && d % 8 != 0 {
        padded_bytes(n, dp, dtype)
            + keys.map_or(0, |k| padded_bytes(k, dp, dtype))
            + if centers > 0 { padded_bytes(centers, dp, dtype) } else { 0 }
    } else {
        0
    };
    // norms, first_empty, flags, split partials, prepared column tiles (and row records), padded rows
    let scratch = buf(n, f) + buf(cols, f) + buf(centers, f) + f + CHECK_NAMES.len() * f + partials + columns + pads;
    let packed = |rows: usize| packed_bytes(rows, dp, dtype);
    // upstream, U, norms, coef_a / coef_b, scalars, dU
    // (dU: one per column split of its pass, backward_splits)
    let splits = |own: usize, other: usize| backward_splits(dtype, d, own, other);
    let mut backward = f + packed(n) + buf(n, f) + 2 * buf(n, f) + 2 * f + buf(splits(n, cols) * n * d, f);
    if let Some(k) = keys {
        backward += packed(k) + buf(k, f) + buf(splits(k, n) * k * d, f);
    }
    if centers > 0 {
        backward += packed(centers) + buf(centers, f) + buf(splits(centers, n) * centers * d, f);
    }
    // Each pass's prepared column tiles (contrastive_backward_columns), freed after the pass: the
    // largest pass's (the rows' sweep over the keys or themselves and the prototypes; the keys' and
    // the prototypes' over the rows).
    let tiles = |rows: usize| backward_padded_rows(rows) / BACKWARD_ROWS * params::BACKWARD_COLUMN_TILE_BYTES;
    let others = if keys.is_some() || centers > 0 { tiles(n) } else { 0 };
    backward += (tiles(cols) + tiles(centers)).max(others);
    FusedBytes { forward: saved + scratch, saved, backward }
}

/// The raw description of device inputs; the slices' guards drop at once (one stream throughout).
fn multiprocessors(gpu: &Gpu) -> usize {
    use cudarc::driver::sys::CUdevice_attribute;
    gpu.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_or(REFERENCE_SMS, |n| n.max(1) as usize)
}

fn describe<T: FloatElement>(loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>, stream: &CudaStream) -> RawLossInputs {
    let x = inputs.features;
    RawLossInputs {
        dtype: T::DTYPE,
        n: x.rows(),
        d: x.cols(),
        features: x.raw(stream).0.ptr,
        instance: ptr(inputs.instance, stream),
        label: opt_ptr(inputs.label.filter(|_| loss.use_labels), stream),
        role: opt_ptr(inputs.role, stream),
        weight: opt_ptr(inputs.weight, stream),
        n_keys: inputs.keys.as_ref().map_or(0, |k| k.features.rows()),
        keys: inputs.keys.as_ref().map_or(0, |k| k.features.raw(stream).0.ptr),
        key_instance: inputs.keys.as_ref().map_or(0, |k| ptr(k.instance, stream)),
        key_label: inputs.keys.as_ref().map_or(0, |k| opt_ptr(k.label.filter(|_| loss.use_labels), stream)),
        n_centers: inputs.prototypes.as_ref().map_or(0, |p| p.centers.rows()),
        centers: inputs.prototypes.as_ref().map_or(0, |p| p.centers.raw(stream).0.ptr),
        proto_of: inputs.prototypes.as_ref().map_or(0, |p| ptr(p.proto_of, stream)),
        anchor_rows: inputs.anchor_rows,
    }
}

/// The fused forward on the GPU's default stream.
pub fn forward<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>) -> Result<DeviceForward> {
    forward_tuned(gpu, loss, inputs, ForwardTuning::default())
}

/// [`forward`] with its launch choices overridden (tests).
#[doc(hidden)]
pub fn forward_tuned<T: FloatElement>(
    gpu: &Gpu,
    loss: &ContrastiveLoss,
    inputs: &DeviceLossInputs<'_, T>,
    tuning: ForwardTuning,
) -> Result<DeviceForward> {
    check_device_inputs(loss, inputs)?;
    let stream = gpu.stream();
    let raw = describe(loss, inputs, stream);
    let n = raw.n;
    let loss_device = alloc_f32(stream, 1)?;
    let per_anchor = alloc_f32(stream, n)?;
    let lse = alloc_f32(stream, n)?;
    let positives = stream.alloc_zeros::<i32>(n.max(1)).during("device allocation")?;
    let out = RawForwardOutputs {
        loss: ptr(&loss_device, stream),
        per_anchor: ptr(&per_anchor, stream),
        lse: ptr(&lse, stream),
        positives: ptr(&positives, stream),
    };
    // SAFETY: the description comes from live, checked device buffers; the outputs are sized n.
    let value = unsafe { forward_raw_tuned(gpu, stream, loss, &raw, &out, tuning)? };
    Ok(DeviceForward {
        loss: value,
        loss_device,
        per_anchor,
        saved: SavedForward { lse, positives, shape: (n, raw.columns(), raw.n_centers, raw.d), features_ptr: raw.features },
    })
}

/// The device slice holding `upstream` for `loss`'s reduction: one dLoss for Mean / Sum (a host
/// value is uploaded into `buf`), one dL_i per feature row for PerAnchor; else the error.
pub(super) fn upstream_on_device<'a>(
    stream: &Arc<CudaStream>,
    loss: &ContrastiveLoss,
    upstream: Upstream<'a>,
    n: usize,
    buf: &'a mut Option<CudaSlice<f32>>,
) -> Result<&'a CudaSlice<f32>> {
    match (upstream, loss.reduction == Reduction::PerAnchor) {
        (Upstream::Value(g), false) => Ok(buf.insert(stream.clone_htod(&[g]).during("host-to-device copy")?)),
        (Upstream::Device(g), false) => check_slice("upstream", g, 1, "loss").map(|_| g),
        (Upstream::PerRow(g), true) => check_slice("upstream", g, n, "feature row").map(|_| g),
        (_, true) => Err(Error::invalid("upstream", "Reduction::PerAnchor takes Upstream::PerRow (one dL_i per feature row)")),
        (_, false) => Err(Error::invalid("upstream", "Mean and Sum take one dLoss: Upstream::Value or Upstream::Device")),
    }
}

/// The fused backward: gradients with respect to the raw features (and keys, prototypes), in the
/// input dtype. Consumes the forward's saved statistics; `inputs` must be the forward's.
pub fn backward<T: FloatElement>(
    gpu: &Gpu,
    loss: &ContrastiveLoss,
    inputs: &DeviceLossInputs<'_, T>,
    saved: SavedForward,
    upstream: Upstream<'_>,
) -> Result<DeviceGradients<T>> {
    check_device_inputs(loss, inputs)?;
    let stream = gpu.stream();
    let raw = describe(loss, inputs, stream);
    let n = raw.n;
    if saved.shape != (n, raw.columns(), raw.n_centers, raw.d) || saved.features_ptr != raw.features {
        return Err(Error::invalid("saved", "comes from a forward over other inputs (backward takes the forward's own inputs)"));
    }
    let per_row = loss.reduction == Reduction::PerAnchor;
    let mut upstream_buf = None;
    let upstream_slice = upstream_on_device(stream, loss, upstream, n, &mut upstream_buf)?;
    let mut features = DeviceMatrix::<T>::zeros(gpu, n, raw.d)?;
    let mut keys = inputs.keys.as_ref().map(|k| DeviceMatrix::<T>::zeros(gpu, k.features.rows(), raw.d)).transpose()?;
    let mut prototypes = inputs.prototypes.as_ref().map(|p| DeviceMatrix::<T>::zeros(gpu, p.centers.rows(), raw.d)).transpose()?;
    let out = RawGradOutputs {
        features: ptr(features.slice_mut(), stream),
        keys: keys.as_mut().map_or(0, |k| ptr(k.slice_mut(), stream)),
        prototypes: prototypes.as_mut().map_or(0, |p| ptr(p.slice_mut(), stream)),
    };
    let up = RawUpstream { ptr: ptr(upstream_slice, stream), per_row };
    // SAFETY: as in `forward`; the gradients are allocated with their inputs' shapes.
    unsafe { backward_raw(gpu, stream, loss, &raw, ptr(&saved.lse, stream), ptr(&saved.positives, stream), up, &out)? };
    // The scratch and `saved` are freed stream-ordered, after the kernels that read them.
    drop(saved);
    Ok(DeviceGradients { features, keys, prototypes })
}

/// Host [`LossInputs`] copied to the device and owned; [`Self::view`] is their
/// [`DeviceLossInputs`].
pub struct DeviceLossBuffers<T> {
    features: DeviceMatrix<T>,
    instance: CudaSlice<i32>,
    label: Option<CudaSlice<i32>>,
    role: Option<CudaSlice<u8>>,
    weight: Option<CudaSlice<f32>>,
    keys: Option<DeviceKeys<T>>,
    prototypes: Option<(DeviceMatrix<T>, CudaSlice<i32>)>,
    anchor_rows: Option<usize>,
}

/// The keys' features, instance ids and labels on the device.
type DeviceKeys<T> = (DeviceMatrix<T>, CudaSlice<i32>, Option<CudaSlice<i32>>);

/// A host slice on the device (one zero element when empty: no zero-sized allocation).
pub(crate) fn upload_slice<E: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(gpu: &Gpu, v: &[E]) -> Result<CudaSlice<E>> {
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
            instance: upload_slice(gpu, inputs.instance)?,
            label: inputs.label.map(|l| upload_slice(gpu, l)).transpose()?,
            role: inputs.role.map(|r| upload_slice(gpu, &r.iter().map(|&r| r as u8).collect::<Vec<u8>>())).transpose()?,
            weight: inputs.weight.map(|w| upload_slice(gpu, w)).transpose()?,
            keys: match &inputs.keys {
                Some(k) => Some((
                    DeviceMatrix::upload(gpu, k.features)?,
                    upload_slice(gpu, k.instance)?,
                    k.label.map(|l| upload_slice(gpu, l)).transpose()?,
                )),
                None => None,
            },
            prototypes: match &inputs.prototypes {
                Some(p) => Some((DeviceMatrix::upload(gpu, p.centers)?, upload_slice(gpu, p.proto_of)?)),
                None => None,
            },
            anchor_rows: inputs.anchor_rows,
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
            anchor_rows: self.anchor_rows,
        }
    }
}
