//! One thread block: its warps run in turn, each until a `bar.sync` or its exit; when
//! every warp waits at the same barrier they all go on. A block where some threads wait
//! while others exited or wait elsewhere is an error (on a GPU, a hang or undefined).

use super::counters::Tally;
use super::error::{ErrorSite, Fault, LaunchError};
use super::hazards::MAX_INSTRUCTIONS;
use super::lanes::WARP;
use super::memory::Shared;
use super::warp::{LaunchCtx, Placement, Stop, Warp, thread_index};
use crate::ptx::Kernel;

/// Per-worker state, reused from block to block.
pub(crate) struct BlockRunner {
    warps: Vec<Warp>,
    stops: Vec<Stop>,
    shared: Shared,
    /// This worker's counts, when the launch counts.
    pub tally: Tally,
}

impl BlockRunner {
    pub fn new() -> BlockRunner {
        BlockRunner { warps: Vec::new(), stops: Vec::new(), shared: Shared::new(), tally: Tally::default() }
    }

    /// Runs one block; returns the lane-instructions it executed. With `COUNT` its
    /// instructions and accesses are added to `self.tally`. `budget`: the lane-instructions
    /// the launch may still execute before the watchdog stops it.
    pub fn run<const COUNT: bool>(
        &mut self,
        kernel: &Kernel,
        ctx: &LaunchCtx<'_>,
        at: &Placement,
        dynamic_shared: u32,
        budget: u64,
    ) -> Result<u64, LaunchError> {
        let body = ctx.body;
        let threads = at.block[0] * at.block[1] * at.block[2];
        let nwarps = threads.div_ceil(WARP as u32) as usize;
        while self.warps.len() < nwarps {
            self.warps.push(Warp::new());
        }
        for (i, w) in self.warps[..nwarps].iter_mut().enumerate() {
            w.reset(body, i as u32, at);
        }
        let window = body.dynamic_offset as usize + dynamic_shared as usize;
        let races = ctx.checks.shared_races && body.insts.len() < MAX_INSTRUCTIONS;
        self.shared.reset(body.static_shared, window, ctx.checks.shared_unwritten, races);
        if COUNT {
            self.tally.prepare(body);
        }
        let error = |warp: usize, f: Fault| {
            let lane = f.lane.unwrap_or(0);
            let mut message = f.message;
            if let Some(other) = f.other {
                message.push(' ');
                message.push_str(&describe(kernel, at, other.thread, other.pc));
            }
            launch_error(kernel, at, Some(warp as u32 * WARP as u32 + lane), Some(f.pc), message)
        };
        // Lane-instructions of the block's warps so far, for the watchdog.
        let mut ran = 0u64;
        loop {
            self.stops.clear();
            for (i, w) in self.warps[..nwarps].iter_mut().enumerate() {
                let stop = if w.live == 0 {
                    Stop::Exited
                } else {
                    let before = w.lane_instructions;
                    let limit = budget.saturating_sub(ran - before);
                    let stop = w
                        .run::<COUNT>(ctx, &mut self.shared, &mut self.tally, limit)
                        .map_err(|f| error(i, f))?;
                    ran += w.lane_instructions - before;
                    stop
                };
                self.stops.push(stop);
            }
            let waiting = self.stops.iter().position(|s| matches!(s, Stop::Barrier { .. }));
            let Some(first) = waiting else {
                break;
            };
            let Stop::Barrier { id, pc } = self.stops[first] else {
                break;
            };
            let thread_of = |w: usize| (w * WARP) as u32;
            for (i, s) in self.stops.iter().enumerate() {
                let problem = match *s {
                    Stop::Exited => Some(format!(
                        "bar.sync {id} in a divergent block: warp {i} (threads {}..{}) exited while warp {first} waits",
                        thread_of(i),
                        (thread_of(i) + WARP as u32).min(threads)
                    )),
                    Stop::Barrier { id: other, pc: at_pc } if other != id || at_pc != pc => Some(format!(
                        "bar.sync {id} in a divergent block: warp {i} waits at `{}` (PTX line {}) instead",
                        body.sites[at_pc as usize].text, body.sites[at_pc as usize].ptx_line
                    )),
                    Stop::Barrier { .. } => None,
                };
                if let Some(message) = problem {
                    return Err(launch_error(kernel, at, Some(thread_of(first)), Some(pc), message));
                }
            }
            // Threads that exited before the barrier also make it divergent.
            for (i, w) in self.warps[..nwarps].iter().enumerate() {
                let lanes = threads.saturating_sub(thread_of(i)).min(WARP as u32);
                let all = if lanes == 32 { u32::MAX } else { (1u32 << lanes) - 1 };
                if w.live != all {
                    let gone = all & !w.live;
                    let message = format!(
                        "bar.sync {id} in a divergent block: thread {} of warp {i} exited before the barrier",
                        thread_of(i) + gone.trailing_zeros()
                    );
                    return Err(launch_error(
                        kernel,
                        at,
                        Some(thread_of(i) + w.active().trailing_zeros()),
                        Some(pc),
                        message,
                    ));
                }
            }
            self.shared.barrier();
        }
        Ok(ran)
    }
}

/// "thread (x,y,z), PTX line N (file.cu:M) `instruction`" for linear thread `thread` at `pc`.
fn describe(kernel: &Kernel, at: &Placement, thread: u32, pc: u32) -> String {
    let [x, y, z] = thread_index(at.block, thread);
    let mut s = format!("thread ({x},{y},{z})");
    if let Some(site) = kernel.body.sites.get(pc as usize) {
        s.push_str(&format!(", PTX line {}", site.ptx_line));
        if let Some(src) = kernel.source_location(site.loc) {
            s.push_str(&format!(" ({src})"));
        }
        s.push_str(&format!(" `{}`", site.text));
    }
    s
}

/// Builds the error for block `at`, linear thread `thread`, instruction `pc`.
pub(crate) fn launch_error(
    kernel: &Kernel,
    at: &Placement,
    thread: Option<u32>,
    pc: Option<u32>,
    message: String,
) -> LaunchError {
    let site = pc.and_then(|pc| kernel.body.sites.get(pc as usize)).map(|s| {
        Box::new(ErrorSite {
            ptx_line: s.ptx_line,
            source: kernel.source_location(s.loc),
            instruction: s.text.to_string(),
        })
    });
    LaunchError {
        kernel: kernel.name().to_string(),
        block: Some(at.block_idx),
        thread: thread.map(|t| thread_index(at.block, t)),
        site,
        message,
    }
}
