//! ARP: every getter after `new_checked`, then Repr parse → emit → parse.
#![no_main]

use hybridway_dataplane::wire::{ArpPacket, ArpRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = ArpPacket::new_checked(data) else {
        return;
    };
    let _ = (
        p.hardware_type(),
        p.protocol_type(),
        p.hardware_len(),
        p.protocol_len(),
        p.operation(),
    );
    let _ = (
        p.source_hardware_addr(),
        p.source_protocol_addr(),
        p.target_hardware_addr(),
        p.target_protocol_addr(),
    );
    let Ok(repr) = ArpRepr::parse(&p) else { return };
    let mut out = vec![0xa5u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
    assert_eq!(&out[..], &data[..repr.buffer_len()]);
    assert_eq!(
        ArpRepr::parse(&ArpPacket::new_checked(&out[..]).unwrap()).unwrap(),
        repr
    );
});
