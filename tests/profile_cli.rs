//! `dfengine profile`: works with and without a GPU, plans the step, rehearses it
//! through the pool to steady state, and says when a config does not fit.

use std::path::Path;
use std::process::{Command, Output};

fn dfengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfengine")).args(args).output().expect("run dfengine")
}

fn config(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name).display().to_string()
}

#[test]
fn profile_reports_every_section() {
    let out = dfengine(&["profile", &config("memory_optimized.toml")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for section in [
        "GPU",
        "Host",
        "Planned training step",
        "Pool (one planned step rehearsed twice, host memory)",
        "Kernel throughput",
        "Suggestions",
    ] {
        assert!(text.lines().any(|l| l == section), "no {section} section in:\n{text}");
    }
    assert!(text.contains("batch_size 6 × max_frames 16 = 96 frames"), "{text}");
    assert!(text.contains("budget 12.00 GiB ([gpu] vram_budget = \"12GiB\")"), "{text}");
    assert!(text.contains("second step: 0 driver map calls (steady state)"), "{text}");
    assert!(
        text.contains("no GPU found:") || text.contains("(sm_"),
        "neither a GPU nor the reason for none:\n{text}"
    );
}

#[test]
fn profile_json_is_machine_readable_and_consistent() {
    let out = dfengine(&["profile", &config("memory_optimized.toml"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let f = &v["footprint"];
    let parts: u64 = ["weights", "gradients", "optimizer", "activations", "inputs", "workspace"]
        .iter()
        .map(|k| f[k].as_u64().unwrap_or_else(|| panic!("footprint.{k} missing")))
        .sum();
    assert!(parts > 0);
    assert_eq!(v["budget"].as_u64(), Some(12 << 30));
    assert_eq!(v["rehearsal"]["maps_in_second_step"].as_u64(), Some(0));
    assert!(v["largest_batch_size"].as_u64().unwrap() >= 6, "the shipped memory-optimized config must fit");
}

#[test]
fn profile_warns_when_the_step_does_not_fit() {
    let out = dfengine(&[
        "profile",
        &config("default.toml"),
        "--set",
        "dataloader.batch_size=64",
        "--set",
        "gpu.vram_budget=2GiB",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("! a step of batch_size = 64 × max_frames = 16 plans"), "{text}");
    assert!(text.contains("it does not fit"), "{text}");
    assert!(text.contains("largest batch_size at max_frames = 16:"), "{text}");
    assert!(text.contains("the pool rehearsal of one step failed: out of memory"), "{text}");
}

#[test]
fn profile_without_a_config_uses_the_defaults() {
    let out = dfengine(&["profile"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dfengine profile: the defaults"));
}

#[test]
fn profile_rejects_a_bad_config_with_exit_2() {
    let out = dfengine(&["profile", &config("quick_demo.toml"), "--set", "data.max_frames=0"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A run folder as a training run leaves it: the manager's CSVs over a few steps with
/// rising GPU use, so that the governor acts.
fn recorded_run(dir: &Path) {
    use dfengine::memory::PoolStats;
    use dfengine::memory::manager::MemoryManager;
    use dfengine::memory::monitor::MemorySource;
    use dfengine::memory::sample::{DeviceMemory, HostMemory, MemorySample};

    struct Rising(u64);
    impl MemorySource for Rising {
        fn sample(&mut self, t: f64) -> MemorySample {
            self.0 += 1;
            MemorySample {
                t,
                gpu: Some(DeviceMemory { used: (8 + self.0) << 30, total: 12 << 30, utilisation: Some(90) }),
                host: HostMemory { used: 4 << 30, total: 32 << 30, process_rss: 1 << 30 },
            }
        }
    }
    let cfg = dfengine::config::load(Some(Path::new(&config("memory_optimized.toml"))), &[]).unwrap().config;
    let mut m = MemoryManager::start(&cfg, Box::new(Rising(0)), Some(dir)).unwrap();
    for step in 1..=4u64 {
        let pool = PoolStats {
            reserved_bytes: (step as usize) << 30,
            allocated_bytes: (step as usize) << 29,
            ..Default::default()
        };
        m.step_boundary(step, Some(&pool));
    }
}

#[test]
fn plot_draws_the_timeline_of_a_run_folder() {
    let run = tempfile::tempdir().unwrap();
    recorded_run(run.path());
    let svg = run.path().join("timeline.svg");
    let out = dfengine(&[
        "profile",
        &config("memory_optimized.toml"),
        "--plot",
        svg.to_str().unwrap(),
        "--run",
        run.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    for label in ["GPU used, all processes (NVML)", "pool reserved", "pool allocated", "process RSS (host)"] {
        assert!(text.contains(label), "legend lacks {label}");
    }
    assert!(
        text.contains("step 1: trim the pool") && text.contains("step 2: clear caches"),
        "governor actions not marked"
    );
    assert!(text.matches("<polyline").count() >= 4, "expected a line per series");
}

#[test]
fn plot_of_a_folder_without_a_run_names_the_missing_file() {
    let empty = tempfile::tempdir().unwrap();
    let svg = empty.path().join("x.svg");
    let out =
        dfengine(&["profile", "--plot", svg.to_str().unwrap(), "--run", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory.csv: cannot read"), "{err}");
}
