//! Conntrack/SNAT shard: new flows, and established flows outbound and inbound with
//! 10,000 and 1,000,000 flows tracked. Prints the memory per tracked flow once.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::Now;
use hybridway_dataplane::tables::conntrack::tcp_flags::{ACK, SYN};
use hybridway_dataplane::tables::{
    FlowKey, L4Proto, NatBinding, SnatConfig, SnatShard, TcpSegment,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const NAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const OPS: usize = 1 << 14;

/// Flow `i`: pods in 198.19.0.0/16 talking to many remotes in 198.18.0.0/16, so no
/// destination runs out of ports.
fn flow(i: u32) -> FlowKey {
    FlowKey {
        proto: L4Proto::Tcp,
        src: Ipv4Addr::from(0xc613_0000 | (i & 0xffff)),
        src_port: 10_000 + (i >> 16) as u16,
        dst: Ipv4Addr::from(0xc612_0000 | (i.wrapping_mul(2_654_435_761) >> 16)),
        dst_port: 443,
    }
}

fn reply(k: &FlowKey, b: NatBinding) -> FlowKey {
    FlowKey {
        proto: k.proto,
        src: k.dst,
        src_port: k.dst_port,
        dst: b.addr,
        dst_port: b.port,
    }
}

/// A TCP segment with `flags` at sequence 0 (every segment of these flows is).
fn seg(flags: u8) -> TcpSegment {
    TcpSegment::with_flags(flags)
}

fn config(capacity: usize) -> SnatConfig {
    SnatConfig {
        capacity_per_worker: capacity,
        ..SnatConfig::default()
    }
}

/// A shard holding `n` established TCP flows, and their keys in random order.
fn established(n: usize) -> (SnatShard, Vec<FlowKey>, Vec<FlowKey>) {
    let mut shard = SnatShard::new(0, &config(n));
    let mut out = Vec::with_capacity(n);
    let mut back = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let k = flow(i);
        let Ok(b) = shard.outbound(&k, NAT, seg(SYN), Now(0)) else {
            continue;
        };
        let r = reply(&k, b);
        shard.inbound(&r, seg(SYN | ACK), Now(1));
        out.push(k);
        back.push(r);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    out.shuffle(&mut rng);
    back.shuffle(&mut rng);
    (shard, out, back)
}

fn bench_conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");

    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow", |b| {
        b.iter_custom(|iters| {
            // A fresh shard per sample, big enough for every flow of the sample.
            let mut shard = SnatShard::new(0, &config(iters as usize));
            let start = Instant::now();
            for i in 0..iters as u32 {
                let _ = black_box(shard.outbound(&flow(i), NAT, seg(SYN), Now(5)));
            }
            let t = start.elapsed();
            drop(black_box(shard));
            t
        })
    });

    // Steady state of a full table: 1,000,000 UDP flows, time advancing so that
    // the oldest flows have just expired whenever a new one arrives; every new flow
    // reclaims one through the expiry wheel.
    let full = 1_000_000u32;
    let mut shard = SnatShard::new(0, &config(full as usize));
    let udp_ms = SnatConfig::default().timeouts.udp.as_millis() as u64;
    // A million flows span the UDP timeout plus 3 s (about three wheel ticks), so
    // the oldest flows in the table have always just expired.
    let at = |i: u32| Now(u64::from(i) * (udp_ms + 3000) / u64::from(full));
    let udp = |i: u32| FlowKey {
        proto: L4Proto::Udp,
        ..flow(i)
    };
    for i in 0..full {
        let _ = shard.outbound(&udp(i), NAT, seg(0), at(i));
    }
    let mut i = full;
    let mut refused = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow_full_table_1000000", |b| {
        b.iter(|| {
            i += 1;
            let r = shard.outbound(&udp(i), NAT, seg(0), at(i));
            refused += u64::from(r.is_err());
            black_box(r)
        })
    });
    assert_eq!(refused, 0, "every new flow found an expired one to replace");
    assert_eq!(shard.len(), full as usize, "the table stayed full");
    drop(shard);

    for n in [10_000usize, 1_000_000] {
        let (mut shard, out, back) = established(n);
        if n == 1_000_000 {
            println!(
                "conntrack: {} flows in {} MiB = {} bytes per flow",
                shard.len(),
                shard.memory_bytes() >> 20,
                shard.memory_bytes() / shard.len().max(1)
            );
        }
        g.throughput(Throughput::Elements(OPS as u64));
        let mut pos = 0;
        g.bench_with_input(BenchmarkId::new("established_outbound", n), &n, |b, _| {
            b.iter(|| {
                let mut ports = 0u32;
                for k in out.iter().cycle().skip(pos).take(OPS) {
                    if let Ok(nb) = shard.outbound(k, NAT, seg(ACK), Now(1000)) {
                        ports = ports.wrapping_add(u32::from(nb.port));
                    }
                }
                pos = (pos + OPS) % out.len();
                black_box(ports)
            })
        });
        let mut pos = 0;
        g.bench_with_input(BenchmarkId::new("established_inbound", n), &n, |b, _| {
            b.iter(|| {
                let mut ports = 0u32;
                for k in back.iter().cycle().skip(pos).take(OPS) {
                    if let Some(nb) = shard.inbound(k, seg(ACK), Now(1000)) {
                        ports = ports.wrapping_add(u32::from(nb.port));
                    }
                }
                pos = (pos + OPS) % back.len();
                black_box(ports)
            })
        });
        let flags = vec![seg(ACK); 64];
        let mut res = vec![Ok(NatBinding { addr: NAT, port: 0 }); 64];
        g.bench_with_input(
            BenchmarkId::new("established_outbound_batch64", n),
            &n,
            |b, _| {
                let mut chunks = out.chunks_exact(64).cycle();
                b.iter(|| {
                    let mut ports = 0u32;
                    for chunk in chunks.by_ref().take(OPS / 64) {
                        shard.outbound_batch(chunk, &flags, NAT, Now(1000), &mut res);
                        ports = res
                            .iter()
                            .flatten()
                            .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
                    }
                    black_box(ports)
                })
            },
        );
        let mut back_res = vec![None; 64];
        g.bench_with_input(
            BenchmarkId::new("established_inbound_batch64", n),
            &n,
            |b, _| {
                let mut chunks = back.chunks_exact(64).cycle();
                b.iter(|| {
                    let mut ports = 0u32;
                    for chunk in chunks.by_ref().take(OPS / 64) {
                        shard.inbound_batch(chunk, &flags, Now(1000), &mut back_res);
                        ports = back_res
                            .iter()
                            .flatten()
                            .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
                    }
                    black_box(ports)
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench_conntrack
}
criterion_main!(benches);
