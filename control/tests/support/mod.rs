//! Helpers shared by the end-to-end tests that run pods in namespaces (agent_e2e,
//! cni_e2e): a cluster of two hybridway nodes and a TCP exchange between
//! namespaces.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_lab::topology::{Cluster, ClusterSpec, NodeKind};

/// Two hybridway nodes in overlay with SNAT, one worker each, `pods_per_node`
/// pods attached by hand; namespaces named `<prefix><pid>-…`.
pub fn two_node_overlay(prefix: &str, backend: &str, pods_per_node: u8) -> Cluster {
    let tag = format!("{prefix}{}", std::process::id() % 10_000);
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    Cluster::build(ClusterSpec {
        tag,
        overlay: true,
        snat: true,
        backend: backend.into(),
        nodes: vec![NodeKind::Hybridway, NodeKind::Hybridway],
        pods_per_node,
        workers: 1,
        kernel_offloads: false,
        snat_ports: None,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_hybridway")),
        dir,
    })
    .unwrap_or_else(|e| panic!("building the cluster: {e}"))
}

/// One TCP exchange: a listener bound in `server_ns` on `server`, a client
/// connecting from `client_ns` (what a kubelet probe or a pod calling its node
/// does), `bytes` sent and echoed back.
pub fn tcp_exchange(server_ns: &str, server: Ipv4Addr, client_ns: &str, bytes: usize) {
    let listener = {
        let _inside = NetnsGuard::enter(server_ns).unwrap();
        std::net::TcpListener::bind((server, 0)).unwrap()
    };
    let addr = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; bytes];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut client = {
        let _inside = NetnsGuard::enter(client_ns).unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{client_ns} -> {addr}: {e}"))
    };
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).unwrap();
    let mut back = vec![0u8; bytes];
    client
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{client_ns} -> {addr}: {e}"));
    assert_eq!(back, data);
    accept.join().unwrap();
}
