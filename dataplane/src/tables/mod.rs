//! Forwarding state.
//!
//! [`routes`] and [`snapshot`] are immutable: the control thread builds a new
//! [`snapshot::Tables`] and publishes it; workers load one per batch without a lock.
//! [`services`] (Kubernetes Services) is immutable too and rides in the snapshot.
//! Connection tracking and SNAT ([`conntrack`], [`snat`]) are per-worker mutable
//! shards owned by one core each.

pub mod conntrack;
pub(crate) mod flow_index;
mod flow_slab;
mod flow_tags;
mod lpm_v4;
mod lpm_v6;
pub(crate) mod port_set;
pub mod routes;
pub mod services;
pub mod snapshot;
pub mod snat;
pub mod vteps;

pub use conntrack::{FlowKey, FlowState, L4Proto, TcpSegment, Timeouts};
pub use routes::{Prefix, RouteTable, RouteTableBuilder, RouteTarget};
pub use services::{Backend, ServiceSpec, ServiceTable};
pub use snapshot::{Mode, NodeSettings, SharedTables, Tables};
pub use snat::{NatBinding, SnatConfig, SnatError, SnatShard, owner_of_remote};
pub use vteps::VtepSet;
