//! The detector's quality check on the shipped digits (CPU backend, fixed seeds): the README's
//! demo (`--data digits`, SupCon with one class, CSI's rotation-ensemble kNN scorer) for all ten
//! normal classes.
//!
//! The bar: the trained encoder's features beat raw pixels scored by the same kNN scorer.
//! The scorer is the mean of the k = 1 kNN score over the four quarter turns of image and bank
//! (`detect::knn::rotation_ensemble_scores`); rotations permute pixels, so on raw pixels it is
//! exactly plain kNN (tested in `src/detect/knn.rs`). What this test asserts, each bound able to
//! fail:
//! * the raw-pixel baseline is the value measured when it was written (it pins the split, the
//!   loader and the scorer: 0.9972 +- 5e-4);
//! * the trained features beat it by at least 0.0005 in mean one-class AUROC (measured: 0.99786
//!   against 0.99716, +0.0007);
//! * the win comes from training, not from the ensemble: the same encoder after one step at
//!   lr 1e-9 (its initialisation) is at least 0.0005 below the trained one (measured: 0.9970);
//! * training lowered the loss of every class.
//!
//! The margin is small and depends on the split: the demo's `--seed 1`, `2`, `3` (other splits)
//! measured +0.0002, +0.0011 and -0.0004 (README, "Detector"). Raw-pixel kNN on 8 x 8 digits is
//! already at 0.997; this pins the seed-0 result, not a claim for every split.

use std::sync::Mutex;
use std::time::Instant;

use contrastive_kernels::data::digits;
use contrastive_kernels::detect::{evaluate, DetectorConfig, LossKind, Metrics, Scorer, StepInfo};
use contrastive_kernels::ops::mlp::AdamW;
use contrastive_kernels::Backend;

const MARGIN_OVER_RAW_PIXELS: f64 = 0.0005;
const MARGIN_OVER_INITIALISATION: f64 = 0.0005;

fn mean_auroc(results: &[contrastive_kernels::detect::ClassResult]) -> (f64, f64) {
    let trained = Metrics::mean(&results.iter().map(|r| r.trained).collect::<Vec<_>>());
    let raw = Metrics::mean(&results.iter().map(|r| r.raw_pixels).collect::<Vec<_>>());
    (trained.auroc, raw.auroc)
}

#[test]
fn digits_one_class_quality_on_the_cpu() {
    let (train, test) = digits::load().unwrap().stratified_split(0.6, 0).unwrap();
    let cfg = DetectorConfig::digits(LossKind::SupCon);
    assert_eq!(cfg.scorer, Scorer::RotationEnsemble, "the demo's scorer");
    let classes: Vec<i32> = (0..10).collect();
    let first_last = Mutex::new(vec![(f64::NAN, f64::NAN); 10]);
    let start = Instant::now();
    let results = evaluate(&Backend::Cpu, &cfg, &train, &test, &classes, 2, &|s: &StepInfo| {
        let mut fl = first_last.lock().unwrap();
        let entry = &mut fl[s.class as usize];
        if s.step == 1 {
            entry.0 = s.loss;
        }
        entry.1 = s.loss;
    })
    .unwrap();
    println!("10 classes trained and scored in {:.1} s", start.elapsed().as_secs_f64());
    for r in &results {
        println!("class {}: AUROC trained {:.4}, raw pixels {:.4}", r.class, r.trained.auroc, r.raw_pixels.auroc);
    }
    let (trained, raw) = mean_auroc(&results);

    let untrained_cfg = DetectorConfig { steps: 1, adamw: AdamW { lr: 1e-9, ..cfg.adamw }, ..cfg.clone() };
    let (untrained, _) = mean_auroc(&evaluate(&Backend::Cpu, &untrained_cfg, &train, &test, &classes, 2, &|_: &StepInfo| {}).unwrap());
    println!("mean AUROC: trained {trained:.5}, raw pixels {raw:.5}, initial encoder {untrained:.5}");

    assert!((raw - 0.9972).abs() <= 5e-4, "raw-pixel baseline moved: {raw:.4} (split, loader or scorer changed)");
    assert!(
        trained >= raw + MARGIN_OVER_RAW_PIXELS,
        "trained features {trained:.5} do not beat raw pixels {raw:.5} by {MARGIN_OVER_RAW_PIXELS}"
    );
    assert!(
        trained >= untrained + MARGIN_OVER_INITIALISATION,
        "trained features {trained:.5} do not beat the initial encoder {untrained:.5} by {MARGIN_OVER_INITIALISATION}"
    );
    for (class, (first, last)) in first_last.into_inner().unwrap().into_iter().enumerate() {
        assert!(last < first, "class {class}: loss {first} at step 1, {last} at the end");
    }
    assert_eq!(results.iter().map(|r| r.test_normal + r.test_anomalies).collect::<Vec<_>>(), vec![test.len(); 10]);
}
