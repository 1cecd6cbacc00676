//! UDP: getters, Repr parse → emit (with checksum) → parse, and the incremental port
//! update agreeing with a full recomputation.
#![no_main]

use std::net::Ipv4Addr;

use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::{ChecksumCapabilities, IpAddress, UdpPacket, UdpRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = Ipv4Addr::new(198, 18, 0, 1);
    let dst = Ipv4Addr::new(198, 19, 0, 1);
    let (s, d): (IpAddress, IpAddress) = (src.into(), dst.into());
    let Ok(p) = UdpPacket::new_checked(data) else {
        return;
    };
    let _ = (
        p.src_port(),
        p.dst_port(),
        p.len(),
        p.checksum(),
        p.payload(),
        p.verify_checksum(&s, &d),
    );
    let Ok(repr) = UdpRepr::parse(&p, &s, &d, &ChecksumCapabilities::ignored()) else {
        return;
    };
    let payload = p.payload();
    let mut out = vec![0xa5u8; repr.header_len() + payload.len()];
    let mut o = UdpPacket::new_unchecked(&mut out[..]);
    repr.emit(
        &mut o,
        &s,
        &d,
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    let o = UdpPacket::new_checked(&out[..]).unwrap();
    assert!(o.verify_checksum(&s, &d));
    assert_eq!(
        UdpRepr::parse(&o, &s, &d, &ChecksumCapabilities::default()).unwrap(),
        repr
    );
    let full = checksum::udp_nonzero(checksum::transport_checksum_v4(src, dst, 17, &{
        let mut z = out.clone();
        z[6] = 0;
        z[7] = 0;
        z
    }));
    assert_eq!(full, o.checksum());
    // Rewrite the source port incrementally and compare with smoltcp's full sum.
    let new_port = repr.src_port.rotate_left(3) ^ 0x5a5a;
    let inc = checksum::udp_update_u16(o.checksum(), repr.src_port, new_port);
    let mut again = out.clone();
    let mut a = UdpPacket::new_unchecked(&mut again[..]);
    a.set_src_port(new_port);
    a.fill_checksum(&s, &d);
    assert_eq!(inc, a.checksum());
});
