//! Where the CUDA toolchain is, shared by the build scripts (build.rs: nvcc for the kernels;
//! emu/build.rs: the CUDA headers for the host-compiled kernels). Each includes this file with
//! `#[path]` and declares the `rerun-if-env-changed` lines of the variables read here.
#![allow(dead_code)]

use std::env;
use std::path::{Path, PathBuf};

/// scripts/install-cuda-toolchain.sh's folder name for the pinned wheels.
pub const TOOLCHAIN_VERSION_DIR: &str = "cuda-13.0.88";

/// `$CONTRASTIVE_KERNELS_TOOLCHAIN`, else `~/.cache/contrastive-kernels/cuda-13.0.88`.
pub fn toolchain_dir() -> PathBuf {
    if let Ok(dir) = env::var("CONTRASTIVE_KERNELS_TOOLCHAIN") {
        return PathBuf::from(dir);
    }
    let cache = env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache"));
    cache.join("contrastive-kernels").join(TOOLCHAIN_VERSION_DIR)
}

/// nvcc, looked up in this order: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
/// `/usr/local/cuda/bin`, the toolchain folder.
pub fn find_nvcc() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(nvcc) = env::var("NVCC") {
        candidates.push(nvcc.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            candidates.push(Path::new(&root).join("bin").join("nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join("nvcc")));
    }
    candidates.push("/usr/local/cuda/bin/nvcc".into());
    candidates.push(toolchain_dir().join("nvidia/cu13/bin/nvcc"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The CUDA headers (cuda_fp16.h, vector_types.h) of the nvcc found above, else of the toolchain folder.
pub fn cuda_include() -> Option<PathBuf> {
    let beside_nvcc = find_nvcc().and_then(|nvcc| nvcc.parent().and_then(Path::parent).map(|root| root.join("include")));
    beside_nvcc
        .into_iter()
        .chain([toolchain_dir().join("nvidia/cu13/include")])
        .find(|inc| inc.join("cuda_fp16.h").is_file() && inc.join("vector_types.h").is_file())
}
