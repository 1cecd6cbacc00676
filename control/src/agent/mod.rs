//! The node agent: reads its configuration, builds table snapshots, runs the
//! dataplane workers, and answers the local control socket.
//!
//! ```text
//!  SIGHUP ──────────────┐
//!  SIGTERM/SIGINT ──────┤
//!  control socket ──────┼──► control loop (one thread, tokio current-thread)
//!  neighbour refresh ───┤        │ owns Agent: config, pods, neighbours
//!  Node watch (k8s) ────┘        │   (Kubernetes mode: `kubernetes`)
//!                                ├─► SharedTables::publish ──► workers (RCU)
//!                                └─► WorkerPool::add_port/remove_port ──► workers
//!  workers ──counters──► Prometheus thread (GET /metrics)
//! ```

pub mod addresses;
pub mod attach;
pub mod backoff;
pub mod bgp;
pub mod cluster_apply;
pub mod config;
pub mod control;
pub mod host_routing;
pub mod kernel_routes;
pub mod kubernetes;
pub mod neighbors;
pub mod reserved_ports;
pub mod runtime;
pub mod saved_view;
pub mod state_file;
pub mod table_builder;

pub use config::AgentConfig;
pub use runtime::{Agent, AgentError, CniAddress, ConfigSource, Status};
pub use table_builder::LocalPod;
