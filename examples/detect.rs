//! The end-to-end one-class anomaly detector: for each normal class, train the MLP encoder
//! contrastively on that class (two augmented views per image, rotated images as synthetic
//! outliers for the losses that use them), build the feature bank of its training images, score
//! the test split with kNN (k-th largest cosine) and report AUROC / AUPR / FPR@95, next to raw
//! pixels scored the same way. GPU when one is usable, CPU otherwise.
//!
//!     cargo run --release --example detect -- --data digits --loss supcon
//!
//! Progress goes to stderr (a bar on a terminal, one summary line otherwise), the table (or
//! `--json`) to stdout. `--help` lists the options. Every flag is checked before training starts:
//! the static ranges by the parser, the rest (classes, k, limits, shift, image shape) against the
//! loaded data, and an error names the flag; the table and the JSON report the values used.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use contrastive_kernels::data::{cifar10, digits, idx, Dataset};
use contrastive_kernels::detect::{evaluate, ClassResult, DetectorConfig, LossKind, Metrics, ScoreLayer, Scorer, StepInfo};
use contrastive_kernels::ops::augment::Augment;
use contrastive_kernels::Backend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Trains a one-class contrastive detector per normal class and reports AUROC / AUPR / FPR@95
/// next to raw pixels scored the same way.
#[derive(Parser, Debug, Clone)]
#[command(name = "detect", version)]
struct Args {
    /// digits (built in) | mnist:DIR | fashion:DIR (IDX files) | cifar10:DIR (binary batches)
    #[arg(long, value_name = "SRC", default_value = "digits")]
    data: String,
    /// supcon | nt_xent | firm | oecl | outlier_exposure | cluster_aware
    #[arg(long, value_name = "NAME", default_value = "supcon", value_parser = loss_kind)]
    loss: LossKind,
    /// Normal classes to run, e.g. 0,3,7 [default: all]
    #[arg(long, value_name = "LIST", value_parser = class_list, allow_negative_numbers = true)]
    classes: Option<Classes>,
    /// Optimizer steps per class, >= 1 [default: digits 150, others 300]
    #[arg(long, value_name = "N", value_parser = at_least(1))]
    steps: Option<usize>,
    /// Normal images per step, >= 2; a class with fewer training images uses all of them [default: digits 256 (all), others 128]
    #[arg(long, value_name = "N", value_parser = at_least(2))]
    batch: Option<usize>,
    /// AdamW learning rate, >= 0 [default: 3e-3]
    #[arg(long, value_name = "X", value_parser = non_negative, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Loss temperature, > 0 [default: 0.5 nt_xent / oecl / outlier_exposure / cluster_aware, 0.2 firm / supcon]
    #[arg(long, value_name = "T", value_parser = positive, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Hidden widths, e.g. 128 or 256,128 (an empty string for none) [default: digits none, others 512,256]
    #[arg(long, value_name = "LIST", value_parser = width_list)]
    hidden: Option<Widths>,
    /// Feature-layer width (the scored layer by default) [default: digits 256, others 128]
    #[arg(long, value_name = "N", value_parser = width)]
    feature: Option<usize>,
    /// Projection-head widths, e.g. 64,32 (an empty string for none) [default: digits 64,32, others 128,64]
    #[arg(long, value_name = "LIST", value_parser = width_list)]
    head: Option<Widths>,
    /// Views: random translation of up to N pixels, below the image side [default: digits 0, mnist 3, cifar10 4]
    #[arg(long, value_name = "N")]
    shift: Option<usize>,
    /// Views: Gaussian pixel noise std, >= 0 [default: digits 0.05]
    #[arg(long, value_name = "X", value_parser = non_negative, allow_negative_numbers = true)]
    noise: Option<f32>,
    /// The kNN scorer's k, in 1..=the smallest bank (a class's training images) [default: 1]
    #[arg(long, value_name = "K", value_parser = at_least(1))]
    k: Option<usize>,
    /// rotations: CSI's ensemble of kNN over the 4 quarter turns (on raw pixels it equals plain kNN) |
    /// knn: plain (needed for non-square images) [default: rotations]
    #[arg(long, value_name = "S", value_parser = scorer)]
    scorer: Option<Scorer>,
    /// Which layer's output is scored
    #[arg(long, value_name = "L", value_enum, default_value_t = Layer::Feature)]
    score_layer: Layer,
    /// Seed of the split, the initialisation and the views
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// At most N training images per class, >= 2 (mnist / cifar10 on the CPU: try 500)
    #[arg(long, value_name = "N", value_parser = at_least(2))]
    train_limit: Option<usize>,
    /// At most N test images (a seeded subset), >= 2
    #[arg(long, value_name = "N", value_parser = at_least(2))]
    test_limit: Option<usize>,
    /// CPU classes trained at once, >= 1 [default: available cores]
    #[arg(long, value_name = "N", value_parser = at_least(1))]
    threads: Option<usize>,
    /// CPU backend even when a GPU is usable
    #[arg(long)]
    cpu: bool,
    /// JSON on stdout instead of the table (no progress bar)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layer {
    /// The feature layer's output (SimCLR's h)
    Feature,
    /// The head's output (z, what the loss sees; CSI scores there)
    Output,
}

/// `--classes`: distinct class ids.
#[derive(Clone, Debug, PartialEq)]
struct Classes(Vec<i32>);

/// `--hidden` / `--head`: layer widths, possibly none.
#[derive(Clone, Debug, PartialEq)]
struct Widths(Vec<usize>);

fn at_least(min: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(min..)
}

fn loss_kind(s: &str) -> Result<LossKind, String> {
    LossKind::parse(s)
        .map_err(|_| "expected supcon, nt_xent, firm, oecl, outlier_exposure or cluster_aware (aliases: infonce, simclr, oe, ccl)".into())
}

fn scorer(s: &str) -> Result<Scorer, String> {
    Scorer::parse(s).map_err(|_| "expected rotations (aliases: ensemble, csi) or knn".into())
}

fn float(s: &str) -> Result<f32, String> {
    s.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| "not a finite number".into())
}

fn positive(s: &str) -> Result<f32, String> {
    float(s).and_then(|v| if v > 0.0 { Ok(v) } else { Err("must be > 0".into()) })
}

fn non_negative(s: &str) -> Result<f32, String> {
    float(s).and_then(|v| if v >= 0.0 { Ok(v) } else { Err("must be >= 0".into()) })
}

/// A layer width: 1..2^31 (the kernels index in i32).
fn width(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|w| (1..=i32::MAX as usize).contains(w))
        .ok_or_else(|| format!("`{}` is not a width in 1..2^31", s.trim()))
}

fn width_list(s: &str) -> Result<Widths, String> {
    s.split(',').filter(|w| !w.trim().is_empty()).map(width).collect::<Result<_, _>>().map(Widths)
}

fn class_list(s: &str) -> Result<Classes, String> {
    let mut out: Vec<i32> = Vec::new();
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let c: i32 = c.parse().ok().filter(|&c| c >= 0).ok_or_else(|| format!("`{c}` is not a class id (0, 1, ...)"))?;
        if out.contains(&c) {
            return Err(format!("class {c} is listed twice"));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err("an empty list (leave --classes out to run every class)".into());
    }
    Ok(Classes(out))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Everything the flags decide is checked here, before a backend is opened or a step is taken.
    let (train, test, cfg, classes) = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args, &train, &test, &cfg, &classes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads the data, applies the flags to the source's defaults and checks them against the data:
/// the training and test splits, the config that will run, and the classes to run.
fn prepare(args: &Args) -> Result<(Dataset, Dataset, DetectorConfig, Vec<i32>), String> {
    let (train, test, base) = load(args)?;
    let cfg = config(args, base);
    let classes = check_against_data(args, &cfg, &train, &test)?;
    Ok((train, test, cfg, classes))
}

/// Train and test splits (after `--train-limit` / `--test-limit`) and the config defaults of the source.
fn load(args: &Args) -> Result<(Dataset, Dataset, DetectorConfig), String> {
    let (source, dir) = match args.data.split_once(':') {
        Some((s, d)) => (s.to_string(), Some(PathBuf::from(d))),
        None => (args.data.clone(), None),
    };
    let need_dir = |what: &str| dir.clone().ok_or_else(|| format!("--data {what} needs a folder: --data {what}:DIR"));
    let read = |r: contrastive_kernels::Result<Dataset>| r.map_err(|e| format!("--data {}: {e}", args.data));
    let (train, test, cfg) = match source.as_str() {
        "digits" => {
            // The UCI set ships as one split: 60 % of each class trains, 40 % tests.
            let (train, test) = read(digits::load())?.stratified_split(0.6, args.seed).map_err(|e| format!("--data digits: {e}"))?;
            (train, test, DetectorConfig::digits(args.loss))
        }
        "mnist" | "fashion" | "fashion-mnist" => {
            let d = need_dir(&source)?;
            (
                read(idx::load_dir(&source, &d, true))?,
                read(idx::load_dir(&source, &d, false))?,
                DetectorConfig::images(args.loss, Augment::mnist()),
            )
        }
        "cifar10" | "cifar-10" => {
            let d = need_dir("cifar10")?;
            (read(cifar10::load_dir(&d, true))?, read(cifar10::load_dir(&d, false))?, DetectorConfig::images(args.loss, Augment::cifar()))
        }
        other => return Err(format!("--data: unknown source `{other}` (digits, mnist:DIR, fashion:DIR, cifar10:DIR)")),
    };
    let mut rng = contrastive_kernels::rng::SplitMix64::new(args.seed ^ 0x5EED);
    let train = match args.train_limit {
        Some(limit) => {
            let mut keep = Vec::new();
            for c in 0..train.classes as i32 {
                let mut idx = train.indices_of(c);
                contrastive_kernels::data::shuffle(&mut idx, &mut rng);
                keep.extend(idx.into_iter().take(limit));
            }
            keep.sort_unstable();
            train.subset(&keep)
        }
        None => train,
    };
    let test = match args.test_limit {
        Some(limit) if limit < test.len() => {
            let mut idx: Vec<usize> = (0..test.len()).collect();
            contrastive_kernels::data::shuffle(&mut idx, &mut rng);
            idx.truncate(limit);
            idx.sort_unstable();
            test.subset(&idx)
        }
        _ => test,
    };
    Ok((train, test, cfg))
}

/// The source's defaults with the flags applied.
fn config(args: &Args, mut cfg: DetectorConfig) -> DetectorConfig {
    cfg.seed = args.seed;
    if let Some(v) = args.steps {
        cfg.steps = v;
    }
    if let Some(v) = args.batch {
        cfg.batch_size = v;
    }
    if let Some(v) = args.lr {
        cfg.adamw.lr = v;
    }
    if let Some(v) = args.temperature {
        cfg.temperature = v;
    }
    if let Some(v) = args.k {
        cfg.k = v;
    }
    if let Some(v) = args.shift {
        cfg.augment.max_shift = v;
    }
    if let Some(v) = args.noise {
        cfg.augment.noise_std = v;
    }
    if let Some(Widths(v)) = &args.hidden {
        cfg.hidden = v.clone();
    }
    if let Some(v) = args.feature {
        cfg.feature = v;
    }
    if let Some(Widths(v)) = &args.head {
        cfg.head = v.clone();
    }
    if let Some(v) = args.scorer {
        cfg.scorer = v;
    }
    cfg.score_layer = match args.score_layer {
        Layer::Feature => ScoreLayer::Feature,
        Layer::Output => ScoreLayer::Output,
    };
    cfg
}

/// The checks that depend on the data, each naming the flag to change; returns the classes to
/// run. After it, the library's own checks (`DetectorConfig::validate`, the kNN scorer's k) cannot
/// fail and nothing is clamped: the run uses exactly the reported values.
fn check_against_data(args: &Args, cfg: &DetectorConfig, train: &Dataset, test: &Dataset) -> Result<Vec<i32>, String> {
    let classes: Vec<i32> = match &args.classes {
        Some(Classes(c)) => c.clone(),
        None => (0..train.classes as i32).collect(),
    };
    if let Some(&c) = classes.iter().find(|&&c| c as usize >= train.classes) {
        return Err(format!("--classes: class {c} is not a class of {} (0..={})", train.name, train.classes.saturating_sub(1)));
    }
    let shape = train.shape;
    let square = shape.height == shape.width;
    if cfg.loss.uses_outliers() && !square {
        return Err(format!(
            "--loss {} rotates images into outliers, which needs square images ({}x{}); use --loss nt_xent or --loss cluster_aware",
            cfg.loss.name(),
            shape.height,
            shape.width
        ));
    }
    if cfg.scorer == Scorer::RotationEnsemble && !square {
        let default = if args.scorer.is_none() { " (the default)" } else { "" };
        return Err(format!(
            "--scorer rotations{default} turns images, which needs square images ({}x{}); use --scorer knn",
            shape.height, shape.width
        ));
    }
    let side = shape.height.max(shape.width);
    if cfg.augment.max_shift > 0 && cfg.augment.max_shift >= side {
        return Err(format!(
            "--shift {} would move a {}x{} image out of the frame; use --shift <= {}",
            cfg.augment.max_shift,
            shape.height,
            shape.width,
            side - 1
        ));
    }
    let limit_note = |flag: &str, v: Option<usize>| v.map_or(String::new(), |v| format!(" (with {flag} {v})"));
    // The bank of a class is its training images: at least 2 to train on, at least k to score.
    let mut smallest: Option<(i32, usize)> = None;
    for &c in &classes {
        let rows = train.labels.iter().filter(|&&l| l == c).count();
        if rows < 2 {
            return Err(format!(
                "class {c} of {} has {rows} training image(s){}; training needs at least 2 (see --classes, --train-limit)",
                train.name,
                limit_note("--train-limit", args.train_limit)
            ));
        }
        if !matches!(smallest, Some((_, r)) if r <= rows) {
            smallest = Some((c, rows));
        }
        let normal = test.labels.iter().filter(|&&l| l == c).count();
        if normal == 0 || normal == test.len() {
            return Err(format!(
                "the test split{} holds {} of class {c}; the metrics need normal and anomalous test images (see --test-limit, --classes)",
                limit_note("--test-limit", args.test_limit),
                if normal == 0 { "no image" } else { "only images" }
            ));
        }
    }
    if let Some((c, bank)) = smallest {
        if cfg.k > bank {
            let classes_note = if classes.len() > 1 { format!("the smallest, class {c}'s") } else { format!("class {c}'s") };
            return Err(format!(
                "--k {} exceeds the bank size {bank} ({classes_note} training images{}); use --k <= {bank}",
                cfg.k,
                limit_note("--train-limit", args.train_limit)
            ));
        }
    }
    // A backstop: the library's checks of what is left (widths, temperature, lr, noise), with the flags' names.
    cfg.validate(shape).map_err(|e| format!("{e} (see --help: --hidden, --feature, --head, --temperature, --lr, --noise)"))?;
    Ok(classes)
}

fn run(args: &Args, train: &Dataset, test: &Dataset, cfg: &DetectorConfig, classes: &[i32]) -> contrastive_kernels::Result<()> {
    let backend = if args.cpu {
        Backend::Cpu
    } else {
        let (backend, why_not) = Backend::auto();
        if let Some(why) = why_not {
            eprintln!("no GPU backend ({why}); running on the CPU");
        }
        backend
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let backend_line = match &backend {
        Backend::Cpu => format!("CPU (f64 oracle; {} classes at a time)", threads.min(classes.len()).max(1)),
        Backend::Gpu(_) => format!("{} (encoder kernels f16; loss on the fused loss kernels, f32 features)", backend.describe()),
    };
    eprintln!("backend: {backend_line}");
    eprintln!(
        "data: {} ({} train / {} test images, {}x{}x{}); loss {} (tau {}); encoder {:?}; {} steps; scorer {} (k = {})",
        train.name,
        train.len(),
        test.len(),
        train.shape.channels,
        train.shape.height,
        train.shape.width,
        cfg.loss.name(),
        cfg.temperature,
        cfg.mlp_config(train.shape.len())?.widths,
        cfg.steps,
        cfg.scorer.name(),
        cfg.k
    );

    // Progress on stderr: a bar on a terminal (indicatif draws nothing when stderr is not one),
    // none with --json; one summary line after training either way.
    let start = Instant::now();
    let total_steps = (cfg.steps * classes.len()) as u64;
    let target = if args.json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(total_steps), target);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps  {msg}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>."),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let rows = AtomicUsize::new(0);
    let progress = |s: &StepInfo| {
        let done = rows.fetch_add(s.rows, Ordering::Relaxed) + s.rows;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4} (class {})  {:.0} rows/s", s.loss, s.class, done as f64 / secs));
        bar.inc(1);
    };
    let results = evaluate(&backend, cfg, train, test, classes, threads, &progress);
    bar.finish_and_clear();
    let results = results?;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "trained {} steps ({} per class, {} class{}), {:.0} rows/s; {elapsed:.1} s in all",
        bar.position(),
        cfg.steps,
        classes.len(),
        if classes.len() == 1 { "" } else { "es" },
        rows.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9)
    );

    if args.json {
        let report = Report::new(&backend_line, train, cfg, &results, elapsed);
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| contrastive_kernels::Error::InvalidArgument { arg: "json", reason: e.to_string() })?
        );
    } else {
        print_table(&backend_line, train, cfg, &results, elapsed);
    }
    Ok(())
}

fn print_table(backend: &str, train: &Dataset, cfg: &DetectorConfig, results: &[ClassResult], elapsed: f64) {
    println!("backend: {backend}");
    println!(
        "data: {}, loss: {} (tau {}), {} steps per class, scorer {} (k = {}), seed {}",
        train.name,
        cfg.loss.name(),
        cfg.temperature,
        cfg.steps,
        cfg.scorer.name(),
        cfg.k,
        cfg.seed
    );
    println!();
    println!("| normal class | AUROC | AUPR | FPR@95 | raw-pixel AUROC | train / test normal / test anomalous | final loss |");
    println!("|---:|---:|---:|---:|---:|---|---:|");
    for r in results {
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {} / {} / {} | {:.4} |",
            r.class,
            r.trained.auroc,
            r.trained.aupr,
            r.trained.fpr95,
            r.raw_pixels.auroc,
            r.train_images,
            r.test_normal,
            r.test_anomalies,
            r.final_loss
        );
    }
    let trained = Metrics::mean(&results.iter().map(|r| r.trained).collect::<Vec<_>>());
    let raw = Metrics::mean(&results.iter().map(|r| r.raw_pixels).collect::<Vec<_>>());
    println!("| **mean** | **{:.4}** | {:.4} | {:.4} | {:.4} | | |", trained.auroc, trained.aupr, trained.fpr95, raw.auroc);
    println!();
    println!(
        "mean AUROC: trained features {:.4} vs raw pixels {:.4} ({:+.4}); {:.1} s in all",
        trained.auroc,
        raw.auroc,
        trained.auroc - raw.auroc,
        elapsed
    );
}

/// `x` rounded to `digits` decimals (the JSON keeps the precision the hand-written format had).
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The `--json` report (non-finite numbers become null).
#[derive(Serialize, Debug)]
struct Report {
    backend: String,
    data: String,
    loss: &'static str,
    temperature: f32,
    steps: usize,
    scorer: &'static str,
    k: usize,
    seed: u64,
    seconds: f64,
    mean: MeanMetrics,
    classes: Vec<ClassReport>,
}

#[derive(Serialize, Debug)]
struct MeanMetrics {
    trained: MetricsReport,
    raw_pixels: MetricsReport,
}

#[derive(Serialize, Debug)]
struct MetricsReport {
    auroc: f64,
    aupr: f64,
    fpr95: f64,
}

#[derive(Serialize, Debug)]
struct ClassReport {
    class: i32,
    trained: MetricsReport,
    raw_pixels: MetricsReport,
    final_loss: f64,
    train_images: usize,
    test_normal: usize,
    test_anomalies: usize,
    train_seconds: f64,
}

impl MetricsReport {
    fn new(m: &Metrics) -> Self {
        MetricsReport { auroc: round(m.auroc, 6), aupr: round(m.aupr, 6), fpr95: round(m.fpr95, 6) }
    }
}

impl Report {
    fn new(backend: &str, train: &Dataset, cfg: &DetectorConfig, results: &[ClassResult], elapsed: f64) -> Self {
        let trained = Metrics::mean(&results.iter().map(|r| r.trained).collect::<Vec<_>>());
        let raw = Metrics::mean(&results.iter().map(|r| r.raw_pixels).collect::<Vec<_>>());
        Report {
            backend: backend.to_string(),
            data: train.name.clone(),
            loss: cfg.loss.name(),
            temperature: cfg.temperature,
            steps: cfg.steps,
            scorer: cfg.scorer.name(),
            k: cfg.k,
            seed: cfg.seed,
            seconds: round(elapsed, 3),
            mean: MeanMetrics { trained: MetricsReport::new(&trained), raw_pixels: MetricsReport::new(&raw) },
            classes: results
                .iter()
                .map(|r| ClassReport {
                    class: r.class,
                    trained: MetricsReport::new(&r.trained),
                    raw_pixels: MetricsReport::new(&r.raw_pixels),
                    final_loss: round(r.final_loss, 6),
                    train_images: r.train_images,
                    test_normal: r.test_normal,
                    test_anomalies: r.test_anomalies,
                    train_seconds: round(r.train_seconds, 3),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use contrastive_kernels::data::ImageShape;
    use contrastive_kernels::Matrix;

    fn parse(flags: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("detect").chain(flags.iter().copied())).map_err(|e| e.to_string())
    }

    /// `per_class` training images of each of 3 classes (h x w), 4 test images per class.
    fn data(h: usize, w: usize, per_class: usize) -> (Dataset, Dataset) {
        let shape = ImageShape { channels: 1, height: h, width: w };
        let make = |n: usize| {
            let labels: Vec<i32> = (0..3 * n).map(|i| (i / n) as i32).collect();
            let images = Matrix::from_fn(labels.len(), shape.len(), |i, j| ((i * 7 + j * 3) % 11) as f32 / 11.0);
            Dataset::new("toy", shape, images, labels, 3).unwrap()
        };
        (make(per_class), make(4))
    }

    fn check(flags: &[&str], train: &Dataset, test: &Dataset) -> Result<Vec<i32>, String> {
        let args = parse(flags)?;
        let cfg = config(&args, DetectorConfig::digits(args.loss));
        check_against_data(&args, &cfg, train, test)
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_documented_flag_still_parses() {
        let a = parse(&[
            "--data",
            "digits",
            "--loss",
            "oe",
            "--classes",
            "0, 3,7",
            "--steps",
            "5",
            "--batch",
            "64",
            "--lr",
            "1e-3",
            "--temperature",
            "0.3",
            "--hidden",
            "",
            "--feature",
            "32",
            "--head",
            "16,8",
            "--shift",
            "1",
            "--noise",
            "0",
            "--k",
            "3",
            "--scorer",
            "knn",
            "--score-layer",
            "output",
            "--seed",
            "7",
            "--train-limit",
            "50",
            "--test-limit",
            "100",
            "--threads",
            "2",
            "--cpu",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.loss, LossKind::OutlierExposure);
        assert_eq!(a.classes, Some(Classes(vec![0, 3, 7])));
        assert_eq!(a.hidden, Some(Widths(vec![])));
        assert_eq!(a.head, Some(Widths(vec![16, 8])));
        assert_eq!((a.steps, a.batch, a.k, a.seed, a.score_layer), (Some(5), Some(64), Some(3), 7, Layer::Output));
        assert!(a.cpu && a.json);
        let d = parse(&[]).unwrap();
        assert_eq!((d.data.as_str(), d.loss, d.score_layer, d.classes), ("digits", LossKind::SupCon, Layer::Feature, None));
    }

    /// Static ranges: the parser rejects them, naming the flag.
    #[test]
    fn out_of_range_flags_are_rejected_by_name() {
        for (flags, flag) in [
            (&["--steps", "0"][..], "--steps"),
            (&["--batch", "1"], "--batch"),
            (&["--k", "0"], "--k"),
            (&["--temperature", "0"], "--temperature"),
            (&["--temperature", "nan"], "--temperature"),
            (&["--lr", "-1"], "--lr"),
            (&["--temperature", "-0.5"], "--temperature"),
            (&["--noise", "inf"], "--noise"),
            (&["--feature", "0"], "--feature"),
            (&["--hidden", "64,0"], "--hidden"),
            (&["--head", "x"], "--head"),
            (&["--threads", "0"], "--threads"),
            (&["--train-limit", "1"], "--train-limit"),
            (&["--test-limit", "1"], "--test-limit"),
            (&["--classes", "1,1"], "--classes"),
            (&["--classes", "-1"], "--classes"),
            (&["--classes", ""], "--classes"),
            (&["--loss", "triplet"], "--loss"),
            (&["--scorer", "lof"], "--scorer"),
            (&["--score-layer", "head"], "--score-layer"),
            (&["--steps"], "--steps"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = parse(flags).expect_err(&format!("{flags:?} parsed"));
            assert!(e.contains(flag), "{flags:?}: the error does not name {flag}: {e}");
        }
    }

    /// The case: `--k` above the bank was clamped silently while the report printed it.
    #[test]
    fn k_above_the_bank_is_an_error_naming_the_flag() {
        let (train, test) = data(4, 4, 6);
        assert_eq!(check(&["--k", "6"], &train, &test).unwrap(), vec![0, 1, 2]);
        let e = check(&["--k", "7"], &train, &test).unwrap_err();
        assert!(e.starts_with("--k 7 exceeds the bank size 6") && e.ends_with("use --k <= 6"), "{e}");
        // One class: its own bank.
        let e = check(&["--k", "500", "--classes", "1"], &train, &test).unwrap_err();
        assert!(e.contains("--k 500 exceeds the bank size 6 (class 1's training images)"), "{e}");
    }

    #[test]
    fn data_dependent_flags_are_checked_by_name() {
        let (train, test) = data(4, 4, 6);
        let e = check(&["--classes", "0,3"], &train, &test).unwrap_err();
        assert!(e.starts_with("--classes: class 3 is not a class of toy"), "{e}");
        let e = check(&["--shift", "4"], &train, &test).unwrap_err();
        assert!(e.starts_with("--shift 4 would move a 4x4 image out of the frame; use --shift <= 3"), "{e}");
        assert!(check(&["--shift", "3"], &train, &test).is_ok());
        // Too few training images of a class (as --train-limit or a tiny data set leaves it).
        let (small, _) = data(4, 4, 1);
        let e = check(&[], &small, &test).unwrap_err();
        assert!(e.contains("class 0 of toy has 1 training image(s)"), "{e}");
        // A test split without a class's images (as --test-limit can leave it).
        let only_0 = test.subset(&test.indices_of(0));
        let e = check(&["--classes", "1"], &train, &only_0).unwrap_err();
        assert!(e.contains("holds no image of class 1"), "{e}");
        let e = check(&["--classes", "0"], &train, &only_0).unwrap_err();
        assert!(e.contains("holds only images of class 0"), "{e}");
    }

    #[test]
    fn non_square_images_need_the_plain_scorer_and_no_rotated_outliers() {
        let (train, test) = data(4, 6, 6);
        let e = check(&["--loss", "nt_xent"], &train, &test).unwrap_err();
        assert!(e.starts_with("--scorer rotations (the default) turns images"), "{e}");
        let e = check(&["--scorer", "knn"], &train, &test).unwrap_err();
        assert!(e.starts_with("--loss supcon rotates images into outliers"), "{e}");
        assert!(check(&["--loss", "nt_xent", "--scorer", "knn"], &train, &test).is_ok());
    }

    #[test]
    fn the_config_uses_the_flags_values() {
        let a =
            parse(&["--k", "5", "--steps", "9", "--temperature", "0.3", "--hidden", "", "--head", "8", "--score-layer", "output"]).unwrap();
        let cfg = config(&a, DetectorConfig::images(a.loss, Augment::mnist()));
        assert_eq!((cfg.k, cfg.steps, cfg.temperature), (5, 9, 0.3));
        assert_eq!((cfg.hidden.clone(), cfg.head.clone(), cfg.score_layer), (vec![], vec![8], ScoreLayer::Output));
    }

    #[test]
    fn json_report_has_the_documented_keys() {
        let m = Metrics { auroc: 0.123456789, aupr: 0.5, fpr95: 1.0 };
        let r = ClassResult {
            class: 3,
            trained: m,
            raw_pixels: m,
            final_loss: 1.0 / 3.0,
            train_images: 10,
            test_normal: 4,
            test_anomalies: 8,
            train_seconds: 0.12345,
        };
        let (train, _) = data(4, 4, 3);
        let report = Report::new("CPU \"x\"", &train, &DetectorConfig::digits(LossKind::Firm), &[r], 1.5);
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string_pretty(&report).unwrap()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["backend", "classes", "data", "k", "loss", "mean", "scorer", "seconds", "seed", "steps", "temperature"]);
        assert_eq!(v["backend"], "CPU \"x\"");
        assert_eq!((v["loss"].as_str(), v["k"].as_u64(), v["temperature"].as_f64()), (Some("firm"), Some(1), Some(0.2)));
        let c = &v["classes"][0];
        assert_eq!(
            keys(c),
            ["class", "final_loss", "raw_pixels", "test_anomalies", "test_normal", "train_images", "train_seconds", "trained"]
        );
        assert_eq!(
            (c["trained"]["auroc"].as_f64(), c["final_loss"].as_f64(), c["train_seconds"].as_f64()),
            (Some(0.123457), Some(0.333333), Some(0.123))
        );
        assert_eq!(keys(&v["mean"]["raw_pixels"]), ["aupr", "auroc", "fpr95"]);
    }
}
