//! The real Kubernetes control plane per test lives in the lab crate; this path
//! (`common::k8s_lab::KubeLab`) stays for the tests that name it.

pub use hybridway_lab::kube_lab::*;
