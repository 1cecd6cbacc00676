//! hybridway's lab: the plumbing the demo, the tests and the benchmarks share, and
//! none of the agent's runtime code. Network namespaces and veths ([`netns`]),
//! polling ([`wait`]), a namespace's TCP/IP counters ([`net_counters`]), the namespace cluster the demo and the end-to-end tests build
//! ([`topology`]), iperf3, 64-byte floods and SNAT load between its pods
//! ([`traffic`], [`flood`], [`snat_load`]), a real Kubernetes control plane ([`kube_lab`]), the real kube-proxy as the
//! reference Service path ([`kube_proxy`]) and the Services cluster the Service
//! tests and benchmark share ([`service_lab`]).
//!
//! It depends on no hybridway crate: it drives the `hybridway` executable as a
//! cluster would (processes, the control socket through `hybridway pod`/`status`,
//! the metrics endpoint), so the agent's library carries none of it.

pub mod controller;
pub mod flannel;
pub mod flood;
pub mod frr;
pub mod kube_lab;
pub mod kube_proxy;
pub mod net_counters;
pub mod netns;
pub mod process;
pub mod service_lab;
pub mod snat_load;
pub mod topology;
pub mod traffic;
pub mod wait;

pub use netns::{Netns, is_root, require_root, sh, unique, veth, veth_pair};
pub use wait::{poll, wait_for};

/// What a lab step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{0}")]
    Agent(String),
    #[error("{0}")]
    Kube(String),
    #[error("{0}")]
    Traffic(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("this needs root (it creates network namespaces)")]
    NotRoot,
}

impl LabError {
    pub(crate) fn command(cmd: &str, detail: impl Into<String>) -> Self {
        LabError::Command {
            cmd: cmd.to_string(),
            detail: detail.into(),
        }
    }
}
