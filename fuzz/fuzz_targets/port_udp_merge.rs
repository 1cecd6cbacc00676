//! The VXLAN socket port's receive-side merge on arbitrary GRO trains: walked as the
//! port walks a train (a merged run, else one datagram on its own), it never
//! panics, and every super-frame it builds, cut by the one segmenter, gives back
//! exactly the inner packets that went in (the fields segmentation rewrites, the
//! IPv4 id and header checksum, aside; a TCP checksum of 0 and 0xffff are one
//! value in one's complement). A run merged from two reads (`TrainRun::continue_with`,
//! the second part of a 64 KiB write arriving as a second train) is the same bytes
//! as the run merged at once.
#![no_main]

use hybridway_dataplane::frame::{FRAME_HEADROOM, SUPER_FRAME_BUFFER_SIZE};
use hybridway_dataplane::port::tun::gso::Segmenter;
use hybridway_dataplane::port::udp::OUTER_LEN;
use hybridway_dataplane::port::udp::merge::{DATAGRAM_PREFIX_LEN, TrainRun, merge_run};
use libfuzzer_sys::fuzz_target;

// The first two bytes are the GRO size, the third where a run is cut into two
// reads; the rest is the train.
fuzz_target!(|data: &[u8]| {
    let [s0, s1, cut, ref train @ ..] = *data else {
        return;
    };
    let size = usize::from(u16::from_le_bytes([s0, s1]));
    let mut out = vec![0u8; SUPER_FRAME_BUFFER_SIZE - FRAME_HEADROOM];
    let mut offset = 0;
    while offset < train.len() {
        let rest = &train[offset..];
        let Some(run) = merge_run(rest, size, &mut out) else {
            offset += size.max(1);
            continue;
        };
        let taken = TrainRun::train_bytes(rest, size, run.datagrams);
        assert!(run.datagrams >= 2 && taken > 0 && taken <= rest.len());
        assert!(
            run.len <= out.len() && run.len - 14 <= 65_535,
            "outer length fits"
        );
        check_segments_back(&out[..run.len], run, &rest[..taken], size);
        if run.datagrams > 2 {
            let first = 2 + usize::from(cut) % (run.datagrams - 2);
            let split = TrainRun::train_bytes(rest, size, first);
            let mut again = vec![0u8; out.len()];
            let mut two = merge_run(&rest[..split], size, &mut again).expect("a shorter run");
            assert_eq!(two.datagrams, first);
            let joined = two.continue_with(&rest[split..taken], size, &mut again);
            assert_eq!(joined, run.datagrams - first, "the rest continues the run");
            assert_eq!(
                (two.datagrams, two.len, two.gso),
                (run.datagrams, run.len, run.gso)
            );
            assert_eq!(&again[OUTER_LEN..two.len], &out[OUTER_LEN..run.len]);
        }
        offset += taken;
    }
});

fn check_segments_back(frame: &[u8], run: TrainRun, taken: &[u8], size: usize) {
    let l3 = usize::from(run.gso.l3);
    assert_eq!(l3, OUTER_LEN + DATAGRAM_PREFIX_LEN);
    let segmenter = Segmenter::for_frame(frame, run.gso).expect("a merged run segments");
    assert_eq!(segmenter.count(), run.datagrams);
    let ip = &frame[l3..];
    let mut seg = vec![0u8; 65_536];
    for (i, datagram) in taken.chunks(size).enumerate() {
        let (prefix, sent) = datagram.split_at(DATAGRAM_PREFIX_LEN);
        assert_eq!(
            &frame[OUTER_LEN..l3],
            prefix,
            "VXLAN and inner Ethernet headers"
        );
        let len = segmenter.write(ip, i, &mut seg).expect("segment fits");
        let got = &seg[..len];
        assert_eq!(got.len(), sent.len(), "segment {i} length");
        assert_eq!(got[..4], sent[..4], "segment {i}");
        assert_eq!(got[6..10], sent[6..10], "segment {i}");
        assert_eq!(got[12..36], sent[12..36], "segment {i}");
        let sum = |p: &[u8]| u16::from_be_bytes([p[36], p[37]]) % 0xffff;
        assert_eq!(sum(got), sum(sent), "segment {i} TCP checksum");
        assert_eq!(got[38..], sent[38..], "segment {i}");
    }
}
