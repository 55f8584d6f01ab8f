//! The detector's quality check on the shipped digits (CPU backend, fixed seeds): the README's
//! demo (`--data digits --loss firm`) for all ten normal classes.
//!
//! What it asserts, and what it does not. The issue asks that the trained features beat raw pixels
//! scored by the same kNN scorer. On these 8 x 8 digits they do not yet: raw-pixel kNN (k = 1) is
//! already at a mean one-class AUROC of 0.9972, and the trained encoder measured 0.9953 (seed 0,
//! 150 steps; the randomly initialised encoder of the same shape: 0.9962). So this test pins
//! what holds, each bound able to fail:
//! * the raw-pixel baseline is the value measured when it was written (it pins the split, the
//!   loader and the scorer: 0.9972 +- 5e-4);
//! * the trained features reach a mean AUROC of at least 0.990 and stay within 0.005 of raw pixels
//!   (measured: 0.9953, 0.0019 below);
//! * training did something: the final loss of every class is below its first-step loss.
//!
//! Beating raw pixels is open (README, "Detector"): stronger encoders or outliers are the work.

use std::sync::Mutex;
use std::time::Instant;

use contrastive_kernels::data::digits;
use contrastive_kernels::detect::{evaluate, DetectorConfig, LossKind, Metrics, StepInfo};
use contrastive_kernels::Backend;

#[test]
fn digits_one_class_quality_on_the_cpu() {
    let (train, test) = digits::load().unwrap().stratified_split(0.6, 0).unwrap();
    let cfg = DetectorConfig::digits(LossKind::Firm);
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

    let trained = Metrics::mean(&results.iter().map(|r| r.trained).collect::<Vec<_>>());
    let raw = Metrics::mean(&results.iter().map(|r| r.raw_pixels).collect::<Vec<_>>());
    for r in &results {
        println!("class {}: AUROC trained {:.4}, raw pixels {:.4}", r.class, r.trained.auroc, r.raw_pixels.auroc);
    }
    println!("mean AUROC: trained {:.4}, raw pixels {:.4}", trained.auroc, raw.auroc);

    assert!((raw.auroc - 0.9972).abs() <= 5e-4, "raw-pixel baseline moved: {:.4} (split, loader or scorer changed)", raw.auroc);
    assert!(trained.auroc >= 0.990, "trained features: mean AUROC {:.4} < 0.990", trained.auroc);
    assert!(trained.auroc >= raw.auroc - 0.005, "trained features {:.4} more than 0.005 below raw pixels {:.4}", trained.auroc, raw.auroc);
    for (class, (first, last)) in first_last.into_inner().unwrap().into_iter().enumerate() {
        assert!(last < first, "class {class}: loss {first} at step 1, {last} at the end");
    }
    assert_eq!(results.iter().map(|r| r.test_normal + r.test_anomalies).collect::<Vec<_>>(), vec![test.len(); 10]);
}
