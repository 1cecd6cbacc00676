//! VXLAN UDP socket port against the kernel, for real: two namespaces joined by a
//! veth, a port in each, and the Linux VXLAN device as a peer. Needs root; never skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod port_netns;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};
use hybridway_dataplane::PortId;
use hybridway_dataplane::frame::GsoKind;
use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_dataplane::port::tun::gso::Segmenter;
use hybridway_dataplane::port::udp::{OUTER_LEN, UdpConfig, UdpPort};
use hybridway_dataplane::port::{PacketBatch, Port};
use hybridway_dataplane::wire::checksum;
use port_netns::{Netns, checked_tcp4, parse_udp, udp_frame, veth_pair, wait_readable};

fn open(ns: &Netns, addr: [u8; 4]) -> UdpPort {
    let _inside = NetnsGuard::enter(&ns.name).unwrap();
    let config = UdpConfig::new(SocketAddrV4::new(Ipv4Addr::from(addr), 8472), PortId(5));
    UdpPort::open(&config, 1)
        .expect("bind the VXLAN socket")
        .pop()
        .unwrap()
}

fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(inner);
    p
}

/// The frames the port receives, a super-frame cut back into its datagrams' frames.
fn recv_frames(port: &mut UdpPort, want: usize) -> Vec<Vec<u8>> {
    let mut batch = PacketBatch::new();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < deadline {
        batch.clear();
        if port.recv(&mut batch).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for i in 0..batch.len() {
            let frame = batch.packet(i).unwrap();
            let Some(gso) = batch.gso(i) else {
                got.push(frame.to_vec());
                continue;
            };
            let segmenter = Segmenter::for_frame(frame, gso).unwrap();
            for s in 0..segmenter.count() {
                let mut out = vec![0u8; 2048];
                let len = segmenter.write_frame(frame, gso, s, &mut out).unwrap();
                out.truncate(len);
                got.push(out);
            }
        }
    }
    got
}

#[test]
fn vxlan_payloads_cross_between_two_nodes_singly_and_with_gso() {
    let a = Netns::new("udp");
    let b = Netns::new("udp");
    veth_pair(&a, "ua", "198.18.30.1/24", &b, "ub", "198.18.30.2/24");
    let mut pa = open(&a, [198, 18, 30, 1]);
    let mut pb = open(&b, [198, 18, 30, 2]);
    assert!(pb.gro(), "UDP GRO available on this kernel");
    assert_eq!(pb.name(), "vxlan:198.18.30.2:8472");

    // What the pipeline builds: outer headers to the remote node, VXLAN, inner frame.
    let inner = udp_frame(
        [0xa; 6],
        [0xb; 6],
        [198, 19, 30, 5],
        [198, 19, 31, 5],
        1234,
        80,
        b"inner",
    );
    let payload = vxlan_payload(1, &inner);
    let outer = udp_frame(
        [1; 6],
        [2; 6],
        [198, 18, 30, 1],
        [198, 18, 30, 2],
        51000,
        8472,
        &payload,
    );
    assert!(!wait_readable(
        pb.poll_fd().unwrap(),
        Duration::from_millis(50)
    ));
    assert_eq!(pa.send(&[&outer]).unwrap(), 1);
    pa.flush().unwrap();
    assert!(
        wait_readable(pb.poll_fd().unwrap(), Duration::from_secs(3)),
        "the socket wakes a parked worker"
    );
    let got = recv_frames(&mut pb, 1);
    assert_eq!(got.len(), 1);
    let (src, dst, sport, dport, body) = parse_udp(&got[0]).expect("a synthesised outer header");
    assert_eq!(
        (src, dst, dport),
        ([198, 18, 30, 1], [198, 18, 30, 2], 8472)
    );
    // Sent from the source-port socket the pipeline's outer source port picks.
    let source_ports = pa.tx_source_ports();
    assert_eq!(source_ports.len(), 8);
    assert_eq!(sport, source_ports[51000 % 8]);
    assert_eq!(body, payload, "the VXLAN payload arrives unchanged");
    assert_eq!(got[0].len(), OUTER_LEN + payload.len());

    // A run of equal-size frames to one node leaves in one GSO send; a shorter last
    // one rides along; every frame arrives, in order.
    let frames: Vec<Vec<u8>> = (0..41u32)
        .map(|i| {
            let body = if i == 40 {
                vec![7u8; 300]
            } else {
                vec![(i % 256) as u8; 1000]
            };
            let inner = udp_frame(
                [0xa; 6],
                [0xb; 6],
                [198, 19, 30, 5],
                [198, 19, 31, 5],
                1234,
                80,
                &body,
            );
            udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 30, 1],
                [198, 18, 30, 2],
                51000,
                8472,
                &vxlan_payload(1, &inner),
            )
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(pa.send(&refs).unwrap(), 41);
    assert!(pa.counters().tx_gso_sends >= 1, "{:?}", pa.counters());
    let got = recv_frames(&mut pb, 41);
    assert_eq!(got.len(), 41);
    for (sent, received) in frames.iter().zip(&got) {
        assert_eq!(parse_udp(received).unwrap().4, parse_udp(sent).unwrap().4);
    }
    // Across a veth the GSO datagrams stay one skb and reach the GRO socket as a train.
    assert!(pb.counters().rx_gro_trains >= 1, "{:?}", pb.counters());

    // Inner flows with different outer source ports leave from different ports.
    let spread: Vec<Vec<u8>> = (0..8u16)
        .map(|sport| {
            udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 30, 1],
                [198, 18, 30, 2],
                sport,
                8472,
                &payload,
            )
        })
        .collect();
    let refs: Vec<&[u8]> = spread.iter().map(Vec::as_slice).collect();
    assert_eq!(pa.send(&refs).unwrap(), 8);
    let got = recv_frames(&mut pb, 8);
    let ports: std::collections::BTreeSet<u16> =
        got.iter().map(|f| parse_udp(f).unwrap().2).collect();
    assert_eq!(
        ports.len(),
        8,
        "one outer source port per socket: {ports:?}"
    );

    // Bad frames from the pipeline are dropped and counted, not sent.
    let arp = [0u8; 60];
    assert_eq!(pa.send(&[&arp, &outer[..20]]).unwrap(), 2);
    assert_eq!(pa.counters().tx_invalid, 2);
    assert_eq!(pa.drops().tx, 2);
}

#[test]
fn a_gro_train_is_not_cut_across_batches() {
    let a = Netns::new("udp");
    let b = Netns::new("udp");
    veth_pair(&a, "ua", "198.18.32.1/24", &b, "ub", "198.18.32.2/24");
    let mut pa = open(&a, [198, 18, 32, 1]);
    let mut pb = open(&b, [198, 18, 32, 2]);
    assert!(pb.gro(), "UDP GRO available on this kernel");
    let frames: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            let inner = udp_frame(
                [0xa; 6],
                [0xb; 6],
                [198, 19, 32, 5],
                [198, 19, 33, 5],
                1234,
                80,
                &[(i % 256) as u8; 1000],
            );
            udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 32, 1],
                [198, 18, 32, 2],
                51000,
                8472,
                &vxlan_payload(1, &inner),
            )
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // Two GSO sends of 40 datagrams: two trains, and 80 > one batch of 64.
    assert_eq!(pa.send(&refs).unwrap(), 40);
    assert_eq!(pa.send(&refs).unwrap(), 40);
    assert_eq!(pa.counters().tx_gso_sends, 2, "{:?}", pa.counters());
    let mut batch = PacketBatch::new();
    let mut sizes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sizes.iter().sum::<usize>() < 80 && Instant::now() < deadline {
        batch.clear();
        match pb.recv(&mut batch).unwrap() {
            0 => std::thread::sleep(Duration::from_millis(2)),
            n => sizes.push(n),
        }
    }
    assert_eq!(pb.counters().rx_gro_trains, 2, "{:?}", pb.counters());
    // The second train does not fit the 24 slots the first left: it waits whole
    // for the next batch instead of being cut 24 + 16.
    assert_eq!(sizes, [40, 40]);
}

/// A VXLAN datagram's payload (VNI 1) carrying TCP segment `i` of one flow: DF,
/// complete checksums, PSH on the last, as a sending node's segments are.
fn tcp_vxlan_payload(i: usize, mss: usize, last: bool) -> Vec<u8> {
    let body: Vec<u8> = (0..mss).map(|b| (b * 7 + i) as u8).collect();
    let mut b = PacketBuilder::ethernet2([0xa; 6], [0xb; 6])
        .ipv4([198, 19, 34, 5], [198, 19, 35, 5], 64)
        .tcp(40000, 5201, 1000 + (i * mss) as u32, 64000)
        .ack(77);
    if last {
        b = b.psh();
    }
    let mut inner = Vec::new();
    b.write(&mut inner, &body).unwrap();
    inner[14 + 4..14 + 6].copy_from_slice(&(100 + i as u16).to_be_bytes());
    inner[14 + 6] = 0x40; // DF
    inner[14 + 10..14 + 12].fill(0);
    let sum = checksum::checksum(&inner[14..34]);
    inner[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    vxlan_payload(1, &inner)
}

#[test]
fn the_gro_trains_of_one_tcp_write_are_received_as_one_super_frame() {
    let a = Netns::new("udp");
    let b = Netns::new("udp");
    veth_pair(&a, "ua", "198.18.34.1/24", &b, "ub", "198.18.34.2/24");
    b.sh("ethtool -K ub gro on");
    let mut pa = open(&a, [198, 18, 34, 1]);
    let mut pb = open(&b, [198, 18, 34, 2]);
    assert!(pb.gro(), "UDP GRO available on this kernel");
    // 46 datagrams of 1398-byte segments (a 64 KiB TSO write): one UDP_SEGMENT
    // send carries 44 of them (the 64 KiB cap), a second one the other 2, so they
    // arrive as two GRO trains.
    let (n, mss) = (46, 1398);
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| tcp_vxlan_payload(i, mss, i + 1 == n))
        .collect();
    let frames: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| {
            udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 34, 1],
                [198, 18, 34, 2],
                51000,
                8472,
                p,
            )
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // Sent through the veth in this thread: both trains are queued on the other
    // socket when `send` returns.
    assert_eq!(pa.send(&refs).unwrap(), n);
    assert_eq!(pa.counters().tx_gso_sends, 2, "{:?}", pa.counters());
    assert!(wait_readable(pb.poll_fd().unwrap(), Duration::from_secs(3)));
    let mut batch = PacketBatch::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while batch.is_empty() && Instant::now() < deadline {
        if pb.recv(&mut batch).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let c = pb.counters();
    assert_eq!(batch.len(), 1, "one frame for both trains: {c:?}");
    assert_eq!(
        (c.rx_gro_trains, c.rx_merged, c.rx_merged_datagrams),
        (2, 1, n as u64)
    );
    assert_eq!(pb.offloads().rx_super, 1);
    assert_eq!(pb.offloads().rx_super_frames, n as u64);
    let gso = batch.gso(0).expect("a super-frame");
    assert_eq!(
        (gso.kind, usize::from(gso.size), gso.hdr_len),
        (GsoKind::TcpV4, mss, 40)
    );
    assert_eq!(usize::from(gso.l3), OUTER_LEN + 8 + 14);
    let frame = batch.packet(0).unwrap();
    // The synthetic outer header says the merged length, with a valid checksum.
    let (src, dst, _, dport, vxlan) = parse_udp(frame).expect("outer Ethernet/IPv4/UDP");
    assert_eq!(
        (src, dst, dport),
        ([198, 18, 34, 1], [198, 18, 34, 2], 8472)
    );
    assert_eq!(vxlan.len() + OUTER_LEN, frame.len());
    assert_eq!(
        &vxlan[..22],
        &payloads[0][..22],
        "the first VXLAN and inner Ethernet headers"
    );
    // Cut by the one segmenter, it gives back every datagram's inner packet.
    let ip = &frame[usize::from(gso.l3)..];
    let segmenter = Segmenter::for_frame(frame, gso).unwrap();
    assert_eq!(segmenter.count(), n);
    let mut out = vec![0u8; 2048];
    for (i, sent) in payloads.iter().enumerate() {
        let len = segmenter.write(ip, i, &mut out).unwrap();
        assert_eq!(&out[..len], &sent[22..], "segment {i}");
    }
}

#[test]
fn the_linux_vxlan_device_is_a_peer() {
    // Node B runs a kernel VXLAN device configured the way flannel configures it;
    // node A is this port plus the test answering pings as a "pod".
    let a = Netns::new("vxk");
    let b = Netns::new("vxk");
    veth_pair(&a, "ua", "198.18.32.1/24", &b, "ub", "198.18.32.2/24");
    let pod_mac = [0x02, 0, 0, 0, 0x32, 0x05];
    let vtep_a = "02:00:00:00:32:01";
    b.sh(
        "ip link add vxlan1 type vxlan id 1 dstport 8472 local 198.18.32.2 dev ub nolearning && \
         ip addr add 198.19.33.0/32 dev vxlan1 && ip link set vxlan1 up && \
         bridge fdb append 02:00:00:00:32:01 dev vxlan1 dst 198.18.32.1 && \
         ip neigh replace 198.19.32.0 lladdr 02:00:00:00:32:01 dev vxlan1 nud permanent && \
         ip route add 198.19.32.0/24 via 198.19.32.0 dev vxlan1 onlink",
    );
    let vtep_b = b.mac("vxlan1");
    let mut port = open(&a, [198, 18, 32, 1]);

    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b.name,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "3",
            "198.19.32.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut batch = PacketBatch::new();
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while answered < 3 && Instant::now() < deadline {
        batch.clear();
        if port.recv(&mut batch).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        for frame in batch.packets() {
            let (src, dst, sport, dport, vxlan) = parse_udp(frame).unwrap();
            assert_eq!(
                (src, dst, dport),
                ([198, 18, 32, 2], [198, 18, 32, 1], 8472)
            );
            assert_eq!(
                &vxlan[..8],
                &[0x08, 0, 0, 0, 0, 0, 1, 0],
                "VNI 1 with the I flag"
            );
            let inner = &vxlan[8..];
            assert_eq!(
                &inner[..6],
                &[2, 0, 0, 0, 0x32, 1],
                "inner destination is our VTEP MAC {vtep_a}"
            );
            let p = SlicedPacket::from_ethernet(inner).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                continue;
            };
            let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
                continue;
            };
            let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
                continue;
            };
            // The pod answers; we encapsulate as the pipeline would, to B's VTEP.
            let mut reply_inner = Vec::new();
            PacketBuilder::ethernet2(pod_mac, vtep_b)
                .ipv4(ip.header().destination(), ip.header().source(), 64)
                .icmpv4_echo_reply(echo.id, echo.seq)
                .write(&mut reply_inner, icmp.payload())
                .unwrap();
            let outer = udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 32, 1],
                [198, 18, 32, 2],
                40000,
                8472,
                &vxlan_payload(1, &reply_inner),
            );
            assert!(sport > 0);
            assert_eq!(port.send(&[&outer]).unwrap(), 1);
            answered += 1;
        }
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the kernel's ping got its replies through VXLAN: {text}"
    );
    assert!(text.contains("3 received"), "{text}");
}

#[test]
fn several_sockets_share_the_vxlan_port_and_split_the_flows() {
    let a = Netns::new("urp");
    let b = Netns::new("urp");
    veth_pair(&a, "ua", "198.18.31.1/24", &b, "ub", "198.18.31.2/24");
    let mut group = {
        let _inside = NetnsGuard::enter(&b.name).unwrap();
        let config = UdpConfig::new(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 31, 2), 8472),
            PortId(5),
        );
        UdpPort::open(&config, 2).unwrap()
    };
    assert_eq!(group.len(), 2);
    assert_eq!(group[1].name(), "vxlan:198.18.31.2:8472/1");
    // Sixty-four sender sockets: sixty-four flows for SO_REUSEPORT to hash.
    let senders: Vec<std::net::UdpSocket> = {
        let _inside = NetnsGuard::enter(&a.name).unwrap();
        (0..64)
            .map(|_| std::net::UdpSocket::bind("198.18.31.1:0").unwrap())
            .collect()
    };
    for (i, s) in senders.iter().enumerate() {
        s.send_to(
            &vxlan_payload(1, format!("flow-{i}").as_bytes()),
            "198.18.31.2:8472",
        )
        .unwrap();
    }
    let mut per_socket = [0usize; 2];
    let mut batch = PacketBatch::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while per_socket.iter().sum::<usize>() < 64 && Instant::now() < deadline {
        for (i, port) in group.iter_mut().enumerate() {
            batch.clear();
            per_socket[i] += port.recv(&mut batch).unwrap();
        }
    }
    assert_eq!(per_socket.iter().sum::<usize>(), 64, "{per_socket:?}");
    assert!(
        per_socket.iter().all(|&n| n > 0),
        "both sockets get flows: {per_socket:?}"
    );
}

/// An encapsulated TCP super-frame (as the pipeline leaves one for the uplink)
/// leaves in as few `UDP_SEGMENT` sends as the 64 KiB cap allows, and the other node
/// receives every inner segment with its headers fixed and its checksum complete.
#[test]
fn an_encapsulated_super_frame_leaves_in_udp_gso_sends_of_whole_inner_segments() {
    use hybridway_dataplane::frame::Gso;
    use hybridway_dataplane::port::SuperSend;

    let a = Netns::new("usup");
    let b = Netns::new("usup");
    veth_pair(&a, "usa", "198.18.31.1/24", &b, "usb", "198.18.31.2/24");
    let mut pa = open(&a, [198, 18, 31, 1]);
    let mut pb = open(&b, [198, 18, 31, 2]);

    const MSS: usize = 1398;
    let body: Vec<u8> = (0..46 * MSS - 100).map(|i| (i % 251) as u8).collect();
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([0xaa; 6], [0xbb; 6])
        .ipv4([198, 19, 128, 5], [198, 19, 129, 7], 63)
        .tcp(40000, 5201, 7_000_000, 500)
        .ack(1)
        .write(&mut inner, &body)
        .unwrap();
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(198, 19, 128, 5),
        Ipv4Addr::new(198, 19, 129, 7),
        6,
        (20 + body.len()) as u16,
    );
    inner[14 + 36..14 + 38].copy_from_slice(&pseudo.to_be_bytes());
    // Outer Ethernet/IPv4/UDP with lengths left for the port, then VXLAN.
    let mut frame = udp_frame(
        [1; 6],
        [2; 6],
        [198, 18, 31, 1],
        [198, 18, 31, 2],
        40123,
        8472,
        &vxlan_payload(1, &[]),
    );
    frame[16..18].fill(0);
    frame[38..40].fill(0);
    frame.extend_from_slice(&inner);
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: MSS as u16,
        hdr_len: 40,
        l3: (OUTER_LEN + 8 + 14) as u16,
    };
    let count = Segmenter::for_frame(&frame, gso).unwrap().count();
    assert_eq!(count, 46);
    assert_eq!(pa.send_super(&frame, gso).unwrap(), SuperSend::Sent);
    let c = pa.counters();
    assert_eq!(
        (c.tx_gso_sends, c.tx_gso_datagrams),
        (2, 46),
        "44 datagrams of 1460 bytes fit the 64 KiB cap, then 2: {c:?}"
    );

    // The receiving port merges each train back into a super-frame; cut as the TUN
    // port's fallback would, the datagrams are what was sent.
    let got = recv_frames(&mut pb, count);
    assert_eq!(got.len(), count);
    assert!(pb.counters().rx_merged >= 1, "{:?}", pb.counters());
    let mut received = Vec::new();
    let mut seq = 7_000_000u32;
    for (i, f) in got.iter().enumerate() {
        let (_, _, _, _, payload) = parse_udp(f).unwrap();
        assert_eq!(&payload[..8], &vxlan_payload(1, &[])[..], "VXLAN header");
        let (seq_i, data) = checked_tcp4(&payload[8..]).expect("inner IPv4/TCP");
        assert_eq!(seq_i, seq, "datagram {i} in order");
        seq = seq.wrapping_add(data.len() as u32);
        assert!(data.len() <= MSS);
        received.extend_from_slice(&data);
    }
    assert_eq!(received, body, "every byte, in order");
}
