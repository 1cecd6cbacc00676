//! Source NAT at production load, for real (namespaces, the agent as a process, both
//! backends): one pod holds 20,000 connections to one outside ip:port; short
//! connections to one destination never stall for 60 s; a deliberately small port
//! range refuses at once (ICMP administratively prohibited) and says so in the log;
//! node services on ports inside the range keep working; the range is claimed from
//! the kernel while the agent runs and given back when it stops. Needs root (CI runs
//! as root); never skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::Mutex;

use hybridway_lab::snat_load::{self, Servers};
use hybridway_lab::topology::{Cluster, ClusterSpec, NodeKind, OUTSIDE_SERVER, node_addr};

static SERIAL: Mutex<()> = Mutex::new(());

const ECHO_PORT: u16 = 7100;

fn cluster(name: &str, backend: &str, workers: u8, snat_ports: Option<(u16, u16)>) -> Cluster {
    let tag = format!("hwl{name}{}", std::process::id() % 10_000);
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    Cluster::build(ClusterSpec {
        tag,
        overlay: true,
        snat: true,
        snat_ports,
        backend: backend.into(),
        nodes: vec![NodeKind::Hybridway],
        pods_per_node: 1,
        workers,
        kernel_offloads: false,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_hybridway")),
        dir,
    })
    .unwrap_or_else(|e| panic!("building the cluster: {e}"))
}

fn exhausted(c: &Cluster) -> u64 {
    c.metric_sum(
        1,
        "hybridway_drops_total",
        "reason=\"snat_ports_exhausted\"",
    )
    .unwrap()
}

fn reserved_ports(c: &Cluster) -> String {
    c.node(1)
        .unwrap()
        .ns
        .run("cat /proc/sys/net/ipv4/ip_local_reserved_ports")
        .unwrap()
        .trim()
        .to_string()
}

fn twenty_thousand_connections_on(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two workers: were the range split into per-worker slices, the pod's flows
    // (which arrive on one worker) would get half of it, 15,872 ports, and fail.
    let c = cluster(&format!("h{}", &backend[..1]), backend, 2, None);
    assert_eq!(
        reserved_ports(&c),
        "1024-29999",
        "the default range is claimed from the kernel"
    );
    let helper = snat_load::install_helper(&c.spec.dir).unwrap();
    let _servers = Servers::start(&helper, &c.outside, OUTSIDE_SERVER, ECHO_PORT, 3).unwrap();
    let pod = c.pod(1, 1).unwrap();
    let held = snat_load::hold(&helper, &pod.ns, OUTSIDE_SERVER, ECHO_PORT, 20_000, 4).unwrap();
    println!("{backend}: {:?}", held.outcome);
    assert_eq!(held.outcome.failed, 0, "{:?}", held.outcome.errors);
    assert_eq!(held.outcome.answered, 20_000);
    assert_eq!(exhausted(&c), 0);
}

#[test]
fn one_pod_holds_twenty_thousand_connections_to_one_destination() {
    twenty_thousand_connections_on("af_xdp");
}

#[test]
fn one_pod_holds_twenty_thousand_connections_to_one_destination_on_the_tun_backend() {
    twenty_thousand_connections_on("tun");
}

fn short_connections_on(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(&format!("c{}", &backend[..1]), backend, 1, None);
    let helper = snat_load::install_helper(&c.spec.dir).unwrap();
    let _servers = Servers::start(&helper, &c.outside, OUTSIDE_SERVER, ECHO_PORT, 2).unwrap();
    let pod = c.pod(1, 1).unwrap();
    // The pod may reuse its own TIME_WAIT ports (as busy clients are configured),
    // so the NAT sees new SYNs for mappings in TIME_WAIT.
    snat_load::tune_client(&pod.ns, 32768, 60999).unwrap();
    let churn = snat_load::churn(&helper, &pod.ns, OUTSIDE_SERVER, ECHO_PORT, 60, 2).unwrap();
    println!(
        "{backend}: {} short connections in 60 s, per second {:?}, {:?}",
        churn.outcome.answered, churn.per_second, churn.outcome.errors
    );
    // A stall is two or more seconds in a row without one completed connection
    // (the processes count the same seconds of one clock, so a second is empty only
    // when every process completed nothing in it).
    assert!(
        churn.longest_stall() < 2,
        "{} seconds in a row without one completed connection: {:?}",
        churn.longest_stall(),
        churn.per_second
    );
    // Each exchange may take 10 s (the SYN's retransmissions fit): none fails.
    assert_eq!(churn.outcome.failed, 0, "{:?}", churn.outcome.errors);
    assert_eq!(exhausted(&c), 0);
}

#[test]
fn short_connections_to_one_destination_never_stall_for_60_s() {
    short_connections_on("af_xdp");
}

#[test]
fn short_connections_to_one_destination_never_stall_for_60_s_on_the_tun_backend() {
    short_connections_on("tun");
}

fn small_range_on(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = cluster(
        &format!("s{}", &backend[..1]),
        backend,
        1,
        Some((20_000, 20_009)),
    );
    assert_eq!(reserved_ports(&c), "20000-20009");
    let helper = snat_load::install_helper(&c.spec.dir).unwrap();
    let _servers = Servers::start(&helper, &c.outside, OUTSIDE_SERVER, ECHO_PORT, 1).unwrap();
    let pod_ns = &c.pod(1, 1).unwrap().ns;
    let held = snat_load::hold(&helper, pod_ns, OUTSIDE_SERVER, ECHO_PORT, 10, 1).unwrap();
    assert_eq!(held.outcome.answered, 10, "{:?}", held.outcome);
    // The eleventh: refused at once, not after a connect timeout.
    let r = snat_load::one(&helper, pod_ns, OUTSIDE_SERVER, ECHO_PORT, 30).unwrap();
    assert_eq!(r, "EHOSTUNREACH", "the pod's connect did not fail fast");
    assert!(exhausted(&c) >= 1);
    let log = std::fs::read_to_string(&c.node(1).unwrap().log).unwrap();
    assert!(
        log.contains("SNAT ports exhausted")
            && log.contains(&format!("{OUTSIDE_SERVER}:{ECHO_PORT}")),
        "no log line naming the destination:\n{log}"
    );
    // A node service on a port inside the range: not a NAT reply, so the host's.
    let node_ns = &c.node(1).unwrap().ns;
    let service = Servers::start(&helper, node_ns, node_addr(1), 20_005, 1).unwrap();
    let r = snat_load::one(&helper, &c.outside, node_addr(1), 20_005, 10).unwrap();
    assert_eq!(
        r, "ok",
        "a node service inside the NAT range is unreachable"
    );
    drop(service);
    drop(held);
    // kill -9 leaves the claim; the restart must not take it for the original.
    c.stop_agent(1, "KILL").unwrap();
    assert_eq!(reserved_ports(&c), "20000-20009");
    c.start_agent(1).unwrap();
    assert_eq!(reserved_ports(&c), "20000-20009");
    // A clean stop gives the range back: the value found before the first start.
    c.stop_agent(1, "TERM").unwrap();
    assert_eq!(reserved_ports(&c), "");
}

#[test]
fn a_small_port_range_refuses_at_once_and_says_so() {
    small_range_on("af_xdp");
}

#[test]
fn a_small_port_range_refuses_at_once_and_says_so_on_the_tun_backend() {
    small_range_on("tun");
}
