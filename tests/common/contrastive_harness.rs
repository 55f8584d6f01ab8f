//! The contrastive loss's GPU harness, shared by the test binaries that check a GPU path against
//! the f64 oracle: one small case per loss kind, tiled over shapes that hit every tail, and the
//! upload of host inputs to the device-buffer API.

use contrastive_kernels::cudarc::driver::CudaSlice;
use contrastive_kernels::ops::contrastive::gpu::DeviceLossBuffers;
use contrastive_kernels::ops::contrastive::{ContrastiveLoss, EmptyPositives, KeyRows, LossInputs, PrototypeColumns, RowRole};
use contrastive_kernels::{FloatElement, Gpu, Matrix};

use super::{on_emulator, random_matrix};

/// Pairwise keys: features, instance ids, labels.
pub type Keys = (Matrix<f64>, Vec<i32>, Option<Vec<i32>>);

/// One small batch of one loss kind; the harness tiles its ids over larger shapes.
pub struct Case {
    pub name: &'static str,
    pub loss: ContrastiveLoss,
    pub features: Matrix<f64>,
    pub instance: Vec<i32>,
    pub label: Option<Vec<i32>>,
    pub role: Option<Vec<RowRole>>,
    pub weight: Option<Vec<f32>>,
    pub keys: Option<Keys>,
    pub protos: Option<(Matrix<f64>, Vec<i32>)>,
    /// Self geometry: only the first rows are anchors (the harness scales it with the rows).
    pub anchor_rows: Option<usize>,
}

impl Case {
    /// The case's inputs with `features` (and keys, centers) in place of its own, for perturbations.
    pub fn inputs<'a>(
        &'a self,
        features: &'a Matrix<f64>,
        keys: Option<&'a Matrix<f64>>,
        centers: Option<&'a Matrix<f64>>,
    ) -> LossInputs<'a, f64> {
        LossInputs {
            features,
            instance: &self.instance,
            label: self.label.as_deref(),
            role: self.role.as_deref(),
            weight: self.weight.as_deref(),
            keys: self.keys.as_ref().map(|(_, i, l)| KeyRows { features: keys.unwrap(), instance: i, label: l.as_deref() }),
            prototypes: self.protos.as_ref().map(|(_, p)| PrototypeColumns { centers: centers.unwrap(), proto_of: p }),
            anchor_rows: self.anchor_rows,
        }
    }
}

/// Every loss kind of DESIGN.md section 3.
pub fn cases() -> Vec<Case> {
    let x = |rows, seed| random_matrix::<f64>(rows, 6, seed);
    let base = |name, loss, rows: usize, instance: Vec<i32>| Case {
        name,
        loss,
        features: x(rows, rows as u64 + 11),
        instance,
        label: None,
        role: None,
        weight: None,
        keys: None,
        protos: None,
        anchor_rows: None,
    };
    vec![
        base("nt_xent", ContrastiveLoss::nt_xent(0.5), 6, vec![0, 1, 2, 0, 1, 2]),
        base("nt_xent_shifted", ContrastiveLoss::nt_xent(0.5), 8, vec![0, 1, 2, 3, 0, 1, 2, 3]),
        Case { label: Some(vec![0, 1, 0, 0, 1, 0]), ..base("supcon", ContrastiveLoss::supcon(0.1, 0.07), 6, vec![0, 1, 2, 0, 1, 2]) },
        Case { label: Some(vec![0, -1, 0, 0, -1, 0]), ..base("firm", ContrastiveLoss::firm(0.2), 6, vec![0, 1, 2, 0, 1, 2]) },
        Case {
            label: Some(vec![0, -1, 0]),
            keys: Some((x(5, 99), vec![0, 1, 2, 7, 8], Some(vec![0, -1, 0, 1, -1]))),
            ..base("firm_pairwise_queue", ContrastiveLoss::firm_pairwise(0.2), 3, vec![0, 1, 2])
        },
        Case {
            role: Some(vec![
                RowRole::Anchor,
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
                RowRole::Anchor,
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
            ]),
            ..base("oecl", ContrastiveLoss::oecl(0.5, 0.1), 6, vec![0, 1, 9, 0, 1, 9])
        },
        Case {
            role: Some(vec![
                RowRole::Anchor,
                RowRole::NegativeOnly,
                RowRole::Anchor,
                RowRole::Anchor,
                RowRole::NegativeOnly,
                RowRole::Anchor,
            ]),
            ..base("outlier_exposure", ContrastiveLoss::outlier_exposure(0.5), 6, vec![0, 5, 2, 0, 6, 2])
        },
        Case {
            label: Some(vec![0, 1, 0, 0, 1, 1]),
            protos: Some((x(3, 77), vec![0, 1, 0, 0, 1, -1])),
            ..base("cluster_aware", ContrastiveLoss::cluster_aware(0.5), 6, vec![0, 1, 2, 0, 1, 2])
        },
        Case {
            weight: Some(vec![0.5, 1.0, 2.0, 0.0, 1.5, 1.0]),
            loss: ContrastiveLoss::nt_xent(0.5).with_empty_positives(EmptyPositives::Zero),
            ..base("weighted_with_empty_anchor", ContrastiveLoss::nt_xent(0.5), 6, vec![0, 1, 2, 0, 1, 9])
        },
        // One process's share of a batch split over several (its rows first): 4 of 6 rows anchors.
        Case { anchor_rows: Some(4), ..base("nt_xent_anchor_rows", ContrastiveLoss::nt_xent(0.5), 6, vec![0, 1, 2, 0, 1, 2]) },
        // With prototypes, labels, a negative-only row and weights: 5 of 6 rows anchors.
        Case {
            label: Some(vec![0, 1, 0, 0, 1, 1]),
            protos: Some((x(3, 78), vec![0, 1, 0, 0, 1, -1])),
            role: Some(vec![RowRole::Anchor, RowRole::NegativeOnly, RowRole::Anchor, RowRole::Anchor, RowRole::Anchor, RowRole::Anchor]),
            weight: Some(vec![1.0, 1.0, 0.5, 2.0, 1.0, 1.0]),
            anchor_rows: Some(5),
            ..base("cluster_aware_anchor_rows", ContrastiveLoss::cluster_aware(0.5), 6, vec![0, 1, 2, 0, 1, 2])
        },
    ]
}

/// Mixtures the GPU harness does not need, for the CPU-only gradient checks (finite differences,
/// the backward model): pairwise with prototypes, a queue and weights; mixed roles.
pub fn gradient_only_cases() -> Vec<Case> {
    let x = |rows, seed| random_matrix::<f64>(rows, 5, seed);
    vec![
        // Pairwise with prototypes, a queue and weights: gradients for all three inputs at once.
        Case {
            name: "pairwise_prototypes_weighted",
            loss: ContrastiveLoss::firm_pairwise(0.3),
            features: x(4, 31),
            instance: vec![0, 1, 2, 3],
            label: Some(vec![0, 1, 0, -1]),
            role: None,
            weight: Some(vec![1.0, 0.25, 2.0, 0.5]),
            keys: Some((x(6, 32), vec![0, 1, 2, 3, 10, 11], Some(vec![0, 1, 0, -1, 1, -1]))),
            protos: Some((x(2, 33), vec![0, 1, 0, -1])),
            anchor_rows: None,
        },
        // SupCon with an outlier whose instance is unique (empty positives, Zero) next to
        // NegativeOnly and NormPenaltyOnly rows, weighted.
        Case {
            name: "supcon_mixed_roles",
            loss: ContrastiveLoss { norm_penalty: 0.7, ..ContrastiveLoss::supcon(0.2, 0.07).with_empty_positives(EmptyPositives::Zero) },
            features: x(7, 34),
            instance: vec![0, 1, 2, 0, 1, 5, 6],
            label: Some(vec![0, 1, 0, 0, 1, -1, 1]),
            role: Some(vec![
                RowRole::Anchor,
                RowRole::Anchor,
                RowRole::NegativeOnly,
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
            ]),
            weight: Some(vec![1.5, 1.0, 3.0, 0.5, 1.0, 2.0, 1.0]),
            keys: None,
            protos: None,
            anchor_rows: None,
        },
        // OECL's penalty rows and a negative-only row, split as a process's share: the first 3 of
        // 7 rows anchors (a penalty row among them, one after them).
        Case {
            name: "oecl_anchor_rows",
            loss: ContrastiveLoss::oecl(0.4, 0.3).with_empty_positives(EmptyPositives::Zero),
            features: x(7, 35),
            instance: vec![0, 1, 2, 0, 1, 2, 3],
            label: None,
            role: Some(vec![
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
                RowRole::Anchor,
                RowRole::Anchor,
                RowRole::NegativeOnly,
                RowRole::Anchor,
                RowRole::NormPenaltyOnly,
            ]),
            weight: None,
            keys: None,
            protos: None,
            anchor_rows: Some(3),
        },
    ]
}

/// The harness's (rows, d): rows not a multiple of the tiles, d in {3, 6, 64, 128, 200, 512}.
pub const SHAPES: &[(usize, usize)] = &[(6, 6), (200, 3), (300, 64), (130, 200), (257, 128), (70, 512)];

/// The harness's shapes on the CPU emulator: still a row tail in every tile, d below 8 (3, 6: the
/// padded rows), one whole d chunk of the backward (128) and several with a tail (200); without
/// the longest rows (512) and the largest n (300), which cost it the most.
pub const EMULATOR_SHAPES: &[(usize, usize)] = &[(6, 6), (200, 3), (130, 200), (257, 128)];

/// [`EMULATOR_SHAPES`] when `gpu` is the CPU emulator, else [`SHAPES`] (a GPU, or the CPU backend).
pub fn shapes_for(gpu: Option<&Gpu>) -> &'static [(usize, usize)] {
    if gpu.is_some_and(on_emulator) {
        EMULATOR_SHAPES
    } else {
        SHAPES
    }
}

/// Runs `check` over every loss kind on `shapes` (normally [`SHAPES`] or [`shapes_for`]'s), with
/// inputs rounded to `T`.
pub fn for_each_harness_case<T: FloatElement>(
    shapes: &[(usize, usize)],
    check: &mut dyn FnMut(&str, &ContrastiveLoss, &LossInputs<'_, T>),
) {
    for &(rows, d) in shapes {
        for case in cases() {
            // Tile the small case's ids over `rows` rows so every shape has positives.
            let base_n = case.features.rows();
            let reps = rows / base_n.max(1) + 1;
            let n = base_n * reps;
            let tile = |v: &[i32], offset: i32| -> Vec<i32> {
                (0..n).map(|i| if v[i % base_n] < 0 { v[i % base_n] } else { v[i % base_n] + offset * (i / base_n) as i32 }).collect()
            };
            let instance = tile(&case.instance, 100);
            let label = case.label.as_ref().map(|l| tile(l, 0));
            let role: Option<Vec<RowRole>> = case.role.as_ref().map(|r| (0..n).map(|i| r[i % base_n]).collect());
            let weight: Option<Vec<f32>> = case.weight.as_ref().map(|w| (0..n).map(|i| w[i % base_n]).collect());
            let x: Matrix<T> = random_matrix(n, d, (rows * d) as u64);
            let keys_x: Option<Matrix<T>> = case.keys.as_ref().map(|_| random_matrix(n + 37, d, 5));
            let key_instance: Vec<i32> = (0..n as i32 + 37).map(|i| if i < n as i32 { instance[i as usize] } else { 10_000 + i }).collect();
            let key_label: Option<Vec<i32>> = label.as_ref().map(|l| (0..n + 37).map(|i| if i < n { l[i] } else { -1 }).collect());
            let centers: Option<Matrix<T>> = case.protos.as_ref().map(|_| random_matrix(5, d, 6));
            let proto_of: Option<Vec<i32>> = case.protos.as_ref().map(|(_, p)| (0..n).map(|i| p[i % base_n]).collect());
            let inputs = LossInputs {
                features: &x,
                instance: &instance,
                label: label.as_deref(),
                role: role.as_deref(),
                weight: weight.as_deref(),
                keys: keys_x.as_ref().map(|k| KeyRows { features: k, instance: &key_instance, label: key_label.as_deref() }),
                prototypes: centers.as_ref().map(|c| PrototypeColumns { centers: c, proto_of: proto_of.as_deref().unwrap() }),
                // Scaled with the rows, so that it cuts row blocks off their boundaries.
                anchor_rows: case.anchor_rows.map(|m| (m * n / base_n).max(1)),
            };
            check(&format!("{} {} {n}x{d}", case.name, T::DTYPE), &case.loss, &inputs);
        }
    }
}

/// Host inputs on the device (the library's own upload), unwrapped for tests.
pub fn upload_inputs<T: FloatElement>(gpu: &Gpu, inputs: &LossInputs<'_, T>) -> DeviceLossBuffers<T> {
    DeviceLossBuffers::upload(gpu, inputs).unwrap()
}

pub fn upload_slice<E: contrastive_kernels::cudarc::driver::DeviceRepr + contrastive_kernels::cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    v: &[E],
) -> CudaSlice<E> {
    if v.is_empty() {
        gpu.stream().alloc_zeros::<E>(1).unwrap()
    } else {
        gpu.stream().clone_htod(v).unwrap()
    }
}

pub fn download<E: contrastive_kernels::cudarc::driver::DeviceRepr>(gpu: &Gpu, s: &CudaSlice<E>, len: usize) -> Vec<E> {
    let mut v = gpu.stream().clone_dtoh(s).unwrap();
    v.truncate(len);
    v
}

/// max |got - want| <= rel * max |want| + abs (DESIGN.md section 7's gradient bound), elementwise report.
pub fn assert_grad_close<T: FloatElement>(what: &str, got: &Matrix<T>, want: &Matrix<f64>, rel: f64, abs: f64) {
    assert_eq!((got.rows(), got.cols()), (want.rows(), want.cols()), "{what}: shape");
    let scale = want.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (k, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        let g = g.to_f64();
        assert!((g - w).abs() <= rel * scale + abs, "{what}: [{}, {}] = {g} vs {w} (max |grad| {scale})", k / want.cols(), k % want.cols());
    }
}
