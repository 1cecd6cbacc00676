//! Polling for a condition with a deadline: state in namespaces, daemons and the
//! API server settles asynchronously, and nothing here may assume how fast.

use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some`, or `None` after `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`poll`] for tests: panics with `what` after `timeout`.
#[track_caller]
#[allow(clippy::panic)] // a condition that never came is the test's failure
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}
