//! What build.rs compiled: the embedded kernel modules and ptxas' report.
//!
//! `MODULES` holds one fatbin per `kernels/*.cu` (PTX and/or SASS per `ARCHS`), `PTXAS_REPORT` the
//! registers / spills / shared memory of every kernel. When nvcc was missing at build time,
//! `COMPILED` is false and `NOT_COMPILED_REASON` says why.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded image of one module (`kernels/<name>.cu`), if it was compiled.
pub fn module_image(name: &str) -> Option<&'static [u8]> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, image)| *image)
}
