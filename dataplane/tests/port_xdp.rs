//! AF_XDP port against the kernel, for real: a veth pair between two namespaces, the
//! steering program on the "node" end, the kernel on the other end as the peer.
//! Needs root (CI runs as root); never skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod port_netns;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use hybridway_dataplane::PortId;
use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_dataplane::port::xdp::{
    AttachMode, SteerRules, UmemBacking, XdpConfig, XdpMode, XdpPort, XdpSteering, rx_queues,
};
use hybridway_dataplane::port::{Backend, Chosen, PacketBatch, Port, PortDrops, PortError, choose};
use port_netns::{Netns, parse_udp, udp_frame, veth_pair, wait_readable};

const NODE: [u8; 4] = [198, 18, 10, 1];
const PEER: [u8; 4] = [198, 18, 10, 2];

/// Polls `port` until `want` matches a received frame or 5 s pass; returns the match
/// and how many frames were seen in total.
fn recv_until(
    port: &mut XdpPort,
    batch: &mut PacketBatch,
    mut want: impl FnMut(&[u8]) -> bool,
) -> (Option<Vec<u8>>, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while Instant::now() < deadline {
        batch.clear();
        let n = port.recv(batch).expect("recv");
        seen += n;
        if let Some(hit) = batch.packets().find(|p| want(p)) {
            return (Some(hit.to_vec()), seen);
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    (None, seen)
}

fn open_port(
    node: &Netns,
    rules: SteerRules,
    mode: AttachMode,
    hugepages: bool,
    frames: u32,
) -> XdpPort {
    let _inside = NetnsGuard::enter(&node.name).expect("enter node namespace");
    let steering = XdpSteering::attach("xn", rules, mode).expect("attach the steering program");
    let mut config = XdpConfig::new("xn", 0, PortId(3));
    config.hugepages = hugepages;
    config.frames = frames;
    config.ring_size = 512;
    config.mode = XdpMode::Auto;
    XdpPort::open(&config, steering).expect("open the AF_XDP socket")
}

#[test]
fn steered_vxlan_reaches_the_socket_and_everything_else_the_kernel() {
    let node = Netns::new("xdp");
    let peer = Netns::new("xdp");
    veth_pair(&node, "xn", "198.18.10.1/24", &peer, "xp", "198.18.10.2/24");
    let node_mac = node.mac("xn");
    let peer_mac = peer.mac("xp");

    // Sockets of the node's own stack, opened before the program is attached.
    let (kernel_vxlan, kernel_other) = {
        let _inside = NetnsGuard::enter(&node.name).unwrap();
        let vxlan = UdpSocket::bind("198.18.10.1:8472").unwrap();
        let other = UdpSocket::bind("198.18.10.1:9000").unwrap();
        for s in [&vxlan, &other] {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        (vxlan, other)
    };
    // Huge pages are exercised (serially) by the umem test; here ordinary pages.
    let mut port = open_port(
        &node,
        SteerRules::vxlan_to(Ipv4Addr::from(NODE)),
        AttachMode::Auto,
        false,
        1024,
    );
    assert!(port.poll_fd().is_some());
    assert!(port.steering().is_native(), "veth takes native XDP");
    assert_eq!(port.name(), "xn/q0");
    let mut batch = PacketBatch::new();

    // The peer's kernel sends VXLAN-port UDP to the node: it must arrive on the socket.
    let peer_socket = {
        let _inside = NetnsGuard::enter(&peer.name).unwrap();
        let s = UdpSocket::bind("198.18.10.2:9999").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let fd = port.poll_fd().unwrap();
    assert!(
        !wait_readable(fd, Duration::from_millis(50)),
        "nothing waits yet"
    );
    peer_socket
        .send_to(b"vxlan-payload", "198.18.10.1:8472")
        .unwrap();
    assert!(
        wait_readable(fd, Duration::from_secs(3)),
        "the socket fd wakes a parked worker"
    );
    let (hit, _) = recv_until(&mut port, &mut batch, |f| {
        parse_udp(f)
            .is_some_and(|(_, _, _, dport, payload)| dport == 8472 && payload == b"vxlan-payload")
    });
    let frame = hit.expect("the UDP datagram to port 8472 reached the AF_XDP socket");
    let (src, dst, sport, _, _) = parse_udp(&frame).unwrap();
    assert_eq!((src, dst, sport), (PEER, NODE, 9999));
    assert_eq!(&frame[0..6], &node_mac, "destination MAC is the node's");
    assert_eq!(batch.meta(0).unwrap().in_port, PortId(3));
    let mut buf = [0u8; 64];
    assert!(
        kernel_vxlan.recv_from(&mut buf).is_err(),
        "steered traffic must not also reach the kernel"
    );

    // Traffic that is not hybridway's stays with the kernel: UDP to another port and
    // ping to the node address.
    peer_socket
        .send_to(b"for-the-kernel", "198.18.10.1:9000")
        .unwrap();
    let (n, from) = kernel_other
        .recv_from(&mut buf)
        .expect("UDP to port 9000 reaches the kernel");
    assert_eq!((&buf[..n], from.port()), (&b"for-the-kernel"[..], 9999));
    peer.sh("ping -c 2 -W 2 198.18.10.1");
    batch.clear();
    let _ = port.recv(&mut batch).unwrap();
    assert!(
        batch
            .packets()
            .all(|f| parse_udp(f).is_some_and(|(_, _, _, dport, _)| dport == 8472)),
        "only steered frames reach the socket"
    );

    // A frame crafted in user space leaves through the socket and the peer's kernel
    // receives it.
    let reply = udp_frame(node_mac, peer_mac, NODE, PEER, 8472, 9999, b"from-af-xdp");
    assert_eq!(port.send(&[&reply, &reply]).unwrap(), 2);
    port.flush().unwrap();
    let (n, from) = peer_socket
        .recv_from(&mut buf)
        .expect("the peer receives the AF_XDP frame");
    assert_eq!(&buf[..n], b"from-af-xdp");
    assert_eq!(from, "198.18.10.1:8472".parse().unwrap());
    port.flush().unwrap();
    let stats = port.statistics().unwrap();
    assert_eq!(
        stats.rx_invalid_descs + stats.tx_invalid_descs,
        0,
        "{stats:?}"
    );
    assert_eq!(
        port.drops(),
        PortDrops::default(),
        "no frame dropped by the port"
    );

    // Detach on drop: afterwards the kernel gets port-8472 traffic again.
    drop(port);
    peer_socket
        .send_to(b"after-detach", "198.18.10.1:8472")
        .unwrap();
    let (n, _) = kernel_vxlan
        .recv_from(&mut buf)
        .expect("the kernel gets VXLAN traffic once detached");
    assert_eq!(&buf[..n], b"after-detach");
    assert!(node.sh("ip link show xn").contains("xn@"));
    assert!(
        !node.sh("ip -d link show xn").contains("prog/xdp"),
        "no XDP program left on the interface"
    );
}

#[test]
fn underlay_steers_the_pod_block_and_many_frames_cross_both_ways() {
    let node = Netns::new("xdu");
    let peer = Netns::new("xdu");
    veth_pair(&node, "xn", "198.18.11.1/24", &peer, "xp", "198.18.11.2/24");
    let node_mac = node.mac("xn");
    let peer_mac = peer.mac("xp");
    // The peer routes the node's pod block via the node, as a BGP-fed switch would.
    peer.sh("ip route add 198.19.11.0/24 via 198.18.11.1");
    let rules = SteerRules {
        steer_all: false,
        node_addr: None,
        vxlan_port: 8472,
        pod_block: None,
        node_ports: None,
    }
    .with_pod_block(Ipv4Addr::new(198, 19, 11, 0), 24);
    let mut port = open_port(&node, rules, AttachMode::Generic, false, 1024);
    assert!(!port.steering().is_native());
    let mut batch = PacketBatch::new();

    let peer_socket = {
        let _inside = NetnsGuard::enter(&peer.name).unwrap();
        let s = UdpSocket::bind("198.18.11.2:7000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    const COUNT: usize = 200;
    for i in 0..COUNT {
        peer_socket
            .send_to(format!("pod-{i}").as_bytes(), "198.19.11.7:5000")
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < COUNT && Instant::now() < deadline {
        batch.clear();
        if port.recv(&mut batch).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for f in batch.packets() {
            if let Some((_, [198, 19, 11, 7], _, 5000, payload)) = parse_udp(f) {
                got.insert(payload);
            }
        }
    }
    assert_eq!(
        got.len(),
        COUNT,
        "every datagram to the pod block reached the socket"
    );

    // Transmit more frames than one batch, flushing between batches.
    let frames: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| {
            udp_frame(
                node_mac,
                peer_mac,
                [198, 19, 11, 7],
                [198, 18, 11, 2],
                5000,
                7000,
                format!("back-{i}").as_bytes(),
            )
        })
        .collect();
    let mut received = std::collections::BTreeSet::new();
    let mut buf = [0u8; 64];
    for chunk in frames.chunks(64) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let mut sent = 0;
        while sent < refs.len() {
            sent += port.send(&refs[sent..]).unwrap();
            port.flush().unwrap();
        }
        for _ in 0..chunk.len() {
            let (n, _) = peer_socket.recv_from(&mut buf).expect("peer receives");
            received.insert(buf[..n].to_vec());
        }
    }
    assert_eq!(received.len(), COUNT);
    // Node traffic is untouched: the node answers pings from its kernel.
    peer.sh("ping -c 1 -W 2 198.18.11.1");
}

#[test]
fn umem_uses_huge_pages_when_reserved_and_falls_back_with_a_warning() {
    let node = Netns::new("xdh");
    let peer = Netns::new("xdh");
    veth_pair(&node, "xn", "198.18.12.1/24", &peer, "xp", "198.18.12.2/24");
    let free = hugepages_free();
    // Ask for more 2 MiB pages than are free (1024 chunks of 2 KiB per page): fallback.
    // A host with a large standing reservation cannot provoke it cheaply; say so.
    assert!(
        free < 16,
        "{free} huge pages are free; the fallback test needs fewer than 16"
    );
    let frames = ((free + 1) * 1024).next_power_of_two() as u32;
    let port = open_port(
        &node,
        SteerRules::vxlan_to(Ipv4Addr::from([198, 18, 12, 1])),
        AttachMode::Auto,
        true,
        frames,
    );
    assert_eq!(port.umem_backing(), UmemBacking::OrdinaryPages);
    drop(port);
    let port = open_port(
        &node,
        SteerRules::vxlan_to(Ipv4Addr::from([198, 18, 12, 1])),
        AttachMode::Auto,
        false,
        256,
    );
    assert_eq!(port.umem_backing(), UmemBacking::OrdinaryPages);
    drop(port);

    // Reserve two pages for this test, then give them back.
    let reserve = Reservation::add(2);
    let port = open_port(
        &node,
        SteerRules::vxlan_to(Ipv4Addr::from([198, 18, 12, 1])),
        AttachMode::Auto,
        true,
        1024,
    );
    let used = reserve.available() == Some(true);
    assert_eq!(
        port.umem_backing(),
        if used {
            UmemBacking::HugePages
        } else {
            UmemBacking::OrdinaryPages
        }
    );
    assert!(
        used,
        "the kernel could not reserve 2 huge pages; hugepage path not exercised"
    );
}

/// Set by the test below for the process it starts inside a limited cgroup.
const CGROUP_CHILD_NODE: &str = "HYBRIDWAY_TEST_UMEM_CGROUP_NODE";

/// A pod's `hugepages-2Mi` limit is a hugetlb cgroup limit, charged when a page is
/// faulted: huge pages free on the host but not allowed to the cgroup used to map
/// fine, and then the socket refused the UMEM (EFAULT from XDP_UMEM_REG; a touch
/// would have been SIGBUS), so AF_XDP never started. A real cgroup v2 with
/// `hugetlb.2MB.max = 0` and two pages free on the host: the UMEM must fall back to
/// ordinary pages and carry frames. The port is opened by a copy of this test binary
/// started inside the cgroup (a process cannot leave its cgroup for one thread).
#[test]
fn umem_stays_within_the_cgroup_hugetlb_limit() {
    let node = Netns::new("xdc");
    let peer = Netns::new("xdc");
    veth_pair(&node, "xn", "198.18.13.1/24", &peer, "xp", "198.18.13.2/24");
    let reserve = Reservation::add(2);
    assert!(
        reserve.available() == Some(true),
        "the kernel could not reserve 2 huge pages; the cgroup limit would not be what stops them"
    );
    let cgroup = LimitedCgroup::new();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$1" --exact "$2" --ignored --nocapture"#)
        .arg(&cgroup.dir)
        .arg(&exe)
        .arg("umem_in_a_limited_cgroup")
        .env(CGROUP_CHILD_NODE, &node.name)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the port in a cgroup without huge pages failed ({}):\n{text}",
        out.status
    );
}

/// Run only by the test above, inside its cgroup.
#[test]
#[ignore = "started by umem_stays_within_the_cgroup_hugetlb_limit inside a cgroup"]
fn umem_in_a_limited_cgroup() {
    let name = std::env::var(CGROUP_CHILD_NODE).expect("started by the cgroup test");
    assert_eq!(
        hybridway_dataplane::port::xdp::hugetlb_cgroup::huge_page_headroom(),
        Some(0)
    );
    // The parent owns the namespace (and deletes it): not dropped here.
    let node = std::mem::ManuallyDrop::new(Netns { name });
    let mut port = open_port(
        &node,
        SteerRules::vxlan_to(Ipv4Addr::from([198, 18, 13, 1])),
        AttachMode::Auto,
        true,
        1024,
    );
    assert_eq!(port.umem_backing(), UmemBacking::OrdinaryPages);
    // Every chunk is written to: a frame out and back through the whole UMEM.
    let frame = udp_frame(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        [198, 18, 13, 1],
        [198, 18, 13, 2],
        4000,
        4001,
        b"umem",
    );
    assert_eq!(port.send(&[&frame]).unwrap(), 1);
    port.flush().unwrap();
}

/// A child cgroup v2 with the hugetlb controller and a limit of 0 bytes, removed on
/// drop (after the process in it has exited).
struct LimitedCgroup {
    dir: std::path::PathBuf,
}

impl LimitedCgroup {
    fn new() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .filter_map(|l| l.split_once(" - "))
            .find(|(_, rest)| rest.starts_with("cgroup2 "))
            .and_then(|(fixed, _)| fixed.split(' ').nth(4))
            .expect("no cgroup v2 hierarchy mounted: the hugetlb limit cannot be tested")
            .to_owned();
        let root = std::path::Path::new(&mount);
        std::fs::write(root.join("cgroup.subtree_control"), "+hugetlb").unwrap_or_else(|e| {
            panic!("cannot enable the hugetlb controller in {mount} ({e}); the kernel needs CONFIG_CGROUP_HUGETLB and the controller free of cgroup v1")
        });
        let dir = root.join(format!("hybridway-umem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hugetlb.2MB.max"), "0").unwrap();
        LimitedCgroup { dir }
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        })
        .unwrap()
}

fn hugepages_free() -> u64 {
    meminfo("HugePages_Free:")
}

/// Raises vm.nr_hugepages by `n` and restores the old value on drop.
struct Reservation {
    before: u64,
    got: bool,
}

impl Reservation {
    fn add(n: u64) -> Reservation {
        let path = "/proc/sys/vm/nr_hugepages";
        let before: u64 = std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let free_before = hugepages_free();
        std::fs::write(path, (before + n).to_string()).unwrap();
        let got = hugepages_free() >= free_before + n;
        Reservation { before, got }
    }

    fn available(&self) -> Option<bool> {
        Some(self.got)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", self.before.to_string());
    }
}

#[test]
fn auto_falls_back_to_tun_when_the_interface_refuses_xdp_and_explicit_choices_fail_loudly() {
    let node = Netns::new("xds");
    let peer = Netns::new("xds");
    veth_pair(&node, "xn", "198.18.13.1/24", &peer, "xp", "198.18.13.2/24");
    let _inside = NetnsGuard::enter(&node.name).unwrap();
    let rules = SteerRules::vxlan_to(Ipv4Addr::new(198, 18, 13, 1));

    let Chosen::AfXdp(first) = choose(Backend::Auto, "xn", rules, AttachMode::Auto).unwrap() else {
        panic!("auto picks AF_XDP on a veth");
    };
    // While a program holds the interface it refuses a second one.
    match choose(Backend::Auto, "xn", rules, AttachMode::Auto).unwrap() {
        Chosen::Tun {
            reason: Some(reason),
        } => assert!(reason.contains("refused an XDP program"), "{reason}"),
        other => panic!("expected the TUN fallback, got {other:?}"),
    }
    let err = choose(Backend::AfXdp, "xn", rules, AttachMode::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("AF_XDP unavailable on xn: ") && err.ends_with("use backend: tun"),
        "{err}"
    );
    assert!(matches!(
        choose(Backend::Tun, "xn", rules, AttachMode::Auto).unwrap(),
        Chosen::Tun { reason: None }
    ));
    assert!(matches!(
        choose(Backend::Auto, "nosuch0", rules, AttachMode::Auto),
        Err(PortError::NoSuchInterface(_))
    ));
    drop(first);
    assert!(matches!(
        choose(Backend::AfXdp, "xn", rules, AttachMode::Auto).unwrap(),
        Chosen::AfXdp(_)
    ));
}

#[test]
fn a_pod_veth_sends_everything_to_the_socket() {
    // Pod veths carry only hybridway's traffic: ARP included, nothing reaches the
    // node's kernel on that interface.
    let node = Netns::new("xdv");
    let pod = Netns::new("xdv");
    veth_pair(&node, "xn", "198.18.14.1/24", &pod, "xp", "198.19.14.5/24");
    let _inside = NetnsGuard::enter(&node.name).unwrap();
    assert_eq!(rx_queues("xn"), 1);
    let steering = XdpSteering::attach("xn", SteerRules::everything(), AttachMode::Auto).unwrap();
    let mut port = XdpPort::open(&XdpConfig::new("xn", 0, PortId(4)), steering).unwrap();
    pod.sh("ip route add default dev xp");
    let ping = pod.try_sh("ping -c 1 -W 1 198.18.14.1");
    assert!(
        !ping.status.success(),
        "the node's kernel never sees the pod's ARP"
    );
    let mut batch = PacketBatch::new();
    let (arp, _) = recv_until(&mut port, &mut batch, |f| {
        f.get(12..14) == Some(&[0x08, 0x06])
    });
    let arp = arp.expect("the pod's ARP request reached the socket");
    assert_eq!(
        &arp[28..32],
        &[198, 19, 14, 5],
        "sender protocol address is the pod"
    );
    assert_eq!(
        &arp[38..42],
        &[198, 18, 14, 1],
        "asking for the node address"
    );
}
