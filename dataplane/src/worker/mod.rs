//! Per-core workers: the loops that move batches between ports and the pipeline,
//! their counters, and the Prometheus endpoint that exposes them.

pub mod counters;
pub mod metrics;

pub use counters::{Counters, WorkerCounters};
pub use metrics::MetricsServer;
