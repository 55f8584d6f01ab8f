//! ckbench: the loss throughput table a performance engineer asks for, fused and unfused side by
//! side on one GPU in one run, with a PyTorch column when `scripts/torch_bench.py` timed the same
//! shapes.
//!
//!   cargo run --release --bin ckbench -- [--loss nt_xent,supcon,firm] [--n 4096,8192] [--d 128,512]
//!       [--dtype bf16,f16] [--pass fwd,fwd_bwd] [--runs 20] [--warmup 3] [--no-unfused]
//!       [--torch FILE.tsv] [--json FILE]
//!
//! Per case: the median time over `runs` single calls (CUDA events, after `warmup` calls), achieved
//! TFLOP/s counting 2 n^2 d per GEMM-equivalent (fwd 1, fwd_bwd 4, as issue 3 counts), the
//! fraction of the device's dense tensor-core peak and of its exp (MUFU) limit (DESIGN.md section
//! 6, known for H100 / H200), the unfused / fused ratio, and PyTorch eager / torch.compile times
//! from the TSV. `--json` writes the same rows. Exit status 1 when no GPU is usable.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use contrastive_kernels::bench::{fused_call, median_call_us, unfused_call, unfused_fits, BenchInputs, BenchLoss, DevicePeaks, Pass};
use contrastive_kernels::{bf16, f16, DType, FloatElement, Gpu};

const HELP: &str = "usage: ckbench [--loss nt_xent,supcon,firm] [--n 4096,8192] [--d 128] [--dtype bf16,f16] \
[--pass fwd,fwd_bwd] [--runs 20] [--warmup 3] [--no-unfused] [--torch FILE.tsv] [--json FILE]";

struct Args {
    losses: Vec<BenchLoss>,
    sizes: Vec<usize>,
    dims: Vec<usize>,
    dtypes: Vec<DType>,
    passes: Vec<Pass>,
    runs: usize,
    warmup: usize,
    unfused: bool,
    torch: Option<String>,
    json: Option<String>,
}

fn list<T>(flag: &str, value: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<T> = value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse(s.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag}: {e}"))?;
    if items.is_empty() {
        return Err(format!("{flag}: an empty list"));
    }
    Ok(items)
}

fn count(s: &str) -> Result<usize, String> {
    s.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(|| format!("`{s}` is not a positive integer"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        losses: BenchLoss::ALL.to_vec(),
        sizes: vec![4096, 8192],
        dims: vec![128],
        dtypes: vec![DType::BF16],
        passes: Pass::ALL.to_vec(),
        runs: 20,
        warmup: 3,
        unfused: true,
        torch: None,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{HELP}"));
        match flag.as_str() {
            "--loss" => a.losses = list(&flag, &value()?, |s| BenchLoss::parse(s).map_err(|e| e.to_string()))?,
            "--n" => a.sizes = list(&flag, &value()?, count)?,
            "--d" => a.dims = list(&flag, &value()?, count)?,
            "--dtype" => {
                a.dtypes = list(&flag, &value()?, |s| match s {
                    "bf16" => Ok(DType::BF16),
                    "f16" => Ok(DType::F16),
                    "f32" => Ok(DType::F32),
                    _ => Err(format!("`{s}` is not one of bf16, f16, f32")),
                })?
            }
            "--pass" => a.passes = list(&flag, &value()?, |s| Pass::parse(s).map_err(|e| e.to_string()))?,
            "--runs" => a.runs = count(&value()?).map_err(|e| format!("--runs: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|_| "--warmup: not an integer".to_string())?,
            "--no-unfused" => a.unfused = false,
            "--torch" => a.torch = Some(value()?),
            "--json" => a.json = Some(value()?),
            "-h" | "--help" => return Err(HELP.into()),
            other => return Err(format!("unknown argument `{other}`\n{HELP}")),
        }
    }
    Ok(a)
}

/// PyTorch timings keyed by (loss, n, d, dtype, pass): microseconds of eager and torch.compile.
type TorchTimes = HashMap<(String, usize, usize, String, String), (Option<f64>, Option<f64>)>;

/// Reads scripts/torch_bench.py's TSV: a header, then `loss n d dtype pass eager_us compile_us`
/// (`nan` where a mode did not run).
fn read_torch(path: &str) -> Result<TorchTimes, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--torch {path}: {e}"))?;
    let mut out = TorchTimes::new();
    for (k, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 7 {
            return Err(format!("--torch {path}: line {}: expected 7 tab-separated fields, got {}", k + 1, f.len()));
        }
        let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
        let size = |s: &str| s.parse::<usize>().map_err(|_| format!("--torch {path}: line {}: `{s}` is not a size", k + 1));
        out.insert((f[0].into(), size(f[1])?, size(f[2])?, f[3].into(), f[4].into()), (num(f[5]), num(f[6])));
    }
    Ok(out)
}

struct Row {
    loss: BenchLoss,
    n: usize,
    d: usize,
    dtype: DType,
    pass: Pass,
    fused_us: f64,
    unfused: Result<f64, String>,
    torch: (Option<f64>, Option<f64>),
}

fn measure<T: FloatElement>(
    gpu: &Gpu,
    args: &Args,
    loss: BenchLoss,
    n: usize,
    d: usize,
    rows: &mut Vec<Row>,
    torch: &TorchTimes,
) -> contrastive_kernels::Result<()> {
    let inputs = BenchInputs::<T>::new(gpu, loss, n, d)?;
    let view = inputs.view();
    let config = loss.loss();
    let stream = gpu.stream();
    let unfused_verdict = if args.unfused { unfused_fits(gpu, n, d, T::DTYPE, 256 << 20) } else { Err("--no-unfused".into()) };
    for &pass in &args.passes {
        eprintln!("ckbench: {} n={n} d={d} {} {}", loss.name(), T::DTYPE, pass.name());
        let fused_us = median_call_us(stream, args.warmup, args.runs, || fused_call(gpu, &config, &view, pass))?;
        let unfused = match &unfused_verdict {
            Ok(_) => median_call_us(stream, args.warmup, args.runs, || unfused_call(gpu, &config, &view, pass)).map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        };
        let key = (loss.name().to_string(), n, d, T::DTYPE.to_string(), pass.name().to_string());
        rows.push(Row { loss, n, d, dtype: T::DTYPE, pass, fused_us, unfused, torch: torch.get(&key).copied().unwrap_or((None, None)) });
    }
    Ok(())
}

fn tflops(row: &Row, us: f64) -> f64 {
    row.pass.gemm_equivalents() * 2.0 * (row.n * row.n * row.d) as f64 / (us * 1e-6) / 1e12
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn print_table(peaks: &DevicePeaks, rows: &[Row]) {
    println!(
        "ckbench on {}: median single-call time (CUDA events); TF = TFLOP/s at 2*n*n*d per GEMM-equivalent (fwd 1, fwd_bwd 4)",
        peaks.device
    );
    println!(
        "%TC: of {} TFLOP/s dense tensor cores; %exp: of {} exp/s (MUFU), counting n*n exps per pass; ratio = other / fused",
        opt(peaks.tensor_tflops, 0),
        peaks.exps_per_second.map_or("n/a".into(), |v| format!("{v:.2e}"))
    );
    println!(
        "{:<9} {:>6} {:>5} {:>5} {:>8} {:>11} {:>7} {:>6} {:>6} {:>11} {:>6} {:>10} {:>6} {:>11} {:>6}",
        "loss",
        "n",
        "d",
        "dtype",
        "pass",
        "fused us",
        "TF",
        "%TC",
        "%exp",
        "unfused us",
        "ratio",
        "torch us",
        "ratio",
        "compile us",
        "ratio"
    );
    for r in rows {
        let tf = tflops(r, r.fused_us);
        let exps = r.pass.exps_per_logit() * (r.n * r.n) as f64 / (r.fused_us * 1e-6);
        let ratio = |other: Option<f64>| opt(other.map(|o| o / r.fused_us), 2);
        let unfused = r.unfused.as_ref().ok().copied();
        println!(
            "{:<9} {:>6} {:>5} {:>5} {:>8} {:>11.1} {:>7.1} {:>6} {:>6} {:>11} {:>6} {:>10} {:>6} {:>11} {:>6}",
            r.loss.name(),
            r.n,
            r.d,
            r.dtype.to_string(),
            r.pass.name(),
            r.fused_us,
            tf,
            opt(peaks.tensor_tflops.map(|p| 100.0 * tf / p), 1),
            opt(peaks.exps_per_second.map(|p| 100.0 * exps / p), 1),
            opt(unfused, 1),
            ratio(unfused),
            opt(r.torch.0, 1),
            ratio(r.torch.0),
            opt(r.torch.1, 1),
            ratio(r.torch.1),
        );
        if let Err(why) = &r.unfused {
            println!("          (unfused: {why})");
        }
    }
}

fn json(peaks: &DevicePeaks, rows: &[Row]) -> String {
    let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v}"));
    let mut s = format!(
        "{{\"device\": {:?}, \"tensor_tflops\": {}, \"exps_per_second\": {}, \"rows\": [\n",
        peaks.device,
        num(peaks.tensor_tflops),
        num(peaks.exps_per_second)
    );
    for (k, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "  {{\"loss\": \"{}\", \"n\": {}, \"d\": {}, \"dtype\": \"{}\", \"pass\": \"{}\", \"fused_us\": {}, \"fused_tflops\": {}, \"unfused_us\": {}, \"unfused_note\": {}, \"torch_eager_us\": {}, \"torch_compile_us\": {}}}{}\n",
            r.loss.name(),
            r.n,
            r.d,
            r.dtype,
            r.pass.name(),
            r.fused_us,
            tflops(r, r.fused_us),
            num(r.unfused.as_ref().ok().copied()),
            r.unfused.as_ref().err().map_or("null".into(), |e| format!("{e:?}")),
            num(r.torch.0),
            num(r.torch.1),
            if k + 1 < rows.len() { "," } else { "" }
        );
    }
    s.push_str("]}\n");
    s
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let gpu = match Gpu::first() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("ckbench: no usable GPU: {e}");
            return ExitCode::from(1);
        }
    };
    let torch = match args.torch.as_deref().map(read_torch).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    for &loss in &args.losses {
        for &n in &args.sizes {
            for &d in &args.dims {
                for &dtype in &args.dtypes {
                    let r = match dtype {
                        DType::BF16 => measure::<bf16>(&gpu, &args, loss, n, d, &mut rows, &torch),
                        DType::F16 => measure::<f16>(&gpu, &args, loss, n, d, &mut rows, &torch),
                        _ => measure::<f32>(&gpu, &args, loss, n, d, &mut rows, &torch),
                    };
                    if let Err(e) = r {
                        eprintln!("ckbench: {} n={n} d={d} {dtype}: {e}", loss.name());
                        return ExitCode::from(1);
                    }
                }
            }
        }
    }
    let peaks = DevicePeaks::of(&gpu);
    print_table(&peaks, &rows);
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, json(&peaks, &rows)) {
            eprintln!("ckbench: --json {path}: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
