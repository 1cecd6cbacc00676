//! TUN port against the kernel, for real: a multi-queue TUN in a namespace with a
//! pod prefix routed into it. Needs root (CI runs as root); never skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod port_netns;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use hybridway_dataplane::PortId;
use hybridway_dataplane::frame::{Gso, GsoKind};
use hybridway_dataplane::port::SuperSend;
use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_dataplane::port::tun::gso::Segmenter;
use hybridway_dataplane::port::tun::{TunConfig, TunPort};
use hybridway_dataplane::port::udp::{UdpConfig, UdpPort};
use hybridway_dataplane::port::{PacketBatch, Port};
use hybridway_dataplane::wire::checksum;
use port_netns::{Netns, checked_tcp4, parse_udp, udp_frame, wait_readable};

/// Opens a TUN that cuts TSO/USO reads into single packets on receive.
fn open(ns: &Netns, name: &str, queues: usize) -> (Vec<TunPort>, TunConfig) {
    open_with(ns, name, queues, false)
}

fn open_with(
    ns: &Netns,
    name: &str,
    queues: usize,
    super_frames: bool,
) -> (Vec<TunPort>, TunConfig) {
    let _inside = NetnsGuard::enter(&ns.name).unwrap();
    let mut config = TunConfig::new(name, queues, PortId(9));
    config.mtu = Some(1500);
    config.super_frames = super_frames;
    let ports = TunPort::open(&config).expect("open the TUN device");
    (ports, config)
}

/// Reads every queue until `done` says stop or 5 s pass; returns the frames per queue.
fn collect(
    ports: &mut [TunPort],
    mut done: impl FnMut(&[Vec<Vec<u8>>]) -> bool,
) -> Vec<Vec<Vec<u8>>> {
    let mut got = vec![Vec::new(); ports.len()];
    let mut batch = PacketBatch::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&got) && Instant::now() < deadline {
        let mut any = false;
        for (q, port) in ports.iter_mut().enumerate() {
            batch.clear();
            if port.recv(&mut batch).unwrap() > 0 {
                any = true;
            }
            got[q].extend(batch.packets().map(<[u8]>::to_vec));
        }
        if !any {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    got
}

#[test]
fn two_queues_receive_the_kernels_packets_and_written_packets_reach_the_kernel() {
    let ns = Netns::new("tun");
    let (mut ports, config) = open(&ns, "hwt0", 2);
    assert!(ports.iter().all(TunPort::created));
    assert_eq!(ports[1].name(), "hwt0/q1");
    assert_ne!(ports[0].poll_fd(), ports[1].poll_fd());
    ns.sh("ip addr add 198.18.20.1/24 dev hwt0 && ip route add 198.19.20.0/24 dev hwt0");
    assert!(ns.sh("ip link show hwt0").contains("UP"));

    const FLOWS: usize = 64;
    let sockets: Vec<UdpSocket> = {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        (0..FLOWS)
            .map(|_| {
                let s = UdpSocket::bind("198.18.20.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s
            })
            .collect()
    };
    let fds: Vec<_> = ports.iter().map(|p| p.poll_fd().unwrap()).collect();
    for (i, s) in sockets.iter().enumerate() {
        s.send_to(
            format!("flow-{i}").as_bytes(),
            ("198.19.20.5", 5000 + i as u16),
        )
        .unwrap();
    }
    assert!(
        fds.iter()
            .any(|&fd| wait_readable(fd, Duration::from_secs(3))),
        "a queue fd wakes a parked worker"
    );
    let is_ours =
        |f: &Vec<u8>| parse_udp(f).is_some_and(|(_, dst, _, _, _)| dst == [198, 19, 20, 5]);
    let got = collect(&mut ports, |got| {
        got.iter().flatten().filter(|f| is_ours(f)).count() >= FLOWS
    });
    let per_queue: Vec<usize> = got
        .iter()
        .map(|q| q.iter().filter(|f| is_ours(f)).count())
        .collect();
    assert_eq!(
        per_queue.iter().sum::<usize>(),
        FLOWS,
        "every datagram read once: {per_queue:?}"
    );
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "flows spread over both queues: {per_queue:?}"
    );
    let frame = got.iter().flatten().find(|f| is_ours(f)).unwrap();
    assert_eq!(
        &frame[0..6],
        &config.mac.octets(),
        "synthesised destination MAC"
    );
    assert_eq!(
        &frame[6..12],
        &config.peer_mac.octets(),
        "synthesised source MAC"
    );
    assert_eq!(&frame[12..14], &[0x08, 0x00]);
    let payloads: BTreeSet<Vec<u8>> = got
        .iter()
        .flatten()
        .filter_map(|f| parse_udp(f))
        .map(|p| p.4)
        .collect();
    assert!(payloads.contains(b"flow-63".as_slice()));

    // Replies written to either queue reach the kernel's sockets.
    for (i, s) in sockets.iter().enumerate().take(8) {
        let SocketAddr::V4(local) = s.local_addr().unwrap() else {
            panic!()
        };
        let reply = udp_frame(
            config.peer_mac.octets(),
            config.mac.octets(),
            [198, 19, 20, 5],
            local.ip().octets(),
            5000 + i as u16,
            local.port(),
            format!("reply-{i}").as_bytes(),
        );
        let not_ip = [0u8; 60];
        assert_eq!(ports[i % 2].send(&[&reply, &not_ip]).unwrap(), 2);
        ports[i % 2].flush().unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("the kernel delivers the written packet");
        assert_eq!(&buf[..n], format!("reply-{i}").as_bytes());
        assert_eq!(from, SocketAddr::from(([198, 19, 20, 5], 5000 + i as u16)));
    }
    assert_eq!(ports[0].drops().tx + ports[1].drops().tx, 8);

    // The device was ours: it disappears with its last queue, routes with it.
    drop(ports);
    assert!(
        !ns.try_sh("ip link show hwt0").status.success(),
        "TUN device removed on drop"
    );
}

#[test]
fn a_kernel_tcp_tso_super_packet_is_segmented_into_mss_packets() {
    let ns = Netns::new("tso");
    let (mut ports, config) = open(&ns, "hwt1", 1);
    assert_ne!(ports[0].offloads() & 0x02, 0, "TSO4 offered to the kernel");
    ns.sh("ip addr add 198.18.21.1/24 dev hwt1 && ip route add 198.19.21.0/24 dev hwt1");

    // The kernel connects to a "pod" that this test plays through the TUN.
    let ns_name = ns.name.clone();
    let client = std::thread::spawn(move || {
        let _inside = NetnsGuard::enter(&ns_name).unwrap();
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([198, 19, 21, 9], 80)),
            Duration::from_secs(5),
        )
        .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        // Nobody ACKs beyond the handshake; the first flight is all the test needs.
        let _ = stream.write_all(&data);
        std::thread::sleep(Duration::from_millis(500));
    });

    let is_tcp = |f: &Vec<u8>| {
        SlicedPacket::from_ethernet(f)
            .is_ok_and(|p| matches!(p.transport, Some(TransportSlice::Tcp(_))))
    };
    let got = collect(&mut ports, |got| got[0].iter().any(is_tcp));
    let syn = got[0].iter().find(|f| is_tcp(f)).expect("the SYN arrives");
    let p = SlicedPacket::from_ethernet(syn).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!()
    };
    assert!(tcp.syn());
    let client_port = tcp.source_port();
    let client_seq = tcp.sequence_number();

    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2(config.peer_mac.octets(), config.mac.octets())
        .ipv4([198, 19, 21, 9], [198, 18, 21, 1], 64)
        .tcp(80, client_port, 5000, 65535)
        .syn()
        .ack(client_seq.wrapping_add(1))
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .unwrap()
        .write(&mut syn_ack, &[])
        .unwrap();
    assert_eq!(ports[0].send(&[&syn_ack]).unwrap(), 1);

    let data_segments = |got: &[Vec<Vec<u8>>]| -> Vec<(u32, usize)> {
        got[0]
            .iter()
            .filter_map(|f| {
                let p = SlicedPacket::from_ethernet(f).ok()?;
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                    return None;
                };
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                    return None;
                };
                if tcp.payload().is_empty() {
                    return None;
                }
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
                let sum = tcp
                    .to_header()
                    .calc_checksum_ipv4(&h, tcp.payload())
                    .unwrap();
                assert_eq!(tcp.checksum(), sum, "TCP checksum of every segment");
                assert!(f.len() <= 14 + 1500, "segment fits the MTU");
                Some((tcp.sequence_number(), tcp.payload().len()))
            })
            .collect()
    };
    let got = collect(&mut ports, |got| {
        data_segments(got).iter().map(|s| s.1).sum::<usize>() >= 10 * 1460
    });
    let segments = data_segments(&got);
    let counters = ports[0].counters();
    assert!(
        counters.rx_gso_packets >= 1,
        "the kernel sent a GSO super-packet: {counters:?}"
    );
    assert!(
        counters.rx_gso_segments > counters.rx_gso_packets,
        "{counters:?}"
    );
    assert_eq!(counters.rx_malformed, 0);
    // Segments are contiguous from the first data byte, each at most one MSS.
    let mut expected = client_seq.wrapping_add(1);
    for (seq, len) in &segments {
        assert_eq!(*seq, expected, "contiguous sequence numbers");
        assert!(*len <= 1460);
        expected = expected.wrapping_add(*len as u32);
    }
    drop(ports);
    let _ = client.join();
}

#[test]
fn a_kernel_udp_gso_super_packet_is_segmented_into_datagrams() {
    udp_gso_read_is_cut_into_datagrams(false);
}

/// With super-frames on a UDP GSO read is still cut on receive: its datagrams may
/// each carry a packet of their own (a VXLAN train the kernel merged and routed to
/// the host port), which decapsulating one super-frame would lose.
#[test]
fn with_super_frames_on_a_udp_gso_read_is_still_cut_into_datagrams() {
    udp_gso_read_is_cut_into_datagrams(true);
}

fn udp_gso_read_is_cut_into_datagrams(super_frames: bool) {
    let ns = Netns::new(if super_frames { "usosf" } else { "uso" });
    let (mut ports, _config) = open_with(&ns, "hwt2", 1, super_frames);
    assert_ne!(ports[0].offloads() & 0x20, 0, "USO4 offered to the kernel");
    ns.sh("ip addr add 198.18.22.1/24 dev hwt2 && ip route add 198.19.22.0/24 dev hwt2");
    // The VXLAN port's GSO send makes the kernel emit one UDP GSO packet.
    let mut vxlan = {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        let config = UdpConfig::new(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 22, 1), 8472),
            PortId(5),
        );
        UdpPort::open(&config, 1).unwrap().pop().unwrap()
    };
    let frames: Vec<Vec<u8>> = (0..10u8)
        .map(|i| {
            udp_frame(
                [1; 6],
                [2; 6],
                [198, 18, 22, 1],
                [198, 19, 22, 9],
                8472,
                8472,
                &[i; 1200],
            )
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(vxlan.send(&refs).unwrap(), 10);
    assert!(vxlan.counters().tx_gso_sends >= 1);

    let is_ours =
        |f: &Vec<u8>| parse_udp(f).is_some_and(|(_, dst, _, _, _)| dst == [198, 19, 22, 9]);
    let got = collect(&mut ports, |got| {
        got[0].iter().filter(|f| is_ours(f)).count() >= 10
    });
    let datagrams: Vec<Vec<u8>> = got[0]
        .iter()
        .filter(|f| is_ours(f))
        .filter_map(|f| parse_udp(f))
        .map(|p| p.4)
        .collect();
    assert_eq!(datagrams.len(), 10);
    for (i, d) in datagrams.iter().enumerate() {
        assert_eq!(d, &vec![i as u8; 1200], "datagram {i} intact and in order");
    }
    for f in got[0].iter().filter(|f| is_ours(f)) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!()
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            udp.checksum(),
            udp.to_header()
                .calc_checksum_ipv4(&h, udp.payload())
                .unwrap()
        );
    }
    let counters = ports[0].counters();
    assert!(
        counters.rx_gso_packets >= 1,
        "the kernel sent a UDP GSO packet: {counters:?}"
    );
}

#[test]
fn a_run_of_tcp_segments_is_written_as_one_gso_packet_the_kernel_accepts() {
    let ns = Netns::new("gro");
    let (mut ports, config) = open(&ns, "hwt3", 1);
    ns.sh("ip addr add 198.18.23.1/24 dev hwt3 && ip route add 198.19.23.0/24 dev hwt3");
    let listener = {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        std::net::TcpListener::bind("198.18.23.1:8080").unwrap()
    };
    // The "pod" 198.19.23.9 connects through the TUN; the test plays its TCP.
    let frame = |seq: u32, ack: Option<u32>, syn: bool, psh: bool, payload: &[u8]| {
        let mut b = PacketBuilder::ethernet2(config.peer_mac.octets(), config.mac.octets())
            .ipv4([198, 19, 23, 9], [198, 18, 23, 1], 64)
            .tcp(41000, 8080, seq, 65535);
        if syn {
            b = b
                .syn()
                .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
                .unwrap();
        }
        if let Some(ack) = ack {
            b = b.ack(ack);
        }
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    };
    assert_eq!(
        ports[0]
            .send(&[&frame(1000, None, true, false, &[])])
            .unwrap(),
        1
    );
    let is_syn_ack = |f: &Vec<u8>| {
        SlicedPacket::from_ethernet(f).is_ok_and(
            |p| matches!(p.transport, Some(TransportSlice::Tcp(t)) if t.syn() && t.ack()),
        )
    };
    let got = collect(&mut ports, |got| got[0].iter().any(is_syn_ack));
    let syn_ack = got[0]
        .iter()
        .find(|f| is_syn_ack(f))
        .expect("the kernel answers the SYN");
    let Some(TransportSlice::Tcp(t)) = SlicedPacket::from_ethernet(syn_ack).unwrap().transport
    else {
        panic!()
    };
    let server_ack = t.sequence_number().wrapping_add(1);
    assert_eq!(
        ports[0]
            .send(&[&frame(1001, Some(server_ack), false, false, &[])])
            .unwrap(),
        1
    );
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // Twenty segments in one send: merged into one GSO write.
    let segments: Vec<Vec<u8>> = (0..20u32)
        .map(|i| {
            let payload = vec![b'a' + i as u8; 1000];
            frame(1001 + i * 1000, Some(server_ack), false, i == 19, &payload)
        })
        .collect();
    let refs: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
    assert_eq!(ports[0].send(&refs).unwrap(), 20);
    let mut received = vec![0u8; 20_000];
    std::io::Read::read_exact(&mut stream, &mut received).expect("the kernel delivers every byte");
    for (i, chunk) in received.chunks(1000).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == b'a' + i as u8),
            "segment {i} in order and intact"
        );
    }
    let c = ports[0].counters();
    assert_eq!((c.tx_gso_packets, c.tx_gso_segments), (1, 20), "{c:?}");
}

#[test]
fn a_burst_the_port_does_not_read_in_time_is_counted_as_overflow() {
    let ns = Netns::new("tunovf");
    let (ports, _config) = open(&ns, "hwt9", 1);
    ns.sh("ip addr add 198.18.21.1/24 dev hwt9 && ip route add 198.19.21.0/24 dev hwt9");
    // The queue holds 4,096 packets (more than the kernel's default 500, so a burst
    // of connects survives a descheduled worker); nobody reads, so 6,000 overflow it.
    assert!(ns.sh("ip link show hwt9").contains("qlen 4096"));
    {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        assert_eq!(ports[0].drops().overflow, 0);
    }
    {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        let s = UdpSocket::bind("198.18.21.1:0").unwrap();
        for _ in 0..6000 {
            let _ = s.send_to(b"burst", "198.19.21.9:9");
        }
    }
    // Read from the namespace the device lives in, as the worker does.
    let overflow = {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        ports[0].drops().overflow
    };
    assert!(
        (1000..=6000).contains(&overflow),
        "{overflow} frames counted as overflow"
    );
}

/// With super-frames on, a TSO read is one frame of the batch, marked [`Gso`] with a
/// partial checksum that the one segmentation code completes per segment; and a
/// super-frame the pipeline built is written back with one GSO `writev` whose bytes
/// a kernel socket receives intact.
#[test]
fn a_tso_read_is_one_super_frame_and_a_super_frame_is_one_gso_write() {
    let ns = Netns::new("sup");
    let (mut ports, config) = open_with(&ns, "hwt6", 1, true);
    ns.sh("ip addr add 198.18.26.1/24 dev hwt6 && ip route add 198.19.26.0/24 dev hwt6");
    let listener = {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        std::net::TcpListener::bind("198.18.26.1:8080").unwrap()
    };
    let mut batch = PacketBatch::new();
    // Reads until `want` picks a frame; returns it with its GSO description.
    let mut read_until = |ports: &mut [TunPort], want: &dyn Fn(&[u8]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut frames = 0;
        while Instant::now() < deadline {
            batch.clear();
            if ports[0].recv(&mut batch).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            frames += batch.len();
            for i in 0..batch.len() {
                let f = batch.packet(i).unwrap();
                if want(f) {
                    return (f.to_vec(), batch.gso(i), frames);
                }
            }
        }
        panic!("no such frame within 5 s");
    };
    let tcp_of = |f: &[u8]| match SlicedPacket::from_ethernet(f).ok()?.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.syn(), t.sequence_number(), t.payload().len())),
        _ => None,
    };

    // The kernel sends: it connects to a "pod" the test plays, and writes 60 kB.
    let ns_name = ns.name.clone();
    let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let client = std::thread::spawn(move || {
        let _inside = NetnsGuard::enter(&ns_name).unwrap();
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([198, 19, 26, 9], 80)),
            Duration::from_secs(5),
        )
        .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&sent);
        std::thread::sleep(Duration::from_millis(500));
    });
    let (syn, gso, _) = read_until(&mut ports, &|f| tcp_of(f).is_some_and(|t| t.0));
    assert_eq!(gso, None, "a SYN is a single packet");
    let Some(TransportSlice::Tcp(t)) = SlicedPacket::from_ethernet(&syn).unwrap().transport else {
        panic!()
    };
    let (client_port, client_seq) = (t.source_port(), t.sequence_number());
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2(config.peer_mac.octets(), config.mac.octets())
        .ipv4([198, 19, 26, 9], [198, 18, 26, 1], 64)
        .tcp(80, client_port, 5000, 65535)
        .syn()
        .ack(client_seq.wrapping_add(1))
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .unwrap()
        .write(&mut syn_ack, &[])
        .unwrap();
    assert_eq!(ports[0].send(&[&syn_ack]).unwrap(), 1);
    let (frame, gso, _) = read_until(&mut ports, &|f| tcp_of(f).is_some_and(|t| t.2 > 1460));
    let gso = gso.expect("a TSO read arrives as a super-frame");
    assert_eq!(
        (gso.kind, gso.size, gso.hdr_len, gso.l3),
        (GsoKind::TcpV4, 1460, 40, 14)
    );
    let c = ports[0].counters();
    assert!(
        c.rx_gso_packets >= 1 && c.rx_gso_segments > c.rx_gso_packets,
        "{c:?}"
    );
    // The one segmentation code cuts it as the kernel's software GSO would:
    // complete checksums, contiguous sequence numbers, the bytes written.
    let segmenter = Segmenter::for_frame(&frame, gso).unwrap();
    assert!(segmenter.count() > 1);

    let mut out = [0u8; 2048];
    let mut payload = Vec::new();
    let mut expected_seq = client_seq.wrapping_add(1);
    for i in 0..segmenter.count() {
        let len = segmenter.write_frame(&frame, gso, i, &mut out).unwrap();
        let (seq, data) = checked_tcp4(&out[..len]).expect("IPv4/TCP");
        assert_eq!(seq, expected_seq);
        assert!(len <= 14 + 1500);
        expected_seq = expected_seq.wrapping_add(data.len() as u32);
        payload.extend_from_slice(&data);
    }
    assert_eq!(&payload[..], &data[..payload.len()]);
    let _ = client.join();

    // The other way: a "pod" connects to the kernel's listener; the test writes a
    // 40 kB super-frame with a partial checksum, as the pipeline forwards one.
    let frame_of = |seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]| {
        let mut b = PacketBuilder::ethernet2(config.peer_mac.octets(), config.mac.octets())
            .ipv4([198, 19, 26, 9], [198, 18, 26, 1], 64)
            .tcp(41000, 8080, seq, 65535);
        if syn {
            b = b
                .syn()
                .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
                .unwrap();
        }
        if let Some(ack) = ack {
            b = b.ack(ack);
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    };
    assert_eq!(
        ports[0].send(&[&frame_of(1000, None, true, &[])]).unwrap(),
        1
    );
    let (syn_ack, _, _) = read_until(&mut ports, &|f| {
        SlicedPacket::from_ethernet(f).is_ok_and(
            |p| matches!(p.transport, Some(TransportSlice::Tcp(t)) if t.syn() && t.ack()),
        )
    });
    let Some(TransportSlice::Tcp(t)) = SlicedPacket::from_ethernet(&syn_ack).unwrap().transport
    else {
        panic!()
    };
    let server_ack = t.sequence_number().wrapping_add(1);
    assert_eq!(
        ports[0]
            .send(&[&frame_of(1001, Some(server_ack), false, &[])])
            .unwrap(),
        1
    );
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let mut sup = frame_of(1001, Some(server_ack), false, &body);
    // Partial checksum: the pseudo-header sum, as the kernel leaves it.
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(198, 19, 26, 9),
        Ipv4Addr::new(198, 18, 26, 1),
        6,
        (20 + body.len()) as u16,
    );
    sup[14 + 36..14 + 38].copy_from_slice(&pseudo.to_be_bytes());
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: 1000,
        hdr_len: 40,
        l3: 14,
    };
    assert_eq!(ports[0].send_super(&sup, gso).unwrap(), SuperSend::Sent);
    let mut received = vec![0u8; body.len()];
    std::io::Read::read_exact(&mut stream, &mut received).expect("the kernel delivers every byte");
    assert_eq!(received, body);
    let c = ports[0].counters();
    assert_eq!((c.tx_gso_packets, c.tx_gso_segments), (1, 40), "{c:?}");
}

/// Forwards every frame to the other of two ports, counting pipeline passes.
struct Crossover(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl hybridway_dataplane::worker::Processor for Crossover {
    fn process(
        &mut self,
        frame: &mut hybridway_dataplane::Frame<'_>,
        _: &hybridway_dataplane::tables::Tables,
        _: hybridway_dataplane::Now,
    ) -> hybridway_dataplane::Verdict {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = if frame.meta.in_port == PortId(1) {
            2
        } else {
            1
        };
        hybridway_dataplane::Verdict::Forward { port: PortId(port) }
    }
}

/// A worker between two real TUN devices, the way the TUN underlay runs (pod
/// side -> dataplane -> host side): a kernel TCP stream crosses it with one
/// pipeline pass per TSO read and one GSO write per pass, and arrives intact.
#[test]
fn a_worker_forwards_a_tcp_stream_between_tuns_one_pass_and_one_write_per_tso_read() {
    use hybridway_dataplane::tables::{
        Mode, NodeSettings, RouteTableBuilder, SharedTables, Tables,
    };
    use hybridway_dataplane::wire::MacAddr;
    use hybridway_dataplane::worker::{PoolConfig, WorkerPool};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let client_ns = Netns::new("wsc");
    let server_ns = Netns::new("wss");
    let open_in = |ns: &Netns, name: &str, id: u16| {
        let _inside = NetnsGuard::enter(&ns.name).unwrap();
        let mut config = TunConfig::new(name, 1, PortId(id));
        config.mtu = Some(1500);
        config.super_frames = true;
        TunPort::open(&config).unwrap().pop().unwrap()
    };
    let a = open_in(&client_ns, "hwt7a", 1);
    let b = open_in(&server_ns, "hwt7b", 2);
    client_ns.sh("ip addr add 198.18.27.1/24 dev hwt7a && ip route add 198.19.27.0/24 dev hwt7a");
    server_ns.sh(
        "ip addr add 198.19.27.9/24 dev hwt7b && ip route add 198.18.27.0/24 dev hwt7b \
         && sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.hwt7b.rp_filter=0",
    );
    let tables = Arc::new(SharedTables::new(Tables {
        generation: 0,
        node: NodeSettings {
            mode: Mode::Underlay,
            node_addr: Ipv4Addr::new(198, 18, 27, 1),
            node_addr_v6: None,
            uplink_port: PortId(2),
            routed_port: PortId(2),
            host_port: None,
            uplink_mac: MacAddr::ZERO,
            uplink_mtu: 1500,
            vtep_mac: MacAddr::ZERO,
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: false,
            gateway_v4: Ipv4Addr::new(198, 19, 27, 1),
            host_pod_addr: None,
            gateway_v6: None,
            gateway_mac: MacAddr::ZERO,
            snat: false,
        },
        routes: RouteTableBuilder::new().build(),
        no_snat: Vec::new(),
        known_vteps: Default::default(),
        services: Default::default(),
    }));
    let passes = Arc::new(AtomicU64::new(0));
    let cfg = PoolConfig {
        workers: 1,
        sweep_interval: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let p = Arc::clone(&passes);
    let pool = WorkerPool::start(&cfg, tables, move |_| Crossover(Arc::clone(&p))).unwrap();
    pool.add_port(0, Box::new(a), true).unwrap();
    pool.add_port(0, Box::new(b), true).unwrap();

    let listener = {
        let _inside = NetnsGuard::enter(&server_ns.name).unwrap();
        std::net::TcpListener::bind("198.19.27.9:80").unwrap()
    };
    const BYTES: usize = 4 << 20;
    let ns_name = client_ns.name.clone();
    let client = std::thread::spawn(move || {
        let _inside = NetnsGuard::enter(&ns_name).unwrap();
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([198, 19, 27, 9], 80)),
            Duration::from_secs(5),
        )
        .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let data: Vec<u8> = (0..BYTES).map(|i| (i % 249) as u8).collect();
        stream.write_all(&data).unwrap();
    });
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = vec![0u8; BYTES];
    std::io::Read::read_exact(&mut stream, &mut received).expect("every byte crosses");
    client.join().unwrap();
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 249) as u8),
        "the bytes arrive intact and in order"
    );

    // Counters: the port's totals are refreshed on the worker's sweep (every 20 ms
    // here, later on a loaded machine): re-read them until they hold or 10 s pass.
    let w = pool.counters().worker(0);
    let read = || {
        let (rx, tx) = (w.port(PortId(1)), w.port(PortId(2)));
        (
            rx.rx_super.get(),
            rx.rx_super_frames.get(),
            tx.tx_super.get(),
            w.rx_packets(PortId(1)),
            passes.load(Ordering::Relaxed),
        )
    };
    // Without super-frames every segment is a pass; with them, one per read plus
    // the few single packets (handshake, the last short segment).
    let hold = |(reads, segments, writes, data_passes, passes): (u64, u64, u64, u64, u64)| {
        reads > 0
            && segments > 4 * reads
            && writes >= reads
            && data_passes < reads + segments / 4
            && passes >= data_passes
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    while !hold(last) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        last = read();
    }
    let (reads, segments, writes, data_passes, passes) = last;
    assert!(
        reads > 0 && segments > 4 * reads,
        "TSO reads: {reads}, segments {segments}"
    );
    assert!(
        writes >= reads,
        "every TSO read left as one GSO write: {writes} writes, {reads} reads"
    );
    assert!(
        data_passes < reads + segments / 4,
        "pipeline passes {data_passes} for {reads} TSO reads of {segments} segments"
    );
    assert!(
        passes >= data_passes,
        "{passes} passes seen by the pipeline"
    );
}
