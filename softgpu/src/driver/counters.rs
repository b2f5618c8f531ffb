//! Per-launch counters through the driver: with `SOFTGPU_COUNTERS=path` every
//! `cuLaunchKernel` runs on the counting interpreter and appends one JSON line to that
//! file (`exec::Counters::to_json`: kernel, grid, block, shared memory, instructions by
//! class, mma, global sectors, shared wavefronts, barriers). `SOFTGPU_REGISTERS=path`
//! names a ptxas report as `scripts/check-ptx.py` writes it (target/ptxas-report.txt);
//! with it each line carries the kernel's sm_80 occupancy, without it `"occupancy":
//! null` — never a guess. Both variables are read once per process. Without
//! `SOFTGPU_COUNTERS` launches take the plain interpreter path, which counts nothing.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::exec::{self, GlobalMemory, LaunchConfig, LaunchError, RegisterTable};
use crate::ptx::Kernel;

pub const COUNTERS_VAR: &str = "SOFTGPU_COUNTERS";
pub const REGISTERS_VAR: &str = "SOFTGPU_REGISTERS";

struct Sink {
    path: PathBuf,
    registers: Option<RegisterTable>,
    /// Serialises appends from launches on different threads.
    lock: Mutex<()>,
}

fn sink() -> Option<&'static Sink> {
    static SINK: OnceLock<Option<Sink>> = OnceLock::new();
    SINK.get_or_init(|| {
        let path = std::env::var_os(COUNTERS_VAR).filter(|p| !p.is_empty())?;
        let registers = std::env::var_os(REGISTERS_VAR).filter(|p| !p.is_empty()).and_then(|p| {
            RegisterTable::load(std::path::Path::new(&p))
                .map_err(|e| eprintln!("softgpu: {REGISTERS_VAR}: {e}; occupancy is reported as unknown"))
                .ok()
        });
        Some(Sink { path: PathBuf::from(path), registers, lock: Mutex::new(()) })
    })
    .as_ref()
}

/// `exec::launch`, counted and recorded when `SOFTGPU_COUNTERS` is set. A counters file
/// that cannot be written is reported on stderr (not as the launch's diagnostic: the
/// launch itself succeeded).
pub fn launch(
    kernel: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
) -> Result<(), LaunchError> {
    let Some(sink) = sink() else {
        return exec::launch(kernel, cfg, params, mem);
    };
    let mut counters = exec::launch_with_counters(kernel, cfg, params, mem)?;
    if let Some((regs, _)) = sink.registers.as_ref().and_then(|t| t.registers(kernel.name())) {
        counters = counters.with_registers(regs);
    }
    let line = counters.to_json() + "\n";
    let _guard = sink.lock.lock().unwrap_or_else(|p| p.into_inner());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&sink.path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("softgpu: {COUNTERS_VAR}={}: {e}; this launch's counters are lost", sink.path.display());
    }
    Ok(())
}
