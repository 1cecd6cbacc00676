//! Shared traffic generators for the benchmarks.
