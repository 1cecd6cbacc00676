//! Ethernet and 802.1Q: parse arbitrary bytes, emit the Repr back, compare.
#![no_main]

use hybridway_dataplane::wire::{EthernetFrame, EthernetRepr, VlanPacket, VlanRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = EthernetFrame::new_checked(data) else {
        assert!(data.len() < 14);
        return;
    };
    let (dst, src, ethertype, payload) = (
        frame.dst_addr(),
        frame.src_addr(),
        frame.ethertype(),
        frame.payload(),
    );
    let Ok(repr) = EthernetRepr::parse(&frame) else {
        return;
    };
    assert_eq!(
        (repr.dst_addr, repr.src_addr, repr.ethertype),
        (dst, src, ethertype)
    );
    let mut out = vec![0xa5u8; data.len()];
    let mut o = EthernetFrame::new_unchecked(&mut out[..]);
    repr.emit(&mut o);
    o.payload_mut().copy_from_slice(payload);
    assert_eq!(&out[..], data);

    if u16::from(ethertype) == 0x8100 {
        let Ok(tag) = VlanPacket::new_checked(payload) else {
            assert!(payload.len() < 4);
            return;
        };
        let _ = (
            tag.tci(),
            tag.pcp(),
            tag.dei(),
            tag.vid(),
            tag.ethertype(),
            tag.payload(),
        );
        if let Ok(v) = VlanRepr::parse(&tag) {
            let mut buf = [0xa5u8; 4];
            v.emit(&mut VlanPacket::new_unchecked(&mut buf[..]));
            assert_eq!(&buf[..], &payload[..4]);
        }
    }
});
