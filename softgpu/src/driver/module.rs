//! Modules: `cuModuleLoadData` parses PTX text with `ptx::parse`; a parse error is
//! `CUDA_ERROR_INVALID_PTX`, with the parser's message (construct and line) on stderr.
//! Functions are (module, kernel name) pairs holding the parsed module in an `Arc`, so a
//! launch in flight keeps it alive; unloading a module invalidates its functions.
#![allow(non_snake_case)]

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::context::current;
use super::diagnostic::report;
use super::error::{CuOutcome, CuResult};
use super::ffi::{c_str, require, write_out};
use super::handle::{Kind, from_ptr, new_handle, to_ptr};
use super::state::driver;
use crate::ptx::{self, Module};

pub struct LoadedModule {
    pub ctx: u64,
    module: Arc<Module>,
}

pub struct Function {
    pub ctx: u64,
    module_handle: u64,
    pub module: Arc<Module>,
    pub name: String,
}

/// Cubins and fat binaries start with these; only PTX text is understood here.
const ELF_MAGIC: &[u8] = b"\x7fELF";
const FATBIN_MAGIC: &[u8] = &0xBA55_ED50u32.to_le_bytes();

fn parse(image: &[u8]) -> CuOutcome<Module> {
    if image.starts_with(ELF_MAGIC) || image.starts_with(FATBIN_MAGIC) {
        report("cuModuleLoadData: a cubin or fat binary; the software GPU runs PTX text only".into());
        return Err(CuResult::InvalidImage);
    }
    let text = std::str::from_utf8(image).map_err(|e| {
        report(format!("cuModuleLoadData: the PTX is not UTF-8 text ({e})"));
        CuResult::InvalidPtx
    })?;
    match catch_unwind(AssertUnwindSafe(|| ptx::parse(text))) {
        Ok(Ok(module)) => Ok(module),
        Ok(Err(e)) => {
            report(format!("cuModuleLoadData: PTX {e}"));
            Err(CuResult::InvalidPtx)
        }
        Err(_) => {
            report("cuModuleLoadData: the PTX parser panicked (a softgpu bug)".into());
            Err(CuResult::InvalidPtx)
        }
    }
}

/// # Safety
/// `module` must be NULL or writable; `image` NULL or a NUL-terminated PTX text.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(module)?;
        // SAFETY: caller contract.
        let text = unsafe { c_str(image.cast::<c_char>()) }?;
        let ctx = current(&d.objects())?;
        let parsed = Arc::new(parse(text.to_bytes())?);
        let handle = new_handle(Kind::Module);
        let mut objects = d.objects();
        // The context may have been destroyed while parsing.
        if current(&objects)? != ctx {
            return Err(CuResult::InvalidContext);
        }
        objects.modules.insert(handle, LoadedModule { ctx, module: parsed });
        // SAFETY: caller contract.
        unsafe { write_out(module, to_ptr(handle)) }
    }))
}

/// The same (module, name) gives the same handle, so looking a kernel up before each
/// launch does not grow the table.
///
/// # Safety
/// `hfunc` must be NULL or writable; `name` NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    hfunc: *mut *mut c_void,
    hmod: *mut c_void,
    name: *const c_char,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(hfunc)?;
        // SAFETY: caller contract.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| CuResult::NotFound)?;
        let module_handle = from_ptr(hmod);
        let mut objects = d.objects();
        let loaded = objects.modules.get(&module_handle).ok_or(CuResult::InvalidHandle)?;
        if loaded.module.kernel(name).is_none() {
            return Err(CuResult::NotFound);
        }
        let (ctx, module) = (loaded.ctx, loaded.module.clone());
        let known =
            objects.functions.iter().find(|(_, f)| f.module_handle == module_handle && f.name == name);
        let handle = match known {
            Some((&h, _)) => h,
            None => {
                let h = new_handle(Kind::Function);
                objects.functions.insert(h, Function { ctx, module_handle, module, name: name.to_string() });
                h
            }
        };
        // SAFETY: caller contract.
        unsafe { write_out(hfunc, to_ptr(handle)) }
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuModuleUnload(hmod: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let handle = from_ptr(hmod);
        let mut objects = d.objects();
        objects.modules.remove(&handle).ok_or(CuResult::InvalidHandle)?;
        objects.functions.retain(|_, f| f.module_handle != handle);
        Ok(())
    }))
}
