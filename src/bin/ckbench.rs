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
use std::process::ExitCode;

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use contrastive_kernels::bench::{fused_call, median_call_us, unfused_call, unfused_fits, BenchInputs, BenchLoss, DevicePeaks, Pass};
use contrastive_kernels::{bf16, f16, DType, FloatElement, Gpu};
use serde::Serialize;

/// The loss throughput table: fused and unfused side by side on one GPU, with a PyTorch column
/// from scripts/torch_bench.py's TSV. Exit status 1 when no GPU is usable, 2 for a bad flag.
#[derive(Parser, Debug)]
#[command(name = "ckbench", version)]
struct Args {
    /// Losses, comma-separated: nt_xent, supcon, firm [default: all three]
    #[arg(long = "loss", value_name = "LIST", value_delimiter = ',', value_parser = bench_loss)]
    losses: Vec<BenchLoss>,
    /// Batch rows n, comma-separated, >= 1
    #[arg(long = "n", value_name = "LIST", value_delimiter = ',', default_value = "4096,8192", value_parser = positive())]
    sizes: Vec<usize>,
    /// Feature dims d, comma-separated, >= 1
    #[arg(long = "d", value_name = "LIST", value_delimiter = ',', default_value = "128", value_parser = positive())]
    dims: Vec<usize>,
    /// Element types, comma-separated: bf16, f16, f32
    #[arg(long = "dtype", value_name = "LIST", value_delimiter = ',', default_value = "bf16", value_parser = dtype)]
    dtypes: Vec<DType>,
    /// Passes, comma-separated: fwd, fwd_bwd [default: both]
    #[arg(long = "pass", value_name = "LIST", value_delimiter = ',', value_parser = pass)]
    passes: Vec<Pass>,
    /// Timed calls per case (the median is reported), >= 1
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = positive())]
    runs: usize,
    /// Untimed calls before timing
    #[arg(long, value_name = "N", default_value_t = 3)]
    warmup: usize,
    /// Skip the unfused baseline
    #[arg(long = "no-unfused")]
    no_unfused: bool,
    /// scripts/torch_bench.py's TSV: adds the PyTorch eager / torch.compile columns
    #[arg(long, value_name = "FILE.tsv")]
    torch: Option<String>,
    /// Also write the rows as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
}

impl Args {
    /// The losses and passes to run (all when the flag is absent).
    fn resolve(mut self) -> Self {
        if self.losses.is_empty() {
            self.losses = BenchLoss::ALL.to_vec();
        }
        if self.passes.is_empty() {
            self.passes = Pass::ALL.to_vec();
        }
        self
    }
}

fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

fn bench_loss(s: &str) -> Result<BenchLoss, String> {
    BenchLoss::parse(s.trim()).map_err(|_| "expected nt_xent, supcon or firm".into())
}

fn pass(s: &str) -> Result<Pass, String> {
    Pass::parse(s.trim()).map_err(|_| "expected fwd or fwd_bwd".into())
}

fn dtype(s: &str) -> Result<DType, String> {
    match s.trim() {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        _ => Err("expected bf16, f16 or f32".into()),
    }
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
    let unfused_verdict = if !args.no_unfused { unfused_fits(gpu, n, d, T::DTYPE, 256 << 20) } else { Err("--no-unfused".into()) };
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

/// `--json FILE`: the device's peaks and one entry per row (null where a value is unknown).
#[derive(Serialize, Debug)]
struct Report<'a> {
    device: &'a str,
    tensor_tflops: Option<f64>,
    exps_per_second: Option<f64>,
    rows: Vec<JsonRow<'a>>,
}

#[derive(Serialize, Debug)]
struct JsonRow<'a> {
    loss: &'static str,
    n: usize,
    d: usize,
    dtype: String,
    pass: &'static str,
    fused_us: f64,
    fused_tflops: f64,
    unfused_us: Option<f64>,
    /// Why the unfused baseline did not run.
    unfused_note: Option<&'a str>,
    torch_eager_us: Option<f64>,
    torch_compile_us: Option<f64>,
}

fn json(peaks: &DevicePeaks, rows: &[Row]) -> String {
    let report = Report {
        device: &peaks.device,
        tensor_tflops: peaks.tensor_tflops,
        exps_per_second: peaks.exps_per_second,
        rows: rows
            .iter()
            .map(|r| JsonRow {
                loss: r.loss.name(),
                n: r.n,
                d: r.d,
                dtype: r.dtype.to_string(),
                pass: r.pass.name(),
                fused_us: r.fused_us,
                fused_tflops: tflops(r, r.fused_us),
                unfused_us: r.unfused.as_ref().ok().copied(),
                unfused_note: r.unfused.as_ref().err().map(String::as_str),
                torch_eager_us: r.torch.0,
                torch_compile_us: r.torch.1,
            })
            .collect(),
    };
    // Plain data (strings, numbers, options): serialization cannot fail.
    serde_json::to_string_pretty(&report).expect("serializing the ckbench report") + "\n"
}

fn main() -> ExitCode {
    let args = Args::parse().resolve();
    // The flags are checked (clap), and the TSV read, before the GPU is opened.
    let torch = match args.torch.as_deref().map(read_torch).transpose() {
        Ok(t) => t.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(flags: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("ckbench").chain(flags.iter().copied())).map(Args::resolve).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_documented_flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.losses.len(), a.sizes.clone(), a.dims.clone(), a.passes.len(), a.runs, a.warmup),
            (3, vec![4096, 8192], vec![128], 2, 20, 3)
        );
        assert!(matches!(a.dtypes[..], [DType::BF16]) && !a.no_unfused && a.torch.is_none() && a.json.is_none());
        let a = parse(&[
            "--loss",
            "supcon,firm",
            "--n",
            "1024",
            "--d",
            "64,128",
            "--dtype",
            "bf16,f16",
            "--pass",
            "fwd",
            "--runs",
            "5",
            "--warmup",
            "0",
            "--no-unfused",
            "--torch",
            "t.tsv",
            "--json",
            "out.json",
        ])
        .unwrap();
        assert_eq!((a.losses.len(), a.sizes.clone(), a.dims.clone(), a.dtypes.len(), a.passes.len()), (2, vec![1024], vec![64, 128], 2, 1));
        assert_eq!((a.runs, a.warmup, a.no_unfused, a.torch.as_deref(), a.json.as_deref()), (5, 0, true, Some("t.tsv"), Some("out.json")));
    }

    #[test]
    fn bad_flags_are_rejected_by_name() {
        for (flags, flag) in [
            (&["--n", "0"][..], "--n"),
            (&["--d", "x"], "--d"),
            (&["--runs", "0"], "--runs"),
            (&["--warmup", "-1"], "-1"),
            (&["--dtype", "f64"], "--dtype"),
            (&["--loss", "triplet"], "--loss"),
            (&["--pass", "bwd"], "--pass"),
            (&["--json"], "--json"),
        ] {
            let e = parse(flags).expect_err(&format!("{flags:?} parsed"));
            assert!(e.contains(flag), "{flags:?}: the error does not name {flag}: {e}");
        }
    }

    #[test]
    fn json_rows_keep_their_keys_and_nulls() {
        let peaks = DevicePeaks { device: "GPU \"0\"".into(), tensor_tflops: None, exps_per_second: Some(1e12) };
        let row = |unfused: Result<f64, String>| Row {
            loss: BenchLoss::SupCon,
            n: 4096,
            d: 128,
            dtype: DType::BF16,
            pass: Pass::FwdBwd,
            fused_us: 100.0,
            unfused,
            torch: (Some(300.0), None),
        };
        let text = json(&peaks, &[row(Ok(250.0)), row(Err("too large: \"n\"".into()))]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["device"], "GPU \"0\"");
        assert!(v["tensor_tflops"].is_null());
        assert_eq!(v["exps_per_second"], 1e12);
        let rows = v["rows"].as_array().unwrap();
        let mut keys: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "d",
                "dtype",
                "fused_tflops",
                "fused_us",
                "loss",
                "n",
                "pass",
                "torch_compile_us",
                "torch_eager_us",
                "unfused_note",
                "unfused_us"
            ]
        );
        assert_eq!(
            (rows[0]["loss"].as_str(), rows[0]["dtype"].as_str(), rows[0]["pass"].as_str()),
            (Some("supcon"), Some("bf16"), Some("fwd_bwd"))
        );
        assert_eq!((rows[0]["unfused_us"].as_f64(), rows[0]["torch_eager_us"].as_f64()), (Some(250.0), Some(300.0)));
        assert!(rows[0]["unfused_note"].is_null() && rows[0]["torch_compile_us"].is_null());
        assert!(rows[1]["unfused_us"].is_null());
        assert_eq!(rows[1]["unfused_note"], "too large: \"n\"");
        let want_tf = 4.0 * 2.0 * (4096.0 * 4096.0 * 128.0) / 100e-6 / 1e12;
        assert!((rows[0]["fused_tflops"].as_f64().unwrap() - want_tf).abs() < 1e-9 * want_tf);
    }
}
