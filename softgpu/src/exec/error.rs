//! Launch failures, named the way a kernel author looks for them: kernel, block, thread,
//! PTX line, the `.loc` source line and the instruction.

use std::fmt;

use super::hazards::Access;

/// Where in the kernel a launch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSite {
    pub ptx_line: u32,
    /// `kernels/x.cu:123` from the nearest `.loc`, if any.
    pub source: Option<String>,
    pub instruction: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchError {
    pub kernel: String,
    pub block: Option<[u32; 3]>,
    pub thread: Option<[u32; 3]>,
    /// Boxed: errors travel through every `Result` of the hot loop's callers.
    pub site: Option<Box<ErrorSite>>,
    pub message: String,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel `{}`", self.kernel)?;
        if let Some([x, y, z]) = self.block {
            write!(f, " block ({x},{y},{z})")?;
        }
        if let Some([x, y, z]) = self.thread {
            write!(f, " thread ({x},{y},{z})")?;
        }
        if let Some(site) = &self.site {
            write!(f, ", PTX line {}", site.ptx_line)?;
            if let Some(src) = &site.source {
                write!(f, " ({src})")?;
            }
            write!(f, " `{}`", site.instruction)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LaunchError {}

/// A failure inside a warp, before it is given the launch's context.
#[derive(Debug)]
pub(crate) struct Fault {
    pub pc: u32,
    /// The lane at fault; `None` for warp-wide failures (collectives).
    pub lane: Option<u32>,
    pub message: String,
    /// For a race: the other access, which the block names after the message.
    pub other: Option<Access>,
}
