//! The checks a launch runs beyond bounds and alignment (which are always on), and the
//! environment variables that set them:
//!
//! - `SOFTGPU_CHECK_SHARED=0` turns off both shared-memory checks (see `hazards`): a read
//!   of shared bytes no store or landed `cp.async` of this block wrote, and a race between
//!   two warps on the same shared bytes with no `bar.sync` between them. They are on by
//!   default: on the tensor-core convolution of `benches/interp_conv.rs`, the kernel with
//!   the most shared traffic per instruction, they add about 7% to the instructions the
//!   interpreter executes.
//! - `SOFTGPU_MAX_LANE_INSTRUCTIONS` (default 10¹¹, minutes of interpretation): the
//!   watchdog's budget of lane-instructions per launch. A warp whose block takes the launch
//!   past it fails at its next backward branch, with an error naming the thread and that
//!   branch, so a kernel that loops forever fails CI instead of hanging it. Blocks running
//!   at the same time each may spend what was left when they started: a bound against
//!   endless loops, not an exact limit.

use std::sync::OnceLock;

/// Lane-instructions a launch may execute unless `SOFTGPU_MAX_LANE_INSTRUCTIONS` says.
const DEFAULT_MAX_LANE_INSTRUCTIONS: u64 = 100_000_000_000;

/// What a launch checks besides bounds, alignment and collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// A read of shared bytes never written in this block is an error.
    pub shared_unwritten: bool,
    /// Two warps touching the same shared bytes, at least one writing, in one barrier
    /// interval is an error.
    pub shared_races: bool,
    /// The watchdog: the launch fails once it has executed more lane-instructions.
    pub max_lane_instructions: u64,
}

impl Default for Checks {
    /// Everything on, the watchdog at its default budget.
    fn default() -> Checks {
        Checks {
            shared_unwritten: true,
            shared_races: true,
            max_lane_instructions: DEFAULT_MAX_LANE_INSTRUCTIONS,
        }
    }
}

impl Checks {
    /// The defaults with `SOFTGPU_CHECK_SHARED` and `SOFTGPU_MAX_LANE_INSTRUCTIONS` applied,
    /// read once per process; an unreadable value is an error naming the variable.
    pub fn from_env() -> Result<Checks, String> {
        static CHECKS: OnceLock<Result<Checks, String>> = OnceLock::new();
        CHECKS
            .get_or_init(|| {
                let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string());
                Checks::from_vars(
                    var("SOFTGPU_CHECK_SHARED").as_deref(),
                    var("SOFTGPU_MAX_LANE_INSTRUCTIONS").as_deref(),
                )
            })
            .clone()
    }

    fn from_vars(shared: Option<&str>, max: Option<&str>) -> Result<Checks, String> {
        let mut checks = Checks::default();
        match shared {
            None | Some("" | "1") => {}
            Some("0") => {
                checks.shared_unwritten = false;
                checks.shared_races = false;
            }
            Some(other) => return Err(format!("SOFTGPU_CHECK_SHARED={other}: expected 0 or 1")),
        }
        if let Some(v) = max.filter(|v| !v.is_empty()) {
            checks.max_lane_instructions =
                v.replace('_', "").parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("SOFTGPU_MAX_LANE_INSTRUCTIONS={v}: expected a whole number ≥ 1")
                })?;
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables() {
        assert_eq!(Checks::from_vars(None, None), Ok(Checks::default()));
        let off = Checks::from_vars(Some("0"), Some("1_000")).expect("valid");
        assert!(!off.shared_unwritten && !off.shared_races);
        assert_eq!(off.max_lane_instructions, 1000);
        assert!(Checks::from_vars(Some("yes"), None).is_err_and(|e| e.contains("SOFTGPU_CHECK_SHARED=yes")));
        assert!(
            Checks::from_vars(None, Some("1e11")).is_err_and(|e| e.contains("SOFTGPU_MAX_LANE_INSTRUCTIONS"))
        );
        assert!(Checks::from_vars(None, Some("0")).is_err());
    }
}
