//! Theoretical occupancy on sm_80 (A100) limits, from a kernel's registers per thread
//! (ptxas's figure: the interpreter has no register allocator, so it is an input) and
//! its shared memory per block. The rules are those of the CUDA occupancy calculator
//! (`cuda_occupancy.h`) for compute capability 8.0:
//! - at most 2048 threads (64 warps) and 32 blocks per SM;
//! - 65536 registers per SM in 4 sub-partitions; a warp's registers are allocated in
//!   units of 256 (registers per thread × 32, rounded up), and a sub-partition holds as
//!   many warps as fit in its 16384;
//! - 164 KiB (167936 bytes) of shared memory per SM at the largest carveout, allocated
//!   per block in units of 128 bytes, plus 1 KiB the system reserves for every block.

use std::collections::HashMap;
use std::fmt;

const MAX_WARPS_PER_SM: u32 = 64;
const MAX_BLOCKS_PER_SM: u32 = 32;
const REGISTERS_PER_SM: u32 = 65536;
const REGISTER_SUB_PARTITIONS: u32 = 4;
const REGISTER_UNIT: u32 = 256;
const MAX_REGISTERS_PER_THREAD: u32 = 255;
const SHARED_PER_SM: u32 = 167_936;
const SHARED_UNIT: u32 = 128;
const SHARED_RESERVED_PER_BLOCK: u32 = 1024;

/// What bounds the blocks per SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    Threads,
    Blocks,
    Registers,
    SharedMemory,
}

impl fmt::Display for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limiter::Threads => "threads",
            Limiter::Blocks => "blocks",
            Limiter::Registers => "registers",
            Limiter::SharedMemory => "shared memory",
        })
    }
}

/// Blocks and warps one SM holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub registers_per_thread: u32,
    pub shared_per_block: u32,
    pub blocks_per_sm: u32,
    pub warps_per_sm: u32,
    pub limiter: Limiter,
}

impl Occupancy {
    /// sm_80 occupancy of blocks of `threads` threads using `registers` registers per
    /// thread and `shared` bytes of shared memory (static and dynamic).
    pub fn sm80(registers: u32, threads: u32, shared: u32) -> Occupancy {
        let warps = threads.div_ceil(32).max(1);
        let by_threads = MAX_WARPS_PER_SM / warps;
        let by_registers = if registers > MAX_REGISTERS_PER_THREAD {
            0
        } else if registers == 0 {
            MAX_BLOCKS_PER_SM
        } else {
            let per_warp = (registers * 32).div_ceil(REGISTER_UNIT) * REGISTER_UNIT;
            let per_sub_partition = REGISTERS_PER_SM / REGISTER_SUB_PARTITIONS / per_warp;
            if per_warp * warps > REGISTERS_PER_SM {
                0
            } else {
                per_sub_partition * REGISTER_SUB_PARTITIONS / warps
            }
        };
        let shared_alloc = (shared + SHARED_RESERVED_PER_BLOCK).div_ceil(SHARED_UNIT) * SHARED_UNIT;
        let by_shared = SHARED_PER_SM / shared_alloc;
        let limits = [
            (by_threads, Limiter::Threads),
            (MAX_BLOCKS_PER_SM, Limiter::Blocks),
            (by_registers, Limiter::Registers),
            (by_shared, Limiter::SharedMemory),
        ];
        let (blocks, limiter) = limits.into_iter().min_by_key(|&(b, _)| b).unwrap_or((0, Limiter::Threads));
        Occupancy {
            registers_per_thread: registers,
            shared_per_block: shared,
            blocks_per_sm: blocks,
            warps_per_sm: blocks * warps,
            limiter,
        }
    }

    /// Active warps against the SM's 64.
    pub fn fraction(&self) -> f64 {
        self.warps_per_sm as f64 / MAX_WARPS_PER_SM as f64
    }
}

/// Registers per thread by kernel, from the report `scripts/check-ptx.py` writes
/// (target/ptxas-report.txt: a header, a rule, then `module kernel arch regs smem stack
/// spill-st spill-ld` per kernel and architecture).
#[derive(Debug, Clone, Default)]
pub struct RegisterTable {
    /// kernel → (registers, the architecture ptxas assembled for).
    rows: HashMap<String, (u32, String)>,
}

/// The architecture whose figures are taken when the report has it.
const PREFERRED_ARCH: &str = "sm_80";

impl RegisterTable {
    pub fn parse(text: &str) -> Result<RegisterTable, String> {
        let mut rows: HashMap<String, (u32, String)> = HashMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_module, kernel, arch, regs, ..] = fields[..] else { continue };
            let (Some(_), Ok(regs)) = (arch.strip_prefix("sm_"), regs.parse::<u32>()) else { continue };
            let keep = rows.get(kernel).is_none_or(|(_, a)| a != PREFERRED_ARCH && arch == PREFERRED_ARCH);
            if keep {
                rows.insert(kernel.to_string(), (regs, arch.to_string()));
            }
        }
        if rows.is_empty() {
            return Err("no `module kernel arch regs …` rows (the format scripts/check-ptx.py writes)".into());
        }
        Ok(RegisterTable { rows })
    }

    pub fn load(path: &std::path::Path) -> Result<RegisterTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        RegisterTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Registers per thread of `kernel` and the architecture they were assembled for.
    pub fn registers(&self, kernel: &str) -> Option<(u32, &str)> {
        self.rows.get(kernel).map(|(r, a)| (*r, a.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm80_limits() {
        // 8-warp tensor-core block, 128 registers, 48 KiB: registers allow 2 blocks.
        let o = Occupancy::sm80(128, 256, 48 * 1024);
        assert_eq!((o.blocks_per_sm, o.warps_per_sm, o.limiter), (2, 16, Limiter::Registers));
        // 4 warps, 125 registers (→ 4096 per warp), 36 KiB: registers 4, shared 4.
        let o = Occupancy::sm80(125, 128, 36 * 1024);
        assert_eq!(o.blocks_per_sm, 4);
        // A light element-wise kernel: threads bound it.
        let o = Occupancy::sm80(16, 256, 0);
        assert_eq!((o.blocks_per_sm, o.limiter), (8, Limiter::Threads));
        assert_eq!(o.fraction(), 1.0);
        // Tiny blocks: the 32-block cap.
        assert_eq!(Occupancy::sm80(16, 32, 0).limiter, Limiter::Blocks);
        // Shared memory: 80 KiB + 1 KiB reserved fits twice in 164 KiB.
        let o = Occupancy::sm80(32, 128, 80 * 1024);
        assert_eq!((o.blocks_per_sm, o.limiter), (2, Limiter::SharedMemory));
    }

    #[test]
    fn check_ptx_report_is_read() {
        let text = "module       kernel                           arch    regs    smem  stack  spill st  spill ld\n\
                    --------------------------------------------------------------\n\
                    conv         conv2d_fwd_implicit_f16_128x64   sm_89    122       0      0         0         0\n\
                    conv         conv2d_fwd_implicit_f16_128x64   sm_80    120       0      0         0         0\n\
                    eltwise      relu_fwd_f32                     sm_90     12       0      0         0         0\n";
        let t = RegisterTable::parse(text).expect("a table");
        assert_eq!(t.registers("conv2d_fwd_implicit_f16_128x64"), Some((120, "sm_80")));
        assert_eq!(t.registers("relu_fwd_f32"), Some((12, "sm_90")));
        assert_eq!(t.registers("absent"), None);
        assert!(RegisterTable::parse("nothing here").is_err());
    }
}
