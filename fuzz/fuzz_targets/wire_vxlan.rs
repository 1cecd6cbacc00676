//! VXLAN: getters after `new_checked`, Repr parse → emit, bytes equal for canonical
//! headers.
#![no_main]

use hybridway_dataplane::wire::{VxlanPacket, VxlanRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = VxlanPacket::new_checked(data) else {
        assert!(data.len() < 8);
        return;
    };
    let _ = (p.flags(), p.i_flag(), p.vni(), p.payload());
    let Ok(repr) = VxlanRepr::parse(&p) else {
        assert!(!p.i_flag());
        return;
    };
    assert!(repr.vni <= 0xff_ffff);
    let mut out = vec![0xa5u8; data.len()];
    let mut o = VxlanPacket::new_unchecked(&mut out[..]);
    repr.emit(&mut o);
    o.payload_mut().copy_from_slice(p.payload());
    assert_eq!(
        VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()).unwrap(),
        repr
    );
    let canonical = data[0] == 0x08 && data[1..4] == [0, 0, 0] && data[7] == 0;
    assert_eq!(canonical, out[..] == data[..]);
});
