//! CIFAR-10, binary version (`cifar-10-batches-bin/`): each record is 1 label byte (0..9) then
//! 3,072 pixel bytes, the red, green and blue 32 x 32 planes in turn (row-major), which is
//! already the channel-major layout of [`super::Dataset`]. 10,000 records per batch file.

use std::path::{Path, PathBuf};

use super::{find_in_dir, read_maybe_gz, Dataset, ImageShape};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

pub const SHAPE: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };
pub const CLASSES: usize = 10;
const RECORD: usize = 1 + 3 * 32 * 32;

/// Parses the records of one batch file, appending to `pixels` / `labels`.
fn parse_into(path: &Path, bytes: &[u8], pixels: &mut Vec<f32>, labels: &mut Vec<i32>) -> Result<()> {
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(Error::invalid(
            "path",
            format!("{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records", path.display(), bytes.len()),
        ));
    }
    for (r, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] as usize >= CLASSES {
            return Err(Error::invalid(
                "path",
                format!("{}: record {r} has label {} (CIFAR-10 labels are 0..9)", path.display(), record[0]),
            ));
        }
        labels.push(record[0] as i32);
        pixels.extend(record[1..].iter().map(|&v| v as f32 / 255.0));
    }
    Ok(())
}

/// The records of `files`, in order.
pub fn load(files: &[PathBuf]) -> Result<Dataset> {
    if files.is_empty() {
        return Err(Error::invalid("files", "no batch file given"));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for path in files {
        parse_into(path, &read_maybe_gz("path", path)?, &mut pixels, &mut labels)?;
    }
    Dataset::new("cifar10", SHAPE, Matrix::new(labels.len(), SHAPE.len(), pixels)?, labels, CLASSES)
}

/// The train split (`data_batch_1.bin` .. `data_batch_5.bin`, those present; at least one) or the
/// test split (`test_batch.bin`) of a `cifar-10-batches-bin` folder.
pub fn load_dir(dir: &Path, train: bool) -> Result<Dataset> {
    let files = if train {
        let found: Vec<PathBuf> = (1..=5).map(|k| dir.join(format!("data_batch_{k}.bin"))).filter(|p| p.is_file()).collect();
        if found.is_empty() {
            return Err(Error::invalid("path", format!("{} holds no data_batch_1.bin .. data_batch_5.bin", dir.display())));
        }
        found
    } else {
        vec![find_in_dir("path", dir, &["test_batch.bin"])?]
    };
    load(&files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..3072).map(|k| (k as u8).wrapping_mul(seed)));
        r
    }

    #[test]
    fn reads_small_batch_files() {
        let dir = std::env::temp_dir().join(format!("ck-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data_batch_1.bin"), [record(3, 1), record(9, 2)].concat()).unwrap();
        std::fs::write(dir.join("data_batch_2.bin"), record(0, 3)).unwrap();
        std::fs::write(dir.join("test_batch.bin"), record(5, 1)).unwrap();

        let train = load_dir(&dir, true).unwrap();
        assert_eq!(train.labels, vec![3, 9, 0]);
        assert_eq!(train.shape, SHAPE);
        // Pixel k of the red plane is byte k; the green plane starts at 1024.
        assert_eq!(*train.images.get(1, 5), 10.0 / 255.0);
        assert_eq!(*train.images.get(0, 1024 + 7), ((1024 + 7) as u32 % 256) as f32 / 255.0);
        let test = load_dir(&dir, false).unwrap();
        assert_eq!(test.labels, vec![5]);
        assert_eq!(test.images.row(0), train.images.row(0));

        std::fs::write(dir.join("test_batch.bin"), &record(5, 1)[..100]).unwrap();
        let err = load_dir(&dir, false).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "path", .. }) && err.to_string().contains("3073-byte"), "{err}");
        std::fs::write(dir.join("test_batch.bin"), record(10, 1)).unwrap();
        assert!(load_dir(&dir, false).unwrap_err().to_string().contains("label 10"));
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(matches!(load(&[]), Err(Error::InvalidArgument { arg: "files", .. })));
        let empty = std::env::temp_dir().join(format!("ck-cifar-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(load_dir(&empty, true).unwrap_err().to_string().contains("data_batch_1.bin"));
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
