//! The generalized contrastive loss: the oracle against hand-computed values and against central
//! finite differences for every loss kind, input errors, and the fused GPU forward and backward
//! (through the host API's forward / backward pair) against the oracle.

mod common;

use common::contrastive_harness::{assert_grad_close, cases, for_each_harness_case, gradient_only_cases, shapes_for, SHAPES};
use common::{gpu_or_skip, m, random_matrix};
use contrastive_kernels::ops::contrastive::cpu::{backward, forward};
use contrastive_kernels::ops::contrastive::ForwardResult;
use contrastive_kernels::ops::contrastive::{ContrastiveLoss, EmptyPositives, KeyRows, LossInputs, PrototypeColumns, Reduction, RowRole};
use contrastive_kernels::{bf16, f16, Backend, Error, FloatElement, Gpu, Matrix};

fn close(got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "got {got}, want {want}");
}

const E: f64 = std::f64::consts::E;

#[test]
fn nt_xent_hand_computed() {
    // Rows (1,0), (2,0) are views of instance 0, (0,1), (0,3) of instance 1. For row 0 the columns
    // are rows 1, 2, 3 with cosines 1, 0, 0: L_0 = ln(e^{1/t} + 2) - 1/t; every row is alike.
    let x = m(4, 2, &[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0]);
    let instance = [0, 0, 1, 1];
    for tau in [1.0f32, 0.5] {
        let t = 1.0 / tau as f64;
        let out = forward(&ContrastiveLoss::nt_xent(tau), &LossInputs::new(&x, &instance)).unwrap();
        let want = (t.exp() + 2.0).ln() - t;
        close(out.loss, want);
        for i in 0..4 {
            close(out.per_anchor[i], want);
            close(out.lse[i], (t.exp() + 2.0).ln());
            assert_eq!(out.positive_count[i], 1);
        }
    }
}

#[test]
fn supcon_hand_computed() {
    // Same rows, one label for all: row 0's positives are rows 1, 2, 3 (cosines 1, 0, 0), so
    // L_0 = scale * (ln(e + 2) - 1/3), scale = tau / base_tau = 1 / 0.5 = 2.
    let x = m(4, 2, &[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0]);
    let (instance, label) = ([0, 0, 1, 1], [0, 0, 0, 0]);
    let inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
    let out = forward(&ContrastiveLoss::supcon(1.0, 0.5), &inputs).unwrap();
    close(out.per_anchor[0], 2.0 * ((E + 2.0).ln() - 1.0 / 3.0));
    assert_eq!(out.positive_count[0], 3);
}

#[test]
fn firm_pairwise_hand_computed() {
    // Anchors (1,0), (0,1); keys (1,0), (0,1) are their other views, instances 0, 1; no labels shared
    // (anchor 1 is an outlier, -1). Anchor 0: keys' cosines 1, 0 and its own other view is the
    // positive: L_0 = ln(e + 1) - 1. Same for anchor 1.
    let anchors = m(2, 2, &[1.0, 0.0, 0.0, 1.0]);
    let keys = m(2, 2, &[1.0, 0.0, 0.0, 1.0]);
    let (instance, label) = ([0, 1], [0, -1]);
    let inputs = LossInputs {
        label: Some(&label),
        keys: Some(KeyRows { features: &keys, instance: &instance, label: Some(&label) }),
        ..LossInputs::new(&anchors, &instance)
    };
    let out = forward(&ContrastiveLoss::firm_pairwise(1.0), &inputs).unwrap();
    close(out.loss, (E + 1.0).ln() - 1.0);
}

#[test]
fn nt_xent_with_opposite_views_under_every_reduction() {
    // Rows (1,0), (2,0): instance 0; (0,1), (-3,0): instance 1. tau = 0.5, so logits are 2 * cos.
    //   row 0: columns 1, 2, 3 with cos 1, 0, -1, positive row 1:  L_0 = ln(e^2 + 1 + e^-2) - 2
    //   row 1: the same cosines to rows 0, 2, 3:                   L_1 = L_0
    //   row 2: cos 0, 0, 0 to rows 0, 1, 3, positive row 3:         L_2 = ln 3 - 0
    //   row 3: cos -1, -1, 0 to rows 0, 1, 2, positive row 2:       L_3 = ln(2 e^-2 + 1) - 0
    // Weights (1, 0.5, 2, 0): Sum = L_0 + 0.5 L_1 + 2 L_2, Mean = Sum / 4, PerAnchor's loss = Sum.
    let x = m(4, 2, &[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, -3.0, 0.0]);
    let instance = [0, 0, 1, 1];
    let weight = [1.0f32, 0.5, 2.0, 0.0];
    let lse = [(E * E + 1.0 + 1.0 / (E * E)).ln(), (E * E + 1.0 + 1.0 / (E * E)).ln(), 3f64.ln(), (2.0 / (E * E) + 1.0).ln()];
    let per_anchor = [lse[0] - 2.0, lse[1] - 2.0, lse[2], lse[3]];
    let sum = per_anchor[0] + 0.5 * per_anchor[1] + 2.0 * per_anchor[2];
    let inputs = LossInputs { weight: Some(&weight), ..LossInputs::new(&x, &instance) };
    for (reduction, want) in [(Reduction::Mean, sum / 4.0), (Reduction::Sum, sum), (Reduction::PerAnchor, sum)] {
        let out = forward(&ContrastiveLoss::nt_xent(0.5).with_reduction(reduction), &inputs).unwrap();
        close(out.loss, want);
        for i in 0..4 {
            close(out.per_anchor[i], per_anchor[i]);
            close(out.lse[i], lse[i]);
        }
        assert_eq!(out.positive_count, vec![1; 4]);
    }
}

#[test]
fn firm_pairwise_with_a_queue_hand_computed() {
    // Anchors (1,0) [instance 0, label 0], (0,1) [instance 1, outlier -1]. Keys: their other views
    // (1,0), (0,2), then a queue (-1,0) [instance 7, label 0] and (0,-1) [instance 8, outlier]. tau = 1.
    //   anchor 0: cos 1, 0, -1, 0; positives key 0 (instance) and key 2 (label):
    //             L_0 = ln(e + 1 + e^-1 + 1) - (1 + (-1)) / 2
    //   anchor 1: cos 0, 1, 0, -1; positive key 1 only (outliers pair by instance alone):
    //             L_1 = ln(1 + e + 1 + e^-1) - 1
    let anchors = m(2, 2, &[1.0, 0.0, 0.0, 1.0]);
    let keys = m(4, 2, &[1.0, 0.0, 0.0, 2.0, -1.0, 0.0, 0.0, -1.0]);
    let (instance, label) = ([0, 1], [0, -1]);
    let (key_instance, key_label) = ([0, 1, 7, 8], [0, -1, 0, -1]);
    let inputs = LossInputs {
        label: Some(&label),
        keys: Some(KeyRows { features: &keys, instance: &key_instance, label: Some(&key_label) }),
        ..LossInputs::new(&anchors, &instance)
    };
    let out = forward(&ContrastiveLoss::firm_pairwise(1.0), &inputs).unwrap();
    let lse = (E + 2.0 + 1.0 / E).ln();
    close(out.per_anchor[0], lse);
    close(out.per_anchor[1], lse - 1.0);
    close(out.loss, (2.0 * lse - 1.0) / 2.0);
    assert_eq!(out.positive_count, vec![2, 1]);
}

#[test]
fn pairwise_gradient_hand_computed() {
    // One anchor x = (2,0) (u = (1,0)), keys (1,0) [its other view] and (0,3), tau = 1, upstream 2.
    // Logits s = (1, 0), softmax p = (e, 1) / (e + 1); G = 2 * (p - [1, 0]) = 2 (-1, 1) / (e + 1).
    //   dU_anchor = G U_keys = 2 (-1, 1) / (e + 1); through the norm (||x|| = 2, u = (1,0)):
    //     dx = (du - u <u, du>) / 2 = (0, 1) / (e + 1)
    //   dU_key0 = G_0 u = 2 (-1, 0) / (e + 1): parallel to key 0, so its dx is 0.
    //   dU_key1 = G_1 u = 2 (1, 0) / (e + 1): orthogonal to key 1 (norm 3): dx = 2 (1, 0) / (3 (e + 1)).
    let anchor = m(1, 2, &[2.0, 0.0]);
    let keys = m(2, 2, &[1.0, 0.0, 0.0, 3.0]);
    let (instance, label, key_instance, key_label) = ([0], [-1], [0, 1], [-1, -1]);
    let inputs = LossInputs {
        label: Some(&label),
        keys: Some(KeyRows { features: &keys, instance: &key_instance, label: Some(&key_label) }),
        ..LossInputs::new(&anchor, &instance)
    };
    let k = 1.0 / (E + 1.0);
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::PerAnchor] {
        let g = backward(&ContrastiveLoss::firm_pairwise(1.0).with_reduction(reduction), &inputs, &[2.0]).unwrap();
        let want_features = [0.0, k];
        let want_keys = [0.0, 0.0, 2.0 * k / 3.0, 0.0];
        for (got, want) in g.features.data().iter().zip(want_features) {
            close(*got, want);
        }
        for (got, want) in g.keys.as_ref().unwrap().data().iter().zip(want_keys) {
            close(*got, want);
        }
        assert!(g.prototypes.is_none());
    }
}

#[test]
fn oecl_penalty_value_and_gradient() {
    // In-distribution rows (1,0), (1,0) (one instance: each is the other's only column, so
    // L_i = s - s = 0 and G = softmax - 1 = 0); penalty rows (3,4), (0,-2), alpha = 0.5:
    //   penalty = 0.5 * (5 + 2) / 2 = 1.75
    //   d/dx_o = upstream * 0.5 / 2 * x_o / ||x_o||: upstream 2 gives (0.3, 0.4) and (0, -0.5).
    // PerAnchor: the penalty's upstream is 1, giving half of that.
    let x = m(4, 2, &[1.0, 0.0, 1.0, 0.0, 3.0, 4.0, 0.0, -2.0]);
    let instance = [0, 0, 1, 1];
    let roles = [RowRole::Anchor, RowRole::Anchor, RowRole::NormPenaltyOnly, RowRole::NormPenaltyOnly];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &instance) };
    let want = [0.0, 0.0, 0.0, 0.0, 0.3, 0.4, 0.0, -0.5];
    for (reduction, upstream, factor) in
        [(Reduction::Mean, vec![2.0], 1.0), (Reduction::Sum, vec![2.0], 1.0), (Reduction::PerAnchor, vec![2.0; 4], 0.5)]
    {
        let loss = ContrastiveLoss::oecl(1.0, 0.5).with_reduction(reduction);
        let out = forward(&loss, &inputs).unwrap();
        close(out.loss, 1.75);
        assert_eq!(&out.positive_count, &[1, 1, 0, 0]);
        assert_eq!(&out.lse[2..], &[f64::NEG_INFINITY; 2]);
        let g = backward(&loss, &inputs, &upstream).unwrap();
        for (got, want) in g.features.data().iter().zip(want) {
            close(*got, factor * want);
        }
    }
}

#[test]
fn no_anchor_gives_zero_loss() {
    // Every row NegativeOnly: no anchor, no empty-positive error, Mean = 0 (not 0/0), zero gradient.
    let x: Matrix<f64> = random_matrix(3, 4, 8);
    let instance = [0, 1, 2];
    let roles = [RowRole::NegativeOnly; 3];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &instance) };
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let loss = ContrastiveLoss::nt_xent(0.5).with_reduction(reduction);
        let out = forward(&loss, &inputs).unwrap();
        assert_eq!(out.loss, 0.0);
        assert_eq!(out.per_anchor, vec![0.0; 3]);
        assert!(backward(&loss, &inputs, &[1.0]).unwrap().features.data().iter().all(|g| *g == 0.0));
    }
    // With an OECL penalty row beside a lone NegativeOnly row: the loss is the penalty alone,
    // 1.5 * ||(0,2)|| = 3, and the NegativeOnly row has no column at all (LSE of nothing = -inf).
    let x = m(2, 2, &[1.0, 0.0, 0.0, 2.0]);
    let roles = [RowRole::NegativeOnly, RowRole::NormPenaltyOnly];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &[0, 1]) };
    let out = forward(&ContrastiveLoss::oecl(0.5, 1.5), &inputs).unwrap();
    close(out.loss, 3.0);
    assert_eq!(out.lse, vec![f64::NEG_INFINITY; 2]);
}

#[test]
fn cluster_aware_hand_computed() {
    // Rows (1,0), (1,0): one instance, cluster 0; prototypes (1,0), (0,1). Row 0's columns: row 1
    // (cos 1, positive), prototype 0 (cos 1, its own: positive), prototype 1 (cos 0):
    // L_0 = ln(2e + 1) - (1 + 1) / 2.
    let x = m(2, 2, &[1.0, 0.0, 1.0, 0.0]);
    let centers = m(2, 2, &[1.0, 0.0, 0.0, 1.0]);
    let (instance, label, proto_of) = ([0, 0], [0, 0], [0, 0]);
    let inputs = LossInputs {
        label: Some(&label),
        prototypes: Some(PrototypeColumns { centers: &centers, proto_of: &proto_of }),
        ..LossInputs::new(&x, &instance)
    };
    let out = forward(&ContrastiveLoss::cluster_aware(1.0), &inputs).unwrap();
    close(out.per_anchor[0], (2.0 * E + 1.0).ln() - 1.0);
    assert_eq!(out.positive_count[0], 2);
}

#[test]
fn oecl_and_outlier_exposure_hand_computed() {
    // OECL: rows (1,0), (1,0) are the in-distribution views; (3,4) is an outlier outside the matrix.
    // Row 0's only column is row 1 (cos 1, positive): L = 1 - 1 = 0; penalty 0.5 * ||(3,4)|| = 2.5.
    let x = m(3, 2, &[1.0, 0.0, 1.0, 0.0, 3.0, 4.0]);
    let instance = [0, 0, 1];
    let roles = [RowRole::Anchor, RowRole::Anchor, RowRole::NormPenaltyOnly];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &instance) };
    let out = forward(&ContrastiveLoss::oecl(1.0, 0.5), &inputs).unwrap();
    close(out.loss, 2.5);
    assert_eq!(out.lse[2], f64::NEG_INFINITY);

    // Outlier exposure: the outlier (0,1) only enters the denominators: L_0 = ln(e + 1) - 1, and the
    // mean is over the 2 anchors.
    let x = m(3, 2, &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    let roles = [RowRole::Anchor, RowRole::Anchor, RowRole::NegativeOnly];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &instance) };
    let out = forward(&ContrastiveLoss::outlier_exposure(1.0), &inputs).unwrap();
    close(out.loss, (E + 1.0).ln() - 1.0);
    assert_eq!(out.per_anchor[2], 0.0);
}

#[test]
fn empty_positives_policy() {
    let x = m(3, 2, &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    let instance = [0, 0, 7];
    let err = forward(&ContrastiveLoss::nt_xent(1.0), &LossInputs::new(&x, &instance)).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { arg: "instance", reason } if reason.contains("row 2")), "{err}");
    // Zero: row 2 contributes 0 but is counted by the mean: (2 * (ln(e + 1) - 1) + 0) / 3.
    let loss = ContrastiveLoss::nt_xent(1.0).with_empty_positives(EmptyPositives::Zero);
    let out = forward(&loss, &LossInputs::new(&x, &instance)).unwrap();
    close(out.loss, 2.0 * ((E + 1.0).ln() - 1.0) / 3.0);
}

/// The `arg` of an `Error::Shape`, panicking on anything else.
fn shape_arg<R>(r: contrastive_kernels::Result<R>) -> &'static str {
    match r {
        Err(Error::Shape { arg, .. }) => arg,
        Err(e) => panic!("expected Error::Shape, got {e}"),
        Ok(_) => panic!("expected Error::Shape, got Ok"),
    }
}

/// The `arg` of an `Error::InvalidArgument`, panicking on anything else.
fn invalid_arg<R>(r: contrastive_kernels::Result<R>) -> &'static str {
    match r {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        Err(e) => panic!("expected Error::InvalidArgument, got {e}"),
        Ok(_) => panic!("expected Error::InvalidArgument, got Ok"),
    }
}

/// f64 gradients equal up to rounding: within 1e-12 x max |want|.
fn same_gradient(what: &str, got: &Matrix<f64>, want: &Matrix<f64>) {
    let scale = want.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: zero gradient");
    for (k, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        assert!((g - w).abs() <= 1e-12 * scale, "{what}[{k}]: {g} vs {w}");
    }
}

/// `anchor_rows` two ways: against the same batch with the rows after them made `NegativeOnly`
/// (the loss's own definition of a column-only row), and as the shares of a batch split over
/// processes, each with its own rows first, adding up to the whole batch's loss and gradients.
#[test]
fn anchor_rows_are_negative_only_rows_and_shares_add_up() {
    let n = 9;
    let x: Matrix<f64> = random_matrix(n, 5, 41);
    let instance: Vec<i32> = (0..n as i32).map(|i| i % 4).collect();
    let label: Vec<i32> = (0..n).map(|i| [0, 1, -1][i % 3]).collect();
    let role: Vec<RowRole> = (0..n).map(|i| if i == 4 { RowRole::NegativeOnly } else { RowRole::Anchor }).collect();
    let weight: Vec<f32> = (0..n).map(|i| 0.5 + 0.25 * (i % 3) as f32).collect();
    let loss = ContrastiveLoss::supcon(0.3, 0.07).with_empty_positives(EmptyPositives::Zero).with_reduction(Reduction::Sum);
    let full = LossInputs { label: Some(&label), role: Some(&role), weight: Some(&weight), ..LossInputs::new(&x, &instance) };

    // Rows 0..m anchors: the same as NegativeOnly rows past m.
    for m in [1, 5, n] {
        let share = LossInputs { anchor_rows: Some(m), ..full };
        let as_roles: Vec<RowRole> = (0..n).map(|i| if i < m { role[i] } else { RowRole::NegativeOnly }).collect();
        let by_roles = LossInputs { role: Some(&as_roles), ..full };
        let (got, want) = (forward(&loss, &share).unwrap(), forward(&loss, &by_roles).unwrap());
        close(got.loss, want.loss);
        for i in 0..n {
            close(got.per_anchor[i], want.per_anchor[i]);
            if i < m {
                close(got.lse[i], want.lse[i]);
                assert_eq!(got.positive_count[i], want.positive_count[i], "m {m} row {i}");
            } else {
                assert_eq!((got.lse[i], got.positive_count[i]), (f64::NEG_INFINITY, 0), "m {m} row {i}: outside the block");
            }
        }
        let (g, w) = (backward(&loss, &share, &[1.3]).unwrap(), backward(&loss, &by_roles, &[1.3]).unwrap());
        same_gradient(&format!("anchor_rows {m}"), &g.features, &w.features);
        // Mean divides by the anchors among the first m rows.
        let mean = loss.with_reduction(Reduction::Mean);
        let anchors = (0..m).filter(|&i| role[i] == RowRole::Anchor).count() as f64;
        close(forward(&mean, &share).unwrap().loss, got.loss / anchors);
    }

    // Three processes holding rows 0..3, 3..7, 7..9: each puts its own rows first.
    fn pick<E: Copy>(v: &[E], order: &[usize]) -> Vec<E> {
        order.iter().map(|&i| v[i]).collect()
    }
    let whole = forward(&loss, &full).unwrap().loss;
    let whole_grad = backward(&loss, &full, &[1.0]).unwrap().features;
    let (mut total, mut grad) = (0.0, Matrix::from_fn(n, x.cols(), |_, _| 0.0));
    for (start, end) in [(0, 3), (3, 7), (7, 9)] {
        let order: Vec<usize> = (start..end).chain(0..start).chain(end..n).collect();
        let rows = Matrix::from_fn(n, x.cols(), |i, j| *x.get(order[i], j));
        let (inst, lab, rol, w) = (pick(&instance, &order), pick(&label, &order), pick(&role, &order), pick(&weight, &order));
        let inputs = LossInputs {
            label: Some(&lab),
            role: Some(&rol),
            weight: Some(&w),
            anchor_rows: Some(end - start),
            ..LossInputs::new(&rows, &inst)
        };
        total += forward(&loss, &inputs).unwrap().loss;
        let g = backward(&loss, &inputs, &[1.0]).unwrap().features;
        for (i, &row) in order.iter().enumerate() {
            for j in 0..x.cols() {
                grad.data_mut()[row * x.cols() + j] += *g.get(i, j);
            }
        }
    }
    close(total, whole);
    same_gradient("shares", &grad, &whole_grad);
}

#[test]
fn input_errors() {
    let x: Matrix<f64> = random_matrix(4, 3, 1);
    let instance = [0, 0, 1, 1];
    let nt = ContrastiveLoss::nt_xent(0.5);
    let plain = LossInputs::new(&x, &instance);

    // Lengths.
    assert_eq!(shape_arg(forward(&nt, &LossInputs::new(&x, &[0, 0, 1]))), "instance");
    let short = [0, 1];
    assert_eq!(shape_arg(forward(&ContrastiveLoss::firm(0.2), &LossInputs { label: Some(&short), ..plain })), "label");
    let short_weight = [1.0f32; 3];
    assert_eq!(shape_arg(forward(&nt, &LossInputs { weight: Some(&short_weight), ..plain })), "weight");
    let short_roles = [RowRole::Anchor; 5];
    assert_eq!(shape_arg(forward(&nt, &LossInputs { role: Some(&short_roles), ..plain })), "role");
    let centers: Matrix<f64> = random_matrix(2, 3, 2);
    let short_proto_of = [0, 1, -1];
    let protos = PrototypeColumns { centers: &centers, proto_of: &short_proto_of };
    assert_eq!(shape_arg(forward(&nt, &LossInputs { prototypes: Some(protos), ..plain })), "prototypes.proto_of");
    let narrow: Matrix<f64> = random_matrix(2, 2, 2);
    let proto_of = [0, 1, 1, -1];
    let protos = PrototypeColumns { centers: &narrow, proto_of: &proto_of };
    assert_eq!(shape_arg(forward(&nt, &LossInputs { prototypes: Some(protos), ..plain })), "prototypes.centers");
    let empty: Matrix<f64> = Matrix::new(4, 0, vec![]).unwrap();
    assert_eq!(shape_arg(forward(&nt, &LossInputs::new(&empty, &instance))), "features");
    // anchor_rows: 1..=n, self geometry only.
    for m in [0, 5] {
        assert_eq!(invalid_arg(forward(&nt, &LossInputs { anchor_rows: Some(m), ..plain })), "anchor_rows", "m = {m}");
    }
    let keys = KeyRows { features: &x, instance: &instance, label: None };
    let pairwise = LossInputs { keys: Some(keys), anchor_rows: Some(2), ..plain };
    assert_eq!(
        invalid_arg(forward(&ContrastiveLoss { use_labels: false, ..ContrastiveLoss::firm_pairwise(0.2) }, &pairwise)),
        "anchor_rows"
    );

    // Scalars.
    for tau in [-1.0f32, 0.0, f32::NAN, f32::INFINITY] {
        assert_eq!(invalid_arg(forward(&ContrastiveLoss::nt_xent(tau), &plain)), "temperature", "tau = {tau}");
    }
    assert_eq!(invalid_arg(forward(&ContrastiveLoss::oecl(0.5, -0.1), &plain)), "norm_penalty");

    // Values.
    let mut nan = x.clone();
    nan.data_mut()[5] = f64::NAN;
    assert_eq!(invalid_arg(forward(&nt, &LossInputs::new(&nan, &instance))), "features");
    let bad_label = [0, -2, 1, 1];
    assert_eq!(invalid_arg(forward(&ContrastiveLoss::firm(0.2), &LossInputs { label: Some(&bad_label), ..plain })), "label");
    assert_eq!(invalid_arg(forward(&ContrastiveLoss::supcon(0.1, 0.07), &plain)), "label");
    for w in [-1.0f32, f32::NAN] {
        let weight = [1.0f32, w, 1.0, 1.0];
        assert_eq!(invalid_arg(forward(&nt, &LossInputs { weight: Some(&weight), ..plain })), "weight");
    }
    for bad in [2, -2] {
        let proto_of = [0, 1, bad, -1];
        let protos = PrototypeColumns { centers: &centers, proto_of: &proto_of };
        assert_eq!(invalid_arg(forward(&nt, &LossInputs { prototypes: Some(protos), ..plain })), "prototypes.proto_of");
    }
    let mut nan_centers = centers.clone();
    nan_centers.data_mut()[4] = f64::INFINITY;
    let proto_of = [0, 1, 1, -1];
    let protos = PrototypeColumns { centers: &nan_centers, proto_of: &proto_of };
    assert_eq!(invalid_arg(forward(&nt, &LossInputs { prototypes: Some(protos), ..plain })), "prototypes.centers");
    let roles = [RowRole::NormPenaltyOnly, RowRole::Anchor, RowRole::Anchor, RowRole::Anchor];
    assert_eq!(invalid_arg(forward(&nt, &LossInputs { role: Some(&roles), ..plain })), "role");

    // Keys: required by the pairwise geometry, refused by the self geometry, checked like features.
    let fp = ContrastiveLoss::firm_pairwise(0.2);
    let with_labels = LossInputs { label: Some(&instance), ..plain };
    assert_eq!(invalid_arg(forward(&fp, &with_labels)), "keys");
    let keys = KeyRows { features: &x, instance: &instance, label: None };
    assert_eq!(invalid_arg(forward(&nt, &LossInputs { keys: Some(keys), ..plain })), "keys");
    assert_eq!(invalid_arg(forward(&fp, &LossInputs { keys: Some(keys), ..with_labels })), "keys.label");
    let keys = KeyRows { features: &x, instance: &instance[..3], label: Some(&instance) };
    assert_eq!(shape_arg(forward(&fp, &LossInputs { keys: Some(keys), ..with_labels })), "keys.instance");
    let keys = KeyRows { features: &x, instance: &instance, label: Some(&instance[..2]) };
    assert_eq!(shape_arg(forward(&fp, &LossInputs { keys: Some(keys), ..with_labels })), "keys.label");
    let keys = KeyRows { features: &narrow, instance: &instance[..2], label: Some(&instance[..2]) };
    assert_eq!(shape_arg(forward(&fp, &LossInputs { keys: Some(keys), ..with_labels })), "keys.features");
    let keys = KeyRows { features: &nan, instance: &instance, label: Some(&instance) };
    assert_eq!(invalid_arg(forward(&fp, &LossInputs { keys: Some(keys), ..with_labels })), "keys.features");

    // The backward validates the same way, and checks the upstream's length per reduction.
    assert_eq!(invalid_arg(backward(&ContrastiveLoss::nt_xent(0.0), &plain, &[1.0])), "temperature");
    assert_eq!(shape_arg(backward(&nt, &plain, &[1.0, 2.0])), "upstream");
    assert_eq!(shape_arg(backward(&nt, &plain, &[])), "upstream");
    assert_eq!(shape_arg(backward(&nt.with_reduction(Reduction::Sum), &plain, &[1.0; 4])), "upstream");
    assert_eq!(shape_arg(backward(&nt.with_reduction(Reduction::PerAnchor), &plain, &[1.0])), "upstream");
    assert!(backward(&nt.with_reduction(Reduction::PerAnchor), &plain, &[1.0; 4]).is_ok());
}

#[test]
fn empty_positive_errors_name_the_row_in_both_directions() {
    // Row 3 (instance 4) is the only empty anchor; row 1 (instance 5) is one too but NegativeOnly,
    // which never needs a positive.
    let x: Matrix<f64> = random_matrix(5, 3, 4);
    let instance = [0, 5, 0, 4, 0];
    let roles = [RowRole::Anchor, RowRole::NegativeOnly, RowRole::Anchor, RowRole::Anchor, RowRole::Anchor];
    let inputs = LossInputs { role: Some(&roles), ..LossInputs::new(&x, &instance) };
    let nt = ContrastiveLoss::nt_xent(0.5);
    for err in [forward(&nt, &inputs).unwrap_err(), backward(&nt, &inputs, &[1.0]).unwrap_err()] {
        assert!(matches!(&err, Error::InvalidArgument { arg: "instance", reason } if reason.contains("row 3 has no positive")), "{err}");
    }
    let zero = nt.with_empty_positives(EmptyPositives::Zero);
    let out = forward(&zero, &inputs).unwrap();
    assert_eq!(out.positive_count, vec![2, 0, 2, 0, 2]);
    assert_eq!((out.per_anchor[1], out.per_anchor[3]), (0.0, 0.0));
    assert!(out.lse[1].is_finite() && out.lse[3].is_finite(), "rows in the matrix have an LSE");
    assert!(backward(&zero, &inputs, &[1.0]).is_ok());
}

#[test]
fn invariant_to_row_scale_and_supcon_with_instance_labels_is_nt_xent() {
    let x: Matrix<f64> = random_matrix(6, 5, 3);
    let instance = [0, 0, 1, 1, 2, 2];
    let nt = forward(&ContrastiveLoss::nt_xent(0.3), &LossInputs::new(&x, &instance)).unwrap();
    let mut scaled = x.clone();
    for v in &mut scaled.data_mut()[5..10] {
        *v *= 7.5;
    }
    close(forward(&ContrastiveLoss::nt_xent(0.3), &LossInputs::new(&scaled, &instance)).unwrap().loss, nt.loss);
    let sup =
        forward(&ContrastiveLoss::supcon(0.3, 0.3), &LossInputs { label: Some(&instance), ..LossInputs::new(&x, &instance) }).unwrap();
    close(sup.loss, nt.loss);
    for (a, b) in sup.per_anchor.iter().zip(&nt.per_anchor) {
        close(*a, *b);
    }
    let g_nt = backward(&ContrastiveLoss::nt_xent(0.3), &LossInputs::new(&x, &instance), &[1.0]).unwrap();
    let g_sup =
        backward(&ContrastiveLoss::supcon(0.3, 0.3), &LossInputs { label: Some(&instance), ..LossInputs::new(&x, &instance) }, &[1.0])
            .unwrap();
    for (a, b) in g_sup.features.data().iter().zip(g_nt.features.data()) {
        close(*a, *b);
    }
}

#[test]
fn invariant_to_key_and_prototype_scale() {
    // Keys and prototypes are normalized like the rows: scaling one by a positive constant changes
    // nothing, and its gradient scales by the inverse (d(x/||x||)/dx is homogeneous of degree -1).
    let x: Matrix<f64> = random_matrix(3, 4, 21);
    let keys: Matrix<f64> = random_matrix(5, 4, 22);
    let centers: Matrix<f64> = random_matrix(2, 4, 23);
    let (instance, label, key_instance, key_label, proto_of) = ([0, 1, 2], [0, -1, 1], [0, 1, 2, 3, 4], [0, -1, 1, 1, -1], [0, -1, 1]);
    let mut scaled_keys = keys.clone();
    let mut scaled_centers = centers.clone();
    for v in &mut scaled_keys.data_mut()[8..12] {
        *v *= 0.25;
    }
    for v in &mut scaled_centers.data_mut()[4..8] {
        *v *= 40.0;
    }
    let inputs = |scaled: bool| {
        let (kk, cc) = if scaled { (&scaled_keys, &scaled_centers) } else { (&keys, &centers) };
        LossInputs {
            label: Some(&label[..]),
            keys: Some(KeyRows { features: kk, instance: &key_instance[..], label: Some(&key_label[..]) }),
            prototypes: Some(PrototypeColumns { centers: cc, proto_of: &proto_of[..] }),
            ..LossInputs::new(&x, &instance[..])
        }
    };
    let loss = ContrastiveLoss::firm_pairwise(0.2);
    let (a, b) = (forward(&loss, &inputs(false)).unwrap(), forward(&loss, &inputs(true)).unwrap());
    close(b.loss, a.loss);
    let (ga, gb) = (backward(&loss, &inputs(false), &[1.0]).unwrap(), backward(&loss, &inputs(true), &[1.0]).unwrap());
    let (ka, kb) = (ga.keys.unwrap(), gb.keys.unwrap());
    let (ca, cb) = (ga.prototypes.unwrap(), gb.prototypes.unwrap());
    for t in 0..20 {
        let f = if (8..12).contains(&t) { 4.0 } else { 1.0 };
        assert!((kb.data()[t] - f * ka.data()[t]).abs() <= 1e-12 * (1.0 + ka.data()[t].abs() * f), "keys[{t}]");
    }
    for t in 0..8 {
        let f = if t >= 4 { 1.0 / 40.0 } else { 1.0 };
        assert!((cb.data()[t] - f * ca.data()[t]).abs() <= 1e-12 * (1.0 + ca.data()[t].abs()), "prototypes[{t}]");
    }
}

/// d(reduced loss)/d(inputs) from `backward` against central differences of `forward`, for the
/// features, the keys and the prototypes, under every reduction.
#[test]
fn oracle_gradients_match_finite_differences() {
    for case in cases().into_iter().chain(gradient_only_cases()) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::PerAnchor] {
            let loss = case.loss.with_reduction(reduction);
            let n = case.features.rows();
            // PerAnchor: the scalar is sum_i v_i L_i + penalty with upstream v.
            let upstream: Vec<f64> =
                if reduction == Reduction::PerAnchor { (0..n).map(|i| 0.3 + 0.2 * i as f64).collect() } else { vec![1.7] };
            let keys0 = case.keys.as_ref().map(|k| k.0.clone());
            let centers0 = case.protos.as_ref().map(|p| p.0.clone());
            let objective = |f: &Matrix<f64>, k: Option<&Matrix<f64>>, c: Option<&Matrix<f64>>| -> f64 {
                let out = forward(&loss, &case.inputs(f, k, c)).unwrap();
                if reduction == Reduction::PerAnchor {
                    let penalty = out.loss
                        - out
                            .per_anchor
                            .iter()
                            .zip(case.weight.as_deref().map_or(vec![1.0; n], |w| w.to_vec()))
                            .map(|(l, w)| l * w as f64)
                            .sum::<f64>();
                    out.per_anchor
                        .iter()
                        .zip(&upstream)
                        .zip(case.weight.as_deref().map_or(vec![1.0; n], |w| w.to_vec()))
                        .map(|((l, v), w)| l * v * w as f64)
                        .sum::<f64>()
                        + penalty
                } else {
                    upstream[0] * out.loss
                }
            };
            let grads = backward(&loss, &case.inputs(&case.features, keys0.as_ref(), centers0.as_ref()), &upstream).unwrap();
            let h = 1e-6;
            let check = |what: &str, grad: &Matrix<f64>, perturb: &dyn Fn(usize, f64) -> f64| {
                for k in 0..grad.data().len() {
                    let fd = (perturb(k, h) - perturb(k, -h)) / (2.0 * h);
                    let g = grad.data()[k];
                    assert!(
                        (fd - g).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "{} {reduction:?} d{what}[{k}]: backward {g}, finite difference {fd}",
                        case.name
                    );
                }
            };
            check("features", &grads.features, &|k, dh| {
                let mut f = case.features.clone();
                f.data_mut()[k] += dh;
                objective(&f, keys0.as_ref(), centers0.as_ref())
            });
            if let Some(keys) = &keys0 {
                check("keys", grads.keys.as_ref().expect("pairwise gives key gradients"), &|k, dh| {
                    let mut kk = keys.clone();
                    kk.data_mut()[k] += dh;
                    objective(&case.features, Some(&kk), centers0.as_ref())
                });
            }
            if let Some(centers) = &centers0 {
                check("prototypes", grads.prototypes.as_ref().expect("prototype gradients"), &|k, dh| {
                    let mut c = centers.clone();
                    c.data_mut()[k] += dh;
                    objective(&case.features, keys0.as_ref(), Some(&c))
                });
            }
        }
    }
}

/// The forward against the oracle on the same (rounded) inputs. Tolerances of DESIGN.md section 7:
/// loss relative error 2e-3 (f16) / 5e-3 (bf16); per-anchor values and LSE likewise, relative to
/// the largest |L_i| and |LSE|.
fn check_forward_against_oracle<T: FloatElement>(
    shapes: &[(usize, usize)],
    run: &dyn Fn(&ContrastiveLoss, &LossInputs<'_, T>) -> contrastive_kernels::Result<ForwardResult>,
    rel: f64,
) {
    for_each_harness_case::<T>(shapes, &mut |what, loss, inputs| {
        let want = forward(loss, inputs).unwrap();
        let got = run(loss, inputs).unwrap();
        assert_forward_close(what, &got, &want, rel);
    });
}

/// The loss, and every row's L_i, LSE and |P(i)|, against the oracle's (rel as above).
fn assert_forward_close(what: &str, got: &ForwardResult, want: &contrastive_kernels::ops::contrastive::cpu::LossForward, rel: f64) {
    assert!((got.loss as f64 - want.loss).abs() <= rel * want.loss.abs().max(1e-3), "{what}: loss {} vs oracle {}", got.loss, want.loss);
    let scale = want.per_anchor.iter().chain(want.lse.iter().filter(|v| v.is_finite())).fold(0.0f64, |m, v| m.max(v.abs()));
    for i in 0..want.lse.len() {
        assert_eq!(got.positives[i] as usize, want.positive_count[i], "{what}: |P({i})|");
        assert!(
            (got.per_anchor[i] as f64 - want.per_anchor[i]).abs() <= rel * scale,
            "{what}: L_{i} {} vs {}",
            got.per_anchor[i],
            want.per_anchor[i]
        );
        let (g, w) = (got.lse[i] as f64, want.lse[i]);
        assert!(g == w || (g - w).abs() <= rel * scale, "{what}: lse_{i} {g} vs {w}");
    }
}

/// The backward through the host API of `backend` against the oracle's gradients on the same
/// inputs, under Mean and PerAnchor (per-row upstream), features, keys and prototypes.
fn check_backward_against_oracle<T: FloatElement>(backend: &Backend, rel: f64, abs: f64) {
    let gpu = match backend {
        Backend::Gpu(gpu) => Some(gpu),
        Backend::Cpu => None,
    };
    for_each_harness_case::<T>(shapes_for(gpu), &mut |what, loss, inputs| {
        for reduction in [Reduction::Mean, Reduction::PerAnchor] {
            let loss = loss.with_reduction(reduction);
            let n = inputs.features.rows();
            let upstream: Vec<f32> =
                if reduction == Reduction::PerAnchor { (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect() } else { vec![1.5] };
            let want = backward(&loss, inputs, &upstream.iter().map(|&v| v as f64).collect::<Vec<_>>()).unwrap();
            let (_, context) = backend.contrastive_forward(&loss, inputs).unwrap();
            let got = backend.contrastive_backward(&loss, inputs, context, &upstream).unwrap();
            let what = format!("{what} {reduction:?}");
            assert_grad_close(&format!("{what} dfeatures"), &got.features, &want.features, rel, abs);
            match (&got.keys, &want.keys) {
                (Some(g), Some(w)) => assert_grad_close(&format!("{what} dkeys"), g, w, rel, abs),
                (None, None) => {}
                _ => panic!("{what}: key gradients present on one side only"),
            }
            match (&got.prototypes, &want.prototypes) {
                (Some(g), Some(w)) => assert_grad_close(&format!("{what} dprototypes"), g, w, rel, abs),
                (None, None) => {}
                _ => panic!("{what}: prototype gradients present on one side only"),
            }
        }
    });
}

fn gpu_forward(gpu: &Gpu) -> impl Fn(&ContrastiveLoss, &LossInputs<'_, f16>) -> contrastive_kernels::Result<ForwardResult> + '_ {
    move |loss, inputs| Backend::Gpu(gpu.clone()).contrastive_forward(loss, inputs).map(|r| r.0)
}

#[test]
fn gpu_forward_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_forward_matches_oracle") else { return };
    let backend = Backend::Gpu(gpu.clone());
    let shapes = shapes_for(Some(&gpu));
    check_forward_against_oracle::<f16>(shapes, &gpu_forward(&gpu), 2e-3);
    check_forward_against_oracle::<bf16>(shapes, &|loss, inputs| backend.contrastive_forward(loss, inputs).map(|r| r.0), 5e-3);
    // f32: exact FFMA products, so DESIGN.md's 1e-4.
    check_forward_against_oracle::<f32>(shapes, &|loss, inputs| backend.contrastive_forward(loss, inputs).map(|r| r.0), 1e-4);
}

/// Gradients: DESIGN.md section 7 bounds them by 1e-2 x max |grad| for f16 / bf16 inputs and by
/// 1e-4 x max |grad| (+ 1e-6, below the f32 rounding of tiny entries) for f32.
#[test]
fn gpu_backward_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_backward_matches_oracle") else { return };
    let backend = Backend::Gpu(gpu);
    check_backward_against_oracle::<f16>(&backend, 1e-2, 0.0);
    check_backward_against_oracle::<bf16>(&backend, 1e-2, 0.0);
    check_backward_against_oracle::<f32>(&backend, 1e-4, 1e-6);
}

/// The oracle rounded to f32 through the same harnesses (the CPU backend of the host API): checks
/// the harness's inputs are valid, its bounds admit the exact answer, and the CPU backend's
/// forward / backward pair agrees with the oracle's functions.
#[test]
fn oracle_passes_the_gpu_harness() {
    check_forward_against_oracle::<f16>(SHAPES, &|loss, inputs| Backend::Cpu.contrastive_forward(loss, inputs).map(|r| r.0), 2e-3);
    check_forward_against_oracle::<bf16>(SHAPES, &|loss, inputs| Backend::Cpu.contrastive_forward(loss, inputs).map(|r| r.0), 5e-3);
    check_forward_against_oracle::<f32>(SHAPES, &|loss, inputs| Backend::Cpu.contrastive_forward(loss, inputs).map(|r| r.0), 1e-4);
    // The CPU backend rounds its f64 gradients to bf16 (unit roundoff 2^-8).
    check_backward_against_oracle::<bf16>(&Backend::Cpu, 2f64.powi(-8), 0.0);
    check_backward_against_oracle::<f32>(&Backend::Cpu, 2f64.powi(-24), 1e-30);
}

#[test]
fn gpu_forward_errors() {
    let Some(gpu) = gpu_or_skip("gpu_forward_errors") else { return };
    let backend = Backend::Gpu(gpu);
    let x: Matrix<f16> = random_matrix(3, 8, 1);
    let err = backend.contrastive_forward(&ContrastiveLoss::nt_xent(0.5), &LossInputs::new(&x, &[0, 0, 5])).err().unwrap();
    assert!(matches!(&err, Error::InvalidArgument { arg: "instance", reason } if reason.contains("row 2")), "{err}");
    let mut bad: Matrix<f32> = random_matrix(4, 8, 1);
    bad.data_mut()[3 * 8 + 2] = f32::NAN;
    assert_eq!(invalid_arg(backend.contrastive_forward(&ContrastiveLoss::nt_xent(0.5), &LossInputs::new(&bad, &[0, 0, 1, 1]))), "features");
}

/// The backward's own argument checks, on both backends: the upstream's length, and a context from
/// another backend.
#[test]
fn backward_errors_cpu_and_gpu() {
    let x: Matrix<f16> = random_matrix(4, 8, 1);
    let inputs = LossInputs::new(&x, &[0, 1, 0, 1]);
    let loss = ContrastiveLoss::nt_xent(0.5);
    let (_, ctx) = Backend::Cpu.contrastive_forward(&loss, &inputs).unwrap();
    assert_eq!(shape_arg(Backend::Cpu.contrastive_backward(&loss, &inputs, ctx, &[1.0, 2.0])), "upstream");
    let per_anchor = loss.with_reduction(Reduction::PerAnchor);
    let (_, ctx) = Backend::Cpu.contrastive_forward(&per_anchor, &inputs).unwrap();
    assert_eq!(shape_arg(Backend::Cpu.contrastive_backward(&per_anchor, &inputs, ctx, &[1.0])), "upstream");
    if let Some(gpu) = gpu_or_skip("backward_errors_cpu_and_gpu (GPU half)") {
        let (_, ctx) = Backend::Cpu.contrastive_forward(&loss, &inputs).unwrap();
        assert_eq!(invalid_arg(Backend::Gpu(gpu).contrastive_backward(&loss, &inputs, ctx, &[1.0])), "context");
    }
}

/// The device-buffer API checks ids and finiteness on the device (the host API checks them on the
/// host first, so these paths are only reachable here).
#[test]
fn gpu_device_input_checks() {
    use contrastive_kernels::ops::contrastive::gpu::{forward as forward_device, DeviceLossInputs, DevicePrototypeColumns};
    use contrastive_kernels::DeviceMatrix;
    let Some(gpu) = gpu_or_skip("gpu_device_input_checks") else { return };
    let stream = gpu.stream();
    let mut x: Matrix<bf16> = random_matrix(6, 16, 3);
    let good = DeviceMatrix::upload(&gpu, &x).unwrap();
    x.data_mut()[4 * 16 + 5] = bf16::NAN;
    let nan = DeviceMatrix::upload(&gpu, &x).unwrap();
    let instance = stream.clone_htod(&[0i32, 1, 2, 0, 1, 2]).unwrap();
    let loss = ContrastiveLoss::nt_xent(0.5);
    let err = forward_device(&gpu, &loss, &DeviceLossInputs::new(&nan, &instance)).err().unwrap();
    assert!(matches!(&err, Error::InvalidArgument { arg: "features", reason } if reason.contains("row 4")), "{err}");

    let centers = DeviceMatrix::upload(&gpu, &random_matrix::<bf16>(2, 16, 4)).unwrap();
    let proto_of = stream.clone_htod(&[0i32, 1, 2, 0, 1, -1]).unwrap(); // 2 is out of range
    let label = stream.clone_htod(&[0i32, 1, 0, 0, 1, 1]).unwrap();
    let inputs = DeviceLossInputs {
        label: Some(&label),
        prototypes: Some(DevicePrototypeColumns { centers: &centers, proto_of: &proto_of }),
        ..DeviceLossInputs::new(&good, &instance)
    };
    let err = forward_device(&gpu, &ContrastiveLoss::cluster_aware(0.5), &inputs).err().unwrap();
    assert!(matches!(&err, Error::InvalidArgument { arg: "prototypes.proto_of", reason } if reason.contains("row 2")), "{err}");

    let short = stream.clone_htod(&[0i32, 1, 2]).unwrap();
    assert_eq!(shape_arg(forward_device(&gpu, &loss, &DeviceLossInputs::new(&good, &short))), "instance");
}

/// The fused path's extra memory, by hand, and issue 3's target: under 64 MiB at n = 65536,
/// d = 128 (the unfused path needs over 16 GiB there).
#[test]
fn fused_extra_memory_by_hand() {
    use contrastive_kernels::ops::contrastive::gpu::extra_bytes as fused_extra_bytes;
    use contrastive_kernels::DType;
    let (n, kib) = (65536usize, 1024usize);
    let b = fused_extra_bytes(n, None, 0, 128, DType::BF16);
    // Saved: loss 4 B + per-anchor, LSE, |P| 3 x 256 KiB. Scratch: row norms and column norms
    // 2 x 256 KiB, one empty prototype-norm slot, first-empty and 9 check flags, the prepared
    // column tiles (512 x 2560 B) and the symmetric kernel's row records (65536 x 16 B); the row
    // sweep would need no split partials (512 row blocks fill whole waves), the symmetric kernel 32
    // groups of 16 row blocks: 32 x 65536 x 16 B = 32 MiB.
    assert_eq!(b.saved, 4 + 3 * 256 * kib);
    assert_eq!(b.forward, b.saved + 2 * 256 * kib + 4 + 4 + 9 * 4 + 512 * 2560 + 65536 * 16 + 32 * kib * kib);
    // n = 8192: the row sweep splits 4 ways on 132 SMs at 2 blocks each (2 at 1): 4 x 8192 x 16 B
    // of partials; the symmetric kernel one group per row block: 64 x 8192 x 16 B (8 MiB).
    let s = fused_extra_bytes(8192, None, 0, 128, DType::BF16);
    assert_eq!(s.forward, 4 + 3 * 32 * kib + 2 * 32 * kib + 4 + 4 + 9 * 4 + 64 * 2560 + 8192 * 16 + 64 * 8192 * 16);
    // With prototypes, one more slot: 65 x 8192 x 16 B, and 2 x 4 B of prototype norms, one
    // more column tile.
    let c = fused_extra_bytes(8192, None, 2, 128, DType::BF16);
    assert_eq!(c.forward, 4 + 3 * 32 * kib + 2 * 32 * kib + 2 * 4 + 4 + 9 * 4 + 65 * 2560 + 8192 * 16 + 65 * 8192 * 16);
    // Backward: upstream 4 B, packed bf16 unit rows 16 MiB, row norms 256 KiB, coef_a / coef_b
    // 2 x 256 KiB, 2 scalars, f32 gradient scratch 32 MiB, the prepared column tiles (1024 x 2048 B).
    assert_eq!(b.backward, 4 + 16 * kib * kib + 256 * kib + 2 * 256 * kib + 8 + 32 * kib * kib + 1024 * 2048);
    assert!(b.peak() < 64 << 20, "{} MiB", b.peak() >> 20);
    // d = 3 pads to 8 in the packed copy, and its rows to a multiple of 128 (the G = 1 kernels'
    // column tile); keys and prototypes add their own copies and scratch.
    let p = fused_extra_bytes(4, Some(6), 2, 3, DType::F16);
    assert_eq!(
        p.backward,
        4 + 128 * 8 * 2 + 4 * 4 + 2 * 16 + 8 + 4 * 3 * 4 + (128 * 8 * 2 + 6 * 4 + 6 * 3 * 4) + 128 * 8 * 2 + 2 * 4 + 2 * 3 * 4
            // column tiles: the rows' pass over 6 keys and 2 prototypes, 128 columns (two tiles
            // of 64) each
            + 2 * 2 * 2048
    );
    // The forward pads f16 / bf16 rows whose d is not a multiple of 8 (rows, keys, prototypes: dp =
    // 8 elements each); f32 reads them as they are.
    let aligned = fused_extra_bytes(4, Some(6), 2, 8, DType::F16);
    assert_eq!(p.forward - aligned.forward, (4 + 6 + 2) * 8 * 2);
    assert_eq!(fused_extra_bytes(4, Some(6), 2, 3, DType::F32).forward, fused_extra_bytes(4, Some(6), 2, 8, DType::F32).forward);
}

/// The fused forward and backward are deterministic: two runs give the same bits (no float
/// atomics; every reduction has a fixed order).
#[test]
fn gpu_results_are_bitwise_repeatable() {
    let Some(gpu) = gpu_or_skip("gpu_results_are_bitwise_repeatable") else { return };
    let backend = Backend::Gpu(gpu);
    let x: Matrix<bf16> = random_matrix(300, 72, 9);
    let instance: Vec<i32> = (0..300).map(|i| i % 150).collect();
    let label: Vec<i32> = (0..300).map(|i| if i % 7 == 0 { -1 } else { (i % 150) % 5 }).collect();
    let inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
    let loss = ContrastiveLoss::firm(0.2);
    let run = || {
        let (out, ctx) = backend.contrastive_forward(&loss, &inputs).unwrap();
        let grads = backend.contrastive_backward(&loss, &inputs, ctx, &[1.0]).unwrap();
        (out.loss.to_bits(), grads.features.data().iter().map(|v| v.to_bits()).collect::<Vec<u16>>())
    };
    assert_eq!(run(), run());
}

/// Regression, found by the CPU emulator: the backward recomputed its logits from a separately
/// rounded f16 / bf16 copy of the unit rows, while the forward's LSE came from the raw rows and
/// f32 norms. At a small temperature the recomputed softmax then no longer summed to one, and the
/// gradients of SupCon on two close views (x and x + 0.02 noise) missed DESIGN.md's 1e-2 bound.
/// The backward now recomputes exactly the forward's logits.
#[test]
fn gpu_backward_small_temperature_close_views() {
    let Some(gpu) = gpu_or_skip("gpu_backward_small_temperature_close_views") else { return };
    let backend = Backend::Gpu(gpu);
    let (b, d) = (256usize, 128usize);
    let base: Matrix<f64> = random_matrix(b, d, 70);
    let noise: Matrix<f64> = random_matrix(b, d, 71);
    let x: Matrix<bf16> = Matrix::from_fn(2 * b, d, |i, j| {
        let v = base.data()[(i % b) * d + j];
        bf16::from_f64(if i < b { v } else { v + 0.02 * noise.data()[(i % b) * d + j] })
    });
    let instance: Vec<i32> = (0..2 * b as i32).map(|i| i % b as i32).collect();
    let label: Vec<i32> = instance.iter().map(|i| i % 8).collect();
    for tau in [0.07f32, 0.05] {
        let loss = ContrastiveLoss::supcon(tau, 0.07);
        let inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
        let want = backward(&loss, &inputs, &[1.0]).unwrap();
        let (_, context) = backend.contrastive_forward(&loss, &inputs).unwrap();
        let got = backend.contrastive_backward(&loss, &inputs, context, &[1.0]).unwrap();
        assert_grad_close(&format!("supcon bf16 tau {tau} 512x128 two close views"), &got.features, &want.features, 1e-2, 0.0);
    }
}

/// The rebuilt backward's paths (kernels/contrastive.cu, kernels/common/contrastive_backward.cuh),
/// each against the oracle with DESIGN.md's tolerances: temperatures on both sides of the
/// fixed-offset threshold (tau >= ~0.029: one exponential per logit; 0.02: two), the d-group
/// counts G = 1, 2 and 4 (f16 / bf16 at D = 512: one d chunk; f32 there: four chunks of G = 2)
/// with ragged row tails, a whole G = 2 chunk (256), d not a multiple of 8 for each G (37: G = 1,
/// 250: G = 2, 300: G = 4; f16 / bf16 multiply S from the packed rows, zero padded to dp, and took
/// `_unaligned` kernels before), d over one G = 4 chunk (640, 1100: `_g4_chunked`, 2 and 3 chunks
/// of 512 with a partial last one, S through the stages; f32: G = 2 chunks of 128; the resident
/// G = 4 kernel gave NaN there), every dtype, in the self geometry with labels (both terms), pairwise
/// with a queue (anchor term, then column term) and with prototypes (their own pass).
#[test]
fn gpu_backward_temperatures_and_d_groups() {
    let Some(gpu) = gpu_or_skip("gpu_backward_temperatures_and_d_groups") else { return };
    let backend = Backend::Gpu(gpu);
    fn check<T: FloatElement>(backend: &Backend, what: &str, loss: &ContrastiveLoss, inputs: &LossInputs<'_, T>, rel: f64, abs: f64) {
        let want = backward(loss, inputs, &[1.0]).unwrap();
        let (_, context) = backend.contrastive_forward(loss, inputs).unwrap();
        let got = backend.contrastive_backward(loss, inputs, context, &[1.0]).unwrap();
        assert_grad_close(&format!("{what} dfeatures"), &got.features, &want.features, rel, abs);
        if let (Some(g), Some(w)) = (&got.keys, &want.keys) {
            assert_grad_close(&format!("{what} dkeys"), g, w, rel, abs);
        }
        if let (Some(g), Some(w)) = (&got.prototypes, &want.prototypes) {
            assert_grad_close(&format!("{what} dprototypes"), g, w, rel, abs);
        }
    }
    fn run<T: FloatElement>(backend: &Backend, rel: f64, abs: f64) {
        for (n, d) in [(70usize, 512usize), (67, 250), (100, 40), (33, 640), (45, 37), (40, 300), (20, 1100), (30, 256)] {
            let x: Matrix<T> = random_matrix(n, d, (n + d) as u64);
            let instance: Vec<i32> = (0..n as i32).map(|i| i % (n as i32 / 2)).collect();
            let label: Vec<i32> = instance.iter().map(|i| if i % 5 == 4 { -1 } else { i % 3 }).collect();
            let keys: Matrix<T> = random_matrix(n + 9, d, 7);
            let key_instance: Vec<i32> = (0..n as i32 + 9).map(|i| if i < n as i32 { instance[i as usize] } else { 1000 + i }).collect();
            let key_label: Vec<i32> = (0..n + 9).map(|i| if i < n { label[i] } else { -1 }).collect();
            let centers: Matrix<T> = random_matrix(3, d, 8);
            let proto_of: Vec<i32> = (0..n as i32).map(|i| i % 4 - 1).collect();
            for tau in [0.5f32, 0.07, 0.05, 0.02] {
                let what = format!("{} {n}x{d} tau {tau}", T::DTYPE);
                let self_inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
                check(backend, &format!("supcon {what}"), &ContrastiveLoss::supcon(tau, 0.07), &self_inputs, rel, abs);
                if d != 250 {
                    continue; // the other geometries once per temperature
                }
                let pairwise = LossInputs {
                    label: Some(&label),
                    keys: Some(KeyRows { features: &keys, instance: &key_instance, label: Some(&key_label) }),
                    ..LossInputs::new(&x, &instance)
                };
                check(backend, &format!("firm_pairwise {what}"), &ContrastiveLoss::firm_pairwise(tau), &pairwise, rel, abs);
                let protos = LossInputs {
                    label: Some(&label),
                    prototypes: Some(PrototypeColumns { centers: &centers, proto_of: &proto_of }),
                    ..LossInputs::new(&x, &instance)
                };
                check(backend, &format!("cluster_aware {what}"), &ContrastiveLoss::cluster_aware(tau), &protos, rel, abs);
            }
        }
    }
    run::<f16>(&backend, 1e-2, 0.0);
    run::<bf16>(&backend, 1e-2, 0.0);
    run::<f32>(&backend, 1e-4, 1e-6);
}

/// Caller rows that are only element aligned (a frame's buffer at an odd element offset, through
/// the raw API as the C ABI and the Python package pass them): the f16 / bf16 forward copies them
/// into padded rows first (contrastive_pad_*), the backward multiplies S from its own packed rows;
/// both always aligned, no `_unaligned` kernel. Against the oracle, at d = 64 (G = 1) and 300
/// (G = 4, d % 8 != 0).
#[test]
fn gpu_raw_unaligned_rows_match_oracle() {
    use contrastive_kernels::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
    use contrastive_kernels::ops::contrastive::gpu::{
        backward_raw, forward_raw, RawForwardOutputs, RawGradOutputs, RawLossInputs, RawUpstream,
    };
    use contrastive_kernels::DeviceMatrix;
    fn dptr<E>(s: &CudaSlice<E>, stream: &CudaStream) -> u64 {
        s.device_ptr(stream).0
    }
    let Some(gpu) = gpu_or_skip("gpu_raw_unaligned_rows_match_oracle") else { return };
    let stream = gpu.stream();
    for (n, d) in [(70usize, 64usize), (40, 300)] {
        let x: Matrix<bf16> = random_matrix(n, d, 11);
        let instance: Vec<i32> = (0..n as i32).map(|i| i % (n as i32 / 2)).collect();
        let label: Vec<i32> = instance.iter().map(|i| i % 3).collect();
        let loss = ContrastiveLoss::supcon(0.1, 0.07);
        let inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
        let want_fwd = forward(&loss, &inputs).unwrap();
        let want = backward(&loss, &inputs, &[1.0]).unwrap();

        let mut shifted = vec![bf16::from_f64(0.0)];
        shifted.extend_from_slice(x.data());
        let len = shifted.len();
        let dev = DeviceMatrix::upload(&gpu, &Matrix::new(1, len, shifted).unwrap()).unwrap();
        let instance_dev = stream.clone_htod(&instance).unwrap();
        let label_dev = stream.clone_htod(&label).unwrap();
        let loss_dev = stream.alloc_zeros::<f32>(1).unwrap();
        let per_anchor = stream.alloc_zeros::<f32>(n).unwrap();
        let lse = stream.alloc_zeros::<f32>(n).unwrap();
        let positives = stream.alloc_zeros::<i32>(n).unwrap();
        let upstream = stream.clone_htod(&[1.0f32]).unwrap();
        let grad = DeviceMatrix::<bf16>::zeros(&gpu, n, d).unwrap();
        let base = dptr(dev.slice(), stream);
        let raw = RawLossInputs {
            dtype: contrastive_kernels::DType::BF16,
            n,
            d,
            features: base + 2, // 2-byte aligned, not 16
            instance: dptr(&instance_dev, stream),
            label: dptr(&label_dev, stream),
            role: 0,
            weight: 0,
            n_keys: 0,
            keys: 0,
            key_instance: 0,
            key_label: 0,
            n_centers: 0,
            centers: 0,
            proto_of: 0,
            anchor_rows: None,
        };
        let out = RawForwardOutputs {
            loss: dptr(&loss_dev, stream),
            per_anchor: dptr(&per_anchor, stream),
            lse: dptr(&lse, stream),
            positives: dptr(&positives, stream),
        };
        let value = unsafe { forward_raw(&gpu, stream, &loss, &raw, &out) }.unwrap();
        let (value, oracle) = (value as f64, want_fwd.loss as f64);
        assert!((value - oracle).abs() <= 5e-3 * oracle.abs().max(1.0), "{n}x{d} loss {value}, oracle {oracle}");
        let up = RawUpstream { ptr: dptr(&upstream, stream), per_row: false };
        let grads = RawGradOutputs { features: dptr(grad.slice(), stream), keys: 0, prototypes: 0 };
        unsafe { backward_raw(&gpu, stream, &loss, &raw, out.lse, out.positives, up, &grads) }.unwrap();
        let got = grad.download(&gpu).unwrap();
        assert_grad_close(&format!("raw unaligned bf16 {n}x{d} dfeatures"), &got, &want.features, 1e-2, 0.0);
    }
}

/// The backward is bitwise repeatable on each of its kernels' shapes (G = 1, 2, 4 d-groups, one
/// and two exponentials): two runs give the same bits.
#[test]
fn gpu_backward_bitwise_repeatable_across_shapes() {
    let Some(gpu) = gpu_or_skip("gpu_backward_bitwise_repeatable_across_shapes") else { return };
    let backend = Backend::Gpu(gpu);
    fn run<T: FloatElement>(backend: &Backend, n: usize, d: usize, tau: f32) -> Vec<f64> {
        let x: Matrix<T> = random_matrix(n, d, 3);
        let instance: Vec<i32> = (0..n as i32).map(|i| i % (n as i32 / 2)).collect();
        let label: Vec<i32> = instance.iter().map(|i| i % 3).collect();
        let inputs = LossInputs { label: Some(&label), ..LossInputs::new(&x, &instance) };
        let loss = ContrastiveLoss::supcon(tau, 0.07);
        let (_, ctx) = backend.contrastive_forward(&loss, &inputs).unwrap();
        backend.contrastive_backward(&loss, &inputs, ctx, &[1.0]).unwrap().features.data().iter().map(|v| v.to_f64()).collect()
    }
    for (n, d) in [(130usize, 64usize), (70, 200), (40, 320)] {
        for tau in [0.1f32, 0.02] {
            let (a, b) = (run::<bf16>(&backend, n, d, tau), run::<bf16>(&backend, n, d, tau));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "bf16 {n}x{d} tau {tau}");
            let (a, b) = (run::<f32>(&backend, n, d, tau), run::<f32>(&backend, n, d, tau));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "f32 {n}x{d} tau {tau}");
        }
    }
}

/// The fused forward on the device with its launch choices overridden, downloaded.
fn gpu_forward_tuned<T: FloatElement>(
    gpu: &Gpu,
    loss: &ContrastiveLoss,
    inputs: &LossInputs<'_, T>,
    tuning: contrastive_kernels::ops::contrastive::gpu::ForwardTuning,
) -> ForwardResult {
    use common::contrastive_harness::{download, upload_inputs};
    let n = inputs.features.rows();
    let buffers = upload_inputs(gpu, inputs);
    let out = contrastive_kernels::ops::contrastive::gpu::forward_tuned(gpu, loss, &buffers.view(), tuning).unwrap();
    ForwardResult {
        loss: out.loss,
        per_anchor: download(gpu, &out.per_anchor, n),
        lse: download(gpu, &out.saved.lse, n),
        positives: download(gpu, &out.saved.positives, n),
    }
}

fn result_bits(r: &ForwardResult) -> (u32, Vec<u32>, Vec<u32>, Vec<i32>) {
    (r.loss.to_bits(), r.per_anchor.iter().map(|v| v.to_bits()).collect(), r.lse.iter().map(|v| v.to_bits()).collect(), r.positives.clone())
}

/// Every loss kind and dtype under the forward's launch choices: the column sweep in one CTA per
/// row block and split across CTAs (partials merged in split order), the fixed 1/tau offset and the
/// online max, the self geometry's symmetric kernel with groups of 1, 2 and 3 row blocks, on shapes
/// with fewer than 128 rows and with ragged row and column tails. Each agrees with the oracle
/// (DESIGN.md section 7's bounds), and each is bitwise repeatable.
#[test]
fn gpu_forward_splits_and_offsets_match_oracle() {
    use contrastive_kernels::ops::contrastive::gpu::ForwardTuning;
    let Some(gpu) = gpu_or_skip("gpu_forward_splits_and_offsets_match_oracle") else { return };
    let tunings = [
        ForwardTuning { splits: Some(1), symmetric: Some(false), ..Default::default() },
        ForwardTuning { splits: Some(2), symmetric: Some(false), ..Default::default() },
        ForwardTuning { splits: Some(16), symmetric: Some(false), ..Default::default() }, // clamped to the tile count
        ForwardTuning { splits: Some(1), online_max: true, ..Default::default() },
        ForwardTuning { splits: Some(16), online_max: true, ..Default::default() },
        // The self geometry's symmetric kernel (the pairwise case runs the row sweep), even on one
        // row block, with 1, 2 and 3 row blocks per group: 3, 2 (one short) and 1 group(s) of the
        // 3 row blocks of 257 rows.
        ForwardTuning { symmetric: Some(true), sym_group: Some(1), ..Default::default() },
        ForwardTuning { symmetric: Some(true), sym_group: Some(2), ..Default::default() },
        ForwardTuning { symmetric: Some(true), sym_group: Some(3), ..Default::default() },
    ];
    // (rows, d): under one tile; two row blocks with a tail (and 237 keys, 3 column tiles with the
    // prototypes); three row blocks.
    let shapes: &[(usize, usize)] = &[(6, 6), (200, 3), (257, 40)];
    fn check<T: FloatElement>(gpu: &Gpu, shapes: &[(usize, usize)], tunings: &[ForwardTuning], rel: f64) {
        for_each_harness_case::<T>(shapes, &mut |what, loss, inputs| {
            let want = forward(loss, inputs).unwrap();
            for (k, &tuning) in tunings.iter().enumerate() {
                let what = format!("{what} {tuning:?}");
                let got = gpu_forward_tuned(gpu, loss, inputs, tuning);
                assert_forward_close(&what, &got, &want, rel);
                if k == 2 || k == 4 || k == 5 || k == 6 {
                    assert_eq!(result_bits(&got), result_bits(&gpu_forward_tuned(gpu, loss, inputs, tuning)), "{what}: a second run");
                }
            }
        });
    }
    check::<f16>(&gpu, shapes, &tunings, 2e-3);
    check::<bf16>(&gpu, shapes, &tunings, 5e-3);
    check::<f32>(&gpu, shapes, &tunings, 1e-4);
}

/// Temperatures from 0.5 down to below the fixed offset's threshold (tau < 1/40 takes the online
/// max by itself), on SupCon and NT-Xent over two close views, so the positive dominates each
/// row's LSE and the other columns' exponentials lie far below the offset: the fixed offset and
/// the online max both agree with the oracle in every dtype, split or not.
#[test]
fn gpu_forward_temperatures_fixed_and_online_offsets() {
    use contrastive_kernels::ops::contrastive::gpu::{ForwardTuning, FIXED_OFFSET_MAX_INV_TAU};
    let Some(gpu) = gpu_or_skip("gpu_forward_temperatures_fixed_and_online_offsets") else { return };
    let (b, d) = (150usize, 48usize);
    let base: Matrix<f64> = random_matrix(b, d, 80);
    let noise: Matrix<f64> = random_matrix(b, d, 81);
    let x64: Matrix<f64> = Matrix::from_fn(2 * b, d, |i, j| {
        let v = base.data()[(i % b) * d + j];
        if i < b {
            v
        } else {
            v + 0.05 * noise.data()[(i % b) * d + j]
        }
    });
    let instance: Vec<i32> = (0..2 * b as i32).map(|i| i % b as i32).collect();
    let label: Vec<i32> = instance.iter().map(|i| i % 6).collect();
    fn check<T: FloatElement>(gpu: &Gpu, x64: &Matrix<f64>, instance: &[i32], label: &[i32], rel: f64) {
        let x: Matrix<T> = Matrix::from_fn(x64.rows(), x64.cols(), |i, j| T::from_f64(x64.data()[i * x64.cols() + j]));
        for tau in [0.5f32, 0.2, 0.07, 0.05, 0.02] {
            assert_eq!(1.0 / tau <= FIXED_OFFSET_MAX_INV_TAU, tau > 0.025, "the threshold lies between 0.05 and 0.02");
            for (name, loss, inputs) in [
                ("nt_xent", ContrastiveLoss::nt_xent(tau), LossInputs::new(&x, instance)),
                ("supcon", ContrastiveLoss::supcon(tau, 0.07), LossInputs { label: Some(label), ..LossInputs::new(&x, instance) }),
            ] {
                let want = forward(&loss, &inputs).unwrap();
                for tuning in [
                    ForwardTuning::default(),
                    ForwardTuning { splits: Some(1), symmetric: Some(false), ..Default::default() },
                    ForwardTuning { online_max: true, ..Default::default() },
                ] {
                    let got = gpu_forward_tuned(gpu, &loss, &inputs, tuning);
                    assert_forward_close(&format!("{name} {} tau {tau} {tuning:?}", T::DTYPE), &got, &want, rel);
                }
            }
        }
    }
    check::<f16>(&gpu, &x64, &instance, &label, 2e-3);
    check::<bf16>(&gpu, &x64, &instance, &label, 5e-3);
    check::<f32>(&gpu, &x64, &instance, &label, 1e-4);
}

/// The symmetric forward's groups (S row blocks per group, Q groups): one row block per group while
/// the Q x n x 16-byte slots fit 32 MiB (n <= 16384), then the fewest blocks per group that fit,
/// but never fewer than 23 groups (a wave of pairs) where there are that many row blocks.
#[test]
fn forward_sym_groups_bound_the_partials() {
    use contrastive_kernels::ops::contrastive::gpu::forward_sym_groups;
    assert_eq!(forward_sym_groups(8192, 0), (1, 64)); // 2080 pairs, 8 MiB
    assert_eq!(forward_sym_groups(16384, 0), (1, 128)); // 32 MiB exactly
    assert_eq!(forward_sym_groups(16384, 3), (2, 64)); // the prototypes' slot makes 129: over
    assert_eq!(forward_sym_groups(65536, 0), (16, 32)); // 528 pairs, 32 MiB
    assert_eq!(forward_sym_groups(32768, 0), (4, 64));
    assert_eq!(forward_sym_groups(1 << 20, 0), (357, 23)); // 8192 row blocks: 23 groups, 368 MiB
    assert_eq!(forward_sym_groups(300, 0), (1, 3));
    assert_eq!(forward_sym_groups(1, 0), (1, 1));
    for n in [1usize, 129, 1000, 8192, 12345, 65536, 100_000, 300_000] {
        let (s, q) = forward_sym_groups(n, 0);
        let row_blocks = n.div_ceil(128);
        assert!(s >= 1 && (q - 1) * s < row_blocks && q * s >= row_blocks, "n = {n}: {s} x {q}");
        assert!(q >= 23.min(row_blocks), "n = {n}: {q} groups");
        assert!(q * n * 16 <= 32 << 20 || q <= 23, "n = {n}: {} MiB", (q * n * 16) >> 20);
    }
}

/// The column-split choice: whole waves where the grid is short of one (DESIGN.md section 6's
/// bench shapes on 132 SMs), none where row blocks already fill the waves, at most the tile count.
#[test]
fn forward_splits_fill_the_waves() {
    use contrastive_kernels::ops::contrastive::gpu::forward_splits;
    // n = 8192: 64 row blocks x 64 column tiles; 2 blocks per SM: 4 splits, 256 of 264 slots.
    assert_eq!(forward_splits(64, 64, 132, 2), 4);
    assert_eq!(forward_splits(64, 64, 132, 1), 2);
    // n = 65536: 512 row blocks are 97 % of two waves already.
    assert_eq!(forward_splits(512, 512, 132, 2), 1);
    // Tiny problems: as many splits as tiles (one wave either way), never more.
    assert_eq!(forward_splits(3, 3, 132, 2), 3);
    assert_eq!(forward_splits(1, 1, 132, 2), 1);
    // One row block, 100 tiles: 7 tiles per CTA is the best 16 splits can do, and 15 do it.
    assert_eq!(forward_splits(1, 100, 132, 2), 15);
    for (rb, tiles) in [(64, 64), (40, 40), (100, 100), (300, 300), (1, 7)] {
        let s = forward_splits(rb, tiles, 132, 2);
        assert!((1..=tiles.min(16)).contains(&s), "{rb} x {tiles}: {s}");
    }
}
