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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::PortId;
use hybridway_dataplane::frame::{Gso, GsoKind};
use hybridway_dataplane::port::PacketBatch;
use hybridway_dataplane::port::tun::coalesce::Coalescer;
use hybridway_dataplane::port::tun::gso::{Segmenter, VirtioNetHdr};

const MSS: usize = 1448;
const SEGMENTS: usize = 45;

/// An IPv4/TCP packet with `SEGMENTS * MSS` bytes of payload, as the kernel hands it
/// to a TUN with TSO on (checksum partial).
fn super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let payload = MSS * SEGMENTS;
    let total = 20 + 20 + payload;
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((total.min(65535)) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 19, 0, 2]);
    p[16..20].copy_from_slice(&[198, 19, 1, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x18;
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
            let segmenter = Segmenter::new(&hdr, &packet).expect("valid");
            for i in 0..segmenter.count() {
                let Some(buf) = batch.rx_buffer() else { break };
                let len = segmenter.write(&packet, i, buf).expect("fits");
                batch.commit(len, PortId(1)).expect("room");
            }
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
            let segmenter = Segmenter::for_frame(&packet, gso).expect("valid");
            for i in 0..segmenter.count() {
                let Some(buf) = batch.rx_buffer() else { break };
                let len = segmenter.write(&packet, i, buf).expect("fits");
                batch.commit(len, PortId(1)).expect("room");
            }
            std::hint::black_box(batch.len());
        });
    });
    group.bench_function("tx_segment_then_merge", |b| {
        let mut batch = PacketBatch::new();
        let mut co = Coalescer::new();
        b.iter(|| {
            batch.clear();
            let segmenter = Segmenter::for_frame(&packet, gso).expect("valid");
            for i in 0..segmenter.count() {
                let Some(buf) = batch.rx_buffer() else { break };
                let len = segmenter.write(&packet, i, buf).expect("fits");
                batch.commit(len, PortId(1)).expect("room");
            }
            for p in batch.packets() {
                if !co.push(p) {
                    std::hint::black_box(co.take());
                    co.push(p);
                }
            }
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

criterion_group!(benches, bench);
criterion_main!(benches);
