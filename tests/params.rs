//! Kernel parameters defined once (kernels/params/*.h): the reader's unit tests (the module is
//! build.rs's own, included here) and the layout drift test, which compiles every header with the
//! host C++ compiler and compares each struct's size and field offsets with the generated Rust.

#[path = "../build_support/params.rs"]
#[allow(dead_code)]
mod reader;

/// The generated module, as the library includes it (src/gpu/params.rs).
#[allow(dead_code)]
mod generated {
    /// # Safety
    /// As crate::gpu::params::KernelParams: implemented only by the generated `#[repr(C)]` structs.
    pub unsafe trait KernelParams: Copy {}
    include!(concat!(env!("OUT_DIR"), "/params.rs"));
}

use std::path::Path;
use std::process::Command;

fn host_compiler() -> Option<String> {
    let candidates = [std::env::var("CXX").ok(), Some("c++".into()), Some("g++".into()), Some("clang++".into())];
    candidates.into_iter().flatten().find(|cxx| Command::new(cxx).arg("--version").output().is_ok_and(|o| o.status.success()))
}

#[test]
fn c_and_rust_layouts_agree() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe = Path::new(env!("OUT_DIR")).join("params_probe.cpp");
    let Some(cxx) = host_compiler() else {
        // The emulator's build needs the same compiler; a CPU-only machine may lack it.
        eprintln!("SKIPPED: no host C++ compiler (CXX, c++, g++, clang++) to compile {}", probe.display());
        return;
    };
    let dir = std::env::temp_dir().join(format!("ck-params-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("probe");
    // -Wpadded is not asked for: padding is part of the layout both sides must agree on.
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-Wall", "-Werror", "-I"])
        .arg(manifest.join("kernels"))
        .arg(&probe)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the host compiler");
    assert!(out.status.success(), "{cxx} failed on {}:\n{}", probe.display(), String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().expect("run the layout probe");
    assert!(run.status.success());
    let c = String::from_utf8(run.stdout).unwrap();
    let rust = reader::format_rust_layouts(generated::LAYOUTS);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(c.lines().count() > 100, "the probe printed too little:\n{c}");
    if let Err(e) = reader::compare_layouts(&c, &rust) {
        panic!("{e}");
    }
}

#[test]
fn the_headers_also_compile_as_c() {
    // Plain C, as the headers promise (a C host or binding generator can read them too).
    let Some(cc) =
        ["cc", "gcc", "clang"].into_iter().find(|cc| Command::new(cc).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        eprintln!("SKIPPED: no C compiler");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let tmp = std::env::temp_dir().join(format!("ck-params-c-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for entry in std::fs::read_dir(dir.join("params")).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // Twice: the include guard holds.
        let unit = tmp.join(format!("{name}.c"));
        std::fs::write(&unit, format!("#include \"params/{name}\"\n#include \"params/{name}\"\n")).unwrap();
        let out = Command::new(cc)
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
            .arg(&dir)
            .arg(&unit)
            .output()
            .expect("run the C compiler");
        assert!(out.status.success(), "{} is not plain C:\n{}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn every_header_is_generated() {
    let headers = reader::parse_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/params")).unwrap();
    let ops: Vec<&str> = headers.iter().map(|h| h.op.as_str()).collect();
    for op in ["augment", "contrastive", "contrastive_unfused", "kmeans", "mlp", "normalize", "similarity", "topk"] {
        assert!(ops.contains(&op), "kernels/params/{op}.h missing: {ops:?}");
    }
    // Every kernel module has its header.
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cu") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            assert!(ops.contains(&stem.as_str()), "kernels/{stem}.cu has no kernels/params/{stem}.h");
        }
    }
    assert_eq!(generated::topk::HIST_DYN_SMEM, generated::topk::TILE * generated::topk::RADIX_BINS * 4);
    assert_eq!(std::mem::size_of::<generated::contrastive::GradSide>(), 88);
}
