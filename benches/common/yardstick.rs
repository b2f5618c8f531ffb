//! A Python yardstick run beside a bench (PyTorch, facenet-pytorch, OpenCV): one of the
//! `benches/*.py` scripts, which prints a single JSON object, under the Python
//! `DFENGINE_TORCH_PYTHON` names (default `python3`). Without the script's packages it
//! fails and the bench prints why.

use std::process::Command;

/// Runs `benches/<script>` with `args` on `threads` OpenMP threads; its JSON output.
pub fn run(script: &str, args: &[String], threads: usize) -> Result<serde_json::Value, String> {
    let python = std::env::var("DFENGINE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join(script);
    let out = Command::new(&python)
        .arg(&path)
        .args(args)
        .env("OMP_NUM_THREADS", threads.to_string())
        // OpenMP's spinning barriers collapse when the cores are shared (a 2-core VM under
        // load: 3.4 img/s spinning against 15 passive at 224²); rayon's workers sleep too.
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python} {script}: {}", err.trim().lines().last().unwrap_or("failed")));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{python} {script}: unreadable output ({e})"))
}
