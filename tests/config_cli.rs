//! The config contract seen from the command line: shipped profiles load, every bad
//! input names the file (or override), the `[table] key` and what was expected, and
//! exits with code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dfengine::config::{self, Backbone, Override, Source, VramBudget};

fn dfengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfengine")).args(args).output().expect("run dfengine")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A config file with `body`, in a folder that lives as long as the returned guard.
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, body).expect("write config");
    (dir, path)
}

/// Runs `train --dry-run` on a config with `body` and returns stderr, asserting exit 2.
fn rejected(body: &str) -> (String, PathBuf, tempfile::TempDir) {
    let (dir, path) = config_file(body);
    let out = dfengine(&["train", path.to_str().unwrap(), "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "expected exit 2 for {body:?}; stderr: {stderr}");
    (stderr, path, dir)
}

#[test]
fn every_shipped_config_loads_and_dry_runs() {
    for name in ["default", "medium", "memory_optimized", "quick_demo"] {
        let path = repo(&format!("configs/{name}.toml"));
        let out = dfengine(&["train", path.to_str().unwrap(), "--dry-run"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        for key in ["batch_size", "max_frames", "gpu_threshold", "force_cleanup_every", "vram_budget"] {
            assert!(stdout.contains(key), "{name}: dry run lacks {key}:\n{stdout}");
        }
        assert!(stdout.contains("# backend: "), "{name}: dry run does not say which backend");
    }
}

#[test]
fn profiles_carry_the_design_values() {
    let load = |name: &str| config::load(Some(&repo(&format!("configs/{name}.toml"))), &[]).unwrap().config;
    let m = load("memory_optimized");
    assert_eq!(m.dataloader.batch_size, 6);
    assert_eq!(m.data.max_frames, 16);
    assert!(m.train.mixed_precision);
    assert!(!m.dataloader.pin_memory);
    assert_eq!(m.dataloader.num_workers, 2);
    assert!(!m.data.enable_cache);
    assert_eq!(m.gpu.vram_budget, VramBudget::Bytes(12 << 30));
    assert_eq!(load("medium").dataloader.batch_size, 10);
    assert_eq!(load("default").dataloader.batch_size, 12);
    let demo = load("quick_demo");
    assert_eq!(demo.model.backbone, Backbone::ResnetTiny);
    assert_eq!(demo.data.layout, config::DatasetLayout::Synthetic);
}

#[test]
fn unknown_key_names_file_table_and_the_keys_expected() {
    let (err, path, _dir) = rejected("[dataloader]\nbatch_sise = 4\n");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("[dataloader] batch_sise = 4: unknown key `batch_sise`"), "{err}");
    assert!(err.contains("`batch_size`"), "should list the expected keys: {err}");
}

#[test]
fn unknown_table_is_named() {
    let (err, _, _dir) = rejected("[trainer]\nepochs = 3\n");
    assert!(err.contains("[trainer]: unknown table `trainer`"), "{err}");
}

#[test]
fn wrong_type_says_what_was_expected() {
    let (err, _, _dir) = rejected("[dataloader]\nbatch_size = \"six\"\n");
    assert!(err.contains("[dataloader] batch_size = \"six\""), "{err}");
    assert!(err.contains("expected a non-negative integer"), "{err}");
    let (err, _, _dir) = rejected("[train]\nmixed_precision = 1\n");
    assert!(err.contains("[train] mixed_precision = 1") && err.contains("expected a boolean"), "{err}");
}

#[test]
fn out_of_range_values_are_rejected_with_the_range() {
    let cases = [
        ("[dataloader]\nbatch_size = 0\n", "[dataloader] batch_size = 0: must be ≥ 1"),
        ("[data]\nmax_frames = 0\n", "[data] max_frames = 0: must be ≥ 1"),
        ("[gpu.memory_management]\ngpu_threshold = 0.0\n", "gpu_threshold = 0.0: must be in (0, 1]"),
        ("[gpu.memory_management]\ngpu_threshold = 1.5\n", "gpu_threshold = 1.5: must be in (0, 1]"),
        ("[gpu.memory_management]\ncpu_threshold = -0.2\n", "cpu_threshold = -0.2: must be in (0, 1]"),
        ("[train]\nlr = -1.0\n", "[train] lr = -1.0: must be a finite number > 0"),
        ("[gpu]\nvram_budget = \"12 parsecs\"\n", "[gpu] vram_budget = \"12 parsecs\""),
    ];
    for (body, expected) in cases {
        let (err, path, _dir) = rejected(body);
        assert!(err.contains(expected), "for {body:?} expected {expected:?} in: {err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let (err, _, _dir) = rejected("[gpu.memory_management]\ngpu_threshold = 1.5\n");
    assert!(err.contains("[gpu.memory_management]"), "nested table should be named in full: {err}");
}

#[test]
fn unknown_backbone_lists_the_known_ones() {
    let (err, _, _dir) = rejected("[model]\nbackbone = \"resnet19\"\n");
    assert!(err.contains("[model] backbone = \"resnet19\": unknown variant `resnet19`"), "{err}");
    assert!(err.contains("`resnet50`") && err.contains("`resnet_tiny`"), "{err}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let (err, path, _dir) = rejected("[model]\nbackbone = \"resnet18\n");
    assert!(err.contains(&format!("{}: not valid TOML", path.display())), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let out = dfengine(&["train", "no/such/config.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("no/such/config.toml: cannot read config"), "{err}");
}

#[test]
fn overrides_win_and_are_reported_as_the_source() {
    let demo = repo("configs/quick_demo.toml");
    let out = dfengine(&[
        "train",
        demo.to_str().unwrap(),
        "--dry-run",
        "--set",
        "dataloader.batch_size=3",
        "--vram-budget",
        "6GiB",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("batch_size")).expect("batch_size line");
    assert!(line.contains("= 3") && line.contains("# --set dataloader.batch_size=3"), "{line}");
    let line = stdout.lines().find(|l| l.starts_with("vram_budget")).expect("vram_budget line");
    assert!(line.contains("\"6GiB\""), "{line}");
    let line = stdout.lines().find(|l| l.starts_with("pretrained")).expect("pretrained line");
    assert!(line.ends_with("# default"), "{line}");
}

#[test]
fn bad_override_is_blamed_not_the_file() {
    let demo = repo("configs/quick_demo.toml");
    let out = dfengine(&["train", demo.to_str().unwrap(), "--dry-run", "--set", "data.max_frames=0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("--set data.max_frames=0: [data] max_frames = 0: must be ≥ 1"), "{err}");
    let out = dfengine(&["train", demo.to_str().unwrap(), "--set", "batch_size"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected table.key=value"));
}

#[test]
fn library_load_tracks_sources() {
    let demo = repo("configs/quick_demo.toml");
    let set: Override = "train.epochs=9".parse().unwrap();
    let r = config::load(Some(&demo), &[set]).unwrap();
    assert_eq!(r.config.train.epochs, 9);
    assert_eq!(r.source_of("train.epochs"), Source::Override("train.epochs=9".into()));
    assert_eq!(r.source_of("train.lr"), Source::File(demo.clone()));
    assert_eq!(r.source_of("model.pretrained"), Source::Default);
}

#[test]
fn eval_and_predict_refuse_a_file_that_is_not_a_checkpoint() {
    let demo = repo("configs/quick_demo.toml");
    let demo = demo.to_str().unwrap();
    for args in [vec!["eval", demo, "--checkpoint", demo], vec!["predict", "--checkpoint", demo, demo]] {
        let out = dfengine(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("quick_demo.toml") && err.contains("not a safetensors file"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed results for work it did not do");
    }
}

#[test]
fn every_subcommand_has_help() {
    for cmd in ["train", "profile", "synth", "prepare", "eval", "predict"] {
        let out = dfengine(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Usage: dfengine {cmd}")));
    }
}

#[test]
fn train_device_flag_is_checked() {
    let demo = repo("configs/quick_demo.toml");
    let out = dfengine(&["train", demo.to_str().unwrap(), "--device", "tpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "an unknown device must fail");
    assert!(stderr.contains("expected auto, cpu or cuda"), "{stderr}");
    // Insisting on the GPU where none is usable says why and exits 2 before any work.
    if let dfengine::backend::cuda::GpuProbe::Unavailable(why) = dfengine::backend::cuda::probe() {
        let out = dfengine(&["train", demo.to_str().unwrap(), "--device", "cuda"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--device cuda") && stderr.contains(&why), "{stderr}");
    }
}
