//! ICMPv4 and ICMPv6: Repr parse → emit → parse, and our quoted-header view on the
//! same bytes.
#![no_main]

use std::net::Ipv6Addr;

use hybridway_dataplane::wire::icmp_quote::QuotedPacket;
use hybridway_dataplane::wire::{
    ChecksumCapabilities, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let caps = ChecksumCapabilities::ignored();
    if let Ok(p) = Icmpv4Packet::new_checked(data) {
        let _ = (
            p.msg_type(),
            p.msg_code(),
            p.checksum(),
            p.echo_ident(),
            p.echo_seq_no(),
            p.data(),
        );
        let _ = (p.header_len(), p.verify_checksum());
        if let Ok(q) = QuotedPacket::parse_v4(p.data()) {
            // Ports were read, so the 8 quoted transport bytes were there.
            if q.flow_ports().is_some() {
                assert!(q.l4_offset + 8 <= p.data().len());
            }
        }
        if let Ok(repr) = Icmpv4Repr::parse(&p, &caps) {
            let mut out = vec![0xa5u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut out[..]),
                &ChecksumCapabilities::default(),
            );
            let o = Icmpv4Packet::new_checked(&out[..]).unwrap();
            assert!(o.verify_checksum());
            assert_eq!(
                Icmpv4Repr::parse(&o, &ChecksumCapabilities::default()).unwrap(),
                repr
            );
        }
    }
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    if let Ok(p) = Icmpv6Packet::new_checked(data) {
        let _ = (
            p.msg_type(),
            p.msg_code(),
            p.checksum(),
            p.header_len(),
            p.payload(),
        );
        let _ = QuotedPacket::parse_v6(p.payload());
        if let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &p, &caps) {
            let mut out = vec![0xa5u8; repr.buffer_len()];
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut out[..]),
                &ChecksumCapabilities::default(),
            );
            let o = Icmpv6Packet::new_checked(&out[..]).unwrap();
            assert!(o.verify_checksum(&src, &dst));
        }
    }
});
