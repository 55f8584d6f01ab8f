//! The end-to-end one-class anomaly detector: for each normal class, train the MLP encoder
//! contrastively on that class (two augmented views per image, rotated images as synthetic
//! outliers for the losses that use them), build the feature bank of its training images, score
//! the test split with kNN (k-th largest cosine) and report AUROC / AUPR / FPR@95, next to raw
//! pixels scored the same way. GPU when one is usable, CPU otherwise.
//!
//!     cargo run --release --example detect -- --data digits --loss supcon
//!
//! Progress goes to stderr, the table (or `--json`) to stdout. `--help` lists the options.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use contrastive_kernels::data::{cifar10, digits, idx, Dataset};
use contrastive_kernels::detect::{evaluate, ClassResult, DetectorConfig, LossKind, Metrics, Scorer, StepInfo};
use contrastive_kernels::ops::augment::Augment;
use contrastive_kernels::Backend;

const USAGE: &str = "usage: detect [options]
  --data SRC          digits (built in, default) | mnist:DIR | fashion:DIR (IDX files) | cifar10:DIR (binary batches)
  --loss NAME         supcon (default) | nt_xent | firm | oecl | outlier_exposure | cluster_aware
  --classes LIST      normal classes to run, e.g. 0,3,7 (default: all)
  --steps N           optimizer steps per class (digits: 150)
  --batch N           normal images per step (digits: 256, i.e. all)
  --lr X              AdamW learning rate (3e-3)
  --temperature T     loss temperature (per-loss default: 0.5 nt_xent/oecl/oe, 0.2 firm/supcon)
  --hidden LIST       hidden widths, e.g. 128 or 256,128 (an empty string for none)
  --feature N         feature-layer width
  --head LIST         projection-head widths, e.g. 64,32
  --shift N           views: random translation of up to N pixels (digits: 0, mnist: 3, cifar10: 4)
  --noise X           views: Gaussian pixel noise std (digits: 0.05)
  --k K               kNN scorer's k (1)
  --scorer S          rotations (default: CSI's ensemble of kNN over the 4 quarter turns; on raw
                      pixels it equals plain kNN) | knn (plain; needed for non-square images)
  --score-layer L     feature (default) | output: which layer's output is scored
  --seed S            seed of the split, the initialisation and the views (0)
  --train-limit N     at most N training images per class (mnist / cifar10 on the CPU: try 500)
  --test-limit N      at most N test images (seeded subset)
  --threads N         CPU classes trained at once (default: available cores)
  --cpu               CPU backend even when a GPU is usable
  --json              JSON on stdout instead of the table";

struct Args {
    data: String,
    loss: LossKind,
    classes: Option<Vec<i32>>,
    steps: Option<usize>,
    batch: Option<usize>,
    lr: Option<f32>,
    temperature: Option<f32>,
    k: Option<usize>,
    shift: Option<usize>,
    noise: Option<f32>,
    hidden: Option<Vec<usize>>,
    feature: Option<usize>,
    head: Option<Vec<usize>>,
    score_output: bool,
    scorer: Option<Scorer>,
    seed: u64,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    threads: Option<usize>,
    cpu: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        data: "digits".into(),
        loss: LossKind::SupCon,
        classes: None,
        steps: None,
        batch: None,
        lr: None,
        temperature: None,
        k: None,
        shift: None,
        noise: None,
        hidden: None,
        feature: None,
        head: None,
        score_output: false,
        scorer: None,
        seed: 0,
        train_limit: None,
        test_limit: None,
        threads: None,
        cpu: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: `{v}` is not a valid number"))
        }
        fn list(flag: &str, v: String) -> Result<Vec<usize>, String> {
            v.split(',').filter(|w| !w.trim().is_empty()).map(|w| num(flag, w.trim().to_string())).collect()
        }
        match flag.as_str() {
            "--data" => a.data = value()?,
            "--loss" => a.loss = LossKind::parse(&value()?).map_err(|e| e.to_string())?,
            "--classes" => a.classes = Some(value()?.split(',').map(|c| num("--classes", c.trim().to_string())).collect::<Result<_, _>>()?),
            "--steps" => a.steps = Some(num(&flag, value()?)?),
            "--batch" => a.batch = Some(num(&flag, value()?)?),
            "--lr" => a.lr = Some(num(&flag, value()?)?),
            "--temperature" => a.temperature = Some(num(&flag, value()?)?),
            "--k" => a.k = Some(num(&flag, value()?)?),
            "--shift" => a.shift = Some(num(&flag, value()?)?),
            "--noise" => a.noise = Some(num(&flag, value()?)?),
            "--hidden" => a.hidden = Some(list(&flag, value()?)?),
            "--feature" => a.feature = Some(num(&flag, value()?)?),
            "--head" => a.head = Some(list(&flag, value()?)?),
            "--score-layer" => {
                a.score_output = match value()?.as_str() {
                    "feature" => false,
                    "output" => true,
                    other => return Err(format!("--score-layer: `{other}` is neither feature nor output")),
                }
            }
            "--scorer" => a.scorer = Some(Scorer::parse(&value()?).map_err(|e| e.to_string())?),
            "--seed" => a.seed = num(&flag, value()?)?,
            "--train-limit" => a.train_limit = Some(num(&flag, value()?)?),
            "--test-limit" => a.test_limit = Some(num(&flag, value()?)?),
            "--threads" => a.threads = Some(num(&flag, value()?)?),
            "--cpu" => a.cpu = true,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(a)
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

/// Train and test splits and the config defaults for the data source.
fn load(args: &Args) -> contrastive_kernels::Result<(Dataset, Dataset, DetectorConfig)> {
    let (source, dir) = match args.data.split_once(':') {
        Some((s, d)) => (s.to_string(), Some(PathBuf::from(d))),
        None => (args.data.clone(), None),
    };
    let need_dir = |what: &str| {
        dir.clone().ok_or_else(|| contrastive_kernels::Error::InvalidArgument {
            arg: "data",
            reason: format!("{what} needs a folder: --data {what}:DIR"),
        })
    };
    let (train, test, cfg) = match source.as_str() {
        "digits" => {
            // The UCI set ships as one split: 60 % of each class trains, 40 % tests.
            let (train, test) = digits::load()?.stratified_split(0.6, args.seed)?;
            (train, test, DetectorConfig::digits(args.loss))
        }
        "mnist" | "fashion" | "fashion-mnist" => {
            let d = need_dir(&source)?;
            (idx::load_dir(&source, &d, true)?, idx::load_dir(&source, &d, false)?, DetectorConfig::images(args.loss, Augment::mnist()))
        }
        "cifar10" | "cifar-10" => {
            let d = need_dir("cifar10")?;
            (cifar10::load_dir(&d, true)?, cifar10::load_dir(&d, false)?, DetectorConfig::images(args.loss, Augment::cifar()))
        }
        other => {
            return Err(contrastive_kernels::Error::InvalidArgument {
                arg: "data",
                reason: format!("unknown source `{other}` (digits, mnist:DIR, fashion:DIR, cifar10:DIR)"),
            })
        }
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

fn run(args: &Args) -> contrastive_kernels::Result<()> {
    let backend = if args.cpu {
        Backend::Cpu
    } else {
        let (backend, why_not) = Backend::auto();
        if let Some(why) = why_not {
            eprintln!("no GPU backend ({why}); running on the CPU");
        }
        backend
    };
    let (train, test, mut cfg) = load(args)?;
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
    if let Some(v) = &args.hidden {
        cfg.hidden = v.clone();
    }
    if let Some(v) = args.feature {
        cfg.feature = v;
    }
    if let Some(v) = &args.head {
        cfg.head = v.clone();
    }
    if let Some(v) = args.scorer {
        cfg.scorer = v;
    }
    if args.score_output {
        cfg.score_layer = contrastive_kernels::detect::ScoreLayer::Output;
    }
    let classes: Vec<i32> = args.classes.clone().unwrap_or_else(|| (0..train.classes as i32).collect());
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

    // One progress line on stderr: steps done over all classes, throughput, last loss.
    let start = Instant::now();
    let total_steps = cfg.steps * classes.len();
    let state = Mutex::new((0usize, 0usize, f64::NAN, Instant::now())); // steps, rows, last loss, last print
    let progress = |s: &StepInfo| {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        st.1 += s.rows;
        st.2 = s.loss;
        if st.3.elapsed().as_millis() >= 200 || st.0 == total_steps {
            st.3 = Instant::now();
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let width = 30;
            let filled = width * st.0 / total_steps.max(1);
            eprint!(
                "\r[{}{}] {}/{} steps  loss {:.4} (class {})  {:.0} rows/s  {:.0}s ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                st.0,
                total_steps,
                st.2,
                s.class,
                st.1 as f64 / secs,
                secs
            );
            let _ = std::io::stderr().flush();
        }
    };
    let results = evaluate(&backend, &cfg, &train, &test, &classes, threads, &progress)?;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!();

    if args.json {
        println!("{}", json(&backend_line, &train, &cfg, &results, elapsed));
    } else {
        print_table(&backend_line, &train, &cfg, &results, elapsed);
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

fn json(backend: &str, train: &Dataset, cfg: &DetectorConfig, results: &[ClassResult], elapsed: f64) -> String {
    let metrics = |m: &Metrics| format!("{{\"auroc\": {:.6}, \"aupr\": {:.6}, \"fpr95\": {:.6}}}", m.auroc, m.aupr, m.fpr95);
    let per_class: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "    {{\"class\": {}, \"trained\": {}, \"raw_pixels\": {}, \"final_loss\": {:.6}, \"train_images\": {}, \"test_normal\": {}, \"test_anomalies\": {}, \"train_seconds\": {:.3}}}",
                r.class, metrics(&r.trained), metrics(&r.raw_pixels), r.final_loss, r.train_images, r.test_normal, r.test_anomalies, r.train_seconds
            )
        })
        .collect();
    let trained = Metrics::mean(&results.iter().map(|r| r.trained).collect::<Vec<_>>());
    let raw = Metrics::mean(&results.iter().map(|r| r.raw_pixels).collect::<Vec<_>>());
    format!(
        "{{\n  \"backend\": {:?},\n  \"data\": {:?},\n  \"loss\": {:?},\n  \"temperature\": {},\n  \"steps\": {},\n  \"scorer\": {:?},\n  \"k\": {},\n  \"seed\": {},\n  \"seconds\": {:.3},\n  \"mean\": {{\"trained\": {}, \"raw_pixels\": {}}},\n  \"classes\": [\n{}\n  ]\n}}",
        backend, train.name, cfg.loss.name(), cfg.temperature, cfg.steps, cfg.scorer.name(), cfg.k, cfg.seed, elapsed, metrics(&trained), metrics(&raw), per_class.join(",\n")
    )
}
