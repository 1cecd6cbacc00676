//! Decode arbitrary bytes as a BGP message; whatever decodes must encode and decode
//! back to the same value. Both AS-number widths are exercised.
#![no_main]

use hybridway_control::bgp::codec::{self, CodecOptions, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, bytes)) = data.split_first() else {
        return;
    };
    let opts = CodecOptions {
        four_octet_as: flag & 1 == 1,
    };
    let _ = codec::frame_len(bytes);
    if let Ok(msg) = codec::decode(bytes, opts) {
        // An UPDATE taken as a withdrawal (RFC 7606) is acted on, never sent back.
        if matches!(&msg, Message::Update(u) if u.treat_as_withdraw.is_some()) {
            return;
        }
        // Re-encoding may fail only for a size reason (e.g. a 2-byte-AS path that
        // grew); when it succeeds, the bytes must mean the same message.
        if let Ok(again) = codec::encode_to_vec(&msg, opts) {
            let back = codec::decode(&again, opts).expect("re-encoded message must decode");
            // A 2-octet peer's AS_PATH merged with its AS4_PATH (RFC 6793) holds
            // ASNs above 65535; sent back, only what AS4_PATH can carry survives, so
            // such a path must decode again but need not be equal.
            if opts.four_octet_as
                || !matches!(&msg, Message::Update(u) if u.path_needs_four_octets())
            {
                assert_eq!(back, msg);
            }
        }
    }
});
