//! The TUN port's virtio-net header parser and GSO segmenter on arbitrary reads, and
//! the VXLAN UDP port's outer-header parser on arbitrary frames: errors, never panics.
#![no_main]

use hybridway_dataplane::port::tun::gso::{Segmenter, VNET_HDR_LEN, VirtioNetHdr};
use hybridway_dataplane::port::udp::parse_outer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_outer(data);
    let Some(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let packet = data.get(VNET_HDR_LEN..).unwrap_or_default();
    let Ok(segmenter) = Segmenter::new(&hdr, packet) else {
        return;
    };
    let mut out = [0u8; 2048];
    for i in 0..segmenter.count().min(128) {
        let _ = segmenter.write(packet, i, &mut out);
    }
});
