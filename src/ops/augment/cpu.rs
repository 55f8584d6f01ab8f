//! The CPU side of the augmentations: [`Augment::views`] (the training views, one generator),
//! [`Augment::views_seeded`] (the oracle of [`super::gpu::views`]) and the rotations ([`rotate`],
//! [`rotated`]).

use super::{check_image_rows, check_square, Augment, ViewDraw};
use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::rng::SplitMix64;

impl Augment {
    /// One random view of the image `src` into `dst` (both shape.len() long).
    pub fn apply(&self, shape: ImageShape, src: &[f32], dst: &mut [f32], rng: &mut SplitMix64) {
        let (h, w) = (shape.height as isize, shape.width as isize);
        let s = self.max_shift as isize;
        let (dy, dx) =
            if s > 0 { (rng.below(2 * s as usize + 1) as isize - s, rng.below(2 * s as usize + 1) as isize - s) } else { (0, 0) };
        let flip = self.horizontal_flip && rng.below(2) == 1;
        let gain = if self.intensity_jitter > 0.0 { 1.0 + self.intensity_jitter * (2.0 * rng.uniform() as f32 - 1.0) } else { 1.0 };
        for c in 0..shape.channels {
            let plane = c * shape.height * shape.width;
            for y in 0..h {
                for x in 0..w {
                    // dst(y, x) = src(y - dy, x' - dx) with x' the mirrored column when flipping.
                    let xs = if flip { w - 1 - x } else { x };
                    let (sy, sx) = (y - dy, xs - dx);
                    let v = if (0..h).contains(&sy) && (0..w).contains(&sx) { src[plane + (sy * w + sx) as usize] } else { 0.0 };
                    dst[plane + (y * w + x) as usize] = v;
                }
            }
        }
        for v in dst.iter_mut() {
            let noise = if self.noise_std > 0.0 { self.noise_std * rng.normal() as f32 } else { 0.0 };
            *v = (*v * gain + noise).clamp(0.0, 1.0);
        }
    }

    /// One view of each image `rows[k]` of `images`, as row k of the result.
    pub fn views(&self, shape: ImageShape, images: &Matrix<f32>, rows: &[usize], rng: &mut SplitMix64) -> Result<Matrix<f32>> {
        check_images(shape, images, rows)?;
        self.validate(shape)?;
        let mut out = Matrix::from_fn(rows.len(), shape.len(), |_, _| 0.0f32);
        for (k, &r) in rows.iter().enumerate() {
            self.apply(shape, images.row(r), &mut out.data_mut()[k * shape.len()..(k + 1) * shape.len()], rng);
        }
        Ok(out)
    }
}

impl Augment {
    /// The view of `src` that `draw` describes (the oracle of `ops::augment::views`).
    pub fn apply_drawn(&self, shape: ImageShape, draw: &ViewDraw, src: &[f32], dst: &mut [f32]) {
        let (h, w) = (shape.height as isize, shape.width as isize);
        let (dy, dx) = (draw.shift_y as isize, draw.shift_x as isize);
        let mut noise = SplitMix64::new(draw.noise_seed);
        for c in 0..shape.channels {
            let plane = c * shape.height * shape.width;
            for y in 0..h {
                for x in 0..w {
                    let xs = if draw.flip { w - 1 - x } else { x };
                    let (sy, sx) = (y - dy, xs - dx);
                    let v = if (0..h).contains(&sy) && (0..w).contains(&sx) { src[plane + (sy * w + sx) as usize] } else { 0.0 };
                    let n = if self.noise_std > 0.0 { self.noise_std * noise.normal() as f32 } else { 0.0 };
                    dst[plane + (y * w + x) as usize] = (v * draw.gain() + n).clamp(0.0, 1.0);
                }
            }
        }
    }

    /// Views in the seeded form (the CPU twin of the GPU views): `views`' transform, with each
    /// view's noise from its own seed.
    pub fn views_seeded(
        &self,
        shape: ImageShape,
        images: &Matrix<f32>,
        rows: &[usize],
        rng: &mut SplitMix64,
    ) -> Result<(Matrix<f32>, Vec<ViewDraw>)> {
        check_images(shape, images, rows)?;
        self.validate(shape)?;
        let draws: Vec<ViewDraw> = rows.iter().map(|_| self.draw(rng)).collect();
        let mut out = Matrix::from_fn(rows.len(), shape.len(), |_, _| 0.0f32);
        for (k, (&r, d)) in rows.iter().zip(&draws).enumerate() {
            self.apply_drawn(shape, d, images.row(r), &mut out.data_mut()[k * shape.len()..(k + 1) * shape.len()]);
        }
        Ok((out, draws))
    }
}

fn check_images(shape: ImageShape, images: &Matrix<f32>, rows: &[usize]) -> Result<()> {
    check_image_rows(shape, (images.rows(), images.cols()), rows)
}

/// Rotates `src` counter-clockwise by `quarter_turns` x 90 degrees into `dst` (as numpy's rot90),
/// every channel alike. Square images only (a non-square image changes shape when rotated).
pub fn rotate(shape: ImageShape, src: &[f32], dst: &mut [f32], quarter_turns: u32) -> Result<()> {
    check_square(shape)?;
    if src.len() != shape.len() || dst.len() != shape.len() {
        return Err(Error::shape("src", format!("{} values", shape.len()), format!("{} and {}", src.len(), dst.len())));
    }
    let n = shape.height;
    for c in 0..shape.channels {
        let plane = c * n * n;
        for r in 0..n {
            for col in 0..n {
                let (sr, sc) = match quarter_turns % 4 {
                    0 => (r, col),
                    1 => (col, n - 1 - r),
                    2 => (n - 1 - r, n - 1 - col),
                    _ => (n - 1 - col, r),
                };
                dst[plane + r * n + col] = src[plane + sr * n + sc];
            }
        }
    }
    Ok(())
}

/// Image `rows[k]` rotated by `quarter_turns[k]` x 90 degrees, as row k of the result.
pub fn rotated(shape: ImageShape, images: &Matrix<f32>, rows: &[usize], quarter_turns: &[u32]) -> Result<Matrix<f32>> {
    check_square(shape)?; // up front, so an empty selection of a non-square shape is refused too
    check_images(shape, images, rows)?;
    if quarter_turns.len() != rows.len() {
        return Err(Error::shape("quarter_turns", format!("{} entries (one per row)", rows.len()), format!("{}", quarter_turns.len())));
    }
    let mut out = Matrix::from_fn(rows.len(), shape.len(), |_, _| 0.0f32);
    for (k, &r) in rows.iter().enumerate() {
        rotate(shape, images.row(r), &mut out.data_mut()[k * shape.len()..(k + 1) * shape.len()], quarter_turns[k])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQ: ImageShape = ImageShape { channels: 2, height: 3, width: 3 };

    fn ramp(shape: ImageShape) -> Vec<f32> {
        (0..shape.len()).map(|k| (k + 1) as f32 / 100.0).collect()
    }

    #[test]
    fn rotations_match_rot90() {
        // One 3 x 3 plane 1..9: numpy.rot90 (counter-clockwise) gives [[3,6,9],[2,5,8],[1,4,7]].
        let shape = ImageShape::new(1, 3, 3);
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 9];
        rotate(shape, &src, &mut dst, 1).unwrap();
        assert_eq!(dst, [3.0, 6.0, 9.0, 2.0, 5.0, 8.0, 1.0, 4.0, 7.0]);
        rotate(shape, &src, &mut dst, 2).unwrap();
        assert_eq!(dst, [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
        rotate(shape, &src, &mut dst, 3).unwrap();
        assert_eq!(dst, [7.0, 4.0, 1.0, 8.0, 5.0, 2.0, 9.0, 6.0, 3.0]);
        rotate(shape, &src, &mut dst, 4).unwrap();
        assert_eq!(dst, src);
        // Two quarter turns are a half turn, on every channel.
        let src = ramp(SQ);
        let (mut once, mut twice, mut half) = (vec![0.0; 18], vec![0.0; 18], vec![0.0; 18]);
        rotate(SQ, &src, &mut once, 1).unwrap();
        rotate(SQ, &once, &mut twice, 1).unwrap();
        rotate(SQ, &src, &mut half, 2).unwrap();
        assert_eq!(twice, half);
        assert!(matches!(rotate(ImageShape::new(1, 2, 3), &[0.0; 6], &mut [0.0; 6], 1), Err(Error::InvalidArgument { arg: "shape", .. })));
    }

    #[test]
    fn identity_and_shift_and_flip() {
        let src = ramp(SQ);
        let mut dst = vec![0.0; 18];
        let mut rng = SplitMix64::new(1);
        Augment::identity().apply(SQ, &src, &mut dst, &mut rng);
        assert_eq!(dst, src);

        // With max_shift 1 and nothing else, every view is the image translated by (dy, dx) in
        // -1..=1 with zero fill: find that translation and check every pixel of both channels.
        let aug = Augment { max_shift: 1, ..Augment::identity() };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            aug.apply(SQ, &src, &mut dst, &mut rng);
            let shifted = |dy: isize, dx: isize| -> Vec<f32> {
                (0..18)
                    .map(|k| {
                        let (c, y, x) = (k / 9, (k % 9 / 3) as isize, (k % 3) as isize);
                        let (sy, sx) = (y - dy, x - dx);
                        if (0..3).contains(&sy) && (0..3).contains(&sx) {
                            src[c * 9 + (sy * 3 + sx) as usize]
                        } else {
                            0.0
                        }
                    })
                    .collect()
            };
            let found = (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dy, dx))).find(|&(dy, dx)| shifted(dy, dx) == dst);
            seen.insert(found.expect("a view is a translation of the image"));
        }
        assert_eq!(seen.len(), 9, "all nine translations occur");

        let flip = Augment { horizontal_flip: true, ..Augment::identity() };
        let mut flips = 0;
        for _ in 0..100 {
            flip.apply(SQ, &src, &mut dst, &mut rng);
            if dst != src {
                flips += 1;
                assert_eq!(&dst[..3], &[src[2], src[1], src[0]]);
                assert_eq!(&dst[9..12], &[src[11], src[10], src[9]]);
            }
        }
        assert!((30..=70).contains(&flips), "about half the views are mirrored, got {flips}/100");
    }

    #[test]
    fn views_are_seeded_clamped_and_checked() {
        let shape = ImageShape::new(1, 8, 8);
        let images = Matrix::from_fn(4, 64, |i, j| ((i * 64 + j) % 17) as f32 / 16.0);
        let aug = Augment::digits();
        let a = aug.views(shape, &images, &[3, 0, 0], &mut SplitMix64::new(5)).unwrap();
        let b = aug.views(shape, &images, &[3, 0, 0], &mut SplitMix64::new(5)).unwrap();
        assert_eq!(a, b, "same seed, same views");
        assert_ne!(a.row(1), a.row(2), "two views of one image differ");
        assert!(a.data().iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(matches!(aug.views(shape, &images, &[4], &mut SplitMix64::new(5)), Err(Error::InvalidArgument { arg: "rows", .. })));
        let bad = Augment { max_shift: 8, ..aug };
        assert!(matches!(bad.views(shape, &images, &[0], &mut SplitMix64::new(5)), Err(Error::InvalidArgument { arg: "max_shift", .. })));
        let bad = Augment { noise_std: f32::NAN, ..aug };
        assert!(matches!(bad.validate(shape), Err(Error::InvalidArgument { arg: "noise_std", .. })));
        let r = rotated(shape, &images, &[1, 2], &[2, 0]).unwrap();
        assert_eq!(r.row(1), images.row(2));
        assert_eq!(r.get(0, 0), images.get(1, 63));
        assert!(matches!(rotated(shape, &images, &[1, 2], &[2]), Err(Error::Shape { arg: "quarter_turns", .. })));
    }
}
