//! The clock a benchmark sample is timed with. On a shared machine the benchmark
//! thread is preempted for whole milliseconds, which wall time counts and the
//! thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) does not: set
//! `BENCH_CLOCK=cpu` to time with the latter.

use std::time::{Duration, Instant};

/// Runs `work` once and returns how long it took: CPU time of this thread with
/// `BENCH_CLOCK=cpu` (where the platform has it), else wall time.
pub fn time(work: impl FnOnce()) -> Duration {
    let cpu = std::env::var("BENCH_CLOCK").as_deref() == Ok("cpu");
    match cpu_time::ThreadTime::try_now() {
        Ok(start) if cpu => {
            work();
            start.try_elapsed().unwrap_or_default()
        }
        _ => {
            let start = Instant::now();
            work();
            start.elapsed()
        }
    }
}
