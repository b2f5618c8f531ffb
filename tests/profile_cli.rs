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
