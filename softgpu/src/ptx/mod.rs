//! PTX text → IR.
//!
//! `parse` reads the PTX that nvcc emits for `kernels/*.cu` (one module: version, target,
//! `.extern .shared` arrays, `.visible .entry` kernels) and decodes each kernel once into a
//! flat instruction list whose operands are dense register numbers and whose branch targets
//! are instruction indices. Anything the interpreter does not implement is a parse error
//! naming the construct and its line, so a new kernel fails at `cuModuleLoadData`, not
//! later with a wrong answer.

mod cfg;
mod decode;
pub(crate) mod ir;
mod lexer;
mod parser;
mod uninit;

use std::fmt;
use std::sync::Arc;

pub(crate) use ir::Body;

/// A parse failure: the PTX line and what was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxError {
    pub line: u32,
    pub message: String,
}

impl fmt::Display for PtxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for PtxError {}

/// One kernel parameter in the packed parameter buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSlot {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// A `.entry`, decoded; self-contained (it keeps its own source-file table).
#[derive(Debug)]
pub struct Kernel {
    name: String,
    params: Vec<ParamSlot>,
    param_bytes: usize,
    pub(crate) body: Body,
    /// `.file` table of the module, shared by its kernels: index → path.
    pub(crate) files: Arc<Vec<(u32, String)>>,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> &[ParamSlot] {
        &self.params
    }

    /// Size of the packed parameter buffer the kernel reads.
    pub fn param_bytes(&self) -> usize {
        self.param_bytes
    }

    /// `path:line` of a `.loc` for error messages, with the call site it was inlined at.
    pub(crate) fn source_location(&self, loc: ir::Loc) -> Option<String> {
        let path = |file: u32| self.files.iter().find(|(i, _)| *i == file).map_or("?", |(_, p)| p.as_str());
        let here = format!("{}:{}", path(loc.file?), loc.line);
        Some(match loc.inlined_at {
            Some((file, line)) => format!("{here} (inlined at {}:{line})", path(file)),
            None => here,
        })
    }
}

/// A parsed PTX module: its kernels.
#[derive(Debug)]
pub struct Module {
    kernels: Vec<Kernel>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    pub fn kernels(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter()
    }
}

/// Parses a PTX module and decodes every kernel in it.
pub fn parse(text: &str) -> Result<Module, PtxError> {
    parser::parse_module(text)
}
