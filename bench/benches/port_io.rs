//! Port I/O against the kernel (root; namespaces from 198.18.0.0/15, removed after):
//!
//! * `af_xdp_veth`: 64 frames sent by one AF_XDP socket on a veth end and received
//!   by another on the other end (both in copy mode, steering everything).
//! * `tun_forward`: 64 UDP packets written to a TUN, forwarded by the kernel back
//!   into the same TUN and read again (write + kernel routing + read).
//! * `vxlan_udp`: 64 VXLAN frames of 1000-byte payload from one VXLAN UDP port to
//!   another across a veth (UDP GSO on send, GRO on receive).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)] // setup failures abort the bench

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::PortId;
use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_dataplane::port::tun::{TunConfig, TunPort};
use hybridway_dataplane::port::udp::{UdpConfig, UdpPort};
use hybridway_dataplane::port::xdp::{AttachMode, SteerRules, XdpConfig, XdpPort, XdpSteering};
use hybridway_dataplane::port::{BATCH_SIZE, PacketBatch, Port};
use hybridway_lab::Netns;

/// A command in the root namespace (the port benches need root).
fn sh(cmd: &str) {
    hybridway_lab::sh(&["sh", "-c", cmd]);
}

/// An Ethernet/IPv4/UDP frame with a valid header checksum.
fn udp_frame(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (28 + payload) as u16;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0x5a, payload));
    f
}

/// Sends `frames` on `tx` and reads until as many arrived on `rx` (or 1 s passed).
fn round(tx: &mut dyn Port, rx: &mut dyn Port, frames: &[&[u8]], batch: &mut PacketBatch) -> usize {
    let mut sent = 0;
    while sent < frames.len() {
        sent += tx.send(&frames[sent..]).unwrap();
        tx.flush().unwrap();
    }
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while got < frames.len() && Instant::now() < deadline {
        batch.clear();
        got += rx.recv(batch).unwrap();
    }
    got
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("port_io");
    group.throughput(Throughput::Elements(BATCH_SIZE as u64));

    {
        let a = Netns::new("xa");
        let b = Netns::new("xb");
        sh(&format!(
            "ip link add bxa netns {} type veth peer name bxb netns {} && \
             ip -n {} link set bxa up && ip -n {} link set bxb up",
            a.name, b.name, a.name, b.name
        ));
        let open = |ns: &Netns, ifname: &str| {
            let _inside = NetnsGuard::enter(&ns.name).unwrap();
            let steering =
                XdpSteering::attach(ifname, SteerRules::everything(), AttachMode::Auto).unwrap();
            XdpPort::open(&XdpConfig::new(ifname, 0, PortId(1)), steering).unwrap()
        };
        let mut pa = open(&a, "bxa");
        let mut pb = open(&b, "bxb");
        let frames: Vec<Vec<u8>> = (0..BATCH_SIZE)
            .map(|i| {
                udp_frame(
                    [2, 0, 0, 0, 0, 2],
                    [198, 18, 40, 1],
                    [198, 18, 40, 2],
                    i as u16,
                    18,
                )
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut batch = PacketBatch::new();
        group.bench_function("af_xdp_veth_64B", |bench| {
            bench.iter(|| round(&mut pa, &mut pb, &refs, &mut batch));
        });
    }

    {
        let ns = Netns::new("tn");
        let mut ports = {
            let _inside = NetnsGuard::enter(&ns.name).unwrap();
            TunPort::open(&TunConfig::new("hwbt0", 1, PortId(2))).unwrap()
        };
        // Packets to 198.19.41.0/24 written into the TUN are forwarded back into it.
        sh(&format!(
            "ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1 && \
             ip netns exec {n} sysctl -qw net.ipv4.conf.all.rp_filter=0 && \
             ip netns exec {n} sysctl -qw net.ipv4.conf.hwbt0.rp_filter=0 && \
             ip -n {n} addr add 198.18.41.1/24 dev hwbt0 && \
             ip -n {n} route add 198.19.41.0/24 dev hwbt0",
            n = ns.name
        ));
        let frames: Vec<Vec<u8>> = (0..BATCH_SIZE)
            .map(|i| udp_frame([0; 6], [198, 18, 41, 7], [198, 19, 41, 9], i as u16, 18))
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut batch = PacketBatch::new();
        let port = ports.first_mut().unwrap();
        group.bench_function("tun_forward_64B", |bench| {
            bench.iter(|| {
                let mut sent = 0;
                while sent < refs.len() {
                    sent += port.send(&refs[sent..]).unwrap();
                }
                let mut got = 0;
                let deadline = Instant::now() + Duration::from_secs(1);
                while got < refs.len() && Instant::now() < deadline {
                    batch.clear();
                    got += port.recv(&mut batch).unwrap();
                }
                got
            });
        });
    }

    {
        let a = Netns::new("ua");
        let b = Netns::new("ub");
        sh(&format!(
            "ip link add bua netns {a} type veth peer name bub netns {b} && \
             ip -n {a} addr add 198.18.42.1/24 dev bua && ip -n {a} link set bua up && \
             ip -n {b} addr add 198.18.42.2/24 dev bub && ip -n {b} link set bub up",
            a = a.name,
            b = b.name
        ));
        let open = |ns: &Netns, addr: [u8; 4]| {
            let _inside = NetnsGuard::enter(&ns.name).unwrap();
            let local = std::net::SocketAddrV4::new(addr.into(), 8472);
            UdpPort::open(&UdpConfig::new(local, PortId(3)), 1)
                .unwrap()
                .pop()
                .unwrap()
        };
        let mut pa = open(&a, [198, 18, 42, 1]);
        let mut pb = open(&b, [198, 18, 42, 2]);
        let frames: Vec<Vec<u8>> = (0..BATCH_SIZE)
            .map(|_| udp_frame([0; 6], [198, 18, 42, 1], [198, 18, 42, 2], 8472, 1000))
            .collect();
        // udp_frame's destination port is 9; VXLAN goes to 8472.
        let frames: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|mut f| {
                f[36..38].copy_from_slice(&8472u16.to_be_bytes());
                f
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut batch = PacketBatch::new();
        group.bench_function("vxlan_udp_1000B", |bench| {
            bench.iter(|| round(&mut pa, &mut pb, &refs, &mut batch));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
