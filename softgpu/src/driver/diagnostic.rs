//! Messages a `CUresult` cannot carry (a PTX parse error, a kernel's fault, a copy
//! outside mapped memory): printed to stderr, which is how a user learns what went
//! wrong, and kept per thread for tests.

use std::cell::RefCell;

thread_local! {
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Prints `message` (prefixed `softgpu: `) and keeps it as this thread's last one.
pub fn report(message: String) {
    eprintln!("softgpu: {message}");
    LAST.set(Some(message));
}

/// The last message reported on this thread, if any.
pub fn last_diagnostic() -> Option<String> {
    LAST.with_borrow(Clone::clone)
}
