//! hybridway's control plane.
//!
//! [`bgp`] is the embedded BGP speaker: a wire codec, a sans-IO session state
//! machine and a thin tokio shell around sockets and timers. [`cni`] is the CNI
//! plugin (`hybridway-cni`), which asks the [`agent`] for pod addresses.

pub mod agent;
pub mod bgp;
pub mod cni;
pub mod config_lines;
pub mod ipam;
pub mod k8s;
pub mod logging;
