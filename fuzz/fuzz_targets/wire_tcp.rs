//! TCP: getters and options after `new_checked`, Repr parse → emit → parse.
#![no_main]

use hybridway_dataplane::wire::{ChecksumCapabilities, IpAddress, TcpPacket, TcpRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s: IpAddress = std::net::Ipv4Addr::new(198, 18, 0, 1).into();
    let d: IpAddress = std::net::Ipv4Addr::new(198, 19, 0, 1).into();
    let Ok(p) = TcpPacket::new_checked(data) else {
        return;
    };
    let _ = (
        p.src_port(),
        p.dst_port(),
        p.seq_number(),
        p.ack_number(),
        p.header_len(),
        p.window_len(),
    );
    let _ = (
        p.fin(),
        p.syn(),
        p.rst(),
        p.psh(),
        p.ack(),
        p.urg(),
        p.ece(),
        p.cwr(),
        p.ns(),
    );
    let _ = (
        p.checksum(),
        p.urgent_at(),
        p.options(),
        p.payload(),
        p.segment_len(),
    );
    let Ok(repr) = TcpRepr::parse(&p, &s, &d, &ChecksumCapabilities::ignored()) else {
        return;
    };
    let mut out = vec![0xa5u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut out[..]),
        &s,
        &d,
        &ChecksumCapabilities::default(),
    );
    let o = TcpPacket::new_checked(&out[..]).unwrap();
    assert!(o.verify_checksum(&s, &d));
    let again = TcpRepr::parse(&o, &s, &d, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        (again.src_port, again.dst_port, again.seq_number),
        (repr.src_port, repr.dst_port, repr.seq_number)
    );
    assert_eq!(
        (again.ack_number, again.window_len, again.payload),
        (repr.ack_number, repr.window_len, repr.payload)
    );
    assert_eq!(again.control, repr.control);
});
