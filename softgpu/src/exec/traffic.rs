//! The two memory-system models behind the counters: 32-byte sectors of a warp's global
//! request, and shared-memory wavefronts (bank conflicts). Both are exact functions of the
//! lanes' addresses; neither says anything about time.
//!
//! Global memory is accessed in 32-byte sectors (CUDA C++ Programming Guide, "Device
//! Memory Accesses" → "Global Memory"; Nsight Compute's `sectors/request`): a warp-level
//! request touches every sector that holds a byte some active lane reads or writes, and
//! its efficiency is the distinct bytes the lanes use against 32 × those sectors.
//!
//! Shared memory (CUDA C++ Programming Guide, "Compute Capabilities" → "Compute
//! Capability 5.x" → "Shared Memory", which sm_80 keeps): 32 banks, successive 4-byte
//! words in successive banks, each bank serving one 4-byte word per cycle; lanes reading
//! the same word do not conflict (broadcast). The model implemented here:
//! - An access of 1, 2 or 4 bytes per lane is one phase of all 32 lanes; 8 bytes per lane
//!   is two phases (lanes 0–15, 16–31), 16 bytes four phases (lanes 0–7, 8–15, …), each
//!   phase at most 128 bytes, as the hardware splits wide accesses.
//! - A phase needs as many wavefronts as the largest number of distinct words any one
//!   bank holds among the words its lanes touch (at least one if a lane is active); its
//!   minimum is ⌈distinct words / 32⌉.
//! - `ldmatrix` reads each of its 1, 2 or 4 8×8 matrices as 8 rows of 16 bytes, the row
//!   addresses of lanes 8j..8j+7: that is the 16-byte case above over the first 8·num
//!   lanes, one phase (ideally one wavefront) per matrix.
//! - `cp.async` writes its destination like a store of its copy size per lane.
//!
//! The same counts with `wavefronts = minimum` mean "no bank conflicts".

use super::lanes::WARP;

/// Distinct 32-byte sectors and distinct bytes of one warp-level request; `ranges` holds
/// (address, length) for each active lane (lengths > 0) and is reordered.
pub(crate) fn sectors_and_bytes(ranges: &mut [(u64, u64)]) -> (u64, u64) {
    ranges.sort_unstable();
    let (mut sectors, mut bytes) = (0u64, 0u64);
    // End of the bytes counted so far, and the last sector counted.
    let mut covered: Option<(u64, u64)> = None;
    for &(start, len) in ranges.iter() {
        let end = start + len;
        let (from, last_sector) = match covered {
            Some((covered_end, s)) => (start.max(covered_end), Some(s)),
            None => (start, None),
        };
        if end <= from {
            continue;
        }
        bytes += end - from;
        let first = from / 32;
        let last = (end - 1) / 32;
        sectors += last - first + 1 - u64::from(last_sector == Some(first));
        covered = Some((end, last));
    }
    (sectors, bytes)
}

/// Wavefronts and their minimum for one warp-level shared access of `width` bytes per
/// lane (1, 2, 4, 8 or 16) at byte addresses `addr[lane]`, by the lanes in `mask`.
pub(crate) fn wavefronts(addr: &[u32; WARP], mask: u32, width: u32) -> (u64, u64) {
    let lanes_per_phase = if width <= 4 { WARP } else { 128 / width as usize };
    let (mut total, mut minimum) = (0u64, 0u64);
    for (phase, lanes) in addr.chunks(lanes_per_phase).enumerate() {
        // At most 128 words: 32 lanes × 1, 16 × 2 or 8 × 4 (5 if misaligned, which the
        // access itself then rejects).
        let mut words = [0u64; 160];
        let mut n = 0;
        for (i, &a) in lanes.iter().enumerate() {
            if mask >> (phase * lanes_per_phase + i) & 1 == 0 {
                continue;
            }
            let first = u64::from(a) / 4;
            let last = (u64::from(a) + u64::from(width) - 1) / 4;
            for w in first..=last {
                words[n] = w;
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        let words = &mut words[..n];
        words.sort_unstable();
        let mut per_bank = [0u8; 32];
        let mut distinct = 0u64;
        let mut prev = None;
        for &w in words.iter() {
            if prev == Some(w) {
                continue;
            }
            prev = Some(w);
            distinct += 1;
            per_bank[(w % 32) as usize] += 1;
        }
        total += u64::from(*per_bank.iter().max().unwrap_or(&1));
        minimum += distinct.div_ceil(32);
    }
    (total, minimum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(f: impl Fn(u32) -> u32) -> [u32; WARP] {
        std::array::from_fn(|l| f(l as u32))
    }

    #[test]
    fn coalesced_and_strided_sectors() {
        let mut r: Vec<(u64, u64)> = (0..32).map(|l| (0x1000 + 4 * l, 4)).collect();
        assert_eq!(sectors_and_bytes(&mut r), (4, 128));
        let mut r: Vec<(u64, u64)> = (0..32).map(|l| (0x1000 + 128 * l, 4)).collect();
        assert_eq!(sectors_and_bytes(&mut r), (32, 128));
        // Broadcast: one word, one sector.
        let mut r: Vec<(u64, u64)> = (0..32).map(|_| (0x1004, 4)).collect();
        assert_eq!(sectors_and_bytes(&mut r), (1, 4));
        // 16 bytes per lane, offset by 8: 512 bytes over 17 sectors.
        let mut r: Vec<(u64, u64)> = (0..32).map(|l| (0x1008 + 16 * l, 16)).collect();
        assert_eq!(sectors_and_bytes(&mut r), (17, 512));
    }

    #[test]
    fn bank_conflicts() {
        assert_eq!(wavefronts(&lanes(|l| 4 * l), u32::MAX, 4), (1, 1));
        assert_eq!(wavefronts(&lanes(|l| 128 * l), u32::MAX, 4), (32, 1));
        assert_eq!(wavefronts(&lanes(|_| 64), u32::MAX, 4), (1, 1));
        // Stride 2 words: 2-way.
        assert_eq!(wavefronts(&lanes(|l| 8 * l), u32::MAX, 4), (2, 1));
        // 16 bytes per lane, contiguous: four phases of 8 lanes, no conflict.
        assert_eq!(wavefronts(&lanes(|l| 16 * l), u32::MAX, 16), (4, 4));
        // 8 bytes per lane, contiguous: two phases.
        assert_eq!(wavefronts(&lanes(|l| 8 * l), u32::MAX, 8), (2, 2));
        // One lane active.
        assert_eq!(wavefronts(&lanes(|l| 128 * l), 1, 4), (1, 1));
    }
}
