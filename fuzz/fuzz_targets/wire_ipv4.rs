//! IPv4: every getter after `new_checked`, Repr parse → emit → parse, and agreement
//! with the one-pass classifier.
#![no_main]

use std::net::IpAddr;

use hybridway_dataplane::wire::{ChecksumCapabilities, Ipv4Packet, Ipv4Repr, L3, PacketInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let caps = ChecksumCapabilities::default();
    let Ok(p) = Ipv4Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.header_len(),
        p.dscp(),
        p.ecn(),
        p.total_len(),
        p.ident(),
    );
    let _ = (
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.hop_limit(),
        p.next_header(),
    );
    let _ = (
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.verify_checksum(),
        p.payload(),
    );

    // The classifier sees the same header when it comes in an Ethernet frame.
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend_from_slice(data);
    match PacketInfo::parse(&frame) {
        Ok(info) => {
            assert_eq!(info.l3, L3::Ipv4);
            assert_eq!(info.src_ip, IpAddr::V4(p.src_addr()));
            assert_eq!(info.dst_ip, IpAddr::V4(p.dst_addr()));
            assert_eq!(info.ttl, p.hop_limit());
            assert_eq!(info.l3_end() - 14, usize::from(p.total_len()));
            // (`verify_checksum` is compiled to `true` under cfg(fuzzing) by smoltcp, so
            // the header checksum is compared in the unit tests, not here.)
        }
        // smoltcp accepts any version here; the classifier insists on 4. Otherwise
        // the only difference allowed is a transport header the classifier refused.
        Err(e) => assert!(
            p.version() != 4 || e == hybridway_dataplane::wire::ParseError::MalformedTransport,
            "{e:?}"
        ),
    }

    let Ok(repr) = Ipv4Repr::parse(&p, &caps) else {
        return;
    };
    let mut out = vec![0xa5u8; repr.buffer_len() + repr.payload_len];
    let mut o = Ipv4Packet::new_unchecked(&mut out[..]);
    repr.emit(&mut o, &caps);
    o.payload_mut()
        .copy_from_slice(&p.payload()[..repr.payload_len]);
    let again = Ipv4Repr::parse(&Ipv4Packet::new_checked(&out[..]).unwrap(), &caps).unwrap();
    assert_eq!(again, repr);
});
