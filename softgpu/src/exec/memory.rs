//! The memory spaces a warp touches: global (through the driver's `GlobalMemory`, which
//! checks mappings; alignment is checked here), the block's shared window (bounds,
//! alignment and, when on, the hazards of `hazards`), and the per-thread queue of
//! `cp.async` copies that land at the `cp.async.wait_group` covering them.

use super::GlobalMemory;
use super::hazards::{Access, Hazard, Hazards, RaceKind};

/// Byte value shared memory starts with: all-ones reads as NaN in f16 and f32, so a
/// read of memory no thread wrote shows up in results instead of passing as zero (when
/// the unwritten-read check is off).
const SHARED_POISON: u8 = 0xff;

/// A failed access: what went wrong and, for a shared-memory race, the other access,
/// which the block names after the message.
#[derive(Debug)]
pub(crate) struct AccessError {
    pub message: String,
    pub other: Option<Access>,
}

impl From<String> for AccessError {
    fn from(message: String) -> AccessError {
        AccessError { message, other: None }
    }
}

/// A block's shared-memory window: addresses `0..len`, static arrays first, then the
/// dynamic region.
pub(crate) struct Shared {
    bytes: Vec<u8>,
    static_bytes: u32,
    hazards: Hazards,
}

impl Shared {
    pub fn new() -> Shared {
        Shared { bytes: Vec::new(), static_bytes: 0, hazards: Hazards::new() }
    }

    /// A new block: the window poisoned, the hazard checks that are on reset.
    pub fn reset(&mut self, static_bytes: u32, len: usize, unwritten: bool, races: bool) {
        self.bytes.clear();
        self.bytes.resize(len, SHARED_POISON);
        self.static_bytes = static_bytes;
        self.hazards.start_block(len, unwritten, races);
    }

    /// Every warp of the block passed a `bar.sync`.
    pub fn barrier(&mut self) {
        self.hazards.barrier();
    }

    /// The barrier epoch a `cp.async` issued now records.
    pub fn epoch(&self) -> u32 {
        self.hazards.epoch()
    }

    fn window(&self) -> String {
        format!(
            "shared window of {:#x} bytes ({} static + {} dynamic)",
            self.bytes.len(),
            self.static_bytes,
            self.bytes.len() as u64 - self.static_bytes as u64
        )
    }

    /// Checks a `len`-byte access at `addr` (alignment `len`), returning its range.
    pub fn check(&self, what: &str, addr: i64, len: usize) -> Result<std::ops::Range<usize>, String> {
        if addr < 0 || addr as u64 + len as u64 > self.bytes.len() as u64 {
            return Err(format!("shared {what} of {len} bytes at {addr:#x}: outside the {}", self.window()));
        }
        if addr as u64 % len as u64 != 0 {
            return Err(format!(
                "shared {what} of {len} bytes at {addr:#x}: misaligned (needs {len}-byte alignment)"
            ));
        }
        Ok(addr as usize..addr as usize + len)
    }

    /// A load of `out.len()` bytes at `addr` by `by`.
    #[inline]
    pub fn read(&mut self, addr: i64, out: &mut [u8], by: Access) -> Result<(), AccessError> {
        let r = self.check("load", addr, out.len())?;
        if self.hazards.on() {
            self.track_read("load", r.clone(), by)?;
        }
        out.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    /// The 16 bytes of an `ldmatrix` row at `addr`; the warp's rows are then passed to
    /// `track_rows` together.
    #[inline]
    pub fn read_row(&self, addr: i64) -> Result<[u8; 16], String> {
        let r = self.check("ldmatrix row", addr, 16)?;
        let mut row = [0u8; 16];
        row.copy_from_slice(&self.bytes[r]);
        Ok(row)
    }

    /// Whether accesses are tracked for hazards.
    #[inline(always)]
    pub fn tracking(&self) -> bool {
        self.hazards.on()
    }

    /// The hazards of an `ldmatrix` at `pc` whose rows (inside the window) `rows[i]` lane
    /// `i` of the warp starting at thread `first_thread` read; on a hazard, the lane.
    pub fn track_rows(
        &mut self,
        rows: &[u32],
        first_thread: u32,
        pc: u32,
    ) -> Result<(), (usize, AccessError)> {
        self.hazards.read_rows(rows, first_thread, pc).map_err(|(lane, h)| {
            let by = Access { pc, thread: first_thread + lane as u32 };
            (lane, self.hazard(h, "ldmatrix row", rows[lane] as i64, 16, by, false))
        })
    }

    #[inline(never)]
    fn track_read(&mut self, what: &str, r: std::ops::Range<usize>, by: Access) -> Result<(), AccessError> {
        let (addr, len) = (r.start as i64, r.len());
        self.hazards.read(r, by).map_err(|h| self.hazard(h, what, addr, len, by, false))
    }

    /// A store of `data` at `addr` by `by`.
    #[inline]
    pub fn write(&mut self, addr: i64, data: &[u8], by: Access) -> Result<(), AccessError> {
        let r = self.check("store", addr, data.len())?;
        if self.hazards.on() {
            self.track_write(r.clone(), by)?;
        }
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    #[inline(never)]
    fn track_write(&mut self, r: std::ops::Range<usize>, by: Access) -> Result<(), AccessError> {
        let (addr, len, now) = (r.start as i64, r.len(), self.hazards.epoch());
        self.hazards.write(r, by, now).map_err(|h| self.hazard(h, "store", addr, len, by, false))
    }

    /// A `cp.async` landing; its range was checked when it was issued.
    #[inline]
    fn land(&mut self, copy: &PendingCopy, thread: u32) -> Result<(), AccessError> {
        let r = copy.dst as usize..copy.dst as usize + copy.len as usize;
        if self.hazards.on() {
            let by = Access { pc: copy.pc, thread };
            if let Err(h) = self.hazards.write(r.clone(), by, copy.issued) {
                let copied = copy.issued != self.hazards.epoch();
                return Err(self.hazard(h, "cp.async", r.start as i64, r.len(), by, copied));
            }
        }
        if let Some(slot) = self.bytes.get_mut(r) {
            slot.copy_from_slice(&copy.data[..copy.len as usize]);
        }
        Ok(())
    }

    /// The message for a hazard of access `by` (`copy`: a `cp.async` landing after the
    /// epoch it was issued in).
    #[cold]
    fn hazard(&self, h: Hazard, what: &str, addr: i64, len: usize, by: Access, copy: bool) -> AccessError {
        let access = format!("shared {what} of {len} bytes at {addr:#x}");
        match h {
            Hazard::Unwritten { byte } => AccessError {
                message: format!(
                    "{access} reads byte {byte:#x}, which no thread of this block has written in this launch \
                     — {}",
                    self.window()
                ),
                other: None,
            },
            Hazard::Race { kind, at, len: unit, other } => {
                let (verb, did, other_is) = match kind {
                    RaceKind::ReadAfterWrite => ("reads", "wrote", "the write"),
                    RaceKind::WriteAfterWrite => ("overwrites", "wrote", "the other write"),
                    RaceKind::WriteAfterRead => ("overwrites", "read", "the read"),
                };
                let when = if copy {
                    "between the copy's issue and the cp.async.wait_group that landed it (no bar.sync orders \
                     the two)"
                } else {
                    "in the same barrier interval (no bar.sync between the two)"
                };
                AccessError {
                    message: format!(
                        "shared-memory race: {access} by warp {} {verb} the {unit} bytes at {at:#x}, which warp {} \
                         {did} {when}; {other_is}:",
                        by.warp(),
                        other.warp(),
                    ),
                    other: Some(other),
                }
            }
        }
    }
}

/// Reads `out.len()` bytes of global memory at `addr`, which must be `align`-aligned.
pub(crate) fn global_read(
    mem: &dyn GlobalMemory,
    addr: u64,
    out: &mut [u8],
    align: usize,
) -> Result<(), String> {
    let len = out.len();
    if addr % align as u64 != 0 {
        return Err(format!(
            "global load of {len} bytes at {addr:#x}: misaligned (needs {align}-byte alignment)"
        ));
    }
    let p = mem.resolve(addr, len).map_err(|f| format!("global load of {f}"))?;
    // SAFETY: `resolve` checked that `len` bytes at `p` belong to one mapped allocation
    // that stays mapped for the launch; `out` is a distinct host buffer.
    unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), len) };
    Ok(())
}

/// Writes `data` to global memory at `addr`, which must be aligned to its size.
pub(crate) fn global_write(mem: &dyn GlobalMemory, addr: u64, data: &[u8]) -> Result<(), String> {
    let len = data.len();
    if addr % len as u64 != 0 {
        return Err(format!(
            "global store of {len} bytes at {addr:#x}: misaligned (needs {len}-byte alignment)"
        ));
    }
    let p = mem.resolve(addr, len).map_err(|f| format!("global store of {f}"))?;
    // SAFETY: as in `global_read`. Blocks running in parallel may write the same bytes
    // only if the kernel itself races, which a real GPU leaves undefined too.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, len) };
    Ok(())
}

/// One issued `cp.async`: the bytes were read from global memory at issue (global memory
/// does not change during a launch except by the kernel's own stores) and reach shared
/// memory only when a `cp.async.wait_group` covers its group.
#[derive(Clone, Copy)]
struct PendingCopy {
    lane: u8,
    /// The lane's group sequence number: groups committed by that lane before this copy.
    group: u32,
    len: u8,
    dst: u32,
    data: [u8; 16],
    /// The `cp.async` instruction and the barrier epoch it was issued in.
    pc: u32,
    issued: u32,
}

/// A copy that could not land: its lane, its `cp.async` instruction and why.
pub(crate) type LandingError = (usize, u32, AccessError);

/// Outstanding `cp.async` copies of one warp's threads.
pub(crate) struct AsyncCopies {
    pending: Vec<PendingCopy>,
    /// Per lane: groups committed so far (the id of the lane's open group).
    committed: [u32; 32],
}

impl AsyncCopies {
    pub fn new() -> AsyncCopies {
        AsyncCopies { pending: Vec::new(), committed: [0; 32] }
    }

    pub fn reset(&mut self) {
        self.pending.clear();
        self.committed = [0; 32];
    }

    /// Records a copy by instruction `pc` in barrier epoch `issued` of `size` bytes, of
    /// which the first `src_bytes` come from `data` and the rest are zero (the `src-size`
    /// form).
    pub fn issue(&mut self, lane: u32, dst: u32, size: u32, data: &[u8], pc: u32, issued: u32) {
        let mut bytes = [0u8; 16];
        bytes[..data.len()].copy_from_slice(data);
        self.pending.push(PendingCopy {
            lane: lane as u8,
            group: self.committed[lane as usize],
            len: size as u8,
            dst,
            data: bytes,
            pc,
            issued,
        });
    }

    pub fn commit(&mut self, mask: u32) {
        for (lane, c) in self.committed.iter_mut().enumerate() {
            if mask >> lane & 1 != 0 {
                *c += 1;
            }
        }
    }

    /// `cp.async.wait_group n` by the lanes in `mask` of the warp whose lane 0 is thread
    /// `first_thread`: every committed group of theirs but the newest `n` lands in shared
    /// memory, in issue order.
    pub fn wait(
        &mut self,
        mask: u32,
        n: u32,
        shared: &mut Shared,
        first_thread: u32,
    ) -> Result<(), LandingError> {
        let mut kept = 0;
        for i in 0..self.pending.len() {
            let c = self.pending[i];
            let lane = c.lane as usize;
            if mask >> lane & 1 != 0 && c.group + n < self.committed[lane] {
                shared.land(&c, first_thread + lane as u32).map_err(|e| (lane, c.pc, e))?;
            } else {
                self.pending[kept] = c;
                kept += 1;
            }
        }
        self.pending.truncate(kept);
        Ok(())
    }
}
