//! The reference for the Service tests: the same scenarios as
//! `agent_services_k8s.rs` (`common::services`) on the same topology, with the client
//! node running the kernel's routing, flanneld's VXLAN and the real kube-proxy (built
//! from the same `k8s.io/kubernetes` module as the API server; iptables and nftables
//! mode) instead of a hybridway agent. What passes here and fails there is hybridway's bug.
//!
//! Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::services::service_test;
use hybridway_lab::kube_proxy::ProxyMode;
use hybridway_lab::service_lab::ClientKind;

#[test]
fn kube_proxy_iptables_passes_the_service_scenarios() {
    service_test(ClientKind::KubeProxy(ProxyMode::Iptables));
}

#[test]
fn kube_proxy_nftables_passes_the_service_scenarios() {
    service_test(ClientKind::KubeProxy(ProxyMode::Nftables));
}
