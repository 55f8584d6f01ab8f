//! Image data sets for the detector: the UCI handwritten digits shipped in `data/digits/`, and
//! loaders for users' own copies of MNIST / Fashion-MNIST (IDX files) and CIFAR-10 (binary
//! version). Nothing is downloaded. Pixels become f32 in [0, 1], one image per row, channel-major
//! (C x H x W), as the encoder and the augmentations take them.
//!
//! Bad files are an `Err` naming the argument (`path`, `images`, `labels`) and what is wrong.

pub mod cifar10;
pub mod digits;
pub mod idx;

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::rng::SplitMix64;

/// The layout of one image: `channels` planes of `height` x `width` pixels, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageShape { channels, height, width }
    }
    /// Values per image (the encoder's input width).
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Labelled images: `images` is n x shape.len() (f32 in [0, 1]), `labels[i]` in 0..classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub shape: ImageShape,
    pub images: Matrix<f32>,
    pub labels: Vec<i32>,
    pub classes: usize,
}

impl Dataset {
    /// Checks the invariants the rest of the crate relies on.
    pub fn new(name: impl Into<String>, shape: ImageShape, images: Matrix<f32>, labels: Vec<i32>, classes: usize) -> Result<Self> {
        if images.cols() != shape.len() {
            return Err(Error::shape(
                "images",
                format!("{} columns (one per pixel of a {shape:?} image)", shape.len()),
                format!("{} x {}", images.rows(), images.cols()),
            ));
        }
        if labels.len() != images.rows() {
            return Err(Error::shape("labels", format!("{} labels (one per image)", images.rows()), format!("{}", labels.len())));
        }
        if let Some(i) = labels.iter().position(|&l| l < 0 || l as usize >= classes) {
            return Err(Error::invalid("labels", format!("labels are in 0..{classes}; image {i} has {}", labels[i])));
        }
        Ok(Dataset { name: name.into(), shape, images, labels, classes })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let images = Matrix::from_fn(indices.len(), self.shape.len(), |i, j| *self.images.get(indices[i], j));
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Dataset { name: self.name.clone(), shape: self.shape, images, labels, classes: self.classes }
    }

    /// Row indices of class `class`.
    pub fn indices_of(&self, class: i32) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.labels[i] == class).collect()
    }

    /// A seeded split that keeps each class's proportion: per class, a shuffled `train_fraction`
    /// (rounded) goes to the first set and the rest to the second. For data sets that ship without
    /// a test split (digits).
    pub fn stratified_split(&self, train_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(train_fraction > 0.0 && train_fraction < 1.0) {
            return Err(Error::invalid("train_fraction", format!("must be in (0, 1), got {train_fraction}")));
        }
        let mut rng = SplitMix64::new(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..self.classes as i32 {
            let mut idx = self.indices_of(class);
            shuffle(&mut idx, &mut rng);
            let cut = (idx.len() as f64 * train_fraction).round() as usize;
            train.extend_from_slice(&idx[..cut]);
            test.extend_from_slice(&idx[cut..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((self.subset(&train), self.subset(&test)))
    }
}

/// Fisher-Yates with the crate's seeded generator.
pub fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The whole file, gunzipped when it starts with the gzip magic (so `x.gz` and `x` both work).
pub(crate) fn read_maybe_gz(arg: &'static str, path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::invalid(arg, format!("cannot read {}: {e}", path.display())))?;
    gunzip_if_gz(arg, path, raw)
}

pub(crate) fn gunzip_if_gz(arg: &'static str, path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::invalid(arg, format!("{}: not a valid gzip file: {e}", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first of `names` that exists in `dir` (each also tried with `.gz`), or an error listing them.
pub(crate) fn find_in_dir(arg: &'static str, dir: &Path, names: &[&str]) -> Result<std::path::PathBuf> {
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::invalid(arg, format!("{} holds none of {} (optionally .gz)", dir.display(), names.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        let images = Matrix::from_fn(10, 4, |i, j| (i * 4 + j) as f32 / 40.0);
        let labels = vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 2];
        Dataset::new("toy", ImageShape::new(1, 2, 2), images, labels, 3).unwrap()
    }

    #[test]
    fn dataset_checks_its_arguments() {
        let images = Matrix::from_fn(2, 4, |_, _| 0.0);
        let err = Dataset::new("x", ImageShape::new(1, 2, 3), images.clone(), vec![0, 0], 1).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "images", .. }), "{err}");
        let err = Dataset::new("x", ImageShape::new(1, 2, 2), images.clone(), vec![0], 1).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "labels", .. }), "{err}");
        let err = Dataset::new("x", ImageShape::new(1, 2, 2), images, vec![0, 3], 3).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "labels", .. }), "{err}");
    }

    #[test]
    fn stratified_split_keeps_classes_and_is_seeded() {
        let data = toy();
        let (train, test) = data.stratified_split(0.6, 7).unwrap();
        assert_eq!(train.len() + test.len(), 10);
        // Class 0: 5 images -> 3 train; class 1: 4 -> 2 (2.4 rounds to 2); class 2: 1 -> 1 (0.6 -> 1).
        assert_eq!(train.indices_of(0).len(), 3);
        assert_eq!(train.indices_of(1).len(), 2);
        assert_eq!(train.indices_of(2).len(), 1);
        // Every image lands in exactly one side, unchanged.
        let mut rows: Vec<Vec<f32>> = train.images.data().chunks(4).chain(test.images.data().chunks(4)).map(|r| r.to_vec()).collect();
        rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut want: Vec<Vec<f32>> = data.images.data().chunks(4).map(|r| r.to_vec()).collect();
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(rows, want);
        assert_eq!(data.stratified_split(0.6, 7).unwrap(), (train.clone(), test));
        assert_ne!(data.stratified_split(0.6, 8).unwrap().0, train, "another seed, another split");
        assert!(matches!(data.stratified_split(1.0, 7), Err(Error::InvalidArgument { arg: "train_fraction", .. })));
    }

    #[test]
    fn gzip_is_detected_by_magic() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip_if_gz("path", Path::new("x"), gz).unwrap(), b"hello");
        assert_eq!(gunzip_if_gz("path", Path::new("x"), b"plain".to_vec()).unwrap(), b"plain");
        let err = gunzip_if_gz("path", Path::new("x"), vec![0x1f, 0x8b, 0, 0]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "path", .. }), "{err}");
    }
}
