//! Shared traffic generators for the benchmarks.

pub mod bench_clock;
pub mod conntrack_flows;
pub mod pipeline_traffic;
