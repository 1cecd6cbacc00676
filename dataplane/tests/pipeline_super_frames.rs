//! Super-frames through the pipeline: a 64 KiB TCP frame from a pod is routed,
//! masqueraded or encapsulated once, keeps its partial checksum right (the kernel's
//! `CHECKSUM_PARTIAL` rule, not a complete checksum's update), and is checked
//! against the MTU per segment, not as a whole.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;
mod port_netns;

use std::net::Ipv4Addr;

use etherparse::SlicedPacket;
use hybridway_dataplane::frame::{FRAME_HEADROOM, Frame, FrameMeta, Gso, GsoKind};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::port::tun::gso::Segmenter;
use hybridway_dataplane::tables::SnatConfig;
use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::{Now, PortId, Verdict};
use pipeline_support::*;

const MSS: usize = 1400;
const SEGMENTS: usize = 40;

/// A pod's TCP super-frame to `dst` as a TSO read gives it: full-length IPv4
/// header, the pseudo-header sum in the checksum field.
fn super_frame(dst: Ipv4Addr) -> (Vec<u8>, Gso) {
    let body: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i % 247) as u8).collect();
    let mut f = tcp4(POD1, dst, 40000, 5201, 64, false, &body);
    f[14 + 6] = 0x40; // DF
    fix_ipv4_checksum(&mut f, 14);
    let tcp_len = (f.len() - 34) as u16;
    let pseudo = checksum::pseudo_header_v4(POD1, dst, 6, tcp_len);
    f[34 + 16..34 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: MSS as u16,
        hdr_len: 40,
        l3: 14,
    };
    (f, gso)
}

fn run(bytes: &[u8], gso: Gso, snat: bool, buf: &mut [u8]) -> (Verdict, Vec<u8>, Option<Gso>) {
    let tables = tables(snat);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let mut frame = Frame::copy_from(buf, bytes, FrameMeta { in_port: POD1_PORT })
        .unwrap()
        .with_gso(Some(gso));
    let v = p.process(&mut frame, &tables, Now(1));
    (v, frame.data().to_vec(), frame.gso())
}

/// Cuts `frame` as a port that cannot take it would and checks every (inner)
/// segment's IPv4 and TCP checksums; returns the payload.
fn segments_payload(frame: &[u8], gso: Gso) -> Vec<u8> {
    let segmenter = Segmenter::for_frame(frame, gso).unwrap();
    assert_eq!(segmenter.count(), SEGMENTS);
    let mut out = vec![0u8; 2048];
    let mut payload = Vec::new();
    for i in 0..segmenter.count() {
        let len = segmenter.write_frame(frame, gso, i, &mut out).unwrap();
        // The inner Ethernet frame of an encapsulated one.
        let inner = usize::from(gso.l3) - 14;
        let (_, data) = port_netns::checked_tcp4(&out[inner..len]).expect("IPv4/TCP");
        payload.extend_from_slice(&data);
    }
    payload
}

#[test]
fn a_masqueraded_super_frame_carries_the_partial_checksum_of_its_new_source() {
    let (bytes, gso) = super_frame(OUTSIDE);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let (v, out, after) = run(&bytes, gso, true, &mut buf);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(after, Some(gso), "still one super-frame");
    assert_eq!(
        &out[26..30],
        &NODE.octets(),
        "masqueraded to the node address"
    );
    let tcp_len = (out.len() - 34) as u16;
    let field = u16::from_be_bytes([out[50], out[51]]);
    let expect = checksum::pseudo_header_v4(NODE, OUTSIDE, 6, tcp_len);
    assert_eq!(
        field % 0xffff,
        expect % 0xffff,
        "the pseudo-header sum of the new addresses, as CHECKSUM_PARTIAL keeps it"
    );
    // The complete-checksum rule (RFC 1624, ports included) would have left this:
    let wrong = checksum::update_ipv4_addr(
        checksum::pseudo_header_v4(POD1, OUTSIDE, 6, tcp_len),
        POD1,
        NODE,
    );
    assert_ne!(field, wrong);
    // Completed as a device would, every segment verifies; the bytes are the pod's.
    let body: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i % 247) as u8).collect();
    assert_eq!(segments_payload(&out, after.unwrap()), body);
    // And completing the partial sum over the whole super-frame gives its checksum.
    let mut whole = out[34..].to_vec();
    let completed = checksum::checksum(&whole);
    whole[16..18].fill(0);
    assert_eq!(
        completed,
        checksum::transport_checksum_v4(NODE, OUTSIDE, 6, &whole)
    );
}

#[test]
fn an_underlay_super_frame_is_routed_once_and_an_overlay_one_encapsulated_once() {
    let (bytes, gso) = super_frame(UNDERLAY_POD);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let (v, out, after) = run(&bytes, gso, false, &mut buf);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(after, Some(gso));
    assert_eq!(out[14 + 8], 63, "TTL decremented once");
    assert_eq!(
        &out[50..52],
        &bytes[50..52],
        "no NAT: partial sum unchanged"
    );
    segments_payload(&out, gso);

    let (bytes, gso) = super_frame(REMOTE_POD);
    // Overlay MTU 1450: 40 + 1400 fits.
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let (v, out, after) = run(&bytes, gso, false, &mut buf);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    let after = after.expect("still a super-frame");
    assert_eq!(
        after.l3,
        14 + 50,
        "the segmented header is the inner one now"
    );
    let segmenter = Segmenter::for_frame(&out, after).unwrap();
    let mut seg = vec![0u8; 2048];
    let len = segmenter.write_frame(&out, after, 0, &mut seg).unwrap();
    let outer = SlicedPacket::from_ethernet(&seg[..len]).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &outer.net else {
        panic!()
    };
    let h = ip.header().to_header();
    assert_eq!(
        usize::from(h.total_len),
        len - 14,
        "outer length per datagram"
    );
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(segments_payload(&out, after).len(), MSS * SEGMENTS);
}

#[test]
fn the_mtu_is_checked_per_segment() {
    // Into the overlay (MTU 1450) a 1460-byte segment does not fit: ICMP
    // fragmentation needed, one packet, no super-frame left.
    let (mut bytes, mut gso) = super_frame(REMOTE_POD);
    gso.size = 1460;
    let total = bytes.len();
    bytes.truncate(total - total % 1460);
    let len = (bytes.len() - 14) as u16;
    bytes[16..18].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(&mut bytes, 14);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let (v, out, after) = run(&bytes, gso, false, &mut buf);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(after, None);
    assert!(out.len() < 1500);
    let _ = PortId(0);
}

/// A GRO train from the remote node as the UDP port merges it: `SEGMENTS` VXLAN
/// datagrams of REMOTE_POD -> `dst` TCP segments, one super-frame with the outer
/// header the port synthesises (here built by etherparse).
fn merged_train(src: Ipv4Addr, dst: Ipv4Addr) -> (Vec<u8>, Gso, Vec<u8>) {
    use hybridway_dataplane::port::udp::merge::merge_run;
    let body: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i % 251) as u8).collect();
    let datagrams: Vec<Vec<u8>> = body
        .chunks(MSS)
        .enumerate()
        .map(|(i, chunk)| {
            let mut inner = Vec::new();
            eth(REMOTE_VTEP_MAC, VTEP_MAC)
                .ipv4(src.octets(), dst.octets(), 64)
                .tcp(5201, 40000, 1000 + (i * MSS) as u32, 64000)
                .ack(77)
                .write(&mut inner, chunk)
                .unwrap();
            inner[14 + 6] = 0x40; // DF
            fix_ipv4_checksum(&mut inner, 14);
            let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            d.extend_from_slice(&inner);
            d
        })
        .collect();
    let train = datagrams.concat();
    let mut out = vec![0u8; 70_000];
    let run = merge_run(&train, datagrams[0].len(), &mut out).expect("the train merges");
    assert_eq!(run.datagrams, SEGMENTS);
    let mut frame = Vec::new();
    eth(REMOTE_NODE_MAC, UPLINK_MAC)
        .ipv4(REMOTE_NODE.octets(), NODE.octets(), 64)
        .udp(40000, 8472)
        .write(&mut frame, &out[42..run.len])
        .unwrap();
    (frame, run.gso, body)
}

#[test]
fn a_merged_vxlan_train_is_decapsulated_once_and_routed_to_the_pod_whole() {
    let (bytes, gso, body) = merged_train(REMOTE_POD, POD1);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let tables = tables(false);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let mut frame = Frame::copy_from(&mut buf, &bytes, FrameMeta { in_port: UPLINK })
        .unwrap()
        .with_gso(Some(gso));
    let v = p.process(&mut frame, &tables, Now(1));
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    let after = frame.gso().expect("still one super-frame");
    assert_eq!(after, Gso { l3: 14, ..gso }, "the inner IPv4 header");
    let out = frame.data().to_vec();
    assert_eq!(&out[..6], &POD1_MAC.0, "to the pod");
    assert_eq!(out[14 + 8], 63, "inner TTL decremented once");
    // The partial sum is the pseudo-header sum of the inner addresses, untouched.
    let tcp_len = (out.len() - 34) as u16;
    let field = u16::from_be_bytes([out[50], out[51]]);
    assert_eq!(
        field,
        checksum::pseudo_header_v4(REMOTE_POD, POD1, 6, tcp_len)
    );
    // What the TUN port (or the kernel behind it) cuts: every segment verifies.
    assert_eq!(segments_payload(&out, after), body);

    // Anti-spoofing holds for the whole train: a source outside the sending node's
    // block drops it.
    let (bytes, gso, _) = merged_train(UNDERLAY_POD, POD1);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let mut frame = Frame::copy_from(&mut buf, &bytes, FrameMeta { in_port: UPLINK })
        .unwrap()
        .with_gso(Some(gso));
    let v = p.process(&mut frame, &tables, Now(1));
    assert_eq!(
        v,
        Verdict::Drop(hybridway_dataplane::DropReason::VxlanSpoofedSource)
    );
}

/// A merged train that is a remote endpoint's reply to a Service flow another
/// worker keeps: handed off as it arrived (outer header and all, still one
/// super-frame), and every datagram the worker loop cuts it into is translated by
/// the owner.
#[test]
fn a_merged_service_reply_on_another_worker_is_handed_off_as_it_arrived() {
    use std::sync::Arc;

    use hybridway_dataplane::tables::services::{
        EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
    };
    let vip = Ipv4Addr::new(198, 18, 240, 10);
    let mut tables = tables(false);
    tables.services = Arc::new(ServiceTable::build(&[ServiceSpec {
        name: "default/iperf".into(),
        cluster_ips: vec![vip],
        ports: vec![ServicePortSpec {
            proto: ServiceProto::Tcp,
            port: 80,
            node_port: None,
            endpoints: vec![EndpointSpec {
                addr: REMOTE_POD,
                port: 5201,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            }],
        }],
        ..ServiceSpec::default()
    }]));
    let config = SnatConfig {
        workers: 2,
        ..SnatConfig::default()
    };
    let mut workers: Vec<Pipeline> = (0..2).map(|w| Pipeline::new(w, &config)).collect();
    let syn = tcp4(POD1, vip, 40000, 80, 64, true, b"");
    let owner = workers
        .iter_mut()
        .position(|p| {
            let mut buf = Buf::new();
            let mut frame = buf.frame(&syn, POD1_PORT);
            p.process(&mut frame, &tables, Now(1))
                != Verdict::HandOff {
                    worker: 1 - p.worker(),
                }
        })
        .unwrap();

    let (bytes, gso, body) = merged_train(REMOTE_POD, POD1);
    let mut buf = vec![0u8; FRAME_HEADROOM + bytes.len()];
    let mut frame = Frame::copy_from(&mut buf, &bytes, FrameMeta { in_port: UPLINK })
        .unwrap()
        .with_gso(Some(gso));
    let v = workers[1 - owner].process(&mut frame, &tables, Now(1));
    assert_eq!(
        v,
        Verdict::HandOff {
            worker: owner as u16
        }
    );
    assert_eq!(frame.data(), &bytes[..], "the frame as it arrived");
    assert_eq!(frame.gso(), Some(gso));

    // What the worker loop does with a super-frame it hands off: one parcel per
    // datagram, each run through the owner's pipeline.
    let segmenter = Segmenter::for_frame(frame.data(), gso).unwrap();
    assert_eq!(segmenter.count(), SEGMENTS);
    let mut payload = Vec::new();
    let mut datagram = vec![0u8; 2048];
    for i in 0..segmenter.count() {
        let len = segmenter
            .write_frame(frame.data(), gso, i, &mut datagram)
            .unwrap();
        let mut b = Buf::new();
        let mut f = b.frame(&datagram[..len], UPLINK);
        let v = workers[owner].process(&mut f, &tables, Now(1));
        assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "datagram {i}");
        let out = f.data();
        assert_eq!(&out[26..30], &vip.octets(), "from the ClusterIP");
        assert_eq!(u16::from_be_bytes([out[34], out[35]]), 80);
        let (_, data) = port_netns::checked_tcp4(out).expect("IPv4/TCP checksums");
        payload.extend_from_slice(&data);
    }
    assert_eq!(payload, body);
}
