//! Frames from every port through a populated table (routes, VXLAN peers and
//! Services) and a pipeline that already has masqueraded and Service flows: no
//! panic, the frame stays in its buffer, every verdict is well-formed, and a frame
//! handed off (as it arrived, decapsulated VXLAN included) is kept by the worker it
//! was handed to.
//!
//! The input is structured (`hybridway_fuzz::pipeline_input`): a byte for the node,
//! a byte for the kind of frame (pod IPv4/IPv6, uplink IPv4/IPv6, VXLAN carrying
//! either, ARP, or raw bytes), then its fields, so mutations reach VXLAN
//! decapsulation, SNAT replies, Service DNAT and IPv6 instead of stopping at the
//! parser. `seeds/pipeline/` holds a start for each path: with
//! `HYBRIDWAY_FUZZ_WRITE_SEEDS=<dir>` the target writes them there and exits
//! (`scripts/fuzz-seeds.sh`).
#![no_main]

use std::net::Ipv4Addr;

use hybridway_dataplane::frame::{FRAME_BUFFER_SIZE, Frame, FrameMeta};
use hybridway_dataplane::tables::{RouteTarget, SnatConfig, Tables};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::PacketInfo;
use hybridway_dataplane::worker::handoff::MAX_HAND_OFFS;
use hybridway_fuzz::pipeline_input::{Setup, decode, seeds};
use hybridway_fuzz::pipeline_node::{HOST_POD_ADDR, VIP, all_tables, config, seeded};
use libfuzzer_sys::fuzz_target;

/// Whether a packet to `dst` may be translated (and then handed off or given to the
/// host rewritten): a ClusterIP of the node's Services (198.18.240.0/24).
fn is_cluster_ip(bytes: &[u8]) -> bool {
    bytes
        .get(30..34)
        .is_some_and(|d| d[..3] == VIP.octets()[..3])
}

/// Whether an IPv4 frame is addressed to the host's own pod-network address: what
/// the host gets of it is the packet for that address (decapsulated, a Service
/// reply given its ClusterIP back), not the frame as it arrived.
fn is_for_host_pod_addr(frame: &[u8]) -> bool {
    is_to(frame, HOST_POD_ADDR)
}

/// Whether an IPv4 frame is addressed to `addr`.
fn is_to(frame: &[u8], addr: Ipv4Addr) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x00][..]) && frame.get(30..34) == Some(&addr.octets()[..])
}

/// Whether an IPv4 frame is addressed to a local pod.
fn is_to_a_local_pod(frame: &[u8], t: &Tables) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x00][..])
        && frame.get(30..34).is_some_and(|d| {
            let dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
            matches!(t.routes.lookup_v4(dst), Some(RouteTarget::LocalPod { .. }))
        })
}

fn check(verdict: Verdict, frame: &Frame<'_>, t: &Tables, config: &SnatConfig, worker: u16) {
    assert!(frame.offset() + frame.len() <= FRAME_BUFFER_SIZE);
    match verdict {
        Verdict::Forward { port } => {
            let known = port == t.node.uplink_port
                || port == t.node.routed_port
                || Some(port) == t.node.host_port
                || t.routes
                    .iter()
                    .any(|(_, r)| matches!(r, RouteTarget::LocalPod { port: p, .. } if *p == port));
            assert!(known, "forward to unknown {port}");
            well_formed(frame);
        }
        Verdict::Reply | Verdict::Refuse(_) => well_formed(frame),
        Verdict::HandOff { worker: w } => {
            assert!(w < config.workers && w != worker, "hand-off to {w}")
        }
        Verdict::ToHost | Verdict::Drop(_) => {}
    }
}

/// Whether `frame` is what arrived (`arrived`): the same bytes, or, for VXLAN
/// decapsulated and put back for a hand-off, those up to the end of its outer IPv4
/// packet (link-layer padding after it is not restored).
fn as_arrived(frame: &[u8], arrived: &[u8]) -> bool {
    let ipv4_end = || {
        let total = u16::from_be_bytes([*arrived.get(16)?, *arrived.get(17)?]);
        (arrived.get(12..14)? == [0x08, 0x00]).then_some(14 + usize::from(total))
    };
    frame == arrived || (arrived.starts_with(frame) && ipv4_end() == Some(frame.len()))
}

/// Whatever we transmit classifies cleanly and has a correct IPv4 header checksum.
fn well_formed(frame: &Frame<'_>) {
    let info = PacketInfo::parse(frame.data());
    assert!(info.is_ok(), "sending a frame we cannot parse: {info:?}");
    if let Ok(info) = info {
        assert!(info.ipv4_checksum_ok, "sending a bad IPv4 header checksum");
    }
}

/// Writes the seed inputs to `$HYBRIDWAY_FUZZ_WRITE_SEEDS` (replacing the directory)
/// and exits, when that is set.
fn write_seeds() {
    let Some(dir) = std::env::var_os("HYBRIDWAY_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let written = (|| {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let seeds = seeds();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        std::io::Result::Ok(seeds.len())
    })();
    match written {
        Ok(n) => {
            println!("{n} seeds written to {}", dir.display());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("writing seeds to {}: {e}", dir.display());
            std::process::exit(1)
        }
    }
}

fuzz_target!(init: write_seeds(), |data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let setup = Setup::from_byte(setup);
    let t = &all_tables()[setup.tables];
    let worker = setup.worker;
    let config = config();
    let (mut p, flows) = seeded(worker, t);
    let input = decode(rest, &flows);
    let (in_port, bytes) = (input.in_port, &input.frame[..]);

    let mut buf = [0u8; FRAME_BUFFER_SIZE];
    let Ok(mut frame) = Frame::copy_from(&mut buf, bytes, FrameMeta { in_port }) else {
        return;
    };
    let verdict = p.process(&mut frame, t, Now(1));
    check(verdict, &frame, t, &config, worker);
    if let Verdict::HandOff { worker: owner } = verdict {
        // Follow the hand-offs as the worker loop does: it drops a frame handed off
        // more than `MAX_HAND_OFFS` times, a silent loss. Two happen when a flow is
        // kept by two workers (a Service flow to an endpoint outside the cluster,
        // which the SNAT owner masquerades).
        let mut owner = owner;
        let mut moved = frame.data().to_vec();
        for hop in 1..=MAX_HAND_OFFS {
            let (mut q, _) = seeded(owner, t);
            let mut at_owner = [0u8; FRAME_BUFFER_SIZE];
            let Ok(mut f) = Frame::copy_from(&mut at_owner, &moved, FrameMeta { in_port }) else {
                break;
            };
            let v = q.process(&mut f, t, Now(1));
            match v {
                Verdict::HandOff { worker } => {
                    assert!(hop < MAX_HAND_OFFS, "handed off {} times: {v:?}", hop + 1);
                    owner = worker;
                    moved = f.data().to_vec();
                }
                v => {
                    check(v, &f, t, &config, owner);
                    break;
                }
            }
        }
    }
    let for_host_pod_addr = verdict == Verdict::ToHost && is_for_host_pod_addr(frame.data());
    let un_snated = matches!(verdict, Verdict::HandOff { .. })
        && is_to(bytes, t.node.node_addr)
        && is_to_a_local_pod(frame.data(), t);
    if matches!(verdict, Verdict::ToHost | Verdict::HandOff { .. })
        && !is_cluster_ip(bytes)
        && !for_host_pod_addr
        && !un_snated
    {
        // The host and the owning worker get the frame exactly as it arrived (a
        // packet to a ClusterIP may already be sent to its endpoint: the node itself,
        // or one the SNAT owner masquerades; the host's pod-network address gets
        // the packet for it; a reply to the node address, un-SNATed, goes on to the
        // worker that keeps its Service flow).
        assert!(as_arrived(frame.data(), bytes), "{verdict:?} frame was modified");
    }

    // The same bytes as a batch of two, with a small buffer (little headroom) second.
    let mut a = [0u8; FRAME_BUFFER_SIZE];
    let mut small = vec![0u8; bytes.len() + 8];
    let (Ok(fa), Ok(fb)) = (
        Frame::copy_from(&mut a, bytes, FrameMeta { in_port }),
        Frame::copy_from(&mut small, bytes, FrameMeta { in_port }),
    ) else {
        return;
    };
    let mut frames = [fa, fb];
    let mut verdicts = [Verdict::ToHost; 2];
    p.process_batch(&mut frames, t, Now(2), &mut verdicts);
    check(verdicts[0], &frames[0], t, &config, worker);
    assert!(frames[1].offset() + frames[1].len() <= bytes.len() + 8);
    if !matches!(
        verdicts[1],
        Verdict::Drop(_) | Verdict::ToHost | Verdict::HandOff { .. }
    ) {
        well_formed(&frames[1]);
    }
});
