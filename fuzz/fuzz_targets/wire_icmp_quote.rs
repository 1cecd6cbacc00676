//! The reader of the packet an ICMPv4 error quotes (what un-NAT of ICMP errors runs):
//! arbitrary bytes as the message after a valid IPv4 header, then the quote's
//! rewrite and the message checksum, as the pipeline does; nothing may panic or
//! leave the error's bounds.
#![no_main]

use std::net::Ipv4Addr;

use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::classify::{Packet, classify};
use hybridway_dataplane::wire::icmp_quote::{is_translatable_error, quoted};
use hybridway_dataplane::wire::rewrite::{Side, fill_icmp_checksum, rewrite_side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Ethernet + IPv4 (protocol ICMP) around the fuzzer's ICMP message.
    let Ok(total) = u16::try_from(20 + data.len()) else {
        return;
    };
    let mut f = vec![0u8; 14 + 20];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[22] = 64;
    f[23] = 1;
    f[26..30].copy_from_slice(&[198, 18, 0, 254]);
    f[30..34].copy_from_slice(&[198, 18, 0, 1]);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(data);
    let Ok(Packet::V4(outer)) = classify(&f) else {
        return;
    };
    let Some(icmp) = outer.l4 else {
        return;
    };
    let _ = is_translatable_error(icmp.icmp_type);
    let Some((q, _dst)) = quoted(&f, &outer, &icmp) else {
        return;
    };
    let end = outer.end();
    assert!(icmp.off + 8 <= q.l3 && q.l3 < q.l4.off && q.l4.off + 8 <= end);
    let to = Ipv4Addr::new(198, 19, 1, 10);
    let _ = rewrite_side(&mut f[..end], q.l3, q.src, &q.l4, to, 1234, Side::Source);
    fill_icmp_checksum(&mut f, icmp.off, end).expect("message is inside the frame");
    assert_eq!(checksum::sum(&f[icmp.off..end]), 0xffff);
});
