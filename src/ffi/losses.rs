//! The contrastive losses: the config and input structs, presets, the fused device forward and
//! backward, and their host twins that run the f64 oracle (`ops::contrastive::cpu`).

use std::ffi::c_void;

use super::args::{check_host_size, device_array, dtype, elements, host_matrix, host_slice, host_slice_mut, size, try_to_vec};
use super::memory::{device, stream_of};
use super::status::guard;
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::ops::contrastive::gpu::{RawForwardOutputs, RawGradOutputs, RawLossInputs, RawUpstream};
use crate::ops::contrastive::{self, ContrastiveLoss, EmptyPositives, Geometry, KeyRows, LossInputs, PrototypeColumns, Reduction, RowRole};

pub const CK_GEOMETRY_SELF: i32 = 0;
pub const CK_GEOMETRY_PAIRWISE: i32 = 1;
pub const CK_REDUCTION_MEAN: i32 = 0;
pub const CK_REDUCTION_SUM: i32 = 1;
pub const CK_REDUCTION_PER_ANCHOR: i32 = 2;
pub const CK_EMPTY_POSITIVES_ERROR: i32 = 0;
pub const CK_EMPTY_POSITIVES_ZERO: i32 = 1;

pub const CK_LOSS_NT_XENT: i32 = 0;
pub const CK_LOSS_SUPCON: i32 = 1;
pub const CK_LOSS_FIRM: i32 = 2;
pub const CK_LOSS_FIRM_PAIRWISE: i32 = 3;
pub const CK_LOSS_OECL: i32 = 4;
pub const CK_LOSS_OUTLIER_EXPOSURE: i32 = 5;
pub const CK_LOSS_CLUSTER_AWARE: i32 = 6;

/// A contrastive loss (DESIGN.md sections 2-3); fill it with `ck_loss_preset`, then adjust.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CkLossConfig {
    /// `CK_GEOMETRY_SELF` or `CK_GEOMETRY_PAIRWISE`.
    pub geometry: i32,
    /// tau: finite and > 0.
    pub temperature: f32,
    /// Multiplies every per-anchor loss (SupCon's tau / base_tau): finite and > 0.
    pub scale: f32,
    /// Nonzero: labels make positives.
    pub use_labels: i32,
    /// `CK_REDUCTION_*`.
    pub reduction: i32,
    /// `CK_EMPTY_POSITIVES_*`.
    pub empty_positives: i32,
    /// OECL's alpha: finite and >= 0 (0: none).
    pub norm_penalty: f32,
}

/// The rows of one loss evaluation (device pointers; host pointers for the `_host` calls).
/// Optional ones may be NULL; `keys` and `key_instance` are required by the pairwise geometry,
/// `label` (and `key_label`) when the loss uses labels, `proto_of` with `centers`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CkLossInputs {
    /// `CK_F32`, `CK_F16` or `CK_BF16`: features, keys and centers.
    pub dtype: i32,
    pub n: i64,
    pub d: i64,
    /// n x d.
    pub features: *const c_void,
    /// n ids: rows with equal ids are views of one sample.
    pub instance: *const i32,
    /// n class / cluster ids; -1 means "no label" (an outlier, or unlabelled): such a row's
    /// positives are only its own other views. Differs from the reference code: in SupContrast -1
    /// is an ordinary class (renumber labels to >= 0 to reproduce it), and with several inlier
    /// classes FIRM makes same-class inliers positives (as Willtl/firm's `firm/loss.py`), whereas
    /// the paper's code makes every inlier a positive of every inlier (one shared inlier label
    /// reproduces that).
    pub label: *const i32,
    /// 0 anchor, 1 negative-only, 2 norm-penalty-only.
    pub role: *const u8,
    pub weight: *const f32,
    pub n_keys: i64,
    /// n_keys x d.
    pub keys: *const c_void,
    pub key_instance: *const i32,
    pub key_label: *const i32,
    pub n_centers: i64,
    /// n_centers x d.
    pub centers: *const c_void,
    pub proto_of: *const i32,
    /// Self geometry: only rows 0 .. anchor_rows are anchors (by their roles); the rows after them
    /// are columns only, and the forward computes anchor_rows x n logits (their per_anchor and
    /// positives 0, lse -inf). A process holding part of a batch split over several puts its own
    /// rows first. 0 (a zero-filled struct): every row. At most n; the pairwise geometry takes 0.
    pub anchor_rows: i64,
}

/// Fills `out` with a preset (`CK_LOSS_*`): `temperature` is tau (finite, > 0); `extra` is
/// SupCon's base temperature (finite, > 0) or OECL's alpha (finite, >= 0; 0 accepted), ignored by
/// the others. Label conventions that differ from SupContrast and FIRM: see `CkLossInputs::label`.
///
/// # Safety
/// `out` is NULL (rejected) or a valid `CkLossConfig` to write.
#[no_mangle]
pub unsafe extern "C" fn ck_loss_preset(kind: i32, temperature: f32, extra: f32, out: *mut CkLossConfig) -> i32 {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out", "null pointer"));
        }
        let loss = match kind {
            CK_LOSS_NT_XENT => ContrastiveLoss::nt_xent(temperature),
            CK_LOSS_SUPCON => {
                // Checked here, by name: the scale tau / base_temperature alone would hide which input was wrong.
                if !(extra > 0.0 && extra.is_finite()) {
                    return Err(Error::invalid("extra", format!("SupCon's base temperature must be finite and > 0, got {extra}")));
                }
                ContrastiveLoss::supcon(temperature, extra)
            }
            CK_LOSS_FIRM => ContrastiveLoss::firm(temperature),
            CK_LOSS_FIRM_PAIRWISE => ContrastiveLoss::firm_pairwise(temperature),
            CK_LOSS_OECL => {
                if !(extra >= 0.0 && extra.is_finite()) {
                    return Err(Error::invalid("extra", format!("OECL's alpha must be finite and >= 0, got {extra}")));
                }
                ContrastiveLoss::oecl(temperature, extra)
            }
            CK_LOSS_OUTLIER_EXPOSURE => ContrastiveLoss::outlier_exposure(temperature),
            CK_LOSS_CLUSTER_AWARE => ContrastiveLoss::cluster_aware(temperature),
            _ => {
                return Err(Error::invalid("kind", format!("loss kinds are CK_LOSS_NT_XENT (0) .. CK_LOSS_CLUSTER_AWARE (6); got {kind}")))
            }
        };
        loss.validate()?;
        out.write(config_of(&loss));
        Ok(())
    })
}
fn config_of(loss: &ContrastiveLoss) -> CkLossConfig {
    CkLossConfig {
        geometry: match loss.geometry {
            Geometry::SelfSimilarity => CK_GEOMETRY_SELF,
            Geometry::Pairwise => CK_GEOMETRY_PAIRWISE,
        },
        temperature: loss.temperature,
        scale: loss.scale,
        use_labels: loss.use_labels as i32,
        reduction: match loss.reduction {
            Reduction::Mean => CK_REDUCTION_MEAN,
            Reduction::Sum => CK_REDUCTION_SUM,
            Reduction::PerAnchor => CK_REDUCTION_PER_ANCHOR,
        },
        empty_positives: match loss.empty_positives {
            EmptyPositives::Error => CK_EMPTY_POSITIVES_ERROR,
            EmptyPositives::Zero => CK_EMPTY_POSITIVES_ZERO,
        },
        norm_penalty: loss.norm_penalty,
    }
}

unsafe fn loss_of(config: *const CkLossConfig) -> Result<ContrastiveLoss> {
    let c = config.as_ref().ok_or_else(|| Error::invalid("config", "null pointer"))?;
    let loss = ContrastiveLoss {
        geometry: match c.geometry {
            CK_GEOMETRY_SELF => Geometry::SelfSimilarity,
            CK_GEOMETRY_PAIRWISE => Geometry::Pairwise,
            g => return Err(Error::invalid("config.geometry", format!("CK_GEOMETRY_SELF (0) or CK_GEOMETRY_PAIRWISE (1); got {g}"))),
        },
        temperature: c.temperature,
        scale: c.scale,
        use_labels: c.use_labels != 0,
        reduction: match c.reduction {
            CK_REDUCTION_MEAN => Reduction::Mean,
            CK_REDUCTION_SUM => Reduction::Sum,
            CK_REDUCTION_PER_ANCHOR => Reduction::PerAnchor,
            r => return Err(Error::invalid("config.reduction", format!("CK_REDUCTION_MEAN (0), _SUM (1) or _PER_ANCHOR (2); got {r}"))),
        },
        empty_positives: match c.empty_positives {
            CK_EMPTY_POSITIVES_ERROR => EmptyPositives::Error,
            CK_EMPTY_POSITIVES_ZERO => EmptyPositives::Zero,
            e => return Err(Error::invalid("config.empty_positives", format!("CK_EMPTY_POSITIVES_ERROR (0) or _ZERO (1); got {e}"))),
        },
        norm_penalty: c.norm_penalty,
    };
    loss.validate()?;
    Ok(loss)
}

unsafe fn inputs_of(inputs: *const CkLossInputs) -> Result<RawLossInputs> {
    let i = inputs.as_ref().ok_or_else(|| Error::invalid("inputs", "null pointer"))?;
    Ok(RawLossInputs {
        dtype: dtype("inputs.dtype", i.dtype)?,
        n: size("inputs.n", i.n)?,
        d: size("inputs.d", i.d)?,
        features: i.features as u64,
        instance: i.instance as u64,
        label: i.label as u64,
        role: i.role as u64,
        weight: i.weight as u64,
        n_keys: size("inputs.n_keys", i.n_keys)?,
        keys: i.keys as u64,
        key_instance: i.key_instance as u64,
        key_label: i.key_label as u64,
        n_centers: size("inputs.n_centers", i.n_centers)?,
        centers: i.centers as u64,
        proto_of: i.proto_of as u64,
        anchor_rows: match size("inputs.anchor_rows", i.anchor_rows)? {
            0 => None,
            m => Some(m),
        },
    })
}

fn ptr(p: u64) -> *const c_void {
    p as usize as *const c_void
}

/// Everything the description allows before any memory is read or the driver is touched, named
/// by the C fields: shapes (rows and d below 2^31, byte counts that fit), required and optional
/// pointers (null, alignment), the geometry's keys, prototypes with their `proto_of`.
fn check_input_pointers(loss: &ContrastiveLoss, r: &RawLossInputs) -> Result<()> {
    let e = r.dtype.size_bytes();
    crate::ops::check_features("inputs.features", r.n, r.d)?;
    device_array("inputs.features", ptr(r.features), elements("inputs.features", r.n, r.d, e)?, e, true)?;
    device_array("inputs.instance", ptr(r.instance), r.n, 4, true)?;
    device_array("inputs.label", ptr(r.label), r.n, 4, loss.use_labels)?;
    device_array("inputs.role", ptr(r.role), r.n, 1, false)?;
    device_array("inputs.weight", ptr(r.weight), r.n, 4, false)?;
    let has_keys = r.keys != 0 || r.n_keys > 0;
    match (loss.geometry, has_keys) {
        (Geometry::Pairwise, false) => {
            return Err(Error::invalid("inputs.keys", "required by the pairwise geometry (n_keys >= 1 key rows)"))
        }
        (Geometry::SelfSimilarity, true) => {
            return Err(Error::invalid(
                "inputs.keys",
                "only the pairwise geometry takes keys (the self geometry's columns are its rows): NULL with n_keys = 0",
            ))
        }
        (Geometry::Pairwise, true) => {
            crate::ops::check_features("inputs.keys", r.n_keys, r.d)?;
            device_array("inputs.keys", ptr(r.keys), elements("inputs.keys", r.n_keys, r.d, e)?, e, true)?;
            device_array("inputs.key_instance", ptr(r.key_instance), r.n_keys, 4, true)?;
            device_array("inputs.key_label", ptr(r.key_label), r.n_keys, 4, loss.use_labels)?;
        }
        (Geometry::SelfSimilarity, false) => {}
    }
    if r.centers != 0 || r.n_centers > 0 {
        crate::ops::check_features("inputs.centers", r.n_centers, r.d)?;
        device_array("inputs.centers", ptr(r.centers), elements("inputs.centers", r.n_centers, r.d, e)?, e, true)?;
        device_array("inputs.proto_of", ptr(r.proto_of), r.n, 4, true)?;
    }
    match r.anchor_rows {
        Some(_) if loss.geometry == Geometry::Pairwise => {
            Err(Error::invalid("inputs.anchor_rows", "only the self geometry takes anchor_rows (0 in the pairwise geometry)"))
        }
        Some(m) if m > r.n => Err(Error::invalid("inputs.anchor_rows", format!("must be in 0..={} (n; 0: every row), got {m}", r.n))),
        _ => Ok(()),
    }
}

/// The fused forward. Writes the reduced loss to `loss` (1 f32, device), and per row: `per_anchor`
/// (n f32, NULL: not wanted), `lse` (n f32) and `positives` (n i32), which the backward needs.
/// When `loss_host` is not NULL it receives the loss value. Waits for `stream` once (to read the
/// device-side input checks back).
///
/// # Safety
/// As `ck_l2_normalize`; `config`, `inputs` and `loss_host` are valid host pointers.
#[no_mangle]
pub unsafe extern "C" fn ck_contrastive_forward(
    device: i32,
    stream: *mut c_void,
    config: *const CkLossConfig,
    inputs: *const CkLossInputs,
    loss: *mut f32,
    per_anchor: *mut f32,
    lse: *mut f32,
    positives: *mut i32,
    loss_host: *mut f32,
) -> i32 {
    guard(|| {
        let config = loss_of(config)?;
        let raw = inputs_of(inputs)?;
        check_input_pointers(&config, &raw)?;
        check_forward_outputs(raw.n, loss, per_anchor, lse, positives)?;
        let gpu = self::device(device)?;
        let out = RawForwardOutputs { loss: loss as u64, per_anchor: per_anchor as u64, lse: lse as u64, positives: positives as u64 };
        let value = contrastive::gpu::forward_raw(&gpu, &stream_of(&gpu, stream), &config, &raw, &out)?;
        if !loss_host.is_null() {
            loss_host.write(value);
        }
        Ok(())
    })
}

fn check_forward_outputs(n: usize, loss: *mut f32, per_anchor: *mut f32, lse: *mut f32, positives: *mut i32) -> Result<()> {
    device_array("loss", loss as *const c_void, 1, 4, true)?;
    device_array("per_anchor", per_anchor as *const c_void, n, 4, false)?;
    device_array("lse", lse as *const c_void, n, 4, true)?;
    device_array("positives", positives as *const c_void, n, 4, true)
}

/// The backward's outputs and upstream: `lse` / `positives` when `saved_required` (the device
/// backward reads them; the host one recomputes), the upstream's length, one gradient per input
/// that has one.
fn check_backward_args(
    config: &ContrastiveLoss,
    r: &RawLossInputs,
    (lse, positives, saved_required): (*const f32, *const i32, bool),
    upstream: *const f32,
    grads: (*mut c_void, *mut c_void, *mut c_void),
) -> Result<()> {
    device_array("lse", lse as *const c_void, r.n, 4, saved_required)?;
    device_array("positives", positives as *const c_void, r.n, 4, saved_required)?;
    let upstream_len = if config.reduction == Reduction::PerAnchor { r.n } else { 1 };
    device_array("upstream", upstream as *const c_void, upstream_len, 4, true)?;
    let e = r.dtype.size_bytes();
    device_array("grad_features", grads.0, r.n * r.d, e, true)?;
    if config.geometry == Geometry::Pairwise {
        device_array("grad_keys", grads.1, r.n_keys * r.d, e, true)?;
    }
    if r.centers != 0 || r.n_centers > 0 {
        device_array("grad_centers", grads.2, r.n_centers * r.d, e, true)?;
    }
    Ok(())
}

/// The fused backward: gradients in the input dtype, shaped as their inputs, into `grad_features`,
/// `grad_keys` (pairwise geometry) and `grad_centers` (with prototypes). `lse` and `positives` are
/// the forward's; `upstream` is one f32 (dLoss; mean / sum) or n (dL_i; per anchor) on the device.
/// Queues work and returns.
///
/// # Safety
/// As `ck_contrastive_forward`.
#[no_mangle]
pub unsafe extern "C" fn ck_contrastive_backward(
    device: i32,
    stream: *mut c_void,
    config: *const CkLossConfig,
    inputs: *const CkLossInputs,
    lse: *const f32,
    positives: *const i32,
    upstream: *const f32,
    grad_features: *mut c_void,
    grad_keys: *mut c_void,
    grad_centers: *mut c_void,
) -> i32 {
    guard(|| {
        let config = loss_of(config)?;
        let raw = inputs_of(inputs)?;
        check_input_pointers(&config, &raw)?;
        check_backward_args(&config, &raw, (lse, positives, true), upstream, (grad_features, grad_keys, grad_centers))?;
        let gpu = self::device(device)?;
        let up = RawUpstream { ptr: upstream as u64, per_row: config.reduction == Reduction::PerAnchor };
        let out = RawGradOutputs { features: grad_features as u64, keys: grad_keys as u64, prototypes: grad_centers as u64 };
        contrastive::gpu::backward_raw(&gpu, &stream_of(&gpu, stream), &config, &raw, lse as u64, positives as u64, up, &out)
    })
}

/// The pairwise keys: rows, instance ids, optional labels.
type HostKeys<'a, T> = (Matrix<T>, &'a [i32], Option<&'a [i32]>);

/// Host copies of one loss evaluation's rows (the oracle's `LossInputs` borrow from this).
struct HostRows<'a, T> {
    features: Matrix<T>,
    instance: &'a [i32],
    label: Option<&'a [i32]>,
    role: Option<Vec<RowRole>>,
    weight: Option<&'a [f32]>,
    keys: Option<HostKeys<'a, T>>,
    centers: Option<(Matrix<T>, &'a [i32])>,
    anchor_rows: Option<usize>,
}

/// Upper bound on the oracle's working memory: the feature copies and unit rows, and per
/// (anchor, column) pair one entry of its logit table (32 bytes) — the n x columns term dominates.
fn oracle_bytes(r: &RawLossInputs) -> Option<usize> {
    let columns = if r.keys != 0 || r.n_keys > 0 { r.n_keys } else { r.n }.checked_add(r.n_centers)?;
    let rows = r.n.checked_add(columns)?;
    let pairs = r.n.checked_mul(columns)?.checked_mul(32)?;
    pairs.checked_add(rows.checked_mul(r.d)?.checked_mul(8 * 4)?)
}

impl<'a, T: Float> HostRows<'a, T> {
    /// # Safety
    /// The pointers of `r` are host memory valid for the shapes they are described with.
    unsafe fn read(r: &RawLossInputs) -> Result<Self> {
        let role = match host_slice::<u8>("inputs.role", ptr(r.role) as *const u8, if r.role != 0 { r.n } else { 0 })? {
            [] if r.role == 0 => None,
            codes => {
                if let Some(i) = codes.iter().position(|&c| c > 2) {
                    return Err(Error::invalid(
                        "inputs.role",
                        format!("roles are 0 anchor, 1 negative-only, 2 norm-penalty-only; row {i} has {}", codes[i]),
                    ));
                }
                let mut roles = Vec::new();
                roles.try_reserve_exact(codes.len()).map_err(|_| Error::invalid("inputs.role", "cannot allocate a host copy"))?;
                roles.extend(codes.iter().map(|&c| match c {
                    0 => RowRole::Anchor,
                    1 => RowRole::NegativeOnly,
                    _ => RowRole::NormPenaltyOnly,
                }));
                Some(roles)
            }
        };
        let optional = |arg, p: u64, len| -> Result<Option<&'a [i32]>> {
            Ok(if p == 0 { None } else { Some(host_slice(arg, ptr(p) as *const i32, len)?) })
        };
        let has_keys = r.keys != 0 || r.n_keys > 0;
        let has_centers = r.centers != 0 || r.n_centers > 0;
        Ok(HostRows {
            features: host_matrix("inputs.features", ptr(r.features), r.n, r.d)?,
            instance: host_slice("inputs.instance", ptr(r.instance) as *const i32, r.n)?,
            label: optional("inputs.label", r.label, r.n)?,
            role,
            weight: if r.weight == 0 { None } else { Some(host_slice("inputs.weight", ptr(r.weight) as *const f32, r.n)?) },
            keys: if has_keys {
                Some((
                    host_matrix("inputs.keys", ptr(r.keys), r.n_keys, r.d)?,
                    host_slice("inputs.key_instance", ptr(r.key_instance) as *const i32, r.n_keys)?,
                    optional("inputs.key_label", r.key_label, r.n_keys)?,
                ))
            } else {
                None
            },
            centers: if has_centers {
                Some((
                    host_matrix("inputs.centers", ptr(r.centers), r.n_centers, r.d)?,
                    host_slice("inputs.proto_of", ptr(r.proto_of) as *const i32, r.n)?,
                ))
            } else {
                None
            },
            anchor_rows: r.anchor_rows,
        })
    }

    fn view(&self) -> LossInputs<'_, T> {
        LossInputs {
            features: &self.features,
            instance: self.instance,
            label: self.label,
            role: self.role.as_deref(),
            weight: self.weight,
            keys: self.keys.as_ref().map(|(features, instance, label)| KeyRows { features, instance, label: *label }),
            prototypes: self.centers.as_ref().map(|(centers, proto_of)| PrototypeColumns { centers, proto_of }),
            anchor_rows: self.anchor_rows,
        }
    }
}

/// Config, inputs and their checks, common to both host calls: everything is checked before any
/// input memory is read.
unsafe fn host_problem(config: *const CkLossConfig, inputs: *const CkLossInputs) -> Result<(ContrastiveLoss, RawLossInputs)> {
    let loss = loss_of(config)?;
    let raw = inputs_of(inputs)?;
    check_input_pointers(&loss, &raw)?;
    check_host_size("inputs.n", oracle_bytes(&raw))?;
    Ok((loss, raw))
}

/// As `ck_contrastive_forward`, on host memory, computed by the f64 oracle (results rounded to f32;
/// f16 / bf16 inputs are read exactly): every pointer of `inputs` is host memory, as are `loss`
/// (1 f32), `per_anchor` (n f32, NULL: not wanted), `lse` (n f32) and `positives` (n i32). Same
/// checks, errors and empty-positive policy as the device call. Needs no GPU or driver; O(n^2 d)
/// time, for tests, references and small batches (working memory above 64 GiB is refused).
///
/// # Safety
/// `config` and `inputs` are valid; the pointers in `inputs` and the outputs are host memory valid
/// for their shapes.
#[no_mangle]
pub unsafe extern "C" fn ck_contrastive_forward_host(
    config: *const CkLossConfig,
    inputs: *const CkLossInputs,
    loss: *mut f32,
    per_anchor: *mut f32,
    lse: *mut f32,
    positives: *mut i32,
) -> i32 {
    guard(|| {
        let (config, raw) = host_problem(config, inputs)?;
        check_forward_outputs(raw.n, loss, per_anchor, lse, positives)?;
        let f = match raw.dtype {
            DType::F32 => contrastive::cpu::forward(&config, &HostRows::<f32>::read(&raw)?.view())?,
            DType::F16 => contrastive::cpu::forward(&config, &HostRows::<half::f16>::read(&raw)?.view())?,
            _ => contrastive::cpu::forward(&config, &HostRows::<half::bf16>::read(&raw)?.view())?,
        };
        loss.write(f.loss as f32);
        if !per_anchor.is_null() {
            for (o, v) in host_slice_mut("per_anchor", per_anchor, raw.n)?.iter_mut().zip(&f.per_anchor) {
                *o = *v as f32;
            }
        }
        for (o, v) in host_slice_mut("lse", lse, raw.n)?.iter_mut().zip(&f.lse) {
            *o = *v as f32;
        }
        for (o, c) in host_slice_mut("positives", positives, raw.n)?.iter_mut().zip(&f.positive_count) {
            *o = i32::try_from(*c).unwrap_or(i32::MAX);
        }
        Ok(())
    })
}

/// As `ck_contrastive_backward`, on host memory, computed by the f64 oracle: `upstream` is 1 f32
/// (mean / sum) or n f32 (per-anchor reduction); `lse` and `positives` are the forward's and may be
/// NULL (the oracle recomputes them; when given they are only checked for alignment). Gradients
/// are written in the input dtype (rounded to nearest), shaped as their inputs: `grad_features`
/// always, `grad_keys` with the pairwise geometry, `grad_centers` with centers (else they may be
/// NULL). Includes OECL's norm-penalty gradient. Needs no GPU or driver.
///
/// # Safety
/// As `ck_contrastive_forward_host`; the gradients are host memory valid for their shapes.
#[no_mangle]
pub unsafe extern "C" fn ck_contrastive_backward_host(
    config: *const CkLossConfig,
    inputs: *const CkLossInputs,
    lse: *const f32,
    positives: *const i32,
    upstream: *const f32,
    grad_features: *mut c_void,
    grad_keys: *mut c_void,
    grad_centers: *mut c_void,
) -> i32 {
    guard(|| {
        let (config, raw) = host_problem(config, inputs)?;
        check_backward_args(&config, &raw, (lse, positives, false), upstream, (grad_features, grad_keys, grad_centers))?;
        let upstream_len = if config.reduction == Reduction::PerAnchor { raw.n } else { 1 };
        let upstream: Vec<f64> =
            try_to_vec("upstream", host_slice("upstream", upstream, upstream_len)?)?.into_iter().map(f64::from).collect();
        match raw.dtype {
            DType::F32 => host_backward::<f32>(&config, &raw, &upstream, (grad_features, grad_keys, grad_centers)),
            DType::F16 => host_backward::<half::f16>(&config, &raw, &upstream, (grad_features, grad_keys, grad_centers)),
            _ => host_backward::<half::bf16>(&config, &raw, &upstream, (grad_features, grad_keys, grad_centers)),
        }
    })
}

unsafe fn host_backward<T: Float>(
    config: &ContrastiveLoss,
    raw: &RawLossInputs,
    upstream: &[f64],
    grads: (*mut c_void, *mut c_void, *mut c_void),
) -> Result<()> {
    let rows = HostRows::<T>::read(raw)?;
    let g = contrastive::cpu::backward(config, &rows.view(), upstream)?;
    let write = |arg: &'static str, dst: *mut c_void, m: &Matrix<f64>| -> Result<()> {
        for (o, v) in host_slice_mut(arg, dst as *mut T, m.data().len())?.iter_mut().zip(m.data()) {
            *o = T::from_f64(*v);
        }
        Ok(())
    };
    write("grad_features", grads.0, &g.features)?;
    if let Some(k) = &g.keys {
        write("grad_keys", grads.1, k)?;
    }
    if let Some(c) = &g.prototypes {
        write("grad_centers", grads.2, c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::status::{CK_ERR_INVALID_ARGUMENT, CK_OK};

    #[test]
    fn presets_round_trip_and_bad_codes_are_rejected() {
        let mut c = std::mem::MaybeUninit::<CkLossConfig>::uninit();
        // SAFETY: `c` is a valid place to write.
        assert_eq!(unsafe { ck_loss_preset(CK_LOSS_SUPCON, 0.1, 0.07, c.as_mut_ptr()) }, CK_OK);
        let c = unsafe { c.assume_init() };
        let loss = unsafe { loss_of(&c) }.unwrap();
        assert_eq!(loss, ContrastiveLoss::supcon(0.1, 0.07));
        assert_eq!(unsafe { ck_loss_preset(99, 0.1, 0.0, std::ptr::null_mut()) }, CK_ERR_INVALID_ARGUMENT);
        let bad = CkLossConfig { reduction: 7, ..c };
        assert!(matches!(unsafe { loss_of(&bad) }, Err(Error::InvalidArgument { arg: "config.reduction", .. })));
        let cold = CkLossConfig { temperature: -1.0, ..c };
        assert!(matches!(unsafe { loss_of(&cold) }, Err(Error::InvalidArgument { arg: "temperature", .. })));
    }
}
