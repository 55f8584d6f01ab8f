//! A CPU model of the fused backward's decomposition (kernels/contrastive.cu), checked against the
//! oracle's gradients for every loss kind: the per-row coefficients of contrastive_backward_prepare
//! (with the power-of-two scaling sigma), the passes ops/contrastive/gpu.rs launches (self: rows x rows plus the
//! prototypes; pairwise: anchors x keys plus the prototypes, then keys x anchors; prototypes x
//! anchor rows), the H entry of sweep_other (load_row / stage_columns' keys and coefficients, the
//! masks, the two anchor terms by one exponential or two), the column splits and their merge, the
//! normalization backward and the OECL penalty. The model follows the kernel's branches line by
//! line, in f64, so a wrong pass, flag or relation fails here on any machine; the fragment mapping
//! and the rounding are the GPU tests' business.

mod common;

use common::contrastive_harness::{cases, gradient_only_cases};
use contrastive_kernels::ops::contrastive::cpu::{backward, forward};
use contrastive_kernels::ops::contrastive::{ContrastiveLoss, Geometry, LossInputs, Reduction, RowRole};
use contrastive_kernels::Matrix;

/// ck::GradSide, host form: unit rows and the per-row arrays; `anchor` = lse / coef_a / coef_b set;
/// rows at or past `anchors` are no anchors (the kernel's GradSide::anchors).
struct Side<'a> {
    u: Vec<Vec<f64>>,
    anchors: usize,
    instance: Option<&'a [i32]>,
    label: Option<&'a [i32]>,
    role: Option<&'a [RowRole]>,
    proto_of: Option<&'a [i32]>,
    anchor: Option<(&'a [f64], &'a [f64], &'a [f64])>,
}

fn unit_rows(x: &Matrix<f64>) -> Vec<Vec<f64>> {
    (0..x.rows())
        .map(|i| {
            let n = x.row(i).iter().map(|v| v * v).sum::<f64>().sqrt();
            let den = if n <= 1e-12 { 1e-12 } else { n };
            x.row(i).iter().map(|v| v / den).collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// contrastive_backward_prepare: (coef_a, coef_b, 1 / sigma, penalized rows).
fn prepare(
    loss: &ContrastiveLoss,
    inputs: &LossInputs<'_, f64>,
    positives: &[usize],
    upstream: &[f64],
) -> (Vec<f64>, Vec<f64>, f64, usize) {
    let n = inputs.features.rows();
    let per_row = loss.reduction == Reduction::PerAnchor;
    let role = |i: usize| inputs.role_of(i);
    let m = inputs.anchor_row_count();
    let weight = |i: usize| -> f64 {
        if role(i) != RowRole::Anchor || i >= m || positives[i] == 0 {
            return 0.0;
        }
        (if per_row { upstream[i] } else { upstream[0] }) * inputs.weight.map_or(1.0, |w| w[i] as f64) * loss.scale as f64
    };
    let anchors = (0..m).filter(|&i| role(i) == RowRole::Anchor).count();
    let penalized = (0..n).filter(|&i| role(i) == RowRole::NormPenaltyOnly).count();
    let inv_divisor = if loss.reduction == Reduction::Mean { 1.0 / anchors.max(1) as f64 } else { 1.0 };
    let max = (0..n).map(|i| weight(i).abs()).fold(0.0, f64::max) * inv_divisor;
    let sigma = if max > 0.0 { 2f64.powi(12 - max.log2().floor() as i32) } else { 1.0 };
    let a: Vec<f64> = (0..n).map(|i| sigma * inv_divisor * weight(i)).collect();
    let b: Vec<f64> = (0..n).map(|i| if a[i] != 0.0 { a[i] / positives[i] as f64 } else { 0.0 }).collect();
    (a, b, 1.0 / sigma, penalized)
}

/// The kernel's per-row / per-column data (kernels/common/contrastive_backward.cuh: load_row,
/// stage_columns): the positive key and label key, and (coef, coef_b, lse2) of an anchor with a
/// positive, else (0, 0, m2); on the one-exponential path coef carries 2^(m2 - lse2).
struct Keyed {
    key: i32,
    label: i32,
    coef: f64,
    coef_b: f64,
    lse2: f64,
}

const LOG2E: f64 = std::f64::consts::LOG2_E;

fn anchor_data(side: &Side, i: usize, m2: f64, one_exp: bool) -> (f64, f64, f64) {
    match side.anchor {
        Some((lse, a, b)) if a[i] != 0.0 => {
            let lse2 = lse[i] * LOG2E;
            (if one_exp { a[i] * (m2 - lse2).exp2() } else { a[i] }, b[i], lse2)
        }
        _ => (0.0, 0.0, m2),
    }
}

/// load_row: an own row's keys against `other`.
fn row_data(own: &Side, other: &Side, r: usize, m2: f64, one_exp: bool) -> Keyed {
    let (key, label) = match (own.instance, other.instance) {
        (None, _) => (r as i32, i32::MIN),                                // a prototype
        (Some(_), None) => (own.proto_of.map_or(-1, |p| p[r]), i32::MIN), // against prototype columns
        (Some(inst), Some(_)) => (inst[r], own.label.map_or(-1, |l| l[r])),
    };
    let (coef, coef_b, lse2) = anchor_data(own, r, m2, one_exp);
    Keyed { key, label: if label >= 0 { label } else { i32::MIN }, coef, coef_b, lse2 }
}

/// stage_columns: a column's keys against the own side.
fn column_data(own: &Side, other: &Side, o: usize, m2: f64, one_exp: bool) -> Keyed {
    let (key, label) = match (other.instance, own.instance) {
        (None, _) => (o as i32, -1),                                  // prototype columns
        (Some(_), None) => (other.proto_of.map_or(-1, |p| p[o]), -1), // prototypes as own rows
        (Some(inst), Some(_)) => (inst[o], other.label.map_or(-1, |l| l[o])),
    };
    let (coef, coef_b, lse2) = anchor_data(other, o, m2, one_exp);
    Keyed { key, label, coef, coef_b, lse2 }
}

/// sweep_other for every own row over `other`'s columns cut into `splits` slices, each slice's
/// partial added in split order (contrastive_backward_merge): du[own] += sum_o H(own, o) u_o
/// (unscaled). H as tile_h: one exponential 2^(t - m2) for both terms, or one per term; masked
/// columns (NormPenaltyOnly) and the diagonal give 0; NormPenaltyOnly own rows are zeroed at the
/// store. A block of `block` own rows all at or past own.anchors sweeps only the columns below
/// other.anchors, and a prototype sweep (`prototypes`) none (contrastive_backward's clamp).
#[allow(clippy::too_many_arguments)] // the kernel's parameters, one by one
fn sweep(
    du: &mut [Vec<f64>],
    own: &Side,
    other: &Side,
    exclude_self: bool,
    inv_tau: f64,
    one_exp: bool,
    splits: usize,
    block: usize,
    prototypes: bool,
) {
    let m2 = inv_tau * LOG2E;
    for (r, du_r) in du.iter_mut().enumerate() {
        if own.role.is_some_and(|role| role[r] == RowRole::NormPenaltyOnly) {
            continue;
        }
        let own_anchors = r / block * block < own.anchors;
        if prototypes && !own_anchors {
            continue;
        }
        let cols = if own_anchors { other.u.len() } else { other.u.len().min(other.anchors) };
        let per_split = cols.div_ceil(splits.max(1)).max(1);
        let row = row_data(own, other, r, m2, one_exp);
        for slice in (0..cols).collect::<Vec<_>>().chunks(per_split) {
            let mut partial = vec![0.0; du_r.len()];
            for &o in slice {
                if other.role.is_some_and(|role| role[o] == RowRole::NormPenaltyOnly) || (exclude_self && o == r) {
                    continue;
                }
                let col = column_data(own, other, o, m2, one_exp);
                let positive = col.key == row.key || col.label == row.label;
                let t = dot(&own.u[r], &other.u[o]) * inv_tau * LOG2E;
                let pos = if positive { row.coef_b + col.coef_b } else { 0.0 };
                let h = if one_exp {
                    (t - m2).exp2() * (row.coef + col.coef) - pos
                } else {
                    row.coef * (t - row.lse2).exp2() + col.coef * (t - col.lse2).exp2() - pos
                };
                for (v, x) in partial.iter_mut().zip(&other.u[o]) {
                    *v += h * x;
                }
            }
            du_r.iter_mut().zip(&partial).for_each(|(v, p)| *v += p);
        }
    }
}

/// dx = (du - u <u, du>) / max(|x|, eps), the kernel's l2_normalize_backward.
fn normalize_backward(x: &Matrix<f64>, du: &[Vec<f64>]) -> Matrix<f64> {
    Matrix::from_fn(x.rows(), x.cols(), |i, j| {
        let n = x.row(i).iter().map(|v| v * v).sum::<f64>().sqrt();
        if n <= 1e-12 {
            return du[i][j] / 1e-12;
        }
        let proj = dot(x.row(i), &du[i]) / (n * n);
        (du[i][j] - x.get(i, j) * proj) / n
    })
}

struct ModelGrads {
    features: Matrix<f64>,
    keys: Option<Matrix<f64>>,
    prototypes: Option<Matrix<f64>>,
}

fn model_backward(
    loss: &ContrastiveLoss,
    inputs: &LossInputs<'_, f64>,
    upstream: &[f64],
    one_exp: bool,
    splits: usize,
    block: usize,
) -> ModelGrads {
    let fwd = forward(loss, inputs).unwrap();
    let (a, b, inv_sigma, penalized) = prepare(loss, inputs, &fwd.positive_count, upstream);
    let inv_tau = 1.0 / loss.temperature as f64;
    let d = inputs.features.cols();
    let rows = Side {
        u: unit_rows(inputs.features),
        anchors: inputs.anchor_row_count(),
        instance: Some(inputs.instance),
        label: inputs.label.filter(|_| loss.use_labels),
        role: inputs.role,
        proto_of: inputs.prototypes.as_ref().map(|p| p.proto_of),
        anchor: Some((&fwd.lse, &a, &b)),
    };
    let keys = inputs.keys.as_ref().map(|k| Side {
        u: unit_rows(k.features),
        anchors: 0,
        instance: Some(k.instance),
        label: k.label.filter(|_| loss.use_labels),
        role: None,
        proto_of: None,
        anchor: None,
    });
    let protos = inputs.prototypes.as_ref().map(|p| Side {
        u: unit_rows(p.centers),
        anchors: 0,
        instance: None,
        label: None,
        role: None,
        proto_of: None,
        anchor: None,
    });
    let zeros = |n: usize| vec![vec![0.0; d]; n];
    let mut du_rows = zeros(rows.u.len());
    match (loss.geometry, &keys) {
        (Geometry::SelfSimilarity, _) => sweep(&mut du_rows, &rows, &rows, true, inv_tau, one_exp, splits, block, false),
        (Geometry::Pairwise, Some(k)) => sweep(&mut du_rows, &rows, k, false, inv_tau, one_exp, splits, block, false),
        (Geometry::Pairwise, None) => unreachable!("pairwise has keys"),
    }
    if let Some(p) = &protos {
        sweep(&mut du_rows, &rows, p, false, inv_tau, one_exp, 1, block, true);
    }
    let scale = |du: &mut Vec<Vec<f64>>| du.iter_mut().flatten().for_each(|v| *v *= inv_tau * inv_sigma);
    scale(&mut du_rows);
    let mut features = normalize_backward(inputs.features, &du_rows);
    if loss.norm_penalty > 0.0 && penalized > 0 {
        let g = if loss.reduction == Reduction::PerAnchor { 1.0 } else { upstream[0] };
        let factor = g * loss.norm_penalty as f64 / penalized as f64;
        for i in (0..inputs.features.rows()).filter(|&i| inputs.role_of(i) == RowRole::NormPenaltyOnly) {
            let n = inputs.features.row(i).iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            for j in 0..d {
                features.data_mut()[i * d + j] = factor * inputs.features.get(i, j) / n;
            }
        }
    }
    let keys_grad = keys.as_ref().map(|k| {
        let mut du = zeros(k.u.len());
        sweep(&mut du, k, &rows, false, inv_tau, one_exp, splits, block, false);
        scale(&mut du);
        normalize_backward(inputs.keys.as_ref().unwrap().features, &du)
    });
    let protos_grad = protos.as_ref().map(|p| {
        let mut du = zeros(p.u.len());
        sweep(&mut du, p, &rows, false, inv_tau, one_exp, splits, block, false);
        scale(&mut du);
        normalize_backward(inputs.prototypes.as_ref().unwrap().centers, &du)
    });
    ModelGrads { features, keys: keys_grad, prototypes: protos_grad }
}

fn assert_close(what: &str, got: &Matrix<f64>, want: &Matrix<f64>) {
    let scale = want.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (k, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        assert!((g - w).abs() <= 1e-10 * (1.0 + scale), "{what}[{k}]: model {g} vs oracle {w}");
    }
}

#[test]
fn the_kernels_decomposition_gives_the_oracles_gradients() {
    for case in cases().into_iter().chain(gradient_only_cases()) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::PerAnchor] {
            let loss = case.loss.with_reduction(reduction);
            let n = case.features.rows();
            let upstream: Vec<f64> =
                if reduction == Reduction::PerAnchor { (0..n).map(|i| 0.3 + 0.2 * i as f64).collect() } else { vec![1.7] };
            let keys = case.keys.as_ref().map(|k| k.0.clone());
            let centers = case.protos.as_ref().map(|p| p.0.clone());
            let inputs = case.inputs(&case.features, keys.as_ref(), centers.as_ref());
            let want = backward(&loss, &inputs, &upstream).unwrap();
            // Both exponential paths (the kernel picks one by temperature), column splits, and the
            // clamp of blocks with no anchor rows at the kernel's 64 rows and at every row.
            for (one_exp, splits, block) in [(true, 1, 64), (false, 1, 64), (true, 3, 64), (true, 1, 1), (false, 3, 1)] {
                let got = model_backward(&loss, &inputs, &upstream, one_exp, splits, block);
                let what = format!("{} {reduction:?} one_exp {one_exp} splits {splits} block {block}", case.name);
                assert_close(&format!("{what} dfeatures"), &got.features, &want.features);
                match (&got.keys, &want.keys) {
                    (Some(g), Some(w)) => assert_close(&format!("{what} dkeys"), g, w),
                    (None, None) => {}
                    _ => panic!("{what}: key gradients on one side only"),
                }
                match (&got.prototypes, &want.prototypes) {
                    (Some(g), Some(w)) => assert_close(&format!("{what} dprototypes"), g, w),
                    (None, None) => {}
                    _ => panic!("{what}: prototype gradients on one side only"),
                }
            }
        }
    }
}
