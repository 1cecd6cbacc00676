//! `PacketInfo::parse` on batches of 64 frames: 64-byte UDP and TCP frames and the
//! outer frame of a VXLAN-encapsulated 64-byte frame. Each batch holds 64 distinct
//! flows so the branch predictor sees realistic (not one repeated) frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::wire::{PacketInfo, VxlanRepr, checksum};

const BATCH: usize = 64;

/// A 64-byte (without FCS) Ethernet/IPv4 frame of `proto` with a valid header checksum.
fn frame_v4(proto: u8, i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 198, 19, 1, 2, 198, 19, 2, 3,
    ]);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[19] = i as u8;
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let sport = 10_000 + i as u16;
    let l4 = &mut f[34..];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&80u16.to_be_bytes());
    match proto {
        17 => l4[4..6].copy_from_slice(&(len as u16 - 34).to_be_bytes()),
        6 => {
            l4[12] = 0x50;
            l4[13] = 0x10;
        }
        _ => {}
    }
    f
}

/// The outer frame of a VXLAN-encapsulated 64-byte UDP frame (114 bytes).
fn frame_vxlan(i: usize) -> Vec<u8> {
    let inner = frame_v4(17, i, 64);
    let mut outer = frame_v4(17, i, 50 + inner.len());
    outer[36..38].copy_from_slice(&8472u16.to_be_bytes());
    outer[42..50].copy_from_slice(&VxlanRepr { vni: 1 }.to_bytes());
    outer[50..].copy_from_slice(&inner);
    outer
}

fn bench_batch(c: &mut Criterion, name: &str, frames: Vec<Vec<u8>>) {
    assert!(
        frames.iter().all(|f| PacketInfo::parse(f).is_ok()),
        "{name}: bench frames must parse"
    );
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for f in &frames {
                // Consume fields the way the pipeline does (a copy of the whole struct
                // through black_box would measure a store-forwarding stall instead).
                if let Ok(info) = PacketInfo::parse(black_box(f)) {
                    ok += info.payload_offset()
                        + info.flow_ports().map_or(0, |(a, b)| usize::from(a ^ b))
                        + usize::from(info.ipv4_checksum_ok);
                }
            }
            ok
        })
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    bench_batch(
        c,
        "udp_64B_batch64",
        (0..BATCH).map(|i| frame_v4(17, i, 64)).collect(),
    );
    bench_batch(
        c,
        "tcp_64B_batch64",
        (0..BATCH).map(|i| frame_v4(6, i, 64)).collect(),
    );
    bench_batch(
        c,
        "vxlan_outer_batch64",
        (0..BATCH).map(frame_vxlan).collect(),
    );
}

criterion_group!(benches, parse);
criterion_main!(benches);
