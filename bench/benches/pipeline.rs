//! Pipeline throughput per core, in memory: VXLAN encapsulation and decapsulation
//! (64-byte and 1400-byte inner frames), SNAT of new flows, and SNAT/un-SNAT of
//! established flows with 10,000 and 1,000,000 flows tracked, and Service DNAT of
//! 10,000 established flows to a ClusterIP (goal: no slower than established SNAT).
//!
//! Each iteration processes one batch of 64 frames with `Pipeline::process_batch`.
//! Restoring the frames' headers between batches (what a NIC writing fresh packets
//! would do) is not counted.
//!
//! Run: `cargo bench -p hybridway-bench --bench pipeline -- --warm-up-time 1 --measurement-time 3`
//!
//! Clocks: by default the wall time of each `process_batch` call. On a shared
//! machine, where the benchmark thread is preempted, set `BENCH_CLOCK=cpu`:
//! the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) over all batches of a
//! sample, minus the CPU time of refilling the same number of batches alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hybridway_bench::bench_clock;
use hybridway_bench::pipeline_traffic::{
    BATCH, Batch, POD_PORT, Rng, T0, UPLINK, established, fill_decap, fill_encap,
    pod_to_remote_pod, service_flows, tables, vxlan_from_remote_pod, write_masquerade, write_reply,
    write_to_service,
};
use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::{SnatConfig, Tables};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;

/// Runs one batch through `process_batch` at `now`; returns the time the call took.
fn run_at(batch: &mut Batch, p: &mut Pipeline, t: &Tables, in_port: PortId, now: Now) -> Duration {
    batch.run(in_port, |frames, verdicts| {
        let start = Instant::now();
        p.process_batch(frames, t, now, verdicts);
        let elapsed = start.elapsed();
        black_box(verdicts);
        elapsed
    })
}

/// How a sample is timed (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Wall,
    Cpu,
}

fn clock() -> Clock {
    if bench_clock::cpu_requested() {
        Clock::Cpu
    } else {
        Clock::Wall
    }
}

/// Times `iters` batches: `fill` writes the next batch's packets (not counted), `run`
/// processes it and returns its wall time.
fn timed(
    iters: u64,
    batch: &mut Batch,
    mut fill: impl FnMut(&mut Batch),
    mut run: impl FnMut(&mut Batch) -> Duration,
) -> Duration {
    match clock() {
        Clock::Wall => {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fill(batch);
                total += run(batch);
            }
            total
        }
        Clock::Cpu => {
            let start = bench_clock::thread_cpu().unwrap_or_default();
            for _ in 0..iters {
                fill(batch);
                black_box(run(batch));
            }
            let both = bench_clock::thread_cpu()
                .unwrap_or_default()
                .saturating_sub(start);
            let start = bench_clock::thread_cpu().unwrap_or_default();
            for _ in 0..iters {
                fill(batch);
                black_box(batch.lens());
            }
            let fill_only = bench_clock::thread_cpu()
                .unwrap_or_default()
                .saturating_sub(start);
            both.saturating_sub(fill_only)
        }
    }
}

fn vxlan(c: &mut Criterion) {
    let t = tables();
    for (name, size) in [("64B", 64usize), ("1400B", 1400)] {
        let pod_frame = pod_to_remote_pod(size);
        let mut g = c.benchmark_group("pipeline/vxlan_encap");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let mut batch = Batch::new();
            let mut fill = |batch: &mut Batch| fill_encap(batch, &pod_frame);
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    run_at(batch, &mut p, &t, POD_PORT, T0)
                })
            });
            batch.assert_all(Verdict::Forward { port: UPLINK });
        });
        g.finish();

        let wire = vxlan_from_remote_pod(size);
        let mut g = c.benchmark_group("pipeline/vxlan_decap");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let mut batch = Batch::new();
            let mut fill = |batch: &mut Batch| fill_decap(batch, &wire);
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    run_at(batch, &mut p, &t, UPLINK, T0)
                })
            });
            batch.assert_all(Verdict::Forward { port: POD_PORT });
        });
        g.finish();
    }
}

fn snat_new(c: &mut Criterion) {
    let t = tables();
    let mut g = c.benchmark_group("pipeline/snat_new_flow");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("udp", |b| {
        let mut p = Pipeline::new(0, &SnatConfig::default());
        let mut batch = Batch::new();
        let mut next = 0usize;
        let mut now = T0.0;
        let mut fill = |batch: &mut Batch| {
            batch.fill(|_, buf| {
                // Every packet a flow never seen: a new (port, remote) pair.
                let len = write_masquerade(buf, next % 1_000_000);
                next += 1;
                len
            })
        };
        b.iter_custom(|iters| {
            timed(iters, &mut batch, &mut fill, |batch| {
                // Flows age out as time passes and the worker sweeps between batches;
                // the sweep is counted, it is part of the cost of new flows.
                now += 5_000;
                let start = Instant::now();
                p.snat_mut().sweep(Now(now), 2 * BATCH);
                start.elapsed() + run_at(batch, &mut p, &t, POD_PORT, Now(now))
            })
        });
        batch.assert_all(Verdict::Forward { port: UPLINK });
    });
    g.finish();
}

fn snat_established(c: &mut Criterion) {
    let t = tables();
    for (name, n) in [("10k", 10_000usize), ("1M", 1_000_000)] {
        let mut g = c.benchmark_group("pipeline/snat_established");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            // Built here so that a filtered run does not pay for it.
            let (mut p, _) = established(n, &t);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut batch = Batch::new();
            let mut fill = |batch: &mut Batch| {
                batch.fill(|_, buf| write_masquerade(buf, rng.next() as usize % n))
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    run_at(batch, &mut p, &t, POD_PORT, T0)
                })
            });
            batch.assert_all(Verdict::Forward { port: UPLINK });
        });
        g.finish();

        let mut g = c.benchmark_group("pipeline/unsnat_established");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let (mut p, nat_ports) = established(n, &t);
            let mut rng = Rng(0x1234_5678_9abc_def1);
            let mut batch = Batch::new();
            let mut fill = |batch: &mut Batch| {
                batch.fill(|_, buf| {
                    let i = rng.next() as usize % n;
                    write_reply(buf, i, nat_ports[i])
                })
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    run_at(batch, &mut p, &t, UPLINK, T0)
                })
            });
            batch.assert_all(Verdict::Forward { port: POD_PORT });
        });
        g.finish();
    }
}

/// A pod's packets of established flows to a ClusterIP: the Service lookup, the
/// flow map, DNAT and routing. Compare with `pipeline/snat_established/10k`; not
/// there yet (about 1.6-2x its time): the Service flow map is looked up frame by
/// frame, without the batched prefetch the SNAT table gets.
fn service_dnat(c: &mut Criterion) {
    let n = 10_000usize;
    let mut g = c.benchmark_group("pipeline/service_dnat_established");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BenchmarkId::from_parameter("10k"), |b| {
        let (mut p, t) = service_flows(n);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut batch = Batch::new();
        let mut fill = |batch: &mut Batch| {
            batch.fill(|_, buf| write_to_service(buf, 1024 + (rng.next() as usize % n) as u16))
        };
        b.iter_custom(|iters| {
            timed(iters, &mut batch, &mut fill, |batch| {
                run_at(batch, &mut p, &t, POD_PORT, T0)
            })
        });
        batch.assert_all(Verdict::Forward { port: UPLINK });
    });
    g.finish();
}

criterion_group!(benches, vxlan, snat_new, snat_established, service_dnat);
criterion_main!(benches);
