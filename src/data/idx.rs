//! IDX files (MNIST, Fashion-MNIST): a big-endian header `0x00 0x00 type ndim`, ndim u32 sizes,
//! then the data. Images are type 0x08 (u8) with 3 dimensions (n, rows, cols); labels type 0x08
//! with 1 dimension. Plain or gzip-compressed (`.gz`, as distributed), detected from the bytes.

use std::path::Path;

use super::{find_in_dir, read_maybe_gz, Dataset, ImageShape};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// One parsed IDX array of u8: its dimensions and data.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an IDX file's bytes (u8 element type only: what MNIST-style data sets use).
pub fn parse(arg: &'static str, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::invalid(arg, "not an IDX file (its first two bytes must be 0)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::invalid(arg, format!("IDX element type {:#04x} is not supported (only 0x08, unsigned bytes)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::invalid(arg, format!("truncated IDX header ({} bytes, {ndim} dimensions need {header})", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim).map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize).collect();
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::invalid(arg, "IDX dimensions overflow"))?;
    if bytes.len() - header != len {
        return Err(Error::invalid(arg, format!("IDX dimensions {dims:?} need {len} data bytes, the file has {}", bytes.len() - header)));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Images and labels from two IDX files. `classes` is the number of label values (10 for MNIST
/// and Fashion-MNIST).
pub fn load(name: &str, images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
    let img = parse("images", &read_maybe_gz("images", images)?)?;
    let lab = parse("labels", &read_maybe_gz("labels", labels)?)?;
    from_arrays(name, img, lab, classes)
}

/// The train or test split of an MNIST-layout folder (`train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally
/// `.gz`; the `train-images.idx3-ubyte` spelling is accepted too).
pub fn load_dir(name: &str, dir: &Path, train: bool) -> Result<Dataset> {
    let prefix = if train { "train" } else { "t10k" };
    let images = find_in_dir("path", dir, &[&format!("{prefix}-images-idx3-ubyte"), &format!("{prefix}-images.idx3-ubyte")])?;
    let labels = find_in_dir("path", dir, &[&format!("{prefix}-labels-idx1-ubyte"), &format!("{prefix}-labels.idx1-ubyte")])?;
    load(name, &images, &labels, 10)
}

fn from_arrays(name: &str, img: IdxArray, lab: IdxArray, classes: usize) -> Result<Dataset> {
    let [n, h, w] = img.dims[..] else {
        return Err(Error::invalid("images", format!("expected 3 IDX dimensions (n, rows, cols), got {:?}", img.dims)));
    };
    if lab.dims.len() != 1 || lab.dims[0] != n {
        return Err(Error::shape("labels", format!("one dimension of {n} labels (one per image)"), format!("{:?}", lab.dims)));
    }
    let pixels = img.data.iter().map(|&v| v as f32 / 255.0).collect();
    let labels = lab.data.iter().map(|&v| v as i32).collect();
    Dataset::new(name, ImageShape::new(1, h, w), Matrix::new(n, h * w, pixels)?, labels, classes)
}

/// The bytes of an IDX u8 file with these dimensions (tests and tools write small files with it).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ck-idx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_small_mnist_layout_folder_plain_and_gzipped() {
        let dir = temp_dir("ok");
        // 3 images of 2 x 3 pixels.
        let pixels: Vec<u8> = (0..18).map(|v| (v * 15) as u8).collect();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), encode(&[3, 2, 3], &pixels)).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode(&[3], &[7, 0, 9])).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode(&[3, 2, 3], &pixels)).unwrap();
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), encode(&[3], &[1, 2, 3])).unwrap();

        let test = load_dir("mnist", &dir, false).unwrap();
        assert_eq!(test.shape, ImageShape::new(1, 2, 3));
        assert_eq!(test.labels, vec![7, 0, 9]);
        assert_eq!(test.images.row(1), &[90.0 / 255.0, 105.0 / 255.0, 120.0 / 255.0, 135.0 / 255.0, 150.0 / 255.0, 165.0 / 255.0]);
        let train = load_dir("mnist", &dir, true).unwrap();
        assert_eq!(train.images, test.images, "the gzipped copy reads the same");
        assert_eq!(train.labels, vec![1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_files_naming_them() {
        assert!(parse("images", &[1, 0, 8, 1]).unwrap_err().to_string().contains("not an IDX"));
        assert!(parse("images", &[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap_err().to_string().contains("0x0d"));
        assert!(parse("images", &[0, 0, 8, 2, 0, 0]).unwrap_err().to_string().contains("truncated"));
        let err = parse("labels", &encode(&[4], &[1, 2, 3])).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "labels", .. }) && err.to_string().contains("4 data bytes"), "{err}");

        let img = parse("images", &encode(&[2, 1, 1], &[0, 255])).unwrap();
        let err = from_arrays("x", img.clone(), parse("labels", &encode(&[3], &[0, 1, 2])).unwrap(), 10).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "labels", .. }), "{err}");
        let err = from_arrays("x", img.clone(), parse("labels", &encode(&[2], &[0, 10])).unwrap(), 10).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "labels", .. }), "{err}");
        let err = from_arrays("x", parse("labels", &encode(&[2], &[0, 1])).unwrap(), img, 10).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "images", .. }), "{err}");

        let dir = temp_dir("missing");
        let err = load_dir("mnist", &dir, true).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "path", .. }) && err.to_string().contains("train-images-idx3-ubyte"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
