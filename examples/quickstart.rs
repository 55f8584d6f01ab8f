//! The library's main job so far: normalize a batch of features and compute its temperature-scaled
//! self-similarity on the best backend (the GPU when one is usable, the CPU oracle otherwise), then
//! check the result against the f64 oracle.
//!
//!     cargo run --release --example quickstart -- [--rows N] [--dim D] [--temperature T] [--cpu]

use std::process::ExitCode;
use std::time::Instant;

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use contrastive_kernels::{f16, ops::similarity, rng::SplitMix64, Backend, Float, Matrix, SimilarityOptions};

/// Normalizes random f16 features and computes their temperature-scaled self-similarity on the
/// best backend, then checks it against the f64 oracle.
#[derive(Parser, Debug)]
#[command(name = "quickstart", version)]
struct Args {
    /// Rows of the feature batch, >= 1
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    rows: usize,
    /// Feature dimension, >= 1
    #[arg(long, value_name = "D", default_value_t = 128, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    dim: usize,
    /// Temperature, > 0
    #[arg(long, value_name = "T", default_value_t = 0.2, value_parser = positive, allow_negative_numbers = true)]
    temperature: f32,
    /// CPU backend even when a GPU is usable
    #[arg(long = "cpu")]
    force_cpu: bool,
}

fn positive(s: &str) -> Result<f32, String> {
    s.parse::<f32>().ok().filter(|t| t.is_finite() && *t > 0.0).ok_or_else(|| "must be a finite number > 0".into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
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
