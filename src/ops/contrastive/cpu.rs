//! Oracle of the generalized contrastive loss ([`crate::ops::contrastive`], DESIGN.md sections
//! 2-4): forward and backward written out literally, in f64, over the full logit matrix.

use super::{
    check_inputs, check_upstream_len, empty_positive_error, ContrastiveLoss, EmptyPositives, Geometry, LossInputs, Reduction, RowRole,
};
use crate::dtype::Float;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::ops::normalize::{cpu::row_norms, norm_denominator};

/// The forward's results, per feature row where not said otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct LossForward {
    /// Reduced loss (Mean / Sum of w_i L_i; the weighted Sum for `PerAnchor`) plus the OECL norm
    /// penalty. Mean divides by the number of `Anchor` rows (empty-positive ones included) and is
    /// 0 when there is none.
    pub loss: f64,
    /// L_i (unweighted): 0 for non-anchors and for anchors without positives.
    pub per_anchor: Vec<f64>,
    /// LSE over A(i) for every row in the matrix (`NegativeOnly` rows included, as the kernel
    /// saves it); -inf for `NormPenaltyOnly` rows, rows at or past `anchor_rows` and rows with no
    /// column at all.
    pub lse: Vec<f64>,
    /// |P(i)| (also for `NegativeOnly` rows; 0 for `NormPenaltyOnly` rows).
    pub positive_count: Vec<usize>,
}

/// Gradients with respect to the raw (unnormalized) inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LossGradients {
    pub features: Matrix<f64>,
    /// Pairwise geometry: the keys' gradient.
    pub keys: Option<Matrix<f64>>,
    pub prototypes: Option<Matrix<f64>>,
}

/// Unit rows in f64.
fn unit_rows<T: Float>(x: &Matrix<T>) -> Matrix<f64> {
    let norms = row_norms(x);
    Matrix::from_fn(x.rows(), x.cols(), |i, j| x.get(i, j).to_f64() / norm_denominator(norms[i]))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A column of the logit matrix: which matrix it comes from and its row there.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Column {
    /// Self geometry: a feature row. Pairwise: a key row.
    Row(usize),
    Prototype(usize),
}

/// Everything both directions need: unit rows, and per anchor its columns, logits and positives.
struct Problem {
    rows: Matrix<f64>,
    /// The column side's unit rows (the rows themselves in the self geometry).
    cols: Matrix<f64>,
    protos: Option<Matrix<f64>>,
    /// Per feature row: (column, logit, is_positive) over A(i); empty for rows outside the matrix.
    entries: Vec<Vec<(Column, f64, bool)>>,
    anchors: Vec<bool>,
}

impl Problem {
    fn new<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>) -> Self {
        let rows = unit_rows(inputs.features);
        let self_geometry = loss.geometry == Geometry::SelfSimilarity;
        let cols = match &inputs.keys {
            Some(k) if !self_geometry => unit_rows(k.features),
            _ => rows.clone(),
        };
        let (col_instance, col_label) = match &inputs.keys {
            Some(k) if !self_geometry => (k.instance, k.label),
            _ => (inputs.instance, inputs.label),
        };
        let protos = inputs.prototypes.as_ref().map(|p| unit_rows(p.centers));
        let inv_tau = 1.0 / loss.temperature as f64;
        let label_of = |labels: Option<&[i32]>, i: usize| if loss.use_labels { labels.map_or(-1, |l| l[i]) } else { -1 };

        let n = rows.rows();
        let mut entries = vec![Vec::new(); n];
        let mut anchors = vec![false; n];
        // Rows past anchor_rows are columns only: no row of the matrix.
        for i in 0..inputs.anchor_row_count() {
            let role = inputs.role_of(i);
            anchors[i] = role == RowRole::Anchor;
            if role == RowRole::NormPenaltyOnly {
                continue;
            }
            let label_i = label_of(inputs.label, i);
            for (j, &instance_j) in col_instance.iter().enumerate() {
                if self_geometry && (j == i || inputs.role_of(j) == RowRole::NormPenaltyOnly) {
                    continue;
                }
                let positive = instance_j == inputs.instance[i] || (label_i >= 0 && label_of(col_label, j) == label_i);
                entries[i].push((Column::Row(j), dot(rows.row(i), cols.row(j)) * inv_tau, positive));
            }
            if let (Some(c), Some(p)) = (&protos, &inputs.prototypes) {
                for k in 0..c.rows() {
                    let positive = p.proto_of[i] == k as i32;
                    entries[i].push((Column::Prototype(k), dot(rows.row(i), c.row(k)) * inv_tau, positive));
                }
            }
        }
        Problem { rows, cols, protos, entries, anchors }
    }

    fn lse(&self, i: usize) -> f64 {
        let max = self.entries[i].iter().map(|e| e.1).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return max;
        }
        max + self.entries[i].iter().map(|e| (e.1 - max).exp()).sum::<f64>().ln()
    }

    fn positives(&self, i: usize) -> usize {
        self.entries[i].iter().filter(|e| e.2).count()
    }
}

/// The weight c_i of anchor i's loss in the reduced loss, before the upstream gradient.
fn reduction_weights<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>, anchors: &[bool]) -> Vec<f64> {
    let n_anchors = anchors.iter().filter(|a| **a).count();
    let divisor = if loss.reduction == Reduction::Mean { n_anchors.max(1) as f64 } else { 1.0 };
    (0..anchors.len()).map(|i| if anchors[i] { inputs.weight.map_or(1.0, |w| w[i] as f64) / divisor } else { 0.0 }).collect()
}

/// The OECL penalty's rows and value: norm_penalty * mean_o ||x_o||.
fn norm_penalty<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>) -> (Vec<usize>, f64) {
    let rows: Vec<usize> = (0..inputs.features.rows()).filter(|&i| inputs.role_of(i) == RowRole::NormPenaltyOnly).collect();
    if rows.is_empty() {
        return (rows, 0.0);
    }
    let norms = row_norms(inputs.features);
    let mean = rows.iter().map(|&i| norms[i]).sum::<f64>() / rows.len() as f64;
    (rows, loss.norm_penalty as f64 * mean)
}

/// The forward. With no anchor at all, the Mean is 0 (not NaN).
pub fn forward<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>) -> Result<LossForward> {
    check_inputs(loss, inputs)?;
    let problem = Problem::new(loss, inputs);
    let n = inputs.features.rows();
    let mut per_anchor = vec![0.0; n];
    let mut lse = vec![f64::NEG_INFINITY; n];
    let mut positive_count = vec![0; n];
    for i in 0..inputs.anchor_row_count() {
        if problem.entries[i].is_empty() && inputs.role_of(i) == RowRole::NormPenaltyOnly {
            continue;
        }
        lse[i] = problem.lse(i);
        positive_count[i] = problem.positives(i);
        if !problem.anchors[i] {
            continue;
        }
        if positive_count[i] == 0 {
            if loss.empty_positives == EmptyPositives::Error {
                return Err(empty_positive_error(i));
            }
            continue;
        }
        let positive_mean = problem.entries[i].iter().filter(|e| e.2).map(|e| e.1).sum::<f64>() / positive_count[i] as f64;
        per_anchor[i] = loss.scale as f64 * (lse[i] - positive_mean);
    }
    let weights = reduction_weights(loss, inputs, &problem.anchors);
    let reduced: f64 = per_anchor.iter().zip(&weights).map(|(l, w)| l * w).sum();
    Ok(LossForward { loss: reduced + norm_penalty(loss, inputs).1, per_anchor, lse, positive_count })
}

/// The backward of DESIGN.md section 4: G_ij = c_i * scale * (softmax_{A(i)}(s_i)_j - [j in P(i)] / |P(i)|)
/// with c_i = upstream * w_i (/ number of anchors for Mean), pushed through the logits and the
/// normalization to the raw features, keys and prototypes. `upstream` is dLoss (one value) for
/// Mean / Sum, or dL_i per feature row for `PerAnchor` (weighted by w_i like the forward's `loss`;
/// the norm penalty, if any, then takes an upstream of 1). Fails like the forward.
pub fn backward<T: Float>(loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>, upstream: &[f64]) -> Result<LossGradients> {
    check_inputs(loss, inputs)?;
    let n = inputs.features.rows();
    let per_row = loss.reduction == Reduction::PerAnchor;
    check_upstream_len(loss, n, upstream.len())?;
    let problem = Problem::new(loss, inputs);
    let weights = reduction_weights(loss, inputs, &problem.anchors);
    let inv_tau = 1.0 / loss.temperature as f64;
    let d = inputs.features.cols();

    // Gradients with respect to the unit rows.
    let mut du_rows = Matrix::from_fn(n, d, |_, _| 0.0);
    let mut du_cols = Matrix::from_fn(problem.cols.rows(), d, |_, _| 0.0);
    let mut du_protos = problem.protos.as_ref().map(|c| Matrix::from_fn(c.rows(), d, |_, _| 0.0));
    for i in 0..n {
        let count = problem.positives(i);
        if !problem.anchors[i] || count == 0 {
            if problem.anchors[i] && loss.empty_positives == EmptyPositives::Error {
                return Err(empty_positive_error(i));
            }
            continue;
        }
        let c_i = weights[i] * if per_row { upstream[i] } else { upstream[0] };
        let lse = problem.lse(i);
        for &(col, s, positive) in &problem.entries[i] {
            // G_ij = c_i * scale * (softmax_j - [j in P(i)] / |P(i)|), and ds_ij / du = u_other / tau.
            let g = c_i * loss.scale as f64 * ((s - lse).exp() - if positive { 1.0 / count as f64 } else { 0.0 }) * inv_tau;
            let (other, du_other) = match col {
                Column::Row(j) => (problem.cols.row(j), &mut du_cols.data_mut()[j * d..(j + 1) * d]),
                Column::Prototype(k) => {
                    (problem.protos.as_ref().unwrap().row(k), &mut du_protos.as_mut().unwrap().data_mut()[k * d..(k + 1) * d])
                }
            };
            let row_i = problem.rows.row(i);
            for t in 0..d {
                du_other[t] += g * row_i[t];
            }
            let du_i = &mut du_rows.data_mut()[i * d..(i + 1) * d];
            for t in 0..d {
                du_i[t] += g * other[t];
            }
        }
    }

    let mut features_grad;
    let mut keys_grad = None;
    if loss.geometry == Geometry::SelfSimilarity {
        // Rows and columns are the same rows: both roles' gradients add up.
        for (a, b) in du_rows.data_mut().iter_mut().zip(du_cols.data()) {
            *a += b;
        }
        features_grad = crate::ops::normalize::cpu::l2_normalize_backward(inputs.features, &du_rows);
    } else {
        features_grad = crate::ops::normalize::cpu::l2_normalize_backward(inputs.features, &du_rows);
        let keys = inputs.keys.as_ref().expect("check_inputs requires keys in the pairwise geometry");
        keys_grad = Some(crate::ops::normalize::cpu::l2_normalize_backward(keys.features, &du_cols));
    }
    let protos_grad = match (&inputs.prototypes, &du_protos) {
        (Some(p), Some(du)) => Some(crate::ops::normalize::cpu::l2_normalize_backward(p.centers, du)),
        _ => None,
    };

    // OECL: d(alpha * mean_o ||x_o||) / dx_o = alpha / n_o * x_o / max(||x_o||, eps).
    let (penalized, _) = norm_penalty(loss, inputs);
    if !penalized.is_empty() {
        let penalty_upstream = if per_row { 1.0 } else { upstream[0] };
        let norms = row_norms(inputs.features);
        let factor = penalty_upstream * loss.norm_penalty as f64 / penalized.len() as f64;
        for &o in &penalized {
            for t in 0..d {
                let x = inputs.features.get(o, t).to_f64();
                features_grad.data_mut()[o * d + t] += factor * x / norm_denominator(norms[o]);
            }
        }
    }
    Ok(LossGradients { features: features_grad, keys: keys_grad, prototypes: protos_grad })
}
