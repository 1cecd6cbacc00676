//! The clock a benchmark sample is timed with. On a shared machine the benchmark
//! thread is preempted for whole milliseconds, which wall time counts and the
//! thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) does not: set
//! `BENCH_CLOCK=cpu` to time with the latter.

use std::time::{Duration, Instant};

/// Whether `BENCH_CLOCK=cpu` asks for thread CPU time and the platform has it.
pub fn cpu_requested() -> bool {
    std::env::var("BENCH_CLOCK").as_deref() == Ok("cpu") && thread_cpu().is_some()
}

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu() -> Option<Duration> {
    cpu_time::ThreadTime::try_now()
        .ok()
        .map(|t| t.as_duration())
}

/// Runs `work` once and returns how long it took: CPU time of this thread with
/// `BENCH_CLOCK=cpu` (where the platform has it), else wall time.
pub fn time(work: impl FnOnce()) -> Duration {
    if cpu_requested() {
        let start = thread_cpu().unwrap_or_default();
        work();
        return thread_cpu().unwrap_or_default().saturating_sub(start);
    }
    let start = Instant::now();
    work();
    start.elapsed()
}
