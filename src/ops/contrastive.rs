//! The generalized contrastive loss of DESIGN.md sections 2-4: one description (row roles, two
//! geometries, optional prototypes) from which NT-Xent / InfoNCE, SupCon, FIRM (both forms), OECL,
//! outlier-exposure negatives and the cluster-aware loss are thin configurations.
//!
//! Status: the configuration, its validation and the CPU oracle ([`crate::cpu::contrastive`]) are
//! in; the fused GPU kernels (`kernels/contrastive.cu`) are the next step of the loss issue.
//!
//! Per anchor i (logits s_ij = <u_i, u_j> / tau on unit rows):
//!   L_i = scale * ( LSE_{j in A(i)} s_ij - (1/|P(i)|) sum_{p in P(i)} s_ip )
//! * P(i): columns j (j != i in the self geometry) with instance[j] == instance[i], or
//!   label[i] >= 0 and label[j] == label[i]; plus the prototype proto_of[i] when >= 0.
//! * A(i): every column but i (self) or every key (pairwise), plus every prototype.
//! * Roles: `Anchor` rows are anchors and columns; `NegativeOnly` rows are columns only (they enter
//!   the others' denominators, and their positive sets by the id rule); `NormPenaltyOnly` rows are
//!   not in the similarity matrix at all and only feed the OECL norm penalty
//!   `norm_penalty * mean_o ||x_o||` (raw, unnormalized norms).
//! * Reduction over anchors: `Mean` = sum_i w_i L_i / (number of anchors), anchors with no positive
//!   included in the count under `EmptyPositives::Zero` (SupContrast after its PR #142); `Sum`;
//!   `PerAnchor` returns every L_i (0 for non-anchors) and takes one upstream gradient per row.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::dtype::{DType, Float, FloatElement};
use crate::error::CudaContext as _;
use crate::gpu::{dim_i32, kernel_args, DeviceMatrix, Gpu};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Which similarity matrix the loss is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// Rows = columns = the batch (all views), diagonal excluded (SimCLR, SupCon, FIRM package).
    SelfSimilarity,
    /// Anchors (view 1) against keys (view 2, then an optional queue); nothing masked, so an
    /// anchor's own other view is a key (FIRM paper, MoCo).
    Pairwise,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    PerAnchor,
}

/// What an anchor with no positive does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyPositives {
    /// Contributes 0 to the loss and the gradient (still counted by `Mean`).
    Zero,
    /// The loss fails naming the first such row (FIRM's package raises). The default.
    Error,
}

/// The part a row plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum RowRole {
    #[default]
    Anchor = 0,
    /// Only in denominators (outlier-exposure negatives): never an anchor.
    NegativeOnly = 1,
    /// Outside the similarity matrix; only its raw norm enters the OECL penalty.
    NormPenaltyOnly = 2,
}

/// A configured loss. Build it with one of the named constructors, then adjust.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContrastiveLoss {
    pub geometry: Geometry,
    /// tau > 0: logits are cosines / tau.
    pub temperature: f32,
    /// Multiplies every L_i (SupCon's tau / base_tau; 1 elsewhere).
    pub scale: f32,
    /// Whether `label` ids make positives (SupCon, FIRM, cluster-aware) or only `instance` ids do.
    pub use_labels: bool,
    pub reduction: Reduction,
    pub empty_positives: EmptyPositives,
    /// OECL's alpha: weight of the mean raw norm of `NormPenaltyOnly` rows (0 = no penalty).
    pub norm_penalty: f32,
}

impl ContrastiveLoss {
    fn base(geometry: Geometry, temperature: f32, use_labels: bool) -> Self {
        ContrastiveLoss {
            geometry,
            temperature,
            scale: 1.0,
            use_labels,
            reduction: Reduction::Mean,
            empty_positives: EmptyPositives::Error,
            norm_penalty: 0.0,
        }
    }

    /// NT-Xent / InfoNCE (SimCLR): self geometry over all views, positives = the other views of the
    /// same instance. CSI-style shifted instances are this loss with (sample, rotation) instance ids.
    pub fn nt_xent(temperature: f32) -> Self {
        Self::base(Geometry::SelfSimilarity, temperature, false)
    }

    /// SupCon (SupContrast `losses.py`): labels make positives, loss scaled by tau / base_tau.
    pub fn supcon(temperature: f32, base_temperature: f32) -> Self {
        ContrastiveLoss { scale: temperature / base_temperature, ..Self::base(Geometry::SelfSimilarity, temperature, true) }
    }

    /// FIRM, the package default ("concat", 2B x 2B): inlier labels >= 0 make positives, outliers
    /// carry label -1 and pair only with their own views.
    pub fn firm(temperature: f32) -> Self {
        Self::base(Geometry::SelfSimilarity, temperature, true)
    }

    /// FIRM, the paper's pairwise B x B form (`losses.FIRMLoss`).
    pub fn firm_pairwise(temperature: f32) -> Self {
        Self::base(Geometry::Pairwise, temperature, true)
    }

    /// OECL (Le-Gia & Ahn): NT-Xent over the in-distribution rows plus `alpha` times the mean raw
    /// norm of the outlier rows (give those rows the role `NormPenaltyOnly`).
    pub fn oecl(temperature: f32, alpha: f32) -> Self {
        ContrastiveLoss { norm_penalty: alpha, ..Self::nt_xent(temperature) }
    }

    /// NT-Xent where outlier rows (role `NegativeOnly`) only enter the denominators.
    pub fn outlier_exposure(temperature: f32) -> Self {
        Self::nt_xent(temperature)
    }

    /// Cluster-aware (CCL): cluster ids as labels, cluster prototypes as extra key columns, the own
    /// cluster's prototype a positive, every prototype in every denominator.
    pub fn cluster_aware(temperature: f32) -> Self {
        Self::base(Geometry::SelfSimilarity, temperature, true)
    }

    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    pub fn with_empty_positives(mut self, policy: EmptyPositives) -> Self {
        self.empty_positives = policy;
        self
    }

    /// Checks the scalar parameters.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("temperature", format!("must be finite and > 0, got {}", self.temperature)));
        }
        if !self.scale.is_finite() {
            return Err(Error::invalid("scale", format!("must be finite, got {}", self.scale)));
        }
        if !(self.norm_penalty >= 0.0 && self.norm_penalty.is_finite()) {
            return Err(Error::invalid("norm_penalty", format!("must be finite and >= 0, got {}", self.norm_penalty)));
        }
        Ok(())
    }
}

/// The rows of one loss evaluation and their roles (host side; the GPU form will take the same
/// description over device buffers).
#[derive(Clone, Copy, Debug)]
pub struct LossInputs<'a, T> {
    /// Self geometry: every row (all views). Pairwise: the anchors (view 1).
    pub features: &'a Matrix<T>,
    /// Rows with equal ids are views of one sample.
    pub instance: &'a [i32],
    /// Class or cluster ids, -1 = none (outlier / unlabelled). Required when `use_labels`.
    pub label: Option<&'a [i32]>,
    /// Default: every row an `Anchor`.
    pub role: Option<&'a [RowRole]>,
    /// Per-anchor weights w_i >= 0 (default 1).
    pub weight: Option<&'a [f32]>,
    /// Pairwise only (required there): the keys, view 2 then any queue.
    pub keys: Option<KeyRows<'a, T>>,
    /// Optional prototype columns (cluster-aware loss).
    pub prototypes: Option<PrototypeColumns<'a, T>>,
}

/// The key side of the pairwise geometry.
#[derive(Clone, Copy, Debug)]
pub struct KeyRows<'a, T> {
    pub features: &'a Matrix<T>,
    pub instance: &'a [i32],
    /// Required when `use_labels`.
    pub label: Option<&'a [i32]>,
}

/// K prototype columns (unit-normalized on the fly like every row) and, for each anchor row, the
/// index of its own prototype (a positive) or -1.
#[derive(Clone, Copy, Debug)]
pub struct PrototypeColumns<'a, T> {
    pub centers: &'a Matrix<T>,
    pub proto_of: &'a [i32],
}

impl<'a, T: Float> LossInputs<'a, T> {
    /// Self geometry over `features` with instance ids only.
    pub fn new(features: &'a Matrix<T>, instance: &'a [i32]) -> Self {
        LossInputs { features, instance, label: None, role: None, weight: None, keys: None, prototypes: None }
    }

    pub fn role_of(&self, i: usize) -> RowRole {
        self.role.map_or(RowRole::Anchor, |r| r[i])
    }
}

fn check_len(arg: &'static str, len: usize, expected: usize, of: &str) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::shape(arg, format!("{expected} entries (one per {of})"), format!("{len}")))
    }
}

fn check_labels(arg: &'static str, labels: &[i32]) -> Result<()> {
    match labels.iter().position(|&l| l < -1) {
        Some(i) => Err(Error::invalid(arg, format!("ids are >= 0, or -1 for none; row {i} has {}", labels[i]))),
        None => Ok(()),
    }
}

fn check_finite<T: Float>(arg: &'static str, m: &Matrix<T>) -> Result<()> {
    match m.data().iter().position(|v| !v.to_f64().is_finite()) {
        Some(k) => Err(Error::invalid(arg, format!("row {} holds a non-finite value ({:?})", k / m.cols().max(1), m.data()[k]))),
        None => Ok(()),
    }
}

/// Validation shared by every backend: lengths, ids, roles, weights, dimensions, finiteness.
pub fn check_inputs<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>) -> Result<()> {
    loss.validate()?;
    let x = inputs.features;
    let (n, d) = (x.rows(), x.cols());
    super::check_features("features", n, d)?;
    check_len("instance", inputs.instance.len(), n, "feature row")?;
    match (loss.use_labels, inputs.label) {
        (_, Some(label)) => {
            check_len("label", label.len(), n, "feature row")?;
            check_labels("label", label)?;
        }
        (true, None) => return Err(Error::invalid("label", "required by this loss (it makes positives from labels)")),
        (false, None) => {}
    }
    if let Some(role) = inputs.role {
        check_len("role", role.len(), n, "feature row")?;
    }
    if let Some(weight) = inputs.weight {
        check_len("weight", weight.len(), n, "feature row")?;
        if let Some(i) = weight.iter().position(|w| !(*w >= 0.0 && w.is_finite())) {
            return Err(Error::invalid("weight", format!("weights are finite and >= 0; row {i} has {}", weight[i])));
        }
    }
    check_finite("features", x)?;
    match (loss.geometry, &inputs.keys) {
        (Geometry::Pairwise, None) => return Err(Error::invalid("keys", "required by the pairwise geometry")),
        (Geometry::SelfSimilarity, Some(_)) => {
            return Err(Error::invalid("keys", "only the pairwise geometry takes keys; the self geometry's columns are its rows"))
        }
        (Geometry::Pairwise, Some(keys)) => {
            let k = keys.features;
            if k.cols() != d {
                return Err(Error::shape("keys.features", format!("{d} columns (the d of features)"), format!("{} x {}", k.rows(), k.cols())));
            }
            check_len("keys.instance", keys.instance.len(), k.rows(), "key row")?;
            match (loss.use_labels, keys.label) {
                (_, Some(label)) => {
                    check_len("keys.label", label.len(), k.rows(), "key row")?;
                    check_labels("keys.label", label)?;
                }
                (true, None) => return Err(Error::invalid("keys.label", "required by this loss")),
                (false, None) => {}
            }
            check_finite("keys.features", k)?;
        }
        (Geometry::SelfSimilarity, None) => {}
    }
    if let Some(p) = &inputs.prototypes {
        let c = p.centers;
        if c.cols() != d {
            return Err(Error::shape("prototypes.centers", format!("{d} columns (the d of features)"), format!("{} x {}", c.rows(), c.cols())));
        }
        check_len("prototypes.proto_of", p.proto_of.len(), n, "feature row")?;
        if let Some(i) = p.proto_of.iter().position(|&k| k < -1 || k >= c.rows() as i32) {
            return Err(Error::invalid("prototypes.proto_of", format!("indices are in -1..{}; row {i} has {}", c.rows(), p.proto_of[i])));
        }
        check_finite("prototypes.centers", c)?;
    }
    if loss.norm_penalty == 0.0 && inputs.role.is_some_and(|r| r.contains(&RowRole::NormPenaltyOnly)) {
        return Err(Error::invalid("role", "NormPenaltyOnly rows need a loss with norm_penalty > 0 (ContrastiveLoss::oecl)"));
    }
    Ok(())
}

/// What the fused forward returns (f32, as the kernels compute it).
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardResult {
    /// The reduced loss (Mean / Sum of w_i L_i; Sum for `PerAnchor`) plus the OECL norm penalty.
    pub loss: f32,
    /// L_i per feature row: 0 for non-anchors and for anchors without positives.
    pub per_anchor: Vec<f32>,
    /// LSE over A(i) per row (saved for the backward); -inf for `NormPenaltyOnly` rows.
    pub lse: Vec<f32>,
    /// |P(i)| per row.
    pub positives: Vec<i32>,
}

const MODULE: &str = "contrastive";
/// Mirrors kernels/common/tile_config.cuh (Tile128) and contrastive_reduce's block.
const ROW_BLOCK: usize = 128;
const THREADS: u32 = 256;
const REDUCE_THREADS: u32 = 1024;

/// The number of anchors `Mean` divides by.
fn anchor_count<T: Float>(inputs: &LossInputs<'_, T>) -> usize {
    (0..inputs.features.rows()).filter(|&i| inputs.role_of(i) == RowRole::Anchor).count()
}

/// The fused forward on the GPU from host inputs (uploads them, runs, downloads the result).
/// f16 / bf16 features; f32 features are not supported by the fused kernels yet.
pub fn forward_gpu<T: FloatElement>(gpu: &Gpu, loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>) -> Result<ForwardResult> {
    check_inputs(loss, inputs)?;
    if T::DTYPE == DType::F32 {
        return Err(Error::invalid("features", "the fused GPU loss takes f16 or bf16 features (f32 is not implemented yet); use Backend::Cpu"));
    }
    let stream = gpu.stream();
    let x = inputs.features;
    let (n, d) = (x.rows(), x.cols());
    let upload_i32 = |v: &[i32]| -> Result<CudaSlice<i32>> {
        if v.is_empty() {
            stream.alloc_zeros::<i32>(1)
        } else {
            stream.clone_htod(v)
        }
        .during("host-to-device copy")
    };
    let x_dev = DeviceMatrix::upload(gpu, x)?;
    let instance = upload_i32(inputs.instance)?;
    let label = match (loss.use_labels, inputs.label) {
        (true, Some(l)) => Some(upload_i32(l)?),
        _ => None,
    };
    let role: Option<CudaSlice<u8>> = match inputs.role {
        Some(r) => Some(stream.clone_htod(&r.iter().map(|&r| r as u8).collect::<Vec<u8>>()).during("host-to-device copy")?),
        None => None,
    };
    let weight: Option<CudaSlice<f32>> = match inputs.weight {
        Some(w) => Some(stream.clone_htod(w).during("host-to-device copy")?),
        None => None,
    };
    let keys = match &inputs.keys {
        Some(k) => Some((
            DeviceMatrix::upload(gpu, k.features)?,
            upload_i32(k.instance)?,
            match (loss.use_labels, k.label) {
                (true, Some(l)) => Some(upload_i32(l)?),
                _ => None,
            },
        )),
        None => None,
    };
    let protos = match &inputs.prototypes {
        Some(p) => Some((DeviceMatrix::upload(gpu, p.centers)?, upload_i32(p.proto_of)?)),
        None => None,
    };

    let n_keys = match (loss.geometry, &keys) {
        (Geometry::Pairwise, Some(k)) => k.0.rows(),
        _ => n,
    };
    let n_centers = protos.as_ref().map_or(0, |p| p.0.rows());
    let alloc_f32 = |len: usize| -> Result<CudaSlice<f32>> { stream.alloc_zeros::<f32>(len.max(1)).during("device allocation") };
    let (mut norms, mut key_norms, mut center_norms) = (alloc_f32(n)?, alloc_f32(n_keys)?, alloc_f32(n_centers)?);
    let mut per_anchor = alloc_f32(n)?;
    let mut lse = alloc_f32(n)?;
    let mut positives = stream.alloc_zeros::<i32>(n.max(1)).during("device allocation")?;
    let mut total = alloc_f32(1)?;
    let mut first_empty = stream.alloc_zeros::<i32>(1).during("device allocation")?;

    {
        // Raw pointers for the launches; the guards keep cudarc's stream ordering until queued.
        let ptr = |s: &CudaSlice<_>| -> u64 { s.device_ptr(stream).0 };
        let x_raw = x_dev.raw(stream).0;
        let norms_p = norms.device_ptr_mut(stream).0;
        let key_norms_p = key_norms.device_ptr_mut(stream).0;
        let center_norms_p = center_norms.device_ptr_mut(stream).0;
        // SAFETY: every pointer is a live allocation sized for the shapes passed along with it.
        unsafe {
            super::normalize::l2_normalize_raw(gpu, stream, x_raw, None, Some(norms_p))?;
            if let Some((k, _, _)) = &keys {
                super::normalize::l2_normalize_raw(gpu, stream, k.raw(stream).0, None, Some(key_norms_p))?;
            }
            if let Some((c, _)) = &protos {
                super::normalize::l2_normalize_raw(gpu, stream, c.raw(stream).0, None, Some(center_norms_p))?;
            }
        }
        let opt_ptr = |s: &Option<CudaSlice<i32>>| s.as_ref().map_or(0u64, |s| s.device_ptr(stream).0);
        let (instance_p, label_p) = (ptr(&instance), opt_ptr(&label));
        let role_p = role.as_ref().map_or(0u64, |r| r.device_ptr(stream).0);
        let (keys_x, key_inst, key_label, key_role, key_norms_arg) = match (loss.geometry, &keys) {
            (Geometry::Pairwise, Some((k, ki, kl))) => (k.raw(stream).0.ptr, ptr(ki), opt_ptr(kl), 0u64, key_norms_p),
            _ => (x_raw.ptr, instance_p, label_p, role_p, norms_p),
        };
        let (centers_x, proto_of_p) = match &protos {
            Some((c, p)) => (c.raw(stream).0.ptr, ptr(p)),
            None => (0u64, 0u64),
        };
        let aligned = d % 8 == 0 && x_raw.ptr % 16 == 0 && keys_x % 16 == 0 && centers_x % 16 == 0;
        let name = format!("contrastive_forward_{}{}", T::DTYPE, if aligned { "" } else { "_unaligned" });
        let (n_i, nk_i, nc_i, d_i) = (dim_i32("features.rows", n)?, dim_i32("keys.rows", n_keys)?, dim_i32("prototypes.rows", n_centers)?, dim_i32("features.cols", d)?);
        let exclude_self = (loss.geometry == Geometry::SelfSimilarity) as i32;
        let inv_tau = 1.0f32 / loss.temperature;
        let (per_anchor_p, lse_p, positives_p) = (per_anchor.device_ptr_mut(stream).0, lse.device_ptr_mut(stream).0, positives.device_ptr_mut(stream).0);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(ROW_BLOCK) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let params = &mut kernel_args![
            &x_raw.ptr, &norms_p, &instance_p, &label_p, &role_p, &n_i,
            &keys_x, &key_norms_arg, &key_inst, &key_label, &key_role, &nk_i,
            &centers_x, &center_norms_p, &nc_i, &proto_of_p,
            &d_i, &exclude_self, &inv_tau, &loss.scale, &per_anchor_p, &lse_p, &positives_p
        ];
        if n > 0 {
            // SAFETY: as above; the argument list matches CK_CONTRASTIVE_FORWARD.
            unsafe { gpu.launch(stream, MODULE, &name, cfg, params)? };
        }

        let anchors = anchor_count(inputs);
        let divisor = if loss.reduction == Reduction::Mean { anchors.max(1) as f32 } else { 1.0 };
        let weight_p = weight.as_ref().map_or(0u64, |w| w.device_ptr(stream).0);
        let (total_p, first_empty_p) = (total.device_ptr_mut(stream).0, first_empty.device_ptr_mut(stream).0);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (REDUCE_THREADS, 1, 1), shared_mem_bytes: 0 };
        let params = &mut kernel_args![&per_anchor_p, &weight_p, &role_p, &positives_p, &norms_p, &n_i, &divisor, &loss.norm_penalty, &total_p, &first_empty_p];
        // SAFETY: as above; the argument list matches contrastive_reduce.
        unsafe { gpu.launch(stream, MODULE, "contrastive_reduce", cfg, params)? };
    }

    let download_f32 = |s: &CudaSlice<f32>| stream.clone_dtoh(s).during("device-to-host copy");
    let first_empty = stream.clone_dtoh(&first_empty).during("device-to-host copy")?[0];
    if first_empty >= 0 && loss.empty_positives == EmptyPositives::Error {
        return Err(empty_positive_error(first_empty as usize));
    }
    let mut result = ForwardResult {
        loss: download_f32(&total)?[0],
        per_anchor: download_f32(&per_anchor)?,
        lse: download_f32(&lse)?,
        positives: stream.clone_dtoh(&positives).during("device-to-host copy")?,
    };
    result.per_anchor.truncate(n);
    result.lse.truncate(n);
    result.positives.truncate(n);
    Ok(result)
}

/// The `EmptyPositives::Error` failure, shared by every backend.
pub fn empty_positive_error(row: usize) -> Error {
    Error::invalid(
        "instance",
        format!("row {row} has no positive: no other row shares its instance (or label) id; use EmptyPositives::Zero to let such anchors contribute 0"),
    )
}
