//! Ctrl-C during training: the run finishes its step, writes a checkpoint and stops; a
//! second Ctrl-C exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C: the run finishes its step, writes a checkpoint and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: the user does not want to wait for the checkpoint.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Makes Ctrl-C stop the run cleanly (after the current step, with a checkpoint).
pub fn install_interrupt_handler() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}
