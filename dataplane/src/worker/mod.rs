//! Per-core workers: the loops that move batches between ports and the pipeline,
//! their counters, and the Prometheus endpoint that exposes them.
//!
//! Each worker is a thread (pinned to a core when configured) that owns one queue
//! of every port it was given. It busy-polls while frames flow and parks on epoll
//! (`mio`) after `idle_polls` empty polls, so an idle node does not burn a core.
//! Frames that belong to another worker (NAT replies on the wrong queue, frames for
//! a port only another worker has) move over bounded lock-free queues.

mod backoff;
pub mod counters;
pub mod handoff;
pub mod metrics;
pub mod pool;
mod run;

pub use counters::{Counters, WorkerCounters};
pub use metrics::MetricsServer;
pub use pool::{PoolConfig, PoolError, WorkerPool};

use crate::frame::Frame;
use crate::tables::Tables;
use crate::time::Now;
use crate::verdict::Verdict;

/// What a worker runs on each frame: the pipeline, or anything with its shape.
pub trait Processor: Send {
    /// Decides about one frame (rewriting it in place as needed).
    fn process(&mut self, frame: &mut Frame<'_>, tables: &Tables, now: Now) -> Verdict;

    /// Reclaims expired per-worker state (conntrack entries); called periodically.
    fn sweep(&mut self, _now: Now) {}
}

#[cfg(test)]
mod tests;

/// Conntrack entries reclaimed per sweep at most, so a sweep never stalls a batch.
const SWEEP_BUDGET: usize = 4096;

impl Processor for crate::pipeline::Pipeline {
    #[inline]
    fn process(&mut self, frame: &mut Frame<'_>, tables: &Tables, now: Now) -> Verdict {
        crate::pipeline::Pipeline::process(self, frame, tables, now)
    }

    fn sweep(&mut self, now: Now) {
        self.snat_mut().sweep(now, SWEEP_BUDGET);
        self.sweep_services(now);
    }
}
