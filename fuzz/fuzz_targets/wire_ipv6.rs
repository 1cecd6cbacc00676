//! IPv6: getters, Repr parse → emit → parse, and the extension-header walk never
//! leaves the packet.
#![no_main]

use hybridway_dataplane::wire::ipv6_ext;
use hybridway_dataplane::wire::{Ipv6Packet, Ipv6Repr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Ipv6Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.traffic_class(),
        p.flow_label(),
        p.payload_len(),
        p.next_header(),
        p.hop_limit(),
    );
    let _ = (p.src_addr(), p.dst_addr(), p.payload());
    let packet = &data[..40 + usize::from(p.payload_len())];
    if let Ok(w) = ipv6_ext::walk(packet, u8::from(p.next_header())) {
        assert!(w.offset >= 40 && w.offset <= packet.len());
    }
    let Ok(repr) = Ipv6Repr::parse(&p) else {
        return;
    };
    let mut out = vec![0xa5u8; repr.buffer_len() + repr.payload_len];
    let mut o = Ipv6Packet::new_unchecked(&mut out[..]);
    repr.emit(&mut o);
    o.payload_mut().copy_from_slice(p.payload());
    assert_eq!(
        Ipv6Repr::parse(&Ipv6Packet::new_checked(&out[..]).unwrap()).unwrap(),
        repr
    );
    // Traffic class and flow label are the only fields the Repr drops.
    assert_eq!(&out[4..], &packet[4..]);
});
