//! Shared-memory hazards of one block, which a real GPU lets pass silently:
//!
//! - **Unwritten reads**: a bit per byte of the window, set by every store and by every
//!   `cp.async` when it lands (its zero-filled tail included); a load or `ldmatrix` row
//!   that covers a clear bit reads memory no thread of the block wrote.
//! - **Races across a missing `bar.sync`**: the block's time is cut into barrier epochs
//!   (one per interval between two `bar.sync`s). Accesses of different warps in one epoch
//!   are unordered; within a warp, program order holds (dfengine's kernels rely on no warp
//!   lockstep beyond the collectives, and the interpreter runs a warp's lanes together).
//!   Per unit of bytes the tracker keeps the last write (epoch, access) and the epoch of
//!   the latest reads with the set of warps that read in it (and two of those reads, to
//!   name one in a message). A read races with a write of another warp in its epoch; a
//!   write races with a write or a read of another warp in its epoch.
//!
//! A `cp.async` is a write by the issuing thread's warp that may land at any moment from
//! its issue to the `cp.async.wait_group` that covers it: it is recorded when it lands
//! (in that epoch), and checked against the last write and the latest reads of another
//! warp from the epoch it was issued in on. An `ldmatrix` is a read of its 8-row matrices
//! by the whole warp, each row by the lane that addressed it.
//!
//! The unit is a 16-byte chunk (what `cp.async` and an `ldmatrix` row move, one state
//! update instead of four) until an access covers a chunk only in part; from then on its
//! four 4-byte words each have their own state. Two warps touching different bytes of one
//! word in one epoch therefore count as a race (dfengine's kernels access shared memory 4,
//! 8 or 16 bytes at a time).
//!
//! Epochs keep counting from block to block (a worker reuses its tracker), so what an
//! earlier block left behind is older than anything the current block compares against;
//! only the per-byte written bits are cleared per block.

use std::ops::Range;

use super::lanes::WARP;

/// One shared access: the instruction (`pc`) and the thread (linear index in the block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub pc: u32,
    pub thread: u32,
}

impl Access {
    pub fn warp(self) -> u32 {
        self.thread / WARP as u32
    }
}

/// Race tracking packs an access into 32 bits: the instruction in the high 22, the thread
/// (< 1024) in the low 10. A kernel of `MAX_INSTRUCTIONS` or more instructions (some 100
/// MB of PTX) is not tracked.
pub(crate) const MAX_INSTRUCTIONS: usize = (1 << 22) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed(u32);

impl Packed {
    const NONE: Packed = Packed(u32::MAX);

    #[inline(always)]
    fn new(a: Access) -> Packed {
        Packed(a.pc << 10 | a.thread)
    }

    #[inline(always)]
    fn warp(self) -> u32 {
        (self.0 & 0x3ff) / WARP as u32
    }

    fn unpack(self) -> Access {
        Access { pc: self.0 >> 10, thread: self.0 & 0x3ff }
    }
}

/// Which two accesses race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaceKind {
    /// This read, after another warp's write.
    ReadAfterWrite,
    /// This write, after another warp's write.
    WriteAfterWrite,
    /// This write, after another warp's read.
    WriteAfterRead,
}

/// A hazard found by an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hazard {
    /// The first byte of the access that no thread of the block wrote.
    Unwritten { byte: usize },
    /// `other`, an access of another warp, conflicts with this one on the `len` bytes at
    /// `at` (a unit of race state: a 16-byte chunk or a 4-byte word of one).
    Race { kind: RaceKind, at: usize, len: usize, other: Access },
}

/// Race state of one unit of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    /// Epoch of the last write (0: none yet) and that write.
    write_epoch: u32,
    writer: Packed,
    /// Epoch of the latest reads and the warps that read in it.
    read_epoch: u32,
    read_warps: u32,
    /// The first read in `read_epoch`, and the first there by a warp other than its.
    readers: [Packed; 2],
}

impl State {
    const NEW: State = State {
        write_epoch: 0,
        writer: Packed::NONE,
        read_epoch: 0,
        read_warps: 0,
        readers: [Packed::NONE; 2],
    };

    #[inline(always)]
    fn read(&mut self, epoch: u32, by: Packed) -> Result<(), (RaceKind, Access)> {
        let warp = by.warp();
        if self.write_epoch == epoch && self.writer.warp() != warp {
            return Err((RaceKind::ReadAfterWrite, self.writer.unpack()));
        }
        let bit = 1u32 << warp;
        if self.read_epoch != epoch {
            self.read_epoch = epoch;
            self.read_warps = bit;
            self.readers = [by, Packed::NONE];
        } else if self.read_warps & bit == 0 {
            self.read_warps |= bit;
            if self.readers[1] == Packed::NONE {
                self.readers[1] = by;
            }
        }
        Ok(())
    }

    /// A write that may have taken effect at any moment from epoch `issued` to `epoch`.
    #[inline(always)]
    fn write(&mut self, epoch: u32, issued: u32, by: Packed) -> Result<(), (RaceKind, Access)> {
        let warp = by.warp();
        if self.write_epoch >= issued && self.writer.warp() != warp {
            return Err((RaceKind::WriteAfterWrite, self.writer.unpack()));
        }
        if self.read_epoch >= issued && self.read_warps & !(1u32 << warp) != 0 {
            let [first, second] = self.readers;
            let other = if first.warp() != warp { first } else { second };
            return Err((RaceKind::WriteAfterRead, other.unpack()));
        }
        self.write_epoch = epoch;
        self.writer = by;
        Ok(())
    }
}

/// Bytes per chunk of race state; a chunk that an access covers only in part is split
/// into words from then on.
const CHUNK: usize = 16;
const WORD: usize = 4;
const WORDS_PER_CHUNK: usize = CHUNK / WORD;

pub(crate) struct Hazards {
    unwritten: bool,
    races: bool,
    /// Bit per byte of the window: written by this block.
    written: Vec<u64>,
    /// Race state per chunk, or, where `split`, per word of it in `words`.
    chunks: Vec<State>,
    split: Vec<bool>,
    words: Vec<State>,
    epoch: u32,
}

impl Hazards {
    pub fn new() -> Hazards {
        Hazards {
            unwritten: false,
            races: false,
            written: Vec::new(),
            chunks: Vec::new(),
            split: Vec::new(),
            words: Vec::new(),
            epoch: 0,
        }
    }

    /// Whether any check is on (the callers' fast path).
    #[inline(always)]
    pub fn on(&self) -> bool {
        self.unwritten | self.races
    }

    /// A new block over a window of `len` bytes.
    pub fn start_block(&mut self, len: usize, unwritten: bool, races: bool) {
        self.unwritten = unwritten;
        self.races = races;
        if unwritten {
            self.written.clear();
            self.written.resize(len.div_ceil(64), 0);
        }
        if races {
            let chunks = len.div_ceil(CHUNK);
            if self.chunks.len() != chunks {
                self.chunks = vec![State::NEW; chunks];
                self.split = vec![false; chunks];
                self.words = vec![State::NEW; chunks * WORDS_PER_CHUNK];
                self.epoch = 0;
            }
            self.next_epoch();
        }
    }

    /// Every warp of the block passed a `bar.sync`.
    pub fn barrier(&mut self) {
        if self.races {
            self.next_epoch();
        }
    }

    /// The current epoch, which a `cp.async` records when issued.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    fn next_epoch(&mut self) {
        if self.epoch == u32::MAX {
            // After 2³² barriers of one worker: forget everything, start over.
            self.chunks.fill(State::NEW);
            self.words.fill(State::NEW);
            self.epoch = 0;
        }
        self.epoch += 1;
    }

    /// A read of bytes `r` (inside the window) by `by`.
    #[inline(always)]
    pub fn read(&mut self, r: Range<usize>, by: Access) -> Result<(), Hazard> {
        if r.len() == CHUNK && r.start % CHUNK == 0 {
            return self.read_chunk(r.start / CHUNK, by);
        }
        self.read_span(r, by)
    }

    #[inline(never)]
    fn read_span(&mut self, r: Range<usize>, by: Access) -> Result<(), Hazard> {
        if self.unwritten
            && let Some(byte) = first_clear(&self.written, r.clone())
        {
            return Err(Hazard::Unwritten { byte });
        }
        if self.races {
            let epoch = self.epoch;
            let by = Packed::new(by);
            self.each_state(r, |s| s.read(epoch, by))?;
        }
        Ok(())
    }

    /// The fast path of `read` for one whole chunk (an `ldmatrix` row).
    #[inline(always)]
    fn read_chunk(&mut self, c: usize, by: Access) -> Result<(), Hazard> {
        if self.unwritten {
            let missing = !(self.written[c / 4] >> (c % 4 * CHUNK)) & 0xffff;
            if missing != 0 {
                return Err(Hazard::Unwritten { byte: c * CHUNK + missing.trailing_zeros() as usize });
            }
        }
        if self.races {
            let epoch = self.epoch;
            if self.split[c] {
                self.read_split(c, by)?;
            } else {
                self.chunks[c].read(epoch, Packed::new(by)).map_err(|(kind, other)| Hazard::Race {
                    kind,
                    at: c * CHUNK,
                    len: CHUNK,
                    other,
                })?;
            }
        }
        Ok(())
    }

    /// The rows of an `ldmatrix` at `pc` by the warp starting at thread `first_thread`:
    /// lane `i` read the 16 bytes at `rows[i]` (inside the window, 16-byte aligned). On a
    /// hazard, the lane that found it.
    pub fn read_rows(&mut self, rows: &[u32], first_thread: u32, pc: u32) -> Result<(), (usize, Hazard)> {
        for (lane, &a) in rows.iter().enumerate() {
            let by = Access { pc, thread: first_thread + lane as u32 };
            self.read_chunk(a as usize / CHUNK, by).map_err(|h| (lane, h))?;
        }
        Ok(())
    }

    /// A write of bytes `r` by `by`, issued in epoch `issued` (a store: now) and taking
    /// effect now.
    #[inline(always)]
    pub fn write(&mut self, r: Range<usize>, by: Access, issued: u32) -> Result<(), Hazard> {
        if r.len() == CHUNK && r.start % CHUNK == 0 {
            return self.write_chunk(r.start / CHUNK, by, issued);
        }
        self.write_span(r, by, issued)
    }

    #[inline(never)]
    fn write_span(&mut self, r: Range<usize>, by: Access, issued: u32) -> Result<(), Hazard> {
        if self.races {
            let epoch = self.epoch;
            let by = Packed::new(by);
            self.each_state(r.clone(), |s| s.write(epoch, issued, by))?;
        }
        if self.unwritten {
            set_bits(&mut self.written, r);
        }
        Ok(())
    }

    /// The fast path of `write` for one whole chunk (a 16-byte `cp.async` landing).
    #[inline(always)]
    fn write_chunk(&mut self, c: usize, by: Access, issued: u32) -> Result<(), Hazard> {
        if self.races {
            let epoch = self.epoch;
            if self.split[c] {
                self.write_split(c, by, issued)?;
            } else {
                self.chunks[c]
                    .write(epoch, issued, Packed::new(by))
                    .map_err(|(kind, other)| Hazard::Race { kind, at: c * CHUNK, len: CHUNK, other })?;
            }
        }
        if self.unwritten {
            self.written[c / 4] |= 0xffff << (c % 4 * CHUNK);
        }
        Ok(())
    }

    // The chunk paths' rare cases, out of line so that their loops stay small.
    #[inline(never)]
    fn read_split(&mut self, c: usize, by: Access) -> Result<(), Hazard> {
        let (epoch, by) = (self.epoch, Packed::new(by));
        self.each_state(c * CHUNK..(c + 1) * CHUNK, |s| s.read(epoch, by))
    }

    #[inline(never)]
    fn write_split(&mut self, c: usize, by: Access, issued: u32) -> Result<(), Hazard> {
        let (epoch, by) = (self.epoch, Packed::new(by));
        self.each_state(c * CHUNK..(c + 1) * CHUNK, |s| s.write(epoch, issued, by))
    }

    /// Applies `f` to the race state of every unit `r` touches: a whole chunk's own state
    /// when `r` covers it and it is not split, else (splitting it) its words'.
    #[inline(always)]
    fn each_state(
        &mut self,
        r: Range<usize>,
        mut f: impl FnMut(&mut State) -> Result<(), (RaceKind, Access)>,
    ) -> Result<(), Hazard> {
        let race = |(kind, other), at, len| Hazard::Race { kind, at, len, other };
        for c in r.start / CHUNK..r.end.div_ceil(CHUNK) {
            let base = c * CHUNK;
            if !self.split[c] {
                if r.start <= base && base + CHUNK <= r.end {
                    f(&mut self.chunks[c]).map_err(|e| race(e, base, CHUNK))?;
                    continue;
                }
                self.split[c] = true;
                self.words[c * WORDS_PER_CHUNK..(c + 1) * WORDS_PER_CHUNK].fill(self.chunks[c]);
            }
            let (from, to) = (r.start.max(base), r.end.min(base + CHUNK));
            for w in from / WORD..to.div_ceil(WORD) {
                f(&mut self.words[w]).map_err(|e| race(e, w * WORD, WORD))?;
            }
        }
        Ok(())
    }
}

/// Bits `lo..hi` of a u64 (`lo < hi ≤ 64`).
#[inline(always)]
fn bits(lo: usize, hi: usize) -> u64 {
    (u64::MAX >> (64 - (hi - lo))) << lo
}

/// The first byte of `r` whose bit is clear.
#[inline]
fn first_clear(set: &[u64], r: Range<usize>) -> Option<usize> {
    let mut i = r.start;
    while i < r.end {
        let word = i / 64;
        let hi = (r.end - word * 64).min(64);
        let missing = !set[word] & bits(i % 64, hi);
        if missing != 0 {
            return Some(word * 64 + missing.trailing_zeros() as usize);
        }
        i = (word + 1) * 64;
    }
    None
}

#[inline]
fn set_bits(set: &mut [u64], r: Range<usize>) {
    let mut i = r.start;
    while i < r.end {
        let word = i / 64;
        let hi = (r.end - word * 64).min(64);
        set[word] |= bits(i % 64, hi);
        i = (word + 1) * 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(thread: u32) -> Access {
        Access { pc: 7, thread }
    }

    fn tracker(len: usize) -> Hazards {
        let mut h = Hazards::new();
        h.start_block(len, true, true);
        h
    }

    #[test]
    fn written_bits_span_words() {
        let mut set = vec![0u64; 3];
        set_bits(&mut set, 60..132);
        assert_eq!(first_clear(&set, 60..132), None);
        assert_eq!(first_clear(&set, 56..64), Some(56));
        assert_eq!(first_clear(&set, 128..136), Some(132));
        assert_eq!(set[1], u64::MAX);
    }

    #[test]
    fn unwritten_read_names_the_first_byte() {
        let mut h = tracker(64);
        h.write(0..4, by(0), h.epoch()).expect("write");
        assert_eq!(h.read(0..4, by(0)), Ok(()));
        assert_eq!(h.read(0..8, by(0)), Err(Hazard::Unwritten { byte: 4 }));
    }

    #[test]
    fn a_barrier_orders_warps() {
        let mut h = tracker(64);
        let e = h.epoch();
        h.write(0..8, by(0), e).expect("write");
        // Same warp, other lane: program order.
        assert_eq!(h.read(4..8, by(31)), Ok(()));
        assert_eq!(
            h.read(4..8, by(32)),
            Err(Hazard::Race { kind: RaceKind::ReadAfterWrite, at: 4, len: 4, other: by(0) })
        );
        h.barrier();
        assert_eq!(h.read(4..8, by(32)), Ok(()));
        // Warp 1 read in this epoch: warp 0 may not overwrite, warp 1 may.
        assert_eq!(
            h.write(4..8, by(1), h.epoch()),
            Err(Hazard::Race { kind: RaceKind::WriteAfterRead, at: 4, len: 4, other: by(32) })
        );
        assert_eq!(h.write(4..8, by(33), h.epoch()), Ok(()));
        assert_eq!(
            h.write(0..8, by(64), h.epoch()),
            Err(Hazard::Race { kind: RaceKind::WriteAfterWrite, at: 4, len: 4, other: by(33) })
        );
    }

    #[test]
    fn a_read_by_the_writer_warp_still_names_another_reader() {
        let mut h = tracker(16);
        h.write(0..4, by(0), h.epoch()).expect("write");
        h.barrier();
        h.read(0..4, by(2)).expect("read");
        h.read(0..4, by(40)).expect("read");
        assert_eq!(
            h.write(0..4, by(5), h.epoch()),
            Err(Hazard::Race { kind: RaceKind::WriteAfterRead, at: 0, len: 4, other: by(40) })
        );
    }

    #[test]
    fn a_copy_in_flight_across_a_barrier_races_with_reads_in_between() {
        let mut h = tracker(32);
        h.write(0..16, by(0), h.epoch()).expect("write");
        h.barrier();
        let issued = h.epoch();
        h.barrier();
        h.read(0..16, by(64)).expect("read before the copy landed");
        h.barrier();
        // Landing now, issued two epochs ago: warp 2's read came after the issue.
        assert_eq!(
            h.write(0..16, by(1), issued),
            Err(Hazard::Race { kind: RaceKind::WriteAfterRead, at: 0, len: 16, other: by(64) })
        );
        // Issued after the barrier that follows the read: ordered.
        let mut h = tracker(32);
        h.write(0..16, by(0), h.epoch()).expect("write");
        h.barrier();
        h.read(0..16, by(64)).expect("read");
        h.barrier();
        let issued = h.epoch();
        h.barrier();
        assert_eq!(h.write(0..16, by(1), issued), Ok(()));
    }

    #[test]
    fn a_chunk_splits_into_words_when_covered_in_part() {
        let mut h = tracker(32);
        let e = h.epoch();
        h.write(0..16, by(0), e).expect("a whole chunk");
        // Different words of one chunk by different warps: no race.
        h.write(16..20, by(32), e).expect("word 4");
        h.write(20..24, by(64), e).expect("word 5");
        h.write(24..32, by(96), e).expect("words 6, 7");
        // The chunk written whole, read in part by another warp: the word names the write.
        assert_eq!(
            h.read(4..8, by(32)),
            Err(Hazard::Race { kind: RaceKind::ReadAfterWrite, at: 4, len: 4, other: by(0) })
        );
        // A whole-row read of the split chunk finds the first foreign word.
        assert_eq!(
            h.read(16..32, by(96)),
            Err(Hazard::Race { kind: RaceKind::ReadAfterWrite, at: 16, len: 4, other: by(32) })
        );
        h.barrier();
        assert_eq!(h.read(16..32, by(96)), Ok(()));
        assert_eq!(h.read(0..16, by(96)), Ok(()));
    }

    #[test]
    fn an_earlier_block_leaves_nothing_behind() {
        let mut h = tracker(16);
        h.write(0..4, by(0), h.epoch()).expect("write");
        h.start_block(16, true, true);
        assert_eq!(h.read(0..4, by(32)), Err(Hazard::Unwritten { byte: 0 }));
        assert_eq!(h.write(0..4, by(32), h.epoch()), Ok(()));
    }
}
