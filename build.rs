//! Compiles every `kernels/*.cu` with nvcc into a fatbin and embeds it in the library.
//!
//! * nvcc is looked up in this order: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
//!   `/usr/local/cuda/bin`, then the toolchain folder of `scripts/install-cuda-toolchain.sh`
//!   (`$CONTRASTIVE_KERNELS_TOOLCHAIN`, default `~/.cache/contrastive-kernels/cuda-13.0.88`).
//! * `CONTRASTIVE_KERNELS_CUDA_ARCHS` overrides the targets: a comma-separated list where
//!   `compute_XY` embeds PTX (JIT-compiled by the driver) and `sm_XY[a]` embeds SASS.
//!   Default: `compute_80,sm_90,sm_90a` (PTX for Ampere and newer, SASS for Hopper).
//! * Warnings are errors. ptxas' per-kernel report (registers, spills, shared memory) is kept
//!   and embedded too, so a test can fail on local-memory spills.
//! * Without nvcc the build still succeeds (with a `cargo:warning`); the GPU backend then
//!   reports "built without CUDA kernels: ..." and the CPU backend works.

#[path = "build_support/cuda.rs"]
mod cuda;
#[path = "build_support/params.rs"]
#[allow(dead_code)] // the layout comparison is for tests/params.rs
mod params;

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cuda::{find_nvcc, toolchain_dir};

const DEFAULT_ARCHS: &str = "compute_80,sm_90,sm_90a";

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "HOME",
        "XDG_CACHE_HOME",
        "CONTRASTIVE_KERNELS_TOOLCHAIN",
        "CONTRASTIVE_KERNELS_CUDA_ARCHS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_support/cuda.rs");
    println!("cargo:rerun-if-changed=build_support/params.rs");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
    let sources = kernel_sources(&kernel_dir);
    for dir in ["common", "params"] {
        for path in fs::read_dir(kernel_dir.join(dir)).into_iter().flatten().flatten() {
            println!("cargo:rerun-if-changed={}", path.path().display());
        }
    }

    // The Rust side of kernels/params/*.h (with or without nvcc: the CPU build uses the constants).
    let headers = params::parse_dir(&kernel_dir.join("params")).unwrap_or_else(|e| panic!("kernel parameter headers: {e}"));
    fs::write(out_dir.join("params.rs"), params::generate_rust(&headers)).unwrap();
    fs::write(out_dir.join("params_probe.cpp"), params::generate_probe(&headers)).unwrap();

    let archs = env::var("CONTRASTIVE_KERNELS_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.into());
    let gencode = match gencode_flags(&archs) {
        Ok(flags) => flags,
        Err(msg) => panic!("CONTRASTIVE_KERNELS_CUDA_ARCHS={archs:?}: {msg}"),
    };

    let generated = match find_nvcc() {
        None => {
            println!(
                "cargo:warning=nvcc not found (looked in $NVCC, $CUDA_HOME, $CUDA_PATH, PATH, \
                 /usr/local/cuda, {}): building without CUDA kernels; the CPU backend still works. \
                 Install the pinned toolchain with `bash scripts/install-cuda-toolchain.sh`.",
                toolchain_dir().display()
            );
            let reason = "nvcc was not found when the crate was built; run \
                          `bash scripts/install-cuda-toolchain.sh` and rebuild";
            format!(
                "pub const COMPILED: bool = false;\n\
                 pub const NOT_COMPILED_REASON: &str = {reason:?};\n\
                 pub const ARCHS: &str = \"\";\n\
                 pub const NVCC_VERSION: &str = \"\";\n\
                 pub const MODULES: &[(&str, &[u8])] = &[];\n\
                 pub const PTXAS_REPORT: &str = \"\";\n"
            )
        }
        Some(nvcc) => {
            let version = nvcc_version(&nvcc);
            let mut modules = String::new();
            let mut report = String::new();
            for src in &sources {
                let name = src.file_stem().unwrap().to_str().unwrap().to_owned();
                let fatbin = out_dir.join(format!("{name}.fatbin"));
                let ptxas = compile(&nvcc, src, &kernel_dir, &fatbin, &gencode);
                let _ = writeln!(report, "### module {name}\n{ptxas}");
                let _ = writeln!(modules, "    ({name:?}, include_bytes!({:?})),", fatbin.display().to_string());
            }
            fs::write(out_dir.join("ptxas-report.txt"), &report).unwrap();
            format!(
                "pub const COMPILED: bool = true;\n\
                 pub const NOT_COMPILED_REASON: &str = \"\";\n\
                 pub const ARCHS: &str = {archs:?};\n\
                 pub const NVCC_VERSION: &str = {version:?};\n\
                 pub const MODULES: &[(&str, &[u8])] = &[\n{modules}];\n\
                 pub const PTXAS_REPORT: &str = include_str!({:?});\n",
                out_dir.join("ptxas-report.txt").display().to_string()
            )
        }
    };
    fs::write(out_dir.join("kernels.rs"), generated).unwrap();
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .expect("kernels/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    sources
}

/// `compute_80` -> PTX, `sm_90a` -> SASS (its virtual arch is the matching `compute_90a`).
fn gencode_flags(archs: &str) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Some(num) = arch.strip_prefix("compute_") {
            flags.push(format!("-gencode=arch=compute_{num},code=compute_{num}"));
        } else if let Some(num) = arch.strip_prefix("sm_") {
            flags.push(format!("-gencode=arch=compute_{num},code=sm_{num}"));
        } else {
            return Err(format!("`{arch}` is neither compute_XY (PTX) nor sm_XY (SASS)"));
        }
    }
    if flags.is_empty() {
        return Err("no architecture given".into());
    }
    Ok(flags)
}

fn nvcc_version(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().find(|l| l.contains("release")).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// Compiles one `.cu` file to a fatbin and returns ptxas' report for it.
fn compile(nvcc: &Path, src: &Path, include: &Path, out: &Path, gencode: &[String]) -> String {
    let output = Command::new(nvcc)
        .arg("-fatbin")
        .args(gencode)
        .args(["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Werror", "all-warnings", "-Xptxas", "-v"])
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        panic!("nvcc failed on {} (warnings are errors)\n{}{}", src.display(), String::from_utf8_lossy(&output.stdout), stderr);
    }
    stderr
}
