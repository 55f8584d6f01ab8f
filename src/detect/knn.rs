//! The kNN anomaly score of DESIGN.md section 5 (deep nearest neighbours, Sun et al. 2022): the
//! k-th largest cosine similarity s_(k) of a query against a bank of training features, returned
//! as the anomaly score -s_(k) (higher = more anomalous; the same order as the distance form
//! 2 - 2 s_(k) of [`crate::scores::knn_distance`]).
//!
//! The neighbours come from [`Backend::topk`]: the fused top-k kernel on a GPU, its exact f64
//! oracle on the CPU.
//!
//! [`rotation_ensemble_scores`] is CSI's ensemble over the shifting transformations (Tack et al.
//! 2020, section 2.3): the mean of the kNN scores of the query turned by 0 / 90 / 180 / 270 degrees
//! against the bank turned alike. A rotation permutes pixels, and cosine is invariant under a
//! permutation applied to both sides, so on raw pixels the ensemble is exactly the plain kNN score:
//! a trained encoder and raw pixels scored by it are scored by the same kNN scorer.

use crate::backend::Backend;
use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::ops::augment::cpu::rotated;
use crate::ops::topk::TopKOptions;

/// Anomaly scores -s_(k) of every query row against the bank (both n x d), k in 1..=bank rows.
pub fn knn_scores(backend: &Backend, bank: &Matrix<f32>, queries: &Matrix<f32>, k: usize) -> Result<Vec<f64>> {
    if bank.rows() == 0 {
        return Err(Error::shape("bank", "at least one row", "0 rows"));
    }
    if queries.cols() != bank.cols() {
        return Err(Error::shape(
            "queries",
            format!("{} columns (the d of bank)", bank.cols()),
            format!("{} x {}", queries.rows(), queries.cols()),
        ));
    }
    if k == 0 || k > bank.rows() {
        return Err(Error::invalid("k", format!("must be in 1..={} (the bank's rows), got {k}", bank.rows())));
    }
    if let Some(i) = bank.data().iter().chain(queries.data()).position(|v| !v.is_finite()) {
        return Err(Error::invalid(if i < bank.data().len() { "bank" } else { "queries" }, "holds a non-finite value"));
    }
    let neighbours = backend.topk(queries, bank, &TopKOptions::new(k))?;
    Ok((0..queries.rows()).map(|i| -(neighbours.row_values(i)[k - 1] as f64)).collect())
}

/// CSI's rotation ensemble: the mean over r in {0, 1, 2, 3} quarter turns of
/// `knn_scores(embed(rot_r(bank_images)), embed(rot_r(query_images)), k)`. `embed` maps image rows
/// (of `shape`, square: [`rotated`] refuses others) to feature rows: an encoder's layer, or the
/// identity for raw pixels.
pub fn rotation_ensemble_scores(
    backend: &Backend,
    shape: ImageShape,
    bank_images: &Matrix<f32>,
    query_images: &Matrix<f32>,
    k: usize,
    embed: &dyn Fn(&Matrix<f32>) -> Result<Matrix<f32>>,
) -> Result<Vec<f64>> {
    let turned = |images: &Matrix<f32>, r: u32| -> Result<Matrix<f32>> {
        let rows: Vec<usize> = (0..images.rows()).collect();
        rotated(shape, images, &rows, &vec![r; rows.len()])
    };
    let mut mean = vec![0.0f64; query_images.rows()];
    for r in 0..4 {
        let scores = knn_scores(backend, &embed(&turned(bank_images, r)?)?, &embed(&turned(query_images, r)?)?, k)?;
        for (m, s) in mean.iter_mut().zip(scores) {
            *m += 0.25 * s;
        }
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::augment::cpu::rotate;
    use crate::rng::SplitMix64;

    fn random_images(n: usize, side: usize, rng: &mut SplitMix64) -> Matrix<f32> {
        Matrix::from_fn(n, side * side, |_, _| rng.uniform() as f32)
    }

    /// On raw pixels the ensemble is the plain kNN score (rotations permute pixels).
    #[test]
    fn rotation_ensemble_on_raw_pixels_is_plain_knn() {
        let mut rng = SplitMix64::new(11);
        let shape = ImageShape::new(1, 5, 5);
        let (bank, queries) = (random_images(9, 5, &mut rng), random_images(7, 5, &mut rng));
        for k in [1, 3] {
            let plain = knn_scores(&Backend::Cpu, &bank, &queries, k).unwrap();
            let ens = rotation_ensemble_scores(&Backend::Cpu, shape, &bank, &queries, k, &|m| Ok(m.clone())).unwrap();
            for (p, e) in plain.iter().zip(&ens) {
                assert!((p - e).abs() <= 1e-6, "k {k}: plain {p} vs ensemble {e}");
            }
        }
    }

    /// With an embedding that sees only the top row of the image (not rotation invariant), the
    /// ensemble is the mean over turns of brute-force f64 cosines, computed here independently.
    #[test]
    fn rotation_ensemble_against_brute_force() {
        let mut rng = SplitMix64::new(12);
        let side = 4;
        let shape = ImageShape::new(1, side, side);
        let (bank, queries) = (random_images(6, side, &mut rng), random_images(5, side, &mut rng));
        let top_row = |m: &Matrix<f32>| Ok(Matrix::from_fn(m.rows(), side, |i, j| *m.get(i, j)));
        let k = 2;
        let got = rotation_ensemble_scores(&Backend::Cpu, shape, &bank, &queries, k, &top_row).unwrap();
        let turn = |img: &[f32], r: u32| {
            let mut out = vec![0.0f32; img.len()];
            rotate(shape, img, &mut out, r).unwrap();
            out[..side].iter().map(|&v| v as f64).collect::<Vec<f64>>()
        };
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
        };
        for (q, &got_q) in got.iter().enumerate() {
            let mut want = 0.0;
            for r in 0..4 {
                let tq = turn(queries.row(q), r);
                let mut sims: Vec<f64> = (0..bank.rows()).map(|b| cos(&tq, &turn(bank.row(b), r))).collect();
                sims.sort_by(|a, b| b.partial_cmp(a).unwrap());
                want -= sims[k - 1] / 4.0;
            }
            assert!((got_q - want).abs() <= 1e-6, "query {q}: {got_q} vs {want}");
        }
        // The turns matter for this embedding: the ensemble is not the upright score.
        let upright = knn_scores(&Backend::Cpu, &top_row(&bank).unwrap(), &top_row(&queries).unwrap(), k).unwrap();
        assert!(upright.iter().zip(&got).any(|(u, g)| (u - g).abs() > 1e-3));
        let rect = ImageShape::new(1, 2, 8);
        assert!(matches!(
            rotation_ensemble_scores(&Backend::Cpu, rect, &bank, &queries, k, &top_row),
            Err(Error::InvalidArgument { arg: "shape", .. })
        ));
    }

    #[test]
    fn hand_computed() {
        // Bank: e1, e2, (1, 1). Query (1, 0): cosines 1, 0, 1/sqrt 2 -> s_(1) = 1, s_(2) = 0.7071.
        let bank = Matrix::new(3, 2, vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0]).unwrap();
        let q = Matrix::new(2, 2, vec![3.0, 0.0, 0.0, 0.0]).unwrap();
        let s1 = knn_scores(&Backend::Cpu, &bank, &q, 1).unwrap();
        assert_eq!(s1[0], -1.0);
        let s2 = knn_scores(&Backend::Cpu, &bank, &q, 2).unwrap();
        assert!((s2[0] + 0.5f64.sqrt()).abs() < 1e-7); // Backend::topk returns f32 similarities
        assert_eq!(knn_scores(&Backend::Cpu, &bank, &q, 3).unwrap()[0], 0.0);
        // The zero query has cosine 0 with everything.
        assert_eq!(s1[1], 0.0);
    }

    #[test]
    fn errors_name_the_argument() {
        let bank = Matrix::new(2, 2, vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &bank, 3), Err(Error::InvalidArgument { arg: "k", .. })));
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &bank, 0), Err(Error::InvalidArgument { arg: "k", .. })));
        let q = Matrix::new(1, 3, vec![1.0f32, 0.0, 0.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &q, 1), Err(Error::Shape { arg: "queries", .. })));
        let nan = Matrix::new(1, 2, vec![f32::NAN, 0.0]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &bank, &nan, 1), Err(Error::InvalidArgument { arg: "queries", .. })));
        let empty = Matrix::<f32>::new(0, 2, vec![]).unwrap();
        assert!(matches!(knn_scores(&Backend::Cpu, &empty, &q, 1), Err(Error::Shape { arg: "bank", .. })));
    }
}
