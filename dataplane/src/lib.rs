//! hybridway's dataplane.
//!
//! Everything that decides what happens to a packet lives here as sans-IO code:
//! [`wire`] views parse and emit headers without copying, [`tables`] hold the
//! immutable forwarding snapshots and the per-worker connection tracking, and
//! [`pipeline`] turns a batch of [`Frame`]s into one [`Verdict`] each. Only
//! [`port`] touches the operating system, and [`worker`] runs the per-core loops
//! that move batches between ports and the pipeline.

pub mod frame;
pub mod pipeline;
pub mod port;
pub(crate) mod sys;
pub mod tables;
pub mod time;
pub mod verdict;
pub mod wire;
pub mod worker;

pub use frame::{Frame, FrameMeta, PortId};
pub use time::Now;
pub use verdict::{DropReason, Verdict, WorkerId};
