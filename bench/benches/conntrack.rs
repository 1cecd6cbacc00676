//! Conntrack/SNAT shard: new flows, and established flows outbound and inbound with
//! 10,000 and 1,000,000 flows tracked. Prints the memory per tracked flow once.
//!
//! Run: `cargo bench -p hybridway-bench --bench conntrack -- --warm-up-time 1
//! --measurement-time 3`; on a loaded machine with `BENCH_CLOCK=cpu` (the
//! thread's CPU time, see [`hybridway_bench::bench_clock`]).

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hybridway_bench::bench_clock;
use hybridway_bench::conntrack_flows::{FullTable, NAT, config, established, flow, seg};
use hybridway_dataplane::Now;
use hybridway_dataplane::tables::conntrack::tcp_flags::{ACK, SYN};
use hybridway_dataplane::tables::{NatBinding, SnatShard};

const OPS: usize = 1 << 14;

fn bench_conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");

    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow", |b| {
        b.iter_custom(|iters| {
            // A fresh shard per sample, big enough for every flow of the sample.
            let mut shard = SnatShard::new(0, &config(iters as usize));
            let t = bench_clock::time(|| {
                for i in 0..iters as u32 {
                    let _ = black_box(shard.outbound(&flow(i), NAT, seg(SYN), Now(5)));
                }
            });
            drop(black_box(shard));
            t
        })
    });

    // Steady state of a full table: 1,000,000 UDP flows, time advancing so that
    // the oldest flows have just expired whenever a new one arrives; every new flow
    // reclaims one through the expiry wheel.
    let mut table = FullTable::new(1_000_000);
    let mut i = table.full;
    let mut refused = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow_full_table_1000000", |b| {
        b.iter_custom(|iters| {
            bench_clock::time(|| {
                for _ in 0..iters {
                    i += 1;
                    let now = table.at(i);
                    let r = table.shard.outbound(&FullTable::udp(i), NAT, seg(0), now);
                    refused += u64::from(r.is_err());
                    let _ = black_box(r);
                }
            })
        })
    });
    assert_eq!(refused, 0, "every new flow found an expired one to replace");
    assert_eq!(
        table.shard.len(),
        table.full as usize,
        "the table stayed full"
    );
    drop(table);

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
            b.iter_custom(|iters| {
                bench_clock::time(|| {
                    for _ in 0..iters {
                        let mut ports = 0u32;
                        for k in out.iter().cycle().skip(pos).take(OPS) {
                            if let Ok(nb) = shard.outbound(k, NAT, seg(ACK), Now(1000)) {
                                ports = ports.wrapping_add(u32::from(nb.port));
                            }
                        }
                        pos = (pos + OPS) % out.len();
                        black_box(ports);
                    }
                })
            })
        });
        let mut pos = 0;
        g.bench_with_input(BenchmarkId::new("established_inbound", n), &n, |b, _| {
            b.iter_custom(|iters| {
                bench_clock::time(|| {
                    for _ in 0..iters {
                        let mut ports = 0u32;
                        for k in back.iter().cycle().skip(pos).take(OPS) {
                            if let Some(nb) = shard.inbound(k, seg(ACK), Now(1000)) {
                                ports = ports.wrapping_add(u32::from(nb.port));
                            }
                        }
                        pos = (pos + OPS) % back.len();
                        black_box(ports);
                    }
                })
            })
        });
        let flags = vec![seg(ACK); 64];
        let mut res = vec![Ok(NatBinding { addr: NAT, port: 0 }); 64];
        g.bench_with_input(
            BenchmarkId::new("established_outbound_batch64", n),
            &n,
            |b, _| {
                let mut chunks = out.chunks_exact(64).cycle();
                b.iter_custom(|iters| {
                    bench_clock::time(|| {
                        for _ in 0..iters {
                            let mut ports = 0u32;
                            for chunk in chunks.by_ref().take(OPS / 64) {
                                shard.outbound_batch(chunk, &flags, NAT, Now(1000), &mut res);
                                ports = res
                                    .iter()
                                    .flatten()
                                    .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
                            }
                            black_box(ports);
                        }
                    })
                })
            },
        );
        let mut back_res = vec![None; 64];
        g.bench_with_input(
            BenchmarkId::new("established_inbound_batch64", n),
            &n,
            |b, _| {
                let mut chunks = back.chunks_exact(64).cycle();
                b.iter_custom(|iters| {
                    bench_clock::time(|| {
                        for _ in 0..iters {
                            let mut ports = 0u32;
                            for chunk in chunks.by_ref().take(OPS / 64) {
                                shard.inbound_batch(chunk, &flags, Now(1000), &mut back_res);
                                ports = back_res
                                    .iter()
                                    .flatten()
                                    .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
                            }
                            black_box(ports);
                        }
                    })
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
