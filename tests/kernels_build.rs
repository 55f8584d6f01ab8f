//! What build.rs embedded: the fatbins are really there (required under CI=true), every kernel
//! the ops launch is in them, and ptxas reports no local-memory spill in any kernel.

use contrastive_kernels::build_info;

/// Kernels the ops launch by name; each must appear in ptxas' report.
const EXPECTED_KERNELS: &[&str] = &[
    "l2_normalize_forward_f16_f32",
    "l2_normalize_backward_bf16_bf16",
    "similarity_f16_f32",
    "similarity_bf16_f16_unaligned",
    "similarity_f32_f32",
    "contrastive_forward_f16",
    "contrastive_pad_bf16",
    "contrastive_forward_f16_online",
    "contrastive_forward_bf16_online",
    "contrastive_forward_f32_online",
    "contrastive_forward_sym_bf16",
    "contrastive_forward_sym_f16",
    "contrastive_pad_f16",
    "contrastive_forward_sym_f32",
    "contrastive_forward_columns",
    "contrastive_forward_merge",
    "contrastive_reduce",
    "augment_views",
    "rotate_views",
    "contrastive_check_inputs",
    "contrastive_backward_f16_g1",
    "contrastive_backward_f16_g2",
    "contrastive_backward_bf16_g1",
    "contrastive_backward_bf16_g2",
    "contrastive_backward_f32_g1",
    "contrastive_backward_bf16_g4",
    "contrastive_backward_f16_g4",
    "contrastive_backward_bf16_g4_chunked",
    "contrastive_backward_columns",
    "contrastive_backward_merge",
    "contrastive_backward_prepare",
    "contrastive_pack_bf16",
    "contrastive_norm_penalty_backward_f16",
    "contrastive_forward_f32",
    "contrastive_backward_f32_g2",
    "linear_forward_f16",
    "linear_forward_bf16_unaligned",
    "linear_backward_data_bf16",
    "linear_backward_data_f16_unaligned",
    "linear_backward_weight_f16",
    "linear_backward_weight_bf16_unaligned",
    "column_sums_bf16",
    "adamw_f16",
    "convert_f32_bf16",
    "contrastive_unfused_softmax",
    "contrastive_unfused_grad_f16",
    "contrastive_unfused_grad_bf16",
    "contrastive_unfused_grad_f32",
    "topk_tiles_f16",
    "topk_tiles_bf16_unaligned",
    "topk_tiles_f32",
    "topk_merge",
    "topk_radix_hist_f16",
    "topk_radix_collect_bf16_unaligned",
    "topk_radix_hist_f32",
    "topk_radix_step",
    "topk_sort_rows",
    "topk_dense_rows",
    "kmeans_mean_f16_f32",
    "kmeans_mean_bf16_bf16",
    "kmeans_mean_f32_f32",
];

#[test]
fn kernels_are_embedded_under_ci() {
    if !build_info::COMPILED {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but the crate was built without CUDA kernels: {}",
            build_info::NOT_COMPILED_REASON
        );
        println!("kernels_are_embedded_under_ci: skipped, built without nvcc ({})", build_info::NOT_COMPILED_REASON);
        return;
    }
    for module in ["augment", "contrastive", "contrastive_unfused", "kmeans", "mlp", "normalize", "similarity", "topk"] {
        let image = build_info::module_image(module).unwrap_or_else(|| panic!("module {module} not embedded"));
        // A fatbin starts with the magic 0xBA55ED50 (little-endian).
        assert_eq!(&image[..4], &[0x50, 0xED, 0x55, 0xBA], "module {module} is not a fatbin");
    }
    assert!(build_info::NVCC_VERSION.contains("release"), "nvcc version recorded: {}", build_info::NVCC_VERSION);
}

/// (kernel, arch, spill stores, spill loads) for every entry ptxas compiled.
fn ptxas_entries(report: &str) -> Vec<(String, String, u64, u64)> {
    let mut entries = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_owned();
            let arch = parts.nth(1).unwrap_or_default().to_owned();
            current = Some((name, arch));
        } else if line.contains("bytes spill stores") {
            let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
            // "N bytes stack frame, S bytes spill stores, L bytes spill loads"
            if let (Some((name, arch)), [_, stores, loads, ..]) = (current.take(), numbers.as_slice()) {
                entries.push((name, arch, *stores, *loads));
            }
        }
    }
    entries
}

#[test]
fn no_local_memory_spills() {
    if !build_info::COMPILED {
        println!("no_local_memory_spills: skipped, built without nvcc");
        return;
    }
    let entries = ptxas_entries(build_info::PTXAS_REPORT);
    for kernel in EXPECTED_KERNELS {
        assert!(entries.iter().any(|(name, ..)| name == kernel), "ptxas report has no entry for {kernel}");
    }
    let spills: Vec<String> = entries
        .iter()
        .filter(|(_, _, stores, loads)| *stores > 0 || *loads > 0)
        .map(|(name, arch, stores, loads)| format!("{name} ({arch}): {stores} B spill stores, {loads} B spill loads"))
        .collect();
    assert!(spills.is_empty(), "local-memory spills:\n{}", spills.join("\n"));
}

#[test]
fn ptxas_parser_reads_spills() {
    let sample = "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n\
                  ptxas info    : Function properties for k\n    8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads\n";
    assert_eq!(ptxas_entries(sample), vec![("k".to_owned(), "sm_90a".to_owned(), 12, 4)]);
}

/// Without a driver (CI, build machines) opening the GPU is an error, never a panic.
#[test]
fn gpu_absence_is_an_error() {
    match contrastive_kernels::Gpu::first() {
        Ok(gpu) => println!("GPU present: {}", gpu.describe()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Grid-stride loops and block offsets index in 64 bits: an `int` index overflows `i += stride`
/// when the count nears 2^31 (adamw, convert and check_inputs did; found in the CPU emulator's
/// review). Too large to run in a test (8 GiB per f32 buffer), so the sources are checked.
#[test]
fn no_32_bit_grid_stride_index() {
    // Where this was built, or under the working directory (a GPU kit runs this binary from a
    // copy of the repository elsewhere; scripts/gpu-run.sh runs it from the root).
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let dir = if built.is_dir() { built } else { std::env::current_dir().unwrap().join("kernels") };
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for d in [dir.clone(), dir.join("common")] {
        files.extend(
            std::fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh")),
        );
    }
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let declares_32_bit = ["int ", "unsigned ", "uint32_t "].iter().any(|t| {
                code.split(t).skip(1).any(|rest| {
                    let name_end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                    name_end > 0
                        && rest[name_end..].trim_start().starts_with('=')
                        && rest.split(';').next().is_some_and(|e| e.contains("gridDim"))
                })
            });
            if declares_32_bit || (code.contains("gridDim") && code.contains("for (int ")) {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "32-bit grid-stride indices:\n{}", bad.join("\n"));
}
