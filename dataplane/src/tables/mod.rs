//! Forwarding state.
//!
//! [`routes`] and [`snapshot`] are immutable: the control thread builds a new
//! [`snapshot::Tables`] and publishes it; workers load one per batch without a lock.
//! Connection tracking and SNAT are per-worker mutable shards owned by one core each.

pub mod routes;
pub mod snapshot;

pub use routes::{Prefix, RouteTable, RouteTableBuilder, RouteTarget};
pub use snapshot::{Mode, NodeSettings, SharedTables, Tables};
