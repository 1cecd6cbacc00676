//! TUN receive hot path: cutting a 64 KiB TCP GSO super-packet into MSS-size packets
#![allow(clippy::indexing_slicing, clippy::expect_used)] // fixed-size test data
//! (checksums included), and filling a worker's PacketBatch from it.
//!
//! And the transmit side of a super-frame, per 64 KiB read, in one run so the ratio
//! holds on a noisy machine: `tx_segment_then_merge` is what the TUN path did before
//! super-frames (cut into 45 frames on receive, then the TUN write merged them back,
//! verifying each checksum), `tx_segment_at_send` is what the UDP port now does with
//! a super-frame (inner headers per datagram, checksum summed over the payload where
//! it lies, no copy), and `tx_segment_then_copy` today's cut on receive alone (what
//! the overlay did before: the frames then went to `sendmsg` as they were).
//!
//! And the receive side of the overlay, per GRO train of 44 VXLAN datagrams (one
//! 64 KiB `UDP_SEGMENT` send of the other node): `rx_train_cut_then_merge` is what
//! the VXLAN port and the TUN port did before (each datagram copied into a frame of
//! its own behind a synthetic outer header, then the TUN write merged the inner
//! segments back, verifying each checksum), `rx_train_merged` what the VXLAN port
//! does now (the run merged once, straight into a super-frame buffer). The
//! pipeline's per-frame work (44 passes before, 1 now) is not in either.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::PortId;
use hybridway_dataplane::frame::{FRAME_HEADROOM, Gso, GsoKind};
use hybridway_dataplane::port::PacketBatch;
use hybridway_dataplane::port::tun::coalesce::Coalescer;
use hybridway_dataplane::port::tun::gso::{Segmenter, VirtioNetHdr};
use hybridway_dataplane::port::udp::OUTER_LEN;
use hybridway_dataplane::port::udp::merge::{DATAGRAM_PREFIX_LEN, merge_run};
use hybridway_dataplane::wire::checksum;

const MSS: usize = 1448;
const SEGMENTS: usize = 45;

/// The IPv4 (DF, TTL 64) and TCP headers of a packet of one flow, 198.19.0.2:40000 ->
/// 198.19.1.2:5201, window 500, checksums left 0.
fn tcp_headers(total: usize, id: u16, seq: u32, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 19, 0, 2]);
    p[16..20].copy_from_slice(&[198, 19, 1, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&500u16.to_be_bytes());
    p
}

/// An IPv4/TCP packet with `SEGMENTS * MSS` bytes of payload, as the kernel hands it
/// to a TUN with TSO on (checksum partial).
fn super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let payload = MSS * SEGMENTS;
    let total = 20 + 20 + payload;
    let mut p = tcp_headers(total.min(65535), 0, 1, 0x18);
    p.extend((0..payload).map(|i| i as u8));
    p.truncate(total.min(65535));
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 40,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

/// A GRO train: `TRAIN` VXLAN datagrams, each VXLAN + inner Ethernet + IPv4/TCP
/// with `TRAIN_MSS` bytes of payload and complete checksums, one flow in sequence.
const TRAIN: usize = 44;
const TRAIN_MSS: usize = 1398;

fn gro_train() -> (Vec<u8>, usize) {
    let mut train = Vec::new();
    for i in 0..TRAIN {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let flags = if i + 1 == TRAIN { 0x18 } else { 0x10 };
        let mut p = tcp_headers(40 + TRAIN_MSS, i as u16, 1 + (i * TRAIN_MSS) as u32, flags);
        p.extend((0..TRAIN_MSS).map(|b| (b + i) as u8));
        let ip_sum = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_sum = checksum::transport_checksum_v4(
            [198, 19, 0, 2].into(),
            [198, 19, 1, 2].into(),
            6,
            &p[20..],
        );
        p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        d.extend_from_slice(&p);
        train.extend_from_slice(&d);
    }
    let size = train.len() / TRAIN;
    (train, size)
}

/// Cuts the super-packet into single frames in `batch`, as a port that cannot take
/// it whole does.
fn cut_into(batch: &mut PacketBatch, segmenter: &Segmenter, packet: &[u8]) {
    for i in 0..segmenter.count() {
        let Some(buf) = batch.rx_buffer() else { break };
        let len = segmenter.write(packet, i, buf).expect("fits");
        batch.commit(len, PortId(1)).expect("room");
    }
}

/// Feeds `packets` to the TUN write coalescer, writing out (here: dropping) each
/// run it closes.
fn merge_all<'a>(co: &mut Coalescer, packets: impl Iterator<Item = &'a [u8]>) {
    for p in packets {
        if !co.push(p) {
            std::hint::black_box(co.take());
            co.push(p);
        }
    }
}

fn bench_rx_train(c: &mut Criterion) {
    let (train, size) = gro_train();
    // The synthetic outer header's bytes (its content does not change the work).
    let outer = [0x45u8; OUTER_LEN];
    let mut group = c.benchmark_group("port_gro_rx");
    group.throughput(Throughput::Elements(TRAIN as u64));
    group.bench_function("rx_train_cut_then_merge", |b| {
        let mut batch = PacketBatch::new();
        let mut co = Coalescer::new();
        b.iter(|| {
            batch.clear();
            for datagram in train.chunks(size) {
                let Some(buf) = batch.free_buffer() else {
                    break;
                };
                let at = FRAME_HEADROOM;
                buf[at..at + OUTER_LEN].copy_from_slice(&outer);
                buf[at + OUTER_LEN..at + OUTER_LEN + datagram.len()].copy_from_slice(datagram);
                batch
                    .commit_at(at, OUTER_LEN + datagram.len(), PortId(1))
                    .expect("room");
            }
            // After decapsulation the TUN port sees the inner packets.
            merge_all(
                &mut co,
                batch
                    .packets()
                    .map(|p| &p[OUTER_LEN + DATAGRAM_PREFIX_LEN..]),
            );
            std::hint::black_box(co.take().map(|(_, p)| p.len()));
        });
    });
    group.bench_function("rx_train_merged", |b| {
        let mut batch = PacketBatch::new();
        b.iter(|| {
            batch.clear();
            let (big, _) = batch.free_super_buffer().expect("a super buffer");
            let run = merge_run(&train, size, &mut big[FRAME_HEADROOM..]).expect("merges");
            big[FRAME_HEADROOM..FRAME_HEADROOM + OUTER_LEN].copy_from_slice(&outer);
            assert_eq!(run.datagrams, TRAIN);
            batch
                .commit_super(FRAME_HEADROOM, run.len, PortId(1), run.gso)
                .expect("room");
            std::hint::black_box(batch.len());
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let (hdr, packet) = super_packet();
    let segmenter = Segmenter::new(&hdr, &packet).expect("valid super-packet");
    let count = segmenter.count();
    let mut group = c.benchmark_group("port_gso");
    group.throughput(Throughput::Elements(count as u64));
    group.bench_function("segment_tcp_64k", |b| {
        let mut out = [0u8; 2048];
        b.iter(|| {
            let segmenter = Segmenter::new(&hdr, &packet).expect("valid");
            for i in 0..segmenter.count() {
                std::hint::black_box(segmenter.write(&packet, i, &mut out).expect("fits"));
            }
        });
    });
    group.bench_function("segment_into_batch", |b| {
        let mut batch = PacketBatch::new();
        b.iter(|| {
            batch.clear();
            cut_into(
                &mut batch,
                &Segmenter::new(&hdr, &packet).expect("valid"),
                &packet,
            );
            std::hint::black_box(batch.len());
        });
    });
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: MSS as u16,
        hdr_len: 40,
        l3: 0,
    };
    group.bench_function("tx_segment_then_copy", |b| {
        let mut batch = PacketBatch::new();
        b.iter(|| {
            batch.clear();
            cut_into(
                &mut batch,
                &Segmenter::for_frame(&packet, gso).expect("valid"),
                &packet,
            );
            std::hint::black_box(batch.len());
        });
    });
    group.bench_function("tx_segment_then_merge", |b| {
        let mut batch = PacketBatch::new();
        let mut co = Coalescer::new();
        b.iter(|| {
            batch.clear();
            cut_into(
                &mut batch,
                &Segmenter::for_frame(&packet, gso).expect("valid"),
                &packet,
            );
            merge_all(&mut co, batch.packets());
            std::hint::black_box(co.take().map(|(_, p)| p.len()));
        });
    });
    group.bench_function("tx_segment_at_send", |b| {
        let mut headers = vec![0u8; 64 * 128];
        b.iter(|| {
            let segmenter = Segmenter::for_frame(&packet, gso).expect("valid");
            let mut at = 0;
            let mut payload = 0;
            for i in 0..segmenter.count() {
                let (len, range) = segmenter
                    .write_headers(&packet, i, &mut headers[at..])
                    .expect("fits");
                at += len;
                payload += range.len();
            }
            std::hint::black_box((at, payload));
        });
    });
    group.finish();
}

criterion_group!(benches, bench, bench_rx_train);
criterion_main!(benches);
