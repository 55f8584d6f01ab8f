//! The generalized contrastive loss of DESIGN.md sections 2-4: one description (row roles, two
//! geometries, optional prototypes) from which NT-Xent / InfoNCE, SupCon, FIRM (both forms), OECL,
//! outlier-exposure negatives and the cluster-aware loss are thin configurations.
//!
//! Entry points: [`crate::Backend::contrastive_forward`] / [`crate::Backend::contrastive_backward`]
//! on host matrices (the fused GPU kernels or the f64 oracle [`cpu`]), and [`gpu::forward`] /
//! [`gpu::backward`] on device buffers (the fused kernels of `kernels/contrastive.cu`; memory
//! beyond the inputs and gradients is O(n d), never O(n^2)); [`unfused`] is the baseline that
//! materializes the similarity matrix.
//!
//! Per anchor i (logits s_ij = <u_i, u_j> / tau on unit rows):
//!   L_i = scale * ( LSE_{j in A(i)} s_ij - (1/|P(i)|) sum_{p in P(i)} s_ip )
//! * P(i): columns j (j != i in the self geometry) with `instance[j] == instance[i]`, or
//!   `label[i] >= 0` and `label[j] == label[i]`; plus the prototype `proto_of[i]` when >= 0.
//! * A(i): every column but i (self) or every key (pairwise), plus every prototype.
//! * Roles: `Anchor` rows are anchors and columns; `NegativeOnly` rows are columns only (they enter
//!   the others' denominators, and their positive sets by the id rule); `NormPenaltyOnly` rows are
//!   not in the similarity matrix at all and only feed the OECL norm penalty
//!   `norm_penalty * mean_o ||x_o||` (raw, unnormalized norms).
//! * Reduction over anchors: `Mean` = sum_i w_i L_i / (number of anchors), anchors with no positive
//!   included in the count under `EmptyPositives::Zero` (SupContrast after its PR #142); `Sum`;
//!   `PerAnchor` returns every L_i (0 for non-anchors) and takes one upstream gradient per row.
//!
//! Conventions that differ from the reference code:
//! * Label -1 means "no label" (an outlier, or unlabelled): such a row's positives are only its
//!   own other views. In SupContrast's `losses.py` -1 is an ordinary class whose rows are positives
//!   of each other; to reproduce SupContrast with a class numbered -1, renumber labels to >= 0.
//! * FIRM with several inlier classes makes same-class inliers positives (as Willtl/firm's current
//!   `firm/loss.py`); the paper's code makes every inlier a positive of every inlier. To reproduce
//!   the paper, give every inlier the same label (0) and outliers -1.

pub mod cpu;
pub mod gpu;
pub mod unfused;

use crate::dtype::Float;
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

/// The part a row plays (the kernels' codes: kernels/params/contrastive.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum RowRole {
    #[default]
    Anchor = crate::gpu::params::contrastive::ROLE_ANCHOR as u8,
    /// Only in denominators (outlier-exposure negatives): never an anchor.
    NegativeOnly = crate::gpu::params::contrastive::ROLE_NEGATIVE_ONLY as u8,
    /// Outside the similarity matrix; only its raw norm enters the OECL penalty.
    NormPenaltyOnly = crate::gpu::params::contrastive::ROLE_NORM_PENALTY_ONLY as u8,
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

    /// SupCon (SupContrast `losses.py`): labels make positives, loss scaled by tau / base_tau
    /// (base_tau > 0, else [`Self::validate`] fails on the scale). Label -1 is "no label" here, an
    /// ordinary class in SupContrast (module docs).
    pub fn supcon(temperature: f32, base_temperature: f32) -> Self {
        ContrastiveLoss { scale: temperature / base_temperature, ..Self::base(Geometry::SelfSimilarity, temperature, true) }
    }

    /// FIRM, the package default ("concat", 2B x 2B): inlier labels >= 0 make positives, outliers
    /// carry label -1 and pair only with their own views. Several inlier classes: same-class inliers
    /// are positives (the package's `firm/loss.py`); the paper's code pairs every inlier with every
    /// inlier, which one shared inlier label reproduces.
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
        // A scale <= 0 would flip or cancel the loss: SupCon's tau / base_tau with a base <= 0.
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(Error::invalid("scale", format!("must be finite and > 0 (SupCon: tau / base_temperature), got {}", self.scale)));
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
    /// Self geometry only: `Some(m)` (1..=n) makes only the first m rows anchors (by their roles);
    /// the rows after them are columns only, as if `NegativeOnly` (`NormPenaltyOnly` ones stay
    /// outside the matrix), and the forward computes an m x n block of logits instead of n x n:
    /// their per-anchor loss and |P| are 0 and their LSE -inf. `Mean` divides by the anchors among
    /// the first m rows. A rank of a batch split over processes puts its own rows first and the
    /// others' after them (the loss does not depend on the columns' order). `None`: every row.
    pub anchor_rows: Option<usize>,
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
        LossInputs { features, instance, label: None, role: None, weight: None, keys: None, prototypes: None, anchor_rows: None }
    }

    pub fn role_of(&self, i: usize) -> RowRole {
        self.role.map_or(RowRole::Anchor, |r| r[i])
    }

    /// The rows that may be anchors: `anchor_rows`, or every row.
    pub fn anchor_row_count(&self) -> usize {
        self.anchor_rows.unwrap_or(self.features.rows())
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

/// The host upstream gradient of a backward over `rows` feature rows: one value (dLoss) for
/// `Mean` / `Sum`, one per feature row for `PerAnchor`.
pub(crate) fn check_upstream_len(loss: &ContrastiveLoss, rows: usize, len: usize) -> Result<()> {
    let per_row = loss.reduction == Reduction::PerAnchor;
    let expected = if per_row { rows } else { 1 };
    if len != expected {
        return Err(Error::shape(
            "upstream",
            format!("{expected} value(s) ({})", if per_row { "one per feature row" } else { "dLoss" }),
            format!("{len}"),
        ));
    }
    Ok(())
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
                return Err(Error::shape(
                    "keys.features",
                    format!("{d} columns (the d of features)"),
                    format!("{} x {}", k.rows(), k.cols()),
                ));
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
            return Err(Error::shape(
                "prototypes.centers",
                format!("{d} columns (the d of features)"),
                format!("{} x {}", c.rows(), c.cols()),
            ));
        }
        check_len("prototypes.proto_of", p.proto_of.len(), n, "feature row")?;
        if let Some(i) = p.proto_of.iter().position(|&k| k < -1 || k >= c.rows() as i32) {
            return Err(Error::invalid("prototypes.proto_of", format!("indices are in -1..{}; row {i} has {}", c.rows(), p.proto_of[i])));
        }
        check_finite("prototypes.centers", c)?;
    }
    check_anchor_rows(loss, inputs.anchor_rows, n)?;
    if loss.norm_penalty == 0.0 && inputs.role.is_some_and(|r| r.contains(&RowRole::NormPenaltyOnly)) {
        return Err(Error::invalid("role", "NormPenaltyOnly rows need a loss with norm_penalty > 0 (ContrastiveLoss::oecl)"));
    }
    Ok(())
}

/// `anchor_rows` (shared by every backend): the self geometry's, in 1..=n.
pub(crate) fn check_anchor_rows(loss: &ContrastiveLoss, anchor_rows: Option<usize>, n: usize) -> Result<()> {
    match anchor_rows {
        None => Ok(()),
        Some(_) if loss.geometry == Geometry::Pairwise => Err(Error::invalid(
            "anchor_rows",
            "only the self geometry takes anchor_rows (the pairwise geometry's anchors are its features: pass only those rows)",
        )),
        Some(m) if m == 0 || m > n => {
            Err(Error::invalid("anchor_rows", format!("must be in 1..={n} (the feature rows; None for every row), got {m}")))
        }
        Some(_) => Ok(()),
    }
}

/// What the forward returns on the host (f32, as the kernels compute it).
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardResult {
    /// The reduced loss (Mean / Sum of w_i L_i; Sum for `PerAnchor`) plus the OECL norm penalty.
    pub loss: f32,
    /// L_i per feature row: 0 for non-anchors and for anchors without positives.
    pub per_anchor: Vec<f32>,
    /// LSE over A(i) per row (saved for the backward); -inf for `NormPenaltyOnly` rows and rows
    /// at or past `anchor_rows`.
    pub lse: Vec<f32>,
    /// |P(i)| per row.
    pub positives: Vec<i32>,
}

/// Gradients with respect to the raw inputs, in their dtype (what
/// [`crate::Backend::contrastive_backward`] returns).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    pub features: Matrix<T>,
    /// Pairwise geometry: the keys' gradient.
    pub keys: Option<Matrix<T>>,
    pub prototypes: Option<Matrix<T>>,
}

/// The `EmptyPositives::Error` failure, shared by every backend.
pub(crate) fn empty_positive_error(row: usize) -> Error {
    Error::invalid(
        "instance",
        format!("row {row} has no positive: no other row shares its instance (or label) id; use EmptyPositives::Zero to let such anchors contribute 0"),
    )
}
