//! Shared by the `port_*` tests: frame builders and a readiness wait; the network
//! namespaces come from the lab crate (`hybridway_lab`). Addresses come from
//! 198.18.0.0/15.
#![allow(
    dead_code,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

#[allow(unused_imports)] // not every port test builds veth pairs
pub use hybridway_lab::{Netns, veth_pair};

/// An Ethernet/IPv4/UDP frame with valid checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build frame");
    out
}

/// Parses an Ethernet/IPv4/UDP frame into (src, dst, sport, dport, payload).
pub fn parse_udp(frame: &[u8]) -> Option<([u8; 4], [u8; 4], u16, u16, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        return None;
    };
    let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
        return None;
    };
    Some((
        ip.header().source(),
        ip.header().destination(),
        udp.source_port(),
        udp.destination_port(),
        udp.payload().to_vec(),
    ))
}

/// Parks on epoll (mio) until `fd` is readable or `timeout` passes, as an idle worker
/// does; true when it became readable.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> bool {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .expect("register");
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(timeout)).expect("poll");
    let ready = events
        .iter()
        .any(|e| e.token() == Token(0) && e.is_readable());
    let _ = poll.registry().deregister(&mut SourceFd(&fd));
    ready
}

/// The sequence number and payload of an Ethernet/IPv4/TCP frame, after checking
/// its IPv4 header checksum and its complete TCP checksum; `None` when it is not
/// IPv4/TCP.
pub fn checked_tcp4(frame: &[u8]) -> Option<(u32, Vec<u8>)> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (&p.net, &p.transport) else {
        return None;
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let sum = tcp
        .to_header()
        .calc_checksum_ipv4(&h, tcp.payload())
        .expect("a TCP length that fits");
    assert_eq!(tcp.checksum(), sum, "complete TCP checksum");
    Some((tcp.sequence_number(), tcp.payload().to_vec()))
}
