//! Shared traffic generators for the benchmarks.

pub mod pipeline_traffic;
