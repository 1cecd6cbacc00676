//! The one-pass classifier on arbitrary frames: offsets ordered and in bounds, and
//! NAT rewrites on whatever it accepts keep the frame classifiable with the same
//! shape and a header checksum that is exactly as valid as before.
#![no_main]

use std::net::Ipv4Addr;

use hybridway_dataplane::wire::icmp_quote::{QuotedPacket, QuotedSide, rewrite_quoted_v4};
use hybridway_dataplane::wire::rewrite::{
    decrement_ttl, set_dst_port, set_icmp_echo_id, set_ipv4_dst, set_ipv4_src, set_src_port,
};
use hybridway_dataplane::wire::{L3, PacketInfo, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = PacketInfo::parse(data) else {
        return;
    };
    assert!(info.l3_offset() <= info.l4_offset());
    assert!(info.l4_offset() <= info.payload_offset());
    assert!(info.payload_offset() <= info.l3_end());
    assert!(info.l3_end() <= data.len());
    let _ = info.flow_ports();
    if matches!(info.transport, Transport::IcmpError { .. }) {
        let _ = QuotedPacket::from_error(data, &info);
    }
    if info.l3 != L3::Ipv4 {
        return;
    }
    let mut f = data.to_vec();
    let _ = set_ipv4_src(&mut f, &info, Ipv4Addr::new(198, 18, 0, 9));
    let _ = set_ipv4_dst(&mut f, &info, Ipv4Addr::new(198, 19, 3, 7));
    let _ = set_src_port(&mut f, &info, 40000);
    let _ = set_dst_port(&mut f, &info, 8472);
    let _ = set_icmp_echo_id(&mut f, &info, 77);
    let _ = decrement_ttl(&mut f, &info);
    if matches!(info.transport, Transport::IcmpError { .. }) {
        let _ = rewrite_quoted_v4(
            &mut f,
            &info,
            QuotedSide::Source,
            Ipv4Addr::new(198, 19, 1, 2),
            1234,
        );
    }
    let after = PacketInfo::parse(&f).expect("rewritten frame still parses");
    assert_eq!(
        (
            after.l4_offset,
            after.payload_offset,
            after.l3_end,
            after.protocol
        ),
        (
            info.l4_offset,
            info.payload_offset,
            info.l3_end,
            info.protocol
        )
    );
    assert_eq!(after.ipv4_checksum_ok, info.ipv4_checksum_ok);
});
