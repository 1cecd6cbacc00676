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
//! machine, where the benchmark thread is preempted, set `PIPELINE_BENCH_CLOCK=cpu`:
//! the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) over all batches of a
//! sample, minus the CPU time of refilling the same number of batches alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::frame::{FRAME_HEADROOM, Frame, FrameMeta, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};
use hybridway_dataplane::tables::{
    Mode, NodeSettings, Prefix, RouteTableBuilder, RouteTarget, SnatConfig, Tables,
};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::{MacAddr, checksum};

const BATCH: usize = 64;
const BUF: usize = 2048;
const UPLINK: PortId = PortId(0);
const POD_PORT: PortId = PortId(1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const POD: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 20);
const GATEWAY_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xaa, 1]);
const POD_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xbb, 10]);
const UPLINK_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const VTEP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x0f, 1]);
const T0: Now = Now(1_000);
/// First ClusterIP of the service benchmark (service CIDR 198.18.240.0/20).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);

fn tables() -> Tables {
    let mut b = RouteTableBuilder::new();
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    b.add(
        p("198.19.1.10/32"),
        RouteTarget::LocalPod {
            port: POD_PORT,
            mac: POD_MAC,
        },
    )
    .unwrap();
    // A node-sized table: 250 more local pods and 200 remote node blocks.
    for i in 0..250u8 {
        let _ = b.add(
            Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, 1, i)), 32).unwrap(),
            RouteTarget::LocalPod {
                port: PortId(100 + u16::from(i)),
                mac: MacAddr([2, 0, 0, 1, 0, i]),
            },
        );
    }
    for i in 2..202u8 {
        b.add(
            Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, i, 0)), 24).unwrap(),
            RouteTarget::VxlanNode {
                node_addr: Ipv4Addr::new(198, 18, 0, i),
                vtep_mac: MacAddr([2, 0, 0, 0, 0x0f, i]),
                vni: 1,
                next_hop_mac: MacAddr([2, 0, 0, 0, 0, i]),
            },
        )
        .unwrap();
    }
    b.add(
        p("0.0.0.0/0"),
        RouteTarget::Outside {
            next_hop_mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
        },
    )
    .unwrap();
    Tables {
        generation: 1,
        node: NodeSettings {
            mode: Mode::Overlay,
            node_addr: NODE,
            node_addr_v6: None,
            uplink_port: UPLINK,
            routed_port: UPLINK,
            host_port: None,
            uplink_mac: UPLINK_MAC,
            uplink_mtu: 1500,
            vtep_mac: VTEP_MAC,
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: false,
            gateway_v4: Ipv4Addr::new(198, 19, 1, 1),
            gateway_v6: None,
            gateway_mac: GATEWAY_MAC,
            snat: true,
        },
        routes: b.build(),
        no_snat: vec![p("198.19.0.0/16"), p("198.18.0.0/24")],
        known_vteps: (2..202u8).map(|i| Ipv4Addr::new(198, 18, 0, i)).collect(),
        services: Default::default(),
    }
}

/// Ethernet + IPv4 + UDP with `len` bytes in all; UDP checksum 0.
fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut f = vec![0x5au8; len.max(42)];
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    write_ip_udp(&mut f, src, dst, sport, dport);
    f
}

fn write_ip_udp(f: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) {
    let ip_len = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
}

/// VXLAN from a remote node carrying `inner`.
fn vxlan_frame(inner: &[u8]) -> Vec<u8> {
    let mut f = udp_frame(
        MacAddr([2, 0, 0, 0, 0, 2]),
        UPLINK_MAC,
        REMOTE_NODE,
        NODE,
        40000,
        8472,
        50 + inner.len(),
    );
    f[42..50].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
    f[50..].copy_from_slice(inner);
    f
}

/// 64 frame buffers; `fill` writes packet `i` of the next batch into buffer `i`.
struct Batch {
    bufs: Vec<[u8; BUF]>,
    lens: [usize; BATCH],
    verdicts: [Verdict; BATCH],
}

impl Batch {
    fn new() -> Self {
        Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            lens: [0; BATCH],
            verdicts: [Verdict::ToHost; BATCH],
        }
    }

    fn fill(&mut self, mut packet: impl FnMut(usize, &mut [u8]) -> usize) {
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            self.lens[i] = packet(i, &mut buf[FRAME_HEADROOM..]);
        }
    }

    /// Runs the batch; returns the time `process_batch` took.
    fn run(&mut self, p: &mut Pipeline, t: &Tables, in_port: PortId) -> Duration {
        let lens = self.lens;
        let mut frames: [Frame<'_>; BATCH] = {
            let mut it = self.bufs.iter_mut().zip(lens);
            std::array::from_fn(|_| {
                let (buf, len) = it.next().unwrap();
                Frame::new(&mut buf[..], FRAME_HEADROOM, len, FrameMeta { in_port })
            })
        };
        let start = Instant::now();
        p.process_batch(&mut frames, t, T0, &mut self.verdicts);
        let elapsed = start.elapsed();
        black_box(&self.verdicts);
        elapsed
    }

    fn assert_all(&self, want: Verdict) {
        for v in &self.verdicts {
            assert_eq!(
                *v,
                want,
                "{:?}",
                self.verdicts.iter().take(4).collect::<Vec<_>>()
            );
        }
    }
}

/// How a sample is timed (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Wall,
    Cpu,
}

fn clock() -> Clock {
    match std::env::var("PIPELINE_BENCH_CLOCK").as_deref() {
        Ok("cpu") if thread_cpu().is_some() => Clock::Cpu,
        _ => Clock::Wall,
    }
}

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Option<Duration> {
    cpu_time::ThreadTime::try_now()
        .ok()
        .map(|t| t.as_duration())
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
            let start = thread_cpu().unwrap_or_default();
            for _ in 0..iters {
                fill(batch);
                black_box(run(batch));
            }
            let both = thread_cpu().unwrap_or_default().saturating_sub(start);
            let start = thread_cpu().unwrap_or_default();
            for _ in 0..iters {
                fill(batch);
                black_box(&batch.lens);
            }
            let fill_only = thread_cpu().unwrap_or_default().saturating_sub(start);
            both.saturating_sub(fill_only)
        }
    }
}

fn vxlan(c: &mut Criterion) {
    let t = tables();
    for (name, size) in [("64B", 64usize), ("1400B", 1400)] {
        let pod_frame = udp_frame(POD_MAC, GATEWAY_MAC, POD, REMOTE_POD, 1234, 5678, size);
        let mut g = c.benchmark_group("pipeline/vxlan_encap");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let mut batch = Batch::new();
            // Only the headers change; later fills rewrite just those.
            let mut fill = |batch: &mut Batch| {
                batch.fill(|i, buf| {
                    if body_missing(buf, size) {
                        buf[..size].copy_from_slice(&pod_frame);
                    } else {
                        buf[..42].copy_from_slice(&pod_frame[..42]);
                    }
                    buf[35] = i as u8; // a different flow per packet (source port)
                    size
                })
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    batch.run(&mut p, &t, POD_PORT)
                })
            });
            batch.assert_all(Verdict::Forward { port: UPLINK });
        });
        g.finish();

        let inner = {
            let mut f = udp_frame(
                MacAddr([2, 0, 0, 0, 0x0f, 2]),
                VTEP_MAC,
                REMOTE_POD,
                POD,
                5678,
                1234,
                size,
            );
            f[22] = 63;
            let ip = &mut f[14..34];
            ip[10..12].fill(0);
            let c = checksum::checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f
        };
        let wire = vxlan_frame(&inner);
        let mut g = c.benchmark_group("pipeline/vxlan_decap");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let mut batch = Batch::new();
            let mut fill = |batch: &mut Batch| {
                batch.fill(|_, buf| {
                    if body_missing(buf, wire.len()) {
                        buf[..wire.len()].copy_from_slice(&wire);
                    } else {
                        buf[..50 + 42].copy_from_slice(&wire[..50 + 42]);
                    }
                    wire.len()
                })
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    batch.run(&mut p, &t, UPLINK)
                })
            });
            batch.assert_all(Verdict::Forward { port: POD_PORT });
        });
        g.finish();
    }
}

/// Whether the buffer does not yet hold the packet body (first fill): the payload is
/// written once, later fills restore only the headers the pipeline rewrites.
fn body_missing(buf: &[u8], len: usize) -> bool {
    buf[len - 1] != 0x5a || buf[12] != 0x08
}

/// A tiny xorshift so flows are picked uniformly without touching the rand API.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Flow `i`: pod source port and remote address (60,000 ports per remote).
fn flow(i: usize) -> (u16, Ipv4Addr) {
    let port = 1024 + (i % 60_000) as u16;
    let remote = Ipv4Addr::new(198, 18, 100 + (i / 60_000) as u8, 7);
    (port, remote)
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
                let (port, remote) = flow(next % 1_000_000);
                next += 1;
                let f = &mut buf[..64];
                f[..14].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xbb, 10, 8, 0]);
                write_ip_udp(f, POD, remote, port, 53);
                64
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

fn run_at(batch: &mut Batch, p: &mut Pipeline, t: &Tables, in_port: PortId, now: Now) -> Duration {
    let lens = batch.lens;
    let mut frames: [Frame<'_>; BATCH] = {
        let mut it = batch.bufs.iter_mut().zip(lens);
        std::array::from_fn(|_| {
            let (buf, len) = it.next().unwrap();
            Frame::new(&mut buf[..], FRAME_HEADROOM, len, FrameMeta { in_port })
        })
    };
    let start = Instant::now();
    p.process_batch(&mut frames, t, now, &mut batch.verdicts);
    let elapsed = start.elapsed();
    black_box(&batch.verdicts);
    elapsed
}

/// A pipeline with `n` established UDP flows from POD; returns each flow's NAT port.
fn established(n: usize, t: &Tables) -> (Pipeline, Vec<u16>) {
    let config = SnatConfig {
        capacity_per_worker: n + n / 4,
        ..SnatConfig::default()
    };
    let mut p = Pipeline::new(0, &config);
    let mut nat_ports = Vec::with_capacity(n);
    let mut buf = [0u8; BUF];
    for i in 0..n {
        let (port, remote) = flow(i);
        let f = udp_frame(POD_MAC, GATEWAY_MAC, POD, remote, port, 53, 64);
        let mut frame = Frame::copy_from(&mut buf, &f, FrameMeta { in_port: POD_PORT }).unwrap();
        assert_eq!(
            p.process(&mut frame, t, T0),
            Verdict::Forward { port: UPLINK }
        );
        let d = frame.data();
        nat_ports.push(u16::from_be_bytes([d[34], d[35]]));
    }
    (p, nat_ports)
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
                batch.fill(|_, buf| {
                    let (port, remote) = flow(rng.next() as usize % n);
                    let f = &mut buf[..64];
                    f[..14].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xbb, 10, 8, 0]);
                    write_ip_udp(f, POD, remote, port, 53);
                    64
                })
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    batch.run(&mut p, &t, POD_PORT)
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
                    let (_, remote) = flow(i);
                    let f = &mut buf[..64];
                    f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xfe, 8, 0]);
                    write_ip_udp(f, remote, NODE, 53, nat_ports[i]);
                    64
                })
            };
            b.iter_custom(|iters| {
                timed(iters, &mut batch, &mut fill, |batch| {
                    batch.run(&mut p, &t, UPLINK)
                })
            });
            batch.assert_all(Verdict::Forward { port: POD_PORT });
        });
        g.finish();
    }
}

/// A pipeline and tables with 1,000 Services of 10 endpoints each (host-network
/// endpoints, routed without SNAT like `snat_established`'s packets are routed with
/// it) and `n` established UDP flows from POD to the first Service's port 53.
fn service_flows(n: usize) -> (Pipeline, Tables) {
    let mut t = tables();
    let specs: Vec<ServiceSpec> = (0..1_000u32)
        .map(|s| ServiceSpec {
            name: format!("default/svc-{s}"),
            cluster_ips: vec![Ipv4Addr::from_bits(u32::from(VIP) + s)],
            ports: vec![ServicePortSpec {
                proto: ServiceProto::Udp,
                port: 53,
                node_port: None,
                endpoints: (0..10u8)
                    .map(|e| EndpointSpec {
                        addr: Ipv4Addr::new(198, 18, 0, 100 + e),
                        port: 5353,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: false,
                    })
                    .collect(),
            }],
            ..ServiceSpec::default()
        })
        .collect();
    t.services = std::sync::Arc::new(ServiceTable::build(&specs));
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let mut buf = [0u8; BUF];
    for i in 0..n {
        let f = udp_frame(POD_MAC, GATEWAY_MAC, POD, VIP, 1024 + i as u16, 53, 64);
        let mut frame = Frame::copy_from(&mut buf, &f, FrameMeta { in_port: POD_PORT }).unwrap();
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Forward { port: UPLINK }
        );
    }
    assert_eq!(p.service_flows(), n);
    (p, t)
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
            batch.fill(|_, buf| {
                let port = 1024 + (rng.next() as usize % n) as u16;
                let f = &mut buf[..64];
                f[..14].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xbb, 10, 8, 0]);
                write_ip_udp(f, POD, VIP, port, 53);
                64
            })
        };
        b.iter_custom(|iters| {
            timed(iters, &mut batch, &mut fill, |batch| {
                batch.run(&mut p, &t, POD_PORT)
            })
        });
        batch.assert_all(Verdict::Forward { port: UPLINK });
    });
    g.finish();
}

criterion_group!(benches, vxlan, snat_new, snat_established, service_dnat);
criterion_main!(benches);
