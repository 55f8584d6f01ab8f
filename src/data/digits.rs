//! The UCI "Optical Recognition of Handwritten Digits" test split (1,797 8 x 8 images, 10 classes;
//! CC BY 4.0, see `data/digits/README.md`), shipped with the crate and embedded in it, so the
//! demo needs no file at run time. Format: one image per line, 64 pixel counts in 0..=16
//! (row-major) then the label, comma-separated.

use std::path::Path;

use super::{gunzip_if_gz, read_maybe_gz, Dataset, ImageShape};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// `data/digits/digits.csv.gz`, as shipped.
const EMBEDDED: &[u8] = include_bytes!("../../data/digits/digits.csv.gz");

pub const SHAPE: ImageShape = ImageShape { channels: 1, height: 8, width: 8 };
pub const CLASSES: usize = 10;
/// Pixel counts go up to 16 (each pixel counts set bits of a 4 x 4 block).
const MAX_COUNT: f32 = 16.0;

/// The embedded copy (1,797 images).
pub fn load() -> Result<Dataset> {
    let text = gunzip_if_gz("digits", Path::new("data/digits/digits.csv.gz"), EMBEDDED.to_vec())?;
    parse("digits", &text)
}

/// A file in the same format, plain or gzip-compressed.
pub fn load_file(path: &Path) -> Result<Dataset> {
    let text = read_maybe_gz("path", path)?;
    parse("path", &text)
}

/// Parses the CSV text; `arg` names the source in errors.
pub fn parse(arg: &'static str, text: &[u8]) -> Result<Dataset> {
    let text = std::str::from_utf8(text).map_err(|e| Error::invalid(arg, format!("not UTF-8 text: {e}")))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != SHAPE.len() + 1 {
            return Err(Error::invalid(
                arg,
                format!("line {}: expected {} comma-separated values, got {}", line_no + 1, SHAPE.len() + 1, fields.len()),
            ));
        }
        let value = |k: usize, max: u32| -> Result<u32> {
            match fields[k].parse::<u32>() {
                Ok(v) if v <= max => Ok(v),
                _ => Err(Error::invalid(
                    arg,
                    format!("line {}, field {}: expected an integer in 0..={max}, got `{}`", line_no + 1, k + 1, fields[k]),
                )),
            }
        };
        for k in 0..SHAPE.len() {
            pixels.push(value(k, MAX_COUNT as u32)? as f32 / MAX_COUNT);
        }
        labels.push(value(SHAPE.len(), CLASSES as u32 - 1)? as i32);
    }
    let images = Matrix::new(labels.len(), SHAPE.len(), pixels)?;
    Dataset::new("digits", SHAPE, images, labels, CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_copy_is_the_uci_test_split() {
        let data = load().unwrap();
        assert_eq!(data.len(), 1797);
        assert_eq!(data.shape, SHAPE);
        // Class sizes of the UCI test split (scikit-learn's load_digits).
        let counts: Vec<usize> = (0..10).map(|c| data.indices_of(c).len()).collect();
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        // First row of the file: 0,0,5,13,9,1,0,0,... label 0.
        assert_eq!(data.labels[0], 0);
        assert_eq!(&data.images.row(0)[..4], &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0]);
        assert!(data.images.data().iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn parses_small_files_and_rejects_bad_ones() {
        let row = |label: u32| {
            let mut v: Vec<String> = (0..64).map(|k| (k % 17).to_string()).collect();
            v.push(label.to_string());
            v.join(",")
        };
        let text = format!("{}\n{}\n\n", row(3), row(9));
        let dir = std::env::temp_dir().join(format!("ck-digits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("small.csv");
        std::fs::write(&path, &text).unwrap();
        let data = load_file(&path).unwrap();
        assert_eq!(data.labels, vec![3, 9]);
        assert_eq!(data.images.get(1, 16), &(16.0 / 16.0));
        assert_eq!(data.images.get(0, 17), &0.0);

        let bad_count = format!("{}\n1,2,3\n", row(1));
        let err = parse("path", bad_count.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("65"), "{err}");
        let bad_pixel = row(1).replacen("0,", "17,", 1);
        assert!(parse("path", bad_pixel.as_bytes()).unwrap_err().to_string().contains("0..=16"));
        let bad_label = row(10);
        assert!(parse("path", bad_label.as_bytes()).unwrap_err().to_string().contains("0..=9"));
        let err = load_file(&dir.join("missing.csv")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "path", .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
