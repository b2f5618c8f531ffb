//! The memory spaces a warp touches: global (through the driver's `GlobalMemory`, which
//! checks mappings; alignment is checked here), the block's shared window (bounds and
//! alignment), and the per-thread queue of `cp.async` copies that land at the
//! `cp.async.wait_group` covering them.

use super::GlobalMemory;

/// Byte value shared memory starts with: all-ones reads as NaN in f16 and f32, so a
/// read of memory no thread wrote shows up in results instead of passing as zero.
const SHARED_POISON: u8 = 0xff;

/// A block's shared-memory window: addresses `0..len`, static arrays first, then the
/// dynamic region.
pub(crate) struct Shared {
    bytes: Vec<u8>,
    static_bytes: u32,
}

impl Shared {
    pub fn new() -> Shared {
        Shared { bytes: Vec::new(), static_bytes: 0 }
    }

    pub fn reset(&mut self, static_bytes: u32, len: usize) {
        self.bytes.clear();
        self.bytes.resize(len, SHARED_POISON);
        self.static_bytes = static_bytes;
    }

    /// Checks a `len`-byte access at `addr` (alignment `len`), returning its range.
    pub fn check(&self, what: &str, addr: i64, len: usize) -> Result<std::ops::Range<usize>, String> {
        if addr < 0 || addr as u64 + len as u64 > self.bytes.len() as u64 {
            return Err(format!(
                "shared {what} of {len} bytes at {addr:#x}: outside the shared window of {:#x} bytes \
                 ({} static + {} dynamic)",
                self.bytes.len(),
                self.static_bytes,
                self.bytes.len() as u64 - self.static_bytes as u64
            ));
        }
        if addr as u64 % len as u64 != 0 {
            return Err(format!(
                "shared {what} of {len} bytes at {addr:#x}: misaligned (needs {len}-byte alignment)"
            ));
        }
        Ok(addr as usize..addr as usize + len)
    }

    pub fn read(&self, addr: i64, out: &mut [u8]) -> Result<(), String> {
        let r = self.check("load", addr, out.len())?;
        out.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    pub fn write(&mut self, addr: i64, data: &[u8]) -> Result<(), String> {
        let r = self.check("store", addr, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    /// Stores whose range was checked when the copy was issued.
    fn land(&mut self, dst: u32, data: &[u8]) {
        let start = dst as usize;
        if let Some(slot) = self.bytes.get_mut(start..start + data.len()) {
            slot.copy_from_slice(data);
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
}

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

    /// Records a copy of `size` bytes of which the first `src_bytes` come from `data` and
    /// the rest are zero (the `src-size` form).
    pub fn issue(&mut self, lane: u32, dst: u32, size: u32, data: &[u8]) {
        let mut bytes = [0u8; 16];
        bytes[..data.len()].copy_from_slice(data);
        self.pending.push(PendingCopy {
            lane: lane as u8,
            group: self.committed[lane as usize],
            len: size as u8,
            dst,
            data: bytes,
        });
    }

    pub fn commit(&mut self, mask: u32) {
        for (lane, c) in self.committed.iter_mut().enumerate() {
            if mask >> lane & 1 != 0 {
                *c += 1;
            }
        }
    }

    /// `cp.async.wait_group n` by the lanes in `mask`: every committed group of theirs but
    /// the newest `n` lands in shared memory, in issue order.
    pub fn wait(&mut self, mask: u32, n: u32, shared: &mut Shared) {
        let committed = self.committed;
        self.pending.retain(|c| {
            let lane_waits = mask >> c.lane & 1 != 0;
            let due = lane_waits && c.group + n < committed[c.lane as usize];
            if due {
                shared.land(c.dst, &c.data[..c.len as usize]);
            }
            !due
        });
    }
}
