//! Views and rotated outliers of small images on the GPU (`kernels/augment.cu`), the twins of
//! [`super::cpu`]: the per-view draws come from the caller's generator on the host
//! ([`Augment::draw`]), the pixels are computed on the device, and the CPU oracle
//! ([`Augment::views_seeded`]) gives the same images for the same generator (noise to within f32
//! rounding of the same double-precision Box-Muller).

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

use super::{check_image_rows, Augment, ViewDraw};
use crate::data::ImageShape;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::params::augment::{AugmentViewsParams, RotateViewsParams, THREADS};
use crate::gpu::{dim_i32, DeviceMatrix, Gpu};
use crate::rng::SplitMix64;

const MODULE: &str = "augment";

fn check(shape: ImageShape, images: &DeviceMatrix<f32>, rows: &[usize]) -> Result<()> {
    check_image_rows(shape, (images.rows(), images.cols()), rows)
}

fn upload<E: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(gpu: &Gpu, v: &[E]) -> Result<CudaSlice<E>> {
    if v.is_empty() {
        gpu.stream().alloc_zeros::<E>(1).during("device allocation")
    } else {
        gpu.stream().clone_htod(v).during("host-to-device copy")
    }
}

fn config(total: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (total.div_ceil(THREADS).max(1) as u32, 1, 1), block_dim: (THREADS as u32, 1, 1), shared_mem_bytes: 0 }
}

/// One view of each image `rows[k]` (row k of the result) and the draws that made it.
pub fn views(
    gpu: &Gpu,
    augment: &Augment,
    shape: ImageShape,
    images: &DeviceMatrix<f32>,
    rows: &[usize],
    rng: &mut SplitMix64,
) -> Result<(DeviceMatrix<f32>, Vec<ViewDraw>)> {
    check(shape, images, rows)?;
    augment.validate(shape)?;
    let draws: Vec<ViewDraw> = rows.iter().map(|_| augment.draw(rng)).collect();
    let out = DeviceMatrix::<f32>::zeros(gpu, rows.len(), shape.len())?;
    if rows.is_empty() {
        return Ok((out, draws));
    }
    let stream = gpu.stream();
    let src: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    let (sy, sx, flip, gain, seed) = (
        upload(gpu, &draws.iter().map(|d| d.shift_y).collect::<Vec<_>>())?,
        upload(gpu, &draws.iter().map(|d| d.shift_x).collect::<Vec<_>>())?,
        upload(gpu, &draws.iter().map(|d| d.flip as i32).collect::<Vec<_>>())?,
        upload(gpu, &draws.iter().map(|d| d.gain()).collect::<Vec<_>>())?,
        upload(gpu, &draws.iter().map(|d| d.noise_seed).collect::<Vec<_>>())?,
    );
    let src = upload(gpu, &src)?;
    let params = AugmentViewsParams {
        images: images.raw(stream).0.ptr,
        src_row: src.device_ptr(stream).0,
        shift_y: sy.device_ptr(stream).0,
        shift_x: sx.device_ptr(stream).0,
        flip: flip.device_ptr(stream).0,
        gain: gain.device_ptr(stream).0,
        noise_seed: seed.device_ptr(stream).0,
        out: out.raw(stream).0.ptr,
        n_images: dim_i32("images.rows", images.rows())?,
        channels: dim_i32("channels", shape.channels)?,
        h: dim_i32("height", shape.height)?,
        w: dim_i32("width", shape.width)?,
        n_views: dim_i32("rows", rows.len())?,
        noise_std: augment.noise_std,
    };
    // SAFETY: every pointer is a live buffer of the sizes the parameters describe.
    unsafe { gpu.launch(stream, MODULE, "augment_views", config(rows.len() * shape.len()), &params)? };
    Ok((out, draws))
}

/// Image `rows[k]` rotated by `quarter_turns[k]` x 90 degrees counter-clockwise, as row k.
pub fn rotated(
    gpu: &Gpu,
    shape: ImageShape,
    images: &DeviceMatrix<f32>,
    rows: &[usize],
    quarter_turns: &[u32],
) -> Result<DeviceMatrix<f32>> {
    check(shape, images, rows)?;
    if shape.height != shape.width {
        return Err(Error::invalid("shape", format!("rotations need square images, got {}x{}", shape.height, shape.width)));
    }
    if quarter_turns.len() != rows.len() {
        return Err(Error::shape("quarter_turns", format!("{} entries (one per row)", rows.len()), format!("{}", quarter_turns.len())));
    }
    let out = DeviceMatrix::<f32>::zeros(gpu, rows.len(), shape.len())?;
    if rows.is_empty() {
        return Ok(out);
    }
    let stream = gpu.stream();
    let src = upload(gpu, &rows.iter().map(|&r| r as i32).collect::<Vec<_>>())?;
    let turns = upload(gpu, &quarter_turns.iter().map(|&t| (t % 4) as i32).collect::<Vec<_>>())?;
    let params = RotateViewsParams {
        images: images.raw(stream).0.ptr,
        src_row: src.device_ptr(stream).0,
        quarter_turns: turns.device_ptr(stream).0,
        out: out.raw(stream).0.ptr,
        n_images: dim_i32("images.rows", images.rows())?,
        channels: dim_i32("channels", shape.channels)?,
        n: dim_i32("height", shape.height)?,
        n_views: dim_i32("rows", rows.len())?,
    };
    // SAFETY: as in `views`.
    unsafe { gpu.launch(stream, MODULE, "rotate_views", config(rows.len() * shape.len()), &params)? };
    Ok(out)
}
