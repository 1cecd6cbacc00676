//! The TUN port's virtio-net header parser and GSO segmenter on arbitrary reads, and
//! the VXLAN UDP port's outer-header parser on arbitrary frames: errors, never panics.
//! Also the segment-at-transmit code of super-frames: cutting an arbitrary frame
//! under an arbitrary `Gso` (`Segmenter::for_frame`/`write_frame`), and the gathered
//! form the UDP port sends (`write_headers` + the payload in place), which must give
//! the very bytes `write` copies.
#![no_main]

use hybridway_dataplane::frame::{Gso, GsoKind};
use hybridway_dataplane::port::tun::gso::{Segmenter, VNET_HDR_LEN, VirtioNetHdr};
use hybridway_dataplane::port::udp::parse_outer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_outer(data);
    super_frame(data);
    let Some(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let packet = data.get(VNET_HDR_LEN..).unwrap_or_default();
    let Ok(segmenter) = Segmenter::new(&hdr, packet) else {
        return;
    };
    let _ = segmenter.super_frame(14);
    let mut out = [0u8; 2048];
    let mut headers = [0u8; 2048];
    for i in 0..segmenter.count().min(128) {
        let copied = segmenter.write(packet, i, &mut out);
        if let Ok((len, payload)) = segmenter.write_headers(packet, i, &mut headers) {
            let gathered: Vec<u8> = headers[..len]
                .iter()
                .chain(&packet[payload])
                .copied()
                .collect();
            if let Ok(n) = copied {
                assert_eq!(&out[..n], &gathered[..], "gathered == copied, segment {i}");
            }
        }
    }
});

/// The first 6 bytes pick a `Gso`; the rest is the frame.
fn super_frame(data: &[u8]) {
    let [k, s0, s1, h, l0, l1, ref frame @ ..] = *data else {
        return;
    };
    let gso = Gso {
        kind: match k % 3 {
            0 => GsoKind::TcpV4,
            1 => GsoKind::TcpV6,
            _ => GsoKind::Udp,
        },
        size: u16::from_le_bytes([s0, s1]),
        hdr_len: u16::from(h),
        l3: u16::from_le_bytes([l0, l1]) % 128,
    };
    let Ok(segmenter) = Segmenter::for_frame(frame, gso) else {
        return;
    };
    let mut out = [0u8; 2048];
    for i in 0..segmenter.count().min(128) {
        let _ = segmenter.write_frame(frame, gso, i, &mut out);
    }
}
