//! The library's main job so far: normalize a batch of features and compute its temperature-scaled
//! self-similarity on the best backend (the GPU when one is usable, the CPU oracle otherwise), then
//! check the result against the f64 oracle.
//!
//!     cargo run --release --example quickstart -- [--rows N] [--dim D] [--temperature T] [--cpu]

use std::time::Instant;

use contrastive_kernels::{f16, ops::similarity, rng::SplitMix64, Backend, Float, Matrix, SimilarityOptions};

struct Args {
    rows: usize,
    dim: usize,
    temperature: f32,
    force_cpu: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { rows: 2048, dim: 128, temperature: 0.2, force_cpu: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value("--rows")?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--dim" => args.dim = value("--dim")?.parse().map_err(|e| format!("--dim: {e}"))?,
            "--temperature" => args.temperature = value("--temperature")?.parse().map_err(|e| format!("--temperature: {e}"))?,
            "--cpu" => args.force_cpu = true,
            "-h" | "--help" => {
                println!("usage: quickstart [--rows N (2048)] [--dim D (128)] [--temperature T (0.2)] [--cpu]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> contrastive_kernels::Result<()> {
    let backend = if args.force_cpu {
        Backend::Cpu
    } else {
        let (backend, why_not_gpu) = Backend::auto();
        if let Some(why) = why_not_gpu {
            eprintln!("no GPU backend ({why}); running on the CPU");
        }
        backend
    };
    println!("backend: {}", backend.describe());

    let mut rng = SplitMix64::new(42);
    let x = Matrix::from_fn(args.rows, args.dim, |_, _| f16::from_f64(rng.normal()));
    let opts = SimilarityOptions::with_temperature(args.temperature)?.mask_diagonal(f32::NEG_INFINITY);

    let start = Instant::now();
    let (_, norms) = backend.l2_normalize::<f16, f16>(&x)?;
    let s = backend.similarity::<f16, f32>(&x, &x, &opts)?;
    let elapsed = start.elapsed();
    println!(
        "l2_normalize + similarity of {} x {} f16 features at tau = {}: {:.1} ms (including transfers); mean norm {:.3}",
        args.rows,
        args.dim,
        args.temperature,
        elapsed.as_secs_f64() * 1e3,
        norms.iter().map(|&v| v as f64).sum::<f64>() / norms.len().max(1) as f64
    );

    // Check a sample of rows against the oracle (all of them on small inputs).
    let sample: Vec<usize> = (0..args.rows).step_by((args.rows / 64).max(1)).collect();
    let rows = Matrix::from_fn(sample.len(), args.dim, |i, j| *x.get(sample[i], j));
    let unmasked = SimilarityOptions { mask_diagonal: None, ..opts };
    let want = similarity::cpu::similarity(&rows, &x, &unmasked);
    let mut max_err = 0f64;
    for (k, &i) in sample.iter().enumerate() {
        for j in 0..args.rows {
            let (g, w) = (s.get(i, j).to_f64(), *want.get(k, j));
            let expected = if i == j { f64::NEG_INFINITY } else { w };
            max_err = max_err.max(if g == expected { 0.0 } else { (g - expected).abs() });
        }
    }
    println!("max |S - oracle| over {} sampled rows: {max_err:.2e} (logits bounded by {:.1})", sample.len(), 1.0 / args.temperature);
    Ok(())
}
