//! The hugetlb cgroup reader the AF_XDP port sizes its UMEM with: arbitrary texts
//! for `/proc/self/cgroup`, `/proc/self/mountinfo` and every limit/usage file. It
//! must never panic, and a headroom it reports is one of the files' numbers minus
//! another (never more than the largest number written in them).
#![no_main]

use hybridway_dataplane::port::xdp::hugetlb_cgroup::headroom_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let (cgroups, mounts, file) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let reads = std::cell::Cell::new(0u32);
    let headroom = headroom_from(cgroups, mounts, |_| {
        reads.set(reads.get() + 1);
        // A cgroup path is walked up to its mount point: a bounded number of reads.
        assert!(reads.get() < 100_000, "unbounded walk up the hierarchy");
        Some(file.to_owned())
    });
    if let Some(left) = headroom {
        assert!(left <= file.trim().parse::<u64>().unwrap_or(0));
    }
});
