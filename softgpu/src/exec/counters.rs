//! Exact per-launch counters: what a launch did, counted instruction by instruction and
//! access by access — the figures Nsight Compute shows, without its timings. They are
//! counts, not times: nothing here says how fast a kernel runs on a GPU.
//!
//! Counting is off unless a launch asks for it (`launch_with_counters`); the interpreter
//! is compiled twice, and the plain path has no counting code at all. While counting,
//! each worker thread keeps a [`Tally`] (warp-level issues per instruction, memory
//! traffic) that is merged into [`Counters`] when the launch ends. The memory models
//! (sectors, bank-conflict wavefronts) are in `traffic.rs`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use super::LaunchConfig;
use super::lanes::{FULL, Lanes, WARP};
use super::occupancy::Occupancy;
use super::traffic::{sectors_and_bytes, wavefronts};
use crate::ptx::ir::{Op, Space, Ty};
use crate::ptx::{Body, Kernel};

/// Multiply-accumulates of one `mma.sync.m16n8k16`.
pub const MACS_PER_MMA: u64 = 16 * 8 * 16;

/// Warp-level instructions by class. A warp issues an instruction when it reaches it
/// with any lane active; a guarded instruction whose guard is false in every active lane
/// still counts (as Nsight's `inst_executed` does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstClasses {
    /// Integer and bitwise arithmetic, integer comparisons, moves, selects, predicate logic.
    pub integer: u64,
    pub f32: u64,
    pub f64: u64,
    /// f16 arithmetic and every `cvt`.
    pub f16_conversion: u64,
    /// Branches and exits.
    pub control: u64,
    /// Loads and stores (global, shared, parameters), `cp.async` and its commit / wait.
    pub memory: u64,
    /// `mma.sync`, `ldmatrix`, `bar.sync`.
    pub collective: u64,
}

impl InstClasses {
    pub fn total(&self) -> u64 {
        self.integer
            + self.f32
            + self.f64
            + self.f16_conversion
            + self.control
            + self.memory
            + self.collective
    }

    fn add(&mut self, o: &InstClasses) {
        self.integer += o.integer;
        self.f32 += o.f32;
        self.f64 += o.f64;
        self.f16_conversion += o.f16_conversion;
        self.control += o.control;
        self.memory += o.memory;
        self.collective += o.collective;
    }

    fn count(&mut self, op: &Op, n: u64) {
        let slot = match *op {
            Op::Float { ty, .. } | Op::FloatUn { ty, .. } | Op::Fma { ty, .. } | Op::Setp { ty, .. } => {
                match ty {
                    Ty::F32 => &mut self.f32,
                    Ty::F64 => &mut self.f64,
                    Ty::F16 => &mut self.f16_conversion,
                    _ => &mut self.integer,
                }
            }
            Op::Cvt { .. } => &mut self.f16_conversion,
            Op::Mov { .. }
            | Op::Pack { .. }
            | Op::MovPred { .. }
            | Op::PredConst { .. }
            | Op::Int { .. }
            | Op::IntUn { .. }
            | Op::MulWide { .. }
            | Op::MadLo { .. }
            | Op::Bfi { .. }
            | Op::Selp { .. }
            | Op::PredBin { .. }
            | Op::PredNot { .. } => &mut self.integer,
            Op::Ld { .. }
            | Op::St { .. }
            | Op::LdParam { .. }
            | Op::CpAsync { .. }
            | Op::CpAsyncCommit
            | Op::CpAsyncWait { .. } => &mut self.memory,
            Op::Mma { .. } | Op::Ldmatrix { .. } | Op::Bar { .. } => &mut self.collective,
            Op::Bra { .. } | Op::Exit => &mut self.control,
        };
        *slot += n;
    }
}

/// Global-memory traffic of one kind of request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalTraffic {
    /// Warp-level instructions that accessed global memory.
    pub requests: u64,
    /// Distinct bytes the active lanes read or wrote, summed over requests.
    pub bytes: u64,
    /// Distinct 32-byte sectors touched, summed over requests.
    pub sectors: u64,
}

impl GlobalTraffic {
    pub fn sectors_per_request(&self) -> f64 {
        ratio(self.sectors, self.requests)
    }

    /// Bytes used against the bytes of the sectors moved (1.0: no byte moved in vain).
    pub fn efficiency(&self) -> f64 {
        ratio(self.bytes, self.sectors * 32)
    }

    /// Bytes the sectors carry.
    pub fn sector_bytes(&self) -> u64 {
        self.sectors * 32
    }

    pub fn add(&mut self, o: &GlobalTraffic) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.sectors += o.sectors;
    }
}

/// Distinct 32-byte sectors a launch touched, reads and writes apart: the least it moves
/// to and from DRAM when the cache holds its working set for the launch (a current GPU's
/// L2 holds tens of MB). `GlobalTraffic::sectors` counts each request's sectors anew —
/// the traffic the L1/L2 sees, re-reads included — so the two bracket a launch's DRAM
/// traffic. A sector both read and written counts in each (fetched, then written back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub read_sectors: u64,
    pub written_sectors: u64,
}

impl Footprint {
    /// Bytes of every distinct sector read plus every distinct sector written.
    pub fn bytes(&self) -> u64 {
        (self.read_sectors + self.written_sectors) * 32
    }

    pub fn add(&mut self, o: &Footprint) {
        self.read_sectors += o.read_sectors;
        self.written_sectors += o.written_sectors;
    }
}

/// Shared-memory wavefronts of one kind of access (bank conflicts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedTraffic {
    pub requests: u64,
    pub wavefronts: u64,
    /// Wavefronts the same data needs without conflicts.
    pub minimum: u64,
}

impl SharedTraffic {
    /// Wavefronts against the minimum (1.0: conflict-free).
    pub fn conflict_ratio(&self) -> f64 {
        ratio(self.wavefronts, self.minimum)
    }

    pub fn add(&mut self, o: &SharedTraffic) {
        self.requests += o.requests;
        self.wavefronts += o.wavefronts;
        self.minimum += o.minimum;
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { f64::NAN } else { a as f64 / b as f64 }
}

/// Everything counted over one launch (or, after [`Counters::add`], several).
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
    /// Static and dynamic shared memory per block.
    pub shared_per_block: u32,
    /// Σ over executed instructions of the lanes whose guard held.
    pub lane_instructions: u64,
    pub instructions: InstClasses,
    pub mma: u64,
    pub global_load: GlobalTraffic,
    pub global_store: GlobalTraffic,
    /// The global side of `cp.async` (lanes whose src-size is not zero).
    pub cp_async: GlobalTraffic,
    /// Bytes `cp.async` wrote to shared memory as zero fill (src-size short of the size).
    pub cp_async_zero_fill_bytes: u64,
    pub shared_load: SharedTraffic,
    pub shared_store: SharedTraffic,
    pub ldmatrix: SharedTraffic,
    /// The shared side of `cp.async`: its destination writes.
    pub cp_async_shared: SharedTraffic,
    /// Distinct sectors of global memory read (loads, `cp.async`) and written (stores).
    /// Counts per launch: after [`Counters::add`], the sum of the launches' footprints.
    pub footprint: Footprint,
    /// Warp-level `bar.sync` instructions.
    pub bar_sync: u64,
    /// From ptxas's register count, when one was given; never guessed.
    pub occupancy: Option<Occupancy>,
}

impl Counters {
    /// Multiply-accumulates the tensor cores performed.
    pub fn mma_macs(&self) -> u64 {
        self.mma * MACS_PER_MMA
    }

    /// All global traffic: loads, stores and `cp.async`.
    pub fn global(&self) -> GlobalTraffic {
        let mut t = self.global_load;
        t.add(&self.global_store);
        t.add(&self.cp_async);
        t
    }

    /// All shared-memory accesses: loads, stores, `ldmatrix` and `cp.async` writes.
    pub fn shared(&self) -> SharedTraffic {
        let mut t = self.shared_load;
        t.add(&self.shared_store);
        t.add(&self.ldmatrix);
        t.add(&self.cp_async_shared);
        t
    }

    /// Sets the occupancy from ptxas's registers per thread for this kernel.
    pub fn with_registers(mut self, registers: u32) -> Counters {
        let threads = self.block.iter().product();
        self.occupancy = Some(Occupancy::sm80(registers, threads, self.shared_per_block));
        self
    }

    /// Adds the counts of another launch (a pass made of several kernels); the name,
    /// shape and occupancy stay this launch's.
    pub fn add(&mut self, o: &Counters) {
        self.lane_instructions += o.lane_instructions;
        self.instructions.add(&o.instructions);
        self.mma += o.mma;
        self.global_load.add(&o.global_load);
        self.global_store.add(&o.global_store);
        self.cp_async.add(&o.cp_async);
        self.cp_async_zero_fill_bytes += o.cp_async_zero_fill_bytes;
        self.shared_load.add(&o.shared_load);
        self.shared_store.add(&o.shared_store);
        self.ldmatrix.add(&o.ldmatrix);
        self.cp_async_shared.add(&o.cp_async_shared);
        self.footprint.add(&o.footprint);
        self.bar_sync += o.bar_sync;
    }

    /// One JSON object on one line (the `SOFTGPU_COUNTERS` file's format).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let g = |t: &GlobalTraffic| {
            format!(r#"{{"requests":{},"bytes":{},"sectors":{}}}"#, t.requests, t.bytes, t.sectors)
        };
        let sh = |t: &SharedTraffic| {
            format!(r#"{{"requests":{},"wavefronts":{},"minimum":{}}}"#, t.requests, t.wavefronts, t.minimum)
        };
        let i = &self.instructions;
        let _ = write!(
            s,
            r#"{{"kernel":"{}","grid":{:?},"block":{:?},"dynamic_shared":{},"shared_per_block":{},"lane_instructions":{},"#,
            // A PTX identifier: letters, digits, `_`, `$`, `%`; nothing to escape in JSON.
            self.kernel,
            self.grid,
            self.block,
            self.dynamic_shared,
            self.shared_per_block,
            self.lane_instructions
        );
        let _ = write!(
            s,
            r#""instructions":{{"integer":{},"f32":{},"f64":{},"f16_conversion":{},"control":{},"memory":{},"collective":{}}},"#,
            i.integer, i.f32, i.f64, i.f16_conversion, i.control, i.memory, i.collective
        );
        let _ = write!(
            s,
            r#""mma":{},"mma_macs":{},"global_load":{},"global_store":{},"cp_async":{},"cp_async_zero_fill_bytes":{},"#,
            self.mma,
            self.mma_macs(),
            g(&self.global_load),
            g(&self.global_store),
            g(&self.cp_async),
            self.cp_async_zero_fill_bytes
        );
        let _ = write!(
            s,
            r#""shared_load":{},"shared_store":{},"ldmatrix":{},"cp_async_shared":{},"footprint":{{"read_sectors":{},"written_sectors":{}}},"bar_sync":{},"occupancy":"#,
            sh(&self.shared_load),
            sh(&self.shared_store),
            sh(&self.ldmatrix),
            sh(&self.cp_async_shared),
            self.footprint.read_sectors,
            self.footprint.written_sectors,
            self.bar_sync
        );
        match &self.occupancy {
            None => s.push_str("null}"),
            Some(o) => {
                let _ = write!(
                    s,
                    r#"{{"registers_per_thread":{},"blocks_per_sm":{},"warps_per_sm":{},"fraction":{},"limiter":"{}"}}}}"#,
                    o.registers_per_thread,
                    o.blocks_per_sm,
                    o.warps_per_sm,
                    o.fraction(),
                    o.limiter
                );
            }
        }
        s
    }
}

/// One worker's counts while a launch runs.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Warp-level issues per instruction (program counter).
    issued: Vec<u64>,
    global_load: GlobalTraffic,
    global_store: GlobalTraffic,
    cp_async: GlobalTraffic,
    cp_async_zero_fill_bytes: u64,
    shared_load: SharedTraffic,
    shared_store: SharedTraffic,
    ldmatrix: SharedTraffic,
    cp_async_shared: SharedTraffic,
    read: SectorSet,
    written: SectorSet,
}

/// Sector numbers (address / 32): a multiplicative hash, since SipHash would cost more
/// than the interpretation around it and the keys are not adversarial.
type SectorSet = HashSet<u64, BuildHasherDefault<SectorHasher>>;

#[derive(Default)]
struct SectorHasher(u64);

impl Hasher for SectorHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing: the table takes its bucket from the low bits and its tag from
        // the top ones, and both are well mixed for consecutive sectors.
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Adds the sectors of `ranges` (address, length) to `set`.
fn touch(set: &mut SectorSet, ranges: &[(u64, u64)]) {
    for &(start, len) in ranges {
        set.extend(start / 32..(start + len).div_ceil(32));
    }
}

/// A load or a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Load,
    Store,
}

impl Tally {
    #[inline(always)]
    pub fn issue(&mut self, pc: u32) {
        if let Some(n) = self.issued.get_mut(pc as usize) {
            *n += 1;
        }
    }

    pub fn prepare(&mut self, body: &Body) {
        if self.issued.len() < body.insts.len() {
            self.issued.resize(body.insts.len(), 0);
        }
    }

    /// A `ld`/`st` of `bytes` per lane at `addr[lane] + off` by the lanes in `mask`.
    pub fn access(&mut self, dir: Dir, space: Space, mask: u32, addr: &Lanes, off: i64, bytes: u32) {
        match space {
            Space::Global => {
                let mut ranges = [(0u64, 0u64); WARP];
                let mut n = 0;
                for (l, &a) in addr.iter().enumerate() {
                    if mask >> l & 1 != 0 {
                        ranges[n] = (a.wrapping_add(off as u64), u64::from(bytes));
                        n += 1;
                    }
                }
                let (sectors, used) = sectors_and_bytes(&mut ranges[..n]);
                touch(if dir == Dir::Load { &mut self.read } else { &mut self.written }, &ranges[..n]);
                let t = if dir == Dir::Load { &mut self.global_load } else { &mut self.global_store };
                t.requests += 1;
                t.bytes += used;
                t.sectors += sectors;
            }
            Space::Shared => {
                let lanes: [u32; WARP] = std::array::from_fn(|l| (addr[l] as u32).wrapping_add(off as u32));
                let (w, min) = wavefronts(&lanes, mask, bytes);
                let t = if dir == Dir::Load { &mut self.shared_load } else { &mut self.shared_store };
                t.requests += 1;
                t.wavefronts += w;
                t.minimum += min;
            }
        }
    }

    /// `ldmatrix` of `num` matrices with row addresses `rows` (lanes 0..8·num).
    pub fn ldmatrix(&mut self, num: u8, rows: &[u32; WARP]) {
        let mask = if num >= 4 { FULL } else { (1u32 << (8 * num)) - 1 };
        let (w, min) = wavefronts(rows, mask, 16);
        self.ldmatrix.requests += 1;
        self.ldmatrix.wavefronts += w;
        self.ldmatrix.minimum += min;
    }

    /// `cp.async` of `size` bytes per lane from global `src + src_off` to shared
    /// `dst + dst_off` by the lanes in `mask`, of which the first `src_size[lane]` bytes
    /// (all, without that operand) come from global memory and the rest are zero fill.
    pub fn cp_async(
        &mut self,
        mask: u32,
        (dst, dst_off): (&Lanes, i64),
        (src, src_off): (&Lanes, i64),
        size: u32,
        src_size: Option<&Lanes>,
    ) {
        let mut ranges = [(0u64, 0u64); WARP];
        let mut n = 0;
        for l in 0..WARP {
            if mask >> l & 1 == 0 {
                continue;
            }
            let b = src_size.map_or(size, |z| (z[l] as u32).min(size));
            self.cp_async_zero_fill_bytes += u64::from(size - b);
            if b > 0 {
                ranges[n] = (src[l].wrapping_add(src_off as u64), u64::from(b));
                n += 1;
            }
        }
        if n > 0 {
            let (sectors, used) = sectors_and_bytes(&mut ranges[..n]);
            touch(&mut self.read, &ranges[..n]);
            self.cp_async.requests += 1;
            self.cp_async.bytes += used;
            self.cp_async.sectors += sectors;
        }
        let lanes: [u32; WARP] = std::array::from_fn(|l| (dst[l] as u32).wrapping_add(dst_off as u32));
        let (w, min) = wavefronts(&lanes, mask, size);
        self.cp_async_shared.requests += 1;
        self.cp_async_shared.wavefronts += w;
        self.cp_async_shared.minimum += min;
    }

    /// Adds another worker's tally.
    pub fn merge(&mut self, o: &Tally) {
        if self.issued.len() < o.issued.len() {
            self.issued.resize(o.issued.len(), 0);
        }
        for (a, b) in self.issued.iter_mut().zip(&o.issued) {
            *a += b;
        }
        self.global_load.add(&o.global_load);
        self.global_store.add(&o.global_store);
        self.cp_async.add(&o.cp_async);
        self.cp_async_zero_fill_bytes += o.cp_async_zero_fill_bytes;
        self.shared_load.add(&o.shared_load);
        self.shared_store.add(&o.shared_store);
        self.ldmatrix.add(&o.ldmatrix);
        self.cp_async_shared.add(&o.cp_async_shared);
        self.read.extend(&o.read);
        self.written.extend(&o.written);
    }

    /// The launch's counters (occupancy unknown until registers are given).
    pub fn finish(self, kernel: &Kernel, cfg: &LaunchConfig, lane_instructions: u64) -> Counters {
        let body = &kernel.body;
        let mut instructions = InstClasses::default();
        let (mut mma, mut bar_sync) = (0, 0);
        for (inst, &n) in body.insts.iter().zip(&self.issued) {
            instructions.count(&inst.op, n);
            match inst.op {
                Op::Mma { .. } => mma += n,
                Op::Bar { .. } => bar_sync += n,
                _ => {}
            }
        }
        Counters {
            kernel: kernel.name().to_string(),
            grid: cfg.grid,
            block: cfg.block,
            dynamic_shared: cfg.dynamic_shared,
            shared_per_block: body.dynamic_offset + cfg.dynamic_shared,
            lane_instructions,
            instructions,
            mma,
            global_load: self.global_load,
            global_store: self.global_store,
            cp_async: self.cp_async,
            cp_async_zero_fill_bytes: self.cp_async_zero_fill_bytes,
            shared_load: self.shared_load,
            shared_store: self.shared_store,
            ldmatrix: self.ldmatrix,
            cp_async_shared: self.cp_async_shared,
            footprint: Footprint {
                read_sectors: self.read.len() as u64,
                written_sectors: self.written.len() as u64,
            },
            bar_sync,
            occupancy: None,
        }
    }
}
