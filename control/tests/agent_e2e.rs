//! End to end, for real: network namespaces, hybridway agents as processes (AF_XDP
//! backend), the Linux kernel as the peer node, iperf3 and ping as traffic.
//! Needs root (CI runs as root); never skips. Tests run one at a time (they share
//! the machine's cores with everything else).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_lab::topology::{
    Cluster, ClusterSpec, NodeKind, OUTSIDE_SERVER, node_addr, pod_gateway, pod_ip, sample_sum,
    vtep_mac,
};
use hybridway_lab::traffic::{IPERF_PORT, LISTEN_TIMEOUT, iperf, outside_sees, wait_listening};

#[path = "support/mod.rs"]
mod support;
use support::tcp_exchange;

static SERIAL: Mutex<()> = Mutex::new(());

fn cluster(name: &str, overlay: bool, snat: bool, nodes: Vec<NodeKind>) -> Cluster {
    cluster_on("af_xdp", name, overlay, snat, nodes)
}

fn tun_cluster(name: &str, overlay: bool, snat: bool, nodes: Vec<NodeKind>) -> Cluster {
    cluster_on("tun", name, overlay, snat, nodes)
}

fn cluster_on(
    backend: &str,
    name: &str,
    overlay: bool,
    snat: bool,
    nodes: Vec<NodeKind>,
) -> Cluster {
    cluster_with_offloads(backend, name, overlay, snat, nodes, false)
}

/// [`cluster_on`] with the kernel's checksum/TSO/GRO offloads on the pods' veths
/// and the uplinks or off (`kernel_offloads`); with them on, TCP reaches a TUN
/// queue as TSO super-packets, as on a real node.
fn cluster_with_offloads(
    backend: &str,
    name: &str,
    overlay: bool,
    snat: bool,
    nodes: Vec<NodeKind>,
    kernel_offloads: bool,
) -> Cluster {
    let tag = format!("hwt{name}{}", std::process::id() % 10_000);
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    Cluster::build(ClusterSpec {
        tag,
        overlay,
        snat,
        snat_ports: None,
        backend: backend.into(),
        nodes,
        pods_per_node: 2,
        workers: 1,
        kernel_offloads,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_hybridway")),
        dir,
    })
    .unwrap_or_else(|e| panic!("building the cluster: {e}"))
}

fn metric(c: &Cluster, node: u8, name: &str, label: &str) -> u64 {
    c.metric_sum(node, name, label).unwrap()
}

fn assert_ping(c: &Cluster, from: (u8, u8), to: Ipv4Addr) {
    assert!(
        c.ping(from, to, 3).unwrap(),
        "ping p{}{} -> {to} failed",
        from.0,
        from.1
    );
}

fn assert_tcp_udp_both_ways(c: &Cluster, a: (u8, u8), b: (u8, u8)) {
    for (client, server) in [(a, b), (b, a)] {
        for udp in [false, true] {
            let r = iperf(c, client, server, udp, 1);
            assert!(
                r.is_ok(),
                "iperf3 {} {client:?} -> {server:?}: {r:?}",
                if udp { "UDP" } else { "TCP" }
            );
        }
    }
}

/// How long published totals and settling state may take on the loaded machine.
const WAIT: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn overlay_pods_exchange_icmp_tcp_udp_both_ways_and_reach_the_outside_through_snat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "ov",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    assert_ping(&c, (2, 1), pod_ip(1, 1));
    assert_ping(&c, (1, 1), pod_ip(1, 2));
    assert_tcp_udp_both_ways(&c, (1, 1), (2, 2));
    assert_eq!(
        outside_sees(&c, (1, 2)).unwrap(),
        node_addr(1),
        "SNAT: the outside sees the node"
    );
    assert_eq!(outside_sees(&c, (2, 1)).unwrap(), node_addr(2));
    // The traffic crossed the dataplane: VXLAN in and out of both uplinks.
    for n in [1, 2] {
        assert!(metric(&c, n, "hybridway_port_rx_packets_total", "port=\"eth0/q0\"") > 100);
        assert!(metric(&c, n, "hybridway_port_tx_packets_total", "port=\"eth0/q0\"") > 100);
    }
}

#[test]
fn kernel_vxlan_configured_like_flannel_is_a_peer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "kv",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::KernelVxlan],
    );
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    assert_ping(&c, (2, 2), pod_ip(1, 2));
    assert_tcp_udp_both_ways(&c, (1, 1), (2, 1));
    let fdb = c
        .node(2)
        .unwrap()
        .ns
        .run("bridge fdb show dev flannel.1")
        .unwrap();
    assert!(
        fdb.contains(&format!("{} dst {}", vtep_mac(1), node_addr(1))),
        "{fdb}"
    );
    assert_eq!(
        metric(
            &c,
            1,
            "hybridway_drops_total",
            "reason=\"vxlan_unknown_source\""
        ),
        0
    );
    assert!(metric(&c, 1, "hybridway_port_rx_packets_total", "port=\"eth0/q0\"") > 100);
}

/// An underlay of two hybridway nodes and a kernel-routed third (what the rest of an
/// underlay network does), SNAT on or off.
fn underlay_cluster(backend: &str, name: &str, snat: bool) -> Cluster {
    let nodes = vec![
        NodeKind::Hybridway,
        NodeKind::Hybridway,
        NodeKind::KernelRouting,
    ];
    cluster_on(backend, name, false, snat, nodes)
}

/// Pods on the two hybridway nodes talk both ways (ICMP, TCP, UDP), and to and from
/// the kernel-routed node's pods.
fn assert_underlay_pods_talk(c: &Cluster) {
    assert_ping(c, (1, 1), pod_ip(2, 1));
    assert_ping(c, (2, 2), pod_ip(1, 2));
    assert_tcp_udp_both_ways(c, (1, 2), (2, 1));
    assert_ping(c, (1, 1), pod_ip(3, 1));
    assert_ping(c, (3, 2), pod_ip(2, 2));
    let r = iperf(c, (3, 1), (1, 1), false, 1);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn underlay_pods_talk_to_each_other_and_to_a_kernel_routed_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = underlay_cluster("af_xdp", "ul", true);
    assert_underlay_pods_talk(&c);
    assert_eq!(outside_sees(&c, (2, 2)).unwrap(), node_addr(2));
}

#[test]
fn with_snat_off_the_outside_sees_the_pod_address() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "ns",
        true,
        false,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    // The outside routes pod blocks to their nodes (what BGP would teach it).
    assert_eq!(outside_sees(&c, (1, 1)).unwrap(), pod_ip(1, 1));
    assert_eq!(outside_sees(&c, (2, 2)).unwrap(), pod_ip(2, 2));
}

/// A VXLAN payload (VNI 1) carrying a minimal IPv4/ICMP echo to `dst`.
fn vxlan_payload(dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0]; // I flag, VNI 1
    p.extend_from_slice(&[0x02, 0x76, 0x74, 0x65, 0x70, 0x01]); // inner dst: node1's VTEP
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 254];
    ip.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    p
}

fn send_udp_from(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, payloads: &[Vec<u8>]) {
    let _inside = NetnsGuard::enter(ns).unwrap();
    let s = UdpSocket::bind((src, 0)).unwrap();
    for p in payloads {
        s.send_to(p, (dst, 8472)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn garbage_and_vxlan_from_strangers_are_counted_and_the_agent_stays_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "gb",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    // Garbage to 8472 from a known node, and well-formed VXLAN from a stranger.
    let garbage: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![i; usize::from(i) % 40 + 1])
        .collect();
    send_udp_from(
        &c.node(2).unwrap().ns.name,
        node_addr(2),
        node_addr(1),
        &garbage,
    );
    let stranger = vec![vxlan_payload(pod_ip(1, 1)); 20];
    send_udp_from(
        &c.outside.name,
        Ipv4Addr::new(198, 18, 0, 254),
        node_addr(1),
        &stranger,
    );
    wait_until("drops counted", || {
        metric(
            &c,
            1,
            "hybridway_drops_total",
            "reason=\"vxlan_unknown_source\"",
        ) >= 20
            && metric(&c, 1, "hybridway_drops_total", "reason=\"vxlan_") >= 70
    });
    // Malformed frames from a pod, sent raw from inside it with trafgen (netsniff-ng):
    // Ethernet with no IPv4 header behind it, an unknown EtherType, IPv4 with a bad
    // IHL, IPv4 cut short. 10 of each.
    let pod = c.pod(1, 1).unwrap();
    let eth = "0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0xc6, 0x13, 0x01, 0x0b";
    let zeros = |n: usize| vec!["0x00"; n].join(", ");
    let conf = [
        format!("{{ {eth}, 0x08, 0x00 }}"),
        format!("{{ {eth}, 0x88, 0xb5, {} }}", zeros(46)),
        format!("{{ {eth}, 0x08, 0x00, 0x41, {} }}", zeros(45)),
        format!("{{ {eth}, 0x08, 0x00, 0x45, 0x00, 0xff, 0xff }}"),
    ]
    .join("\n");
    let conf_path = c.spec.dir.join("malformed.trafgen");
    std::fs::write(&conf_path, conf).unwrap();
    let before = metric(&c, 1, "hybridway_drops_total", "reason=\"malformed");
    let before_other = metric(
        &c,
        1,
        "hybridway_drops_total",
        "reason=\"unsupported_ethertype\"",
    );
    pod.ns
        .run(&format!(
            "trafgen -i {} -o eth0 -n 40 -P 1 >/dev/null",
            conf_path.display()
        ))
        .unwrap();
    wait_until("malformed pod frames counted", || {
        metric(&c, 1, "hybridway_drops_total", "reason=\"malformed") >= before + 30
            && metric(
                &c,
                1,
                "hybridway_drops_total",
                "reason=\"unsupported_ethertype\"",
            ) >= before_other + 10
    });
    // Nothing of it reached a pod, and the agent still forwards.
    assert_ping(&c, (2, 1), pod_ip(1, 1));
    assert_ping(&c, (1, 2), pod_ip(2, 2));
}

#[test]
fn a_node_removed_by_sighup_stops_receiving_and_comes_back_when_restored() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "hup",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    assert_ping(&c, (2, 1), pod_ip(1, 1));
    let node1 = c.node(1).unwrap();
    let before = metric(
        &c,
        1,
        "hybridway_drops_total",
        "reason=\"vxlan_unknown_source\"",
    );
    std::fs::write(&node1.config, c.agent_yaml_with_peers(1, &[])).unwrap();
    c.signal_agent(1, "HUP").unwrap();
    wait_until("reload", || {
        metric(&c, 1, "hybridway_remote_nodes", "") == 0
    });
    // Node 2 still sends; node 1 no longer accepts it, and counts why.
    assert!(
        !c.ping((2, 1), pod_ip(1, 1), 2).unwrap(),
        "node1 still accepts traffic from a removed node"
    );
    assert!(!c.ping((1, 1), pod_ip(2, 1), 2).unwrap());
    assert!(
        metric(
            &c,
            1,
            "hybridway_drops_total",
            "reason=\"vxlan_unknown_source\""
        ) > before
    );
    // A pod on the same node kept working the whole time.
    assert_ping(&c, (1, 1), pod_ip(1, 2));
    std::fs::write(&node1.config, c.agent_yaml(1)).unwrap();
    c.signal_agent(1, "HUP").unwrap();
    wait_until("reload back", || {
        metric(&c, 1, "hybridway_remote_nodes", "") == 1
    });
    assert_ping(&c, (2, 1), pod_ip(1, 1));
    // A broken file is refused and the running tables stay.
    std::fs::write(&node1.config, "node: {name: broken}\n").unwrap();
    c.signal_agent(1, "HUP").unwrap();
    wait_until("refusal counted", || {
        metric(&c, 1, "hybridway_config_reload_failures", "") == 1
    });
    assert_ping(&c, (1, 1), pod_ip(2, 1));
}

#[test]
fn killed_agent_restarts_with_its_pods_and_sigterm_leaves_no_xdp_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = cluster(
        "rs",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    // Mid-transfer: a TCP stream runs while the agent is killed and restarted.
    let srv = c.pod(2, 1).unwrap();
    let mut server = srv
        .ns
        .command("iperf3")
        .args(["-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&srv.ns, IPERF_PORT, LISTEN_TIMEOUT).unwrap();
    let cli = c.pod(1, 1).unwrap();
    let client = cli
        .ns
        .command("iperf3")
        .args(["-c", &pod_ip(2, 1).to_string(), "-t", "6", "-J"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.stop_agent(1, "KILL").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent(1).unwrap();
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json.get("error").is_none(),
        "the transfer did not survive the restart: {json}"
    );
    let received = json
        .pointer("/end/sum_received/bytes")
        .and_then(|v| v.as_u64())
        .unwrap();
    assert!(received > 0);
    // The pods came back from the state file without being added again.
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    assert_ping(&c, (2, 2), pod_ip(1, 2));

    let status = c.stop_agent(1, "TERM").unwrap().unwrap();
    assert!(status.success(), "agent exit status {status}");
    let ns = &c.node(1).unwrap().ns;
    for dev in ["eth0", "hwp1", "hwp2"] {
        let link = ns.run(&format!("ip -d link show {dev}")).unwrap();
        assert!(
            !link.contains("xdp"),
            "{dev} still has an XDP program: {link}"
        );
    }
    // The node's own stack works as before: it reaches the other node.
    ns.run(&format!("ping -c 1 -W 2 {}", node_addr(2))).unwrap();
}

#[test]
fn tun_backend_overlay_talks_to_hybridway_and_kernel_vxlan_and_sigterm_removes_device_and_routes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = tun_cluster(
        "tun",
        true,
        true,
        vec![
            NodeKind::Hybridway,
            NodeKind::Hybridway,
            NodeKind::KernelVxlan,
        ],
    );
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    assert_ping(&c, (2, 2), pod_ip(1, 2));
    assert_tcp_udp_both_ways(&c, (1, 1), (2, 1));
    // The Linux VXLAN device (flannel-style) as the peer of a TUN-backend node.
    assert_ping(&c, (1, 2), pod_ip(3, 1));
    assert_ping(&c, (3, 2), pod_ip(2, 1));
    let r = iperf(&c, (3, 1), (1, 1), false, 1);
    assert!(r.is_ok(), "{r:?}");
    assert!(metric(&c, 1, "hybridway_port_rx_packets_total", "port=\"hw0/q0\"") > 100);
    // VXLAN arrives on the dataplane's socket (rule 89), not through the host port,
    // although the VXLAN port lies inside the SNAT range.
    for n in [1, 2] {
        let got = metric(&c, n, "hybridway_port_rx_packets_total", "port=\"vxlan:");
        assert!(
            got > 100,
            "node {n}: {got} packets read from the VXLAN socket"
        );
    }
    // SNAT on the TUN backend: masqueraded in the dataplane, forwarded by the kernel.
    assert_eq!(outside_sees(&c, (1, 2)).unwrap(), node_addr(1));
    assert_eq!(outside_sees(&c, (2, 1)).unwrap(), node_addr(2));
    assert!(
        metric(
            &c,
            1,
            "hybridway_port_tx_packets_total",
            "port=\"hwhost/q0\""
        ) > 0
    );

    let ns_name = c.node(1).unwrap().ns.name.clone();
    let before = c.node(1).unwrap().ns.run("ip route show").unwrap();
    assert!(before.contains("198.19.1.11 dev hwp1"), "{before}");
    let rules = c.node(1).unwrap().ns.run("ip rule show").unwrap();
    assert!(rules.contains("from 198.19.1.0/24 lookup 26744"), "{rules}");
    assert!(rules.contains("100:\tfrom all lookup local"), "{rules}");
    // NodePorts kept out of conntrack (kube-proxy's NAT would take them).
    let table = c
        .node(1)
        .unwrap()
        .ns
        .run("nft list table ip hybridway")
        .unwrap();
    assert!(table.contains("dport 30000-32767 notrack"), "{table}");
    let status = c.stop_agent(1, "TERM").unwrap().unwrap();
    assert!(status.success(), "agent exit status {status}");
    let ns = &c.node(1).unwrap().ns;
    assert!(
        ns.output("ip link show hw0")
            .unwrap()
            .status
            .success()
            .eq(&false),
        "the TUN device outlived the agent"
    );
    let after = ns.run("ip route show").unwrap();
    assert!(
        !after.contains("hw0") && !after.contains("dev hwp"),
        "routes left behind in {ns_name}: {after}"
    );
    let rules = ns.run("ip rule show").unwrap();
    assert!(
        !rules.contains("2674") && rules.starts_with("0:\tfrom all lookup local"),
        "rules left behind in {ns_name}: {rules}"
    );
    assert_eq!(
        ns.run("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "0",
        "ip_forward not restored"
    );
    assert!(
        !ns.output("nft list table ip hybridway")
            .unwrap()
            .status
            .success(),
        "the nftables table outlived the agent in {ns_name}"
    );
}

/// TCP through the TUN overlay with the kernel's offloads on (as in bench-e2e): the
/// pods' TCP reaches hw0 as TSO super-packets, which cross the worker as
/// super-frames and leave as `UDP_SEGMENT` sends; the receiving node's kernel
/// merges the VXLAN datagrams (GRO) and may hand the train to hwhost as one UDP GSO
/// read. 4 MiB each way must arrive (with UDP trains kept whole, only the first
/// inner packet of each survived decapsulation and the stream stalled).
#[test]
fn tun_overlay_tcp_with_kernel_offloads_crosses_as_super_frames() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster_with_offloads(
        "tun",
        "tso",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
        true,
    );
    let server = c.pod(2, 1).unwrap().ns.name.clone();
    let client = c.pod(1, 1).unwrap().ns.name.clone();
    tcp_exchange(&server, pod_ip(2, 1), &client, 4 << 20);
    // Port totals are published by the worker, not read at scrape time: wait for them.
    wait_until("node 1 counts super-frames read from hw0", || {
        metric(
            &c,
            1,
            "hybridway_port_rx_super_frames_total",
            "port=\"hw0/q0\"",
        ) > 0
    });
    // Node 2's VXLAN socket merged the GRO trains of the stream into super-frames
    // (decapsulated once each), and wrote them to its pod as GSO packets: fewer
    // frames entered the pipeline than datagrams arrived (before, each datagram was
    // a frame of its own). The totals are published as the worker sweeps, so the
    // related values are read together from one scrape until they hold.
    let mut last = String::new();
    let merged_and_sent = hybridway_lab::poll(WAIT, || {
        let text = c.metrics_of(2).ok()?;
        let sum = |name: &str, label: &str| sample_sum(&text, name, label);
        let merged = sum("hybridway_port_rx_super_packets_total", "port=\"vxlan:");
        let datagrams = sum("hybridway_port_rx_super_frames_total", "port=\"vxlan:");
        let frames = sum("hybridway_port_rx_packets_total", "port=\"vxlan:");
        let tx_super = sum("hybridway_port_tx_super_packets_total", "port=\"hw0/q0\"");
        last = format!(
            "{frames} frames from the VXLAN socket, {datagrams} datagrams merged into \
             {merged}, {tx_super} super-packets written to the pod"
        );
        (merged > 0 && datagrams >= 2 * merged && frames < datagrams && tx_super > 0).then_some(())
    });
    assert!(merged_and_sent.is_some(), "node 2: {last}");
}

#[test]
fn tun_backend_underlay_pods_talk_to_each_other_and_a_kernel_routed_node_and_snat_off_shows_pods() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = underlay_cluster("tun", "tul", false);
    assert_underlay_pods_talk(&c);
    // The outside routes pod blocks to their nodes (what BGP would teach it).
    assert_eq!(outside_sees(&c, (1, 1)).unwrap(), pod_ip(1, 1));
    assert_eq!(outside_sees(&c, (2, 2)).unwrap(), pod_ip(2, 2));
    // Both directions crossed the dataplane: in through the pod TUN, out through the
    // host port (the kernel forwards it), and back the same way.
    for n in [1, 2] {
        for dir in ["rx", "tx"] {
            for port in ["hw0/q0", "hwhost/q0"] {
                let got = metric(
                    &c,
                    n,
                    &format!("hybridway_port_{dir}_packets_total"),
                    &format!("port=\"{port}\""),
                );
                assert!(got > 100, "node {n} {port} {dir}: {got} packets");
            }
        }
    }
}

#[test]
fn the_host_port_joins_node_and_pods_the_gateway_answers_and_the_nodes_own_pings_come_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for backend in ["af_xdp", "tun"] {
        let c = cluster_on(
            backend,
            &format!("hp{}", &backend[..1]),
            true,
            true,
            vec![NodeKind::Hybridway, NodeKind::Hybridway],
        );
        let node = c.node(1).unwrap().ns.name.clone();
        let pod = c.pod(1, 1).unwrap().ns.name.clone();
        // The node reaches its pods (kubelet probes) and a pod reaches its node.
        c.node(1)
            .unwrap()
            .ns
            .run(&format!("ping -c 2 -W 2 {}", pod_ip(1, 1)))
            .unwrap_or_else(|e| panic!("{backend}: node -> pod: {e}"));
        tcp_exchange(&pod, pod_ip(1, 1), &node, 5);
        tcp_exchange(&node, node_addr(1), &pod, 5);
        // The gateway, which only the dataplane answers for, answers pings.
        assert_ping(&c, (1, 1), pod_gateway(1));
        // The node's own ping whose identifier falls in the SNAT range: its replies
        // are steered to the dataplane, which finds no flow and hands them back.
        let before = metric(&c, 1, "hybridway_to_host_total", "");
        c.node(1)
            .unwrap()
            .ns
            // -w: exit 0 only once both replies came (within 10 s), so both were
            // handed to the host.
            .run(&format!("ping -c 2 -w 10 -W 2 -e 21234 {OUTSIDE_SERVER}"))
            .unwrap_or_else(|e| panic!("{backend}: node's own ping in the SNAT range: {e}"));
        wait_until("both replies counted as handed to the host", || {
            metric(&c, 1, "hybridway_to_host_total", "") >= before + 2
        });
        // Pods still reach the outside through SNAT meanwhile.
        assert_eq!(outside_sees(&c, (1, 2)).unwrap(), node_addr(1), "{backend}");
    }
}

#[test]
fn pods_removed_and_added_with_the_cli_while_traffic_flows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "cli",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    let exe = env!("CARGO_BIN_EXE_hybridway");
    let socket = c.node(1).unwrap().socket.display().to_string();
    // A 4-second TCP stream p11 -> p21 runs while p12 leaves and comes back.
    let srv = c.pod(2, 1).unwrap();
    let mut server = srv
        .ns
        .command("iperf3")
        .args(["-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&srv.ns, IPERF_PORT, LISTEN_TIMEOUT).unwrap();
    let client = c
        .pod(1, 1)
        .unwrap()
        .ns
        .command("iperf3")
        .args(["-c", &pod_ip(2, 1).to_string(), "-t", "4", "-J"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "hybridway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["pod", "remove", "--name", "p12", "--socket", &socket]);
    assert!(
        !c.ping((2, 1), pod_ip(1, 2), 1).unwrap(),
        "a removed pod still receives"
    );
    let status = run(&["status", "--socket", &socket]);
    assert!(
        status.contains("\"p11\"") && !status.contains("\"p12\""),
        "{status}"
    );
    run(&[
        "pod",
        "add",
        "--name",
        "p12",
        "--ip",
        &pod_ip(1, 2).to_string(),
        "--mac",
        "02:00:c6:13:01:0c",
        "--port",
        "hwp2",
        "--netns",
        &c.pod(1, 2).unwrap().ns.name,
        "--socket",
        &socket,
    ]);
    assert_ping(&c, (2, 1), pod_ip(1, 2));
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json.get("error").is_none(),
        "the stream broke while another pod changed: {json}"
    );
    // A bad request is refused with the reason, and the agent stays up.
    let out = std::process::Command::new(exe)
        .args([
            "pod",
            "add",
            "--name",
            "x",
            "--ip",
            "198.19.9.9",
            "--mac",
            "02:00:00:00:00:09",
            "--port",
            "hwp1",
        ])
        .args(["--socket", &socket])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("outside this node's pod block") || err.contains("already belongs"),
        "{err}"
    );
    assert_ping(&c, (1, 1), pod_ip(2, 1));
}

/// What the TUN backend changes on a node: where the `lookup local` rule is,
/// `ip_forward`, a pod veth's `proxy_arp`.
fn tun_host_settings(c: &Cluster, n: u8) -> (bool, String, String) {
    let ns = &c.node(n).unwrap().ns;
    let rules = ns.run("ip -4 rule show").unwrap();
    let local_at_zero = rules
        .lines()
        .any(|l| l.starts_with("0:") && l.ends_with("lookup local"));
    let forward = ns.run("cat /proc/sys/net/ipv4/ip_forward").unwrap();
    let proxy_arp = ns
        .run("cat /proc/sys/net/ipv4/conf/hwp1/proxy_arp")
        .unwrap();
    (
        local_at_zero,
        forward.trim().to_string(),
        proxy_arp.trim().to_string(),
    )
}

#[test]
fn tun_agent_killed_restarted_then_stopped_leaves_the_node_as_before_its_first_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = tun_cluster(
        "k9",
        true,
        true,
        vec![NodeKind::Hybridway, NodeKind::Hybridway],
    );
    // A fresh namespace: local rule at 0, no forwarding, no proxy ARP.
    let before = (true, "0".to_string(), "0".to_string());
    assert_ne!(
        tun_host_settings(&c, 1),
        before,
        "the agent changed nothing?"
    );
    c.stop_agent(1, "KILL").unwrap();
    c.start_agent(1).unwrap();
    assert_ping(&c, (1, 1), pod_ip(2, 1));
    let status = c.stop_agent(1, "TERM").unwrap().unwrap();
    assert!(status.success(), "agent exit status {status}");
    assert_eq!(
        tun_host_settings(&c, 1),
        before,
        "(local rule at 0, ip_forward, proxy_arp) after kill -9, restart and SIGTERM"
    );
    let ns = &c.node(1).unwrap().ns;
    assert!(
        !ns.output("nft list table ip hybridway")
            .unwrap()
            .status
            .success(),
        "the nftables table outlived kill -9, restart and SIGTERM"
    );
}
