//! VXLAN header, the view decapsulation runs: getters after `new_checked`, Repr
//! parse → `to_bytes` → parse gives the same VNI, bytes equal for canonical headers.
#![no_main]

use hybridway_dataplane::wire::{VxlanPacket, VxlanRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = VxlanPacket::new_checked(data) else {
        assert!(data.len() < 8);
        return;
    };
    let _ = (p.flags(), p.i_flag(), p.vni());
    let Ok(repr) = VxlanRepr::parse(&p) else {
        assert!(!p.i_flag());
        return;
    };
    assert!(repr.vni <= 0xff_ffff);
    let out = repr.to_bytes();
    assert_eq!(
        VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()).unwrap(),
        repr
    );
    let canonical = data[0] == 0x08 && data[1..4] == [0, 0, 0] && data[7] == 0;
    assert_eq!(canonical, out[..] == data[..8]);
});
