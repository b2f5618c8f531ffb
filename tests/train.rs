//! Training end to end on the CPU backend: the shortened quick demo learns (val AUC far
//! above chance) and writes its run folder; eval reads the checkpoint back; an allocation
//! budget too small for the micro-batch makes the governor shrink it without changing
//! the effective batch, and the loss curve follows the unshrunk run; a run stopped
//! mid-epoch and resumed continues with the same batches and the same losses; with
//! `mixed_precision = true` (FP16 activations) it learns as well as in FP32.

use std::path::{Path, PathBuf};
use std::process::Command;

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::config::{self, Config};
use dfengine::memory::manager::MemoryManager;
use dfengine::memory::monitor::SystemSource;
use dfengine::train::record::Summary;
use dfengine::train::run::{RunOptions, Trainer};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The quick demo, smaller: `videos` synthetic clips, `epochs` epochs, into `out`.
fn demo(out: &Path, videos: u32, epochs: u32) -> Config {
    let mut c = config::load(Some(&repo("configs/quick_demo.toml")), &[]).unwrap().config;
    c.data.synthetic_videos = videos;
    c.train.epochs = epochs;
    c.train.out_dir = out.display().to_string();
    c.gpu.memory_management.enable_monitoring = false;
    c
}

/// Trains with `backend`; the summary and the per-step losses from metrics.jsonl.
fn train(backend: CpuBackend, c: Config, opts: RunOptions) -> (Summary, Vec<f64>, Vec<String>) {
    let splits = dfengine::data::splits::splits(&c).unwrap();
    let out = PathBuf::from(&c.train.out_dir);
    std::fs::create_dir_all(&out).unwrap();
    let mut mm = MemoryManager::start(&c, Box::new(SystemSource::new(None)), Some(&out)).unwrap();
    let mut t = Trainer::new(backend, c, splits, RunOptions { quiet: true, ..opts }).unwrap();
    let summary = t.run(&mut mm).unwrap();
    let actions = mm.governor().log().iter().map(|d| d.to_string()).collect();
    (summary, step_losses(&out), actions)
}

fn step_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// `dfengine train` on the quick demo for `epochs` epochs into `run`, without a progress bar.
fn train_command(run: &Path, epochs: u32) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfengine"));
    cmd.args(["train", repo("configs/quick_demo.toml").to_str().unwrap(), "--quiet"]).args([
        "--set",
        &format!("train.epochs={epochs}"),
        "--set",
        &format!("train.out_dir=\"{}\"", run.display()),
    ]);
    cmd
}

#[test]
fn shortened_quick_demo_learns_and_eval_reads_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = train_command(&run, 2).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train failed: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let val_auc = summary["val"]["clip_auc"].as_f64().unwrap();
    let test_auc = summary["test"]["clip_auc"].as_f64().unwrap();
    assert!(val_auc > 0.9, "val clip AUC {val_auc} (chance is 0.5)\n{stderr}");
    assert!(test_auc > 0.8, "test clip AUC {test_auc}");
    for f in ["config.toml", "metrics.jsonl", "best.safetensors", "last.safetensors", "memory.csv"] {
        assert!(run.join(f).is_file(), "{f} missing from the run folder");
    }
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    for key in ["loss", "lr", "scale", "clips_per_s", "micro_batch", "pool_reserved"] {
        assert!(first.get(key).is_some(), "metrics.jsonl lacks {key}: {first}");
    }

    let csv = dir.path().join("scores.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_dfengine"))
        .args(["eval", repo("configs/quick_demo.toml").to_str().unwrap(), "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "eval failed: {}", String::from_utf8_lossy(&out.stderr));
    let reported = format!("clip AUC {test_auc:.4}");
    assert!(
        stdout.contains(&reported),
        "eval of the best checkpoint should repeat the summary's {reported}: {stdout}"
    );
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count();
    assert_eq!(rows as u64, 1 + summary["test"]["clips"].as_u64().unwrap(), "a header and one row per clip");
}

#[test]
fn pin_memory_without_a_gpu_is_a_warning_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_command(&dir.path().join("run"), 1)
        .args(["--device", "cpu", "--max-steps", "1", "--set", "dataloader.pin_memory=true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: [dataloader] pin_memory = true: this run has no GPU; nothing is uploaded"),
        "{stderr}"
    );
}

#[test]
fn quick_demo_learns_as_well_with_mixed_precision() {
    let dir = tempfile::tempdir().unwrap();
    let auc = |mixed: bool| {
        let mut c = demo(&dir.path().join(format!("mixed-{mixed}")), 200, 2);
        c.train.mixed_precision = mixed;
        let (summary, losses, _) = train(CpuBackend::with_budget(1 << 30).unwrap(), c, RunOptions::default());
        let auc = summary.val.expect("a validated run").clip_auc;
        assert!(auc > 0.9, "mixed_precision = {mixed}: val clip AUC {auc}; losses {losses:?}");
        auc
    };
    let (fp32, fp16) = (auc(false), auc(true));
    assert!((fp32 - fp16).abs() <= 0.1, "val clip AUC {fp32} in FP32, {fp16} with mixed precision");
}

#[test]
fn out_of_memory_shrinks_the_micro_batch_and_keeps_the_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    // Effective batch 8 as micro-batch × accumulation.
    let cfg = |name: &str, micro: u32| {
        let mut c = demo(&dir.path().join(name), 48, 1);
        // Frames large enough that activations, not the pool's 2 MiB granules, decide
        // what fits.
        (c.data.frame_size, c.model.input_size) = (96, 96);
        c.dataloader.batch_size = micro;
        c.train.accumulation_steps = 8 / micro;
        c
    };
    // Peak pool use of one step as 8 × 1 and as 4 × 2, each in a pool of its own.
    let peak = |micro: u32, name: &str| {
        let b = CpuBackend::with_budget(1 << 30).unwrap();
        let probe = b.clone();
        train(b, cfg(name, micro), RunOptions { max_steps: Some(1), ..Default::default() });
        probe.pool_stats().peak_allocated_bytes
    };
    let (p8, p4) = (peak(8, "probe8"), peak(4, "probe4"));
    assert!(p4 < p8, "half the micro-batch should need less memory: {p4} vs {p8}");
    // Between the two: micro-batch 8 fails, 4 × 2 fits (the failed attempt's memory is
    // all returned before the retry).
    let budget = (p4 + p8) / 2;
    let big = || CpuBackend::with_budget(1 << 30).unwrap();
    let (full, full_losses, full_actions) = train(big(), cfg("full", 8), RunOptions::default());
    let (_, planned_losses, _) = train(big(), cfg("planned", 4), RunOptions::default());
    let (tight, tight_losses, tight_actions) =
        train(CpuBackend::with_budget(budget).unwrap(), cfg("tight", 8), RunOptions::default());
    assert!(full_actions.is_empty(), "{full_actions:?}");
    assert_eq!(
        tight_actions.len(),
        1,
        "budget {budget} B (peaks {p4}/{p8}) should force exactly one shrink: {tight_actions:?}"
    );
    assert!(tight_actions[0].contains("shrink to micro-batch 4 × 2 accumulation"), "{tight_actions:?}");
    // Chosen by the plan (which is the pool's peak to the byte), not by halving.
    assert!(
        tight_actions[0].contains("micro-batch 4 is the largest whose planned step fits"),
        "{tight_actions:?}"
    );
    // The run's record says so too.
    let log = std::fs::read_to_string(dir.path().join("tight/governor.csv")).unwrap();
    assert!(
        log.lines().skip(1).any(|l| l.contains("shrink to micro-batch 4 × 2 accumulation")),
        "governor.csv lacks the shrink:\n{log}"
    );
    assert_eq!(full.steps, tight.steps, "same effective batch, same number of optimizer steps");
    // The failed attempt leaves no trace (running statistics restored, nothing applied):
    // the shrunk run is the run planned as 4 × 2 from the start.
    for (i, (a, b)) in planned_losses.iter().zip(&tight_losses).enumerate() {
        assert!((a - b).abs() <= 1e-5, "step {}: {a} planned 4 × 2, {b} after the shrink", i + 1);
    }
    // Against 8 × 1: the same clips and the same update rule; only the batch-norm
    // statistics come from 4 clips instead of 8, so the curves stay close.
    let n = full_losses.len() as f64;
    let mean_gap = full_losses.iter().zip(&tight_losses).map(|(a, b)| (a - b).abs()).sum::<f64>() / n;
    assert!(
        mean_gap < 0.1,
        "loss curves diverge by {mean_gap} on average: {full_losses:?} vs {tight_losses:?}"
    );
}

#[test]
fn a_run_stopped_mid_epoch_resumes_with_the_same_batches_and_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, straight_losses, _) =
        train(CpuBackend::default(), demo(&dir.path().join("straight"), 48, 2), RunOptions::default());
    let steps_per_epoch = straight.steps / 2;
    let stop = steps_per_epoch + steps_per_epoch / 2;
    let part = dir.path().join("part");
    let (stopped, _, _) = train(
        CpuBackend::default(),
        demo(&part, 48, 2),
        RunOptions { max_steps: Some(stop), ..Default::default() },
    );
    assert!(stopped.interrupted && stopped.test.is_none());
    let (resumed, resumed_losses, _) = train(
        CpuBackend::default(),
        demo(&part, 48, 2),
        RunOptions { resume: Some(part.join("last.safetensors")), ..Default::default() },
    );
    assert_eq!(resumed.steps, straight.steps);
    // metrics.jsonl of the resumed run holds the stopped part's steps, then the rest.
    assert_eq!(resumed_losses.len(), straight_losses.len());
    for (i, (a, b)) in straight_losses.iter().zip(&resumed_losses).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "step {}: {a} straight, {b} resumed", i + 1);
    }
    let (a, b) = (straight.test.unwrap(), resumed.test.unwrap());
    assert!((a.log_loss - b.log_loss).abs() < 1e-4, "test log loss {} vs {}", a.log_loss, b.log_loss);
}

#[test]
fn ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = train_command(&run, 200)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first recorded step, so that the handler is installed and a step ran.
    let metrics = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"step\"")) {
        assert!(started.elapsed().as_secs() < 60, "no step recorded within a minute");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status.code());
    assert!(stderr.contains("interrupted: checkpoint"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true);
    assert!(summary["steps"].as_u64().unwrap() < 200 * 40, "the run stopped early");
    let ckpt = dfengine::model::weights::TensorFile::read(&run.join("last.safetensors")).unwrap();
    let progress: serde_json::Value = serde_json::from_str(ckpt.meta("progress").unwrap()).unwrap();
    assert_eq!(progress["step"], summary["steps"], "the checkpoint holds the last finished step");
}
