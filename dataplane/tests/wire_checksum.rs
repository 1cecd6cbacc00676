//! Every incremental checksum update (RFC 1624) equals a full recomputation.
//!
//! Packets are built with random fields, their checksums filled by smoltcp (an
//! independent implementation), rewritten with `wire::rewrite` (what the pipeline's
//! NAT and forwarding run), and compared byte for byte with the same rewrite followed
//! by smoltcp recomputing every checksum.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;

use hybridway_dataplane::wire::PacketInfo;
use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::classify::{Packet, V4, classify};
use hybridway_dataplane::wire::icmp_quote::quoted;
use hybridway_dataplane::wire::rewrite::{
    Side, decrement_ttl_v4, fill_icmp_checksum, rewrite_destination, rewrite_side, rewrite_source,
};
use proptest::prelude::*;
use smoltcp::wire::{Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Udp { zero_checksum: bool },
    Icmp { request: bool },
}

#[derive(Clone, Debug)]
struct Spec {
    kind: Kind,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    a: u16,
    b: u16,
    ttl: u8,
    id: u16,
    df: bool,
    options: Vec<u8>,
    payload: Vec<u8>,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Tcp),
        any::<bool>().prop_map(|zero_checksum| Kind::Udp { zero_checksum }),
        any::<bool>().prop_map(|request| Kind::Icmp { request }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        kind(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        1u8..=255,
        any::<u16>(),
        any::<bool>(),
        (0usize..=10).prop_map(|words| vec![1u8; words * 4]), // NOP options
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, s, d, a, b, ttl, id, df, options, payload)| Spec {
            kind,
            src: Ipv4Addr::from_bits(s),
            dst: Ipv4Addr::from_bits(d),
            a,
            b,
            ttl,
            id,
            df,
            options,
            payload,
        })
}

/// Recomputes every checksum of an Ethernet+IPv4 frame from scratch with smoltcp.
fn fill_all(frame: &mut [u8], kind: Kind) {
    let mut ip = Ipv4Packet::new_checked(&mut frame[14..]).unwrap();
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    let l4 = ip.payload_mut();
    match kind {
        Kind::Tcp => TcpPacket::new_checked(l4)
            .unwrap()
            .fill_checksum(&src, &dst),
        Kind::Udp {
            zero_checksum: true,
        } => UdpPacket::new_checked(l4).unwrap().set_checksum(0),
        Kind::Udp {
            zero_checksum: false,
        } => UdpPacket::new_checked(l4)
            .unwrap()
            .fill_checksum(&src, &dst),
        Kind::Icmp { .. } => Icmpv4Packet::new_checked(l4).unwrap().fill_checksum(),
    }
}

fn build(s: &Spec) -> Vec<u8> {
    let l4_hdr = match s.kind {
        Kind::Tcp => 20,
        _ => 8,
    };
    let ihl = 20 + s.options.len();
    let total = ihl + l4_hdr + s.payload.len();
    let mut f = vec![0u8; 14 + total];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&s.id.to_be_bytes());
    ip[6] = if s.df { 0x40 } else { 0 };
    ip[8] = s.ttl;
    ip[9] = match s.kind {
        Kind::Tcp => 6,
        Kind::Udp { .. } => 17,
        Kind::Icmp { .. } => 1,
    };
    ip[12..16].copy_from_slice(&s.src.octets());
    ip[16..20].copy_from_slice(&s.dst.octets());
    ip[20..ihl].copy_from_slice(&s.options);
    let l4 = &mut ip[ihl..];
    match s.kind {
        Kind::Tcp => {
            l4[0..2].copy_from_slice(&s.a.to_be_bytes());
            l4[2..4].copy_from_slice(&s.b.to_be_bytes());
            l4[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = 0x18;
        }
        Kind::Udp { .. } => {
            l4[0..2].copy_from_slice(&s.a.to_be_bytes());
            l4[2..4].copy_from_slice(&s.b.to_be_bytes());
            l4[4..6].copy_from_slice(&((8 + s.payload.len()) as u16).to_be_bytes());
        }
        Kind::Icmp { request } => {
            l4[0] = if request { 8 } else { 0 };
            l4[4..6].copy_from_slice(&s.a.to_be_bytes());
            l4[6..8].copy_from_slice(&s.b.to_be_bytes());
        }
    }
    l4[l4_hdr..].copy_from_slice(&s.payload);
    fill_all(&mut f, s.kind);
    f
}

#[derive(Clone, Copy, Debug)]
enum Change {
    /// New source address and port (echo identifier for ICMP).
    Source(u32, u16),
    Destination(u32, u16),
    Ttl,
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<u32>(), any::<u16>()).prop_map(|(a, p)| Change::Source(a, p)),
            (any::<u32>(), any::<u16>()).prop_map(|(a, p)| Change::Destination(a, p)),
            Just(Change::Ttl),
        ],
        1..6,
    )
}

/// The frame classified as the pipeline does (again after every rewrite: the
/// addresses it holds are the ones a rewrite replaces).
fn v4(frame: &[u8]) -> V4 {
    match classify(frame) {
        Ok(Packet::V4(ip)) => ip,
        other => panic!("not IPv4: {other:?}"),
    }
}

fn apply(frame: &mut [u8], change: Change) {
    let ip = v4(frame);
    let l4 = ip.l4.unwrap();
    match change {
        Change::Source(a, p) => rewrite_source(frame, &ip, &l4, Ipv4Addr::from_bits(a), p),
        Change::Destination(a, p) => {
            rewrite_destination(frame, &ip, &l4, Ipv4Addr::from_bits(a), p)
        }
        Change::Ttl => decrement_ttl_v4(frame, &ip),
    }
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn incremental_equals_full(s in spec(), changes in changes()) {
        let mut frame = build(&s);
        prop_assert!(PacketInfo::parse(&frame).unwrap().ipv4_checksum_ok);
        for c in &changes {
            apply(&mut frame, *c);
        }
        // The all-zero ICMP message (echo reply, id 0, seq 0, zero payload) is the one
        // input where eqn. 3 yields 0x0000 and a full sum 0xffff; both verify.
        let l4 = 14 + 20 + s.options.len();
        let all_zero_icmp = matches!(s.kind, Kind::Icmp { .. })
            && frame[l4] == 0 && frame[l4 + 1] == 0 && frame[l4 + 4..].iter().all(|&b| b == 0);
        prop_assume!(!all_zero_icmp);
        let mut full = frame.clone();
        fill_all(&mut full, s.kind);
        prop_assert_eq!(&frame, &full);
        if let Kind::Udp { zero_checksum: true } = s.kind {
            prop_assert_eq!(&frame[l4 + 6..l4 + 8], &[0, 0]);
        }
        // And the rewritten frame still classifies, with a valid header checksum.
        prop_assert!(PacketInfo::parse(&frame).unwrap().ipv4_checksum_ok);
    }

    #[test]
    fn word_and_address_updates_match_resum(
        words in proptest::collection::vec(any::<u16>(), 2..40),
        idx in any::<prop::sample::Index>(),
        new in any::<u16>(),
        new32 in any::<u32>(),
    ) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        prop_assume!(bytes.iter().any(|&b| b != 0));
        let c = checksum::checksum(&bytes);
        let i = idx.index(words.len() - 1);
        // 16-bit word.
        let mut w2 = words.clone();
        w2[i] = new;
        let b2: Vec<u8> = w2.iter().flat_map(|w| w.to_be_bytes()).collect();
        if b2.iter().any(|&b| b != 0) {
            prop_assert_eq!(checksum::update_u16(c, words[i], new), checksum::checksum(&b2));
        }
        // 32-bit value over words i, i+1.
        let old32 = (u32::from(words[i]) << 16) | u32::from(words[i + 1]);
        let mut w3 = words.clone();
        w3[i] = (new32 >> 16) as u16;
        w3[i + 1] = new32 as u16;
        let b3: Vec<u8> = w3.iter().flat_map(|w| w.to_be_bytes()).collect();
        if b3.iter().any(|&b| b != 0) {
            prop_assert_eq!(checksum::update_u32(c, old32, new32), checksum::checksum(&b3));
        }
    }

    /// A rewrite whose checksum comes out as zero must send 0xffff (RFC 768), as a full
    /// recomputation does; random rewrites hit that 1 time in 65535, so aim for it.
    #[test]
    fn udp_computed_zero_becomes_all_ones(
        s in spec().prop_map(|mut s| { s.kind = Kind::Udp { zero_checksum: false }; s }),
    ) {
        let mut frame = build(&s);
        let info = PacketInfo::parse(&frame).unwrap();
        let l4 = info.l4_offset();
        let hc = u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]]);
        // HC' = ~(~HC + ~m + m') is zero exactly when ~HC + ~m + m' folds to 0xffff.
        let t = checksum::combine(&[!hc, !s.a]);
        let target = 0xffff - t;
        prop_assume!(target != 0);
        let ip = v4(&frame);
        rewrite_source(&mut frame, &ip, &ip.l4.unwrap(), ip.src, target).unwrap();
        prop_assert_eq!(&frame[l4 + 6..l4 + 8], &[0xff, 0xff]);
        let mut full = frame.clone();
        fill_all(&mut full, s.kind);
        prop_assert_eq!(frame, full);
    }

    /// Un-NAT of an ICMP error: rewriting the quote equals quoting the rewritten packet.
    #[test]
    fn quoted_rewrite_equals_quoting_the_rewritten_packet(
        s in spec().prop_filter("tcp/udp", |s| matches!(s.kind, Kind::Tcp | Kind::Udp { .. })),
        new_addr in any::<u32>(),
        new_port in any::<u16>(),
        source_side in any::<bool>(),
        extra in 0usize..32,
    ) {
        let original = build(&s);
        let info = PacketInfo::parse(&original).unwrap();
        let side = if source_side { Side::Source } else { Side::Destination };
        let new_addr = Ipv4Addr::from_bits(new_addr);
        // Expected: the original, rewritten as a NAT would, then quoted.
        let mut rewritten = original.clone();
        let ip = v4(&original);
        let l4 = ip.l4.unwrap();
        if source_side {
            rewrite_source(&mut rewritten, &ip, &l4, new_addr, new_port).unwrap();
        } else {
            rewrite_destination(&mut rewritten, &ip, &l4, new_addr, new_port).unwrap();
        }
        // The quote: IP header + transport header (+ some payload), as routers do.
        let quote_len = (info.l4_offset() - 14 + 8 + extra).min(original.len() - 14);
        let error = |quoted: &[u8]| {
            let mut e = vec![0u8; 14 + 20 + 8 + quoted.len()];
            e[..14].copy_from_slice(&original[..14]);
            let ip = &mut e[14..];
            ip[0] = 0x45;
            let total = (20 + 8 + quoted.len()) as u16;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64;
            ip[9] = 1;
            ip[12..16].copy_from_slice(&[198, 18, 0, 254]);
            ip[16..20].copy_from_slice(&[198, 18, 0, 1]);
            ip[20] = 11; // time exceeded
            ip[28..].copy_from_slice(quoted);
            let mut ipp = Ipv4Packet::new_checked(&mut e[14..]).unwrap();
            ipp.fill_checksum();
            Icmpv4Packet::new_checked(ipp.payload_mut()).unwrap().fill_checksum();
            e
        };
        let mut got = error(&original[14..14 + quote_len]);
        let want = error(&rewritten[14..14 + quote_len]);
        let outer = v4(&got);
        let icmp = outer.l4.unwrap();
        let (q, quoted_dst) = quoted(&got, &outer, &icmp).unwrap();
        prop_assert!(matches!(q.l4.proto, 6 | 17), "quote transport {}", q.l4.proto);
        let old = if source_side { q.src } else { quoted_dst };
        let end = outer.end();
        rewrite_side(&mut got[..end], q.l3, old, &q.l4, new_addr, new_port, side).unwrap();
        fill_icmp_checksum(&mut got, icmp.off, end).unwrap();
        // A quoted TCP checksum beyond the quote cannot be updated; the rest must match.
        let tcp_sum_cut = matches!(s.kind, Kind::Tcp) && quote_len < info.l4_offset() - 14 + 18;
        prop_assume!(!tcp_sum_cut);
        prop_assert_eq!(got, want);
    }
}
