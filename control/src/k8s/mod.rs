//! Everything that talks to Kubernetes: the `BGPClusterConfig` CRD and its
//! generator, the controller's parameters, leader election, the Node IPAM and
//! BGPClusterConfig reconcilers, and the `hybridway controller` process that wires
//! them; on the agent's side, the Node watch that turns Nodes into the agent's
//! cluster facts (`cluster_view`, `agent_watch`), flannel's annotations, and the
//! Services and EndpointSlices the dataplane serves (`services`, `services_watch`). The allocator itself is sans-IO in `crate::ipam`.

pub mod agent_bgp;
pub mod agent_watch;
pub mod annotations;
pub mod bgp_config;
pub mod bgp_secrets;
pub mod bgp_view;
pub mod client;
pub mod cluster_view;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod discovery;
pub mod flannel;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod node_ipam;
pub mod params;
pub mod services;
pub mod services_watch;
