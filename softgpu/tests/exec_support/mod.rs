//! What the interpreter tests share: a Vec-backed `GlobalMemory`, parameter packing and
//! loading the committed test PTX.

// Each test binary (and the bench) uses a different subset of these helpers.
#![allow(dead_code)]

use std::cell::UnsafeCell;

use softgpu::exec::{GlobalMemory, MemFault};
use softgpu::ptx::{self, Kernel, Module};

/// A module of `target/ptx-ref` (nvcc's output for `kernels/*.cu`, see
/// tests/ptx/README.md), or `None` with the reason printed when it is absent.
pub fn reference_module(name: &str) -> Option<Module> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ptx-ref").join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(ptx::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))),
        Err(e) => {
            let why = format!("{}: {e} (scripts/ptx-ref.sh generates it)", path.display());
            assert!(std::env::var_os("SOFTGPU_REQUIRE_PTX").is_none(), "SOFTGPU_REQUIRE_PTX is set: {why}");
            println!("skipped: {why}");
            None
        }
    }
}

/// The committed test module (tests/ptx/interp.ptx, from interp.cu).
pub fn interp_module() -> Module {
    let text = include_str!("../ptx/interp.ptx");
    ptx::parse(text).unwrap_or_else(|e| panic!("tests/ptx/interp.ptx: {e}"))
}

/// Device memory as a list of host buffers at made-up device addresses.
pub struct TestMemory {
    allocs: Vec<(u64, UnsafeCell<Vec<u8>>)>,
}

// SAFETY: kernels write disjoint bytes from different blocks (a racing kernel is a bug on a
// GPU too); the tests read buffers only after `launch` returned.
unsafe impl Sync for TestMemory {}

/// Allocations start here and are spaced far apart, so an address past one is unmapped.
const BASE: u64 = 0x7f00_0000_0000;
const SPACING: u64 = 0x1000_0000;

impl TestMemory {
    pub fn new() -> TestMemory {
        TestMemory { allocs: Vec::new() }
    }

    pub fn alloc_bytes(&mut self, bytes: &[u8]) -> u64 {
        let addr = BASE + self.allocs.len() as u64 * SPACING;
        self.allocs.push((addr, UnsafeCell::new(bytes.to_vec())));
        addr
    }

    pub fn alloc_f32(&mut self, v: &[f32]) -> u64 {
        self.alloc_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    pub fn alloc_f16(&mut self, v: &[half::f16]) -> u64 {
        self.alloc_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    pub fn alloc_i32(&mut self, v: &[i32]) -> u64 {
        self.alloc_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    pub fn bytes(&self, addr: u64) -> Vec<u8> {
        let (_, cell) = self.allocs.iter().find(|(a, _)| *a == addr).expect("an allocation's base address");
        // SAFETY: no launch is running (see the Sync impl).
        unsafe { (*cell.get()).clone() }
    }

    pub fn f32s(&self, addr: u64) -> Vec<f32> {
        self.bytes(addr).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    pub fn i32s(&self, addr: u64) -> Vec<i32> {
        self.bytes(addr).chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

impl GlobalMemory for TestMemory {
    fn resolve(&self, addr: u64, len: usize) -> Result<*mut u8, MemFault> {
        for (base, cell) in &self.allocs {
            // SAFETY: only the length is read; the buffer is never resized during a launch.
            let size = unsafe { (*cell.get()).len() } as u64;
            if addr >= *base && addr < base + SPACING {
                if addr + len as u64 > base + size {
                    return Err(MemFault {
                        addr,
                        len,
                        reason: format!("past the end of allocation {base:#x}..{:#x}", base + size),
                    });
                }
                // SAFETY: in bounds, checked above.
                return Ok(unsafe { (*cell.get()).as_mut_ptr().add((addr - base) as usize) });
            }
        }
        Err(MemFault { addr, len, reason: "unmapped".into() })
    }
}

/// A kernel argument, packed at its parameter's offset.
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

pub fn pack(kernel: &Kernel, args: &[Arg]) -> Vec<u8> {
    assert_eq!(args.len(), kernel.params().len(), "argument count of `{}`", kernel.name());
    let mut buf = vec![0u8; kernel.param_bytes()];
    for (slot, arg) in kernel.params().iter().zip(args) {
        let bytes: Vec<u8> = match arg {
            Arg::Ptr(p) => p.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::F64(v) => v.to_le_bytes().to_vec(),
        };
        assert_eq!(bytes.len(), slot.size, "size of parameter {}", slot.name);
        buf[slot.offset..slot.offset + slot.size].copy_from_slice(&bytes);
    }
    buf
}
