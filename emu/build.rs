//! Builds the emulator's native half: every `kernels/*.cu` (and the emulator's own ISA test
//! kernels, emu/kernels/*.cu) compiled for the host by the system C++ compiler, plus the block
//! executor (src/runtime.cpp, src/fiber.cpp), into one static library linked into libckemu.so.
//!
//! Per kernel file: `g++ -E` with emu/include/ckemu/cuda.h force-included (CUDA's own headers
//! provide the host paths of half / bfloat16), then build/rewrite.rs turns the `__shared__`
//! declarations into block-shared references and registers every `extern "C" __global__` kernel,
//! then `g++ -c`.
//!
//! Environment:
//! * `CKEMU_KERNELS_DIR`: the kernels to compile (default: the repository's kernels/).
//! * `CKEMU_SANITIZE=address`: compile the kernels and the executor with AddressSanitizer
//!   (scripts/emu-asan.sh; run with libasan preloaded).
//! * `CXX`: the C++ compiler (default g++). The CUDA headers are found like the main build.rs
//!   finds nvcc: `$CUDA_HOME`, `$CUDA_PATH`, nvcc on `PATH`, /usr/local/cuda, then the toolchain
//!   of scripts/install-cuda-toolchain.sh.

#[path = "../build_support/cuda.rs"]
mod cuda;
#[path = "build/rewrite.rs"]
mod rewrite;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn main() {
    for var in [
        "CKEMU_KERNELS_DIR",
        "CKEMU_SANITIZE",
        "CXX",
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "HOME",
        "XDG_CACHE_HOME",
        "CONTRASTIVE_KERNELS_TOOLCHAIN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels_dir = env::var("CKEMU_KERNELS_DIR").map(PathBuf::from).unwrap_or_else(|_| manifest.join("../kernels"));
    let kernels_dir = kernels_dir.canonicalize().unwrap_or_else(|e| panic!("kernels folder {}: {e}", kernels_dir.display()));
    println!("cargo:rerun-if-changed={}", manifest.join("../build_support/cuda.rs").display());
    for dir in [
        manifest.join("include/ckemu"),
        manifest.join("src"),
        manifest.join("build"),
        manifest.join("kernels"),
        kernels_dir.clone(),
        kernels_dir.join("common"),
        kernels_dir.join("params"),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }

    let cuda_include = cuda::cuda_include().unwrap_or_else(|| {
        panic!(
            "the CUDA headers (cuda_fp16.h, vector_types.h) were not found: run `bash scripts/install-cuda-toolchain.sh` \
             or set CUDA_PATH"
        )
    });
    let cxx = env::var("CXX").unwrap_or_else(|_| "g++".into());
    let sanitize = env::var("CKEMU_SANITIZE").ok().filter(|s| !s.is_empty());
    let mut flags: Vec<String> = ["-std=gnu++17", "-O2", "-fPIC", "-fno-strict-aliasing", "-fvisibility=hidden", "-Wno-unknown-pragmas"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // The build machine runs the emulator: use its FMA unit (nvcc contracts a * b + c into FMA by
    // default too, so contraction makes the host arithmetic closer to the GPU's) and F16C.
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpu.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == flag));
    if cfg!(target_arch = "x86_64") && has("fma") && has("avx2") && has("f16c") {
        flags.extend(["-mfma", "-mavx2", "-mf16c", "-ffp-contract=fast"].map(String::from));
    }
    match sanitize.as_deref() {
        None => {}
        Some("address") => flags.extend(["-fsanitize=address", "-fno-omit-frame-pointer", "-g"].map(String::from)),
        Some(other) => panic!("CKEMU_SANITIZE={other:?}: only `address` is supported"),
    }
    let include_flags = vec![
        format!("-I{}", manifest.join("include").display()),
        format!("-I{}", kernels_dir.display()),
        format!("-I{}", cuda_include.display()),
    ];

    // Every kernel source: the library's, then the emulator's ISA test kernels.
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for dir in [kernels_dir.clone(), manifest.join("kernels")] {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        files.sort();
        for f in files {
            sources.push((f.file_stem().unwrap().to_str().unwrap().to_owned(), f));
        }
    }

    // Jobs: each kernel file (preprocess, rewrite, compile) and the executor's sources.
    enum Job {
        Kernel(String, PathBuf),
        Plain(PathBuf),
    }
    let mut jobs: Vec<Job> = sources.iter().map(|(m, p)| Job::Kernel(m.clone(), p.clone())).collect();
    for f in ["src/runtime.cpp", "src/fiber.cpp"] {
        jobs.push(Job::Plain(manifest.join(f)));
    }
    let objects = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(job) = jobs.get(i) else { break };
                let result = match job {
                    Job::Kernel(module, path) => compile_kernel(&cxx, &flags, &include_flags, &manifest, &out, module, path),
                    Job::Plain(path) => {
                        let obj = out.join(format!("{}.o", path.file_stem().unwrap().to_str().unwrap()));
                        // -O3 for the executor: the emulated mma's loops vectorize.
                        run(Command::new(&cxx).args(&flags).arg("-O3").args(&include_flags).arg("-c").arg(path).arg("-o").arg(&obj))
                            .map(|_| obj)
                    }
                };
                match result {
                    Ok(obj) => objects.lock().unwrap().push(obj),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        panic!("building the emulated kernels failed:\n{}", errors.join("\n\n"));
    }

    let modules: Vec<String> = sources.iter().map(|(m, _)| m.clone()).collect();
    let all = out.join("modules.cpp");
    fs::write(&all, rewrite::all_modules(&modules)).unwrap();
    let all_obj = out.join("modules.o");
    run(Command::new(&cxx).args(&flags).arg("-c").arg(&all).arg("-o").arg(&all_obj)).unwrap_or_else(|e| panic!("{e}"));

    let mut objects = objects.into_inner().unwrap();
    objects.push(all_obj);
    objects.sort();
    let lib = out.join("libckemu_native.a");
    let _ = fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objects)).unwrap_or_else(|e| panic!("{e}"));

    write_stubs(&manifest, &out);

    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=ckemu_native");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    if sanitize.is_some() {
        println!("cargo:rustc-link-lib=dylib=asan");
    }
    println!("cargo:rustc-env=CKEMU_KERNELS_DIR_BUILT={}", kernels_dir.display());
    println!("cargo:rustc-env=CKEMU_SANITIZE_BUILT={}", sanitize.unwrap_or_default());
}

fn compile_kernel(
    cxx: &str,
    flags: &[String],
    include_flags: &[String],
    manifest: &Path,
    out: &Path,
    module: &str,
    path: &Path,
) -> Result<PathBuf, String> {
    let header = manifest.join("include/ckemu/cuda.h");
    let pre = run(Command::new(cxx).args(["-E", "-std=gnu++17", "-x", "c++"]).args(include_flags).arg("-include").arg(&header).arg(path))?;
    let rewritten = rewrite::rewrite(&pre).map_err(|e| format!("{}: {e}", path.display()))?;
    if rewritten.kernels.is_empty() {
        return Err(format!("{}: no extern \"C\" __global__ kernel found", path.display()));
    }
    let unit = out.join(format!("{module}.emu.cpp"));
    let mut text = rewritten.source;
    text.push_str(&rewrite::registry(module, &rewritten.kernels));
    fs::write(&unit, text).map_err(|e| e.to_string())?;
    let obj = out.join(format!("{module}.emu.o"));
    // -x c++: the unit is preprocessed again, so that __FILE__ / __LINE__ in the rewritten
    // declarations follow the line markers back to the kernel sources.
    run(Command::new(cxx).args(flags).args(include_flags).args(["-x", "c++", "-c"]).arg(&unit).arg("-o").arg(&obj))?;
    Ok(obj)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let output = cmd.output().map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
/// stubs.rs: every entry point of src/api/{driver,cublas}.txt that src/*.rs does not define, as a
/// function that logs its name and returns CUDA_ERROR_NOT_SUPPORTED / CUBLAS_STATUS_NOT_SUPPORTED
/// (instead of cudarc's "Missing symbol" panic). Their parameters are ignored: every entry point
/// of both APIs returns its status as an int.
fn write_stubs(manifest: &Path, out: &Path) {
    let mut defined = std::collections::HashSet::new();
    for f in ["src/driver.rs", "src/cublas.rs"] {
        let text = fs::read_to_string(manifest.join(f)).unwrap();
        for part in text.split("extern \"C\" fn ").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            defined.insert(name);
        }
    }
    let mut stubs = String::from("// Generated by emu/build.rs from src/api/*.txt.\n");
    for (list, code) in [("src/api/driver.txt", 801), ("src/api/cublas.txt", 15)] {
        println!("cargo:rerun-if-changed={}", manifest.join(list).display());
        for name in fs::read_to_string(manifest.join(list)).unwrap().lines().map(str::trim) {
            if name.is_empty() || name.starts_with('#') || defined.contains(name) {
                continue;
            }
            stubs.push_str(&format!(
                "#[no_mangle]\npub extern \"C\" fn {name}() -> CUresult {{ unimplemented_entry(\"{name}\", {code}) }}\n"
            ));
        }
    }
    fs::write(out.join("stubs.rs"), stubs).unwrap();
}
