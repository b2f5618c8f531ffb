//! The global-memory traffic of one training step, op by op, on the software GPU: a
//! ResNet-18 step on one clip of 16 frames (forward, backward, AdamW) with every kernel
//! counted by the interpreter (`SOFTGPU_COUNTERS`, one line per launch) and every launch
//! joined to the op that made it (`backend::cuda::ledger`). Per op, three byte counts:
//!
//! - min: each operand read once, each result written once (`Backend::op_begins`) — the
//!   yardstick; the step's total is the sum over its ops.
//! - footprint: the distinct 32-byte sectors each of its launches read plus those it
//!   wrote, and the pool blocks it took zeroed (a memset writes them) — what it moves to
//!   and from DRAM when the L2 holds a launch's working set (tens of MB on current GPUs),
//!   so the excess over min is passes the op makes beyond the one it needs: casts,
//!   split-K partial sums, transposed filters, statistics passes, zero fills.
//! - moved: every request's sectors counted anew, tile re-reads included — the traffic
//!   the L1/L2 serves, an upper bound on DRAM's.
//!
//! Exact counts, not timings (no cache is modelled beyond these two bounds; time is
//! measured on a real GPU). Frames are 224² (`DFENGINE_BENCH_SIDE` cuts them: CI runs
//! 32², in seconds; 224² takes a few minutes on the interpreter).
//!
//!     SOFTGPU_SM_COUNT=46 scripts/softgpu.sh run cargo bench --bench step_traffic
//!
//! (46 SMs: the RTX 4070 the product targets, which sizes the weight gradient's split-K.)
//! `DFENGINE_BENCH_FP32=1`: FP32 activations; `DFENGINE_BENCH_LEAN=1`: lean activation
//! memory. Exits non-zero when the device is not the software GPU (nothing would count).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use dfengine::backend::cuda::backend::CudaBackend;
use dfengine::backend::cuda::ledger::OpRecord;
use dfengine::backend::ops::Backend;
use dfengine::config::{Backbone, Config};
use dfengine::data::loader::{Batch, Pixels};
use dfengine::memory::governor::BatchPlan;
use dfengine::model::arch::ResNetSpec;
use dfengine::model::footprint::ActivationMode;
use dfengine::model::resnet::ResNet;
use dfengine::tensor::DType;
use dfengine::train::optimizer::Optimizer;
use dfengine::train::scaler::LossScaler;
use dfengine::train::step::{StepSettings, train_step};

const FRAMES: usize = 16;

/// One launch's counts, from its line of the counters file.
struct Launch {
    kernel: String,
    footprint: u64,
    moved: u64,
}

impl Launch {
    fn parse(line: &str) -> Result<Launch, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let n = |path: &[&str]| {
            path.iter()
                .try_fold(&v, |v, k| v.get(k))
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("no {} in {line}", path.join(".")))
        };
        let sectors =
            n(&["global_load", "sectors"])? + n(&["global_store", "sectors"])? + n(&["cp_async", "sectors"])?;
        let footprint = n(&["footprint", "read_sectors"])? + n(&["footprint", "written_sectors"])?;
        let kernel = v["kernel"].as_str().ok_or_else(|| format!("no kernel in {line}"))?.to_string();
        Ok(Launch { kernel, footprint: footprint * 32, moved: sectors * 32 })
    }
}

/// The sums of a group of ops (or of one op's launches of one kernel).
#[derive(Default)]
struct Sums {
    calls: usize,
    launches: u64,
    min: u64,
    footprint: u64,
    moved: u64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.calls += o.calls;
        self.launches += o.launches;
        self.min += o.min;
        self.footprint += o.footprint;
        self.moved += o.moved;
    }

    fn excess(&self) -> i64 {
        self.footprint as i64 - self.min as i64
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 { "-".into() } else { format!("{:.2}", a as f64 / b as f64) }
}

fn counters_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    std::path::absolute(target.join("step-traffic.jsonl")).expect("the working directory")
}

/// Runs one step with the ledger recording; its ops and the counters file's launches.
fn counted_step(b: &CudaBackend, side: usize, dtype: DType, mode: ActivationMode) -> (Vec<OpRecord>, u64) {
    let mut config = Config::default();
    config.model.backbone = Backbone::Resnet18;
    config.train.mixed_precision = dtype == DType::F16;
    let t = &config.train;
    let mut net = ResNet::new(b, ResNetSpec::of(Backbone::Resnet18), FRAMES, 7).expect("ResNet-18");
    net.activations = dtype;
    net.activation_mode = mode;
    let mut opt = Optimizer::new(b, t.optimizer, t.weight_decay as f32, &net.trainable_mut()).expect("AdamW");
    let x: Vec<f32> =
        (0..FRAMES * side * side * 3).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    let batch = Batch {
        index: 0,
        clips: vec![0],
        frames_per_clip: FRAMES,
        side,
        pixels: Pixels::Prepared(x),
        targets: vec![1.0],
    };
    let plan = BatchPlan { micro_batch: 1, accumulation: 1 };
    let settings = StepSettings::of(t, 1e-3);
    let mut scaler = LossScaler::of(t);
    let ledger = b.device().ledger();
    b.device().synchronize("setting up").expect("set-up");
    let first = ledger.launches();
    ledger.record();
    train_step(b, &mut net, &mut opt, &mut scaler, &batch, plan, &settings, |_| None).expect("the step");
    b.device().synchronize("the step").expect("the step");
    (ledger.finish(), first)
}

fn main() -> ExitCode {
    let path = counters_path();
    let _ = std::fs::remove_file(&path);
    // SAFETY: no other thread yet; the software GPU reads it at its first launch.
    unsafe { std::env::set_var("SOFTGPU_COUNTERS", &path) };
    let side: usize = std::env::var("DFENGINE_BENCH_SIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(224);
    let dtype = if std::env::var_os("DFENGINE_BENCH_FP32").is_some() { DType::F32 } else { DType::F16 };
    let mode = if std::env::var_os("DFENGINE_BENCH_LEAN").is_some() {
        ActivationMode::Lean
    } else {
        ActivationMode::Saved
    };
    let b = match CudaBackend::open(0, None, false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("step_traffic: {e}; run it under scripts/softgpu.sh");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let (ops, first) = counted_step(&b, side, dtype, mode);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() as u64 != b.device().ledger().launches() {
        eprintln!(
            "step_traffic: {} holds {} launches, the device made {}: is {} the software GPU?",
            path.display(),
            lines.len(),
            b.device().ledger().launches(),
            b.name()
        );
        return ExitCode::FAILURE;
    }
    let launches: Vec<Launch> = match lines[first as usize..].iter().map(|l| Launch::parse(l)).collect() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("step_traffic: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ResNet-18, 1 clip × {FRAMES} frames of {side}², {dtype:?} activations, {mode:?}, AdamW; {} ({} SMs); \
         {} ops, {} launches, {:.0} s on the interpreter",
        b.name(),
        b.device().sm_count,
        ops.len(),
        launches.len(),
        started.elapsed().as_secs_f64()
    );
    report(&ops, &launches, first);
    ExitCode::SUCCESS
}

fn report(ops: &[OpRecord], launches: &[Launch], first: u64) {
    let mut per_op: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut per_kernel: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for r in ops {
        let ks = &launches[(r.launches.start - first) as usize..(r.launches.end - first) as usize];
        let s = per_op.entry(r.op).or_default();
        s.add(&Sums {
            calls: 1,
            launches: ks.len() as u64,
            min: r.min_bytes as u64,
            footprint: ks.iter().map(|k| k.footprint).sum::<u64>() + r.zeroed_bytes as u64,
            moved: ks.iter().map(|k| k.moved).sum(),
        });
        if r.zeroed_bytes > 0 {
            per_kernel.entry((r.op, "(zero fill)")).or_default().footprint += r.zeroed_bytes as u64;
        }
        for k in ks {
            let s = per_kernel.entry((r.op, k.kernel.as_str())).or_default();
            s.add(&Sums { calls: 0, launches: 1, min: 0, footprint: k.footprint, moved: k.moved });
        }
    }
    let mut total = Sums::default();
    per_op.values().for_each(|s| total.add(s));
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by_key(|(_, s)| -s.excess());
    println!(
        "\n{:<22} {:>5} {:>8} {:>9} {:>10} {:>8} {:>9} {:>8} {:>7}",
        "op", "calls", "launches", "min MiB", "footpr MiB", "fp/min", "moved MiB", "mv/min", "excess"
    );
    let excess = total.excess().max(1) as f64;
    let line = |name: &str, s: &Sums| {
        println!(
            "{:<22} {:>5} {:>8} {:>9.2} {:>10.2} {:>8} {:>9.2} {:>8} {:>6.1}%",
            name,
            s.calls,
            s.launches,
            mib(s.min),
            mib(s.footprint),
            ratio(s.footprint, s.min),
            mib(s.moved),
            ratio(s.moved, s.min),
            100.0 * s.excess() as f64 / excess
        );
    };
    for (op, s) in &rows {
        line(op, s);
    }
    println!("{}", "-".repeat(96));
    line("step", &total);
    println!("\nwhere the excess is (footprint − min by op; each op's kernels and zero fills):");
    for (op, s) in rows.iter().take(6).filter(|(_, s)| s.excess() > 0) {
        println!("  {op}: {:+.2} MiB", s.excess() as f64 / (1 << 20) as f64);
        for ((_, kernel), k) in per_kernel.iter().filter(|((o, _), _)| o == op) {
            println!("      {kernel:<40} {:>5} launches {:>9.2} MiB footprint", k.launches, mib(k.footprint));
        }
    }
}
