//! The classifier the pipeline runs on every frame: on arbitrary frames the
//! specialised IPv4 parser and the general one-pass parser give the same answer,
//! every offset is in bounds, and the NAT and forwarding rewrites on whatever it
//! accepts keep the frame classifying the same, with a valid header checksum.
#![no_main]

use std::net::Ipv4Addr;

use hybridway_dataplane::wire::classify::{Packet, classify, classify_with_packet_info};
use hybridway_dataplane::wire::rewrite::{decrement_ttl_v4, rewrite_destination, rewrite_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = classify(data);
    if data.get(12..14) == Some(&[0x08, 0x00][..]) {
        assert_eq!(packet, classify_with_packet_info(data));
    }
    let ip = match packet {
        Ok(Packet::V4(ip)) => ip,
        Ok(Packet::V6(ip)) => {
            assert!(ip.l3 + 40 <= ip.end() && ip.end() <= data.len());
            if let Some(l4) = ip.l4 {
                assert!(ip.l3 + 40 <= l4.off && l4.off <= ip.end());
            }
            return;
        }
        _ => return,
    };
    assert!(ip.l3 + ip.ihl <= ip.end() && ip.end() <= data.len());
    let Some(l4) = ip.l4 else {
        return;
    };
    assert!(l4.off == ip.l3 + ip.ihl && l4.off <= ip.end());
    let mut f = data.to_vec();
    let src = rewrite_source(&mut f, &ip, &l4, Ipv4Addr::new(198, 18, 0, 9), 40000);
    let Ok(Packet::V4(after)) = classify(&f) else {
        panic!("rewritten frame no longer classifies: {src:?}");
    };
    let dst = rewrite_destination(&mut f, &after, &l4, Ipv4Addr::new(198, 19, 3, 7), 8472);
    let Ok(Packet::V4(after)) = classify(&f) else {
        panic!("rewritten frame no longer classifies: {dst:?}");
    };
    if ip.ttl > 1 {
        decrement_ttl_v4(&mut f, &after).expect("TTL is in the header");
    }
    let Ok(Packet::V4(after)) = classify(&f) else {
        panic!("rewritten frame no longer classifies");
    };
    assert_eq!(
        (after.l3, after.ihl, after.total_len, after.proto),
        (ip.l3, ip.ihl, ip.total_len, ip.proto)
    );
    assert_eq!(after.l4.map(|l| l.off), Some(l4.off));
});
