//! Kubernetes Services served by the agent's dataplane, against a real API server:
//! the Service scenarios of issue 14 (`common::services`) with a hybrid client node
//! on each backend. The same scenarios run against the real kube-proxy in
//! `services_kube_proxy_k8s.rs`; the cluster is `hybridway_lab::service_lab`.
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
use hybridway_lab::service_lab::{Backend, ClientKind};

#[test]
fn pods_on_a_tun_node_reach_services_by_cluster_ip() {
    service_test(ClientKind::Hybridway(Backend::Tun));
}

#[test]
fn pods_on_an_af_xdp_node_reach_services_by_cluster_ip() {
    service_test(ClientKind::Hybridway(Backend::AfXdp));
}
