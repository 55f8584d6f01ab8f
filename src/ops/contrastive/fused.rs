//! The fused GPU path over device buffers: the forward (an online log-sum-exp over column tiles,
//! O(n) saved statistics) and the backward ((G + G^T) U from recomputed logit tiles), both in
//! `kernels/contrastive.cu`. Device memory beyond the inputs and the gradients: the norms and
//! per-row statistics (O(n)), and in the backward a packed unit-row copy (n x d in the input dtype)
//! plus an f32 gradient scratch (n x d): 48 MiB at n = 65536, d = 128 bf16; never O(n^2).
//!
//! f16 and bf16 features run on the tensor cores (f32 accumulation); f32 features run the same
//! kernels with exact FFMA in place of the MMA (same fragment layout), for f32 accuracy.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig};

use super::{empty_positive_error, ContrastiveLoss, Geometry, Reduction, RowRole};
use crate::dtype::{DType, FloatElement};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{dim_i32, kernel_args, DeviceMatrix, Gpu, RawMatrix};

const MODULE: &str = "contrastive";
/// Mirrors kernels/common/tile_config.cuh: Tile128 rows per forward block, Tile64RowWarps rows per
/// backward block (the same for their f32 forms).
const FORWARD_ROWS: usize = 128;
const FORWARD_THREADS: u32 = 256;
const BACKWARD_ROWS: usize = 64;
const BACKWARD_THREADS: u32 = 128;
/// kGradChunk: d columns of the gradient per backward block (BackwardTraits in contrastive.cu).
fn grad_chunk(dtype: DType) -> usize {
    if dtype == DType::F32 {
        64
    } else {
        128
    }
}
const ROW_KERNEL_THREADS: u32 = 256; // one warp per row: pack, norm penalty
const SINGLE_BLOCK_THREADS: u32 = 1024; // contrastive_reduce, contrastive_backward_prepare

/// The rows of one loss evaluation in device memory (the device twin of [`super::LossInputs`]).
/// Id and weight slices hold one entry per row.
#[derive(Clone, Copy)]
pub struct DeviceLossInputs<'a, T> {
    pub features: &'a DeviceMatrix<T>,
    pub instance: &'a CudaSlice<i32>,
    pub label: Option<&'a CudaSlice<i32>>,
    /// [`RowRole`] as u8 (0 anchor, 1 negative-only, 2 norm-penalty-only).
    pub role: Option<&'a CudaSlice<u8>>,
    pub weight: Option<&'a CudaSlice<f32>>,
    pub keys: Option<DeviceKeyRows<'a, T>>,
    pub prototypes: Option<DevicePrototypeColumns<'a, T>>,
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
        DeviceLossInputs { features, instance, label: None, role: None, weight: None, keys: None, prototypes: None }
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

fn check_slice<E>(arg: &'static str, s: &CudaSlice<E>, rows: usize, of: &str) -> Result<()> {
    // A zero-row input still holds one element (the driver allocates no empty buffers).
    if s.len() == rows || (rows == 0 && s.len() <= 1) {
        Ok(())
    } else {
        Err(Error::shape(arg, format!("{rows} entries (one per {of})"), format!("{}", s.len())))
    }
}

/// Shapes, lengths, dtypes and the geometry; id ranges and finiteness are checked on the device
/// by the forward (contrastive_check_inputs).
pub fn check_device_inputs<T: FloatElement>(loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>) -> Result<()> {
    loss.validate()?;
    let x = inputs.features;
    let (n, d) = (x.rows(), x.cols());
    super::super::check_features("features", n, d)?;
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
                return Err(Error::shape("keys.features", format!("{d} columns (the d of features)"), format!("{} x {}", k.features.rows(), k.features.cols())));
            }
            super::super::check_features("keys.features", k.features.rows(), d)?;
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
            return Err(Error::shape("prototypes.centers", format!("{d} columns (the d of features)"), format!("{} x {}", p.centers.rows(), p.centers.cols())));
        }
        super::super::check_features("prototypes.centers", p.centers.rows(), d)?;
        check_slice("prototypes.proto_of", p.proto_of, n, "feature row")?;
    }
    Ok(())
}

fn ptr<E>(s: &CudaSlice<E>, stream: &CudaStream) -> u64 {
    // Everything here runs on one stream, so the read/write events cudarc records are not needed
    // beyond the launch: the guard may drop at once.
    s.device_ptr(stream).0
}

fn opt_ptr<E>(s: Option<&CudaSlice<E>>, stream: &CudaStream) -> u64 {
    s.map_or(0, |s| ptr(s, stream))
}

fn raw<T: FloatElement>(m: &DeviceMatrix<T>, stream: &CudaStream) -> RawMatrix {
    m.raw(stream).0
}

fn alloc_f32(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<f32>> {
    stream.alloc_zeros::<f32>(len.max(1)).during("device allocation")
}

fn rows_config(rows: usize, rows_per_block: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(rows_per_block).max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// The number of anchors `Mean` divides by (counted on the host from the role slice).
fn divisor(loss: &ContrastiveLoss, anchors: usize) -> f32 {
    if loss.reduction == Reduction::Mean {
        anchors.max(1) as f32
    } else {
        1.0
    }
}

fn count_anchors(stream: &Arc<CudaStream>, role: Option<&CudaSlice<u8>>, n: usize) -> Result<usize> {
    match role {
        None => Ok(n),
        Some(_) if n == 0 => Ok(0),
        Some(r) => Ok(stream.clone_dtoh(r).during("device-to-host copy")?.iter().take(n).filter(|&&r| r == RowRole::Anchor as u8).count()),
    }
}

const CHECK_NAMES: [(&str, &str); 8] = [
    ("features", "holds a non-finite value"),
    ("label", "has an id below -1 (ids are >= 0, or -1 for none)"),
    ("role", "has a role above 2 (0 anchor, 1 negative-only, 2 norm-penalty-only)"),
    ("weight", "has a weight that is negative or not finite"),
    ("prototypes.proto_of", "has an index outside -1..number of prototypes"),
    ("keys.features", "holds a non-finite value"),
    ("keys.label", "has an id below -1"),
    ("prototypes.centers", "holds a non-finite value"),
];

/// The fused forward on the GPU's default stream.
pub fn forward<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &DeviceLossInputs<'_, T>) -> Result<DeviceForward> {
    check_device_inputs(loss, inputs)?;
    let stream = gpu.stream();
    let x = raw(inputs.features, stream);
    let (n, d) = (x.rows, x.cols);
    let keys = inputs.keys.as_ref().map(|k| (raw(k.features, stream), ptr(k.instance, stream), opt_ptr(k.label.filter(|_| loss.use_labels), stream)));
    let protos = inputs.prototypes.as_ref().map(|p| (raw(p.centers, stream), ptr(p.proto_of, stream)));
    let n_keys = keys.as_ref().map_or(n, |k| k.0.rows);
    let n_centers = protos.as_ref().map_or(0, |p| p.0.rows);

    let norms = alloc_f32(stream, n)?;
    let key_norms = alloc_f32(stream, n_keys)?;
    let center_norms = alloc_f32(stream, n_centers)?;
    let per_anchor = alloc_f32(stream, n)?;
    let lse = alloc_f32(stream, n)?;
    let positives = stream.alloc_zeros::<i32>(n.max(1)).during("device allocation")?;
    let total = alloc_f32(stream, 1)?;
    let first_empty = stream.alloc_zeros::<i32>(1).during("device allocation")?;
    let flags = stream.clone_htod(&[i32::MAX; 8]).during("host-to-device copy")?;

    let (norms_p, key_norms_p, center_norms_p) = (ptr(&norms, stream), ptr(&key_norms, stream), ptr(&center_norms, stream));
    let instance_p = ptr(inputs.instance, stream);
    let label_p = opt_ptr(inputs.label.filter(|_| loss.use_labels), stream);
    let role_p = opt_ptr(inputs.role, stream);
    let weight_p = opt_ptr(inputs.weight, stream);
    let (n_i, nk_i, nc_i, d_i) = (dim_i32("features.rows", n)?, dim_i32("keys.rows", n_keys)?, dim_i32("prototypes.rows", n_centers)?, dim_i32("features.cols", d)?);
    // SAFETY: every pointer is a live allocation of this GPU sized for the shape passed with it
    // (checked above), and every argument list matches its kernel's signature.
    unsafe {
        super::super::normalize::l2_normalize_raw(gpu, stream, x, None, Some(norms_p))?;
        if let Some((k, _, _)) = keys {
            super::super::normalize::l2_normalize_raw(gpu, stream, k, None, Some(key_norms_p))?;
        }
        if let Some((c, _)) = protos {
            super::super::normalize::l2_normalize_raw(gpu, stream, c, None, Some(center_norms_p))?;
        }
        let (key_norms_arg, key_label_arg) = match keys {
            Some((_, _, kl)) => (key_norms_p, kl),
            None => (0u64, 0u64),
        };
        let proto_of_p = protos.map_or(0, |p| p.1);
        let flags_p = ptr(&flags, stream);
        let checked = n.max(n_keys).max(n_centers);
        let cfg = LaunchConfig { grid_dim: (checked.div_ceil(256).clamp(1, 1024) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        gpu.launch(stream, MODULE, "contrastive_check_inputs", cfg, &mut kernel_args![
            &norms_p, &label_p, &role_p, &weight_p, &proto_of_p, &n_i, &key_norms_arg, &key_label_arg, &nk_i, &center_norms_p, &nc_i, &flags_p
        ])?;

        let (cols_x, cols_norms, cols_inst, cols_label, cols_role) = match keys {
            Some((k, ki, kl)) => (k.ptr, key_norms_p, ki, kl, 0u64),
            None => (x.ptr, norms_p, instance_p, label_p, role_p),
        };
        let centers_x = protos.map_or(0, |p| p.0.ptr);
        let aligned = d % 8 == 0 && x.ptr % 16 == 0 && cols_x % 16 == 0 && centers_x % 16 == 0;
        let name = format!("contrastive_forward_{}{}", T::DTYPE, if aligned { "" } else { "_unaligned" });
        let exclude_self = (loss.geometry == Geometry::SelfSimilarity) as i32;
        let inv_tau = 1.0f32 / loss.temperature;
        let (per_anchor_p, lse_p, positives_p) = (ptr(&per_anchor, stream), ptr(&lse, stream), ptr(&positives, stream));
        if n > 0 {
            gpu.launch(stream, MODULE, &name, rows_config(n, FORWARD_ROWS, FORWARD_THREADS), &mut kernel_args![
                &x.ptr, &norms_p, &instance_p, &label_p, &role_p, &n_i,
                &cols_x, &cols_norms, &cols_inst, &cols_label, &cols_role, &nk_i,
                &centers_x, &center_norms_p, &nc_i, &proto_of_p,
                &d_i, &exclude_self, &inv_tau, &loss.scale, &per_anchor_p, &lse_p, &positives_p
            ])?;
        }
        let div = divisor(loss, count_anchors(stream, inputs.role, n)?);
        let (total_p, first_empty_p) = (ptr(&total, stream), ptr(&first_empty, stream));
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SINGLE_BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        gpu.launch(stream, MODULE, "contrastive_reduce", cfg, &mut kernel_args![
            &per_anchor_p, &weight_p, &role_p, &positives_p, &norms_p, &n_i, &div, &loss.norm_penalty, &total_p, &first_empty_p
        ])?;
    }

    let flags = stream.clone_dtoh(&flags).during("device-to-host copy")?;
    if let Some((k, row)) = flags.iter().enumerate().find(|(_, &row)| row != i32::MAX) {
        let (arg, what) = CHECK_NAMES[k];
        return Err(Error::invalid(arg, format!("row {row} {what}")));
    }
    if loss.norm_penalty == 0.0 && inputs.role.is_some() {
        let roles = stream.clone_dtoh(inputs.role.unwrap()).during("device-to-host copy")?;
        if roles.iter().take(n).any(|&r| r == RowRole::NormPenaltyOnly as u8) {
            return Err(Error::invalid("role", "NormPenaltyOnly rows need a loss with norm_penalty > 0 (ContrastiveLoss::oecl)"));
        }
    }
    let first_empty = stream.clone_dtoh(&first_empty).during("device-to-host copy")?[0];
    if first_empty >= 0 && loss.empty_positives == super::EmptyPositives::Error {
        return Err(empty_positive_error(first_empty as usize));
    }
    let loss_value = stream.clone_dtoh(&total).during("device-to-host copy")?[0];
    Ok(DeviceForward {
        loss: loss_value,
        loss_device: total,
        per_anchor,
        saved: SavedForward { lse, positives, shape: (n, n_keys, n_centers, d), features_ptr: x.ptr },
    })
}

/// One side of a backward pass; mirrors `ck::GradSide` (kernels/contrastive.cu), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GradSide {
    u: u64,
    instance: u64,
    label: u64,
    role: u64,
    proto_of: u64,
    lse: u64,
    coef_a: u64,
    coef_b: u64,
    count: i32,
    reserved: i32,
}
const _: () = assert!(std::mem::size_of::<GradSide>() == 72);

/// Unit rows x / max(||x||, eps) in `T`, rows padded with zeros to `dp` (a multiple of 8).
fn pack<T: FloatElement>(gpu: &Gpu, m: RawMatrix, dp: usize) -> Result<CudaSlice<T>> {
    let stream = gpu.stream();
    let out = stream.alloc_zeros::<T>((m.rows * dp).max(1)).during("device allocation")?;
    if m.rows > 0 {
        let (n, d, dp_i, out_p) = (dim_i32("rows", m.rows)?, dim_i32("cols", m.cols)?, dim_i32("cols", dp)?, ptr(&out, stream));
        // SAFETY: `m` is a live rows x cols matrix of T, `out` holds rows x dp elements.
        unsafe {
            gpu.launch(stream, MODULE, &format!("contrastive_pack_{}", T::DTYPE), rows_config(m.rows, 8, ROW_KERNEL_THREADS), &mut kernel_args![&m.ptr, &n, &d, &dp_i, &out_p])?;
        }
    }
    Ok(out)
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
    let x = raw(inputs.features, stream);
    let (n, d) = (x.rows, x.cols);
    let keys = inputs.keys.as_ref().map(|k| raw(k.features, stream));
    let protos = inputs.prototypes.as_ref().map(|p| raw(p.centers, stream));
    let n_keys = keys.map_or(n, |k| k.rows);
    let n_centers = protos.map_or(0, |p| p.rows);
    if saved.shape != (n, n_keys, n_centers, d) || saved.features_ptr != x.ptr {
        return Err(Error::invalid("saved", "comes from a forward over other inputs (backward takes the forward's own inputs)"));
    }
    let per_row = loss.reduction == Reduction::PerAnchor;
    let upstream_buf;
    let upstream_slice = match (upstream, per_row) {
        (Upstream::Value(g), false) => {
            upstream_buf = stream.clone_htod(&[g]).during("host-to-device copy")?;
            &upstream_buf
        }
        (Upstream::Device(g), false) => {
            check_slice("upstream", g, 1, "loss")?;
            g
        }
        (Upstream::PerRow(g), true) => {
            check_slice("upstream", g, n, "feature row")?;
            g
        }
        (_, true) => return Err(Error::invalid("upstream", "Reduction::PerAnchor takes Upstream::PerRow (one dL_i per feature row)")),
        (_, false) => return Err(Error::invalid("upstream", "Mean and Sum take one dLoss: Upstream::Value or Upstream::Device")),
    };

    let dp = d.div_ceil(8) * 8;
    let u_rows = pack::<T>(gpu, x, dp)?;
    let u_keys = keys.map(|k| pack::<T>(gpu, k, dp)).transpose()?;
    let u_protos = protos.map(|c| pack::<T>(gpu, c, dp)).transpose()?;
    let coef_a = alloc_f32(stream, n)?;
    let coef_b = alloc_f32(stream, n)?;
    let scalars = alloc_f32(stream, 2)?;
    let anchors = count_anchors(stream, inputs.role, n)?;
    let (n_i, d_i, dp_i) = (dim_i32("features.rows", n)?, dim_i32("features.cols", d)?, dim_i32("features.cols", dp)?);
    let role_p = opt_ptr(inputs.role, stream);
    let label_p = opt_ptr(inputs.label.filter(|_| loss.use_labels), stream);
    let proto_of_p = opt_ptr(inputs.prototypes.as_ref().map(|p| p.proto_of), stream);
    let (scalars_p, upstream_p) = (ptr(&scalars, stream), ptr(upstream_slice, stream));
    let rows_side = GradSide {
        u: ptr(&u_rows, stream),
        instance: ptr(inputs.instance, stream),
        label: label_p,
        role: role_p,
        proto_of: proto_of_p,
        lse: ptr(&saved.lse, stream),
        coef_a: ptr(&coef_a, stream),
        coef_b: ptr(&coef_b, stream),
        count: n_i,
        reserved: 0,
    };
    // Keys and prototypes are only ever columns of the anchors' logits: no anchor terms of their own.
    let keys_side = match (&inputs.keys, &u_keys) {
        (Some(k), Some(u)) => Some(GradSide {
            u: ptr(u, stream),
            instance: ptr(k.instance, stream),
            label: opt_ptr(k.label.filter(|_| loss.use_labels), stream),
            count: dim_i32("keys.rows", n_keys)?,
            ..GradSide::default()
        }),
        _ => None,
    };
    let protos_side = match &u_protos {
        Some(u) => GradSide { u: ptr(u, stream), count: dim_i32("prototypes.rows", n_centers)?, ..GradSide::default() },
        None => GradSide::default(),
    };

    let du_rows = alloc_f32(stream, n * d)?;
    let du_keys = keys.map(|k| alloc_f32(stream, k.rows * d)).transpose()?;
    let du_protos = protos.map(|c| alloc_f32(stream, c.rows * d)).transpose()?;
    let inv_tau = 1.0f32 / loss.temperature;
    let name = format!("contrastive_backward_{}", T::DTYPE);
    let pass = |own: GradSide, other: GradSide, extra: GradSide, exclude_self: i32, du: &CudaSlice<f32>| -> Result<()> {
        if own.count == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: ((own.count as usize).div_ceil(BACKWARD_ROWS) as u32, d.div_ceil(grad_chunk(T::DTYPE)) as u32, 1),
            block_dim: (BACKWARD_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let du_p = ptr(du, stream);
        // SAFETY: every side's pointers are live buffers sized by its count (packed rows: count x dp),
        // `du` holds count x d floats, and the arguments match contrastive_backward_*.
        unsafe { gpu.launch(stream, MODULE, &name, cfg, &mut kernel_args![&own, &other, &extra, &dp_i, &d_i, &exclude_self, &inv_tau, &scalars_p, &du_p]) }
    };

    // SAFETY: as in the forward.
    unsafe {
        let div = divisor(loss, anchors);
        let (per_row_i, positives_p) = (per_row as i32, ptr(&saved.positives, stream));
        let weight_p = opt_ptr(inputs.weight, stream);
        let (coef_a_p, coef_b_p) = (rows_side.coef_a, rows_side.coef_b);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SINGLE_BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        gpu.launch(stream, MODULE, "contrastive_backward_prepare", cfg, &mut kernel_args![
            &role_p, &weight_p, &positives_p, &upstream_p, &per_row_i, &div, &loss.scale, &n_i, &coef_a_p, &coef_b_p, &scalars_p
        ])?;
    }
    match keys_side {
        None => pass(rows_side, rows_side, protos_side, 1, &du_rows)?,
        Some(keys_side) => {
            pass(rows_side, keys_side, protos_side, 0, &du_rows)?;
            pass(keys_side, rows_side, GradSide::default(), 0, du_keys.as_ref().expect("keys"))?;
        }
    }
    if let Some(du) = &du_protos {
        // Prototypes are columns of the anchor rows only (never anchors, never of each other).
        pass(protos_side, rows_side, GradSide::default(), 0, du)?;
    }

    // Normalization backward, then OECL's penalty on its rows.
    let to_dx = |m: RawMatrix, du: &CudaSlice<f32>| -> Result<DeviceMatrix<T>> {
        let mut dx = DeviceMatrix::<T>::zeros(gpu, m.rows, m.cols)?;
        let dz = RawMatrix::new(ptr(du, stream), m.rows, m.cols, DType::F32);
        let dx_raw = RawMatrix::new(ptr(dx.slice_mut(), stream), m.rows, m.cols, T::DTYPE);
        // SAFETY: x, dz and dx are live m.rows x m.cols matrices of their dtypes.
        unsafe { super::super::normalize::l2_normalize_backward_raw(gpu, stream, m, dz, dx_raw)? };
        Ok(dx)
    };
    let mut features = to_dx(x, &du_rows)?;
    if loss.norm_penalty > 0.0 && inputs.role.is_some() && n > 0 {
        let dx_p = ptr(features.slice_mut(), stream);
        // SAFETY: as above; the kernel writes only NormPenaltyOnly rows of dx.
        unsafe {
            gpu.launch(stream, MODULE, &format!("contrastive_norm_penalty_backward_{}", T::DTYPE), rows_config(n, 8, ROW_KERNEL_THREADS), &mut kernel_args![
                &x.ptr, &role_p, &n_i, &d_i, &upstream_p, &(per_row as i32), &loss.norm_penalty, &scalars_p, &dx_p
            ])?;
        }
    }
    let keys_grad = match (keys, &du_keys) {
        (Some(k), Some(du)) => Some(to_dx(k, du)?),
        _ => None,
    };
    let protos_grad = match (protos, &du_protos) {
        (Some(c), Some(du)) => Some(to_dx(c, du)?),
        _ => None,
    };
    drop(saved);
    Ok(DeviceGradients { features, keys: keys_grad, prototypes: protos_grad })
}
