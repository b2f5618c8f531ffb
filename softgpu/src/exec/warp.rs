//! One warp: 32 lanes of registers, the active mask and the reconvergence stack, run
//! until it reaches a `bar.sync` or all its threads exit.
//!
//! Divergence follows the immediate-post-dominator scheme: at a branch that splits the
//! active lanes, the current frame becomes the reconvergence frame (at the branch's
//! post-dominator, with all lanes), and the two paths are pushed above it, each running
//! until it reaches that post-dominator.

use super::GlobalMemory;
use super::alu;
use super::checks::Checks;
use super::collective::{self, MatrixCount};
use super::counters::{Dir, Tally};
use super::error::Fault;
use super::hazards::Access;
use super::lanes::{FULL, Lanes, WARP, each};
use super::memory::{AccessError, AsyncCopies, Shared, global_read, global_write};
use crate::ptx::Body;
use crate::ptx::ir::{Op, PredOp, Reg, SPECIAL_REGS, Space, Ty};

#[derive(Debug, Clone, Copy)]
struct Frame {
    pc: u32,
    mask: u32,
    /// Where this path ends: the post-dominator of the branch that created it.
    rpc: u32,
}

/// Why a warp stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// At `bar.sync id`; `pc` is the barrier instruction.
    Barrier {
        id: u32,
        pc: u32,
    },
    Exited,
}

/// What every warp of a launch reads: the kernel body, parameters, global memory and
/// the launch's checks.
pub(crate) struct LaunchCtx<'a> {
    pub body: &'a Body,
    pub params: &'a [u8],
    pub mem: &'a dyn GlobalMemory,
    pub checks: Checks,
}

pub(crate) struct Warp {
    regs: Vec<Lanes>,
    preds: Vec<u32>,
    cur: Frame,
    stack: Vec<Frame>,
    /// Lanes that are threads of the block and have not exited.
    pub live: u32,
    /// Linear thread index of lane 0 in the block.
    first_thread: u32,
    copies: AsyncCopies,
    pub lane_instructions: u64,
}

/// The block-wide values of the special registers.
pub(crate) struct Placement {
    pub block: [u32; 3],
    pub block_idx: [u32; 3],
    pub grid: [u32; 3],
}

/// Thread index (x, y, z) of a linear thread number in a block.
pub(crate) fn thread_index(block: [u32; 3], linear: u32) -> [u32; 3] {
    [linear % block[0], (linear / block[0]) % block[1], linear / (block[0] * block[1])]
}

fn fault(pc: u32, lane: Option<usize>, message: String) -> Fault {
    Fault { pc, lane: lane.map(|l| l as u32), message, other: None }
}

fn shared_fault(pc: u32, lane: usize, e: AccessError) -> Fault {
    Fault { pc, lane: Some(lane as u32), message: e.message, other: e.other }
}

fn le_bytes(v: u64, out: &mut [u8]) {
    out.copy_from_slice(&v.to_le_bytes()[..out.len()]);
}

/// A little-endian value of `ty`, sign-extended for signed types (a narrower load into a
/// wider register extends per the load's type).
fn from_le(bytes: &[u8], ty: Ty) -> u64 {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    let v = u64::from_le_bytes(b);
    if ty.is_signed() {
        let sh = 64 - 8 * bytes.len() as u32;
        (((v << sh) as i64) >> sh) as u64
    } else {
        v
    }
}

impl Warp {
    pub fn new() -> Warp {
        Warp {
            regs: Vec::new(),
            preds: Vec::new(),
            cur: Frame { pc: 0, mask: 0, rpc: u32::MAX },
            stack: Vec::new(),
            live: 0,
            first_thread: 0,
            copies: AsyncCopies::new(),
            lane_instructions: 0,
        }
    }

    /// Prepares warp `index` of a block: special registers and constants filled, the
    /// registers a thread may read before writing zeroed (the others keep what the last
    /// block left: each thread writes them before reading), threads `32·index..` up to
    /// the block size active.
    pub fn reset(&mut self, body: &Body, index: u32, at: &Placement) {
        self.regs.resize(body.num_regs as usize, [0; WARP]);
        for &r in &body.read_before_write {
            self.regs[r as usize] = [0; WARP];
        }
        // Lanes past the block's threads keep a thread index of 0.
        self.regs[..3].fill([0; WARP]);
        self.preds.clear();
        self.preds.resize(body.num_preds as usize, 0);
        let threads = at.block[0] * at.block[1] * at.block[2];
        let mut lanes = 0u32;
        for l in 0..WARP {
            let t = index * WARP as u32 + l as u32;
            if t < threads {
                lanes |= 1 << l;
                let [x, y, z] = thread_index(at.block, t);
                self.regs[0][l] = x as u64;
                self.regs[1][l] = y as u64;
                self.regs[2][l] = z as u64;
            }
        }
        let uniform = [at.block, at.block_idx, at.grid];
        for (k, dims) in uniform.iter().enumerate() {
            for (axis, v) in dims.iter().enumerate() {
                self.regs[3 + 3 * k + axis] = [*v as u64; WARP];
            }
        }
        debug_assert_eq!(SPECIAL_REGS.len(), 12);
        for &(r, v) in &body.consts {
            self.regs[r as usize] = [v; WARP];
        }
        self.cur = Frame { pc: 0, mask: lanes, rpc: u32::MAX };
        self.stack.clear();
        self.live = lanes;
        self.first_thread = index * WARP as u32;
        self.copies.reset();
        self.lane_instructions = 0;
    }

    /// The active lanes right now (for error attribution).
    pub fn active(&self) -> u32 {
        self.cur.mask & self.live
    }

    /// Runs until a barrier or exit. With `COUNT` every issued instruction and memory
    /// access is also counted into `tally`; without it that code is compiled out. The
    /// watchdog stops the warp at a backward branch once its count of lane-instructions
    /// exceeds `limit`.
    pub fn run<const COUNT: bool>(
        &mut self,
        ctx: &LaunchCtx<'_>,
        shared: &mut Shared,
        tally: &mut Tally,
        limit: u64,
    ) -> Result<Stop, Fault> {
        let insts = &ctx.body.insts[..];
        loop {
            let mask = self.cur.mask & self.live;
            if mask == 0 || self.cur.pc == self.cur.rpc {
                match self.stack.pop() {
                    Some(f) => {
                        self.cur = f;
                        continue;
                    }
                    None => return Ok(Stop::Exited),
                }
            }
            let pc = self.cur.pc;
            let inst = &insts[pc as usize];
            if COUNT {
                tally.issue(pc);
            }
            let em = match inst.guard {
                Some(g) => {
                    let p = self.preds[g.pred as usize];
                    mask & if g.negate { !p } else { p }
                }
                None => mask,
            };
            self.lane_instructions += em.count_ones() as u64;
            self.cur.pc = pc + 1;
            if em == 0 {
                // Includes a branch no lane takes: it falls through.
                continue;
            }
            let regs = &mut self.regs[..];
            match inst.op {
                Op::Mov { d, a } => {
                    let av = regs[a as usize];
                    let dv = &mut regs[d as usize];
                    each(em, |l| dv[l] = av[l]);
                }
                Op::Pack { d, lo, hi, half } => {
                    let (lv, hv) = (regs[lo as usize], regs[hi as usize]);
                    let mask = (1u64 << half) - 1;
                    let dv = &mut regs[d as usize];
                    each(em, |l| dv[l] = (lv[l] & mask) | ((hv[l] & mask) << half));
                }
                Op::MovPred { d, a } => {
                    let p = self.preds[a as usize];
                    let dp = &mut self.preds[d as usize];
                    *dp = (*dp & !em) | (p & em);
                }
                Op::PredConst { d, value } => {
                    let dp = &mut self.preds[d as usize];
                    *dp = if value { *dp | em } else { *dp & !em };
                }
                Op::Int { op, ty, d, a, b } => alu::int(regs, em, op, ty, d, a, b),
                Op::IntUn { op, ty, d, a } => alu::int_un(regs, em, op, ty, d, a),
                Op::MulWide { ty, d, a, b } => alu::mul_wide(regs, em, ty, d, a, b),
                Op::MadLo { d, a, b, c, .. } => alu::mad_lo(regs, em, d, [a, b, c]),
                Op::Bfi { ty, d, a, b, pos, len } => alu::bfi(regs, em, ty, d, [a, b, pos, len]),
                Op::Float { op, rnd, ty, d, a, b } => alu::float(regs, em, op, rnd, ty, [d, a, b]),
                Op::FloatUn { op, ty, d, a } => alu::float_un(regs, em, op, ty, d, a),
                Op::Fma { ty, d, a, b, c } => alu::fma(regs, em, ty, d, [a, b, c]),
                Op::Setp { cmp, ty, d, a, b } => {
                    let bits = alu::setp(regs, em, cmp, ty, a, b);
                    let dp = &mut self.preds[d as usize];
                    *dp = (*dp & !em) | bits;
                }
                Op::Selp { d, a, b, p, .. } => {
                    let pm = self.preds[p as usize];
                    let (av, bv) = (regs[a as usize], regs[b as usize]);
                    let dv = &mut regs[d as usize];
                    each(em, |l| dv[l] = if pm >> l & 1 != 0 { av[l] } else { bv[l] });
                }
                Op::PredBin { op, d, a, b } => {
                    let (x, y) = (self.preds[a as usize], self.preds[b as usize]);
                    let v = match op {
                        PredOp::And => x & y,
                        PredOp::Or => x | y,
                        PredOp::Xor => x ^ y,
                    };
                    let dp = &mut self.preds[d as usize];
                    *dp = (*dp & !em) | (v & em);
                }
                Op::PredNot { d, a } => {
                    let v = !self.preds[a as usize];
                    let dp = &mut self.preds[d as usize];
                    *dp = (*dp & !em) | (v & em);
                }
                Op::Cvt { dty, sty, rnd, d, a } => alu::cvt(regs, em, dty, sty, rnd, d, a),
                Op::LdParam { ty, d, off } => {
                    let n = ty.bytes() as usize;
                    let bytes = ctx.params.get(off as usize..off as usize + n).ok_or_else(|| {
                        fault(
                            pc,
                            None,
                            format!(
                                "parameter bytes {off}..{} beyond the {}-byte buffer",
                                off as usize + n,
                                ctx.params.len()
                            ),
                        )
                    })?;
                    let v = from_le(bytes, ty);
                    let dv = &mut regs[d as usize];
                    each(em, |l| dv[l] = v);
                }
                Op::Ld { space, ty, n, d, addr, off } => {
                    if COUNT {
                        tally.access(Dir::Load, space, em, &regs[addr as usize], off, ty.bytes() * n as u32);
                    }
                    let by = Access { pc, thread: self.first_thread };
                    load(regs, em, ctx.mem, shared, by, space, ty, n, d, addr, off)
                        .map_err(|(l, e)| shared_fault(pc, l, e))?
                }
                Op::St { space, ty, n, a, addr, off } => {
                    if COUNT {
                        tally.access(Dir::Store, space, em, &regs[addr as usize], off, ty.bytes() * n as u32);
                    }
                    let by = Access { pc, thread: self.first_thread };
                    store(regs, em, ctx.mem, shared, by, space, ty, n, a, addr, off)
                        .map_err(|(l, e)| shared_fault(pc, l, e))?
                }
                Op::CpAsync { dst, dst_off, src, src_off, size, src_size } => {
                    let mut result = Ok(());
                    let (dv, sv) = (regs[dst as usize], regs[src as usize]);
                    let zv = src_size.map(|r| regs[r as usize]);
                    if COUNT {
                        tally.cp_async(em, (&dv, dst_off), (&sv, src_off), size, zv.as_ref());
                    }
                    each(em, |l| {
                        if result.is_err() {
                            return;
                        }
                        let daddr = (dv[l] as u32) as i64 + dst_off;
                        let saddr = sv[l].wrapping_add(src_off as u64);
                        let bytes = zv.as_ref().map_or(size, |z| z[l] as u32);
                        result = cp_async_one(
                            &mut self.copies,
                            shared,
                            ctx.mem,
                            (pc, l),
                            daddr,
                            saddr,
                            size,
                            bytes,
                        );
                    });
                    result.map_err(|(l, m)| fault(pc, Some(l), m))?;
                }
                Op::CpAsyncCommit => self.copies.commit(em),
                Op::CpAsyncWait { n } => self
                    .copies
                    .wait(em, n, shared, self.first_thread)
                    .map_err(|(l, at, e)| shared_fault(at, l, e))?,
                Op::Mma { d, a, b, c } => {
                    full_warp(pc, em, "mma.sync")?;
                    let mut fa = [[0u32; 4]; WARP];
                    let mut fb = [[0u32; 2]; WARP];
                    let mut fc = [[0f32; 4]; WARP];
                    for l in 0..WARP {
                        for k in 0..4 {
                            fa[l][k] = regs[a[k] as usize][l] as u32;
                            fc[l][k] = f32::from_bits(regs[c[k] as usize][l] as u32);
                        }
                        for k in 0..2 {
                            fb[l][k] = regs[b[k] as usize][l] as u32;
                        }
                    }
                    let out = collective::mma_m16n8k16_f32_f16(&fa, &fb, &fc);
                    for (l, vals) in out.iter().enumerate() {
                        for k in 0..4 {
                            regs[d[k] as usize][l] = vals[k].to_bits() as u64;
                        }
                    }
                }
                Op::Ldmatrix { n, trans, d, addr, off } => {
                    full_warp(pc, em, "ldmatrix")?;
                    let av = regs[addr as usize];
                    let mut rows = [0u32; WARP];
                    for (l, r) in rows.iter_mut().enumerate() {
                        *r = (av[l] as u32).wrapping_add(off as u32);
                    }
                    if COUNT {
                        tally.ldmatrix(n, &rows);
                    }
                    let count = match n {
                        1 => MatrixCount::X1,
                        2 => MatrixCount::X2,
                        _ => MatrixCount::X4,
                    };
                    let out = collective::ldmatrix_m8n8_b16(count, trans, &rows, |lane, a| {
                        shared.read_row(a as i64).map_err(|m| (lane, m))
                    })
                    .map_err(|(l, m)| fault(pc, Some(l), m))?;
                    if shared.tracking() {
                        shared
                            .track_rows(&rows[..8 * n as usize], self.first_thread, pc)
                            .map_err(|(l, e)| shared_fault(pc, l, e))?;
                    }
                    for (l, vals) in out.iter().enumerate() {
                        for k in 0..n as usize {
                            regs[d[k] as usize][l] = vals[k] as u64;
                        }
                    }
                }
                Op::Bar { id } => {
                    if em != self.live {
                        return Err(fault(
                            pc,
                            Some(em.trailing_zeros() as usize),
                            format!(
                                "bar.sync reached by a partial warp: lanes {em:#010x} arrived, {:#010x} live",
                                self.live
                            ),
                        ));
                    }
                    return Ok(Stop::Barrier { id, pc });
                }
                Op::Bra { target, reconverge } => {
                    if target <= pc && self.lane_instructions > limit {
                        return Err(fault(
                            pc,
                            Some(em.trailing_zeros() as usize),
                            format!(
                                "watchdog: the launch ran past SOFTGPU_MAX_LANE_INSTRUCTIONS = {} lane-instructions \
                                 (this warp ran {} of them in this block) and is still looping; an endless loop?",
                                ctx.checks.max_lane_instructions, self.lane_instructions
                            ),
                        ));
                    }
                    let not_taken = mask & !em;
                    if not_taken == 0 {
                        self.cur.pc = target;
                        continue;
                    }
                    self.stack.push(Frame { pc: reconverge, mask: self.cur.mask, rpc: self.cur.rpc });
                    self.stack.push(Frame { pc: pc + 1, mask: not_taken, rpc: reconverge });
                    self.cur = Frame { pc: target, mask: em, rpc: reconverge };
                }
                Op::Exit => self.live &= !em,
            }
        }
    }
}

/// Collectives need the whole warp converged on them.
fn full_warp(pc: u32, em: u32, what: &str) -> Result<(), Fault> {
    if em == FULL {
        return Ok(());
    }
    Err(fault(
        pc,
        Some(em.trailing_zeros() as usize),
        format!("{what} reached by a partial warp: lanes {em:#010x} active, all 32 required"),
    ))
}

/// A failed access of one lane: the lane and why.
type LaneError = (usize, AccessError);

/// `by` names the instruction and lane 0's thread; each lane adds its number.
#[allow(clippy::too_many_arguments)]
fn load(
    regs: &mut [Lanes],
    em: u32,
    mem: &dyn GlobalMemory,
    shared: &mut Shared,
    by: Access,
    space: Space,
    ty: Ty,
    n: u8,
    d: [Reg; 4],
    addr: Reg,
    off: i64,
) -> Result<(), LaneError> {
    let size = ty.bytes() as usize;
    let total = size * n as usize;
    let av = regs[addr as usize];
    let mut result = Ok(());
    let mut vals = [[0u64; 4]; WARP];
    each(em, |l| {
        if result.is_err() {
            return;
        }
        let mut buf = [0u8; 32];
        let r = match space {
            Space::Global => global_read(mem, av[l].wrapping_add(off as u64), &mut buf[..total], total)
                .map_err(AccessError::from),
            Space::Shared => {
                let by = Access { pc: by.pc, thread: by.thread + l as u32 };
                shared.read((av[l] as u32) as i64 + off, &mut buf[..total], by)
            }
        };
        match r {
            Ok(()) => {
                for k in 0..n as usize {
                    vals[l][k] = from_le(&buf[k * size..(k + 1) * size], ty);
                }
            }
            Err(m) => result = Err((l, m)),
        }
    });
    result?;
    for k in 0..n as usize {
        let dv = &mut regs[d[k] as usize];
        each(em, |l| dv[l] = vals[l][k]);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn store(
    regs: &[Lanes],
    em: u32,
    mem: &dyn GlobalMemory,
    shared: &mut Shared,
    by: Access,
    space: Space,
    ty: Ty,
    n: u8,
    a: [Reg; 4],
    addr: Reg,
    off: i64,
) -> Result<(), LaneError> {
    let size = ty.bytes() as usize;
    let total = size * n as usize;
    let av = &regs[addr as usize];
    let mut result = Ok(());
    each(em, |l| {
        if result.is_err() {
            return;
        }
        let mut buf = [0u8; 32];
        for k in 0..n as usize {
            le_bytes(regs[a[k] as usize][l], &mut buf[k * size..(k + 1) * size]);
        }
        let r = match space {
            Space::Global => {
                global_write(mem, av[l].wrapping_add(off as u64), &buf[..total]).map_err(AccessError::from)
            }
            Space::Shared => {
                let by = Access { pc: by.pc, thread: by.thread + l as u32 };
                shared.write((av[l] as u32) as i64 + off, &buf[..total], by)
            }
        };
        if let Err(m) = r {
            result = Err((l, m));
        }
    });
    result
}

/// One lane's `cp.async`: checks both ends now (so the error names this instruction),
/// reads the `src_bytes` that come from global memory and queues the copy.
#[allow(clippy::too_many_arguments)]
fn cp_async_one(
    copies: &mut AsyncCopies,
    shared: &Shared,
    mem: &dyn GlobalMemory,
    (pc, lane): (u32, usize),
    dst: i64,
    src: u64,
    size: u32,
    src_bytes: u32,
) -> Result<(), (usize, String)> {
    if src_bytes > size {
        return Err((lane, format!("cp.async src-size {src_bytes} exceeds the copy size {size}")));
    }
    let range = shared.check("cp.async destination", dst, size as usize).map_err(|m| (lane, m))?;
    let mut data = [0u8; 16];
    if src_bytes > 0 {
        // A short src-size still needs the whole copy's alignment.
        global_read(mem, src, &mut data[..src_bytes as usize], size as usize)
            .map_err(|m| (lane, format!("cp.async source: {m}")))?;
    }
    copies.issue(lane as u32, range.start as u32, size, &data[..src_bytes as usize], pc, shared.epoch());
    Ok(())
}
