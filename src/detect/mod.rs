//! The end-to-end one-class detector: train the encoder contrastively on one normal class (two
//! augmented views per image, rotated images as synthetic outliers for the losses that use them),
//! embed the normal training images as the feature bank, score the test split with the kNN scorer
//! ([`knn::knn_scores`], by default in CSI's ensemble over the four rotations,
//! [`knn::rotation_ensemble_scores`]) and report AUROC / AUPR / FPR@95 with every other class as
//! the anomalies. Raw pixels are scored by the same scorer: the baseline the features must beat.
//!
//! Backends, all through the [`Backend`] ([`Backend::mlp`], [`Backend::contrastive_loss_and_gradient`],
//! [`Backend::kmeans`], [`Backend::topk`]): [`Backend::Cpu`] runs everything in the f64 oracle
//! (encoder [`crate::ops::mlp::cpu`], loss [`crate::ops::contrastive::cpu`]); [`Backend::Gpu`]
//! runs the encoder's forward, backward and AdamW on the GPU kernels (f16 compute, f32 master
//! weights) and the loss forward + backward on the fused loss kernels (f32 features, through the
//! host API: features down, gradients up; keeping them on the device is the next step).
//!
//! The batch of one step, for B normal images (row blocks in this order):
//! `view 1 (B) | view 2 (B) | rotated view 1 (B) | rotated view 2 (B)`, the rotated blocks only for
//! the losses that take outliers; a rotated image is its normal image turned by a random multiple
//! of 90 degrees (CSI, OECL, FIRM), then augmented. Instance ids pair the two views of an image.

pub mod knn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::backend::{Backend, MlpTrainer};
use crate::data::{shuffle, Dataset, ImageShape};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::ops::augment::cpu::rotated;
use crate::ops::augment::Augment;
use crate::ops::contrastive::{ContrastiveLoss, LossInputs, PrototypeColumns, RowRole};
use crate::ops::kmeans::KMeansOptions;
use crate::ops::mlp::{AdamW, MlpConfig};
use crate::rng::SplitMix64;

/// Clusters of the cluster-aware loss (at most the batch size).
pub const CLUSTER_AWARE_CLUSTERS: usize = 4;

/// The training loss of the detector (DESIGN.md section 3, in the one-class setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// NT-Xent / InfoNCE over the two views of the normal images (no outliers).
    NtXent,
    /// SupCon with one class: every normal view is a positive of every other; each rotation is
    /// its own class (the shifted images as labelled negatives).
    SupCon,
    /// FIRM: normal views share label 0 (all positives of each other); rotated images carry -1
    /// and pair only with their own other view.
    Firm,
    /// OECL: NT-Xent over the normal views plus alpha x the mean raw norm of the rotated rows
    /// (role NormPenaltyOnly).
    Oecl,
    /// NT-Xent whose denominators also hold the rotated rows (role NegativeOnly).
    OutlierExposure,
    /// Cluster-aware (CCL): each step clusters the batch's outputs (spherical k-means, seeded);
    /// a sample's cluster id is the label of both its views, the cluster centres are prototype
    /// columns (constants of the step), the own centre a positive.
    ClusterAware,
}

impl LossKind {
    pub const ALL: [LossKind; 6] =
        [LossKind::NtXent, LossKind::SupCon, LossKind::Firm, LossKind::Oecl, LossKind::OutlierExposure, LossKind::ClusterAware];

    /// `nt_xent` (also `infonce`, `simclr`), `supcon`, `firm`, `oecl`, `outlier_exposure` (also `oe`),
    /// `cluster_aware` (also `ccl`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "nt_xent" | "ntxent" | "infonce" | "simclr" => Ok(LossKind::NtXent),
            "supcon" => Ok(LossKind::SupCon),
            "firm" => Ok(LossKind::Firm),
            "oecl" => Ok(LossKind::Oecl),
            "outlier_exposure" | "oe" => Ok(LossKind::OutlierExposure),
            "cluster_aware" | "ccl" => Ok(LossKind::ClusterAware),
            other => Err(Error::invalid(
                "loss",
                format!("unknown loss `{other}`; expected nt_xent, supcon, firm, oecl, outlier_exposure or cluster_aware"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LossKind::NtXent => "nt_xent",
            LossKind::SupCon => "supcon",
            LossKind::Firm => "firm",
            LossKind::Oecl => "oecl",
            LossKind::OutlierExposure => "outlier_exposure",
            LossKind::ClusterAware => "cluster_aware",
        }
    }

    /// The reference code's temperatures: CSI / OECL 0.5, FIRM 0.2; SupCon at FIRM's 0.2.
    pub fn default_temperature(self) -> f32 {
        match self {
            LossKind::NtXent | LossKind::Oecl | LossKind::OutlierExposure | LossKind::ClusterAware => 0.5,
            LossKind::SupCon | LossKind::Firm => 0.2,
        }
    }

    /// Whether the batch carries rotated images.
    pub fn uses_outliers(self) -> bool {
        !matches!(self, LossKind::NtXent | LossKind::ClusterAware)
    }
}

/// Everything that defines a run; [`DetectorConfig::digits`] is the README's demo.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    pub loss: LossKind,
    pub temperature: f32,
    /// OECL's alpha (weight of the outliers' mean norm).
    pub oecl_alpha: f32,
    /// SupCon's base temperature (its loss is scaled by temperature / base).
    pub supcon_base_temperature: f32,
    /// Encoder widths: input -> hidden... -> feature -> head...; the feature layer is scored.
    pub hidden: Vec<usize>,
    pub feature: usize,
    pub head: Vec<usize>,
    /// Optimizer steps per normal class.
    pub steps: usize,
    /// Normal images per step (all of them when there are fewer).
    pub batch_size: usize,
    pub adamw: AdamW,
    pub augment: Augment,
    /// The kNN scorer's k (same k for the raw-pixel baseline).
    pub k: usize,
    /// Score the feature layer's output (SimCLR's h, the default) or the head's (`Output`, z:
    /// what the loss sees; CSI scores there).
    pub score_layer: ScoreLayer,
    /// Plain kNN, or CSI's ensemble of it over the four rotations (the same scorer on raw pixels).
    pub scorer: Scorer,
    pub seed: u64,
}

impl DetectorConfig {
    /// The demo's settings for the 8 x 8 digits: a 64 -> 256 (feature) -> 64 -> 32 MLP, 150
    /// full-batch steps, AdamW lr 3e-3, views without shifts ([`Augment::digits`]), kNN with k = 1
    /// in CSI's rotation ensemble. One wide ReLU layer keeps the most of the pixels' geometry
    /// (measured, seed 0, before training, plain kNN: mean AUROC 0.986 for 64 -> 128 -> 64, 0.996
    /// for 64 -> 256, raw pixels 0.997).
    pub fn digits(loss: LossKind) -> Self {
        DetectorConfig {
            loss,
            temperature: loss.default_temperature(),
            oecl_alpha: 0.1,
            supcon_base_temperature: 0.07,
            hidden: vec![],
            feature: 256,
            head: vec![64, 32],
            steps: 150,
            batch_size: 256,
            adamw: AdamW { lr: 3e-3, weight_decay: 1e-4, ..AdamW::default() },
            augment: Augment::digits(),
            k: 1,
            score_layer: ScoreLayer::Feature,
            scorer: Scorer::RotationEnsemble,
            seed: 0,
        }
    }

    /// Larger images (MNIST, CIFAR-10): wider layers, mini-batches.
    pub fn images(loss: LossKind, augment: Augment) -> Self {
        DetectorConfig {
            hidden: vec![512, 256],
            feature: 128,
            head: vec![128, 64],
            steps: 300,
            batch_size: 128,
            augment,
            ..Self::digits(loss)
        }
    }

    pub fn mlp_config(&self, input: usize) -> Result<MlpConfig> {
        MlpConfig::new(input, &self.hidden, self.feature, &self.head)
    }

    /// The configured loss.
    pub fn contrastive_loss(&self) -> ContrastiveLoss {
        let t = self.temperature;
        match self.loss {
            LossKind::NtXent => ContrastiveLoss::nt_xent(t),
            LossKind::SupCon => ContrastiveLoss::supcon(t, self.supcon_base_temperature),
            LossKind::Firm => ContrastiveLoss::firm(t),
            LossKind::Oecl => ContrastiveLoss::oecl(t, self.oecl_alpha),
            LossKind::OutlierExposure => ContrastiveLoss::outlier_exposure(t),
            LossKind::ClusterAware => ContrastiveLoss::cluster_aware(t),
        }
    }

    pub fn validate(&self, shape: ImageShape) -> Result<()> {
        self.mlp_config(shape.len())?;
        self.contrastive_loss().validate()?;
        self.adamw.validate()?;
        self.augment.validate(shape)?;
        if self.steps == 0 {
            return Err(Error::invalid("steps", "at least one training step"));
        }
        if self.batch_size < 2 {
            return Err(Error::invalid("batch_size", format!("at least 2 images (each needs negatives), got {}", self.batch_size)));
        }
        if self.k == 0 {
            return Err(Error::invalid("k", "at least 1"));
        }
        if self.loss.uses_outliers() && shape.height != shape.width {
            return Err(Error::invalid(
                "loss",
                format!("{} rotates images into outliers, which needs square images ({}x{})", self.loss.name(), shape.height, shape.width),
            ));
        }
        if self.scorer == Scorer::RotationEnsemble && shape.height != shape.width {
            return Err(Error::invalid(
                "scorer",
                format!(
                    "the rotation ensemble turns images, which needs square images ({}x{}); use the plain kNN scorer",
                    shape.height, shape.width
                ),
            ));
        }
        Ok(())
    }
}

/// How test images are scored against the bank of normal training images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scorer {
    /// Minus the k-th largest cosine to the bank ([`knn::knn_scores`]).
    Knn,
    /// CSI's ensemble over the shifting transformations: the mean of the kNN score over the four
    /// quarter turns, the bank turned alike ([`knn::rotation_ensemble_scores`]). On raw pixels it
    /// equals the plain kNN score; on an encoder trained with rotated outliers it averages four
    /// different views of the image.
    RotationEnsemble,
}

impl Scorer {
    /// `knn` or `rotations` (also `ensemble`, `csi`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "knn" => Ok(Scorer::Knn),
            "rotations" | "ensemble" | "csi" => Ok(Scorer::RotationEnsemble),
            other => Err(Error::invalid("scorer", format!("unknown scorer `{other}`; expected knn or rotations"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scorer::Knn => "knn",
            Scorer::RotationEnsemble => "rotations",
        }
    }
}

/// Which layer's output the kNN scorer sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreLayer {
    Feature,
    Output,
}

/// One training step's report (for progress bars).
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub class: i32,
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    /// Rows in the contrastive batch (views and outliers).
    pub rows: usize,
}

/// The encoder under training: an [`MlpTrainer`] of the detector's backend (f64 oracle on the
/// CPU; f16 compute, f32 master weights on the GPU).
pub struct Encoder {
    mlp: MlpTrainer,
}

impl Encoder {
    /// A freshly initialised encoder (He-uniform from `seed`) on `backend`.
    pub fn new(backend: &Backend, config: &MlpConfig, seed: u64) -> Result<Self> {
        Ok(Encoder { mlp: backend.mlp(config, seed)? })
    }

    pub fn config(&self) -> &MlpConfig {
        self.mlp.config()
    }

    /// One step: forward, `loss` (value and gradient with respect to the MLP's output), backward,
    /// AdamW. Returns the loss value.
    pub fn train_step(
        &mut self,
        x: &Matrix<f32>,
        hp: &AdamW,
        loss: impl FnOnce(&Matrix<f64>) -> Result<(f64, Matrix<f64>)>,
    ) -> Result<f64> {
        self.mlp.train_step(x, hp, loss)
    }

    /// The feature layer's output for `images` (no augmentation).
    pub fn features(&self, images: &Matrix<f32>) -> Result<Matrix<f32>> {
        self.layer_output(images, self.config().feature_layer)
    }

    /// Layer `layer`'s output (1..=L) for `images`.
    pub fn layer_output(&self, images: &Matrix<f32>, layer: usize) -> Result<Matrix<f32>> {
        self.mlp.layer_output(images, layer)
    }
}

/// The loss inputs of one batch (layout in the module docs) and the loss value and gradient with
/// respect to the batch's features `z`: the fused loss kernels on a GPU backend (f32 features), the
/// f64 oracle on the CPU.
pub fn batch_loss(
    backend: &Backend,
    cfg: &DetectorConfig,
    z: &Matrix<f64>,
    normals: usize,
    rotations: &[u32],
) -> Result<(f64, Matrix<f64>)> {
    let b = normals;
    let outliers = rotations.len();
    let rows = 2 * b + 2 * outliers;
    if z.rows() != rows {
        return Err(Error::shape("z", format!("{rows} rows (2 x {b} views + 2 x {outliers} rotated views)"), format!("{} rows", z.rows())));
    }
    let mut instance: Vec<i32> = Vec::with_capacity(rows);
    for _ in 0..2 {
        instance.extend(0..b as i32);
    }
    for _ in 0..2 {
        instance.extend((b as i32)..(b + outliers) as i32);
    }
    let label: Option<Vec<i32>> = match cfg.loss {
        LossKind::SupCon => Some([vec![0; 2 * b], rotations.iter().chain(rotations).map(|&r| r as i32).collect()].concat()),
        LossKind::Firm => Some([vec![0; 2 * b], vec![-1; 2 * outliers]].concat()),
        _ => None,
    };
    let role: Option<Vec<RowRole>> = match cfg.loss {
        LossKind::Oecl => Some([vec![RowRole::Anchor; 2 * b], vec![RowRole::NormPenaltyOnly; 2 * outliers]].concat()),
        LossKind::OutlierExposure => Some([vec![RowRole::Anchor; 2 * b], vec![RowRole::NegativeOnly; 2 * outliers]].concat()),
        _ => None,
    };
    // Cluster-aware: spherical k-means of the view-1 outputs (seeded by the batch size, so a run
    // stays deterministic); both views of a sample take its cluster.
    let clusters = match cfg.loss {
        LossKind::ClusterAware => {
            let view1 = Matrix::from_fn(b, z.cols(), |i, j| *z.get(i, j) as f32);
            let k = CLUSTER_AWARE_CLUSTERS.min(b);
            let km = backend.kmeans(&view1, &KMeansOptions::new(k).seed(b as u64))?;
            Some((km.centroids.cast::<f64>(), [km.assignment.clone(), km.assignment].concat()))
        }
        _ => None,
    };
    let label = match &clusters {
        Some((_, ids)) => Some(ids.clone()),
        None => label,
    };
    let loss = cfg.contrastive_loss();
    let mut inputs = LossInputs::new(z, &instance);
    inputs.label = label.as_deref();
    inputs.role = role.as_deref();
    inputs.prototypes = clusters.as_ref().map(|(centers, ids)| PrototypeColumns { centers, proto_of: ids });
    backend.contrastive_loss_and_gradient(&loss, &inputs)
}

/// Trains an encoder on the images of one normal class (`normal`, rows of `shape`).
pub fn train_one_class(
    backend: &Backend,
    cfg: &DetectorConfig,
    shape: ImageShape,
    normal: &Matrix<f32>,
    class: i32,
    progress: &(dyn Fn(&StepInfo) + Sync),
) -> Result<Encoder> {
    cfg.validate(shape)?;
    if normal.rows() < 2 {
        return Err(Error::invalid("normal", format!("class {class} has {} training images; at least 2 are needed", normal.rows())));
    }
    if normal.cols() != shape.len() {
        return Err(Error::shape("normal", format!("{} columns", shape.len()), format!("{} x {}", normal.rows(), normal.cols())));
    }
    let class_seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (class as u64).wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut rng = SplitMix64::new(class_seed);
    let mut encoder = Encoder::new(backend, &cfg.mlp_config(shape.len())?, rng.next_u64())?;
    let mut order: Vec<usize> = (0..normal.rows()).collect();
    let b = cfg.batch_size.min(normal.rows());
    let mut cursor = normal.rows(); // forces a shuffle before the first mini-batch
    for step in 1..=cfg.steps {
        let idx: Vec<usize> = if b == normal.rows() {
            order.clone()
        } else {
            if cursor + b > order.len() {
                shuffle(&mut order, &mut rng);
                cursor = 0;
            }
            cursor += b;
            order[cursor - b..cursor].to_vec()
        };
        let v1 = cfg.augment.views(shape, normal, &idx, &mut rng)?;
        let v2 = cfg.augment.views(shape, normal, &idx, &mut rng)?;
        let mut blocks = vec![v1, v2];
        let rotations: Vec<u32> = if cfg.loss.uses_outliers() {
            let rotations: Vec<u32> = (0..b).map(|_| 1 + rng.below(3) as u32).collect();
            let turned = rotated(shape, normal, &idx, &rotations)?;
            let all: Vec<usize> = (0..b).collect();
            blocks.push(cfg.augment.views(shape, &turned, &all, &mut rng)?);
            blocks.push(cfg.augment.views(shape, &turned, &all, &mut rng)?);
            rotations
        } else {
            Vec::new()
        };
        let rows = blocks.iter().map(Matrix::rows).sum();
        let data: Vec<f32> = blocks.into_iter().flat_map(Matrix::into_vec).collect();
        let x = Matrix::new(rows, shape.len(), data)?;
        let loss = encoder.train_step(&x, &cfg.adamw, |z| batch_loss(backend, cfg, z, b, &rotations))?;
        if !loss.is_finite() {
            return Err(Error::invalid("adamw", format!("class {class}: the loss became {loss} at step {step}; lower the learning rate")));
        }
        progress(&StepInfo { class, step, steps: cfg.steps, loss, rows });
    }
    Ok(encoder)
}

/// AUROC, AUPR (anomalies positive) and FPR@95 of one score vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub auroc: f64,
    pub aupr: f64,
    pub fpr95: f64,
}

impl Metrics {
    pub fn of(scores: &[f64], is_anomaly: &[bool]) -> Result<Self> {
        if scores.len() != is_anomaly.len() {
            return Err(Error::shape("is_anomaly", format!("{} entries (one per score)", scores.len()), format!("{}", is_anomaly.len())));
        }
        let pick =
            |anomalous: bool| -> Vec<f64> { scores.iter().zip(is_anomaly).filter(|(_, &a)| a == anomalous).map(|(s, _)| *s).collect() };
        let report = crate::metrics::report(&pick(false), &pick(true))?;
        Ok(Metrics { auroc: report.auroc, aupr: report.aupr, fpr95: report.fpr_at_95_tpr })
    }

    /// The mean of each metric.
    pub fn mean(all: &[Metrics]) -> Metrics {
        let n = all.len().max(1) as f64;
        Metrics {
            auroc: all.iter().map(|m| m.auroc).sum::<f64>() / n,
            aupr: all.iter().map(|m| m.aupr).sum::<f64>() / n,
            fpr95: all.iter().map(|m| m.fpr95).sum::<f64>() / n,
        }
    }
}

/// The outcome for one normal class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassResult {
    pub class: i32,
    /// The trained encoder's feature layer, kNN-scored.
    pub trained: Metrics,
    /// Raw pixels, scored by the same scorer and k: the baseline the features must beat.
    pub raw_pixels: Metrics,
    pub final_loss: f64,
    pub train_images: usize,
    pub test_normal: usize,
    pub test_anomalies: usize,
    pub train_seconds: f64,
}

/// Trains on `class` of `train`, scores all of `test` (anomaly = any other class).
pub fn evaluate_one_class(
    backend: &Backend,
    cfg: &DetectorConfig,
    train: &Dataset,
    test: &Dataset,
    class: i32,
    progress: &(dyn Fn(&StepInfo) + Sync),
) -> Result<ClassResult> {
    if train.shape != test.shape {
        return Err(Error::invalid("test", format!("image shape {:?} differs from the training set's {:?}", test.shape, train.shape)));
    }
    let normal = train.subset(&train.indices_of(class)).images;
    // The bank is the class's training rows: a k above it is refused before training, never
    // clamped, so no result is reported for a k that was not used.
    if cfg.k > normal.rows() {
        return Err(Error::invalid(
            "k",
            format!("{} exceeds the bank size {} (class {class}'s training rows); use k <= {}", cfg.k, normal.rows(), normal.rows()),
        ));
    }
    let is_anomaly: Vec<bool> = test.labels.iter().map(|&l| l != class).collect();
    let start = Instant::now();
    let last_loss = Mutex::new(f64::NAN);
    let record = |info: &StepInfo| {
        *last_loss.lock().unwrap_or_else(|p| p.into_inner()) = info.loss;
        progress(info);
    };
    let encoder = train_one_class(backend, cfg, train.shape, &normal, class, &record)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let k = cfg.k;
    let layer = match cfg.score_layer {
        ScoreLayer::Feature => encoder.config().feature_layer,
        ScoreLayer::Output => encoder.config().layers(),
    };
    let embed = |images: &Matrix<f32>| encoder.layer_output(images, layer);
    let raw = |images: &Matrix<f32>| Ok(images.clone());
    let score = |embed: &dyn Fn(&Matrix<f32>) -> Result<Matrix<f32>>| match cfg.scorer {
        Scorer::Knn => knn::knn_scores(backend, &embed(&normal)?, &embed(&test.images)?, k),
        Scorer::RotationEnsemble => knn::rotation_ensemble_scores(backend, train.shape, &normal, &test.images, k, embed),
    };
    let trained_scores = score(&embed)?;
    let raw_scores = score(&raw)?;
    let test_anomalies = is_anomaly.iter().filter(|a| **a).count();
    Ok(ClassResult {
        class,
        trained: Metrics::of(&trained_scores, &is_anomaly)?,
        raw_pixels: Metrics::of(&raw_scores, &is_anomaly)?,
        final_loss: last_loss.into_inner().unwrap_or_else(|p| p.into_inner()),
        train_images: normal.rows(),
        test_normal: is_anomaly.len() - test_anomalies,
        test_anomalies,
        train_seconds,
    })
}

/// [`evaluate_one_class`] for every class of `classes`, results in that order. The CPU backend
/// trains `threads` classes at once (each class's run is seeded on its own, so the results do
/// not depend on `threads`); the GPU backend trains them one after the other.
pub fn evaluate(
    backend: &Backend,
    cfg: &DetectorConfig,
    train: &Dataset,
    test: &Dataset,
    classes: &[i32],
    threads: usize,
    progress: &(dyn Fn(&StepInfo) + Sync),
) -> Result<Vec<ClassResult>> {
    cfg.validate(train.shape)?;
    if let Some(&c) = classes.iter().find(|&&c| c < 0 || c as usize >= train.classes) {
        return Err(Error::invalid("classes", format!("class {c} is not in 0..{}", train.classes)));
    }
    let threads = if matches!(backend, Backend::Cpu) { threads.clamp(1, classes.len().max(1)) } else { 1 };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<ClassResult>>>> = Mutex::new(classes.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= classes.len() {
                    break;
                }
                let r = evaluate_one_class(backend, cfg, train, test, classes[i], progress);
                let failed = r.is_err();
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                if failed {
                    next.store(classes.len(), Ordering::Relaxed); // stop handing out work
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    // The first error in class order, else every result.
    let mut out = Vec::with_capacity(classes.len());
    for r in results {
        match r {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_round_trip() {
        for kind in LossKind::ALL {
            assert_eq!(LossKind::parse(kind.name()).unwrap(), kind);
        }
        assert_eq!(LossKind::parse("InfoNCE").unwrap(), LossKind::NtXent);
        assert_eq!(LossKind::parse("oe").unwrap(), LossKind::OutlierExposure);
        assert!(matches!(LossKind::parse("triplet"), Err(Error::InvalidArgument { arg: "loss", .. })));
    }

    /// Cluster-aware: the batch's labels and prototypes are the spherical k-means of the view-1
    /// outputs (both views of a sample in its cluster), and the loss is the oracle's on them.
    #[test]
    fn cluster_aware_batch() {
        let mut rng = SplitMix64::new(5);
        let b = 6;
        let z = Matrix::from_fn(2 * b, 3, |_, _| rng.normal());
        let cfg = DetectorConfig::digits(LossKind::ClusterAware);
        let (value, grad) = batch_loss(&Backend::Cpu, &cfg, &z, b, &[]).unwrap();
        assert_eq!((grad.rows(), grad.cols()), (2 * b, 3));
        let view1 = Matrix::from_fn(b, 3, |i, j| *z.get(i, j) as f32);
        let km = crate::ops::kmeans::cpu::kmeans(&view1, &KMeansOptions::new(CLUSTER_AWARE_CLUSTERS).seed(b as u64)).unwrap();
        let ids = [km.assignment.clone(), km.assignment.clone()].concat();
        let centers = km.centroids.cast::<f64>();
        let instance: Vec<i32> = (0..2 * b).map(|i| (i % b) as i32).collect();
        let inputs = LossInputs {
            label: Some(&ids),
            prototypes: Some(PrototypeColumns { centers: &centers, proto_of: &ids }),
            ..LossInputs::new(&z, &instance)
        };
        let want = crate::ops::contrastive::cpu::forward(&ContrastiveLoss::cluster_aware(0.5), &inputs).unwrap().loss;
        assert!((value - want).abs() <= 1e-12 * want.abs().max(1.0), "{value} vs {want}");
        assert!(ids.iter().all(|&c| (0..CLUSTER_AWARE_CLUSTERS as i32).contains(&c)));
    }

    /// The batch layout gives each loss the roles the module docs describe: checked through the
    /// loss values of a tiny batch against direct oracle calls.
    #[test]
    fn batch_roles_per_loss() {
        let mut rng = SplitMix64::new(3);
        let z = Matrix::from_fn(8, 4, |_, _| rng.normal());
        let rotations = [1u32, 3];
        for kind in LossKind::ALL {
            let cfg = DetectorConfig::digits(kind);
            let rows = if kind.uses_outliers() { 8 } else { 4 };
            let zk = Matrix::from_fn(rows, 4, |i, j| *z.get(i, j));
            let rot: &[u32] = if kind.uses_outliers() { &rotations } else { &[] };
            let (value, grad) = batch_loss(&Backend::Cpu, &cfg, &zk, 2, rot).unwrap();
            assert_eq!((grad.rows(), grad.cols()), (rows, 4));
            let instance: Vec<i32> = if kind.uses_outliers() { vec![0, 1, 0, 1, 2, 3, 2, 3] } else { vec![0, 1, 0, 1] };
            let loss = cfg.contrastive_loss();
            let mut inputs = LossInputs::new(&zk, &instance);
            let (label, role);
            match kind {
                LossKind::SupCon => {
                    label = vec![0, 0, 0, 0, 1, 3, 1, 3];
                    inputs.label = Some(&label);
                }
                LossKind::Firm => {
                    label = vec![0, 0, 0, 0, -1, -1, -1, -1];
                    inputs.label = Some(&label);
                }
                LossKind::Oecl => {
                    role = [[RowRole::Anchor; 4], [RowRole::NormPenaltyOnly; 4]].concat();
                    inputs.role = Some(&role);
                }
                LossKind::OutlierExposure => {
                    role = [[RowRole::Anchor; 4], [RowRole::NegativeOnly; 4]].concat();
                    inputs.role = Some(&role);
                }
                LossKind::NtXent => {}
                // Its labels and prototypes come from k-means: checked by `cluster_aware_batch`.
                LossKind::ClusterAware => continue,
            }
            let want = crate::ops::contrastive::cpu::forward(&loss, &inputs).unwrap().loss;
            assert_eq!(value, want, "{kind:?}");
        }
        let cfg = DetectorConfig::digits(LossKind::Firm);
        assert!(matches!(batch_loss(&Backend::Cpu, &cfg, &z, 3, &rotations), Err(Error::Shape { arg: "z", .. })));
    }

    #[test]
    fn config_errors_name_the_argument() {
        let shape = ImageShape::new(1, 8, 8);
        DetectorConfig::digits(LossKind::Firm).validate(shape).unwrap();
        let bad = DetectorConfig { steps: 0, ..DetectorConfig::digits(LossKind::Firm) };
        assert!(matches!(bad.validate(shape), Err(Error::InvalidArgument { arg: "steps", .. })));
        let bad = DetectorConfig { temperature: 0.0, ..DetectorConfig::digits(LossKind::Firm) };
        assert!(matches!(bad.validate(shape), Err(Error::InvalidArgument { arg: "temperature", .. })));
        let rect = ImageShape::new(1, 8, 4);
        assert!(matches!(DetectorConfig::digits(LossKind::Firm).validate(rect), Err(Error::InvalidArgument { arg: "loss", .. })));
        let nt_xent = DetectorConfig { augment: Augment::identity(), ..DetectorConfig::digits(LossKind::NtXent) };
        assert!(matches!(nt_xent.validate(rect), Err(Error::InvalidArgument { arg: "scorer", .. })));
        DetectorConfig { scorer: Scorer::Knn, ..nt_xent }.validate(rect).unwrap();
        for scorer in [Scorer::Knn, Scorer::RotationEnsemble] {
            assert_eq!(Scorer::parse(scorer.name()).unwrap(), scorer);
        }
        assert!(matches!(Scorer::parse("lof"), Err(Error::InvalidArgument { arg: "scorer", .. })));
    }

    #[test]
    fn k_above_the_bank_is_refused_before_training() {
        let shape = ImageShape::new(1, 4, 4);
        let images = Matrix::from_fn(6, 16, |i, j| ((i * 16 + j) % 7) as f32 / 7.0);
        let data = Dataset::new("tiny", shape, images, vec![0, 0, 0, 1, 1, 1], 2).unwrap();
        let cfg = DetectorConfig { k: 4, scorer: Scorer::Knn, ..DetectorConfig::digits(LossKind::SupCon) };
        let trained = std::sync::atomic::AtomicBool::new(false);
        let progress = |_: &StepInfo| trained.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = evaluate_one_class(&Backend::Cpu, &cfg, &data, &data, 0, &progress).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument { arg: "k", .. }), "{err}");
        assert!(err.to_string().contains("bank size 3"), "{err}");
        assert!(!trained.load(std::sync::atomic::Ordering::Relaxed), "refused before any training step");
    }

    #[test]
    fn training_lowers_the_loss_and_is_seeded() {
        // Two tiny "classes" of 4 x 4 images; a few steps must lower the loss, and the same seed
        // must give the same encoder.
        let shape = ImageShape::new(1, 4, 4);
        let mut rng = SplitMix64::new(1);
        let normal = Matrix::from_fn(12, 16, |i, j| if (j + i) % 3 == 0 { 0.8 } else { 0.1 * rng.uniform() as f32 });
        let cfg = DetectorConfig {
            hidden: vec![16],
            feature: 8,
            head: vec![8],
            steps: 40,
            adamw: AdamW { lr: 1e-2, ..AdamW::default() },
            ..DetectorConfig::digits(LossKind::Firm)
        };
        let losses = Mutex::new(Vec::new());
        let enc = train_one_class(&Backend::Cpu, &cfg, shape, &normal, 0, &|s: &StepInfo| losses.lock().unwrap().push(s.loss)).unwrap();
        let losses = losses.into_inner().unwrap();
        assert_eq!(losses.len(), 40);
        let (first, last) = (losses[..5].iter().sum::<f64>() / 5.0, losses[35..].iter().sum::<f64>() / 5.0);
        assert!(last < first - 0.1, "loss {first} -> {last}");
        let again = train_one_class(&Backend::Cpu, &cfg, shape, &normal, 0, &|_: &StepInfo| {}).unwrap();
        assert_eq!(enc.features(&normal).unwrap(), again.features(&normal).unwrap());
        let other = train_one_class(&Backend::Cpu, &cfg, shape, &normal, 1, &|_: &StepInfo| {}).unwrap();
        assert_ne!(enc.features(&normal).unwrap(), other.features(&normal).unwrap(), "each class has its own seed");
    }
}
