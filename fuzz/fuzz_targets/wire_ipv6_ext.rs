//! The IPv6 extension-header walk the classifier runs: arbitrary bytes after a
//! 40-byte header, any first next-header value; the walk never leaves the packet.
#![no_main]

use hybridway_dataplane::wire::ipv6_ext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut packet = vec![0u8; 40];
    packet[0] = 0x60;
    packet.extend_from_slice(rest);
    if let Ok(w) = ipv6_ext::walk(&packet, first) {
        assert!(w.offset >= 40 && w.offset <= packet.len());
    }
});
