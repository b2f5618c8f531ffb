//! Per-lane loops over a warp's register slots, restricted to an active mask. With all 32
//! lanes active (the common case) the loop is straight-line and vectorisable.

use crate::ptx::ir::Reg;

pub(crate) const WARP: usize = 32;
pub(crate) const FULL: u32 = u32::MAX;

/// One register slot: a value per lane.
pub(crate) type Lanes = [u64; WARP];

#[inline(always)]
fn for_lanes(mask: u32, mut f: impl FnMut(usize)) {
    if mask == FULL {
        for l in 0..WARP {
            f(l);
        }
    } else {
        let mut m = mask;
        while m != 0 {
            f(m.trailing_zeros() as usize);
            m &= m - 1;
        }
    }
}

/// Calls `f` for each active lane.
#[inline(always)]
pub(crate) fn each(mask: u32, f: impl FnMut(usize)) {
    for_lanes(mask, f)
}

#[inline(always)]
pub(crate) fn map1(regs: &mut [Lanes], mask: u32, d: Reg, a: Reg, f: impl Fn(u64) -> u64) {
    let av = regs[a as usize];
    let dv = &mut regs[d as usize];
    for_lanes(mask, |l| dv[l] = f(av[l]));
}

#[inline(always)]
pub(crate) fn map2(regs: &mut [Lanes], mask: u32, d: Reg, a: Reg, b: Reg, f: impl Fn(u64, u64) -> u64) {
    let av = regs[a as usize];
    let bv = regs[b as usize];
    let dv = &mut regs[d as usize];
    for_lanes(mask, |l| dv[l] = f(av[l], bv[l]));
}

#[inline(always)]
pub(crate) fn map3(
    regs: &mut [Lanes],
    mask: u32,
    d: Reg,
    [a, b, c]: [Reg; 3],
    f: impl Fn(u64, u64, u64) -> u64,
) {
    let av = regs[a as usize];
    let bv = regs[b as usize];
    let cv = regs[c as usize];
    let dv = &mut regs[d as usize];
    for_lanes(mask, |l| dv[l] = f(av[l], bv[l], cv[l]));
}

/// The lanes of `mask` for which `f` holds, as a predicate mask.
#[inline(always)]
pub(crate) fn test2(regs: &[Lanes], mask: u32, a: Reg, b: Reg, f: impl Fn(u64, u64) -> bool) -> u32 {
    let av = &regs[a as usize];
    let bv = &regs[b as usize];
    let mut bits = 0u32;
    for_lanes(mask, |l| bits |= (f(av[l], bv[l]) as u32) << l);
    bits
}
