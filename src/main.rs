//! The `dfengine` command line: one function per subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::FromArgs;
use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::cuda::{GpuProbe, probe};
use dfengine::backend::ops::Backend;
use dfengine::config::{self, ConfigError, Override, ResolvedConfig};
use dfengine::data::synth::SynthParams;
use dfengine::train::error::TrainError;
use dfengine::train::predict::{Prediction, predict_video};
use dfengine::train::run::{RunOptions, Trainer};

/// dfengine: train deepfake video detectors on your own CUDA kernels, inside a VRAM budget.
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Train(TrainArgs),
    Profile(ProfileArgs),
    Synth(SynthArgs),
    Prepare(PrepareArgs),
    Eval(EvalArgs),
    Predict(PredictArgs),
    Faces(FacesArgs),
}

fn parse_override(text: &str) -> Result<Override, String> {
    text.parse().map_err(|e: ConfigError| e.to_string())
}

/// Train a detector from a config file.
#[derive(FromArgs)]
#[argh(subcommand, name = "train")]
struct TrainArgs {
    /// the config file (e.g. configs/memory_optimized.toml)
    #[argh(positional)]
    config: PathBuf,
    /// override one value, e.g. --set dataloader.batch_size=8 (repeatable)
    #[argh(option, long = "set", from_str_fn(parse_override))]
    overrides: Vec<Override>,
    /// the pool's hard cap on device memory, e.g. 12GiB (same as --set gpu.vram_budget=...)
    #[argh(option)]
    vram_budget: Option<String>,
    /// print the resolved config, each value with its source, and exit
    #[argh(switch)]
    dry_run: bool,
    /// continue a run from this checkpoint (e.g. runs/x/last.safetensors): same next batch
    #[argh(option)]
    resume: Option<PathBuf>,
    /// no progress bar (for logs)
    #[argh(switch)]
    quiet: bool,
    /// stop after this many optimizer steps with a checkpoint, as Ctrl-C does
    #[argh(option)]
    max_steps: Option<u64>,
    /// pick the largest micro-batch whose planned footprint fits the VRAM budget (same
    /// effective batch); the first step confirms it, the governor's retry corrects it
    #[argh(switch)]
    auto_batch: bool,
    /// where to compute: auto (the GPU when one is usable, else the CPU), cpu or cuda
    #[argh(option, default = "Compute::Auto", from_str_fn(parse_compute))]
    device: Compute,
}

/// Report GPU and host memory, pool statistics, suggestions and kernel throughput.
#[derive(FromArgs)]
#[argh(subcommand, name = "profile")]
struct ProfileArgs {
    /// the config to profile (the defaults when omitted)
    #[argh(positional)]
    config: Option<PathBuf>,
    /// override one value, e.g. --set dataloader.batch_size=8 (repeatable)
    #[argh(option, long = "set", from_str_fn(parse_override))]
    overrides: Vec<Override>,
    /// machine-readable output
    #[argh(switch)]
    json: bool,
    /// draw the memory timeline of the run folder ([train] out_dir, or --run) into this SVG
    #[argh(option)]
    plot: Option<PathBuf>,
    /// the run folder to plot (default: the config's [train] out_dir)
    #[argh(option)]
    run: Option<PathBuf>,
}

/// Write labelled synthetic face videos in the FaceForensics++ layout.
#[derive(FromArgs)]
#[argh(subcommand, name = "synth")]
struct SynthArgs {
    /// the folder to create
    #[argh(positional)]
    out_dir: PathBuf,
    /// how many videos (half real, half fake)
    #[argh(option, default = "200")]
    videos: u32,
    /// frame side in pixels (even)
    #[argh(option, default = "128")]
    size: usize,
    /// frames per video
    #[argh(option, default = "32")]
    frames: usize,
    /// artefact subtlety, from 0 (obvious swaps) to 1 (subtle ones)
    #[argh(option, default = "0.5")]
    difficulty: f32,
    /// seed: the same seed gives the same videos
    #[argh(option, default = "0")]
    seed: u64,
}

/// Index a dataset and fill the frame cache; --list only counts videos per split.
#[derive(FromArgs)]
#[argh(subcommand, name = "prepare")]
struct PrepareArgs {
    /// the config naming the dataset
    #[argh(positional)]
    config: PathBuf,
    /// print the detected layout and the videos per split, decode nothing
    #[argh(switch)]
    list: bool,
    /// override one value, e.g. --set data.root=data/demo (repeatable)
    #[argh(option, long = "set", from_str_fn(parse_override))]
    overrides: Vec<Override>,
    /// machine-readable output
    #[argh(switch)]
    json: bool,
    /// where face detection runs (`[data] faces = "detect"`): auto (the GPU of [gpu] device
    /// when one is usable, else the CPU), cpu or cuda
    #[argh(option, default = "Compute::Auto", from_str_fn(parse_compute))]
    device: Compute,
}

/// Evaluate a checkpoint on the test split (clip AUC, frame AUC, ACC, EER, log loss).
#[derive(FromArgs)]
#[argh(subcommand, name = "eval")]
struct EvalArgs {
    /// the config naming the dataset and model
    #[argh(positional)]
    config: PathBuf,
    /// the checkpoint (.safetensors)
    #[argh(option)]
    checkpoint: PathBuf,
    /// where to write per-video scores (default: beside the checkpoint, .test_scores.csv)
    #[argh(option)]
    csv: Option<PathBuf>,
}

/// Score video files with a trained checkpoint: probability of fake per clip.
#[derive(FromArgs)]
#[argh(subcommand, name = "predict")]
struct PredictArgs {
    /// the checkpoint (.safetensors)
    #[argh(option)]
    checkpoint: PathBuf,
    /// the videos to score
    #[argh(positional)]
    videos: Vec<PathBuf>,
    /// machine-readable output
    #[argh(switch)]
    json: bool,
}

/// Show the faces the detector finds in videos and still images (PNG, JPEG).
#[derive(FromArgs)]
#[argh(subcommand, name = "faces")]
struct FacesArgs {
    /// the videos and images to look at
    #[argh(positional)]
    paths: Vec<PathBuf>,
    /// the config whose [data] settings apply (face_detector, face_min_size,
    /// face_thresholds, max_frames; the defaults when omitted)
    #[argh(option)]
    config: Option<PathBuf>,
    /// override one value, e.g. --set data.face_min_size=40 (repeatable)
    #[argh(option, long = "set", from_str_fn(parse_override))]
    overrides: Vec<Override>,
    /// machine-readable output
    #[argh(switch)]
    json: bool,
    /// write each frame, its boxes and landmarks drawn, as PNG into this folder
    #[argh(option)]
    draw: Option<PathBuf>,
}

/// How a command failed, which decides the exit code: 2 for input the user must fix
/// (a bad config, a bad flag), 1 for everything else.
enum Failure {
    Input(String),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Input(e.to_string())
    }
}

fn load_config(file: Option<&Path>, overrides: &[Override]) -> Result<ResolvedConfig, Failure> {
    Ok(config::load(file, overrides)?)
}

fn train(args: TrainArgs) -> Result<(), Failure> {
    let mut overrides = args.overrides;
    if let Some(budget) = &args.vram_budget {
        overrides.push(parse_override(&format!("gpu.vram_budget={budget}")).map_err(Failure::Input)?);
    }
    let resolved = load_config(Some(&args.config), &overrides)?;
    if args.dry_run {
        println!("# dfengine train --dry-run: resolved config from {}", args.config.display());
        println!("# backend: {}", backend_line(&probe()));
        print!("{}", resolved.annotated_toml());
        return Ok(());
    }
    let mut config = resolved.config;
    if args.auto_batch {
        auto_batch(&mut config)?;
    }
    let opts = RunOptions { resume: args.resume, quiet: args.quiet, max_steps: args.max_steps };
    match pick_device(args.device)? {
        Picked::Cpu => {
            let backend = cpu_backend(&config)?;
            run_training(backend, config, &args.config, opts)
        }
        #[cfg(feature = "cuda")]
        Picked::Cuda => {
            let backend = cuda_backend(&config, config.dataloader.pin_memory)?;
            run_training(backend, config, &args.config, opts)
        }
    }
}

/// The CUDA backend on `[gpu] device`, its pool capped by `gpu.vram_budget` when that is
/// a size; `pinned` stages uploads through page-locked memory.
#[cfg(feature = "cuda")]
fn cuda_backend(
    config: &config::Config,
    pinned: bool,
) -> Result<dfengine::backend::cuda::backend::CudaBackend, Failure> {
    let budget = match config.gpu.vram_budget {
        config::VramBudget::Bytes(n) => Some(n as usize),
        config::VramBudget::Auto => None,
    };
    dfengine::backend::cuda::backend::CudaBackend::open(config.gpu.device, budget, pinned)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("opening cuda:{}: {e}", config.gpu.device)))
}

/// The training run on backend `backend`.
fn run_training<B: Backend>(
    backend: B,
    config: config::Config,
    config_path: &Path,
    opts: RunOptions,
) -> Result<(), Failure> {
    let splits = dfengine::data::splits::splits(&config).map_err(|e| Failure::Input(e.to_string()))?;
    let run_dir = PathBuf::from(&config.train.out_dir);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", run_dir.display())))?;
    eprintln!(
        "dfengine train {}: backbone = \"{}\" on {}; data {}: {} train / {} val / {} test clips; effective batch {} (micro-batch {} × {} accumulation)",
        config_path.display(),
        config.model.backbone,
        backend.name(),
        splits.description,
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        config.effective_batch(),
        config.dataloader.batch_size,
        config.train.accumulation_steps,
    );
    let (micro, frames, mixed) =
        (config.dataloader.batch_size as u64, config.data.max_frames as u64, config.train.mixed_precision);
    let budget = backend.pool_stats().budget_bytes as u64;
    let mode = dfengine::model::footprint::resolve_mode(&config, micro, frames, mixed, budget);
    let planned = dfengine::model::footprint::plan_step(&config, micro, frames, mixed, mode);
    eprintln!(
        "planned step footprint ({} activations, activation_memory = \"{mode}\"{}): {}",
        dfengine::tensor::DType::activations(mixed),
        match config.train.activation_memory {
            config::ActivationMemory::Auto =>
                format!(", picked by \"auto\" for the {} budget", config::format_bytes(budget)),
            _ => String::new(),
        },
        planned.describe()
    );
    let source = dfengine::memory::monitor::SystemSource::new(Some(config.gpu.device));
    let mut mm = dfengine::memory::manager::MemoryManager::start(&config, Box::new(source), Some(&run_dir))
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", run_dir.display())))?;
    let mut trainer = Trainer::new(backend, config, splits, opts).map_err(train_failure)?;
    dfengine::train::interrupt::install_interrupt_handler();
    let summary = trainer.run(&mut mm).map_err(train_failure)?;
    print_summary(&summary, trainer.run_dir());
    Ok(())
}

/// `--auto-batch`: the largest micro-batch whose planned footprint fits the budget,
/// searched by bisection on the plan, rounded down to a divisor of the effective batch so
/// that the effective batch stays what the config says.
fn auto_batch(config: &mut config::Config) -> Result<(), Failure> {
    use dfengine::model::footprint::{largest_fitting, plan_step, resolve_mode};
    let config::VramBudget::Bytes(budget) = config.gpu.vram_budget else {
        return Err(Failure::Input(
            "--auto-batch needs a size to fit: set [gpu] vram_budget or pass --vram-budget".to_string(),
        ));
    };
    let effective = config.effective_batch();
    let frames = config.data.max_frames as u64;
    let mixed = config.train.mixed_precision;
    // The plan in the mode the run would pick at that micro-batch ("auto": "lean" when
    // "saved" does not fit).
    let plan = |m: u64| plan_step(config, m, frames, mixed, resolve_mode(config, m, frames, mixed, budget));
    let fits = |m: u64| plan(m).total() <= budget;
    let Some(largest) = largest_fitting(effective as u64, fits) else {
        return Err(Failure::Input(format!(
            "--auto-batch: even one clip needs {} planned, over the {} budget",
            config::format_bytes(plan(1).total()),
            config::format_bytes(budget)
        )));
    };
    let micro = (1..=largest as u32).rev().find(|m| effective.is_multiple_of(*m)).unwrap_or(1);
    let (mode, planned) =
        (resolve_mode(config, micro as u64, frames, mixed, budget), plan(micro as u64).total());
    config.dataloader.batch_size = micro;
    config.train.accumulation_steps = effective / micro;
    eprintln!(
        "auto-batch: micro-batch {micro} × {} accumulation steps (effective {effective}; activation_memory = \"{}\"; planned {} of {})",
        effective / micro,
        mode,
        config::format_bytes(planned),
        config::format_bytes(budget)
    );
    Ok(())
}

/// `train --device`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Compute {
    Auto,
    Cpu,
    Cuda,
}

fn parse_compute(v: &str) -> Result<Compute, String> {
    match v {
        "auto" => Ok(Compute::Auto),
        "cpu" => Ok(Compute::Cpu),
        "cuda" => Ok(Compute::Cuda),
        other => Err(format!("--device {other}: expected auto, cpu or cuda")),
    }
}

/// The backend a run gets.
enum Picked {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// `auto` takes the GPU when the probe finds one and this build has kernels; `cuda`
/// insists (and says why it cannot); `cpu` never looks.
fn pick_device(asked: Compute) -> Result<Picked, Failure> {
    if asked == Compute::Cpu {
        return Ok(Picked::Cpu);
    }
    #[cfg(feature = "cuda")]
    if let GpuProbe::Ready(_) = probe() {
        return Ok(Picked::Cuda);
    }
    match (asked, probe()) {
        (Compute::Cuda, GpuProbe::Unavailable(why)) => Err(Failure::Input(format!("--device cuda: {why}"))),
        (Compute::Cuda, GpuProbe::Ready(_)) => {
            Err(Failure::Input("--device cuda: this dfengine was built without the cuda feature".into()))
        }
        _ => Ok(Picked::Cpu),
    }
}

/// The CPU backend, its pool capped by `gpu.vram_budget` when that is a size, so a run
/// stays inside the same budget it would have on the GPU.
fn cpu_backend(config: &config::Config) -> Result<CpuBackend, Failure> {
    match config.gpu.vram_budget {
        config::VramBudget::Bytes(n) => CpuBackend::with_budget(n as usize)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("a {} memory pool: {e}", config::format_bytes(n)))),
        config::VramBudget::Auto => Ok(CpuBackend::default()),
    }
}

fn train_failure(e: TrainError) -> Failure {
    match e {
        TrainError::Input(_) | TrainError::Weights(_) => Failure::Input(e.to_string()),
        other => Failure::Runtime(other.into()),
    }
}

fn print_summary(s: &dfengine::train::record::Summary, run_dir: &Path) {
    let fmt = |m: &Option<dfengine::train::metrics::Metrics>| match m {
        Some(m) => format!(
            "clip AUC {:.4}, frame AUC {:.4}, ACC {:.3}, EER {:.3}, log loss {:.4} ({} clips)",
            m.clip_auc, m.frame_auc, m.acc, m.eer, m.log_loss, m.clips
        ),
        None => "not evaluated".to_string(),
    };
    match s.best_epoch {
        Some(e) => println!("best epoch {e} of {}", s.epochs),
        None => println!("stopped before the first validation"),
    }
    println!("val   {}", fmt(&s.val));
    println!("test  {}", fmt(&s.test));
    println!(
        "{:.1} clips/s, peak pool {}, peak RSS {}, {} governor actions, {} skipped steps",
        s.clips_per_s,
        config::format_bytes(s.peak_pool_reserved),
        config::format_bytes(s.peak_process_rss),
        s.governor_actions.len(),
        s.skipped_steps
    );
    println!(
        "run folder {} (summary.json, metrics.jsonl, best.safetensors, last.safetensors)",
        run_dir.display()
    );
}

fn backend_line(probe: &GpuProbe) -> String {
    match probe {
        GpuProbe::Ready(gpus) => {
            format!("cuda ({})", gpus.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        }
        GpuProbe::Unavailable(reason) => format!("cpu ({reason})"),
    }
}

fn profile(args: ProfileArgs) -> Result<(), Failure> {
    let resolved = load_config(args.config.as_deref(), &args.overrides)?;
    if let Some(svg) = &args.plot {
        let run = args.run.clone().unwrap_or_else(|| PathBuf::from(&resolved.config.train.out_dir));
        return match dfengine::memory::plot::plot_run(&run, svg) {
            Ok(()) => {
                println!("wrote {} from the run folder {}", svg.display(), run.display());
                Ok(())
            }
            Err(e @ dfengine::memory::plot::PlotError::Input { .. }) => Err(Failure::Input(e.to_string())),
            Err(e) => Err(Failure::Runtime(e.into())),
        };
    }
    let report = dfengine::profile::profile(&resolved.config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.into()))?);
    } else {
        let source = args.config.as_deref().map_or("the defaults".to_string(), |p| p.display().to_string());
        println!("dfengine profile: {source}\n");
        print!("{}", report.render());
    }
    Ok(())
}

fn synth(args: SynthArgs) -> Result<(), Failure> {
    if args.videos < 4 {
        return Err(Failure::Input(format!("--videos {}: must be ≥ 4 (two real, two fake)", args.videos)));
    }
    if args.size < 16 || args.size % 2 == 1 {
        return Err(Failure::Input(format!(
            "--size {}: must be even and ≥ 16 (H.264 with 4:2:0 chroma)",
            args.size
        )));
    }
    if args.frames == 0 || !(0.0..=1.0).contains(&args.difficulty) {
        return Err(Failure::Input("--frames must be ≥ 1 and --difficulty in [0, 1]".to_string()));
    }
    if args.out_dir.is_file() {
        return Err(Failure::Input(format!(
            "{}: is a file, expected a folder to create",
            args.out_dir.display()
        )));
    }
    let p =
        SynthParams { seed: args.seed, size: args.size, frames: args.frames, difficulty: args.difficulty };
    write_synthetic(&args.out_dir, &p, args.videos)
}

#[cfg(feature = "video")]
fn write_synthetic(out_dir: &Path, p: &SynthParams, videos: u32) -> Result<(), Failure> {
    let written = dfengine::data::synth_video::write_dataset(out_dir, p, videos, |done, total, path| {
        if done == total || done % 10 == 0 {
            eprintln!("[{done}/{total}] {}", path.display());
        }
    })
    .map_err(|e| Failure::Runtime(e.into()))?;
    println!(
        "wrote {written} videos ({}×{}, {} frames, difficulty {}) in the FaceForensics++ layout under {}",
        p.size,
        p.size,
        p.frames,
        p.difficulty,
        out_dir.display()
    );
    Ok(())
}

#[cfg(not(feature = "video"))]
fn write_synthetic(_: &Path, _: &SynthParams, _: u32) -> Result<(), Failure> {
    Err(Failure::Runtime(anyhow::anyhow!(
        "this dfengine was built without the `video` feature (FFmpeg): it cannot encode videos"
    )))
}

fn prepare(args: PrepareArgs) -> Result<(), Failure> {
    use dfengine::data::manifest::{self, ManifestError};
    let resolved = load_config(Some(&args.config), &args.overrides)?;
    let m = manifest::load(&resolved.config.data).map_err(|e| match e {
        ManifestError::Synthetic => {
            Failure::Input(format!("{}: [data] layout = \"synthetic\": {e}", args.config.display()))
        }
        other => Failure::Input(other.to_string()),
    })?;
    if !args.list {
        return fill_cache(&resolved.config, m.entries, args.device);
    }
    let counts = m.counts();
    if args.json {
        let report = serde_json::json!({
            "root": m.root,
            "layout": m.layout,
            "videos": m.entries.len(),
            "splits": counts,
            "faces": resolved.config.data.faces.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.into()))?);
        return Ok(());
    }
    println!("{}: {} layout, {} videos", m.root.display(), m.layout, m.entries.len());
    println!("faces: {}", face_mode(&resolved.config.data));
    println!("{:<6} {:>8} {:>8} {:>8}", "split", "real", "fake", "total");
    for (split, c) in &counts {
        println!("{:<6} {:>8} {:>8} {:>8}", split.to_string(), c.real, c.fake, c.real + c.fake);
    }
    Ok(())
}

/// What `[data] faces` does, in the config's words.
fn face_mode(d: &config::DataConfig) -> String {
    match d.faces {
        config::FaceSource::None => "none (centre squares)".into(),
        config::FaceSource::Boxes => {
            "boxes (sidecar <video>.faces.json where present, else centre squares)".into()
        }
        config::FaceSource::Detect => format!(
            "detect (MTCNN from {}, thresholds {:?}, min face {} px; crops × {}, {} per clip)",
            d.face_detector,
            d.face_thresholds,
            d.face_min_size,
            d.face_margin,
            if d.faces_per_clip == 1 {
                "one face".to_string()
            } else {
                format!("{} faces", d.faces_per_clip)
            }
        ),
    }
}

/// Decodes every video of the index into the frame cache, `num_workers` at a time.
#[cfg(feature = "video")]
fn fill_cache(
    config: &config::Config,
    entries: Vec<dfengine::data::manifest::VideoEntry>,
    device: Compute,
) -> Result<(), Failure> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use dfengine::data::cache::{ClipSettings, FrameCache};
    use dfengine::data::sources::ClipSource;
    use dfengine::data::sources::VideoSource;
    use rayon::prelude::*;

    let d = &config.data;
    let dir = std::path::PathBuf::from(&d.cache_dir);
    let cache = Arc::new(
        FrameCache::new(Some(&dir), 0).map_err(|e| Failure::Input(format!("{}: {e}", dir.display())))?,
    );
    let settings = ClipSettings::from_config(d);
    let per_video = settings.max_frames * settings.frame_size * settings.frame_size * 3;
    let total = entries.len();
    println!(
        "caching {total} videos × {} frames of {}² into {}: about {} on disk",
        settings.max_frames,
        settings.frame_size,
        dir.display(),
        config::format_bytes((per_video * total) as u64)
    );
    let detector = prepare_detector(config, device)?;
    let on = detector.as_ref().map_or(String::new(), |det| format!(" on {}", det.backend_name()));
    println!("faces: {}{on}", face_mode(d));
    let faces = dfengine::data::face_boxes::FaceSettings::from_config(d);
    // Videos decoded at once share the cores: with fewer videos than cores each decodes
    // with FFmpeg's frame threads (one video on two cores: two threads).
    let workers = (config.dataloader.num_workers.max(1) as usize).min(total.max(1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let decode_threads = (cores / workers).max(1);
    let source =
        VideoSource::new(entries, cache.clone(), settings, decode_threads).with_faces(faces, detector);
    let done = AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let failures: Vec<String> = pool.install(|| {
        (0..total)
            .into_par_iter()
            .filter_map(|i| {
                let result = source.load(i).err().map(|e| format!("{}: {e}", source.name(i)));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n == total || n.is_multiple_of(20) {
                    eprintln!("[{n}/{total}] cached");
                }
                result
            })
            .collect()
    });
    let s = cache.stats();
    println!("{} decoded, {} already cached, {} failed", s.misses, s.disk_hits, failures.len());
    let f = source.face_stats();
    if f.videos > 0 {
        println!(
            "face detection: {} faces in {} frames of {} videos ({} tracks), {} without a face; {:.0} ms per video",
            f.faces,
            f.frames,
            f.videos,
            f.tracks,
            f.without_face,
            f.seconds * 1e3 / f.videos as f64
        );
    }
    for f in &failures {
        println!("  skipped {f}");
    }
    if failures.len() as f64 > d.max_bad_fraction * total as f64 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} of {total} videos failed, more than [data] max_bad_fraction = {}",
            failures.len(),
            d.max_bad_fraction
        )));
    }
    Ok(())
}

/// MTCNN for `prepare` when `[data] faces = "detect"`: on the GPU of `[gpu] device` when
/// `--device` allows and one is usable (picked as `train` picks its backend), else on the
/// CPU.
#[cfg(feature = "video")]
fn prepare_detector(
    config: &config::Config,
    device: Compute,
) -> Result<Option<std::sync::Arc<dfengine::data::detect::FaceDetector>>, Failure> {
    use dfengine::data::face_boxes::load_detector;
    let d = &config.data;
    if d.faces != config::FaceSource::Detect {
        return Ok(None);
    }
    let loaded = match pick_device(device)? {
        Picked::Cpu => load_detector(d),
        #[cfg(feature = "cuda")]
        Picked::Cuda => dfengine::data::face_boxes::load_detector_on(cuda_backend(config, false)?, d),
    };
    loaded.map(|det| Some(std::sync::Arc::new(det))).map_err(|e| Failure::Input(e.to_string()))
}

#[cfg(not(feature = "video"))]
fn fill_cache(
    _: &config::Config,
    _: Vec<dfengine::data::manifest::VideoEntry>,
    _: Compute,
) -> Result<(), Failure> {
    Err(Failure::Runtime(anyhow::anyhow!(
        "this dfengine was built without the `video` feature (FFmpeg): it cannot decode videos"
    )))
}

/// A path the user named that must be an existing file.
fn require_file(path: &Path, what: &str) -> Result<(), Failure> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Failure::Input(format!("{}: no such {what} file", path.display())))
    }
}

fn eval(args: EvalArgs) -> Result<(), Failure> {
    use dfengine::train::evaluate::{evaluate, load_checkpoint_model};
    use dfengine::train::step::PreprocessOn;
    let resolved = load_config(Some(&args.config), &[])?;
    require_file(&args.checkpoint, "checkpoint")?;
    let backend = cpu_backend(&resolved.config)?;
    let (trained, net) = load_checkpoint_model(&backend, &args.checkpoint).map_err(train_failure)?;
    // The data comes from the config named here; the model and its input from the checkpoint.
    let mut config = resolved.config;
    config.model = trained.model.clone();
    config.data.max_frames = trained.data.max_frames;
    let splits = dfengine::data::splits::splits(&config).map_err(|e| Failure::Input(e.to_string()))?;
    let settings = dfengine::train::run::loader_settings(&config, false);
    let mut micro = config.dataloader.batch_size as usize;
    let loader = dfengine::data::loader::EpochLoader::start(splits.test.clone(), settings, 0);
    let e = evaluate(&backend, &net, &splits.test, loader, &mut micro, PreprocessOn::Host)
        .map_err(train_failure)?;
    let m = e.metrics;
    println!(
        "test ({} clips of {}): clip AUC {:.4}, frame AUC {:.4}, ACC {:.3}, EER {:.3}, log loss {:.4}",
        m.clips, splits.description, m.clip_auc, m.frame_auc, m.acc, m.eer, m.log_loss
    );
    let csv = args.csv.unwrap_or_else(|| args.checkpoint.with_extension("test_scores.csv"));
    let mut text = String::from("video,label,fake_probability\n");
    for (name, label, p) in &e.scores {
        text.push_str(&format!("\"{}\",{label},{p:.6}\n", name.replace('"', "\"\"")));
    }
    std::fs::write(&csv, text).map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", csv.display())))?;
    println!("per-video scores: {}", csv.display());
    Ok(())
}

fn predict(args: PredictArgs) -> Result<(), Failure> {
    require_file(&args.checkpoint, "checkpoint")?;
    if args.videos.is_empty() {
        return Err(Failure::Input("predict: name at least one video file".to_string()));
    }
    let backend = CpuBackend::default();
    let (config, net) = dfengine::train::evaluate::load_checkpoint_model(&backend, &args.checkpoint)
        .map_err(train_failure)?;
    let results: Vec<Prediction> =
        args.videos.iter().map(|v| predict_video(&backend, &net, &config, v)).collect();
    let failed = results.iter().filter(|r| r.is_failure()).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| Failure::Runtime(e.into()))?);
    } else {
        results.iter().for_each(|r| println!("{r}"));
    }
    if failed > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{failed} of {} videos could not be scored",
            results.len()
        )));
    }
    Ok(())
}

fn faces(args: FacesArgs) -> Result<(), Failure> {
    if args.paths.is_empty() {
        return Err(Failure::Input("faces: name at least one video or image file".to_string()));
    }
    let data = load_config(args.config.as_deref(), &args.overrides)?.config.data;
    show_faces(&data, &args.paths, args.json, args.draw.as_deref())
}

/// Each file's faces, printed (or drawn) one file after another; a file that cannot be
/// read is reported and the others still run.
#[cfg(feature = "video")]
fn show_faces(
    d: &config::DataConfig,
    paths: &[PathBuf],
    json: bool,
    draw: Option<&Path>,
) -> Result<(), Failure> {
    use dfengine::data::face_boxes::{DetectorError, load_detector};
    use dfengine::data::face_report::{FileFaces, faces_in_file};
    use dfengine::model::mtcnn::MtcnnError;

    let det = load_detector(d).map_err(|e| match e {
        DetectorError(MtcnnError::Missing(_)) => Failure::Input(e.to_string()),
        other => Failure::Runtime(other.into()),
    })?;
    if let Some(dir) = draw {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("--draw {}: {e}", dir.display())))?;
    }
    let prefixes = draw_prefixes(paths, draw);
    let results: Vec<FileFaces> = paths
        .iter()
        .zip(&prefixes)
        .map(|(path, prefix)| {
            let found = faces_in_file(&det, path, d.max_frames as usize, prefix.as_deref());
            if !json {
                println!("{found}");
            }
            found
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| Failure::Runtime(e.into()))?);
    }
    if let Some(dir) = draw {
        eprintln!("drawn frames: {}", dir.display());
    }
    let failed = results.iter().filter(|r| r.is_failure()).count();
    if failed > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{failed} of {} files could not be read",
            results.len()
        )));
    }
    Ok(())
}

/// Where `--draw` puts each file's frames: `DIR/<file stem>`, with the file's position
/// in front (`DIR/2-<stem>`) when two files share a stem.
#[cfg(feature = "video")]
fn draw_prefixes(paths: &[PathBuf], dir: Option<&Path>) -> Vec<Option<PathBuf>> {
    let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    paths
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let dir = dir?;
            let shared = paths.iter().filter(|q| stem(q) == stem(p)).count() > 1;
            Some(dir.join(if shared { format!("{}-{}", k + 1, stem(p)) } else { stem(p) }))
        })
        .collect()
}

#[cfg(not(feature = "video"))]
fn show_faces(_: &config::DataConfig, _: &[PathBuf], _: bool, _: Option<&Path>) -> Result<(), Failure> {
    Err(Failure::Runtime(anyhow::anyhow!(
        "this dfengine was built without the `video` feature (FFmpeg): it cannot decode videos or images"
    )))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let name = Path::new(&argv[0]).file_name().and_then(|n| n.to_str()).unwrap_or("dfengine");
    let rest: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&[name], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprint!("{}", early.output);
                    eprintln!("Run `{name} --help` for usage.");
                    ExitCode::from(2)
                }
            };
        }
    };
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Profile(a) => profile(a),
        Command::Synth(a) => synth(a),
        Command::Prepare(a) => prepare(a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Faces(a) => faces(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            // Last and alone: after whatever the run printed on its way down (the memory
            // summary, the governor's actions), so that it is the line a user sees.
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}
